"""Two gloo processes on CPU: a NaN loss on one rank of a dense run stops every rank, none waits on the other.

Run by pytest; torchrun runs this file as a script for the two ranks.
"""
import os
import subprocess
import sys

import pytest


def _rank_main(data: str, out_dir: str):
    """One rank of a segmentation run whose second step's loss is NaN on rank 1 only."""
    import torch

    from caretrans.dense.recipe import PRESETS, DenseRecipe
    from caretrans.dense.tasks import SegmentationTask
    from caretrans.dense.train import train

    torch.set_num_threads(1)
    rank, real_loss, calls = int(os.environ['RANK']), SegmentationTask.loss, []

    def loss(model, batch, device):
        calls.append(1)
        value = real_loss(model, batch, device)
        return value * float('nan') if rank == 1 and len(calls) == 2 else value
    SegmentationTask.loss = staticmethod(loss)
    recipe = DenseRecipe(**dict(PRESETS['shapes-seg'], data=data, crop_size=64, scale=64, min_size=64, batch_size=2,
                                epochs=2))
    try:
        train(recipe, os.path.join(out_dir, 'run'), device='cpu', progress=False)
        outcome = 'finished'
    except Exception as e:  # noqa: BLE001  (what each rank ended with is the test's subject)
        outcome = f'{type(e).__name__}: {e}'
    with open(os.path.join(out_dir, f'rank{rank}.txt'), 'w') as f:
        f.write(outcome)


@pytest.mark.xdist_group('processes')
def test_a_nan_loss_on_one_rank_stops_both_ranks(tmp_path):
    from caretrans.dense.synthetic import make_shapes_dataset

    make_shapes_dataset(tmp_path / 'data', num_train=8, num_val=2, image_size=64, seed=0)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           __file__, str(tmp_path / 'data'), str(tmp_path)]
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.fail('a rank hung after the NaN of the other')
    outcomes = [(tmp_path / f'rank{r}.txt').read_text() if (tmp_path / f'rank{r}.txt').exists() else None
                for r in (0, 1)]
    for outcome in outcomes:  # each rank raised, naming the step, before applying it
        assert outcome is not None and outcome.startswith('TrainingDiverged') and 'not finite' in outcome \
            and 'epoch 1, batch 2, optimiser step 2' in outcome, (outcomes, done.stdout[-2000:], done.stderr[-3000:])
    assert done.returncode == 0


if __name__ == '__main__':
    _rank_main(sys.argv[1], sys.argv[2])
