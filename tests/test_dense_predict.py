"""A trained detector and segmenter used from their run folders alone: the model card, predict (the
detections and class maps of a manual forward, and pictures of them), validate, and refusals of the
wrong kind of checkpoint."""
import contextlib
import dataclasses
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file
from torchvision.transforms.v2 import functional as TF

import caretrans
from caretrans.cli import main as cli_main
from caretrans.data import read_image
from caretrans.dense.labels import colour
from caretrans.dense.recipe import PRESETS, DenseRecipe
from caretrans.dense.run import load_dense_run
from caretrans.dense.synthetic import make_shapes_dataset
from caretrans.dense.tasks import create_dense_model
from caretrans.models import ModelCard, read_card
from caretrans.models.checkpoint import save_atomic, weights_info

# pycocotools 2.0.11 with NumPy 2 warns on every mask decode. One thread: these models are small.
pytestmark = [pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning'),
              pytest.mark.usefixtures('one_thread')]

SMALL = {'det': ['--min-size', '64', '--max-size', '64'], 'seg': ['--crop-size', '64', '--scale', '64', '--min-size', '64']}
SHAPES = ('circle', 'square', 'triangle')


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('shapes')
    make_shapes_dataset(root, num_train=8, num_val=2, image_size=64, seed=0)
    return root


@pytest.fixture(scope='module')
def runs(data, tmp_path_factory):
    """A det and a seg run of 2 epochs on 8 images of 64 px, one thread, and what training printed."""
    folder, printed, threads = tmp_path_factory.mktemp('runs'), {}, torch.get_num_threads()
    torch.set_num_threads(1)  # on shared cores a second thread costs more than it gives
    try:
        for task in ('det', 'seg'):
            argv = [task, 'train', '--recipe', f'shapes-{task}', '--data', str(data), '--output', str(folder / task),
                    '--epochs', '2', '--no-progress', '--json', *SMALL[task]]
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert cli_main(argv) == 0
            printed[task] = json.loads(out.getvalue())
    finally:
        torch.set_num_threads(threads)
    return folder, printed


@pytest.fixture
def elsewhere(runs, tmp_path, monkeypatch):
    """The run folders copied to a new place, and the working directory another one."""
    for task in ('det', 'seg'):
        shutil.copytree(runs[0] / task, tmp_path / 'moved' / task)
    (tmp_path / 'cwd').mkdir()
    monkeypatch.chdir(tmp_path / 'cwd')
    return tmp_path / 'moved'


def _cli_json(capsys, argv):
    assert cli_main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def _flat(metrics):
    """The figures of a metrics dict, per-class ones as 'per_class_x.name' (pytest.approx compares flat dicts)."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update({f'{k}.{name}': x for name, x in v.items()})
        elif k not in ('epoch', 'status', 'run_dir'):
            flat[k] = v
    return flat


def _weights_model(run, task: str):
    """The model rebuilt by hand from the preset and the flags of the run, with the run's weights."""
    flags = dict(zip(SMALL[task][::2], SMALL[task][1::2]))
    recipe = DenseRecipe(**dict(PRESETS[f'shapes-{task}'], **{k[2:].replace('-', '_'): int(v) for k, v in flags.items()}))
    model = create_dense_model(recipe, 4)
    model.load_state_dict(load_file(run / 'model.safetensors'))
    return model.eval()


def test_runs_record_the_card_of_the_model_they_built(runs, data):
    folder, _ = runs
    det, seg = read_card(folder / 'det' / 'model.safetensors'), read_card(folder / 'seg' / 'model.safetensors')
    assert (det.task, det.architecture, det.num_classes) == ('det', 'care_s0', 4)
    assert det.label_names == ('__background__',) + SHAPES  # torchvision's order: the background is label 0
    assert det.model_args['box_head_dim'] == 256 and det.model_args['min_size'] == 64
    assert 'num_classes' not in det.model_args and 'head_channels' not in det.model_args
    assert (seg.task, seg.num_classes, seg.label_names) == ('seg', 4, ('background',) + SHAPES)  # objectInfo150.txt
    assert seg.model_args['head_channels'] == 64 and seg.model_args['reduce_zero_label'] is True
    for card in (det, seg):
        assert card.dataset == str(data) and card.input_size == (3, 64, 64) and card.mean == (0.485, 0.456, 0.406)
        last = torch.load(folder / card.task / 'last.pth', weights_only=True)
        assert ModelCard.from_dict(last['card']) == card
    assert weights_info(folder / 'det' / 'model.safetensors')['task'] == 'det'
    # The det recipe.yaml no longer claims the 150 classes of segmentation's default.
    recipe = yaml.safe_load((folder / 'det' / 'recipe.yaml').read_text())
    assert 'num_classes' not in recipe and 'crop_size' not in recipe


def test_det_predict_and_validate_from_the_run_folder_alone(runs, elsewhere, capsys, tmp_path):
    run, trained = elsewhere / 'det', runs[1]['det']
    make_shapes_dataset(tmp_path / 'other', num_train=0, num_val=2, image_size=160, seed=5)  # larger, unseen
    image_path = tmp_path / 'other' / 'images' / 'validation' / '000001.png'
    image = Image.open(image_path).convert('RGB')
    # The manual forward: every detection the box head keeps; the threshold lets its 3 best through.
    model = _weights_model(run, 'det')
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        (manual,) = model([TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)])
    threshold = float(manual['scores'][2])
    keep = manual['scores'] >= threshold

    (record,), err = _cli_json(capsys, ['det', 'predict', '--checkpoint', str(run), str(image_path), '--json',
                                        '--score-threshold', str(threshold), '--output', 'pictures'])
    assert err == ''
    names = [d['label'] for d in record['detections']]
    assert len(names) == int(keep.sum()) >= 3
    assert names == [(('__background__',) + SHAPES)[int(k)] for k in manual['labels'][keep]]  # the card's names
    assert [d['score'] for d in record['detections']] == pytest.approx(manual['scores'][keep].tolist(), abs=1e-4)
    assert [v for d in record['detections'] for v in d['box']] == pytest.approx(manual['boxes'][keep].flatten().tolist(),
                                                                               abs=0.06)

    # The picture: unchanged away from the detections (their boxes, masks and labels' text), and the box
    # drawn last outlined in its class colour.
    picture = np.asarray(Image.open(record['picture']).convert('RGB')).astype(int)
    original = np.asarray(image).astype(int)
    assert record['picture'] == 'pictures/000001.boxes.png' and picture.shape == original.shape
    drawn = np.zeros(original.shape[:2], bool)
    for (x0, y0, x1, y1), mask, d in zip(manual['boxes'][keep].int().tolist(), manual['masks'][keep, 0] > 0.5,
                                         record['detections']):
        drawn[y0:y1 + 1, x0:x1 + 1] = True
        drawn[y0:y0 + 16, x0:x0 + 8 * len(f"{d['label']} 0.00") + 8] = True  # the label's text may spill out
        drawn |= mask.numpy()
    changed = (picture != original).any(-1)
    assert changed.any() and not (changed & ~drawn).any() and (~drawn).sum() > 1000
    x0, y0, _, y1 = manual['boxes'][keep][-1].int().tolist()
    label = int(manual['labels'][keep][-1])
    assert (picture[y0:min(y1, 159) + 1, x0] == colour(label)).all()

    # Validation of the run folder, its weights or its last.pth reproduces training's figures, in percent.
    for checkpoint in (run, run / 'model.safetensors', run / 'last.pth'):
        metrics, _ = _cli_json(capsys, ['det', 'validate', '--checkpoint', str(checkpoint), '--json'])
        assert _flat(metrics) == pytest.approx(_flat(trained))
    assert set(metrics['per_class_bbox_AP']) == set(SHAPES) and 0 <= metrics['bbox_AP50'] <= 100
    assert cli_main(['det', 'validate', '--checkpoint', str(run)]) == 0
    out = capsys.readouterr().out
    assert re.search(r'^ +bbox_AP50: +\d+\.\d\d %$', out, re.M)
    assert re.search(r'^per_class_segm_AP: circle (\d+\.\d %|n/a), square .*, triangle ', out, re.M)


def test_seg_predict_and_validate_from_the_run_folder_alone(runs, elsewhere, capsys, data):
    run, trained = elsewhere / 'seg', runs[1]['seg']
    folder = data / 'images' / 'validation'
    (bad := elsewhere / 'not-an-image.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    records, err = _cli_json(capsys, ['seg', 'predict', '--checkpoint', str(run / 'last.pth'), str(folder), str(bad),
                                      str(elsewhere / 'gone.jpg'), '--json'])
    # Unreadable or missing files are named, one line each, and the others predicted.
    assert err.splitlines() == [f'caretrans seg predict: skipped: {elsewhere / "gone.jpg"} does not exist',
                                f'caretrans seg predict: skipped: image {bad} cannot be read: '
                                + err.split(f'image {bad} cannot be read: ')[1].splitlines()[0]]
    assert [r['image'] for r in records] == [str(folder / '000000.png'), str(folder / '000001.png')]
    model = _weights_model(run, 'seg')
    for record in records:
        image = Image.open(record['image']).convert('RGB')
        # The manual forward: shorter side 64 (bilinear, antialiased), ImageNet normalisation, logits
        # resized to the image, argmax.
        x = TF.normalize(TF.to_dtype(TF.resize(TF.pil_to_tensor(image), [64], max_size=512), torch.float32,
                                     scale=True), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        with torch.no_grad():
            logits = F.interpolate(model(x[None]), size=(image.height, image.width), mode='bilinear',
                                   align_corners=False)
        expected = logits.argmax(1)[0].numpy()
        class_map = Image.open(record['class_map'])
        assert class_map.mode == 'P' and np.array_equal(np.asarray(class_map), expected)
        assert class_map.getpalette()[:12] == [v for c in range(4) for v in colour(c)]
        assert set(record['classes']) <= {'background', *SHAPES} and sum(record['classes'].values()) == \
            pytest.approx(100)
        # The picture is the image half-covered by each pixel's class colour.
        tint = np.array([colour(c) for c in range(4)])[expected]
        blended = (np.asarray(image) * 0.5 + tint * 0.5).astype(np.uint8)
        picture = np.asarray(Image.open(record['picture']).convert('RGB'))
        assert np.abs(picture.astype(int) - blended).max() <= 1
    assert (elsewhere.parent / 'cwd' / 'predictions' / '000000.seg.png').is_file()  # the default --output

    for checkpoint in (run, run / 'model.safetensors'):
        metrics, _ = _cli_json(capsys, ['seg', 'validate', '--checkpoint', str(checkpoint), '--json'])
        assert _flat(metrics) == pytest.approx(_flat(trained))
        assert list(metrics['per_class_iou']) == ['background', *SHAPES]


def test_validation_flags_change_the_runs_recipe_and_weights_alone_need_the_data(runs, elsewhere, capsys, data):
    run = elsewhere / 'seg'
    trained = _flat(runs[1]['seg'])
    # --split (and --data, -b, -j) apply to the run's recipe: another split scores otherwise, a missing one is named.
    on_training, _ = _cli_json(capsys, ['seg', 'validate', '--checkpoint', str(run), '--split', 'training', '--json'])
    assert _flat(on_training) != pytest.approx(trained)
    assert cli_main(['seg', 'validate', '--checkpoint', str(run), '--split', 'bogus', '-j', '0']) == 2
    assert f"{data / 'images' / 'bogus'} is not a directory" in capsys.readouterr().err
    # --recipe replaces it, with the flags given on top; the model and its evaluation size stay the card's
    # (the preset's min_size is 128, the run's 64).
    assert cli_main(['seg', 'validate', '--checkpoint', str(run), '--recipe', 'shapes-seg', '-j', '0']) == 2
    assert 'error: no data: set --data' in capsys.readouterr().err
    metrics, _ = _cli_json(capsys, ['seg', 'validate', '--checkpoint', str(run), '--recipe', 'shapes-seg',
                                    '--data', str(data), '--json'])
    assert _flat(metrics) == pytest.approx(trained)
    # Weights alone (no recipe.yaml beside them): the card rebuilds the model, --data names the data.
    lone = elsewhere / 'lone' / 'weights.safetensors'
    lone.parent.mkdir()
    shutil.copy(run / 'model.safetensors', lone)
    metrics, _ = _cli_json(capsys, ['seg', 'validate', '--checkpoint', str(lone), '--data', str(data),
                                    '--split', 'validation', '-j', '0', '--json'])
    assert _flat(metrics) == pytest.approx(trained)
    assert cli_main(['seg', 'validate', '--checkpoint', str(lone)]) == 2
    assert f'{lone}: no recipe inside and no recipe.yaml beside it; give --recipe or --data' in capsys.readouterr().err
    assert cli_main(['seg', 'validate', '--checkpoint', str(run), '-b', '0']) == 2
    assert '--batch-size 0: expected at least 1' in capsys.readouterr().err


def test_a_checkpoint_of_another_kind_is_refused_naming_what_it_is(runs, tmp_path, capsys):
    folder, _ = runs
    det_refusal = ("is a detection model (Mask R-CNN on care_s0, 4 classes), not a segmentation one: "
                   "use `caretrans det validate`")
    assert cli_main(['seg', 'validate', '--checkpoint', str(folder / 'det')]) == 2
    assert f"caretrans seg: error: {folder / 'det' / 'model.safetensors'} {det_refusal}" in capsys.readouterr().err
    assert cli_main(['det', 'predict', '--checkpoint', str(folder / 'seg' / 'last.pth'), str(tmp_path)]) == 2
    assert 'is a segmentation model (Semantic FPN on care_s0, 4 classes), not a detection one: use ' \
           '`caretrans seg predict`' in capsys.readouterr().err

    # Classification: with a card, and as runs saved before cards (a recipe.yaml of classification fields).
    from caretrans.train.recipe import Recipe
    card = ModelCard.for_classifier('care_s0', ('cat', 'dog', 'fox'), 64, 3, (0.5,) * 3, (0.25,) * 3, 1.0)
    save_atomic({'w': torch.zeros(1)}, tmp_path / 'carded' / 'best.safetensors',
                metadata={'card': card.to_json(), 'model_name': 'care_s0'})
    (tmp_path / 'old').mkdir()
    save_file({'w': torch.zeros(1)}, tmp_path / 'old' / 'best.safetensors', metadata={'model_name': 'care_s0'})
    Recipe(data='pets').save(tmp_path / 'old' / 'recipe.yaml')
    for run, what in (('carded', 'care_s0, 3 classes'), ('old', 'care_s0')):
        weights = tmp_path / run / 'best.safetensors'
        for command, verb in ((['det', 'validate', '--checkpoint', str(weights)], 'validate'),
                              (['seg', 'predict', '--checkpoint', str(weights.parent), str(tmp_path)], 'predict')):
            assert cli_main(command) == 2
            err = capsys.readouterr().err
            assert f'{weights} is a classification model ({what}), not a {"detection" if command[0] == "det" else "segmentation"} ' \
                   f'one: use `caretrans {verb}`' in err and 'unknown recipe field' not in err
    save_file({'w': torch.zeros(1)}, tmp_path / 'released.safetensors')
    assert cli_main(['det', 'predict', '--checkpoint', str(tmp_path / 'released.safetensors'), str(tmp_path)]) == 2
    assert 'has no model card and no recipe: it is not a caretrans detection or segmentation run' in \
        capsys.readouterr().err


def test_runs_saved_before_model_cards_load_from_their_recipe_and_data(runs, tmp_path, data):
    from caretrans.dense.run import load_dense_run
    run = tmp_path / 'old'
    shutil.copytree(runs[0] / 'det', run)
    (run / 'last.pth').unlink()
    save_file(load_file(run / 'model.safetensors'), run / 'model.safetensors', metadata={'model_name': 'care_s0'})
    assert read_card(run / 'model.safetensors') is None
    old, new = load_dense_run(run), load_dense_run(runs[0] / 'det')
    assert old.card == new.card and old.labels == ('__background__',) + SHAPES
    image = Image.open(data / 'images' / 'validation' / '000000.png').convert('RGB')
    with torch.no_grad():
        a, b = old.model([old.transform(image)])[0], new.model([new.transform(image)])[0]
    assert torch.equal(a['boxes'], b['boxes']) and torch.equal(a['labels'], b['labels'])


def test_detection_labels_are_matched_to_the_data_by_name(runs, data):
    from caretrans.dense.data import DataError
    from caretrans.dense.recipe import load_recipe
    from caretrans.dense.tasks import make_task
    recipe = dataclasses.replace(load_recipe(str(runs[0] / 'det' / 'recipe.yaml')), data=str(data))
    task = make_task(recipe)
    assert task.output_categories(('__background__',) + SHAPES) == [1, 2, 3]
    assert task.output_categories(('__background__', 'triangle', 'hexagon', 'circle', 'square')) == [3, None, 1, 2]
    with pytest.raises(DataError, match=r"instances_validation\.json: category 'square' not among the model's "
                                        r"classes \(circle, triangle\)"):
        task.output_categories(('__background__', 'circle', 'triangle'))


def test_segmentation_data_naming_other_classes_is_refused(runs, data, tmp_path, capsys):
    other = tmp_path / 'renamed'
    shutil.copytree(data, other)
    info = other / 'objectInfo150.txt'
    info.write_text(info.read_text().replace('circle', 'disc'))
    assert cli_main(['seg', 'validate', '--checkpoint', str(runs[0] / 'seg'), '--data', str(other), '-j', '0']) == 2
    assert (f'the classes of {other} (background, disc, square, triangle) are not the model\'s (background, circle, '
            f'square, triangle)') in capsys.readouterr().err


def test_load_run_gives_a_dense_runs_model_transform_and_labels(runs, data):
    folder, _ = runs
    for task in ('det', 'seg'):
        model, transform, labels = caretrans.load_run(folder / task)
        run = load_dense_run(folder / task)
        assert labels == list(run.labels) and not model.training
        image = read_image(sorted((data / 'images' / 'validation').iterdir())[0])
        x = transform(image)
        with torch.no_grad():
            if task == 'det':
                ours, theirs = model([x])[0], run.model([run.transform(image)])[0]
                assert torch.equal(ours['boxes'], theirs['boxes']) and labels[0] == '__background__'
            else:
                assert torch.equal(model(x[None]), run.model(run.transform(image)[None]))


def test_weights_holding_nan_are_refused_by_dense_validate_and_predict(runs, tmp_path, capsys):
    folder, _ = runs
    broken = tmp_path / 'det'
    shutil.copytree(folder / 'det', broken)
    weights = load_file(broken / 'model.safetensors')
    key = next(k for k, v in weights.items() if v.is_floating_point())
    weights[key][...] = float('nan')
    save_atomic(weights, broken / 'model.safetensors', metadata={'card': read_card(folder / 'det' / 'model.safetensors').to_json()})
    for argv in (['det', 'validate', '--checkpoint', str(broken / 'model.safetensors')],
                 ['det', 'predict', '--checkpoint', str(broken / 'model.safetensors'), str(tmp_path)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.strip().endswith(f'{broken / "model.safetensors"} holds NaN or infinite values in 1 tensor(s) '
                                    f'({key}): it cannot be evaluated; use an earlier checkpoint'), err
