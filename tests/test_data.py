"""Datasets: Fashion-MNIST from Debian's files, image folders (classes, unreadable files, bombs), synthetic data."""
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from caretrans.data import FASHION_MNIST_CLASSES, create_dataset, dataset_info
from caretrans.data.datasets import FASHION_MNIST_DIR
from image_files import png_claiming, truncated_png


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


def _write_folder(root, corrupt=(), classes=('cat', 'dog'), val_classes=None, size=40):
    for split, names in (('train', classes), ('val', val_classes or classes)):
        for cls in names:
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(3):
                Image.new('RGB', (size, size), (i * 40, 0, 0)).save(d / f'{i}.png')
    for name in corrupt:
        (root / 'train' / 'dog' / name).write_bytes(b'\x89PNG\r\n\x1a\n' + b'garbage' * 10)


def _labels_through_eval_loader(ds, workers=0):
    from caretrans.data.loader import create_eval_loader
    ds.transform = lambda im: torch.zeros(1)
    return torch.cat([y for _, y in create_eval_loader(ds, batch_size=4, workers=workers)]).tolist()


def test_unreadable_images_are_left_out_not_replaced(tmp_path, caplog):
    _write_folder(tmp_path, corrupt=['bad1.png', 'bad2.png'])
    truncated_png(tmp_path / 'train' / 'dog' / 'cut.png')
    with caplog.at_level(logging.WARNING):
        ds = create_dataset(str(tmp_path), 'train')
    # Files whose header does not open are left out when the folder is listed.
    assert ds.classes == ['cat', 'dog'] and len(ds) == 7 and ds.num_bad_images == 2
    assert sum('bad1.png' in r.getMessage() for r in caplog.records) == 1
    # One that fails to decode leaves its batch: 6 images, each with its own label, none twice.
    with caplog.at_level(logging.WARNING):
        assert _labels_through_eval_loader(ds) == [0, 0, 0, 1, 1, 1]
        assert _labels_through_eval_loader(ds) == [0, 0, 0, 1, 1, 1]
    assert ds.num_bad_images == 3
    assert sorted(p.rsplit('/', 1)[-1] for p in ds.bad_images) == ['bad1.png', 'bad2.png', 'cut.png']
    assert sum('cut.png' in r.getMessage() for r in caplog.records) == 1  # logged once, not every epoch


def test_image_folder_counts_bad_images_across_workers(tmp_path):
    _write_folder(tmp_path)
    truncated_png(tmp_path / 'train' / 'dog' / 'cut.png')
    ds = create_dataset(str(tmp_path), 'train')
    assert _labels_through_eval_loader(ds, workers=2) == [0, 0, 0, 1, 1, 1]
    assert ds.num_bad_images == 1


def test_a_folder_of_unreadable_images_is_a_clear_error(tmp_path):
    _write_folder(tmp_path)
    for f in (tmp_path / 'val').rglob('*.png'):
        f.write_bytes(b'not an image')
    with pytest.raises(ValueError, match=r'val: none of its 6 image files can be read'):
        create_dataset(str(tmp_path), 'val')


def test_decompression_bombs_are_refused_from_the_header(tmp_path, caplog):
    from caretrans.data import MAX_IMAGE_PIXELS, UnreadableImageError, image_size, read_image
    assert MAX_IMAGE_PIXELS < 12000 * 12000
    _write_folder(tmp_path)
    bomb = png_claiming(tmp_path / 'train' / 'dog' / 'bomb.png', 12000, 12000)
    assert bomb.stat().st_size < 50_000  # 144 million pixels in a few KB
    with pytest.raises(UnreadableImageError, match=r'bomb\.png refused: .*144000000 pixels'):
        image_size(bomb)
    with pytest.raises(UnreadableImageError, match=r'bomb\.png refused'):
        read_image(bomb)
    with caplog.at_level(logging.WARNING):
        ds = create_dataset(str(tmp_path), 'train')
    assert len(ds) == 6 and ds.num_bad_images == 1 and ds.bad_images[0].endswith('bomb.png')
    assert any('bomb.png refused' in r.getMessage() for r in caplog.records)
    small = png_claiming(tmp_path / 'small.png', 64, 48)
    assert image_size(small) == (64, 48) and read_image(small).size == (64, 48)


def test_every_split_is_labelled_by_trains_classes(tmp_path):
    _write_folder(tmp_path, classes=('ant', 'bee', 'cat'), val_classes=('bee', 'cat'))
    train, val = create_dataset(str(tmp_path), 'train'), create_dataset(str(tmp_path), 'val')
    assert train.classes == val.classes == ['ant', 'bee', 'cat'] and dataset_info(val)['num_classes'] == 3
    assert _labels_through_eval_loader(val) == [1, 1, 1, 2, 2, 2]  # by name, not by position in val/
    # A split with a class outside the list is refused, naming it; so is the list a run recorded.
    (tmp_path / 'val' / 'dog').mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / 'val' / 'dog' / '0.png')
    with pytest.raises(ValueError, match=r'val has class folder\(s\) that are not among the 3 training classes: dog'):
        create_dataset(str(tmp_path), 'val')
    with pytest.raises(ValueError, match=r'train has class folder\(s\) .* 2 training classes: cat'):
        create_dataset(str(tmp_path), 'train', classes=['ant', 'bee'])
    # Without train/ (an ImageNet val/ on its own) the split's own folders are the classes.
    (tmp_path / 'train').rename(tmp_path / 'elsewhere')
    assert create_dataset(str(tmp_path), 'val').classes == ['bee', 'cat', 'dog']


def test_class_map_round_trip_and_checks(tmp_path):
    from caretrans.data import read_class_map, recorded_classes, save_class_map
    names = ['n01440764', 'two words', ' spaced ']
    save_class_map(names, tmp_path / 'class_map.txt')
    assert read_class_map(tmp_path / 'class_map.txt') == recorded_classes(tmp_path) == names
    assert recorded_classes(tmp_path / 'nothing') is None
    (tmp_path / 'twice.txt').write_text('a\nb\na\n')
    with pytest.raises(ValueError, match=r'twice\.txt lists class\(es\) more than once: a'):
        read_class_map(tmp_path / 'twice.txt')
    (tmp_path / 'blank.txt').write_text('a\n\nb\n')
    with pytest.raises(ValueError, match='without blank lines'):
        read_class_map(tmp_path / 'blank.txt')
    # Named datasets have fixed classes: another list is refused.
    assert create_dataset('synthetic', 'val', classes=[f'class_{i}' for i in range(10)]).classes[9] == 'class_9'
    with pytest.raises(ValueError, match='synthetic has its own 10 classes, not the 2 given'):
        create_dataset('synthetic', 'val', classes=['a', 'b'])


def test_a_class_map_that_is_not_a_text_file_is_named(tmp_path):
    from caretrans.data import read_class_map
    (tmp_path / 'blob').write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match=f'class map {tmp_path / "blob"} is not a text file of class names'):
        read_class_map(tmp_path / 'blob')
    with pytest.raises(ValueError, match=f'class map {tmp_path} cannot be read: Is a directory'):
        read_class_map(tmp_path)
    with pytest.raises(FileNotFoundError, match=f'class map {tmp_path / "gone"} does not exist'):
        read_class_map(tmp_path / 'gone')


def test_collate_readable_drops_unread_items():
    from caretrans.data.loader import collate_readable
    images, labels = collate_readable([(torch.ones(2), 3), None, (torch.zeros(2), 5)])
    assert images.tolist() == [[1, 1], [0, 0]] and labels.tolist() == [3, 5]
    assert collate_readable([None, None]) is None


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


def test_missing_fashion_mnist_is_an_error_not_a_download(tmp_path, monkeypatch):
    """No data set is fetched at run time: a folder without the IDX files says how to install them."""
    import caretrans.data.datasets as datasets
    monkeypatch.setattr(datasets, 'FASHION_MNIST_DIR', tmp_path / 'none')
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        datasets.FashionMNIST('val')


# ---------------------------------------------------------------- image modes, links, shapes, classes

_SIXTEEN_BIT = np.array([[0, 257, 1000, 32768, 65535]], np.uint16)


@pytest.mark.parametrize('name,make,expected', [
    # 16-bit grey (PNG and TIFF, both byte orders) and 32-bit integers within 0..65535: scaled from 0..65535.
    ('png16.png', lambda: Image.fromarray(_SIXTEEN_BIT), [0, 1, 4, 128, 255]),
    ('tiff16b.tif', lambda: Image.fromarray(_SIXTEEN_BIT.astype('>u2')), [0, 1, 4, 128, 255]),
    ('int32.tif', lambda: Image.fromarray(_SIXTEEN_BIT.astype(np.int32)), [0, 1, 4, 128, 255]),
    # Floats are 0..1, a small overshoot clipped (1 pixel of 101 here).
    ('float.tif', lambda: Image.fromarray(np.array([0, 0.5, 1, 0.25] + [0.1] * 95 + [1.02], np.float32).reshape(10, 10)),
     [0, 128, 255, 64] + [26] * 95 + [255]),
    ('bits.png', lambda: Image.fromarray(np.array([[0, 1, 1, 0]], bool)), [0, 255, 255, 0]),
    ('grey_alpha.png', lambda: Image.new('LA', (2, 1), (100, 0)), [100, 100]),
])
def test_every_mode_is_read_as_grey_by_its_range(tmp_path, name, make, expected):
    from caretrans.data import read_image
    image = make()
    image.save(tmp_path / name)
    grey, colour = read_image(tmp_path / name, 'L'), read_image(tmp_path / name)
    assert grey.mode == 'L' and np.asarray(grey).flatten().tolist() == expected
    assert colour.mode == 'RGB' and np.asarray(colour)[..., 1].flatten().tolist() == expected


def test_colour_modes_convert_as_pil_does(tmp_path, recwarn):
    from caretrans.data import read_image
    palette = Image.new('P', (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / 'palette.png', transparency=1)
    Image.new('RGBA', (2, 1), (10, 20, 30, 0)).save(tmp_path / 'rgba.png')
    Image.new('CMYK', (2, 1), (0, 255, 0, 0)).save(tmp_path / 'cmyk.jpg', quality=100)
    assert np.asarray(read_image(tmp_path / 'palette.png')).tolist() == [[[255, 0, 0], [0, 0, 255]]]
    assert np.asarray(read_image(tmp_path / 'rgba.png'))[0, 0].tolist() == [10, 20, 30]  # the alpha dropped
    assert np.asarray(read_image(tmp_path / 'cmyk.jpg'))[0, 0].tolist() == [255, 0, 255]
    assert not [w for w in recwarn if 'Palette' in str(w.message)]


@pytest.mark.parametrize('pixels,match', [
    (np.full((4, 4), 200.0, np.float32), r'float images are read as 0\.\.1, but 100 % of its pixels lie outside'),
    (np.array([[0.5, np.nan]], np.float32), 'NaN or infinity'),
    (np.array([[-5, 70000]], np.int32), r'integer pixels range -5\.\.70000'),
])
def test_pixels_outside_their_modes_range_are_refused_and_counted(tmp_path, pixels, match):
    from caretrans.data import UnreadableImageError, read_image
    Image.fromarray(pixels).save(tmp_path / 'x.tif')
    with pytest.raises(UnreadableImageError, match=match):
        read_image(tmp_path / 'x.tif')
    _write_folder(tmp_path / 'data')
    Image.fromarray(pixels).save(tmp_path / 'data' / 'train' / 'dog' / 'x.tif')
    ds = create_dataset(str(tmp_path / 'data'), 'train')
    assert len(ds) == 7 and sum(item is None for item in ds) == 1 and ds.num_bad_images == 1


def test_an_image_folder_of_16_bit_and_float_images_trains_on_their_real_values(tmp_path):
    for split in ('train', 'val'):
        for cls, value in (('dark', 0.25), ('light', 0.75)):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.full((8, 8), int(value * 65535), np.uint16)).save(tmp_path / split / cls / 'a.png')
            Image.fromarray(np.full((8, 8), value, np.float32)).save(tmp_path / split / cls / 'b.tif')
    ds = create_dataset(str(tmp_path), 'train')
    assert ds.in_chans == 1 and len(ds.mean) == 1
    assert [(np.asarray(image).mean(), label) for image, label in ds] == [(64, 0), (64, 0), (191, 1), (191, 1)]


def test_links_in_class_folders_are_not_followed_out_of_them_and_images_count_once(tmp_path, caplog):
    import os
    _write_folder(tmp_path)
    cat = tmp_path / 'train' / 'cat'
    os.symlink('..', cat / 'loop')                   # the split folder: the dog images, labelled as cats
    os.symlink('.', cat / 'self')                    # a loop
    (cat / 'sub').mkdir()
    Image.new('RGB', (40, 40)).save(cat / 'sub' / 'x.png')
    os.symlink('sub', cat / 'alias')                 # a second path to a folder within: listed once
    os.symlink(cat / '0.png', cat / 'again.png')     # a second path to a file: listed once
    os.symlink(tmp_path / 'val' / 'dog' / '0.png', tmp_path / 'train' / 'dog' / 'linked.png')  # a file: kept
    with caplog.at_level(logging.WARNING):
        ds = create_dataset(str(tmp_path), 'train')
    names = sorted((os.path.relpath(path, tmp_path / 'train'), label) for path, label in ds.samples)
    assert names == [('cat/0.png', 0), ('cat/1.png', 0), ('cat/2.png', 0), ('cat/sub/x.png', 0),
                     ('dog/0.png', 1), ('dog/1.png', 1), ('dog/2.png', 1), ('dog/linked.png', 1)]
    assert 'loop: it is a link out of its class folder' in caplog.text and 'self: it leads to' in caplog.text


def test_class_folders_without_links_list_as_torchvision_does(tmp_path):
    from torchvision.datasets.folder import IMG_EXTENSIONS, make_dataset

    from caretrans.data import image_files
    for sub in ('', 'a', 'a/b', 'a-x', 'B', 'a/b/c'):  # '-' sorts before '/': order by folder, then name
        (tmp_path / 'c' / sub).mkdir(parents=True, exist_ok=True)
        for name in ('z.png', 'B.jpg', 'a.png', 'x.txt'):
            (tmp_path / 'c' / sub / name).write_bytes(b'')
    listed = [path for path, _ in make_dataset(str(tmp_path), {'c': 0}, IMG_EXTENSIONS)]
    assert image_files(tmp_path / 'c') == listed and len(listed) == 18  # the same samples, the same order


def test_training_data_of_one_class_is_refused(tmp_path):
    _write_folder(tmp_path, classes=('cat',), val_classes=('cat', 'dog'))
    with pytest.raises(ValueError, match=r'holds images of 1 class\(es\) \(cat\): a classifier needs two or more'):
        create_dataset(str(tmp_path), 'train')
    (tmp_path / 'train' / 'dog').mkdir()  # an empty class folder is no second class
    with pytest.raises(ValueError, match=r'holds images of 1 class'):
        create_dataset(str(tmp_path), 'train')
    (tmp_path / 'train' / 'emu').mkdir()
    Image.new('RGB', (40, 40)).save(tmp_path / 'train' / 'emu' / 'a.png')
    with pytest.raises(ValueError, match=r'class\(es\) dog have no readable training images'):
        create_dataset(str(tmp_path), 'train')
    with pytest.raises(ValueError, match='holds images of 1 class'):
        create_dataset('synthetic', 'train', num_classes=1)
    assert len(create_dataset(str(tmp_path), 'val', classes=['cat', 'dog', 'emu'])) == 6  # evaluation: a subset


def test_long_thin_images_are_refused_from_the_header(tmp_path):
    from caretrans.data import MAX_ASPECT_RATIO, UnreadableImageError, image_size, read_image
    _write_folder(tmp_path)
    Image.new('L', (1, 20000)).save(tmp_path / 'train' / 'dog' / 'strip.png')
    Image.new('L', (10, 10 * MAX_ASPECT_RATIO)).save(tmp_path / 'train' / 'dog' / 'tall.png')  # at the bound
    for read in (image_size, read_image):
        with pytest.raises(UnreadableImageError, match=r'strip\.png refused: it is 1x20000, and images whose longer '
                                                       r'side exceeds 32 times the shorter are refused'):
            read(tmp_path / 'train' / 'dog' / 'strip.png')
    ds = create_dataset(str(tmp_path), 'train')
    assert ds.num_bad_images == 1 and len(ds) == 7


def test_folders_take_their_channels_and_input_size_from_their_images(tmp_path):
    from caretrans.data.loader import build_transform, default_img_size
    for split in ('train', 'val'):
        for cls, size in (('a', (40, 30)), ('b', (48, 36)), ('c', (300, 20))):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new('L', size, 90).save(tmp_path / split / cls / 'x.png')
    ds = create_dataset(str(tmp_path), 'train')
    info = dataset_info(ds)
    assert (info['in_chans'], info['mean'], info['std'], info['native_size']) == (1, (0.449,), (0.226,), 30)
    assert ds[0][0].mode == 'L'
    assert [default_img_size(n) for n in (None, 28, 30, 64, 100, 223, 224, 500)] == [224, 64, 64, 64, 128, 224, 224,
                                                                                      224]
    ds.transform = build_transform(True, 64, info['mean'], info['std'], aa='rand-m9-mstd0.5-inc1', reprob=0.25)
    assert ds[0][0].shape == (1, 64, 64)
    # A channel count given is honoured: grey images read as RGB, colour ones as L.
    assert create_dataset(str(tmp_path), 'val', in_chans=3)[0][0].mode == 'RGB'
    Image.new('RGB', (40, 40), (200, 0, 0)).save(tmp_path / 'val' / 'a' / 'red.png')
    assert create_dataset(str(tmp_path), 'val').in_chans == 3
    assert np.asarray(create_dataset(str(tmp_path), 'val', in_chans=1)[0][0]).max() == 60  # PIL's luma of red
    with pytest.raises(ValueError, match='in_chans: 1 does not fit synthetic, whose images have 3 channel'):
        create_dataset('synthetic', 'train', in_chans=1)


def test_auto_augment_and_interpolation_are_checked_by_timm_before_any_work():
    from caretrans.data.loader import INTERPOLATIONS, build_transform, check_auto_augment, check_interpolation
    for aa in (None, 'none', 'rand-m9-mstd0.5-inc1', 'augmix-m5-w4-d2', 'original', 'v0'):
        check_auto_augment(aa)
    with pytest.raises(ValueError, match=r"recipe field aa: 'bogus' is not an auto-augment timm knows \(Unknown AA"):
        check_auto_augment('bogus')
    with pytest.raises(ValueError, match="interpolation 'bogus' is not one of bicubic"):
        check_interpolation('bogus')
    for name in INTERPOLATIONS:  # each one timm builds both transforms with
        build_transform(False, 32, (0.5,) * 3, (0.5,) * 3, interpolation=name)
        build_transform(True, 32, (0.5,) * 3, (0.5,) * 3, interpolation=name)


def test_a_workers_error_reads_as_its_own_message():
    from torch.utils.data import DataLoader, Dataset

    from caretrans.data import UnreadableImageError

    class Missing(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, index):
            try:
                raise FileNotFoundError('gone')
            except FileNotFoundError as e:
                raise UnreadableImageError(f'image /data/{index}.png does not exist') from e

    with pytest.raises(UnreadableImageError) as err:
        next(iter(DataLoader(Missing(), num_workers=1)))
    assert str(err.value) == 'image /data/0.png does not exist'
