"""ExecuTorch programs: fully delegated to XNNPACK, checked against PyTorch through ExecuTorch's runtime,
int8 through PT2E, Core ML delegates checked structurally, and the bench's ExecuTorch entry.

Lowering has a fixed cost per process (ExecuTorch builds its pattern graphs once), so these tests run
in one xdist worker, on models of one block per stage at 32x32 or 64x64.
"""
import json

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip('executorch')

import caretrans  # noqa: E402
from caretrans.cli import main as cli_main  # noqa: E402
from caretrans.export import ExportCheckError  # noqa: E402
from caretrans.export import mobile  # noqa: E402
from caretrans.export.quantize import calibration_images  # noqa: E402

from tiny_care import tiny_care as _tiny  # noqa: E402

pytestmark = pytest.mark.xdist_group('executorch')


@pytest.fixture(scope='module')
def tiny():
    return _tiny()


def _report(module: nn.Module, x: torch.Tensor, rewrites: bool = True) -> dict:
    program = mobile.export_program(module, x) if rewrites else torch.export.export(module, (x,))
    return mobile.delegation_report(mobile.lower(program))


def test_rewrites_compute_what_split_and_layer_norm_compute():
    x = torch.randn(2, 5, 7, 12)
    for split, expected in [(4, x.split(4, dim=-1)), ([2, 7, 3], x.split([2, 7, 3], dim=-1))]:
        for a, b in zip(mobile._split_as_slices(x, split, -1), expected, strict=True):
            assert torch.equal(a, b)
    weight, bias = torch.randn(12), torch.randn(12)
    out, mean, rstd = mobile._normalise_as_spatial_means(x, [12], weight, bias, 1e-6)
    torch.testing.assert_close(out, F.layer_norm(x, [12], weight, bias, 1e-6), rtol=1e-5, atol=1e-5)
    ref_out, ref_mean, ref_rstd = torch.native_layer_norm(x, [7, 12], None, None, 1e-5)
    out, mean, rstd = mobile._normalise_as_spatial_means(x, [7, 12], None, None, 1e-5)
    for a, b in [(out, ref_out), (mean, ref_mean), (rstd, ref_rstd)]:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_attention_block_and_head_lower_whole_into_xnnpack(tiny):
    # The linear attention as three bmm, a spatial mean and a division; channel splits as slices;
    # the head's LayerNorm as spatial means: nothing is left to ExecuTorch's portable kernels.
    block = tiny.stages[2].blocks[0]
    report = _report(block, torch.randn(1, 128, 4, 4))
    assert report['segments'] == 1 and report['portable'] == {}
    assert {'bmm', 'elu', 'mean.dim', 'div.Tensor', 'slice_copy.Tensor'} <= set(report['delegated'])
    head = _report(tiny.head, torch.randn(1, tiny.num_features, 2, 2))
    assert head['segments'] == 1 and head['portable'] == {} and 'rsqrt' in head['delegated']


def test_delegation_report_names_what_falls_back():
    # Without the rewrites the stock graph splits with split_with_sizes, which XNNPACK has no kernel for:
    # two delegate segments around it, and the report says so.
    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(6, 6, 1)

        def forward(self, x):
            a, b = self.conv(x).chunk(2, dim=1)
            return torch.cat([a * 2.0, b + 1.0], dim=1)  # float scalars: int ones would need dtype casts

    x = torch.randn(1, 6, 8, 8)
    stock = _report(Split().eval(), x, rewrites=False)
    assert stock['portable'] == {'split_with_sizes_copy': 1} and stock['segments'] == 2
    rewritten = _report(Split().eval(), x)
    assert rewritten['portable'] == {} and rewritten['segments'] == 1
    assert rewritten['delegated']['slice_copy.Tensor'] == 2 and rewritten['backends'] == ['XnnpackBackend']


def test_xnnpack_program_is_checked_and_written(tiny, tmp_path):
    out = tmp_path / 'tiny.pte'
    report = mobile.export_executorch(tiny, out, img_size=64)
    assert report['segments'] == 1 and report['portable'] == {} and report['precision'] == 'fp32'
    assert report['numerically_checked'] and report['max_abs_diff']['1'] < 1e-4
    program = mobile.LoadedProgram(out.read_bytes())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny(x)
    assert expected.abs().max() > 0.1  # logits of order one: the tolerance below is meaningful
    torch.testing.assert_close(program(x), expected, rtol=1e-4, atol=1e-4)


def test_failed_check_is_an_error_and_leaves_no_file(tiny, tmp_path, monkeypatch):
    # A lowering that computes something else (here: another model's weights) must not be written.
    other = _tiny()
    with torch.no_grad():
        other.head.fc.bias.add_(0.01)
    export = mobile.export_program
    monkeypatch.setattr(mobile, 'export_program', lambda model, x, backend, max_batch: export(other, x, backend))
    out = tmp_path / 'wrong.pte'
    with pytest.raises(ExportCheckError, match='ExecuTorch output differs from PyTorch by up to 0.01'):
        mobile.export_executorch(tiny, out, img_size=32)
    assert list(tmp_path.iterdir()) == []


def test_export_cli_executorch_with_int8(tmp_path, capsys, monkeypatch):
    # Two stages of linear attention (early='attention') keep the int8 graph, three times the float
    # one with its quantise / dequantise nodes, short to lower.
    model = _tiny(depths=(1, 1), dims=(24, 48), expansions=((2, 2), (2, 4)), early='attention',
                  head_dims=(8, 16))
    monkeypatch.setattr('caretrans.cli.export._build', lambda args, info: model)
    out = tmp_path / 'm.pte'
    assert cli_main(['export', '--format', 'executorch', '--img-size', '32', '--output', str(out), '--int8',
                     'synthetic', '--calib-count', '8', '--eval-count', '4', '--json']) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert 'int8 ExecuTorch' in captured.err and '11/11' in captured.err  # 8 images, lowering, serialising, check
    assert report['backend'] == 'xnnpack' and report['segments'] == 1 and report['portable'] == {}
    q = report['int8']
    assert q['output'] == str(tmp_path / 'm.int8.pte') and (tmp_path / 'm.int8.pte').is_file()
    assert q['runtime'] == 'ExecuTorch (XNNPACK)' and q['segments'] == 1 and q['portable'] == {}
    delegated = q['delegated']  # every conv reads int8 weights; the classifier head stays float
    assert delegated['quantized_decomposed.dequantize_per_channel'] == delegated['convolution']
    assert delegated['linear'] == 1  # the classifier (head and head_dist fused into one), delegated in float
    x = torch.from_numpy(next(calibration_images('synthetic', 1, 32, 3)))
    with torch.no_grad():
        scale = model(x).abs().max().item()
    assert q['max_abs_diff']['1'] < mobile.INT8_TOL * scale  # to PyTorch's simulation of the int8 model
    assert 0 < q['max_abs_diff_to_float'] < 0.5 * scale  # int8 rounding: close to float, not equal
    assert q['latency_ratio_int8_to_float'] > 0
    assert q['eval_images'] == 4 and 0 <= q['top1_int8'] <= 100 and 0 <= q['top1_float'] <= 100
    assert cli_main(['export', '--format', 'executorch', '--backend', 'coreml', '--output', str(out),
                     '--int8', 'synthetic']) == 2
    assert 'lowered to XNNPACK' in capsys.readouterr().err
    assert cli_main(['export', '--format', 'onnx', '--backend', 'xnnpack', '--output', str(out)]) == 2
    assert '--backend chooses the delegate' in capsys.readouterr().err


def test_dynamic_batch_program_runs_any_batch_up_to_its_bound(tmp_path, capsys, monkeypatch):
    model = _tiny(depths=(1, 1), dims=(24, 48), expansions=((2, 2), (2, 4)), early='attention', head_dims=(8, 16))
    monkeypatch.setattr('caretrans.cli.export._build', lambda args, info: model)
    out = tmp_path / 'dyn.pte'
    assert cli_main(['export', '--format', 'executorch', '--dynamic-batch', '--max-batch', '4', '--img-size', '32',
                     '--output', str(out), '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['max_batch'] == 4 and set(report['max_abs_diff']) == {'1', '4'}
    assert max(report['max_abs_diff'].values()) < 1e-4
    # Channel slices of a tensor with a free batch are not XNNPACK's (static slices only): ExecuTorch's
    # portable kernels copy them, between delegate segments.
    assert report['segments'] > 1 and 'slice_copy.Tensor' in report['portable']
    program = mobile.LoadedProgram(out.read_bytes())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(program(x), model(x), rtol=1e-4, atol=1e-4)
    assert cli_main(['export', '--format', 'executorch', '--dynamic-batch', '--max-batch', '0', '--output',
                     str(out)]) == 2
    assert '--max-batch 0: expected at least 1' in capsys.readouterr().err
    assert cli_main(['export', '--format', 'torchscript', '--dynamic-batch', '--output', str(tmp_path / 'm.pt')]) == 2
    assert 'ExecuTorch and ONNX only' in capsys.readouterr().err


def test_coreml_delegate_is_checked_structurally(tiny, tmp_path):
    pytest.importorskip('coremltools')
    report = mobile.export_executorch(tiny, tmp_path / 'coreml.pte', backend='coreml', img_size=64, fp16=True)
    assert report['backends'] == ['CoreMLBackend'] and report['segments'] == 1 and report['portable'] == {}
    assert not report['numerically_checked']  # Core ML runs on Apple hardware only
    program = report['coreml_program']
    assert program['precision'] == 'float16' and program['input_shape'] == [1, 3, 64, 64]
    assert program['conv_ops'] == sum(isinstance(m, nn.Conv2d) for m in tiny.modules())
    with pytest.raises(ValueError, match='Core ML option'):
        mobile.lower(mobile.export_program(tiny, torch.zeros(1, 3, 32, 32)), 'xnnpack', fp16=True)


def test_care_s0_lowers_into_one_xnnpack_delegate(released_checkpoint, tmp_path):
    # The whole released CARE-S0 (closed-form weights: logits of real scale), at 32x32 to keep it short.
    model = timm.create_model('care_s0', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(released_checkpoint('care_s0'))))
    report = mobile.export_executorch(caretrans.reparameterize(model), tmp_path / 's0.pte', img_size=32)
    assert report['segments'] == 1 and report['portable'] == {}
    assert report['delegated']['bmm'] == 3 * 12 and report['delegated']['elu'] == 2 * 12  # 12 attention blocks
    # Logits of real scale: the export's check is rtol = atol = 1e-4; measured 1.1e-4 absolute here.
    assert report['numerically_checked'] and report['max_abs_diff']['1'] < 1e-3


def test_bench_executorch_entry_is_checked_and_timed():
    from caretrans.bench.latency import benchmark

    rows = benchmark(['mobileone_s0'], ['eager', 'executorch'], img_size=32, threads=1, rounds=2)
    eager, executorch = rows
    assert executorch['runtime'] == 'executorch' and executorch['outputs_match']
    assert executorch['output_error'] < 1e-4 and executorch['rounds'] == 2 and executorch['median_ms'] > 0


@pytest.mark.parametrize('fmt', ['executorch', 'coreml'])
def test_exports_print_their_report_and_not_the_libraries_log_lines(tmp_path, capfd, monkeypatch, fmt):
    # ExecuTorch's runtime logs its CPU probe from C++, Core ML tools its passes' progress bars and import
    # notices: none of it reaches the command's output (CARETRANS_VERBOSE=1 would show it).
    monkeypatch.setattr('caretrans.cli.export._build', lambda args, info: _tiny(depths=(1, 1), dims=(24, 48),
                        expansions=((2, 2), (2, 4)), early='attention', head_dims=(8, 16)))
    out = tmp_path / ('m.pte' if fmt == 'executorch' else 'm.mlpackage')
    assert cli_main(['export', '--format', fmt, '--img-size', '32', '--output', str(out)]) == 0
    captured = capfd.readouterr()
    assert captured.err == '', captured.err
    assert captured.out.startswith(f'wrote {out}') and 'checked' in captured.out
