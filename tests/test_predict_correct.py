"""The two public halves of a bi-anchor interval, ``BiAnchorSolver.predict`` and ``correct``.

A caller that gets the terminal anchor only later (a diffusers scheduler: the pipeline makes the
backbone call between two ``step`` calls) runs them itself, possibly with the anchor evaluated
at a state other than the predictor. Truth: the interval written out below from the published
definition (Gauss-Lobatto-4 nodes 0, (5 -+ sqrt 5)/10, 1 and weights 1/12, 5/12, 5/12, 1/12;
forward probes for c < 1/2, backward probes from the terminal anchor for c >= 1/2; Eq. 5:
u = v + d g), with a closed-form deviation g.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from baquad.bianchor import BiAnchorSolver
from baquad.perception import Anchor, FromDeviation
from baquad.rules import get_rule

C = [0.0, (5 - math.sqrt(5)) / 10, (5 + math.sqrt(5)) / 10, 1.0]
W = [1 / 12, 5 / 12, 5 / 12, 1 / 12]


def g_closed(x, v, t, d):
    """A deviation that depends on every argument."""
    return np.stack([np.sin(x) * (1 + t) + 0.3 * v * di for di in d])


def field(t, x):
    return np.cos(x) - t * x


@pytest.mark.parametrize("shift_eval", [0.0, 0.05])
def test_predict_then_correct_is_the_written_out_interval(shift_eval):
    solver = BiAnchorSolver(get_rule("gauss-lobatto-4"), FromDeviation(g_closed))
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((3, 5))
    t0, t1 = 0.8, 0.55
    h = t1 - t0
    state = solver.init(field, t0, x0)
    v0 = field(t0, x0)

    pred = solver.predict(state, t1)
    fwd = [v0] + [v0 + c * h * g_closed(x0, v0, t0, [c * h])[0] for c in C[1:]]
    x_pred = x0 + h * sum(w * u for w, u in zip(W, fwd))
    np.testing.assert_allclose(pred.x_pred, x_pred, rtol=1e-13, atol=1e-13)

    # the terminal anchor, evaluated at the predictor or (lagged use) at a nearby state
    x_eval = x_pred + shift_eval
    v1 = field(t1, x_eval)
    new, info = solver.correct(pred, Anchor(t1, x_eval, v1))
    back = [v1 + (c - 1) * h * g_closed(x_eval, v1, t1, [(c - 1) * h])[0] for c in C[2:3]]
    x1 = x0 + h * (W[0] * v0 + W[1] * fwd[1] + W[2] * back[0] + W[3] * v1)
    np.testing.assert_allclose(new.x, x1, rtol=1e-13, atol=1e-13)
    assert new.t == t1 and new.anchor.v is v1 and new.anchor.x is x_eval
    assert new.history[-1].v is v1
    np.testing.assert_allclose(float(info.gap), np.sqrt(np.mean((x1 - x_pred) ** 2)), rtol=1e-12)


def test_step_is_predict_field_call_correct():
    """``step`` with ``bi=True`` and with ``bi=False`` agrees with the halves run by hand."""
    solver = BiAnchorSolver(get_rule("gauss-lobatto-4"), FromDeviation(g_closed))
    x0 = np.random.default_rng(4).standard_normal((2, 3))
    state = solver.init(field, 1.0, x0)
    full, _ = solver.step(field, state, 0.7, bi=True)
    pred = solver.predict(state, 0.7)
    halves, _ = solver.correct(pred, Anchor(0.7, pred.x_pred, field(0.7, pred.x_pred)))
    assert np.array_equal(full.x, halves.x)  # step is these halves: the same arithmetic, bit for bit
    single, _ = solver.step(field, state, 0.7, bi=False, evaluate_end=False)
    assert np.array_equal(single.x, pred.x_pred) and single.anchor is None  # the predictor, passed on untouched


def test_predict_refuses_a_final_state():
    solver = BiAnchorSolver(get_rule("gauss-lobatto-4"), FromDeviation(g_closed))
    state = solver.init(field, 1.0, np.zeros(2))
    done, _ = solver.step(field, state, 0.5, bi=False, evaluate_end=False)
    with pytest.raises(RuntimeError, match="no start anchor"):
        solver.predict(done, 0.0)
