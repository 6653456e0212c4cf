"""The patch design (``ConvSideNet(patch=p)``), the fused-attention layout, GroupNorm in the
activation dtype and the host-free inputs (issue 24).

Truths used: the Table 4 attention as it was computed before the re-layout, written out here
(1 x 1 convolutions, q, k, v split as (3, heads, head_dim, H W), softmax(q^T k / sqrt(d)) v) in
float64; GroupNorm from its definition in float64; the pixel shuffle written out with index
arithmetic; exact zeros of a zero-initialised output layer; parameter counts written out layer by
layer; a bfloat16 autocast forward within bfloat16's rounding of the float32 one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from _ulps import NETWORK_ULPS, ulps
from adapters.torch_sit.sidenet.checkpoint import load_sidenet, save_sidenet
from adapters.torch_sit.sidenet.networks import (ConvSideNet, SelfAttention, build_sidenet, count_parameters,
                                                 group_norm, host_values, per_sample)
from adapters.torch_sit.sidenet.paper import paper_sidenet_config
from adapters.torch_sit.sidenet.perception import NeuralPerception


def small_patch(**kw) -> ConvSideNet:
    torch.manual_seed(0)
    return ConvSideNet(3, base_channels=16, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1, num_classes=4,
                       patch=2, **kw)


def randomize(net: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(1)
    with torch.no_grad():
        net.conv_out.weight.normal_(0.0, 0.3)
        net.conv_out.bias.normal_(0.0, 0.3)
    return net


def old_attention(block: SelfAttention, h: torch.Tensor) -> torch.Tensor:
    """The attention of Table 4's ConvSideNet as it was computed before q, k, v were laid out
    for the fused kernels, written out in float64."""
    b, ch, hh, ww = h.shape
    heads, dh = block.num_heads, ch // block.num_heads
    hn = torch.nn.functional.group_norm(h.double(), block.norm.num_groups, block.norm.weight.double(),
                                        block.norm.bias.double(), block.norm.eps)
    qkv = torch.einsum("oc,bcn->bon", block.qkv.weight.double()[:, :, 0, 0], hn.reshape(b, ch, hh * ww))
    qkv = (qkv + block.qkv.bias.double()[None, :, None]).reshape(b, 3, heads, dh, hh * ww)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]  # (b, heads, dh, N)
    weights = torch.softmax(torch.einsum("bhdn,bhdm->bhnm", q, k) / math.sqrt(dh), dim=-1)
    a = torch.einsum("bhnm,bhdm->bhdn", weights, v).reshape(b, ch, hh * ww)
    out = torch.einsum("oc,bcn->bon", block.proj.weight.double()[:, :, 0, 0], a) + block.proj.bias.double()[None, :, None]
    return h.double() + out.reshape(b, ch, hh, ww)


def test_attention_relayout_computes_the_old_formula():
    torch.manual_seed(0)
    block = SelfAttention(16, 4)
    with torch.no_grad():
        block.norm.weight.normal_(1.0, 0.2)
        block.norm.bias.normal_(0.0, 0.2)
        h = torch.randn(3, 16, 5, 6)
        got, want = block(h), old_attention(block, h)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, want))


def test_a_saved_conv_sidenet_loads_with_the_same_weights_and_attention(tmp_path):
    """Old SideNet files keep loading: the re-layout kept every parameter's name and shape, and a
    loaded network's attention blocks compute the old formula."""
    torch.manual_seed(0)
    net = ConvSideNet(3, base_channels=16, time_embed_dim=8, num_layers=2, num_heads=4, res_blocks=1)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["blocks.1.qkv.weight"] == (48, 16, 1, 1) and shapes["blocks.1.proj.weight"] == (16, 16, 1, 1)
    loaded = load_sidenet(save_sidenet(net, tmp_path / "old.safetensors"))
    assert {k: tuple(v.shape) for k, v in loaded.state_dict().items()} == shapes
    h = torch.randn(2, 16, 4, 4)
    with torch.no_grad():
        want = old_attention(net.blocks[1], h)
        got = loaded.blocks[1](h)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, want))


def test_group_norm_in_the_activation_dtype_is_the_definition():
    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(4, 8)
    with torch.no_grad():
        norm.weight.normal_(1.0, 0.3)
        norm.bias.normal_(0.0, 0.3)
    h = 3 * torch.randn(2, 8, 5, 5) + 1
    g = h.double().reshape(2, 4, -1)
    want = (g - g.mean(-1, keepdim=True)) / torch.sqrt(g.var(-1, unbiased=False, keepdim=True) + norm.eps)
    want = want.reshape(h.shape) * norm.weight.double()[None, :, None, None] + norm.bias.double()[None, :, None, None]
    got = group_norm(norm, h)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, want))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = group_norm(norm, h.bfloat16())
    assert low.dtype == torch.bfloat16  # not cast up to float32, as F.group_norm is under autocast
    torch.testing.assert_close(low.double(), want, rtol=0, atol=ulps(8, torch.bfloat16, want))


def test_the_patch_design_runs_its_blocks_at_a_quarter_of_the_positions():
    net = small_patch()
    seen = []
    net.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    x = torch.randn(2, 3, 8, 12)
    assert net(x, torch.randn_like(x), 0.5, -0.1).shape == x.shape
    assert seen == [(2, 16, 4, 6)]
    # the head: 16 // 2 = 8 features per pixel from the low-resolution blocks (a pixel shuffle of
    # 8 x 2 x 2 channels), the 2 C = 6 input channels again, one AdaGN ResBlock at full resolution
    assert net.up.out_channels == 8 * 4 and net.refine.in_channels == 8 + 6 and net.conv_out.in_channels == 8
    assert net.conv_in.stride == (2, 2) and net.conv_in.kernel_size == (4, 4)


def test_pixel_shuffle_puts_channel_c_p2_plus_i_p_plus_j_at_row_i_column_j():
    p, c = 2, 3
    x = torch.arange(c * p * p * 2 * 3, dtype=torch.float32).reshape(1, c * p * p, 2, 3)
    out = torch.nn.functional.pixel_shuffle(x, p)
    for k, a, b, i, j in np.ndindex(c, 2, 3, p, p):
        assert out[0, k, a * p + i, b * p + j] == x[0, k * p * p + i * p + j, a, b]


def test_untrained_patch_sidenet_returns_exact_zeros_and_reads_every_input():
    net = small_patch()
    x, v = torch.randn(4, 3, 6, 8), torch.randn(4, 3, 6, 8)
    t, d, y = torch.rand(4), -0.2 * torch.rand(4), torch.tensor([0, 1, 2, 4])
    assert torch.equal(net(x, v, t, d, y), torch.zeros_like(x))  # zero output layer: exact zeros
    randomize(net)
    g = net(x, v, t, d, y)
    assert g.shape == x.shape and torch.isfinite(g).all()
    for changed in (dict(x=x + 0.1), dict(v=v + 0.1), dict(t=t * 0.5), dict(d=d * 0.5), dict(y=torch.zeros(4).long())):
        args = {**dict(x=x, v=v, t=t, d=d, y=y), **changed}
        assert not torch.equal(net(args["x"], args["v"], args["t"], args["d"], args["y"]), g)


def test_patch_sidenet_refuses_sizes_it_cannot_cut_into_patches():
    net = small_patch()
    with pytest.raises(ValueError, match="multiples of the patch size 2"):
        net(torch.randn(1, 3, 5, 6), torch.randn(1, 3, 5, 6), 0.5, -0.1)
    for bad in (0, 2.5, True, "2"):
        with pytest.raises(ValueError, match="ConvSideNet: patch must"):
            build_sidenet({"class": "ConvSideNet", "in_channels": 3, "patch": bad})


def test_patch_sidenet_config_and_file_roundtrip(tmp_path):
    net = randomize(small_patch(guidance=True, path_features=True))
    cfg = net.config()
    assert cfg["class"] == "ConvSideNet" and cfg["patch"] == 2
    assert build_sidenet(cfg).config() == cfg
    assert "patch" not in ConvSideNet(3).config()  # full resolution: the config of before
    assert ConvSideNet.min_tensor_count(cfg) <= len(net.state_dict())
    loaded = load_sidenet(save_sidenet(net, tmp_path / "patch.safetensors"))
    x = torch.randn(2, 3, 4, 4)
    args = (x, torch.randn_like(x), torch.tensor([0.9, 0.2]), torch.tensor([-0.1, 0.05]), torch.tensor([1, 3]), 2.0)
    with torch.no_grad():
        assert torch.equal(loaded(*args), net(*args))  # the same weights, the same arithmetic: a copy


def patch_parameters(c: int, p: int, w: int, e: int, classes: int, guidance: bool) -> int:
    """The patch design's parameters written out: conditioning MLPs (t, d with 2 offset extras,
    guidance) and label table; the stride-p stem (kernel p + 2 (p // 2)); one layer of 3 AdaGN
    ResBlocks (two AdaGN projections, two 3x3 convolutions each) and an attention (GroupNorm
    affine, 1 x 1 qkv and proj); the output GroupNorm; the head: 3x3 up to (w / 2) p^2 channels,
    3x3 refine from w / 2 + 2 c channels, one ResBlock of width w / 2, its GroupNorm, 3x3 out."""
    mlp = lambda n_in: (n_in * e + e) + (e * e + e)
    cond = mlp(e) + mlp(e + 2) + (classes + 1) * e + (mlp(e) if guidance else 0)
    k = p + 2 * (p // 2)
    resblock = lambda ch: 2 * (e * 2 * ch + 2 * ch) + 2 * (ch * ch * 9 + ch)
    attention = 2 * w + (w * 3 * w + 3 * w) + (w * w + w)
    hd = w // 2
    head = (w * hd * p * p * 9 + hd * p * p) + ((hd + 2 * c) * hd * 9 + hd) + resblock(hd) + 2 * hd + (hd * c * 9 + c)
    return cond + (2 * c * w * k * k + w) + 3 * resblock(w) + attention + 2 * w + head


@pytest.mark.parametrize("resolution, patch", [(256, 2), (512, 4)])
def test_the_default_latent_sidenet_is_the_patch_design(resolution, patch):
    cfg = paper_sidenet_config(resolution=resolution, guidance=True)
    assert cfg["class"] == "ConvSideNet" and cfg["patch"] == patch
    got = (cfg["base_channels"], cfg["time_embed_dim"], cfg["num_layers"], cfg["res_blocks"], cfg["num_heads"])
    assert got == (128, 256, 1, 3, 4)
    with torch.device("meta"):
        n = count_parameters(build_sidenet(cfg))
    assert n == patch_parameters(4, patch, 128, 256, 1000, True)
    assert "patch" not in paper_sidenet_config(resolution=resolution, design="table4")
    with pytest.raises(ValueError, match="design must be one of"):
        paper_sidenet_config(design="unet")


class HostData(TorchDispatchMode):
    """Records tensors made from host data (``torch.tensor``, ``torch.as_tensor`` of numbers):
    on a GPU each is a copy from host memory that waits for the device."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func._overloadpacket in (torch.ops.aten.lift_fresh, torch.ops.aten.lift_fresh_copy, torch.ops.aten.scalar_tensor):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_per_sample_and_host_values_fill_on_the_device_without_host_data():
    with HostData() as watch:
        t = per_sample(0.25, 3, blocks=2, dtype=torch.float64, device="meta")
        d = host_values([0.5, -0.125], device="meta", dtype=torch.float32)
    assert watch.ops == [] and t.shape == (6,) and d.shape == (2,)
    got = per_sample(0.25, 3, blocks=2, dtype=torch.float64)
    assert got.dtype == torch.float64 and got.tolist() == [0.25] * 6
    assert host_values([0.5, -0.125], device="cpu", dtype=torch.float32).tolist() == [0.5, -0.125]


def test_perception_under_bf16_autocast_returns_the_state_dtype_within_bf16_rounding():
    net = randomize(small_patch()).eval()
    x, v = torch.randn(4, 3, 4, 4), torch.randn(4, 3, 4, 4)
    labels = torch.tensor([0, 1, 2, 3])
    full = NeuralPerception(net, labels=labels)(x, v, 0.6, (-0.05, -0.1))
    low = NeuralPerception(net, labels=labels, autocast=torch.bfloat16)(x, v, 0.6, (-0.05, -0.1))
    assert low.dtype == torch.float32 and low.shape == full.shape
    # v + d g: g carries bfloat16 rounding through the network (a few units of 2^-8 relative), |d| <= 0.1
    g_size = float(((full - v) / 0.1).abs().max())
    assert float((low - full).abs().max()) <= 0.1 * 64 * 2.0 ** -8 * g_size
    assert not torch.equal(low, full)  # it did run in bfloat16
    with pytest.raises(ValueError, match="autocast must be None, torch.bfloat16 or torch.float16"):
        NeuralPerception(net, autocast="bf16")


@pytest.mark.parametrize("resolution", [256, 512])
def test_the_sit_xl_recipe_trains_the_patch_design(resolution):
    from types import SimpleNamespace

    from adapters.torch_sit.sidenet.train import RECIPES, default_sidenet_config

    recipe = RECIPES[f"repa-sit-xl2-{resolution}"]
    backbone = SimpleNamespace(name=f"repa-sit-xl2-{resolution}", state_shape=(4, resolution // 8, resolution // 8),
                               num_classes=1000, num_parameters=683_242_512, cond_dim=None)
    got = default_sidenet_config(backbone, recipe["arch"], **recipe["sidenet"])
    assert got == paper_sidenet_config(resolution=resolution, guidance=True)
