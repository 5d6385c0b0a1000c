"""Released-format checkpoints without a weight file: every tensor is a closed-form function of its key.

`fixtures/care_s{0,1,2}_released_keys.txt` list each key of the authors' released checkpoints with its
shape; `fixtures/care_s{0,1,2}_closed_form_logits.pt` hold the logits that the authors' model code
computes (eval mode, the mean of the two heads) with the closed-form weights below on the closed-form
inputs below. A few kilobytes stand in for a 29 MB weight file.
"""
import math
import zlib
from pathlib import Path
from typing import Dict, Tuple

import torch

FIXTURES = Path(__file__).parent / 'fixtures'
_STEP_WEIGHTS = 0.7548776662466927  # golden-ratio steps: no period within a tensor
_STEP_INPUTS = 0.3819660112501051


def released_keys(variant: str) -> Dict[str, Tuple[int, ...]]:
    """The released checkpoint's keys and shapes, in file order."""
    keys = {}
    for line in (FIXTURES / f'{variant}_released_keys.txt').read_text().splitlines():
        key, shape = line.split('\t')
        keys[key] = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
    return keys


def _closed_form(key: str, shape: Tuple[int, ...]) -> torch.Tensor:
    last = key.rsplit('.', 1)[-1]
    if last == 'num_batches_tracked':
        return torch.tensor(0, dtype=torch.int64)
    n = math.prod(shape)
    phase = zlib.crc32(key.encode('utf-8')) / 2 ** 32 * 2 * math.pi
    base = torch.sin(torch.arange(n, dtype=torch.float64) * _STEP_WEIGHTS + phase).reshape(shape)
    if len(shape) >= 2:
        t = base / math.sqrt(n // shape[0])  # fan-in scaling
    elif last == 'running_var':
        t = 1 + 0.25 * (base + 1)
    elif last == 'running_mean':
        t = 0.1 * base
    elif last == 'gamma':
        t = 0.5 + 0.25 * base  # layer scale, large so that every block moves the logits
    elif last == 'weight':
        t = 1 + 0.2 * base
    elif last == 'bias':
        t = 0.05 * base
    else:
        raise ValueError(f'no closed form for {key!r}')
    return t.to(torch.float32)


def closed_form_state_dict(variant: str) -> Dict[str, torch.Tensor]:
    """A state_dict in the released key format whose weights are closed-form functions of key and shape."""
    return {k: _closed_form(k, shape) for k, shape in released_keys(variant).items()}


def _closed_form_input(shape: Tuple[int, ...], offset: float) -> torch.Tensor:
    n = math.prod(shape)
    return torch.sin(torch.arange(n, dtype=torch.float64) * _STEP_INPUTS + offset).reshape(shape).float()


def authors_logits(variant: str) -> Dict[str, torch.Tensor]:
    """Inputs and the authors' eval-mode logits: `input`/`logits` (2x3x224x224) and the 160x192 pair."""
    logits = torch.load(FIXTURES / f'{variant}_closed_form_logits.pt', weights_only=True)
    return {
        'input': _closed_form_input((2, 3, 224, 224), 1.0),
        'logits': logits['logits_224'],
        'input_160x192': _closed_form_input((1, 3, 160, 192), 2.0),
        'logits_160x192': logits['logits_160x192'],
    }
