"""Training speed of CARE-S0: care.py of an earlier commit against the working tree.

The fusions are for inference only; this checks that the training graph did not get slower
(default: before the re-parameterisation work, commit eb01688), and measures what the training
fast paths buy (`--before 4988b37 --img-size 32 --batch-size 512 --in-chans 1 --channels-last`).
"Before" is care.py at the given commit (loaded from git), "after" is the working tree; both
train the same weights on the same batches, interleaved step by step.

    .venv/bin/python benchmarks/inference_train_speed.py [--img-size 128 --batch-size 16 --steps 8]
"""
import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from caretrans.bench.latency import time_interleaved
from caretrans.models import care


def load_care_before(root: Path, commit: str):
    """care.py at `commit`, as a module of the caretrans.models package (model registration removed)."""
    source = subprocess.run(['git', 'show', f'{commit}:src/caretrans/models/care.py'], cwd=root, check=True,
                            capture_output=True, text=True).stdout.replace('@register_model\n', '')
    path = Path(tempfile.mkdtemp()) / 'care_before.py'
    path.write_text(source)
    spec = importlib.util.spec_from_file_location('caretrans.models.care_before', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def train_step_runner(module, args, state_dict):
    model = module.CareTransformer(**care.MODEL_ARGS['care_s0'], in_chans=args.in_chans).train()
    model.load_state_dict(state_dict)
    if hasattr(model, 'set_distilled_training'):  # later models give the two heads apart only when asked
        model.set_distilled_training(True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, args.in_chans, args.img_size, args.img_size, generator=g)
    y = torch.randint(1000, (args.batch_size,), generator=g)
    if args.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)

    def step():
        out, out_dist = model(x)
        loss = torch.nn.functional.cross_entropy(out, y) + torch.nn.functional.cross_entropy(out_dist, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--img-size', type=int, default=128)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--steps', type=int, default=8, help='interleaved timed steps per version')
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--in-chans', type=int, default=3)
    parser.add_argument('--channels-last', action='store_true')
    parser.add_argument('--before', default='eb01688', help='the commit whose care.py is "before"')
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(__file__).resolve().parents[1]
    state_dict = care.CareTransformer(**care.MODEL_ARGS['care_s0'], in_chans=args.in_chans).state_dict()
    runners = {'before': train_step_runner(load_care_before(root, args.before), args, state_dict),
               'after': train_step_runner(care, args, state_dict)}
    times = time_interleaved(runners, rounds=args.steps, warmup=2)
    ratio = np.median(np.array(times['after']) / np.array(times['before']))
    for name, t in times.items():
        print(f'care_s0 training, {name:>6} ({args.before if name == "before" else "working tree"}): '
              f'{args.batch_size / np.median(t) * 1e3:.1f} images/s (batch {args.batch_size}, '
              f'{args.img_size}x{args.img_size}, {args.in_chans} channel(s), '
              f'{"channels-last, " if args.channels_last else ""}{args.threads} threads)')
    print(f'step time after / before (median of interleaved ratios): {ratio:.3f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
