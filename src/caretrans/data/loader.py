"""Transforms (timm's) and loaders whose batches are sharded across ranks block by block."""
import math
import random
import signal
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate, get_worker_info

__all__ = ['INTERPOLATIONS', 'default_img_size', 'check_auto_augment', 'check_interpolation', 'build_transform', 'SeededItems', 'BlockShardSampler', 'collate_readable',
           'create_train_loader', 'set_position', 'create_eval_loader']


# The resampling filters an input may be resized with, by their timm names (the evaluation transform's).
INTERPOLATIONS = ('bicubic', 'bilinear', 'nearest', 'lanczos', 'box', 'hamming')


def default_img_size(native_size: Optional[int]) -> int:
    """ImageNet's 224, or for low-resolution data (a native size, e.g. an image folder's median
    shorter side, below 224) that size rounded up to a multiple of 32 and at least 64, so that the
    32x downsampling network keeps 2x2 positions in its last stage."""
    if native_size is None:
        return 224
    return min(224, max(64, 32 * math.ceil(native_size / 32)))


def check_auto_augment(aa: Optional[str]):
    """Raise a ValueError unless timm builds an augmentation from `aa` (None or 'none': off): the
    string is parsed by timm's own transform factory, as training will, before any work."""
    if aa in (None, 'none'):
        return
    try:
        create_transform(32, is_training=True, auto_augment=aa)
    except (AssertionError, ValueError, KeyError, IndexError, TypeError) as e:
        reason = str(e).strip("'") or type(e).__name__
        raise ValueError(f'recipe field aa: {aa!r} is not an auto-augment timm knows ({reason}); e.g. '
                         "'rand-m9-mstd0.5-inc1' (RandAugment), 'augmix-m5-w4-d2', 'original', 'v0', or 'none'"
                         ) from None


def check_interpolation(interpolation: str):
    """Raise a ValueError for a resampling filter timm does not name."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f'interpolation {interpolation!r} is not one of {", ".join(INTERPOLATIONS)}')


def build_transform(training: bool, img_size: int, mean: Sequence[float], std: Sequence[float],
                    scale=(0.08, 1.0), hflip: float = 0.5, aa: Optional[str] = None, color_jitter: float = 0.0,
                    reprob: float = 0.0, crop_pct: float = 0.875, interpolation: str = 'bicubic'):
    """timm's training transform (random-resized crop, flip, RandAugment, jitter, erasing) or its
    evaluation transform (resize to img_size / crop_pct, centre crop)."""
    check_interpolation(interpolation)
    if training:
        check_auto_augment(aa)
        # color_jitter 0 -> None: timm would add a ColorJitter that changes nothing (~35 us an image).
        transform = create_transform(
            img_size, is_training=True, scale=tuple(scale), hflip=hflip, auto_augment=aa,
            color_jitter=color_jitter or None, interpolation=interpolation, mean=tuple(mean), std=tuple(std),
            re_prob=reprob, re_mode='pixel', re_count=1)
        for t in getattr(transform, 'transforms', ()):
            for op in getattr(t, 'ops', ()):
                if op.name.startswith('Posterize'):
                    op.aug_fn = _posterize
        return transform
    return create_transform(img_size, is_training=False, interpolation=interpolation, crop_pct=crop_pct,
                            mean=tuple(mean), std=tuple(std))


def _posterize(image: Image.Image, bits: int, **_) -> Image.Image:
    """RandAugment's posterize as the paper ran it: at magnitude 10 'inc1' keeps 0 bits, a black
    image, which Pillow >= 11 refuses (ValueError) instead of computing."""
    if bits >= 8:
        return image
    if bits <= 0:
        return Image.new(image.mode, image.size)
    return ImageOps.posterize(image, bits)


class SeededItems(Dataset):
    """Draws each item's augmentation from Python's, NumPy's and torch's RNGs seeded by (seed, epoch,
    index), so that what a run sees depends neither on the number of loader workers nor on where an
    interrupted run resumed; in the main process the caller's random streams are restored."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        if get_worker_info() is not None:  # a loader worker's RNGs serve nothing else
            _seed_rngs(seed)
            return self.dataset[index]
        saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        try:
            _seed_rngs(seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.default_generator.set_state(saved[2])


def _seed_rngs(seed: int):
    # The CPU generator alone: torch.manual_seed also seeds every accelerator, at 100x the cost.
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)


class BlockShardSampler(Sampler[int]):
    """Shuffled training indices, dealt to ranks one batch-sized block at a time.

    Rank r of W takes blocks r, r + W, r + 2W, ... of the epoch's permutation, so W ranks with
    batch b compute exactly what one process computes with batch b and W accumulation steps
    (BatchNorm included). The tail is dropped so that every rank runs the same number of
    `steps` of `accum` batches. `set_epoch(epoch, start_batch)` reshuffles deterministically and
    can start mid-epoch, for an exact resume.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, accum: int = 1,
                 seed: int = 0):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.accum = rank, world_size, accum
        self.seed = seed
        self.steps = num_samples // (batch_size * world_size * accum)
        if self.steps == 0:
            raise ValueError(f'{num_samples} training samples do not fill one step of {batch_size} x {accum} '
                             f'accumulation x {world_size} process(es); use a smaller batch')
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0):
        self.epoch, self.start_batch = epoch, start_batch

    @property
    def batches_per_epoch(self) -> int:
        return self.steps * self.accum

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        b, w = self.batch_size, self.world_size
        for i in range(self.start_batch, self.batches_per_epoch):
            block = (i * w + self.rank) * b
            yield from order[block:block + b].tolist()


def _ignore_stop_signals(worker_id: int):
    """Loader workers leave SIGINT/SIGTERM to the trainer, which stops cleanly (a Ctrl-C or a job
    scheduler signals the whole process group); they still exit when the trainer does."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def collate_readable(items):
    """default_collate of the items that were read: an unreadable file's item is None, and leaves its
    batch instead of another image taking its place. None when no item of the batch was read."""
    read = [item for item in items if item is not None]
    return default_collate(read) if read else None


def create_train_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, accum: int = 1,
                        seed: int = 0, workers: int = 0, collate_fn=collate_readable,
                        pin_memory: bool = False) -> DataLoader:
    """Training batches through a BlockShardSampler, each item augmented as `SeededItems` draws it;
    `set_position` moves it to an epoch and batch."""
    sampler = BlockShardSampler(len(dataset), batch_size, rank, world_size, accum, seed)
    # Its own generator: the loader's worker seeds must not draw from the trainer's global RNG.
    return DataLoader(SeededItems(dataset, seed), batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=pin_memory, drop_last=False, generator=torch.Generator(),
                      worker_init_fn=_ignore_stop_signals, persistent_workers=False)


def set_position(loader: DataLoader, epoch: int, batch: int = 0):
    """Point a `create_train_loader` loader at epoch `epoch` (its shuffle and augmentation draws), from its
    batch `batch` on: where a resumed run continues."""
    loader.sampler.set_epoch(epoch, batch)
    loader.dataset.epoch = epoch


def create_eval_loader(dataset: Dataset, batch_size: int, rank: int = 0, world_size: int = 1, workers: int = 0,
                       pin_memory: bool = False, collate_fn=collate_readable) -> DataLoader:
    """Every sample exactly once across ranks (rank r takes r, r + W, ...); no padding, and (with the default
    `collate_readable`) unreadable images dropped, so counts are exact."""
    indices = range(rank, len(dataset), world_size)
    return DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=collate_fn, pin_memory=pin_memory,
                      worker_init_fn=_ignore_stop_signals)
