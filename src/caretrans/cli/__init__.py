"""The `caretrans` command.

Every module of this package that defines `add_parser(subparsers)` is a sub-command: it
registers its parser and sets `func`, the function that runs it. Modules import their
heavy dependencies inside `func`, so that `caretrans --help` stays fast (the command's
entry point, caretrans_command, imports the package without the models).
"""
import argparse
import importlib
import pkgutil
import sys
from typing import List, Optional


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='caretrans', description='CARE Transformer tools')
    subparsers = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f'{__name__}.{info.name}')
        if hasattr(module, 'add_parser'):
            module.add_parser(subparsers)
    return parser


# The optional packages and the extra that installs each (pyproject.toml).
EXTRAS = {
    'tqdm': 'train', 'matplotlib': 'train', 'tensorboard': 'train', 'fvcore': 'profile', 'onnx': 'export',
    'onnxruntime': 'export', 'onnxscript': 'export', 'coremltools': 'export', 'openvino': 'export',
    'pycocotools': 'dense',
}


def main(argv: Optional[List[str]] = None) -> int:
    from ..runtime.signals import Terminated, signals_as_exceptions

    args = build_parser().parse_args(argv)
    try:
        with signals_as_exceptions():
            from .. import models  # noqa: F401  (registers the CARE models with timm, if the command deferred it)
            return args.func(args) or 0
    except KeyboardInterrupt:  # training commands stop gracefully inside; this is any other moment
        print(f'caretrans {args.command}: interrupted', file=sys.stderr)
        return 130
    except Terminated:
        print(f'caretrans {args.command}: terminated', file=sys.stderr)
        return 143
    except (ValueError, FileNotFoundError) as e:
        print(f'caretrans {args.command}: error: {e}', file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:
        package = (e.name or '').split('.')[0]
        if package not in EXTRAS:
            raise
        print(f"caretrans {args.command}: error: {package} is not installed; "
              f"pip install 'caretrans[{EXTRAS[package]}]' (or 'caretrans[all]')", file=sys.stderr)
        return 2
