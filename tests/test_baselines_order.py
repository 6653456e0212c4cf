"""Measured convergence orders of the baseline solvers against exact solutions.

The order is the slope of log(error) against log(step) (``baquad.order.fit_order``).

Generic solvers: a non-autonomous linear ODE with a closed-form solution,
    dx/dt = a(t) A x,  a(t) = 1 + sin(3 t)/2,  A = [[-1/2, -2], [2, -1/2]]
    x(t1) = expm(A (F(t1) - F(t0))) x(t0),  F(t) = t - cos(3 t)/6,
integrated both backwards (1 -> 0, uniform) and forwards (0 -> 1, non-uniform).

Flow solvers: the exact velocity of Gaussian data N(mu, diag(s^2)) on the linear path,
    v(x, t) = -mu + (t - (1-t) s^2)/sigma(t)^2 (x - (1-t) mu),  sigma(t)^2 = (1-t)^2 s^2 + t^2,
    x(t1) = (1-t1) mu + sigma(t1)/sigma(t0) (x(t0) - (1-t0) mu),
whose data prediction m = x - t v is smooth in lambda.  Three choices make the measurement
test the multistep FORMULAS rather than their start-up and shut-down:
- the grid runs from t = 0.9 to t = 0.1, uniform in lambda = log((1-t)/t) (the variable the
  exponential integrators work in), avoiding the endpoint singularities lambda = -inf, +inf;
- ``lower_order_final="none"``: an order-1 last step alone would make any method order 2
  at best (local error O(h^2) on one step);
- the first step is shortened to h^2 (then N - 1 equal steps): the warm-up steps use lower
  orders (1, then 2) and a start-up local error O(h^q) caps the global order at q
  (e.g. DPM-Solver++-1's O(h^2) for 3M; UniPC-1's O(h^3) for UniPC-3).  With a first step of
  h^2 the start-up error is O(h^4) or smaller, below every order tested.

Finding (see ``baquad.solvers.dpmpp.dpmpp``): the published DPM-Solver++(3M) update (diffusers,
LuChengTHU, SANA; ``third_order="reference"``, matched step for step in
test_baselines_diffusers.py) weights D2 = h^2 m''/2 by a h phi_3(-h), half the
Taylor-consistent a h^3 phi_3(-h) m'', so its measured order is 2, not 3.
``third_order="consistent"`` doubles the weight and measures 3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.linalg import expm

from baquad.methods import get_method
from baquad.order import fit_order

TOL = 0.3

# ---------------------------------------------------------------- generic solvers
A = np.array([[-0.5, -2.0], [2.0, -0.5]])
Y0 = np.array([[1.0, 0.5], [-0.3, 2.0]])  # batch of 2 states (rows)


def lin_field(t: float, x: np.ndarray) -> np.ndarray:
    return (1.0 + 0.5 * math.sin(3.0 * t)) * x @ A.T


def lin_exact(t1: float, x0: np.ndarray, t0: float) -> np.ndarray:
    big_f = lambda t: t - math.cos(3.0 * t) / 6.0  # noqa: E731
    return x0 @ expm(A * (big_f(t1) - big_f(t0))).T


def backward_grid(n: int) -> tuple[float, ...]:
    return tuple(1.0 - j / n for j in range(n + 1))


def forward_grid(n: int) -> tuple[float, ...]:
    # non-uniform, increasing: t = u + 0.15 sin(pi u), u uniform in [0, 1]
    return tuple(j / n + 0.15 * math.sin(math.pi * j / n) for j in range(n + 1))


GENERIC = [
    ("euler", {}, 1, (16, 32, 64, 128)),
    ("heun", {"final_step": "euler"}, 2, (8, 16, 32, 64)),
    ("heun", {"final_step": "heun"}, 2, (8, 16, 32, 64)),
    ("midpoint", {}, 2, (8, 16, 32, 64)),
    ("rk4", {}, 4, (4, 8, 16, 32)),
]


@pytest.mark.parametrize("direction", ["backward", "forward"])
@pytest.mark.parametrize(("method", "opts", "order", "ns"), GENERIC,
                         ids=[f"{m}-{o}" for m, o, _, _ in GENERIC])
def test_generic_solver_order(method: str, opts: dict, order: int, ns: tuple, direction: str) -> None:
    grid = backward_grid if direction == "backward" else forward_grid
    steps, errors = [], []
    for n in ns:
        ts = grid(n)
        x = get_method(method).sampler(lin_field, Y0, ts, **opts)
        errors.append(float(np.max(np.abs(x - lin_exact(ts[-1], Y0, ts[0])))))
        steps.append(abs(ts[-1] - ts[0]) / n)
    fit = fit_order(steps, errors)
    assert abs(fit.order - order) < TOL, (fit, errors)


# ---------------------------------------------------------------- flow solvers
MU = np.array([0.5, -1.0, 2.0])
STD = np.array([0.3, 0.7, 1.5])
X0 = np.random.default_rng(0).standard_normal((8, 3))


def _sig2(t: float) -> np.ndarray:
    return (1 - t) ** 2 * STD**2 + t**2


def gauss_field(t: float, x: np.ndarray) -> np.ndarray:
    return -MU + (t - (1 - t) * STD**2) / _sig2(t) * (x - (1 - t) * MU)


def gauss_exact(t1: float, x0: np.ndarray, t0: float) -> np.ndarray:
    return (1 - t1) * MU + np.sqrt(_sig2(t1) / _sig2(t0)) * (x0 - (1 - t0) * MU)


def lambda_grid(n: int, t_start: float = 0.9, t_end: float = 0.1) -> tuple[float, ...]:
    """First step h^2, then n - 1 equal steps, uniform in lambda; h = lambda span / n."""
    la, lb = math.log((1 - t_start) / t_start), math.log((1 - t_end) / t_end)
    h = (lb - la) / n
    first = la + h * h
    lams = [la] + [first + (lb - first) * j / (n - 1) for j in range(n)]
    return tuple(1.0 / (1.0 + math.exp(lam)) for lam in lams)


FLOW = [
    ("dpm++", {"order": 1}, 1, (16, 32, 64, 128)),
    ("dpm++", {"order": 2, "solver_type": "midpoint"}, 2, (16, 32, 64, 128)),
    ("dpm++", {"order": 2, "solver_type": "heun"}, 2, (16, 32, 64, 128)),
    ("dpm++", {"order": 3, "third_order": "reference"}, 2, (16, 32, 64, 128)),  # see module doc
    ("dpm++", {"order": 3, "third_order": "consistent"}, 3, (64, 128, 256, 512)),
    ("unipc", {"order": 1, "variant": "bh2"}, 2, (16, 32, 64, 128)),
    ("unipc", {"order": 1, "variant": "bh1"}, 2, (16, 32, 64, 128)),
    ("unipc", {"order": 2, "variant": "bh2"}, 3, (16, 32, 64, 128)),
    ("unipc", {"order": 2, "variant": "bh1"}, 3, (16, 32, 64, 128)),
    ("unipc", {"order": 3, "variant": "bh2"}, 4, (32, 64, 128, 256)),
    ("unipc", {"order": 3, "variant": "bh1"}, 4, (32, 64, 128, 256)),
]


@pytest.mark.parametrize(("method", "opts", "order", "ns"), FLOW,
                         ids=[f"{m}-{o}" for m, o, _, _ in FLOW])
def test_flow_solver_order(method: str, opts: dict, order: int, ns: tuple) -> None:
    steps, errors = [], []
    for n in ns:
        ts = lambda_grid(n)
        x = get_method(method).sampler(gauss_field, X0, ts, lower_order_final="none", **opts)
        errors.append(float(np.max(np.abs(x - gauss_exact(ts[-1], X0, ts[0])))))
        steps.append(1.0 / n)
    fit = fit_order(steps, errors)
    assert abs(fit.order - order) < TOL, (fit, errors)


def test_dpmpp_3m_reference_is_not_third_order_even_asymptotically() -> None:
    # Local slopes between successive refinements approach 2 (not 3) for the published update.
    errs = []
    for n in (32, 64, 128, 256):
        ts = lambda_grid(n)
        x = get_method("dpm++").sampler(gauss_field, X0, ts, order=3, lower_order_final="none")
        errs.append(float(np.max(np.abs(x - gauss_exact(ts[-1], X0, ts[0])))))
    slopes = [math.log2(a / b) for a, b in zip(errs[:-1], errs[1:])]
    assert all(abs(s - 2.0) < 0.15 for s in slopes[1:]), slopes


def test_uniform_t_grid_from_one_to_zero_converges() -> None:
    # The full generation interval [1, 0] (t = 1 clamped, order-1 step into 0, default
    # lower_order_final) still converges to the exact data sample for every flow solver.
    exact = gauss_exact(0.0, X0, 1.0 - 1e-6)
    for method, opts in [("dpm++", {"order": 2}), ("dpm++", {"order": 3}), ("unipc", {"order": 2}),
                         ("unipc", {"order": 3, "variant": "bh1"})]:
        errs = []
        for n in (10, 40, 160):
            x = get_method(method).sampler(gauss_field, X0, tuple(np.linspace(1.0, 0.0, n + 1)), **opts)
            errs.append(float(np.max(np.abs(x - exact))))
        assert errs[0] > errs[1] > errs[2] and errs[2] < 2e-3, (method, opts, errs)
