"""Predictions of a trained dense model on images: detections or class maps, and pictures of them."""
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .labels import colour
from .run import DenseRun

__all__ = ['detect', 'segment', 'draw_detections', 'draw_class_map', 'class_map_image', 'class_shares',
           'output_paths', 'MASK_THRESHOLD', 'OVERLAY_ALPHA']

MASK_THRESHOLD = 0.5  # Mask R-CNN's mask probabilities -> instance masks, as its COCO evaluation
OVERLAY_ALPHA = 0.5   # the opacity of masks and class colours drawn over an image
# Logits of at most this many values are resized to the image before the argmax, as evaluation does; a
# larger image takes the argmax at the model's resolution, resized (nearest), to bound the memory.
_FULL_SIZE_LOGITS = 1 << 26


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def detect(run: DenseRun, image: Image.Image, score_threshold: float = 0.5) -> Dict[str, torch.Tensor]:
    """Mask R-CNN's detections scoring at least `score_threshold`, best first: boxes (N, 4, xyxy, image
    pixels), scores (N,), labels (N,, indices into run.labels) and masks (N, H, W, bool)."""
    heads = run.model.roi_heads
    kept = heads.score_thresh
    # The box head keeps scores strictly above its threshold (and the 100 best after NMS): just below ours.
    heads.score_thresh = score_threshold - 1e-6
    try:
        (out,) = run.model([run.transform(image).to(_device(run.model))])
    finally:
        heads.score_thresh = kept
    keep = out['scores'] >= score_threshold
    return dict(boxes=out['boxes'][keep].float().cpu(), scores=out['scores'][keep].float().cpu(),
                labels=out['labels'][keep].cpu(), masks=(out['masks'][keep, 0] > MASK_THRESHOLD).cpu())


@torch.no_grad()
def segment(run: DenseRun, image: Image.Image) -> torch.Tensor:
    """The class of every pixel (H, W, int64, indices into run.labels): the image at the evaluation scale,
    logits resized to the image as evaluation does."""
    logits = run.model(run.transform(image)[None].to(_device(run.model))).float()
    size = (image.height, image.width)
    if logits.shape[1] * image.height * image.width <= _FULL_SIZE_LOGITS:
        return F.interpolate(logits, size=size, mode='bilinear', align_corners=False).argmax(1)[0].cpu()
    classes = logits.argmax(1, keepdim=True).float()
    return F.interpolate(classes, size=size, mode='nearest')[0, 0].long().cpu()


def draw_detections(image: Image.Image, detections: Dict[str, torch.Tensor], labels) -> Image.Image:
    """The image with each detection's mask tinted and its box outlined in its class colour, labelled
    'name score'."""
    canvas = pil_to_tensor(image.convert('RGB'))
    colours = [colour(int(k)) for k in detections['labels']]
    if len(colours):
        # One mask at a time, the best last (on top): torchvision blacks out where masks drawn together overlap.
        for mask, rgb in reversed(list(zip(detections['masks'], colours))):
            canvas = draw_segmentation_masks(canvas, mask, alpha=OVERLAY_ALPHA, colors=rgb)
        names = [f'{labels[int(k)]} {float(s):.2f}' for k, s in zip(detections['labels'], detections['scores'])]
        canvas = draw_bounding_boxes(canvas, detections['boxes'], labels=names, colors=colours, width=2)
    return to_pil_image(canvas)


def draw_class_map(image: Image.Image, class_map: torch.Tensor) -> Image.Image:
    """The image with every pixel tinted in the colour of its class."""
    classes = class_map.unique()
    masks = class_map[None] == classes[:, None, None]
    canvas = draw_segmentation_masks(pil_to_tensor(image.convert('RGB')), masks, alpha=OVERLAY_ALPHA,
                                     colors=[colour(int(c)) for c in classes])
    return to_pil_image(canvas)


def class_map_image(class_map: torch.Tensor, num_classes: int) -> Image.Image:
    """The class map as a PNG-ready image: a palette image of class indices coloured as drawn ('P'), or
    16-bit indices ('I;16') beyond 256 classes."""
    if num_classes > 256:
        return Image.fromarray(class_map.numpy().astype(np.uint16))
    out = Image.frombytes('P', (class_map.shape[1], class_map.shape[0]), class_map.numpy().astype(np.uint8).tobytes())
    out.putpalette([v for c in range(num_classes) for v in colour(c)])
    return out


def class_shares(class_map: torch.Tensor, labels) -> Dict[str, float]:
    """Percent of the pixels in each class present, largest first."""
    counts = torch.bincount(class_map.flatten(), minlength=len(labels))
    order = torch.argsort(counts, descending=True, stable=True)
    return {labels[int(c)]: 100 * float(counts[c]) / class_map.numel() for c in order if counts[c] > 0}


def output_paths(relative: List[Path], output: Path, suffixes: Tuple[str, ...]) -> List[Tuple[Path, ...]]:
    """For each input's relative path, its output files (one per suffix, e.g. '.boxes.png') under `output`;
    inputs that would share names get '-2', '-3', ... ."""
    taken, out = set(), []
    for rel in relative:
        stem, n = rel.with_suffix(''), 1
        while str(stem) + ('' if n == 1 else f'-{n}') in taken:
            n += 1
        stem = Path(str(stem) + ('' if n == 1 else f'-{n}'))
        taken.add(str(stem))
        out.append(tuple(output / (str(stem) + s) for s in suffixes))
    return out
