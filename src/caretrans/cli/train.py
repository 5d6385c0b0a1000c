"""`caretrans train`: the paper's recipe (or a preset / YAML), one process or many under torchrun."""
import argparse
import dataclasses
import json
import os
import sys
import time
import typing

# Short forms as in timm's train.py.
_SHORT = {'batch_size': '-b', 'model': '-m', 'workers': '-j'}


def add_parser(subparsers):
    from ..train.recipe import PRESETS, Recipe

    p = subparsers.add_parser(
        'train', help="train a model: the paper's ImageNet recipe by default, presets for small data",
        description='Every recipe flag overrides the preset/YAML given with --recipe. '
                    'Under torchrun (`torchrun --nproc_per_node N -m caretrans train ...`) each process '
                    'takes --batch-size images per micro-step.')
    p.add_argument('--recipe', help=f'preset ({", ".join(PRESETS)}) or a recipe YAML (default: imagenet, the '
                   f'paper\'s; with --resume, the run\'s own recipe.yaml)')
    for f in dataclasses.fields(Recipe):
        flags = [f'--{f.name.replace("_", "-")}'] + ([_SHORT[f.name]] if f.name in _SHORT else [])
        kind = _base_type(f.type)
        kwargs = dict(dest=f.name, default=None, help=f.metadata.get('help', '') + f' (paper: {f.default})')
        if kind is bool:
            kwargs['action'] = argparse.BooleanOptionalAction
        elif kind is tuple:
            kwargs.update(nargs=2, type=float, metavar=('MIN', 'MAX'))
        else:
            kwargs.update(type=kind, metavar=f.name.upper())
        p.add_argument(*flags, **kwargs)
    p.add_argument('--output', help='run folder (default: runs/MODEL-DATA; with --resume, the run\'s)')
    p.add_argument('--resume', metavar='RUN', help="a run folder or its last.pth to continue, with the run's "
                   'recipe (flags that would change it are refused, except a larger --epochs)')
    p.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda if available, one GPU per local rank)')
    p.add_argument('--threads', type=int, help='torch CPU threads per process (default: torch\'s choice)')
    p.add_argument('--tensorboard', action='store_true', help='also log to RUN/tensorboard')
    p.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    p.add_argument('--json', action='store_true', help='print the closing summary as JSON')
    p.set_defaults(func=run)


def _base_type(annotation):
    """int for Optional[int], tuple for Tuple[float, float], and so on."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is tuple:
        return tuple
    return _base_type(args[0]) if args else annotation


def resume_file(resume: str) -> str:
    """The training state to resume from: a run folder's last.pth (never a temp file beside it), or the file given."""
    return os.path.join(resume, 'last.pth') if os.path.isdir(resume) else resume


def build_recipe(args):
    """The preset or YAML named by --recipe (else the resumed run's recipe.yaml, else the paper's), with every
    recipe flag given on the command line applied."""
    from ..train.recipe import Recipe, load_recipe

    saved = os.path.join(os.path.dirname(resume_file(args.resume)), 'recipe.yaml') if args.resume else None
    recipe = load_recipe(args.recipe or (saved if saved and os.path.isfile(saved) else 'imagenet'))
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe) if getattr(args, f.name) is not None}
    if 'scale' in given:
        given['scale'] = tuple(given['scale'])
    recipe = dataclasses.replace(recipe, **given)
    if not recipe.data:
        raise ValueError("--data is required: 'fashion-mnist', 'synthetic' or a folder with train/ and val/")
    return recipe


def run(args):
    import torch

    from ..train.engine import TrainingDiverged
    from ..train.report import summarize
    from ..train.trainer import train
    from ..runtime import run_exit_code
    from .common import check_at_least, check_model_names, refuse_to_overwrite_run

    check_at_least(args, threads=1)
    resume = resume_file(args.resume) if args.resume else None
    recipe = build_recipe(args)
    check_model_names([recipe.model] + ([recipe.teacher] if recipe.teacher else []))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data_name = os.path.basename(recipe.data.rstrip('/')) or 'data'
    if args.output:
        run_dir = args.output
    else:
        run_dir = (os.path.dirname(resume) or '.') if resume else os.path.join('runs', f'{recipe.model}-{data_name}')
    if resume is None:
        refuse_to_overwrite_run(run_dir, f'--resume {run_dir}/last.pth')
    primary = int(os.environ.get('RANK', '0')) == 0
    if primary:
        print(recipe.to_yaml(), end='', flush=True)
    start = time.perf_counter()
    try:
        result = train(recipe, run_dir, resume=resume, device=args.device, progress=args.progress,
                       tensorboard=args.tensorboard)
    except TrainingDiverged as e:
        print(f'caretrans train: error: {e}', file=sys.stderr)
        return 3
    minutes = (time.perf_counter() - start) / 60
    if result.status not in ('finished', 'already finished'):
        return run_exit_code(result.status)
    if not primary or result.status == 'already finished':
        return 0

    # The closing summary: params, GMACs, the last evaluation and its confusion matrix.
    figures = summarize(result.model.cpu(), result.img_size, result.in_chans, result.metrics, result.classes,
                        result.run_dir, minutes)
    figures.update(best_top1=result.best_top1, run_dir=str(result.run_dir))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f'{recipe.model}: {figures["params_m"]:.2f} M params, {figures["gmacs"]:.4f} GMACs at '
              f'{result.img_size}x{result.img_size}; {figures["test_images"]} validation images: '
              f'top-1 {figures["top1"]:.2f}%, top-5 {figures["top5"]:.2f}% after {recipe.epochs} epochs '
              f'in {minutes:.1f} min (train + eval)')
        print(f'run folder {result.run_dir}: last.pth, best.pth, recipe.yaml, metrics.csv, curves.png'
              + (', confusion.png' if 'confusion_png' in figures else ''))
    return 0
