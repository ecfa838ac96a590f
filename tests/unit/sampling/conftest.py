"""Sampling tests run on tiny tensors, where waking torch's intra-op thread pool costs far more than
the work (25 ms instead of 15 us per op on a busy 2-core machine): run them on one thread."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
