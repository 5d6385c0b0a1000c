"""A trained detector or segmenter from its run folder alone, and its evaluation.

The model card recorded with the weights (model.safetensors metadata, last.pth's `card` entry) names the
task, the backbone and the recipe fields that rebuild the model, the outputs' labels and the evaluation
preprocessing; nothing else is needed to predict. Validation adds the data (the run's recipe, or --data).
"""
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torchvision.transforms import v2

from ..models.card import ModelCard
from ..models.checkpoint import CheckpointError, card_of, read_checkpoint, require_finite, weights_info
from ..models.checkpoint_info import RECIPE_FILE, recorded_recipe, run_weights
from ..runtime.distributed import cleanup_distributed, setup_distributed
from . import data as D
from .recipe import DenseRecipe
from .tasks import create_dense_model, make_task

__all__ = ['DenseRun', 'load_dense_run', 'recipe_from_card', 'input_transform', 'evaluate_checkpoint']

_TASK_WORDS = {'det': 'detection', 'seg': 'segmentation', 'classification': 'classification'}
_HEADS = {'det': 'Mask R-CNN', 'seg': 'Semantic FPN'}


class DenseRun(NamedTuple):
    """A trained dense model, ready to predict: `model(transform(image))` (det: `model([transform(image)])`)."""
    model: nn.Module                   # in eval mode
    transform: Callable[[Any], torch.Tensor]  # PIL image -> the model's input
    labels: Tuple[str, ...]            # the outputs' names (det: label 0 is '__background__')
    card: ModelCard
    recipe: Optional[DenseRecipe]      # the training recipe, where the run records one (its data, splits)
    path: Path                         # the weights file read


def recipe_from_card(card: ModelCard, **fields: Any) -> DenseRecipe:
    """A recipe that builds the model of a dense card (its task, backbone, model fields and classes), with `fields`."""
    values = dict(task=card.task, model=card.architecture, **card.model_args)
    if card.task == 'seg':
        values['num_classes'] = card.num_classes
    return dataclasses.replace(DenseRecipe.from_dict(values), **fields)


def input_transform(card: ModelCard) -> Callable[[Any], torch.Tensor]:
    """PIL image -> model input, as the model was evaluated: Mask R-CNN takes [0, 1] images and resizes and
    normalises them itself; Semantic FPN takes the evaluation transform's resized, normalised image."""
    if card.task == 'seg':
        recipe = recipe_from_card(card)
        to_input = D.SegmentationEvalTransform(recipe.min_size, recipe.max_size, card.mean, card.std).to_input
    else:
        to_input = v2.ToDtype(torch.float32, scale=True)
    return v2.Compose([v2.ToImage(), to_input, v2.ToPureTensor()])


def load_dense_run(path, task: Optional[str] = None, device=None, action: str = 'predict') -> DenseRun:
    """The model of a det or seg run folder (or its model.safetensors / last.pth), rebuilt from its card.

    With `task` ('det' or 'seg'), a checkpoint of another task is refused, naming what it is; so is a
    classification model, for any `task` (`action` is the command the refusal suggests). Runs saved
    before model cards are rebuilt from their recipe and data."""
    path = run_weights(path)
    state = read_checkpoint(path)
    card = card_of(state, path)
    recipe_values, recipe_source = recorded_recipe(state, path)
    found = card.task if card is not None else _task_without_card(path, recipe_values)
    if found != task and (found not in ('det', 'seg') or task is not None):
        raise ValueError(_not_this_task(path, found, task, card, recipe_values, action))
    recipe = _dense_recipe(recipe_values, recipe_source, found)
    if card is None:  # saved before the model card: the recipe and its data rebuild and name the model
        if recipe is None:
            raise CheckpointError(f'{path} has no model card and no recipe (inside, or {RECIPE_FILE} beside it)')
        old = make_task(dataclasses.replace(recipe, backbone_checkpoint=None))
        model = old.build_model()
        card = old.card(model)
    else:
        try:
            model = create_dense_model(recipe_from_card(card), card.num_classes)
        except ValueError as e:
            raise CheckpointError(f'{path}: its model card does not describe a model: {e}') from None
    weights = state['model'] if isinstance(state, dict) and isinstance(state.get('model'), dict) else state
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f'{path} does not fit the {_TASK_WORDS[card.task]} model of its model card: '
                              f'{str(e).splitlines()[0]}') from None
    require_finite(model, path)
    model.eval().to(device or 'cpu')
    return DenseRun(model, input_transform(card), card.label_names, card, recipe, path)


def _task_without_card(path: Path, recipe_values: Optional[Dict[str, Any]]) -> Optional[str]:
    """What a checkpoint without a card was trained for: the task its weights or recipe record; a recipe
    without a task, or weights recording a model and no task, are classification's."""
    info = weights_info(path)
    task = info.get('task') or (recipe_values or {}).get('task')
    if task in ('det', 'seg'):
        return task
    return 'classification' if recipe_values is not None or 'model_name' in info else None


def _dense_recipe(values: Optional[Dict[str, Any]], source: Path, task: str) -> Optional[DenseRecipe]:
    """The recorded recipe of a det or seg run (a file without `task` takes the checkpoint's)."""
    if values is None:
        return None
    try:
        return DenseRecipe.from_dict(dict(values, task=values.get('task', task)))
    except ValueError as e:
        raise ValueError(f'{source}: {e}') from None


def _not_this_task(path: Path, found: Optional[str], task: Optional[str], card: Optional[ModelCard],
                   recipe_values: Optional[Dict[str, Any]], action: str) -> str:
    """The refusal of a checkpoint that is not of `task`: what it is, and the command that takes it."""
    wanted = f'a {_TASK_WORDS[task]}' if task else 'a detection or segmentation'
    if found is None:
        return (f'{path} has no model card and no recipe: it is not a caretrans detection or segmentation run '
                f'(its weights alone do not say what model they are)')
    model = card.architecture if card is not None else (recipe_values or {}).get('model') or weights_info(path).get(
        'model_name', '?')
    classes = f', {card.num_classes} classes' if card is not None else ''
    what = f'{_HEADS[found]} on {model}' if found in _HEADS else model
    command = f'caretrans {found} {action}' if found in _HEADS else f'caretrans {action}'
    return (f'{path} is a {_TASK_WORDS[found]} model ({what}{classes}), not {wanted} one: use `{command}`')


def evaluate_checkpoint(checkpoint, recipe: Optional[DenseRecipe] = None, device: Optional[str] = None,
                        task: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Dict[str, object]:
    """Box/mask AP or mIoU (percent, per class by name) of a run folder, its model.safetensors or last.pth.

    The model is the card's (`load_dense_run`); the data is `recipe`'s, else the run's recipe, with
    `overrides` (data, val_split, batch_size, workers) applied; a card and `overrides` naming the data
    suffice for weights alone. A checkpoint of another task than `task` is refused."""
    from .train import _autocast, _eval_loader

    ctx = setup_distributed(device)
    try:
        run = load_dense_run(checkpoint, task=task, device=ctx.device, action='validate')
        recipe = recipe or run.recipe
        if recipe is None and 'data' in (overrides or {}):
            recipe = recipe_from_card(run.card)
        if recipe is None:
            raise ValueError(f'{run.path}: no recipe inside and no {RECIPE_FILE} beside it; give --recipe or --data')
        # The data and evaluation settings are the recipe's, the model (and the classes the data is checked
        # against) the card's.
        model_fields = {k: v for k, v in dataclasses.asdict(recipe_from_card(run.card)).items()
                        if k in ('task', 'model', 'num_classes') or k in run.card.model_args}
        recipe = dataclasses.replace(recipe, **(overrides or {}), **model_fields)
        # Only the evaluated split is read; the task opens a training split too, which it stands in for, so
        # that validating needs no training data.
        recipe = dataclasses.replace(recipe, train_split=recipe.val_split)
        evaluated = make_task(recipe)
        return evaluated.evaluate(run.model, _eval_loader(evaluated, ctx, recipe), ctx, _autocast(recipe, ctx),
                                  labels=run.labels)
    finally:
        cleanup_distributed()
