"""The bi-anchor (and single-anchor) interval integrator: paper Sec. 3.2.2, Algorithm 1.

One bi-anchor interval from (t_i, x_i) with start anchor v_i = f(x_i, t_i), step h = t_{i+1} - t_i
and a quadrature rule (c_k, w_k) on [0, 1] (docs/algorithm.md#the-bi-anchor-step; paper Eqs. 6-10 and 24):

1. forward probe, one batched perception call for every node c_k > 0:
       u_k = P(x_i, v_i, t_i, c_k h),   u_k = v_i at c_k = 0
   predictor  x~ = x_i + h sum_k w_k u_k                                 (Eqs. 6-8)
2. terminal anchor, the interval's only backbone call:  v_{i+1} = f(x~, t_{i+1})
3. backward refinement for B = {k : c_k >= 1/2} (a node exactly at the midpoint goes backward):
       u_k = P(x~, v_{i+1}, t_{i+1}, (c_k - 1) h)  for c_k < 1,   u_k = v_{i+1} at c_k = 1
4. corrector  x_{i+1} = x_i + h sum_k w_k u_k  (forward u_k for c_k < 1/2, backward for B; Eqs. 9-10)
5. state reuse: v_{i+1} is the next interval's start anchor. It was evaluated at x~, not at
   x_{i+1}, and is not re-evaluated.

A single-anchor interval stops after step 1: x_{i+1} = x~, and the next anchor is
f(x_{i+1}, t_{i+1}) (no call at all when the interval is the last one).

|x_{i+1} - x~| (root-mean-square over all entries) is returned per interval as a free local
error indicator, like the difference of an embedded pair.

The solver is an object with explicit ``init``/``step`` state (diffrax style), so the reused
anchor is visible in :class:`BiAnchorState` rather than hidden, and so is the anchor history the
perception declared it needs (``history_size``; see :mod:`baquad.perception`). ``step`` is two
public halves around the backbone call, ``predict`` (step 1) and ``correct`` (steps 3-5, given the
terminal anchor), for callers that receive the anchor later, such as a diffusers scheduler whose
pipeline makes the call between two of its steps.

Times are Python floats for sampling. For chain training (:mod:`adapters.torch_sit.sidenet.chain`) the
same step runs with per-sample times: ``t`` a ``(B,)`` array, one time per batch row, and h
broadcast over the rows, so every sample integrates its own interval; the perception then gets
``(B,)`` times and ``(m, B)`` offsets and must declare ``per_sample_times = True``. This is the
one implementation of the step: sampling and training cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from . import _backend as B
from .perception import Anchor, Perception, get_perception, history_size
from .rules import QuadratureRule, get_rule

Array = Any
Time = Any  # a Python float, or a (B,) array of per-sample times
Field = Callable[[Time, Array], Array]

__all__ = [
    "BiAnchorState",
    "StepInfo",
    "Prediction",
    "BiAnchorSolver",
    "push_anchor",
    "ba_solver",
    "ba_solver_resolved",
    "resolve_ba_options",
    "ba_cost",
]


@dataclass(frozen=True)
class BiAnchorState:
    """Solver state between intervals.

    Attributes:
        t: current time (a float, or a ``(B,)`` array of per-sample times).
        x: current state.
        anchor: the start anchor of the next interval, ``Anchor(t, x_eval, v)`` with
            v = f(x_eval, t): the backbone velocity last computed. After a bi-anchor interval
            x_eval is the predictor x~, not ``x`` (the anchor is reused, not re-evaluated, step 5).
            None after a single-anchor interval that evaluated nothing (the final one).
        history: the most recent anchors of the trajectory, oldest first (as many as the
            perception declares; all of them when it declares None).
    """

    t: Time
    x: Array
    anchor: Optional[Anchor]
    history: tuple[Anchor, ...]

    @property
    def v(self) -> Optional[Array]:
        """The start anchor's velocity (None when there is no anchor)."""
        return None if self.anchor is None else self.anchor.v


@dataclass(frozen=True)
class StepInfo:
    """What one interval produced besides the new state."""

    #: rms(x_{i+1} - x~) as a 0-dim array (no device sync); None for a single-anchor interval,
    #: which has no corrector.
    gap: Optional[Array]


@dataclass(frozen=True)
class Prediction:
    """The first half of an interval (:meth:`BiAnchorSolver.predict`): everything the corrector
    needs besides the terminal anchor.

    Attributes:
        state: the state the interval starts from.
        t1: the interval's end time; ``h = t1 - state.t``.
        h: the step (a float, or a ``(B,)`` array).
        u: the velocity at each node of the rule: the start anchor at c = 0, the forward probe
            for every c > 0 (the corrector replaces those with c >= 1/2).
        x_pred: the predictor x~ (Eq. 6); the new state of a single-anchor interval.
    """

    state: BiAnchorState
    t1: Time
    h: Time
    u: tuple
    x_pred: Array


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
        self._history_size = history_size(perception)

    def init(self, field: Field, t0: Time, x0: Array) -> BiAnchorState:
        """Evaluate the first anchor v_0 = f(x_0, t_0) (one NFE)."""
        anchor = Anchor(t0, x0, field(t0, x0))
        return BiAnchorState(t0, x0, anchor, (anchor,))

    def step(self, field: Field, state: BiAnchorState, t1: Time, *, bi: bool = True,
             evaluate_end: bool = True) -> tuple[BiAnchorState, StepInfo]:
        """Advance one interval to ``t1`` (paper Algorithm 1, steps 1-5).

        Args:
            bi: bi-anchor interval (steps 1-5); False gives a single-anchor interval.
            evaluate_end: single-anchor only: evaluate the next anchor at the new state (False for
                the last interval, which then costs no backbone call). A bi-anchor interval always
                evaluates its terminal anchor.

        ``t1`` is a float, or a ``(B,)`` array when the state's time is one (per-sample
        intervals; rows with h = 0 stay where they are, at the cost of their share of the calls).

        The step is :meth:`predict` (step 1), the backbone call at the predictor (step 2) and
        :meth:`correct` (steps 3-5); a caller that receives the terminal anchor later (a
        diffusers scheduler, whose pipeline makes the backbone call between two ``step`` calls)
        runs the two halves itself.
        """
        pred = self.predict(state, t1)
        if not bi:
            history, anchor = state.history, None
            if evaluate_end:
                anchor = Anchor(t1, pred.x_pred, field(t1, pred.x_pred))
                history = push_anchor(history, anchor, self._history_size)
            return BiAnchorState(t1, pred.x_pred, anchor, history), StepInfo(None)
        # Step 2: the terminal anchor, the interval's only backbone call.
        return self.correct(pred, Anchor(t1, pred.x_pred, field(t1, pred.x_pred)))

    def predict(self, state: BiAnchorState, t1: Time) -> "Prediction":
        """Step 1 alone: the forward probe from the start anchor and the predictor
        x~ = x_i + h sum_k w_k u_k (Eq. 6). No backbone call.

        The returned :class:`Prediction` holds what :meth:`correct` needs to finish the interval
        once the terminal anchor f(x~, t1) is known; a single-anchor interval's new state is
        just ``prediction.x_pred``.
        """
        if state.anchor is None:
            raise RuntimeError("step: the state has no start anchor (the previous interval was final)")
        nodes, weights = self.rule.nodes, self.rule.weights
        x, v, t0 = state.x, state.anchor.v, state.t
        h = t1 - t0
        per_sample = B.is_per_sample(h)
        if per_sample and not getattr(self.perception, "per_sample_times", False):
            raise TypeError(
                f"step: per-sample times need a perception that accepts them; {self.perception!r} does not "
                "declare per_sample_times = True"
            )
        hx = B.per_row(h, x) if per_sample else h
        offsets = _offsets(per_sample)

        # Step 1: forward perception from the start anchor, all nodes c > 0 in one call; predictor.
        u: list[Array] = [v if c == 0.0 else None for c in nodes]
        if self._forward:
            probe = self.perception(x, v, t0, offsets([nodes[k] for k in self._forward], h), state.history)
            for j, k in enumerate(self._forward):
                u[k] = probe[j]
        x_pred = x + hx * _weighted_sum(weights, u)
        return Prediction(state, t1, h, tuple(u), x_pred)

    def correct(self, pred: "Prediction", anchor: Anchor) -> tuple[BiAnchorState, StepInfo]:
        """Steps 3-5: finish the interval of ``pred`` given its terminal anchor.

        ``anchor`` is ``Anchor(t1, x_eval, v)`` with v = f(x_eval, t1); in the algorithm x_eval
        is ``pred.x_pred`` (step 2). The backward probe runs from (x_eval, v), the corrector
        x_{i+1} = x_i + h sum_k w_k u_k uses the forward probe's u_k for the nodes c < 1/2 and
        the backward ones for c >= 1/2 (c = 1: v itself), and ``anchor`` becomes the next
        interval's start anchor (step 5). No backbone call.
        """
        nodes, weights = self.rule.nodes, self.rule.weights
        x, h, t1 = pred.state.x, pred.h, pred.t1
        per_sample = B.is_per_sample(h)
        hx = B.per_row(h, x) if per_sample else h
        offsets = _offsets(per_sample)
        u = list(pred.u)
        history = push_anchor(pred.state.history, anchor, self._history_size)
        # Step 3: backward perception from the terminal anchor for the nodes c >= 1/2.
        for k, c in enumerate(nodes):
            if c == 1.0:
                u[k] = anchor.v
        if self._backward:
            back = self.perception(anchor.x, anchor.v, t1, offsets([nodes[k] - 1.0 for k in self._backward], h), history)
            for j, k in enumerate(self._backward):
                u[k] = back[j]
        # Step 4: corrector. Step 5: the terminal anchor is the next interval's start anchor.
        x1 = x + hx * _weighted_sum(weights, u)
        return BiAnchorState(t1, x1, anchor, history), StepInfo(B.rms(x1 - pred.x_pred))


def push_anchor(history: tuple[Anchor, ...], anchor: Anchor, size: Optional[int]) -> tuple[Anchor, ...]:
    """The anchor history after ``anchor`` is computed: ``history + (anchor,)`` keeping the last
    ``size`` anchors, oldest first (``size`` None keeps them all).

    ``size`` is what the perception declares it needs (:func:`~baquad.perception.history_size`);
    the solver and the diffusers scheduler push through this one function.

    Raises:
        ValueError: naming ``size`` unless it is None or an integer >= 1.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ValueError(f"size: the number of anchors to keep must be an int >= 1, or None to keep all; got {size!r}")
    history = tuple(history) + (anchor,)
    return history if size is None else history[-size:]


def _offsets(per_sample: bool) -> Callable[[Sequence[float], Time], Any]:
    """The perception's offsets c * h: a tuple of floats, or an ``(m, B)`` array per sample."""
    if per_sample:
        return lambda coeffs, h: B.stack([c * h for c in coeffs])
    return lambda coeffs, h: tuple(c * h for c in coeffs)


def _weighted_sum(weights: Sequence[float], u: Sequence[Array]) -> Array:
    out = weights[0] * u[0]
    for w, uk in zip(weights[1:], u[1:]):
        out = out + w * uk
    return out


def ba_solver(
    field: Field,
    x0: Array,
    ts: Sequence[float],
    *,
    callback: Optional[Callable[..., None]] = None,
    rule: "QuadratureRule | str | None" = None,
    perception: "Perception | str | None" = None,
    anchors: Optional[str] = None,
    final: Optional[str] = None,
) -> Array:
    """BA-solver over a grid, for a direct call: the options are resolved here
    (:func:`resolve_ba_options`: defaults filled in, values checked), then
    :func:`ba_solver_resolved` integrates.

    NFE schemes (docs/algorithm.md#counting-nfe), for a grid of M intervals:
    - ``anchors="bi", final="bi"`` (scheme A): every interval bi-anchor, NFE = M + 1.
    - ``anchors="bi", final="single"`` (scheme B, default): the last interval single-anchor,
      NFE = M.
    - ``anchors="single"``: every interval single-anchor (the ablation), NFE = M.

    ``rule`` defaults to Gauss-Lobatto-4 and ``perception`` to the training-free
    :class:`~baquad.perception.AnchorPolynomial`.
    ``callback(i, t_i, x_i, info)`` is called after each interval with its :class:`StepInfo`.
    """
    opts = resolve_ba_options(rule=rule, perception=perception, anchors=anchors, final=final)
    return ba_solver_resolved(field, x0, ts, callback=callback, **opts)


def ba_solver_resolved(
    field: Field,
    x0: Array,
    ts: Sequence[float],
    *,
    callback: Optional[Callable[..., None]] = None,
    rule: QuadratureRule,
    perception: Perception,
    anchors: str,
    final: str,
) -> Array:
    """BA-solver over a grid with options already resolved by :func:`resolve_ba_options` (every
    option given, as objects: a :class:`~baquad.rules.QuadratureRule`, a
    :class:`~baquad.perception.Perception`, ``anchors`` and ``final`` each ``"bi"`` or
    ``"single"``); it does not check them again. This is the sampler the registry
    (:mod:`baquad.methods`) runs after resolving the options once; call :func:`ba_solver` for
    defaults and checks.

    Interval i = 1 .. M (M = len(ts) - 1) is bi-anchor when ``anchors == "bi"``, except the last
    one under ``final == "single"``. NFE: one for the first anchor, one per interval but the last
    (the next anchor), and one for the last interval only when it is bi-anchor (its terminal
    anchor; :func:`ba_cost`). ``callback(i, t_i, x_i, info)`` is called after each interval with
    its :class:`StepInfo`.
    """
    solver = BiAnchorSolver(rule, perception)
    state = solver.init(field, ts[0], x0)
    last = len(ts) - 1
    for i in range(1, len(ts)):
        bi = anchors == "bi" and not (i == last and final == "single")
        state, info = solver.step(field, state, ts[i], bi=bi, evaluate_end=i < last)
        if callback is not None:
            callback(i, ts[i], state.x, info)
    return state.x


_SCHEMES = ("bi", "single")


def resolve_ba_options(rule: "QuadratureRule | str | None" = None, perception: "Perception | str | None" = None,
                       anchors: Optional[str] = None, final: Optional[str] = None) -> dict:
    """BA-solver's options checked, with defaults filled in (None selects a default).

    ``rule``: a name or :class:`~baquad.rules.QuadratureRule` with nodes in [0, 1] (default
    ``"gauss-lobatto-4"``); ``perception``: see :func:`~baquad.perception.get_perception`;
    ``anchors``: ``"bi"`` (default) or ``"single"``; ``final``: ``"single"`` (default) or ``"bi"``.

    Raises:
        ValueError / TypeError naming the option.
    """
    for name, value in (("anchors", anchors), ("final", final)):
        if value is not None and (not isinstance(value, str) or value not in _SCHEMES):
            raise ValueError(f"{name}: must be 'bi' or 'single' (or None for the default), got {value!r}")
    rule = get_rule("gauss-lobatto-4" if rule is None else rule)
    rule.check_unit_interval("rule")
    return dict(rule=rule, perception=get_perception(perception), anchors=anchors or "bi", final=final or "single")


def ba_cost(rule: Any, perception: Any, anchors: str, final: str) -> tuple[int, int]:
    """BA-solver's NFE for N intervals as ``(a, b)`` with NFE = a N + b, from the resolved
    options (docs/algorithm.md#counting-nfe): the initial anchor is one call and every interval
    but the last evaluates the next anchor, one call each; the last interval makes a call only
    when it is bi-anchor. So scheme A (``anchors="bi", final="bi"``) costs N + 1, scheme B
    (``final="single"``) and ``anchors="single"`` cost N."""
    return (1, 1) if anchors == "bi" and final == "bi" else (1, 0)
