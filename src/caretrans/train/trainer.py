"""`train(recipe, run_dir)`: data, model, loss, optimiser, schedule, then epochs with checkpoints."""
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
from timm.data import Mixup
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3

from ..data import CLASS_MAP_FILE, create_dataset, dataset_info, recorded_classes, save_class_map
from ..data.loader import build_transform, create_eval_loader, create_train_loader, default_img_size
from ..models.checkpoint import load_checkpoint, load_weights, save_weights
from ..runtime.distributed import DistributedContext, cleanup_distributed, distribute, setup_distributed, sync_buffers
from ..runtime.loop import (LoopState, run_epoch, TrainingDiverged, Updater, restore_training_state,
                            save_training_state)
from ..runtime.metrics import MetricsLogger
from ..runtime.precision import mixed_precision
from ..runtime.signals import GracefulStop
from ..runtime.state import already_finished, read_resume_state, seed_everything
from .card import classifier_card
from .engine import classification_loss, evaluate
from .loss import DistillationLoss, base_criterion
from .recipe import Recipe

__all__ = ['train', 'TrainResult', 'TrainingDiverged']

# The run's files beside recipe.yaml: its training state and its best weights (by validation top-1).
STATE_FILE, BEST_FILE = 'last.pth', 'best.safetensors'


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
          progress: bool = True, tensorboard: bool = False) -> TrainResult:
    """Run `recipe`, writing checkpoints, metrics and curves into `run_dir` (rank 0 only)."""
    ctx = setup_distributed(device)
    try:
        return _train(recipe, Path(run_dir), resume, ctx, progress, tensorboard)
    finally:
        cleanup_distributed()


def _train(recipe: Recipe, run_dir: Path, resume: Optional[str], ctx: DistributedContext,
           progress: bool, tensorboard: bool) -> TrainResult:
    seed_everything(recipe.seed + ctx.rank, recipe.deterministic)
    state = read_resume_state(resume, recipe) if resume else None
    if state is not None and already_finished(state, recipe.epochs, resume, ctx.is_primary):
        return TrainResult('already finished', state['epoch'], state['global_step'], {}, state['best_top1'],
                           run_dir, None, None, None, None)

    # Data: datasets labelled by one class list (a resumed run's own), timm transforms, block-sharded
    # loaders, mixup/cutmix.
    classes = recorded_classes(Path(resume).parent) if resume else None
    train_set = create_dataset(recipe.data, 'train', classes=classes)
    info = dataset_info(train_set)
    _check_fits_data(recipe, info)
    img_size = recipe.img_size if recipe.img_size is not None else default_img_size(info['native_size'])
    num_classes = recipe.num_classes if recipe.num_classes is not None else info['num_classes']
    in_chans = recipe.in_chans if recipe.in_chans is not None else info['in_chans']
    train_set.transform = _transform(recipe, info, img_size, training=True)
    val_set = create_dataset(recipe.data, 'val', _transform(recipe, info, img_size, training=False),
                             classes=info['classes'])
    train_loader = create_train_loader(train_set, recipe.batch_size, ctx.rank, ctx.world_size,
                                       recipe.grad_accum_steps, recipe.seed, recipe.workers,
                                       pin_memory=ctx.device.type == 'cuda')
    val_loader = create_eval_loader(val_set, recipe.batch_size, ctx.rank, ctx.world_size, recipe.workers,
                                    pin_memory=ctx.device.type == 'cuda')
    mixup_fn = _mixup(recipe, num_classes)
    card = classifier_card(recipe, info, img_size, in_chans, info['classes'])  # recorded with every weight file

    # Model (and EMA, teacher), loss, optimiser and schedule.
    model = timm.create_model(recipe.model, num_classes=num_classes, in_chans=in_chans,
                              drop_path_rate=recipe.drop_path)
    if recipe.initial_checkpoint and state is None:
        loaded = load_weights(model, recipe.initial_checkpoint, label_names=card.label_names)  # classes by name
        if ctx.is_primary:
            print(loaded, flush=True)
    if hasattr(model, 'set_distilled_training'):
        model.set_distilled_training(True)  # both heads learn, as the release trains them (DistillationLoss)
    model = model.to(ctx.device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = _teacher(recipe, num_classes, in_chans, ctx.device)
    loss_fn = DistillationLoss(base_criterion(mixup_fn is not None, recipe.smoothing), teacher)
    lr = recipe.scaled_lr(ctx.world_size)
    optimizer = create_optimizer_v2(model, opt=recipe.opt, lr=lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = train_loader.sampler.steps
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=recipe.sched, num_epochs=recipe.epochs, warmup_epochs=recipe.warmup_epochs,
        warmup_lr=recipe.warmup_lr, min_lr=recipe.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    ema = ModelEmaV3(model, decay=recipe.model_ema_decay) if recipe.model_ema else None
    autocast, scaler = mixed_precision(recipe.amp_dtype if recipe.amp else None, ctx.device)
    updater = Updater(optimizer, scheduler, recipe.grad_accum_steps, scaler, recipe.clip_grad, ema)

    loop, best_top1 = LoopState(), float('-inf')
    if state is not None:
        loop, best_top1 = restore_training_state(state, model, updater, recipe.epochs), state['best_top1']
    ddp_model = distribute(model, ctx, recipe.sync_bn)
    eval_model = model
    if recipe.compile:  # one compiled graph for training (through DDP), one for evaluation; same parameters
        ddp_model, eval_model = torch.compile(ddp_model), torch.compile(model)
    loss_of = classification_loss(ddp_model, loss_fn, ctx, mixup_fn, recipe.channels_last)

    metrics_log = MetricsLogger(run_dir, enabled=ctx.is_primary)
    writer = _tensorboard(run_dir) if tensorboard and ctx.is_primary else None
    if ctx.is_primary:
        run_dir.mkdir(parents=True, exist_ok=True)
        recipe.save(run_dir / 'recipe.yaml')
        save_class_map(info['classes'], run_dir / CLASS_MAP_FILE)
        metrics_log.truncate('epoch', loop.epoch)
        print(f'{recipe.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params, '
              f'{len(train_set)} training / {len(val_set)} validation images at {img_size}x{img_size}, '
              f'{num_classes} classes, {in_chans} channel(s); global batch '
              f'{recipe.global_batch(ctx.world_size)} on {ctx.world_size} process(es), lr {lr:.3g}', flush=True)

    def checkpoint():
        if ctx.is_primary:
            save_training_state(run_dir / STATE_FILE, loop, model, updater, recipe, best_top1=best_top1,
                                model_name=recipe.model, card=card.to_dict())

    def result(status: str) -> TrainResult:
        return TrainResult(status, loop.epoch, loop.global_step, last_eval, best_top1, run_dir, model, img_size,
                           in_chans, info['classes'])

    last_eval: Dict[str, Any] = {}
    with GracefulStop() as stop:
        while loop.epoch < recipe.epochs:
            trained = run_epoch(ddp_model, train_loader, loss_of, updater, ctx, loop, run_dir / STATE_FILE, checkpoint,
                                f'epoch {loop.epoch + 1}/{recipe.epochs}', autocast, stop, progress,
                                on_step=_tensorboard_step(writer, optimizer))
            if trained.stopped:
                return result(stop.signal or 'stopped')

            sync_buffers(model, ctx)
            record, last_eval, top1 = _evaluate_epoch(eval_model, ema, val_loader, ctx, autocast, recipe, num_classes)
            record.update(epoch=loop.epoch, train_loss=loop.epoch_loss, lr=updater.lr, train_img_s=trained.images_per_s)
            bad_images = getattr(train_set, 'num_bad_images', 0) + getattr(val_set, 'num_bad_images', 0)
            if bad_images:
                record['bad_images'] = bad_images
            loop.next_epoch()
            if top1 > best_top1:
                best_top1 = top1
                if ctx.is_primary:
                    best = ema.module if ema is not None and top1 == record.get('ema_val_top1') else model
                    save_weights(best, run_dir / BEST_FILE, card=card, model_name=recipe.model, epoch=loop.epoch,
                                 top1=top1)
            checkpoint()
            metrics_log.log(record)
            if writer is not None:
                for key, value in record.items():
                    writer.add_scalar(f'epoch/{key}', value, loop.epoch)
            if ctx.is_primary:
                metrics_log.plot()
                print(f'epoch {record["epoch"]}: train loss {record["train_loss"]:.4f}, '
                      f'val loss {last_eval["loss"]:.4f}, top-1 {last_eval["top1"]:.2f}%, '
                      f'top-5 {last_eval["top5"]:.2f}%, {trained.images_per_s:.0f} img/s'
                      + (f', {bad_images} unreadable image(s) skipped' if bad_images else ''), flush=True)
    if writer is not None:
        writer.close()
    return result('finished')


def _evaluate_epoch(model, ema, val_loader, ctx: DistributedContext, autocast, recipe: Recipe, num_classes: int):
    """The validation figures of an epoch (of the EMA too), the evaluation of `model`, and the top-1 that picks
    the best checkpoint (as timm: the EMA's, when there is one)."""
    evaluation = evaluate(model, val_loader, ctx, autocast, recipe.channels_last,
                          num_classes=num_classes if num_classes <= 50 else None)
    record = dict(val_loss=evaluation['loss'], val_top1=evaluation['top1'], val_top5=evaluation['top5'])
    if ema is None:
        return record, evaluation, evaluation['top1']
    ema_eval = evaluate(ema.module, val_loader, ctx, autocast, recipe.channels_last)
    record.update(ema_val_top1=ema_eval['top1'], ema_val_loss=ema_eval['loss'])
    return record, evaluation, ema_eval['top1']


def _check_fits_data(recipe: Recipe, info: Dict[str, Any]):
    """Refuse, before any work, a class count or channel count the data does not allow."""
    if recipe.num_classes is not None and recipe.num_classes < info['num_classes']:
        raise ValueError(f'recipe field num_classes: {recipe.num_classes} is too few for {recipe.data}, which has '
                         f'{info["num_classes"]} classes')
    if recipe.in_chans is not None and recipe.in_chans != info['in_chans']:
        raise ValueError(f'recipe field in_chans: {recipe.in_chans} does not fit {recipe.data}, whose images have '
                         f'{info["in_chans"]} channel(s)')


def _transform(recipe: Recipe, info: Dict[str, Any], img_size: int, training: bool):
    return build_transform(training, img_size, info['mean'], info['std'], recipe.scale, recipe.hflip,
                           None if recipe.aa in (None, 'none') else recipe.aa, recipe.color_jitter, recipe.reprob,
                           recipe.crop_pct)


def _mixup(recipe: Recipe, num_classes: int) -> Optional[Mixup]:
    if recipe.mixup <= 0 and recipe.cutmix <= 0:
        return None
    if recipe.batch_size % 2:
        raise ValueError(f'mixup/cutmix pair up images: --batch-size {recipe.batch_size} must be even')
    return Mixup(mixup_alpha=recipe.mixup, cutmix_alpha=recipe.cutmix, label_smoothing=recipe.smoothing,
                 num_classes=num_classes)


def _teacher(recipe: Recipe, num_classes: int, in_chans: int, device: torch.device):
    if recipe.teacher is None:
        if recipe.teacher_checkpoint is not None:
            raise ValueError('--teacher-checkpoint needs --teacher MODEL')
        return None
    teacher = timm.create_model(recipe.teacher, num_classes=num_classes, in_chans=in_chans)
    if recipe.teacher_checkpoint is not None:
        load_checkpoint(teacher, recipe.teacher_checkpoint)
    return teacher.to(device).eval()


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir / 'tensorboard'))


def _tensorboard_step(writer, optimizer):
    if writer is None:
        return None

    def log(step: int, loss: float):
        writer.add_scalar('train/loss', loss, step)
        writer.add_scalar('train/lr', optimizer.param_groups[0]['lr'], step)
    return log
