"""Adams-Bashforth: the linear multistep method in t, for any grid direction.

With ``h_i = t_{i+1} - t_i`` and ``r_i = h_i / h_{i-1}`` (variable steps), order 2 is

    x_{i+1} = x_i + h_i ((1 + r_i / 2) v_i - (r_i / 2) v_{i-1}),    v_i = v(t_i, x_i)

(the interpolating line through the two latest velocities integrated over the step), with an
Euler first step. One field call per step; nothing assumes the flow path or a time direction,
so it is the multistep baseline for inverting a flow (t: 0 -> 1), where DPM-Solver++ and UniPC,
written in the log-SNR lambda that is infinite at t = 0, do not apply. Order 1 is Euler.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..grids import check_grid

__all__ = ["adams_bashforth"]

X = Any


def adams_bashforth(
    field: Callable[[float, X], X],
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callable[..., None] | None = None,
    order: int = 2,
) -> X:
    """Adams-Bashforth of ``order`` 1 or 2 on the grid ``ts`` (either direction): N steps, N NFE."""
    if isinstance(order, bool) or order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order!r}")
    grid = check_grid(ts)
    x, v_prev, h_prev = x0, None, None
    for i in range(len(grid) - 1):
        h = grid[i + 1] - grid[i]
        v = field(grid[i], x)
        if order == 1 or v_prev is None:
            x = x + h * v
        else:
            r = h / h_prev
            x = x + h * ((1.0 + 0.5 * r) * v - (0.5 * r) * v_prev)
        v_prev, h_prev = v, h
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x
