"""Tight reference solutions of ``dx/dt = v(t, x)`` with scipy's DOP853.

The whole batch is integrated as ONE flattened system: with ``x`` of shape ``S`` the
solver state is ``y = x.reshape(-1)`` and ``dy/dt = v(t, y.reshape(S)).reshape(-1)``.
DOP853 (explicit Runge-Kutta of order 8 with dense output of order 7) is run with
``t_eval = ts`` so every requested time is returned from the continuous extension.
Because the error control acts on the whole batch, the step size adapts to the
hardest sample; that is the price of one vectorised field call per stage.

This is the truth behind the oracle perception and every benchmark, so nothing is taken on
trust: the arguments are checked before the first call, and every field call must return an
array of the state's type, shape, call dtype and device with finite entries, or the solve stops
with an error naming the call and its time (a wrongly shaped output would otherwise be
broadcast by the flattened system into a wrong "reference").
"""

from __future__ import annotations

import contextlib
import math
from numbers import Real
from typing import Any, Callable

import numpy as np
from scipy.integrate import solve_ivp

from ._backend import all_finite, describe, dtype_kind, is_array, is_torch, same_array_kind, to_numpy
from ._convention import float_time_error
from .grids import check_grid

__all__ = ["reference_solve"]

Array = Any  # numpy.ndarray or torch.Tensor

# DOP853 silently raises an rtol below 100 machine epsilons to that floor; refuse it instead.
_MIN_RTOL = 100 * float(np.finfo(np.float64).eps)


class _FieldError(Exception):
    """A bad field output, raised inside scipy's step loop and re-raised as ValueError outside."""


def _check_x0(x0: Any, field_dtype: str) -> None:
    if not is_array(x0):
        raise TypeError(f"x0: expected a numpy array or a torch tensor, got {type(x0).__name__}; wrap it with numpy.asarray")
    kind = dtype_kind(x0)
    if kind not in ("float", "int"):
        raise TypeError(
            f"x0: has dtype {x0.dtype}; reference_solve integrates real states only. "
            "Pass a real floating array (a complex state would lose its imaginary part)."
        )
    if kind == "int" and field_dtype == "input":
        raise TypeError(
            f"x0: has the integer dtype {x0.dtype}, so field_dtype='input' would call the field on "
            "states truncated to integers; cast x0 to a floating dtype or use field_dtype='float64'"
        )
    if not is_torch(x0) and x0.ndim == 0:
        raise ValueError(
            "x0: a 0-d numpy array turns into a numpy scalar under arithmetic, so the field could "
            "not return an array like it; pass it with one dimension, x0.reshape(1)"
        )
    if not all_finite(x0):
        raise ValueError("x0: contains NaN or inf; the initial state must be finite")


def _check_tolerance(name: str, value: Any, minimum: float, strict: bool) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > minimum if strict else value >= minimum)
    if not ok:
        bound = "positive" if minimum == 0 and strict else ">= 0" if minimum == 0 else f">= {minimum:.3g}"
        raise ValueError(f"{name}: must be a finite real number {bound}, got {value!r}")
    return float(value)


def _no_grad(torch_state: bool) -> Any:
    """``torch.no_grad()`` for a torch state (torch imported only then), else a null context."""
    if not torch_state:
        return contextlib.nullcontext()
    import torch

    return torch.no_grad()


class _CheckedField:
    """``fun(t, y)`` for scipy: calls ``vfield`` on the unflattened state and checks its output."""

    def __init__(self, vfield: Callable, x0: Array, field_dtype: str):
        self.vfield = vfield
        self.shape = tuple(x0.shape)
        self.torch = is_torch(x0)
        self.calls = 0
        if self.torch:
            import torch

            self.dtype = torch.float64 if field_dtype == "float64" else x0.dtype
            self.device = x0.device
        else:
            self.dtype = np.dtype(np.float64) if field_dtype == "float64" else np.asarray(x0).dtype

    def state(self, y: np.ndarray) -> Array:
        """The flat float64 scipy state as the array the field is called with."""
        if self.torch:
            import torch

            return torch.from_numpy(y.reshape(self.shape)).to(dtype=self.dtype, device=self.device)
        return y.reshape(self.shape).astype(self.dtype, copy=False)

    def __call__(self, t: float, y: np.ndarray) -> np.ndarray:
        self.calls += 1
        x = self.state(y)
        try:
            with _no_grad(self.torch):
                v = self.vfield(float(t), x)
        except (AttributeError, TypeError) as err:
            if self.calls == 1:
                raise float_time_error(err, float(t), "reference_solve") from err
            raise
        if not same_array_kind(v, x, self.dtype):
            raise _FieldError(
                f"{self._where(t)} returned {describe(v)}{' on ' + str(v.device) if is_torch(v) else ''}; expected "
                f"{describe(x)}{' on ' + str(x.device) if self.torch else ''}, the type, shape, dtype and "
                "device of the state it was called with. Return dx/dt with the shape of x (pass "
                "field_dtype='input' to call the field in x0's own dtype)."
            )
        if not all_finite(v):
            raise _FieldError(f"{self._where(t)} returned non-finite values (NaN or inf); the reference needs a finite field")
        return to_numpy(v).reshape(-1)

    def _where(self, t: float) -> str:
        return f"vfield: call {self.calls} (t = {float(t)!r}) of the reference integration"


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
        vfield: velocity field called as ``vfield(t, x)`` with ``t`` a Python float (as
            ``baquad.solve`` calls it) and ``x`` a numpy array for a numpy ``x0``, a tensor on
            ``x0``'s device for a torch ``x0`` (called under ``torch.no_grad()``). It must return
            an array of the same type, shape, dtype and device as the ``x`` it gets, with
            finite entries. A field written for tensor times (torchdiffeq's convention) whose
            first call fails with an AttributeError or TypeError gets an error naming the fix,
            ``lambda t, x: f(torch.tensor(t), x)``.
        x0: initial state at ``ts[0]``, any shape (normally ``(B, d)``), numpy or torch, of a
            real floating dtype (an integer state is integrated in float64), finite.
        ts: strictly monotone times (increasing or decreasing), length >= 1.
        rtol: DOP853 relative tolerance, finite and at least 100 machine epsilons (2.2e-14).
        atol: DOP853 absolute tolerance, finite and >= 0.
        field_dtype: ``"float64"`` (default) calls the field in float64; ``"input"`` in
            ``x0``'s own dtype (for fields that only accept, e.g., float32).

    Returns:
        ``(len(ts), *x0.shape)`` states, the same array type, dtype and device as
        ``x0`` (float64 for an integer ``x0``); entry 0 is ``x0``.

    Raises:
        TypeError: ``vfield`` not callable; ``x0`` not an array or not of a real dtype.
        ValueError: ``ts`` not 1-D, empty, non-finite or not strictly monotone; bad ``rtol``,
            ``atol`` or ``field_dtype``; non-finite ``x0``; a field call that returned the wrong
            type, shape, dtype or device, or non-finite values (the message names the call and
            its time); the integration failed or produced non-finite states.
    """
    if not callable(vfield):
        raise TypeError(f"vfield: expected a callable vfield(t, x), got {type(vfield).__name__}")
    if not (isinstance(field_dtype, str) and field_dtype in ("float64", "input")):
        raise ValueError(f"field_dtype must be 'float64' or 'input', got {field_dtype!r}")
    rtol = _check_tolerance("rtol", rtol, _MIN_RTOL, strict=False)
    atol = _check_tolerance("atol", atol, 0.0, strict=False)
    t_arr = np.asarray(check_grid(ts, "ts", min_points=1))
    _check_x0(x0, field_dtype)

    torch_in = is_torch(x0)
    shape = tuple(x0.shape)
    y0 = to_numpy(x0).reshape(-1)
    fun = _CheckedField(vfield, x0, field_dtype)

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
        except _FieldError as e:
            raise ValueError(str(e)) from None
        if not sol.success or sol.y.shape[1] != t_arr.size:
            raise ValueError(f"reference_solve: integration failed: {sol.message}")
        out = sol.y.T
        if not np.all(np.isfinite(out)):
            raise ValueError("reference_solve: integration produced non-finite states")
        out[0] = y0  # exact initial state
    out = out.reshape((t_arr.size,) + shape)
    if torch_in:
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(dtype=x0.dtype if x0.dtype.is_floating_point else torch.float64, device=x0.device)
    in_dtype = np.asarray(x0).dtype
    return out.astype(in_dtype if np.issubdtype(in_dtype, np.floating) else np.float64)
