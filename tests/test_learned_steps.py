"""BA-solver with learned per-interval weights (baquad/solvers/learned_steps.py).

The truth is the update written out in the module docstring, evaluated here by hand with the
anchor-only perception (every forward prediction is the start anchor, every backward one the
terminal anchor), for arbitrary weights; the plain solver is the special case P = W = the rule's
weights, a = b = 0."""

import numpy as np
import pytest

import baquad
from baquad.bianchor import ba_solver
from baquad.perception import AnchorOnly, AnchorPolynomial
from baquad.rules import get_rule
from baquad.solvers.learned_steps import LearnedSteps

TS = (1.0, 0.7, 0.45, 0.2, 0.0)


def field(t, x):
    return np.sin(3.0 * t) * x + np.cos(x) * (1.0 + t)


def random_steps(rng, ts=TS, rule="gauss-lobatto-4"):
    n, m = len(ts) - 1, len(get_rule(rule).nodes)
    return LearnedSteps(rule, ts, rng.normal(0.25, 0.1, (n, m)), rng.normal(0.25, 0.1, (n, m)),
                        np.tril(rng.normal(0, 0.1, (n, n)), -1), np.tril(rng.normal(0, 0.1, (n, n)), -1))


def written_out(steps, x0, final="single"):
    """The learned step with the anchor-only perception, from the module docstring's formulas."""
    ts, P, W, a, b = steps.times, steps.predictor, steps.corrector, steps.a, steps.b
    c = get_rule(steps.rule).nodes
    n = len(ts) - 1
    x, v = x0, field(ts[0], x0)
    xs, vs = [], []
    for i in range(n):
        h = ts[i + 1] - ts[i]
        x_pred = x + h * sum(P[i, k] * v for k in range(len(c)))  # every forward probe is v
        last = i == n - 1 and final == "single"
        if last:
            new, v_next = x_pred, None
        else:
            v_next = field(ts[i + 1], x_pred)
            new = x + h * sum(W[i, k] * (v if c[k] < 0.5 else v_next) for k in range(len(c)))
        new = new + sum(a[i, j] * (xs[j] - x) + h * b[i, j] * vs[j] for j in range(i))
        xs.append(x)
        vs.append(v)
        x, v = new, v_next
    return x


@pytest.mark.parametrize("final", ["single", "bi"])
def test_learned_step_is_the_written_out_update(final):
    rng = np.random.default_rng(0)
    steps = random_steps(rng)
    x0 = rng.normal(size=(3, 2))
    res = baquad.solve(field, x0, TS, perception=AnchorOnly(), steps=steps, final=final)
    expected = written_out(steps, x0, final)
    np.testing.assert_allclose(res.x, expected, rtol=0, atol=64 * np.finfo(np.float64).eps * np.abs(expected).max())
    assert res.nfe == (len(TS) - 1 if final == "single" else len(TS))  # the weights cost no call
    # and they matter: the plain solver on the same grid ends elsewhere
    plain = baquad.solve(field, x0, TS, perception=AnchorOnly(), steps=False, final=final).x
    assert np.abs(plain - expected).max() > 1e-3


def test_plain_steps_are_the_plain_solver():
    x0 = np.random.default_rng(1).normal(size=(4, 3))
    plain = LearnedSteps.plain(TS)
    for perception in (AnchorOnly(), AnchorPolynomial()):
        a = baquad.solve(field, x0, TS, perception=perception, steps=plain).x
        b = baquad.solve(field, x0, TS, perception=perception).x
        np.testing.assert_allclose(a, b, rtol=0, atol=32 * np.finfo(np.float64).eps * np.abs(b).max())


def test_torch_weights_and_times_carry_gradients():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    s = random_steps(rng)
    params = {f: torch.tensor(getattr(s, f), requires_grad=True) for f in ("times", "predictor", "corrector", "a", "b")}
    x0 = torch.tensor(rng.normal(size=(3, 2)))

    def tfield(t, x):
        return torch.sin(3.0 * t) * x + torch.cos(x) * (1.0 + t)

    def loss(p):
        steps = LearnedSteps("gauss-lobatto-4", p["times"], p["predictor"], p["corrector"], p["a"], p["b"])
        ts = [p["times"][i] for i in range(len(TS))]
        return ba_solver(tfield, x0, ts, perception=AnchorOnly(), steps=steps).square().sum()

    value = loss(params)
    value.backward()
    # central differences of the same loss, entry by entry (float64: step 1e-6)
    for f in ("predictor", "a", "times"):
        grad, base = params[f].grad, params[f].detach()
        idx = (1, 2) if f == "predictor" else ((2, 1) if f == "a" else (2,))
        e = torch.zeros_like(base)
        e[idx] = 1e-6
        with torch.no_grad():
            up = loss({**params, f: base + e})
            down = loss({**params, f: base - e})
        fd = float((up - down) / 2e-6)
        assert abs(float(grad[idx]) - fd) <= 1e-5 * max(1.0, abs(fd)), (f, float(grad[idx]), fd)


def test_a_perception_carries_steps_for_its_grid_only():
    rng = np.random.default_rng(3)
    steps = random_steps(rng)
    x0 = rng.normal(size=(2, 2))

    class Carrying(AnchorOnly):
        learned_steps = {len(TS) - 1: steps}

    carried = baquad.solve(field, x0, TS, perception=Carrying()).x
    np.testing.assert_allclose(carried, written_out(steps, x0), rtol=1e-12, atol=1e-12)
    other = (1.0, 0.6, 0.4, 0.2, 0.0)  # same number of intervals, another grid: the rule's weights
    np.testing.assert_array_equal(baquad.solve(field, x0, other, perception=Carrying()).x,
                                  baquad.solve(field, x0, other, perception=AnchorOnly()).x)  # same arithmetic path
    off = baquad.solve(field, x0, TS, perception=Carrying(), steps=False).x
    np.testing.assert_array_equal(off, baquad.solve(field, x0, TS, perception=AnchorOnly()).x)  # same arithmetic path


def test_round_trip_through_a_dict():
    steps = random_steps(np.random.default_rng(4))
    back = LearnedSteps.from_dict(steps.to_dict())
    for f in ("times", "predictor", "corrector", "a", "b"):
        np.testing.assert_array_equal(getattr(back, f), getattr(steps, f))  # float64 values through JSON: exact
    assert back.rule == "gauss-lobatto-4"


def test_refusals_name_the_field():
    rng = np.random.default_rng(5)
    good = random_steps(rng)
    n = len(TS) - 1
    with pytest.raises(ValueError, match="steps.predictor: must have shape"):
        LearnedSteps("gauss-lobatto-4", TS, np.ones((n, 3)), good.corrector, good.a, good.b)
    with pytest.raises(ValueError, match="strictly lower-triangular"):
        LearnedSteps("gauss-lobatto-4", TS, good.predictor, good.corrector, np.eye(n), good.b)
    with pytest.raises(ValueError, match="must be finite"):
        bad = good.b.copy()
        bad[2, 0] = np.nan
        LearnedSteps("gauss-lobatto-4", TS, good.predictor, good.corrector, good.a, bad)
    with pytest.raises(ValueError, match="steps.rule"):
        LearnedSteps("gauss-lobatto-9x", TS, good.predictor, good.corrector, good.a, good.b)
    with pytest.raises(ValueError, match="ts: learned BA steps belong to their own grid"):
        baquad.solve(field, np.zeros((1, 2)), (1.0, 0.6, 0.4, 0.2, 0.0), steps=good)
    with pytest.raises(ValueError, match="steps: learned for gauss-lobatto-4, but the rule is gauss-lobatto-3"):
        baquad.solve(field, np.zeros((1, 2)), TS, steps=good, rule="gauss-lobatto-3")
    with pytest.raises(TypeError, match="steps: expected LearnedSteps"):
        baquad.solve(field, np.zeros((1, 2)), TS, steps={"predictor": 1})
    with pytest.raises(ValueError, match="learned BA steps hold the fields"):
        LearnedSteps.from_dict({"rule": "gauss-lobatto-4"})
