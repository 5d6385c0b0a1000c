"""What differs between detection and segmentation: data, model, loss and evaluation."""
import itertools
from pathlib import Path
from typing import Dict, List

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.detection.anchor_utils import AnchorGenerator

from . import data as D
from .detection import maskrcnn
from .metrics import SegmentationMeter, coco_metrics, detections_to_coco
from .recipe import DenseRecipe
from .segmentation import semantic_fpn

__all__ = ['DetectionTask', 'SegmentationTask', 'make_task']


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
        r = self.recipe
        anchors = AnchorGenerator(tuple((s,) for s in r.anchor_sizes), ((0.5, 1.0, 2.0),) * len(r.anchor_sizes))
        return maskrcnn(
            r.model, self.num_classes, r.backbone_checkpoint, norm=r.norm, fpn_channels=r.fpn_channels,
            box_head_dim=r.box_head_dim, mask_head_dims=r.mask_head_dims, drop_path_rate=r.drop_path,
            min_size=r.min_size, max_size=r.max_size, rpn_anchor_generator=anchors,
            rpn_batch_size_per_image=r.rpn_batch, box_batch_size_per_image=r.roi_batch,
            rpn_post_nms_top_n_train=r.proposals[0], rpn_post_nms_top_n_test=r.proposals[1],
            rpn_pre_nms_top_n_train=2 * r.proposals[0], rpn_pre_nms_top_n_test=2 * r.proposals[1],
        )

    @staticmethod
    def loss(model: nn.Module, batch, device) -> torch.Tensor:
        images, targets = batch
        images = [img.to(device) for img in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        return sum(model(images, targets).values())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, ctx, autocast) -> Dict[str, float]:
        model.eval()
        results: List[dict] = []
        for images, targets in loader:
            with autocast():
                outputs = model([img.to(ctx.device) for img in images])
            outputs = [{k: v.float() if v.is_floating_point() else v for k, v in o.items()} for o in outputs]
            results += detections_to_coco(outputs, [t['image_id'] for t in targets], self.val_set.category_ids)
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
        r = self.recipe
        return semantic_fpn(r.model, r.num_classes, r.backbone_checkpoint, norm=r.norm, fpn_channels=r.fpn_channels,
                            head_channels=r.head_channels, drop_path_rate=r.drop_path)

    @staticmethod
    def loss(model: nn.Module, batch, device) -> torch.Tensor:
        """Mean cross-entropy over the labelled pixels; 0 (and no gradient) when a batch has none,
        where the 'mean' reduction would divide 0 by 0 and make the loss NaN."""
        images, labels = batch
        labels = labels.to(device)
        total = F.cross_entropy(model(images.to(device)), labels, ignore_index=D.IGNORE_INDEX, reduction='sum')
        return total / (labels != D.IGNORE_INDEX).sum().clamp(min=1)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader, ctx, autocast) -> Dict[str, object]:
        """Images at the evaluation scale; logits resized to the full-size label maps."""
        model.eval()
        meter = SegmentationMeter(self.num_classes)
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


def make_task(recipe: DenseRecipe):
    """The task object of a recipe, with its datasets opened and checked."""
    if not recipe.data:
        raise ValueError('no data: set --data to a COCO-format (det) or ADE20K-format (seg) folder')
    return (DetectionTask if recipe.task == 'det' else SegmentationTask)(recipe)
