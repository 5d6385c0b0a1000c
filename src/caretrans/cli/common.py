"""Helpers shared by the sub-commands."""
import difflib
from typing import Iterable


def check_model_names(names: Iterable[str]):
    """Raise a ValueError for a model name timm does not know, suggesting close matches."""
    import timm

    known = set(timm.list_models())
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f'; did you mean {", ".join(close)}?' if close else ''
            raise ValueError(f'unknown model {name!r}{hint}')


def check_at_least(args, **minimums):
    """Raise a ValueError for an option given below its minimum (options left at None are not checked)."""
    for option, minimum in minimums.items():
        value = getattr(args, option)
        if value is not None and value < minimum:
            raise ValueError(f'--{option.replace("_", "-")} {value}: expected at least {minimum}')
