"""The `caretrans` command's entry point, a package of its own so that it runs before caretrans is imported.

`import caretrans` registers the CARE models with timm, which imports torch (1-2 s). The command's
parsers need only the package's torch-free modules (caretrans.cli and the recipes it reads its
flags from), so `main` imports the package with the models deferred (DEFER_MODELS, read once by
caretrans/__init__.py), and caretrans.cli.main registers them once the command line is parsed:
`caretrans --help` and every sub-command's --help answer without loading torch.
`python -m caretrans` (what torchrun runs) imports the package as any program does.
"""
import os
from typing import List, Optional

# Set only while `main` imports caretrans (children started later do not inherit it).
DEFER_MODELS = '_CARETRANS_DEFER_MODELS'


def main(argv: Optional[List[str]] = None) -> int:
    """Run `caretrans` with the arguments `argv` (default: the command line)."""
    os.environ[DEFER_MODELS] = '1'
    try:
        from caretrans import cli
    finally:
        del os.environ[DEFER_MODELS]
    return cli.main(argv)
