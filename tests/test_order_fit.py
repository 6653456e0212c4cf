"""Tests for baquad.order.fit_order (empirical log-log order fit)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from baquad.order import OrderFit, fit_order


@pytest.mark.parametrize("p", [1.0, 2.0, 4.5])
@pytest.mark.parametrize("C", [0.3, 7.0])
def test_recovers_exact_power_law(p: float, C: float) -> None:
    h = np.array([0.2, 0.1, 0.05, 0.025, 0.0125])
    e = C * h**p
    fit = fit_order(h, e)
    assert isinstance(fit, OrderFit)
    assert fit.order == pytest.approx(p, abs=1e-12)
    assert fit.intercept == pytest.approx(math.log(C), abs=1e-10)
    assert fit.residual < 1e-12
    assert fit.n_points == 5
    assert fit.predict(0.01) == pytest.approx(C * 0.01**p, rel=1e-10)


def test_negative_step_sizes_use_magnitude() -> None:
    h = np.array([-0.5, -0.25, -0.125])
    fit = fit_order(h, 2.0 * np.abs(h) ** 3)
    assert fit.order == pytest.approx(3.0, abs=1e-12)


def test_two_points_is_the_secant_slope() -> None:
    fit = fit_order([1e-1, 1e-2], [1e-3, 1e-5])
    assert fit.order == pytest.approx(2.0, abs=1e-12)
    assert fit.residual == pytest.approx(0.0, abs=1e-12)


def test_residual_is_rms_of_log_deviation() -> None:
    # log e = 2 log h + (+d, -d, +d, -d) deviations; the alternating pattern on an
    # equally spaced log grid changes the slope, so compute the truth by hand.
    h = np.array([1.0, 0.5, 0.25, 0.125])
    d = 0.1
    dev = np.array([d, -d, d, -d])
    e = h**2 * np.exp(dev)
    x = np.log(h)
    y = np.log(e)
    # Independent slope via the normal equations.
    A = np.stack([np.ones_like(x), x], axis=1)
    (b0, b1), *_ = np.linalg.lstsq(A, y, rcond=None)
    rms = math.sqrt(np.mean((y - b0 - b1 * x) ** 2))
    fit = fit_order(h, e)
    assert fit.order == pytest.approx(b1, abs=1e-12)
    assert fit.intercept == pytest.approx(b0, abs=1e-12)
    assert fit.residual == pytest.approx(rms, abs=1e-12)
    assert fit.residual > 0.05


@pytest.mark.parametrize(
    "h, e, match",
    [
        ([0.1], [0.01], "at least 2"),
        ([], [], "at least 2"),
        ([0.1, 0.05], [0.01, 0.0], "errors"),
        ([0.1, 0.05], [0.01, -1e-3], "errors"),
        ([0.1, 0.05], [0.01, float("nan")], "errors"),
        ([0.1, 0.05], [0.01, float("inf")], "errors"),
        ([0.1, 0.0], [0.01, 0.001], "step_sizes"),
        ([0.1, float("nan")], [0.01, 0.001], "step_sizes"),
        ([0.1, 0.05, 0.02], [0.01, 0.001], "same length"),
        ([0.1, 0.1], [0.01, 0.001], "distinct"),
    ],
)
def test_bad_input_raises(h: list, e: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fit_order(h, e)
