"""caretrans: the CARE Transformer (CVPR 2025) for timm.

Importing the package registers `care_s0`, `care_s1`, `care_s2` and the rows of the paper's ablation
tables (`care_s2_sym`, ...) with timm, which imports torch. The `caretrans` command alone defers
that while it builds its parsers (caretrans_command), so that its --help needs no torch.
"""
import importlib
import os

__version__ = '0.1.0'
__all__ = ['CareTransformer', 'CheckpointError', 'ModelCard', 'checkpoint_filter_fn', 'describe', 'load_checkpoint',
           'load_run', 'read_card', 'reparameterize', 'save_atomic']

# Public names, read on first use (PEP 562) from .models (load_run from .inference), and the sub-packages,
# imported on first use.
_EXPORTS_FROM = {'load_run': '.inference'}
_MODEL_EXPORTS = set(__all__)
_SUBPACKAGES = {'bench', 'cli', 'data', 'dense', 'export', 'inference', 'models', 'runtime', 'train'}


def __getattr__(name):
    if name in _MODEL_EXPORTS:
        return getattr(importlib.import_module(_EXPORTS_FROM.get(name, '.models'), __name__), name)
    if name in _SUBPACKAGES:
        return importlib.import_module(f'.{name}', __name__)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
    return sorted(set(globals()) | _MODEL_EXPORTS | _SUBPACKAGES)


# caretrans_command.DEFER_MODELS: the command registers the models itself, after parsing.
if os.environ.get('_CARETRANS_DEFER_MODELS') != '1':
    from . import models  # noqa: E402,F401  (registers the CARE models with timm)
