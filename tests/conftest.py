"""Shared test set-up: one CPU thread, fixed seeds, derandomized hypothesis.

Hypothesis profiles: ``ci`` (default) is derandomized so every run draws the same examples;
``dev`` explores more examples with fresh randomness: ``HYPOTHESIS_PROFILE=dev pytest``.
"""

import os
import signal

import pytest
import torch
from hypothesis import settings

# The recipe's fixtures (a tiny data set, a finished tiny run), for tests/recipes and tests/faults.
pytest_plugins = ["tests.recipes.fixtures"]

# Other jobs share the 2-core CI machine; one thread per test process is also faster for the
# small tensors used here.
torch.set_num_threads(1)

# A shell that starts the suite as a background job (`cmd &`, nohup, some CI runners) leaves SIGINT
# ignored, and Python then keeps it ignored: Ctrl-C could not reach the process at all. The tests
# of what Ctrl-C does need the disposition of an interactive run, in this process and (a caught
# signal is reset to the default on exec) in the commands they start.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

settings.register_profile("ci", derandomize=True, deadline=None, max_examples=50, print_blob=True)
settings.register_profile("dev", deadline=None, max_examples=300)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_torch():
    """Every test starts from the same global torch seed (network initialisation, randn)."""
    torch.manual_seed(0)
    yield
