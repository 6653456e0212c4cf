"""``BASolverScheduler`` inside unchanged diffusers pipelines (tiny random SD3 and Flux, offline).

Truths used:
- diffusers' own ``FlowMatchEulerDiscreteScheduler``: with a SideNet whose output is zero every
  node of the rule returns the anchor velocity, so the single-anchor step is Euler's; compared
  step for step (the latents after every step), with shift and with dynamic shifting, for
  text-to-image (SD3, Flux) and img2img (SD3);
- ``baquad.solve`` (the sampling path of the core): one scheduler step with a non-zero SideNet
  equals its single-anchor interval on a 2-point grid with a field that returns the given
  velocity, and the lagged bi-anchor schedule equals its scheme B (``anchors="bi",
  final="single"``) on the scheduler's grid with the transformer as the field;
- counted transformer calls (a forward hook): one per step;
- the pooled embeddings handed to the transformer, read back from the SideNet's inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
pytest.importorskip("transformers")  # without it the SD3/Flux pipeline classes are placeholders

import baquad  # noqa: E402
from _ulps import NETWORK_ULPS, ulps  # noqa: E402
from adapters.diffusers_flow import BASolverScheduler  # noqa: E402
from adapters.torch_sit.sidenet.checkpoint import ArchitectureMismatch, save_sidenet  # noqa: E402
from adapters.torch_sit.sidenet.perception import NeuralPerception  # noqa: E402
from adapters.torch_sit.sidenet.networks import ConvSideNet, TokenSideNet  # noqa: E402
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler  # noqa: E402

from adapters.diffusers_flow.tiny import (  # noqa: E402
    NO_TEXT, CallCounter, flux_pipeline, flux_prompt, sd3_pipeline, sd3_prompt, sd3_transformer, trajectory,
)

ROOT = Path(__file__).resolve().parents[1]


def conv_net(active: bool = False, seed: int = 0, **kw) -> ConvSideNet:
    torch.manual_seed(seed)
    net = ConvSideNet(4, base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1, **kw)
    if active:
        with torch.no_grad():
            net.conv_out.weight.normal_(0.0, 0.3)
            net.conv_out.bias.normal_(0.0, 0.1)
    return net


def token_net(active: bool = False, seed: int = 0) -> TokenSideNet:
    torch.manual_seed(seed)
    net = TokenSideNet(4, width=8, time_embed_dim=8, num_layers=1, num_heads=2)
    if active:
        with torch.no_grad():
            net.out.weight.normal_(0.0, 0.3)
    return net


def assert_agree(a: torch.Tensor, b: torch.Tensor, where: str) -> None:
    """Agreement to 1e-6 of the latents' scale: the float32 rounding of a few steps. (The rule's
    weighted sum of four equal velocities is v to within a few ulps, not bit for bit; measured
    differences are 2e-7 to 1e-6 on latents of size about 4.)"""
    scale = max(1.0, float(b.abs().max()))
    diff = float((a - b).abs().max())
    assert diff <= 1e-6 * scale, f"{where}: max |BA - Euler| = {diff:.3g} > 1e-6 * {scale:.3g}"


SD3_CALL = dict(num_inference_steps=5, height=16, width=16, guidance_scale=2.0)
FLUX_CALL = dict(num_inference_steps=5, height=16, width=16, guidance_scale=3.5)


def run(pipe, call: dict, prompt: dict, output_type: str = "latent", **extra):
    counter = CallCounter(pipe.transformer)
    states, out = trajectory(pipe, **prompt, **call, **extra, output_type=output_type,
                             generator=torch.Generator().manual_seed(0))
    counter.remove()
    return states, out, counter.calls


# ---------------------------------------------------------------------------------------------
# a zero SideNet is the Euler scheduler, step for step


@pytest.mark.parametrize("kind, config", [
    ("sd3", dict(shift=3.0)),
    ("sd3", dict(use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15)),
    ("flux", dict(shift=3.0, use_dynamic_shifting=True)),
])
def test_zero_sidenet_reproduces_flow_match_euler(kind, config):
    make, call, prompt = (sd3_pipeline, SD3_CALL, sd3_prompt()) if kind == "sd3" else (flux_pipeline, FLUX_CALL, flux_prompt())
    net = conv_net() if kind == "sd3" else token_net()
    pipe = make(FlowMatchEulerDiscreteScheduler(**config))
    ref_states, ref, _ = run(pipe, call, prompt)
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=net)
    states, out, calls = run(pipe, call, prompt)
    assert calls == call["num_inference_steps"] == len(states)
    for k, (a, b) in enumerate(zip(states, ref_states)):
        assert_agree(a, b, f"step {k}")
    assert pipe.scheduler.sidenet is net and next(net.parameters()).dtype == states[0].dtype


def test_zero_sidenet_img2img_through_scale_noise_and_begin_index():
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    call = dict(num_inference_steps=6, strength=0.5, guidance_scale=2.0, image=image)
    pipe = sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0), img2img=True)
    ref_states, ref, _ = run(pipe, call, sd3_prompt())

    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=conv_net())
    seen: dict = {"scale_noise": 0, "begin": []}
    orig_scale, orig_begin = pipe.scheduler.scale_noise, pipe.scheduler.set_begin_index

    def scale_noise(*a, **k):
        seen["scale_noise"] += 1
        return orig_scale(*a, **k)

    def set_begin_index(i=0):
        seen["begin"].append(i)
        return orig_begin(i)

    pipe.scheduler.scale_noise, pipe.scheduler.set_begin_index = scale_noise, set_begin_index
    states, out, calls = run(pipe, call, sd3_prompt())
    assert seen["scale_noise"] == 1 and seen["begin"] == [3]  # int(6 * 0.5) steps skipped
    assert calls == len(states) == 3
    for k, (a, b) in enumerate(zip(states, ref_states)):
        assert_agree(a, b, f"step {k}")


# ---------------------------------------------------------------------------------------------
# one step with a non-zero SideNet is the core's single-anchor interval


@pytest.mark.parametrize("kind", ["conv", "token", "conv-cond"])
def test_one_step_equals_solve_single_anchor(kind):
    if kind == "token":
        net, shape = token_net(active=True), (2, 16, 4)
    else:
        net, shape = conv_net(active=True, cond_dim=6 if kind == "conv-cond" else None), (2, 4, 6, 6)
    g = torch.Generator().manual_seed(2)
    x, v = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    cond = torch.randn(2, 6, generator=g) if kind == "conv-cond" else None
    sched = BASolverScheduler(shift=3.0, sidenet=net)
    sched.set_timesteps(8)
    if cond is not None:
        sched.set_condition(cond=cond)
    i = 3
    sched.set_begin_index(i)
    out = sched.step(v, sched.timesteps[i], x).prev_sample
    s0, s1 = float(sched.sigmas[i]), float(sched.sigmas[i + 1])

    def field(t, xt):
        assert t == s0  # a single-anchor interval evaluates the field at its start only
        return v

    ref = baquad.solve(field, x, [s0, s1], perception=NeuralPerception(net, cond=cond), anchors="single")
    # two call paths into one float32 step x + h (v + d g): NETWORK_ULPS float32 ulps of the magnitudes
    torch.testing.assert_close(out, ref.x, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, x, v, ref.x))
    euler = x + (s1 - s0) * v
    assert (out - euler).abs().max() > 1e-3  # the SideNet acts


def test_lagged_bi_anchor_equals_solve_scheme_b():
    """The lagged predictor/corrector schedule over a whole run equals the core's scheme B."""
    net = conv_net(active=True)
    transformer = sd3_transformer()
    prompt = sd3_prompt()

    def field(t, x):
        with torch.no_grad():
            return transformer(hidden_states=x, timestep=torch.full((x.shape[0],), t * 1000.0),
                               encoder_hidden_states=prompt["prompt_embeds"].expand(x.shape[0], -1, -1),
                               pooled_projections=prompt["pooled_prompt_embeds"].expand(x.shape[0], -1),
                               return_dict=False)[0]

    sched = BASolverScheduler(shift=3.0, anchors="bi", sidenet=net)
    sched.set_timesteps(5)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    latents = x
    for k, t in enumerate(sched.timesteps):
        v = field(float(sched.sigmas[k]), latents)
        latents = sched.step(v, t, latents, return_dict=False)[0]
    ref = baquad.solve(field, x, sched.sigmas.tolist(), perception=NeuralPerception(net), anchors="bi", final="single")
    assert ref.nfe == 5
    # two call paths through 5 float32 steps: NETWORK_ULPS float32 ulps of the magnitudes per step
    torch.testing.assert_close(latents, ref.x, rtol=0, atol=5 * ulps(NETWORK_ULPS, torch.float32, x, latents, ref.x))
    assert len(sched.gaps) == 4 and all(g > 0 for g in sched.gaps)
    single = BASolverScheduler(shift=3.0, sidenet=net)
    single.set_timesteps(5)
    latents = x
    for k, t in enumerate(single.timesteps):
        latents = single.step(field(float(single.sigmas[k]), latents), t, latents, return_dict=False)[0]
    assert (latents - ref.x).abs().max() > 1e-4  # the corrector changed the result


def test_lagged_correction_dropped_when_latents_change():
    net = conv_net(active=True)
    sched = BASolverScheduler(anchors="bi", sidenet=net)
    sched.set_timesteps(3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 4, 4, generator=g)
    v0, v1 = torch.randn(x.shape, generator=g), torch.randn(x.shape, generator=g)
    x1 = sched.step(v0, sched.timesteps[0], x).prev_sample
    edited = x1 + 0.5
    out = sched.step(v1, sched.timesteps[1], edited).prev_sample
    s1, s2 = float(sched.sigmas[1]), float(sched.sigmas[2])
    fresh = BASolverScheduler(sidenet=net)  # a single-anchor step from the edited latents
    fresh.set_timesteps(3)
    fresh.set_begin_index(1)
    expected = fresh.step(v1, fresh.timesteps[1], edited).prev_sample
    torch.testing.assert_close(out, expected, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, edited, v1, expected))
    assert sched.gaps == [] and s1 > s2


# ---------------------------------------------------------------------------------------------
# conditioning read from the pipeline


class Spy(torch.nn.Module):
    """Wraps a SideNet and records the conditioning it receives."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.seen: list = []

    def config(self):
        return self.net.config()

    def forward(self, x, v, t, d, labels=None, guidance=None, cond=None):
        self.seen.append((cond.detach().clone(), guidance.detach().clone()))
        return self.net(x, v, t, d, labels, guidance, cond=cond)


def test_bind_feeds_the_positive_pooled_embedding_and_guidance():
    spy = Spy(conv_net(active=True, cond_dim=64, guidance=True))
    pipe = sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=spy)
    prompt = sd3_prompt(batch=2)
    with pytest.raises(ValueError, match="bind"):
        pipe(**prompt, **SD3_CALL, output_type="latent")
    pipe.scheduler.bind(pipe)
    pipe(**prompt, **SD3_CALL, output_type="latent")
    assert len(spy.seen) == SD3_CALL["num_inference_steps"]
    m = 3  # Gauss-Lobatto-4's forward probe: three nodes c > 0, stacked along the batch
    for cond, guidance in spy.seen:
        torch.testing.assert_close(cond, prompt["pooled_prompt_embeds"].repeat(m, 1))
        assert torch.all(guidance == SD3_CALL["guidance_scale"])
    pipe.scheduler.set_condition(cond=torch.zeros(2, 64), guidance_scale=5.0)  # explicit values win
    spy.seen.clear()
    pipe(**prompt, **dict(SD3_CALL, num_inference_steps=2), output_type="latent")
    assert all(torch.all(c == 0) and torch.all(gs == 5.0) for c, gs in spy.seen)  # passed through untouched


# ---------------------------------------------------------------------------------------------
# saving and loading


def test_save_and_reload_pipeline_gives_identical_images(tmp_path):
    net = conv_net(active=True)
    pipe = sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=net, anchors="bi")
    _, img, _ = run(pipe, SD3_CALL, sd3_prompt(), output_type="pt")
    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["scheduler"] == ["adapters.diffusers_flow", "BASolverScheduler"]
    cfg = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["sidenet_config"] == net.config() and cfg["anchors"] == "bi"
    assert (tmp_path / "scheduler" / "sidenet.safetensors").is_file()

    again = DiffusionPipeline.from_pretrained(tmp_path, **NO_TEXT)
    assert isinstance(again.scheduler, BASolverScheduler) and again.scheduler.sidenet is not net
    _, img2, _ = run(again, SD3_CALL, sd3_prompt(), output_type="pt")
    # the weights pass through the files untouched, so the same arithmetic on the same numbers
    # (same machine, same threads) gives the same images bit for bit
    assert torch.equal(img, img2)
    alone = BASolverScheduler.from_pretrained(tmp_path / "scheduler")
    for a, b in zip(alone.sidenet.state_dict().values(), net.state_dict().values()):
        assert torch.equal(a, b)


def test_a_mismatching_sidenet_is_refused(tmp_path):
    sched = BASolverScheduler(shift=3.0, sidenet=conv_net(active=True))
    sched.save_pretrained(tmp_path)
    other = ConvSideNet(4, base_channels=16, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1)
    save_sidenet(other, tmp_path / "sidenet.safetensors")
    with pytest.raises(ArchitectureMismatch, match="base_channels"):
        BASolverScheduler.from_pretrained(tmp_path)
    with pytest.raises(ArchitectureMismatch, match="base_channels"):
        BASolverScheduler.from_pretrained(tmp_path, sidenet=other)
    save_sidenet(conv_net(), tmp_path / "sidenet.safetensors", extra={"grid": {"shift": 0.5}})
    with pytest.raises(ArchitectureMismatch, match="grid"):
        BASolverScheduler.from_pretrained(tmp_path)
    (tmp_path / "sidenet.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sidenet.safetensors is missing"):
        BASolverScheduler.from_pretrained(tmp_path)


@pytest.mark.slow  # a fresh interpreter imports torch and diffusers (about 15 s on 2 cores)
def test_import_is_cheap_and_a_fresh_process_reloads_the_pipeline(tmp_path):
    pipe = sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=conv_net(active=True))
    pipe.save_pretrained(tmp_path)
    code = (
        "import sys\n"
        "import adapters.diffusers_flow\n"
        "assert 'diffusers' not in sys.modules and 'torch' not in sys.modules, 'import pulled in diffusers/torch'\n"
        "from diffusers import DiffusionPipeline\n"
        f"p = DiffusionPipeline.from_pretrained({str(tmp_path)!r}, **{{k: None for k in {sorted(NO_TEXT)!r}}})\n"
        "print(type(p.scheduler).__name__, p.scheduler.sidenet is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().endswith("BASolverScheduler True")


# ---------------------------------------------------------------------------------------------
# the SideNet's grid


def test_a_saved_grid_replaces_the_pipeline_schedule(tmp_path):
    grid4 = [1.0, 0.8, 0.5, 0.2, 0.0]
    save_sidenet(conv_net(), tmp_path / "net.safetensors", extra={"grid": {"steps": {"4": grid4}}})
    pipe = sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True))
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=tmp_path / "net.safetensors")
    states, _, calls = run(pipe, dict(SD3_CALL, num_inference_steps=4), sd3_prompt())
    assert pipe.scheduler.sigmas.tolist() == torch.tensor(grid4).tolist() and calls == 4  # the saved grid, untouched
    assert pipe.scheduler.sidenet_grid_in_use is not None
    run(pipe, dict(SD3_CALL, num_inference_steps=3), sd3_prompt())  # no grid for 3 steps: the pipeline's
    assert pipe.scheduler.sidenet_grid_in_use is None and len(pipe.scheduler.sigmas) == 4
    off = BASolverScheduler.from_config(pipe.scheduler.config, use_sidenet_grid=False)
    off.set_timesteps(4, mu=0.5)
    assert off.sigmas.tolist() != torch.tensor(grid4).tolist()


@pytest.mark.parametrize("grid, match", [
    ([1.0, 0.5, 0.6, 0.0], "strictly decreasing"),
    ([1.0, 0.5, 0.1], "end at 0"),
    ({"shift": -1.0}, "shift"),
    ({"steps": {"3": [1.0, 0.5, 0.0]}}, "2 steps, not 3"),
])
def test_a_bad_saved_grid_is_refused(tmp_path, grid, match):
    save_sidenet(conv_net(), tmp_path / "net.safetensors", extra={"grid": grid})
    with pytest.raises(ValueError, match=match):
        BASolverScheduler(sidenet=tmp_path / "net.safetensors")


def test_settings_that_are_not_an_ode_solve_are_refused():
    with pytest.raises(ValueError, match="stochastic_sampling"):
        BASolverScheduler(stochastic_sampling=True)
    with pytest.raises(ValueError, match="anchors"):
        BASolverScheduler(anchors="both")
    sched = BASolverScheduler()
    sched.set_timesteps(2)
    with pytest.raises(ValueError, match="integer index"):
        sched.step(torch.zeros(1, 2), 0, torch.zeros(1, 2))


def test_lagged_correction_survives_a_dtype_cast_by_the_pipeline():
    """A pipeline that casts the returned latents to a narrower dtype (float32 -> bfloat16) still
    gets the correction: the comparison with what the step returned is up to the cast."""
    net = conv_net(active=True)
    runs = []
    for cast in (False, True):
        sched = BASolverScheduler(anchors="bi", sidenet=net)
        sched.set_timesteps(3)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 4, 4, 4, generator=g)
        vs = [torch.randn(x.shape, generator=g) for _ in range(3)]
        for k, t in enumerate(sched.timesteps):
            x = sched.step(vs[k], t, x).prev_sample
            x = x.bfloat16() if cast else x
        runs.append((x.float(), len(sched.gaps)))
    assert runs[0][1] == runs[1][1] == 2  # both runs corrected intervals 1 and 2
    # 3 casts to bfloat16, each rounding by at most half a bfloat16 ulp of |x|, carried through the
    # later steps (a factor 2 of room): one bfloat16 ulp of the largest magnitude per cast
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=0, atol=3 * ulps(1, torch.bfloat16, runs[0][0]))
