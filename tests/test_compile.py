"""--compile of `caretrans train`, `validate` and `bench`: each compiles what it runs, and the numbers stay.

torch.compile is spied on and given the 'eager' backend (Dynamo's graph capture without code
generation), so these check the wiring in seconds; compiled kernels are the GPU benchmark's business.
"""
import json

import pytest
import torch

from caretrans.cli import main as cli_main
from caretrans.train.recipe import Recipe
from caretrans.train.trainer import train

TINY = dict(data='synthetic', img_size=32, batch_size=16, workers=0, epochs=1, warmup_epochs=0, lr=2e-3,
            drop_path=0.0, scale=(1.0, 1.0), hflip=0.0, aa=None, color_jitter=0.0, reprob=0.0, mixup=0.0,
            cutmix=0.0, smoothing=0.0, crop_pct=1.0)


@pytest.fixture
def compiled(monkeypatch):
    """The modules passed to torch.compile; compiling with Dynamo's eager backend."""
    calls = []
    real = torch.compile

    def spy(model, **kwargs):
        calls.append(model)
        return real(model, **dict(kwargs, backend='eager'))

    monkeypatch.setattr(torch, 'compile', spy)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


pytestmark = pytest.mark.usefixtures('one_thread')


def test_train_compile_compiles_training_and_evaluation(tmp_path, compiled, capsys):
    plain = train(Recipe(**TINY), tmp_path / 'plain', progress=False)
    assert compiled == []
    result = train(Recipe(**dict(TINY, compile=True)), tmp_path / 'compiled', progress=False)
    assert len(compiled) == 2 and all(m is result.model for m in compiled)  # no DDP in one process
    assert result.status == 'finished'
    # Compiled graphs skip the eager CPU fast paths (care.py: GEMM 1x1 convs, cropped depthwise kernels):
    # the same function, other rounding, drifting apart over 8 steps.
    assert result.metrics['loss'] == pytest.approx(plain.metrics['loss'], rel=1e-2)


def test_validate_compile(released_checkpoint, compiled, capsys):
    argv = ['validate', '--checkpoint', str(released_checkpoint()), '--data', 'synthetic', '--num-classes', '1000',
            '--img-size', '64', '-j', '0', '--json']
    assert cli_main(argv) == 0
    plain = json.loads(capsys.readouterr().out)
    assert cli_main(argv + ['--compile']) == 0
    assert len(compiled) == 1
    out = json.loads(capsys.readouterr().out)
    assert out['loss'] == pytest.approx(plain['loss'], rel=1e-5) and out['top1'] == plain['top1']


def test_bench_compile(compiled, capsys):
    assert cli_main(['bench', '--models', 'care_s0', '--runtimes', 'eager', '--img-size', '64', '--rounds', '1',
                     '--threads', '1', '--compile', '--channels-last', '--json']) == 0
    rows = json.loads(capsys.readouterr().out)['rows']
    assert len(compiled) == 2  # un-fused and fused CARE-S0
    assert [(r['variant'], r['compile'], r['channels_last'], r['device']) for r in rows] == [
        ('unfused', True, True, 'cpu'), ('fused', True, True, 'cpu')]


def test_bench_gpu_flags_are_checked(capsys):
    for argv, message in (
            (['--cuda-graphs'], '--cuda-graphs needs --device cuda'),
            (['--device', 'cuda', '--runtimes', 'eager', 'onnxruntime'], 'apply to the PyTorch runtime only'),
            (['--dtype', 'bfloat16'], 'apply to the PyTorch runtime only')):
        assert cli_main(['bench', '--models', 'care_s0'] + argv) == 2
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli_main(['bench', '--models', 'care_s0', '--device', 'cuda', '--runtimes', 'eager']) == 2
        assert 'no CUDA device' in capsys.readouterr().err
