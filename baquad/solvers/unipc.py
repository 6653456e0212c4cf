"""Multistep UniPC (UniP predictor + UniC corrector, B(h) variants) for the linear flow path.

Convention and notation as in :mod:`baquad.solvers.dpmpp`: ``t = 1`` noise, ``t = 0`` data,
``m = x0_hat = x - t v``, ``lambda(t) = log((1 - t)/t)``, step ``t_i -> t_{i+1}`` with
``h = lambda_{i+1} - lambda_i > 0`` and ``hh = -h``.

Sources: diffusers ``UniPCMultistepScheduler`` (``use_flow_sigmas=True``,
``prediction_type="flow_prediction"``, ``predict_x0=True``), Wan2.1
``FlowUniPCMultistepScheduler`` and wl-zhao/UniPC ``uni_pc.py``; the formulas as written out in
docs/baselines.md#unipc.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, Callable, Sequence

import numpy as np

from .dpmpp import _check_order, flow_grid, lam, phi, step_orders

__all__ = ["unipc", "unipc_coefficients"]

X = Any  # numpy.ndarray or torch.Tensor
Field = Callable[[float, X], X]
Callback = Callable[[int, float, X], None]


def unipc_coefficients(
    p: int, h: float, rks: Sequence[float], variant: str
) -> tuple[float, list[float], list[float]]:
    """``(B, rho_p, rho_c)`` for one UniPC step of order ``p`` (float64, Python floats).

    ``rks`` are the ``p - 1`` history nodes ``r_k = (lambda_{i-k} - lambda_i) / h`` (negative).
    ``B = -h`` (bh1) or ``e^{-h} - 1`` (bh2).  With ``r_p = 1``, ``R[j][k] = r_k^j``
    (``j = 0..p-1``) and ``b_j = j! g_j / B``, ``g_j = hh phi_{j+1}(hh)`` (``j = 1..p``):

    - predictor weights ``rho_p`` (length ``p - 1``): solve ``R[:p-1, :p-1] rho = b[:p-1]``
      for ``p >= 3``; **0.5 hard-coded for p = 2** (diffusers/UniPC repo; the small-h limit
      of ``b_1``); empty for ``p = 1``.
    - corrector weights ``rho_c`` (length ``p``): solve ``R rho = b``; **0.5 hard-coded for
      p = 1** (diffusers/UniPC repo).  diffusers PR #11612 proposed dropping both 0.5
      short-circuits and was closed unmerged, so they are kept.
    """
    hh = -h
    if variant == "bh1":
        big_b = hh
    elif variant == "bh2":
        big_b = math.expm1(hh)
    else:
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    nodes = [float(r) for r in rks] + [1.0]
    b = [math.factorial(j) * hh * phi(j + 1, hh) / big_b for j in range(1, p + 1)]
    r_mat = np.array([[r**j for r in nodes] for j in range(p)], dtype=np.float64)
    if p == 1:
        rho_p: list[float] = []
    elif p == 2:
        rho_p = [0.5]
    else:
        rho_p = [float(v) for v in np.linalg.solve(r_mat[: p - 1, : p - 1], np.array(b[: p - 1]))]
    if p == 1:
        rho_c = [0.5]
    else:
        rho_c = [float(v) for v in np.linalg.solve(r_mat, np.array(b))]
    return big_b, rho_p, rho_c


def _step_indices(steps: Any, n: int) -> set[int]:
    """``disable_corrector`` as a set of 0-based step indices, or a ValueError naming it (a single
    int, floats such as 0.5, negative indices and non-iterables are refused). Indices at or past
    the number of steps are allowed and never apply, as in diffusers, so one list serves grids
    of any length."""
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
        raise ValueError(f"disable_corrector must be a collection of step indices (e.g. (0, 1)), got {steps!r}")
    out = set()
    for k in steps:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 0:
            raise ValueError(f"disable_corrector: {k!r} is not a step index (an integer >= 0)")
        out.add(int(k))
    return out


def unipc(
    field: Field,
    x0: X,
    ts: Sequence[float],
    *,
    callback: Callback | None = None,
    order: int = 2,
    variant: str = "bh2",
    lower_order_final: bool | str = "min",
    disable_corrector: Sequence[int] = (),
) -> X:
    """Multistep UniPC-p (data prediction); N steps cost N NFE.

    Step ``i`` of order ``p`` (from :func:`~baquad.solvers.dpmpp.step_orders`), with
    ``m0 = m_i``, ``D1_k = (m_{i-k} - m0) / r_k`` (k = 1..p-1), ``a = 1 - t_{i+1}``:

    - base (= Euler/DDIM): ``x_base = (t_{i+1}/t_i) x_i + (1 - t_{i+1}/t_i) m0``
    - UniP-p predictor: ``x^p_{i+1} = x_base - a B sum_k rho_p[k] D1_k``
    - the next step's single field call is made at the predictor output:
      ``m_{i+1} = x^p_{i+1} - t_{i+1} v(t_{i+1}, x^p_{i+1})``
    - UniC-p corrector: ``x_{i+1} = x_base - a B (sum_k rho_c[k] D1_k + rho_c[p-1] (m_{i+1} - m0))``
      with the same order ``p`` as the predictor that produced the point (diffusers passes
      ``this_order``).  ``m_{i+1}`` is kept in the history and NOT re-evaluated at the
      corrected state, so UniC costs no NFE (UniPC-p has order p + 1).

    The final point is returned uncorrected (UniPC repo: ``use_corrector=False`` at the last
    step; in diffusers the corrector of step k runs inside step k + 1), so the corrector
    would cost one more NFE there.  ``callback(i, t_i, x_i)`` receives the corrected state.

    Edge cases:
    - warm-up orders 1, 2, 3 and ``lower_order_final`` as in :func:`step_orders` (for UniPC
      diffusers itself applies ``min(order, steps left)`` unconditionally, so ``"diffusers"``
      equals ``"min"`` here); a step into t = 0 is always order 1.
    - an order-1 predictor has no ``B`` term at all.  This matters for bh1 on a final step to
      t = 0, where ``B = -h = -inf``: diffusers computes ``alpha * B * 0 = NaN`` there; here
      the last step is exactly ``x_base`` (``= m_{N-1}`` into t = 0, no NaN).
    - a start within 1e-6 of t = 1 is clamped to ``t_0 - 1e-6`` as diffusers does
      (:func:`~baquad.solvers.dpmpp.flow_grid`); otherwise ``r_k = -inf`` and the linear
      solve gives NaN.

    Args:
        order: the p of UniPC-p: 1, 2 (default, diffusers/Wan) or 3.
        variant: ``"bh2"`` (default, diffusers/Wan) with ``B = e^{-h} - 1`` or ``"bh1"``
            (UniPC repo default) with ``B = -h``.  diffusers' advice: bh1 for unconditional
            sampling under 10 steps, bh2 otherwise.
        lower_order_final: ``"min"`` (default) / ``True``, ``"diffusers"`` (same as
            ``"min"``), ``"none"`` / ``False``.
        disable_corrector: 0-based step indices ``k`` whose output point ``ts[k + 1]`` is left
            uncorrected (diffusers semantics: ``step_index - 1 not in disable_corrector``);
            diffusers recommends it for early steps under large guidance.
    """
    order = _check_order(order)
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"variant must be 'bh1' or 'bh2', got {variant!r}")
    grid = flow_grid(ts)
    n = len(grid) - 1
    skip = _step_indices(disable_corrector, n)
    orders = step_orders(n, order, lower_order_final, grid[-1] == 0.0, diffusers_last_two=False)
    lams = [lam(t) for t in grid]
    x = x0
    hist: list[X] = []  # m_{i-p+1} .. m_i, newest last
    pending = None  # (x_base, B, a, D1s, rho_c, m_i) of the step that produced x
    for i in range(n):
        t, t_next = grid[i], grid[i + 1]
        m = x - t * field(t, x)
        if pending is not None:
            x_base, big_b, a, d1s, rho_c, m_prev = pending
            if (i - 1) not in skip:
                corr = rho_c[-1] * (m - m_prev)
                for rho, d1 in zip(rho_c[:-1], d1s):
                    corr = corr + rho * d1
                x = x_base - (a * big_b) * corr
            if callback is not None:
                callback(i, t, x)
        hist = (hist + [m])[-order:]
        p = orders[i]
        ratio = t_next / t
        x_base = ratio * x + (1.0 - ratio) * m
        if t_next == 0.0:
            # Into t = 0 (always order 1): x_base = m_i exactly.  This point is the last
            # one and is never corrected, so no B (= -inf for bh1) is formed at all.
            big_b, a, d1s, rho_c = 0.0, 0.0, [], [0.5]
            x_pred = x_base
        else:
            h = lams[i + 1] - lams[i]
            a = 1.0 - t_next
            rks = [(lams[i - k] - lams[i]) / h for k in range(1, p)]
            d1s = [(hist[-1 - k] - m) * (1.0 / rks[k - 1]) for k in range(1, p)]
            big_b, rho_p, rho_c = unipc_coefficients(p, h, rks, variant)
            x_pred = x_base
            if p >= 2:  # order 1 has no B term in the predictor
                pred = rho_p[0] * d1s[0]
                for rho, d1 in zip(rho_p[1:], d1s[1:]):
                    pred = pred + rho * d1
                x_pred = x_base - (a * big_b) * pred
        pending = (x_base, big_b, a, d1s, rho_c, m)
        x = x_pred
    if callback is not None:
        callback(n, grid[n], x)
    return x
