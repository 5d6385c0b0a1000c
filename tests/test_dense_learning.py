"""The synthetic shapes data, and the det / seg commands learning on it end to end."""
import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from caretrans.cli import main as cli_main
from caretrans.dense.data import AdeSegmentation, CocoInstances
from caretrans.dense.metrics import SegmentationMeter
from caretrans.dense.recipe import DenseRecipe, PRESETS
from caretrans.dense.synthetic import SEMANTIC_CLASSES, make_shapes_dataset
from caretrans.models.checkpoint import weights_info
from caretrans.runtime.metrics import MetricsLogger
from caretrans.runtime.state import STATE_KEYS, load_training_state


# pycocotools 2.0.11 with NumPy 2 warns on every mask decode.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(root, num_train=64, num_val=16, image_size=128, seed=0)
    return root


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob('*')):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def test_synthetic_data_is_deterministic_and_masks_are_exact(tmp_path):
    for name, seed in (('a', 3), ('b', 3), ('c', 4)):
        make_shapes_dataset(tmp_path / name, num_train=6, num_val=2, image_size=64, seed=seed)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b') != _digest(tmp_path / 'c')
    coco = CocoInstances(tmp_path / 'a/images/training', tmp_path / 'a/annotations/instances_training.json')
    ade = AdeSegmentation(tmp_path / 'a', 'training', num_classes=len(SEMANTIC_CLASSES))
    occluded = 0
    for i in range(len(coco)):
        _, target = coco[i]
        label = ade[i][1]
        masks = target['masks'].bool()
        assert masks.sum(0).max() <= 1  # visible masks never overlap
        rebuilt = torch.zeros_like(label)
        for m, cls in zip(masks, target['labels']):
            rebuilt[m] = int(cls)  # COCO label k (1..3) is semantic class k: 0 is the background
        assert torch.equal(rebuilt, label)  # both formats describe the same pixels
        # Occlusion: a shape drawn over another leaves their visible masks touching.
        grown = torch.nn.functional.max_pool2d(masks[:, None].float(), 3, stride=1, padding=1)[:, 0].bool()
        occluded += sum(bool((grown[i] & masks[j]).any()) for i in range(len(masks)) for j in range(len(masks)) if i != j)
    assert occluded > 0
    image = np.asarray(Image.open(tmp_path / 'a/images/training/000000.png'))
    assert image.std() > 10  # textured, not flat


def _run_json(capsys, argv):
    assert cli_main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_detection_learns(shapes, tmp_path, capsys):
    run = tmp_path / 'det'
    metrics = _run_json(capsys, ['det', 'train', '--recipe', 'shapes-det', '--data', str(shapes),
                                 '--output', str(run), '--no-progress', '--json'])
    # Random boxes score ~0; after 112 CPU steps this reaches ~75 % box / ~80 % mask AP50.
    assert metrics['bbox_AP50'] > 40 and metrics['segm_AP50'] > 40 and metrics['bbox_AP'] > 10
    assert set(metrics['per_class_bbox_AP']) == {'circle', 'square', 'triangle'}
    assert {'last.pth', 'model.safetensors', 'recipe.yaml', 'metrics.csv', 'curves.png'} <= {p.name for p in run.iterdir()}
    assert (metrics['epoch'], metrics['status'], metrics['run_dir']) == (7, 'finished', str(run))
    info = weights_info(run / 'model.safetensors')
    assert dict(info, card=None) == dict(model_name='care_s0', task='det', epoch='7', card=None)
    again = _run_json(capsys, ['det', 'validate', '--checkpoint', str(run / 'model.safetensors'), '--json'])
    assert again.pop('per_class_segm_AP') == metrics.pop('per_class_segm_AP')
    assert again.pop('per_class_bbox_AP') == metrics.pop('per_class_bbox_AP')
    assert again == pytest.approx({k: v for k, v in metrics.items() if k not in ('epoch', 'status', 'run_dir')})


def test_segmentation_learns(shapes, tmp_path, capsys):
    metrics = _run_json(capsys, ['seg', 'train', '--recipe', 'shapes-seg', '--data', str(shapes),
                                 '--output', str(tmp_path / 'seg'), '--no-progress', '--json'])
    val = AdeSegmentation(shapes, 'validation', num_classes=len(SEMANTIC_CLASSES))
    majority = SegmentationMeter(len(SEMANTIC_CLASSES))
    for i in range(len(val)):
        majority.update(torch.zeros_like(val[i][1]), val[i][1])  # everything background
    baseline = majority.compute()['mIoU']
    assert baseline < 30
    assert metrics['mIoU'] > 60 and metrics['mIoU'] > 2.5 * baseline
    assert list(metrics['per_class_iou']) == list(SEMANTIC_CLASSES)  # the names of the data's objectInfo150.txt
    assert all(iou > 30 for iou in metrics['per_class_iou'].values())


class _StopAfter:
    """GracefulStop that 'receives a SIGTERM' after `steps` optimiser steps."""

    signal = 'SIGTERM'

    def __init__(self, steps):
        self.steps, self.checks = steps, 0

    @property
    def requested(self):
        self.checks += 1
        return self.checks > self.steps

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_stopped_run_resumes_exactly(shapes, tmp_path, monkeypatch, capsys):
    from caretrans.dense import train as train_module
    from caretrans.runtime import fit as fit_module
    recipe = DenseRecipe(**dict(PRESETS['shapes-seg'], data=str(shapes), epochs=2, batch_size=16))
    train_module.train(recipe, tmp_path / 'straight', progress=False)
    with monkeypatch.context() as m:
        m.setattr(fit_module, 'GracefulStop', lambda: _StopAfter(3))  # mid-way through epoch 1 of 2
        stopped = train_module.train(recipe, tmp_path / 'resumed', progress=False)
    assert stopped.status == 'SIGTERM' and not (tmp_path / 'resumed' / 'model.safetensors').exists()
    # Through the command line: a new run over it is refused, so is a resume that changes the recipe;
    # --resume RUN continues with the run's own recipe (read back from its recipe.yaml), into its folder.
    run = tmp_path / 'resumed'
    assert cli_main(['seg', 'train', '--output', str(run), '--recipe', 'shapes-seg', '--data', str(shapes)]) == 2
    assert 'already holds a run' in capsys.readouterr().err
    assert cli_main(['seg', 'train', '--resume', str(run / 'last.pth'), '--lr', '0.01', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'another recipe' in err and 'lr: 0.001 -> 0.01' in err
    assert cli_main(['seg', 'train', '--resume', str(run), '--no-progress']) == 0
    a, b = (load_file(tmp_path / d / 'model.safetensors') for d in ('straight', 'resumed'))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The resume rules of classification: a finished run says so; a larger epoch count trains it on.
    last = str(tmp_path / 'resumed' / 'last.pth')
    assert train_module.train(recipe, tmp_path / 'resumed', resume=last, progress=False).status == 'already finished'
    longer = train_module.train(dataclasses.replace(recipe, epochs=3), tmp_path / 'resumed', resume=last, progress=False)
    assert (longer.status, longer.epoch) == ('finished', 3)
    assert [r['epoch'] for r in MetricsLogger(tmp_path / 'resumed').records] == [1, 2, 3]  # numbered from 1


_SMALL_SEG = ['--recipe', 'shapes-seg', '--crop-size', '64', '--scale', '64', '--min-size', '64', '--batch-size', '2',
              '--workers', '1', '--epochs', '3', '--no-progress']


def _seg_run(run, data):
    cmd = [sys.executable, '-m', 'caretrans', 'seg', 'train', '--output', str(run), '--data', str(data), *_SMALL_SEG]
    # A session of its own: SIGTERM goes to the process group, loader workers included, as a job scheduler sends it.
    return subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS='1'), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.mark.xdist_group('processes')
def test_sigterm_stops_a_dense_run_like_a_classification_run_and_it_resumes_exactly(tmp_path):
    make_shapes_dataset(tmp_path / 'data', num_train=8, num_val=2, image_size=64, seed=0)
    reference, interrupted = _seg_run(tmp_path / 'reference', tmp_path / 'data'), _seg_run(tmp_path / 'run', tmp_path / 'data')
    run = tmp_path / 'run'
    deadline = time.monotonic() + 120
    while interrupted.poll() is None and not (run / 'last.pth').exists() and time.monotonic() < deadline:
        time.sleep(0.02)  # the first epoch's checkpoint: the training loop is running
    os.killpg(interrupted.pid, signal.SIGTERM)
    out = interrupted.communicate(timeout=120)[0]
    assert interrupted.returncode == 143, out
    state = load_training_state(run / 'last.pth')
    where = f"in epoch {state['epoch'] + 1}, after batch {state['batch']}" if state['batch'] else \
        f"after epoch {state['epoch']}"
    assert f"stopped by SIGTERM {where}; resume with --resume {run / 'last.pth'}" in out
    assert state['epoch'] < 3 and not (run / 'model.safetensors').exists()
    assert STATE_KEYS <= set(state)  # the layout of a classification run's last.pth

    resume = ('import sys; from caretrans.dense.recipe import load_recipe; from caretrans.dense.train import train; '
              'run = sys.argv[1]; sys.exit(train(load_recipe(run + "/recipe.yaml"), run, resume=run + "/last.pth", '
              'progress=False).status != "finished")')
    done = subprocess.run([sys.executable, '-c', resume, str(run)], env=dict(os.environ, OMP_NUM_THREADS='1'),
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert reference.wait(timeout=180) == 0, reference.communicate()[0]
    a, b = (load_file(d / 'model.safetensors') for d in (tmp_path / 'reference', run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_bad_annotations_fail_the_command_with_the_record_named(shapes, tmp_path, capsys):
    ann = json.loads((shapes / 'annotations' / 'instances_validation.json').read_text())
    ann['annotations'][2]['bbox'] = [1, 2, 3]
    bad_root = tmp_path / 'bad'
    (bad_root / 'annotations').mkdir(parents=True)
    (bad_root / 'images').symlink_to(shapes / 'images')
    (bad_root / 'annotations' / 'instances_training.json').write_text(
        (shapes / 'annotations' / 'instances_training.json').read_text())
    (bad_root / 'annotations' / 'instances_validation.json').write_text(json.dumps(ann))
    rc = cli_main(['det', 'train', '--recipe', 'shapes-det', '--data', str(bad_root), '--output', str(tmp_path / 'r')])
    err = capsys.readouterr().err
    assert rc == 2 and 'instances_validation.json: annotations[2] (id 3): bbox must be' in err
    assert cli_main(['det', 'validate', '--checkpoint', str(tmp_path / 'none.pth')]) == 2
    assert 'none.pth does not exist' in capsys.readouterr().err
