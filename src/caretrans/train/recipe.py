"""The training recipe: one dataclass whose defaults are the paper's ImageNet recipe, and presets."""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from ..limits import MIN_INPUT_SIZE
from ..runtime.recipe import RecipeFields, read_recipe

__all__ = ['Recipe', 'PRESETS', 'load_recipe']

# The paper's learning rate is 2e-3 for a global batch of 1536 (128 x 12 GPUs), scaled linearly.
LR_BASE, LR_BASE_BATCH = 2e-3, 1536


@dataclass
class Recipe(RecipeFields):
    """Everything that decides what a run computes. Flag names follow timm's train.py."""

    # model
    model: str = field(default='care_s0', metadata=dict(help='timm model name'))
    drop_path: float = field(default=0.1, metadata=dict(help='stochastic depth rate', min=0, below=1))
    in_chans: Optional[int] = field(default=None, metadata=dict(help="input channels (default: the data's)", min=1))
    initial_checkpoint: Optional[str] = field(default=None, metadata=dict(
        help='weights to start from (ours, released .pth.tar or safetensors); a classifier of another '
             'class count is left fresh', path=True))
    # data
    data: str = field(default='', metadata=dict(
        help="'fashion-mnist', 'synthetic' or a folder with train/ and val/", path=True))
    num_classes: Optional[int] = field(default=None, metadata=dict(help="default: the data's", min=1))
    img_size: Optional[int] = field(default=None, metadata=dict(
        help='training and evaluation input size (default: 224, or for smaller images their size rounded up to '
             "a multiple of 32 and at least 64; an image folder's size is its images' median shorter side)",
        min=MIN_INPUT_SIZE))
    batch_size: int = field(default=128, metadata=dict(help='batch per process and micro-step', min=1))
    grad_accum_steps: int = field(default=1, metadata=dict(help='micro-steps per optimiser step', min=1))
    workers: int = field(default=4, metadata=dict(help='data-loading processes per training process', min=0))
    # augmentation and regularisation
    scale: Tuple[float, float] = field(default=(0.08, 1.0), metadata=dict(
        help='random-resized-crop area range', above=0, max=1, ordered=True))
    hflip: float = field(default=0.5, metadata=dict(help='horizontal flip probability', min=0, max=1))
    aa: Optional[str] = field(default='rand-m9-mstd0.5-inc1', metadata=dict(
        help="timm auto-augment (RandAugment 'rand-...', 'augmix-...', AutoAugment 'original', 'v0', ...), or 'none'"))
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
    teacher_checkpoint: Optional[str] = field(default=None, metadata=dict(help="the teacher's weights", path=True))
    teacher_pretrained: bool = field(default=False, metadata=dict(
        help="the teacher's timm pretrained weights (timm downloads them, or reads its cache)"))
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

    def __post_init__(self):
        super().__post_init__()
        if self.teacher is None and (self.teacher_checkpoint or self.teacher_pretrained):
            raise ValueError('recipe fields teacher_checkpoint / teacher_pretrained: they need --teacher MODEL')
        if self.teacher is not None and bool(self.teacher_checkpoint) == self.teacher_pretrained:
            raise ValueError(f'recipe field teacher: {self.teacher!r} needs its weights, from exactly one of '
                             '--teacher-checkpoint FILE or --teacher-pretrained (a random teacher would teach noise)')

    def global_batch(self, world_size: int) -> int:
        return self.batch_size * self.grad_accum_steps * world_size

    def scaled_lr(self, world_size: int) -> float:
        """The given lr, else the paper's scaled linearly to the actual global batch."""
        return self.lr if self.lr is not None else LR_BASE * self.global_batch(world_size) / LR_BASE_BATCH



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

# Fine-tuning pretrained weights (--initial-checkpoint) on a small image folder: a short schedule that
# leaves its one warm-up epoch at once, a fixed lr an order below the from-scratch one, no mixup or
# cutmix (they blur the few examples of each class), milder crops and no erasing.
FINETUNE = dict(
    epochs=10, warmup_epochs=1, warmup_lr=1e-6, lr=5e-4, min_lr=1e-6, batch_size=32, workers=2, drop_path=0.05,
    scale=(0.35, 1.0), mixup=0.0, cutmix=0.0, reprob=0.0, smoothing=0.1,
)

PRESETS: Dict[str, Dict[str, Any]] = {
    'imagenet': {},
    'fashion-mnist-quick': FASHION_MNIST_QUICK,
    'finetune': FINETUNE,
}


def load_recipe(source: str) -> Recipe:
    """A classification recipe: a preset name or a YAML file."""
    return read_recipe(source, PRESETS, Recipe)
