"""Safe checkpoint reading, validation against a model, and atomic writing."""
import contextlib
import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, Union

import torch
import torch.nn as nn

__all__ = ['CheckpointError', 'read_checkpoint', 'match_state_dict', 'load_checkpoint', 'save_atomic', 'atomic_file']

PathLike = Union[str, os.PathLike]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


def read_checkpoint(path: PathLike) -> Any:
    """Read a safetensors file or a `torch.save`d object without running any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist or is not a file')
    with open(path, 'rb') as f:
        head = f.read(8)
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{path} is not a readable safetensors file: {e}') from e
    if not (head[:4] == b'PK\x03\x04' or head[:1] == b'\x80'):  # zip archive or legacy pickle
        raise CheckpointError(f'{path} is not a PyTorch checkpoint (neither a torch.save archive nor safetensors)')
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'{path} holds Python objects other than tensors; refusing to unpickle it '
            f'(only weights_only checkpoints are loaded): {str(e).splitlines()[0]}') from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f'{path} is truncated or corrupt: {e}') from e


def match_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        head_keys: Iterable[str] = (),
        source: str = 'checkpoint',
) -> Dict[str, torch.Tensor]:
    """Check that `state_dict` fits `model` key by key and shape by shape.

    Head tensors (`head_keys`) whose shape differs, e.g. another class count, are dropped
    with a warning so the model keeps its freshly initialised classifier, as timm does.
    Anything else that does not fit raises a CheckpointError naming the keys.
    """
    expected = model.state_dict()
    head_keys = set(head_keys)
    out, dropped, mismatched = {}, [], []
    for k, v in state_dict.items():
        if k not in expected:
            if k in head_keys:
                dropped.append(f'{k}: not in the model')
            continue
        if tuple(v.shape) != tuple(expected[k].shape):
            (dropped if k in head_keys else mismatched).append(
                f'{k}: {source} {tuple(v.shape)} vs model {tuple(expected[k].shape)}')
            continue
        out[k] = v
    unexpected = sorted(k for k in state_dict if k not in expected and k not in head_keys)
    missing = sorted(k for k in expected if k not in state_dict and not k.endswith('num_batches_tracked'))
    missing = [k for k in missing if k not in head_keys]
    problems = []
    if mismatched:
        problems.append(f'{len(mismatched)} shape mismatch(es), e.g. ' + '; '.join(mismatched[:3]))
    if missing:
        problems.append(f'{len(missing)} missing key(s), e.g. ' + ', '.join(missing[:5]))
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected key(s), e.g. ' + ', '.join(unexpected[:5]))
    if problems:
        arch = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
        raise CheckpointError(
            f'{source} does not match {arch} (another variant or class count?): ' + ' | '.join(problems))
    if dropped:
        warnings.warn(
            f'{source}: classifier shapes differ from the model, heads left at their initialisation: '
            + '; '.join(dropped), stacklevel=3)
    return out


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True) -> nn.Module:
    """Load one of our checkpoints (safetensors or torch.save) or a released one into `model`."""
    from .care import CareTransformer, checkpoint_filter_fn, unwrap_state_dict

    checkpoint = read_checkpoint(path)
    if isinstance(model, CareTransformer):
        state_dict = checkpoint_filter_fn(checkpoint, model, source=str(path))
    else:
        try:
            state_dict = unwrap_state_dict(checkpoint)
        except ValueError as e:
            raise CheckpointError(f'{path}: {e}') from e
        state_dict = match_state_dict(state_dict, model, source=str(path))
    model.load_state_dict(state_dict, strict=False)
    return model


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[str]:
    """A temp file beside `path` to write; renamed over `path` when the block ends normally, removed if it raises.

    A reader never sees a half-written file: the rename is atomic on POSIX file systems.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.', suffix='.tmp')
    os.close(fd)
    try:
        yield tmp
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_atomic(obj: Any, path: PathLike) -> Path:
    """Write with torch.save (or safetensors for a '.safetensors' path) through a temp file and rename."""
    path = Path(path)
    with atomic_file(path) as tmp:
        if path.suffix == '.safetensors':
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in obj.items()}, tmp)
        else:
            torch.save(obj, tmp)
    return path
