"""`caretrans bench`: interleaved timing, ratios to CARE-S0, the output's structure (never its timings)."""
import json

import pytest

from caretrans.bench import latency
from caretrans.bench.latency import Entry, summarise, time_interleaved
from caretrans.cli import main as cli_main


def test_ratios_are_taken_round_by_round():
    # A machine that slows down 10x in round 2 slows everything alike: the ratio stays exact.
    entries = [Entry('care_s0', 'fused', 'onnxruntime', [1.0, 10.0, 1.0]),
               Entry('fastvit_t8', 'reparam', 'onnxruntime', [0.5, 5.0, 0.5]),
               Entry('care_s0', 'unfused', 'onnxruntime', [2.0, 20.0, 2.0]),
               Entry('resnet18', 'reparam', 'eager', [3.0, 3.0, 3.0])]
    rows = summarise(entries)
    assert [r['ratio_to_care_s0'] for r in rows] == [1.0, 0.5, 2.0, None]  # no eager reference
    assert rows[0]['median_ms'] == 1.0 and rows[0]['p75_ms'] == 5.5


def test_wrong_outputs_are_reported_not_timed(monkeypatch):
    # A runtime whose logits differ from eager's (here: by 1% of their scale) is marked, and never timed.
    calls = []
    make_runner = latency.make_runner

    def runner(model, runtime, x, threads, onnx_path, *options):
        run = make_runner(model, 'eager', x, threads, onnx_path, *options)
        if runtime == 'eager':
            return run
        return lambda: calls.append(runtime) or run() * 1.01

    monkeypatch.setattr(latency, 'make_runner', runner)
    rows = latency.benchmark(['mobileone_s0'], ['eager', 'onnxruntime'], img_size=32, threads=1, rounds=2)
    assert [r['outputs_match'] for r in rows] == [True, False]
    assert rows[1]['output_error'] == pytest.approx(0.01, rel=1e-3)
    assert rows[1]['median_ms'] is None and rows[1]['rounds'] == 0 and calls == ['onnxruntime']  # the check only
    assert rows[0]['median_ms'] > 0 and rows[0]['rounds'] == 2


def test_time_interleaved_runs_every_entry_every_round():
    calls = []
    times = time_interleaved({k: (lambda k=k: calls.append(k)) for k in 'abc'}, rounds=4, iters=2, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {'a': 4, 'b': 4, 'c': 4}
    assert calls.count('a') == calls.count('b') == calls.count('c') == 1 + 4 * 2
    rounds = [calls[3 + 6 * r: 3 + 6 * (r + 1)] for r in range(4)]
    assert all(sorted(set(r)) == ['a', 'b', 'c'] for r in rounds)  # interleaved, not model after model


def test_bench_cli_tiny(tmp_path, capsys):
    pytest.importorskip('openvino')
    png = tmp_path / 'fig.png'
    assert cli_main(['bench', '--models', 'care_s0', 'mobileone_s0', '--runtimes', 'eager', 'onnxruntime',
                     'openvino', '--img-size', '64', '--rounds', '2', '--threads', '1', '--plot', str(png),
                     '--json']) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result['rows']
    assert [(r['model'], r['variant']) for r in rows[::3]] == [
        ('care_s0', 'unfused'), ('care_s0', 'fused'), ('mobileone_s0', 'reparam')]
    assert [r['runtime'] for r in rows[:3]] == ['eager', 'onnxruntime', 'openvino']
    for r in rows:
        assert r['outputs_match'] and r['output_error'] < 1e-4  # OpenVINO too: float32, not bfloat16
        assert r['rounds'] == 2 and r['p25_ms'] <= r['median_ms'] <= r['p75_ms']
        assert r['batch_size'] == 1 and r['img_size'] == 64 and r['threads'] == 1
    fused = [r for r in rows if r['variant'] == 'fused']
    assert all(r['ratio_to_care_s0'] == 1.0 for r in fused)
    assert rows[0]['params_m'] == pytest.approx(7.34, abs=0.005) and rows[0]['top1'] == 78.4
    assert rows[-1]['top1'] == 71.4 and rows[-1]['gmacs'] < rows[0]['gmacs']
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_bench_cli_errors(capsys):
    assert cli_main(['bench', '--models', 'care_s9']) == 2
    assert "unknown model 'care_s9'" in capsys.readouterr().err
    assert cli_main(['bench', '--models', 'care_s0', '--img-size', '16']) == 2
    assert 'too small' in capsys.readouterr().err


def test_bench_times_models_at_a_checkpoints_recorded_input(tmp_path, capsys):
    import timm

    from caretrans.models import ModelCard
    from caretrans.models.checkpoint import save_weights

    card = ModelCard.for_classifier('care_s0', ('a', 'b', 'c'), 48, 1, (0.3,), (0.35,), 1.0)
    save_weights(timm.create_model('care_s0', **card.model_kwargs()), tmp_path / 'best.safetensors', card=card)
    assert cli_main(['bench', '-m', 'care_s0', 'resnet18', '--runtimes', 'eager', 'onnxruntime', '--rounds', '2',
                     '--threads', '1', '--checkpoint', str(tmp_path), '--json']) == 0
    rows = json.loads(capsys.readouterr().out)['rows']
    assert {(r['img_size'], r['in_chans'], r['num_classes']) for r in rows} == {(48, 1, 3)}
    assert all(r['outputs_match'] for r in rows) and rows[0]['top1'] is None  # not the paper's ImageNet figure
    assert cli_main(['bench', '-m', 'care_s0', '--checkpoint', str(tmp_path / 'none')]) == 2
    assert 'does not exist' in capsys.readouterr().err
