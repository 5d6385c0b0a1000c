"""Dense prediction: backbone features, Mask R-CNN, Semantic FPN, data checks and metrics."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from pycocotools import mask as mask_utils

from caretrans.bench.profile import PAPER_FIGURES, count_macs
from caretrans.cli import main as cli_main
from caretrans.dense import maskrcnn, semantic_fpn
from caretrans.dense.data import (AdeSegmentation, CocoInstances, DataError, detection_transform, load_coco,
                                  segmentation_train_transform)
from caretrans.dense.metrics import SegmentationMeter, coco_metrics, detections_to_coco
from caretrans.dense.recipe import PRESETS, DenseRecipe, load_recipe
from caretrans.models import CheckpointError

# pycocotools 2.0.11 with NumPy 2 warns on every mask decode.
pytestmark = pytest.mark.filterwarnings('ignore:__array__ implementation:DeprecationWarning')

COMPACT = dict(fpn_channels=32, box_head_dim=64, mask_head_dims=(32,), min_size=64, max_size=64,
               rpn_batch_size_per_image=32, box_batch_size_per_image=32)


# ---------------------------------------------------------------- backbone

def test_features_only_shapes_strides_and_intermediates():
    torch.manual_seed(0)
    fm = timm.create_model('care_s0', features_only=True, out_indices=(0, 1, 2, 3)).eval()
    torch.manual_seed(0)
    full = timm.create_model('care_s0').eval()  # same seed, same weights
    assert fm.feature_info.channels() == [32, 64, 128, 1024]
    assert fm.feature_info.reduction() == [4, 8, 16, 32]
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        feats = fm(x)
        last, inter = full.forward_intermediates(x)
        only = full.forward_intermediates(x, indices=[1, 3], intermediates_only=True)
    assert [tuple(f.shape[-2:]) for f in feats] == [(24, 16), (12, 8), (6, 4), (3, 2)]
    for a, b in zip(feats, inter):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(only[1], inter[3])
    torch.testing.assert_close(last, inter[3])
    s2 = timm.create_model('care_s2', features_only=True, out_indices=(1, 3))
    assert s2.feature_info.channels() == [64, 1536] and s2.feature_info.reduction() == [8, 32]


@pytest.mark.parametrize('name', ['care_s0', 'care_s1', 'care_s2'])
def test_backbone_gmacs_at_512_match_table2(name):
    fm = timm.create_model(name, features_only=True)
    assert abs(count_macs(fm, 512) / 1e9 - PAPER_FIGURES[name]['backbone_gmacs_512']) < 0.05


def test_backbone_initialised_from_released_checkpoint(released_checkpoint):
    path = released_checkpoint()
    released = torch.load(path, weights_only=True)
    det = maskrcnn('care_s0', num_classes=3, backbone_checkpoint=str(path), **COMPACT)
    seg = semantic_fpn('care_s0', num_classes=5, backbone_checkpoint=str(path), norm='batch')
    for body in (det.backbone.body, seg.backbone.body):
        torch.testing.assert_close(body.stem.conv.weight, released['stem.0.weight'])
        torch.testing.assert_close(body.stages_2.blocks[0].token_mixer.global_mixer.qk.weight,
                                   released['stages.2.blocks.0.token_mixer.qk.weight'])
    # frozen BatchNorm keeps the ImageNet statistics
    torch.testing.assert_close(det.backbone.body.stem.norm.running_var, released['stem.1.running_var'])


def test_bad_backbone_checkpoint_is_named(tmp_path):
    bad = tmp_path / 'notes.pth'
    bad.write_text('not weights')
    with pytest.raises(CheckpointError, match='not a PyTorch checkpoint'):
        maskrcnn(num_classes=3, backbone_checkpoint=str(bad), **COMPACT)
    torch.save({'stem.0.weight': torch.zeros(1)}, tmp_path / 'other.pth')
    with pytest.raises(CheckpointError, match=r'other\.pth.*does not match'):
        semantic_fpn(backbone_checkpoint=str(tmp_path / 'other.pth'))
    with pytest.raises(ValueError, match='norm must be one of'):
        semantic_fpn(norm='group')


# ---------------------------------------------------------------- models

def _instance_target(boxes, labels, size=64):
    masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
    for m, (x0, y0, x1, y1) in zip(masks, boxes):
        m[y0:y1, x0:x1] = 1
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32), labels=torch.tensor(labels), masks=masks)


def test_maskrcnn_train_step_and_eval_output():
    torch.manual_seed(0)
    model = maskrcnn('care_s0', num_classes=3, **COMPACT)
    body = model.backbone.body
    assert type(body.stem.norm).__name__ == 'FrozenBatchNorm2d'
    assert model.transform.image_mean == [0.485, 0.456, 0.406]
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48)]
    targets = [_instance_target([[4, 4, 30, 40]], [1]), _instance_target([[10, 12, 40, 44], [0, 0, 20, 20]], [2, 1])]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {'loss_classifier', 'loss_box_reg', 'loss_mask', 'loss_objectness', 'loss_rpn_box_reg'}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert body.stem.conv.weight.grad.abs().sum() > 0  # the loss reaches the backbone
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 50, 70)])
    (pred,) = out
    n = len(pred['boxes'])
    assert pred['boxes'].shape == (n, 4) and pred['labels'].shape == pred['scores'].shape == (n,)
    assert pred['masks'].shape == (n, 1, 50, 70)  # masks come back at the input size
    assert maskrcnn('care_s0', num_classes=81).roi_heads.box_predictor.cls_score.out_features == 81
    with pytest.raises(ValueError, match='counts the background'):
        maskrcnn(num_classes=1)


def test_semantic_fpn_design_and_output_shape():
    torch.manual_seed(0)
    model = semantic_fpn('care_s0', num_classes=150, norm='batch')
    assert model.backbone.fpn.layer_blocks[0][0].out_channels == 256
    assert [len(b.convs) for b in model.branches] == [1, 1, 2, 3]  # strides 4, 8, 16, 32 -> 1/4
    assert model.branches[3].convs[0][0].out_channels == 128 and model.classifier.in_channels == 128
    model.train()
    for size in ((64, 96), (70, 100)):
        assert model(torch.randn(2, 3, *size)).shape == (2, 150, *size)


# ---------------------------------------------------------------- metrics

def _coco_gt():
    rect = np.zeros((100, 100), np.uint8)
    rect[0:8, 0:10] = 1  # 80 pixels, bbox [0, 0, 10, 8]
    rle = mask_utils.encode(np.asfortranarray(rect))
    rle['counts'] = rle['counts'].decode()
    data = dict(images=[dict(id=7, file_name='a.png', height=100, width=100)],
                annotations=[dict(id=1, image_id=7, category_id=5, bbox=[0, 0, 10, 8], area=80, iscrowd=0,
                                  segmentation=rle)],
                categories=[dict(id=5, name='thing')])
    return data


def _output(boxes, scores, rects):
    masks = torch.zeros(len(boxes), 1, 100, 100)
    for m, (y0, y1, x0, x1) in zip(masks, rects):
        m[0, y0:y1, x0:x1] = 0.9
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32), scores=torch.tensor(scores),
                labels=torch.ones(len(boxes), dtype=torch.int64), masks=masks)


def test_coco_metrics_against_hand_computed_cases(tmp_path):
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(_coco_gt()))
    coco = load_coco(path)
    # A detection covering 50 of the 80 ground-truth pixels: IoU 0.625 matches at IoU 0.50, 0.55, 0.60
    # of COCO's ten thresholds: AP 30 %, AP50 100 %, AP75 0 (boxes and masks alike).
    partial = _output([[0, 0, 10, 5]], [0.8], [(0, 5, 0, 10)])
    results = detections_to_coco([partial], [7], category_ids=[5])
    assert results[0]['category_id'] == 5 and results[0]['bbox'] == [0, 0, 10, 5]
    m = coco_metrics(coco, results)
    for t in ('bbox', 'segm'):
        assert m[f'{t}_AP'] == pytest.approx(30) and m[f'{t}_AP50'] == pytest.approx(100) and m[f'{t}_AP75'] == 0
        assert m[f'per_class_{t}_AP'] == {'thing': pytest.approx(30)}
    # A better-scored false positive first: precision 1/2 at full recall, so AP50 = 50 %.
    fp_first = _output([[50, 50, 60, 60], [0, 0, 10, 8]], [0.9, 0.8], [(50, 60, 50, 60), (0, 8, 0, 10)])
    m = coco_metrics(coco, detections_to_coco([fp_first], [7], [5]))
    assert m['bbox_AP50'] == pytest.approx(50) and m['segm_AP'] == pytest.approx(50)
    # The false positive is of a class the data does not have (None): left out, the match alone scores 100 %.
    fp_first['labels'] = torch.tensor([2, 1])
    m = coco_metrics(coco, detections_to_coco([fp_first], [7], [5, None]))
    assert m['bbox_AP'] == pytest.approx(100) and m['per_class_segm_AP'] == {'thing': pytest.approx(100)}
    assert coco_metrics(coco, []) == {**{f'{t}_{k}': 0.0 for t in ('bbox', 'segm') for k in ('AP', 'AP50', 'AP75')},
                                      'per_class_bbox_AP': {'thing': 0.0}, 'per_class_segm_AP': {'thing': 0.0}}


def test_per_class_ap_is_each_categorys_own(tmp_path):
    data = _coco_gt()
    data['categories'].append(dict(id=9, name='other thing'))
    rect = np.zeros((100, 100), np.uint8)
    rect[50:58, 50:60] = 1
    rle = mask_utils.encode(np.asfortranarray(rect))
    rle['counts'] = rle['counts'].decode()
    data['annotations'].append(dict(id=2, image_id=7, category_id=9, bbox=[50, 50, 10, 8], area=80, iscrowd=0,
                                    segmentation=rle))
    path = tmp_path / 'gt.json'
    path.write_text(json.dumps(data))
    # 'thing' found exactly (100 %), 'other thing' at IoU 0.625 (30 %): the mean is COCO's AP.
    found = _output([[0, 0, 10, 8], [50, 50, 60, 55]], [0.9, 0.8], [(0, 8, 0, 10), (50, 55, 50, 60)])
    found['labels'] = torch.tensor([1, 2])
    m = coco_metrics(load_coco(path), detections_to_coco([found], [7], [5, 9]))
    assert m['per_class_bbox_AP'] == {'thing': pytest.approx(100), 'other thing': pytest.approx(30)}
    assert m['bbox_AP'] == pytest.approx(65)


def test_miou_against_hand_computed_case():
    label = torch.tensor([[0, 0, 1, 1], [0, 255, 2, 2]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 0, 2, 0]])
    meter = SegmentationMeter(num_classes=4)
    meter.update(pred, label)
    r = meter.compute()
    # class 0: TP 2, FP 1, FN 1 -> 1/2; class 1: TP 2, FP 1 -> 2/3; class 2: TP 1, FN 1 -> 1/2; class 3 absent.
    # In percent, by name (class_N where none are given).
    assert r['per_class_iou'] == {'class_0': pytest.approx(50), 'class_1': pytest.approx(200 / 3),
                                  'class_2': pytest.approx(50), 'class_3': None}
    assert r['mIoU'] == pytest.approx(100 * (0.5 + 2 / 3 + 0.5) / 3)
    assert r['aAcc'] == pytest.approx(500 / 7)  # the ignored pixel does not count
    meter.update(pred, label)
    assert meter.compute()['mIoU'] == pytest.approx(r['mIoU'])
    with pytest.raises(ValueError, match='differ in shape'):
        meter.update(pred[:1], label)
    named = SegmentationMeter(num_classes=4, class_names=('sky', 'road', 'car', 'tree'))
    named.update(pred, label)
    assert list(named.compute()['per_class_iou']) == ['sky', 'road', 'car', 'tree']
    with pytest.raises(ValueError, match='3 class names for 4 classes'):
        SegmentationMeter(num_classes=4, class_names=('a', 'b', 'c'))


# ---------------------------------------------------------------- data errors

def _write_coco(tmp_path, data):
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize('edit,match', [
    (lambda d: d['annotations'][0].update(image_id=99), r'annotations\[0\] \(id 1\): image_id 99 is not in'),
    (lambda d: d['annotations'][0].update(category_id=3), r'annotations\[0\] \(id 1\): category_id 3'),
    (lambda d: d['annotations'][0].update(bbox=[0, 0, -1, 4]), r'annotations\[0\] \(id 1\): bbox must be'),
    (lambda d: d['annotations'][0].update(segmentation=[[1, 2, 3]]), r'annotations\[0\].*at least 3'),
    (lambda d: d['annotations'][0]['segmentation'].update(size=[50, 50]), r'RLE size \[50, 50\] differs'),
    (lambda d: d['annotations'][0].pop('segmentation'), r"annotations\[0\].*no 'segmentation'"),
    (lambda d: d['images'][0].pop('height'), r"images\[0\] needs 'id', 'file_name', 'height'"),
    (lambda d: d.pop('categories'), "missing or non-list 'categories'"),
    # RLE counts that pycocotools' C decoder would read or write out of bounds with, or mis-decode.
    (lambda d: d['annotations'][0]['segmentation'].update(counts=[-5, 10005]), r'annotations\[0\] \(id 1\): RLE '
     r'counts hold a negative run length \(-5\)'),
    (lambda d: d['annotations'][0]['segmentation'].update(counts=5), 'RLE counts must be a compressed string'),
    (lambda d: d['annotations'][0]['segmentation'].update(counts=[1.5, 9998.5]), 'RLE counts must be'),
    (lambda d: d['annotations'][0]['segmentation'].update(counts='abc'), r"RLE counts 'abc' is not a compressed"),
    (lambda d: d['annotations'][0]['segmentation'].update(counts='0\x7f'), 'is not a compressed RLE string'),
    (lambda d: d['annotations'][0]['segmentation'].update(counts=[10, 20]), r'add up to 30 pixels, not .* 10000'),
    (lambda d: d['annotations'][0]['segmentation'].update(size=5), r'RLE size 5 differs'),
    # Ids: integers, as COCO's tools sort and match them.
    (lambda d: d['images'][0].update(id='abc'), r"images\[0\]: id must be an integer, got 'abc'"),
    (lambda d: d['images'][0].update(height='100'), r"images\[0\] \(id 7\): height and width must be positive"),
    (lambda d: d['annotations'][0].update(id='x'), r"annotations\[0\] \(id 'x'\) is not an object with an integer"),
    (lambda d: d['annotations'][0].update(image_id=[7]), r'image_id \[7\] is not in'),
    (lambda d: d['categories'][0].update(id='5'), r"categories\[0\]: id must be an integer, got '5'"),
])
def test_bad_annotation_records_are_named(tmp_path, edit, match):
    data = _coco_gt()
    edit(data)
    path = _write_coco(tmp_path, data)
    with pytest.raises(DataError, match=match) as err:
        load_coco(path)
    assert str(path) in str(err.value)


def test_bad_annotation_files_and_images(tmp_path):
    (tmp_path / 'broken.json').write_text('{"images": [')
    with pytest.raises(DataError, match=r'broken\.json is not valid JSON'):
        load_coco(tmp_path / 'broken.json')
    with pytest.raises(DataError, match='does not exist'):
        load_coco(tmp_path / 'missing.json')
    path = _write_coco(tmp_path, _coco_gt())
    ds = CocoInstances(tmp_path, path, detection_transform(False))
    with pytest.raises(DataError, match=r'image .*a\.png does not exist'):
        ds[0]
    (tmp_path / 'a.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    with pytest.raises(DataError, match=r'image .*a\.png cannot be read'):
        ds[0]
    Image.new('RGB', (100, 90)).save(tmp_path / 'a.png')
    with pytest.raises(DataError, match=r'a\.png is 100x90 but .*ann\.json says 100x100'):
        ds[0]
    Image.new('RGB', (100, 100)).save(tmp_path / 'a.png')
    image, target = ds[0]
    assert image.shape == (3, 100, 100) and target['labels'].tolist() == [1] and target['masks'].sum() == 80
    assert target['boxes'].tolist() == [[0, 0, 10, 8]]


def test_rle_check_decodes_pycocotools_strings_exactly():
    from caretrans.dense.data import _check_segmentation, _rle_string_runs
    rng = np.random.default_rng(0)
    for h, w, p in ((100, 100, 0.5), (37, 53, 0.02), (64, 48, 0.98), (5, 7, 0.0)):
        mask = (rng.random((h, w)) < p).astype(np.uint8)
        counts = mask_utils.encode(np.asfortranarray(mask))['counts'].decode()
        flat = mask.flatten(order='F')  # COCO runs go down the columns, starting with zeros
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        assert _rle_string_runs(counts) == ([0] + runs if flat[0] else runs)
        assert _check_segmentation(dict(size=[h, w], counts=counts), h, w) is None


def test_decompression_bombs_in_dense_data_are_refused_and_named(tmp_path):
    from image_files import png_claiming
    path = _write_coco(tmp_path, _coco_gt())
    png_claiming(tmp_path / 'a.png', 100_000, 100_000, decodable=False)  # 1e10 pixels
    with pytest.raises(DataError, match=r'image .*a\.png refused: .*10000000000 pixels'):
        CocoInstances(tmp_path, path)[0]
    _ade(tmp_path, np.zeros((2, 3), np.uint8))
    png_claiming(tmp_path / 'images/training/x.jpg', 100_000, 100_000, decodable=False)
    with pytest.raises(DataError, match=r'x\.jpg refused'):
        AdeSegmentation(tmp_path, 'training')[0]


def test_det_train_names_a_garbage_rle_record_before_training(tmp_path, capsys):
    from caretrans.cli import main as cli_main
    for split in ('training', 'validation'):
        (tmp_path / 'images' / split).mkdir(parents=True)
        Image.new('RGB', (100, 100)).save(tmp_path / 'images' / split / 'a.png')
        data = _coco_gt()
        if split == 'training':
            data['annotations'][0]['segmentation']['counts'] = 5  # pycocotools: a TypeError in the first batch
        (tmp_path / 'annotations').mkdir(exist_ok=True)
        (tmp_path / 'annotations' / f'instances_{split}.json').write_text(json.dumps(data))
    rc = cli_main(['det', 'train', '--recipe', 'shapes-det', '--data', str(tmp_path), '--output', str(tmp_path / 'r'),
                   '--batch-size', '1', '--workers', '0', '--no-progress'])
    err = capsys.readouterr().err
    assert rc == 2 and 'caretrans det: error: ' in err
    assert 'instances_training.json: annotations[0] (id 1): RLE counts must be a compressed string' in err


def _ade(tmp_path, label: np.ndarray, mode='L'):
    for d in ('images/training', 'annotations/training'):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (label.shape[1], label.shape[0])).save(tmp_path / 'images/training/x.jpg')
    Image.fromarray(label).convert(mode).save(tmp_path / 'annotations/training/x.png')


def test_ade_reduce_zero_label_and_errors(tmp_path):
    _ade(tmp_path, np.array([[0, 1, 150], [2, 0, 1]], np.uint8))
    ds = AdeSegmentation(tmp_path, 'training')
    assert ds[0][1].tolist() == [[255, 0, 149], [1, 255, 0]]
    assert AdeSegmentation(tmp_path, 'training', num_classes=151, reduce_zero_label=False)[0][1][0, 2] == 150
    _ade(tmp_path, np.array([[0, 151]], np.uint8))
    with pytest.raises(DataError, match=r'x\.png holds class 151, beyond the 150 classes'):
        AdeSegmentation(tmp_path, 'training')[0]
    _ade(tmp_path, np.zeros((2, 3), np.uint8), mode='RGB')
    with pytest.raises(DataError, match=r'x\.png has mode RGB'):
        AdeSegmentation(tmp_path, 'training')[0]
    (tmp_path / 'annotations/training/x.png').unlink()
    with pytest.raises(DataError, match=r'x\.jpg has no label map'):
        AdeSegmentation(tmp_path, 'training')
    with pytest.raises(DataError, match='expected the ADE20K layout'):
        AdeSegmentation(tmp_path, 'validation')


def test_semantic_segmentation_needs_no_pycocotools(tmp_path):
    _ade(tmp_path, np.array([[0, 1, 2], [2, 0, 1]], np.uint8))
    code = ('import sys; sys.modules["pycocotools"] = None  # as if it were not installed\n'
            'from caretrans.cli import dense\n'
            'from caretrans.dense import tasks, train\n'
            'from caretrans.dense.data import AdeSegmentation\n'
            f'print(AdeSegmentation({str(tmp_path)!r}, "training")[0][1].tolist())')
    done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[[255, 0, 1], [1, 255, 0]]'


def test_segmentation_crop_pads_labels_with_ignore():
    from torchvision import tv_tensors
    torch.manual_seed(0)
    image = tv_tensors.Image(torch.randint(0, 255, (3, 40, 60), dtype=torch.uint8))
    label = tv_tensors.Mask(torch.ones(40, 60, dtype=torch.int64))
    x, y = segmentation_train_transform(crop_size=64, scale=40, ratio_range=(1.0, 1.0))(image, label)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32 and y.shape == (64, 64)
    assert set(y.unique().tolist()) == {1, 255}  # the shorter side is padded with the ignore index


# ---------------------------------------------------------------- losses and recipes

def test_segmentation_loss_of_an_all_ignored_batch_is_zero_without_gradient():
    from caretrans.dense.tasks import SegmentationTask
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 1)
    images = torch.randn(2, 3, 8, 8)
    ignored = torch.full((2, 8, 8), 255)
    loss = SegmentationTask.loss(model, (images, ignored), 'cpu')
    assert loss.item() == 0.0  # 'mean' cross-entropy over no pixel is 0 / 0: NaN
    loss.backward()
    assert model.weight.grad.abs().sum() == 0 and model.bias.grad.abs().sum() == 0
    # With labelled pixels, it is the mean over them, as F.cross_entropy computes it.
    labels = ignored.clone()
    labels[0, :3] = 1
    labels[1, 5:, :2] = 3
    expected = F.cross_entropy(model(images), labels, ignore_index=255)
    torch.testing.assert_close(SegmentationTask.loss(model, (images, labels), 'cpu'), expected)


@pytest.mark.parametrize('task,recipe', [('det', 'shapes-seg'), ('seg', 'shapes-det'), ('det', 'ade20k')])
def test_a_recipe_for_the_other_task_is_refused(tmp_path, capsys, task, recipe):
    argv = [task, 'train', '--recipe', recipe, '--data', str(tmp_path), '--output', str(tmp_path / 'run')]
    assert cli_main(argv) == 2
    assert f"recipe {recipe!r} is a {'seg' if task == 'det' else 'det'!r} recipe, not a {task!r} one" in \
        capsys.readouterr().err
    assert cli_main([task, 'validate', '--checkpoint', str(tmp_path / 'x.pth'), '--recipe', recipe]) == 2
    assert 'recipe, not a' in capsys.readouterr().err


def test_yaml_recipes_say_their_task_or_take_the_commands(tmp_path, capsys):
    seg = DenseRecipe(**PRESETS['shapes-seg'])
    (tmp_path / 'seg.yaml').write_text(yaml.safe_dump(seg.to_dict()))
    assert cli_main(['det', 'train', '--recipe', str(tmp_path / 'seg.yaml'), '--output', str(tmp_path / 'run')]) == 2
    assert "is a 'seg' recipe, not a 'det' one" in capsys.readouterr().err
    (tmp_path / 'no_task.yaml').write_text(yaml.safe_dump({k: v for k, v in seg.to_dict().items() if k != 'task'}))
    assert load_recipe(str(tmp_path / 'no_task.yaml'), 'seg') == seg
    (tmp_path / 'shared.yaml').write_text(yaml.safe_dump(dict(epochs=3, lr=0.01)))
    assert load_recipe(str(tmp_path / 'shared.yaml'), 'det') == DenseRecipe(task='det', epochs=3, lr=0.01)
    # Settings of the other task are refused, not ignored: a detector has no crop size or class count to set.
    with pytest.raises(ValueError, match=r"no_task\.yaml: recipe field head_channels: 64 is not valid in a 'det' recipe "
                                         r"\(a 'seg' setting; leave it out\)"):
        load_recipe(str(tmp_path / 'no_task.yaml'), 'det')


def test_a_recipe_yaml_holds_the_fields_of_its_task_and_reads_back(tmp_path):
    from caretrans.dense.recipe import field_names
    for preset, absent in (('shapes-det', ('num_classes', 'crop_size', 'head_channels', 'reduce_zero_label')),
                           ('shapes-seg', ('box_head_dim', 'anchor_sizes', 'proposals'))):
        recipe = load_recipe(preset)
        saved = yaml.safe_load(recipe.save(tmp_path / 'recipe.yaml').read_text())
        assert not set(absent) & set(saved) and set(saved) == set(field_names(recipe.task))
        assert load_recipe(str(tmp_path / 'recipe.yaml')) == recipe
    # A recipe.yaml of earlier versions, every field written, still reads (the unused ones at their defaults).
    (tmp_path / 'old.yaml').write_text(yaml.safe_dump(DenseRecipe(**PRESETS['shapes-det']).to_dict()))
    assert load_recipe(str(tmp_path / 'old.yaml')) == load_recipe('shapes-det')


@pytest.mark.parametrize('task, other', [('det', 'seg'), ('seg', 'det')])
def test_train_help_lists_only_the_tasks_own_recipe_fields(capsys, task, other):
    from caretrans.cli import build_parser
    from caretrans.dense.recipe import field_names
    with pytest.raises(SystemExit):
        build_parser().parse_args([task, 'train', '--help'])
    text = capsys.readouterr().out
    own = set(field_names(task)) - {'task'}
    assert all(f'--{name.replace("_", "-")}' in text for name in own)
    foreign = set(field_names(other)) - set(field_names(task))
    assert foreign and not any(f'--{name.replace("_", "-")} ' in text for name in foreign), foreign


@pytest.mark.parametrize('flags,message', [
    (['--crop-size', '0'], 'recipe field crop_size: 0 is not valid; expected an integer >= 32'),
    (['--epochs', '-1'], 'epochs: -1 is not valid; expected an integer >= 1'),
    (['--batch-size', '0'], 'batch_size: 0 is not valid'),
    (['--lr', '-1'], 'lr: -1.0 is not valid; expected a number >= 0'),
    (['--eval-every', '0'], 'eval_every: 0 is not valid'),
    (['--ratio-range', '2', '0.5'],
     'ratio_range: [2.0, 0.5] is not valid; expected a list of 2 numbers > 0, low to high'),
    (['--norm', 'group'], "norm: 'group' is not valid; expected one of 'frozen', 'sync', 'batch'"),
    (['--warmup-ratio', '2'], 'warmup_ratio: 2.0 is not valid'),
])
def test_bad_dense_recipe_flags_are_refused_before_any_work(tmp_path, capsys, flags, message):
    argv = ['seg', 'train', '--recipe', 'shapes-seg', '--data', str(tmp_path), '--output', str(tmp_path / 'run')]
    assert cli_main(argv + flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'run').exists()


def test_bad_dense_yaml_values_name_the_file_and_field(tmp_path):
    (tmp_path / 'r.yaml').write_text('task: seg\nbatch_size: "8"\n')
    with pytest.raises(ValueError, match=r"r\.yaml: recipe field batch_size: '8' is not valid; expected an integer"):
        load_recipe(str(tmp_path / 'r.yaml'))
    (tmp_path / 'r.yaml').write_text('task: seg\nlr: fast\n')
    with pytest.raises(ValueError, match=r"recipe field lr: 'fast' is not valid; expected a number >= 0"):
        load_recipe(str(tmp_path / 'r.yaml'))


# ---------------------------------------------------------------- the whole data set, checked when a task opens it

def _shapes(tmp_path, task):
    from caretrans.dense.synthetic import make_shapes_dataset
    make_shapes_dataset(tmp_path, num_train=3, num_val=3, image_size=48)
    return dataclasses.replace(load_recipe(f'shapes-{task}'), data=str(tmp_path))


def test_seg_task_checks_every_image_and_label_map_of_both_splits(tmp_path):
    from caretrans.dense.tasks import make_task
    recipe = _shapes(tmp_path, 'seg')
    make_task(recipe)  # the shapes data are sound
    val_images, val_labels = tmp_path / 'images/validation', tmp_path / 'annotations/validation'
    (val_images / '000000.png').write_bytes(b'\x89PNG\r\n\x1a\n garbage')           # cannot be opened
    Image.new('L', (40, 48)).save(val_labels / '000001.png')                        # another size
    Image.fromarray(np.full((48, 48), 9, np.uint8)).save(val_labels / '000002.png')  # class 9 of 4
    Image.new('RGB', (48, 48)).save(tmp_path / 'annotations/training/000000.png')   # not class indices
    Image.new('RGB', (2, 48 * 33)).save(tmp_path / 'images/training/000001.png')    # too long and thin
    Image.new('L', (2, 48 * 33)).save(tmp_path / 'annotations/training/000001.png')
    with pytest.raises(DataError) as err:
        make_task(recipe)
    message = str(err.value)
    assert message.startswith('5 problem(s) in the data: ') and '\n' not in message
    for part in ('training/000000.png has mode RGB; expected one channel of class indices',
                 'training/000001.png refused: it is 2x1584',
                 'validation/000000.png cannot be read',
                 'validation/000001.png is 40x48, its image 48x48',
                 'validation/000002.png holds class 9, beyond the 4 classes'):
        assert part in message


def test_det_task_checks_every_image_and_compares_the_categories(tmp_path):
    from caretrans.dense.tasks import make_task
    recipe = _shapes(tmp_path, 'det')
    assert make_task(recipe).num_classes == 4
    (tmp_path / 'images/validation/000001.png').unlink()
    Image.new('RGB', (48, 40)).save(tmp_path / 'images/validation/000002.png')
    with pytest.raises(DataError) as err:
        make_task(recipe)
    ann = tmp_path / 'annotations/instances_validation.json'
    assert str(err.value) == (
        f'2 problem(s) in the data: {ann}: images[1] (id 2): image {tmp_path}/images/validation/000001.png does not '
        f'exist; {ann}: images[2] (id 3): image {tmp_path}/images/validation/000002.png is 48x40 but the record says '
        '48x48')
    Image.new('RGB', (48, 48)).save(tmp_path / 'images/validation/000001.png')
    Image.new('RGB', (48, 48)).save(tmp_path / 'images/validation/000002.png')
    data = json.loads(ann.read_text())
    subset = dict(data, categories=data['categories'][:2],  # a subset of the classes is scored by name
                  annotations=[a for a in data['annotations'] if a['category_id'] != 3])
    ann.write_text(json.dumps(subset))
    assert make_task(recipe).num_classes == 4
    ann.write_text(json.dumps(dict(subset, categories=subset['categories'] + [dict(id=4, name='star')])))
    with pytest.raises(DataError, match=r".*instances_validation\.json has category that .*instances_training\.json "
                                        r"lacks \(id name\): 4 'star'"):
        make_task(recipe)


def test_dense_training_stops_on_a_bad_validation_mask_before_any_work(tmp_path, capsys):
    _shapes(tmp_path, 'seg')
    Image.fromarray(np.full((48, 48), 200, np.uint8)).save(tmp_path / 'annotations/validation/000002.png')
    run = tmp_path / 'run'
    assert cli_main(['seg', 'train', '--recipe', 'shapes-seg', '--data', str(tmp_path), '--output', str(run),
                     '--batch-size', '2', '--epochs', '1', '--no-progress']) == 2
    assert 'caretrans seg: error: 1 problem(s) in the data: label map ' in capsys.readouterr().err
    assert not run.exists()  # nothing trained, nothing written


def test_dense_images_are_read_by_their_range_and_16_bit_label_maps_keep_their_labels(tmp_path):
    for d in ('images/training', 'annotations/training'):
        (tmp_path / d).mkdir(parents=True)
    Image.fromarray(np.full((4, 6), 32768, np.uint16)).save(tmp_path / 'images/training/x.png')
    Image.fromarray(np.array([[0, 1, 2, 3, 200, 150]] * 4, np.uint16)).save(tmp_path / 'annotations/training/x.png')
    image, label = AdeSegmentation(tmp_path, 'training', num_classes=200)[0]
    assert image.unique().tolist() == [128]  # not saturated to 255
    assert label[0].tolist() == [255, 0, 1, 2, 199, 149]
    with pytest.raises(DataError, match='num_classes 300: class indices from 255 on would be read as the ignored'):
        AdeSegmentation(tmp_path, 'training', num_classes=300)


def test_a_missing_image_in_a_loader_worker_is_one_line(tmp_path):
    from torch.utils.data import DataLoader
    path = _write_coco(tmp_path, _coco_gt())
    loader = DataLoader(CocoInstances(tmp_path, path, detection_transform(False)), num_workers=1,
                        collate_fn=lambda batch: batch)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert str(err.value) == f'image {tmp_path / "a.png"} does not exist'
