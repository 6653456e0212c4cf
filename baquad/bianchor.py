"""The bi-anchor (and single-anchor) interval integrator: paper Sec. 3.2.2, Algorithm 1.

One bi-anchor interval from (t_i, x_i) with start anchor v_i = f(x_i, t_i), step h = t_{i+1} - t_i
and a quadrature rule (c_k, w_k) on [0, 1] (algorithm.md section 4, paper Eqs. 6-7 and 24):

1. forward probe, one batched perception call for every node c_k > 0:
       u_k = P(x_i, v_i, t_i, c_k h),   u_k = v_i at c_k = 0
   predictor  x~ = x_i + h sum_k w_k u_k                                    (Eq. 6)
2. terminal anchor, the interval's only backbone call:  v_{i+1} = f(x~, t_{i+1})
3. backward refinement for B = {k : c_k >= 1/2} (a node exactly at the midpoint goes backward):
       u_k = P(x~, v_{i+1}, t_{i+1}, (c_k - 1) h)  for c_k < 1,   u_k = v_{i+1} at c_k = 1
4. corrector  x_{i+1} = x_i + h sum_k w_k u_k  (forward u_k for c_k < 1/2, backward for B)
5. state reuse: v_{i+1} is the next interval's start anchor. It was evaluated at x~, not at
   x_{i+1}, and is not re-evaluated.

A single-anchor interval stops after step 1: x_{i+1} = x~, and the next anchor is
f(x_{i+1}, t_{i+1}) (no call at all when the interval is the last one).

|x_{i+1} - x~| (root-mean-square over all entries) is returned per interval as a free local
error indicator, like the difference of an embedded pair.

The solver is an object with explicit ``init``/``step`` state (diffrax style), so the reused
anchor is visible in :class:`BiAnchorState` rather than hidden.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from . import _backend as B
from .perception import Anchor, Perception
from .rules import QuadratureRule

Array = Any
Field = Callable[[float, Array], Array]


@dataclass(frozen=True)
class BiAnchorState:
    """Solver state between intervals.

    Attributes:
        t: current time.
        x: current state.
        v: the start anchor for the next interval (the backbone velocity last computed, at
            ``history[-1].x``), or None after a single-anchor interval that evaluated nothing.
        history: the most recent anchors of the trajectory, oldest first.
    """

    t: float
    x: Array
    v: Optional[Array]
    history: tuple[Anchor, ...]


@dataclass(frozen=True)
class StepInfo:
    """What one interval produced besides the new state."""

    predictor: Array
    #: rms(x_{i+1} - x~) as a 0-dim array (no device sync); None for a single-anchor interval,
    #: which has no corrector.
    gap: Optional[Array]


class BiAnchorSolver:
    """Bi-anchor interval integrator for one quadrature rule and one perception.

    Args:
        rule: quadrature rule with nodes in [0, 1].
        perception: the perception P (see :mod:`baquad.perception`).
    """

    def __init__(self, rule: QuadratureRule, perception: Perception):
        rule.check_unit_interval("rule")
        self.rule = rule
        self.perception = perception
        nodes = rule.nodes
        self._forward = [k for k, c in enumerate(nodes) if c > 0.0]
        self._backward = [k for k, c in enumerate(nodes) if 0.5 <= c < 1.0]
        self._history_size = max(1, int(getattr(perception, "history_size", 1)))

    def init(self, field: Field, t0: float, x0: Array) -> BiAnchorState:
        """Evaluate the first anchor v_0 = f(x_0, t_0) (one NFE)."""
        v0 = field(t0, x0)
        return BiAnchorState(t0, x0, v0, (Anchor(t0, x0, v0),))

    def step(self, field: Field, state: BiAnchorState, t1: float, *, bi: bool = True,
             evaluate_end: bool = True) -> tuple[BiAnchorState, StepInfo]:
        """Advance one interval to ``t1``.

        Args:
            bi: bi-anchor interval (steps 1-5); False gives a single-anchor interval.
            evaluate_end: single-anchor only: evaluate the next anchor at the new state (False for
                the last interval, which then costs no backbone call). A bi-anchor interval always
                evaluates its terminal anchor.
        """
        if state.v is None:
            raise RuntimeError("step: the state has no start anchor (the previous interval was final)")
        nodes, weights = self.rule.nodes, self.rule.weights
        x, v, t0 = state.x, state.v, state.t
        h = t1 - t0
        u: list[Array] = [v if c == 0.0 else None for c in nodes]
        if self._forward:
            probe = self.perception(x, v, t0, tuple(nodes[k] * h for k in self._forward), state.history)
            for j, k in enumerate(self._forward):
                u[k] = probe[j]
        x_pred = x + h * _weighted_sum(weights, u)

        if not bi:
            history = state.history
            v1 = None
            if evaluate_end:
                v1 = field(t1, x_pred)
                history = _push(history, Anchor(t1, x_pred, v1), self._history_size)
            return BiAnchorState(t1, x_pred, v1, history), StepInfo(x_pred, None)

        v1 = field(t1, x_pred)
        history = _push(state.history, Anchor(t1, x_pred, v1), self._history_size)
        for k, c in enumerate(nodes):
            if c == 1.0:
                u[k] = v1
        if self._backward:
            back = self.perception(x_pred, v1, t1, tuple((nodes[k] - 1.0) * h for k in self._backward), history)
            for j, k in enumerate(self._backward):
                u[k] = back[j]
        x1 = x + h * _weighted_sum(weights, u)
        return BiAnchorState(t1, x1, v1, history), StepInfo(x_pred, B.rms(x1 - x_pred))


def _weighted_sum(weights: Sequence[float], u: Sequence[Array]) -> Array:
    out = weights[0] * u[0]
    for w, uk in zip(weights[1:], u[1:]):
        out = out + w * uk
    return out


def _push(history: tuple[Anchor, ...], anchor: Anchor, size: int) -> tuple[Anchor, ...]:
    return (history + (anchor,))[-size:]


def ba_solver(
    field: Field,
    x0: Array,
    ts: Sequence[float],
    *,
    callback: Optional[Callable[..., None]] = None,
    rule: QuadratureRule,
    perception: Perception,
    anchors: str = "bi",
    final: str = "single",
) -> Array:
    """BA-solver over a grid, in the sampler form shared with the baselines.

    NFE schemes (algorithm.md section 5), for a grid of M intervals:
    - ``anchors="bi", final="bi"`` (scheme A): every interval bi-anchor, NFE = M + 1.
    - ``anchors="bi", final="single"`` (scheme B): the last interval single-anchor, NFE = M.
    - ``anchors="single"``: every interval single-anchor (the ablation), NFE = M.

    ``callback(i, t_i, x_i, info)`` is called after each interval with its :class:`StepInfo`.
    """
    if anchors not in ("bi", "single"):
        raise ValueError(f"anchors: must be 'bi' or 'single', got {anchors!r}")
    if final not in ("bi", "single"):
        raise ValueError(f"final: must be 'bi' or 'single', got {final!r}")
    solver = BiAnchorSolver(rule, perception)
    state = solver.init(field, ts[0], x0)
    last = len(ts) - 1
    for i in range(1, len(ts)):
        bi = anchors == "bi" and not (i == last and final == "single")
        state, info = solver.step(field, state, ts[i], bi=bi, evaluate_end=i < last)
        if callback is not None:
            callback(i, ts[i], state.x, info)
    return state.x
