import os
import sys
from pathlib import Path

import pytest
import torch

import caretrans  # noqa: F401  (registers the models)

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
# ../shared beside the checkout (read-only material: fixtures and key lists of the release).
SHARED = Path(os.environ.get('CARETRANS_SHARED', TESTS.parent.parent / 'shared'))
OFFICIAL = SHARED / 'fixtures' / 'official'

# One thread per xdist worker: two workers on two cores, no oversubscription.
torch.set_num_threads(1 if 'PYTEST_XDIST_WORKER' in os.environ else min(2, os.cpu_count() or 1))


@pytest.fixture(scope='session')
def official_dir():
    if not OFFICIAL.is_dir():
        pytest.fail(f'shared fixtures not found at {OFFICIAL} (set CARETRANS_SHARED)')
    return OFFICIAL
