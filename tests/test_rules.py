"""Quadrature rules (baquad.rules): exactness, closed forms, agreement with scipy, the table.

Independent truths used here: the exact integral of c^p over [0, 1] (the rational 1/(p+1)),
closed-form Gauss-Lobatto nodes and weights written out by hand (docs/algorithm.md#quadrature-rules),
scipy's Gauss-Legendre nodes and a Gauss-Lobatto construction from numpy's Legendre class.
The degrees of exactness are the textbook formulas 2n - 3 (Lobatto) and 2n - 1 (Legendre).
"""

from __future__ import annotations

import pathlib

import mpmath
import numpy as np
import pytest
import sympy as sp
from numpy.polynomial import legendre as npleg
from scipy.special import roots_legendre

import baquad
from baquad import rules as R
from baquad.rules import QuadratureRule, get_rule, rule_names

# The aliases named in docs/algorithm.md#quadrature-rules (written here, not read from the code).
ALIASES = {"trapezoid": ("gauss-lobatto", 2), "simpson": ("gauss-lobatto", 3)}


def family_n(name: str) -> tuple[str, int]:
    if name in ALIASES:
        return ALIASES[name]
    family, _, n = name.rpartition("-")
    assert family in ("gauss-lobatto", "gauss-legendre"), name
    return family, int(n)


def textbook_degree(family: str, n: int) -> int:
    return 2 * n - 3 if family == "gauss-lobatto" else 2 * n - 1


ALL_NAMES = rule_names()


def test_rule_names_cover_the_documented_families():
    names = set(ALL_NAMES)
    for n in range(2, 9):
        assert f"gauss-lobatto-{n}" in names
    for n in range(1, 9):
        assert f"gauss-legendre-{n}" in names
    assert {"trapezoid", "simpson"} <= names


# Rules whose nodes and weights lie in Q or in Q(sqrt(k)): sympy's expand decides zero exactly.
# The others have nested radicals or CRootOf values, checked at 60 significant digits.
EXACT_ZERO_DECIDABLE = {
    "trapezoid", "simpson", "gauss-lobatto-2", "gauss-lobatto-3", "gauss-lobatto-4",
    "gauss-lobatto-5", "gauss-legendre-1", "gauss-legendre-2", "gauss-legendre-3",
}


@pytest.mark.parametrize("name", ALL_NAMES)
def test_sympy_rule_integrates_monomials_up_to_degree_and_not_beyond(name):
    family, n = family_n(name)
    nodes, weights, degree = R.derive(family, n)
    assert degree == textbook_degree(family, n)
    assert len(nodes) == len(weights) == n
    with mpmath.workdps(60):
        cN = [mpmath.mpf(str(sp.N(c, 60))) for c in nodes]
        wN = [mpmath.mpf(str(sp.N(w, 60))) for w in weights]
        for p in range(degree + 2):
            value = abs(mpmath.fsum(w * c**p for c, w in zip(cN, wN)) - mpmath.mpf(1) / (p + 1))
            if p <= degree:
                assert value < mpmath.mpf("1e-30"), (name, p, value)
                if name in EXACT_ZERO_DECIDABLE:
                    diff = sp.Add(*[w * c**p for c, w in zip(nodes, weights)]) - sp.Rational(1, p + 1)
                    assert sp.expand(diff) == 0, (name, p, diff)
            else:
                # one degree beyond: the rule must fail (its error constant is far above 1e-30)
                assert value > mpmath.mpf("1e-12"), (name, p, value)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_float_table_integrates_monomials_up_to_degree(name):
    family, n = family_n(name)
    rule = get_rule(name)
    assert rule.degree == textbook_degree(family, n)
    c = np.array(rule.nodes)
    w = np.array(rule.weights)
    assert np.all(np.diff(c) > 0) and c[0] >= 0 and c[-1] <= 1
    for p in range(rule.degree + 1):
        assert abs(np.sum(w * c**p) - 1.0 / (p + 1)) < 1e-14, (name, p)
    # and not one degree beyond
    p = rule.degree + 1
    assert abs(np.sum(w * c**p) - 1.0 / (p + 1)) > 1e-12


@pytest.mark.parametrize("name", ALL_NAMES)
def test_float_table_is_the_sympy_value_rounded(name):
    family, n = family_n(name)
    nodes, weights, _ = R.derive(family, n)
    rule = get_rule(name)
    for got, exact in zip(rule.nodes + rule.weights, list(nodes) + list(weights)):
        e = float(sp.N(exact, 40))
        assert got == e or abs(got - e) <= np.spacing(abs(e)), (name, got, e)


def test_gauss_lobatto_4_closed_form():
    nodes, weights, degree = R.derive("gauss-lobatto", 4)
    s5 = sp.sqrt(5)
    want_nodes = [sp.Integer(0), (1 - 1 / s5) / 2, (1 + 1 / s5) / 2, sp.Integer(1)]
    want_weights = [sp.Rational(1, 12), sp.Rational(5, 12), sp.Rational(5, 12), sp.Rational(1, 12)]
    for got, want in zip(nodes, want_nodes):
        assert sp.simplify(got - want) == 0
    for got, want in zip(weights, want_weights):
        assert sp.simplify(got - want) == 0
    assert degree == 5
    rule = get_rule("gauss-lobatto-4")
    np.testing.assert_allclose(rule.nodes, [float(v) for v in want_nodes], rtol=0, atol=1e-16)
    np.testing.assert_allclose(rule.weights, [float(v) for v in want_weights], rtol=0, atol=1e-16)


def test_trapezoid_and_simpson_are_gauss_lobatto_2_and_3():
    trap, simp = get_rule("trapezoid"), get_rule("simpson")
    assert (trap.nodes, trap.weights, trap.degree) == ((0.0, 1.0), (0.5, 0.5), 1)
    assert simp.nodes == (0.0, 0.5, 1.0)
    np.testing.assert_allclose(simp.weights, [1 / 6, 2 / 3, 1 / 6], rtol=0, atol=1e-16)
    assert simp.degree == 3
    for alias, name in (("trapezoid", "gauss-lobatto-2"), ("simpson", "gauss-lobatto-3")):
        a, b = get_rule(alias), get_rule(name)
        assert (a.nodes, a.weights, a.degree) == (b.nodes, b.weights, b.degree)
    # exact sympy values too
    nodes, weights, _ = R.derive("gauss-lobatto", 3)
    assert list(nodes) == [0, sp.Rational(1, 2), 1]
    assert list(weights) == [sp.Rational(1, 6), sp.Rational(2, 3), sp.Rational(1, 6)]
    nodes, weights, _ = R.derive("gauss-lobatto", 2)
    assert list(nodes) == [0, 1] and list(weights) == [sp.Rational(1, 2), sp.Rational(1, 2)]


def test_lookup_is_case_insensitive_and_passes_rules_through():
    assert get_rule("Gauss-Lobatto-4").nodes == get_rule("gauss-lobatto-4").nodes
    custom = QuadratureRule.custom([0.0, 1.0], [0.5, 0.5], 1)
    assert get_rule(custom) is custom


@pytest.mark.parametrize("n", range(1, 9))
def test_gauss_legendre_matches_scipy(n):
    x, w = roots_legendre(n)
    rule = get_rule(f"gauss-legendre-{n}")
    np.testing.assert_allclose(rule.nodes, (x + 1) / 2, rtol=0, atol=1e-14)
    np.testing.assert_allclose(rule.weights, w / 2, rtol=0, atol=1e-14)


def _lobatto_numpy(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Lobatto on [0, 1] from numpy's Legendre basis (independent of baquad)."""
    P = npleg.Legendre.basis(n - 1)
    interior = np.sort(np.real(P.deriv().roots()))
    x = np.concatenate([[-1.0], interior, [1.0]])
    w = 2.0 / (n * (n - 1) * P(x) ** 2)
    return (x + 1) / 2, w / 2


@pytest.mark.parametrize("n", range(2, 9))
def test_gauss_lobatto_matches_numpy_construction(n):
    c, w = _lobatto_numpy(n)
    rule = get_rule(f"gauss-lobatto-{n}")
    np.testing.assert_allclose(rule.nodes, c, rtol=0, atol=1e-13)
    np.testing.assert_allclose(rule.weights, w, rtol=0, atol=1e-13)


def test_committed_table_equals_sympy_regeneration():
    text = pathlib.Path(R.__file__).with_name("_rule_table.py").read_text()
    assert R._regenerate() == text


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_rule("gauss-radau-3")
    msg = str(info.value)
    assert "gauss-radau-3" in msg
    for valid in ("gauss-lobatto-4", "gauss-legendre-3", "trapezoid", "simpson"):
        assert valid in msg


def test_non_string_rule_is_a_type_error():
    with pytest.raises(TypeError, match="rule"):
        get_rule(3)


@pytest.mark.parametrize(
    "nodes, weights",
    [
        ([0.0, 0.5, 1.0], [0.5, 0.5]),  # unequal lengths
        ([], []),  # empty
        ([0.0, 0.0, 1.0], [0.25, 0.25, 0.5]),  # repeated node
        ([1.0, 0.0], [0.5, 0.5]),  # decreasing
        ([0.0, 1.0], [0.5, 0.6]),  # weights sum to 1.1
        ([0.0, 1.0], [1.0, 1.0]),  # weights sum to 2 (rule given on [-1, 1])
    ],
)
def test_custom_rule_validation(nodes, weights):
    with pytest.raises(ValueError):
        QuadratureRule.custom(nodes, weights, 1)


def test_custom_rule_accepts_a_valid_rule():
    r = QuadratureRule.custom([0.25, 0.75], [0.5, 0.5], 1, name="two-midpoints")
    assert r.n == 2 and r.degree == 1 and r.name == "two-midpoints"


def test_derive_rejects_bad_arguments():
    with pytest.raises(ValueError):
        R.derive("gauss-lobatto", 1)
    with pytest.raises(ValueError):
        R.derive("gauss-legendre", 0)
    with pytest.raises(ValueError):
        R.derive("gauss-radau", 3)


def test_rules_are_reexported():
    assert baquad.get_rule is get_rule and baquad.rule_names is rule_names


@pytest.mark.parametrize(
    "nodes, weights",
    [([0.0, 1.0], [float("nan"), 0.5]), ([0.0, float("nan"), 1.0], [0.25, 0.5, 0.25])],
    ids=["nan-weight", "nan-node"],
)
def test_custom_rule_rejects_nan(nodes, weights):
    with pytest.raises(ValueError):
        QuadratureRule.custom(nodes, weights, 1)


@pytest.mark.parametrize("short, full", [("GL4", "gauss-lobatto-4"), ("gl3", "gauss-lobatto-3"), ("gl-2", "gauss-lobatto-2"),
                                         ("Lobatto5", "gauss-lobatto-5"), ("GLeg3", "gauss-legendre-3"),
                                         ("legendre-2", "gauss-legendre-2"), ("Simpson", "gauss-lobatto-3")])
def test_short_rule_names_resolve(short, full):
    """The short names the README's tables use resolve to the same nodes and weights; unknown
    short names are still refused."""
    a, b = get_rule(short), get_rule(full)
    assert a.nodes == b.nodes and a.weights == b.weights and a.degree == b.degree


def test_short_rule_name_out_of_range_is_refused():
    with pytest.raises(ValueError, match="GL99"):
        get_rule("GL99")
