"""Training and evaluation runs for detection and segmentation: one process or torchrun's many."""
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..data.loader import SeededItems
from ..models.checkpoint import CheckpointError, read_checkpoint, save_atomic
from ..runtime.signals import GracefulStop, stop_notice
from ..runtime.state import capture_rng_state, read_resume_state, restore_rng_state, save_training_state
from ..runtime.distributed import DistributedContext, all_reduce_mean, cleanup_distributed, setup_distributed
from ..train.metrics import MetricsLogger
from .recipe import DenseRecipe
from .tasks import make_task

__all__ = ['train', 'DenseTrainResult', 'evaluate_checkpoint']

STATE_FILE, WEIGHTS_FILE = 'last.pth', 'model.safetensors'


def epoch_batches(num_items: int, batch_size: int, seed: int, epoch: int, ctx: DistributedContext) -> List[List[int]]:
    """This rank's batches of an epoch: one shuffle shared by all ranks, dealt out, last partial batch dropped."""
    order = torch.randperm(num_items, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()
    per_rank = order[ctx.rank:num_items - num_items % ctx.world_size:ctx.world_size]
    return [per_rank[i:i + batch_size] for i in range(0, len(per_rank) - batch_size + 1, batch_size)]


def _loader(dataset, batches, task, workers: int) -> DataLoader:
    # Its own generator: creating the loader must not draw from the global RNG, whose
    # stream (dropout, RoI sampling) a resumed run continues exactly.
    return DataLoader(dataset, batch_sampler=batches, collate_fn=task.collate, num_workers=workers,
                      generator=torch.Generator().manual_seed(0))


def _eval_loader(task, ctx: DistributedContext, recipe: DenseRecipe) -> DataLoader:
    batch = recipe.batch_size if recipe.task == 'det' else 1  # segmentation evaluates full-size images
    return DataLoader(task.eval_loader_set(ctx.rank, ctx.world_size), batch_size=batch, shuffle=False,
                      collate_fn=task.collate, num_workers=recipe.workers)


def _autocast(recipe: DenseRecipe, ctx: DistributedContext):
    return functools.partial(torch.autocast, device_type=ctx.device.type, dtype=torch.bfloat16, enabled=recipe.amp)


def _plain_metrics(metrics: Dict[str, object]) -> Dict[str, float]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}


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


def _train(recipe: DenseRecipe, run_dir: Path, resume: Optional[str], ctx: DistributedContext, progress: bool):
    state = read_resume_state(resume, recipe) if resume else None
    if state is not None and state['epoch'] >= recipe.epochs:
        if ctx.is_primary:
            print(f'{resume} has finished its {state["epoch"]} epochs: nothing to train '
                  f'(a larger --epochs continues it)', flush=True)
        return DenseTrainResult('already finished', state['epoch'], state.get('metrics', {}), run_dir)
    torch.manual_seed(recipe.seed)

    # Data, model, optimiser, schedule.
    task = make_task(recipe)
    train_set = SeededItems(task.train_set, recipe.seed)
    steps_per_epoch = len(epoch_batches(len(train_set), recipe.batch_size, recipe.seed, 0, ctx))
    if steps_per_epoch == 0:
        raise ValueError(f'{len(train_set)} training images make no batch of {recipe.batch_size} '
                         f'on each of {ctx.world_size} process(es)')
    model = task.build_model().to(ctx.device)
    if recipe.norm == 'sync' and ctx.is_distributed and ctx.device.type == 'cuda':
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=recipe.lr, weight_decay=recipe.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=recipe.sched, num_epochs=recipe.epochs, decay_milestones=list(recipe.decay_milestones),
        decay_rate=recipe.poly_power if recipe.sched == 'poly' else 0.1, warmup_lr=recipe.lr * recipe.warmup_ratio,
        warmup_epochs=recipe.warmup_iters / steps_per_epoch, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    epoch, next_batch, global_step, metrics = 0, 0, 0, {}
    if state is not None:
        model.load_state_dict(state['model'])
        optimizer.load_state_dict(state['optimizer'])
        if state['recipe']['epochs'] == recipe.epochs:  # else the schedule built for the new length goes on
            scheduler.load_state_dict(state['scheduler'])
        epoch, next_batch, global_step = state['epoch'], state['batch'], state['global_step']
        metrics = state.get('metrics', {})
        restore_rng_state(state['rng'])
    scheduler.step_update(num_updates=global_step)
    ddp = DistributedDataParallel(model, device_ids=[ctx.device.index] if ctx.device.type == 'cuda' else None) \
        if ctx.is_distributed else model
    autocast = _autocast(recipe, ctx)
    logger = MetricsLogger(run_dir, enabled=ctx.is_primary)
    if ctx.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / 'recipe.yaml').write_text(_yaml(recipe))
        if state is not None:
            logger.truncate('epoch', epoch + 1)  # records after the saved state are redone

    def save(stopped_at_batch: int, at_epoch: int):
        if ctx.is_primary:
            save_training_state(run_dir / STATE_FILE, dict(
                model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                epoch=at_epoch, batch=stopped_at_batch, global_step=global_step, rng=capture_rng_state(),
                recipe=recipe.to_dict(), metrics=_plain_metrics(metrics)))

    # The loop: an epoch of steps, an evaluation now and then, a checkpoint after each epoch.
    with GracefulStop() as stop:
        while epoch < recipe.epochs:
            train_set.epoch = epoch
            batches = epoch_batches(len(train_set), recipe.batch_size, recipe.seed, epoch, ctx)[next_batch:]
            bar = _progress(progress and ctx.is_primary, len(batches), f'{recipe.task} epoch {epoch + 1}/{recipe.epochs}')
            ddp.train()
            loss_sum, loss_count = 0.0, 0
            for batch in _loader(train_set, batches, task, recipe.workers):
                with autocast():
                    loss = task.loss(ddp, batch, ctx.device)
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f'loss is {loss.item()} at epoch {epoch + 1}, step {global_step + 1}')
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if recipe.clip_grad:
                    nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
                optimizer.step()
                global_step += 1
                next_batch += 1
                scheduler.step_update(num_updates=global_step)
                loss_sum, loss_count = loss_sum + loss.item(), loss_count + 1
                bar.update(1)
                bar.set_postfix(loss=f'{loss.item():.3f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}', refresh=False)
                if all_reduce_mean(float(stop.requested), ctx) > 0:  # any rank signalled: all save and stop
                    break
            bar.close()
            if all_reduce_mean(float(stop.requested), ctx) > 0:
                save(next_batch, epoch)
                if ctx.is_primary:
                    print(stop_notice(stop, epoch, next_batch, f'--resume {run_dir / STATE_FILE}'), flush=True)
                break
            epoch, next_batch = epoch + 1, 0
            record = dict(epoch=epoch, step=global_step, train_loss=all_reduce_mean(loss_sum / max(loss_count, 1), ctx),
                          lr=optimizer.param_groups[0]['lr'])
            if epoch % recipe.eval_every == 0 or epoch == recipe.epochs:
                metrics = task.evaluate(model, _eval_loader(task, ctx, recipe), ctx, autocast)
                record.update(_plain_metrics(metrics))
            logger.log(record)
            save(0, epoch)
    if ctx.is_primary:
        logger.plot()
        if epoch == recipe.epochs:
            save_atomic(model.state_dict(), run_dir / WEIGHTS_FILE)
    return DenseTrainResult((stop.signal or 'stopped') if stop.requested else 'finished', epoch, metrics, run_dir)


def _progress(enabled: bool, total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def _yaml(recipe: DenseRecipe) -> str:
    import yaml
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)


def evaluate_checkpoint(checkpoint, recipe: Optional[DenseRecipe] = None, device: Optional[str] = None
                        ) -> Dict[str, object]:
    """Evaluate a run's last.pth (its recipe inside) or weights (the recipe.yaml beside them, or `recipe`)."""
    ctx = setup_distributed(device)
    try:
        checkpoint = Path(checkpoint)
        state = read_checkpoint(checkpoint)
        if isinstance(state, dict) and 'recipe' in state and 'model' in state:
            weights, saved = state['model'], DenseRecipe.from_dict(state['recipe'])
        else:
            weights, saved = state, None
            if recipe is None and (checkpoint.parent / 'recipe.yaml').is_file():
                from .recipe import load_recipe
                saved = load_recipe(str(checkpoint.parent / 'recipe.yaml'))
        recipe = recipe or saved
        if recipe is None:
            raise ValueError(f'{checkpoint}: no recipe inside and no recipe.yaml beside it; pass --recipe')
        task = make_task(recipe)
        model = task.build_model().to(ctx.device)
        try:
            model.load_state_dict(weights)
        except RuntimeError as e:
            raise CheckpointError(f'{checkpoint} does not fit the {recipe.task} model of its recipe: '
                                  f'{str(e).splitlines()[0]}') from e
        return task.evaluate(model, _eval_loader(task, ctx, recipe), ctx, _autocast(recipe, ctx))
    finally:
        cleanup_distributed()
