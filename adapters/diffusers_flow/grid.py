"""The time grid a SideNet may carry with it, and how a scheduler reads it.

A SideNet is trained for, or tuned on, particular time grids; a grid saved with it (an optional
``"grid"`` entry in the ``extra`` metadata of its file) then replaces the pipeline's sigma
schedule. Times are the flow times sigma in [0, 1] (1 noise, 0 data), in integration order.
Three forms are understood:

- ``{"shift": s}``: the shifted uniform grid for any number of steps N,
  sigma_k = s u_k / (1 + (s - 1) u_k) with u_k = 1 - k / N, k = 0..N (s = 1 is uniform);
- ``{"steps": {"N": [sigma_0, ..., sigma_N], ...}}``: one grid per number of steps;
- ``[sigma_0, ..., sigma_N]``: one grid, for N steps only.

Every listed grid must be strictly decreasing, start in (0, 1] and end at 0 (a pipeline
integrates to the data). Nothing here imports torch or diffusers.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

__all__ = ["check_grid_spec", "grid_for_steps"]


def _check_list(grid: Any, where: str) -> list[float]:
    try:
        ts = [float(t) for t in grid]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: expected a list of times, got {grid!r}") from err
    if len(ts) < 2:
        raise ValueError(f"{where}: a grid needs at least 2 times (one step), got {ts}")
    if not all(math.isfinite(t) for t in ts):
        raise ValueError(f"{where}: contains NaN/inf: {ts}")
    if not all(a > b for a, b in zip(ts[:-1], ts[1:])):
        raise ValueError(f"{where}: the times must be strictly decreasing (from noise to data), got {ts}")
    if not 0.0 < ts[0] <= 1.0 or ts[-1] != 0.0:
        raise ValueError(f"{where}: a grid must start in (0, 1] and end at 0 (it spans the integration), got {ts}")
    return ts


def check_grid_spec(spec: Any, where: str = "grid") -> Any:
    """Validate a grid entry in one of the three forms; return it in plain JSON types.

    Raises:
        ValueError: naming ``where`` and what is wrong (an unknown form, a shift <= 0, a grid that
            is not strictly decreasing or does not span (0, 1] -> 0, a step count that does not
            match its grid's length).
    """
    if spec is None:
        return None
    if isinstance(spec, dict):
        if set(spec) == {"shift"}:
            s = spec["shift"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
                raise ValueError(f"{where}: shift must be a finite number > 0, got {s!r}")
            return {"shift": float(s)}
        if set(spec) == {"steps"} and isinstance(spec["steps"], dict) and spec["steps"]:
            out = {}
            for n, grid in spec["steps"].items():
                ts = _check_list(grid, f"{where}['steps'][{n!r}]")
                if str(len(ts) - 1) != str(n):
                    raise ValueError(f"{where}['steps'][{n!r}]: the grid has {len(ts) - 1} steps, not {n}")
                out[str(n)] = ts
            return {"steps": out}
        raise ValueError(f"{where}: expected {{'shift': s}}, {{'steps': {{'N': [...]}}}} or a list of times, got {spec!r}")
    if isinstance(spec, (list, tuple)):
        return _check_list(spec, where)
    raise ValueError(f"{where}: expected {{'shift': s}}, {{'steps': {{'N': [...]}}}} or a list of times, got {spec!r}")


def grid_for_steps(spec: Any, n_steps: int) -> Optional[list[float]]:
    """The grid of ``n_steps`` steps that ``spec`` defines (``n_steps + 1`` times), or None when
    it defines none for that many steps (no spec, or a per-step-count table without this one)."""
    spec = check_grid_spec(spec)
    if spec is None:
        return None
    if isinstance(spec, list):
        return spec if len(spec) == n_steps + 1 else None
    if "shift" in spec:
        s = spec["shift"]
        us = [1.0 - k / n_steps for k in range(n_steps + 1)]
        return [s * u / (1.0 + (s - 1.0) * u) for u in us]
    return spec["steps"].get(str(n_steps))


def describe(grid: Sequence[float]) -> str:
    return "[" + ", ".join(f"{t:.4g}" for t in grid) + "]"
