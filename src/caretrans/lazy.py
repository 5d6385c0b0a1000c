"""A package's public names imported on first use (PEP 562): importing the package loads no torch."""
import importlib
import sys
from typing import Callable, Dict, List, Tuple


def lazy_exports(package: str, exports: Dict[str, str]) -> Tuple[Callable[[str], object], Callable[[], List[str]]]:
    """`__getattr__` and `__dir__` for `package`, reading each name of `exports` from the submodule
    named beside it when it is first asked for."""
    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f'.{exports[name]}', package), name)
        raise AttributeError(f'module {package!r} has no attribute {name!r}')

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(exports))

    return __getattr__, __dir__
