"""Base class shared by the analytic flows."""

from __future__ import annotations

from typing import Any

from .._backend import Array, Ops, batch_time

# Names of the kinds of exact truth a flow can offer (``Flow.truth``).
VELOCITY = "velocity"  # the field v(t, x) is exact (closed form), for every flow here
TRAJECTORY = "trajectory"  # exact(t1, x0, t0) gives the exact ODE solution
DENSITY = "density"  # log_prob(x) is the exact log-density of the data distribution
SAMPLES = "samples"  # sample_data(n, rng) draws exact samples of the data distribution


class Flow:
    """An analytic velocity field ``dx/dt = v(t, x)``, callable as ``flow(t, x)``.

    ``x`` has shape ``(*batch, dim)`` (normally ``(B, dim)``) and is a numpy array or a
    torch tensor; the result has the same type, shape, dtype and device. ``t`` is a
    Python number, a 0-dim array/tensor, or a per-sample array/tensor of shape
    ``batch``.

    Attributes:
        name: short identifier (the registry name for presets).
        dim: state dimension.
        truth: which exact truths the flow has, a subset of
            ``{"velocity", "trajectory", "density", "samples"}``.
    """

    name: str = "flow"
    dim: int = 0
    truth: frozenset[str] = frozenset({VELOCITY})
    # Time-only fields broadcast to any x; the others need x.shape[-1] == dim.
    _any_width: bool = False

    def __call__(self, t: Any, x: Array) -> Array:
        ops = Ops(x)
        xa = ops.asarray(x)
        if xa.ndim < 1 or (not self._any_width and xa.shape[-1] != self.dim):
            raise ValueError(
                f"{self.name}: x must have shape (..., {self.dim}), got {tuple(xa.shape)}"
            )
        tb = batch_time(ops, t, xa)
        return ops.out(self._velocity(ops, tb, xa))

    def velocity(self, t: Any, x: Array) -> Array:
        """Same as ``flow(t, x)``."""
        return self(t, x)

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:  # pragma: no cover
        raise NotImplementedError

    def exact(self, t1: Any, x0: Array, t0: Any) -> Array:
        """Exact state at time ``t1`` of the trajectory through ``x0`` at time ``t0``."""
        raise NotImplementedError(f"{self.name} has no closed-form trajectories")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} dim={self.dim}>"
