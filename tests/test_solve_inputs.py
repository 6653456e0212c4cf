"""``baquad.solve`` input validation: every bad input raises the documented error type and the
message names the bad argument (and, for failures during the solve, where it happened)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import baquad
from baquad import Perception, QuadratureRule
from baquad.perception import AnchorOnly, FromDeviation

X0 = np.array([[0.5, -1.0], [2.0, 0.25]])
TS = [1.0, 0.75, 0.5, 0.25, 0.0]


def field(t, x):
    return -x + t


# ---------------------------------------------------------------------------------------
# the grid


@pytest.mark.parametrize(
    "ts, pattern",
    [
        ([1.0, 0.5, 0.5, 0.0], r"ts\[1\].*ts\[2\]"),  # a repeated time
        ([0.0, 0.0, 1.0], r"ts\[0\].*ts\[1\]"),  # repeated first time
        ([0.0, 0.5, 0.3, 1.0], r"ts\[1\].*ts\[2\]"),  # a reversal
        ([1.0, 0.2, 0.4], r"ts\[1\].*ts\[2\]"),  # a reversal in a decreasing grid
    ],
    ids=["repeated", "repeated-first", "reversal", "reversal-decreasing"],
)
def test_ts_not_strictly_monotone(ts, pattern):
    with pytest.raises(ValueError, match="ts") as info:
        baquad.solve(field, X0, ts)
    assert re.search(pattern, str(info.value)), str(info.value)
    assert "monotone" in str(info.value)


@pytest.mark.parametrize("ts", [[0.5], [], np.array(1.0)], ids=["one", "empty", "scalar"])
def test_ts_too_short(ts):
    with pytest.raises(ValueError, match="ts"):
        baquad.solve(field, X0, ts)


def test_ts_two_dimensional():
    with pytest.raises(ValueError, match=r"ts.*1-D"):
        baquad.solve(field, X0, np.array([[1.0, 0.5], [0.25, 0.0]]))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_ts_non_finite(bad):
    with pytest.raises(ValueError, match=r"ts.*NaN") as info:
        baquad.solve(field, X0, [1.0, bad, 0.0])
    assert "[1]" in str(info.value)


def test_ts_not_numbers():
    with pytest.raises(ValueError, match="ts"):
        baquad.solve(field, X0, ["a", "b"])


def test_ts_as_torch_tensor_is_accepted():
    res = baquad.solve(field, X0, torch.tensor(TS, dtype=torch.float64))
    assert res.ts == tuple(TS)


# ---------------------------------------------------------------------------------------
# x0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_x0_non_finite(bad):
    x0 = X0.copy()
    x0[1, 0] = bad
    with pytest.raises(ValueError, match="x0"):
        baquad.solve(field, x0, TS)


def test_x0_non_finite_torch():
    x0 = torch.tensor(X0)
    x0[0, 1] = math.nan
    with pytest.raises(ValueError, match="x0"):
        baquad.solve(field, x0, TS)


@pytest.mark.parametrize("x0", [np.array([[1, 2], [3, 4]]), torch.tensor([[1, 2]]), np.array([True, False])],
                         ids=["numpy-int", "torch-int", "bool"])
def test_x0_integer_dtype(x0):
    with pytest.raises(TypeError, match="x0"):
        baquad.solve(field, x0, TS)


def test_x0_complex_dtype():
    with pytest.raises(TypeError, match="x0"):
        baquad.solve(field, np.ones(2, dtype=np.complex128), TS)


@pytest.mark.parametrize("x0", [[0.5, 1.0], (0.5, 1.0), 0.5], ids=["list", "tuple", "float"])
def test_x0_not_an_array(x0):
    with pytest.raises(TypeError, match="x0"):
        baquad.solve(field, x0, TS)


def test_vfield_not_callable():
    with pytest.raises(TypeError, match="vfield"):
        baquad.solve("not a field", X0, TS)


# ---------------------------------------------------------------------------------------
# the field's output, checked at every call


def _field_failing_at(call_no, make_bad):
    calls = {"n": 0}

    def f(t, x):
        calls["n"] += 1
        out = -x + t
        return make_bad(out) if calls["n"] == call_no else out

    return f


def test_vfield_wrong_shape_names_call_and_interval():
    # calls: 1 = initial anchor, 2 = terminal anchor of interval 1, 3 = of interval 2
    f = _field_failing_at(3, lambda out: out[:, :1])
    with pytest.raises(ValueError, match="vfield") as info:
        baquad.solve(f, X0, TS)
    msg = str(info.value)
    assert "call 3" in msg
    assert "interval 2 of 4" in msg and "0.75 -> 0.5" in msg
    assert "(2, 1)" in msg and "(2, 2)" in msg


def test_vfield_wrong_shape_at_the_first_call():
    with pytest.raises(ValueError, match=r"vfield: call 1\b"):
        baquad.solve(lambda t, x: x.reshape(-1), X0, TS)


def test_vfield_wrong_dtype():
    f = _field_failing_at(2, lambda out: out.astype(np.float32))
    with pytest.raises(ValueError, match="vfield") as info:
        baquad.solve(f, X0, TS)
    assert "call 2" in str(info.value) and "float32" in str(info.value)


def test_vfield_numpy_output_for_torch_input():
    with pytest.raises(ValueError, match="vfield") as info:
        baquad.solve(lambda t, x: (-x + t).numpy(), torch.tensor(X0), TS)
    assert "numpy" in str(info.value)


def test_vfield_torch_output_for_numpy_input():
    with pytest.raises(ValueError, match="vfield"):
        baquad.solve(lambda t, x: torch.from_numpy(-x + t), X0, TS)


def test_vfield_returns_a_scalar():
    with pytest.raises(ValueError, match="vfield"):
        baquad.solve(lambda t, x: 1.0, X0, TS)


@pytest.mark.parametrize("check_finite", [True, False])
@pytest.mark.parametrize("bad, shown", [
    (lambda out: out[:, :1], "(2, 1)"),
    (lambda out: out.double(), "torch.float64"),
    (lambda out: torch.empty_like(out, device="meta"), "on meta"),
], ids=["shape", "dtype", "device"])
@pytest.mark.parametrize("method", ["ba-solver", "euler"])
def test_torch_field_output_wrong_only_at_a_later_call_is_caught_at_that_call(method, bad, shown, check_finite):
    """The check per call (a few attribute comparisons) still fires on the one bad call, with
    or without the finiteness checks."""
    f = _field_failing_at(3, bad)
    with pytest.raises(ValueError, match=r"vfield: call 3\b") as info:
        baquad.solve(f, torch.tensor(X0, dtype=torch.float32), TS, method=method, check_finite=check_finite)
    assert shown in str(info.value) and "interval" in str(info.value)


# ---------------------------------------------------------------------------------------
# the perception's output


class BadPerception(Perception):
    def __init__(self, fail_at, make_bad):
        self.fail_at, self.make_bad, self.calls = fail_at, make_bad, 0

    def __call__(self, x, v, t, offsets, history=()):
        self.calls += 1
        out = AnchorOnly()(x, v, t, offsets, history)
        return self.make_bad(np.array(out)) if self.calls == self.fail_at else out


def test_perception_wrong_shape_names_call_and_interval():
    # Gauss-Lobatto-4: calls 1, 2 in interval 1 (forward, backward), 3 = forward of interval 2
    p = BadPerception(3, lambda out: out[:1])
    with pytest.raises(ValueError, match="perception") as info:
        baquad.solve(field, X0, TS, rule="gauss-lobatto-4", perception=p)
    msg = str(info.value)
    assert "call 3" in msg
    assert "interval 2 of 4" in msg
    assert "(3, 2, 2)" in msg  # expected: 3 forward offsets


def test_perception_wrong_dtype():
    p = BadPerception(2, lambda out: out.astype(np.float32))
    with pytest.raises(ValueError, match="perception") as info:
        baquad.solve(field, X0, TS, perception=p)
    assert "call 2" in str(info.value) and "interval 1 of 4" in str(info.value)


class OwnLinearTerms(Perception):
    """A perception that offers linear_terms (v_hat = v at every offset), broken on request."""

    history_size = 2

    def __init__(self, broken):
        self.broken = broken

    def __call__(self, x, v, t, offsets, history=()):
        return np.stack([v] * len(offsets))

    def linear_terms(self, x, v, t, offsets, history=()):
        rows = tuple(((1.0, v),) for _ in offsets)
        if self.broken == "rows":
            return rows[1:]
        if self.broken == "new array":  # a prediction that is not an anchor velocity
            return tuple(((1.0, v * 1.0),) for _ in offsets)
        return tuple(() for _ in offsets) if self.broken == "empty" else rows


@pytest.mark.parametrize("broken", ["rows", "new array", "empty"])
def test_perception_linear_terms_that_break_the_contract_are_refused(broken):
    with pytest.raises(ValueError, match=r"perception: call 1 .*linear_terms") as info:
        baquad.solve(field, X0, TS, perception=OwnLinearTerms(broken))
    assert "interval 1 of 4" in str(info.value)


def test_perception_linear_terms_are_counted_and_give_the_anchor_only_step():
    """v_hat = v given as linear_terms: the anchor-only scheme, here Gauss-Lobatto-4's
    x_{i+1} = x_i + h (v_i + v_{i+1}) / 2 (its weights below c = 1/2 sum to 1/2), written out."""
    res = baquad.solve(lambda t, x: -x, X0, [1.0, 0.5, 0.0], perception=OwnLinearTerms(None), final="bi")
    x = X0
    v = -x
    for h in (-0.5, -0.5):
        x_pred = x + h * v
        v1 = -x_pred
        x, v = x + h * (v + v1) / 2, v1
    np.testing.assert_allclose(res.x, x, rtol=0, atol=8 * np.finfo(float).eps * np.abs(X0).max())
    assert res.perception_calls == 4 and res.nfe == 3


def test_perception_torch_output_for_numpy_state():
    p = BadPerception(1, lambda out: torch.from_numpy(out))
    with pytest.raises(ValueError, match="perception"):
        baquad.solve(field, X0, TS, perception=p)


def test_from_deviation_wrong_shape():
    g = lambda x, v, t, d: np.zeros(x.shape)  # noqa: E731  (missing the offsets axis)
    with pytest.raises(ValueError, match="perception"):
        baquad.solve(field, X0, TS, perception=FromDeviation(g))


def test_from_deviation_needs_a_callable():
    with pytest.raises(TypeError, match="g"):
        FromDeviation(3)


def test_bare_callable_perception():
    with pytest.raises(TypeError, match="perception") as info:
        baquad.solve(field, X0, TS, perception=lambda x, v, t, d, h=(): v)
    assert "FromDeviation" in str(info.value)


def test_unknown_perception_name():
    with pytest.raises(ValueError, match="perception") as info:
        baquad.solve(field, X0, TS, perception="sidenet")
    assert "anchor-only" in str(info.value) and "polynomial" in str(info.value)


def test_perception_of_wrong_type():
    with pytest.raises(TypeError, match="perception"):
        baquad.solve(field, X0, TS, perception=3)


# ---------------------------------------------------------------------------------------
# non-finite states during the solve


def test_nan_mid_solve_names_interval_and_times():
    def f(t, x):
        return np.full_like(x, math.nan) if t < 0.5 else -x

    with pytest.raises(FloatingPointError) as info:
        baquad.solve(f, X0, TS, perception="anchor-only")
    msg = str(info.value)
    # the first NaN velocity is the terminal anchor of interval 3 (0.5 -> 0.25)
    assert "interval 3 of 4" in msg
    assert "0.5 -> 0.25" in msg


def test_overflow_mid_solve_is_caught():
    with pytest.raises(FloatingPointError, match="interval 1 of"):
        with np.errstate(over="ignore"):
            baquad.solve(lambda t, x: np.full_like(x, 1e308), X0, [0.0, 10.0, 20.0], method="euler")


@pytest.mark.parametrize("x0", [np.full((1000,), 3e38, dtype=np.float32),
                                torch.full((1000,), 3e38, dtype=torch.float32)], ids=["numpy", "torch"])
def test_large_finite_state_is_not_taken_for_an_overflow(x0):
    """The finiteness checks do not sum the entries themselves (1000 x 3e38 overflows float32)."""
    res = baquad.solve(lambda t, x: 0.0 * x, x0, [1.0, 0.5, 0.0])
    assert float(res.x.max()) == float(np.float32(3e38))


def test_check_finite_false_lets_nan_through():
    def f(t, x):
        return np.full_like(x, math.nan) if t < 0.5 else -x

    res = baquad.solve(f, X0, TS, perception="anchor-only", check_finite=False)
    assert np.isnan(res.x).all()


# ---------------------------------------------------------------------------------------
# rule, method and options


def test_custom_rule_with_nodes_outside_unit_interval():
    rule = QuadratureRule.custom([-1.0, 1.0], [0.5, 0.5], 1, name="on-minus-one-one")
    with pytest.raises(ValueError, match=r"^rule") as info:
        baquad.solve(field, X0, TS, rule=rule)
    assert "[0, 1]" in str(info.value)


def test_unknown_rule_name_lists_names():
    with pytest.raises(ValueError, match="rule") as info:
        baquad.solve(field, X0, TS, rule="gauss-lobatto-99")
    msg = str(info.value)
    assert "gauss-lobatto-4" in msg and "gauss-legendre-3" in msg and "simpson" in msg


def test_unknown_method_lists_methods():
    with pytest.raises(ValueError, match="method") as info:
        baquad.solve(field, X0, TS, method="rk45")
    msg = str(info.value)
    for name in ("ba-solver", "euler", "heun", "dpm++"):
        assert name in msg


def test_unknown_option_for_a_baseline():
    with pytest.raises(TypeError, match="options") as info:
        baquad.solve(field, X0, TS, method="dpm++", ordre=2)
    assert "ordre" in str(info.value) and "order" in str(info.value)


def test_unknown_option_for_ba_solver():
    with pytest.raises(TypeError, match="options") as info:
        baquad.solve(field, X0, TS, order=2)
    assert "order" in str(info.value) and "ba-solver" in str(info.value)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rule="gauss-lobatto-4"), "rule"),
        (dict(perception="anchor-only"), "perception"),
        (dict(anchors="bi"), "anchors"),
        (dict(final="bi"), "final"),
    ],
)
def test_ba_only_option_passed_to_a_baseline(kwargs, name):
    with pytest.raises(TypeError, match=name) as info:
        baquad.solve(field, X0, TS, method="euler", **kwargs)
    assert "ba-solver" in str(info.value)


@pytest.mark.parametrize("kwargs, name", [(dict(anchors="double"), "anchors"), (dict(final="both"), "final")])
def test_bad_scheme_names(kwargs, name):
    with pytest.raises(ValueError, match=name):
        baquad.solve(field, X0, TS, **kwargs)


def test_valid_baseline_option_is_accepted():
    res = baquad.solve(field, X0, TS, method="heun", final_step="heun")
    assert res.nfe == 2 * (len(TS) - 1)
    assert res.local_errors is None and res.perception_calls == 0
