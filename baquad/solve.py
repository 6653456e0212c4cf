"""``baquad.solve``: one entry point for BA-solver and the baseline solvers.

``solve(vfield, x0, ts, ...)`` integrates dx/dt = vfield(t, x) over the strictly monotone grid
``ts`` (increasing or decreasing) and returns a :class:`SolveResult`. It owns everything the
solvers share: input validation, counting backbone calls (NFE) and perception calls by wrapping
them, shape/dtype checks of every call with the step where it failed, NaN/inf detection per step,
and the recorded trajectory. The solvers themselves are registered methods
(:mod:`baquad.methods`, one table): short functions with one signature
(``sampler(field, x0, ts, *, callback, **options) -> x``) that own their options and declare their
NFE cost, BA-solver (:mod:`baquad.bianchor`) and the baselines in :mod:`baquad.solvers` alike.
``solve`` validates, wraps, dispatches and collects; it knows no method by name. Every option,
BA-solver's ``rule`` included, is a keyword in ``**options``: the registry checks the names and
resolves the values once (:meth:`baquad.methods.Method.options`), and the sampler gets them
resolved. The registered names are :func:`baquad.methods.method_names`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from . import _backend as B
from ._convention import float_time_error
from .grids import check_grid
from .methods import get_method
from .perception import Perception, PerceptionWrapper

Array = Any

__all__ = ["solve", "SolveResult"]


@dataclass
class SolveResult:
    """What a solve returns.

    Attributes:
        x: the state at ``ts[-1]`` (same array type, dtype and device as x0).
        ts: the grid, as Python floats.
        nfe: calls of ``vfield`` made by the solver, counted by wrapping it.
        perception_calls: batched perception calls (BA-solver; 0 for the baselines).
        xs: states at every grid time, stacked on a new leading axis (``save_states=True``).
        local_errors: per interval, rms(corrector - predictor) of BA-solver, a free local error
            indicator (NaN for a single-anchor interval; None for the baselines).
        method: the method name.
    """

    x: Array
    ts: tuple[float, ...]
    nfe: int
    perception_calls: int = 0
    xs: Optional[Array] = None
    local_errors: Optional[np.ndarray] = None
    method: str = "ba-solver"
    options: dict = dc_field(default_factory=dict)


def _validate_x0(x0: Any) -> None:
    if not B.is_array(x0):
        raise TypeError(f"x0: expected a numpy array or a torch tensor, got {type(x0).__name__}; wrap it with numpy.asarray")
    if not B.is_floating(x0):
        raise TypeError(
            f"x0: has dtype {x0.dtype}; the solver needs a real floating dtype. "
            "Cast it first, e.g. x0.astype(numpy.float32) or x0.float()."
        )
    if not B.is_torch(x0) and x0.ndim == 0:
        raise ValueError(
            "x0: a 0-d numpy array turns into a numpy scalar under arithmetic; pass it with one "
            "dimension, x0.reshape(1)"
        )
    if isinstance(x0, (np.matrix, np.ma.MaskedArray)):
        raise TypeError(
            f"x0: a {type(x0).__name__} changes what * and + mean (matrix products, masks); pass a plain "
            "array, numpy.asarray(x0)"
        )
    if B.is_torch(x0) and x0.device.type == "meta":
        raise ValueError("x0: a tensor on the meta device has no values to integrate; create it on a real device")
    if not B.all_finite(x0):
        raise ValueError("x0: contains NaN or inf; the initial state must be finite")


def resolve_field_dtype(field_dtype: Any, x0: Any) -> Any:
    """``field_dtype`` checked against the state's backend: a floating torch dtype for a torch
    state, a floating numpy dtype (or a string naming one, such as ``"float32"``) for a numpy
    state; None keeps the state's dtype.

    Raises:
        TypeError: naming ``field_dtype``, for integer/bool/complex dtypes (they change the numbers),
            the other backend's dtypes and anything that is not a dtype.
    """
    if field_dtype is None:
        return None
    if B.is_torch(x0):
        torch = B._torch()
        if isinstance(field_dtype, torch.dtype) and field_dtype.is_floating_point:
            return field_dtype
        raise TypeError(
            f"field_dtype: a torch state needs a floating torch dtype (torch.float32, torch.bfloat16, ...), "
            f"got {field_dtype!r}"
        )
    try:
        dt = None if B.is_torch_dtype(field_dtype) else np.dtype(field_dtype)
    except TypeError:
        dt = None
    if dt is None or not np.issubdtype(dt, np.floating):
        raise TypeError(
            f"field_dtype: a numpy state needs a floating numpy dtype (numpy.float32, 'float64', ...), got {field_dtype!r}"
        )
    return dt


class _Where:
    """Tracks which interval the solver is in, and the calls made in it, for error messages.

    With ``track`` (the default), ``calls`` holds references (no copies, no device sync) to the
    inputs and output of every field and perception call of the current interval, so that when
    the state turns NaN/inf the culprit can be named: the first call whose inputs were finite and
    whose output was not. Without it (``solve(check_finite=False)``, where no culprit is ever
    asked for) nothing is kept. A call's name is formatted only when it is the culprit.
    """

    def __init__(self, ts: Sequence[float], track: bool = True):
        self.ts = ts
        self.interval = 0
        self.track = track
        self.calls: list = []

    def record(self, name: Callable[..., str], args: tuple, inputs: tuple, out: Any) -> None:
        """Keep a call of this interval: ``name(*args)`` names it, ``inputs`` and ``out`` are
        its arrays."""
        if self.track:
            self.calls.append((name, args, inputs, out))

    def culprit(self) -> Optional[str]:
        """The first call of the interval that turned finite inputs into NaN/inf, or None."""
        for name, args, inputs, out in self.calls:
            if all(B.all_finite(a) for a in inputs) and not B.all_finite(out):
                return name(*args)
        return None

    def next_interval(self, i: int) -> None:
        self.interval = i
        if self.calls:
            self.calls = []

    def __str__(self) -> str:
        i, n = self.interval, len(self.ts) - 1
        if i >= n:
            return f"after the last interval (t = {self.ts[-1]:g})"
        return f"interval {i + 1} of {n}, t = {self.ts[i]:g} -> {self.ts[i + 1]:g}"


class CountedField:
    """Wraps ``vfield``: counts calls, checks each output, optionally runs it in ``field_dtype``.
    With ``float_time=True`` (``solve``: the field gets the float times), an AttributeError or
    TypeError of the first call is re-raised naming the time convention (:mod:`._convention`).

    Every output is checked against its input: same array type, shape, dtype (``field_dtype``
    when given) and, for a torch state (known from ``template``), device. Per call that is a few
    attribute comparisons; only an output that fails them (a wrong one, or an array subclass)
    goes through the full check, which raises naming the call, its time and the interval."""

    def __init__(self, vfield: Callable, template: Array, where: _Where, field_dtype: Any = None,
                 float_time: bool = False):
        self.vfield = vfield
        self.template = template
        self.where = where
        self.field_dtype = field_dtype
        self.float_time = float_time
        self.calls = 0
        self._torch = B.is_torch(template)

    def __call__(self, t: float, x: Array) -> Array:
        self.calls += 1
        xin = x if self.field_dtype is None else _cast(x, self.field_dtype)
        try:
            out = self.vfield(t, xin)
        except (AttributeError, TypeError) as err:
            if self.float_time and self.calls == 1 and isinstance(t, float):
                raise float_time_error(err, t, "baquad.solve") from err
            raise
        if (type(out) is not type(xin) or out.shape != x.shape or out.dtype != xin.dtype
                or (self._torch and out.device != x.device)):
            self._check(t, x, xin, out)
        if self.where.track:
            self.where.record(_field_call_name, (self.calls, t), (x,), out)
        return out if self.field_dtype is None else _cast(out, x.dtype)

    def _check(self, t: float, x: Array, xin: Array, out: Any) -> None:
        """The full check of one output (an array of the state's kind, shape, dtype and device),
        raising ValueError naming the call, its time and the interval."""
        expected_dtype = xin.dtype
        if B.same_array_kind(out, x, expected_dtype):
            return  # a subclass of the expected array type, say: the same kind of output
        raise ValueError(
            f"vfield: call {self.calls} (t = {_time(t)}, {self.where}) returned {B.describe(out)}"
            f"{' on ' + str(out.device) if B.is_torch(out) else ''}; expected the state's type, shape "
            f"and dtype, {B.describe(x.to(expected_dtype) if B.is_torch(x) else x.astype(expected_dtype))}"
            f"{' on ' + str(x.device) if B.is_torch(x) else ''}. Return dx/dt with the shape of x "
            "(pass field_dtype=... to run the field in another precision)."
        )


def _field_call_name(call: int, t: Any) -> str:
    return f"vfield (call {call}, t = {_time(t)})"


def _time(t: Any) -> str:
    """A time for a message: a float, or a 0-dim array/tensor (times that carry gradients)."""
    return f"{float(t.detach() if hasattr(t, 'detach') else t):g}"


def _cast(x: Array, dtype: Any) -> Array:
    return x.to(dtype) if B.is_torch(x) else x.astype(dtype, copy=False)


class CountedPerception(PerceptionWrapper):
    """Wraps a perception: counts its batched calls and checks each output.

    The check per call compares the output's type, shape and dtype with what the input asks for;
    only an output that fails goes through the full check that writes the message. A perception
    that offers ``linear_terms`` keeps offering them through this wrapper, counted the same way
    (one call per probe) and checked for one row per offset, each combining the anchor
    velocities it was given."""

    #: it counts and checks the calls but never changes a prediction, so the wrapped perception's
    #: learned steps still apply (:attr:`PerceptionWrapper.learned_steps`)
    forwards_calls = True

    def __init__(self, inner: Perception, where: _Where):
        super().__init__(inner)
        self.where = where
        self.calls = 0
        self._inner_terms = getattr(inner, "linear_terms", None)

    def __call__(self, x, v, t, offsets, history=()):
        self.calls += 1
        out = self.inner(x, v, t, offsets, history)
        if (type(out) is not type(x) or out.dtype != x.dtype or len(out.shape) != len(x.shape) + 1
                or out.shape[0] != len(offsets) or out.shape[1:] != x.shape):
            self._check(x, t, offsets, out)
        if self.where.track:
            self.where.record(self._call_name, (self.calls,), (x, v), out)
        return out

    @property
    def linear_terms(self):  # type: ignore[override]
        return None if self._inner_terms is None else self._counted_terms

    def _counted_terms(self, x, v, t, offsets, history=()):
        self.calls += 1
        rows = self._inner_terms(x, v, t, offsets, history)
        if len(rows) != len(offsets) or not _combines_anchors(rows, v, history):
            raise ValueError(
                f"perception: call {self.calls} ({self.inner!r}, {self.where}, anchor t = {_time(t)}) returned "
                f"linear_terms that are not one row of (coefficient, anchor velocity) pairs per offset "
                f"({len(offsets)} offsets, {len(rows)} rows); each row must combine v and the velocities of "
                "history, as the perception contract says"
            )
        return rows

    def _call_name(self, call: int) -> str:
        return f"perception {self.inner!r} (call {call})"

    def _check(self, x, t, offsets, out) -> None:
        expected = (len(offsets), *x.shape)
        if (
            not B.is_array(out)
            or B.is_torch(out) != B.is_torch(x)
            or tuple(out.shape) != expected
            or out.dtype != x.dtype
        ):
            at = "per-sample anchor times" if B.is_per_sample(t) else f"anchor t = {_time(t)}"
            raise ValueError(
                f"perception: call {self.calls} ({self.inner!r}, {self.where}, {at}, "
                f"{len(offsets)} offsets) returned {B.describe(out)}; expected shape {expected} and "
                f"dtype {x.dtype} (one velocity per offset, stacked on a new leading axis)"
            )


def _combines_anchors(rows: Sequence, v: Array, history: Sequence) -> bool:
    """True if every row of ``linear_terms`` is a non-empty tuple of pairs whose arrays are ``v``
    or velocities of ``history`` (the same objects, so of the state's shape and dtype)."""
    for row in rows:
        if not row:
            return False
        for _, a in row:
            if a is v:
                continue
            for anchor in history:
                if anchor.v is a:
                    break
            else:
                return False
    return True


def solve(
    vfield: Callable[[float, Array], Array],
    x0: Array,
    ts: Sequence[float],
    *,
    method: str = "ba-solver",
    save_states: bool = False,
    check_finite: bool = True,
    field_dtype: Any = None,
    **options: Any,
) -> SolveResult:
    """Integrate dx/dt = vfield(t, x) from ``ts[0]`` to ``ts[-1]`` on the grid ``ts``.

    Args:
        vfield: velocity field, called as ``vfield(t, x)`` with t a Python float and x an array
            like x0 (scipy/torchdiffeq argument order). Its calls are the NFE.
        x0: initial state, numpy array or torch tensor of any shape and floating dtype; the result
            keeps its array type, dtype and device.
        ts: strictly monotone grid (increasing or decreasing), at least 2 times; every time is an
            integration node.
        method: ``"ba-solver"`` (default) or another registered method
            (:func:`baquad.methods.method_names`: the baselines and any the user registered).
        save_states: also return the states at every grid time in ``result.xs``.
        check_finite: check the state for NaN/inf after every interval and raise naming the
            interval (one host sync per interval on a GPU; set False to skip).
        field_dtype: run the field in this dtype (e.g. ``torch.bfloat16``) while the solver state
            keeps x0's dtype; inputs are cast down and outputs cast up at each call (see Torch).
        **options: the method's options, as keywords. BA-solver: ``rule``, the quadrature rule
            on [0, 1], a name or :class:`~baquad.rules.QuadratureRule` (default
            ``"gauss-lobatto-4"``); ``perception`` (default
            :class:`~baquad.perception.AnchorPolynomial`, the training-free Lagrange perception on
            the anchors already computed, measured better than anchor-only, see README; pass a
            SideNet perception for the learned solver, or ``"anchor-only"``), ``anchors``
            (``"bi"`` default, or ``"single"``, the ablation) and ``final`` (NFE scheme:
            ``"single"``, default, scheme B, last interval single-anchor, NFE = number of
            intervals; or ``"bi"``, scheme A, NFE = intervals + 1). Baselines: e.g. ``order=2``
            for ``"dpm++"`` (the table in :mod:`baquad.methods`). An option the method does not
            take is a TypeError naming it. They are resolved once, through the registry.

    Torch: x0 may live on any device; BA-solver's state, anchors and perception outputs keep x0's
    device and dtype, and times and offsets are Python floats (the anchor-only and polynomial
    perceptions create no tensor from host data; ``FromDeviation`` copies its offsets per call).
    Keep the state in float32 or float64: with ``field_dtype=torch.bfloat16`` (or float16) only the
    field runs in low precision and the quadrature sums accumulate in the state dtype. The result
    then differs from a full-precision field by about the field dtype's rounding unit times the
    size of the state, without growing with the number of steps (measured on a smooth 8-D field:
    4e-3 of max|x| for bfloat16, 3e-4 for float16; tests/test_torch_solve.py bounds bfloat16 at
    1e-2). Autograd flows through the whole solve (x0, field parameters, a learned perception);
    ``local_errors`` are detached. Host syncs of BA-solver: the x0/ts checks at the start, one per
    interval only with ``check_finite=True``, and one transfer of ``local_errors`` at the end.

    Returns:
        SolveResult with the final state, the counted NFE and perception calls, optional states,
        and BA-solver's per-interval predictor/corrector gaps.

    Raises:
        ValueError / TypeError naming the bad argument; FloatingPointError when the state becomes
        non-finite, naming the interval and time.
    """
    spec = get_method(method)
    if not callable(vfield):
        raise TypeError(f"vfield: expected a callable vfield(t, x), got {type(vfield).__name__}")
    opts = spec.options(options)
    grid = check_grid(ts)
    _validate_x0(x0)

    where = _Where(grid, track=check_finite)
    field = CountedField(vfield, x0, where, resolve_field_dtype(field_dtype, x0), float_time=True)
    counted = {k: CountedPerception(v, where) for k, v in opts.items() if isinstance(v, Perception)}
    states = [x0] if save_states else None
    infos: list = []  # BA-solver's StepInfo per interval

    def callback(i: int, t: float, x: Array, info: Any = None) -> None:
        if check_finite and not B.all_finite(x):
            culprit = where.culprit()
            cause = (f"{culprit} turned finite inputs into NaN/inf" if culprit else
                     "every call returned finite values, so the update itself overflowed")
            raise FloatingPointError(
                f"solve: the state became NaN/inf in interval {i} of {len(grid) - 1} "
                f"(t = {grid[i - 1]:g} -> {grid[i]:g}), after {field.calls} vfield calls: {cause}. "
                "Check it near this time (singular at an endpoint?) or use a finer grid."
            )
        if states is not None:
            states.append(x)
        if info is not None:
            infos.append(info)
        where.next_interval(i)

    x = spec.sampler(field, x0, grid, callback=callback, **{**opts, **counted})
    local = None
    if infos:
        # One conversion for all intervals (one host sync for a GPU tensor, at the end only).
        # rms = |x_{i+1} - x~|_2 / sqrt(size), every interval's scaled here, in float64.
        local = np.full(len(infos), math.nan, dtype=np.float64)
        have = [k for k, info in enumerate(infos) if info.gap_norm is not None]
        if have:
            norms = np.array(B.host_floats([infos[k].gap_norm for k in have]), dtype=np.float64)
            local[have] = norms / np.sqrt(np.array([infos[k].size for k in have], dtype=np.float64))
    return SolveResult(
        x=x,
        ts=grid,
        nfe=field.calls,
        perception_calls=sum(c.calls for c in counted.values()),
        xs=B.stack(states) if states is not None else None,
        local_errors=local,
        method=method,
        options={k: repr(v) if k in counted else v for k, v in opts.items()},
    )
