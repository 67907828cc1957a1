import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread_and_seed():
    """2 shared cores: one intra-op thread; a fixed seed so every test is deterministic."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(prev)
