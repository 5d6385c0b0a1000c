"""The classification parts of the loop: the loss of a training micro-batch, and an evaluation pass."""
import contextlib
import math
from typing import Callable, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..limits import MIN_INPUT_SIZE
from ..runtime.distributed import DistributedContext
from ..runtime.loop import TrainingDiverged, evaluation_progress

__all__ = ['classification_loss', 'evaluate']


def classification_loss(model: nn.Module, loss_fn: nn.Module, ctx: DistributedContext,
                        mixup_fn: Optional[Callable] = None, channels_last: bool = False,
                        batch_size: Optional[int] = None) -> Callable:
    """The classification part of a training step, `loss_of(items, batch)` for `runtime.loop.train_epoch`:
    a micro-batch (of `batch_size` images, before unreadable ones are dropped) of readable images, mixed
    up, through `model` and `loss_fn`; returns the loss and the number of images."""
    def loss_of(items, batch: int):
        images, targets = _usable_batch(items, batch, pairs=mixup_fn is not None, batch_size=batch_size)
        images, targets = images.to(ctx.device, non_blocking=True), targets.to(ctx.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        if mixup_fn is not None:
            images, targets = mixup_fn(images, targets)
        return loss_fn(images, model(images), targets), images.shape[0]
    return loss_of


def _usable_batch(items, batch: int, pairs: bool, batch_size: Optional[int] = None):
    """A micro-batch without its unreadable images (dropped by the loader's collate_readable); mixup pairs
    images, so an odd one out goes too. One with nothing left cannot join its optimiser step (under DDP
    every rank must), so it stops the run; so does one left with a single image whose last stage has a
    single position (BatchNorm cannot normalise one value), which the batch size asked for would not."""
    if items is not None and pairs and len(items[1]) % 2:
        items = items[0][:-1], items[1][:-1]
    if items is None or not len(items[1]):
        raise ValueError(f'training batch {batch} has no readable image{" pair" if pairs else ""} left: the '
                         'unreadable files are logged above; remove them')
    asked = batch_size or len(items[1])
    if len(items[1]) == 1 < asked and math.prod(s // MIN_INPUT_SIZE for s in items[0].shape[-2:]) == 1:
        height, width = items[0].shape[-2:]
        raise ValueError(
            f'training batch {batch} has 1 of its {asked} images left once unreadable files are dropped (logged '
            f'above): at {height}x{width} a single image leaves one value per channel at stride 32, which '
            'BatchNorm cannot normalise in training mode; remove the unreadable files, or train at 64 px or more')
    return items


@torch.no_grad()
def evaluate(model: nn.Module, loader, ctx: DistributedContext, autocast=contextlib.nullcontext,
             channels_last: bool = False, num_classes: Optional[int] = None, progress: bool = False
             ) -> Dict[str, object]:
    """Cross-entropy loss, top-1 and top-5 (%) over all ranks' shards; with `num_classes`, also the
    confusion matrix (rows: true class, columns: predicted). `progress`: a progress bar over the batches."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    correct = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    count = torch.zeros((), dtype=torch.float64, device=ctx.device)
    confusion = torch.zeros(num_classes or 1, num_classes or 1, dtype=torch.int64, device=ctx.device)
    for batch in evaluation_progress(loader, progress):
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
