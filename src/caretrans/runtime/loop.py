"""The loop every task trains with: where a run is (LoopState), how a step updates the weights (Updater),
one epoch of steps, and the training state those make on disk."""
import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import torch
import torch.nn as nn

from ..data.loader import set_position
from ..models.checkpoint import save_atomic
from .distributed import DistributedContext
from .signals import stop_notice
from .state import capture_rng_state, restore_rng_state

__all__ = ['TrainingDiverged', 'LoopState', 'Updater', 'EpochResult', 'train_epoch', 'run_epoch', 'save_training_state',
           'restore_training_state', 'progress_bar', 'evaluation_progress']


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number."""


@dataclass
class LoopState:
    """Where a run is: what a resumed run continues from."""

    epoch: int = 0         # the epoch under way (the number of epochs completed)
    batch: int = 0         # its next micro-batch
    global_step: int = 0   # optimiser steps taken
    loss_sum: float = 0.0  # the epoch's training loss summed over its micro-batches so far
    loss_count: int = 0    # how many

    @property
    def epoch_loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)

    def next_epoch(self):
        self.epoch, self.batch, self.loss_sum, self.loss_count = self.epoch + 1, 0, 0.0, 0

    def to_dict(self) -> Dict[str, Any]:
        return dict(epoch=self.epoch, batch=self.batch, global_step=self.global_step,
                    epoch_loss=[self.loss_sum, self.loss_count])

    @classmethod
    def from_dict(cls, state: Dict[str, Any]) -> 'LoopState':
        return cls(state['epoch'], state['batch'], state['global_step'], *state.get('epoch_loss', (0.0, 0)))


@dataclass
class Updater:
    """How gradients accumulated over `accum` micro-batches change the weights: the optimiser and its
    schedule (stepped per update), and optionally a float16 gradient scaler, gradient-norm clipping and
    an EMA of the weights."""

    optimizer: torch.optim.Optimizer
    scheduler: Any
    accum: int = 1
    scaler: Optional[torch.amp.GradScaler] = None
    clip_grad: Optional[float] = None
    ema: Optional[nn.Module] = None

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]['lr']

    def backward(self, loss: torch.Tensor):
        loss = loss / self.accum
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, model: nn.Module, global_step: int):
        """Apply the accumulated gradients as optimiser step number `global_step`."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip_grad)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(model, step=global_step)
        self.scheduler.step_update(num_updates=global_step)

    def state_dict(self) -> Dict[str, Any]:
        return dict(optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                    scaler=self.scaler.state_dict() if self.scaler is not None else None,
                    ema=self.ema.module.state_dict() if self.ema is not None else None)

    def load_state_dict(self, state: Dict[str, Any], schedule: bool = True):
        self.optimizer.load_state_dict(state['optimizer'])
        if schedule:
            self.scheduler.load_state_dict(state['scheduler'])
        if self.scaler is not None and state.get('scaler') is not None:
            self.scaler.load_state_dict(state['scaler'])
        if self.ema is not None and state.get('ema') is not None:
            self.ema.module.load_state_dict(state['ema'])


@dataclass
class EpochResult:
    images_per_s: float  # training throughput of this process times the world size
    stopped: bool        # a signal asked the run to stop


def train_epoch(model: nn.Module, loader: Iterable, loss_of: Callable[[Any, int], Tuple[torch.Tensor, int]],
                updater: Updater, ctx: DistributedContext, loop: LoopState, autocast=contextlib.nullcontext,
                stop=None, progress=None, on_step: Optional[Callable[[int, float], None]] = None) -> EpochResult:
    """Train on `loader`'s micro-batches (those of `loop.epoch` from `loop.batch` on), advancing `loop`, to
    the end of the epoch or until `stop.requested` on any rank (checked at optimiser-step boundaries).

    `loss_of(items, batch)` is the task's part: a micro-batch's loss and its number of images. NaN or
    infinite losses are agreed across ranks with the step's loss, so every rank raises TrainingDiverged
    (naming the step) before that step touches the weights, and none waits in a collective for the others.
    """
    model.train()
    images_seen, micro_losses = 0, []
    start = time.perf_counter()
    for batch, items in enumerate(loader, start=loop.batch):
        last_micro = (batch + 1) % updater.accum == 0
        # DDP all-reduces gradients only on the micro-batch that completes a step.
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with autocast():
                loss, images = loss_of(items, batch)
            updater.backward(loss)
        loop.batch = batch + 1
        micro_losses.append(loss.detach())
        images_seen += images
        if not last_micro:
            continue

        step_losses = torch.stack(micro_losses).float()
        micro_losses = []
        mean_loss, diverged, stopping = _agree(step_losses, stop is not None and stop.requested, ctx)
        if diverged:
            updater.optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f'loss is {step_losses.tolist()} (not finite on some rank) in epoch {loop.epoch + 1}, batch {batch + 1}, '
                f'optimiser step {loop.global_step + 1}; stopped before applying it')
        loop.global_step += 1
        updater.step(model, loop.global_step)
        loop.loss_sum += mean_loss * len(step_losses)
        loop.loss_count += len(step_losses)
        if progress is not None:
            progress.update(updater.accum)
            progress.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{updater.lr:.2e}',
                                 img_s=f'{_rate(images_seen, start, ctx):.0f}', refresh=False)
        if on_step is not None:
            on_step(loop.global_step, mean_loss)
        if stopping:
            return EpochResult(_rate(images_seen, start, ctx), True)
    return EpochResult(_rate(images_seen, start, ctx), False)


def run_epoch(model: nn.Module, loader, loss_of: Callable[[Any, int], Tuple[torch.Tensor, int]], updater: Updater,
              ctx: DistributedContext, loop: LoopState, state_file: os.PathLike, save: Callable[[], None], desc: str,
              autocast=contextlib.nullcontext, stop=None, progress: bool = True,
              on_step: Optional[Callable[[int, float], None]] = None) -> EpochResult:
    """`train_epoch` with what every task does around it: the loader at the run's position, a progress
    bar on rank 0, the last good checkpoint named when the loss diverges, and, when a signal stops the
    epoch, the training state saved (`save`) and how to resume it printed."""
    set_position(loader, loop.epoch, loop.batch)
    bar = progress_bar(progress and ctx.is_primary, desc, loader.sampler.batches_per_epoch, loop.batch)
    try:
        trained = train_epoch(model, loader, loss_of, updater, ctx, loop, autocast, stop, bar, on_step)
    except TrainingDiverged as e:
        raise TrainingDiverged(f'{e}; the last good checkpoint is {state_file}') from None
    finally:
        if bar is not None:
            bar.close()
    if trained.stopped:
        save()
        if ctx.is_primary:
            print(stop_notice(stop, loop.epoch, loop.batch, f'--resume {state_file}'), flush=True)
    return trained


def _agree(step_losses: torch.Tensor, stop: bool, ctx: DistributedContext) -> Tuple[float, bool, bool]:
    """The step's mean loss over all ranks, whether it is not finite on any, and whether any rank was
    asked to stop: one collective."""
    bad = not bool(torch.isfinite(step_losses).all())
    t = torch.tensor([0.0 if bad else step_losses.sum().item(), len(step_losses), float(bad), float(stop)],
                     dtype=torch.float64, device=ctx.device)
    if ctx.is_distributed:
        torch.distributed.all_reduce(t)
    return t[0].item() / max(t[1].item(), 1), t[2].item() > 0, t[3].item() > 0


def _rate(images: int, start: float, ctx: DistributedContext) -> float:
    return images * ctx.world_size / max(time.perf_counter() - start, 1e-9)


def save_training_state(path: os.PathLike, loop: LoopState, model: nn.Module, updater: Updater, recipe,
                        **extra) -> os.PathLike:
    """Write what resuming needs, atomically: weights, optimiser (scaler, EMA), schedule, position, RNGs
    and recipe, with the task's `extra` entries (tensors and plain values: read back without unpickling)."""
    return save_atomic(dict(model=model.state_dict(), **updater.state_dict(), **loop.to_dict(),
                            rng=capture_rng_state(), recipe=recipe.to_dict(), **extra), path)


def restore_training_state(state: Dict[str, Any], model: nn.Module, updater: Updater, epochs: int) -> LoopState:
    """Put a saved run back into `model` and `updater` and the RNGs; returns where it was.

    A schedule saved for another number of epochs is not restored: timm schedulers hold only their
    settings, so the one built for `epochs` continues from the step reached (and sets that step's lr).
    """
    model.load_state_dict(state['model'])
    extended = state['recipe']['epochs'] != epochs
    updater.load_state_dict(state, schedule=not extended)
    loop = LoopState.from_dict(state)
    if extended:
        updater.scheduler.step_update(num_updates=loop.global_step)
    restore_rng_state(state['rng'])
    return loop


def progress_bar(enabled: bool, desc: str, total: int, initial: int = 0):
    """A tqdm bar over an epoch's micro-batches, or None."""
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit='batch', dynamic_ncols=True, mininterval=2.0)


def evaluation_progress(loader: Iterable, enabled: bool, desc: str = 'evaluation') -> Iterable:
    """`loader`, with a progress bar over its batches when `enabled` (it disappears when done)."""
    if not enabled:
        return loader
    try:
        from tqdm import tqdm
    except ImportError:  # the core install (no [train] extra) evaluates without a bar
        return loader
    return tqdm(loader, desc=desc, unit='batch', dynamic_ncols=True, mininterval=2.0, leave=False)
