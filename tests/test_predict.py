"""A classification run used from its folder alone, in another working directory: predict (CLI and
`load_run`), export at the recorded size, validate on a subset of its classes; and fine-tuning that keeps
the classifier's rows by class name."""
import csv
import json
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from PIL import Image

import caretrans
from caretrans.cli import main as cli_main
from caretrans.data.loader import build_transform
from caretrans.models.card import CARD_KEY, ModelCard
from caretrans.train.recipe import Recipe
from caretrans.train.trainer import train

pytestmark = pytest.mark.usefixtures('one_thread')

# Class colours (RGB); the labels are the sorted names: cat 0, dog 1, fox 2.
COLOURS = dict(cat=(200, 40, 40), dog=(40, 200, 40), fox=(40, 40, 200), wolf=(200, 200, 40))
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Seconds of training on 40x40 PNGs at 32 px; crop 0.875 so that the recorded crop matters.
TINY = dict(img_size=32, batch_size=6, workers=0, epochs=1, warmup_epochs=0, lr=2e-3, drop_path=0.0,
            scale=(1.0, 1.0), hflip=0.0, aa=None, color_jitter=0.0, reprob=0.0, mixup=0.0, cutmix=0.0,
            smoothing=0.0, crop_pct=0.875)


def _images(folder, colour, count, seed):
    """`count` 40x40 PNGs of `colour` with noise."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = np.clip(np.array(colour) + rng.normal(0, 30, (40, 40, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f'{i}.png')


def _data(root, classes=('cat', 'dog', 'fox'), per_class=6):
    for split, seed in (('train', 0), ('val', 1)):
        for i, name in enumerate(classes):
            _images(root / split / name, COLOURS[name], per_class if split == 'train' else 3, seed * 10 + i)
    return root


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A 3-class run, then moved away from where it was trained, its data folder gone."""
    where = tmp_path_factory.mktemp('trained')
    data = _data(where / 'data')
    train(Recipe(data=str(data), **TINY), where / 'run', progress=False)
    moved = tmp_path_factory.mktemp('moved') / 'run'
    shutil.move(str(where / 'run'), moved)
    shutil.rmtree(data)
    return moved


def _manual_forward(run_dir, paths, mode='RGB'):
    """Probabilities of the run's best weights, built by hand: the model rebuilt and the trainer's evaluation
    transform (32 px, crop 0.875, ImageNet statistics for an image folder)."""
    model = timm.create_model('care_s0', num_classes=3)
    caretrans.load_checkpoint(model, run_dir / 'best.safetensors')
    transform = build_transform(False, 32, IMAGENET_MEAN, IMAGENET_STD, crop_pct=0.875)
    images = torch.stack([transform(Image.open(p).convert(mode)) for p in paths])
    with torch.no_grad():
        return model.eval()(images).softmax(1), images


def test_the_run_records_its_card_with_each_weight_file(run):
    best, last = caretrans.read_card(run / 'best.safetensors'), caretrans.read_card(run / 'last.pth')
    assert best == last == ModelCard.for_classifier('care_s0', ('cat', 'dog', 'fox'), 32, 3, IMAGENET_MEAN,
                                                    IMAGENET_STD, 0.875, 'bicubic', best.dataset)
    assert best.dataset.endswith('/data') and best.task == 'classification'
    info = caretrans.describe(run / 'last.pth')
    assert (info.model, info.num_classes, info.img_size) == ('care_s0', 3, 32)


def test_predict_from_the_run_folder_alone(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    images = tmp_path / 'photos'
    _images(images / 'a', COLOURS['fox'], 2, seed=7)
    _images(images / 'b' / 'deeper', COLOURS['cat'], 1, seed=8)
    (images / 'b' / 'notes.txt').write_text('not an image')  # not an image suffix: not looked at
    (images / 'b' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    assert cli_main(['predict', '--checkpoint', str(run), str(images), '--top-k', '2', '--json',
                     '--output', 'predictions.csv']) == 0
    out, err = capsys.readouterr()
    assert err.count('\n') == 1 and 'broken.png' in err and 'skipping an unreadable image' in err
    report = json.loads(out)
    paths = [images / 'a' / '0.png', images / 'a' / '1.png', images / 'b' / 'deeper' / '0.png']
    assert [p['path'] for p in report['predictions']] == [str(p) for p in paths]
    assert [u['path'] for u in report['unreadable']] == [str(images / 'b' / 'broken.png')]

    probs, batch = _manual_forward(run, paths)
    labels = ['cat', 'dog', 'fox']
    for p, row in zip(report['predictions'], probs):
        top = row.topk(2)
        assert [t['label'] for t in p['top']] == [labels[i] for i in top.indices]
        assert [t['probability'] for t in p['top']] == pytest.approx(top.values.tolist(), abs=1e-6)
    with open(tmp_path / 'predictions.csv', newline='') as f:
        rows = list(csv.reader(f))
    assert rows[0] == ['path', 'label_1', 'probability_1', 'label_2', 'probability_2']
    assert [r[0] for r in rows[1:]] == [str(p) for p in paths]
    assert float(rows[1][2]) == pytest.approx(probs[0].max().item(), abs=1e-6)

    # Text: one line per image, names and percentages.
    assert cli_main(['predict', '--checkpoint', str(run), str(paths[0]), '--top-k', '9']) == 0
    top = probs[0].sort(descending=True)
    assert capsys.readouterr().out == f'{paths[0]}: ' + ', '.join(
        f'{labels[i]} {100 * v:.1f}%' for v, i in zip(top.values.tolist(), top.indices.tolist())) + '\n'

    # The Python equivalent: three lines.
    model, transform, names = caretrans.load_run(run)
    assert names == labels and not model.training
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in paths])
    assert torch.equal(x, batch)
    with torch.no_grad():
        torch.testing.assert_close(model(x).softmax(1), probs)


def test_export_at_the_recorded_size_runs_in_onnx_runtime(run, tmp_path, monkeypatch, capsys):
    from caretrans.export import export_metadata, onnx_session

    monkeypatch.chdir(tmp_path)
    assert cli_main(['export', '--checkpoint', str(run), '--format', 'onnx', '--output', 'm.onnx']) == 0
    out = capsys.readouterr().out
    assert 'input (1, 3, 32, 32)' in out and 'model card' in out
    session = onnx_session(tmp_path / 'm.onnx', threads=1)
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    image = tmp_path / 'fox.png'
    _images(tmp_path / 'x', COLOURS['fox'], 1, seed=3)
    shutil.move(tmp_path / 'x' / '0.png', image)
    probs, batch = _manual_forward(run, [image])
    logits = session.run(None, {'image': batch.numpy()})[0]
    np.testing.assert_allclose(torch.from_numpy(logits).softmax(1).numpy(), probs.numpy(), atol=1e-5)
    assert ModelCard.from_json(export_metadata(tmp_path / 'm.onnx')[CARD_KEY]) == caretrans.read_card(
        run / 'best.safetensors')


def test_validate_a_subset_of_the_classes_by_name(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    subset = tmp_path / 'subset'
    _images(subset / 'val' / 'cat', COLOURS['cat'], 3, seed=21)
    _images(subset / 'val' / 'fox', COLOURS['fox'], 3, seed=22)
    assert cli_main(['validate', '--checkpoint', str(run), '--data', 'subset', '-j', '0', '--json']) == 0
    report = json.loads(capsys.readouterr().out)
    paths = sorted((subset / 'val' / 'cat').glob('*.png')) + sorted((subset / 'val' / 'fox').glob('*.png'))
    targets = torch.tensor([0] * 3 + [2] * 3)  # cat and fox keep their indices in the run's labels
    probs, _ = _manual_forward(run, paths)
    assert report['count'] == 6 and (report['img_size'], report['crop_pct']) == (32, 0.875)
    assert report['top1'] == pytest.approx(100 * (probs.argmax(1) == targets).float().mean().item())
    assert report['loss'] == pytest.approx(F.nll_loss(probs.log(), targets).item(), rel=1e-4)
    # The weights file alone, without the run's class_map.txt: labelled by its card, not by position.
    shutil.copy(run / 'best.safetensors', tmp_path / 'weights.safetensors')
    assert cli_main(['validate', '--checkpoint', 'weights.safetensors', '--data', 'subset', '--num-classes', '3',
                     '-j', '0', '--json']) == 0
    alone = json.loads(capsys.readouterr().out)
    assert (alone['top1'], alone['loss'], alone['labels']) == (report['top1'], report['loss'], 'model card')
    # Weights without a card or class names: matching the folder's 2 classes to 3 outputs by position is refused.
    model = timm.create_model('care_s0', num_classes=3)
    caretrans.save_atomic(model.state_dict(), tmp_path / 'plain.safetensors')
    assert cli_main(['validate', '--checkpoint', 'plain.safetensors', '--data', 'subset', '--num-classes', '3',
                     '-j', '0']) == 2
    assert 'would be matched by position. Give --class-map' in capsys.readouterr().err
    # A class the run does not know is refused, named.
    _images(subset / 'val' / 'wolf', COLOURS['wolf'], 1, seed=23)
    assert cli_main(['validate', '--checkpoint', str(run), '--data', 'subset', '-j', '0']) == 2
    assert 'not among the 3 training classes: wolf' in capsys.readouterr().err


def test_fine_tuning_keeps_the_classifier_rows_by_name(run, tmp_path, capsys):
    data = _data(tmp_path / 'data', classes=('fox', 'cat'))  # labels: cat 0, fox 1
    capsys.readouterr()
    train(Recipe(data=str(data), initial_checkpoint=str(run / 'best.safetensors'), **TINY),
          tmp_path / 'tuned', progress=False)
    tensors = sum(not k.endswith('num_batches_tracked') for k in timm.create_model('care_s0').state_dict())
    assert (f'loaded {tensors} tensors from {run / "best.safetensors"}; classifier kept by name (2 of its 3 '
            'classes, in the new order)') in capsys.readouterr().out
    assert caretrans.read_card(tmp_path / 'tuned' / 'best.safetensors').label_names == ('cat', 'fox')


def test_a_dense_run_is_pointed_to_its_own_predict(tmp_path, capsys):
    model = timm.create_model('care_s0', num_classes=3)
    caretrans.models.checkpoint.save_weights(model, tmp_path / 'model.safetensors', model_name='care_s0', task='det')
    assert cli_main(['predict', '--checkpoint', str(tmp_path), str(tmp_path)]) == 2
    assert 'is a det run: use `caretrans det predict`' in capsys.readouterr().err
