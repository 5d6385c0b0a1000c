"""The `caretrans det` and `caretrans seg` commands: train, eval and synth, sharing one parser."""
import argparse
import dataclasses
import json
import os
import typing

from .recipe import PRESETS, DenseRecipe

__all__ = ['add_task_parser']

_DEFAULT_PRESET = {'det': 'coco', 'seg': 'ade20k'}
_SHAPES_PRESET = {'det': 'shapes-det', 'seg': 'shapes-seg'}


def _add_recipe_flags(parser: argparse.ArgumentParser):
    """One flag per recipe field; only the flags given override the recipe."""
    group = parser.add_argument_group('recipe fields (override the preset or YAML)')
    hints = typing.get_type_hints(DenseRecipe)
    for f in dataclasses.fields(DenseRecipe):
        if f.name == 'task':
            continue
        flag, kind = '--' + f.name.replace('_', '-'), hints[f.name]
        base = [a for a in typing.get_args(kind) if a is not type(None)]
        kind = base[0] if typing.get_origin(kind) is typing.Union else kind
        kw = dict(default=argparse.SUPPRESS, help=f.metadata.get('help', f'default {f.default}'))
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif typing.get_origin(kind) is tuple:
            group.add_argument(flag, nargs='+', type=typing.get_args(kind)[0], **kw)
        else:
            group.add_argument(flag, type=kind, **kw)


def _recipe(args, task: str, base: str):
    """The recipe the command line asks for: `--recipe` (else `base`) with the flags given on top.
    A recipe for the other task is refused (the flags do not include `task`)."""
    from .recipe import load_recipe
    recipe = load_recipe(args.recipe or base, task)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(DenseRecipe)
                 if f.name != 'task' and hasattr(args, f.name)}
    return DenseRecipe.from_dict(dict(recipe.to_dict(), **overrides))


def _is_primary() -> bool:
    """Under torchrun, one process reports, not one per process."""
    return int(os.environ.get('RANK', '0')) == 0


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
    from ..cli.common import check_model_names, refuse_to_overwrite_run
    from ..runtime import run_exit_code
    from .train import train

    if not args.resume:
        refuse_to_overwrite_run(args.output, '--resume')
    # Resuming starts from the run's own recipe; train() refuses it if a flag given here changes it.
    saved = os.path.join(args.output, 'recipe.yaml')
    recipe = _recipe(args, args.task, saved if args.resume and os.path.isfile(saved) else _DEFAULT_PRESET[args.task])
    check_model_names([recipe.model])
    result = train(recipe, args.output, resume=os.path.join(args.output, 'last.pth') if args.resume else None,
                   device=args.device, progress=not args.no_progress)
    if result.status != 'finished':
        return run_exit_code(result.status)
    if _is_primary():
        _print_metrics(dict(result.metrics, epoch=result.epoch, status=result.status), args.json)


def _run_eval(args):
    from .recipe import load_recipe
    from .train import evaluate_checkpoint

    recipe = None
    if args.recipe or args.data or args.val_split:
        if not args.recipe:
            raise ValueError('--data and --val-split need --recipe (the YAML of the run or a preset)')
        recipe = load_recipe(args.recipe, args.task)
        recipe = dataclasses.replace(recipe, **{k: v for k, v in (('data', args.data), ('val_split', args.val_split))
                                                 if v})
    metrics = evaluate_checkpoint(args.checkpoint, recipe, device=args.device)
    if _is_primary():
        _print_metrics(metrics, args.json)


def _run_synth(args):
    from .synthetic import make_shapes_dataset

    paths = make_shapes_dataset(args.output, args.num_train, args.num_val, args.image_size, seed=args.seed)
    for k, v in paths.items():
        print(f'{k}: {v}')
    print(f'train on it: caretrans {args.task} train --recipe {_SHAPES_PRESET[args.task]} --data {args.output}')


def add_task_parser(subparsers, task: str, help_text: str):
    """Register `caretrans <task>` with its train, eval and synth actions."""
    parser = subparsers.add_parser(task, help=help_text)
    actions = parser.add_subparsers(dest='action', required=True, metavar='ACTION')

    p = actions.add_parser('train', help='train (resumable; DDP with torchrun)')
    p.add_argument('--recipe', default=None,
                   help=f'preset ({", ".join(PRESETS)}) or YAML file (default {_DEFAULT_PRESET[task]}; '
                        'with --resume, the run\'s own)')
    p.add_argument('--output', required=True, help='run folder: last.pth, model.safetensors, metrics, curves.png')
    p.add_argument('--resume', action='store_true',
                   help='continue the run in --output from its last.pth with its own recipe '
                        '(flags that would change it are refused)')
    p.add_argument('--device', default=None, help='default: cuda (one GPU per torchrun process) if available, else cpu')
    p.add_argument('--no-progress', action='store_true', help='no progress bars')
    p.add_argument('--json', action='store_true', help='print the final metrics as JSON')
    _add_recipe_flags(p)
    p.set_defaults(func=_run_train, task=task)

    p = actions.add_parser('eval', help='evaluate a checkpoint (box/mask AP or mIoU)')
    p.add_argument('--checkpoint', required=True, help="a run's last.pth, or model.safetensors beside recipe.yaml")
    p.add_argument('--recipe', default=None, help='preset or YAML (default: the one of the run)')
    p.add_argument('--data', default=None, help='evaluate on another dataset folder (needs --recipe)')
    p.add_argument('--val-split', default=None)
    p.add_argument('--device', default=None)
    p.add_argument('--json', action='store_true')
    p.set_defaults(func=_run_eval, task=task)

    p = actions.add_parser('synth', help='write the synthetic shapes dataset (COCO and ADE20K formats)')
    p.add_argument('--output', required=True)
    p.add_argument('--num-train', type=int, default=64)
    p.add_argument('--num-val', type=int, default=16)
    p.add_argument('--image-size', type=int, default=128)
    p.add_argument('--seed', type=int, default=0)
    p.set_defaults(func=_run_synth, task=task)
