"""A classification run's model, transform and labels from its folder alone, and batched top-k predictions."""
import dataclasses
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..data.images import UnreadableImageError, read_image
from ..models.checkpoint import CheckpointError, load_checkpoint, weights_info
from ..models.checkpoint_info import HF_WEIGHTS, describe

__all__ = ['Prediction', 'run_weights', 'load_run', 'find_images', 'predict_images']

PathLike = Union[str, Path]
# The weights a run folder offers, best first: a classification run's best weights, a dense run's or a
# save_for_hf folder's weights, and the training state.
RUN_WEIGHTS = ('best.safetensors', HF_WEIGHTS, 'last.pth')


@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k (label, probability) of one image, best first; or, for an image that cannot be read, `error`."""
    path: str
    top: Tuple[Tuple[str, float], ...] = ()
    error: Optional[str] = None


def run_weights(path: PathLike) -> Path:
    """The weights of `path`: a run folder's (or a save_for_hf folder's) per RUN_WEIGHTS, or the file itself."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f'{path} does not exist: give a run folder or a weights file')
    for name in RUN_WEIGHTS:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f'{path} holds no weights (none of {", ".join(RUN_WEIGHTS)})')


def load_run(path: PathLike, device: Union[str, torch.device] = 'cpu') -> Tuple[nn.Module, Callable, List[str]]:
    """(model, transform, labels) of a classification run: `path` is its folder, one of its weight files, or
    a save_for_hf folder. The model is built and loaded from the weights' model card, in eval mode on
    `device`; `transform` is the trainer's evaluation transform (a PIL image to a tensor, timm's
    create_transform of the card's data config); labels are the class names in output order."""
    import timm
    from timm.data import create_transform, resolve_data_config

    weights = run_weights(path)
    info = describe(weights)
    card = info.card
    task = card.task if card is not None else weights_info(weights).get('task') or info.recipe.get('task')
    if task in ('det', 'seg'):  # dense runs have their own loader and predictor
        raise ValueError(f'{path} is a {task} run: use `caretrans {task} predict`')
    if card is None:
        raise CheckpointError(f'{weights} records no model card (labels and preprocessing): it was not written by '
                              'caretrans train, or by a version before cards were recorded')
    model = timm.create_model(card.architecture, **card.model_kwargs())
    load_checkpoint(model, weights)
    card.apply(model)  # a save_for_hf folder's card comes from its config.json, not from the weights file
    model = model.eval().to(device)
    return model, create_transform(**resolve_data_config(model=model)), list(card.label_names)


def _readable_suffixes() -> frozenset:
    from PIL import Image

    return frozenset(Image.registered_extensions())


def find_images(paths: Iterable[PathLike]) -> List[Path]:
    """The files named, and the files of each folder named (recursively, sorted) whose suffix PIL reads."""
    suffixes, found = _readable_suffixes(), []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob('*') if p.is_file() and p.suffix.lower() in suffixes))
        else:
            found.append(path)  # a missing file is reported as unreadable by predict_images
    return found


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def predict_images(model: nn.Module, transform: Callable, labels: Sequence[str], paths: Sequence[PathLike],
                   top_k: int = 5, batch_size: int = 32) -> Iterator[Prediction]:
    """A Prediction per path, in order, `batch_size` images a forward; an image that cannot be read gets
    its `error` instead of stopping the others."""
    if top_k < 1 or batch_size < 1:
        raise ValueError(f'top_k {top_k} and batch_size {batch_size} must be at least 1')
    top_k = min(top_k, len(labels))
    mode = 'L' if getattr(model, 'in_chans', 3) == 1 else 'RGB'
    device = next(model.parameters()).device
    for chunk in _batches(list(paths), batch_size):
        images, errors = [], {}
        for path in chunk:
            try:
                images.append(transform(read_image(path, mode)))
            except UnreadableImageError as e:
                errors[str(path)] = str(e)
        if images:
            probs = model(torch.stack(images).to(device)).float().softmax(dim=1)
            values, indices = probs.topk(top_k, dim=1)
            rows = iter(zip(values.tolist(), indices.tolist()))
        for path in chunk:
            if str(path) in errors:
                yield Prediction(str(path), error=errors[str(path)])
            else:
                p, i = next(rows)
                yield Prediction(str(path), tuple((labels[c], v) for v, c in zip(p, i)))
