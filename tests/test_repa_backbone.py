"""The guided REPA SiT backbone (adapters/torch_sit/sit/backbone.py).

Truths used: a re-implementation written here of REPA's published Euler sampler with
classifier-free guidance and a guidance interval (float64 grid ``linspace(1, 0, N + 1)`` and
state, the network called in float32; guided iff ``cfg_scale > 1`` and
``guidance_low <= t <= guidance_high``, then the batch ``[x, x]`` with labels
``[y, y_null]``, output chunks (cond, uncond), ``d = d_u + s (d_c - d_u)``; one network call per
step) calling the raw model directly; forward hooks counting the rows the network sees;
single-sample network calls for per-sample decisions.
"""

from __future__ import annotations

import pytest
import torch

import baquad
from _ulps import NETWORK_ULPS, ulps
from adapters.torch_sit.backbones import backbone_names, get_backbone
from adapters.torch_sit.sit.model import SiT
from adapters.torch_sit.sit.backbone import GuidedSiT, matmul_precision, repa_sit_backbone, tiny_sit_config


def repa_euler_sampler(model, latents, y, num_steps, cfg_scale=1.0, guidance_low=0.0, guidance_high=1.0, null=None):
    """REPA's deterministic Euler sampler, as published (no Heun corrector)."""
    t_steps = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    x_next = latents.to(torch.float64)
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        x_cur = x_next
        guided = cfg_scale > 1.0 and guidance_low <= t_cur <= guidance_high
        if guided:
            model_input = torch.cat([x_cur] * 2, dim=0)
            y_cur = torch.cat([y, torch.full_like(y, null)], dim=0)
        else:
            model_input, y_cur = x_cur, y
        time_input = torch.ones(model_input.size(0), dtype=torch.float64) * t_cur
        with torch.no_grad():
            d_cur = model(model_input.to(latents.dtype), time_input.to(latents.dtype), y_cur).to(torch.float64)
        if guided:
            d_cond, d_uncond = d_cur.chunk(2)
            d_cur = d_uncond + cfg_scale * (d_cond - d_uncond)
        x_next = x_cur + (t_next - t_cur) * d_cur
    return x_next


def row_counter(model: torch.nn.Module) -> list:
    rows: list = []
    model.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    return rows


@pytest.fixture(scope="module")
def tiny():
    return get_backbone("repa-sit-tiny", seed=0, guidance_low=0.2, guidance_high=0.7)


def guidance_tolerance(scale, *outputs) -> float:
    """Absolute tolerance for v = u + s (c - u) (float32 network) against the same formula on
    forwards of another batch shape: c and u may each be off by NETWORK_ULPS float32 ulps of the
    largest magnitude involved, and the combination multiplies c's error by |s| and u's by
    |1 - s| (s = 1, unguided: a factor 1)."""
    return (abs(scale) + abs(1.0 - scale)) * ulps(NETWORK_ULPS, torch.float32, *outputs)


def noise_and_labels(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 4, 8, 8, generator=g), torch.randint(0, 10, (b,), generator=g)


@pytest.mark.parametrize("steps,scale", [(10, 2.5), (7, 1.8), (10, 1.0)])
def test_guided_euler_equals_repa_sampler(tiny, steps, scale):
    sit: SiT = tiny.module.model
    x0, y = noise_and_labels()
    want = repa_euler_sampler(sit, x0, y, steps, scale, 0.2, 0.7, null=10)
    rows = row_counter(sit)
    ts = torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    res = baquad.solve(tiny.vfield(labels=y, guidance_scale=scale), x0.double(), ts, method="euler")
    sit._forward_hooks.clear()
    assert res.x.dtype == torch.float64
    # the promise of docs/sit.md: bit for bit REPA's Euler sampler (same batches, same float32
    # network calls, guidance and Euler update formed in float64 in the same order)
    assert torch.equal(res.x, want), float((res.x - want).abs().max())
    assert res.nfe == steps and len(rows) == steps  # one network forward per NFE
    inside = [scale > 1.0 and 0.2 <= float(t) <= 0.7 for t in ts[:-1]]
    assert rows == [6 if g else 3 for g in inside]
    if scale > 1.0:
        assert any(inside) and not all(inside)
        unguided = repa_euler_sampler(sit, x0, y, steps)
        assert (unguided - want).abs().max() > 1e-3  # guidance changed the samples


def test_interval_bounds_are_inclusive_at_grid_times():
    """t = 0.7 exactly (a node of the 10-step grid) is guided, as ``low <= t <= high`` says."""
    bb = get_backbone("repa-sit-tiny", guidance_low=0.0, guidance_high=0.7)
    x0, y = noise_and_labels()
    rows = row_counter(bb.module.model)
    ts = torch.linspace(1, 0, 11, dtype=torch.float64)
    baquad.solve(bb.vfield(labels=y, guidance_scale=2.0), x0.double(), ts, method="euler")
    want = [6 if 0.0 <= float(t) <= 0.7 else 3 for t in ts[:-1]]
    assert rows == want and want.count(6) == 7  # 0.7, 0.6, ..., 0.1


def test_mixed_batch_guides_only_the_samples_inside(tiny):
    sit: SiT = tiny.module.model
    x, y = noise_and_labels(b=5, seed=1)
    t = torch.tensor([0.9, 0.5, 0.7, 0.1, 0.2])  # interval [0.2, 0.7]: samples 1, 2, 4
    rows = row_counter(sit)
    v = tiny(t, x, labels=y, guidance_scale=3.0)
    sit._forward_hooks.clear()
    assert rows == [5 + 3]
    with torch.no_grad():
        for i in range(5):
            c = sit(x[i:i + 1], t[i:i + 1], y[i:i + 1])
            if i in (1, 2, 4):
                u = sit(x[i:i + 1], t[i:i + 1], torch.tensor([10]))
                tol = guidance_tolerance(3.0, c, u)
                assert float((u + 3.0 * (c - u) - c).abs().max()) > 100 * tol  # guidance is visible
                c = u + 3.0 * (c - u)
            else:
                tol = guidance_tolerance(1.0, c)
            torch.testing.assert_close(v[i:i + 1], c, rtol=0, atol=tol, msg=lambda m: f"sample {i}: {m}")


def test_per_sample_guidance_scale(tiny):
    sit: SiT = tiny.module.model
    x, y = noise_and_labels(b=3, seed=2)
    t = torch.full((3,), 0.5)
    s = torch.tensor([1.0, 2.0, 4.0])
    v = tiny(t, x, labels=y, guidance_scale=s)
    with torch.no_grad():
        c = sit(x, t, y)
        u = sit(x, t, torch.full_like(y, 10))
    torch.testing.assert_close(v[0], c[0], rtol=0, atol=guidance_tolerance(1.0, c[0]))
    for i in (1, 2):
        tol = guidance_tolerance(float(s[i]), c[i], u[i])
        torch.testing.assert_close(v[i], u[i] + s[i] * (c[i] - u[i]), rtol=0, atol=tol)
        assert float((s[i] - 1.0) * (c[i] - u[i]).abs().max()) > 100 * tol  # each scale is visible


def test_no_guidance_is_one_plain_pass(tiny):
    sit: SiT = tiny.module.model
    x, y = noise_and_labels()
    t = torch.full((3,), 0.5)
    rows = row_counter(sit)
    v_none = tiny(t, x, labels=y)
    v_one = tiny(t, x, labels=y, guidance_scale=1.0)
    sit._forward_hooks.clear()
    assert rows == [3, 3]
    with torch.no_grad():
        # pass-through promise: without guidance (or s = 1) the backbone returns the one plain
        # forward of the same batch, untouched
        assert torch.equal(v_none, sit(x, t, y)) and torch.equal(v_one, v_none)


def test_bf16_autocast_keeps_the_float32_state():
    ref = get_backbone("repa-sit-tiny", seed=3)
    bf = get_backbone("repa-sit-tiny", seed=3, autocast="bf16")
    x, y = noise_and_labels()
    t = torch.full((3,), 0.6)
    v32, v16 = ref(t, x, labels=y, guidance_scale=2.0), bf(t, x, labels=y, guidance_scale=2.0)
    assert v16.dtype == torch.float32 and next(bf.module.parameters()).dtype == torch.float32
    assert not torch.equal(v16, v32)
    assert (v16 - v32).norm() / v32.norm() < 3e-2


def test_matmul_precision_is_scoped():
    before = torch.get_float32_matmul_precision()
    with matmul_precision(torch.device("cuda"), True):
        assert torch.get_float32_matmul_precision() == "high"
    assert torch.get_float32_matmul_precision() == before
    with matmul_precision(torch.device("cpu"), True):
        assert torch.get_float32_matmul_precision() == before


def test_registry_and_errors(tmp_path):
    assert {"repa-sit-xl2-256", "repa-sit-xl2-512", "repa-sit-tiny"} <= set(backbone_names())
    with pytest.raises(ValueError, match="needs ckpt=PATH"):
        get_backbone("repa-sit-xl2-256")
    with pytest.raises(ValueError, match="REPA publishes none"):
        get_backbone("repa-sit-xl2-512")
    bb = get_backbone("repa-sit-tiny")
    assert bb.state_shape == (4, 8, 8) and bb.num_classes == 10 and bb.extra["null_class"] == 10
    assert bb.num_parameters == sum(p.numel() for p in bb.module.model.parameters())
    x, _ = noise_and_labels()
    with pytest.raises(ValueError, match="labels"):
        bb(torch.full((3,), 0.5), x)
    with pytest.raises(ValueError, match="guidance_low"):
        GuidedSiT(bb.module.model, guidance_low=0.8, guidance_high=0.2)
    no_null = repa_sit_backbone(tiny_sit_config().replace(class_dropout_prob=0.0), zero_init=False)
    with pytest.raises(ValueError, match="null class"):
        no_null(torch.full((3,), 0.5), x, labels=torch.zeros(3, dtype=torch.long), guidance_scale=2.0)


def test_backbone_from_a_checkpoint_file(tmp_path):
    src = get_backbone("repa-sit-tiny", seed=7)
    path = tmp_path / "tiny.pt"
    torch.save({"ema": src.module.model.state_dict(), "steps": 3}, path)
    bb = repa_sit_backbone(tiny_sit_config(), ckpt=str(path))
    assert bb.extra["load_report"].source == "ema"
    x, y = noise_and_labels()
    t = torch.tensor([0.9, 0.5, 0.3])
    # the weights pass through the file untouched: the same arithmetic on the same numbers
    assert torch.equal(bb(t, x, labels=y, guidance_scale=2.0), src(t, x, labels=y, guidance_scale=2.0))


class HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that read a tensor's value back to the host (a sync on a GPU)."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket in (torch.ops.aten._local_scalar_dense, torch.ops.aten.nonzero):
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("t", [0.9, 0.7, 0.3])
def test_a_float_time_is_decided_on_the_host_with_the_per_sample_result(t):
    """The sampling call (one float time, one scale) reads nothing back from the device once its
    labels were checked, and gives what the per-sample path gives for that time."""
    bb = get_backbone("repa-sit-tiny", seed=7)
    x, y = noise_and_labels()
    with HostReads() as first:
        bb.module(t, x, labels=y, guidance_scale=2.0)
    with HostReads() as second:
        got = bb.module(t, x, labels=y, guidance_scale=2.0)
    assert len(first.reads) >= 1 and second.reads == []  # the labels are read once
    want = bb.module(torch.full((3,), t, dtype=torch.float64), x, labels=y, guidance_scale=2.0)
    # the same rows through the same network and the same combination: the same numbers
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 10\]"):
        bb.module(t, x, labels=torch.tensor([0, 1, 11]), guidance_scale=2.0)
