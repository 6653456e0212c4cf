r"""Velocity fields with closed-form trajectories, for convergence-order tests.

Each has ``exact(t1, x0, t0)``, the exact state at ``t1`` of the solution through
``x0`` at ``t0`` (either time direction):

- :class:`LinearFlow`:            ``v = A x``,           ``x(t1) = expm(A (t1 - t0)) x0``
- :class:`TimeScaledLinearFlow`:  ``v = a(t) A x``,      ``x(t1) = expm(A (F(t1) - F(t0))) x0``, ``F' = a``
- :class:`PolynomialTimeFlow`:    ``v = sum_j c_j t^j``, ``x(t1) = x0 + P(t1) - P(t0)``, ``P = sum_j c_j t^(j+1)/(j+1)``
- :class:`ExponentialTimeFlow`:   ``v = exp(r t)``,      ``x(t1) = x0 + (exp(r t1) - exp(r t0)) / r``
- :class:`RotationFlow`:          ``v = omega (-x_2, x_1)``, ``x(t1) = R(omega (t1 - t0)) x0``

The time-only fields (polynomial, exponential) return the same value in every
coordinate and accept ``x`` of any width. ``LinearFlow``/``TimeScaledLinearFlow``
``exact`` need scalar times (one matrix exponential); the others also accept
per-sample times of the batch shape.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import scipy.linalg

from .. import _backend as B
from .._backend import Array, Ops, batch_time
from ._base import TRAJECTORY, VELOCITY, Flow

__all__ = [
    "LinearFlow",
    "TimeScaledLinearFlow",
    "PolynomialTimeFlow",
    "ExponentialTimeFlow",
    "RotationFlow",
]

_CLOSED = frozenset({VELOCITY, TRAJECTORY})


def _scalar_time(name: str, t: Any) -> float:
    a = np.asarray(t.detach().cpu() if hasattr(t, "detach") else t, dtype=np.float64)
    if a.size != 1:
        raise ValueError(f"{name} must be a scalar time for this flow, got shape {a.shape}")
    return float(a.reshape(()))


def _matrix(A: Any) -> np.ndarray:
    M = np.array(A, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1]:
        raise ValueError(f"A must be a square matrix, got shape {M.shape}")
    M.setflags(write=False)
    return M


class LinearFlow(Flow):
    """``dx/dt = A x`` (rows of ``x`` are states); exact ``x(t1) = expm(A (t1 - t0)) x0``."""

    truth = _CLOSED

    def __init__(self, A: Any, name: str = "linear") -> None:
        self.A = _matrix(A)
        self.dim, self.name = self.A.shape[0], name

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:
        return x @ ops.asarray(self.A).T

    def _propagator(self, t1: float, t0: float) -> np.ndarray:
        return scipy.linalg.expm(self.A * (t1 - t0))

    def exact(self, t1: Any, x0: Array, t0: Any) -> Array:
        ops = Ops(x0)
        E = self._propagator(_scalar_time("t1", t1), _scalar_time("t0", t0))
        return ops.out(ops.asarray(x0) @ ops.asarray(E).T)


class TimeScaledLinearFlow(LinearFlow):
    """``dx/dt = a(t) A x``; exact ``x(t1) = expm(A (F(t1) - F(t0))) x0`` with ``F' = a``.

    ``scale`` is ``"cos"`` (``a = cos t``, ``F = sin t``), ``"quadratic"``
    (``a = 1 + t^2``, ``F = t + t^3/3``), or a pair ``(a, F)`` of callables; ``a``
    receives the time as a numpy array or torch tensor and ``F`` a Python float.
    """

    def __init__(
        self,
        A: Any,
        scale: str | tuple[Callable[[Any], Any], Callable[[float], float]] = "cos",
        name: str = "time-scaled-linear",
    ) -> None:
        super().__init__(A, name=name)
        if isinstance(scale, str) and scale in ("cos", "quadratic"):
            self._kind = scale
        elif isinstance(scale, tuple) and len(scale) == 2 and all(map(callable, scale)):
            self._kind = "custom"
            self._a, self._F = scale
        else:
            raise ValueError(f"scale must be 'cos', 'quadratic' or (a, F) callables, got {scale!r}")

    def a(self, ops: Ops, t: Array) -> Array:
        """The scalar factor ``a(t)``."""
        if self._kind == "cos":
            return B.cos(t)
        if self._kind == "quadratic":
            return 1.0 + t * t
        return ops.asarray(self._a(t))

    def F(self, t: float) -> float:
        """The antiderivative ``F(t)`` of ``a``."""
        if self._kind == "cos":
            return float(np.sin(t))
        if self._kind == "quadratic":
            return t + t**3 / 3.0
        return float(self._F(t))

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:
        return self.a(ops, t) * (x @ ops.asarray(self.A).T)

    def _propagator(self, t1: float, t0: float) -> np.ndarray:
        return scipy.linalg.expm(self.A * (self.F(t1) - self.F(t0)))


class PolynomialTimeFlow(Flow):
    """``dx/dt = p(t) = sum_j c_j t^j`` in every coordinate (independent of ``x``).

    Exact ``x(t1) = x0 + P(t1) - P(t0)`` with ``P(t) = sum_j c_j t^(j+1) / (j+1)``.
    A quadrature rule of degree of exactness ``q`` integrates it exactly when
    ``deg p <= q``, which makes it a sharp probe of quadrature order.
    """

    truth = _CLOSED
    _any_width = True

    def __init__(self, coeffs: Any, dim: int = 2, name: str = "polynomial-time") -> None:
        c = np.array(coeffs, dtype=np.float64).reshape(-1)
        if c.size == 0 or not np.all(np.isfinite(c)):
            raise ValueError("coeffs must be a non-empty finite sequence")
        c.setflags(write=False)
        self.coeffs, self.dim, self.name = c, int(dim), name

    def _poly(self, t: Array, c: np.ndarray) -> Array:
        out = 0.0 * t + c[-1]
        for cj in c[-2::-1]:  # Horner
            out = out * t + cj
        return out

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:
        return self._poly(t, self.coeffs) * ops.ones(tuple(x.shape))

    def antiderivative(self, ops: Ops, t: Array) -> Array:
        """``P(t) = sum_j c_j t^(j+1) / (j+1)`` (with ``P(0) = 0``)."""
        ci = np.concatenate([[0.0], self.coeffs / np.arange(1, self.coeffs.size + 1)])
        return self._poly(t, ci)

    def exact(self, t1: Any, x0: Array, t0: Any) -> Array:
        ops = Ops(x0)
        x = ops.asarray(x0)
        a1, b0 = batch_time(ops, t1, x), batch_time(ops, t0, x)
        return ops.out(x + (self.antiderivative(ops, a1) - self.antiderivative(ops, b0)))


class ExponentialTimeFlow(Flow):
    """``dx/dt = exp(r t)`` in every coordinate; exact
    ``x(t1) = x0 + (exp(r t1) - exp(r t0)) / r`` (``x0 + t1 - t0`` when ``r = 0``).
    No polynomial rule integrates it exactly, so every order shows."""

    truth = _CLOSED
    _any_width = True

    def __init__(self, rate: float = 1.0, dim: int = 2, name: str = "exponential-time") -> None:
        self.rate, self.dim, self.name = float(rate), int(dim), name

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:
        return B.exp(self.rate * t) * ops.ones(tuple(x.shape))

    def exact(self, t1: Any, x0: Array, t0: Any) -> Array:
        ops = Ops(x0)
        x = ops.asarray(x0)
        a1, b0 = batch_time(ops, t1, x), batch_time(ops, t0, x)
        if self.rate == 0.0:
            return ops.out(x + (a1 - b0))
        return ops.out(x + (B.exp(self.rate * a1) - B.exp(self.rate * b0)) / self.rate)


class RotationFlow(Flow):
    """2-D rotation ``dx/dt = omega (-x_2, x_1)``; exact
    ``x(t1) = [[cos th, -sin th], [sin th, cos th]] x0`` with ``th = omega (t1 - t0)``."""

    truth = _CLOSED

    def __init__(self, omega: float = 1.0, name: str = "rotation") -> None:
        self.omega, self.dim, self.name = float(omega), 2, name

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:
        return self.omega * B.stack([-x[..., 1], x[..., 0]], axis=-1)

    def exact(self, t1: Any, x0: Array, t0: Any) -> Array:
        ops = Ops(x0)
        x = ops.asarray(x0)
        th = self.omega * (batch_time(ops, t1, x) - batch_time(ops, t0, x))
        c, s = B.cos(th), B.sin(th)
        if th.ndim > 0:
            c, s = c[..., 0], s[..., 0]
        return ops.out(B.stack([c * x[..., 0] - s * x[..., 1], s * x[..., 0] + c * x[..., 1]], -1))
