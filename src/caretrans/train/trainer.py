"""`train(recipe, run_dir)`: classification on runtime's `fit`: data, model, loss, optimiser and evaluation."""
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import timm
import torch
import torch.nn as nn
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from ..data import CLASS_MAP_FILE, create_dataset, dataset_info, recorded_classes, save_class_map
from ..data.loader import build_transform, create_eval_loader, create_train_loader, default_img_size
from ..models.card import ModelCard
from ..models.checkpoint import load_checkpoint, load_weights
from ..runtime.distributed import DistributedContext, cleanup_distributed, setup_distributed
from ..runtime.fit import Parts, fit
from ..runtime.loop import TrainingDiverged, Updater
from ..runtime.precision import mixed_precision
from .card import classifier_card
from .engine import classification_loss, evaluate
from .loss import DistillationLoss, base_criterion
from .recipe import Recipe

__all__ = ['train', 'TrainResult', 'TrainingDiverged', 'ClassificationTask']

BEST_FILE = 'best.safetensors'  # the weights of the best validation top-1 (the EMA's, with an EMA)


@dataclass
class TrainResult:
    status: str                 # 'finished', 'already finished' (resumed at its end) or the signal that stopped it
    epoch: int                  # epochs completed
    global_step: int
    metrics: Dict[str, Any]     # the last evaluation (top1, top5, loss)
    best_top1: float
    run_dir: Path
    model: Optional[torch.nn.Module]  # the trained model (not the EMA), unwrapped from DDP; None if nothing ran
    img_size: Optional[int]
    in_chans: Optional[int]
    classes: Optional[List[str]]      # in label order


def train(recipe: Recipe, run_dir, resume: Optional[str] = None, device: Optional[str] = None,
          progress: bool = True, tensorboard: bool = False, announce: Callable[[], None] = lambda: None
          ) -> TrainResult:
    """Run `recipe`, writing checkpoints, metrics and curves into `run_dir` (rank 0 only); `announce` runs
    when the run is set up, before its first step."""
    ctx = setup_distributed(device)
    try:
        task = ClassificationTask(recipe)
        result = fit(task, run_dir, ctx, resume, progress, tensorboard, announce)
    finally:
        cleanup_distributed()
    best = result.best if result.best is not None else float('-inf')
    if result.model is None:
        return TrainResult(result.status, result.epoch, result.global_step, {}, best, result.run_dir,
                           None, None, None, None)
    return TrainResult(result.status, result.epoch, result.global_step, getattr(task, 'last_eval', {}), best,
                       result.run_dir, result.model, task.img_size, task.in_chans, task.classes)


class ClassificationTask:
    """Image classification: timm transforms and loaders, mixup, DeiT distillation, EMA, top-1/top-5."""

    weights_file = BEST_FILE

    def __init__(self, recipe: Recipe):
        self.recipe = recipe

    def build(self, ctx: DistributedContext, resume: Optional[Path]) -> Parts:
        recipe = self.recipe
        # Data: datasets labelled by one class list (a resumed run's own), timm transforms, block-sharded loaders.
        train_set = create_dataset(recipe.data, 'train', classes=recorded_classes(resume.parent) if resume else None,
                                   in_chans=recipe.in_chans)
        info = dataset_info(train_set)
        _check_fits_data(recipe, info)
        self.info, self.classes = info, info['classes']
        self.img_size = recipe.img_size if recipe.img_size is not None else default_img_size(info['native_size'])
        self.num_classes = recipe.num_classes if recipe.num_classes is not None else info['num_classes']
        self.in_chans = recipe.in_chans if recipe.in_chans is not None else info['in_chans']
        train_set.transform = self._transform(training=True)
        self.train_set = train_set
        self.val_set = create_dataset(recipe.data, 'val', self._transform(training=False), classes=self.classes,
                                      in_chans=info['in_chans'])
        pin = ctx.device.type == 'cuda'
        train_loader = create_train_loader(train_set, recipe.batch_size, ctx.rank, ctx.world_size,
                                           recipe.grad_accum_steps, recipe.seed, recipe.workers, pin_memory=pin)
        self.val_loader = create_eval_loader(self.val_set, recipe.batch_size, ctx.rank, ctx.world_size,
                                             recipe.workers, pin_memory=pin)
        self.mixup = _mixup(recipe, self.num_classes)

        # Model (and EMA, teacher), loss, optimiser and schedule.
        model = timm.create_model(recipe.model, num_classes=self.num_classes, in_chans=self.in_chans,
                                  drop_path_rate=recipe.drop_path)
        if recipe.initial_checkpoint and resume is None:  # a classifier by label name, else fresh
            loaded = load_weights(model, recipe.initial_checkpoint, label_names=self.card().label_names)
            if ctx.is_primary:
                print(loaded, flush=True)
        if hasattr(model, 'set_distilled_training'):
            model.set_distilled_training(True)  # both heads learn, as the release trains them (DistillationLoss)
        model = model.to(ctx.device)
        if recipe.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.loss_fn = DistillationLoss(base_criterion(self.mixup is not None, recipe.smoothing),
                                        _teacher(recipe, self.num_classes, self.in_chans, ctx.device))
        self.lr = recipe.scaled_lr(ctx.world_size)
        optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=self.lr, weight_decay=recipe.weight_decay)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=recipe.sched, num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
            warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, step_on_epochs=False,
            updates_per_epoch=train_loader.sampler.steps)
        ema = ModelEmaV3(model, decay=recipe.model_ema_decay) if recipe.model_ema else None
        autocast, scaler = mixed_precision(recipe.amp_dtype if recipe.amp else None, ctx.device)
        updater = Updater(optimizer, scheduler, recipe.grad_accum_steps, scaler, recipe.clip_grad, ema)
        self.ctx = ctx
        if recipe.warmup_epochs >= recipe.epochs and ctx.is_primary:
            print(f'warning: the schedule never leaves its warm-up ({recipe.warmup_epochs:g} warm-up epochs of '
                  f'{recipe.epochs}): the learning rate stays below {self.lr:.3g} throughout; shorten --warmup-epochs '
                  'or train longer (small data: --recipe finetune)', file=sys.stderr, flush=True)
        return Parts(model, train_loader, updater, autocast, sync_bn=recipe.sync_bn, compile=recipe.compile)

    def loss_of(self, model: nn.Module):
        return classification_loss(model, self.loss_fn, self.ctx, self.mixup, self.recipe.channels_last,
                                   self.recipe.batch_size)

    def evaluates(self, epoch: int) -> bool:
        return True

    def evaluate(self, model: nn.Module, parts: Parts, ctx: DistributedContext, progress: bool) -> Dict[str, Any]:
        """Loss, top-1 and top-5 (and a confusion matrix for up to 50 classes); the EMA's too, with an EMA."""
        few = self.num_classes <= 50
        result = evaluate(model, self.val_loader, ctx, parts.autocast, self.recipe.channels_last,
                          num_classes=self.num_classes if few else None, progress=progress and ctx.is_primary)
        self.last_eval = result
        metrics = dict(val_loss=result['loss'], val_top1=result['top1'], val_top5=result['top5'])
        ema = parts.updater.ema
        if ema is not None:
            ema_eval = evaluate(ema.module, self.val_loader, ctx, parts.autocast, self.recipe.channels_last)
            metrics.update(ema_val_top1=ema_eval['top1'], ema_val_loss=ema_eval['loss'])
        bad = getattr(self.train_set, 'num_bad_images', 0) + getattr(self.val_set, 'num_bad_images', 0)
        if bad:
            metrics['bad_images'] = bad
        return metrics

    def score(self, metrics: Dict[str, Any]) -> float:
        """Validation top-1; the EMA's when there is one (as timm picks its best checkpoint)."""
        return metrics.get('ema_val_top1', metrics['val_top1'])

    def weights_of(self, parts: Parts, metrics: Dict[str, Any]) -> nn.Module:
        ema = parts.updater.ema
        return ema.module if ema is not None else parts.model

    def weights_info(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        return dict(top1=self.score(metrics))

    def card(self) -> ModelCard:
        """Labels in output order and the evaluation transform this run used."""
        return classifier_card(self.recipe, self.info, self.img_size, self.in_chans, self.classes)

    def write_files(self, run_dir: Path):
        save_class_map(self.classes, run_dir / CLASS_MAP_FILE)

    def banner(self, parts: Parts, ctx: DistributedContext) -> str:
        recipe = self.recipe
        return (f'{recipe.model}: {sum(p.numel() for p in parts.model.parameters()) / 1e6:.2f} M params, '
                f'{len(self.train_set)} training / {len(self.val_set)} validation images at '
                f'{self.img_size}x{self.img_size}, {self.num_classes} classes, {self.in_chans} channel(s); global '
                f'batch {recipe.global_batch(ctx.world_size)} on {ctx.world_size} process(es), lr {self.lr:.3g}')

    def epoch_line(self, record: Dict[str, Any]) -> str:
        bad = record.get('bad_images')
        return (f'epoch {record["epoch"]}/{self.recipe.epochs}: train loss {record["train_loss"]:.4f}, '
                f'val loss {record["val_loss"]:.4f}, top-1 {record["val_top1"]:.2f}%, '
                f'top-5 {record["val_top5"]:.2f}%, {record["train_img_s"]:.0f} img/s'
                + (f', {bad} unreadable image(s) skipped' if bad else ''))

    def _transform(self, training: bool):
        recipe, info = self.recipe, self.info
        return build_transform(training, self.img_size, info['mean'], info['std'], recipe.scale, recipe.hflip,
                               None if recipe.aa in (None, 'none') else recipe.aa, recipe.color_jitter,
                               recipe.reprob, recipe.crop_pct)


def _check_fits_data(recipe: Recipe, info: Dict[str, Any]):
    """Refuse, before any work, a class count the data does not allow (create_dataset checks in_chans)."""
    if recipe.num_classes is not None and recipe.num_classes < info['num_classes']:
        raise ValueError(f'recipe field num_classes: {recipe.num_classes} is too few for {recipe.data}, which has '
                         f'{info["num_classes"]} classes')


def _mixup(recipe: Recipe, num_classes: int) -> Optional[Mixup]:
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    if recipe.batch_size % 2:
        raise ValueError(f'mixup/cutmix pair up images: --batch-size {recipe.batch_size} must be even')
    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.smoothing,
                 num_classes=num_classes)


def _teacher(recipe: Recipe, num_classes: int, in_chans: int, device: torch.device):
    if recipe.teacher is None:
        return None
    teacher = timm.create_model(recipe.teacher, pretrained=recipe.teacher_pretrained, num_classes=num_classes,
                                in_chans=in_chans)
    if recipe.teacher_checkpoint is not None:
        load_checkpoint(teacher, recipe.teacher_checkpoint)
    return teacher.to(device).eval()
