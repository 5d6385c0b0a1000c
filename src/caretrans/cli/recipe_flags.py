"""What `train`, `det train` and `seg train` share: one flag per recipe field, and the run flags
(--recipe, --output, --resume RUN, --device, --threads, --no-progress, --json) with one meaning.

The recipe is the preset or YAML of --recipe (else the resumed run's recipe.yaml, else the command's
default preset) with the recipe flags given on the command line applied; flags not given change nothing.
"""
import argparse
import dataclasses
import os
import typing
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

from .common import check_at_least

__all__ = ['SHORT_FLAGS', 'add_training_flags', 'recipe_overrides', 'resume_file', 'training_recipe', 'prepare_run']

# Short forms as in timm's train.py, wherever a recipe has the field.
SHORT_FLAGS = {'batch_size': '-b', 'model': '-m', 'workers': '-j'}


def add_training_flags(parser: argparse.ArgumentParser, presets: Iterable[str], defaults, default_preset: str,
                       output_default: str, skip: Iterable[str] = ()):
    """The run flags, then one flag per field of the recipe `defaults` (those of `default_preset`), but `skip`."""
    parser.add_argument('--recipe', help=f'preset ({", ".join(presets)}) or a recipe YAML (default: '
                        f"{default_preset}; with --resume, the run's own recipe.yaml)")
    parser.add_argument('--output', metavar='RUN', help=f"run folder (default: {output_default}; with --resume, "
                        "the resumed run's)")
    parser.add_argument('--resume', metavar='RUN', help="a run folder or its last.pth to continue, with the run's "
                        'recipe (flags that would change it are refused, except a larger --epochs)')
    parser.add_argument('--device', help='cpu, cuda or cuda:N (default: cuda if available, one GPU per local rank)')
    parser.add_argument('--threads', type=int, help="torch CPU threads per process (default: torch's choice)")
    parser.add_argument('--no-progress', dest='progress', action='store_false', help='no progress bar')
    parser.add_argument('--json', action='store_true', help='print the closing summary as JSON')
    _add_recipe_flags(parser, defaults, default_preset, set(skip))


def _add_recipe_flags(parser: argparse.ArgumentParser, defaults, default_preset: str, skip):
    group = parser.add_argument_group('recipe fields', 'each flag given overrides the preset or YAML of --recipe')
    hints = typing.get_type_hints(type(defaults))
    for f in dataclasses.fields(defaults):
        if f.name in skip:
            continue
        flags = ([SHORT_FLAGS[f.name]] if f.name in SHORT_FLAGS else []) + [f'--{f.name.replace("_", "-")}']
        value = getattr(defaults, f.name)
        shown = '' if value is None else f' ({default_preset}: {_show(value)})'
        help_text = (f.metadata.get('help', '') + shown).strip().replace('%', '%%')
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=help_text,
                           **_value_options(f.name, hints[f.name], f.metadata))


def _value_options(name: str, annotation: Any, metadata: Dict[str, Any]) -> Dict[str, Any]:
    """How a field's flag reads its value: bools as --x/--no-x, a Tuple[T, T] as two values, a Tuple[T, ...]
    as one or more."""
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if annotation is bool:
        return dict(action=argparse.BooleanOptionalAction)
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        if args[-1] is Ellipsis:
            return dict(nargs='+', type=args[0], metavar=name.upper())
        metavar = ('MIN', 'MAX') if metadata.get('ordered') and len(args) == 2 else (name.upper(),) * len(args)
        return dict(nargs=len(args), type=args[0], metavar=metavar)
    return dict(type=annotation, metavar=name.upper())


def _show(value: Any) -> str:
    return ' '.join(map(str, value)) if isinstance(value, tuple) else str(value)


def recipe_overrides(args: argparse.Namespace, recipe_cls) -> Dict[str, Any]:
    """The recipe fields given as flags (tuple fields as tuples)."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(recipe_cls) if hasattr(args, f.name)}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}


def resume_file(resume: Optional[str]) -> Optional[str]:
    """The training state --resume names: a run folder's last.pth (never a temp file beside it), or the file given."""
    if resume is None:
        return None
    path = os.path.join(resume, 'last.pth') if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise FileNotFoundError(f'--resume {resume}: {path} does not exist (give a run folder or its last.pth)')
    return path


def training_recipe(args: argparse.Namespace, load: Callable[[str], Any], default_preset: str,
                    resume: Optional[str] = None):
    """The recipe of --recipe, else of the resumed run's recipe.yaml (`resume`: its state file), else
    `default_preset`, with every recipe flag given applied (each value checked by the recipe) and its
    paths made absolute, so that the run continues from any working directory."""
    saved = os.path.join(os.path.dirname(resume), 'recipe.yaml') if resume else None
    recipe = load(args.recipe or (saved if saved and os.path.isfile(saved) else default_preset))
    recipe = dataclasses.replace(recipe, **recipe_overrides(args, type(recipe))).with_absolute_paths()
    if not recipe.data:
        data = next(f for f in dataclasses.fields(recipe) if f.name == 'data')
        raise ValueError(f'--data is required: {data.metadata["help"]}')
    return recipe


def prepare_run(args: argparse.Namespace, load: Callable[[str], Any], default_preset: str, prefix: str = ''
                ) -> Tuple[Any, str, Optional[str]]:
    """(recipe, run folder, training state to resume or None) of a training command; --threads applied.

    The run folder is --output, else the resumed run's, else runs/PREFIXMODEL-DATA; a new run into a
    folder that holds one is refused."""
    check_at_least(args, threads=1)
    resume = resume_file(args.resume)
    recipe = training_recipe(args, load, default_preset, resume)
    if args.output:
        run_dir = args.output
    elif resume:
        run_dir = os.path.dirname(resume) or '.'
    else:
        run_dir = os.path.join('runs', f'{prefix}{recipe.model}-{os.path.basename(recipe.data.rstrip("/")) or "data"}')
    if resume is None and os.path.exists(os.path.join(run_dir, 'last.pth')):
        raise ValueError(f'{run_dir} already holds a run; continue it with --resume {run_dir} or choose another --output')
    if args.threads is not None:
        import torch
        torch.set_num_threads(args.threads)
    return recipe, run_dir, resume
