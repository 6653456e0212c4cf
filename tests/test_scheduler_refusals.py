"""Issue 27: what ``BASolverScheduler`` refuses, and the one diffusers behaviour it keeps.

Truths used: diffusers' own ``FlowMatchEulerDiscreteScheduler`` (its schedule for
``num_inference_steps=0``, the errors it raises on the other counts, its silent NaN), and
tensors built here with NaN/inf written into them.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from adapters.diffusers_flow import BASolverScheduler  # noqa: E402
from adapters.torch_sit.sidenet.networks import ConvSideNet, TokenSideNet  # noqa: E402
from diffusers import FlowMatchEulerDiscreteScheduler  # noqa: E402


def conv_net(channels: int = 4) -> ConvSideNet:
    torch.manual_seed(0)
    return ConvSideNet(channels, base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1)


def test_27_scheduler_zero_steps_keeps_diffusers_empty_schedule():
    ours, euler = BASolverScheduler(shift=3.0), FlowMatchEulerDiscreteScheduler(shift=3.0)
    ours.set_timesteps(0)
    euler.set_timesteps(0)
    assert ours.timesteps.numel() == 0 == euler.timesteps.numel()
    assert ours.sigmas.tolist() == euler.sigmas.tolist() == [0.0]
    sample = torch.zeros(1, 4, 2, 2)
    with pytest.raises(IndexError):  # diffusers: a step on the empty schedule is torch's index error
        euler.step(sample, torch.tensor(1000.0), sample)
    with pytest.raises(ValueError, match=r"timestep: .* is not an entry of scheduler.timesteps \(\[\], 0 in all\)"):
        ours.step(sample, torch.tensor(1000.0), sample)


@pytest.mark.parametrize("count", [-3, 2.5, 3.0, True, np.float64(4.0)])
def test_27_scheduler_bad_step_counts_are_refused_naming_the_argument(count):
    euler = FlowMatchEulerDiscreteScheduler()
    if count is True:  # diffusers: a boolean is taken as 1 step
        euler.set_timesteps(count)
        assert len(euler.timesteps) == 1
    else:  # diffusers: numpy's "Number of samples, -3, must be non-negative" or Python's TypeError
        with pytest.raises((TypeError, ValueError)):
            euler.set_timesteps(count)
    with pytest.raises(ValueError, match=r"num_inference_steps: the number of steps, an int >= 1 \(0 gives diffusers"):
        BASolverScheduler().set_timesteps(count)


def test_27_scheduler_no_step_count_and_no_schedule_is_refused():
    with pytest.raises(TypeError):  # diffusers: "object of type 'NoneType' has no len()"
        FlowMatchEulerDiscreteScheduler().set_timesteps(None)
    with pytest.raises(ValueError, match=r"num_inference_steps: pass the number of steps .* or sigmas= or timesteps="):
        BASolverScheduler().set_timesteps(None)
    ours = BASolverScheduler()  # an explicit schedule needs no count, as in diffusers
    ours.set_timesteps(sigmas=[1.0, 0.5, 0.25])
    assert len(ours.timesteps) == 3
    ours.set_timesteps(np.int64(3))  # numpy integers are counts
    assert len(ours.timesteps) == 3


def test_27_scheduler_timestep_not_in_the_schedule():
    euler, ours = FlowMatchEulerDiscreteScheduler(), BASolverScheduler()
    euler.set_timesteps(4)
    ours.set_timesteps(4)
    sample = torch.zeros(1, 4, 2, 2)
    with pytest.raises(IndexError):
        euler.step(sample, torch.tensor(123.0), sample)
    shown = ", ".join(f"{float(t):g}" for t in euler.timesteps)  # diffusers' schedule, as the message shows it
    with pytest.raises(ValueError, match=rf"timestep: tensor\(123.\) is not an entry of scheduler.timesteps "
                                         rf"\(\[{shown}\], 4 in all\)"):
        ours.step(sample, torch.tensor(123.0), sample)
    ours.step(sample, ours.timesteps[0], sample)  # an entry works, and later steps are located by the index


@pytest.mark.parametrize("where", ["model_output", "sample"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_27_scheduler_non_finite_inputs_are_named(where, bad):
    euler, ours = FlowMatchEulerDiscreteScheduler(), BASolverScheduler()
    euler.set_timesteps(4)
    ours.set_timesteps(4)
    sample, output = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    (output if where == "model_output" else sample)[0, 1, 0, 0] = bad
    silent = euler.step(output, euler.timesteps[0], sample).prev_sample
    assert not bool(torch.isfinite(silent).all())  # the fault: Euler passes it on
    said = "the model output at step 1 of 4" if where == "model_output" else "the latents handed to step 1 of 4"
    sigmas = f"(sigma {float(euler.sigmas[0]):g} -> {float(euler.sigmas[1]):g})"
    with pytest.raises(FloatingPointError, match=said + " " + sigmas.replace("(", r"\(").replace(")", r"\)")):
        ours.step(output, ours.timesteps[0], sample)


def test_27_scheduler_overflow_in_the_update_is_named():
    ours = BASolverScheduler()
    ours.set_timesteps(4)
    big = torch.full((1, 4, 2, 2), 3e38)  # finite, but x + h v overflows float32 (|h| = 0.25, 3e38 + 7.5e37)
    with pytest.raises(FloatingPointError, match="the latents after step 1 of 4 .* are NaN/inf although"):
        ours.step(-big, ours.timesteps[0], big)


def test_27_scheduler_sidenet_for_other_channels_is_refused():
    ours = BASolverScheduler(sidenet=conv_net(4))
    ours.set_timesteps(3)
    sample = torch.zeros(1, 3, 8, 8)  # 3 channels for a 4-channel ConvSideNet
    with pytest.raises(RuntimeError):  # the fault: torch's channel error from inside the SideNet
        conv_net(4)(sample, sample, 0.5, 0.1)
    with pytest.raises(ValueError, match=r"BASolverScheduler: the SideNet: this is a ConvSideNet for image states "
                                         r"\(B, 4, H, W\) \(in_channels = 4\), but the states here have shape "
                                         r"\(B, 3, 8, 8\)"):
        ours.step(sample, ours.timesteps[0], sample)
    tokens = BASolverScheduler(sidenet=TokenSideNet(16, width=8, time_embed_dim=8, num_layers=1, num_heads=2))
    tokens.set_timesteps(3)
    packed = torch.zeros(1, 5, 8)  # Flux-packed latents of another width
    with pytest.raises(ValueError, match=r"TokenSideNet for token states \(B, N, 16\)"):
        tokens.step(packed, tokens.timesteps[0], packed)
