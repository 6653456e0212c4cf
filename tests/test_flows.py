"""Tests for baquad.flows: analytic velocity fields and their exact truths.

Truth used here is independent of the code under test: Monte-Carlo estimates built from
the path's definition, scipy densities, hand-derived closed forms, and scipy's DOP853
(through baquad.reference, itself tested against analytic solutions).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from baquad.flows import (
    FLOW_NAMES,
    ExponentialTimeFlow,
    GaussianFlow,
    GaussianMixtureFlow,
    LinearFlow,
    PolynomialTimeFlow,
    RotationFlow,
    TimeScaledLinearFlow,
    get_flow,
    gmm_32d,
    gmm_64d,
    gmm_ring2d,
)
from baquad.reference import reference_solve

# ---------------------------------------------------------------------------------------
# independent helpers (written from the definitions, not from baquad.flows)


def mix_logpdf(xd: np.ndarray, mu: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """log sum_k w_k N(xd; mu_k, diag s_k^2) for xd of shape (N, d)."""
    r = (xd[:, None, :] - mu) / s
    lp = (
        np.log(w)
        - 0.5 * (r**2).sum(-1)
        - np.log(s).sum(-1)
        - 0.5 * mu.shape[1] * np.log(2 * np.pi)
    )
    return logsumexp(lp, axis=1)


def mix_sample(n: int, mu: np.ndarray, s: np.ndarray, w: np.ndarray, g: np.random.Generator):
    k = g.choice(len(w), size=n, p=w)
    return mu[k] + s[k] * g.standard_normal((n, mu.shape[1]))


def mc_velocity(x: np.ndarray, t: float, mu, s, w, n: int, g: np.random.Generator):
    """Self-normalised importance-sampling estimate of E[z - x_data | x_t = x].

    Posterior of x_data given x_t = x: p(xd) N(x; (1-t) xd, t^2 I). Defensive proposal
    q = 1/2 p_data + 1/2 Lt with Lt(xd) = N(xd; x/(1-t), (t/(1-t))^2 I) (the likelihood,
    normalised in xd): p_data covers t near 1, Lt covers t near 0. For every draw
    z = (x - (1-t) xd)/t is then determined, and f = z - xd.

    Returns (estimate, delta-method standard error per coordinate, effective sample size).
    """
    d = mu.shape[1]
    a = 1.0 - t
    xd = np.concatenate(
        [mix_sample(n // 2, mu, s, w, g), x / a + (t / a) * g.standard_normal((n - n // 2, d))]
    )
    lp = mix_logpdf(xd, mu, s, w)
    quad = -0.5 * (((x - a * xd) / t) ** 2).sum(-1)
    log_lik = quad - d * np.log(t) - 0.5 * d * np.log(2 * np.pi)  # log N(x; a xd, t^2 I)
    log_lt = log_lik + d * np.log(a)  # log Lt(xd): the same Gaussian seen as density in xd
    lw = lp + log_lik - np.logaddexp(lp, log_lt) + np.log(2.0)
    W = np.exp(lw - lw.max())
    W /= W.sum()
    f = (x - a * xd) / t - xd
    est = W @ f
    se = np.sqrt((W**2) @ ((f - est) ** 2))
    return est, se, 1.0 / np.sum(W**2)


def diag8d() -> GaussianMixtureFlow:
    g = np.random.default_rng(3)
    return GaussianMixtureFlow(
        g.normal(0.0, 1.5, (4, 8)), g.uniform(0.1, 0.6, (4, 8)), [0.1, 0.2, 0.3, 0.4], "diag8d"
    )


def overlap2d() -> GaussianMixtureFlow:
    """Strongly overlapping components of different widths: the posterior weights are
    far from one-hot almost everywhere, so errors in them show in v."""
    return GaussianMixtureFlow(
        [[0.0, 0.0], [0.8, -0.3], [-0.5, 0.6]],
        [[0.2, 0.3], [0.6, 0.5], [1.0, 0.2]],
        [0.5, 0.3, 0.2],
        "overlap2d",
    )


# ---------------------------------------------------------------------------------------
# Gaussian-mixture velocity


@pytest.mark.parametrize("make", [gmm_ring2d, diag8d, overlap2d], ids=["ring2d", "diag8d", "overlap2d"])
@pytest.mark.parametrize("t", [0.02, 0.3, 0.7, 0.98])
def test_gmm_velocity_matches_importance_sampling(make, t: float) -> None:
    """Tolerance: 5 delta-method standard errors of the self-normalised estimator, per
    coordinate (fixed seed; a 5-sigma miss has probability ~6e-7 per coordinate). The
    effective sample size is checked first so that the standard error is trustworthy,
    and the SE is checked to be small against |v| so the test has power."""
    flow = make()
    g = np.random.default_rng(int(100 * t))
    xd = mix_sample(2, flow.means, flow.stds, flow.weights, g)
    xs = (1 - t) * xd + t * g.standard_normal(xd.shape)  # typical points of x_t
    if flow.dim == 2:
        # plus a point between two modes, where the posterior weights matter most (in 8-D
        # the posterior there sits in the data's low-density valley, out of reach of the
        # two proposals: ESS ~ 10)
        xs = np.concatenate([xs, (1 - t) * (flow.means[:1] + flow.means[1:2]) / 2])
    v = flow(t, xs)
    for x, vx in zip(xs, v):
        est, se, ess = mc_velocity(x, t, flow.means, flow.stds, flow.weights, 60_000, g)
        assert ess > 500
        assert se.max() < 0.05 * (1.0 + np.abs(vx).max())
        np.testing.assert_array_less(np.abs(vx - est), 5.0 * se)


def test_gmm_velocity_endpoints() -> None:
    """At t = 0 the posterior of z is its prior (mean 0) and x_data = x, so v = -x;
    at t = 1 x = z, so v = x - E[x_data]."""
    flow = diag8d()
    x = np.random.default_rng(1).normal(0, 3, (5, 8))
    np.testing.assert_allclose(flow(0.0, x), -x, atol=1e-12)
    mean = np.asarray(flow.weights) @ np.asarray(flow.means)
    np.testing.assert_allclose(flow(1.0, x), x - mean, atol=1e-12)


def test_gmm_log_prob_matches_scipy() -> None:
    flow = diag8d()
    x = np.random.default_rng(2).normal(0, 2, (20, 8))
    want = logsumexp(
        [
            np.log(wk) + multivariate_normal(mk, np.diag(sk**2)).logpdf(x)
            for wk, mk, sk in zip(flow.weights, flow.means, flow.stds)
        ],
        axis=0,
    )
    np.testing.assert_allclose(flow.log_prob(x), want, rtol=1e-12, atol=1e-10)
    got_t = flow.log_prob(torch.from_numpy(x))
    assert isinstance(got_t, torch.Tensor) and got_t.dtype == torch.float64
    np.testing.assert_allclose(got_t.numpy(), want, rtol=1e-12, atol=1e-10)


def test_gmm_sample_data_moments() -> None:
    """Mean and per-coordinate variance of 40k samples vs the exact mixture moments
    (mean sum_k w mu_k; var sum_k w (s_k^2 + mu_k^2) - mean^2); tolerance 5 standard
    errors (var SE from the sample fourth moment)."""
    flow = diag8d()
    n = 40_000
    x = flow.sample_data(n, np.random.default_rng(5))
    assert x.shape == (n, 8)
    w, mu, s = flow.weights, flow.means, flow.stds
    mean = w @ mu
    var = w @ (s**2 + mu**2) - mean**2
    assert np.all(np.abs(x.mean(0) - mean) < 5 * np.sqrt(var / n))
    dev2 = (x - x.mean(0)) ** 2
    assert np.all(np.abs(dev2.mean(0) - var) < 5 * dev2.std(0) / np.sqrt(n))
    # same seed, same samples; int seeds are accepted
    np.testing.assert_array_equal(flow.sample_data(7, 11), flow.sample_data(7, 11))
    z = flow.sample_noise(n, 3)
    assert z.shape == (n, 8) and abs(z.mean()) < 5 / np.sqrt(n * 8)


@pytest.mark.parametrize("make", [gmm_ring2d, gmm_32d, gmm_64d], ids=["ring2d", "32d", "64d"])
def test_ode_maps_noise_to_data_likelihood(make) -> None:
    """Integrate N(0, I) samples from t = 1 to 0 with the exact field: the pushed-forward
    samples follow the data law, so their mean log-likelihood under the mixture equals
    E[log p(x_data)]. Truth: the mean over 20k exact samples (SE ~1/10 of the ODE side).
    Tolerance: 4 combined standard errors of the two sample means (SE from the
    per-sample log-likelihood spread), so a mismatch of 4 sigma fails."""
    flow = make()
    n = 400
    z = np.random.default_rng(10).standard_normal((n, flow.dim))
    x0 = reference_solve(flow, z, [1.0, 0.0], rtol=1e-8, atol=1e-8)[-1]
    ll_ode = mix_logpdf(x0, flow.means, flow.stds, flow.weights)
    ref = mix_sample(20_000, flow.means, flow.stds, flow.weights, np.random.default_rng(11))
    ll_ref = mix_logpdf(ref, flow.means, flow.stds, flow.weights)
    se = np.sqrt(ll_ode.var() / n + ll_ref.var() / ll_ref.size)
    assert abs(ll_ode.mean() - ll_ref.mean()) < 4 * se
    # and the modes are all visited (ring: each of 8 modes gets 50 +- 7 samples)
    if flow.name == "gmm-ring2d":
        nearest = np.argmin(((x0[:, None, :] - flow.means) ** 2).sum(-1), axis=1)
        counts = np.bincount(nearest, minlength=8)
        assert counts.min() > 20 and counts.max() < 80


# ---------------------------------------------------------------------------------------
# robustness (hypothesis)


@st.composite
def mixtures(draw):
    K = draw(st.integers(1, 4))
    d = draw(st.integers(1, 3))
    fl = st.floats(-5.0, 5.0, allow_nan=False)
    means = np.array(draw(st.lists(st.lists(fl, min_size=d, max_size=d), min_size=K, max_size=K)))
    log_s = draw(
        st.lists(
            st.lists(st.floats(np.log(1e-3), np.log(3.0)), min_size=d, max_size=d),
            min_size=K,
            max_size=K,
        )
    )
    w = draw(st.lists(st.floats(1e-3, 1.0), min_size=K, max_size=K))
    return GaussianMixtureFlow(means, np.exp(np.array(log_s)), w)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    flow=mixtures(),
    t=st.one_of(st.sampled_from([0.0, 1.0, 1e-12, 1 - 1e-12]), st.floats(0.0, 1.0)),
    scale=st.sampled_from([1.0, 30.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_gmm_velocity_finite_and_torch_matches_numpy(flow, t, scale, seed) -> None:
    g = np.random.default_rng(seed)
    x = np.clip(scale * g.standard_normal((6, flow.dim)), -1e3, 1e3)
    x[0] = 1e3  # extreme corner
    v = flow(t, x)
    assert v.shape == x.shape and v.dtype == np.float64
    assert np.all(np.isfinite(v))
    vt = flow(torch.tensor(t, dtype=torch.float64), torch.from_numpy(x))
    assert isinstance(vt, torch.Tensor) and vt.dtype == torch.float64
    # Same formula in both backends; tiny stds make |v| up to ~|x|/s^2 so compare
    # relative to the magnitude of v.
    np.testing.assert_allclose(vt.numpy(), v, rtol=1e-7, atol=1e-9 * (1 + np.abs(v).max()))
    w = flow.posterior(t, x)
    assert np.all(np.isfinite(w)) and np.allclose(w.sum(-1), 1.0)


# ---------------------------------------------------------------------------------------
# array types, shapes, per-sample time


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_per_sample_time_equals_loop(name: str) -> None:
    flow = get_flow(name)
    g = np.random.default_rng(4)
    x = g.normal(0, 1.5, (7, flow.dim))
    t = np.concatenate([[0.0, 1.0], g.uniform(0, 1, 5)])
    loop = np.stack([flow(float(ti), xi[None])[0] for ti, xi in zip(t, x)])
    np.testing.assert_allclose(flow(t, x), loop, rtol=1e-13, atol=1e-13)
    vt = flow(torch.from_numpy(t), torch.from_numpy(x))
    np.testing.assert_allclose(vt.numpy(), loop, rtol=1e-10, atol=1e-10)
    # 0-dim time arrays and tensors are accepted
    np.testing.assert_array_equal(flow(np.array(t[3]), x), flow(float(t[3]), x))  # the same time, the same arithmetic
    with pytest.raises(ValueError, match="t must"):
        flow(np.zeros(3), x)


@pytest.mark.parametrize("name", FLOW_NAMES)
def test_torch_dtype_and_type_preserved(name: str) -> None:
    flow = get_flow(name)
    x64 = np.random.default_rng(6).normal(size=(4, flow.dim))
    v64 = flow(0.4, x64)
    x32 = torch.tensor(x64, dtype=torch.float32)
    v32 = flow(torch.tensor(0.4), x32)
    assert isinstance(v32, torch.Tensor) and v32.dtype == torch.float32 and v32.shape == x32.shape
    np.testing.assert_allclose(v32.numpy(), v64, rtol=2e-4, atol=2e-4 * (1 + np.abs(v64).max()))
    vn32 = flow(0.4, x64.astype(np.float32))
    assert isinstance(vn32, np.ndarray) and vn32.dtype == np.float32


def test_no_torch_import_at_module_import() -> None:
    code = "import sys, baquad.flows, baquad.reference; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------------
# presets and validation


def test_registry() -> None:
    expected = {"gmm-ring2d", "gmm-32d", "gaussian-2d"}
    assert expected <= set(FLOW_NAMES)
    for name in FLOW_NAMES:
        assert get_flow(name).name == name
    with pytest.raises(ValueError, match="gmm-ring2d"):
        get_flow("no-such-flow")
    ring = get_flow("gmm-ring2d")
    assert ring.dim == 2 and ring.means.shape == (8, 2)
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 2.0)
    np.testing.assert_allclose(ring.stds, 0.1)
    f32 = get_flow("gmm-32d", seed=0)
    assert f32.dim == 32 and f32.means.shape == (10, 32)
    assert np.all((f32.stds >= 0.1) & (f32.stds <= 0.5))
    np.testing.assert_array_equal(gmm_32d(0).means, f32.means)  # the preset is this call: the same draws
    assert not np.allclose(gmm_32d(1).means, f32.means)


def test_gmm_64d_preset_as_specified() -> None:
    """gmm-64d: d = 64, K = 16, means ~ N(0, I), stds ~ U[0.1, 0.5], weights ~ Dirichlet(3),
    drawn in that order from default_rng(0) (the issue's specification, redrawn here)."""
    g = np.random.default_rng(0)
    means, stds, weights = g.standard_normal((16, 64)), g.uniform(0.1, 0.5, (16, 64)), g.dirichlet(np.full(16, 3.0))
    flow = get_flow("gmm-64d")
    assert flow.dim == 64 and flow.name == "gmm-64d" and {"velocity", "density", "samples"} <= set(flow.truth)
    np.testing.assert_array_equal(flow.means, means)  # the preset's parameters are these draws, untouched
    np.testing.assert_array_equal(flow.stds, stds)
    np.testing.assert_allclose(flow.weights, weights, rtol=1e-15)
    # density against scipy, samples against the exact moments
    x = np.random.default_rng(2).normal(0, 1.5, (10, 64))
    want = logsumexp([np.log(w) + multivariate_normal(m, np.diag(s**2)).logpdf(x) for w, m, s in zip(weights, means, stds)], axis=0)
    np.testing.assert_allclose(flow.log_prob(x), want, rtol=1e-12, atol=1e-10)
    n = 40_000
    xs = flow.sample_data(n, np.random.default_rng(5))
    mean = weights @ means
    var = weights @ (stds**2 + means**2) - mean**2
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * np.sqrt(var / n))


@pytest.mark.parametrize("t", [0.02, 0.3, 0.7, 0.98])
def test_gmm_64d_velocity_matches_gaussian_conditioning(t: float) -> None:
    """In 64-D importance sampling has no power, so the truth is written out from Gaussian
    conditioning: component k has x_t ~ N((1-t) mu_k, diag((1-t)^2 s_k^2 + t^2)), and
    E[z - x_data | x_t = x, k] = (t - (1-t) s_k^2)(x - (1-t) mu_k) / var_k - mu_k; the
    posterior weights are w_k N(x; (1-t) mu_k, var_k) normalised."""
    flow = get_flow("gmm-64d")
    g = np.random.default_rng(int(100 * t))
    xs = (1 - t) * mix_sample(5, flow.means, flow.stds, flow.weights, g) + t * g.standard_normal((5, 64))
    mu, s, w = flow.means, flow.stds, flow.weights
    var = (1 - t) ** 2 * s**2 + t**2
    for x in xs:
        r = x - (1 - t) * mu
        logp = np.log(w) - 0.5 * (r**2 / var).sum(-1) - 0.5 * np.log(var).sum(-1)
        post = np.exp(logp - logsumexp(logp))
        v_k = (t - (1 - t) * s**2) * r / var - mu
        np.testing.assert_allclose(flow(t, x[None])[0], post @ v_k, rtol=1e-9, atol=1e-9)


def test_gmm_validation() -> None:
    with pytest.raises(ValueError, match="stds"):
        GaussianMixtureFlow([[0.0, 0.0]], [0.0])
    with pytest.raises(ValueError, match="means"):
        GaussianMixtureFlow([0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixtureFlow([[0.0], [1.0]], 1.0, [1.0, -1.0])
    with pytest.raises(ValueError, match="shape"):
        gmm_ring2d()(0.5, np.zeros((3, 5)))


# ---------------------------------------------------------------------------------------
# Gaussian flow and closed-form trajectories


def test_gaussian_field_equals_k1_mixture() -> None:
    mean, std = np.array([1.0, -0.5, 2.0]), np.array([0.5, 1.5, 0.05])
    gf = GaussianFlow(mean, std)
    mix = GaussianMixtureFlow(mean[None], std[None], [1.0])
    x = np.random.default_rng(7).normal(0, 2, (9, 3))
    for t in [0.0, 0.01, 0.5, 0.99, 1.0]:
        np.testing.assert_array_equal(gf(t, x), mix(t, x))  # GaussianFlow is the K = 1 mixture class: the same code
    # and with the hand-derived single-Gaussian field ((t - a s^2)/S)(x - a mu) - mu
    t = 0.37
    a = 1 - t
    want = ((t - a * std**2) / (a**2 * std**2 + t**2)) * (x - a * mean) - mean
    np.testing.assert_allclose(gf(t, x), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("t0, t1", [(1.0, 0.0), (0.0, 1.0), (0.8, 0.3)])
def test_gaussian_exact_matches_reference(t0: float, t1: float) -> None:
    flow = get_flow("gaussian-2d")
    x0 = np.random.default_rng(8).normal(0, 1.5, (6, 2))
    ts = np.linspace(t0, t1, 5)
    ref = reference_solve(flow, x0, ts, rtol=1e-11, atol=1e-11)
    for k, tk in enumerate(ts):
        np.testing.assert_allclose(flow.exact(tk, x0, t0), ref[k], atol=1e-8)
    ex_t = flow.exact(torch.tensor(t1), torch.from_numpy(x0), t0)
    np.testing.assert_allclose(ex_t.numpy(), ref[-1], atol=1e-8)


def test_gaussian_exact_per_sample_times() -> None:
    flow = GaussianFlow([0.3, -1.0], [0.2, 2.0])
    g = np.random.default_rng(9)
    x0 = g.normal(size=(5, 2))
    t0, t1 = g.uniform(0, 1, 5), g.uniform(0, 1, 5)
    loop = np.stack([flow.exact(b, x[None], a)[0] for a, b, x in zip(t0, t1, x0)])
    np.testing.assert_allclose(flow.exact(t1, x0, t0), loop, rtol=1e-14)


CLOSED_FORM = [
    LinearFlow([[-0.5, 1.0], [-2.0, -0.3]]),
    LinearFlow(np.random.default_rng(0).normal(size=(4, 4))),
    TimeScaledLinearFlow([[-0.5, 1.0], [-2.0, -0.3]], "cos"),
    TimeScaledLinearFlow([[0.2, -1.0], [1.5, 0.1]], "quadratic"),
    TimeScaledLinearFlow([[0.0, 1.0], [-1.0, 0.0]], (lambda t: 2 * t, lambda t: t * t)),
    PolynomialTimeFlow([1.0, -2.0, 3.0, 0.5, -4.0], dim=3),
    ExponentialTimeFlow(3.0),
    ExponentialTimeFlow(0.0),
    RotationFlow(3.0),
]


@pytest.mark.parametrize("flow", CLOSED_FORM, ids=lambda f: type(f).__name__)
@pytest.mark.parametrize("t0, t1", [(1.0, 0.0), (0.0, 1.0), (0.25, 0.9)])
def test_closed_form_exact_matches_reference(flow, t0: float, t1: float) -> None:
    x0 = np.random.default_rng(12).normal(size=(3, flow.dim))
    ts = np.linspace(t0, t1, 4)
    ref = reference_solve(flow, x0, ts, rtol=1e-12, atol=1e-12)
    for k, tk in enumerate(ts):
        np.testing.assert_allclose(flow.exact(tk, x0, t0), ref[k], rtol=1e-8, atol=1e-8)
    ex_t = flow.exact(t1, torch.from_numpy(x0), t0)
    assert isinstance(ex_t, torch.Tensor) and ex_t.dtype == torch.float64
    np.testing.assert_allclose(ex_t.numpy(), ref[-1], rtol=1e-8, atol=1e-8)


def test_closed_form_hand_values() -> None:
    """A few values worked out by hand (independent of the implementations)."""
    x0 = np.array([[1.0, 2.0]])
    th = 3.0 * 0.5
    rot = RotationFlow(3.0).exact(0.5, x0, 0.0)
    np.testing.assert_allclose(
        rot, [[np.cos(th) - 2 * np.sin(th), np.sin(th) + 2 * np.cos(th)]], rtol=1e-14
    )
    # v = 1 - 2t + 3t^2: integral over [0, 1] = 1 - 1 + 1 = 1
    np.testing.assert_allclose(PolynomialTimeFlow([1.0, -2.0, 3.0]).exact(1.0, x0, 0.0), x0 + 1)
    # v = exp(2t): integral over [0, 1] = (e^2 - 1)/2
    np.testing.assert_allclose(
        ExponentialTimeFlow(2.0).exact(1.0, x0, 0.0), x0 + (np.e**2 - 1) / 2, rtol=1e-14
    )
    # diagonal A: componentwise exponentials; a = cos, F = sin
    ts = TimeScaledLinearFlow(np.diag([-1.0, 2.0]), "cos").exact(0.7, x0, 0.2)
    dF = np.sin(0.7) - np.sin(0.2)
    np.testing.assert_allclose(ts, [[np.exp(-dF), 2 * np.exp(2 * dF)]], rtol=1e-13)
    with pytest.raises(ValueError, match="t1"):
        LinearFlow(np.eye(2)).exact(np.array([0.1, 0.2]), x0, 0.0)
    with pytest.raises(ValueError, match="scale"):
        TimeScaledLinearFlow(np.eye(2), "sin")
