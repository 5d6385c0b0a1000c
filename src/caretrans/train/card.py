"""The model card of a classification run: what its weights need to be used, recorded with each of them."""
from pathlib import Path
from typing import Any, Dict, Sequence

from ..models.card import ModelCard
from .recipe import Recipe

__all__ = ['classifier_card']

# The interpolation of the trainer's evaluation transform (data.loader.build_transform's default).
EVAL_INTERPOLATION = 'bicubic'


def classifier_card(recipe: Recipe, info: Dict[str, Any], img_size: int, in_chans: int,
                    classes: Sequence[str]) -> ModelCard:
    """The card of a run of `recipe` on data described by `info` (data.dataset_info), labelled by `classes`.

    A model with more outputs than classes (`--num-classes` above the data's) names the others
    '(unused N)'. The preprocessing is the trainer's evaluation transform.
    """
    num_classes = recipe.num_classes if recipe.num_classes is not None else len(classes)
    labels = list(classes) + [f'(unused {i})' for i in range(len(classes), num_classes)]
    dataset = recipe.data if recipe.data in ('fashion-mnist', 'synthetic') else str(Path(recipe.data).resolve())
    return ModelCard.for_classifier(recipe.model, labels, img_size, in_chans, info['mean'], info['std'],
                                    recipe.crop_pct, EVAL_INTERPOLATION, dataset)
