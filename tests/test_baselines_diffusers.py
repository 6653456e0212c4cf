"""The flow solvers match diffusers' schedulers step for step.

Alignment (the same ODE problem on both sides):
- Grid: diffusers builds it (``set_timesteps``); our ``ts`` is ``scheduler.sigmas`` converted
  to Python floats, so both use the identical float32-representable times, including
  diffusers' own t = 1 clamp (UniPC) and the final sigma 0.
- Field: the same analytic velocity (single-Gaussian data, closed form below) is called at
  the exact sigma ``scheduler.sigmas[k]`` on the diffusers side, not at diffusers'
  int64-truncated ``timesteps`` (which only index the schedule here).  ``flow_prediction``
  makes diffusers form ``x0 = x - sigma v`` exactly as we do.
- Precision: diffusers computes in float32 (DPM-Solver upcasts the sample to float32,
  coefficients come from float32 sigmas); we run in float64.  Agreement to 1e-5 relative
  is therefore the float32 round-off of ~20 steps, nothing looser.
- States compared: the output of every step.  For UniPC the state that continues is the
  corrected one, which diffusers forms at the start of the NEXT ``step`` and keeps in
  ``scheduler.last_sample``; our ``callback`` reports that corrected state.

Settings are matched explicitly: ``use_flow_sigmas=True``, ``prediction_type="flow_prediction"``,
``final_sigmas_type="zero"`` (the default) and diffusers' ``lower_order_final`` rule
(``lower_order_final="diffusers"`` for DPM-Solver++; UniPC's diffusers rule is ``"min"``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

if os.environ.get("BAQUAD_REQUIRE_REFERENCES") == "1":  # CI (.ci/run): a broken install must fail, not skip
    import diffusers
    import torch
else:  # the references come with the dev extra; without it these tests skip
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")

from baquad.methods import get_method  # noqa: E402
from baquad.schedules import uniform  # noqa: E402

# Gaussian data N(MU, diag(STD^2)), linear path; v(x, t) = -mu + (t - (1-t) s^2)/sigma(t)^2 (x - (1-t) mu)
# with sigma(t)^2 = (1-t)^2 s^2 + t^2 (the exact velocity of that flow).
MU = np.array([0.5, -1.0, 2.0, 0.0])
STD = np.array([0.3, 0.7, 1.5, 1.0])
X0 = np.random.default_rng(1).standard_normal((6, 4))
RTOL = 1e-5


def field(t: float, x):
    coef = (t - (1 - t) * STD**2) / ((1 - t) ** 2 * STD**2 + t**2)
    if isinstance(x, torch.Tensor):
        mu = torch.as_tensor(MU, dtype=x.dtype)
        return -mu + torch.as_tensor(coef, dtype=x.dtype) * (x - (1 - t) * mu)
    return -MU + coef * (x - (1 - t) * MU)


_SCHEDULERS: dict = {}


def scheduler(kind: str, **config):
    """One scheduler object per configuration for the whole module (set_timesteps resets it)."""
    key = (kind, repr(sorted(config.items())))
    if key not in _SCHEDULERS:
        cls = getattr(diffusers, kind)
        if kind.startswith("FlowMatch"):
            _SCHEDULERS[key] = cls(**config)
        else:
            _SCHEDULERS[key] = cls(use_flow_sigmas=True, prediction_type="flow_prediction", **config)
    return _SCHEDULERS[key]


def run_diffusers(sch, n_steps: int):
    """Run diffusers' loop; return (ts, step outputs, corrected states from last_sample)."""
    sch.set_timesteps(n_steps)
    ts = tuple(float(s) for s in sch.sigmas)
    x = torch.tensor(X0, dtype=torch.float32)
    outs, corrected = [], []
    for k, timestep in enumerate(sch.timesteps):
        v = field(ts[k], x)  # exact sigma, not timestep / 1000
        x = sch.step(v, timestep, x).prev_sample
        outs.append(x.double().numpy())
        last = getattr(sch, "last_sample", None)
        corrected.append(None if last is None else last.double().numpy())
    return ts, outs, corrected


def ours(method: str, ts, **opts):
    states = []
    x = get_method(method).sampler(field, X0, ts, callback=lambda i, t, xi: states.append(xi), **opts)
    return x, states


def assert_close(a, b, rtol=RTOL):
    err = np.max(np.abs(a - b)) / np.max(np.abs(b))
    assert err < rtol, err


@pytest.mark.parametrize("n_steps", [10, 20])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("order", [2, 3])
def test_dpmpp_matches_diffusers(order: int, solver_type: str, n_steps: int) -> None:
    sch = scheduler("DPMSolverMultistepScheduler", solver_order=order, solver_type=solver_type,
                    flow_shift=3.0, lower_order_final=True, final_sigmas_type="zero")
    ts, outs, _ = run_diffusers(sch, n_steps)
    assert ts[-1] == 0.0 and ts[0] < 1.0
    x, states = ours("dpm++", ts, order=order, solver_type=solver_type, lower_order_final="diffusers")
    assert len(states) == n_steps
    for k in range(n_steps):
        assert_close(states[k], outs[k])
    assert_close(x, outs[-1])


def test_dpmpp_lower_order_final_rules_differ_only_from_15_steps() -> None:
    # Below 15 steps the SANA/UniPC "min" rule equals diffusers' rule; from 15 on diffusers keeps
    # order 3 on the second-to-last step, which "min" lowers to 2 (a real difference).
    sch = scheduler("DPMSolverMultistepScheduler", solver_order=3, solver_type="midpoint",
                    flow_shift=3.0, lower_order_final=True, final_sigmas_type="zero")
    ts, outs, _ = run_diffusers(sch, 10)
    assert_close(ours("dpm++", ts, order=3, lower_order_final="min")[0], outs[-1])
    ts, outs, _ = run_diffusers(sch, 20)
    x_min = ours("dpm++", ts, order=3, lower_order_final="min")[0]
    assert np.max(np.abs(x_min - outs[-1])) / np.max(np.abs(outs[-1])) > 1e-4


def test_dpmpp_without_lower_order_final_matches_diffusers() -> None:
    # diffusers lower_order_final=False still takes an order-1 final step into sigma = 0
    # (final_sigmas_type="zero"); our "none" forces order 1 into t = 0 too.
    sch = scheduler("DPMSolverMultistepScheduler", solver_order=3, solver_type="heun",
                    flow_shift=1.0, lower_order_final=False, final_sigmas_type="zero")
    ts, outs, _ = run_diffusers(sch, 8)
    x, states = ours("dpm++", ts, order=3, solver_type="heun", lower_order_final="none")
    for k in range(8):
        assert_close(states[k], outs[k])


def test_dpmpp_flow_grid_is_shifted_uniform_from_0999() -> None:
    # diffusers/SANA flow grid: sigma_j = shift(0.999 (N - j) / N), then 0.
    sch = scheduler("DPMSolverMultistepScheduler", solver_order=2, flow_shift=3.0)
    sch.set_timesteps(12)
    np.testing.assert_allclose(sch.sigmas.double().numpy(), uniform(12, shift=3.0, t_max=0.999), rtol=1e-6)


@pytest.mark.parametrize("n_steps", [6, 12])
@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers(order: int, variant: str, n_steps: int) -> None:
    sch = scheduler("UniPCMultistepScheduler", solver_order=order, solver_type=variant,
                    flow_shift=3.0, lower_order_final=True, final_sigmas_type="zero")
    ts, outs, corrected = run_diffusers(sch, n_steps)
    assert ts[-1] == 0.0 and ts[0] == pytest.approx(1 - 1e-6, abs=1e-7)  # diffusers' own clamp
    x, states = ours("unipc", ts, order=order, variant=variant, lower_order_final="diffusers")
    assert len(states) == n_steps
    # corrected states x_1 .. x_{N-1}: diffusers' last_sample after step k is the corrected x_k
    for k in range(1, n_steps):
        assert_close(states[k - 1], corrected[k])
    if variant == "bh2":
        assert_close(x, outs[-1])
    else:
        # diffusers' bh1 final step into sigma = 0 computes alpha * (-inf) * 0 = NaN ...
        assert np.isnan(outs[-1]).all()
        # ... ours is the order-1 step x_N = x0_hat at the state the field was last called at,
        # which is diffusers' uncorrected output of step N - 2.
        xp, t = outs[-2], ts[-2]
        assert_close(x, xp - t * field(t, xp))


def test_unipc_disable_corrector_matches_diffusers() -> None:
    sch = scheduler("UniPCMultistepScheduler", solver_order=2, solver_type="bh2", flow_shift=5.0,
                    disable_corrector=[0, 1, 4])
    ts, outs, corrected = run_diffusers(sch, 8)
    x, states = ours("unipc", ts, order=2, variant="bh2", disable_corrector=[0, 1, 4])
    for k in range(1, 8):
        assert_close(states[k - 1], corrected[k])
    assert_close(x, outs[-1])


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_euler_matches_flow_match_euler(shift: float) -> None:
    sch = scheduler("FlowMatchEulerDiscreteScheduler", shift=shift)
    sch.set_timesteps(9)
    ts = tuple(float(s) for s in sch.sigmas)
    x = torch.tensor(X0, dtype=torch.float32)
    for k, timestep in enumerate(sch.timesteps):
        x = sch.step(field(ts[k], x), timestep, x).prev_sample
    assert_close(ours("euler", ts)[0], x.double().numpy())


def test_heun_matches_flow_match_heun() -> None:
    # diffusers FlowMatchHeunDiscreteScheduler: the last step is a bare Euler step (2N - 1 NFE),
    # our final_step="euler".  Its sigmas are [s0, s1, s1, ..., s_{N-1}, s_{N-1}, 0].
    sch = scheduler("FlowMatchHeunDiscreteScheduler", shift=3.0)
    n = 7
    sch.set_timesteps(n)
    sig = [float(s) for s in sch.sigmas]
    ts = tuple(dict.fromkeys(sig))  # unique, in order
    assert len(ts) == n + 1
    x = torch.tensor(X0, dtype=torch.float32)
    calls = 0
    for k, timestep in enumerate(sch.timesteps):
        t = sig[sch.step_index if sch.step_index is not None else 0]
        x = sch.step(field(t, x), timestep, x).prev_sample
        calls += 1
    assert calls == 2 * n - 1
    assert_close(ours("heun", ts, final_step="euler")[0], x.double().numpy())
