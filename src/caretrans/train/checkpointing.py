"""Training state on disk: RNG states, atomic save, safe load, and stopping cleanly on a signal."""
import os
import random
import signal
from typing import Any, Dict, Iterable, List, Optional

import numpy as np
import torch

from ..models.checkpoint import CheckpointError, read_checkpoint, save_atomic

__all__ = ['capture_rng_state', 'restore_rng_state', 'save_training_state', 'load_training_state', 'recipe_changes',
           'GracefulStop', 'stop_notice']


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as tensors and plain values only,
    so that `torch.load(..., weights_only=True)` reads them back."""
    version, mt_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = dict(
        python=dict(version=version, state=torch.tensor(mt_state, dtype=torch.int64), gauss=gauss),
        numpy=dict(name=np_name, keys=torch.from_numpy(np_keys.astype(np.int64)), pos=int(np_pos),
                   has_gauss=int(np_has_gauss), gauss=float(np_gauss)),
        torch=torch.get_rng_state(),
    )
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]):
    """Put back what `capture_rng_state` captured."""
    py = state['python']
    random.setstate((py['version'], tuple(py['state'].tolist()), py['gauss']))
    np_state = state['numpy']
    np.random.set_state((np_state['name'], np_state['keys'].numpy().astype(np.uint32), np_state['pos'],
                         np_state['has_gauss'], np_state['gauss']))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def save_training_state(path: os.PathLike, state: Dict[str, Any]):
    """Write `state` atomically: a reader finds the previous file or the new one, never half of one."""
    return save_atomic(state, path)


def load_training_state(path: os.PathLike) -> Dict[str, Any]:
    """Read a training state without unpickling code; a bad file raises CheckpointError."""
    state = read_checkpoint(path)
    if not isinstance(state, dict):
        raise CheckpointError(f'{path} holds a {type(state).__name__}, not a training state dict')
    return state


def recipe_changes(saved: Dict[str, Any], requested: Dict[str, Any], free: Iterable[str] = ()) -> List[str]:
    """'field: saved -> requested' for every field where a resumed run would not continue the saved
    one (fields in `free` may change on resume)."""
    return [f'{k}: {saved.get(k)!r} -> {requested.get(k)!r}' for k in sorted(set(saved) | set(requested))
            if k not in free and saved.get(k) != requested.get(k)]


class GracefulStop:
    """Within `with GracefulStop() as stop:`, SIGTERM and SIGINT set `stop.requested` (and `stop.signal`)
    instead of killing the process, so a loop can finish its step and save; a second SIGINT raises
    KeyboardInterrupt. Handlers are restored on exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.signal: Optional[str] = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C does not wait for the step to end
        self.requested = True
        self.signal = signal.Signals(signum).name

    def __enter__(self) -> 'GracefulStop':
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        return False


def stop_notice(stop: GracefulStop, epoch: int, batch: int, resume: str) -> str:
    """What a run stopped by a signal prints: where it stopped and how to continue it."""
    return (f'stopped by {stop.signal or "a signal on another rank"} at epoch {epoch}, batch {batch}; '
            f'resume with {resume}')
