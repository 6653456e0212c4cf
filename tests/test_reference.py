"""Tests for baquad.reference.reference_solve against analytic ODE solutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from baquad.reference import reference_solve


def field_tx(t, x):
    """dx/dt = t x  ->  x(t) = x(t0) exp((t^2 - t0^2) / 2)."""
    return t * x


def truth_tx(x0: np.ndarray, t0: float, ts: np.ndarray) -> np.ndarray:
    return np.stack([x0 * np.exp((t**2 - t0**2) / 2) for t in ts])


@pytest.mark.parametrize("ts", [np.linspace(0.0, 1.0, 6), np.linspace(1.0, 0.0, 6), [2.0, -1.0]])
def test_matches_analytic_numpy(ts) -> None:
    ts = np.asarray(ts, dtype=float)
    x0 = np.random.default_rng(0).normal(size=(4, 3))
    out = reference_solve(field_tx, x0, ts)
    assert isinstance(out, np.ndarray) and out.shape == (len(ts), 4, 3)
    np.testing.assert_allclose(out, truth_tx(x0, ts[0], ts), rtol=1e-8, atol=1e-9)
    np.testing.assert_array_equal(out[0], x0)  # the initial state is returned untouched


def test_matches_analytic_torch_and_preserves_dtype() -> None:
    x0 = torch.tensor(np.random.default_rng(1).normal(size=(5, 2)), dtype=torch.float32)
    seen = {}

    def field(t, x):
        seen["types"] = (type(t), type(x), x.dtype)
        return t * x

    ts = torch.tensor([1.0, 0.5, 0.0])
    out = reference_solve(field, x0, ts)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert out.shape == (3, 5, 2)
    # called with a float time and a float64 tensor state (default field_dtype), as baquad.solve
    assert seen["types"] == (float, torch.Tensor, torch.float64)
    want = truth_tx(x0.double().numpy(), 1.0, ts.double().numpy())
    np.testing.assert_allclose(out.double().numpy(), want, rtol=1e-6)
    reference_solve(field, x0, ts, field_dtype="input")
    assert seen["types"][2] == torch.float32


def test_numpy_field_receives_float_time() -> None:
    seen = []

    def field(t, x):
        seen.append(type(t))
        return -x

    reference_solve(field, np.ones((2, 2)), [0.0, 1.0])
    assert set(seen) == {float}


def test_batch_is_one_system_equal_to_separate_solves() -> None:
    """Coupled-in-one-system integration must give each sample its own trajectory."""

    def field(t, x):  # nonlinear, sample-wise
        return np.stack([x[:, 1], -np.sin(x[:, 0]) - 0.1 * x[:, 1]], axis=1)

    x0 = np.random.default_rng(2).normal(size=(4, 2))
    ts = [0.0, 1.5, 3.0]
    batch = reference_solve(field, x0, ts)
    for i in range(4):
        single = reference_solve(field, x0[i : i + 1], ts)
        np.testing.assert_allclose(batch[:, i], single[:, 0], rtol=1e-8, atol=1e-9)


def test_single_time_returns_initial_state() -> None:
    x0 = np.arange(6.0).reshape(3, 2)
    out = reference_solve(field_tx, x0, [0.3])
    assert out.shape == (1, 3, 2)
    np.testing.assert_array_equal(out[0], x0)  # the initial state is returned untouched


@pytest.mark.parametrize("ts", [[0.0, 0.5, 0.2], [0.0, 0.0], [1.0, np.nan], [[0.0, 1.0]], []])
def test_bad_ts_raises(ts) -> None:
    with pytest.raises(ValueError, match="ts"):
        reference_solve(field_tx, np.ones((2, 2)), np.asarray(ts, dtype=float))


def test_failed_integration_raises() -> None:
    # dx/dt = x^2, x(0) = 1 blows up at t = 1.
    with pytest.raises(ValueError, match="integration"):
        reference_solve(lambda t, x: x * x, np.ones((1, 1)), [0.0, 2.0])


def test_nonfinite_field_raises() -> None:
    with pytest.raises(ValueError, match="integration|non-finite"):
        reference_solve(lambda t, x: np.full_like(x, np.nan), np.ones((1, 1)), [0.0, 1.0])


def test_bad_field_dtype_raises() -> None:
    with pytest.raises(ValueError, match="field_dtype"):
        reference_solve(field_tx, np.ones((1, 1)), [0.0, 1.0], field_dtype="float16")
