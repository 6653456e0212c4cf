"""BA-solver as a ``torchdiffeq`` method: ``odeint(func, y0, t, method="ba-solver")``.

Usage::

    import torchdiffeq
    import baquad.torchdiffeq as btd

    btd.register()                                 # idempotent; registers "ba-solver"
    stats = btd.Stats()
    xs = torchdiffeq.odeint(func, y0, t, method="ba-solver",
                            options=dict(rule="gauss-lobatto-4", perception="polynomial",
                                         anchors="bi", final="single", stats=stats))
    stats.nfe, stats.perception_calls, stats.steps

After :func:`register`, the method also works through ``torchdiffeq.odeint_adjoint`` and through
libraries that call ``odeint`` with a method name (flow_matching's ``ODESolver.sample(method=...)``).
Configuration that such a library cannot forward (a SideNet perception) is bound at registration:
``register("ba-sidenet", perception=my_sidenet)``.

Naming: this module is ``baquad.torchdiffeq`` and imports the third-party package with an absolute
``import torchdiffeq``; Python 3 has no implicit relative imports, so the two never collide (only
running this file as a script, ``python baquad/torchdiffeq.py``, would shadow the package). The core
``baquad`` package never imports it: import it explicitly.

Semantics (identical to :func:`baquad.solve` on the same grid, same NFE):

- The integration grid is ``t`` itself, or the one built from ``step_size`` / ``grid_constructor``
  exactly as torchdiffeq's fixed-grid solvers build it. Output times that are not grid nodes are
  filled by linear interpolation (``interp="cubic"`` and ``perturb=True`` are refused: cubic
  interpolation would cost an extra call per output time, and the reused anchor serves both sides
  of a node).
- One backbone call per interval after the first: the terminal anchor is reused as the next start
  anchor. ``final="single"`` (default) makes the last interval of the grid single-anchor with no
  call at its end (NFE = intervals); ``final="bi"`` gives NFE = intervals + 1.
- Decreasing ``t``: torchdiffeq hands a solver negated times and ``-func``. This method undoes both,
  so the perception (and the history it gets) sees the TRUE times, offsets in true time and the
  true velocities, exactly as in ``baquad.solve`` on the decreasing grid.
- Tuple states arrive flattened and concatenated by torchdiffeq: the perception sees that 1-D
  vector. Anchor-only and polynomial perceptions do not care; a SideNet (or a ``FromDeviation``)
  that expects the image/latent shape needs a non-tuple state, and an :class:`~baquad.Oracle` must
  be given a field on the flat vector.
- ``odeint_adjoint``: torchdiffeq integrates the adjoint system with the same method and options
  unless ``adjoint_method`` is given. Its state is the flattened augmented vector
  ``(t, y, adj_y, *params)``, so only state-agnostic perceptions are valid there: anchor-only,
  polynomial, or any perception with the attribute ``state_agnostic = True``. Any other perception
  raises a ``TypeError`` in the backward pass recommending ``adjoint_method="rk4"`` (with
  ``adjoint_options=dict(step_size=...)``) or ``adjoint_options=dict(perception="polynomial", ...)``.
  Note that torchdiffeq integrates the adjoint one output interval at a time, on the grid
  ``t[i], t[i-1]`` unless ``step_size`` is set: with the default grid each adjoint segment is ONE
  single-anchor interval (an Euler step); pass ``step_size`` (or a finer ``t``) for an accurate
  adjoint.
- Options: ``rule``, ``perception``, ``anchors``, ``final``, ``stats``, ``check_finite`` plus the
  fixed-grid ``step_size``, ``grid_constructor``, ``interp``, ``perturb``. Unlike torchdiffeq,
  which only warns, an unknown option name raises ``TypeError`` naming it, and a ``step_size``
  that is not a finite positive number a ``ValueError``. ``options`` itself must be a dict:
  torchdiffeq copies it before any method is constructed, so other types fail inside torchdiffeq
  (``'str' object has no attribute 'copy'``), not here.
- Like every fixed-grid method, it integrates on ``t`` unless ``step_size`` or
  ``grid_constructor`` says otherwise; a ``t`` of two points without them is one interval (NFE 1),
  which warns once (the usual slip when switching from an adaptive method).
- Host synchronisation: the grid and the output times are read to the host once per ``odeint``
  call; nothing else syncs unless ``check_finite=True`` (one sync per interval).
- Autograd: backprop through ``odeint`` reaches ``y0`` and the parameters of ``func`` (and of a
  learned perception). When ``t`` requires grad the solver runs on the 0-dim tensor times
  themselves, so gradients reach ``t`` as with torchdiffeq's own fixed-grid methods; this needs a
  perception that is differentiable in the times (``differentiable_times``: anchor-only and
  polynomial are), and any other perception raises a ``TypeError`` rather than return a silent
  zero gradient. Otherwise the times are host floats (no per-step host sync).
- ``event_fn`` (``odeint_event``) is not supported and raises ``NotImplementedError``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field as dc_field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional

from ._optional import missing

try:
    import torch
    from torchdiffeq._impl import misc as _td_misc
    from torchdiffeq._impl.odeint import SOLVERS as _SOLVERS
    from torchdiffeq._impl.solvers import FixedGridODESolver  # absolute: the third-party package
except ImportError as err:  # torch or torchdiffeq missing: name the extra that installs them
    raise missing(err, "baquad.torchdiffeq") from err

from .bianchor import ba_solver_resolved, resolve_ba_options
from .grids import check_grid
from .perception import Perception
from .rules import QuadratureRule
from .solve import CountedField, CountedPerception, _Where

__all__ = ["register", "unregister", "Stats", "BASolver", "OPTIONS"]

#: option names understood by the method (besides the rtol/atol/norm torchdiffeq always passes).
OPTIONS = (
    "rule",
    "perception",
    "anchors",
    "final",
    "stats",
    "check_finite",
    "step_size",
    "grid_constructor",
    "interp",
    "perturb",
)
_TORCHDIFFEQ_PASSED = ("rtol", "atol", "norm")


@dataclass
class Stats:
    """Counters filled by the ``ba-solver`` method; pass one as ``options=dict(stats=...)``.

    Counts ACCUMULATE over every solve the object is passed to (call :meth:`reset` between runs).
    ``odeint_adjoint`` hands the same options (so the same object) to the backward pass, whose
    counts go to the ``adjoint_*`` fields.

    Attributes:
        nfe: calls of ``func`` by the solver in forward solves (NFE).
        perception_calls: batched perception calls in forward solves (not NFE).
        steps: integration intervals in forward solves.
        solves: number of forward ``odeint`` integrations.
        adjoint_nfe, adjoint_perception_calls, adjoint_steps, adjoint_solves: the same for the
            adjoint system integrated by ``odeint_adjoint`` (one solve per output interval).
        local_errors: of the latest forward solve, a 1-D tensor on the state's device with
            rms(corrector - predictor) per interval (NaN for single-anchor intervals); not synced.
    """

    nfe: int = 0
    perception_calls: int = 0
    steps: int = 0
    solves: int = 0
    adjoint_nfe: int = 0
    adjoint_perception_calls: int = 0
    adjoint_steps: int = 0
    adjoint_solves: int = 0
    local_errors: Optional[torch.Tensor] = dc_field(default=None, repr=False)

    def reset(self) -> None:
        """Set every counter back to zero."""
        for name in ("nfe", "perception_calls", "steps", "solves"):
            setattr(self, name, 0)
            setattr(self, "adjoint_" + name, 0)
        self.local_errors = None


def _is_state_agnostic(perception: Perception) -> bool:
    """True for perceptions that act elementwise on any state (valid on the adjoint system):
    anchor-only, polynomial, and any perception declaring ``state_agnostic = True``."""
    return bool(getattr(perception, "state_agnostic", False))


def _inspect_func(func: Callable) -> tuple[bool, Optional[list], bool]:
    """Read torchdiffeq's wrappers around ``func``: (time reversed, tuple shapes, adjoint system).

    ``_check_inputs`` builds ``_PerturbFunc(_ReverseFunc(_TupleFunc(user_func)))`` with the inner two
    present only for decreasing time and tuple states; the adjoint pass's user_func is the closure
    ``augmented_dynamics`` of ``torchdiffeq._impl.adjoint``.
    """
    f = func.base_func if isinstance(func, _td_misc._PerturbFunc) else func
    reversed_ = False
    if isinstance(f, _td_misc._ReverseFunc):
        if f.mul != -1.0:  # pragma: no cover - only event functions are wrapped with mul=1
            raise RuntimeError("ba-solver: unexpected torchdiffeq time-reversal wrapper (mul != -1)")
        reversed_, f = True, f.base_func
    shapes = None
    if isinstance(f, _td_misc._TupleFunc):
        shapes, f = list(f.shapes), f.base_func
    adjoint = getattr(f, "__name__", "") == "augmented_dynamics" and str(getattr(f, "__module__", "")).startswith(
        "torchdiffeq."
    )
    return reversed_, shapes, adjoint


class BASolver(FixedGridODESolver):
    """torchdiffeq fixed-grid solver running BA-solver (see the module docstring).

    Constructed by ``torchdiffeq.odeint`` as ``BASolver(func=..., y0=..., rtol=..., atol=...,
    **options)``; users pass the options through ``odeint(..., options=dict(...))``. A class made by
    :func:`register` with defaults carries them in :attr:`defaults`; explicit options override them.
    """

    #: global order with an exact perception and the default Gauss-Lobatto-4 rule (informative only;
    #: fixed-grid solvers do not use it).
    order = 6
    #: options bound at registration (see :func:`register`).
    defaults: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, func: Callable, y0: torch.Tensor, **options: Any):
        passed = {k: options.pop(k) for k in _TORCHDIFFEQ_PASSED if k in options}
        unknown = sorted(set(options) - set(OPTIONS))
        if unknown:
            raise TypeError(
                f"ba-solver: unknown option(s) {', '.join(map(repr, unknown))}; valid options are "
                f"{', '.join(OPTIONS)}"
            )
        opts = {**self.defaults, **options}
        interp = opts.get("interp", "linear")
        if interp != "linear":
            raise ValueError(
                f"ba-solver: interp={interp!r} is not supported, only 'linear' (cubic Hermite interpolation "
                "costs one extra func call per output time); put the output times on the grid instead"
            )
        if opts.get("perturb", False):
            raise ValueError(
                "ba-solver: perturb=True is not supported: the terminal anchor of an interval is reused as "
                "the next interval's start anchor, so one evaluation serves both sides of every node"
            )
        step_size = opts.get("step_size")
        if step_size is not None:
            numeric = isinstance(step_size, (int, float)) or (torch.is_tensor(step_size) and step_size.numel() == 1)
            ok = numeric and not isinstance(step_size, bool) and math.isfinite(float(step_size)) and float(step_size) > 0
            if not ok:
                raise ValueError(
                    f"ba-solver: step_size must be a finite number > 0 (the grid runs in the direction of t "
                    f"either way), got {step_size!r}"
                )
        self._planned_grid = step_size is not None or opts.get("grid_constructor") is not None
        super().__init__(
            func,
            y0,
            step_size=step_size,
            grid_constructor=opts.get("grid_constructor"),
            interp="linear",
            perturb=False,
            atol=passed.get("atol"),
            rtol=passed.get("rtol"),
        )
        ba = resolve_ba_options(**{k: opts.get(k) for k in ("rule", "perception", "anchors", "final")})
        self.rule: QuadratureRule = ba["rule"]
        self.perception: Perception = ba["perception"]
        self.anchors: str = ba["anchors"]
        self.final: str = ba["final"]
        stats = opts.get("stats")
        if stats is not None and not isinstance(stats, Stats):
            raise TypeError(f"ba-solver: stats must be a baquad.torchdiffeq.Stats, got {type(stats).__name__}")
        self.stats: Optional[Stats] = stats
        self.check_finite = bool(opts.get("check_finite", False))

    @classmethod
    def valid_callbacks(cls) -> set[str]:
        """Callbacks of ``func`` this solver calls (torchdiffeq's fixed-grid set)."""
        return {"callback_step"}

    def _step_func(self, func, t0, dt, t1, y0):  # pragma: no cover - integrate() is overridden
        raise NotImplementedError(
            "ba-solver integrates whole grids (integrate); a standalone step is not supported"
        )

    def integrate_until_event(self, t0, event_fn):
        """Not supported: raises NotImplementedError."""
        raise NotImplementedError(
            "ba-solver does not support event_fn / odeint_event; use a torchdiffeq method such as 'rk4'"
        )

    def integrate(self, t: torch.Tensor) -> torch.Tensor:
        """Integrate over the grid and return the states at the output times ``t``."""
        grid = self.grid_constructor(self.func, self.y0, t)
        s = [float(v) for v in grid.detach().cpu().tolist()]  # the one host sync of the grid
        t_out = s if grid is t else [float(v) for v in t.detach().cpu().tolist()]
        if s[0] != t_out[0] or s[-1] != t_out[-1]:
            raise ValueError(
                f"ba-solver: the integration grid must start at t[0] and end at t[-1]; got "
                f"{s[0]!r}..{s[-1]!r} for t = {t_out[0]!r}..{t_out[-1]!r}"
            )
        if len(s) == 1:  # a single time: nothing to integrate (as torchdiffeq's fixed-grid solvers)
            return self.y0.unsqueeze(0)
        if len(s) == 2 and not self._planned_grid and not _inspect_func(self.func)[2]:
            _warn_once(
                "ba-solver: the grid is t itself and has a single interval, so the whole solve is ONE "
                "BA-solver step (NFE 1). Fixed-grid methods integrate on t: pass a finer t, or "
                "options=dict(step_size=...) (as for torchdiffeq's 'rk4'), when switching from an adaptive method."
            )
        reversed_, _shapes, adjoint = _inspect_func(self.func)
        if adjoint and not _is_state_agnostic(self.perception):
            raise TypeError(
                f"ba-solver: odeint_adjoint integrates the adjoint system (the flattened (t, y, adj_y, *params) "
                f"vector) with the same method, but perception {self.perception!r} only understands the "
                "forward state. Pass adjoint_method='rk4' with adjoint_options=dict(step_size=...), or "
                "adjoint_options=dict(perception='polynomial', ...) (or 'anchor-only'), or mark a perception "
                "that works on any state with state_agnostic = True."
            )
        sign = -1.0 if reversed_ else 1.0
        true_grid = check_grid([sign * v for v in s], "grid")  # true times, decreasing if reversed
        nodes = grid.unbind(0)  # 0-dim views: the times handed to func, no copies
        dts = grid[1:] - grid[:-1]
        func = self.func
        callback_step = getattr(func, "callback_step", None)  # torchdiffeq installs a no-op default
        # Gradients with respect to the times: the solver then runs on the 0-dim tensor times
        # themselves (as torchdiffeq's fixed-grid methods do), else on host floats.
        grad_times = torch.is_grad_enabled() and (grid.requires_grad or t.requires_grad)
        if grad_times and not getattr(self.perception, "differentiable_times", False):
            raise TypeError(
                f"ba-solver: t requires grad, but perception {self.perception!r} is not differentiable in the "
                "times (it would silently give a zero gradient). Use perception='polynomial' or 'anchor-only', "
                "declare differentiable_times = True on a perception that is, or pass t.detach()."
            )
        times = [sign * n for n in nodes] if grad_times else list(true_grid)
        time_of = {tt: nodes[i] for i, tt in enumerate(true_grid)}

        def true_field(tt: Any, x: torch.Tensor) -> torch.Tensor:
            out = func(sign * tt if grad_times else time_of[tt], x)
            return -out if reversed_ else out

        where = _Where(true_grid, track=self.check_finite)
        field = CountedField(true_field, self.y0, where)
        perception = CountedPerception(self.perception, where)

        out = [self.y0]
        gaps: list = []
        j = 1
        prev = self.y0
        last = len(s) - 1

        def callback(i: int, _t: float, x: torch.Tensor, info: Any = None) -> None:
            nonlocal j, prev
            if self.check_finite and not bool(torch.isfinite(x).all()):
                culprit = where.culprit()
                raise FloatingPointError(
                    f"ba-solver: the state became NaN/inf in interval {i} of {last} "
                    f"(t = {true_grid[i - 1]:g} -> {true_grid[i]:g})"
                    + (f": {culprit} turned finite inputs into NaN/inf" if culprit else "")
                )
            while j < len(t_out) and s[i] >= t_out[j]:
                if grad_times:  # tensor weights, so the output times get their gradient too
                    out.append(_lerp_at(nodes[i - 1], nodes[i], prev, x, t[j], s[i - 1], s[i], t_out[j]))
                else:
                    out.append(_lerp(s[i - 1], s[i], prev, x, t_out[j]))
                j += 1
            prev = x
            if info is not None:
                gaps.append(info.gap)
            where.next_interval(i)
            if i < last and callback_step is not None:
                callback_step(nodes[i], x, dts[i])

        if callback_step is not None:
            callback_step(nodes[0], self.y0, dts[0])
        try:
            ba_solver_resolved(  # the options were resolved once, in __init__
                field,
                self.y0,
                times,
                callback=callback,
                rule=self.rule,
                perception=perception,
                anchors=self.anchors,
                final=self.final,
            )
        finally:
            self._record(field.calls, perception.calls, len(gaps), adjoint, gaps)
        return torch.stack(out)

    def _record(self, nfe: int, pcalls: int, steps: int, adjoint: bool, gaps: list) -> None:
        st = self.stats
        if st is None:
            return
        prefix = "adjoint_" if adjoint else ""
        setattr(st, prefix + "nfe", getattr(st, prefix + "nfe") + nfe)
        setattr(st, prefix + "perception_calls", getattr(st, prefix + "perception_calls") + pcalls)
        setattr(st, prefix + "steps", getattr(st, prefix + "steps") + steps)
        setattr(st, prefix + "solves", getattr(st, prefix + "solves") + 1)
        if not adjoint and gaps:
            nan = torch.full((), float("nan"), device=self.y0.device)
            st.local_errors = torch.stack([nan if g is None else g.to(nan.dtype) for g in gaps])


_WARNED: set = set()


def _warn_once(message: str) -> None:
    """``warnings.warn`` once per process for this message (a user's loop would repeat it)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=4)


def _lerp_at(n0: torch.Tensor, n1: torch.Tensor, y0: torch.Tensor, y1: torch.Tensor, tt: torch.Tensor,
             f0: float, f1: float, ft: float) -> torch.Tensor:
    """Linear interpolation with tensor times (differentiable in them), the nodes themselves
    returned as they are (torchdiffeq's rule)."""
    if ft == f1:
        return y1
    if ft == f0:
        return y0
    return y0 + ((tt - n0) / (n1 - n0)) * (y1 - y0)


def _lerp(t0: float, t1: float, y0: torch.Tensor, y1: torch.Tensor, t: float) -> torch.Tensor:
    if t == t1:
        return y1
    if t == t0:
        return y0
    return y0 + ((t - t0) / (t1 - t0)) * (y1 - y0)


def register(name: str = "ba-solver", **defaults: Any) -> type[BASolver]:
    """Make ``torchdiffeq.odeint(..., method=name)`` run BA-solver; returns the registered class.

    Idempotent: registering the same name with the same defaults again returns the class already
    registered. Without defaults the class is :class:`BASolver` itself. With defaults (any of
    :data:`OPTIONS`, e.g. ``perception=sidenet`` for libraries that forward no options) a subclass
    carrying them is registered; registering the name again with different defaults replaces it.

    Registration writes torchdiffeq's method table ``torchdiffeq._impl.odeint.SOLVERS`` (the same
    dict ``odeint_adjoint`` reads), the extension point torchdiffeq's maintainers point to; there is
    no public registration API.

    Raises:
        TypeError: unknown default option names.
        ValueError: ``name`` is a torchdiffeq built-in method (it would be shadowed).
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name: expected a non-empty string, got {name!r}")
    unknown = sorted(set(defaults) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"register: unknown option(s) {', '.join(map(repr, unknown))}; valid options are {', '.join(OPTIONS)}"
        )
    current = _SOLVERS.get(name)
    if current is not None and not (isinstance(current, type) and issubclass(current, BASolver)):
        raise ValueError(
            f"register: {name!r} is already the torchdiffeq method {getattr(current, '__name__', current)!r}; "
            "choose another name"
        )
    if not defaults:
        cls: type[BASolver] = BASolver
    elif current is not None and _same_defaults(current.defaults, defaults):
        return current
    else:
        cls = type(f"BASolver_{name}", (BASolver,), {"defaults": MappingProxyType(dict(defaults))})
        cls.__doc__ = f"BASolver registered as {name!r} with defaults {sorted(defaults)}."
    _SOLVERS[name] = cls
    return cls


def _same_defaults(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    return set(a) == set(b) and all(a[k] is b[k] or _safe_eq(a[k], b[k]) for k in a)


def _safe_eq(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not (torch.is_tensor(a) or torch.is_tensor(b)) else False
    except Exception:  # noqa: BLE001 - objects with odd __eq__ count as different
        return False


def unregister(name: str = "ba-solver") -> None:
    """Remove a method registered by :func:`register` (no-op if absent; built-ins are refused)."""
    current = _SOLVERS.get(name)
    if current is None:
        return
    if not (isinstance(current, type) and issubclass(current, BASolver)):
        raise ValueError(f"unregister: {name!r} is a torchdiffeq built-in method, not a baquad one")
    del _SOLVERS[name]
