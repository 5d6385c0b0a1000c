import os
import sys
from pathlib import Path

import pytest
import torch

import caretrans  # noqa: F401  (registers the models)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))

from released import closed_form_state_dict  # noqa: E402

# One thread per xdist worker: two workers on two cores, no oversubscription.
torch.set_num_threads(1 if 'PYTEST_XDIST_WORKER' in os.environ else min(2, os.cpu_count() or 1))


@pytest.fixture(scope='session')
def released_checkpoint(tmp_path_factory):
    """released_checkpoint(variant) -> a file as the authors release it (a plain state_dict saved by
    torch.save, named CARETrans_S*.pth.tar), holding the closed-form weights of tests/released.py."""
    folder = tmp_path_factory.mktemp('released')

    def make(variant: str = 'care_s0') -> Path:
        path = folder / f'CARETrans_{variant.split("_")[1].upper()}.pth.tar'
        if not path.exists():
            torch.save(closed_form_state_dict(variant), path)
        return path

    return make


@pytest.fixture
def one_thread():
    """One torch thread even in a serial run: on shared cores a second thread costs more than it gives."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
