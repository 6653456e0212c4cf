"""baquad.order refuses what it cannot decide, and decides a rule from its own values (issue 12).

Truths: textbook degrees of exactness (trapezoid and midpoint 1, Simpson 3, Gauss-Lobatto-n
2n - 3, Gauss-Legendre-n 2n - 1), moments worked out by hand in the comments, and the absence of
any sympy derivation or field call before a refusal (recorded by patching them).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("sympy")

import baquad.order as order_mod  # noqa: E402
import baquad.rules as rules_mod  # noqa: E402
from baquad.flows import get_flow  # noqa: E402
from baquad.order import (  # noqa: E402
    MAX_EXACT_NODES,
    degree_of_exactness,
    empirical_order,
    exact_rule,
    fit_order,
    leading_lte,
    moment_defect,
    quadrature_anchor_bounds,
)
from baquad.rules import QuadratureRule, get_rule  # noqa: E402

GL4_NODES = (0.0, (1 - 1 / math.sqrt(5)) / 2, (1 + 1 / math.sqrt(5)) / 2, 1.0)


@pytest.fixture
def no_derivation(monkeypatch):
    """Fail the test if sympy's derivation of a rule is started."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"derive{args} was called: the refusal came too late")

    monkeypatch.setattr(rules_mod, "derive", refuse)
    monkeypatch.setattr(order_mod, "_exact_rule", refuse)  # also bypasses the cache of derived rules


# ----------------------------------------------------------------------------- undecidable rules


@pytest.mark.parametrize("name", ["gauss-lobatto-99", "gauss-legendre-40", f"gauss-lobatto-{MAX_EXACT_NODES + 1}"])
@pytest.mark.parametrize("max_degree", [64, 1000])
def test_too_many_nodes_is_refused_before_deriving(name, max_degree, no_derivation):
    # gauss-lobatto-99 ran sympy for more than ten minutes on c5b13e5
    with pytest.raises(ValueError, match=f"rule: '{name}' has \\d+ nodes"):
        degree_of_exactness(name, max_degree=max_degree)


@pytest.mark.parametrize("name, degree", [("gauss-lobatto-4", 5), ("gauss-legendre-3", 5), ("simpson", 3), ("gauss-lobatto-30", 57)])
def test_family_degree_beyond_max_degree_is_refused_before_deriving(name, degree, no_derivation):
    # deciding degree d needs moment d + 1 (the first one that fails)
    with pytest.raises(ValueError, match=f"max_degree=.*Pass max_degree >= {degree + 1}"):
        degree_of_exactness(name, max_degree=degree)


def test_max_degree_one_above_the_family_degree_decides():
    assert degree_of_exactness("gauss-lobatto-4", max_degree=6) == 5
    assert degree_of_exactness("trapezoid", max_degree=2) == 1


@pytest.mark.parametrize("max_degree", [-1, 2.5, "8", True, None])
def test_bad_max_degree_is_refused(max_degree):
    with pytest.raises(ValueError, match="max_degree: must be an integer >= 0"):
        degree_of_exactness("gauss-lobatto-4", max_degree=max_degree)


@pytest.mark.parametrize("name", ["gauss-lobatto-1", "gauss-lobatto-0", "gauss-legendre-0"])
def test_rules_without_nodes_are_refused_by_name(name):
    with pytest.raises(ValueError, match=f"rule: '{name}' has \\d+ nodes"):
        exact_rule(name)


@pytest.mark.parametrize("p", [-1, 1.5, "x", True, None])
def test_bad_moment_index_is_refused(p):
    with pytest.raises(ValueError, match="p: must be a non-negative integer"):
        moment_defect("trapezoid", p)


# ----------------------------------------------------------------------------- borrowed names


def test_a_rule_named_gauss_lobatto_4_with_other_weights_gets_its_own_degree():
    # nodes of GL4, weights (0.1, 0.4, 0.4, 0.1): sum 1, first moment 0.4 * 1 + 0.1 = 1/2 (the
    # interior nodes sum to 1), second moment 0.4 * (c1^2 + c2^2) + 0.1 = 0.4 * 3/5 + 0.1 = 0.34,
    # not 1/3: degree 1. c5b13e5 returned the real GL4's 5.
    impostor = QuadratureRule.custom(GL4_NODES, (0.1, 0.4, 0.4, 0.1), degree=5, name="gauss-lobatto-4")
    assert degree_of_exactness(impostor) == 1


@pytest.mark.parametrize(
    "name, nodes, weights, degree",
    [
        ("gauss-lobatto-4", (0.0, 0.5, 1.0), (1 / 6, 2 / 3, 1 / 6), 3),  # Simpson's values
        ("simpson", (0.0, 1.0), (0.5, 0.5), 1),  # trapezoid's values
        ("trapezoid", (0.5,), (1.0,), 1),  # the midpoint rule
        ("gauss-legendre-2", (0.0, 1.0), (0.5, 0.5), 1),
        ("custom", (0.0, 1.0), (0.25, 0.75), 0),  # integrates constants only
        ("left-point", (0.0,), (1.0,), 0),
    ],
)
def test_rules_are_decided_from_their_own_values(name, nodes, weights, degree):
    assert degree_of_exactness(QuadratureRule.custom(nodes, weights, degree=99, name=name)) == degree


@pytest.mark.parametrize("family, n", [("gauss-lobatto", n) for n in range(2, 9)] + [("gauss-legendre", n) for n in range(1, 9)])
def test_float_copies_of_the_named_rules_keep_the_textbook_degree(family, n):
    """The float path, under another name: full-precision float64 values of the named rules must
    give the family degree (2n - 3 Lobatto, 2n - 1 Legendre), not less."""
    r = get_rule(f"{family}-{n}")
    copy = QuadratureRule.custom(r.nodes, r.weights, degree=0, name="my-copy")
    assert degree_of_exactness(copy) == (2 * n - 3 if family == "gauss-lobatto" else 2 * n - 1)


def test_a_rule_given_to_few_digits_gets_the_degree_of_those_digits():
    # GL4 with 4-digit interior nodes: symmetric (odd moments still exact up to the weights'
    # symmetry), but c1^2 + c2^2 = 0.6000... only to about 1e-5: degree 1, not 5.
    coarse = QuadratureRule.custom((0.0, 0.2764, 0.7236, 1.0), (1 / 12, 5 / 12, 5 / 12, 1 / 12), degree=5, name="gl4-4digits")
    assert degree_of_exactness(coarse) == 1


def test_exact_values_are_refused_for_a_borrowed_name():
    impostor = QuadratureRule.custom(GL4_NODES, (0.1, 0.4, 0.4, 0.1), degree=5, name="gauss-lobatto-4")
    for fn in (exact_rule, leading_lte, quadrature_anchor_bounds, lambda r: moment_defect(r, 2)):
        with pytest.raises(ValueError, match="carries the name of gauss-lobatto-4 but not its nodes and weights"):
            fn(impostor)
    # the genuine float rule still maps to its exact values
    assert exact_rule(get_rule("gauss-lobatto-4")).weights == exact_rule("gauss-lobatto-4").weights


# ----------------------------------------------------------------------------- empirical_order

FLOW = get_flow("time-scaled-linear-2d")
X0 = np.array([[1.0, 0.5], [-0.3, 0.8]])


class CountingFlow:
    """FLOW with its calls counted, without the closed form (so `exact` needs a reference)."""

    dim = 2

    def __init__(self):
        self.calls = 0

    def __call__(self, t, x):
        self.calls += 1
        return FLOW(t, x)


@pytest.mark.parametrize(
    "counts, match",
    [
        ((2.5, 4), "entry 0 is 2.5"),  # was truncated to 2 silently
        ((4, 8.5), "entry 1 is 8.5"),
        ((float("nan"), 4), "entry 0 is nan"),  # raw "cannot convert float NaN to integer"
        ((4, True), "entry 1 is True"),  # was 1 step
        ("48", "expected a sequence of step counts"),  # was the step counts 4 and 8
        ((0, 4), "entry 0 is 0"),
        ((-2, 4), "entry 0 is -2"),
        ((4, 4), "at least 2 distinct"),
        ((4,), "at least 2 distinct"),
        (None, "expected a sequence"),
    ],
)
def test_bad_step_counts_are_refused_before_any_work(counts, match):
    flow = CountingFlow()
    with pytest.raises(ValueError, match=f"step_counts: .*{match}"):
        empirical_order("rk4", flow, counts, x0=X0)
    assert flow.calls == 0


def test_integral_floats_are_whole_step_counts():
    res = empirical_order("rk4", FLOW, (4.0, np.int64(8), 16), x0=X0)
    np.testing.assert_allclose(res.step_sizes, 1.0 / np.array([4, 8, 16]))


@pytest.mark.parametrize(
    "span, match",
    [
        (dict(t0=0.3, t1=0.3), "t0, t1: the start and end time must differ"),
        (dict(t0=float("nan")), "t0: must be a finite real time"),
        (dict(t1=float("inf")), "t1: must be a finite real time"),
        (dict(t0="1"), "t0: must be a finite real time"),
    ],
)
def test_bad_times_are_refused_before_any_work(span, match):
    flow = CountingFlow()
    with pytest.raises(ValueError, match=match):
        empirical_order("rk4", flow, (4, 8), x0=X0, **span)
    assert flow.calls == 0


def test_bad_error_is_refused_before_the_reference_is_computed():
    flow = CountingFlow()  # no closed form: the reference solve would call it many times
    with pytest.raises(ValueError, match="error: must be"):
        empirical_order("rk4", flow, (4, 8), x0=X0, error="l1")
    with pytest.raises(TypeError, match="grid: expected a callable"):
        empirical_order("rk4", flow, (4, 8), x0=X0, grid=[1.0, 0.0])
    with pytest.raises(TypeError, match="method: expected a method name or a callable"):
        empirical_order(3, flow, (4, 8), x0=X0)
    assert flow.calls == 0


def test_exact_state_of_another_shape_is_refused():
    # an exact state of shape (2,) broadcast against (2, 2) gave the "order" -0.0001 silently
    with pytest.raises(ValueError, match=r"exact: the exact final state has shape \(2,\), but x0 has shape \(2, 2\)"):
        empirical_order("rk4", FLOW, (4, 8), x0=X0, exact=np.zeros(2))


def test_method_result_of_another_shape_is_refused():
    # a callable method returning zeros(2) gave the "order" 0.0 silently
    with pytest.raises(ValueError, match=r"method: with 4 steps it returned a final state of shape \(2,\)"):
        empirical_order(lambda f, x, ts: np.zeros(2), FLOW, (4, 8), x0=X0)


def test_error_function_must_return_one_number():
    with pytest.raises(ValueError, match="error: with 4 steps the error function returned"):
        empirical_order("rk4", FLOW, (4, 8), x0=X0, error=lambda x, ref: np.abs(x - ref))
    with pytest.raises(ValueError, match="error: with 4 steps"):
        empirical_order("rk4", FLOW, (4, 8), x0=X0, error=lambda x, ref: "small")


@pytest.mark.parametrize(
    "h, e, match",
    [
        (["a", "b"], [1.0, 2.0], "step_sizes must be a 1-D sequence of real numbers"),
        ([0.1, 0.2], None, "errors must"),
        ([0.1, 0.2], ["x", 1.0], "errors must be a 1-D sequence of real numbers"),
        ([0.1, 0.2], [1e-3, float("nan")], r"errors must all be positive and finite; bad entries at indices \[1\]"),
    ],
)
def test_fit_order_names_bad_inputs(h, e, match):
    with pytest.raises(ValueError, match=match):
        fit_order(h, e)
