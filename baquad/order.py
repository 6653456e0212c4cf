"""Convergence-order analysis.

Empirical part
--------------
A one-step method of order ``p`` has a global error that behaves like

    e(h) ~= C * |h|**p        as |h| -> 0,

so ``log e = log C + p log |h|`` is a straight line in log-log coordinates.
:func:`fit_order` fits that line by ordinary least squares and returns the slope
(the observed order), the intercept (``log C``) and the RMS deviation of the points
from the line (a quick check that the data really are in the asymptotic regime).

Nothing is dropped silently: any non-positive or non-finite error or step size is
an error, because a zero error usually means the test problem is solved exactly
by the method and the fit would be meaningless.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["OrderFit", "fit_order"]


@dataclass(frozen=True)
class OrderFit:
    """Result of a log-log least-squares fit ``log e = intercept + order * log h``.

    Attributes:
        order: least-squares slope of ``log(error)`` against ``log(step size)``.
        intercept: ``log C`` in ``e = C h**order`` (natural logarithm).
        residual: root-mean-square deviation of ``log(error)`` from the fitted line
            (natural-log units; 0 for exact power-law data).
        n_points: number of (h, e) pairs used.
    """

    order: float
    intercept: float
    residual: float
    n_points: int

    def predict(self, step_size: float) -> float:
        """Error predicted by the fit at ``step_size``: ``exp(intercept) * |h|**order``."""
        return math.exp(self.intercept + self.order * math.log(abs(step_size)))


def _as_positive_finite(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    bad = ~np.isfinite(arr) | (arr <= 0)
    if np.any(bad):
        idx = np.flatnonzero(bad).tolist()
        raise ValueError(
            f"{name} must all be positive and finite; bad entries at indices {idx}: "
            f"{arr[bad].tolist()}"
        )
    return arr


def fit_order(
    step_sizes: Sequence[float] | np.ndarray, errors: Sequence[float] | np.ndarray
) -> OrderFit:
    """Fit the empirical convergence order ``p`` from ``errors ~= C * step_sizes**p``.

    With ``X = log h`` and ``Y = log e`` the least-squares slope is

        p = sum((X - mean X)(Y - mean Y)) / sum((X - mean X)**2),

    the intercept ``log C = mean Y - p mean X``, and the residual is
    ``sqrt(mean((Y - log C - p X)**2))``.

    Step sizes may be given with either sign (generation runs with negative steps);
    their absolute value is used. Errors must be positive and finite.

    Args:
        step_sizes: step sizes ``h`` (at least 2 distinct magnitudes).
        errors: errors ``e`` at those step sizes, same length.

    Returns:
        An :class:`OrderFit`.

    Raises:
        ValueError: fewer than 2 points, mismatched lengths, a zero/non-finite step
            size, a non-positive/non-finite error, or all step sizes equal.
    """
    h_raw = np.asarray(step_sizes, dtype=np.float64)
    if h_raw.ndim != 1:
        raise ValueError(f"step_sizes must be one-dimensional, got shape {h_raw.shape}")
    h = _as_positive_finite("step_sizes (absolute values)", np.abs(h_raw))
    e = _as_positive_finite("errors", errors)
    if h.shape != e.shape:
        raise ValueError(
            f"step_sizes and errors must have the same length, got {h.size} and {e.size}"
        )
    if h.size < 2:
        raise ValueError(f"fit_order needs at least 2 points, got {h.size}")
    x = np.log(h)
    y = np.log(e)
    xc = x - x.mean()
    sxx = float(np.dot(xc, xc))
    if sxx <= 0.0 or sxx < 1e-24 * max(1.0, float(np.dot(x, x))):
        raise ValueError("step_sizes must contain at least 2 distinct magnitudes")
    slope = float(np.dot(xc, y - y.mean()) / sxx)
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    rms = float(np.sqrt(np.mean(resid**2)))
    return OrderFit(order=slope, intercept=intercept, residual=rms, n_points=int(h.size))
