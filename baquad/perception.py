"""Bidirectional temporal perception: predicted velocities at offsets from an anchor.

The contract (docs/algorithm.md#perception, paper Eq. 5). A perception maps an anchor (x, v, t) of a
trajectory, where v = f(x, t) is a backbone velocity, and offsets d_1..d_m (either sign) to
predictions of the velocity at time t + d along the exact trajectory through (x, t):

    v_hat(t + d) = v + d * g(x, v, t, d),            so v_hat = v exactly at d = 0.

It is called once per probe with ALL offsets of the interval (one batched call) and returns an
array of shape ``(m, *x.shape)`` with the dtype, array type and device of ``x``:

    perception(x, v, t, offsets, history) -> stacked velocities

``offsets`` is a tuple of Python floats in true time units (negative when looking back in
increasing time). ``history`` is the tuple of anchors of the same trajectory computed so far,
oldest first, whose last element is the anchor (t, x, v) itself (:class:`Anchor`); perceptions
that do not use it ignore it. Perceptions never count as NFE (the solver counts their calls).

What a perception declares (class or instance attributes; the solver reads them, wrappers
derived from :class:`PerceptionWrapper` forward them):

- ``history_size``: how many anchors it needs in ``history`` (the solver state keeps no more).
  ``None`` (the base-class default) keeps every anchor of the trajectory, so a perception, or a
  wrapper around one, that declares nothing still gets the history it needs: forgetting the
  declaration costs memory, never correctness.
- ``per_sample_times``: True if it accepts per-sample times (chain training): ``t`` a 1-D array
  of shape ``(B,)`` (one time per batch row of x) and ``offsets`` an array of shape ``(m, B)``.
  Default False: ``t`` and the offsets are Python floats.
- ``state_agnostic``: True if it acts elementwise on any state vector, so that it is valid on the
  adjoint system of ``torchdiffeq.odeint_adjoint`` (anchor-only and polynomial are).
- ``differentiable_times``: True if its prediction stays differentiable when ``t`` and the offsets
  are 0-dim tensors that require grad (the torchdiffeq method then differentiates through the
  integration times, as torchdiffeq's fixed-grid methods do). Anchor-only and polynomial are.

What a perception may offer besides ``__call__``:

- ``linear_terms(x, v, t, offsets, history)``: for a perception whose every prediction is a fixed
  combination of anchor velocities, v_hat(t + d_k) = sum_j c_kj v_j, those combinations: one row
  per offset, each a tuple of ``(c_kj, v_j)`` pairs with c_kj a Python float and v_j one of the
  anchor velocities (``v`` or a ``history`` entry's ``v``), never a new array. With Python-float
  times the solver then folds the quadrature weights into the c_kj and adds each anchor velocity
  to the state once (:mod:`baquad.bianchor`), instead of stacking m predictions and summing them.
  ``None`` (the base-class default): only ``__call__``. Anchor-only and polynomial offer it; a
  :class:`PerceptionWrapper` forwards it only while its subclass leaves ``__call__`` alone (a
  wrapper that times, windows or changes the calls must see them).

Built-ins:
- :class:`AnchorOnly`: g = 0 (v_hat = v). Every rule then degenerates: bi-anchor Gauss-Lobatto-n
  puts the weight of the nodes c < 1/2 on the start anchor and the rest on the terminal anchor.
- :class:`AnchorPolynomial`: training-free. Interpolates or extrapolates the anchors already
  computed along the trajectory with a Lagrange polynomial in time (the Adams idea): forward
  probes extrapolate linearly from the (previous, start) anchors, backward probes interpolate
  quadratically between (previous, start, terminal). It ignores the state drift between
  anchors; for fields that depend on t only it is exact after the first interval when the
  field's degree is at most the degree each probe uses (1 for forward nodes, 2 for backward
  ones). This is ``solve``'s default.
- :class:`Oracle`: integrates the true ODE from (x, t) to t + d with a tight DOP853 reference
  solver and evaluates the field there: the ideal perception, for analysis only (costly).
- :class:`FromDeviation`: wraps a user callable g(x, v, t, offsets) returning deviations.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence


from . import _backend as B

Array = Any

__all__ = [
    "Anchor",
    "Perception",
    "PerceptionWrapper",
    "history_size",
    "AnchorOnly",
    "AnchorPolynomial",
    "Oracle",
    "FromDeviation",
    "get_perception",
    "PERCEPTIONS",
]


class Anchor(NamedTuple):
    """A backbone evaluation on a trajectory: v = f(x, t)."""

    t: float
    x: Array
    v: Array


class Perception:
    """Base class. Subclasses implement :meth:`__call__` (see the module docstring)."""

    #: how many past anchors the perception wants in ``history``; None: all of the trajectory's.
    history_size: Optional[int] = None
    #: accepts a ``(B,)`` time array and ``(m, B)`` offsets (chain training).
    per_sample_times: bool = False
    #: valid on any state vector (the adjoint system of ``odeint_adjoint``).
    state_agnostic: bool = False
    #: differentiable in 0-dim tensor times and offsets (gradients with respect to the time grid).
    differentiable_times: bool = False
    #: optional ``linear_terms(x, v, t, offsets, history)``: the predictions as combinations of
    #: anchor velocities (see the module docstring); None: only ``__call__``.
    linear_terms: Optional[Callable[..., tuple]] = None
    #: optional learned per-interval weights for the grids the perception was trained on, a
    #: mapping from the number of intervals to :class:`~baquad.solvers.learned_steps.LearnedSteps`
    #: (a SideNet file's); BA-solver uses them on exactly their grid.
    learned_steps: Optional[dict] = None

    def __call__(
        self, x: Array, v: Array, t: float, offsets: Sequence[float], history: Sequence[Anchor] = ()
    ) -> Array:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class PerceptionWrapper(Perception):
    """Base for perceptions that wrap another (counting, timing, windowing, device bridging).

    It forwards the inner perception's declarations (``history_size``, ``per_sample_times``,
    ``state_agnostic``) and its repr, so a subclass only overrides ``__call__``. A wrapper around
    several perceptions passes them all: its history is the largest they declare (None if any
    declares None) and it accepts per-sample times or is state-agnostic only if all do.
    """

    def __init__(self, inner: Perception, *others: Perception):
        self.inner = inner
        self.wrapped = (inner, *others)

    @property
    def history_size(self) -> Optional[int]:  # type: ignore[override]
        sizes = [history_size(p) for p in self.wrapped]
        return None if None in sizes else max(sizes)

    @property
    def per_sample_times(self) -> bool:  # type: ignore[override]
        return all(getattr(p, "per_sample_times", False) for p in self.wrapped)

    @property
    def state_agnostic(self) -> bool:  # type: ignore[override]
        return all(getattr(p, "state_agnostic", False) for p in self.wrapped)

    @property
    def differentiable_times(self) -> bool:  # type: ignore[override]
        return all(getattr(p, "differentiable_times", False) for p in self.wrapped)

    @property
    def linear_terms(self) -> Optional[Callable[..., tuple]]:  # type: ignore[override]
        """The wrapped perception's ``linear_terms`` while this wrapper only forwards calls; None
        once a subclass overrides ``__call__`` (the solver must then go through the calls)."""
        if type(self).__call__ is not PerceptionWrapper.__call__ or len(self.wrapped) > 1:
            return None
        return getattr(self.inner, "linear_terms", None)

    @property
    def learned_steps(self) -> Optional[dict]:
        """The learned per-interval weights the wrapped perception carries (its SideNet file's;
        :mod:`baquad.solvers.learned_steps`), or None. A wrapper changes what the perception
        predicts only if it overrides ``__call__``; then the weights, learned for the wrapped
        predictions, are not passed on."""
        if type(self).__call__ is not PerceptionWrapper.__call__ and not getattr(self, "forwards_calls", False):
            return None
        return getattr(self.inner, "learned_steps", None) if len(self.wrapped) == 1 else None

    def __call__(self, x, v, t, offsets, history=()):
        return self.inner(x, v, t, offsets, history)

    def __repr__(self) -> str:
        return repr(self.inner)


def history_size(perception: Any) -> Optional[int]:
    """The number of anchors ``perception`` declares it needs (>= 1), or None for all of them.

    Raises:
        ValueError: naming the perception when it declares something else than a positive int or
            None.
    """
    size = getattr(perception, "history_size", None)
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(
            f"perception: {perception!r} declares history_size = {size!r}; it must be a positive int "
            "(the number of anchors it reads) or None (every anchor of the trajectory)"
        )
    return size


class AnchorOnly(Perception):
    """The frozen perception, g = 0: every predicted velocity is the anchor velocity."""

    history_size = 1
    per_sample_times = True
    state_agnostic = True
    differentiable_times = True

    def __call__(self, x, v, t, offsets, history=()):
        return B.broadcast_stack(v, len(offsets))

    def linear_terms(self, x, v, t, offsets, history=()):
        """Every prediction is 1.0 * v."""
        return (((1.0, v),),) * len(offsets)


class AnchorPolynomial(Perception):
    """Lagrange polynomials in time through the anchors already computed on the trajectory.

    With anchors (t_j, v_j) the prediction is v_hat(t + d) = sum_j L_j(t + d) v_j, L_j the
    Lagrange basis on the t_j, using the newest ``interpolation_degree + 1`` anchors when t + d
    lies between anchor times (the backward probes, between the previous, start and terminal
    anchors) and the newest ``extrapolation_degree + 1`` when it lies beyond them (the forward
    probes). The anchor itself is one of the t_j, so v_hat = v at d = 0 (Eq. 5 holds). On the
    first interval only one anchor is known and the forward probe is anchor-only.

    The velocities of earlier anchors were evaluated at other states of the same trajectory
    (the solver's predictors), so this is a multistep (Adams-type) predictor/corrector inside
    the quadrature rule: no training and no extra backbone calls. It ignores the state drift
    between anchors, so it can be exact only for fields that depend on t alone: a forward node
    is exact up to ``extrapolation_degree``, a backward node up to ``interpolation_degree``.

    Defaults (2, 1) were chosen by measurement on the Gaussian-mixture flows (README): quadratic
    extrapolation amplified the fast change of the velocity near t = 0 and lost at 3-7 NFE, while
    linear extrapolation with quadratic interpolation was the best of the combinations tried.
    """

    state_agnostic = True
    per_sample_times = True
    differentiable_times = True

    def __init__(self, interpolation_degree: int = 2, extrapolation_degree: int = 1):
        if interpolation_degree < 0 or extrapolation_degree < 0:
            raise ValueError(
                "interpolation_degree, extrapolation_degree: must be >= 0, got "
                f"{interpolation_degree}, {extrapolation_degree}"
            )
        self.interpolation_degree = int(interpolation_degree)
        self.extrapolation_degree = int(extrapolation_degree)
        self.history_size = max(self.interpolation_degree, self.extrapolation_degree) + 1
        self._inner, self._outer = self.interpolation_degree + 1, self.extrapolation_degree + 1  # anchors used

    def __call__(self, x, v, t, offsets, history=()):
        if B.is_per_sample(t):
            return self._per_sample(x, v, t, offsets, list(history))
        return B.stack([_combine(row) for row in self.linear_terms(x, v, t, offsets, history)])

    def linear_terms(self, x, v, t, offsets, history=()):
        """The prediction at each offset d as ``((L_j(t + d), v_j), ...)`` over the anchors it uses,
        L_j the Lagrange basis on their times (Python floats for float times, 0-dim arrays for
        array times): interpolation or extrapolation chosen by whether t + d lies between the
        anchor times."""
        anchors = tuple(history)
        if not anchors or anchors[-1].t != t:
            anchors += (Anchor(t, x, v),)
        times = [a.t for a in anchors]
        velocities = [a.v for a in anchors]
        lo, hi = min(times), max(times)
        inner, outer = self._inner, self._outer
        rows, used = [], 0
        for d in offsets:
            s = t + d
            n = inner if lo <= s <= hi else outer
            if n != used:  # the anchors of this offset (the same for a run of offsets)
                used, ts, vs = n, times[-n:], velocities[-n:]
            rows.append(tuple(zip(_lagrange_basis(ts, s), vs)))
        return tuple(rows)

    def _per_sample(self, x, v, t, offsets, anchors):
        """The same prediction with per-sample times (``t`` of shape (B,), offsets (m, B)): the
        Lagrange weights are computed row by row, interpolation or extrapolation chosen per row.
        A row whose anchors share a time (a chain that reached its end, h = 0) gets finite
        weights (its repeated nodes are dropped from the product) and is not moved by the step."""
        last = anchors[-1].t if anchors else None
        if last is None or not (last is t or bool((last == t).all())):
            anchors.append(Anchor(t, x, v))
        lo, hi = anchors[0].t, anchors[0].t
        for a in anchors[1:]:
            lo, hi = B.where(a.t < lo, a.t, lo), B.where(a.t > hi, a.t, hi)
        outs = []
        for d in offsets:
            s = t + d
            inside = (lo <= s) & (s <= hi)
            interp = self._per_sample_degree(anchors, s, self.interpolation_degree, x)
            extrap = self._per_sample_degree(anchors, s, self.extrapolation_degree, x)
            outs.append(B.where(B.per_row(inside, x), interp, extrap))
        return B.stack(outs)

    @staticmethod
    def _per_sample_degree(anchors, s, degree, x):
        used = anchors[-(degree + 1):]
        # a node repeated later in the same row (a chain that has stopped) is dropped from that row
        shadowed = [None] * len(used)
        for j in range(len(used)):
            for m in range(j + 1, len(used)):
                eq = used[m].t == used[j].t
                shadowed[j] = eq if shadowed[j] is None else (shadowed[j] | eq)
        coeffs = []
        for j, aj in enumerate(used):
            c = 1.0
            for m, am in enumerate(used):
                if m != j:
                    skip = aj.t == am.t if shadowed[m] is None else ((aj.t == am.t) | shadowed[m])
                    c = c * B.where(skip, 1.0, (s - am.t) / B.where(skip, 1.0, aj.t - am.t))
            if shadowed[j] is not None:
                c = B.where(shadowed[j], 0.0, c)
            coeffs.append(B.per_row(c + 0.0 * s, x))
        return _combine(tuple(zip(coeffs, [a.v for a in used])))

    def __repr__(self) -> str:
        return f"AnchorPolynomial({self.interpolation_degree}, {self.extrapolation_degree})"


def _lagrange_basis(ts: Sequence[float], s: float) -> Sequence:
    """The Lagrange basis on the nodes ``ts`` at ``s``: L_j(s) = prod_{m != j} (s - t_m) / (t_j - t_m),
    the factors multiplied in the order of the nodes (written out for up to three nodes)."""
    if len(ts) == 1:
        return (1.0,)
    if len(ts) == 2:
        t0, t1 = ts
        return ((s - t1) / (t0 - t1), (s - t0) / (t1 - t0))
    if len(ts) == 3:
        t0, t1, t2 = ts
        return ((s - t1) / (t0 - t1) * ((s - t2) / (t0 - t2)), (s - t0) / (t1 - t0) * ((s - t2) / (t1 - t2)),
                (s - t0) / (t2 - t0) * ((s - t1) / (t2 - t1)))
    out = []
    for j, tj in enumerate(ts):
        w = 1.0
        for m, tm in enumerate(ts):
            if m != j:
                w *= (s - tm) / (tj - tm)
        out.append(w)
    return out


def _combine(terms: Sequence[tuple[Any, Array]]) -> Array:
    """sum_j c_j a_j over ``terms = ((c_j, a_j), ...)``, left to right."""
    c, a = terms[0]
    out = c * a
    for c, a in terms[1:]:
        out = out + c * a
    return out


class Oracle(Perception):
    """The exact perception: v(x(t + d), t + d) on the true trajectory through (x, t).

    The trajectory is integrated with scipy's DOP853 (``rtol``, ``atol``) in float64 from t to
    every offset (offsets of each sign in one sweep), and the field is evaluated there. Its field
    calls are not counted as NFE: it is an analysis tool, not a sampler.
    """

    history_size = 1

    def __init__(self, vfield: Callable[[float, Array], Array], rtol: float = 1e-12, atol: float = 1e-12):
        self.vfield = vfield
        self.rtol = rtol
        self.atol = atol

    def __call__(self, x, v, t, offsets, history=()):
        from .reference import reference_solve

        states: dict[float, Array] = {}
        for sign in (1.0, -1.0):
            ds = sorted({d for d in offsets if d * sign > 0}, key=abs)
            if ds:
                ts = [t] + [t + d for d in ds]
                path = reference_solve(self.vfield, x, ts, rtol=self.rtol, atol=self.atol)
                states.update({d: path[k + 1] for k, d in enumerate(ds)})
        outs = [v if d == 0 else self.vfield(t + d, states[d]) for d in offsets]
        return B.stack(outs)

    def __repr__(self) -> str:
        return f"Oracle(rtol={self.rtol:g}, atol={self.atol:g})"


class FromDeviation(Perception):
    """A perception from a user callable ``g(x, v, t, offsets) -> deviations``.

    ``offsets`` reaches g as a 1-D array (numpy array or torch tensor like x, same dtype and
    device) of length m, and g returns an array of shape ``(m, *x.shape)``: g_k predicts
    (v(t + d_k) - v) / d_k. The prediction is v + d_k * g_k (Eq. 5).
    """

    history_size = 1

    def __init__(self, g: Callable[..., Array]):
        if not callable(g):
            raise TypeError(f"g: expected a callable g(x, v, t, offsets), got {type(g).__name__}")
        self.g = g

    def __call__(self, x, v, t, offsets, history=()):
        d = B.offsets_like(offsets, x)
        dev = self.g(x, v, t, d)
        expected = (len(offsets), *x.shape)
        if not B.is_array(dev) or tuple(dev.shape) != expected:
            raise ValueError(
                f"perception: g returned {B.describe(dev)}; expected shape {expected} "
                "(one deviation per offset, stacked on a new leading axis)"
            )
        return v + d.reshape((-1,) + (1,) * x.ndim) * dev

    def __repr__(self) -> str:
        return f"FromDeviation({getattr(self.g, '__name__', type(self.g).__name__)})"


PERCEPTIONS: dict[str, Callable[[], Perception]] = {
    "anchor-only": AnchorOnly,
    "polynomial": AnchorPolynomial,
}


def get_perception(perception: "Perception | str | None") -> Perception:
    """Resolve ``solve``'s ``perception`` argument.

    None selects the default, :class:`AnchorPolynomial` (interpolation degree 2, extrapolation 1); a string names a built-in
    (``"anchor-only"``, ``"polynomial"``); a :class:`Perception` passes through. A bare callable
    is refused because two contracts are possible: wrap a deviation function g with
    :class:`FromDeviation`, or subclass :class:`Perception` for full predicted velocities.
    """
    if perception is None:
        return AnchorPolynomial()
    if isinstance(perception, Perception):
        return perception
    if isinstance(perception, str):
        if perception not in PERCEPTIONS:
            raise ValueError(
                f"perception: unknown name {perception!r}; valid names are {', '.join(PERCEPTIONS)} "
                "(the oracle needs the field: pass baquad.perception.Oracle(vfield))"
            )
        return PERCEPTIONS[perception]()
    if callable(perception):
        raise TypeError(
            "perception: got a bare callable. Wrap a deviation function g(x, v, t, offsets) as "
            "baquad.perception.FromDeviation(g), or subclass baquad.perception.Perception to "
            "return predicted velocities directly."
        )
    raise TypeError(f"perception: expected a Perception, a name or None, got {type(perception).__name__}")
