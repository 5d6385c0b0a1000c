"""The training recipe: one dataclass whose defaults are the paper's ImageNet recipe, and presets."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import yaml

__all__ = ['Recipe', 'PRESETS', 'load_recipe']

# The paper's learning rate is 2e-3 for a global batch of 1536 (128 x 12 GPUs), scaled linearly.
LR_BASE, LR_BASE_BATCH = 2e-3, 1536


class RecipeFields:
    """Plain-dict / YAML round trip of a recipe dataclass (tuples are lists in YAML)."""

    def to_dict(self) -> Dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ValueError(f'unknown recipe field(s): {", ".join(unknown)}')
        return cls(**{k: tuple(v) if isinstance(names[k].default, tuple) else v for k, v in values.items()})


@dataclass
class Recipe(RecipeFields):
    """Everything that decides what a run computes. Flag names follow timm's train.py."""

    # model
    model: str = field(default='care_s0', metadata=dict(help='timm model name'))
    drop_path: float = field(default=0.1, metadata=dict(help='stochastic depth rate'))
    in_chans: Optional[int] = field(default=None, metadata=dict(help="input channels (default: the data's)"))
    # data
    data: str = field(default='', metadata=dict(help="'fashion-mnist', 'synthetic' or a folder with train/ and val/"))
    num_classes: Optional[int] = field(default=None, metadata=dict(help="default: the data's"))
    img_size: Optional[int] = field(default=None, metadata=dict(
        help='training and evaluation input size (default: 224; low-resolution data: a multiple of 32, >= 64)'))
    batch_size: int = field(default=128, metadata=dict(help='batch per process and micro-step'))
    grad_accum_steps: int = field(default=1, metadata=dict(help='micro-steps per optimiser step'))
    workers: int = field(default=4, metadata=dict(help='data-loading processes per training process'))
    # augmentation and regularisation
    scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata=dict(help='random-resized-crop area range'))
    hflip: float = 0.5
    aa: Optional[str] = field(default='rand-m9-mstd0.5-inc1', metadata=dict(help="timm auto-augment, or 'none'"))
    color_jitter: float = 0.4
    reprob: float = field(default=0.25, metadata=dict(help='random erasing probability'))
    crop_pct: float = field(default=0.875, metadata=dict(help='evaluation: resize to img_size / crop_pct, centre crop'))
    mixup: float = field(default=0.8, metadata=dict(help='mixup alpha (0: off)'))
    cutmix: float = field(default=1.0, metadata=dict(help='cutmix alpha (0: off)'))
    smoothing: float = field(default=0.1, metadata=dict(help='label smoothing'))
    # optimisation
    opt: str = field(default='adamw', metadata=dict(help='timm optimiser name'))
    lr: Optional[float] = field(default=None, metadata=dict(
        help=f'learning rate (default: {LR_BASE} x global batch / {LR_BASE_BATCH})'))
    weight_decay: float = field(default=0.05, metadata=dict(help='no decay on norms, biases and layer scales'))
    sched: str = field(default='cosine', metadata=dict(help='timm scheduler name'))
    epochs: int = 300
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: Optional[float] = field(default=None, metadata=dict(help='gradient-norm clipping (default: off)'))
    # distillation (DeiT, hard)
    teacher: Optional[str] = field(default=None, metadata=dict(help='timm model name of the teacher'))
    teacher_checkpoint: Optional[str] = field(default=None, metadata=dict(help="the teacher's weights"))
    # speed and numerics
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    amp: bool = field(default=False, metadata=dict(help='mixed precision (bfloat16; float16 with --amp-dtype)'))
    amp_dtype: str = field(default='bfloat16', metadata=dict(help="'bfloat16' or 'float16' (CUDA only)"))
    channels_last: bool = False
    compile: bool = field(default=False, metadata=dict(help='torch.compile the model for training and evaluation'))
    sync_bn: bool = field(default=False, metadata=dict(help='synchronised BatchNorm across GPUs (CUDA only)'))
    seed: int = 0
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


def read_recipe(source: str, presets: Dict[str, Dict[str, Any]], recipe_cls):
    """A preset by name or a YAML file (e.g. the recipe.yaml saved beside a run), as `recipe_cls`."""
    if source in presets:
        return recipe_cls(**presets[source])
    path = Path(source)
    if not path.is_file():
        raise ValueError(f'recipe {source!r} is neither a preset ({", ".join(presets)}) nor a YAML file')
    values = yaml.safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f'{path} does not hold a mapping of recipe fields')
    return recipe_cls.from_dict(values)


def load_recipe(source: str) -> Recipe:
    """A classification recipe: a preset name or a YAML file."""
    return read_recipe(source, PRESETS, Recipe)
