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
error indicator, like the difference of an embedded pair (:class:`StepInfo`: the norm, scaled to
the root-mean-square when read).

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

import math
from functools import lru_cache
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

from . import _backend as B
from .perception import Anchor, Perception, get_perception, history_size
from .rules import QuadratureRule, get_rule
from .solvers.learned_steps import LearnedSteps, carried_steps

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


class BiAnchorState(NamedTuple):
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


class StepInfo(NamedTuple):
    """What one interval produced besides the new state.

    Attributes:
        gap_norm: |x_{i+1} - x~|_2 over all entries as a 0-dim array (detached, no device
            sync); None for a single-anchor interval, which has no corrector.
        size: the number of entries of the state, so that the gap is
            rms(x_{i+1} - x~) = gap_norm / sqrt(size) (``solve`` scales every interval's at the
            end, in one go on the host).
    """

    gap_norm: Optional[Array]
    size: int = 1

    @property
    def gap(self) -> Optional[Array]:
        """rms(x_{i+1} - x~) as a 0-dim array (one scaling of ``gap_norm``); None for a
        single-anchor interval."""
        return None if self.gap_norm is None else self.gap_norm * (1.0 / math.sqrt(self.size))


class Prediction(NamedTuple):
    """The first half of an interval (:meth:`BiAnchorSolver.predict`): everything the corrector
    needs besides the terminal anchor.

    Attributes:
        state: the state the interval starts from.
        t1: the interval's end time; ``h = t1 - state.t``.
        h: the step (a float, or a ``(B,)`` array).
        kept: the part of the quadrature sum the corrector keeps, ``(weights, velocities)``:
            the start anchor for a node c = 0 and the forward probe for the nodes 0 < c < 1/2
            (with a perception's ``linear_terms``, the anchor velocities those predictions
            combine, each once, weighted by the sum of w_k times its coefficients).
        x_pred: the predictor x~ (Eq. 6); the new state of a single-anchor interval.
        corrector: the corrector's weights by node role (:class:`_Roles`) when they are not the rule's
            (learned per-interval weights, :mod:`baquad.solvers.learned_steps`); None: the rule's.
    """

    state: BiAnchorState
    t1: Time
    h: Time
    kept: tuple
    x_pred: Array
    corrector: Optional[tuple] = None


_NO_INFO = StepInfo(None)


class BiAnchorSolver:
    """Bi-anchor interval integrator for one quadrature rule and one perception.

    Args:
        rule: quadrature rule with nodes in [0, 1].
        perception: the perception P (see :mod:`baquad.perception`).

    Everything that depends only on the rule and the perception is worked out here, once: which
    nodes each probe serves, their weights, the history the perception declares, whether it
    accepts per-sample times and whether it offers ``linear_terms``.

    Every update x + h sum_k w_k u_k is a chain of fused multiply-adds, x + (h c_0) a_0 +
    (h c_1) a_1 + ... with Python-float coefficients (:func:`baquad._backend.add_scaled`), one
    per distinct array. With Python-float times and a perception that offers ``linear_terms``,
    a probe returns the anchor velocities its predictions combine, so the arrays are the anchor
    velocities themselves, a_j = v_j with c_j = sum_k w_k c_kj: two or three per update for the
    polynomial perception, however many nodes the rule has; otherwise they are the probe's
    predictions u_k with c_k = w_k.
    """

    def __init__(self, rule: QuadratureRule, perception: Perception):
        rule.check_unit_interval("rule")
        self.rule = rule
        self.perception = perception
        self._roles = _node_roles(rule.nodes, rule.weights)
        self._history_size = history_size(perception)
        self._per_sample_ok = bool(getattr(perception, "per_sample_times", False))
        self._linear = getattr(perception, "linear_terms", None)

    def init(self, field: Field, t0: Time, x0: Array) -> BiAnchorState:
        """Evaluate the first anchor v_0 = f(x_0, t_0) (one NFE)."""
        anchor = Anchor(t0, x0, field(t0, x0))
        return BiAnchorState(t0, x0, anchor, (anchor,))

    def step(self, field: Field, state: BiAnchorState, t1: Time, *, bi: bool = True,
             evaluate_end: bool = True, weights: Optional[tuple] = None) -> tuple[BiAnchorState, StepInfo]:
        """Advance one interval to ``t1`` (paper Algorithm 1, steps 1-5).

        Args:
            bi: bi-anchor interval (steps 1-5); False gives a single-anchor interval.
            evaluate_end: single-anchor only: evaluate the next anchor at the new state (False for
                the last interval, which then costs no backbone call). A bi-anchor interval always
                evaluates its terminal anchor.

        ``t1`` is a float, or a ``(B,)`` array when the state's time is one (per-sample
        intervals; rows with h = 0 stay where they are, at the cost of their share of the calls).

        ``weights``: ``(predictor, corrector)``, one weight per node of the rule each (floats, or
        0-dim arrays that carry gradients), in place of the rule's weights for this interval
        (a learned BA-solver, :mod:`baquad.solvers.learned_steps`); None: the rule's.

        The step is :meth:`predict` (step 1), the backbone call at the predictor (step 2) and
        :meth:`correct` (steps 3-5); a caller that receives the terminal anchor later (a
        diffusers scheduler, whose pipeline makes the backbone call between two ``step`` calls)
        runs the two halves itself.
        """
        pred = self.predict(state, t1, weights)
        x_pred = pred.x_pred
        if not bi:
            history, anchor = state.history, None
            if evaluate_end:
                anchor = Anchor(t1, x_pred, field(t1, x_pred))
                history = _push(history, anchor, self._history_size)
            return BiAnchorState(t1, x_pred, anchor, history), _NO_INFO
        # Step 2: the terminal anchor, the interval's only backbone call.
        return self.correct(pred, Anchor(t1, x_pred, field(t1, x_pred)))

    def predict(self, state: BiAnchorState, t1: Time, weights: Optional[tuple] = None) -> "Prediction":
        """Step 1 alone: the forward probe from the start anchor and the predictor
        x~ = x_i + h sum_k w_k u_k (Eq. 6). No backbone call.

        The returned :class:`Prediction` holds what :meth:`correct` needs to finish the interval
        once the terminal anchor f(x~, t1) is known; a single-anchor interval's new state is
        just ``prediction.x_pred``. ``weights``: as in :meth:`step`.
        """
        x, anchor, t0 = state.x, state.anchor, state.t
        if anchor is None:
            raise RuntimeError("step: the state has no start anchor (the previous interval was final)")
        v = anchor.v
        h = t1 - t0
        roles, corrector = self._roles, None
        if weights is not None:
            roles, corrector = (_roles(self.rule.nodes, _check_weights(w, self.rule, name))
                                for w, name in zip(weights, ("predictor", "corrector")))
        nodes = self._roles  # which node does what depends on the rule only, not on the weights
        coeffs, arrays = list(roles.start_w), [v] * len(roles.start_w)
        if not nodes.forward:
            kept = (tuple(coeffs), tuple(arrays)) if corrector is None else \
                (corrector.start_w, (v,) * len(corrector.start_w))
            return Prediction(state, t1, h, kept, B.add_scaled(x, h, coeffs, arrays), corrector)
        # Step 1: forward perception from the start anchor, all nodes c > 0 in one call; predictor.
        rows = self._probe(nodes.forward_c, h, x, v, t0, state.history)
        _accumulate(coeffs, arrays, [(roles.forward_w[j], rows[j]) for j in nodes.kept])
        kept = (tuple(coeffs), tuple(arrays))
        if corrector is not None:  # the corrector keeps the same probes with its own weights
            kc, ka = list(corrector.start_w), [v] * len(corrector.start_w)
            _accumulate(kc, ka, [(corrector.forward_w[j], rows[j]) for j in nodes.kept])
            kept = (tuple(kc), tuple(ka))
        _accumulate(coeffs, arrays, [(roles.forward_w[j], rows[j]) for j in nodes.ahead])
        return Prediction(state, t1, h, kept, B.add_scaled(x, h, coeffs, arrays), corrector)

    def correct(self, pred: "Prediction", anchor: Anchor) -> tuple[BiAnchorState, StepInfo]:
        """Steps 3-5: finish the interval of ``pred`` given its terminal anchor.

        ``anchor`` is ``Anchor(t1, x_eval, v)`` with v = f(x_eval, t1); in the algorithm x_eval
        is ``pred.x_pred`` (step 2). The backward probe runs from (x_eval, v), the corrector
        x_{i+1} = x_i + h sum_k w_k u_k uses the forward probe's u_k for the nodes c < 1/2 and
        the backward ones for c >= 1/2 (c = 1: v itself), and ``anchor`` becomes the next
        interval's start anchor (step 5). No backbone call.
        """
        x, h, t1 = pred.state.x, pred.h, pred.t1
        history = _push(pred.state.history, anchor, self._history_size)
        coeffs, arrays = list(pred.kept[0]), list(pred.kept[1])
        nodes = self._roles
        weights = nodes if pred.corrector is None else pred.corrector
        # Step 3: backward perception from the terminal anchor for the nodes c >= 1/2.
        if nodes.backward:
            rows = self._probe(nodes.backward_c, h, anchor.x, anchor.v, t1, history)
            _accumulate(coeffs, arrays, zip(weights.backward_w, rows))
        _accumulate(coeffs, arrays, [(w, ((1.0, anchor.v),)) for w in weights.end_w])
        # Step 4: corrector. Step 5: the terminal anchor is the next interval's start anchor.
        x1 = B.add_scaled(x, h, coeffs, arrays)
        return BiAnchorState(t1, x1, anchor, history), StepInfo(B.norm_of_difference(x1, pred.x_pred), B.size(x1))

    def _probe(self, nodes: Sequence[float], h: Time, x: Array, v: Array, t: Time, history: tuple) -> Sequence:
        """One perception call at the offsets c * h (c in ``nodes``, in units of h), as rows of
        ``(coefficient, array)`` pairs, one row per offset: the perception's ``linear_terms``
        when it offers them and h is a host number, else ``((1.0, u_k),)`` with u_k its
        stacked prediction. Offsets are a tuple of floats for one time for the whole batch (also
        a 0-dim array time, torchdiffeq's differentiable times), an ``(m, B)`` array for
        per-sample times."""
        if type(h) is float or not B.is_array(h):
            offsets = tuple([c * h for c in nodes])
            if self._linear is not None:
                return self._linear(x, v, t, offsets, history)
        elif h.ndim == 0:
            offsets = tuple([c * h for c in nodes])
        else:
            if not self._per_sample_ok:
                raise TypeError(
                    f"step: per-sample times need a perception that accepts them; {self.perception!r} does not "
                    "declare per_sample_times = True"
                )
            B.per_row(h, x)  # checks the shape (one time per row of the state)
            offsets = B.stack([c * h for c in nodes])
        return [((1.0, u),) for u in B.unbind(self.perception(x, v, t, offsets, history))]


@lru_cache(maxsize=64)
def _node_roles(nodes: tuple[float, ...], weights: tuple[float, ...]) -> "_Roles":
    """:func:`_roles` for a rule's own weights, worked out once per rule."""
    return _roles(nodes, weights)


def _check_weights(weights: Any, rule: QuadratureRule, name: str) -> tuple:
    """Per-interval weights as a tuple of one float or 0-dim array per node of ``rule``."""
    w = tuple(weights)
    if len(w) != len(rule.nodes):
        raise ValueError(f"weights: {name} weights need one per node of {rule.name} ({len(rule.nodes)}), got {len(w)}")
    return w


class _Roles(NamedTuple):
    """What each node of a rule does in the step, for one set of weights (:func:`_roles`)."""

    forward: tuple  #: indices of the forward-probe nodes (c > 0)
    backward: tuple  #: indices of the backward-probe nodes (1/2 <= c < 1)
    forward_c: tuple  #: the forward probe's offsets in units of h (c)
    backward_c: tuple  #: the backward probe's offsets in units of h (c - 1)
    forward_w: tuple  #: the forward nodes' weights
    backward_w: tuple  #: the backward nodes' weights
    kept: tuple  #: positions in the forward probe the corrector keeps (c < 1/2)
    ahead: tuple  #: positions in the forward probe only the predictor uses (c >= 1/2)
    start_w: tuple  #: the weights on the start anchor (c = 0)
    end_w: tuple  #: the weights on the terminal anchor (c = 1, corrector only)


def _roles(nodes: tuple[float, ...], weights: tuple) -> _Roles:
    """The :class:`_Roles` of a rule's ``nodes`` under ``weights`` (the rule's, or learned
    per-interval ones)."""
    forward = tuple(k for k, c in enumerate(nodes) if c > 0.0)
    backward = tuple(k for k, c in enumerate(nodes) if 0.5 <= c < 1.0)
    return _Roles(forward, backward,
                  tuple(nodes[k] for k in forward), tuple(nodes[k] - 1.0 for k in backward),
                  tuple(weights[k] for k in forward), tuple(weights[k] for k in backward),
                  tuple(j for j, k in enumerate(forward) if nodes[k] < 0.5),
                  tuple(j for j, k in enumerate(forward) if nodes[k] >= 0.5),
                  tuple(w for c, w in zip(nodes, weights) if c == 0.0),
                  tuple(w for c, w in zip(nodes, weights) if c == 1.0))


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
    return _push(history, anchor, size)


def _push(history: tuple[Anchor, ...], anchor: Anchor, size: Optional[int]) -> tuple[Anchor, ...]:
    """:func:`push_anchor` for a ``size`` already checked (the solver's, checked at construction)."""
    history = tuple(history) + (anchor,)
    return history if size is None else history[-size:]


def _accumulate(coeffs: list, arrays: list, weighted_rows: Iterable[tuple[float, Sequence]]) -> None:
    """Add ``w * sum_j c_j a_j`` for every probe row ``((c_j, a_j), ...)`` with its node weight w
    to the combination ``coeffs``, ``arrays``, adding the coefficient of an array already there
    (the same object) to its entry: every anchor velocity then reaches the state once."""
    for w, row in weighted_rows:
        for c, a in row:
            for j in range(len(arrays)):
                if arrays[j] is a:
                    coeffs[j] += w * c
                    break
            else:
                coeffs.append(w * c)
                arrays.append(a)


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
    steps: Any = None,
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
    opts = resolve_ba_options(rule=rule, perception=perception, anchors=anchors, final=final, steps=steps)
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
    steps: Any = None,
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

    ``steps``: learned per-interval weights (:class:`~baquad.solvers.learned_steps.LearnedSteps`)
    for exactly this grid; None uses those the perception carries for this grid and rule, if any
    (:func:`~baquad.solvers.learned_steps.carried_steps`), else the rule's weights; False always
    the rule's. Interval i then uses its own predictor and corrector weights and adds its history
    terms after its update (the next anchor stays where it was evaluated).
    """
    if steps is None:
        steps = carried_steps(perception, ts, rule)
    elif steps is not False:
        steps.check_grid_matches(ts)
    solver = BiAnchorSolver(rule, perception)
    state = solver.init(field, ts[0], x0)
    last = len(ts) - 1
    if steps:
        rows, xs, vs = steps.rows(), [], []
    for i in range(1, len(ts)):
        bi = anchors == "bi" and not (i == last and final == "single")
        if not steps:
            state, info = solver.step(field, state, ts[i], bi=bi, evaluate_end=i < last)
        else:
            k, x_k, v_k = i - 1, state.x, state.v
            state, info = solver.step(field, state, ts[i], bi=bi, evaluate_end=i < last,
                                      weights=(rows[0][k], rows[1][k]))
            if k:
                state = state._replace(x=_history_terms(state.x, x_k, ts[i] - ts[k], rows[2][k], rows[3][k], xs, vs))
            xs.append(x_k)
            vs.append(v_k)
        if callback is not None:
            callback(i, ts[i], state.x, info)
    return state.x


def _history_terms(x: Array, x_k: Array, h: Time, a: Sequence, b: Sequence, xs: Sequence, vs: Sequence) -> Array:
    """x + sum_{j<k} a_j (x_j - x_k) + h sum_{j<k} b_j v_j (:mod:`baquad.solvers.learned_steps`)."""
    for j in range(len(xs)):
        x = x + a[j] * (xs[j] - x_k) + (h * b[j]) * vs[j]
    return x


_SCHEMES = ("bi", "single")


def resolve_ba_options(rule: "QuadratureRule | str | None" = None, perception: "Perception | str | None" = None,
                       anchors: Optional[str] = None, final: Optional[str] = None, steps: Any = None) -> dict:
    """BA-solver's options checked, with defaults filled in (None selects a default).

    ``rule``: a name or :class:`~baquad.rules.QuadratureRule` with nodes in [0, 1] (default
    ``"gauss-lobatto-4"``); ``perception``: see :func:`~baquad.perception.get_perception`;
    ``anchors``: ``"bi"`` (default) or ``"single"``; ``final``: ``"single"`` (default) or ``"bi"``;
    ``steps``: None (default: the learned steps the perception carries for the grid, if any),
    False (the rule's weights), or :class:`~baquad.solvers.learned_steps.LearnedSteps` for the
    rule (its grid is checked against ``ts`` when solving).

    Raises:
        ValueError / TypeError naming the option.
    """
    for name, value in (("anchors", anchors), ("final", final)):
        if value is not None and (not isinstance(value, str) or value not in _SCHEMES):
            raise ValueError(f"{name}: must be 'bi' or 'single' (or None for the default), got {value!r}")
    rule = get_rule("gauss-lobatto-4" if rule is None else rule)
    rule.check_unit_interval("rule")
    if steps is not None and steps is not False:
        if not isinstance(steps, LearnedSteps):
            raise TypeError(f"steps: expected LearnedSteps (baquad.solvers.learned_steps), None or False, got "
                            f"{type(steps).__name__}")
        if steps.rule != rule.name:
            raise ValueError(f"steps: learned for {steps.rule}, but the rule is {rule.name}; pass rule={steps.rule!r}")
    return dict(rule=rule, perception=get_perception(perception), anchors=anchors or "bi", final=final or "single",
                steps=steps)


def ba_cost(rule: Any, perception: Any, anchors: str, final: str, steps: Any = None) -> tuple[int, int]:
    """BA-solver's NFE for N intervals as ``(a, b)`` with NFE = a N + b, from the resolved
    options (docs/algorithm.md#counting-nfe): the initial anchor is one call and every interval
    but the last evaluates the next anchor, one call each; the last interval makes a call only
    when it is bi-anchor. So scheme A (``anchors="bi", final="bi"``) costs N + 1, scheme B
    (``final="single"``) and ``anchors="single"`` cost N."""
    return (1, 1) if anchors == "bi" and final == "bi" else (1, 0)
