"""Time schedules and NFE-budgeted grids.

Truths: the defining formulas re-derived independently (the SD3 shift is a translation
by -log s in lambda = log((1-t)/t); log-SNR grids have equal lambda spacing), and NFE
counted by wrapping the field while the solver runs on the planned grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from baquad.methods import get_method
from baquad.schedules import get_schedule, logsnr_uniform, nfe_grid, sd3_shift, uniform, user_grid


def lam(t: float) -> float:
    return math.log((1 - t) / t)


def assert_generation_grid(ts, n_steps: int) -> None:
    assert isinstance(ts, tuple) and len(ts) == n_steps + 1
    assert all(type(t) is float and 0.0 <= t <= 1.0 for t in ts)
    assert all(b < a for a, b in zip(ts[:-1], ts[1:]))


@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_uniform(n: int) -> None:
    ts = uniform(n)
    assert_generation_grid(ts, n)
    assert ts[0] == 1.0 and ts[-1] == 0.0
    np.testing.assert_allclose(np.diff(ts), -1.0 / n, rtol=1e-12)
    ts = uniform(n, t_max=0.999)
    assert ts[0] == 0.999 and ts[-1] == 0.0
    np.testing.assert_allclose(np.diff(ts), -0.999 / n, rtol=1e-12)


@pytest.mark.parametrize("s", [0.5, 1.0, 3.0, 5.0])
def test_sd3_shift_is_a_translation_in_logsnr(s: float) -> None:
    t = np.linspace(0.01, 0.99, 37)
    shifted = np.array(sd3_shift(t, s))
    np.testing.assert_allclose([lam(x) for x in shifted], [lam(x) - math.log(s) for x in t], atol=1e-12)
    assert sd3_shift([0.0, 1.0], s) == (0.0, 1.0)
    ts = uniform(12, shift=s)
    assert_generation_grid(ts, 12)
    assert ts[0] == 1.0 and ts[-1] == 0.0
    if s > 1:  # more steps near the noise end: the first step is shorter than uniform
        assert ts[0] - ts[1] < 1 / 12


def test_sd3_shift_formula_value() -> None:
    # s t / (1 + (s - 1) t) at s = 3, t = 0.5: 1.5 / 2 = 0.75
    assert sd3_shift([0.5], 3.0) == (0.75,)
    with pytest.raises(ValueError, match="shift"):
        sd3_shift([0.5], 0.0)


@pytest.mark.parametrize("n", [2, 3, 10])
@pytest.mark.parametrize("s", [1.0, 3.0])
def test_logsnr_uniform(n: int, s: float) -> None:
    ts = logsnr_uniform(n, shift=s)
    assert_generation_grid(ts, n)
    assert ts[-1] == 0.0  # the extra step to t = 0 is one of the n steps
    lams = [lam(t) for t in ts[:-1]]
    assert lams[0] == pytest.approx(lam(1 - 1e-3) - math.log(s), abs=1e-9)
    assert lams[-1] == pytest.approx(lam(1e-3) - math.log(s), abs=1e-9)
    np.testing.assert_allclose(np.diff(lams), (lams[-1] - lams[0]) / (n - 1), rtol=1e-9)


def test_logsnr_uniform_options() -> None:
    ts = logsnr_uniform(4, to_zero=False, t_max=0.9, t_min=0.1)
    assert_generation_grid(ts, 4)
    assert ts[0] == 0.9 and ts[-1] == 0.1
    np.testing.assert_allclose(np.diff([lam(t) for t in ts]), (lam(0.1) - lam(0.9)) / 4, rtol=1e-12)
    assert logsnr_uniform(1) == (0.999, 0.0)
    with pytest.raises(ValueError, match="t_min"):
        logsnr_uniform(4, t_min=0.0)


def test_user_grid() -> None:
    assert user_grid(np.array([1.0, 0.4, 0.0])) == (1.0, 0.4, 0.0)
    for bad in ([1.0], [0.0, 0.5, 1.0], [1.0, 0.5, 0.5], [1.5, 0.0], [0.5, -0.1], [1.0, float("nan")]):
        with pytest.raises(ValueError, match="ts"):
            user_grid(bad)


def test_get_schedule() -> None:
    assert get_schedule("uniform", 4) == uniform(4)
    assert get_schedule("sd3", 4, shift=3.0) == uniform(4, shift=3.0)
    assert get_schedule("logsnr", 5, t_min=1e-2) == logsnr_uniform(5, t_min=1e-2)
    custom = lambda n, shift: [1.0 - (j / n) ** 2 for j in range(n + 1)]  # noqa: E731
    assert_generation_grid(get_schedule(custom, 6), 6)
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("karras", 4)


class Counter:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, x):
        self.n += 1
        return self.f(t, x)


def field(t: float, x: np.ndarray) -> np.ndarray:
    # single-Gaussian-data flow (data N(0.5, 0.4^2)), exact velocity
    s2 = 0.16
    return -0.5 + (t - (1 - t) * s2) / ((1 - t) ** 2 * s2 + t**2) * (x - (1 - t) * 0.5)


BUDGETS = [
    ("euler", {}, [1, 4, 10]),
    ("heun", {}, [1, 5, 9]),  # 2N - 1
    ("heun", {"final_step": "heun"}, [2, 6, 10]),
    ("midpoint", {}, [2, 10]),
    ("rk4", {}, [4, 12]),
    ("dpm++", {"order": 3}, [1, 3, 10]),
    ("dpm++2m", {}, [5]),
    ("unipc", {"order": 2, "variant": "bh1"}, [1, 2, 10]),
]


@pytest.mark.parametrize("schedule", ["uniform", "sd3", "logsnr"])
@pytest.mark.parametrize(("method", "opts", "budgets"), BUDGETS, ids=[f"{m}-{o}" for m, o, _ in BUDGETS])
def test_nfe_grid_gives_exactly_that_many_calls(method: str, opts: dict, budgets: list, schedule: str) -> None:
    for nfe in budgets:
        ts = nfe_grid(method, nfe, schedule, shift=3.0 if schedule == "sd3" else 1.0, **opts)
        f = Counter(field)
        x = get_method(method).sampler(f, np.zeros(3) + 0.3, ts, **opts)
        assert f.n == nfe, (method, opts, schedule, nfe, ts)
        assert np.all(np.isfinite(x))


def test_nfe_grid_ba_solver_intervals() -> None:
    # scheme B (default, final="single"): N intervals for N NFE; scheme A (final="bi"): N - 1;
    # single anchors: N.
    assert len(nfe_grid("ba-solver", 10)) - 1 == 10
    assert len(nfe_grid("ba-solver", 10, final="single")) - 1 == 10
    assert len(nfe_grid("ba-solver", 10, final="bi")) - 1 == 9
    assert len(nfe_grid("ba-solver", 10, anchors="single")) - 1 == 10
    assert len(nfe_grid("ba-solver", 4, "logsnr", final="bi")) - 1 == 3


def test_nfe_grid_ba_solver_counted_through_solve() -> None:
    from baquad import solve

    for opts in ({}, {"final": "bi"}, {"final": "single"}, {"anchors": "single"}):
        for nfe in (3, 6):
            ts = nfe_grid("ba-solver", nfe, **opts)
            calls = []
            res = solve(lambda t, x: calls.append(t) or field(t, x), np.zeros((2, 3)) + 0.3, ts, method="ba-solver",
                        **opts)
            assert res.nfe == nfe == len(calls)


@pytest.mark.parametrize(("method", "nfe", "opts"), [("heun", 4, {}), ("midpoint", 5, {}), ("rk4", 6, {}),
                                                     ("ba-solver", 1, {"final": "bi"})])
def test_nfe_grid_rejects_unreachable_budget(method: str, nfe: int, opts: dict) -> None:
    with pytest.raises(ValueError, match="nfe"):
        nfe_grid(method, nfe, **opts)


def test_edm_grid_is_karras_rho_spacing_in_flow_time():
    """Karras et al. (2022), Eq. 5: sigma_i = (s_max^(1/rho) + i/(N-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,
    i < N, sigma_N = 0; flow time t = sigma / (1 + sigma) (sigma = t / (1 - t) on the linear path).
    The first point is t = 1 (pure noise) instead of t(sigma_max)."""
    from baquad.schedules import edm

    n, rho, lo, hi = 18, 7.0, 0.002, 80.0
    ts = get_schedule("edm", n)
    assert len(ts) == n + 1 and ts[0] == 1.0 and ts[-1] == 0.0
    for i in range(1, n):
        sigma = (hi ** (1 / rho) + i / (n - 1) * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho
        assert math.isclose(ts[i] / (1 - ts[i]), sigma, rel_tol=1e-12)
    assert all(b < a for a, b in zip(ts, ts[1:]))
    assert edm(1) == (1.0, 0.0)
    with pytest.raises(ValueError, match="rho"):
        edm(5, rho=0.0)
