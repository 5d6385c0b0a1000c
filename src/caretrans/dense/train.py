"""Training and evaluation runs for detection and segmentation: one process or torchrun's many."""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

from ..data.loader import create_eval_loader, create_train_loader
from ..models.card import ModelCard
from ..runtime.distributed import DistributedContext, cleanup_distributed, setup_distributed
from ..runtime.fit import Parts, fit
from ..runtime.loop import Updater, evaluation_progress
from ..runtime.precision import autocast_factory
from .recipe import DenseRecipe
from .tasks import make_task

__all__ = ['train', 'DenseTrainResult', 'DenseTask']

WEIGHTS_FILE = 'model.safetensors'  # the weights of the last evaluation


@dataclass
class DenseTrainResult:
    status: str                 # 'finished', 'already finished' (resumed at its end) or the signal that stopped it
    epoch: int                  # epochs completed
    metrics: Dict[str, object]  # the last evaluation
    run_dir: Path


def train(recipe: DenseRecipe, run_dir, resume: Optional[str] = None, device: Optional[str] = None,
          progress: bool = True, announce: Callable[[], None] = lambda: None) -> DenseTrainResult:
    """Train `recipe` into `run_dir` (last.pth, model.safetensors, recipe.yaml, metrics, curves.png).

    With `resume` (a run's last.pth), continue exactly where that run stopped; a `recipe` that would not
    continue it is refused (CheckpointError), as for classification. A signal (SIGTERM, SIGINT) stops the
    run after saving it; the result's status names it.
    """
    ctx = setup_distributed(device)
    try:
        result = fit(DenseTask(recipe), run_dir, ctx, resume, progress, announce=announce)
    finally:
        cleanup_distributed()
    return DenseTrainResult(result.status, result.epoch, result.metrics, result.run_dir)


class DenseTask:
    """Detection or segmentation (`make_task`'s data, model, loss and metrics) for runtime's `fit`."""

    weights_file = WEIGHTS_FILE

    def __init__(self, recipe: DenseRecipe):
        self.recipe = recipe

    def build(self, ctx: DistributedContext, resume) -> Parts:
        recipe = self.recipe
        self.task = task = make_task(recipe)
        train_loader = create_train_loader(task.train_set, recipe.batch_size, ctx.rank, ctx.world_size,
                                           seed=recipe.seed, workers=recipe.workers, collate_fn=task.collate,
                                           pin_memory=ctx.device.type == 'cuda')
        steps_per_epoch = train_loader.sampler.steps
        self.model = model = task.build_model().to(ctx.device)
        optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)
        scheduler, _ = create_scheduler_v2(
            optimizer, sched=recipe.sched, num_epochs=recipe.epochs, decay_milestones=list(recipe.decay_milestones),
            decay_rate=recipe.poly_power if recipe.sched == 'poly' else 0.1, warmup_lr=recipe.lr * recipe.warmup_ratio,
            warmup_epochs=recipe.warmup_iters / steps_per_epoch, step_on_epochs=False,
            updates_per_epoch=steps_per_epoch)
        self.device, self.world = ctx.device, ctx.world_size
        # PyTorch synchronises BatchNorm on GPUs only: on CPUs each rank keeps its own statistics.
        return Parts(model, train_loader, Updater(optimizer, scheduler, clip_grad=recipe.clip_grad),
                     _autocast(recipe, ctx), sync_bn=recipe.norm == 'sync' and ctx.device.type == 'cuda')

    def loss_of(self, model: nn.Module):
        def loss_of(batch, index: int):
            return self.task.loss(model, batch, self.device), self.recipe.batch_size
        return loss_of

    def evaluates(self, epoch: int) -> bool:
        return epoch % self.recipe.eval_every == 0 or epoch == self.recipe.epochs

    def evaluate(self, model: nn.Module, parts: Parts, ctx: DistributedContext, progress: bool) -> Dict[str, object]:
        loader = evaluation_progress(_eval_loader(self.task, ctx, self.recipe), progress and ctx.is_primary)
        return self.task.evaluate(model, loader, ctx, parts.autocast)

    def score(self, metrics) -> None:
        return None  # the weights of the last evaluation are kept

    def weights_of(self, parts: Parts, metrics) -> nn.Module:
        return parts.model

    def weights_info(self, metrics) -> Dict[str, object]:
        return dict(task=self.recipe.task)

    def card(self) -> ModelCard:
        return self.task.card(self.model)

    def write_files(self, run_dir: Path):
        pass

    def banner(self, parts: Parts, ctx: DistributedContext) -> str:
        recipe, task = self.recipe, self.task
        return (f'{recipe.task} {recipe.model}: {sum(p.numel() for p in parts.model.parameters()) / 1e6:.2f} M params, '
                f'{len(task.train_set)} training / {len(task.val_set)} validation images, {task.num_classes} classes; '
                f'batch {recipe.batch_size} x {ctx.world_size} process(es), lr {recipe.lr:.3g}')

    def epoch_line(self, record: Dict[str, object]) -> str:
        shown = [f'{k} {v:.4f}' for k, v in record.items() if k not in ('epoch', 'step', 'lr', 'train_img_s')
                 and isinstance(v, float)]
        return f'{self.recipe.task} epoch {record["epoch"]}/{self.recipe.epochs}: ' + ', '.join(shown)


def _eval_loader(task, ctx: DistributedContext, recipe: DenseRecipe) -> DataLoader:
    batch = recipe.batch_size if recipe.task == 'det' else 1  # segmentation evaluates full-size images
    return create_eval_loader(task.val_set, batch, ctx.rank, ctx.world_size, recipe.workers, collate_fn=task.collate,
                              pin_memory=ctx.device.type == 'cuda')


def _autocast(recipe: DenseRecipe, ctx: DistributedContext):
    return autocast_factory(ctx.device, 'bfloat16' if recipe.amp else None)
