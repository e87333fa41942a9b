import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Run detection tests with one intra-op thread.

    Their tensors are small, so OpenMP start-up dominates; on a shared 2-core machine two threads
    made a tiny training step 10-30x slower (0.1 s -> 1-3 s) than one thread.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
