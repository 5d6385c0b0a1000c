"""The training recipe: one dataclass whose defaults are the paper's ImageNet recipe, and presets."""
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

from ..limits import MIN_INPUT_SIZE

__all__ = ['Recipe', 'PRESETS', 'load_recipe']

# The paper's learning rate is 2e-3 for a global batch of 1536 (128 x 12 GPUs), scaled linearly.
LR_BASE, LR_BASE_BATCH = 2e-3, 1536


class RecipeFields:
    """Plain-dict / YAML round trip of a recipe dataclass (tuples are lists in YAML), and one check of
    every value against its field's type and the bounds in its metadata (min/max inclusive,
    above/below exclusive, choices; ordered: a (low, high) pair), on construction and on
    `dataclasses.replace`, so that presets, YAML files and flags are checked alike."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            _check_field(f.name, getattr(self, f.name), hints[f.name], f.metadata)

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(values) - names)
        if unknown:
            raise ValueError(f'unknown recipe field(s): {", ".join(unknown)}')
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def _check_field(name: str, value: Any, annotation: Any, bounds: Dict[str, Any]):
    """Raise a ValueError naming the field, its value and what it expects, unless `value` fits."""
    if typing.get_origin(annotation) is typing.Union:  # Optional[X]
        if value is None:
            return
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        args = typing.get_args(annotation)
        kind, length = args[0], None if args[-1] is Ellipsis else len(args)
        fits = (isinstance(value, tuple) and len(value) == (length or len(value)) > 0
                and all(_fits(v, kind, bounds) for v in value)
                and not (bounds.get('ordered') and list(value) != sorted(value)))
        expected = ' '.join([f'a list of {length}' if length else 'a non-empty list of',
                             _expected(kind, bounds, plural=True)]) + (', low to high' if bounds.get('ordered') else '')
    else:
        kind = annotation
        fits, expected = _fits(value, kind, bounds), _expected(kind, bounds)
    if not fits:
        raise ValueError(f'recipe field {name}: {_show(value)} is not valid; expected {expected}'
                         + _yaml_hint(value, kind))


def _fits(value: Any, kind: type, bounds: Dict[str, Any]) -> bool:
    if kind in (int, float) and isinstance(value, bool):
        return False
    if kind is float:
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
    elif not isinstance(value, kind):
        return False
    return (('min' not in bounds or value >= bounds['min']) and ('max' not in bounds or value <= bounds['max'])
            and ('above' not in bounds or value > bounds['above'])
            and ('below' not in bounds or value < bounds['below'])
            and ('choices' not in bounds or value in bounds['choices']))


def _expected(kind: type, bounds: Dict[str, Any], plural: bool = False) -> str:
    """'an integer >= 1', 'numbers >= 0 and <= 1', "one of 'det', 'seg'"."""
    if 'choices' in bounds:
        return 'one of ' + ', '.join(repr(c) for c in bounds['choices'])
    nouns = {bool: ('true or false', 'booleans'), int: ('an integer', 'integers'), float: ('a number', 'numbers'),
             str: ('a string', 'strings')}
    limits = [f'{op} {bounds[key]}' for key, op in (('min', '>='), ('above', '>'), ('max', '<='), ('below', '<'))
              if key in bounds]
    return ' '.join([nouns[kind][plural]] + [' and '.join(limits)] * bool(limits))


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _yaml_hint(value: Any, kind: type) -> str:
    """YAML 1.1 reads `1e-3` as text: say so when a number was meant."""
    try:
        is_number_text = kind is float and isinstance(value, str) and math.isfinite(float(value))
    except ValueError:
        is_number_text = False
    return f' (YAML reads {value} as text: write it with a decimal point, e.g. 1.0e-3)' if is_number_text else ''


@dataclass
class Recipe(RecipeFields):
    """Everything that decides what a run computes. Flag names follow timm's train.py."""

    # model
    model: str = field(default='care_s0', metadata=dict(help='timm model name'))
    drop_path: float = field(default=0.1, metadata=dict(help='stochastic depth rate', min=0, below=1))
    in_chans: Optional[int] = field(default=None, metadata=dict(help="input channels (default: the data's)", min=1))
    initial_checkpoint: Optional[str] = field(default=None, metadata=dict(
        help='weights to start from (ours, released .pth.tar or safetensors); a classifier of another '
             'class count is left fresh'))
    # data
    data: str = field(default='', metadata=dict(help="'fashion-mnist', 'synthetic' or a folder with train/ and val/"))
    num_classes: Optional[int] = field(default=None, metadata=dict(help="default: the data's", min=1))
    img_size: Optional[int] = field(default=None, metadata=dict(
        help='training and evaluation input size (default: 224; low-resolution data: a multiple of 32, >= 64)',
        min=MIN_INPUT_SIZE))
    batch_size: int = field(default=128, metadata=dict(help='batch per process and micro-step', min=1))
    grad_accum_steps: int = field(default=1, metadata=dict(help='micro-steps per optimiser step', min=1))
    workers: int = field(default=4, metadata=dict(help='data-loading processes per training process', min=0))
    # augmentation and regularisation
    scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata=dict(
        help='random-resized-crop area range', above=0, max=1, ordered=True))
    hflip: float = field(default=0.5, metadata=dict(help='horizontal flip probability', min=0, max=1))
    aa: Optional[str] = field(default='rand-m9-mstd0.5-inc1', metadata=dict(help="timm auto-augment, or 'none'"))
    color_jitter: float = field(default=0.4, metadata=dict(min=0))
    reprob: float = field(default=0.25, metadata=dict(help='random erasing probability', min=0, max=1))
    crop_pct: float = field(default=0.875, metadata=dict(
        help='evaluation: resize to img_size / crop_pct, centre crop', above=0, max=1))
    mixup: float = field(default=0.8, metadata=dict(help='mixup alpha (0: off)', min=0))
    cutmix: float = field(default=1.0, metadata=dict(help='cutmix alpha (0: off)', min=0))
    smoothing: float = field(default=0.1, metadata=dict(help='label smoothing', min=0, max=1))
    # optimisation
    opt: str = field(default='adamw', metadata=dict(help='timm optimiser name'))
    lr: Optional[float] = field(default=None, metadata=dict(
        help=f'learning rate (default: {LR_BASE} x global batch / {LR_BASE_BATCH})', min=0))
    weight_decay: float = field(default=0.05, metadata=dict(help='no decay on norms, biases and layer scales', min=0))
    sched: str = field(default='cosine', metadata=dict(help='timm scheduler name'))
    epochs: int = field(default=300, metadata=dict(min=1))
    warmup_epochs: float = field(default=5, metadata=dict(min=0))
    warmup_lr: float = field(default=1e-6, metadata=dict(min=0))
    min_lr: float = field(default=1e-5, metadata=dict(min=0))
    clip_grad: Optional[float] = field(default=None, metadata=dict(
        help='gradient-norm clipping (default: off)', above=0))
    # distillation (DeiT, hard)
    teacher: Optional[str] = field(default=None, metadata=dict(help='timm model name of the teacher'))
    teacher_checkpoint: Optional[str] = field(default=None, metadata=dict(help="the teacher's weights"))
    # speed and numerics
    model_ema: bool = False
    model_ema_decay: float = field(default=0.9998, metadata=dict(min=0, max=1))
    amp: bool = field(default=False, metadata=dict(help='mixed precision (bfloat16; float16 with --amp-dtype)'))
    amp_dtype: str = field(default='bfloat16', metadata=dict(
        help="'bfloat16' or 'float16' (CUDA only)", choices=('bfloat16', 'float16')))
    channels_last: bool = False
    compile: bool = field(default=False, metadata=dict(help='torch.compile the model for training and evaluation'))
    sync_bn: bool = field(default=False, metadata=dict(help='synchronised BatchNorm across GPUs (CUDA only)'))
    seed: int = field(default=0, metadata=dict(min=0))
    deterministic: bool = field(default=False, metadata=dict(help='deterministic kernels (slower)'))

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * self.grad_accum_steps * world_size

    def scaled_lr(self, world_size: int) -> float:
        """The given lr, else the paper's scaled linearly to the actual global batch."""
        return self.lr if self.lr is not None else LR_BASE * self.global_batch(world_size) / LR_BASE_BATCH

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path) -> Path:
        path = Path(path)
        path.write_text(self.to_yaml())
        return path



# Fashion-MNIST on a 2-core CPU in under 30 minutes (docs/training.md has the measurement and the
# sweep that chose it). 28x28 grayscale images (in_chans=1) resized to 32: the stride-32 last stage
# sees one position, and a step costs a third of what it costs at 64x64. Batch 512 is the fastest
# per image on a CPU; a 14-epoch schedule wants a high lr, no label smoothing and only flips and
# aspect jitter for augmentation (random crops and RandAugment cost accuracy at this budget).
FASHION_MNIST_QUICK = dict(
    data='fashion-mnist', img_size=32, batch_size=512, workers=1, epochs=14, warmup_epochs=0.3, warmup_lr=1e-4,
    min_lr=1e-6, lr=6e-3, weight_decay=0.05, drop_path=0.0, scale=(1.0, 1.0), aa=None, color_jitter=0.0,
    reprob=0.0, crop_pct=1.0, mixup=0.0, cutmix=0.0, smoothing=0.0, channels_last=True,
)

PRESETS: Dict[str, Dict[str, Any]] = {
    'imagenet': {},
    'fashion-mnist-quick': FASHION_MNIST_QUICK,
}


def read_recipe(source: str, presets: Dict[str, Dict[str, Any]], recipe_cls, defaults: Optional[Dict[str, Any]] = None):
    """A preset by name or a YAML file (e.g. the recipe.yaml saved beside a run), as `recipe_cls`;
    `defaults` fill the fields a YAML file leaves out. A bad value is a ValueError naming the file."""
    if source in presets:
        return recipe_cls(**presets[source])
    path = Path(source)
    if not path.is_file():
        raise ValueError(f'recipe {source!r} is neither a preset ({", ".join(presets)}) nor a YAML file')
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f'{path} is not valid YAML: {e}') from None
    if not isinstance(values, dict):
        raise ValueError(f'{path} does not hold a mapping of recipe fields')
    try:
        return recipe_cls.from_dict({**(defaults or {}), **values})
    except ValueError as e:
        raise ValueError(f'{path}: {e}') from None


def load_recipe(source: str) -> Recipe:
    """A classification recipe: a preset name or a YAML file."""
    return read_recipe(source, PRESETS, Recipe)
