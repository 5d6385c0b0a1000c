"""Training building blocks: RNG capture, atomic state files, signals, metrics log, distributed context."""
import csv
import json
import os
import random
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from caretrans.models.checkpoint import CheckpointError, save_atomic
from caretrans.runtime.state import capture_rng_state, load_training_state, restore_rng_state
from caretrans.runtime.distributed import cleanup_distributed, setup_distributed
from caretrans.runtime.metrics import MetricsLogger


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_roundtrips_through_a_weights_only_file(tmp_path):
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's state
    state = capture_rng_state()
    expected = _draw()
    save_atomic(dict(rng=state), tmp_path / 'state.pth')
    _draw()
    restore_rng_state(torch.load(tmp_path / 'state.pth', weights_only=True)['rng'])
    assert _draw() == expected


def test_training_state_is_atomic_and_bad_files_are_clear(tmp_path):
    path = tmp_path / 'last.pth'
    save_atomic(dict(epoch=3, weights=torch.ones(2)), path)
    assert load_training_state(path)['epoch'] == 3
    assert [p.name for p in tmp_path.iterdir()] == ['last.pth']  # no temp file left behind
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_training_state(path)
    save_atomic([1, 2], path)
    with pytest.raises(CheckpointError, match='not a training state'):
        load_training_state(path)


@pytest.mark.parametrize('umask', [0o022, 0o002, 0o077])
@pytest.mark.parametrize('name', ['last.pth', 'model.safetensors'])
def test_checkpoints_follow_the_umask(tmp_path, umask, name):
    previous = os.umask(umask)
    try:
        save_atomic({'w': torch.ones(2)}, tmp_path / name)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask


def test_stale_temp_files_of_a_killed_save_are_removed_by_the_next_save(tmp_path):
    # What a process killed inside torch.save leaves: a half-written temp file beside the checkpoint.
    save_atomic(dict(epoch=1), tmp_path / 'last.pth')
    (tmp_path / '.last.pth.3f2a9c0d1e7b.tmp').write_bytes(b'PK\x03\x04 half a zip')
    (tmp_path / '.best.pth.0123456789ab.tmp').write_bytes(b'another file\'s')
    assert load_training_state(tmp_path / 'last.pth')['epoch'] == 1  # the temp file is never read
    save_atomic(dict(epoch=2), tmp_path / 'last.pth')
    assert sorted(p.name for p in tmp_path.iterdir()) == ['.best.pth.0123456789ab.tmp', 'last.pth']
    assert load_training_state(tmp_path / 'last.pth')['epoch'] == 2


_GRACEFUL_STOP_CHECK = """
import os, signal
from caretrans.runtime.signals import GracefulStop
before = signal.getsignal(signal.SIGTERM)
with GracefulStop() as stop:
    assert not stop.requested
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.requested and stop.signal == 'SIGTERM'
assert signal.getsignal(signal.SIGTERM) is before
with GracefulStop() as stop:  # later signals do not interrupt the save: they are acknowledged once
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested and stop.signal == 'SIGINT'
    os.kill(os.getpid(), signal.SIGINT)
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.signal == 'SIGINT'
print('survived')
"""


def test_graceful_stop_catches_real_signals_and_restores_handlers():
    # In a process of its own: signal handlers belong to the main thread, which an xdist worker's test is not.
    done = subprocess.run([sys.executable, '-c', _GRACEFUL_STOP_CHECK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == 'survived'
    assert done.stderr.strip() == 'SIGINT again: finishing the step and saving the run, then exiting'


def test_metrics_logger_writes_jsonl_csv_and_curves(tmp_path):
    log = MetricsLogger(tmp_path)
    log.log(dict(epoch=0, train_loss=2.0, lr=1e-3))
    log.log(dict(epoch=1, train_loss=1.5, lr=2e-3, val_top1=torch.tensor(55.0)))  # a new column
    log.log(dict(epoch=2, train_loss=1.0, lr=1e-3, val_top1=70.0))
    rows = list(csv.DictReader(open(tmp_path / 'metrics.csv')))
    assert [r['epoch'] for r in rows] == ['0', '1', '2'] and rows[0]['val_top1'] == '' and rows[2]['val_top1'] == '70.0'
    assert json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[1])['val_top1'] == 55.0
    png = log.plot()
    assert png == tmp_path / 'curves.png' and png.read_bytes()[:4] == b'\x89PNG'
    # A resumed run reads the log back and redoes epochs from its checkpoint on.
    resumed = MetricsLogger(tmp_path)
    assert len(resumed.records) == 3
    resumed.truncate('epoch', 2)
    resumed.log(dict(epoch=2, train_loss=0.9))
    assert [r['train_loss'] for r in MetricsLogger(tmp_path).records] == [2.0, 1.5, 0.9]


def test_disabled_metrics_logger_writes_nothing(tmp_path):
    log = MetricsLogger(tmp_path / 'run', enabled=False)
    log.log(dict(epoch=0, loss=1.0))
    log.plot()
    assert not (tmp_path / 'run').exists()


def test_single_process_context(monkeypatch):
    for var in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK'):
        monkeypatch.delenv(var, raising=False)
    ctx = setup_distributed('cpu')
    assert (ctx.rank, ctx.world_size, ctx.is_primary, ctx.is_distributed) == (0, 1, True, False)
    assert ctx.device == torch.device('cpu')
    cleanup_distributed()
