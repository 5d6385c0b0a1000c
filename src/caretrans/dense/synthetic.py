"""A small, deterministic shapes dataset in COCO (instances) and ADE20K (semantic) formats.

Circles, squares and triangles in class-tinted colours on striped, noisy backgrounds; later
shapes occlude earlier ones, and every mask is exactly the visible pixels of its shape.
Layout under `root`:

    images/<split>/NNNNNN.png                 the images (shared by both formats)
    annotations/<split>/NNNNNN.png            ADE20K-format label maps: 0 unused, 1 background, 2.. shapes
    annotations/instances_<split>.json        COCO-format instances (RLE masks)
    objectInfo150.txt                         the ADE20K-format class list: label value and name
"""
import json
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils

from .labels import ADE_CLASS_FILE

__all__ = ['SHAPES', 'SEMANTIC_CLASSES', 'make_shapes_dataset']

SHAPES = ('circle', 'square', 'triangle')
SEMANTIC_CLASSES = ('background',) + SHAPES  # class indices after reduce_zero_label
_BASE_COLOURS = np.array([(200, 60, 50), (60, 170, 70), (60, 90, 210)], dtype=np.float64)
_MIN_VISIBLE = 0.5  # an earlier shape keeps at least this fraction of its pixels


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Grey stripes at a random angle and frequency, plus pixel noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 20)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period)
    base = rng.uniform(90, 160) + 25 * stripes
    tint = rng.uniform(-15, 15, size=3)
    img = base[..., None] + tint + rng.normal(0, 12, size=(size, size, 3))
    return img


def _shape_mask(rng: np.random.Generator, kind: int, size: int, min_side: int, max_side: int) -> np.ndarray:
    """A filled shape of class `kind` at a random place, scale and rotation."""
    side = rng.uniform(min_side, max_side)
    cx, cy = rng.uniform(side / 2, size - side / 2, size=2)
    canvas = Image.new('L', (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    if SHAPES[kind] == 'circle':
        r = side / 2
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        corners = 4 if SHAPES[kind] == 'square' else 3
        radius = side / 2 * (np.sqrt(2) if corners == 4 else 1.15)
        theta = rng.uniform(0, 2 * np.pi) + np.arange(corners) * 2 * np.pi / corners
        draw.polygon(list(zip(cx + radius * np.cos(theta), cy + radius * np.sin(theta))), fill=1)
    return np.asarray(canvas, dtype=bool)


def _make_image(rng: np.random.Generator, size: int, max_shapes: int) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """An image and its (class, visible mask) instances, in drawing order."""
    image = _background(rng, size)
    instances: List[Tuple[int, np.ndarray]] = []
    min_side, max_side = size * 0.18, size * 0.42
    for _ in range(rng.integers(1, max_shapes + 1)):
        for _attempt in range(20):
            kind = int(rng.integers(len(SHAPES)))
            mask = _shape_mask(rng, kind, size, min_side, max_side)
            visible = [(k, m & ~mask) for k, m in instances]
            if all(v.sum() >= _MIN_VISIBLE * m.sum() for (_, v), (_, m) in zip(visible, instances)):
                break
        else:
            continue
        colour = _BASE_COLOURS[kind] + rng.uniform(-35, 35, size=3)
        shading = rng.normal(0, 8, size=(size, size, 1))
        image = np.where(mask[..., None], colour + shading, image)
        instances = visible + [(kind, mask)]
    return np.clip(image, 0, 255).astype(np.uint8), instances


def make_shapes_dataset(root, num_train: int = 64, num_val: int = 16, image_size: int = 128,
                        max_shapes: int = 3, seed: int = 0) -> Dict[str, Path]:
    """Write the dataset (same seed, same bytes); the paths of its parts."""
    root = Path(root)
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(SHAPES)]
    paths = {}
    pixels = np.zeros(len(SEMANTIC_CLASSES) + 1, np.int64)  # per label value; value 0 is unused
    images_with = np.zeros((2, len(SEMANTIC_CLASSES) + 1), np.int64)
    for split_index, (split, count) in enumerate((('training', num_train), ('validation', num_val))):
        image_dir, label_dir = root / 'images' / split, root / 'annotations' / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            rng = np.random.default_rng([seed, split_index, i])
            image, instances = _make_image(rng, image_size, max_shapes)
            name = f'{i:06d}.png'
            Image.fromarray(image).save(image_dir / name)
            label = np.ones((image_size, image_size), np.uint8)  # 1: background
            for kind, mask in instances:
                label[mask] = kind + 2
                ys, xs = np.nonzero(mask)
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(dict(
                    id=len(annotations) + 1, image_id=i + 1, category_id=kind + 1, iscrowd=0,
                    area=int(mask.sum()),
                    bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
                    segmentation=dict(size=list(rle['size']), counts=rle['counts'].decode('ascii')),
                ))
            Image.fromarray(label).save(label_dir / name)
            counts = np.bincount(label.ravel(), minlength=len(pixels))
            pixels += counts
            images_with[split_index] += counts > 0
            images.append(dict(id=i + 1, file_name=name, height=image_size, width=image_size))
        ann_file = root / 'annotations' / f'instances_{split}.json'
        ann_file.write_text(json.dumps(dict(images=images, annotations=annotations, categories=categories)))
        paths[f'{split}_images'] = image_dir
        paths[f'{split}_annotations'] = ann_file
    paths['class_names'] = _write_class_list(root, pixels, images_with)
    return paths


def _write_class_list(root: Path, pixels: np.ndarray, images_with: np.ndarray) -> Path:
    """ADE20K's objectInfo150.txt layout (Idx, pixel Ratio, Train and Val image counts, Name) for our classes."""
    lines = ['Idx\tRatio\tTrain\tVal\tName']
    for value, name in enumerate(SEMANTIC_CLASSES, start=1):
        lines.append(f'{value}\t{pixels[value] / max(pixels.sum(), 1):.4f}\t{images_with[0, value]}\t'
                     f'{images_with[1, value]}\t{name}')
    path = root / ADE_CLASS_FILE
    path.write_text('\n'.join(lines) + '\n')
    return path
