"""Exports: each artefact is checked against PyTorch, and a failed check is an error."""
import json
import platform

import numpy as np
import pytest
import timm
import torch

import caretrans
from caretrans.cli import export as export_cli, main as cli_main
from caretrans.export import ExportCheckError, convert, export_metadata, export_model, onnx_session
from caretrans.export.convert import check_onnx


@pytest.fixture(scope='module')
def fused():
    torch.manual_seed(0)
    return caretrans.reparameterize(timm.create_model('care_s0', num_classes=10))


def test_onnx_dynamic_batch(fused, tmp_path):
    report = export_model(fused, 'onnx', tmp_path / 'm.onnx', img_size=64, dynamic_batch=True)
    assert set(report['max_abs_diff']) == {'1', '8'} and max(report['max_abs_diff'].values()) < 1e-4
    session = onnx_session(tmp_path / 'm.onnx', threads=1)
    assert session.get_inputs()[0].shape[0] == 'batch'
    out = session.run(None, {'image': np.zeros((3, 3, 64, 64), np.float32)})[0]
    assert out.shape == (3, 10)


def test_failed_onnx_check_is_an_error(fused, tmp_path):
    export_model(fused, 'onnx', tmp_path / 'm.onnx', img_size=64)
    other = caretrans.reparameterize(timm.create_model('care_s0', num_classes=10))
    with pytest.raises(ExportCheckError, match='differs from PyTorch by up to'):
        check_onnx(other, tmp_path / 'm.onnx', [torch.randn(1, 3, 64, 64)])


def test_torchscript_loads_back_and_matches(fused, tmp_path):
    report = export_model(fused, 'torchscript', tmp_path / 'm.pt', img_size=64, metadata={'card': '{"a": 1}'})
    assert set(report['max_abs_diff']) == {'1', '2'} and max(report['max_abs_diff'].values()) < 1e-4
    assert export_metadata(tmp_path / 'm.pt') == {'card': '{"a": 1}'}  # the archive's extra files
    loaded = torch.jit.load(str(tmp_path / 'm.pt'))
    x = torch.randn(2, 3, 96, 64)  # another size than traced: the graph is size-generic
    with torch.no_grad(), torch.jit.optimized_execution(False):
        torch.testing.assert_close(loaded(x), fused(x), rtol=1e-4, atol=1e-4)


def test_coreml_package_is_validated(fused, tmp_path):
    pytest.importorskip('coremltools')
    report = export_model(fused, 'coreml', tmp_path / 'm.mlpackage', img_size=64, metadata={'card': '{"a": 1}'})
    assert (tmp_path / 'm.mlpackage' / 'Manifest.json').is_file()
    assert export_metadata(tmp_path / 'm.mlpackage')['card'] == '{"a": 1}'  # beside coremltools' own entries
    assert report['numerically_checked'] == (platform.system() == 'Darwin')


def test_coreml_fp16_image_input_is_checked(fused, tmp_path):
    pytest.importorskip('coremltools')
    import coremltools as ct
    from torchvision.transforms import Normalize

    from caretrans.export.convert import ImageInput, check_coreml_spec

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    report = export_model(fused, 'coreml', tmp_path / 'm.mlpackage', img_size=64, fp16=True, image=(mean, std))
    program = report['coreml_program']
    assert program['input'] == 'image' and program['input_shape'] == [1, 3, 64, 64]
    assert program['precision'] == 'float16'
    spec = ct.models.MLModel(str(tmp_path / 'm.mlpackage'), skip_model_load=True).get_spec()
    assert spec.description.input[0].type.imageType.colorSpace == spec.description.input[0].type.imageType.RGB
    # The preprocessing inside the program is the training transform's normalisation.
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ImageInput(fused, mean, std)(pixels), fused(Normalize(mean, std)(pixels)))
        # ExecuTorch's image input: 0-255 pixels, scaled inside.
        torch.testing.assert_close(ImageInput(fused, mean, std, scale=1 / 255)(pixels * 255),
                                   fused(Normalize(mean, std)(pixels)))
    with pytest.raises(ExportCheckError, match='do not compute in float32'):
        check_coreml_spec(fused, spec, torch.zeros(1, 3, 64, 64), fp16=False)
    gray = caretrans.reparameterize(timm.create_model('care_s0', depths=(1, 1, 1, 1), num_classes=10, in_chans=1))
    report = export_model(gray, 'coreml', tmp_path / 'g.mlpackage', img_size=32, image=((0.29,), (0.35,)))
    assert report['coreml_program']['input_shape'] == [1, 1, 32, 32]
    assert report['coreml_program']['precision'] == 'float32'


def test_bad_format_and_options(fused, tmp_path):
    with pytest.raises(ValueError, match='unknown export format'):
        export_model(fused, 'tflite', tmp_path / 'm')
    with pytest.raises(ValueError, match='ONNX only'):
        export_model(fused, 'torchscript', tmp_path / 'm.pt', dynamic_batch=True)
    with pytest.raises(ValueError, match='Core ML options'):
        export_model(fused, 'onnx', tmp_path / 'm.onnx', fp16=True)


def test_export_cli_with_a_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    model = timm.create_model('care_s0', num_classes=10, in_chans=1).eval()
    caretrans.save_atomic({'model': model.state_dict(), 'epoch': 1}, tmp_path / 'ckpt.pth')
    out = tmp_path / 'gray.onnx'
    assert cli_main(['export', '--model', 'care_s0', '--checkpoint', str(tmp_path / 'ckpt.pth'), '--format', 'onnx',
                     '--img-size', '64', '--output', str(out), '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert report['reparameterized'] and max(report['max_abs_diff'].values()) < 1e-4
    x = np.random.default_rng(0).standard_normal((1, 1, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()  # the un-fused trained model
    np.testing.assert_allclose(onnx_session(out, threads=1).run(None, {'image': x})[0], expected, atol=1e-4)
    assert cli_main(['export', '--format', 'torchscript', '--output', str(tmp_path / 'm.pt'),
                     '--int8', 'synthetic']) == 2
    assert '--int8 quantises the ONNX or ExecuTorch export' in capsys.readouterr().err


def test_export_and_validate_take_model_classes_and_channels_from_the_checkpoint(tmp_path, capsys):
    """Neither command needs --model, --num-classes or --in-chans for a checkpoint that records them."""
    torch.manual_seed(0)
    name = 'care_s0_no_inter2'  # not the default care_s0: the recorded name must be used
    gray = timm.create_model(name, num_classes=7, in_chans=1).eval()
    caretrans.save_atomic({'state_dict': gray.state_dict(), 'model_name': name, 'epoch': 3}, tmp_path / 'best.pth')
    out = tmp_path / 'gray.onnx'
    assert cli_main(['export', '--checkpoint', str(tmp_path / 'best.pth'), '--format', 'onnx', '--img-size', '32',
                     '--output', str(out), '--json']) == 0
    assert json.loads(capsys.readouterr().out)['model'] == name
    x = np.random.default_rng(0).standard_normal((1, 1, 32, 32)).astype(np.float32)
    with torch.no_grad():
        expected = gray(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_session(out, threads=1).run(None, {'image': x})[0], expected, atol=1e-4)

    rgb = timm.create_model(name, num_classes=10)  # synthetic data: 10 classes, 3 channels
    recipe = dict(model=name, img_size=32, crop_pct=1.0)  # inside the checkpoint; no recipe.yaml beside it
    caretrans.save_atomic({'model': rgb.state_dict(), 'model_name': name, 'recipe': recipe}, tmp_path / 'last.pth')
    assert cli_main(['validate', '--checkpoint', str(tmp_path / 'last.pth'), '--data', 'synthetic', '-j', '0',
                     '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report['model'], report['img_size'], report['crop_pct'], report['count']) == (name, 32, 1.0, 64)


def test_export_of_non_finite_weights_fails_and_leaves_nothing(tmp_path, capsys):
    model = timm.create_model('care_s0', num_classes=10)
    sd = dict(model.state_dict())
    sd['head.fc.bias'] = torch.full_like(sd['head.fc.bias'], float('nan'))
    caretrans.save_atomic(sd, tmp_path / 'nan.safetensors')
    out = tmp_path / 'exports' / 'm.onnx'
    with pytest.warns(UserWarning, match=r'hold NaN or inf values.*head\.fc\.bias'):
        rc = cli_main(['export', '--checkpoint', str(tmp_path / 'nan.safetensors'), '--format', 'onnx',
                       '--img-size', '32', '--output', str(out)])
    assert rc == 2
    assert 'the PyTorch model outputs NaN or inf' in capsys.readouterr().err
    assert list((tmp_path / 'exports').iterdir()) == []  # neither the unverified model nor a temp file


def test_a_failed_check_keeps_an_earlier_export(tmp_path, monkeypatch):
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    out = tmp_path / 'm.pt'
    export_model(tiny, 'torchscript', out, img_size=32)
    before = out.read_bytes()

    def disagree(*args):
        raise ExportCheckError('differs')
    monkeypatch.setitem(convert._CHECKS, 'torchscript', disagree)
    with torch.no_grad():
        tiny[0].bias.add_(1.0)  # a new export would differ from the file on disk
    with pytest.raises(ExportCheckError):
        export_model(tiny, 'torchscript', out, img_size=32)
    assert out.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ['m.pt']


@pytest.mark.parametrize('args,message', [
    (['--format', 'onnx', '--output', '{tmp}'], 'is a folder; give a file name'),
    (['--format', 'onnx', '--output', '{tmp}/notes.txt/m.onnx'], 'notes.txt is not a folder'),
    (['--format', 'coreml', '--output', '{tmp}/m.onnx'], 'Core ML writes a .mlpackage folder'),
    (['--format', 'onnx', '--output', '{tmp}/m.onnx', '--img-size', '7'], 'img_size 7 is too small'),
    (['--format', 'onnx', '--output', '{tmp}/m.onnx', '--calib-count', '0'], '--calib-count 0: expected at least 1'),
    (['--format', 'onnx', '--output', '{tmp}/m.onnx', '--crop-pct', '0'], '--crop-pct 0.0: expected a fraction'),
])
def test_export_refuses_an_impossible_request_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    (tmp_path / 'notes.txt').write_text('a file')
    monkeypatch.setattr(export_cli, '_build', lambda args: pytest.fail('the model was built'))
    assert cli_main(['export'] + [a.format(tmp=tmp_path) for a in args]) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']
