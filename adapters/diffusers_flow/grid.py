"""The time grid a SideNet may carry with it, and how a scheduler reads it.

A SideNet is trained for, or tuned on, particular time grids; a grid saved with it (an optional
``"grid"`` entry in the ``extra`` metadata of its file) then replaces the pipeline's sigma
schedule. Times are the flow times sigma in [0, 1] (1 noise, 0 data), in integration order.
The forms are the core's grid specs (:func:`baquad.schedules.check_grid_spec`): a named schedule
with a shift (``{"shift": s}`` is the shifted uniform grid), one explicit grid per number of
steps, or one explicit grid. Nothing here imports torch or diffusers.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from baquad.schedules import check_grid_spec, grid_from_spec

__all__ = ["check_grid_spec", "grid_for_steps"]


def grid_for_steps(spec: Any, n_steps: int) -> Optional[list[float]]:
    """The grid of ``n_steps`` steps that ``spec`` defines (``n_steps + 1`` times), or None when
    it defines none for that many steps (see :func:`baquad.schedules.grid_from_spec`)."""
    grid = grid_from_spec(spec, n_steps)
    return None if grid is None else list(grid)


def describe(grid: Sequence[float]) -> str:
    return "[" + ", ".join(f"{t:.4g}" for t in grid) + "]"
