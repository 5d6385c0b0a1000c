"""Training state: seeding, RNG states, safe loading of a saved state, and the rules for resuming from one."""
import os
import random
from typing import Any, Dict, Iterable, List

import numpy as np
import torch

from ..models.checkpoint import CheckpointError, read_checkpoint

__all__ = ['seed_everything', 'capture_rng_state', 'restore_rng_state', 'load_training_state', 'recipe_changes',
           'read_resume_state', 'already_finished', 'RESUMABLE_FIELDS', 'STATE_KEYS']

# Recipe fields a resumed run may change: they do not alter what is computed (`data`: the same data
# moved elsewhere; the run's classes stay matched by name). `epochs` may also grow: the run trains on
# with its schedule recomputed for the new length.
RESUMABLE_FIELDS = ('workers', 'compile', 'data')
# What every task's training state holds, whatever else it adds.
STATE_KEYS = frozenset({'model', 'optimizer', 'scheduler', 'epoch', 'batch', 'global_step', 'rng', 'recipe'})


def seed_everything(seed: int, deterministic: bool = False):
    """Seed Python's, NumPy's and torch's generators; with `deterministic`, deterministic kernels only."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


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


def read_resume_state(path: os.PathLike, recipe) -> Dict[str, Any]:
    """The training state to continue `recipe` from, refused (CheckpointError) if it is not a training state,
    is of another model, or was trained with another recipe (but for RESUMABLE_FIELDS and a larger `epochs`)."""
    state = load_training_state(path)
    missing = STATE_KEYS - set(state)
    if missing:
        raise CheckpointError(f'{path} is not a caretrans training state (no {", ".join(sorted(missing))}); '
                              'to start from weights only, this is not --resume')
    if state['recipe'].get('model') != recipe.model:
        raise CheckpointError(f'{path} is a checkpoint of {state["recipe"].get("model")!r}, '
                              f'not of {recipe.model!r}')
    grows = recipe.epochs >= state['recipe'].get('epochs', recipe.epochs + 1)
    changed = recipe_changes(_absolute(state['recipe'], recipe), recipe.to_dict(),
                             free=RESUMABLE_FIELDS + (('epochs',) * grows))
    if changed:
        raise CheckpointError(f'{path} was trained with another recipe; resuming would not continue that run. '
                              f'Differences: ' + '; '.join(changed))
    return state


def _absolute(saved: Dict[str, Any], recipe) -> Dict[str, Any]:
    """A saved recipe with its paths absolute, as a recipe being resumed has them (a run saved with
    relative paths is compared from the working directory it is resumed in)."""
    try:
        return type(recipe).from_dict(saved).with_absolute_paths().to_dict()
    except ValueError:  # not a recipe of this version: compared as it is
        return saved


def already_finished(state: Dict[str, Any], epochs: int, path: os.PathLike, primary: bool) -> bool:
    """Whether a resumed run has trained its `epochs` already (rank 0 says so)."""
    if state['epoch'] < epochs:
        return False
    if primary:
        print(f'{path} has finished its {state["epoch"]} epochs: nothing to train (a larger --epochs continues it)',
              flush=True)
    return True
