"""benchmarks/gpu_table1.py: its arguments and a CPU dry run through every column (structure, never timings)."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / 'benchmarks' / 'gpu_table1.py'


@pytest.fixture(scope='module')
def gpu_table1():
    spec = importlib.util.spec_from_file_location('gpu_table1', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_arguments(gpu_table1, capsys):
    args = gpu_table1.parse_args([])
    assert args.models[:4] == ['care_s0', 'care_s1', 'care_s2', 'care_s0 [torch]']
    assert {'fastvit_t8', 'mobileone_s0', 'mobilenetv2_100', 'efficientformer_l1', 'deit_tiny_patch16_224',
            'pvt_v2_b0', 'resnet18'} <= set(args.models)
    assert len(args.columns) == 7 and args.budget_s < 300
    with pytest.raises(SystemExit):
        gpu_table1.parse_args(['--columns', 'b64 fp64'])
    assert 'unknown column(s): b64 fp64' in capsys.readouterr().err


def test_dry_run_fills_every_column(gpu_table1, tmp_path, capsys, one_thread):
    report = gpu_table1.main(['--dry-run', '--output', str(tmp_path / 'table.json')])
    assert report['skipped'] == [] and set(report['columns']) == {c.key for c in gpu_table1.COLUMNS}
    for key, rows in report['columns'].items():
        care = next(r for r in rows if r['model'] == 'care_s0')
        assert care['ratio_to_care_s0'] == 1.0 and care['median_ms'] > 0
        compiled = next(c for c in gpu_table1.COLUMNS if c.key == key).compile
        assert [r['model'] for r in rows] == (['care_s0'] if compiled else ['care_s0', 'mobileone_s0'])
        if 'train' in key:
            assert care['images_per_s'] > 0 and care['peak_mib'] is None  # no CUDA memory on the CPU
    out = capsys.readouterr().out
    assert '| mobileone_s0 | ' in out and 'train bf16 b128 eager | images/s' in out
    assert (tmp_path / 'table.json').read_text().startswith('{')
