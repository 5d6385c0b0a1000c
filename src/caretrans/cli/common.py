"""Helpers shared by the sub-commands."""
import difflib
from typing import Any, Dict, Iterable


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


def checkpoint_shape(checkpoint: Any, classifier: str = 'head.fc') -> Dict[str, int]:
    """num_classes (of its `classifier`) and in_chans (of its stem conv) of a read checkpoint, those it holds."""
    from ..models.care import unwrap_state_dict

    state_dict = unwrap_state_dict(checkpoint)
    out = {}
    head = state_dict.get(f'{classifier}.weight')
    if head is not None:
        out['num_classes'] = head.shape[0]
    stem = state_dict.get('stem.conv.weight', state_dict.get('stem.0.weight'))
    if stem is not None and stem.ndim == 4:
        out['in_chans'] = stem.shape[1]
    return out
