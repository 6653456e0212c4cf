"""``empirical_order`` for a user's own ODE: the small-step fit, the pre-asymptotic warning,
scalar states and the stated span.

Truths used: error curves written out here (a "method" that returns the exact state plus a chosen
error e(h)), least-squares slopes from ``numpy.polyfit`` on the logs, and RK4's closed-form
amplification factor on dx/dt = -x, R(h) = 1 - h + h^2/2 - h^3/6 + h^4/24.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from baquad.order import empirical_order

COUNTS = (2, 4, 8, 16, 32, 64, 128)
X0 = np.zeros((1, 2))  # the exact state of dx/dt = 0; errors then carry no round-off


def zero_field(t, x):
    return 0.0 * x


def method_with_error(curve):
    """A 'solver' whose final state is x0 (the exact solution of dx/dt = 0) plus curve(h)."""

    def method(vfield, x0, ts):
        h = abs(ts[-1] - ts[0]) / (len(ts) - 1)
        return x0 + curve(h)

    return method


def slope(h, e):
    return np.polyfit(np.log(h), np.log(e), 1)[0]


def test_the_warning_fires_on_a_pre_asymptotic_curve_with_both_orders():
    curve = lambda h: h**4 + 1e-3 * h**2  # h^4 dominates at large h, h^2 at small h
    with pytest.warns(UserWarning, match="pre-asymptotic") as rec:
        res = empirical_order(method_with_error(curve), zero_field, COUNTS, x0=X0, exact=X0)
    h = 1.0 / np.array(COUNTS)
    e = h**4 + 1e-3 * h**2
    np.testing.assert_allclose(res.errors, e, rtol=1e-12)
    all_order, tail_order = slope(h, e), slope(h[-3:], e[-3:])
    assert all_order > 3.2 and tail_order < 2.6  # the curve itself: steep overall, toward 2 at the end
    assert res.order == pytest.approx(all_order, rel=1e-10)
    assert res.tail.order == pytest.approx(tail_order, rel=1e-10) and res.tail.n_points == 3
    assert res.pre_asymptotic
    msg = str(rec[0].message)
    assert f"order {all_order:.2f}" in msg and f"{tail_order:.2f}" in msg and "result.tail.order" in msg


@pytest.mark.parametrize("p", [1, 2, 4])
def test_no_warning_on_a_clean_power_law(p):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = empirical_order(method_with_error(lambda h: 0.7 * h**p), zero_field, COUNTS, x0=X0, exact=X0)
    assert res.order == pytest.approx(p, abs=1e-9) and res.tail.order == pytest.approx(p, abs=1e-9)
    assert not res.pre_asymptotic


def test_scattered_points_warn_even_with_equal_end_slopes():
    # a zig-zag about h^2: odd entries 3x larger (residual ~0.5), same slope at the ends
    counts = (4, 8, 16, 32, 64, 128)
    curve = lambda h: h**2 * (3.0 if round(math.log2(1 / h)) % 2 else 1.0)
    with pytest.warns(UserWarning, match="residual"):
        res = empirical_order(method_with_error(curve), zero_field, counts, x0=X0, exact=X0)
    assert res.residual > 0.25


def test_tail_uses_the_smallest_distinct_step_sizes_whatever_the_order_given():
    curve = lambda h: h**4 + 1e-3 * h**2
    shuffled = (128, 2, 16, 64, 4, 32, 8)
    with pytest.warns(UserWarning):
        res = empirical_order(method_with_error(curve), zero_field, shuffled, x0=X0, exact=X0)
    h = 1.0 / np.array((32, 64, 128))
    assert res.tail.order == pytest.approx(slope(h, h**4 + 1e-3 * h**2), rel=1e-10)
    # unpacks as before
    fit, hs, es = res
    assert fit is res.fit and hs is res.step_sizes and es is res.errors


@pytest.mark.parametrize("x0", [2.0, np.float64(2.0), np.array(2.0), torch.tensor(2.0, dtype=torch.float64)])
def test_a_scalar_x0_is_a_one_element_state(x0):
    res = empirical_order("rk4", lambda t, x: -x, (4, 8, 16), x0=x0, t0=0.0, t1=1.0)
    for n, err in zip((4, 8, 16), res.errors):
        h = 1.0 / n
        R = 1 - h + h**2 / 2 - h**3 / 6 + h**4 / 24
        assert err == pytest.approx(abs(2.0 * R**n - 2.0 * math.exp(-1.0)), rel=1e-6)
    assert res.order == pytest.approx(4, abs=0.2)


def test_the_span_is_stated_and_equal_times_are_refused():
    res = empirical_order("rk4", lambda t, x: -x, (4, 8, 16), x0=1.0)
    assert (res.t0, res.t1) == (1.0, 0.0)  # the defaults: flow-matching generation, 1 -> 0
    assert "t 1 -> 0" in res.summary()
    # integrating from 1 down to 0: x(0) = e^{+1} x(1)
    h = 1.0 / 16
    R = 1 + h + h**2 / 2 + h**3 / 6 + h**4 / 24
    assert res.errors[-1] == pytest.approx(abs(R**16 - math.e), rel=1e-6)
    with pytest.raises(ValueError, match="t0, t1"):
        empirical_order("rk4", lambda t, x: -x, (4, 8), x0=1.0, t0=0.5, t1=0.5)
    for bad in ("one", True):
        with pytest.raises(TypeError, match="x0"):
            empirical_order("rk4", lambda t, x: -x, (4, 8), x0=bad)
