"""LiteRT (.tflite) models: converted by litert-torch with every operator in LiteRT's builtin set, fully
delegated to XNNPACK, checked against PyTorch in LiteRT's interpreter; float32, float16 weights, int8
(PT2E), NHWC input, metadata; and the bench's LiteRT entry.

Conversion takes seconds per model (minutes for int8 on a loaded machine), so these tests run in the
serial process of the native runtimes (Makefile) on models of one block per stage at 32x32 or 64x64;
the whole CARE-S0 is `slow`.
"""
import json

import numpy as np
import pytest
import timm
import torch

pytest.importorskip('litert_torch')
pytest.importorskip('ai_edge_litert')

import caretrans  # noqa: E402
from caretrans.cli import main as cli_main  # noqa: E402
from caretrans.export import ExportCheckError  # noqa: E402
from caretrans.export import litert  # noqa: E402
from caretrans.export.mobile import INT8_TOL  # noqa: E402
from caretrans.export.quantize import calibration_images  # noqa: E402

from tiny_care import tiny_care as _tiny  # noqa: E402

pytestmark = pytest.mark.xdist_group('litert')


@pytest.fixture(scope='module')
def tiny():
    return _tiny()


def test_elu_rewrite_computes_elu():
    x = torch.linspace(-30, 30, 2001)
    for alpha, scale, input_scale in [(1.0, 1.0, 1.0), (0.5, 2.0, 1.5)]:
        torch.testing.assert_close(litert._elu_without_select(x, alpha, scale, input_scale),
                                   torch.ops.aten.elu(x, alpha, scale, input_scale), rtol=1e-6, atol=1e-6)
    assert torch.equal(litert._elu_without_select(x)[x >= 0], x[x >= 0])  # exact where elu is the identity


def test_float_model_is_builtin_fully_delegated_and_carries_metadata(tiny, tmp_path):
    card = {'caretrans.model_card': json.dumps({'architecture': 'care_s0', 'labels': ['a', 'b']}), 'note': 'é'}
    out = tmp_path / 'tiny.tflite'
    report = litert.export_tflite(tiny, out, img_size=64, metadata=card)
    assert report['precision'] == 'fp32' and report['layout'] == 'NCHW' and report['input_shape'] == [1, 3, 64, 64]
    # Every operator builtin (no Flex / custom ops: GELU is LiteRT's GELU, not an Erf), all in one XNNPACK segment.
    assert not any(op.startswith('custom:') for op in report['operators'])
    assert {'GELU', 'BATCH_MATMUL', 'EXP', 'RELU'} <= set(report['operators'])
    assert 'SELECT' not in report['operators'] and 'SELECT_V2' not in report['operators']  # the ELU rewrite
    assert report['segments'] == 1 and report['outside'] == {}
    assert sum(report['delegated'].values()) == sum(report['operators'].values())
    assert report['max_abs_diff']['1'] < 1e-4 and report['metadata'] == sorted(card)
    buffer = out.read_bytes()
    stored = litert.read_metadata(buffer)
    assert {k: stored[k] for k in card} == card and 'min_runtime_version' in stored  # the converter's own kept
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny(x)
    assert expected.abs().max() > 0.1  # logits of order one: the tolerance below is meaningful
    torch.testing.assert_close(litert.LoadedModel(buffer)(x), expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match='already wrote an entry'):
        litert.add_metadata(buffer, {'min_runtime_version': '1'})


def test_fp16_weights_with_nhwc_input(tiny, tmp_path):
    out = tmp_path / 'nhwc16.tflite'
    report = litert.export_tflite(tiny, out, img_size=64, nhwc=True, fp16=True)
    assert report['layout'] == 'NHWC' and report['input_shape'] == [1, 64, 64, 3]
    assert report['precision'] == 'fp16 weights' and report['segments'] == 1 and report['outside'] == {}
    # Every conv's weights stored in float16, dequantised once at load (XNNPACK folds it).
    assert report['operators']['DEQUANTIZE'] >= report['operators']['CONV_2D'] + report['operators']['DEPTHWISE_CONV_2D']
    float_size = sum(p.numel() for p in tiny.parameters()) * 4
    assert out.stat().st_size < 0.6 * float_size
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny(x)
    got = litert.LoadedModel(out.read_bytes())(x.permute(0, 2, 3, 1).numpy())
    error = float((got - expected).abs().max())
    assert 1e-7 < error < 1e-2 * float(expected.abs().max())  # float16 rounding of the weights, no more
    assert 0 < report['max_abs_diff']['1'] < 2e-2


def test_failed_check_is_an_error_and_leaves_no_file(tiny, tmp_path, monkeypatch):
    # A conversion that computes something else (here: another model's weights) must not be written.
    other = _tiny()
    with torch.no_grad():
        other.head.fc.bias.add_(0.01)
    export = litert.export_graph
    monkeypatch.setattr(litert, 'export_graph', lambda model, x: export(other, x))
    with pytest.raises(ExportCheckError, match='LiteRT output differs from PyTorch by up to 0.01'):
        litert.export_tflite(tiny, tmp_path / 'wrong.tflite', img_size=32)
    assert list(tmp_path.iterdir()) == []


def test_export_cli_tflite_with_int8_nhwc(tmp_path, capsys, monkeypatch):
    # Two stages of linear attention (early='attention') keep the int8 conversion short; two heads each,
    # as in the released models (LiteRT turns a one-head attention's matmuls into FULLY_CONNECTED ops with
    # activations for weights, which XNNPACK does not take).
    model = _tiny(depths=(1, 1), dims=(24, 48), expansions=((2, 2), (2, 4)), early='attention', head_dims=(4, 8))
    monkeypatch.setattr('caretrans.cli.export._build', lambda args, info: model)
    out = tmp_path / 'm.tflite'
    assert cli_main(['export', '--format', 'tflite', '--nhwc', '--img-size', '32', '--output', str(out), '--int8',
                     'synthetic', '--calib-count', '8', '--eval-count', '4', '--json']) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert 'int8 LiteRT' in captured.err  # the progress bar over calibration and conversion
    assert report['layout'] == 'NHWC' and report['segments'] == 1 and report['outside'] == {}
    assert report['input'].startswith('input (1, 32, 32, 3), NHWC: float pixels')  # the layout the file takes
    q = report['int8']
    assert q['output'] == str(tmp_path / 'm.int8.tflite') and (tmp_path / 'm.int8.tflite').is_file()
    assert q['runtime'] == 'LiteRT (XNNPACK)' and q['input_dtype'] == 'int8'
    delegated = q['delegated']  # int8 convs (and the quantise/dequantise around float ops) in XNNPACK
    assert delegated['CONV_2D'] >= 4 and delegated['QUANTIZE'] >= 1 and delegated['FULLY_CONNECTED'] == 1
    assert set(q['outside']) <= {'GELU'}  # int8 GELU: LiteRT's own kernel (XNNPACK has a float GELU only)
    x = torch.from_numpy(next(calibration_images('synthetic', 1, 32, 3)))
    with torch.no_grad():
        scale = model(x).abs().max().item()
    assert q['max_abs_diff']['1'] < INT8_TOL * scale  # to PyTorch's simulation of the int8 model
    assert 0 < q['max_abs_diff_to_float'] < 0.5 * scale  # int8 rounding: close to float, not equal
    assert q['latency_ratio_int8_to_float'] > 0
    assert q['eval_images'] == 4 and 0 <= q['top1_int8'] <= 100 and 0 <= q['top1_float'] <= 100
    for flags, message in [(['--nhwc'], '--nhwc chooses the input layout'),
                           (['--backend', 'xnnpack', '--format', 'tflite'], 'do not apply to LiteRT'),
                           (['--format', 'coreml', '--int8', 'synthetic'], '--int8 quantises the ONNX or ExecuTorch export or the LiteRT')]:
        args = ['export', '--output', str(tmp_path / 'x.tflite')] + flags
        assert cli_main(args if '--format' in flags else args + ['--format', 'onnx']) == 2
        assert message in capsys.readouterr().err


def test_bad_input_is_a_clear_error(tiny):
    loaded = litert.LoadedModel(litert.convert(litert.export_graph(tiny, torch.zeros(1, 3, 32, 32)),
                                               torch.zeros(1, 3, 32, 32)))
    with pytest.raises(ValueError, match=r'takes input of shape \(1, 3, 32, 32\), got \(1, 3, 64, 64\)'):
        loaded(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match='exclude each other'):
        litert.export_tflite(tiny, 'unused.tflite', img_size=32, fp16=True, calibration=[torch.zeros(1, 3, 32, 32)])


@pytest.mark.slow
def test_care_s0_converts_to_builtin_ops_in_one_xnnpack_segment(released_checkpoint, tmp_path):
    # The whole released CARE-S0 (closed-form weights: logits of real scale), at 32x32 to keep it short.
    model = timm.create_model('care_s0', pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(released_checkpoint('care_s0'))))
    report = litert.export_tflite(caretrans.reparameterize(model), tmp_path / 's0.tflite', img_size=32)
    ops = report['operators']
    assert not any(op.startswith('custom:') for op in ops)  # no Flex (Select TF) op: GELU is the builtin GELU
    assert 'ERF' not in ops and ops['GELU'] == 37  # 36 interaction units and the head
    assert ops['BATCH_MATMUL'] == 3 * 12 and ops['EXP'] == 2 * 12  # 12 attention blocks, ELU on q and k
    assert report['segments'] == 1 and report['outside'] == {}  # all of it in one XNNPACK delegate
    assert report['numerically_checked'] and report['max_abs_diff']['1'] < 1e-3  # within rtol = atol = 1e-4


def test_bench_litert_entry_is_checked_and_timed():
    from caretrans.bench.latency import benchmark

    rows = benchmark(['mobileone_s0'], ['eager', 'litert'], img_size=32, threads=1, rounds=2)
    eager, lite = rows
    assert lite['runtime'] == 'litert' and lite['outputs_match']
    assert lite['output_error'] < 1e-4 and lite['rounds'] == 2 and lite['median_ms'] > 0
