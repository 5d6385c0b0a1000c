"""Training and evaluation runs for detection and segmentation: one process or torchrun's many."""
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader

from ..data.loader import create_train_loader
from ..models.checkpoint import save_weights
from ..runtime.distributed import DistributedContext, cleanup_distributed, distribute, setup_distributed, sync_buffers
from ..runtime.loop import (LoopState, run_epoch, Updater, restore_training_state,
                            save_training_state)
from ..runtime.metrics import MetricsLogger
from ..runtime.precision import autocast_factory
from ..runtime.signals import GracefulStop
from ..runtime.state import already_finished, read_resume_state, seed_everything
from .recipe import DenseRecipe
from .tasks import make_task

__all__ = ['train', 'DenseTrainResult']

STATE_FILE, WEIGHTS_FILE = 'last.pth', 'model.safetensors'


@dataclass
class DenseTrainResult:
    status: str                 # 'finished', 'already finished' (resumed at its end) or the signal that stopped it
    epoch: int                  # epochs completed
    metrics: Dict[str, object]  # the last evaluation
    run_dir: Path


def train(recipe: DenseRecipe, run_dir, resume: Optional[str] = None, device: Optional[str] = None,
          progress: bool = True) -> DenseTrainResult:
    """Train `recipe` into `run_dir` (last.pth, model.safetensors, recipe.yaml, metrics, curves.png).

    With `resume` (a run's last.pth), continue exactly where that run stopped; a `recipe` that would not
    continue it is refused (CheckpointError), as for classification. A signal (SIGTERM, SIGINT) stops the
    run after saving it; the result's status names it.
    """
    ctx = setup_distributed(device)
    try:
        return _train(recipe, Path(run_dir), resume, ctx, progress)
    finally:
        cleanup_distributed()


def _train(recipe: DenseRecipe, run_dir: Path, resume: Optional[str], ctx: DistributedContext,
           progress: bool) -> DenseTrainResult:
    seed_everything(recipe.seed + ctx.rank)
    state = read_resume_state(resume, recipe) if resume else None
    if state is not None and already_finished(state, recipe.epochs, resume, ctx.is_primary):
        return DenseTrainResult('already finished', state['epoch'], state.get('metrics', {}), run_dir)

    # The task's data and model; the shared optimiser, schedule and loop.
    task = make_task(recipe)
    train_loader = create_train_loader(task.train_set, recipe.batch_size, ctx.rank, ctx.world_size, seed=recipe.seed,
                                       workers=recipe.workers, collate_fn=task.collate,
                                       pin_memory=ctx.device.type == 'cuda')
    steps_per_epoch = train_loader.sampler.steps
    model = task.build_model().to(ctx.device)
    card = task.card(model)
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=recipe.sched, num_epochs=recipe.epochs, decay_milestones=list(recipe.decay_milestones),
        decay_rate=recipe.poly_power if recipe.sched == 'poly' else 0.1, warmup_lr=recipe.lr * recipe.warmup_ratio,
        warmup_epochs=recipe.warmup_iters / steps_per_epoch, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    updater = Updater(optimizer, scheduler, clip_grad=recipe.clip_grad)
    loop, metrics = LoopState(), {}
    if state is not None:
        loop, metrics = restore_training_state(state, model, updater, recipe.epochs), state.get('metrics', {})
    # PyTorch synchronises BatchNorm on GPUs only: on CPUs each rank keeps its own statistics.
    ddp = distribute(model, ctx, sync_bn=recipe.norm == 'sync' and ctx.device.type == 'cuda')
    autocast = _autocast(recipe, ctx)

    def loss_of(batch, index: int):
        return task.loss(ddp, batch, ctx.device), recipe.batch_size

    logger = MetricsLogger(run_dir, enabled=ctx.is_primary)
    if ctx.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(run_dir / 'recipe.yaml')
        logger.truncate('epoch', loop.epoch)  # records after the saved state are redone

    def checkpoint():
        if ctx.is_primary:
            save_training_state(run_dir / STATE_FILE, loop, model, updater, recipe, metrics=_plain_metrics(metrics),
                                card=card.to_dict())

    with GracefulStop() as stop:
        while loop.epoch < recipe.epochs:
            trained = run_epoch(ddp, train_loader, loss_of, updater, ctx, loop, run_dir / STATE_FILE, checkpoint,
                                f'{recipe.task} epoch {loop.epoch + 1}/{recipe.epochs}', autocast, stop, progress)
            if trained.stopped:
                return DenseTrainResult(stop.signal or 'stopped', loop.epoch, metrics, run_dir)

            record = dict(epoch=loop.epoch, step=loop.global_step, train_loss=loop.epoch_loss, lr=updater.lr)
            loop.next_epoch()
            if loop.epoch % recipe.eval_every == 0 or loop.epoch == recipe.epochs:
                sync_buffers(model, ctx)
                metrics = task.evaluate(model, _eval_loader(task, ctx, recipe), ctx, autocast)
                record.update(_plain_metrics(metrics))
            checkpoint()
            logger.log(record)
            if ctx.is_primary:
                logger.plot()
    if ctx.is_primary:
        save_weights(model, run_dir / WEIGHTS_FILE, card=card, model_name=recipe.model, task=recipe.task,
                     epoch=loop.epoch)
    return DenseTrainResult('finished', loop.epoch, metrics, run_dir)


def _eval_loader(task, ctx: DistributedContext, recipe: DenseRecipe) -> DataLoader:
    batch = recipe.batch_size if recipe.task == 'det' else 1  # segmentation evaluates full-size images
    return DataLoader(task.eval_loader_set(ctx.rank, ctx.world_size), batch_size=batch, shuffle=False,
                      collate_fn=task.collate, num_workers=recipe.workers)


def _autocast(recipe: DenseRecipe, ctx: DistributedContext):
    return autocast_factory(ctx.device, 'bfloat16' if recipe.amp else None)


def _plain_metrics(metrics: Dict[str, object]) -> Dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
