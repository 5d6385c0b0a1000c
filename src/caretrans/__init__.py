"""caretrans: the CARE Transformer (CVPR 2025) for timm.

Importing the package registers `care_s0`, `care_s1`, `care_s2` and the rows of the paper's ablation
tables (`care_s2_sym`, ...) with timm: at once if timm is loaded, else as soon as it is. The package
itself loads torch only when something needs it, so that the `caretrans` command answers `--help`
without it.
"""
import importlib
import importlib.abc
import importlib.util
import sys

__version__ = '0.1.0'
__all__ = ['CareTransformer', 'CheckpointError', 'ModelCard', 'checkpoint_filter_fn', 'describe', 'load_checkpoint',
           'load_run', 'read_card', 'reparameterize', 'save_atomic']

# Public names, imported on first use (PEP 562) from .models, but for those of another package.
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


def _register_models():
    importlib.import_module('.models', __name__)


class _TimmLoader(importlib.abc.Loader):
    """timm's own loader, then the registration of the CARE models once timm has run."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        module.__loader__ = module.__spec__.loader = self.loader
        if _TIMM_FINDER in sys.meta_path:
            sys.meta_path.remove(_TIMM_FINDER)
        _register_models()


class _TimmFinder(importlib.abc.MetaPathFinder):
    """Finds timm as the other finders do and hands it a loader that registers the CARE models."""

    searching = False

    def find_spec(self, name, path=None, target=None):
        if name != 'timm' or self.searching:
            return None
        self.searching = True  # importlib.util.find_spec below asks this finder too
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.searching = False
        if spec is not None and spec.loader is not None:
            spec.loader = _TimmLoader(spec.loader)
        return spec


_TIMM_FINDER = _TimmFinder()
if 'timm' in sys.modules:
    _register_models()
else:
    sys.meta_path.insert(0, _TIMM_FINDER)
