"""Adams-Bashforth (``method="adams"``): the multistep baseline for either time direction.

Truths: the two-step formula written out here on a non-uniform grid, Euler for order 1, the
closed-form solution of dx/dt = -x cos t (order 2 measured), and the counted NFE.
"""

from __future__ import annotations

import numpy as np
import pytest

import baquad
from baquad.order import fit_order


def field(t, x):
    return -x * np.cos(t)


def exact(t, x0, t0=0.0):
    return x0 * np.exp(-(np.sin(t) - np.sin(t0)))


def test_two_steps_written_out_on_a_nonuniform_grid():
    ts = [0.0, 0.3, 0.8]
    x0 = np.array([1.0, -2.0])
    v0 = field(0.0, x0)
    x1 = x0 + 0.3 * v0  # Euler first step
    v1 = field(0.3, x1)
    r = 0.5 / 0.3
    x2 = x1 + 0.5 * ((1 + r / 2) * v1 - (r / 2) * v0)
    res = baquad.solve(field, x0, ts, method="adams")
    np.testing.assert_allclose(res.x, x2, rtol=1e-15, atol=0)  # ~4.5 float64 ulps: the same formula, grouped otherwise
    assert res.nfe == 2


def test_order_one_is_euler():
    ts = np.linspace(1.0, 0.0, 7)
    x0 = np.array([0.5, 1.5])
    a = baquad.solve(field, x0, ts, method="adams", order=1).x
    b = baquad.solve(field, x0, ts, method="euler").x
    np.testing.assert_array_equal(a, b)  # adams.py's promise: order 1 takes Euler's update x + h v, bit for bit


@pytest.mark.parametrize("t0, t1", [(0.0, 2.0), (2.0, 0.0)])
def test_second_order_in_both_directions(t0, t1):
    x0 = np.array([1.0, 2.0])
    ns = [40, 80, 160, 320]
    errs = [np.abs(baquad.solve(field, x0, np.linspace(t0, t1, n + 1), method="adams").x - exact(t1, x0, t0)).max()
            for n in ns]
    order = fit_order([abs(t1 - t0) / n for n in ns], errs)
    assert 1.9 < float(getattr(order, "order", order)) < 2.1


def test_bad_order_is_refused():
    with pytest.raises(ValueError, match="order"):
        baquad.solve(field, np.ones(2), [0.0, 1.0], method="adams", order=3)
