"""Symbolic order analysis (baquad.order, sympy): degrees of exactness, leading local truncation
errors, and the paper's single- vs bi-anchor error bounds (Appendix A-B)."""

from __future__ import annotations

import math
import os

import pytest

if os.environ.get("BAQUAD_REQUIRE_REFERENCES") == "1":  # CI (.ci/run): a broken install must fail, not skip
    import sympy as sp
else:  # sympy comes with the dev extra; without it these tests skip
    sp = pytest.importorskip("sympy")

from baquad.order import (  # noqa: E402
    anchor_error_bounds,
    degree_of_exactness,
    exact_rule,
    leading_lte,
    moment_defect,
    quadrature_anchor_bounds,
)
from baquad.rules import get_rule  # noqa: E402

# Every rule of baquad's table (Gauss-Lobatto 2..8, Gauss-Legendre 1..8). Rational, square-root
# and CRootOf nodes (Lobatto-8, Legendre-6..8 are summed as traces over the roots of their
# polynomial) are decided in well under a second; the nested square roots of Lobatto-6/7 and
# Legendre-4/5 need minimal polynomials of nested radicals, 2-4 s each (marked slow).
NESTED_RADICALS = {("gauss-lobatto", 6), ("gauss-lobatto", 7), ("gauss-legendre", 4), ("gauss-legendre", 5)}
ALL_RULES = [("gauss-lobatto", n) for n in range(2, 9)] + [("gauss-legendre", n) for n in range(1, 9)]
RULE_PARAMS = [
    pytest.param(f, n, id=f"{f}-{n}", marks=[pytest.mark.slow] if (f, n) in NESTED_RADICALS else [])
    for f, n in ALL_RULES
]


def documented_degree(family: str, n: int) -> int:
    # docs/algorithm.md#quadrature-rules: Gauss-Lobatto-n has degree 2n - 3, Gauss-Legendre-n 2n - 1.
    return 2 * n - 3 if family == "gauss-lobatto" else 2 * n - 1


# ------------------------------------------------------------------ the paper's Appendix A-B


def test_bi_anchor_bound_is_exactly_half_the_single_anchor_bound():
    b = anchor_error_bounds()
    L, K, h = b.symbols
    assert sp.simplify(b.single - L * K * h**2 / 2) == 0  # Eq. 23
    assert sp.simplify(b.bi - L * K * h**2 / 4) == 0  # Eq. 27
    assert b.ratio == sp.Rational(1, 2)  # Eq. 28, exact sympy equality
    assert sp.simplify(b.bi / b.single) == sp.Rational(1, 2)


@pytest.mark.parametrize(
    "rule, ratio",
    [
        ("trapezoid", sp.Integer(0)),  # both nodes are anchors: nothing is predicted
        ("simpson", sp.Rational(2, 3)),  # all interior weight at the midpoint, h/2 from both
        ("gauss-lobatto-4", (5 - sp.sqrt(5)) / 6),
        ("gauss-legendre-3", 1 - sp.sqrt(15) / 9),
    ],
)
def test_quadrature_weighted_bounds(rule, ratio):
    b = quadrature_anchor_bounds(rule)
    L, K, h = b.symbols
    # single anchor: h sum_k w_k L K c_k h = L K h^2 sum w_k c_k = L K h^2 / 2 (degree >= 1)
    assert sp.simplify(b.single - L * K * h**2 / 2) == 0
    assert sp.simplify(b.ratio - ratio) == 0
    assert sp.simplify(b.bi / b.single - ratio) == 0
    # by hand from the float rule: sum_k w_k min(c_k, 1 - c_k)
    r = get_rule(rule)
    by_hand = sum(w * min(c, 1 - c) for c, w in zip(r.nodes, r.weights))
    assert float(b.bi.subs({L: 1, K: 1, h: 1})) == pytest.approx(by_hand, abs=1e-14)
    assert len(b.offsets) == r.n


@pytest.mark.parametrize("rule", ["gauss-lobatto-8", "gauss-legendre-8"])
def test_quadrature_weighted_ratio_tends_to_the_continuous_half(rule):
    # many nodes: the weighted sums are quadratures of the Appendix A-B integrals
    b = quadrature_anchor_bounds(rule)
    L, K, h = b.symbols
    assert sp.simplify(b.single - L * K * h**2 / 2) == 0  # exact, a trace over CRootOf nodes
    assert abs(float(b.ratio) - 0.5) < 0.01
    r = get_rule(rule)
    by_hand = sum(w * min(c, 1 - c) for c, w in zip(r.nodes, r.weights)) / 0.5
    assert float(b.ratio) == pytest.approx(by_hand, abs=1e-13)


# ------------------------------------------------------------------ degree of exactness


@pytest.mark.parametrize("family, n", RULE_PARAMS)
def test_degree_of_exactness_matches_the_family_formula(family, n):
    name = f"{family}-{n}"
    d = degree_of_exactness(name)
    assert d == documented_degree(family, n)
    assert d == get_rule(name).degree  # the cached float table agrees
    # the defining property, exactly: zero up to d, non-zero at d + 1
    assert all(moment_defect(name, p) == 0 for p in range(d + 1))
    assert moment_defect(name, d + 1) != 0
    assert moment_defect(name, d + 1).is_Rational


def test_aliases_and_rule_objects():
    assert degree_of_exactness("trapezoid") == 1
    assert degree_of_exactness(get_rule("simpson")) == 3
    assert exact_rule("simpson").nodes == (0, sp.Rational(1, 2), 1)
    with pytest.raises(ValueError, match="not a Gauss"):
        exact_rule("midpoint-rule")


# ------------------------------------------------------------------ leading truncation error


def test_trapezoid_leading_lte_is_textbook():
    lte = leading_lte("trapezoid")
    h = lte.h
    assert lte.degree == 1 and lte.order == 3
    # int_0^h s^2 ds - h (0 + h^2) / 2 = h^3/3 - h^3/2
    assert sp.simplify(lte.monomial_error - (-h**3 / 6)) == 0
    # textbook: int_a^{a+h} f - h (f(a) + f(a+h)) / 2 = -h^3/12 f''(xi)
    assert lte.coefficient == sp.Rational(-1, 12)
    assert sp.simplify(lte.coefficient * h**3 - (-h**3 / 12)) == 0


def test_simpson_leading_lte_is_textbook():
    lte = leading_lte("simpson")
    h = lte.h
    assert lte.degree == 3 and lte.order == 5
    assert sp.simplify(lte.monomial_error - (-h**5 / 120)) == 0
    # textbook (interval of length h, Simpson's 1/3 rule): -h^5/2880 f''''(xi)
    assert lte.coefficient == sp.Rational(-1, 2880)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
def test_leading_coefficients_match_the_closed_forms(n):
    # Closed forms on an interval of length h (Abramowitz & Stegun 25.4.30 / 25.4.32):
    # Gauss-Legendre-n:  + (n!)^4 / ((2n+1) ((2n)!)^3)            h^(2n+1) f^(2n)
    # Gauss-Lobatto-n:   - n (n-1)^3 ((n-2)!)^4 / ((2n-1) ((2n-2)!)^3) h^(2n-1) f^(2n-2)
    f = math.factorial
    legendre = leading_lte(f"gauss-legendre-{n}")
    assert legendre.coefficient == sp.Rational(f(n) ** 4, (2 * n + 1) * f(2 * n) ** 3)
    lobatto = leading_lte(f"gauss-lobatto-{n}")
    assert lobatto.coefficient == -sp.Rational(n * (n - 1) ** 3 * f(n - 2) ** 4, (2 * n - 1) * f(2 * n - 2) ** 3)


def test_gauss_lobatto_4_local_error_matches_a_numeric_interval():
    # int_0^h e^s ds - rule: leading term C h^7 e^0 with C = -1/1512000
    lte = leading_lte("gauss-lobatto-4")
    r = get_rule("gauss-lobatto-4")
    for h in (0.2, 0.1):
        err = math.expm1(h) - h * sum(w * math.exp(c * h) for c, w in zip(r.nodes, r.weights))
        assert err == pytest.approx(float(lte.coefficient) * h**7, rel=0.05)
