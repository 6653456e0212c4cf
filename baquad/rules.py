"""Quadrature rules on [0, 1] (docs/algorithm.md#quadrature-rules; paper Eqs. 6-7, Appendix C).

A rule approximates ``int_0^1 f(c) dc ~= sum_k w_k f(c_k)``. Applied to one solver interval
``[t_i, t_i + h]`` it gives ``int v dt ~= h * sum_k w_k v(t_i + c_k h)``.

- ``gauss-lobatto-n`` (n = 2..8): c_0 = 0, c_{n-1} = 1 and the interior nodes are the roots of
  P'_{n-1} (derivative of the Legendre polynomial) mapped from [-1, 1] to [0, 1]; on [-1, 1] the
  weights are 2 / (n (n - 1) P_{n-1}(x_k)^2). Degree of exactness 2n - 3.
  ``gauss-lobatto-2`` is the trapezoid rule, ``gauss-lobatto-3`` Simpson's rule, and
  ``gauss-lobatto-4`` has nodes 0, (1 - 1/sqrt5)/2, (1 + 1/sqrt5)/2, 1 and weights
  1/12, 5/12, 5/12, 1/12.
- ``gauss-legendre-n`` (n = 1..8): nodes are the roots of P_n, weights 2 / ((1 - x^2) P'_n(x)^2)
  on [-1, 1]. Degree 2n - 1. No endpoint nodes.
- ``trapezoid`` and ``simpson``: aliases with their classical names.
- Short names, case-insensitive, as tables and papers write them: ``GL4`` / ``gl-4`` /
  ``lobatto4`` for ``gauss-lobatto-4`` and ``GLeg3`` / ``legendre3`` for ``gauss-legendre-3``
  (:func:`canonical_name`).

The nodes and weights are derived with sympy (:func:`derive`), exactly in radicals where sympy
finds them and otherwise as exact algebraic numbers (``CRootOf``) evaluated to 40 digits. The
float64 values are cached in ``_rule_table.py`` so that sympy is needed only to regenerate them
(``python -m baquad.rules``) and in the tests, which re-derive them and compare.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

from ._optional import sympy as _sympy
from ._rule_table import TABLE

__all__ = ["QuadratureRule", "get_rule", "rule_names", "canonical_name", "derive"]

#: the one alias table (``order.py`` reads it through :func:`canonical_name`)
_ALIASES = {"trapezoid": "gauss-lobatto-2", "simpson": "gauss-lobatto-3"}
_SHORT = re.compile(r"^(gl|lobatto|gleg|legendre)-?(\d+)$")
_SHORT_FAMILY = {"gl": "gauss-lobatto", "lobatto": "gauss-lobatto", "gleg": "gauss-legendre", "legendre": "gauss-legendre"}


@dataclass(frozen=True)
class QuadratureRule:
    """An immutable quadrature rule on [0, 1].

    Attributes:
        name: the rule's name (``"gauss-lobatto-4"``, ``"trapezoid"``, ...).
        nodes: increasing nodes c_k in [0, 1] (float64).
        weights: weights w_k, summing to 1 (float64).
        degree: degree of exactness: every polynomial of degree <= ``degree`` is integrated exactly.
    """

    name: str
    nodes: tuple[float, ...]
    weights: tuple[float, ...]
    degree: int

    def __post_init__(self) -> None:
        if len(self.nodes) != len(self.weights) or not self.nodes:
            raise ValueError(
                f"rule {self.name!r}: nodes ({len(self.nodes)}) and weights ({len(self.weights)}) "
                "must be non-empty and of equal length"
            )
        if not all(math.isfinite(c) for c in self.nodes + self.weights):
            raise ValueError(f"rule {self.name!r}: nodes and weights must be finite, got {self.nodes}, {self.weights}")
        if any(b <= a for a, b in zip(self.nodes, self.nodes[1:])):
            raise ValueError(f"rule {self.name!r}: nodes must be strictly increasing, got {self.nodes}")
        if abs(sum(self.weights) - 1.0) > 1e-12:
            raise ValueError(f"rule {self.name!r}: weights must sum to 1 on [0, 1], got {sum(self.weights)!r}")

    @property
    def n(self) -> int:
        """Number of nodes."""
        return len(self.nodes)

    def check_unit_interval(self, argument: str = "rule") -> None:
        """Raise ValueError if a node lies outside [0, 1] (the bi-anchor scheme needs it there)."""
        bad = [c for c in self.nodes if not 0.0 <= c <= 1.0]
        if bad:
            raise ValueError(
                f"{argument}: the bi-anchor integrator needs every node in [0, 1] (offsets c*h inside "
                f"the interval); rule {self.name!r} has nodes {bad} outside it. Map the rule to [0, 1] "
                "with c = (x + 1) / 2, w = w / 2 if it is given on [-1, 1]."
            )

    @classmethod
    def custom(cls, nodes: Sequence[float], weights: Sequence[float], degree: int, name: str = "custom") -> "QuadratureRule":
        """A user-defined rule on [0, 1]."""
        return cls(name, tuple(float(c) for c in nodes), tuple(float(w) for w in weights), int(degree))


def rule_names() -> list[str]:
    """All valid rule names (short forms such as ``GL4`` are accepted too, see
    :func:`canonical_name`)."""
    return sorted(TABLE) + sorted(_ALIASES)


def canonical_name(name: str) -> str:
    """The full lower-case family name of a rule name: ``"Simpson"`` -> ``"gauss-lobatto-3"``,
    ``"GL4"`` -> ``"gauss-lobatto-4"``, ``"gleg3"`` -> ``"gauss-legendre-3"``; other names are
    returned lower-cased (whether they exist is :func:`get_rule`'s business)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    m = _SHORT.match(key)
    return f"{_SHORT_FAMILY[m.group(1)]}-{int(m.group(2))}" if m else key


def get_rule(rule: "str | QuadratureRule") -> QuadratureRule:
    """Look up a rule by name (or pass a :class:`QuadratureRule` through).

    Raises:
        ValueError: for an unknown name, listing the valid names.
    """
    if isinstance(rule, QuadratureRule):
        return rule
    if not isinstance(rule, str):
        raise TypeError(f"rule: expected a rule name or a QuadratureRule, got {type(rule).__name__}")
    return _named_rule(rule)


@lru_cache(maxsize=None)
def _named_rule(rule: str) -> QuadratureRule:
    """The rule of a name, built once per name (rules are immutable)."""
    key = canonical_name(rule)
    if key not in TABLE:
        raise ValueError(
            f"rule: unknown rule {rule!r}; valid names are: {', '.join(rule_names())} "
            "(or short forms such as GL4 for gauss-lobatto-4, GLeg3 for gauss-legendre-3)"
        )
    nodes, weights, degree = TABLE[key]
    return QuadratureRule(rule.lower(), tuple(nodes), tuple(weights), degree)


# ---------------------------------------------------------------------------------------------
# sympy derivation (needs sympy; used to regenerate the table and by the tests)


def derive(family: str, n: int):
    """Derive a rule exactly with sympy.

    Args:
        family: ``"gauss-lobatto"`` (n >= 2) or ``"gauss-legendre"`` (n >= 1).
        n: number of nodes.

    Returns:
        ``(nodes, weights, degree)`` with nodes and weights as exact sympy numbers on [0, 1],
        nodes increasing.
    """
    sp = _sympy()

    x = sp.Symbol("x")
    if family == "gauss-lobatto":
        if n < 2:
            raise ValueError("n: Gauss-Lobatto needs n >= 2")
        p = sp.legendre(n - 1, x)
        interior = _exact_roots(sp.diff(p, x), x)
        xs = [sp.Integer(-1)] + interior + [sp.Integer(1)]
        ws = [sp.Rational(2, n * (n - 1)) / p.subs(x, xk) ** 2 for xk in xs]
        degree = 2 * n - 3
    elif family == "gauss-legendre":
        if n < 1:
            raise ValueError("n: Gauss-Legendre needs n >= 1")
        p = sp.legendre(n, x)
        dp = sp.diff(p, x)
        xs = _exact_roots(p, x)
        ws = [2 / ((1 - xk**2) * dp.subs(x, xk) ** 2) for xk in xs]
        degree = 2 * n - 1
    else:
        raise ValueError(f"family: unknown family {family!r}; use 'gauss-lobatto' or 'gauss-legendre'")
    nodes = [(xk + 1) / 2 for xk in xs]
    weights = [wk / 2 for wk in ws]
    order = sorted(range(len(nodes)), key=lambda k: float(sp.N(nodes[k], 30)))
    return [nodes[k] for k in order], [sp.nsimplify(weights[k]) if weights[k].is_Rational else weights[k] for k in order], degree


def _exact_roots(poly, x) -> list:
    """All (real, simple) roots of a Legendre-type polynomial, exact.

    Each rational factor of degree <= 2, or biquadratic (degree 4 in x, even), is solved in real
    radicals; a higher factor (a cubic in x^2, say: the casus irreducibilis) is kept as exact
    ``CRootOf`` algebraic numbers, which evaluate to any precision.
    """
    sp = _sympy()

    out = []
    for factor, _mult in sp.factor_list(sp.Poly(poly, x))[1]:
        f = sp.Poly(factor, x)
        even = all(m[0] % 2 == 0 for m in f.monoms())
        if f.degree() <= 2 or (even and f.degree() <= 4):
            out.extend(sp.roots(f, multiple=True))
        else:
            out.extend(f.all_roots())
    if not all(r.is_real for r in out):
        raise ArithmeticError(f"non-real root among {out}")
    return out


def _float(expr) -> float:
    sp = _sympy()

    return float(sp.N(expr, 40))


def _regenerate() -> str:
    """Source text of ``_rule_table.py``, derived with sympy."""
    lines = [
        '"""float64 nodes and weights on [0, 1], generated by `python -m baquad.rules` from the sympy',
        'derivation in baquad/rules.py. Do not edit by hand; tests/test_rules.py re-derives them."""',
        "",
        "TABLE = {",
    ]
    specs = [("gauss-lobatto", n) for n in range(2, 9)] + [("gauss-legendre", n) for n in range(1, 9)]
    for family, n in specs:
        nodes, weights, degree = derive(family, n)
        lines.append(f'    "{family}-{n}": (')
        lines.append(f"        ({', '.join(repr(_float(c)) for c in nodes)},),")
        lines.append(f"        ({', '.join(repr(_float(w)) for w in weights)},),")
        lines.append(f"        {degree},")
        lines.append("    ),")
    lines.append("}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - regeneration entry point
    import pathlib

    path = pathlib.Path(__file__).with_name("_rule_table.py")
    path.write_text(_regenerate())
    print(f"wrote {path}")
