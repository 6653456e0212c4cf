"""Multistep DPM-Solver++ (data prediction) for the linear flow path.

Convention: ``t`` in [0, 1], ``t = 1`` noise, ``t = 0`` data, ``x_t = (1 - t) x_data + t noise``,
so ``alpha(t) = 1 - t``, ``sigma(t) = t`` and the data prediction is
``m = x0_hat(x, t) = x - t v(x, t)``.  Half-logSNR ``lambda(t) = log((1 - t) / t)``.
One step ``t_i -> t_{i+1}`` (decreasing) has ``h = lambda_{i+1} - lambda_i > 0`` and
``c_i = alpha_{i+1} (1 - e^{-h}) = 1 - t_{i+1} / t_i``.

Sources: diffusers ``DPMSolverMultistepScheduler`` (``use_flow_sigmas=True``,
``prediction_type="flow_prediction"``), SANA ``diffusion/model/dpm_solver.py`` and
LuChengTHU ``dpm_solver_pytorch.py``; the formulas as written out in
docs/baselines.md#dpm-solver.

The helpers here (grid check with the t = 1 clamp, ``lambda``, accurate ``phi_k``, the
per-step order rule) are shared with :mod:`baquad.solvers.unipc`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

__all__ = ["dpmpp", "dpmpp_2m", "dpmpp_3m", "flow_grid", "step_orders", "phi", "T1_CLAMP"]

X = Any  # numpy.ndarray or torch.Tensor
Field = Callable[[float, X], X]
Callback = Callable[[int, float, X], None]

#: A grid that starts within this distance of t = 1 starts at ``t_0 - T1_CLAMP`` instead
#: (diffusers ``UniPCMultistepScheduler.set_timesteps``: "if |sigma_0 - 1| < 1e-6:
#: sigma_0 -= 1e-6", to avoid log(alpha) = -inf).  For ``t_0 = 1`` this is 1 - 1e-6.
T1_CLAMP = 1e-6

LOWER_ORDER_FINAL_RULES = ("min", "diffusers", "none")


def flow_grid(ts: Sequence[float]) -> tuple[float, ...]:
    """Validate a flow-solver grid and apply the t = 1 clamp.

    The grid must be strictly decreasing, inside [0, 1], with >= 2 points.  If
    ``|t_0 - 1| < 1e-6`` the first point becomes ``t_0 - 1e-6`` (diffusers UniPC rule;
    for a grid starting at exactly 1 that is ``1 - 1e-6``): ``lambda(1) = -inf`` would
    otherwise make the second step's ratio ``r_0 = h_0 / h`` infinite (silently order 1 for
    DPM-Solver++, NaN from the linear solve for UniPC).  The field is then evaluated at
    the clamped time as well, as in diffusers (the solver treats ``x_0`` as the state at
    ``1 - 1e-6``; the difference is O(1e-6)).

    Raises:
        ValueError: naming ``ts`` if the grid is not a decreasing grid in [0, 1].
    """
    grid = [float(t) for t in ts]
    if len(grid) < 2:
        raise ValueError(f"ts must have at least 2 points, got {len(grid)}")
    if not all(math.isfinite(t) and 0.0 <= t <= 1.0 for t in grid):
        raise ValueError(
            f"ts must lie in [0, 1] for the flow solvers (t = 1 noise, t = 0 data), got {tuple(grid)}"
        )
    if not all(b < a for a, b in zip(grid[:-1], grid[1:])):
        raise ValueError(
            "ts must be strictly decreasing for the flow solvers (DPM-Solver++, UniPC assume "
            f"generation t: 1 -> 0 on the linear path), got {tuple(grid)}"
        )
    if abs(grid[0] - 1.0) < T1_CLAMP:
        grid[0] -= T1_CLAMP
        if not grid[0] > grid[1]:
            raise ValueError(f"ts[1] must be below 1 - 1e-6 (the clamped start), got {tuple(grid)}")
    return tuple(grid)


def lam(t: float) -> float:
    """Half-logSNR ``lambda(t) = log((1 - t) / t)``; +inf at t = 0 (t = 1 is clamped before)."""
    if t == 0.0:
        return math.inf
    return math.log1p(-t) - math.log(t)


def phi(k: int, z: float) -> float:
    """``phi_k(z) = (e^z - sum_{l<k} z^l / l!) / z^k`` (``phi_0 = e^z``), accurate for small |z|.

    The closed form cancels catastrophically for small ``z`` (diffusers evaluates it through
    the recursion ``phi_{k+1} = (phi_k - 1/k!) / z`` in float32); here a Taylor series
    ``sum_n z^n / (n + k)!`` is used for ``|z| < 1`` and the recursion (from ``expm1``)
    otherwise, both in float64.
    """
    if k == 0:
        return math.exp(z)
    if abs(z) < 1.0:
        term = 1.0 / math.factorial(k)
        total = term
        n = 0
        while abs(term) > 1e-18 * abs(total):
            n += 1
            term *= z / (n + k)
            total += term
            if n > 60:
                break
        return total
    value = math.expm1(z) / z  # phi_1
    for j in range(1, k):
        value = (value - 1.0 / math.factorial(j)) / z
    return value


def step_orders(
    n_steps: int,
    order: int,
    lower_order_final: bool | str,
    ends_at_zero: bool,
    *,
    diffusers_last_two: bool = True,
) -> list[int]:
    """The order used by each of the ``n_steps`` multistep steps.

    - Warm-up (all implementations): step ``i`` (0-based) uses at most order ``i + 1``
      (diffusers ``lower_order_nums``; LuChengTHU/SANA "init the first `order` values by
      lower order multistep"), so the orders run 1, 2, 3, ...
    - ``lower_order_final`` (``True`` means ``"min"``, ``False`` means ``"none"``):
      - ``"min"``: order ``min(order, n_steps - i)``, always on: SANA ``dpm_solver.py``
        (``min(order, steps + 1 - step)``), the UniPC repo, and diffusers
        ``UniPCMultistepScheduler`` (``min(solver_order, len(timesteps) - step_index)``).
        The last step is order 1, the one before at most 2.
      - ``"diffusers"``: diffusers ``DPMSolverMultistepScheduler.step``: the last step is
        order 1 if ``n_steps < 15`` or the grid ends at t = 0 (its flow default
        ``final_sigmas_type="zero"``); the second-to-last is capped at order 2 if
        ``n_steps < 15``.  (``diffusers_last_two=False`` gives the diffusers UniPC rule,
        which equals ``"min"``.)
      - ``"none"``: full order after warm-up.
    - Whatever the rule, a step INTO t = 0 is order 1: there ``h = inf`` so ``r_0 = 0`` and
      ``D1 = inf * 0 = NaN`` for order >= 2 (diffusers issue #9007).  The order-1 step into
      0 gives exactly ``x_N = x0_hat(x_{N-1}, t_{N-1})`` (= an Euler step).
    """
    if lower_order_final is True:
        rule = "min"
    elif lower_order_final is False:
        rule = "none"
    else:
        rule = lower_order_final
    if rule not in LOWER_ORDER_FINAL_RULES:
        raise ValueError(
            f"lower_order_final must be True, False or one of {LOWER_ORDER_FINAL_RULES}, got {lower_order_final!r}"
        )
    if rule == "diffusers" and not diffusers_last_two:
        rule = "min"
    orders = []
    for i in range(n_steps):
        p = min(order, i + 1)
        if rule == "min":
            p = min(p, n_steps - i)
        elif rule == "diffusers":
            if i == n_steps - 1 and (n_steps < 15 or ends_at_zero):
                p = 1
            elif i == n_steps - 2 and n_steps < 15:
                p = min(p, 2)
        if i == n_steps - 1 and ends_at_zero:
            p = 1
        orders.append(p)
    return orders


def _check_order(order: int, allowed: tuple[int, ...] = (1, 2, 3)) -> int:
    """``order`` as an int, or a ValueError naming the option and the allowed values (None,
    strings, floats other than whole numbers and bools included)."""
    if isinstance(order, bool) or not isinstance(order, numbers.Real) or order != int(order) or int(order) not in allowed:
        raise ValueError(f"order must be one of {allowed}, got {order!r}")
    return int(order)


def dpmpp(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
    order: int = 2,
    solver_type: str = "midpoint",
    lower_order_final: bool | str = "min",
    third_order: str = "reference",
) -> X:
    """Multistep DPM-Solver++ (1, 2M or 3M) in flow variables; N steps cost N NFE.

    One field call per step, at ``(t_i, x_i)``, giving ``m_i = x_i - t_i v``; the final
    point is never evaluated.  With ``m0 = m_i``, ``m1 = m_{i-1}``, ``m2 = m_{i-2}``,
    ``r0 = (lambda_i - lambda_{i-1}) / h``, ``r1 = (lambda_{i-1} - lambda_{i-2}) / h``,
    ``a = 1 - t_{i+1}`` and ``phi_k`` as in :func:`phi`:

    - order 1: ``x_{i+1} = (t_{i+1}/t_i) x_i + c_i m0``  (identical to Euler)
    - order 2, ``D1 = (m0 - m1) / r0``:
      - ``solver_type="midpoint"`` (diffusers default; "dpmsolver" in LuChengTHU/SANA):
        ``x_{i+1} = (t_{i+1}/t_i) x_i + c_i (m0 + D1 / 2)``
      - ``solver_type="heun"`` ("taylor" in LuChengTHU/SANA):
        ``x_{i+1} = (t_{i+1}/t_i) x_i + c_i m0 + a h phi_2(-h) D1``
    - order 3 (Taylor form only): ``D1_0 = (m0 - m1)/r0``, ``D1_1 = (m1 - m2)/r1``,
      ``D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1)``, ``D2 = (D1_0 - D1_1)/(r0 + r1)``,
      ``x_{i+1} = (t_{i+1}/t_i) x_i + c_i m0 + a h phi_2(-h) D1 + w a h phi_3(-h) D2``
      with ``w = 1`` (``third_order="reference"``).  (``h phi_2(-h) = (e^{-h} - 1)/h + 1``
      and ``h phi_3(-h) = 1/2 - phi_2(-h)`` are diffusers' coefficients, evaluated here
      without cancellation.)  ``solver_type`` chooses the form of the order-2 warm-up /
      lower-order steps of 3M, as in diffusers.

    Note on 3M: on a smooth ``m(lambda)``, ``D2 = h^2 m''/2 + O(h^3)`` while the exact
    integral's second-order term is ``a h^3 phi_3(-h) m''``, i.e. the Taylor-consistent
    weight is ``w = 2``.  The published multistep update (diffusers
    ``multistep_dpm_solver_third_order_update``, LuChengTHU ``multistep_dpm_solver_third_update``,
    SANA) uses ``w = 1``, so its local error is O(h^3) and its measured global order is 2,
    not 3 (checked in ``tests/test_baselines_order.py``; the one-step quadrature of a
    quadratic ``m`` is exact only with ``w = 2``).  ``third_order="reference"`` (default)
    keeps the published update so the baseline matches diffusers step for step;
    ``third_order="consistent"`` uses ``w = 2`` and is third order.

    Args:
        order: 1, 2 (default, as diffusers and SANA) or 3.
        solver_type: ``"midpoint"`` (default) or ``"heun"``.
        lower_order_final: ``"min"`` (default; SANA / UniPC-repo rule, the fairness
            checklist's recommendation), ``"diffusers"`` (this scheduler's rule in diffusers),
            ``"none"``; ``True``/``False`` mean ``"min"``/``"none"``.  See :func:`step_orders`,
            which also documents the warm-up (orders 1, 2, 3, ...) and why the step into
            t = 0 is always order 1.
        third_order: ``"reference"`` (default, the diffusers/LuChengTHU/SANA 3M update) or
            ``"consistent"`` (D2 weight doubled; see the note above).  Only order-3 steps.

    The grid must be decreasing in [0, 1]; a start within 1e-6 of t = 1 is clamped to
    ``t_0 - 1e-6`` (see :func:`flow_grid`).
    """
    order = _check_order(order)
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    if third_order not in ("reference", "consistent"):
        raise ValueError(f"third_order must be 'reference' or 'consistent', got {third_order!r}")
    w2 = 1.0 if third_order == "reference" else 2.0
    grid = flow_grid(ts)
    n = len(grid) - 1
    orders = step_orders(n, order, lower_order_final, grid[-1] == 0.0)
    lams = [lam(t) for t in grid]
    x = x0
    hist: list[X] = []  # data predictions m_{i-2}, m_{i-1}, m_i (newest last)
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        m = x - t * field(t, x)
        hist = (hist + [m])[-order:]
        p = orders[i]
        ratio = t_next / t
        c = 1.0 - ratio
        if p == 1:
            x = ratio * x + c * m
        else:
            h = lams[i + 1] - lams[i]
            a = 1.0 - t_next
            r0 = (lams[i] - lams[i - 1]) / h
            d1_0 = (m - hist[-2]) * (1.0 / r0)
            if p == 2:
                if solver_type == "midpoint":
                    x = ratio * x + c * m + (0.5 * c) * d1_0
                else:
                    x = ratio * x + c * m + (a * h * phi(2, -h)) * d1_0
            else:
                r1 = (lams[i - 1] - lams[i - 2]) / h
                d1_1 = (hist[-2] - hist[-3]) * (1.0 / r1)
                diff = d1_0 - d1_1
                d1 = d1_0 + (r0 / (r0 + r1)) * diff
                d2 = (1.0 / (r0 + r1)) * diff
                x = ratio * x + c * m + (a * h * phi(2, -h)) * d1 + (w2 * a * h * phi(3, -h)) * d2
        if callback is not None:
            callback(i + 1, grid[i + 1], x)
    return x


def dpmpp_2m(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
    solver_type: str = "midpoint",
    lower_order_final: bool | str = "min",
) -> X:
    """DPM-Solver++(2M): :func:`dpmpp` with ``order=2`` (N steps = N NFE)."""
    return dpmpp(field, x0, ts, callback=callback, order=2, solver_type=solver_type,
                 lower_order_final=lower_order_final)


def dpmpp_3m(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
    solver_type: str = "midpoint",
    lower_order_final: bool | str = "min",
    third_order: str = "reference",
) -> X:
    """DPM-Solver++(3M): :func:`dpmpp` with ``order=3`` (N steps = N NFE)."""
    return dpmpp(field, x0, ts, callback=callback, order=3, solver_type=solver_type,
                 lower_order_final=lower_order_final, third_order=third_order)
