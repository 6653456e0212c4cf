"""Shared test settings."""

import contextlib
import importlib

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


class TrainingInterrupted(RuntimeError):
    """A training run stopped on purpose by :func:`stop_training_after`."""


@pytest.fixture
def stop_training_after():
    """``with stop_training_after(n): train(...)``: the run stops with ``TrainingInterrupted``
    after iteration n, as a crash would stop it (through the training module's private
    ``_after_step`` hook), and the block checks that it did."""
    train_module = importlib.import_module("adapters.torch_sit.sidenet.train")

    @contextlib.contextmanager
    def stop(n: int):
        def hook(step: int) -> None:
            if step == n:
                raise TrainingInterrupted(f"interrupted after iteration {n}")

        with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingInterrupted):
            mp.setattr(train_module, "_after_step", hook)
            yield

    return stop
