"""Safe checkpoint reading, validation against a model, and atomic writing."""
import contextlib
import contextvars
import errno
import glob
import hashlib
import os
import pickle
import shutil
import stat
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .card import CARD_KEY, ModelCard

__all__ = ['CheckpointError', 'read_checkpoint', 'unwrap_state_dict', 'match_state_dict', 'filter_state_dict',
           'load_checkpoint', 'load_weights', 'save_atomic', 'atomic_file', 'save_weights', 'weights_info',
           'read_card', 'tensor_checksum', 'require_finite',
           'card_of']

PathLike = Union[str, os.PathLike]
# A timm pretrained filter: filter_fn(checkpoint, model) -> the state dict to load.
FilterFn = Callable[[Any, nn.Module], Dict[str, torch.Tensor]]

# timm calls a pretrained filter as filter_fn(state_dict, model), so a filter takes no `strict` nor the
# file's name: load_checkpoint hands both to match_state_dict through this context variable instead.
_LOADING: contextvars.ContextVar = contextvars.ContextVar('caretrans_checkpoint_loading', default=(True, 'checkpoint'))


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or does not fit the model it is loaded into."""


def read_checkpoint(path: PathLike) -> Any:
    """Read a safetensors file or a `torch.save`d object without running any pickled code; the tensors'
    checksum, where `save_atomic` recorded one, is verified (a CheckpointError if they changed)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f'checkpoint {path} does not exist or is not a file')
    with open(path, 'rb') as f:
        head = f.read(8)
    if path.suffix == '.safetensors':
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            checkpoint = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f'{path} is not a readable safetensors file: {e}') from e
        _verify(checkpoint, _safetensors_metadata(path).get(CHECKSUM_KEY), path)
        return checkpoint
    if not (head[:4] == b'PK\x03\x04' or head[:1] == b'\x80'):  # zip archive or legacy pickle
        raise CheckpointError(f'{path} is not a PyTorch checkpoint (neither a torch.save archive nor safetensors)')
    try:
        checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f'{path} holds Python objects other than tensors; refusing to unpickle it '
            f'(only weights_only checkpoints are loaded): {str(e).splitlines()[0]}') from e
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f'{path} is truncated or corrupt: {e}') from e
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get(CHECKSUM_KEY), str):
        _verify(checkpoint, checkpoint.pop(CHECKSUM_KEY), path)
    return checkpoint


# save_atomic records a SHA-256 of every tensor it writes (with its place, dtype and shape): bytes changed
# in place leave a file that still loads, and would go on to train or predict from garbage.
CHECKSUM_KEY = 'tensors_sha256'


def tensor_checksum(obj: Any) -> str:
    """SHA-256 of every tensor in `obj` (nested dicts, lists and tuples), in a fixed order."""
    digest = hashlib.sha256()

    def visit(value: Any, place: str):
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            digest.update(f'{place}|{t.dtype}|{tuple(t.shape)}|'.encode())
            if t.numel():
                digest.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if key != CHECKSUM_KEY:
                    visit(value[key], f'{place}/{key}')
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f'{place}/{i}')

    visit(obj, '')
    return digest.hexdigest()


def _verify(checkpoint: Any, recorded: Optional[str], path: Path):
    if recorded is not None and tensor_checksum(checkpoint) != recorded:
        raise CheckpointError(f'{path} is corrupt: its tensors no longer match the checksum recorded when it was '
                              'saved (changed on disk after it was written); use another copy or checkpoint')


_WRAPPER_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')


def unwrap_state_dict(checkpoint: Any, source: Optional[str] = None) -> Dict[str, Any]:
    """Find the state dict inside a training checkpoint and strip DDP / compile prefixes."""
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f'{loading_source(source)}: expected a state dict, got a {type(checkpoint).__name__}')
    for key in _WRAPPER_KEYS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    out = {}
    for k, v in checkpoint.items():
        for prefix in ('module.', '_orig_mod.'):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def loading_source(source: Optional[str] = None) -> str:
    """`source`, else the name of the file load_checkpoint is loading (for messages)."""
    return _LOADING.get()[1] if source is None else source


def match_state_dict(
        state_dict: Dict[str, torch.Tensor],
        model: nn.Module,
        head_keys: Iterable[str] = (),
        source: Optional[str] = None,
        strict: Optional[bool] = None,
) -> Dict[str, torch.Tensor]:
    """Check that `state_dict` fits `model` key by key and shape by shape; return what fits.

    Head tensors (`head_keys`) whose shape differs, e.g. another class count, are dropped
    with a warning so the model keeps its freshly initialised classifier, as timm does.
    Anything else that does not fit (missing, unexpected or mis-shaped tensors) raises a
    CheckpointError naming the keys when `strict`, else is left out with a warning naming them.
    `strict=None` and `source=None` are load_checkpoint's (True and 'checkpoint' outside it). Tensors
    holding NaN or inf are named in a warning.
    """
    strict = _LOADING.get()[0] if strict is None else strict
    source = loading_source(source)
    expected = model.state_dict()
    head_keys = set(head_keys)
    out, dropped, mismatched = {}, [], []
    for k, v in state_dict.items():
        if k not in expected:
            if k in head_keys:
                dropped.append(f'{k}: not in the model')
            continue
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f'{source}: entry {k!r} is a {type(v).__name__}, not a tensor')
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
        message = f'{source} does not match {arch} (another variant or class count?): ' + ' | '.join(problems)
        if strict:
            raise CheckpointError(message)
        warnings.warn(f'{message}; loaded the {len(out)} tensor(s) that fit (strict=False)', stacklevel=3)
    if dropped:
        warnings.warn(
            f'{source}: classifier shapes differ from the model, heads left at their initialisation: '
            + '; '.join(dropped), stacklevel=3)
    _warn_non_finite(out, source)
    return out


def require_finite(model: nn.Module, source: PathLike):
    """Refuse (CheckpointError) a model whose weights hold NaN or infinite values, naming `source`: every
    output would be NaN (e.g. a run saved as it diverged). Loading only warns, for fine-tuning's sake;
    evaluating and predicting refuse."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f'{source} holds NaN or infinite values in {len(bad)} tensor(s) ({", ".join(bad[:3])}'
                              f'{", ..." if len(bad) > 3 else ""}): it cannot be evaluated; use an earlier checkpoint')


def _warn_non_finite(state_dict: Dict[str, torch.Tensor], source: str):
    """Warn, naming them, about tensors with NaN or inf values: such a model outputs NaN."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        warnings.warn(f'{source}: {len(bad)} tensor(s) hold NaN or inf values, so the model will output NaN: '
                      + ', '.join(bad[:10]) + (', ...' if len(bad) > 10 else ''), stacklevel=4)


def _classifier_keys(model: nn.Module) -> List[str]:
    """The weight and bias names of a timm model's classifier(s), from its pretrained_cfg."""
    classifiers = getattr(model, 'pretrained_cfg', {}).get('classifier') or ()
    classifiers = (classifiers,) if isinstance(classifiers, str) else classifiers
    return [f'{c}.{p}' for c in classifiers for p in ('weight', 'bias')]


def filter_state_dict(checkpoint: Any, model: nn.Module) -> Dict[str, torch.Tensor]:
    """The default filter: the unwrapped state dict, checked against the model (its classifier may differ)."""
    return match_state_dict(unwrap_state_dict(checkpoint), model, head_keys=_classifier_keys(model))


def load_checkpoint(model: nn.Module, path: PathLike, strict: bool = True,
                    filter_fn: Optional[FilterFn] = None, label_names: Optional[Sequence[str]] = None) -> nn.Module:
    """Load one of our checkpoints (safetensors or torch.save) or a released one into `model`.

    `filter_fn(checkpoint, model)` converts the checkpoint to the model's names, as for
    `timm.models.load_checkpoint`; by default it is the model's own `checkpoint_filter_fn` (CARE models
    read the released names with it), else `filter_state_dict`. `strict=True` raises a CheckpointError
    on missing, unexpected or mis-shaped tensors; `strict=False` loads the tensors that fit and warns
    naming the others. Either way a classifier of another class count is left at its initialisation
    with a warning, as timm does. `label_names` (the model's classes in output order) matches the
    classifier by name, as `load_weights` does.
    """
    load_weights(model, path, strict, filter_fn, label_names)
    return model


def load_weights(model: nn.Module, path: PathLike, strict: bool = True, filter_fn: Optional[FilterFn] = None,
                 label_names: Optional[Sequence[str]] = None) -> str:
    """`load_checkpoint`, saying in one line what was loaded: the tensor count and what became of the classifier.

    With `label_names`, the classifier is matched by name: a checkpoint whose model card names all of
    them gives its rows for them (reordered, a subset kept); one whose card lacks any leaves the
    classifier fresh, as does one without a card whose class count differs (same count: kept by position).
    The checkpoint's card describes the model afterwards (`ModelCard.apply`) when its classes are the model's.
    """
    filter_fn = filter_fn or getattr(model, 'checkpoint_filter_fn', None) or filter_state_dict
    checkpoint = read_checkpoint(path)
    card = card_of(checkpoint, path)
    head_note = None
    if label_names is not None and card is not None:
        checkpoint, head_note = _classifier_by_name(checkpoint, model, card, list(label_names), str(path))
    token = _LOADING.set((strict, str(path)))
    try:
        state_dict = filter_fn(checkpoint, model)
    finally:
        _LOADING.reset(token)
    model.load_state_dict(state_dict, strict=False)  # what did not fit is checked by the filter
    if card is not None and card.num_classes == getattr(model, 'num_classes', None) \
            and (label_names is None or tuple(label_names) == card.label_names):
        card.apply(model)  # its labels and preprocessing describe this model now
    if head_note is None:
        head = [k for k in _classifier_keys(model) if k in model.state_dict()]
        if not head:
            head_note = 'no classifier'
        elif not all(k in state_dict for k in head):
            head_note = 'classifier reset (another class count)'
        elif label_names is not None:
            head_note = 'classifier kept by position (the checkpoint records no label names)'
        else:
            head_note = 'classifier kept'
    return f'loaded {len(state_dict)} tensors from {path}; {head_note}'


def _classifier_by_name(checkpoint: Any, model: nn.Module, card: ModelCard, label_names: List[str], source: str):
    """(state dict, note): the classifier rows of a checkpoint with a card, picked by label name for the
    model's `label_names`, or dropped (the model's classifier stays fresh) when the card lacks a name."""
    state_dict = dict(unwrap_state_dict(checkpoint, source))
    keys = [k for k in _classifier_keys(model) if k in state_dict]
    missing = [name for name in label_names if name not in card.label_names]
    fits = all(state_dict[k].shape[0] == card.num_classes for k in keys)
    if missing or not fits or getattr(model, 'num_classes', None) != len(label_names):
        for k in keys:
            del state_dict[k]
        if missing:
            return state_dict, (f"classifier reset (the checkpoint's classes lack {', '.join(missing[:5])}"
                                + (', ...' if len(missing) > 5 else '') + ')')
        return state_dict, f'classifier reset ({len(label_names)} label names for {model.num_classes} outputs)'
    index = torch.tensor([card.label_names.index(name) for name in label_names])
    for k in keys:
        state_dict[k] = state_dict[k].index_select(0, index)
    if tuple(label_names) == card.label_names:
        return state_dict, 'classifier kept'
    return state_dict, (f'classifier kept by name ({len(label_names)} of its {card.num_classes} classes, '
                        'in the new order)')


@contextlib.contextmanager
def atomic_file(path: PathLike) -> Iterator[str]:
    """A temp file beside `path` to write; renamed over `path` when the block ends normally, removed if it raises.

    A reader never sees a half-written file: the rename is atomic on POSIX file systems. The file gets
    the permissions `open()` would give it (0o666 less the umask). Temp files of earlier writes of the
    same path, left by a process killed mid-save, are removed once this write is in place (one writer
    per path is assumed, as for a run folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f'.{path.name}.{uuid.uuid4().hex[:12]}.tmp'
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        yield str(tmp)
        os.chmod(tmp, mode)  # some writers (safetensors) set 0o600 whatever the umask
        with open(tmp, 'rb') as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f'.{glob.escape(path.name)}.*.tmp'):
        stale.unlink(missing_ok=True)


def save_atomic(obj: Any, path: PathLike, metadata: Optional[Dict[str, str]] = None) -> Path:
    """Write with torch.save (or safetensors, with its string `metadata`, for a '.safetensors' path)
    through a temp file and rename, recording the tensors' checksum (`read_checkpoint` verifies it).

    A write that fails leaves `path` as it was and raises a CheckpointError saying why (for a full disk:
    how much room the file needs)."""
    path = Path(path)
    checksum = tensor_checksum(obj)
    try:
        with atomic_file(path) as tmp:
            if path.suffix == '.safetensors':
                from safetensors.torch import save_file
                save_file({k: v.detach().contiguous() for k, v in obj.items()}, tmp,
                          metadata={**(metadata or {}), CHECKSUM_KEY: checksum})
            else:
                torch.save({**obj, CHECKSUM_KEY: checksum} if isinstance(obj, dict) else obj, tmp)
    except (OSError, RuntimeError) as e:
        raise CheckpointError(_write_failure(path, obj, e)) from e
    return path


def _write_failure(path: Path, obj: Any, error: BaseException) -> str:
    """Why writing `obj` to `path` failed, in one line; torch.save reports a full disk as a RuntimeError
    ('unexpected pos'), so free space is measured rather than read from the error."""
    need = _tensor_bytes(obj)
    kept = f'; {path} is unchanged' if path.exists() else ''
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if getattr(error, 'errno', None) == errno.ENOSPC or (free is not None and free < need * 1.1):
        room = f', {free / 2 ** 20:.0f} MB free' if free is not None else ''
        return f'no space left on {path.parent} to write {path.name} (need ~{need / 2 ** 20:.0f} MB{room}){kept}'
    reason = getattr(error, 'strerror', None) or str(error).splitlines()[0]
    return f'cannot write {path}: {reason}{kept}'


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def save_weights(model: nn.Module, path: PathLike, card: Optional[ModelCard] = None, **info: Any) -> Path:
    """A run's weights as safetensors (no pickle), atomically; `info` (model_name, epoch, ...) and the
    model `card` (as JSON under CARD_KEY) are kept in the file's string metadata, which `weights_info`
    and `read_card` read back."""
    if Path(path).suffix != '.safetensors':
        raise ValueError(f'{path}: weights are written as .safetensors')
    metadata = {k: str(v) for k, v in info.items()}
    if card is not None:
        metadata[CARD_KEY] = card.to_json()
    return save_atomic(model.state_dict(), path, metadata=metadata)


def weights_info(path: PathLike) -> Dict[str, str]:
    """The `info` that `save_weights` recorded in a safetensors file ({} for other files or none); the
    card and the checksum are read by `read_card` and `read_checkpoint`."""
    return {k: v for k, v in _safetensors_metadata(path).items() if k not in (CARD_KEY, CHECKSUM_KEY)}


def _safetensors_metadata(path: PathLike) -> Dict[str, str]:
    path = Path(path)
    if path.suffix != '.safetensors':
        return {}
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework='pt') as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f'{path} is not a readable safetensors file: {e}') from e


def card_of(checkpoint: Any, path: PathLike) -> Optional[ModelCard]:
    """The model card recorded with a checkpoint already read from `path` (a training state's entry or a
    safetensors file's metadata), or None; a malformed card raises a CheckpointError naming the file."""
    values = checkpoint.get(CARD_KEY) if isinstance(checkpoint, dict) else None
    try:
        if isinstance(values, dict):
            return ModelCard.from_dict(values, str(path))
        text = _safetensors_metadata(path).get(CARD_KEY)
        return ModelCard.from_json(text, str(path)) if text is not None else None
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def read_card(path: PathLike) -> Optional[ModelCard]:
    """The model card recorded with the weights at `path`, or None."""
    return card_of(read_checkpoint(path), path)
