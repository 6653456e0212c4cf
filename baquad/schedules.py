"""Time grids for generation (t = 1 noise -> t = 0 data) and NFE-budgeted grid planning.

Every schedule returns a tuple of Python floats in [0, 1], strictly decreasing, with
``n_steps + 1`` points (``n_steps`` intervals):

- :func:`uniform`: ``t_j = t_max (N - j) / N`` (``t_max = 1``: REPA's ``linspace(1, 0, N+1)``;
  ``t_max = 0.999`` gives SANA's ``time_uniform_flow`` / diffusers' ``use_flow_sigmas`` grid).
- :func:`sd3_shift`: ``t' = s t / (1 + (s - 1) t)`` (SD3 / SANA / Wan ``shift``), applied to any
  grid; in log-SNR it is a pure translation, ``lambda' = lambda - log s``.  Every schedule
  takes ``shift`` and applies it last, so ``uniform(N, shift=3)`` is the SD3-shift schedule.
- :func:`logsnr_uniform`: uniform in ``lambda = log((1 - t)/t)`` between the FINITE endpoints
  ``t_max`` and ``t_min`` (default ``1 - 1e-3`` and ``1e-3``; ``lambda`` is infinite at both
  t = 1 and t = 0), then one extra step from ``t_min`` to t = 0.  That last step is one of the
  ``n_steps`` intervals and costs its NFE like any other (for the multistep flow solvers it
  is the order-1 step ``x_N = x0_hat``).
- :func:`edm`: Karras et al.'s (EDM) rho-spacing of the noise level ``sigma = t / (1 - t)``
  (the noise-to-signal ratio of the linear path): ``sigma_j = (sigma_max^(1/rho) + j/(N-1)
  (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho``, j = 0..N-1 (rho = 7, sigma in [0.002, 80] by
  default), mapped to ``t = sigma / (1 + sigma)``, then t = 0; the first point is moved from
  ``t(sigma_max) = 80/81`` to t = 1 so that the grid starts at pure noise as every flow grid does.
- :func:`user_grid`: a user grid, validated.

:func:`nfe_grid` picks the number of steps from an NFE budget (via
:func:`baquad.methods.steps_for_nfe`) so that "NFE = 10" means ten field calls for every
method, the BA-solver included.

Grid specs: a solver (a learned SideNet above all) can carry the grid it was tuned for, as a
small JSON-able spec that :func:`grid_from_spec` turns into the grid of any number of steps:

- ``{"schedule": name, "shift": s}``: a named schedule (``uniform``, ``logsnr``, ``edm``) with
  an SD3 shift (``{"shift": s}`` alone is the shifted uniform grid);
- ``{"steps": {"N": [t_0, ..., t_N], ...}}``: one explicit grid per number of steps;
- ``[t_0, ..., t_N]``: one explicit grid, for N steps only.

Explicit grids must be strictly decreasing from a start in (0, 1] to exactly 0 (they span the
generation); :func:`check_grid_spec` refuses anything else, naming what is wrong.
:func:`default_grid` is the one call a sampler needs: the grid a perception carries (a loaded
SideNet's), else uniform.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

from .grids import check_grid, lam, t_of_lam
from .methods import steps_for_nfe

__all__ = [
    "uniform",
    "sd3_shift",
    "logsnr_uniform",
    "edm",
    "user_grid",
    "get_schedule",
    "nfe_grid",
    "default_grid",
    "check_grid_spec",
    "grid_from_spec",
    "SCHEDULES",
]


def _check_steps(n_steps: int) -> int:
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    return int(n_steps)


def _check_shift(shift: float) -> float:
    shift = float(shift)
    if not (math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
    return shift


def sd3_shift(ts: Sequence[float], shift: float) -> tuple[float, ...]:
    """SD3 time shift ``t' = s t / (1 + (s - 1) t)`` applied to every point of ``ts``.

    Fixes t = 0 and t = 1, is increasing in t, and moves log-SNR by ``-log s``
    (``s > 1`` spends more steps near the noise end).  ``shift = 1`` is the identity.
    """
    s = _check_shift(shift)
    if s == 1.0:
        return tuple(float(t) for t in ts)
    return tuple(s * float(t) / (1.0 + (s - 1.0) * float(t)) for t in ts)


def uniform(n_steps: int, *, shift: float = 1.0, t_max: float = 1.0) -> tuple[float, ...]:
    """``t_j = shift(t_max (N - j) / N)``, j = 0..N: uniform in t (then shifted), ends at 0.

    ``t_max = 1`` (default) starts at exactly 1 (the flow solvers clamp that to 1 - 1e-6, as
    diffusers' UniPC does); ``t_max = 0.999`` reproduces SANA/diffusers DPM flow grids.
    """
    n = _check_steps(n_steps)
    if not 0.0 < t_max <= 1.0:
        raise ValueError(f"t_max must be in (0, 1], got {t_max!r}")
    return sd3_shift([t_max * ((n - j) / n) for j in range(n + 1)], shift)


def logsnr_uniform(
    n_steps: int,
    *,
    shift: float = 1.0,
    t_max: float = 1.0 - 1e-3,
    t_min: float = 1e-3,
    to_zero: bool = True,
) -> tuple[float, ...]:
    """Uniform in ``lambda = log((1 - t)/t)`` between ``t_max`` and ``t_min``, then t = 0.

    With ``to_zero=True`` (default) the grid is ``n_steps - 1`` log-SNR-uniform intervals from
    ``t_max`` to ``t_min`` followed by the extra step ``t_min -> 0``, i.e. ``n_steps + 1``
    points in all; that extra step is counted as a step (and an NFE) like any other.  With
    ``to_zero=False`` all ``n_steps`` intervals are log-SNR uniform and the grid ends at
    ``t_min``.  ``shift`` is applied to every point (equivalently, both endpoints' lambda
    move by ``-log shift``).
    """
    n = _check_steps(n_steps)
    if not 0.0 < t_min < t_max < 1.0:
        raise ValueError(f"need 0 < t_min < t_max < 1, got t_min={t_min!r}, t_max={t_max!r}")
    m = n - 1 if to_zero else n
    lam_a, lam_b = lam(t_max), lam(t_min)
    if m == 0:
        pts = [t_max]
    else:
        pts = [t_of_lam(lam_a + (lam_b - lam_a) * j / m) for j in range(m + 1)]
        pts[0], pts[-1] = t_max, t_min
    if to_zero:
        pts.append(0.0)
    return sd3_shift(pts, shift)


def edm(n_steps: int, *, shift: float = 1.0, rho: float = 7.0, sigma_min: float = 0.002,
        sigma_max: float = 80.0) -> tuple[float, ...]:
    """EDM's rho-spaced noise levels in flow time (see the module docstring): ``n_steps + 1``
    points from 1 to 0, the last interval ``t(sigma_min) -> 0``. ``shift`` is applied last."""
    n = _check_steps(n_steps)
    if not (math.isfinite(rho) and rho > 0):
        raise ValueError(f"rho must be a positive finite number, got {rho!r}")
    if not 0.0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    if n == 1:
        return sd3_shift((1.0, 0.0), shift)
    a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    sigmas = [(a + j / (n - 1) * (b - a)) ** rho for j in range(n)]
    pts = [1.0] + [sg / (1.0 + sg) for sg in sigmas[1:]] + [0.0]
    return sd3_shift(pts, shift)


def user_grid(ts: Sequence[float]) -> tuple[float, ...]:
    """A user-supplied generation grid as a tuple of floats, checked to be in [0, 1] and
    strictly decreasing with at least 2 points (:func:`baquad.grids.check_grid`).

    Raises:
        ValueError: naming ``ts`` otherwise.
    """
    return check_grid(ts, "ts", decreasing=True, unit_interval=True)


#: name -> schedule function ``f(n_steps, *, shift, **options)``.  ``"sd3"`` is ``"uniform"``
#: (pass ``shift``); ``"logsnr"`` is :func:`logsnr_uniform`; ``"edm"`` is :func:`edm`.
SCHEDULES: dict[str, Callable[..., tuple[float, ...]]] = {
    "uniform": uniform,
    "sd3": uniform,
    "logsnr": logsnr_uniform,
    "edm": edm,
}


def get_schedule(
    schedule: str | Callable[..., Sequence[float]], n_steps: int, *, shift: float = 1.0, **options: Any
) -> tuple[float, ...]:
    """The grid of ``n_steps`` steps of a named schedule (or of a callable
    ``schedule(n_steps, shift=shift, **options)``), validated by :func:`user_grid`.
    """
    if callable(schedule):
        grid = user_grid(schedule(n_steps, shift=shift, **options))
    else:
        if schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; known: {sorted(SCHEDULES)}")
        grid = SCHEDULES[schedule](n_steps, shift=shift, **options)
    if len(grid) != _check_steps(n_steps) + 1:
        raise ValueError(f"schedule returned {len(grid)} points for n_steps={n_steps}")
    return grid


def nfe_grid(
    method: str,
    nfe: int,
    schedule: str | Callable[..., Sequence[float]] = "uniform",
    shift: float = 1.0,
    *,
    schedule_options: dict[str, Any] | None = None,
    **method_options: Any,
) -> tuple[float, ...]:
    """The grid on which ``method`` (with ``method_options``) makes exactly ``nfe`` field calls.

    ``n_steps = steps_for_nfe(method, nfe, **method_options)``: e.g. NFE 10 is 10 steps of
    euler / dpm++ / unipc, 5 of midpoint or full Heun, 10 intervals of the BA-solver
    (scheme B, ``final="single"``, default) or 9 (scheme A, ``final="bi"``); NFE 9 is 5 steps of
    Heun with ``final_step="euler"`` (2N - 1).

    ``schedule`` may also be a learned grid (:class:`baquad.solvers.learned_grid.LearnedGrid`,
    ``load_grid(path)``), used as learned: it refuses another method, other options or an NFE it
    holds no grid for, naming both.

    Raises:
        ValueError: naming ``nfe`` when the budget cannot be met exactly.
    """
    if hasattr(schedule, "grid_for"):  # a LearnedGrid (not imported: it reads this module)
        if shift != 1.0 or schedule_options:
            raise ValueError("shift, schedule_options: a learned grid is used as it was learned; leave them out")
        return schedule.grid_for(method, nfe, **method_options)
    n_steps = steps_for_nfe(method, nfe, **method_options)
    return get_schedule(schedule, n_steps, shift=shift, **(schedule_options or {}))


# ---------------------------------------------------------------------------------------------
# grid specs (a grid a solver carries with it)


def _explicit_grid(grid: Any, where: str) -> list[float]:
    """An explicit saved grid: a generation grid (:func:`baquad.grids.check_grid`) that spans
    the whole generation, from a start in (0, 1] to exactly 0."""
    ts = list(check_grid(grid, where, decreasing=True))
    if not 0.0 < ts[0] <= 1.0 or ts[-1] != 0.0:
        raise ValueError(f"{where}: a grid must start in (0, 1] and end at 0 (it spans the generation), got {ts}")
    return ts


def check_grid_spec(spec: Any, where: str = "grid") -> Any:
    """Validate a grid spec (see the module docstring) and return it in plain JSON types; None
    passes through (no grid).

    Raises:
        ValueError: naming ``where`` and what is wrong: an unknown form or schedule, a shift that
            is not a finite number > 0, an explicit grid that is not strictly decreasing or does
            not span (0, 1] -> 0, a step count that does not match its grid.
    """
    if spec is None:
        return None
    if isinstance(spec, dict) and set(spec) <= {"schedule", "shift"} and spec:
        name = spec.get("schedule", "uniform")
        if name not in ("uniform", "sd3", "logsnr", "edm"):
            raise ValueError(f"{where}: unknown schedule {name!r}; valid: uniform, logsnr, edm (sd3 = uniform with a shift)")
        shift = spec.get("shift", 1.0)
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not (math.isfinite(shift) and shift > 0):
            raise ValueError(f"{where}: shift must be a finite number > 0, got {shift!r}")
        out = {"shift": float(shift)}
        if "schedule" in spec:
            out = {"schedule": "uniform" if name == "sd3" else name, **out}
        return out
    if isinstance(spec, dict) and set(spec) == {"steps"} and isinstance(spec["steps"], dict) and spec["steps"]:
        out = {}
        for n, grid in spec["steps"].items():
            ts = _explicit_grid(grid, f"{where}['steps'][{n!r}]")
            if str(len(ts) - 1) != str(n):
                raise ValueError(f"{where}['steps'][{n!r}]: the grid has {len(ts) - 1} steps, not {n}")
            out[str(n)] = ts
        return {"steps": out}
    if isinstance(spec, (list, tuple)):
        return _explicit_grid(spec, where)
    raise ValueError(
        f"{where}: expected {{'schedule': name, 'shift': s}}, {{'steps': {{'N': [...]}}}} or a list of times, got {spec!r}"
    )


def grid_from_spec(spec: Any, n_steps: int) -> Optional[tuple[float, ...]]:
    """The grid of ``n_steps`` steps that ``spec`` defines (``n_steps + 1`` times), or None when
    it defines none for that many steps (no spec, an explicit grid of another length, or a
    per-step-count table without this one)."""
    spec = check_grid_spec(spec)
    n = _check_steps(n_steps)
    if spec is None:
        return None
    if isinstance(spec, list):
        return tuple(spec) if len(spec) == n + 1 else None
    if "steps" in spec:
        grid = spec["steps"].get(str(n))
        return None if grid is None else tuple(grid)
    return get_schedule(spec.get("schedule", "uniform"), n, shift=spec["shift"])


def default_grid(method: str, nfe: int, perception: Any = None, **method_options: Any) -> tuple[float, ...]:
    """The grid on which ``method`` spends exactly ``nfe`` calls: the one ``perception`` carries
    (``perception.grid``, e.g. a SideNet's saved grid) when it defines one for that many steps,
    else the uniform grid."""
    n_steps = steps_for_nfe(method, nfe, **method_options)
    grid = grid_from_spec(getattr(perception, "grid", None), n_steps)
    return grid if grid is not None else uniform(n_steps)
