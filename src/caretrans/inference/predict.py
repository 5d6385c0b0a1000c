"""A classification run's model, transform and labels from its folder alone, and batched top-k predictions."""
import dataclasses
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..data.images import UnreadableImageError, read_image
from ..models.checkpoint import CheckpointError, load_checkpoint, require_finite, weights_info
from ..models.checkpoint_info import describe, run_weights

__all__ = ['Prediction', 'load_run', 'run_task', 'predict_images']

PathLike = Union[str, Path]
@dataclasses.dataclass(frozen=True)
class Prediction:
    """The top-k (label, probability) of one image, best first; or, for an image that cannot be read, `error`."""
    path: str
    top: Tuple[Tuple[str, float], ...] = ()
    error: Optional[str] = None


def load_run(path: PathLike, device: Union[str, torch.device] = 'cpu') -> Tuple[nn.Module, Callable, List[str]]:
    """(model, transform, labels) of a run: `path` is its folder, one of its weight files, or a save_for_hf
    folder. The model is built and loaded from the weights' model card, in eval mode on `device`;
    `transform` is the trainer's evaluation transform (a PIL image to a tensor, timm's create_transform of
    the card's data config); labels are the class names in output order. A detection or segmentation run
    gives its Mask R-CNN or Semantic FPN, and the transform that makes its input from a PIL image
    (caretrans.dense.load_dense_run)."""
    import timm
    from timm.data import create_transform, resolve_data_config

    weights = run_weights(path)
    info = describe(weights)
    card = info.card
    task = run_task(weights, info)
    if task in ('det', 'seg'):  # dense runs have their own loader (and `caretrans det/seg predict`)
        from ..dense.run import load_dense_run

        run = load_dense_run(weights, task=task, device=device)
        return run.model, run.transform, list(run.labels)
    if card is None:
        raise CheckpointError(f'{weights} records no model card (labels and preprocessing): it was not written by '
                              'caretrans train, or by a version before cards were recorded')
    model = timm.create_model(card.architecture, **card.model_kwargs())
    load_checkpoint(model, weights)
    require_finite(model, weights)
    card.apply(model)  # a save_for_hf folder's card comes from its config.json, not from the weights file
    model = model.eval().to(device)
    return model, create_transform(**resolve_data_config(model=model)), list(card.label_names)


def run_task(weights: PathLike, info=None) -> str:
    """'classification', 'det' or 'seg': what the weights at `weights` are, by their model card, else the
    task recorded with them or in their run's recipe (`info`: their `describe`, if already read)."""
    info = info or describe(weights)
    if info.card is not None:
        return info.card.task
    return weights_info(weights).get('task') or info.recipe.get('task') or 'classification'


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
