"""A real SIGTERM mid-epoch, then --resume: the same weights as a run never interrupted."""
import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from caretrans.runtime.state import load_training_state
from caretrans.train.recipe import Recipe

# Every source of randomness on: drop path, random crops, flips and erasing (drawn in two loader
# workers), mixup and cutmix. 128 synthetic 32x32 images, 8 steps of 16 per epoch.
RECIPE = dict(data='synthetic', img_size=32, batch_size=16, workers=2, epochs=2, warmup_epochs=0.5, lr=2e-3,
              drop_path=0.1, scale=(0.5, 1.0), hflip=0.5, aa=None, color_jitter=0.0, reprob=0.25, mixup=0.8,
              cutmix=1.0, smoothing=0.1, deterministic=True)


def _start(tmp_path, name, *extra):
    cmd = [sys.executable, '-m', 'caretrans', 'train', '--recipe', str(tmp_path / 'recipe.yaml'),
           '--output', str(tmp_path / name), '--no-progress', '--threads', '1', *extra]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _weights(path):
    return load_training_state(path)['model']


@pytest.mark.xdist_group('processes')
def test_sigterm_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    Recipe(**RECIPE).save(tmp_path / 'recipe.yaml')
    reference = _start(tmp_path, 'reference')
    interrupted = _start(tmp_path, 'interrupted')
    last = tmp_path / 'interrupted' / 'last.pth'

    # Watch the run's folder: every last.pth a reader can see is complete; SIGTERM as soon as the
    # first evaluated one appears (epoch 1 saved and evaluated), so the run stops a batch or two into epoch 2.
    sent = False
    deadline = time.monotonic() + 240
    while interrupted.poll() is None and time.monotonic() < deadline:
        if last.exists():
            state = load_training_state(last)  # raises CheckpointError on a half-written file
            if state['evaluated'] and not sent:
                interrupted.send_signal(signal.SIGTERM)
                sent = True
        time.sleep(0.02)
    out = interrupted.communicate(timeout=60)[0]
    assert interrupted.returncode == 143, out
    assert 'stopped by SIGTERM in epoch 2, after batch' in out and '--resume' in out
    stopped = load_training_state(last)
    assert stopped['epoch'] == 1 and 0 < stopped['batch'] < 8, (stopped['epoch'], stopped['batch'])
    assert not [p.name for p in last.parent.iterdir() if p.name.endswith('.tmp')]

    resumed = _start(tmp_path, 'interrupted', '--resume', str(last))
    out = resumed.communicate(timeout=240)[0]
    assert resumed.returncode == 0, out
    assert reference.wait(timeout=240) == 0, reference.communicate()[0]

    expected, actual = _weights(tmp_path / 'reference' / 'last.pth'), _weights(last)
    assert expected.keys() == actual.keys()
    for k in expected:
        torch.testing.assert_close(actual[k], expected[k], rtol=0, atol=1e-6, msg=k)
    # The metrics log holds each epoch once, with the numbers of the uninterrupted run.
    logged = [_metrics(tmp_path / run) for run in ('interrupted', 'reference')]
    assert [r['epoch'] for r in logged[0]] == list(range(1, RECIPE['epochs'] + 1))  # numbered from 1
    assert logged[0] == logged[1]


def _metrics(run_dir):
    rows = list(csv.DictReader(open(run_dir / 'metrics.csv')))
    return [{k: float(v) for k, v in r.items() if k != 'train_img_s'} for r in rows]
