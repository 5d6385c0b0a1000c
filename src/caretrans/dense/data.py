"""COCO-format instance data and ADE20K-format semantic data, checked record by record."""
import contextlib
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ..data import images

if TYPE_CHECKING:
    from pycocotools.coco import COCO

__all__ = [
    'DataError', 'IGNORE_INDEX', 'LABEL_MODES', 'read_image', 'load_coco', 'CocoInstances', 'AdeSegmentation',
    'check_datasets', 'compare_categories', 'detection_transform', 'segmentation_train_transform',
    'SegmentationEvalTransform', 'collate_lists',
]

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # ADE20K's "other" after reduce_zero_label, and the padding of crops
# Label maps hold class indices as stored: 8 bits (L, P, 1) or 16 (I;16*, I); never rescaled.
LABEL_MODES = ('L', 'P', '1', 'I', 'I;16', 'I;16L', 'I;16B', 'I;16N')
# Problems named in a DataError's one line; all of them are logged.
_PROBLEMS_SHOWN = 5


class DataError(ValueError):
    """An annotation file, record or image that cannot be used, named in the message (one line, also when a
    DataLoader worker raised it)."""

    def __init__(self, message: str = ''):
        super().__init__(images.original_message(message, type(self)))


def _threaded(check: Callable, items: Iterable) -> List:
    """`check` of each item, on threads: header reads wait on the disk and decoding releases the GIL."""
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(check, items))


def check_datasets(*datasets):
    """Check every record of each dataset (its `problems()`: files exist, open, fit their records) before
    any training: one DataError naming the first few problems and counting them all, each one logged."""
    found = [problem for dataset in datasets for problem in dataset.problems()]
    for problem in found:
        _logger.error('%s', problem)
    if found:
        shown = '; '.join(found[:_PROBLEMS_SHOWN])
        more = f' (and {len(found) - _PROBLEMS_SHOWN} more, each logged above)' if len(found) > _PROBLEMS_SHOWN else ''
        raise DataError(f'{len(found)} problem(s) in the data: {shown}{more}')


def read_image(path: Path, mode: Optional[str] = 'RGB') -> Image.Image:
    """caretrans.data's reader (decoded in full, within its pixel limit), its errors DataErrors."""
    try:
        return images.read_image(path, mode)
    except images.UnreadableImageError as e:
        raise DataError(str(e)) from e


# ---------------------------------------------------------------- COCO

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rle_string_runs(counts: str) -> Optional[List[int]]:
    """The run lengths of a compressed COCO RLE string, or None if it is not one.

    pycocotools' C decoder (rleFrString) trusts its input: a string that ends inside a number is
    read past its end, and negative runs are written past the mask. So the string is decoded here
    first, the same way: 5-bit groups offset by 48, 0x20 continues a number, 0x10 in the last group
    is the sign, and from the fourth on each run is a difference to the run two before."""
    runs, p = [], 0
    while p < len(counts):
        value, shift = 0, 0
        while True:
            if p == len(counts):
                return None
            c = ord(counts[p]) - 48
            if not 0 <= c < 64:
                return None
            value |= (c & 0x1f) << shift
            p, shift = p + 1, shift + 5
            if not c & 0x20:
                if c & 0x10:
                    value -= 1 << shift
                break
        runs.append(value + runs[-2] if len(runs) > 2 else value)
    return runs


def _check_rle(seg: dict, height: int, width: int) -> Optional[str]:
    """What is wrong with an RLE segmentation, compressed (a string) or not (a list), or None."""
    if 'counts' not in seg or 'size' not in seg:
        return "an RLE segmentation needs 'counts' and 'size'"
    if seg['size'] != [height, width]:
        return f"RLE size {seg['size']!r} differs from the image's [height, width] [{height}, {width}]"
    counts = seg['counts']
    if isinstance(counts, str):
        runs = _rle_string_runs(counts)
        if runs is None:
            return f'RLE counts {counts[:40]!r} is not a compressed RLE string'
    elif isinstance(counts, list) and all(_is_int(c) for c in counts):
        runs = counts
    else:
        return f'RLE counts must be a compressed string or a list of integer run lengths, got {counts!r:.60}'
    if any(run < 0 for run in runs):
        return f'RLE counts hold a negative run length ({min(runs)})'
    if sum(runs) != height * width:
        return f'RLE run lengths add up to {sum(runs)} pixels, not height x width = {height * width}'
    return None


def _check_segmentation(seg, height: int, width: int) -> Optional[str]:
    """What is wrong with a COCO segmentation (polygons, RLE or uncompressed RLE), or None."""
    if isinstance(seg, list):
        if not seg:
            return 'segmentation is an empty polygon list'
        for poly in seg:
            if not isinstance(poly, list) or len(poly) < 6 or len(poly) % 2 or \
                    not all(isinstance(v, (int, float)) and math.isfinite(v) for v in poly):
                return 'each polygon must be a flat list of at least 3 (x, y) number pairs'
        return None
    if isinstance(seg, dict):
        return _check_rle(seg, height, width)
    return f'segmentation must be polygons (a list) or RLE (a dict), got {type(seg).__name__}'


def _check_coco(data, source: str, require_masks: bool):
    """Raise a DataError naming the first record of a COCO annotation dict that is unusable."""
    if not isinstance(data, dict):
        raise DataError(f'{source}: expected a JSON object with images, annotations and categories')
    for key in ('images', 'annotations', 'categories'):
        if not isinstance(data.get(key), list):
            raise DataError(f"{source}: missing or non-list '{key}'")
    images = {}
    for i, img in enumerate(data['images']):
        where = f"{source}: images[{i}]"
        if not isinstance(img, dict) or not all(k in img for k in ('id', 'file_name', 'height', 'width')):
            raise DataError(f"{where} needs 'id', 'file_name', 'height' and 'width'")
        if not _is_int(img['id']):
            raise DataError(f"{where}: id must be an integer, got {img['id']!r}")
        if img['id'] in images:
            raise DataError(f"{where}: duplicate image id {img['id']}")
        if not (_is_int(img['height']) and _is_int(img['width']) and img['height'] > 0 and img['width'] > 0):
            raise DataError(f"{where} (id {img['id']}): height and width must be positive integers, "
                            f"got {img['height']!r} and {img['width']!r}")
        if not isinstance(img['file_name'], str) or not img['file_name']:
            raise DataError(f"{where} (id {img['id']}): file_name must be a file name, got {img['file_name']!r}")
        images[img['id']] = img
    categories = set()
    for i, cat in enumerate(data['categories']):
        if not isinstance(cat, dict) or 'id' not in cat or 'name' not in cat:
            raise DataError(f"{source}: categories[{i}] needs 'id' and 'name'")
        if not _is_int(cat['id']):
            raise DataError(f"{source}: categories[{i}]: id must be an integer, got {cat['id']!r}")
        categories.add(cat['id'])
    for i, ann in enumerate(data['annotations']):
        ann_id = ann.get('id') if isinstance(ann, dict) else None
        where = f'{source}: annotations[{i}] (id {ann_id!r})'
        if not isinstance(ann, dict) or not _is_int(ann_id):
            raise DataError(f"{where} is not an object with an integer 'id'")
        if not _is_int(ann.get('image_id')) or ann['image_id'] not in images:
            raise DataError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        if not _is_int(ann.get('category_id')) or ann['category_id'] not in categories:
            raise DataError(f"{where}: category_id {ann.get('category_id')!r} is not in 'categories'")
        bbox = ann.get('bbox')
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
                and all(math.isfinite(v) for v in bbox) and bbox[2] >= 0 and bbox[3] >= 0):
            raise DataError(f'{where}: bbox must be [x, y, width, height] with width, height >= 0, got {bbox!r}')
        if 'segmentation' in ann:
            img = images[ann['image_id']]
            problem = _check_segmentation(ann['segmentation'], img['height'], img['width'])
            if problem:
                raise DataError(f'{where}: {problem}')
        elif require_masks:
            raise DataError(f"{where}: no 'segmentation' (Mask R-CNN needs instance masks)")


def load_coco(annotation_file, require_masks: bool = True) -> 'COCO':
    """Read and check a COCO annotation file; a pycocotools COCO object for it."""
    from pycocotools.coco import COCO  # imported where COCO data is read (the dense extra installs it)

    path = Path(annotation_file)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f'annotation file {path} does not exist') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f'{path} is not valid JSON: {e}') from e
    _check_coco(data, str(path), require_masks)
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


class CocoInstances(Dataset):
    """COCO-format instances: (image, target) with boxes (xyxy), labels 1..K, masks and image_id.

    Category ids map to contiguous labels 1..K in id order (0 is the background);
    crowd regions and empty boxes are left out of the targets (COCOeval still sees them).
    """

    def __init__(self, image_dir, annotation_file, transform: Optional[Callable] = None,
                 skip_empty: bool = False):
        self.image_dir = Path(image_dir)
        self.annotation_file = Path(annotation_file)
        self.coco = load_coco(annotation_file)
        self.category_ids = sorted(self.coco.getCatIds())
        self.label_of = {cat: i + 1 for i, cat in enumerate(self.category_ids)}
        ids = sorted(self.coco.getImgIds())
        if skip_empty:  # images without a usable instance teach only the background
            ids = [i for i in ids if any(not a.get('iscrowd', 0) for a in self.coco.imgToAnns[i])]
        self.ids = ids
        self.transform = transform

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def categories(self) -> List[Tuple[int, str]]:
        """(id, name) of every category, in id order."""
        return [(cat, self.coco.cats[cat]['name']) for cat in self.category_ids]

    def problems(self) -> List[str]:
        """What is wrong with the images this dataset reads, from their headers: a file that is missing,
        cannot be opened or is refused, or whose size differs from its record; each names file and record."""
        index_of = {img['id']: i for i, img in enumerate(self.coco.dataset['images'])}

        def problem(image_id: int) -> Optional[str]:
            info = self.coco.imgs[image_id]
            where = f'{self.annotation_file}: images[{index_of[image_id]}] (id {image_id})'
            path = self.image_dir / info['file_name']
            try:
                width, height = images.image_header(path).size
            except images.UnreadableImageError as e:
                return f'{where}: {e}'
            if (height, width) != (info['height'], info['width']):
                return f"{where}: image {path} is {width}x{height} but the record says {info['width']}x{info['height']}"
            return None
        return [p for p in _threaded(problem, self.ids) if p]

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.image_dir / info['file_name']
        image = read_image(path)
        if (image.height, image.width) != (info['height'], info['width']):
            raise DataError(f"image {path} is {image.width}x{image.height} but {self.annotation_file} says "
                            f"{info['width']}x{info['height']} (image id {image_id})")
        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get('iscrowd', 0) and a['bbox'][2] >= 1
                and a['bbox'][3] >= 1]
        H, W = image.height, image.width
        boxes = torch.tensor([a['bbox'] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, H, W), np.uint8)
        target = dict(
            boxes=tv_tensors.BoundingBoxes(boxes, format='XYXY', canvas_size=(H, W)),
            labels=torch.tensor([self.label_of[a['category_id']] for a in anns], dtype=torch.int64),
            masks=tv_tensors.Mask(torch.from_numpy(masks)),
            image_id=image_id,
        )
        image = tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target


def compare_categories(train: CocoInstances, val: CocoInstances):
    """Refuse validation categories the training split lacks. Labels are matched by category name (a
    validation split may hold a subset of the classes, under other ids); a name the model never learnt
    could not be scored."""
    known = {name for _, name in train.categories}
    unknown = [f'{i} {name!r}' for i, name in val.categories if name not in known]
    if unknown:
        raise DataError(f'{val.annotation_file} has categor{"ies" if len(unknown) > 1 else "y"} that '
                        f'{train.annotation_file} lacks (id name): {", ".join(unknown)}. Categories are matched by '
                        'name; the validation split may hold a subset of the training categories, not others')


def detection_transform(train: bool) -> v2.Compose:
    """Random flip for training; Mask R-CNN itself resizes (keeping the aspect) and normalises."""
    steps = [v2.RandomHorizontalFlip(0.5)] if train else []
    return v2.Compose(steps + [v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()])


def collate_lists(batch):
    """Images of different sizes stay a list, as torchvision's detection models expect."""
    return tuple(zip(*batch))


# ---------------------------------------------------------------- ADE20K

class AdeSegmentation(Dataset):
    """ADE20K-format data: `images/<split>/*.jpg` with `annotations/<split>/*.png` label maps.

    With `reduce_zero_label` (ADE20K's convention) label 0, "other", becomes IGNORE_INDEX and
    labels 1..150 become classes 0..149.
    """

    def __init__(self, root, split: str = 'training', num_classes: int = 150, reduce_zero_label: bool = True,
                 transform: Optional[Callable] = None, image_suffixes: Sequence[str] = ('.jpg', '.jpeg', '.png')):
        root = Path(root)
        self.image_dir, self.label_dir = root / 'images' / split, root / 'annotations' / split
        for d in (self.image_dir, self.label_dir):
            if not d.is_dir():
                raise DataError(f'{d} is not a directory (expected the ADE20K layout images/{split}, '
                                f'annotations/{split})')
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in image_suffixes)
        if not self.images:
            raise DataError(f'no images in {self.image_dir}')
        for p in self.images:
            if not (self.label_dir / f'{p.stem}.png').is_file():
                raise DataError(f'image {p} has no label map {self.label_dir / (p.stem + ".png")}')
        if num_classes > IGNORE_INDEX:
            raise DataError(f'num_classes {num_classes}: class indices from {IGNORE_INDEX} on would be read as the '
                            f'ignored label {IGNORE_INDEX}')
        self.num_classes = num_classes
        self.reduce_zero_label = reduce_zero_label
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def problems(self) -> List[str]:
        """What is wrong with the images (from their headers) and label maps (decoded: they are small): files
        that cannot be opened or are refused, label maps of another size than their image, not of class
        indices, or with classes out of range; each names its file."""
        def problem(image_path: Path) -> Optional[str]:
            try:
                self.label_values(image_path, images.image_header(image_path).size)
            except (images.UnreadableImageError, DataError) as e:
                return str(e)
            return None
        return [p for p in _threaded(problem, self.images) if p]

    def label_values(self, image_path: Path, size: Tuple[int, int]) -> np.ndarray:
        """The class indices of an image's label map as stored, (H, W) int64, checked: a one-channel mode of
        indices (never rescaled), the image's size, classes in range; a DataError naming the file if not."""
        path = self.label_dir / f'{image_path.stem}.png'
        label = read_image(path, mode=None)
        if label.mode not in LABEL_MODES:
            raise DataError(f'label map {path} has mode {label.mode}; expected one channel of class indices '
                            f'({", ".join(LABEL_MODES)})')
        if label.size != size:
            raise DataError(f'label map {path} is {label.size[0]}x{label.size[1]}, its image {size[0]}x{size[1]}')
        values = np.asarray(label).astype(np.int64)
        if values.min() < 0:
            raise DataError(f'label map {path} holds a negative class index ({values.min()})')
        bad = values >= self.num_classes + int(self.reduce_zero_label)  # with reduce_zero_label, 0 is "other"
        if not self.reduce_zero_label:
            bad &= values != IGNORE_INDEX
        if bad.any():
            raise DataError(f'label map {path} holds class {int(values[bad].max())}, beyond the {self.num_classes} '
                            f'classes (reduce_zero_label={self.reduce_zero_label})')
        return values

    def load_label(self, image_path: Path, size: Tuple[int, int]) -> torch.Tensor:
        """The label map of an image, checked (`label_values`) and reduced: (H, W) int64."""
        label = torch.from_numpy(self.label_values(image_path, size))
        if self.reduce_zero_label:
            label = torch.where(label == 0, IGNORE_INDEX, label - 1)
        return label

    def __getitem__(self, index: int):
        path = self.images[index]
        image = read_image(path)
        label = self.load_label(path, image.size)
        image = tv_tensors.Image(torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1))
        label = tv_tensors.Mask(label)
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label


def segmentation_train_transform(crop_size: int = 512, scale: int = 512, ratio_range=(0.5, 2.0),
                                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)) -> v2.Compose:
    """mmseg's ADE20K recipe: random rescale (shorter side `scale` x ratio), crop, flip, colour jitter."""
    sizes = sorted({int(scale * r) for r in np.linspace(ratio_range[0], ratio_range[1], 13)})
    return v2.Compose([
        v2.RandomShortestSize(sizes, max_size=4 * max(sizes)),
        v2.RandomCrop(crop_size, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX}),
        v2.RandomHorizontalFlip(0.5),
        v2.ColorJitter(brightness=0.125, contrast=0.5, saturation=0.5, hue=0.05),
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64}, scale=True),
        v2.Normalize(mean, std),
    ])


class SegmentationEvalTransform:
    """Resize the image (shorter side `scale`, keeping the aspect); the label stays at full size."""

    def __init__(self, scale: int = 512, max_size: int = 2048,
                 mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
        self.to_input = v2.Compose([
            v2.Resize(scale, max_size=max_size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ])

    def __call__(self, image, label):
        return self.to_input(image), label.as_subclass(torch.Tensor)
