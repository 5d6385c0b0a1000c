"""Datasets: Fashion-MNIST from Debian's files, ImageFolder with corrupt images, synthetic data."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from caretrans.data import FASHION_MNIST_CLASSES, create_dataset, dataset_info
from caretrans.data.datasets import FASHION_MNIST_DIR


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason='dataset-fashion-mnist is not installed')
def test_fashion_mnist_splits():
    train, val = create_dataset('fashion-mnist', 'train'), create_dataset('fashion-mnist', 'val')
    assert (len(train), len(val)) == (60_000, 10_000)
    image, label = val[0]
    assert image.mode == 'L' and image.size == (28, 28) and label == 9  # the first test image is an ankle boot
    assert np.bincount(val.targets).tolist() == [1000] * 10
    info = dataset_info(train)
    assert info['num_classes'] == 10 and info['in_chans'] == 1 and len(FASHION_MNIST_CLASSES) == 10
    # The normalisation statistics are those of the training images.
    sample = train.images[::60].astype(np.float64) / 255
    assert sample.mean() == pytest.approx(info['mean'][0], abs=0.01)
    assert sample.std() == pytest.approx(info['std'][0], abs=0.01)


def test_synthetic_is_deterministic_and_transformed():
    a = create_dataset('synthetic', 'train', num_classes=4, image_size=32, length=8)
    b = create_dataset('synthetic', 'train', num_classes=4, image_size=32, length=8)
    val = create_dataset('synthetic', 'val', num_classes=4, image_size=32)
    assert len(a) == 8 and len(val) == 64
    assert np.array_equal(np.asarray(a[5][0]), np.asarray(b[5][0])) and a[5][1] == b[5][1]
    assert not np.array_equal(np.asarray(a[0][0]), np.asarray(val[0][0]))
    t = create_dataset('synthetic', 'train', transform=lambda im: torch.tensor(np.asarray(im)), length=2)
    assert t[0][0].shape == (32, 32, 3)


def _write_folder(root, corrupt):
    for split in ('train', 'val'):
        for cls in ('cat', 'dog'):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new('RGB', (40, 40), (i * 40, 0, 0)).save(d / f'{i}.png')
    for name in corrupt:
        (root / 'train' / 'dog' / name).write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)


def test_image_folder_skips_and_counts_corrupt_images(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=['bad1.png', 'bad2.png'])
    ds = create_dataset(str(tmp_path), 'train')
    assert ds.classes == ['cat', 'dog'] and len(ds) == 8
    with caplog.at_level(logging.WARNING):
        items = [ds[i] for i in range(len(ds))]
    assert all(im.size == (40, 40) and im.mode == 'RGB' for im, _ in items)
    assert ds.num_bad_images == 2
    assert sum('bad1.png' in r.getMessage() for r in caplog.records) == 1
    assert sorted(p.rsplit('/', 1)[-1] for p in ds.bad_images) == ['bad1.png', 'bad2.png']


def test_image_folder_counts_bad_images_across_workers(tmp_path):
    _write_folder(tmp_path, corrupt=['bad1.png'])
    ds = create_dataset(str(tmp_path), 'train', transform=lambda im: torch.zeros(1))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    assert sum(len(y) for _, y in loader) == len(ds)
    assert ds.num_bad_images == 1


@pytest.mark.parametrize('data,split,match', [
    ('no/such/folder', 'train', 'neither'),
    ('synthetic', 'test', 'split must be'),
])
def test_bad_arguments(data, split, match):
    with pytest.raises(ValueError, match=match):
        create_dataset(data, split)


def test_folder_without_split(tmp_path):
    (tmp_path / 'train' / 'a').mkdir(parents=True)
    with pytest.raises(ValueError, match='no val/ sub-folder'):
        create_dataset(str(tmp_path), 'val')


def test_block_shard_sampler_deals_ranks_the_micro_batches_of_one_process():
    from caretrans.data.loader import BlockShardSampler
    single = BlockShardSampler(50, batch_size=4, accum=2, seed=7)
    ranks = [BlockShardSampler(50, batch_size=4, rank=r, world_size=2, seed=7) for r in (0, 1)]
    for s in [single] + ranks:
        s.set_epoch(3)
    blocks = list(single)
    assert single.steps == 6 and len(blocks) == 48 and len(set(blocks)) == 48  # the tail of 2 is dropped
    micro = [blocks[i:i + 4] for i in range(0, 48, 4)]
    per_rank = [list(s) for s in ranks]
    for step in range(6):
        for r in (0, 1):
            assert per_rank[r][4 * step:4 * step + 4] == micro[2 * step + r]
    # Another epoch reshuffles; a resumed epoch starts at its batch.
    single.set_epoch(4)
    assert list(single) != blocks
    single.set_epoch(3, start_batch=5)
    assert list(single) == blocks[20:] and len(single) == 28


def test_loader_workers_leave_stop_signals_to_the_trainer():
    import os
    import signal
    from caretrans.data.loader import create_train_loader
    ds = create_dataset('synthetic', 'train', transform=lambda im: torch.zeros(1), length=32)
    it = iter(create_train_loader(ds, batch_size=4, workers=1))
    next(it)
    for sig in (signal.SIGINT, signal.SIGTERM):  # what Ctrl-C or a scheduler sends the process group
        os.kill(it._workers[0].pid, sig)
    assert sum(len(y) for _, y in it) == 28


def test_augmentation_depends_on_epoch_and_index_only():
    import random
    from caretrans.data.loader import build_transform, create_train_loader
    # Random crops, flips and erasing, drawn from Python's, NumPy's and torch's RNGs.
    transform = build_transform(True, 32, mean=(0.5,) * 3, std=(0.5,) * 3, scale=(0.3, 1.0), reprob=0.5,
                                aa='rand-m9-mstd0.5')
    ds = create_dataset('synthetic', 'train', transform, num_classes=4, image_size=48, length=32)

    def epoch_images(workers, start_batch=0, epoch=1):
        loader = create_train_loader(ds, batch_size=4, seed=7, workers=workers)
        loader.sampler.set_epoch(epoch, start_batch)
        loader.dataset.epoch = epoch
        return torch.cat([x for x, _ in loader])

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    main_process = epoch_images(workers=0)
    # The caller's random streams are untouched (the trainer's dropout, mixup and RNG checkpoint).
    assert (random.random(), np.random.rand()) == (random.Random(1).random(), np.random.RandomState(1).rand())
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(1)))
    # Two workers draw the same; so does a run resumed at batch 5 of the epoch; another epoch does not.
    assert torch.equal(epoch_images(workers=2), main_process)
    assert torch.equal(epoch_images(workers=1, start_batch=5), main_process[20:])
    assert not torch.equal(epoch_images(workers=0, epoch=2), main_process)


def test_no_colour_jitter_step_when_it_is_off():
    from caretrans.data.loader import build_transform

    def steps(jitter):
        return [type(t).__name__ for t in build_transform(True, 32, (0.5,), (0.5,), color_jitter=jitter).transforms]
    assert 'ColorJitter' in steps(0.4) and 'ColorJitter' not in steps(0.0)
