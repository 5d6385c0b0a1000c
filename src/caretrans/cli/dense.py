"""The `caretrans det` and `caretrans seg` commands: train, validate and synth, sharing one parser."""
import contextlib
import dataclasses
import json
import os
import sys

__all__ = ['add_task_parser']

_DEFAULT_PRESET = {'det': 'coco', 'seg': 'ade20k'}
_SHAPES_PRESET = {'det': 'shapes-det', 'seg': 'shapes-seg'}


def _print_metrics(metrics, as_json: bool):
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    for k, v in metrics.items():
        if isinstance(v, float):
            print(f'{k:>12}: {v:.4f}')
        elif isinstance(v, list):
            print(f'{k:>12}: ' + ' '.join('nan' if x != x else f'{x:.3f}' for x in v))


def _run_train(args):
    import functools

    from ..dense.recipe import load_recipe
    from ..dense.train import train
    from ..runtime import run_exit_code
    from ..runtime.distributed import is_primary_process
    from ..runtime.loop import TrainingDiverged
    from .common import check_model_names
    from .recipe_flags import prepare_run

    recipe, run_dir, resume = prepare_run(args, functools.partial(load_recipe, task=args.task),
                                          _DEFAULT_PRESET[args.task], prefix=f'{args.task}-')
    check_model_names([recipe.model])
    try:  # with --json, stdout is the JSON alone: the run's lines go to stderr
        with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
            result = train(recipe, run_dir, resume=resume, device=args.device, progress=args.progress)
    except TrainingDiverged as e:
        print(f'caretrans {args.task}: error: {e}', file=sys.stderr)
        return 3
    if result.status not in ('finished', 'already finished'):
        return run_exit_code(result.status)
    if not is_primary_process() or result.status == 'already finished':
        return 0
    _print_metrics(dict(result.metrics, epoch=result.epoch, status=result.status, run_dir=str(result.run_dir)),
                   args.json)
    if not args.json:
        print(f'run folder {result.run_dir}: last.pth, model.safetensors, recipe.yaml, metrics.csv, curves.png')
    return 0


def _validation_recipe(args):
    """--recipe with the --data, --split, --batch-size, --workers given applied; without --recipe, those
    apply to the run's recipe.yaml beside the checkpoint. None: the checkpoint's own recipe, as it is."""
    from ..dense.recipe import load_recipe

    overrides = {field: value for field, value in (('data', args.data), ('val_split', args.split),
                                                   ('batch_size', args.batch_size), ('workers', args.workers))
                 if value is not None}
    if not args.recipe and not overrides:
        return None
    source = args.recipe or os.path.join(os.path.dirname(args.checkpoint), 'recipe.yaml')
    if not os.path.isfile(source) and not args.recipe:
        raise ValueError(f'--data, --split, --batch-size and --workers change a recipe: no recipe.yaml beside '
                         f'{args.checkpoint}, give --recipe')
    return dataclasses.replace(load_recipe(source, args.task), **overrides)


def _run_validate(args):
    from ..dense.train import evaluate_checkpoint
    from ..runtime.distributed import is_primary_process
    from .common import check_at_least

    check_at_least(args, batch_size=1, workers=0)
    metrics = evaluate_checkpoint(args.checkpoint, _validation_recipe(args), device=args.device)
    if is_primary_process():
        _print_metrics(metrics, args.json)
    return 0


def _run_synth(args):
    from ..dense.synthetic import make_shapes_dataset

    paths = make_shapes_dataset(args.output, args.num_train, args.num_val, args.image_size, seed=args.seed)
    for k, v in paths.items():
        print(f'{k}: {v}')
    print(f'train on it: caretrans {args.task} train --recipe {_SHAPES_PRESET[args.task]} --data {args.output}')
    return 0


def add_task_parser(subparsers, task: str, help_text: str):
    """Register `caretrans <task>` with its train, validate and synth actions."""
    from ..dense.recipe import PRESETS, load_recipe
    from .recipe_flags import add_training_flags

    parser = subparsers.add_parser(task, help=help_text)
    actions = parser.add_subparsers(dest='action', required=True, metavar='ACTION')

    p = actions.add_parser('train', help='train (resumable; DDP with torchrun)',
                           description='Every recipe flag overrides the preset/YAML given with --recipe. Under '
                                       'torchrun each process takes --batch-size images.')
    add_training_flags(p, PRESETS, load_recipe(_DEFAULT_PRESET[task]), _DEFAULT_PRESET[task],
                       f'runs/{task}-MODEL-DATA', skip=('task',))
    p.set_defaults(func=_run_train, task=task)

    p = actions.add_parser('validate', aliases=['eval'], help='box/mask AP or mIoU of a checkpoint ("eval": the '
                           'same, its former name)')
    p.add_argument('--checkpoint', required=True, help="a run's last.pth, or model.safetensors beside recipe.yaml")
    p.add_argument('--recipe', help="preset or YAML (default: the run's own)")
    p.add_argument('--data', help='another dataset folder (default: the recipe\'s)')
    p.add_argument('--split', '--val-split', help="the split evaluated (default: the recipe's val_split)")
    p.add_argument('-b', '--batch-size', type=int, help="det: images per batch (default: the recipe's)")
    p.add_argument('-j', '--workers', type=int, help="data-loading processes (default: the recipe's)")
    p.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda if available, one GPU per local rank)')
    p.add_argument('--json', action='store_true', help='print the metrics as JSON')
    p.set_defaults(func=_run_validate, task=task)

    p = actions.add_parser('synth', help='write the synthetic shapes dataset (COCO and ADE20K formats)')
    p.add_argument('--output', required=True)
    p.add_argument('--num-train', type=int, default=64)
    p.add_argument('--num-val', type=int, default=16)
    p.add_argument('--image-size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_run_synth, task=task)
