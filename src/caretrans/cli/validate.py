"""`caretrans validate`: top-1, top-5 and loss of a checkpoint with timm's evaluation transform."""
import json
import sys


def add_parser(subparsers):
    p = subparsers.add_parser('validate', help='top-1/top-5/loss of a checkpoint (ours or released-format)')
    p.add_argument('--model', '-m', help='timm model name (default: the one recorded in the checkpoint, else care_s0)')
    p.add_argument('--checkpoint', required=True, help="a run folder (its best.safetensors, else last.pth), a run's "
                   "best.safetensors / last.pth, a released .pth.tar, or safetensors")
    p.add_argument('--data', required=True, help="'fashion-mnist', 'synthetic' or a folder with a val/ sub-folder")
    p.add_argument('--split', default='val', choices=['train', 'val'])
    p.add_argument('--class-map', metavar='FILE',
                   help="the classes in label order, one a line, for a checkpoint without a model card (default: "
                        "the run's class_map.txt beside the checkpoint, else the data folder's train/ class folders)")
    p.add_argument('--img-size', type=int, help="default: the model card's, else the one recorded in a run's "
                   "recipe, else the data's")
    p.add_argument('--crop-pct', type=float, help="default: the model card's, else the recipe's, else 0.875")
    p.add_argument('--interpolation', help="resampling filter: bicubic, bilinear, nearest, lanczos, box or hamming "
                   "(default: the model card's, else bicubic)")
    p.add_argument('--num-classes', type=int, help="for a checkpoint without a model card: default the data's "
                   "(1000 for an ImageNet val folder)")
    p.add_argument('--in-chans', type=int, help="default: the model card's, else the checkpoint's; an image folder "
                   "is read with as many")
    p.add_argument('-b', '--batch-size', type=int, default=128)
    p.add_argument('-j', '--workers', type=int, default=2)
    p.add_argument('--device', help='default: cuda if available, else cpu')
    p.add_argument('--amp', action='store_true', help='bfloat16 autocast')
    p.add_argument('--channels-last', action='store_true')
    p.add_argument('--compile', action='store_true', help='torch.compile the model first')
    p.add_argument('--json', action='store_true', help='print JSON')
    p.set_defaults(func=run)


def _first_given(*values):
    """The first value that is not None (0 is a value: `a or b` would skip it); None if none is given."""
    return next((v for v in values if v is not None), None)


# The fields of a run's recorded recipe that validate reads.
_RECORDED_FIELDS = ('img_size', 'crop_pct', 'in_chans')


def _describe(checkpoint, model):
    """`describe` of the checkpoint, with the fields validate reads of its recorded recipe (inside it, else
    the recipe.yaml beside it) checked as a recipe checks them: a bad file or value is a ValueError naming it."""
    from pathlib import Path

    from ..models import CheckpointError, describe
    from ..runtime.recipe import read_recipe_file
    from ..train.recipe import Recipe

    try:
        info = describe(checkpoint, model=model)
    except CheckpointError:
        beside = Path(checkpoint).parent / 'recipe.yaml'
        if beside.is_file():
            read_recipe_file(beside)  # a bad recipe is named as every command names it
        raise
    Recipe.check_values(info.recipe, f'the recipe recorded with {checkpoint}', _RECORDED_FIELDS)
    return info


def _refuse_other_head(info, num_classes: int, origin: str):
    """A checkpoint whose classifier has another class count than the model would leave the model's
    head at its random initialisation (load_checkpoint only warns, for fine-tuning): refuse it."""
    classes = info.num_classes
    if classes is not None and classes != num_classes:
        raise ValueError(
            f'{info.path} classifies {classes} classes but the model has {num_classes} ({origin}): '
            f'validating it would score an untrained head. Use data with {classes} classes, or --class-map FILE '
            f'listing the checkpoint\'s {classes} classes in label order')


def _card_classes(args, card):
    """The checkpoint card's classes, in label order: what the data is labelled by, by name."""
    from ..data import read_class_map

    for option, value, recorded in (('--num-classes', args.num_classes, card.num_classes),
                                    ('--in-chans', args.in_chans, card.in_chans)):
        if value is not None and value != recorded:
            raise ValueError(f'{option} {value}: {args.checkpoint} records a model of {recorded} in its model card')
    if args.class_map and read_class_map(args.class_map) != list(card.label_names):
        raise ValueError(f'--class-map {args.class_map} differs from the classes recorded in {args.checkpoint}\'s '
                         f'model card ({", ".join(card.label_names[:5])}{", ..." if card.num_classes > 5 else ""}); '
                         'leave it out: the data is labelled by the recorded class names')
    return list(card.label_names)


def run(args):
    from pathlib import Path

    import timm
    import torch

    from ..data import NAMED_DATASETS, create_dataset, dataset_info, read_class_map, recorded_classes
    from ..data.loader import build_transform, check_interpolation, create_eval_loader, default_img_size
    from ..models.checkpoint_info import run_weights
    from ..models import MIN_INPUT_SIZE, load_checkpoint
    from ..models.checkpoint import require_finite
    from ..runtime.distributed import DistributedContext
    from ..runtime.loop import TrainingDiverged
    from ..runtime.precision import autocast_factory
    from ..train.engine import evaluate
    from .common import check_at_least, check_model_names

    check_at_least(args, img_size=MIN_INPUT_SIZE, num_classes=1, in_chans=1, batch_size=1, workers=0)
    if args.crop_pct is not None and not 0 < args.crop_pct <= 1:
        raise ValueError(f'--crop-pct {args.crop_pct}: expected a fraction in (0, 1]')
    if args.interpolation is not None:
        check_interpolation(args.interpolation)
    args.checkpoint = str(run_weights(args.checkpoint))
    info = _describe(args.checkpoint, args.model)
    card = info.card
    model_name = info.model or 'care_s0'
    check_model_names([model_name])
    recorded = info.recipe
    if card is not None:  # labels by the recorded names; the recorded preprocessing
        classes = _card_classes(args, card)
    else:
        classes = read_class_map(args.class_map) if args.class_map else recorded_classes(Path(args.checkpoint).parent)
    # An image folder is read with the model's channel count; the named data sets have their own (weights
    # of another count get their stem adapted by load_checkpoint, as timm does).
    wanted_chans = _first_given(args.in_chans, card.in_chans if card is not None else None, recorded.get('in_chans'),
                                None if args.data in NAMED_DATASETS else info.in_chans)
    dataset = create_dataset(args.data, args.split, classes=classes, in_chans=wanted_chans)
    data = dataset_info(dataset)
    if card is not None:
        num_classes, in_chans = card.num_classes, card.in_chans
        img_size, crop_pct = _first_given(args.img_size, card.img_size), _first_given(args.crop_pct, card.crop_pct)
        interpolation, mean, std = args.interpolation or card.interpolation, card.mean, card.std
    else:
        img_size = _first_given(args.img_size, info.img_size, default_img_size(data['native_size']))
        crop_pct = _first_given(args.crop_pct, recorded.get('crop_pct'), 0.875)
        interpolation, mean, std = args.interpolation or 'bicubic', data['mean'], data['std']
        num_classes = _first_given(args.num_classes, data['num_classes'])
        in_chans = data['in_chans']
        if classes is None and Path(args.data).is_dir() and num_classes != data['num_classes']:
            raise ValueError(f'{args.data} {args.split} has {data["num_classes"]} class folders for a model of '
                             f'{num_classes} classes, and {args.checkpoint} records no class names: its labels would '
                             'be matched by position. Give --class-map FILE, the checkpoint\'s classes in label order')
        _refuse_other_head(info, num_classes, '--num-classes' if args.num_classes is not None
                           else f'those of {args.data} {args.split}')
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    kwargs = card.model_kwargs() if card is not None else dict(num_classes=num_classes, in_chans=in_chans)
    model = timm.create_model(model_name, **kwargs)
    load_checkpoint(model, args.checkpoint)
    require_finite(model, args.checkpoint)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    dataset.transform = build_transform(False, img_size, mean, std, crop_pct=crop_pct, interpolation=interpolation)
    autocast = autocast_factory(device, 'bfloat16' if args.amp else None)
    try:
        result = evaluate(model, create_eval_loader(dataset, args.batch_size, workers=args.workers),
                          DistributedContext(0, 1, 0, device), autocast, args.channels_last,
                          progress=sys.stderr.isatty() and not args.json)
    except TrainingDiverged as e:  # finite weights, but outputs that are not on this data
        raise ValueError(f'{args.checkpoint} on {args.data} {args.split}: {e}: the model\'s outputs are not '
                         'finite' + (' (try without --amp)' if args.amp else '')) from None
    result.update(model=model_name, checkpoint=str(args.checkpoint), data=args.data, split=args.split,
                  img_size=img_size, crop_pct=crop_pct, interpolation=interpolation,
                  labels='model card' if card is not None else 'class map' if classes is not None else 'data folders')
    if getattr(dataset, 'num_bad_images', 0):
        result['bad_images'] = dataset.num_bad_images
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f'{model_name} {args.checkpoint} on {args.data} {args.split} ({result["count"]} images, '
              f'{img_size}px, crop {crop_pct}, {interpolation}): top-1 {result["top1"]:.2f}%, '
              f'top-5 {result["top5"]:.2f}%, loss {result["loss"]:.4f}'
              + (f'; {result["bad_images"]} unreadable image(s) left out' if 'bad_images' in result else ''))
    return 0
