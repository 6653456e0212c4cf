"""SideNets and the neural perception (adapters/torch_sit/sidenet/networks.py, perception.py).

Truths used: baquad's own AnchorOnly perception and anchor-only solve (an untrained SideNet must
reproduce them bit for bit, Eq. 5 with g = 0), per-offset evaluation of the SideNet written here
(v + d * g(x, v, t, d) one offset at a time), forward-hook call counts, and parameter sums
computed here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import baquad
from _ulps import NETWORK_ULPS, ulps
from baquad.perception import AnchorOnly
from adapters.torch_sit.backbones import Backbone, get_backbone
from adapters.torch_sit.sidenet.checkpoint import load_sidenet, save_sidenet
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.networks import (
    ConvSideNet,
    MLPSideNet,
    build_sidenet,
    count_parameters,
    sidenet_report,
)


def small_mlp(**kw) -> MLPSideNet:
    torch.manual_seed(0)
    return MLPSideNet(2, hidden=32, depth=2, embed_dim=16, **kw)


def small_conv(**kw) -> ConvSideNet:
    torch.manual_seed(0)
    return ConvSideNet(3, base_channels=16, time_embed_dim=32, num_layers=1, num_heads=2, res_blocks=1, **kw)


def randomize_output(net: nn.Module) -> nn.Module:
    """Give the zero-initialised output layer random weights so that g != 0."""
    out = net.out if isinstance(net, MLPSideNet) else net.conv_out
    torch.manual_seed(1)
    with torch.no_grad():
        out.weight.normal_(0.0, 0.3)
        out.bias.normal_(0.0, 0.3)
    return net


def states(net: nn.Module, b: int = 5, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    shape = (b, 2) if isinstance(net, MLPSideNet) else (b, 3, 6, 6)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


OFFSETS = (-0.4, -0.1, 0.0, 0.05, 0.3)
NETS = [small_mlp, small_conv]


def small_mlp_path():
    return small_mlp(path_features=True)


def small_conv_path():
    return small_conv(path_features=True)


NETS_ALL = NETS + [small_mlp_path, small_conv_path]
IDS_ALL = ["mlp", "conv", "mlp-path", "conv-path"]


@pytest.mark.parametrize("make", NETS_ALL, ids=IDS_ALL)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_untrained_sidenet_is_anchor_only_exactly(make, dtype):
    net = make()
    x, v = states(net, dtype=dtype)
    for t in (1.0, 0.37, 0.0):
        got = NeuralPerception(net)(x, v, t, OFFSETS)
        want = AnchorOnly()(x, v, t, OFFSETS)
        assert got.shape == (len(OFFSETS), *x.shape) and got.dtype == dtype
        assert torch.equal(got, want)  # the promise (Eq. 5, g = 0 exactly): v + d * 0 is v, bit for bit


class AnchorOnlyThroughCalls(AnchorOnly):
    """Anchor-only as stacked predictions only, as a SideNet gives them (no ``linear_terms``,
    with which the solver adds each anchor velocity once: the same sums in another order)."""

    linear_terms = None


@pytest.mark.parametrize("rule,final", [("gauss-lobatto-4", "single"), ("gauss-lobatto-4", "bi"),
                                        ("gauss-lobatto-3", "bi"), ("gauss-legendre-3", "single")])
def test_solve_with_untrained_mlp_equals_anchor_only_solve(rule, final):
    bb = get_backbone("gmm-ring2d")
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    ts = [1.0, 0.7, 0.4, 0.15, 0.0]
    a = baquad.solve(bb.vfield(), x0, ts, rule=rule, perception=NeuralPerception(small_mlp()), final=final)
    b = baquad.solve(bb.vfield(), x0, ts, rule=rule, perception=AnchorOnlyThroughCalls(), final=final)
    assert torch.equal(a.x, b.x)  # untrained = anchor-only bit for bit (above), so the same solve
    assert a.nfe == b.nfe and a.perception_calls == b.perception_calls > 0
    c = baquad.solve(bb.vfield(), x0, ts, rule=rule, perception="anchor-only", final=final)
    torch.testing.assert_close(a.x, c.x, rtol=0, atol=ulps(8 * (len(ts) - 1), torch.float32, c.x))  # to rounding


def test_solve_with_untrained_conv_equals_anchor_only_solve():
    field = lambda t, x: torch.tanh(x) * (1.0 + t) - 0.3 * x.flip(-1)
    x0 = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    ts = [1.0, 0.6, 0.25, 0.0]
    a = baquad.solve(field, x0, ts, rule="gauss-lobatto-4", perception=NeuralPerception(small_conv()), final="bi")
    b = baquad.solve(field, x0, ts, rule="gauss-lobatto-4", perception=AnchorOnlyThroughCalls(), final="bi")
    assert torch.equal(a.x, b.x)  # untrained = anchor-only bit for bit, so the same solve


@pytest.mark.parametrize("make", NETS_ALL, ids=IDS_ALL)
def test_one_forward_per_call_and_batched_equals_unbatched(make):
    net = randomize_output(make())
    forwards = []
    net.register_forward_hook(lambda mod, args, out: forwards.append(args[0].shape[0]))
    x, v = states(net)
    p = NeuralPerception(net)
    for m in (1, 2, 3, 5):
        forwards.clear()
        out = p(x, v, 0.6, OFFSETS[:m])
        assert len(forwards) == 1 and forwards[0] == m * x.shape[0]
        assert out.shape == (m, *x.shape)
    batched = p(x, v, 0.6, OFFSETS)
    # independent truth: one offset at a time, Eq. 5 written out here. The batched forward (all
    # offsets) and the per-offset ones have other batch shapes, so other float32 kernels: g may
    # move by NETWORK_ULPS float32 ulps of its magnitude (times |d| <= 0.4), v + d g rounds once
    # more (2 ulps of the result)
    gs = []
    with torch.no_grad():
        for k, d in enumerate(OFFSETS):
            gs.append(net(x, v, torch.full((x.shape[0],), 0.6), torch.full((x.shape[0],), d)))
            tol = ulps(NETWORK_ULPS, torch.float32, gs[-1]) + ulps(2, torch.float32, batched[k])
            torch.testing.assert_close(batched[k], v + d * gs[-1], atol=tol, rtol=0)
    unbatched = torch.stack([p(x, v, 0.6, (d,))[0] for d in OFFSETS])
    tol = 2 * (ulps(NETWORK_ULPS, torch.float32, *gs) + ulps(2, torch.float32, batched))  # both off the truth
    torch.testing.assert_close(batched, unbatched, atol=tol, rtol=0)
    assert not torch.equal(batched[0], v)  # the randomised SideNet really perturbs
    assert torch.equal(batched[OFFSETS.index(0.0)], v)  # d = 0 gives the anchor (Eq. 5): v + 0 g is v, bit for bit


def test_per_sample_time_labels_and_dtype_device_roundtrip():
    net = randomize_output(small_mlp(num_classes=4))
    x, v = states(net, b=6, dtype=torch.float64)
    t = torch.linspace(0.1, 0.9, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    p = NeuralPerception(net, labels=labels)
    out = p(x, v, t, (-0.2, 0.1))
    assert out.dtype == torch.float64 and out.device == x.device
    with torch.no_grad():
        for k, d in enumerate((-0.2, 0.1)):
            g = net(x.float(), v.float(), t.float(), torch.full((6,), d), labels).double()
            # the float32 network on a batch of 2 x 6 rows against 6 rows: NETWORK_ULPS float32
            # ulps of |g| (times |d| < 1); the float64 sum v + d g adds nothing at that scale
            torch.testing.assert_close(out[k], v + d * g, atol=ulps(NETWORK_ULPS, torch.float32, g), rtol=0)
    # labels matter, and the null label (None) differs from label 0
    other = NeuralPerception(net, labels=torch.zeros(6, dtype=torch.long))(x, v, t, (-0.2, 0.1))
    null = NeuralPerception(net)(x, v, t, (-0.2, 0.1))
    assert not torch.allclose(out, other) and not torch.allclose(other, null)


def test_guidance_conditioning():
    net = randomize_output(small_mlp(guidance=True))
    x, v = states(net)
    a = NeuralPerception(net, guidance_scale=1.5)(x, v, 0.5, (-0.2,))
    b = NeuralPerception(net, guidance_scale=3.0)(x, v, 0.5, (-0.2,))
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="guidance"):
        NeuralPerception(net)(x, v, 0.5, (-0.2,))


def test_grad_flag():
    net = randomize_output(small_mlp())
    x, v = states(net)
    assert not NeuralPerception(net)(x, v, 0.5, (0.1, -0.1)).requires_grad
    out = NeuralPerception(net, grad=True)(x, v, 0.5, (0.1, -0.1))
    assert out.requires_grad
    out.sum().backward()
    assert net.out.weight.grad is not None


@pytest.mark.parametrize("make", NETS, ids=["mlp", "conv"])
def test_zero_initialised_output_and_both_offset_signs(make):
    net = make()
    x, v = states(net)
    n = x.shape[0]
    for d in (-0.3, 0.3):
        g = net(x, v, torch.full((n,), 0.5), torch.full((n,), d))
        assert torch.count_nonzero(g) == 0 and g.shape == x.shape
    randomize_output(net)
    with torch.no_grad():
        gp = net(x, v, 0.5, 0.3)
        gm = net(x, v, 0.5, -0.3)
    assert not torch.allclose(gp, gm)  # the offset's sign is seen


def test_parameter_counts_and_report():
    mlp = MLPSideNet(2)
    conv = ConvSideNet(4, num_classes=1000)
    for net in (mlp, conv, small_mlp(num_classes=3, guidance=True), small_conv()):
        assert count_parameters(net) == sum(p.numel() for p in net.parameters())
    assert count_parameters(mlp) == sum(p.numel() for p in mlp.parameters()) > 0
    # the paper's SideNet is "about 6M parameters" at 256 px (4 latent channels, 1000 classes)
    assert 5_000_000 < count_parameters(conv) < 7_000_000
    n = sum(p.numel() for p in conv.parameters())
    assert f"{n:,}" in sidenet_report(conv)
    backbone = nn.Linear(1000, 1000)  # 1,001,000 parameters
    rep = sidenet_report(mlp, backbone)
    nm = sum(p.numel() for p in mlp.parameters())
    assert f"{nm:,}" in rep and "1,001,000" in rep and f"{100 * nm / 1_001_000:.3g}%" in rep
    assert "analytic" in sidenet_report(mlp, get_backbone("gmm-ring2d"))
    wrapped = Backbone.from_module(nn.Linear(2, 2), "lin", (2,), probe=False)  # not a field: counts only
    assert "6 parameters" in sidenet_report(mlp, wrapped)


@pytest.mark.parametrize("make", NETS_ALL, ids=IDS_ALL)
def test_config_rebuild_and_export_roundtrip(make, tmp_path):
    net = randomize_output(make())
    cfg = net.config()
    assert cfg["class"] == type(net).__name__
    rebuilt = build_sidenet(cfg)
    assert rebuilt.config() == cfg
    rebuilt.load_state_dict(net.state_dict())
    path = save_sidenet(net, tmp_path / "side")
    assert path.suffix == ".safetensors" and path.with_suffix(".json").is_file()
    loaded = load_sidenet(path)
    assert loaded.config() == cfg and not loaded.training
    x, v = states(net)
    with torch.no_grad():  # the weights pass through the file untouched: the same arithmetic
        assert torch.equal(loaded(x, v, 0.4, -0.2), net(x, v, 0.4, -0.2))
    with pytest.raises(ValueError, match="unknown SideNet class"):
        build_sidenet({"class": "Nope"})


@pytest.mark.parametrize("make", [small_mlp_path, small_conv_path], ids=["mlp", "conv"])
def test_path_features_are_the_linear_path_predictions(make):
    # with path features the first layer reads [x, v, x - t v, x + (1 - t) v]: check against a
    # network without them whose first-layer weights absorb the two extra blocks by hand
    net = randomize_output(make())
    plain = randomize_output(small_mlp() if isinstance(net, MLPSideNet) else small_conv())
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if not k.startswith(("inp.", "conv_in."))}, strict=False)
    x, v = states(net)
    t, d = 0.3, 0.1
    with torch.no_grad():
        if isinstance(net, MLPSideNet):
            w, n = net.inp.weight, x.shape[1]
            wx, wv, wd, we = w[:, :n], w[:, n:2 * n], w[:, 2 * n:3 * n], w[:, 3 * n:]
            plain.inp.weight.copy_(torch.cat([wx + wd + we, wv - t * wd + (1 - t) * we], 1))
            plain.inp.bias.copy_(net.inp.bias)
        else:
            w, c = net.conv_in.weight, x.shape[1]
            wx, wv, wd, we = w[:, :c], w[:, c:2 * c], w[:, 2 * c:3 * c], w[:, 3 * c:]
            plain.conv_in.weight.copy_(torch.cat([wx + wd + we, wv - t * wd + (1 - t) * we], 1))
            plain.conv_in.bias.copy_(net.conv_in.bias)
        # another arithmetic path (the input weights combined first, in float32): NETWORK_ULPS
        # float32 ulps of the output's magnitude
        got, want = net(x, v, t, d), plain(x, v, t, d)
        torch.testing.assert_close(got, want, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, want))
