"""`fit(task, recipe, run_dir)`: the one outer loop of every training run, whatever its task.

A run is: take the run folder, build the task's parts (data, model, loss, optimiser), continue a saved
state if asked, then epochs of steps, each followed by a save, the task's evaluation, its best
weights and a log record. The task supplies what differs (`Task`); saving, signals, resume,
evaluation order and logging live here once.
"""
import contextlib
import dataclasses
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
import torch.nn as nn

from ..models.card import ModelCard
from ..models.checkpoint import save_weights
from .distributed import DistributedContext, distribute, sync_buffers
from .folder import RunFolder
from .loop import LoopState, Updater, restore_training_state, run_epoch, save_training_state
from .metrics import MetricsLogger
from .signals import GracefulStop, stop_notice
from .state import already_finished, read_resume_state, seed_everything

__all__ = ['Parts', 'Task', 'FitResult', 'fit', 'STATE_FILE']

STATE_FILE = 'last.pth'  # a run's training state, beside its recipe.yaml


@dataclasses.dataclass
class Parts:
    """What a task builds for a run."""

    model: nn.Module                 # the model trained and saved (not wrapped in DDP)
    train_loader: Any                # a data.loader.create_train_loader loader
    updater: Updater
    autocast: Callable = contextlib.nullcontext
    sync_bn: bool = False            # synchronise BatchNorm across processes
    compile: bool = False            # torch.compile the training and evaluation models


class Task(Protocol):
    """A task's part of a run (classification, detection, segmentation); `fit` calls these."""

    recipe: Any
    weights_file: str                # the weights `fit` writes after an evaluation (see `score`)

    def build(self, ctx: DistributedContext, resume: Optional[Path]) -> Parts:
        """Data, model, optimiser and schedule; `resume` is the state file of a resumed run."""

    def loss_of(self, model: nn.Module) -> Callable[[Any, int], Tuple[torch.Tensor, int]]:
        """`loss_of(items, batch)`: a training micro-batch's loss through `model` (DDP-wrapped or compiled)
        and its image count (runtime.loop.train_epoch's task part)."""

    def evaluates(self, epoch: int) -> bool:
        """Whether the epoch numbered `epoch` (1-based) ends with an evaluation."""

    def evaluate(self, model: nn.Module, parts: Parts, ctx: DistributedContext, progress: bool) -> Dict[str, Any]:
        """The validation figures of `model` (all ranks take part)."""

    def score(self, metrics: Dict[str, Any]) -> Optional[float]:
        """What picks the weights to keep (higher is better); None: keep the latest."""

    def weights_of(self, parts: Parts, metrics: Dict[str, Any]) -> nn.Module:
        """The module whose weights an evaluation's `score` is of (the model, or its EMA)."""

    def weights_info(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """What the weights file records beside the model name and epoch (e.g. the score)."""

    def card(self) -> Optional[ModelCard]:
        """The model card recorded with the weights."""

    def write_files(self, run_dir: Path):
        """The task's own files in the run folder, written when the run starts (e.g. class_map.txt)."""

    def banner(self, parts: Parts, ctx: DistributedContext) -> str:
        """The line printed when training starts: model, data, batch."""

    def epoch_line(self, record: Dict[str, Any]) -> str:
        """The line printed after an epoch, from its log record."""


@dataclasses.dataclass
class FitResult:
    status: str                      # 'finished', 'already finished' or the signal that stopped the run
    epoch: int                       # epochs completed
    global_step: int
    metrics: Dict[str, Any]          # the last evaluation
    best: Optional[float]            # the best `score` so far
    run_dir: Path
    model: Optional[nn.Module]       # the trained model (None when nothing was built)


def fit(task: Task, run_dir, ctx: DistributedContext, resume: Optional[str] = None, progress: bool = True,
        tensorboard: bool = False, announce: Callable[[], None] = lambda: None) -> FitResult:
    """Train `task` into `run_dir`, or continue the run saved in `resume` (its last.pth).

    The run folder is created and locked first (another run on it is refused), so that nothing is
    computed for a run that could not be saved. Every epoch is saved before it is evaluated (an
    evaluation that fails loses no training; a resumed run evaluates first). Epochs are numbered from
    1 in what the run prints and writes. A signal stops the run after saving it. `announce` runs once
    the parts are built, before the first step (the command prints the recipe there).
    """
    recipe, run_dir = task.recipe, Path(run_dir)
    with RunFolder(run_dir, ctx.is_primary) as folder:
        seed_everything(recipe.seed + ctx.rank, getattr(recipe, 'deterministic', False))
        state = read_resume_state(resume, recipe) if resume else None
        if state is not None and already_finished(state, recipe.epochs, resume, ctx.is_primary):
            return FitResult('already finished', state['epoch'], state['global_step'], state.get('metrics', {}),
                             state.get('best', state.get('best_top1')), run_dir, None)
        parts = task.build(ctx, Path(resume) if resume else None)
        # `record`: the last epoch's log record, kept in the state until its evaluation is in it.
        loop, best, metrics, evaluated, record = LoopState(), None, {}, True, {}
        if state is not None:
            loop = restore_training_state(state, parts.model, parts.updater, recipe.epochs)
            best, metrics = state.get('best', state.get('best_top1')), state.get('metrics', {})
            evaluated, record = state.get('evaluated', True), state.get('record', {})
        train_model = distribute(parts.model, ctx, parts.sync_bn)
        eval_model = parts.model
        if parts.compile:  # one compiled graph for training (through DDP), one for evaluation; same parameters
            train_model, eval_model = torch.compile(train_model), torch.compile(parts.model)

        log = MetricsLogger(run_dir, enabled=ctx.is_primary)
        writer = _tensorboard(run_dir) if tensorboard and ctx.is_primary else None
        card = task.card()
        if ctx.is_primary:
            recipe.save(run_dir / 'recipe.yaml')
            task.write_files(run_dir)
            log.truncate('epoch', loop.epoch + 1)  # records after the saved state are redone
            announce()
            print(task.banner(parts, ctx), flush=True)

        def save_state():
            if ctx.is_primary:
                save_training_state(folder.path / STATE_FILE, loop, parts.model, parts.updater, recipe,
                                    best=best, metrics=_plain(metrics), evaluated=evaluated, record=_plain(record),
                                    model_name=recipe.model,
                                    **({} if card is None else dict(card=card.to_dict())))

        def evaluate_epoch():
            nonlocal best, metrics, evaluated
            sync_buffers(parts.model, ctx)
            metrics = task.evaluate(eval_model, parts, ctx, progress)
            score = task.score(metrics)
            if ctx.is_primary and (score is None or best is None or score > best):
                save_weights(task.weights_of(parts, metrics), run_dir / task.weights_file, card=card,
                             model_name=recipe.model, epoch=loop.epoch, **task.weights_info(metrics))
            if score is not None and (best is None or score > best):
                best = score
            evaluated = True
            save_state()

        def log_epoch(record: Dict[str, Any]):
            log.log(record)
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, (int, float)):
                        writer.add_scalar(f'epoch/{key}', value, loop.epoch)
            if ctx.is_primary:
                log.plot()
                print(task.epoch_line(record), flush=True)

        loss_of = task.loss_of(train_model)
        with GracefulStop() as stop:
            if not evaluated:  # the saved run stopped between an epoch's save and its evaluation
                evaluate_epoch()
                log_epoch(dict(record, **_plain(metrics)))
            while loop.epoch < recipe.epochs:
                trained = run_epoch(train_model, parts.train_loader, loss_of,
                                    parts.updater, ctx, loop, folder.path / STATE_FILE, save_state,
                                    f'epoch {loop.epoch + 1}/{recipe.epochs}', parts.autocast, stop, progress,
                                    on_step=_tensorboard_step(writer, parts.updater))
                if trained.stopped:
                    return FitResult(stop.signal or 'stopped', loop.epoch, loop.global_step, metrics, best, run_dir,
                                     parts.model)
                record = dict(epoch=loop.epoch + 1, step=loop.global_step, train_loss=loop.epoch_loss,
                              lr=parts.updater.lr, train_img_s=trained.images_per_s)
                loop.next_epoch()
                stopping = False
                if task.evaluates(loop.epoch):
                    evaluated = False
                    save_state()  # the epoch is safe before its evaluation runs
                    evaluate_epoch()
                    record.update(_plain(metrics))
                    stopping = stop.requested  # a signal during the evaluation: stop once it is logged
                else:
                    save_state()
                log_epoch(record)
                if stopping:
                    if ctx.is_primary:
                        print(stop_notice(stop, loop.epoch, 0, f'--resume {folder.path / STATE_FILE}'), flush=True)
                    return FitResult(stop.signal, loop.epoch, loop.global_step, metrics, best, run_dir, parts.model)
        if writer is not None:
            writer.close()
        return FitResult('finished', loop.epoch, loop.global_step, metrics, best, run_dir, parts.model)


def _plain(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The numbers of an evaluation (what the log and the training state keep)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(str(run_dir / 'tensorboard'))


def _tensorboard_step(writer, updater: Updater):
    if writer is None:
        return None

    def log(step: int, loss: float):
        writer.add_scalar('train/loss', loss, step)
        writer.add_scalar('train/lr', updater.lr, step)
    return log
