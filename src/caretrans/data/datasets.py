"""Map-style datasets whose items are (PIL image or transformed image, int label)."""
import gzip
import logging
import os
from collections import Counter
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .images import ImageHeader, UnreadableImageError, image_header, mode_channels, read_image

_logger = logging.getLogger(__name__)

# Debian's dataset-fashion-mnist package; CARETRANS_FASHION_MNIST points elsewhere.
FASHION_MNIST_DIR = Path(os.environ.get('CARETRANS_FASHION_MNIST', '/usr/share/datasets/fashion-mnist'))
FASHION_MNIST_CLASSES = (
    'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')
_FASHION_MNIST_FILES = {'train': 'train', 'val': 't10k'}
SPLITS = ('train', 'val')
# The data sets named rather than found in a folder; each has its own classes and channel count.
NAMED_DATASETS = ('fashion-mnist', 'synthetic')
# In a run folder: the classes in label order, which `caretrans validate` and a resumed run label by.
CLASS_MAP_FILE = 'class_map.txt'


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzipped or not."""
    opener = gzip.open if path.suffix == '.gz' else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f'{path} is not an IDX file of unsigned bytes')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f'{path} is truncated: {array.size} bytes for shape {shape}')
    return array.reshape(shape)


class FashionMNIST(Dataset):
    """Fashion-MNIST (28x28 grayscale, 10 classes); 'val' is the 10,000 test images."""

    classes = FASHION_MNIST_CLASSES
    in_chans, native_size = 1, 28
    # Statistics of the training images, for normalisation.
    mean, std = (0.2860,), (0.3530,)

    def __init__(self, split: str = 'train', transform: Optional[Callable] = None, root: Optional[Path] = None):
        root = Path(root) if root is not None else FASHION_MNIST_DIR
        prefix = _FASHION_MNIST_FILES[split]
        images, labels = root / f'{prefix}-images-idx3-ubyte.gz', root / f'{prefix}-labels-idx1-ubyte.gz'
        if not (images.is_file() and labels.is_file()):
            raise FileNotFoundError(
                f'Fashion-MNIST not found in {root} (no {images.name} / {labels.name}): install Debian\'s '
                f'package (`apt-get install dataset-fashion-mnist`, as `make demo` does) or point '
                f'CARETRANS_FASHION_MNIST at a folder holding the four IDX files')
        self.images, self.targets = _read_idx(images), _read_idx(labels).astype(np.int64)
        if len(self.images) != len(self.targets):
            raise ValueError(f'Fashion-MNIST {split}: {len(self.images)} images but {len(self.targets)} labels')
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


class ImageFolderSafe(Dataset):
    """An ImageNet-style split folder (one sub-folder per class) that leaves out unreadable images.

    Labels follow `classes` (default: this folder's own class folders, sorted), matched by name,
    so a split with fewer class folders keeps the indices of the full list. Each class folder is
    walked once (`image_files`: links to folders are not followed out of it, nor round a loop).
    Every file's header is opened when the folder is listed: files that cannot be opened or are
    refused (`images.image_header`: too many pixels, too long and thin, a mode not read as RGB or L)
    are left out. A file that opens but fails to decode gives the item None, which `collate_readable`
    drops from its batch. Either way the path is logged and counted in `num_bad_images` (across
    DataLoader workers too); no other image or label takes its place.

    The headers also give the folder's `in_chans` (1 when every image has a one-channel mode such as
    L or I;16, else 3), unless `in_chans` is given (images are then read as L or RGB to match), and
    its `native_size`: the median shorter side of its images, from which `default_img_size` derives
    the default input size.
    """

    def __init__(self, root: Path, transform: Optional[Callable] = None, classes: Optional[Sequence[str]] = None,
                 in_chans: Optional[int] = None):
        from torchvision.datasets.folder import find_classes

        if in_chans not in (None, 1, 3):
            raise ValueError(f'image folders are read as 1 (L) or 3 (RGB) channels, not in_chans={in_chans}')
        self.root = Path(root)
        present, _ = find_classes(str(self.root))
        self.classes = list(classes) if classes is not None else present
        label_of = {name: i for i, name in enumerate(self.classes)}
        unknown = [name for name in present if name not in label_of]
        if unknown:
            raise ValueError(f'{self.root} has class folder(s) that are not among the {len(self.classes)} training '
                             f'classes: {", ".join(unknown)}')
        files = [(path, label_of[name]) for name in present for path in image_files(self.root / name)]
        if not files:
            raise ValueError(f'{self.root} holds no images in its class folders')
        self.samples, self.unreadable, headers = _readable_files(files)
        if not self.samples:
            raise ValueError(f'{self.root}: none of its {len(files)} image files can be read '
                             f'(e.g. {self.unreadable[0]}; each is logged above)')
        # Images per class name, of the readable ones.
        self.class_counts = dict(Counter(self.classes[label] for _, label in self.samples))
        self.native_size = int(np.median([min(header.size) for header in headers]))
        self.in_chans = in_chans or (1 if all(mode_channels(h.mode) == 1 for h in headers) else 3)
        # ImageNet's statistics; for one channel their mean over the three, as for grayscale ImageNet.
        self.mean, self.std = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) if self.in_chans == 3 else \
            ((0.449,), (0.226,))
        self.transform = transform
        # A flag per file in shared memory: DataLoader workers mark, the trainer counts, each file once.
        self._bad = torch.zeros(len(self.samples), dtype=torch.bool).share_memory_()

    @property
    def num_bad_images(self) -> int:
        return len(self.unreadable) + int(self._bad.sum())

    @property
    def bad_images(self) -> List[str]:
        return self.unreadable + [self.samples[i][0] for i in self._bad.nonzero().flatten().tolist()]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """(image, label), or None if the file fails to decode."""
        if self._bad[index]:
            return None
        path, label = self.samples[index]
        try:
            image = read_image(path, 'L' if self.in_chans == 1 else 'RGB')
        except UnreadableImageError as e:
            self._bad[index] = True
            _logger.warning('skipping an unreadable image: %s', e)
            return None
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def image_files(class_dir: Path) -> List[str]:
    """The image files under a class folder (torchvision's extensions, in make_dataset's order), each once.

    Links to files are kept (data sets are often assembled from links), but links to folders are
    followed only within the class folder and only to folders not yet walked: a link out of it (e.g.
    `ln -s .. loop`, which would list the other classes' images under this one) or round a loop is
    skipped, and logged."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    top = os.path.realpath(class_dir)
    walked, seen, files = set(), set(), []
    pending = [str(class_dir)]
    while pending:
        folder = pending.pop()
        real = os.path.realpath(folder)
        inside = real == top or real.startswith(top.rstrip(os.sep) + os.sep)
        if not inside or real in walked:
            _logger.warning('not listing %s: it %s', folder, 'is a link out of its class folder' if not inside
                            else f'leads to {real}, listed already')
            continue
        walked.add(real)
        with os.scandir(folder) as entries:
            entries = sorted(entries, key=lambda entry: entry.name)
        for entry in entries:
            if entry.is_dir() or not has_file_allowed_extension(entry.name, IMG_EXTENSIONS):
                continue
            # Files are told apart by their real path: a folder's own by the folder's, a link by its target.
            key = os.path.realpath(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
            if key not in seen:
                seen.add(key)
                files.append(entry.path)
        # Depth first, in name order, folders before links to folders (so that a folder is listed by its
        # own path and a link to it is the one skipped).
        subfolders = sorted((entry for entry in entries if entry.is_dir()), key=lambda e: (e.is_symlink(), e.name))
        pending.extend(entry.path for entry in reversed(subfolders))
    return sorted(files, key=lambda path: os.path.split(path))  # torchvision's order: by folder, then name


def find_images(paths: Iterable) -> List[Tuple[Path, Path]]:
    """(file, its path relative to the folder named, or its name) for every file named and every image under
    the folders named, walked as `image_files` walks a class folder. A path that does not exist is listed as
    named, for the caller to report as unreadable."""
    found = []
    for given in map(Path, paths):
        if given.is_dir():
            found.extend((Path(f), Path(f).relative_to(given)) for f in image_files(given))
        else:
            found.append((given, Path(given.name)))
    return found


def _readable_files(files: List[Tuple[str, int]]) -> Tuple[List[Tuple[str, int]], List[str], List[ImageHeader]]:
    """Split (path, label) pairs by whether the file's header opens and is accepted (about 1/100 of the
    cost of decoding the file), logging the others; the headers of the readable ones."""
    readable, unreadable, headers = [], [], []
    for path, label in files:
        try:
            header = image_header(path)
        except UnreadableImageError as e:
            _logger.warning('leaving out an unreadable image: %s', e)
            unreadable.append(path)
        else:
            readable.append((path, label))
            headers.append(header)
    return readable, unreadable, headers


class SyntheticImages(Dataset):
    """Deterministic, learnable random images: a fixed colour pattern per class plus noise."""

    in_chans = 3
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    def __init__(self, split: str = 'train', transform: Optional[Callable] = None, num_classes: int = 10,
                 image_size: int = 32, length: Optional[int] = None, seed: int = 0):
        self.classes = tuple(f'class_{i}' for i in range(num_classes))
        self.length = length if length is not None else (128 if split == 'train' else 64)
        self.native_size = image_size
        self.transform = transform
        self.seed = seed + (0 if split == 'train' else 1_000_003)
        generator = torch.Generator().manual_seed(seed)
        # Low-frequency class patterns, upsampled from 4x4.
        coarse = torch.rand(num_classes, 3, 4, 4, generator=generator)
        self.patterns = torch.nn.functional.interpolate(coarse, size=image_size, mode='bilinear', align_corners=False)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not 0 <= index < self.length:
            raise IndexError(f'index {index} out of range for {self.length} synthetic images')
        generator = torch.Generator().manual_seed(self.seed + index)
        label = int(torch.randint(len(self.classes), (1,), generator=generator))
        noise = 0.15 * torch.randn(3, self.native_size, self.native_size, generator=generator)
        pixels = ((self.patterns[label] + noise).clamp(0, 1) * 255).round().to(torch.uint8)
        image = Image.fromarray(pixels.permute(1, 2, 0).numpy())
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def create_dataset(data: str, split: str, transform: Optional[Callable] = None,
                   classes: Optional[Sequence[str]] = None, in_chans: Optional[int] = None, **kwargs) -> Dataset:
    """A dataset by name: 'fashion-mnist', 'synthetic' (kwargs: num_classes, image_size, length, seed)
    or the path of a folder with train/ and val/ sub-folders of class folders.

    Labels follow `classes` (e.g. those a run recorded), else `folder_classes`: every split of a
    folder is labelled by the same list. A split holding a class outside it is an error. A folder's
    images are read with `in_chans` channels (1: L, 3: RGB) if given, else with their own count; the
    named data sets have theirs. The training split must hold images of every class, and of two or more."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data in NAMED_DATASETS:
        dataset = (FashionMNIST if data == 'fashion-mnist' else SyntheticImages)(split, transform, **kwargs)
        if classes is not None and list(classes) != list(dataset.classes):
            raise ValueError(f'{data} has its own {len(dataset.classes)} classes, not the {len(classes)} given '
                             f'(from {list(classes)[:3]}...; a class_map.txt of a run on other data?)')
        if in_chans is not None and in_chans != dataset.in_chans:
            raise ValueError(f'in_chans: {in_chans} does not fit {data}, whose images have {dataset.in_chans} '
                             'channel(s)')
        if split == 'train':
            _check_trainable(data, dataset.classes, dict.fromkeys(dataset.classes, 1))
        return dataset
    root = Path(data)
    if not root.is_dir():
        raise ValueError(f"--data {data!r} is neither 'fashion-mnist', 'synthetic' nor an existing folder")
    if not (root / split).is_dir():
        raise ValueError(f'{root} has no {split}/ sub-folder (expected {root}/train and {root}/val, '
                         'each with one folder per class)')
    dataset = ImageFolderSafe(root / split, transform, classes if classes is not None else folder_classes(root, split),
                              in_chans)
    if split == 'train':
        _check_trainable(str(root / split), dataset.classes, dataset.class_counts)
    return dataset


def _check_trainable(source: str, classes: Sequence[str], counts: Dict[str, int]):
    """Refuse training data that leaves a class without images, or that has one class only: a classifier
    of one class scores 100 % at a loss of 0 from the first step, and learns nothing."""
    with_images = [name for name in classes if counts.get(name, 0)]
    if len(with_images) < 2:
        raise ValueError(f'{source} holds images of {len(with_images)} class(es) '
                         f'({", ".join(with_images) or "none readable"}): a classifier needs two or more classes, '
                         'one folder of images each')
    empty = [name for name in classes if not counts.get(name, 0)]
    if empty:
        raise ValueError(f'{source}: class(es) {", ".join(empty[:10])}{" ..." if len(empty) > 10 else ""} have no '
                         'readable training images (an empty or missing class folder); add images or remove the '
                         'class')


def folder_classes(root: Path, split: str) -> List[str]:
    """The classes of a data folder in label order: train/'s class folders sorted, as torchvision and timm
    number them; the split's own folders when there is no train/ (e.g. an ImageNet val/ on its own)."""
    from torchvision.datasets.folder import find_classes

    source = root / 'train' if (root / 'train').is_dir() else root / split
    return find_classes(str(source))[0]


def save_class_map(classes: Sequence[str], path) -> Path:
    """Write the class names in label order, one a line (timm's class_map.txt format)."""
    bad = [name for name in classes if '\n' in name]
    if bad:
        raise ValueError(f'class names {bad!r} cannot be written one a line')
    path = Path(path)
    path.write_text(''.join(f'{name}\n' for name in classes), encoding='utf-8')
    return path


def read_class_map(path) -> List[str]:
    """The class names of a class_map.txt in label order, checked: none empty, none twice; a file that
    cannot be read or is not text is a ValueError naming it (FileNotFoundError if it does not exist)."""
    try:
        lines = Path(path).read_text(encoding='utf-8').split('\n')
    except UnicodeDecodeError:
        raise ValueError(f'class map {path} is not a text file of class names, one a line') from None
    except FileNotFoundError:
        raise FileNotFoundError(f'class map {path} does not exist') from None
    except OSError as e:
        raise ValueError(f'class map {path} cannot be read: {e.strerror or e}') from None
    classes = [line.rstrip('\r') for line in (lines[:-1] if lines[-1] == '' else lines)]
    if not classes or '' in classes:
        raise ValueError(f'{path} must list one class name a line, without blank lines')
    twice = sorted(name for name, n in Counter(classes).items() if n > 1)
    if twice:
        raise ValueError(f'{path} lists class(es) more than once: {", ".join(twice)}')
    return classes


def recorded_classes(run_dir) -> Optional[List[str]]:
    """The classes a run recorded in its folder (its CLASS_MAP_FILE), or None if it holds none."""
    path = Path(run_dir) / CLASS_MAP_FILE
    return read_class_map(path) if path.is_file() else None


def dataset_info(dataset: Dataset) -> Dict[str, object]:
    """What a model and its transforms need to know about a dataset."""
    return dict(num_classes=len(dataset.classes), classes=list(dataset.classes), in_chans=dataset.in_chans,
                mean=dataset.mean, std=dataset.std, native_size=dataset.native_size)
