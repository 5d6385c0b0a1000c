"""Mixed precision: one autocast factory for training and evaluation, and the float16 gradient scaler."""
import contextlib
import functools
from typing import Callable, Optional, Tuple

import torch

__all__ = ['autocast_factory', 'mixed_precision']

_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}


def autocast_factory(device: torch.device, dtype: Optional[str] = None) -> Callable:
    """A no-argument context factory: torch.autocast on `device`'s type in `dtype` ('bfloat16' or 'float16'),
    or, with `dtype` None, a context that changes nothing."""
    if dtype is None:
        return contextlib.nullcontext
    if dtype not in _DTYPES:
        raise ValueError(f"autocast dtype must be 'bfloat16' or 'float16', got {dtype!r}")
    return functools.partial(torch.autocast, device_type=torch.device(device).type, dtype=_DTYPES[dtype])


def mixed_precision(dtype: Optional[str], device: torch.device) -> Tuple[Callable, Optional[torch.amp.GradScaler]]:
    """The autocast factory of a training run and, for float16 (CUDA only), the gradient scaler it needs."""
    if dtype == 'float16' and torch.device(device).type != 'cuda':
        raise ValueError('float16 autocast needs CUDA; use --amp-dtype bfloat16 on CPU')
    return autocast_factory(device, dtype), torch.amp.GradScaler('cuda') if dtype == 'float16' else None
