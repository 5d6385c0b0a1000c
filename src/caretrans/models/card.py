"""The model card: what a trained model needs to be used, recorded with every weight file the project writes.

A card names the architecture and the arguments that rebuild it, the labels in output order, and the
evaluation preprocessing the trainer used (input size, interpolation, crop, mean/std). Applied to a
model it sets `pretrained_cfg`, so that timm's `resolve_data_config(model=m)` and `create_transform`
give exactly that transform.
"""
import dataclasses
import json
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch.nn as nn

__all__ = ['ModelCard', 'TASKS', 'CARD_KEY', 'HF_CONFIG']

TASKS = ('classification', 'det', 'seg')
# The key under which a card is stored: safetensors metadata (JSON text), a training state's dict entry,
# an export's metadata.
CARD_KEY = 'card'
INTERPOLATIONS = ('nearest', 'bilinear', 'bicubic', 'box', 'hamming', 'lanczos')
# timm's Hugging Face layout: config.json beside model.safetensors (timm.models.save_for_hf).
HF_CONFIG = 'config.json'
# pretrained_cfg entries that describe the released weights, not weights trained here.
RELEASE_ONLY = ('tag', 'notes', 'license', 'hf_hub_id', 'hf_hub_filename', 'url', 'file')
# Factory arguments that timm records but that do not change the weights' layout.
_TRAINING_ONLY_ARGS = ('num_classes', 'in_chans', 'pretrained', 'drop_rate', 'drop_path_rate')


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Architecture, labels and preprocessing of trained weights."""

    architecture: str                          # timm model name (the backbone's, for det and seg)
    num_classes: int                           # model outputs (det: categories + background)
    label_names: Tuple[str, ...]               # one per output, in output order
    input_size: Tuple[int, int, int]           # (in_chans, height, width) of the evaluation input
    interpolation: str = 'bicubic'
    crop_pct: float = 0.875
    crop_mode: str = 'center'
    mean: Tuple[float, ...] = (0.485, 0.456, 0.406)
    std: Tuple[float, ...] = (0.229, 0.224, 0.225)
    dataset: str = ''                          # what the weights were trained on
    task: str = 'classification'
    model_args: Dict[str, Any] = dataclasses.field(default_factory=dict)  # further arguments that rebuild the model

    def __post_init__(self):
        for name in ('label_names', 'input_size', 'mean', 'std'):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if not isinstance(self.architecture, str) or not self.architecture:
            problems.append('architecture must be a model name')
        if self.task not in TASKS:
            problems.append(f'task {self.task!r} is not one of {", ".join(TASKS)}')
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            problems.append(f'num_classes {self.num_classes!r} is not a positive integer')
        elif len(self.label_names) != self.num_classes or not all(isinstance(n, str) for n in self.label_names):
            problems.append(f'{len(self.label_names)} label name(s) for {self.num_classes} classes')
        elif len(set(self.label_names)) != len(self.label_names):
            problems.append('label names repeat')
        if len(self.input_size) != 3 or not all(isinstance(v, int) and v > 0 for v in self.input_size):
            problems.append(f'input_size {self.input_size!r} is not (channels, height, width)')
        elif not len(self.mean) == len(self.std) == self.in_chans:
            problems.append(f'mean/std have {len(self.mean)}/{len(self.std)} value(s) for {self.in_chans} channel(s)')
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in self.mean + self.std) \
                or any(s <= 0 for s in self.std if isinstance(s, (int, float))):
            problems.append('mean/std must be finite numbers, std positive')
        if self.interpolation not in INTERPOLATIONS:
            problems.append(f'interpolation {self.interpolation!r} is not one of {", ".join(INTERPOLATIONS)}')
        if not isinstance(self.crop_pct, (int, float)) or not 0 < self.crop_pct <= 1:
            problems.append(f'crop_pct {self.crop_pct!r} is not in (0, 1]')
        if problems:
            raise ValueError('invalid model card: ' + '; '.join(problems))

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    @property
    def img_size(self) -> int:
        """The evaluation input's side (its height; cards of this project are square)."""
        return self.input_size[1]

    def data_config(self) -> Dict[str, Any]:
        """timm's data config (what `resolve_data_config` returns): `create_transform(**card.data_config())`
        is the evaluation transform."""
        return dict(input_size=self.input_size, interpolation=self.interpolation, mean=self.mean, std=self.std,
                    crop_pct=self.crop_pct, crop_mode=self.crop_mode)

    def pretrained_cfg(self, base: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
        """`base` (a model's pretrained_cfg) with this card's classes, labels and preprocessing, and without
        what describes released weights (tag, notes, licence, source): save_for_hf writes it to config.json."""
        cfg = {k: v for k, v in (base or {}).items() if k not in RELEASE_ONLY}
        cfg.update(self.data_config(), num_classes=self.num_classes, label_names=self.label_names)
        if self.dataset:
            cfg['description'] = f'{self.architecture} trained on {self.dataset} ({self.task})'
        cfg.pop('test_input_size', None)  # the card's size is the evaluation size
        cfg.pop('test_crop_pct', None)
        if tuple(cfg.get('input_size', ())) != tuple((base or {}).get('input_size', ())):
            cfg['pool_size'] = None
        return cfg

    def apply(self, model: nn.Module) -> nn.Module:
        """Set `model.pretrained_cfg` from the card (timm's resolve_data_config reads it); returns the model."""
        model.pretrained_cfg = self.pretrained_cfg(getattr(model, 'pretrained_cfg', None))
        return model

    def model_kwargs(self) -> Dict[str, Any]:
        """`timm.create_model(card.architecture, **card.model_kwargs())` rebuilds a classifier of these weights."""
        return dict(self.model_args, num_classes=self.num_classes, in_chans=self.in_chans)

    def to_dict(self) -> Dict[str, Any]:
        """Plain values (lists for tuples): JSON, YAML and `torch.load(weights_only=True)` read them back."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, values: Any, source: str = 'model card') -> 'ModelCard':
        """A card from `to_dict`'s output; a ValueError naming `source` for anything else."""
        if not isinstance(values, dict):
            raise ValueError(f'{source}: a model card is a mapping, not a {type(values).__name__}')
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - names)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in values and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if unknown or missing:
            raise ValueError(f'{source}: not a model card of this version (unknown fields: {unknown or "none"}; '
                             f'missing: {missing or "none"})')
        try:
            return cls(**values)
        except (TypeError, ValueError) as e:
            raise ValueError(f'{source}: {e}') from None

    @classmethod
    def from_json(cls, text: str, source: str = 'model card') -> 'ModelCard':
        try:
            values = json.loads(text)
        except (TypeError, ValueError) as e:
            raise ValueError(f'{source}: the model card is not valid JSON: {e}') from None
        return cls.from_dict(values, source)

    @classmethod
    def from_hf_config(cls, config: Any, source: str = HF_CONFIG) -> 'ModelCard':
        """The card of a timm Hugging Face config.json (what `save_for_hf` writes): the card saved whole
        under CARD_KEY (`save_for_hf(..., model_config=card.hf_model_config())`), else one read from
        timm's own fields (architecture, classes, labels, preprocessing, model arguments)."""
        if not isinstance(config, dict):
            raise ValueError(f'{source}: a model config is a mapping, not a {type(config).__name__}')
        if CARD_KEY in config:
            return cls.from_dict(config[CARD_KEY], source)
        cfg = config.get('pretrained_cfg') if isinstance(config.get('pretrained_cfg'), dict) else config
        try:
            num_classes = int(config.get('num_classes', cfg.get('num_classes')))
            labels = config.get('label_names', cfg.get('label_names')) or [str(i) for i in range(num_classes)]
            if isinstance(labels, dict):  # timm allows {index: name}
                labels = [labels.get(str(i), labels.get(i, str(i))) for i in range(num_classes)]
            args = {k: v for k, v in (config.get('model_args') or {}).items() if k not in _TRAINING_ONLY_ARGS}
            return cls(architecture=config.get('architecture') or cfg.get('architecture'), num_classes=num_classes,
                       label_names=tuple(labels), input_size=tuple(cfg['input_size']),
                       **{k: cfg[k] for k in ('interpolation', 'crop_pct', 'crop_mode', 'mean', 'std') if k in cfg},
                       model_args=args)
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f'{source}: not a timm model config with classes and preprocessing: {e}') from None

    def hf_model_config(self) -> Dict[str, Any]:
        """`model_config` for timm's `save_for_hf`/`push_to_hf_hub`: the whole card kept in config.json
        beside timm's fields (which hold its preprocessing and labels already)."""
        return {CARD_KEY: self.to_dict()}

    @classmethod
    def for_classifier(cls, architecture: str, label_names: Sequence[str], img_size: int, in_chans: int,
                       mean: Sequence[float], std: Sequence[float], crop_pct: float, interpolation: str = 'bicubic',
                       dataset: str = '', **model_args: Any) -> 'ModelCard':
        """The card of a classifier trained on `label_names` at `img_size` with timm's evaluation transform."""
        return cls(architecture=architecture, num_classes=len(label_names), label_names=tuple(label_names),
                   input_size=(in_chans, img_size, img_size), interpolation=interpolation, crop_pct=crop_pct,
                   mean=tuple(mean), std=tuple(std), dataset=dataset, model_args=model_args)
