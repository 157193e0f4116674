"""Shared test fixtures."""
import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tiny networks on one intra-op thread: on a shared or oversubscribed CPU, OpenMP threads
    spin against each other and small shapes get many times slower (one thread is faster for them anyway)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
