"""What differs between detection and segmentation: data, model, loss, evaluation and model card."""
import itertools
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.transforms import v2

from ..models.card import ModelCard
from . import data as D
from .detection import maskrcnn
from .labels import ade_class_names, coco_label_names
from .metrics import SegmentationMeter, coco_metrics, detections_to_coco
from .recipe import DenseRecipe
from .segmentation import semantic_fpn

__all__ = ['DetectionTask', 'SegmentationTask', 'make_task', 'create_dense_model']


class DetectionTask:
    """COCO-format instances, Mask R-CNN, its summed losses, COCO box and mask AP."""

    collate = staticmethod(D.collate_lists)

    def __init__(self, recipe: DenseRecipe):
        self.recipe = recipe
        root = Path(recipe.data)
        self.train_set = self._dataset(root, recipe.train_split, train=True)
        self.val_set = self._dataset(root, recipe.val_split, train=False)
        D.compare_categories(self.train_set, self.val_set)
        D.check_datasets(self.train_set, self.val_set)  # every image, before any training
        self.num_classes = len(self.train_set.category_ids) + 1  # + background

    @staticmethod
    def _dataset(root: Path, split: str, train: bool) -> D.CocoInstances:
        images = root / 'images' / split if (root / 'images' / split).is_dir() else root / split
        return D.CocoInstances(images, root / 'annotations' / f'instances_{split}.json',
                               D.detection_transform(train), skip_empty=train)

    def build_model(self) -> nn.Module:
        return create_dense_model(self.recipe, self.num_classes)

    def label_names(self) -> Tuple[str, ...]:
        """The model's outputs: '__background__', then the training categories in label order."""
        return coco_label_names(self.train_set.coco, self.train_set.category_ids)

    def card(self, model: nn.Module) -> ModelCard:
        """The model card of `model` (this task's, unwrapped): Mask R-CNN resizes and normalises inside."""
        transform = model.transform  # torchvision's GeneralizedRCNNTransform
        return _card(self.recipe, self.num_classes, self.label_names(), transform.image_mean, transform.image_std)

    def output_categories(self, labels: Sequence[str]) -> List[Optional[int]]:
        """The validation data's category id of each model label 1..K, matched by name (None: not in the data);
        a category of the data that the model does not know is refused."""
        coco = self.val_set.coco
        by_name = {coco.cats[c]['name']: c for c in self.val_set.category_ids}
        unknown = sorted(set(by_name) - set(labels[1:]))
        if unknown:
            raise D.DataError(f'{self.val_set.annotation_file}: categor{"ies" if len(unknown) > 1 else "y"} '
                              f'{", ".join(map(repr, unknown))} not among the model\'s classes '
                              f'({", ".join(labels[1:])})')
        return [by_name.get(name) for name in labels[1:]]

    @staticmethod
    def loss(model: nn.Module, batch, device) -> torch.Tensor:
        images, targets = batch
        images = [img.to(device) for img in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        return sum(model(images, targets).values())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, ctx, autocast, labels: Optional[Sequence[str]] = None
                 ) -> Dict[str, object]:
        """Box and mask AP (percent) of `model`, whose outputs are named `labels` (default: this task's)."""
        model.eval()
        categories = self.output_categories(labels or self.label_names())
        results: List[dict] = []
        for images, targets in loader:
            with autocast():
                outputs = model([img.to(ctx.device) for img in images])
            outputs = [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
            results += detections_to_coco(outputs, [t['image_id'] for t in targets], categories)
        if ctx.is_distributed:
            gathered = [None] * ctx.world_size
            dist.all_gather_object(gathered, results)
            results = list(itertools.chain.from_iterable(gathered))
        return coco_metrics(self.val_set.coco, results, image_ids=self.val_set.ids)


class SegmentationTask:
    """ADE20K-format label maps, Semantic FPN, pixel cross-entropy, mIoU."""

    collate = None  # default stacking: crops share one size

    def __init__(self, recipe: DenseRecipe):
        self.recipe = recipe
        r = recipe
        self.num_classes = r.num_classes
        self.train_set = D.AdeSegmentation(
            r.data, r.train_split, r.num_classes, r.reduce_zero_label,
            D.segmentation_train_transform(r.crop_size, r.scale, r.ratio_range))
        self.val_set = D.AdeSegmentation(
            r.data, r.val_split, r.num_classes, r.reduce_zero_label,
            D.SegmentationEvalTransform(r.min_size, r.max_size))
        D.check_datasets(self.train_set, self.val_set)  # every image and label map, before any training

    def build_model(self) -> nn.Module:
        return create_dense_model(self.recipe, self.num_classes)

    def label_names(self) -> Tuple[str, ...]:
        """Classes 0..N-1: the names of the data's objectInfo150.txt, else 'class_N'."""
        r = self.recipe
        return ade_class_names(r.data, r.num_classes, r.reduce_zero_label)

    def card(self, model: nn.Module) -> ModelCard:
        """The model card: the evaluation transform (resize, normalisation) is the data's, outside the model."""
        normalize = next(t for t in self.val_set.transform.to_input.transforms if isinstance(t, v2.Normalize))
        return _card(self.recipe, self.num_classes, self.label_names(), normalize.mean, normalize.std)

    @staticmethod
    def loss(model: nn.Module, batch, device) -> torch.Tensor:
        """Mean cross-entropy over the labelled pixels; 0 (and no gradient) when a batch has none,
        where the 'mean' reduction would divide 0 by 0 and make the loss NaN."""
        images, labels = batch
        labels = labels.to(device)
        total = F.cross_entropy(model(images.to(device)), labels, ignore_index=D.IGNORE_INDEX, reduction='sum')
        return total / (labels != D.IGNORE_INDEX).sum().clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, ctx, autocast, labels: Optional[Sequence[str]] = None
                 ) -> Dict[str, object]:
        """mIoU, pixel accuracy and IoU per class (percent) of `model`, whose classes are `labels` (default: this
        task's): images at the evaluation scale, logits resized to the full-size label maps."""
        model.eval()
        names, in_data = tuple(labels or self.label_names()), self.label_names()
        if names != in_data and not all(n == f'class_{i}' for i, n in enumerate(in_data)):
            raise D.DataError(f'the classes of {self.recipe.data} ({", ".join(in_data)}) are not the model\'s '
                              f'({", ".join(names)}); label maps are matched by class index')
        meter = SegmentationMeter(self.num_classes, class_names=names)
        for images, labels in loader:  # batch size 1: sizes differ
            with autocast():
                logits = model(images.to(ctx.device))
            logits = F.interpolate(logits.float(), size=labels.shape[-2:], mode='bilinear', align_corners=False)
            meter.update(logits.argmax(1).cpu(), labels)
        if ctx.is_distributed:
            matrix = meter.matrix.to(ctx.device)
            dist.all_reduce(matrix)
            meter.matrix = matrix.cpu()
        return meter.compute()


def create_dense_model(recipe: DenseRecipe, num_classes: int) -> nn.Module:
    """The model `recipe` describes, with `num_classes` outputs (detection: the background included)."""
    r = recipe
    if r.task == 'seg':
        return semantic_fpn(r.model, num_classes, r.backbone_checkpoint, norm=r.norm, fpn_channels=r.fpn_channels,
                            head_channels=r.head_channels, drop_path_rate=r.drop_path)
    anchors = AnchorGenerator(tuple((s,) for s in r.anchor_sizes), ((0.5, 1.0, 2.0),) * len(r.anchor_sizes))
    return maskrcnn(
        r.model, num_classes, r.backbone_checkpoint, norm=r.norm, fpn_channels=r.fpn_channels,
        box_head_dim=r.box_head_dim, mask_head_dims=r.mask_head_dims, drop_path_rate=r.drop_path,
        min_size=r.min_size, max_size=r.max_size, rpn_anchor_generator=anchors,
        rpn_batch_size_per_image=r.rpn_batch, box_batch_size_per_image=r.roi_batch,
        rpn_post_nms_top_n_train=r.proposals[0], rpn_post_nms_top_n_test=r.proposals[1],
        rpn_pre_nms_top_n_train=2 * r.proposals[0], rpn_pre_nms_top_n_test=2 * r.proposals[1],
    )


def _card(recipe: DenseRecipe, num_classes: int, labels: Sequence[str], mean, std) -> ModelCard:
    """A dense model's card: the backbone, its outputs' names, the evaluation resize (shorter side min_size,
    longer at most max_size, bilinear, no crop) and normalisation, the data, and the recipe's model fields."""
    r = recipe
    return ModelCard(architecture=r.model, num_classes=num_classes, label_names=tuple(labels),
                     input_size=(3, r.min_size, r.min_size), interpolation='bilinear', crop_pct=1.0,
                     mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                     dataset=os.path.abspath(r.data), task=r.task, model_args=r.model_args())


def make_task(recipe: DenseRecipe):
    """The task object of a recipe, with its datasets opened and checked."""
    if not recipe.data:
        raise ValueError('no data: set --data to a COCO-format (det) or ADE20K-format (seg) folder')
    return (DetectionTask if recipe.task == 'det' else SegmentationTask)(recipe)
