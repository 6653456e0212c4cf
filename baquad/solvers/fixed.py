"""Generic fixed-grid one-step solvers: Euler, Heun, explicit midpoint, classical RK4.

These integrate ``dx/dt = field(t, x)`` over ANY strictly monotone grid ``ts`` (increasing
or decreasing) for ANY field; nothing here assumes the flow-matching path.  With
``h = ts[i+1] - ts[i]`` (negative for generation, which runs ``t: 1 -> 0``):

- Euler:     ``x_{i+1} = x_i + h v(t_i, x_i)``                                       (1 NFE/step)
- Heun:      ``x' = x_i + h v_i``; ``x_{i+1} = x_i + h (v_i + v(t_{i+1}, x')) / 2``  (2 NFE/step)
- midpoint:  ``x_{i+1} = x_i + h v(t_i + h/2, x_i + (h/2) v_i)``                     (2 NFE/step)
- RK4:       the classical 4-stage Runge-Kutta method                                 (4 NFE/step)

All share the sampler contract: ``solver(field, x0, ts, *, callback=None, **options) -> x``.
Only arithmetic operators touch the state, with Python-float coefficients, so numpy
arrays and torch tensors (including autograd) of any dtype work and keep their dtype. Each
re-checks its grid with :func:`baquad.grids.check_grid` (``solve`` has checked it already; the
cheap re-check makes a direct call fail clearly too).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from ..grids import check_grid

__all__ = ["euler", "heun", "heun_cost", "midpoint", "rk4"]

X = Any  # numpy.ndarray or torch.Tensor
Field = Callable[[float, X], X]
Callback = Callable[[int, float, X], None]


def euler(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
) -> X:
    """Forward Euler: ``x_{i+1} = x_i + h_i v(t_i, x_i)``, ``h_i = t_{i+1} - t_i``.

    N steps cost N NFE.  In flow variables this is also DDIM / DPM-Solver(++)-1 / UniP-1
    (docs/baselines.md#euler).
    """
    grid = check_grid(ts)
    x = x0
    for i in range(len(grid) - 1):
        t, h = grid[i], grid[i + 1] - grid[i]
        x = x + h * field(t, x)
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x


def heun(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
    final_step: str = "euler",
) -> X:
    """Heun's method (explicit trapezoid, order 2).

    Per step: ``v_i = v(t_i, x_i)``, predictor ``x' = x_i + h v_i``, then
    ``x_{i+1} = x_i + h (v_i + v(t_{i+1}, x')) / 2``.

    Args:
        final_step: ``"euler"`` (default) skips the correction on the last step, exactly as
            EDM's ``edm_sampler`` ("if i < num_steps - 1"), REPA's ``euler_sampler(heun=True)``
            and diffusers' ``FlowMatchHeunDiscreteScheduler`` do: N steps cost **2N - 1** NFE
            (EDM's 18 steps = 35 NFE).  ``"heun"`` corrects every step (v(x, 0) is well
            defined for flow models): N steps cost **2N** NFE.
    """
    _check_final_step(final_step)
    grid = check_grid(ts)
    n = len(grid) - 1
    x = x0
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        h = t_next - t
        v = field(t, x)
        x_pred = x + h * v
        if i == n - 1 and final_step == "euler":
            x = x_pred
        else:
            x = x + (0.5 * h) * (v + field(t_next, x_pred))
        if callback is not None:
            callback(i + 1, t_next, x)
    return x


def heun_cost(final_step: str = "euler") -> tuple[int, int]:
    """Heun's NFE for N steps as ``(a, b)`` with NFE = a N + b: two calls per step, less the
    skipped correction of the last step with ``final_step="euler"`` (2N - 1), or 2N with
    ``final_step="heun"``.

    Raises:
        ValueError: naming ``final_step`` unless it is ``"euler"`` or ``"heun"``.
    """
    _check_final_step(final_step)
    return (2, -1) if final_step == "euler" else (2, 0)


def _check_final_step(final_step: Any) -> None:
    if final_step not in ("euler", "heun"):
        raise ValueError(f"final_step must be 'euler' or 'heun', got {final_step!r}")


def midpoint(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
) -> X:
    """Explicit midpoint rule (order 2): ``x_{i+1} = x_i + h v(t_i + h/2, x_i + (h/2) v(t_i, x_i))``.

    N steps cost 2N NFE.
    """
    grid = check_grid(ts)
    x = x0
    for i in range(len(grid) - 1):
        t, h = grid[i], grid[i + 1] - grid[i]
        half = 0.5 * h
        v = field(t, x)
        x = x + h * field(t + half, x + half * v)
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x


def rk4(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
) -> X:
    """Classical fourth-order Runge-Kutta.

    ``k1 = v(t, x)``, ``k2 = v(t + h/2, x + h/2 k1)``, ``k3 = v(t + h/2, x + h/2 k2)``,
    ``k4 = v(t + h, x + h k3)``, ``x_{i+1} = x + h (k1 + 2 k2 + 2 k3 + k4) / 6``.
    N steps cost 4N NFE.
    """
    grid = check_grid(ts)
    x = x0
    for i in range(len(grid) - 1):
        t, t_next = grid[i], grid[i + 1]
        h = t_next - t
        half = 0.5 * h
        k1 = field(t, x)
        k2 = field(t + half, x + half * k1)
        k3 = field(t + half, x + half * k2)
        k4 = field(t_next, x + h * k3)
        x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        if callback is not None:
            callback(i + 1, t_next, x)
    return x
