"""Helpers shared by the sub-commands."""
import difflib
from typing import Iterable

import timm


def check_model_names(names: Iterable[str]):
    """Raise a ValueError for a model name timm does not know, suggesting close matches."""
    known = set(timm.list_models())
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = f'; did you mean {", ".join(close)}?' if close else ''
            raise ValueError(f'unknown model {name!r}{hint}')
