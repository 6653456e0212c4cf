"""Shared test settings."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    """One torch thread: on the 2 shared CI cores, OpenMP spinning with 2 threads made small ops
    about 40x slower. Tests that need more threads set them themselves."""
    try:
        import torch
    except ImportError:  # the core tests run without torch too
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
