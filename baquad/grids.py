"""Time grids: the one check every solver, schedule and reference solve applies to a grid, and
the log-SNR coordinate of the linear flow path that schedules and multistep solvers use.

A grid is a 1-D sequence of times at which a solve lands, strictly monotone in the direction of
integration. A *generation* grid additionally lies in [0, 1] and decreases (t = 1 is noise,
t = 0 data; see docs/conventions.md). :func:`check_grid` checks the shared part and the options
select the extra checks; callers add only what is theirs (the flow solvers' t = 1 clamp, a saved
grid's endpoints).

On the linear path ``x_t = (1 - t) x_data + t noise`` the half log signal-to-noise ratio is
``lambda(t) = log((1 - t) / t)`` (:func:`lam`), decreasing from +inf at t = 0 to -inf at t = 1,
with inverse ``t = 1 / (1 + e^lambda)`` (:func:`t_of_lam`).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ._backend import is_torch

__all__ = ["check_grid", "lam", "t_of_lam"]


def check_grid(
    ts: Any,
    name: str = "ts",
    *,
    min_points: int = 2,
    decreasing: bool = False,
    unit_interval: bool = False,
) -> tuple[float, ...]:
    """``ts`` as a tuple of Python floats, checked to be a usable grid.

    Always: a 1-D sequence of real numbers (list, tuple, numpy array or torch tensor) with at
    least ``min_points`` times, all finite, strictly monotone (all increasing or all decreasing).

    Args:
        ts: the grid.
        name: the argument's name in error messages (``"ts"``, ``"grid['steps']['4']"``, ...).
        min_points: the fewest times accepted (2: one interval; 1 for a solve that may return
            just its initial state).
        decreasing: require strictly decreasing times (generation runs t: 1 -> 0) instead of
            either direction.
        unit_interval: require every time in [0, 1] (t = 1 noise, t = 0 data).

    Raises:
        ValueError: naming ``name``, what is wrong and the position that breaks it.
    """
    plain = _plain_float_grid(ts, min_points, decreasing, unit_interval)
    if plain is not None:
        return plain
    if is_torch(ts):
        ts = ts.detach().cpu().double().numpy()
    elif hasattr(ts, "__iter__") and not isinstance(ts, (np.ndarray, list, tuple, str, bytes, dict)):
        ts = list(ts)  # a generator or other one-pass iterable
    try:
        arr = np.asarray(ts, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: expected a 1-D sequence of real times, got {ts!r}") from err
    if arr.ndim != 1 or arr.size < min_points:
        need = "at least 2 times (start and end)" if min_points == 2 else f"at least {min_points} time(s)"
        raise ValueError(f"{name}: need a 1-D grid with {need}, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{name}: contains NaN/inf at positions {np.flatnonzero(~np.isfinite(arr)).tolist()}; "
            "every time must be finite"
        )
    if unit_interval and not ((arr >= 0.0) & (arr <= 1.0)).all():
        bad = np.flatnonzero((arr < 0.0) | (arr > 1.0)).tolist()
        raise ValueError(
            f"{name}: the times must lie in [0, 1] (t = 1 noise, t = 0 data), but positions {bad} do not: "
            f"{arr.tolist()}"
        )
    d = np.diff(arr)
    if decreasing:
        if not (d < 0).all():
            bad = int(np.flatnonzero(d >= 0)[0])
            raise ValueError(
                f"{name}: the times must be strictly decreasing (generation runs t: 1 -> 0); "
                f"{name}[{bad}] = {float(arr[bad])!r} and {name}[{bad + 1}] = {float(arr[bad + 1])!r} break it. "
                "Remove repeated times and sort the grid from noise to data."
            )
    elif d.size and not ((d > 0).all() or (d < 0).all()):
        bad = int(np.flatnonzero(d * np.sign(d[0]) <= 0)[0]) if d[0] != 0 else 0
        raise ValueError(
            f"{name}: the grid must be strictly monotone (all increasing or all decreasing); "
            f"{name}[{bad}] = {float(arr[bad])!r} and {name}[{bad + 1}] = {float(arr[bad + 1])!r} break it. "
            "Remove repeated times and sort the grid in the direction of integration."
        )
    return tuple(float(t) for t in arr)


def _plain_float_grid(ts: Any, min_points: int, decreasing: bool, unit_interval: bool) -> Optional[tuple[float, ...]]:
    """The common case of :func:`check_grid` without numpy: ``ts`` as a tuple when it is a list or
    tuple of Python floats that passes every check (a grid ``solve`` already checked, handed to
    a sampler that checks it again); None for anything else, which the full check then accepts,
    converts or refuses with its message."""
    if (type(ts) is not tuple and type(ts) is not list) or len(ts) < min_points:
        return None
    if set(map(type, ts)) != {float} or not all(map(math.isfinite, ts)):
        return None
    if unit_interval and not (0.0 <= min(ts) and max(ts) <= 1.0):
        return None
    later = ts[1:]
    if not (all(map(float.__gt__, ts, later)) or (not decreasing and all(map(float.__lt__, ts, later)))):
        return None
    return tuple(ts)


def lam(t: float) -> float:
    """Half log-SNR of the linear path, ``lambda(t) = log((1 - t) / t)``, for t in [0, 1);
    +inf at t = 0 (t = 1, where it is -inf, raises: the flow solvers clamp it first)."""
    if t == 0.0:
        return math.inf
    return math.log1p(-t) - math.log(t)


def t_of_lam(lam_value: float) -> float:
    """The inverse of :func:`lam`: ``t = 1 / (1 + e^lambda)`` (the logistic function of
    ``-lambda``), evaluated without overflow for either sign of ``lambda``."""
    if lam_value >= 0:
        e = math.exp(-lam_value)
        return e / (1.0 + e)
    return 1.0 / (1.0 + math.exp(lam_value))
