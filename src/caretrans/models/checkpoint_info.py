"""What a checkpoint holds: the model it was recorded with, its class count, input channels and recipe."""
import dataclasses
import json
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from .care import rename_released
from .card import HF_CONFIG, ModelCard
from .checkpoint import CheckpointError, PathLike, card_of, read_checkpoint, unwrap_state_dict, weights_info

__all__ = ['CheckpointInfo', 'describe', 'recorded_recipe', 'run_weights', 'RUN_WEIGHTS']

RECIPE_FILE = 'recipe.yaml'  # written beside a run's checkpoints
HF_WEIGHTS = 'model.safetensors'  # beside config.json in timm's Hugging Face layout (save_for_hf)
# The weights a run folder offers, best first: a classification run's best weights, a dense run's (or a
# save_for_hf folder's) weights, and the training state.
RUN_WEIGHTS = ('best.safetensors', HF_WEIGHTS, 'last.pth')


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What `describe` found in a checkpoint; None where it holds no answer."""
    path: Path
    model: Optional[str]  # the timm name given to describe, else the one recorded with the weights
    num_classes: Optional[int]  # rows of the classifier
    in_chans: Optional[int]  # input channels of the first conv
    img_size: Optional[int]  # the training image size, if the recipe records one
    recipe: Dict[str, Any]  # the training recipe inside the checkpoint, else the one beside it
    card: Optional[ModelCard] = None  # the model card recorded with the weights

    def model_kwargs(self) -> Dict[str, int]:
        """The `timm.create_model` arguments the weights fix: num_classes and in_chans, those known."""
        return {k: v for k, v in (('num_classes', self.num_classes), ('in_chans', self.in_chans)) if v is not None}


def describe(path: PathLike, model: Optional[str] = None) -> CheckpointInfo:
    """Read a checkpoint (ours, released or safetensors; never unpickling code) and say what it holds.

    The classifier and first conv are looked up by the names in the pretrained_cfg of `model` (else of
    the model recorded in the checkpoint, else CARE's), in the released names too. A `save_for_hf` folder
    (or its model.safetensors) is described by its config.json.
    """
    path = Path(path)
    if path.is_dir() and (path / HF_CONFIG).is_file():
        path = path / HF_WEIGHTS
    checkpoint = read_checkpoint(path)
    card = card_of(checkpoint, path) or hf_card(path)
    recipe = recorded_recipe(checkpoint, path)[0] or {}
    recorded = (checkpoint.get('model_name') if isinstance(checkpoint, dict) else None) or weights_info(path).get('model_name')
    model = (model or (card.architecture if card is not None else None)
             or (recorded if isinstance(recorded, str) else None) or _str_or_none(recipe.get('model')))
    classifier, first_conv = _layer_names(model)
    state_dict = unwrap_state_dict(checkpoint, str(path))
    head, stem = _find(state_dict, f'{classifier}.weight'), _find(state_dict, f'{first_conv}.weight')
    return CheckpointInfo(
        path=path,
        model=model,
        num_classes=int(head.shape[0]) if getattr(head, 'ndim', None) == 2 else None,
        in_chans=int(stem.shape[1]) if getattr(stem, 'ndim', None) == 4 else None,
        img_size=card.img_size if card is not None else recipe.get('img_size'),
        recipe=recipe,
        card=card,
    )


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
    raise FileNotFoundError(f'{path} holds no weights (none of {", ".join(RUN_WEIGHTS)}): not a run folder')


def hf_card(weights: Path) -> Optional[ModelCard]:
    """The card of weights in timm's Hugging Face layout, from the config.json beside them; None elsewhere."""
    config = weights.parent / HF_CONFIG
    if weights.name != HF_WEIGHTS or not config.is_file():
        return None
    try:
        return ModelCard.from_hf_config(json.loads(config.read_text(encoding='utf-8')), str(config))
    except ValueError as e:  # json.JSONDecodeError is one
        raise CheckpointError(f'{config}: {e}') from None


def recorded_recipe(checkpoint: Any, path: Path) -> Tuple[Optional[Dict[str, Any]], Path]:
    """The recipe saved inside a training checkpoint read from `path`, else the recipe.yaml of its run folder,
    as a plain dict (None if neither), and where it was read; an unreadable recipe.yaml is a CheckpointError
    naming it."""
    inside = checkpoint.get('recipe') if isinstance(checkpoint, dict) else None
    if isinstance(inside, dict):
        return inside, path
    beside = path.parent / RECIPE_FILE
    if not beside.is_file():
        return None, beside
    import yaml

    try:
        recipe = yaml.safe_load(beside.read_text(encoding='utf-8'))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CheckpointError(f'{beside}, the recipe beside {path.name}, is not a readable YAML file: '
                              f'{str(e).splitlines()[0]}') from None
    if not isinstance(recipe, dict):
        raise CheckpointError(f'{beside} does not hold a mapping of recipe fields')
    return recipe, beside


def _str_or_none(value: Any) -> Optional[str]:
    return value if isinstance(value, str) else None


def _layer_names(model: Optional[str]):
    """(classifier, first conv) of a timm model name, from its pretrained_cfg; CARE's for an unknown name."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model) if model else None
    classifier = (cfg.classifier if cfg is not None else None) or 'head.fc'
    classifier = classifier if isinstance(classifier, str) else classifier[0]
    return classifier, (cfg.first_conv if cfg is not None else None) or 'stem.conv'


def _find(state_dict: Dict[str, Any], key: str):
    """The tensor at `key`, also where a released CARE checkpoint names it otherwise."""
    if key in state_dict:
        return state_dict[key]
    renamed = {rename_released(k): v for k, v in state_dict.items()}
    return renamed.get(key)
