"""The dense-prediction recipe: one dataclass, with the paper's COCO and ADE20K set-ups as presets."""
from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional, Tuple

import yaml

from ..limits import MIN_INPUT_SIZE
from ..runtime.recipe import RecipeFields, read_recipe

__all__ = ['DenseRecipe', 'PRESETS', 'load_recipe', 'field_names']

TASKS = ('det', 'seg')


@dataclass
class DenseRecipe(RecipeFields):
    """Everything that decides what a detection or segmentation run computes."""

    task: str = field(default='det', metadata=dict(help="'det' (Mask R-CNN) or 'seg' (Semantic FPN)", choices=TASKS))
    # model
    model: str = field(default='care_s0', metadata=dict(help='timm backbone name'))
    backbone_checkpoint: Optional[str] = field(default=None, metadata=dict(
        help='ImageNet classification checkpoint (ours or released-format) for the backbone', path=True))
    norm: str = field(default='frozen', metadata=dict(
        help="backbone BatchNorm: 'frozen', 'sync' or 'batch'", choices=('frozen', 'sync', 'batch'), model=True))
    drop_path: float = field(default=0.0, metadata=dict(help='stochastic depth rate of the backbone', min=0, below=1,
                                                        model=True))
    fpn_channels: int = field(default=256, metadata=dict(min=1, model=True))
    box_head_dim: int = field(default=1024, metadata=dict(help='Mask R-CNN box head width', min=1, only='det',
                                                          model=True))
    mask_head_dims: Tuple[int, ...] = field(default=(256, 256, 256, 256), metadata=dict(
        help='Mask R-CNN mask head convs', min=1, only='det', model=True))
    anchor_sizes: Tuple[int, ...] = field(default=(32, 64, 128, 256, 512), metadata=dict(
        help='RPN anchor per level', min=1, only='det', model=True))
    rpn_batch: int = field(default=256, metadata=dict(help='RPN anchors sampled per image', min=1, only='det',
                                                      model=True))
    roi_batch: int = field(default=512, metadata=dict(help='proposals sampled per image for the box head', min=1,
                                                      only='det', model=True))
    proposals: Tuple[int, int] = field(default=(1000, 1000), metadata=dict(
        help='proposals kept after NMS: train, test', min=1, only='det', model=True))
    head_channels: int = field(default=128, metadata=dict(help='Semantic FPN branch width', min=1, only='seg',
                                                          model=True))
    # data
    data: str = field(default='', metadata=dict(
        help='det: COCO root (<split>/ or images/<split>/, annotations/instances_<split>.json); '
             'seg: ADE20K root (images/<split>/, annotations/<split>/)', path=True))
    train_split: str = 'train2017'
    val_split: str = 'val2017'
    num_classes: int = field(default=150, metadata=dict(
        help='classes of the label maps (detection takes its classes from the annotation file)', min=1, only='seg'))
    reduce_zero_label: bool = field(default=True, metadata=dict(help='label 0 is "other", ignored', only='seg',
                                                                model=True))
    min_size: int = field(default=800, metadata=dict(
        help='det: shorter side of the resized image; seg: of the evaluated image', min=MIN_INPUT_SIZE, model=True))
    max_size: int = field(default=1333, metadata=dict(
        help='longer side limit of those resized images', min=MIN_INPUT_SIZE, model=True))
    crop_size: int = field(default=512, metadata=dict(help='training crop', min=MIN_INPUT_SIZE, only='seg'))
    scale: int = field(default=512, metadata=dict(help='shorter side before the random ratio', min=1, only='seg'))
    ratio_range: Tuple[float, float] = field(default=(0.5, 2.0), metadata=dict(
        help='random rescale range', above=0, ordered=True, only='seg'))
    batch_size: int = field(default=2, metadata=dict(help='images per process', min=1))
    workers: int = field(default=4, metadata=dict(min=0))
    # optimisation
    opt: str = 'adamw'
    lr: float = field(default=2e-4, metadata=dict(min=0))
    weight_decay: float = field(default=0.05, metadata=dict(min=0))
    sched: str = field(default='multistep', metadata=dict(help="timm scheduler: 'multistep' (det), 'poly' (seg)"))
    epochs: int = field(default=12, metadata=dict(min=1))
    decay_milestones: Tuple[int, ...] = field(default=(8, 11), metadata=dict(
        help='multistep: epochs of x0.1', min=1, ordered=True))
    poly_power: float = field(default=0.9, metadata=dict(min=0))
    warmup_iters: int = field(default=500, metadata=dict(min=0))
    warmup_ratio: float = field(default=0.001, metadata=dict(min=0, max=1))
    clip_grad: Optional[float] = field(default=None, metadata=dict(above=0))
    # run
    eval_every: int = field(default=1, metadata=dict(help='evaluate every N epochs (and after the last)', min=1))
    amp: bool = field(default=False, metadata=dict(help='bfloat16 autocast'))
    seed: int = field(default=0, metadata=dict(min=0))

    def __post_init__(self):
        super().__post_init__()
        used = field_names(self.task)
        for name in (n for n in field_names() if n not in used):
            default = DenseRecipe.__dataclass_fields__[name].default
            if getattr(self, name) != default:
                raise ValueError(f'recipe field {name}: {_show(getattr(self, name))} is not valid in a {self.task!r} '
                                 f'recipe (a {_other(self.task)!r} setting; leave it out)')

    def to_yaml(self) -> str:
        """The fields of the recipe's task: a detection run's recipe.yaml has no segmentation classes or crops
        (those hold their defaults, which reading the file back restores)."""
        used = field_names(self.task)
        return yaml.safe_dump({k: v for k, v in self.to_dict().items() if k in used}, sort_keys=False)

    def model_args(self) -> Dict[str, Any]:
        """The fields that rebuild the task's model and its preprocessing (a model card's `model_args`)."""
        return {k: v for k, v in self.to_dict().items() if k in field_names(self.task, model=True)}


def field_names(task: Optional[str] = None, model: bool = False) -> Tuple[str, ...]:
    """The recipe fields `task` uses (all without `task`); with `model`, those that rebuild its model."""
    return tuple(f.name for f in fields(DenseRecipe) if (task is None or f.metadata.get('only', task) == task)
                 and (not model or f.metadata.get('model')))


def _other(task: str) -> str:
    return next(t for t in TASKS if t != task)


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


# Paper, Section 4.2: Mask R-CNN, AdamW lr 2e-4, 12 epochs (1x: x0.1 after epochs 8 and 11),
# batch 24 (2 per GPU on 12 GPUs). The weight decay is not given: 0.05 as in mmdetection's
# configs for efficient backbones.
COCO = dict(task='det', norm='frozen', batch_size=2)
# Section 4.3: Semantic FPN, AdamW lr 2e-4, poly decay, batch 48. The length is not given:
# mmsegmentation's 40k iterations, at batch 48 that is 95 epochs of ADE20K's 20210 images.
ADE20K = dict(task='seg', norm='sync', batch_size=8, train_split='training', val_split='validation',
              sched='poly', epochs=95, weight_decay=1e-4, warmup_iters=0, min_size=512, max_size=2048)
# The synthetic shapes (dense/synthetic.py) on a CPU: compact heads, a higher lr, a few epochs.
SHAPES_DET = dict(
    task='det', norm='frozen', train_split='training', val_split='validation', min_size=128, max_size=128,
    fpn_channels=64, box_head_dim=256, mask_head_dims=(64, 64), anchor_sizes=(16, 32, 64, 128, 256),
    rpn_batch=64, roi_batch=64, proposals=(150, 100), batch_size=4, workers=0, lr=1e-3, epochs=7,
    decay_milestones=(6,), warmup_iters=10, eval_every=100,
)
SHAPES_SEG = dict(
    task='seg', norm='batch', train_split='training', val_split='validation', num_classes=4, crop_size=128,
    scale=128, ratio_range=(0.75, 1.25), min_size=128, max_size=512, fpn_channels=64, head_channels=64,
    batch_size=8, workers=0, lr=1e-3, weight_decay=0.01, sched='poly', epochs=6, warmup_iters=5, eval_every=100,
)
PRESETS: Dict[str, Dict[str, Any]] = {'coco': COCO, 'ade20k': ADE20K, 'shapes-det': SHAPES_DET, 'shapes-seg': SHAPES_SEG}


def load_recipe(source: str, task: Optional[str] = None) -> DenseRecipe:
    """A dense recipe: a preset name or a YAML file (e.g. the recipe.yaml saved in a run folder).

    With `task`, a recipe for the other task is refused, and a YAML file that does not say its
    task is read as one for `task`.
    """
    recipe = read_recipe(source, PRESETS, DenseRecipe, defaults=dict(task=task) if task else None)
    if task and recipe.task != task:
        raise ValueError(f'recipe {source!r} is a {recipe.task!r} recipe, not a {task!r} one: '
                         f'use it with `caretrans {recipe.task} ...`, or give a {task!r} recipe')
    return recipe
