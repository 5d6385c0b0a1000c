"""Two gloo processes on CPU train what one process trains with the same global batch.

Without SyncBN (PyTorch synchronises BatchNorm on GPUs only) each rank normalises with its own
batch statistics, so the single-process run that computes the same thing is the one whose
micro-batches are the ranks' batches: batch 8 with 2 accumulation steps, fed by the same
BlockShardSampler (rank r of 2 takes the blocks a single process takes as micro-batch r).
Parameters then agree to float tolerance; BatchNorm running statistics do not (one process
updates them per micro-batch, DDP keeps rank 0's), so the comparison is over parameters.

Run by pytest; torchrun runs this file as a script for the two ranks.
"""
import os
import subprocess
import sys

import pytest
import torch

from caretrans.train.recipe import Recipe
from caretrans.train.trainer import train

RECIPE = dict(data='synthetic', img_size=32, batch_size=8, workers=0, epochs=1, warmup_epochs=0, lr=2e-3,
              drop_path=0.0, scale=(1.0, 1.0), hflip=0.0, aa=None, color_jitter=0.0, reprob=0.0, mixup=0.0,
              cutmix=0.0, smoothing=0.1)


def _rank_main(out_dir: str):
    """One rank: train, then save this rank's weights for the test to compare."""
    torch.set_num_threads(1)
    result = train(Recipe(**RECIPE), os.path.join(out_dir, 'run'), device='cpu', progress=False)
    torch.save(result.model.state_dict(), os.path.join(out_dir, f'rank{os.environ["RANK"]}.pth'))


@pytest.mark.xdist_group('processes')
def test_two_gloo_ranks_equal_one_process_with_the_same_global_batch(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           __file__, str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'global batch 16 on 2 process(es)' in done.stdout  # only rank 0 prints

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(Recipe(**dict(RECIPE, grad_accum_steps=2)), tmp_path / 'single', progress=False)
    finally:
        torch.set_num_threads(threads)

    ranks = [torch.load(tmp_path / f'rank{r}.pth', weights_only=True) for r in (0, 1)]
    for k in ranks[0]:  # identical on both ranks, buffers included (synchronised before evaluation)
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    expected = dict(single.model.named_parameters())
    for k, p in expected.items():
        torch.testing.assert_close(ranks[0][k], p.detach(), rtol=1e-4, atol=1e-5, msg=k)
    # The weights did move: 8 optimiser steps of a global batch of 16 took layer scales off 1e-6.
    assert max(ranks[0][k].abs().max().item() for k in expected if k.endswith('layer_scale')) > 1e-4
    # Only rank 0 wrote the run folder.
    assert sorted(p.name for p in (tmp_path / 'run').iterdir()) == [
        '.lock', 'best.safetensors', 'class_map.txt', 'curves.png', 'last.pth', 'metrics.csv', 'metrics.jsonl', 'recipe.yaml']


if __name__ == '__main__':
    _rank_main(sys.argv[1])
