r"""Gaussian-mixture data distributions and their exact flow-matching velocity.

Path (t = 1 noise, t = 0 data): ``x_t = (1 - t) x_data + t z`` with ``z ~ N(0, I)``
independent of ``x_data``; ``dx/dt = z - x_data`` and the marginal field is
``v(x, t) = E[z - x_data | x_t = x]``.

Data: ``x_data ~ sum_k pi_k N(mu_k, diag(s_k^2))``. Write ``a = 1 - t``. Given the
component k, ``(x_data, z, x_t)`` are jointly Gaussian, per coordinate,

    x_t | k ~ N(a mu_k, S_k),    S_k = a^2 s_k^2 + t^2,
    Cov(x_data, x_t | k) = a s_k^2,    Cov(z, x_t | k) = t,

so the Gaussian conditional means are, with ``r_k = x - a mu_k``,

    E[x_data | x, k] = mu_k + (a s_k^2 / S_k) r_k,       E[z | x, k] = (t / S_k) r_k,
    v_k(x, t) = E[z - x_data | x, k] = ((t - a s_k^2) / S_k) r_k - mu_k.

The posterior component weights are

    w_k(x, t) = softmax_k( log pi_k + sum_j log N(x_j; a mu_kj, S_kj) ),

computed as a softmax of log-weights (log-sum-exp shift), and
``v(x, t) = sum_k w_k(x, t) v_k(x, t)``. ``S_k >= s_k^2 / (1 + s_k^2) > 0`` on
``[0, 1]``, so the field is finite for every ``t`` in ``[0, 1]`` including both ends
(``v(x, 0) = -x``, ``v(x, 1) = x - E[x_data]``) and for tiny component stds.

A single Gaussian (K = 1) also has exact trajectories: with
``sigma_j(t)^2 = (1 - t)^2 s_j^2 + t^2``, ``y = x - (1 - t) mu`` obeys
``dy/dt = ((t - (1 - t) s^2) / sigma^2) y = (d log sigma / dt) y``, hence

    x(t1) = (1 - t1) mu + sigma(t1) / sigma(t0) * (x(t0) - (1 - t0) mu).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import _backend as B
from .._backend import Array, Ops, batch_time
from ._base import DENSITY, SAMPLES, TRAJECTORY, VELOCITY, Flow

__all__ = ["GaussianMixtureFlow", "GaussianFlow", "gmm_ring2d", "gmm_32d", "gaussian_2d"]

_LOG_2PI = math.log(2.0 * math.pi)
RngLike = np.random.Generator | int | None


class GaussianMixtureFlow(Flow):
    r"""Exact marginal velocity of the linear path for Gaussian-mixture data.

    See the module docstring for the formula:
    ``v(x, t) = sum_k w_k(x, t) [((t - (1-t) s_k^2) / ((1-t)^2 s_k^2 + t^2)) (x - (1-t) mu_k) - mu_k]``.

    Args:
        means: ``(K, d)`` component means ``mu_k``.
        stds: ``(K, d)`` diagonal component standard deviations, ``(K,)`` isotropic
            ones, or a scalar shared by all; all must be positive.
        weights: ``(K,)`` positive mixture weights (normalised here); default equal.
        name: identifier.

    Exact truth: velocity, data density (``log_prob``), data samples (``sample_data``).
    """

    truth = frozenset({VELOCITY, DENSITY, SAMPLES})

    def __init__(
        self,
        means: Any,
        stds: Any,
        weights: Any | None = None,
        name: str = "gmm",
    ) -> None:
        mu = np.array(means, dtype=np.float64)
        if mu.ndim != 2 or mu.shape[0] < 1 or mu.shape[1] < 1:
            raise ValueError(f"means must have shape (K, d), got {mu.shape}")
        K, d = mu.shape
        s = np.array(stds, dtype=np.float64)
        if s.ndim == 0:
            s = np.full((K, d), float(s))
        elif s.shape == (K,):
            s = np.repeat(s[:, None], d, axis=1)
        elif s.shape != (K, d):
            raise ValueError(f"stds must have shape (K, d)=({K}, {d}), (K,) or (), got {s.shape}")
        if not np.all(np.isfinite(s) & (s > 0)):
            raise ValueError("stds must be positive and finite")
        if not np.all(np.isfinite(mu)):
            raise ValueError("means must be finite")
        w = np.full(K, 1.0 / K) if weights is None else np.array(weights, dtype=np.float64)
        if w.shape != (K,) or not np.all(np.isfinite(w) & (w > 0)):
            raise ValueError(f"weights must be {K} positive finite numbers, got {w}")
        w = w / w.sum()
        for arr in (mu, s, w):
            arr.setflags(write=False)
        self.means, self.stds, self.weights = mu, s, w
        self.n_components, self.dim, self.name = K, d, name
        self._log_w = np.log(w)
        self._cache: dict[Any, tuple[Array, Array, Array]] = {}

    # parameters in the compute dtype/device, cached per (dtype, device)
    def _params(self, ops: Ops) -> tuple[Array, Array, Array]:
        key = (str(ops.dtype), str(ops.device))
        if key not in self._cache:
            self._cache[key] = (
                ops.asarray(self.means),
                ops.asarray(self.stds**2),
                ops.asarray(self._log_w),
            )
        return self._cache[key]

    def _component_terms(self, ops: Ops, t: Array, x: Array) -> tuple[Array, Array, Array]:
        """Return ``(log pi_k + log N(x; a mu_k, S_k), S_k, r_k)`` with shapes
        ``(*batch, K)``, ``(*batch, K, d)``, ``(*batch, K, d)``."""
        mu, s2, log_w = self._params(ops)
        tk = t[..., None] if t.ndim > 0 else t  # (*batch, 1, 1) or scalar
        a = 1.0 - tk
        S = a * a * s2 + tk * tk
        r = x[..., None, :] - a * mu
        logp = log_w - 0.5 * ((r * r / S).sum(-1) + B.log(S).sum(-1) + self.dim * _LOG_2PI)
        return logp, S, r

    def _velocity(self, ops: Ops, t: Array, x: Array) -> Array:
        mu, s2, _ = self._params(ops)
        logp, S, r = self._component_terms(ops, t, x)
        w = B.softmax(logp, axis=-1)
        tk = t[..., None] if t.ndim > 0 else t
        vk = ((tk - (1.0 - tk) * s2) / S) * r - mu
        return (w[..., None] * vk).sum(-2)

    def posterior(self, t: Any, x: Array) -> Array:
        """Posterior component probabilities ``w_k(x, t)``, shape ``(*batch, K)``."""
        ops = Ops(x)
        xa = ops.asarray(x)
        logp, _, _ = self._component_terms(ops, batch_time(ops, t, xa), xa)
        return ops.out(B.softmax(logp, axis=-1))

    def log_prob(self, x: Array) -> Array:
        """Exact log-density of the data mixture,
        ``log sum_k pi_k prod_j N(x_j; mu_kj, s_kj^2)``, shape ``x.shape[:-1]``."""
        ops = Ops(x)
        xa = ops.asarray(x)
        if xa.shape[-1] != self.dim:
            raise ValueError(f"x must have shape (..., {self.dim}), got {tuple(xa.shape)}")
        logp, _, _ = self._component_terms(ops, ops.asarray(0.0), xa)
        return ops.out(B.logsumexp(logp, axis=-1))

    def sample_data(self, n: int, rng: RngLike = None) -> np.ndarray:
        """``n`` exact samples of the data mixture, a float64 numpy array ``(n, d)``."""
        g = np.random.default_rng(rng)
        k = g.choice(self.n_components, size=n, p=self.weights)
        return self.means[k] + self.stds[k] * g.standard_normal((n, self.dim))

    def sample_noise(self, n: int, rng: RngLike = None) -> np.ndarray:
        """``n`` samples of the noise ``N(0, I)`` at t = 1, float64 numpy ``(n, d)``."""
        return np.random.default_rng(rng).standard_normal((n, self.dim))

    def data_mean(self) -> np.ndarray:
        """``E[x_data] = sum_k pi_k mu_k``."""
        return self.weights @ self.means


class GaussianFlow(GaussianMixtureFlow):
    """Single Gaussian data ``N(mean, diag(std^2))`` (the K = 1 mixture).

    Exact truth: velocity, density, samples and trajectories::

        x(t1) = (1 - t1) mu + sigma(t1) / sigma(t0) * (x(t0) - (1 - t0) mu),
        sigma(t)^2 = (1 - t)^2 s^2 + t^2   (per dimension).
    """

    truth = frozenset({VELOCITY, DENSITY, SAMPLES, TRAJECTORY})

    def __init__(self, mean: Any, std: Any, name: str = "gaussian") -> None:
        mu = np.atleast_1d(np.array(mean, dtype=np.float64))
        if mu.ndim != 1:
            raise ValueError(f"mean must be a vector, got shape {mu.shape}")
        s = np.broadcast_to(np.array(std, dtype=np.float64), mu.shape)
        super().__init__(mu[None, :], s[None, :], [1.0], name=name)

    def exact(self, t1: Any, x0: Array, t0: Any) -> Array:
        """State at ``t1`` of the trajectory through ``x0`` at ``t0`` (scalars or
        per-sample times of the batch shape)."""
        ops = Ops(x0)
        x = ops.asarray(x0)
        a1, b0 = batch_time(ops, t1, x), batch_time(ops, t0, x)
        mu, s2, _ = self._params(ops)
        mu, s2 = mu[0], s2[0]
        sig1 = ((1 - a1) ** 2 * s2 + a1 * a1) ** 0.5
        sig0 = ((1 - b0) ** 2 * s2 + b0 * b0) ** 0.5
        return ops.out((1 - a1) * mu + (sig1 / sig0) * (x - (1 - b0) * mu))


def gmm_ring2d(seed: int = 0) -> GaussianMixtureFlow:
    """8 equal-weight modes at angles 2 pi k / 8 on a circle of radius 2, std 0.1.

    The ring is deterministic; ``seed`` is accepted for a uniform preset signature
    and not used.
    """
    ang = 2.0 * np.pi * np.arange(8) / 8
    means = 2.0 * np.stack([np.cos(ang), np.sin(ang)], axis=1)
    return GaussianMixtureFlow(means, 0.1, np.full(8, 1.0 / 8), name="gmm-ring2d")


def _seeded_mixture(name: str, dim: int, k: int, seed: int) -> GaussianMixtureFlow:
    """Means ``~ N(0, I_dim)``, diagonal stds uniform in [0.1, 0.5], weights ``~ Dirichlet(3, ..., 3)``,
    drawn in that order from ``numpy.random.default_rng(seed)``."""
    g = np.random.default_rng(seed)
    means = g.standard_normal((k, dim))
    stds = g.uniform(0.1, 0.5, size=(k, dim))
    weights = g.dirichlet(np.full(k, 3.0))
    return GaussianMixtureFlow(means, stds, weights, name=name)


def gmm_32d(seed: int = 0) -> GaussianMixtureFlow:
    """d = 32, K = 10 components drawn with ``seed``.

    Means ``~ N(0, I_32)`` (pairwise distances about 8, i.e. well separated against
    component stds, but the modes merge in the noise for t above about 0.85), diagonal
    stds uniform in [0.1, 0.5], weights ``~ Dirichlet(3, ..., 3)``.
    """
    return _seeded_mixture("gmm-32d", 32, 10, seed)


def gmm_64d(seed: int = 0) -> GaussianMixtureFlow:
    """d = 64, K = 16 components drawn with ``seed``, built like :func:`gmm_32d` (means
    ``~ N(0, I_64)``, pairwise distances about 11, diagonal stds uniform in [0.1, 0.5], weights
    ``~ Dirichlet(3, ..., 3)``)."""
    return _seeded_mixture("gmm-64d", 64, 16, seed)


def gaussian_2d(seed: int = 0) -> GaussianFlow:
    """``N((1, -0.5), diag(0.5^2, 1.5^2))``; ``seed`` unused."""
    return GaussianFlow([1.0, -0.5], [0.5, 1.5], name="gaussian-2d")
