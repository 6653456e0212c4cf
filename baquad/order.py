"""Convergence-order analysis: empirical (measured) and symbolic (sympy) orders.

Empirical part
--------------
A one-step method of order ``p`` has a global error that behaves like

    e(h) ~= C * |h|**p        as |h| -> 0,

so ``log e = log C + p log |h|`` is a straight line in log-log coordinates.
:func:`fit_order` fits that line by ordinary least squares and returns the slope
(the observed order), the intercept (``log C``) and the RMS deviation of the points
from the line (a quick check that the data really are in the asymptotic regime).

Nothing is dropped silently: any non-positive or non-finite error or step size is
an error, because a zero error usually means the test problem is solved exactly
by the method and the fit would be meaningless.

:func:`empirical_order` runs a method (a ``baquad.solve`` method name with its options, or any
solve callable) over a range of step counts on a flow, measures the error against the flow's
exact solution (``flow.exact``) or a tight :func:`~baquad.reference.reference_solve`, and fits
the slope with :func:`fit_order`, over all points and over the smallest steps alone, warning
when the two disagree (a pre-asymptotic fit).

Symbolic part (needs sympy)
---------------------------
- :func:`degree_of_exactness`: the largest ``p`` such that ``sum_k w_k c_k^j == 1/(j+1)`` for
  every ``j <= p``, decided exactly from the sympy nodes and weights of
  :func:`baquad.rules.derive` (radicals, or ``CRootOf`` algebraic numbers) for the named rules,
  and from its own float64 nodes and weights for any other :class:`~baquad.rules.QuadratureRule`
  (including one that carries a family's name with other values). Named rules of more than
  ``MAX_EXACT_NODES`` nodes, and rules whose family degree cannot be reached within
  ``max_degree``, are refused before any derivation (the exact sums grow roughly like n^4: 14 s
  for Gauss-Lobatto-24, 65 s for Gauss-Lobatto-32 on one core; Gauss-Lobatto-99 did not finish
  in ten minutes).
- :func:`leading_lte`: the leading local truncation error of a rule of degree ``d`` on one
  interval of length ``h``: for ``v(t) = t^(d+1)`` the exact integral minus the rule is
  ``E h^(d+2)``, and for a smooth ``v`` the local error is ``C h^(d+2) v^(d+1) + O(h^(d+3))``
  with the Peano constant ``C = E / (d+1)!`` (trapezoid ``-1/12``, Simpson ``-1/2880``).
- :func:`anchor_error_bounds`: the paper's Appendix A-B comparison. With a perception whose
  velocity error grows linearly in the absolute offset, ``|e(d)| <= L K |d|``, the single-anchor
  interval bound is ``int_0^h L K s ds = L K h^2 / 2`` and the bi-anchor bound
  ``int_0^{h/2} L K s ds + int_{h/2}^h L K (h - s) ds = L K h^2 / 4``: ratio exactly 1/2.
- :func:`quadrature_anchor_bounds`: the same comparison for what a rule actually integrates,
  ``h sum_k w_k L K |d_k|`` with the offsets the solver uses (forward ``c_k h`` for a single
  anchor; ``min(c_k, 1 - c_k) h`` for the bi-anchor scheme, the node ``c = 1/2`` backward). The
  ratio is then rule dependent (0 for the trapezoid, whose nodes are both anchors; 2/3 for
  Simpson; ``(5 - sqrt 5)/6 ~ 0.46`` for Gauss-Lobatto-4), approaching the continuous 1/2 only
  for many nodes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from numbers import Integral, Real
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ._backend import to_numpy
from ._optional import sympy as _sympy
from .rules import canonical_name

__all__ = [
    "OrderFit",
    "fit_order",
    "EmpiricalOrder",
    "empirical_order",
    "ExactRule",
    "exact_rule",
    "moment_defect",
    "degree_of_exactness",
    "LocalTruncationError",
    "leading_lte",
    "AnchorBounds",
    "anchor_error_bounds",
    "quadrature_anchor_bounds",
    "MAX_EXACT_NODES",
]

# The largest named rule derived exactly: the sympy derivation and moment sums grow about like
# n^4 (degree_of_exactness took 14 s for Gauss-Lobatto-24 and 65 s for Gauss-Lobatto-32 on one
# core, and did not finish Gauss-Lobatto-99 in ten minutes).
MAX_EXACT_NODES = 32


@dataclass(frozen=True)
class OrderFit:
    """Result of a log-log least-squares fit ``log e = intercept + order * log h``.

    Attributes:
        order: least-squares slope of ``log(error)`` against ``log(step size)``.
        intercept: ``log C`` in ``e = C h**order`` (natural logarithm).
        residual: root-mean-square deviation of ``log(error)`` from the fitted line
            (natural-log units; 0 for exact power-law data).
        n_points: number of (h, e) pairs used.
    """

    order: float
    intercept: float
    residual: float
    n_points: int

    def predict(self, step_size: float) -> float:
        """Error predicted by the fit at ``step_size``: ``exp(intercept) * |h|**order``."""
        return math.exp(self.intercept + self.order * math.log(abs(step_size)))


def _as_float_array(name: str, values: Any) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a 1-D sequence of real numbers, got {values!r}") from err


def _as_positive_finite(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = _as_float_array(name, values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if np.any(bad):
        idx = np.flatnonzero(bad).tolist()
        raise ValueError(
            f"{name} must all be positive and finite; bad entries at indices {idx}: "
            f"{arr[bad].tolist()}"
        )
    return arr


def fit_order(
    step_sizes: Sequence[float] | np.ndarray, errors: Sequence[float] | np.ndarray
) -> OrderFit:
    """Fit the empirical convergence order ``p`` from ``errors ~= C * step_sizes**p``.

    With ``X = log h`` and ``Y = log e`` the least-squares slope is

        p = sum((X - mean X)(Y - mean Y)) / sum((X - mean X)**2),

    the intercept ``log C = mean Y - p mean X``, and the residual is
    ``sqrt(mean((Y - log C - p X)**2))``.

    Step sizes may be given with either sign (generation runs with negative steps);
    their absolute value is used. Errors must be positive and finite.

    Args:
        step_sizes: step sizes ``h`` (at least 2 distinct magnitudes).
        errors: errors ``e`` at those step sizes, same length.

    Returns:
        An :class:`OrderFit`.

    Raises:
        ValueError: fewer than 2 points, mismatched lengths, a zero/non-finite step
            size, a non-positive/non-finite error, or all step sizes equal.
    """
    h_raw = _as_float_array("step_sizes", step_sizes)
    if h_raw.ndim != 1:
        raise ValueError(f"step_sizes must be one-dimensional, got shape {h_raw.shape}")
    h = _as_positive_finite("step_sizes (absolute values)", np.abs(h_raw))
    e = _as_positive_finite("errors", errors)
    if h.shape != e.shape:
        raise ValueError(
            f"step_sizes and errors must have the same length, got {h.size} and {e.size}"
        )
    if h.size < 2:
        raise ValueError(f"fit_order needs at least 2 points, got {h.size}")
    x = np.log(h)
    y = np.log(e)
    xc = x - x.mean()
    sxx = float(np.dot(xc, xc))
    if sxx <= 0.0 or sxx < 1e-24 * max(1.0, float(np.dot(x, x))):
        raise ValueError("step_sizes must contain at least 2 distinct magnitudes")
    slope = float(np.dot(xc, y - y.mean()) / sxx)
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    rms = float(np.sqrt(np.mean(resid**2)))
    return OrderFit(order=slope, intercept=intercept, residual=rms, n_points=int(h.size))


# ---------------------------------------------------------------------------------------------
# Empirical order of a solver on a flow


@dataclass(frozen=True, eq=False)
class EmpiricalOrder:
    """What :func:`empirical_order` returns; unpacks as ``fit, step_sizes, errors``.

    Attributes:
        fit: the :class:`OrderFit` of ``errors`` against ``step_sizes``, over all points.
        step_sizes: ``|t1 - t0| / n`` for every step count ``n`` (in the order given).
        errors: the error of the final state at every step count.
        tail: the :class:`OrderFit` over the ``tail`` smallest distinct step sizes only: the
            asymptotic order when the larger steps are pre-asymptotic (equal to ``fit`` when
            there are no more points than that).
        t0, t1: the start and end time the method integrated over (``empirical_order``'s
            defaults are the flow-matching generation span 1 -> 0).
        pre_asymptotic: True when the points do not follow one power law (see
            :func:`empirical_order`; a ``UserWarning`` with the numbers was issued).
    """

    fit: OrderFit
    step_sizes: np.ndarray
    errors: np.ndarray
    tail: OrderFit
    t0: float
    t1: float
    pre_asymptotic: bool = False

    def __iter__(self):
        return iter((self.fit, self.step_sizes, self.errors))

    @property
    def order(self) -> float:
        """The fitted order over all points (``fit.order``)."""
        return self.fit.order

    @property
    def residual(self) -> float:
        """The RMS deviation of the points from the fitted line (``fit.residual``)."""
        return self.fit.residual

    @property
    def tail_order(self) -> float:
        """The fitted order over the smallest steps (``tail.order``)."""
        return self.tail.order

    def summary(self) -> str:
        """One line: both fits, the span and the step sizes."""
        return (f"order {self.fit.order:.2f} (residual {self.fit.residual:.2f}) over {self.fit.n_points} step sizes "
                f"{_sizes(self.step_sizes)}; {self.tail.order:.2f} (residual {self.tail.residual:.2f}) over the "
                f"{self.tail.n_points} smallest; t {self.t0:g} -> {self.t1:g}")


def _sizes(h: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in h) + "]"


#: how many of the smallest step sizes the tail fit uses, and when the two fits disagree
TAIL_POINTS = 3
ORDER_TOLERANCE = 0.25
RESIDUAL_TOLERANCE = 0.25


def _tail_fit(h: np.ndarray, e: np.ndarray, points: int) -> OrderFit:
    """The fit over the points whose step size is among the ``points`` smallest distinct ones."""
    keep = h <= np.unique(h)[: max(2, points)].max()
    return fit_order(h[keep], e[keep])


def _check_fit(fit: OrderFit, tail: OrderFit, h: np.ndarray, e: np.ndarray, counts: list) -> bool:
    """Warn (UserWarning) when the points do not follow one power law; returns whether it did."""
    gap = abs(fit.order - tail.order)
    if gap <= ORDER_TOLERANCE and fit.residual <= RESIDUAL_TOLERANCE:
        return False
    import warnings

    warnings.warn(
        f"empirical_order: the errors do not follow one power law over step counts {counts}: order "
        f"{fit.order:.2f} with residual {fit.residual:.2f} over all {fit.n_points} points, but "
        f"{tail.order:.2f} (residual {tail.residual:.2f}) over the {tail.n_points} smallest steps "
        f"(step sizes {_sizes(h)}, errors [{', '.join(f'{v:.3g}' for v in e)}]). The larger steps are "
        "pre-asymptotic (or the smallest errors reach round-off or the reference's tolerance): read "
        "result.tail.order, or measure at smaller steps. (Warned when the two orders differ by more than "
        f"{ORDER_TOLERANCE} or the residual exceeds {RESIDUAL_TOLERANCE}.)",
        UserWarning,
        stacklevel=3,
    )
    return True


def _as_state(x0: Any) -> Any:
    """``x0`` as an array: a Python or numpy scalar, a 0-d array/tensor or a list becomes a float
    array of at least one dimension (a scalar ODE is integrated as a one-element state)."""
    if hasattr(x0, "detach") and hasattr(x0, "reshape"):  # a torch tensor
        return x0.reshape(1) if x0.ndim == 0 else x0
    if isinstance(x0, np.ndarray) and x0.ndim > 0:
        return x0
    if isinstance(x0, (bool, np.bool_)) or isinstance(x0, (str, bytes)):
        raise TypeError(f"x0: expected a real number or an array of states, got {x0!r}")
    try:
        arr = np.asarray(x0, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"x0: expected a real number or an array of states, got {type(x0).__name__}") from err
    return arr.reshape(1) if arr.ndim == 0 else arr


def _error_value(value: Any, n: int) -> float:
    """The error measured with ``n`` steps as a float (a real scalar, else a clear error)."""
    arr = np.asarray(value)
    if arr.shape != () or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(
            f"error: with {n} steps the error function returned {value!r}; it must return one real number"
        )
    return float(arr)


def _error_fn(error: "str | Callable[[np.ndarray, np.ndarray], float]") -> Callable[[np.ndarray, np.ndarray], float]:
    if callable(error):
        return error
    if error == "max":
        return lambda x, ref: float(np.max(np.abs(x - ref)))
    if error == "rms":
        return lambda x, ref: float(np.sqrt(np.mean((x - ref) ** 2)))
    raise ValueError(f"error: must be 'max', 'rms' or a callable error(x, exact), got {error!r}")


def _step_counts(step_counts: Any) -> list[int]:
    """The step counts as ints: whole numbers >= 1 (no silent truncation), at least 2 distinct."""
    if isinstance(step_counts, (str, bytes)) or not hasattr(step_counts, "__iter__"):
        raise ValueError(f"step_counts: expected a sequence of step counts such as (4, 8, 16), got {step_counts!r}")
    values = list(step_counts)
    counts = []
    for k, n in enumerate(values):
        whole = isinstance(n, Integral) or (isinstance(n, Real) and math.isfinite(n) and float(n).is_integer())
        if isinstance(n, bool) or not whole or n < 1:
            raise ValueError(
                f"step_counts: entry {k} is {n!r}; every step count must be a whole number >= 1 "
                f"(got {values})"
            )
        counts.append(int(n))
    if len(set(counts)) < 2:
        raise ValueError(f"step_counts: need at least 2 distinct positive step counts, got {values}")
    return counts


def _finite_time(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite real time, got {value!r}")
    return float(value)


def empirical_order(
    method: "str | Callable[..., Any]",
    flow: Callable[[float, Any], Any],
    step_counts: Sequence[int],
    *,
    x0: Any = None,
    t0: float = 1.0,
    t1: float = 0.0,
    grid: Optional[Callable[[int], Sequence[float]]] = None,
    exact: Any = None,
    error: "str | Callable[[np.ndarray, np.ndarray], float]" = "max",
    oracle_rtol: float = 1e-13,
    oracle_atol: float = 1e-14,
    reference_rtol: float = 1e-13,
    reference_atol: float = 1e-13,
    **options: Any,
) -> EmpiricalOrder:
    """Measure the convergence order of ``method`` on ``flow``.

    For every ``n`` in ``step_counts`` the method integrates ``flow`` from ``x0`` at ``t0`` to
    ``t1`` over ``n`` intervals (uniform unless ``grid`` is given); the error of the final state
    against the exact solution is recorded and :func:`fit_order` fits ``log e`` against
    ``log(|t1 - t0| / n)``, over all points (``result.fit``) and over the 3 smallest distinct
    step sizes (``result.tail``). The default span is **t0 = 1.0 -> t1 = 0.0**, flow-matching
    generation (noise to data); pass ``t0``/``t1`` for any other ODE.

    An order is only meaningful in the asymptotic range, where e = C h^p holds. When the two fits
    differ by more than 0.25 in order, or the points scatter about the line by more than 0.25 in
    natural-log units (the residual), a ``UserWarning`` gives both orders and the errors, and
    ``result.pre_asymptotic`` is True: the larger steps are still pre-asymptotic (a higher-order
    term dominates there; the small-step order ``result.tail.order`` is the asymptotic one), or
    the smallest errors have reached round-off or the reference tolerance.

    Args:
        method: a method name of :func:`baquad.solve` (``"ba-solver"``, ``"euler"``, ``"rk4"``,
            ``"dpm++"``, ...), whose options (``rule``, ``perception``, ``anchors``, ``final``,
            ``order``, ...) are passed as keyword ``options``; ``perception="oracle"`` builds
            :class:`~baquad.perception.Oracle` ``(flow, oracle_rtol, oracle_atol)``. Or a
            callable ``method(vfield, x0, ts)`` returning the final state (an array, or an
            object with an ``x`` attribute such as a ``SolveResult``); ``options`` are then
            passed to it.
        flow: the velocity field ``flow(t, x)``; a :mod:`baquad.flows` flow with the
            ``"trajectory"`` truth gives the exact solution via ``flow.exact(t1, x0, t0)``.
        step_counts: numbers of intervals (at least 2 distinct).
        x0: initial state (default: 8 seeded standard-normal states of dimension ``flow.dim``).
            A scalar (a Python or numpy number, a 0-d array or tensor) is integrated as a
            one-element state, so ``flow`` gets ``x`` of shape ``(1,)``.
        t0, t1: start and end time (either order; default 1.0 -> 0.0, they must differ).
            Ignored when ``grid`` is given.
        grid: ``grid(n) -> ts``, a strictly monotone grid of ``n + 1`` times; it fixes ``t0`` and
            ``t1`` (all grids must share their endpoints). The step size reported is still
            ``|t1 - t0| / n``.
        exact: the exact final state, when known otherwise. Default: ``flow.exact`` when the
            flow has closed-form trajectories, else ``reference_solve`` (DOP853 at
            ``reference_rtol``, ``reference_atol``).
        error: ``"max"`` (max absolute entry, default), ``"rms"``, or ``error(x, exact)``.

    Returns:
        :class:`EmpiricalOrder`, unpacking as ``(fit, step_sizes, errors)``, with ``tail``, the
        span ``t0``, ``t1`` and ``pre_asymptotic``; ``result.summary()`` states it in one line.

    Raises:
        ValueError: fewer than 2 distinct step counts, a step count that is not a whole number
            >= 1, non-finite or equal ``t0`` and ``t1``, grids with different endpoints, an
            unknown ``error``, an ``exact`` state or a method result whose shape is not ``x0``'s,
            or an error that is not a real number, zero or non-finite (the fit names the entry).
        TypeError: ``method`` neither a name nor a callable; ``grid`` not callable.
    """
    counts = _step_counts(step_counts)
    measure = _error_fn(error)
    if not (isinstance(method, str) or callable(method)):
        raise TypeError(f"method: expected a method name or a callable, got {type(method).__name__}")
    if grid is None:
        t0, t1 = _finite_time("t0", t0), _finite_time("t1", t1)
        if t0 == t1:
            raise ValueError(f"t0, t1: the start and end time must differ, got t0 = t1 = {t0!r}")
    elif not callable(grid):
        raise TypeError(f"grid: expected a callable grid(n) -> times, got {type(grid).__name__}")
    make_grid = grid if grid is not None else (lambda n: np.linspace(t0, t1, n + 1))
    grids = [np.asarray(make_grid(n), dtype=np.float64) for n in counts]
    for n, ts in zip(counts, grids):
        if ts.shape != (n + 1,):
            raise ValueError(f"grid: grid({n}) must have {n + 1} times, got shape {ts.shape}")
    start, end = float(grids[0][0]), float(grids[0][-1])
    if any(ts[0] != start or ts[-1] != end for ts in grids):
        raise ValueError("grid: every grid must start at the same t0 and end at the same t1")

    if x0 is None:
        dim = getattr(flow, "dim", None)
        if not dim:
            raise ValueError("x0: required when the flow has no `dim` attribute; pass the initial state "
                             "(an array of states, or a number for a scalar ODE)")
        x0 = np.random.default_rng(0).standard_normal((8, int(dim)))
    x0 = _as_state(x0)

    if exact is None:
        if "trajectory" in getattr(flow, "truth", ()) and hasattr(flow, "exact"):
            exact = flow.exact(end, x0, start)
        else:
            from .reference import reference_solve

            exact = reference_solve(flow, x0, [start, end], rtol=reference_rtol, atol=reference_atol)[-1]
    ref = to_numpy(exact)
    if ref.shape != tuple(np.shape(x0)):
        raise ValueError(
            f"exact: the exact final state has shape {ref.shape}, but x0 has shape {tuple(np.shape(x0))}; "
            "pass the exact state at t1 of every sample of x0"
        )

    if isinstance(method, str):
        from .perception import Oracle
        from .solve import solve

        opts = dict(options)
        if isinstance(opts.get("perception"), str) and opts["perception"] == "oracle":
            opts["perception"] = Oracle(flow, rtol=oracle_rtol, atol=oracle_atol)

        def run(ts: np.ndarray) -> Any:
            return solve(flow, x0, ts, method=method, **opts)

    else:

        def run(ts: np.ndarray) -> Any:
            return method(flow, x0, ts, **options)

    steps, errors = [], []
    for n, ts in zip(counts, grids):
        out = run(ts)
        x = to_numpy(getattr(out, "x", out))
        if x.shape != ref.shape:
            raise ValueError(
                f"method: with {n} steps it returned a final state of shape {x.shape}; expected x0's "
                f"shape {ref.shape}"
            )
        steps.append(abs(end - start) / n)
        errors.append(_error_value(measure(x, ref), n))
    h = np.asarray(steps)
    e = np.asarray(errors)
    try:
        fit = fit_order(h, e)
        tail = _tail_fit(h, e, TAIL_POINTS)
    except ValueError as err:
        raise ValueError(
            f"empirical_order: cannot fit step counts {counts} with errors {e.tolist()}: {err}"
        ) from err
    warned = _check_fit(fit, tail, h, e, counts)
    return EmpiricalOrder(fit, h, e, tail, start, end, warned)


# ---------------------------------------------------------------------------------------------
# Symbolic part (sympy)


@dataclass(frozen=True)
class ExactRule:
    """A quadrature rule on [0, 1] with exact sympy nodes and weights.

    Attributes:
        name: canonical name (``"gauss-lobatto-4"``).
        family: ``"gauss-lobatto"`` or ``"gauss-legendre"``.
        n: number of nodes.
        nodes: exact nodes c_k (increasing).
        weights: exact weights w_k.
        claimed_degree: the degree the family formula states (2n - 3 Lobatto, 2n - 1 Legendre);
            :func:`degree_of_exactness` computes it independently from the nodes and weights.
    """

    name: str
    family: str
    n: int
    nodes: tuple
    weights: tuple
    claimed_degree: int


_FAMILIES = ("gauss-lobatto", "gauss-legendre")


def _family_name(name: str) -> Optional[tuple[str, int]]:
    """``(family, n)`` if ``name`` is a Gauss-Lobatto/Gauss-Legendre rule name, else None."""
    key = canonical_name(name)
    family, _, n = key.rpartition("-")
    if family not in _FAMILIES or not n.isdigit():
        return None
    return family, int(n)


def _family_degree(family: str, n: int) -> int:
    """The degree the family formula states: 2n - 3 (Gauss-Lobatto), 2n - 1 (Gauss-Legendre)."""
    return 2 * n - 3 if family == "gauss-lobatto" else 2 * n - 1


def _parse_rule(rule: Any) -> tuple[str, int]:
    name = getattr(rule, "name", rule)
    if not isinstance(name, str):
        raise TypeError(f"rule: expected a rule name or a QuadratureRule, got {type(rule).__name__}")
    parsed = _family_name(name)
    if parsed is None:
        raise ValueError(
            f"rule: {name!r} is not a Gauss-Lobatto/Gauss-Legendre rule name such as "
            "'gauss-lobatto-4', 'gauss-legendre-3', 'trapezoid' or 'simpson'"
        )
    family, n = parsed
    smallest = 2 if family == "gauss-lobatto" else 1
    if not smallest <= n <= MAX_EXACT_NODES:
        raise ValueError(
            f"rule: {name!r} has {n} nodes; the exact derivation covers {family}-{smallest} to "
            f"{family}-{MAX_EXACT_NODES} (larger rules take sympy minutes to hours)"
        )
    return family, n


def _is_family_rule(rule: Any, family: str, n: int) -> bool:
    """True if the float rule ``rule`` holds the nodes and weights of ``family``-``n`` (to a few
    float64 roundings), so that its exact values may stand for it."""
    if len(rule.nodes) != n:
        return False
    from ._rule_table import TABLE

    key = f"{family}-{n}"
    if key in TABLE:
        nodes, weights, _ = TABLE[key]
    else:
        r = _exact_rule(family, n)
        nodes, weights = ([float(v.evalf(30)) for v in vals] for vals in (r.nodes, r.weights))
    tol = 4 * np.finfo(np.float64).eps
    return all(
        abs(a - b) <= tol * max(1.0, abs(b))
        for a, b in zip(tuple(rule.nodes) + tuple(rule.weights), tuple(nodes) + tuple(weights))
    )


@lru_cache(maxsize=None)
def _exact_rule(family: str, n: int) -> ExactRule:
    from .rules import derive

    nodes, weights, degree = derive(family, n)
    return ExactRule(f"{family}-{n}", family, n, tuple(nodes), tuple(weights), degree)


def exact_rule(rule: Any) -> ExactRule:
    """The exact sympy nodes and weights of a named rule (``baquad.rules.derive``, cached).

    ``rule`` is a name (``"gauss-lobatto-n"``, ``"gauss-legendre-n"``, ``"trapezoid"``,
    ``"simpson"``, at most ``MAX_EXACT_NODES`` nodes) or a :class:`~baquad.rules.QuadratureRule`
    with such a name AND that rule's nodes and weights; a rule that only borrows the name is
    refused (its exact values are not the family's).
    """
    family, n = _parse_rule(rule)
    if not isinstance(rule, str) and not _is_family_rule(rule, family, n):
        raise ValueError(
            f"rule: {rule.name!r} carries the name of {family}-{n} but not its nodes and weights "
            f"(nodes {tuple(rule.nodes)}, weights {tuple(rule.weights)}); exact_rule derives the named "
            "rules only. degree_of_exactness decides such a rule from its own values."
        )
    return _exact_rule(family, n)


def _numberfield_parts(nodes: Sequence, weights: Sequence):
    """Split the terms of a rule for exact power sums.

    Nodes/weights free of ``CRootOf`` (rationals and radicals) are returned as they are. The
    others must each involve one ``CRootOf(f, i)``; they are written as polynomials of degree
    < deg f in a root y of f (division by inverting modulo f) and grouped by f. When a group's
    nodes are all the roots of f with the same polynomials, its power sums are traces over the
    roots, which are rational and computed exactly from Newton's identities.
    """
    sp = _sympy()

    y = sp.Dummy("y")
    plain, groups = [], {}
    for c, w in zip(nodes, weights):
        roots = (sp.sympify(c).atoms(sp.CRootOf) | sp.sympify(w).atoms(sp.CRootOf))
        if not roots:
            plain.append((c, w))
            continue
        if len(roots) != 1:
            raise ValueError(f"node {c} / weight {w} involves several algebraic numbers")
        (r,) = roots
        f = sp.Poly(r.poly.as_expr().subs(r.poly.gens[0], y), y)

        def as_poly(expr):
            num, den = sp.fraction(sp.together(sp.sympify(expr).subs(r, y)))
            return sp.rem(sp.Poly(num, y) * sp.invert(sp.Poly(den, y), f), f)

        groups.setdefault(f, []).append((int(r.args[1]), as_poly(c), as_poly(w)))
    traced = []
    for f, items in groups.items():
        first = items[0]
        complete = sorted(i for i, _, _ in items) == list(range(f.degree()))
        same = all(qc == first[1] and qw == first[2] for _, qc, qw in items)
        if not (complete and same):
            raise ValueError(f"the nodes that are roots of {f.as_expr()} are not all its roots with one weight formula")
        traced.append((f, first[1], first[2]))
    return plain, traced


def _power_sums(f, count: int) -> list:
    """Power sums s_0..s_{count-1} of the roots of f (Newton's identities), exact rationals."""
    sp = _sympy()

    coeffs = f.monic().all_coeffs()  # [1, a_1, ..., a_m] of x^m + a_1 x^(m-1) + ... + a_m
    m = f.degree()
    a = [sp.Rational(0)] * (max(count, m) + 1)
    for i in range(1, m + 1):
        a[i] = coeffs[i]
    s = [sp.Integer(m)]
    for k in range(1, count):
        val = -k * a[k] if k <= m else sp.Integer(0)
        for i in range(1, min(k - 1, m) + 1):
            val -= a[i] * s[k - i]
        s.append(val)
    return s


def _trace(f, q) -> Any:
    """sum over the roots y_j of f of the polynomial q(y_j)."""
    sp = _sympy()

    coeffs = list(reversed(q.all_coeffs()))  # q_0 + q_1 y + ...
    s = _power_sums(f, len(coeffs))
    return sp.Add(*[c * s[i] for i, c in enumerate(coeffs)])


def _exact_value(expr: Any) -> Any:
    """Simplify an algebraic number exactly: a rational when it is one (decided with its minimal
    polynomial), else its radical-simplified form."""
    sp = _sympy()

    expr = sp.sympify(expr)
    if expr.is_Rational:
        return expr
    z = sp.radsimp(sp.expand(expr))
    if z.is_Rational:
        return z
    X = sp.Dummy("X")
    mp = sp.Poly(sp.minimal_polynomial(z, X), X)
    if mp.degree() == 1:
        a, b = mp.all_coeffs()
        return sp.Rational(-b, a)
    return z


def _weighted_sum(rule: ExactRule, fn: Callable) -> Any:
    """sum_k w_k fn(c_k) exactly (fn a polynomial map of the node)."""
    sp = _sympy()

    plain, traced = _numberfield_parts(rule.nodes, rule.weights)
    total = sp.Add(*[w * fn(c) for c, w in plain])
    for f, qc, qw in traced:
        y = f.gens[0]
        q = sp.rem(qw * sp.Poly(fn(qc.as_expr()), y), f)
        total += _trace(f, q)
    return _exact_value(total)


def moment_defect(rule: Any, p: int) -> Any:
    """``1/(p+1) - sum_k w_k c_k^p``, exactly: the error of the rule on ``c^p`` over [0, 1]
    (0 for every ``p`` up to the degree of exactness). Cached per rule and ``p``."""
    if isinstance(p, bool) or not isinstance(p, Integral) or p < 0:
        raise ValueError(f"p: must be a non-negative integer, got {p!r}")
    r = rule if isinstance(rule, ExactRule) else exact_rule(rule)
    return _moment_defect(r, int(p))


@lru_cache(maxsize=None)
def _moment_defect(rule: ExactRule, p: int) -> Any:
    sp = _sympy()

    return _exact_value(sp.Rational(1, p + 1) - _weighted_sum(rule, lambda c: c**p))


def degree_of_exactness(rule: Any, max_degree: int = 64) -> int:
    """The largest ``p`` with ``sum_k w_k c_k^j == 1/(j+1)`` for all ``j <= p`` (``j <= max_degree``).

    - A rule name, an :class:`ExactRule`, or a :class:`~baquad.rules.QuadratureRule` that holds a
      named rule's nodes and weights: decided exactly from the exact nodes and weights (rational
      and radical terms summed and decided with minimal polynomials; ``CRootOf`` nodes summed as
      traces over the roots of their polynomial), independently of the degree the family formula
      claims. Deciding degree ``d`` needs the moments up to ``d + 1``, so a rule whose family
      formula gives ``d >= max_degree`` is refused before anything is derived, and so is a named
      rule of more than ``MAX_EXACT_NODES`` nodes.
    - Any other :class:`~baquad.rules.QuadratureRule` (a custom rule, or one named after a family
      but with other values): decided from its own float64 nodes and weights, whatever its name or
      ``degree`` attribute say. The moment defects ``1/(j+1) - sum_k w_k c_k^j`` are computed
      exactly (rational arithmetic on the float values), and moment ``j`` counts as integrated
      when the defect is within the float64 rounding of the nodes and weights,
      ``|defect| <= 4 (j + 1) 2^-53 sum_k |w_k| |c_k|^j`` (the change of ``w c^j`` when ``w`` and
      ``c`` move by one rounding each, with a factor 2 to spare). A rule given to fewer digits
      gets the degree those digits support.

    Args:
        rule: as above.
        max_degree: the highest moment checked (an integer >= 0).

    Returns:
        The degree (-1 if even constants are not integrated).

    Raises:
        ValueError: ``max_degree`` not an integer >= 0; a named rule that cannot be decided
            within ``max_degree`` or has too many nodes; a rule exact beyond ``max_degree``.
    """
    if isinstance(max_degree, bool) or not isinstance(max_degree, Integral) or max_degree < 0:
        raise ValueError(f"max_degree: must be an integer >= 0, got {max_degree!r}")
    max_degree = int(max_degree)
    if isinstance(rule, ExactRule):
        return _exact_degree(rule, max_degree)
    from .rules import QuadratureRule

    if isinstance(rule, QuadratureRule):
        named = _family_name(rule.name)
        in_range = named is not None and (2 if named[0] == "gauss-lobatto" else 1) <= named[1] <= MAX_EXACT_NODES
        if not (in_range and _is_family_rule(rule, *named)):
            return _float_degree(rule, max_degree)
    family, n = _parse_rule(rule)
    claimed = _family_degree(family, n)
    if claimed >= max_degree:
        raise ValueError(
            f"max_degree: {family}-{n} has degree {claimed} by its family formula, and deciding it "
            f"needs the moments up to {claimed + 1}; max_degree={max_degree} cannot decide it. Pass "
            f"max_degree >= {claimed + 1}."
        )
    return _exact_degree(exact_rule(rule), max_degree)


def _exact_degree(r: ExactRule, max_degree: int) -> int:
    for p in range(max_degree + 1):
        if moment_defect(r, p) != 0:
            return p - 1
    raise ValueError(f"rule {r.name}: exact beyond degree {max_degree}")


def _float_degree(rule: Any, max_degree: int) -> int:
    """Degree of a float rule up to float64 rounding (see :func:`degree_of_exactness`)."""
    nodes = [Fraction(c) for c in rule.nodes]
    weights = [Fraction(w) for w in rule.weights]
    unit = Fraction(1, 2**53)
    for p in range(max_degree + 1):
        terms = [w * c**p for c, w in zip(nodes, weights)]
        defect = Fraction(1, p + 1) - sum(terms)
        if abs(defect) > 4 * (p + 1) * unit * sum(abs(t) for t in terms):
            return p - 1
    raise ValueError(f"rule {rule.name!r}: exact (to float64 rounding) beyond degree {max_degree}")


@dataclass(frozen=True)
class LocalTruncationError:
    """The leading local truncation error of a rule on one interval ``[t, t + h]``.

    Attributes:
        rule: the rule's name.
        degree: its degree of exactness ``d``.
        monomial: the velocity probed, ``v(s) = s^(d+1)`` (sympy expression in ``s``).
        monomial_error: ``int_0^h v ds - h sum_k w_k v(c_k h) = E h^(d+2)`` (sympy, in ``h``).
        coefficient: the Peano constant ``C = E / (d+1)!``: for a smooth ``v`` the local error is
            ``C h^(d+2) v^(d+1)(t) + O(h^(d+3))``.
        term: ``C h^(d+2) v^(d+1)`` with ``v^(d+1)`` as the symbol ``Dv``.
        h: the step symbol.
    """

    rule: str
    degree: int
    monomial: Any
    monomial_error: Any
    coefficient: Any
    term: Any
    h: Any

    @property
    def order(self) -> int:
        """The power of ``h`` of the local error, ``d + 2`` (global order ``d + 1``)."""
        return self.degree + 2


def leading_lte(rule: Any) -> LocalTruncationError:
    """The leading local truncation error term of ``rule`` (see :class:`LocalTruncationError`).

    The rule integrates polynomials of degree ``<= d`` exactly, so on the Taylor expansion of a
    smooth ``v`` the first term it misses is ``v^(d+1)(t) s^(d+1) / (d+1)!``. The error on the
    monomial ``s^(d+1)`` over ``[0, h]`` is integrated symbolically. Trapezoid: ``-h^3/6`` on
    ``s^2``, ``C = -1/12``; Simpson: ``-h^5/120`` on ``s^4``, ``C = -1/2880``.
    """
    sp = _sympy()

    r = rule if isinstance(rule, ExactRule) else exact_rule(rule)
    d = degree_of_exactness(r)
    s, h, dv = sp.symbols("s h Dv", positive=True)
    v = s ** (d + 1)
    integral = sp.integrate(v, (s, 0, h))
    quad = h * h ** (d + 1) * _weighted_sum(r, lambda c: c ** (d + 1))
    err = sp.expand(integral - quad)
    coeff = _exact_value(sp.simplify(err / h ** (d + 2))) / sp.factorial(d + 1)
    return LocalTruncationError(r.name, d, v, err, coeff, coeff * h ** (d + 2) * dv, h)


@dataclass(frozen=True)
class AnchorBounds:
    """Single- vs bi-anchor local error bounds (paper Appendix A-B), symbolic.

    Attributes:
        single: the single-anchor bound.
        bi: the bi-anchor bound.
        ratio: ``bi / single`` (exact).
        symbols: ``(L, K, h)``.
        offsets: per node, ``(c_k, w_k, single-anchor |d_k|/h, bi-anchor |d_k|/h)`` for
            :func:`quadrature_anchor_bounds`; empty for the continuous bounds.
    """

    single: Any
    bi: Any
    ratio: Any
    symbols: tuple
    offsets: tuple = ()


def _symbols():
    sp = _sympy()

    return sp.symbols("L K h", positive=True)


def anchor_error_bounds() -> AnchorBounds:
    """The paper's Appendix A-B comparison, integrated symbolically.

    A perception whose velocity error grows linearly with the absolute offset from its anchor,
    ``|e(d)| <= L K |d|`` (L the Lipschitz constant of the field, K the state drift per unit
    time), bounds the interval error by the integral of ``L K |d|``:

    - single anchor (offsets ``s`` from the start): ``int_0^h L K s ds = L K h^2 / 2``;
    - bi-anchor (offset from the nearest anchor): ``int_0^{h/2} L K s ds + int_{h/2}^h L K (h - s) ds
      = L K h^2 / 4``;

    ratio exactly ``1/2``.
    """
    sp = _sympy()

    L, K, h = _symbols()
    s = sp.Symbol("s", positive=True)
    single = sp.integrate(L * K * s, (s, 0, h))
    bi = sp.integrate(L * K * s, (s, 0, h / 2)) + sp.integrate(L * K * (h - s), (s, h / 2, h))
    return AnchorBounds(sp.factor(single), sp.factor(bi), sp.simplify(bi / single), (L, K, h))


def quadrature_anchor_bounds(rule: Any) -> AnchorBounds:
    """The Appendix A-B comparison for the offsets a rule actually uses.

    The solver integrates ``h sum_k w_k u_k``, so with ``|e(d)| <= L K |d|`` the interval error is
    at most ``h sum_k w_k L K |d_k|``:

    - single anchor: every node is predicted forward from the start, ``|d_k| = c_k h`` (the node
      ``c = 1`` too): bound ``L K h^2 sum_k w_k c_k = L K h^2 / 2`` for any rule of degree >= 1;
    - bi-anchor: nodes ``c_k < 1/2`` forward from the start, ``c_k >= 1/2`` backward from the
      terminal anchor (``c = 1/2`` backward), ``|d_k| = min(c_k, 1 - c_k) h``; the endpoint nodes
      are the anchors themselves (offset 0).

    The ratio depends on the rule: 0 for the trapezoid (no node is predicted), 2/3 for Simpson
    (all interior weight sits at the midpoint, the farthest point from both anchors),
    ``(5 - sqrt 5)/6`` for Gauss-Lobatto-4, ``(9 - sqrt 15)/9`` for Gauss-Legendre-3, and it tends
    to the continuous 1/2 as the rule refines (0.492 for Gauss-Lobatto-8, 0.494 for
    Gauss-Legendre-8: the weighted sums are quadratures of the integrals of Appendix A-B). It
    ignores, like the paper, that the terminal anchor is evaluated at the predictor rather than on
    the true trajectory. For ``CRootOf`` nodes the bi-anchor sum is returned exact but
    unsimplified (it is not a symmetric function of the roots).
    """
    sp = _sympy()

    r = rule if isinstance(rule, ExactRule) else exact_rule(rule)
    L, K, h = _symbols()
    half = sp.Rational(1, 2)
    single_d = list(r.nodes)
    bi_d = [c if bool(c < half) else 1 - c for c in r.nodes]
    s_sum = _weighted_sum(r, lambda c: c)  # exactly 1/2 for degree >= 1 (traces for CRootOf nodes)
    b_sum = sp.Add(*[w * d for w, d in zip(r.weights, bi_d)])
    if not b_sum.has(sp.CRootOf):  # CRootOf sums stay exact but unsimplified (no trace applies)
        b_sum = _exact_value(b_sum)
    single = L * K * h**2 * s_sum
    bi = L * K * h**2 * b_sum
    ratio = b_sum / s_sum
    if not ratio.has(sp.CRootOf):
        ratio = _exact_value(sp.radsimp(ratio))
    offsets = tuple(zip(r.nodes, r.weights, single_d, bi_d))
    return AnchorBounds(single, bi, ratio, (L, K, h), offsets)
