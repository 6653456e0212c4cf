"""Baseline solvers: contract, NFE accounting (counted by a wrapper), edge cases, identities.

Truths used here are independent of the code under test: closed-form ODE solutions,
calls counted by wrapping the field, scipy quadrature, and exact algebraic identities
between methods that docs/baselines.md states (DPM-Solver++-1 = Euler, UniP-2 bh2 =
DPM-Solver++(2M) midpoint).  Solvers are called directly (with a counting wrapper) and
through ``baquad.solve``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from baquad import solve
from baquad.methods import get_method, method_names, nfe_per_steps, steps_for_nfe
from baquad.solvers import euler
from baquad.solvers.dpmpp import flow_grid, phi, step_orders
from baquad.solvers.unipc import unipc_coefficients

# --------------------------------------------------------------------------------------
# Test fields
# --------------------------------------------------------------------------------------
# Gaussian data N(mu, diag(s^2)) on the linear path x_t = (1 - t) x_data + t noise:
#   sigma(t)^2 = (1 - t)^2 s^2 + t^2,
#   v(x, t)    = -mu + (t - (1 - t) s^2) / sigma(t)^2 * (x - (1 - t) mu),
#   exact flow x(t1) = (1 - t1) mu + sigma(t1) / sigma(t0) * (x(t0) - (1 - t0) mu).
MU = np.array([0.5, -1.0, 2.0])
STD = np.array([0.3, 0.7, 1.5])


def _sig2(t: float) -> np.ndarray:
    return (1 - t) ** 2 * STD**2 + t**2


def gauss_field(t: float, x):
    coef = (t - (1 - t) * STD**2) / _sig2(t)
    if type(x).__module__.startswith("torch"):
        import torch

        mu = torch.as_tensor(MU, dtype=x.dtype)
        c = torch.as_tensor(coef, dtype=x.dtype)
        return -mu + c * (x - (1 - t) * mu)
    return -MU + coef * (x - (1 - t) * MU)


def gauss_exact(t1: float, x0: np.ndarray, t0: float) -> np.ndarray:
    return (1 - t1) * MU + np.sqrt(_sig2(t1) / _sig2(t0)) * (x0 - (1 - t0) * MU)


class Counter:
    """Wraps a field, counts calls and checks the contract (t is a Python float)."""

    def __init__(self, f):
        self.f = f
        self.n = 0
        self.ts: list[float] = []

    def __call__(self, t, x):
        assert type(t) is float, f"field got t of type {type(t)}"
        self.n += 1
        self.ts.append(t)
        return self.f(t, x)


X0 = np.random.default_rng(0).standard_normal((5, 3))

# (method, options) covering every method and every NFE-relevant option.
CASES = [
    ("euler", {}),
    ("heun", {}),
    ("heun", {"final_step": "euler"}),
    ("heun", {"final_step": "heun"}),
    ("midpoint", {}),
    ("rk4", {}),
    ("dpm++", {"order": 1}),
    ("dpm++", {"order": 2}),
    ("dpm++", {"order": 2, "solver_type": "heun"}),
    ("dpm++", {"order": 3}),
    ("dpm++", {"order": 3, "lower_order_final": "diffusers"}),
    ("dpm++", {"order": 3, "lower_order_final": "none", "third_order": "consistent"}),
    ("dpm++2m", {}),
    ("dpm++3m", {"solver_type": "heun"}),
    ("unipc", {"order": 1}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 3, "variant": "bh1"}),
    ("unipc", {"order": 3, "variant": "bh2", "lower_order_final": False}),
    ("unipc", {"order": 2, "disable_corrector": (0, 1)}),
]
IDS = [m + "-" + "-".join(f"{k}={v}" for k, v in o.items()) for m, o in CASES]


def test_solvers_registry() -> None:
    assert set(method_names()) >= {"ba-solver", "euler", "heun", "midpoint", "rk4", "dpm++", "unipc", "dpm++2m",
                                   "dpm++3m", "adams"}
    # the registry runs the baseline functions themselves (they check their own options)
    assert get_method("euler").sampler is euler and get_method("euler").resolve is None


# --------------------------------------------------------------------------------------
# NFE: counted calls == documented formula, for every method, option and several N
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "opts"), CASES, ids=IDS)
def test_counted_nfe_matches_formula(method: str, opts: dict) -> None:
    for n in (1, 2, 3, 4, 7, 16):
        ts = tuple(np.linspace(1.0, 0.0, n + 1))
        f = Counter(gauss_field)
        x = get_method(method).sampler(f, X0, ts, **opts)
        assert f.n == nfe_per_steps(method, n, **opts), (method, opts, n)
        assert np.all(np.isfinite(x))
        assert steps_for_nfe(method, f.n, **opts) == n


def test_nfe_formulas_values() -> None:
    assert [nfe_per_steps("heun", n) for n in (1, 2, 18)] == [1, 3, 35]  # EDM: 18 steps = 35 NFE
    assert nfe_per_steps("heun", 18, final_step="heun") == 36
    assert nfe_per_steps("midpoint", 5) == 10 and nfe_per_steps("rk4", 5) == 20
    assert nfe_per_steps("dpm++", 10, order=3) == 10 and nfe_per_steps("unipc", 10) == 10
    # BA-solver (docs/algorithm.md#counting-nfe): scheme B (default) N intervals = N NFE,
    # scheme A (final="bi") N - 1 intervals for N NFE, single anchors N = N.
    assert nfe_per_steps("ba-solver", 10) == 10
    assert nfe_per_steps("ba-solver", 9, final="bi") == 10
    assert nfe_per_steps("ba-solver", 10, anchors="single") == 10
    assert steps_for_nfe("ba-solver", 10, final="bi") == 9
    assert steps_for_nfe("ba-solver", 10, final="single") == 10
    assert steps_for_nfe("ba-solver", 10, anchors="single", rule="gauss-lobatto-4") == 10


@pytest.mark.parametrize(
    ("method", "nfe", "opts"),
    [("heun", 10, {}), ("heun", 9, {"final_step": "heun"}), ("midpoint", 7, {}), ("rk4", 10, {}),
     ("ba-solver", 1, {"final": "bi"}), ("euler", 0, {})],
)
def test_steps_for_nfe_rejects_unreachable_budgets(method: str, nfe: int, opts: dict) -> None:
    with pytest.raises(ValueError, match="nfe"):
        steps_for_nfe(method, nfe, **opts)


def test_nfe_rejects_unknown_method_and_option() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        nfe_per_steps("dopri5", 3)
    with pytest.raises(TypeError, match="ordr"):
        nfe_per_steps("dpm++", 3, ordr=2)
    with pytest.raises(ValueError, match="final_step"):
        nfe_per_steps("heun", 3, final_step="rk")


# --------------------------------------------------------------------------------------
# Contract: callback indices, where the field is evaluated, grid directions
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "opts"), CASES, ids=IDS)
def test_callback_reports_every_grid_point(method: str, opts: dict) -> None:
    ts = tuple(np.linspace(0.95, 0.0, 7))
    seen = []
    x = get_method(method).sampler(gauss_field, X0, ts, callback=lambda i, t, xi: seen.append((i, t, xi)), **opts)
    assert [i for i, _, _ in seen] == list(range(1, len(ts)))
    assert [t for _, t, _ in seen] == list(ts[1:])
    assert all(type(t) is float for _, t, _ in seen)
    np.testing.assert_array_equal(seen[-1][2], x)  # the callback is handed the very state returned


def test_multistep_solvers_evaluate_only_at_grid_points() -> None:
    ts = (0.9, 0.7, 0.4, 0.2, 0.0)
    for method in ("dpm++", "unipc"):
        f = Counter(gauss_field)
        get_method(method).sampler(f, X0, ts, order=3)
        assert f.ts == list(ts[:-1])  # one call per step, never at the final point


# Global error bound C h^p for the grid below (h = its largest step, 0.4) and each method's
# order p; C is the largest of the forward and backward errors divided by h^p, measured once
# (euler 0.12, heun 0.083, midpoint 0.051, rk4 0.0061) and doubled here. A wrong stage lowers
# the order and multiplies the error (a Heun corrector evaluated at t_i instead of t_{i+1}, or a
# midpoint stage at t_i: about 3x; an RK4 weight 2 k3 -> 2 k2: about 10x).
GENERIC_BOUND = {"euler": (1, 2 * 0.12), "heun": (2, 2 * 0.083), "midpoint": (2, 2 * 0.051), "rk4": (4, 2 * 0.0061)}


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4"])
def test_generic_solvers_any_direction_and_field(method: str) -> None:
    # dx/dt = -x * t on a non-uniform increasing grid and its reverse: x(t) = x(t0) e^{(t0^2 - t^2)/2}.
    ts = (0.0, 0.1, 0.35, 0.5, 0.9, 1.3)
    p, c = GENERIC_BOUND[method]
    bound = c * 0.4**p
    f = lambda t, x: -t * x  # noqa: E731
    end = math.exp(-(1.3**2) / 2)
    fwd = get_method(method).sampler(f, np.ones(2), ts)
    np.testing.assert_allclose(fwd, end * np.ones(2), rtol=0, atol=bound)
    back = get_method(method).sampler(f, end * np.ones(2), ts[::-1])
    np.testing.assert_allclose(back, np.ones(2), rtol=0, atol=bound)


@pytest.mark.parametrize("method", ["euler", "heun", "midpoint", "rk4"])
def test_generic_solvers_reject_non_monotone_grid(method: str) -> None:
    with pytest.raises(ValueError, match="ts"):
        get_method(method).sampler(gauss_field, X0, (1.0, 0.5, 0.7))
    with pytest.raises(ValueError, match="ts"):
        get_method(method).sampler(gauss_field, X0, (1.0,))


@pytest.mark.parametrize("method", ["dpm++", "unipc", "dpm++2m", "dpm++3m"])
@pytest.mark.parametrize("ts", [(0.0, 0.5, 1.0), (1.2, 0.5, 0.0), (0.9, 0.5, -0.1), (0.9, 0.9, 0.0), (0.5,)])
def test_flow_solvers_reject_bad_grids(method: str, ts: tuple) -> None:
    with pytest.raises(ValueError, match="ts"):
        get_method(method).sampler(gauss_field, X0, ts)


def test_rk4_exact_for_cubic_in_time() -> None:
    # dx/dt = 4 t^3 + 1 (independent of x): RK4 (Simpson in t) integrates cubics exactly.
    f = lambda t, x: (4 * t**3 + 1) * np.ones_like(x)  # noqa: E731
    x = get_method("rk4").sampler(f, np.zeros(1), (0.0, 0.3, 1.0))
    np.testing.assert_allclose(x, [2.0], rtol=1e-14)


# --------------------------------------------------------------------------------------
# Edge cases: t = 1 start, t = 0 end, bh1 final step, dtypes, autograd
# --------------------------------------------------------------------------------------
# Error bound C n^-p for n uniform steps from t = 1 to t = 0, p the order the grid allows: 1 for
# Euler and DPM-Solver++-1, 4 for RK4, and 2 for the rest (Heun and midpoint are second order;
# the multistep flow solvers take an order-1 step into t = 0, whose local error O(h^2) caps the
# global order at 2). C is the largest err(n) n^p over n = 1, 2, 3, 10, measured once with this
# test's X0 (values below, rounded up) and doubled.
ENDPOINT_C = {
    "euler-": 2.4, "heun-": 3.4, "heun-final_step=euler": 3.4, "heun-final_step=heun": 1.3, "midpoint-": 0.32,
    "rk4-": 0.85, "dpm++-order=1": 2.4, "dpm++-order=2": 6.1, "dpm++-order=2-solver_type=heun": 6.0,
    "dpm++-order=3": 6.1, "dpm++-order=3-lower_order_final=diffusers": 6.1,
    "dpm++-order=3-lower_order_final=none-third_order=consistent": 9.3, "dpm++2m-": 6.1,
    "dpm++3m-solver_type=heun": 6.0, "unipc-order=1": 9.7, "unipc-order=2": 5.2, "unipc-order=3-variant=bh1": 27.0,
    "unipc-order=3-variant=bh2-lower_order_final=False": 5.2, "unipc-order=2-disable_corrector=(0, 1)": 6.1,
}


def endpoint_order(method: str, opts: dict) -> int:
    if method == "euler" or (method == "dpm++" and opts.get("order") == 1):
        return 1
    return 4 if method == "rk4" else 2


@pytest.mark.parametrize(("method", "opts"), CASES, ids=IDS)
def test_grid_from_exactly_one_to_exactly_zero_is_finite(method: str, opts: dict) -> None:
    c, p = ENDPOINT_C[IDS[CASES.index((method, opts))]], endpoint_order(method, opts)
    for n in (1, 2, 3, 10):
        ts = tuple(np.linspace(1.0, 0.0, n + 1))
        states = []
        x = get_method(method).sampler(gauss_field, X0, ts, callback=lambda i, t, xi: states.append(xi), **opts)
        assert all(np.all(np.isfinite(s)) for s in states), (method, opts, n)
        err = np.max(np.abs(x - gauss_exact(0.0, X0, 1.0)))
        assert err <= 2.0 * c * n**-p, (method, opts, n, err)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_bh1_final_step_to_zero_is_x0_hat(order: int) -> None:
    # diffusers produces NaN here (B = -h = -inf times 0); ours is the order-1 step
    # x_N = x0_hat(x^p_{N-1}, t_{N-1}) where x^p_{N-1} is the state the field was last called at.
    ts = (0.999, 0.8, 0.5, 0.3, 0.1, 0.0)
    f = Counter(gauss_field)
    calls = []

    def spy(t, x):
        calls.append((t, x))
        return f(t, x)

    x = get_method("unipc").sampler(spy, X0, ts, order=order, variant="bh1")
    assert np.all(np.isfinite(x))
    t_last, x_last = calls[-1]
    np.testing.assert_allclose(x, x_last - t_last * gauss_field(t_last, x_last), rtol=1e-14, atol=1e-14)


def test_start_at_one_is_clamped_like_diffusers() -> None:
    # |t0 - 1| < 1e-6 -> t0 - 1e-6 (diffusers UniPC set_timesteps); t0 = 1 means 1 - 1e-6.
    assert flow_grid((1.0, 0.5, 0.0))[0] == 1.0 - 1e-6
    assert flow_grid((1.0 - 5e-7, 0.5, 0.0))[0] == 1.0 - 5e-7 - 1e-6
    assert flow_grid((0.999, 0.5, 0.0))[0] == 0.999
    for method in ("dpm++", "unipc"):
        for order in (2, 3):
            a = get_method(method).sampler(gauss_field, X0, (1.0, 0.7, 0.4, 0.2, 0.0), order=order)
            b = get_method(method).sampler(gauss_field, X0, (1.0 - 1e-6, 0.7, 0.4, 0.2, 0.0), order=order)
            np.testing.assert_array_equal(a, b)  # t0 = 1 becomes this same grid: the same arithmetic


@pytest.mark.parametrize(("method", "opts"), CASES, ids=IDS)
def test_numpy_float32_stays_float32(method: str, opts: dict) -> None:
    x = get_method(method).sampler(gauss_field_f32, X0.astype(np.float32), (1.0, 0.6, 0.3, 0.0), **opts)
    assert x.dtype == np.float32


def gauss_field_f32(t, x):
    return gauss_field(t, x).astype(x.dtype)


@pytest.mark.parametrize(("method", "opts"), CASES, ids=IDS)
def test_torch_float32_stays_float32_and_differentiable(method: str, opts: dict) -> None:
    torch = pytest.importorskip("torch")
    x0 = torch.tensor(X0, dtype=torch.float32, requires_grad=True)
    x = get_method(method).sampler(gauss_field, x0, (1.0, 0.6, 0.3, 0.0), **opts)
    assert isinstance(x, torch.Tensor) and x.dtype == torch.float32
    ref = get_method(method).sampler(gauss_field, X0, (1.0, 0.6, 0.3, 0.0), **opts)
    np.testing.assert_allclose(x.detach().numpy(), ref, rtol=1e-4, atol=1e-5)
    x.sum().backward()
    assert x0.grad is not None and torch.all(torch.isfinite(x0.grad))


# --------------------------------------------------------------------------------------
# Identities between methods (docs/baselines.md#euler and docs/baselines.md#unipc)
# --------------------------------------------------------------------------------------
def test_order_one_flow_solvers_equal_euler() -> None:
    ts = (1.0, 0.83, 0.6, 0.31, 0.12, 0.0)
    e = get_method("euler").sampler(gauss_field, X0, flow_grid(ts))
    d = get_method("dpm++").sampler(gauss_field, X0, ts, order=1)
    u = get_method("unipc").sampler(gauss_field, X0, ts, order=1, disable_corrector=range(10))
    np.testing.assert_allclose(d, e, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(u, e, rtol=1e-12, atol=1e-12)


def test_unip2_bh2_without_corrector_equals_dpmpp_2m_midpoint() -> None:
    ts = (0.99, 0.83, 0.6, 0.31, 0.12, 0.0)
    d = get_method("dpm++").sampler(gauss_field, X0, ts, order=2, solver_type="midpoint")
    u = get_method("unipc").sampler(gauss_field, X0, ts, order=2, variant="bh2", disable_corrector=range(10))
    np.testing.assert_allclose(u, d, rtol=1e-12, atol=1e-12)


def test_unic1_bh2_is_trapezoid_in_lambda() -> None:
    # x^c_1 = (t1/t0) x0 + c0 (m0 + m1)/2 where m1 is evaluated at the predictor x^p_1.
    ts = (0.9, 0.6, 0.3)
    seen = []
    get_method("unipc").sampler(gauss_field, X0, ts, order=1, callback=lambda i, t, x: seen.append(x))
    t0, t1 = ts[0], ts[1]
    m0 = X0 - t0 * gauss_field(t0, X0)
    xp = X0 + (t1 - t0) * gauss_field(t0, X0)
    m1 = xp - t1 * gauss_field(t1, xp)
    np.testing.assert_allclose(seen[0], (t1 / t0) * X0 + (1 - t1 / t0) * 0.5 * (m0 + m1), rtol=1e-13)


@pytest.mark.parametrize("third_order", ["reference", "consistent"])
def test_dpmpp_3m_one_step_quadrature_of_a_quadratic(third_order: str) -> None:
    # A field whose data prediction m = x - t v is a given function M of lambda = log((1 - t)/t)
    # alone: v = (x - M(lambda(t))) / t. Then d(x/t)/dt = -M / t^2 and d(e^lambda) = -dt / t^2, so
    # the exact step is x(t1) = (t1/t0) x(t0) + t1 int_{lambda0}^{lambda1} e^lambda M(lambda) dlambda
    # (scipy quadrature). Every m the multistep history holds is then exact, so for M quadratic
    # the third step (orders 1, 2, 3 with lower_order_final="none") integrates exactly with the
    # Taylor-consistent 3M weight (2 a h phi_3), and not with the published one.
    big_m = lambda lam: 0.7 - 1.3 * lam + 2.1 * lam**2  # noqa: E731
    lam_of = lambda t: math.log((1.0 - t) / t)  # noqa: E731
    field = lambda t, x: (x - big_m(lam_of(t))) / t  # noqa: E731
    ts = (0.9, 0.7, 0.5, 0.35)
    states = []
    x3 = get_method("dpm++").sampler(field, np.array([0.4, -1.1]), ts, order=3, lower_order_final="none",
                                     third_order=third_order, callback=lambda i, t, x: states.append(x))
    t2, t3 = ts[2], ts[3]
    integral = quad(lambda lam: math.exp(lam) * big_m(lam), lam_of(t2), lam_of(t3), epsabs=1e-14, epsrel=1e-14)[0]
    exact = (t3 / t2) * states[1] + t3 * integral
    if third_order == "consistent":
        np.testing.assert_allclose(x3, exact, rtol=1e-12, atol=1e-12)
    else:
        assert np.min(np.abs(x3 - exact)) > 1e-3


def test_dpmpp_3m_options_agree_where_they_should() -> None:
    # Steps of order < 3 do not depend on third_order; 3 steps with warm-up = orders 1, 2, 1.
    ts = (0.9, 0.6, 0.3, 0.0)
    a = get_method("dpm++").sampler(gauss_field, X0, ts, order=3, third_order="reference")
    b = get_method("dpm++").sampler(gauss_field, X0, ts, order=3, third_order="consistent")
    np.testing.assert_array_equal(a, b)  # third_order touches order-3 steps only: the same arithmetic here


def test_phi_is_accurate() -> None:
    # phi_k(z) = sum_n z^n / (n + k)!  (reference by exact rational series at high precision)
    from fractions import Fraction

    for k in (1, 2, 3, 4):
        for z in (-3.0, -1.0, -0.999, -0.3, -1e-3, -1e-9, 0.5, 2.0):
            zf = Fraction(z)
            ref = float(sum(zf**n / math.factorial(n + k) for n in range(80)))
            assert phi(k, z) == pytest.approx(ref, rel=1e-13, abs=1e-300)


def test_unipc_coefficients_small_h_limits() -> None:
    # As h -> 0: b_1 -> 1/2 (the hard-coded 0.5), and rho_c for two nodes (r, 1) tends to the
    # trapezoid-like weights solving [[1, 1], [r, 1]] rho = [1/2, 1/3].
    for variant in ("bh1", "bh2"):
        _, _, rho_c = unipc_coefficients(2, 1e-6, [-1.0], variant)
        np.testing.assert_allclose(rho_c, np.linalg.solve([[1, 1], [-1, 1]], [0.5, 1 / 3]), atol=1e-5)
    _, rho_p, rho_c = unipc_coefficients(2, 0.7, [-0.8], "bh2")
    assert rho_p == [0.5]
    _, rho_p, rho_c = unipc_coefficients(1, 0.7, [], "bh1")
    assert rho_p == [] and rho_c == [0.5]


# --------------------------------------------------------------------------------------
# Per-step order rules
# --------------------------------------------------------------------------------------
def test_step_orders_rules() -> None:
    # warm-up 1, 2, 3; "min" = min(order, steps left), always on
    assert step_orders(6, 3, "min", True) == [1, 2, 3, 3, 2, 1]
    assert step_orders(6, 3, True, False) == [1, 2, 3, 3, 2, 1]
    # diffusers DPM rule: below 15 steps the same as "min"
    assert step_orders(6, 3, "diffusers", True) == [1, 2, 3, 3, 2, 1]
    # from 15 steps on only the final step into sigma = 0 is order 1
    assert step_orders(16, 3, "diffusers", True) == [1, 2] + [3] * 13 + [1]
    assert step_orders(16, 3, "diffusers", False) == [1, 2] + [3] * 14
    assert step_orders(16, 3, "min", True) == [1, 2] + [3] * 12 + [2, 1]
    # "none": full order, except that the step into t = 0 is always order 1
    assert step_orders(5, 3, "none", True) == [1, 2, 3, 3, 1]
    assert step_orders(5, 3, False, False) == [1, 2, 3, 3, 3]
    assert step_orders(2, 3, "none", False) == [1, 2]
    with pytest.raises(ValueError, match="lower_order_final"):
        step_orders(5, 2, "sometimes", True)


# --------------------------------------------------------------------------------------
# Through baquad.solve
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("method", "opts"), CASES, ids=IDS)
def test_through_solve_matches_direct_call_and_counts(method: str, opts: dict) -> None:
    ts = (1.0, 0.8, 0.55, 0.3, 0.1, 0.0)
    seen = []
    direct = get_method(method).sampler(gauss_field, X0, ts, callback=lambda i, t, x: seen.append(x), **opts)
    res = solve(gauss_field, X0, ts, method=method, save_states=True, **opts)
    np.testing.assert_allclose(res.x, direct, rtol=1e-12, atol=1e-12)
    assert res.nfe == nfe_per_steps(method, len(ts) - 1, **opts)
    xs = np.asarray(res.xs)
    assert xs.shape == (len(ts),) + X0.shape
    np.testing.assert_allclose(xs[1:], np.stack(seen), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(xs[0], X0)  # the initial state is stored untouched
