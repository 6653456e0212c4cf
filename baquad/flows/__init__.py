"""Analytic flows: velocity fields with exact truth, for testing and benchmarking solvers.

Time convention: t in [0, 1], t = 1 is noise, t = 0 is data; the linear path is
``x_t = (1 - t) x_data + t z`` with ``z ~ N(0, I)`` and ``dx/dt = z - x_data``.
Generation integrates t: 1 -> 0.

Every flow is a velocity field callable as ``flow(t, x)`` (scipy/torchdiffeq order) on
numpy arrays or torch tensors of shape ``(B, dim)``; ``t`` is a number, a 0-dim array or
a per-sample array of shape ``(B,)``. ``flow.truth`` names the exact truths it has:
``"velocity"`` (all), ``"trajectory"`` (``flow.exact(t1, x0, t0)``), ``"density"``
(``flow.log_prob(x)``), ``"samples"`` (``flow.sample_data(n, rng)``).

Presets (``get_flow(name)``):

=========================  =====================================================
gmm-ring2d                 8 modes on a radius-2 circle, std 0.1 (density, samples)
gmm-32d                    d = 32, K = 10 seeded mixture (density, samples)
gmm-64d                    d = 64, K = 16 seeded mixture (density, samples)
gaussian-2d                N((1, -0.5), diag(0.25, 2.25)) (all four truths)
linear-2d                  v = A x, A = [[-0.5, 1], [-2, -0.3]] (trajectory)
time-scaled-linear-2d      v = cos(t) A x, same A (trajectory)
polynomial-time-2d         v = 1 - 2t + 3t^2 + t^3/2 - 4t^4 (trajectory)
exponential-time-2d        v = exp(3 t) (trajectory)
rotation-2d                rotation with omega = 3 (trajectory)
=========================  =====================================================
"""

from __future__ import annotations

from typing import Any, Callable

from .._backend import is_torch
from ._base import DENSITY, SAMPLES, TRAJECTORY, VELOCITY, Flow
from .closed_form import (
    ExponentialTimeFlow,
    LinearFlow,
    PolynomialTimeFlow,
    RotationFlow,
    TimeScaledLinearFlow,
)
from .gmm import GaussianFlow, GaussianMixtureFlow, gaussian_2d, gmm_32d, gmm_64d, gmm_ring2d

__all__ = [
    "Flow",
    "GaussianMixtureFlow",
    "GaussianFlow",
    "LinearFlow",
    "TimeScaledLinearFlow",
    "PolynomialTimeFlow",
    "ExponentialTimeFlow",
    "RotationFlow",
    "gmm_ring2d",
    "gmm_32d",
    "gmm_64d",
    "gaussian_2d",
    "get_flow",
    "FLOW_NAMES",
    "is_torch",
    "VELOCITY",
    "TRAJECTORY",
    "DENSITY",
    "SAMPLES",
]

_A2 = [[-0.5, 1.0], [-2.0, -0.3]]

_PRESETS: dict[str, Callable[..., Flow]] = {
    "gmm-ring2d": gmm_ring2d,
    "gmm-32d": gmm_32d,
    "gmm-64d": gmm_64d,
    "gaussian-2d": gaussian_2d,
    "linear-2d": lambda: LinearFlow(_A2, name="linear-2d"),
    "time-scaled-linear-2d": lambda: TimeScaledLinearFlow(_A2, "cos", name="time-scaled-linear-2d"),
    "polynomial-time-2d": lambda: PolynomialTimeFlow(
        [1.0, -2.0, 3.0, 0.5, -4.0], dim=2, name="polynomial-time-2d"
    ),
    "exponential-time-2d": lambda: ExponentialTimeFlow(3.0, dim=2, name="exponential-time-2d"),
    "rotation-2d": lambda: RotationFlow(3.0, name="rotation-2d"),
}

FLOW_NAMES: tuple[str, ...] = tuple(_PRESETS)


def get_flow(name: str, **kwargs: Any) -> Flow:
    """Build the preset flow ``name`` (see the module docstring); ``kwargs`` (e.g.
    ``seed=1`` for the mixtures) go to the preset's factory.

    Raises:
        ValueError: unknown name (the message lists the valid names).
    """
    try:
        factory = _PRESETS[name]
    except KeyError:
        raise ValueError(
            f"unknown flow {name!r}; valid names: {', '.join(FLOW_NAMES)}"
        ) from None
    return factory(**kwargs)
