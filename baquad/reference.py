"""Tight reference solutions of ``dx/dt = v(t, x)`` with scipy's DOP853.

The whole batch is integrated as ONE flattened system: with ``x`` of shape ``S`` the
solver state is ``y = x.reshape(-1)`` and ``dy/dt = v(t, y.reshape(S)).reshape(-1)``.
DOP853 (explicit Runge-Kutta of order 8 with dense output of order 7) is run with
``t_eval = ts`` so every requested time is returned from the continuous extension.
Because the error control acts on the whole batch, the step size adapts to the
hardest sample; that is the price of one vectorised field call per stage.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from scipy.integrate import solve_ivp

from ._backend import is_torch, to_numpy

__all__ = ["reference_solve"]

Array = Any  # numpy.ndarray or torch.Tensor


class _NonFinite(Exception):
    pass


def _checked(v: np.ndarray, t: float) -> np.ndarray:
    # A NaN velocity makes DOP853's error norm NaN, and its step-size loop never ends.
    if not np.all(np.isfinite(v)):
        raise _NonFinite(f"vfield returned non-finite values at t = {float(t)!r}")
    return v


def reference_solve(
    vfield: Callable[[Any, Array], Array],
    x0: Array,
    ts: Any,
    rtol: float = 1e-10,
    atol: float = 1e-10,
    *,
    field_dtype: str = "float64",
) -> Array:
    """Integrate ``dx/dt = vfield(t, x)`` from ``x0`` at ``ts[0]`` and return the states
    at every time of ``ts``.

    Args:
        vfield: velocity field called as ``vfield(t, x)``. For a numpy ``x0`` it gets a
            numpy array and a Python float ``t``; for a torch ``x0`` it gets a tensor on
            ``x0``'s device and a 0-dim tensor ``t`` (torchdiffeq convention).
        x0: initial state at ``ts[0]``, any shape (normally ``(B, d)``), numpy or torch.
        ts: strictly monotone times (increasing or decreasing), length >= 1.
        rtol, atol: DOP853 tolerances.
        field_dtype: ``"float64"`` (default) calls the field in float64; ``"input"`` in
            ``x0``'s own dtype (for fields that only accept, e.g., float32).

    Returns:
        ``(len(ts), *x0.shape)`` states, the same array type, dtype and device as
        ``x0``; entry 0 is ``x0``.

    Raises:
        ValueError: ``ts`` not 1-D, empty, non-finite or not strictly monotone; bad
            ``field_dtype``; the integration failed or produced non-finite states.
    """
    if field_dtype not in ("float64", "input"):
        raise ValueError(f"field_dtype must be 'float64' or 'input', got {field_dtype!r}")
    t_arr = to_numpy(ts)
    if t_arr.ndim != 1 or t_arr.size == 0:
        raise ValueError(f"ts must be a non-empty 1-D sequence of times, got shape {t_arr.shape}")
    if not np.all(np.isfinite(t_arr)):
        raise ValueError(f"ts must be finite, got {t_arr.tolist()}")
    dt = np.diff(t_arr)
    if dt.size and not (np.all(dt > 0) or np.all(dt < 0)):
        raise ValueError(f"ts must be strictly monotone (increasing or decreasing), got {t_arr.tolist()}")

    torch_in = is_torch(x0)
    shape = tuple(x0.shape)
    y0 = to_numpy(x0).reshape(-1)

    if torch_in:
        import torch

        call_dtype = torch.float64 if field_dtype == "float64" else x0.dtype
        device = x0.device

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(y.reshape(shape)).to(dtype=call_dtype, device=device)
            tt = torch.tensor(t, dtype=call_dtype, device=device)
            with torch.no_grad():
                v = vfield(tt, x)
            return _checked(to_numpy(v).reshape(-1), t)

    else:
        call_np = np.float64 if field_dtype == "float64" else np.asarray(x0).dtype

        def fun(t: float, y: np.ndarray) -> np.ndarray:
            v = vfield(float(t), y.reshape(shape).astype(call_np, copy=False))
            return _checked(np.asarray(v, dtype=np.float64).reshape(-1), t)

    if t_arr.size == 1:
        out = y0[None, :]
    else:
        try:
            sol = solve_ivp(
                fun,
                (float(t_arr[0]), float(t_arr[-1])),
                y0,
                method="DOP853",
                t_eval=t_arr,
                rtol=rtol,
                atol=atol,
            )
        except _NonFinite as e:
            raise ValueError(f"reference_solve: integration failed: {e}") from None
        if not sol.success or sol.y.shape[1] != t_arr.size:
            raise ValueError(f"reference_solve: integration failed: {sol.message}")
        out = sol.y.T
        if not np.all(np.isfinite(out)):
            raise ValueError("reference_solve: integration produced non-finite states")
        out[0] = y0  # exact initial state
    out = out.reshape((t_arr.size,) + shape)
    if torch_in:
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=x0.dtype, device=x0.device)
    in_dtype = np.asarray(x0).dtype
    return out.astype(in_dtype if np.issubdtype(in_dtype, np.floating) else np.float64)
