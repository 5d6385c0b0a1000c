"""One training epoch and one evaluation pass."""
import contextlib
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..runtime.distributed import DistributedContext

__all__ = ['TrainingDiverged', 'EpochResult', 'train_one_epoch', 'evaluate']


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number."""


@dataclass
class EpochResult:
    loss_sum: float      # training loss summed over the epoch's micro-batches so far
    loss_count: int      # how many
    images_per_s: float  # training throughput of this process times the world size
    next_batch: int      # where the epoch stopped (== batches per epoch when complete)
    stopped: bool        # a signal asked the run to stop

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.loss_count, 1)


def _mean_loss_and_flags(loss_sum: float, count: int, bad: bool, stop: bool, ctx: DistributedContext):
    """Sum over ranks in one collective: every rank learns about a NaN or a signal on any rank."""
    t = torch.tensor([loss_sum, count, float(bad), float(stop)], dtype=torch.float64, device=ctx.device)
    if ctx.is_distributed:
        torch.distributed.all_reduce(t)
    return t[0].item() / max(t[1].item(), 1), t[2].item() > 0, t[3].item() > 0


def train_one_epoch(
        model: nn.Module,
        loader,
        loss_fn: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        ctx: DistributedContext,
        epoch: int,
        start_batch: int,
        accum: int,
        global_step: int,
        mixup_fn: Optional[Callable] = None,
        ema=None,
        scaler=None,
        autocast=contextlib.nullcontext,
        clip_grad: Optional[float] = None,
        channels_last: bool = False,
        stop_signal=None,
        progress=None,
        on_step: Optional[Callable[[int, float], None]] = None,
        loss_sum: float = 0.0,
        loss_count: int = 0,
) -> EpochResult:
    """Train from batch `start_batch` to the end of the epoch, or until `stop_signal.requested`
    (checked, agreed across ranks, at optimiser-step boundaries). Raises TrainingDiverged with the
    step number when the loss is NaN or infinite, before that step touches the weights.
    `loss_sum` and `loss_count` carry the epoch's loss so far into a resumed epoch."""
    model.train()
    loss_fn.train()
    images_seen = 0
    micro_losses = []
    start = time.perf_counter()
    next_batch = start_batch  # stays put when a resumed epoch has no batches left
    for batch, items in enumerate(loader, start=start_batch):
        next_batch = batch + 1
        images, targets = _usable_batch(items, batch, pairs=mixup_fn is not None)
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        last_micro = (batch + 1) % accum == 0
        # DDP all-reduces gradients only on the micro-batch that completes a step.
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with autocast():
                loss = loss_fn(images, model(images), targets)
            if scaler is not None:
                scaler.scale(loss / accum).backward()
            else:
                (loss / accum).backward()
        micro_losses.append(loss.detach())
        images_seen += images.shape[0]
        if not last_micro:
            continue

        step_losses = torch.stack(micro_losses).float()
        micro_losses = []
        bad = not bool(torch.isfinite(step_losses).all())
        stop = stop_signal is not None and stop_signal.requested
        mean_loss, bad, stop = _mean_loss_and_flags(
            0.0 if bad else step_losses.sum().item(), len(step_losses), bad, stop, ctx)
        if bad:
            optimizer.zero_grad(set_to_none=True)
            raise TrainingDiverged(
                f'loss is {step_losses.tolist()} (not finite) at epoch {epoch}, batch {batch}, '
                f'optimiser step {global_step + 1}; stopped before applying it')
        if scaler is not None:
            scaler.unscale_(optimizer)
        if clip_grad is not None:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        global_step += 1
        if ema is not None:
            ema.update(model, step=global_step)
        scheduler.step_update(num_updates=global_step)
        loss_sum += mean_loss * len(step_losses)
        loss_count += len(step_losses)
        if progress is not None:
            rate = images_seen * ctx.world_size / (time.perf_counter() - start)
            progress.update(accum)
            progress.set_postfix(loss=f'{mean_loss:.4f}', lr=f'{optimizer.param_groups[0]["lr"]:.2e}',
                                 img_s=f'{rate:.0f}', refresh=False)
        if on_step is not None:
            on_step(global_step, mean_loss)
        if stop:
            return EpochResult(loss_sum, loss_count, _rate(images_seen, start, ctx), next_batch, True)
    return EpochResult(loss_sum, loss_count, _rate(images_seen, start, ctx), next_batch, False)


def _usable_batch(items, batch: int, pairs: bool):
    """A micro-batch without its unreadable images (dropped by the loader's collate_readable); mixup pairs
    images, so an odd one out goes too. One with nothing left cannot join its optimiser step (under DDP
    every rank must), so it stops the run."""
    if items is not None and pairs and len(items[1]) % 2:
        items = items[0][:-1], items[1][:-1]
    if items is None or not len(items[1]):
        raise ValueError(f'training batch {batch} has no readable image{" pair" if pairs else ""} left: the '
                         'unreadable files are logged above; remove them')
    return items


def _rate(images: int, start: float, ctx: DistributedContext) -> float:
    return images * ctx.world_size / max(time.perf_counter() - start, 1e-9)


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: DistributedContext, autocast=contextlib.nullcontext,
             channels_last: bool = False, num_classes: Optional[int] = None) -> Dict[str, object]:
    """Cross-entropy loss, top-1 and top-5 (%) over all ranks' shards; with `num_classes`, also the
    confusion matrix (rows: true class, columns: predicted)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64, device=ctx.device)
    for batch in loader:
        if batch is None:  # every image of it was unreadable, and left out
            continue
        images, targets = batch[0].to(ctx.device), batch[1].to(ctx.device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(images)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, targets, reduction='sum')
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top.eq(targets[:, None])
        correct += torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).double()
        count += targets.numel()
        if num_classes:
            confusion += torch.bincount(targets * num_classes + top[:, 0], minlength=num_classes ** 2).view_as(confusion)
    if ctx.is_distributed:
        for t in (loss_sum, correct, count, confusion):
            torch.distributed.all_reduce(t)
    if count.item() == 0:
        raise ValueError('no image of the evaluation data could be read (each unreadable file is logged above)')
    n = count.item()
    result = dict(loss=loss_sum.item() / n, top1=100 * correct[0].item() / n, top5=100 * correct[1].item() / n,
                  count=int(count.item()))
    if num_classes:
        result['confusion'] = confusion.cpu()
    if not all(math.isfinite(v) for v in (result['loss'], result['top1'])):
        raise TrainingDiverged(f'evaluation loss is {result["loss"]}')
    return result
