"""COCO box / mask AP through pycocotools, and mIoU from a confusion matrix; in percent, per class by name."""
import contextlib
import io
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import numpy as np
import torch

from .data import IGNORE_INDEX

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = ['detections_to_coco', 'coco_metrics', 'SegmentationMeter']


def detections_to_coco(outputs: Sequence[Dict[str, torch.Tensor]], image_ids: Sequence[int],
                       category_ids: Sequence[Optional[int]], mask_threshold: float = 0.5) -> List[dict]:
    """Mask R-CNN outputs (labels 1..K, boxes xyxy, mask probabilities) as COCO result records; label k is
    category `category_ids[k - 1]` (None: a class the data does not have, left out)."""
    from pycocotools import mask as mask_utils  # mask AP: detection only

    results = []
    for out, image_id in zip(outputs, image_ids):
        boxes = out['boxes'].detach().cpu().numpy().astype(np.float64)
        boxes[:, 2:] -= boxes[:, :2]  # xyxy -> xywh
        scores = out['scores'].detach().cpu().tolist()
        labels = out['labels'].detach().cpu().tolist()
        masks = None
        if 'masks' in out:
            masks = (out['masks'][:, 0] > mask_threshold).cpu().numpy().astype(np.uint8)
        for i, (label, score) in enumerate(zip(labels, scores)):
            if category_ids[label - 1] is None:
                continue
            record = dict(image_id=int(image_id), category_id=int(category_ids[label - 1]),
                          bbox=[round(float(v), 2) for v in boxes[i]], score=float(score))
            if masks is not None:
                rle = mask_utils.encode(np.asfortranarray(masks[i]))
                rle['counts'] = rle['counts'].decode('ascii')  # JSON-friendly
                record['segmentation'] = rle
            results.append(record)
    return results


def coco_metrics(coco_gt: 'COCO', results: List[dict], iou_types: Sequence[str] = ('bbox', 'segm'),
                 image_ids: Sequence[int] = None) -> Dict[str, float]:
    """AP, AP50 and AP75 (COCO's 0.5:0.95 average and single thresholds) per IoU type, in percent, and
    `per_class_<type>_AP`: each category's AP by name (None where the images hold none of it).

    `image_ids` restricts the evaluation to those images (default: all of `coco_gt`).
    """
    from pycocotools.cocoeval import COCOeval

    metrics = {}
    names = [coco_gt.cats[c]['name'] for c in sorted(coco_gt.getCatIds())]
    for iou_type in iou_types:
        if not results:  # pycocotools cannot load an empty result list: nothing found scores 0
            metrics.update({f'{iou_type}_AP': 0.0, f'{iou_type}_AP50': 0.0, f'{iou_type}_AP75': 0.0,
                            f'per_class_{iou_type}_AP': dict.fromkeys(names, 0.0)})
            continue
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its tables
            coco_dt = coco_gt.loadRes(results)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            if image_ids is not None:
                evaluator.params.imgIds = sorted(image_ids)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        ap, ap50, ap75 = (100 * max(float(v), 0.0) for v in evaluator.stats[:3])  # -1 means no ground truth
        metrics.update({f'{iou_type}_AP': ap, f'{iou_type}_AP50': ap50, f'{iou_type}_AP75': ap75,
                        f'per_class_{iou_type}_AP': dict(zip(names, _class_aps(evaluator)))})
    return metrics


def _class_aps(evaluator) -> List[Optional[float]]:
    """Each category's AP (percent) over COCO's ten IoU thresholds, all areas, 100 detections, as
    `summarize` averages them for all categories; None for a category without ground truth."""
    precision = evaluator.eval['precision'][:, :, :, 0, -1]  # [IoU threshold, recall, category]
    aps = []
    for k in range(precision.shape[2]):
        p = precision[:, :, k]
        aps.append(100 * float(p[p > -1].mean()) if (p > -1).any() else None)
    return aps


class SegmentationMeter:
    """Accumulates a confusion matrix over label maps; mIoU, pixel accuracy and per-class IoU (by name), in
    percent.

    Pixels labelled `ignore_index` are not counted. A class absent from both the labels and
    the predictions has no IoU (None) and is left out of the mean, as mmsegmentation does.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX, class_names: Optional[Sequence[str]] = None):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f'{len(class_names)} class names for {num_classes} classes')
        self.num_classes = num_classes
        self.class_names = tuple(class_names) if class_names is not None else \
            tuple(f'class_{i}' for i in range(num_classes))
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)  # [label, prediction]

    def update(self, prediction: torch.Tensor, label: torch.Tensor):
        if prediction.shape != label.shape:
            raise ValueError(f'prediction {tuple(prediction.shape)} and label {tuple(label.shape)} differ in shape')
        keep = label != self.ignore_index
        index = label[keep].to(torch.int64).cpu() * self.num_classes + prediction[keep].to(torch.int64).cpu()
        self.matrix += torch.bincount(index, minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def compute(self) -> Dict[str, object]:
        m = self.matrix.double()
        tp = m.diag()
        union = m.sum(0) + m.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float('nan')))
        return dict(
            mIoU=100 * float(np.nanmean(iou.numpy())) if (union > 0).any() else 0.0,
            aAcc=100 * float(tp.sum() / m.sum().clamp(min=1)),
            per_class_iou={name: None if v != v else 100 * v for name, v in zip(self.class_names, iou.tolist())},
        )
