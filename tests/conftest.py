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
    after iteration n (its log row and checkpoint written), as a crash would stop it, and the
    block checks that it did. The stop is the training loop's own call of ``sample_batch`` for
    iteration n + 1 (step index n), which raises before that iteration draws or computes
    anything."""
    train_module = importlib.import_module("adapters.torch_sit.sidenet.train")
    sample_batch = train_module.sample_batch

    @contextlib.contextmanager
    def stop(n: int):
        def draw_or_stop(cfg, backbone, step, *args, **kwargs):
            if step == n:
                raise TrainingInterrupted(f"interrupted after iteration {n}")
            return sample_batch(cfg, backbone, step, *args, **kwargs)

        with pytest.MonkeyPatch.context() as mp, pytest.raises(TrainingInterrupted):
            mp.setattr(train_module, "sample_batch", draw_or_stop)
            yield

    return stop
