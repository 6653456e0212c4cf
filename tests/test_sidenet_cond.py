"""SideNet conditioning on a vector (``cond_dim``, ``cond=``) and the token SideNet.

Truths: configs and files written before ``cond_dim`` existed (their key set written out here)
load unchanged; the perception's stacked output is Eq. 5 computed offset by offset with direct
SideNet calls; permuting the tokens of a TokenSideNet's input permutes its output (it has no
positional encoding), and a zero-initialised output layer gives g = 0.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from _ulps import NETWORK_ULPS, ulps
from adapters.torch_sit.sidenet.checkpoint import load_sidenet, save_sidenet
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.networks import ConvSideNet, MLPSideNet, TokenSideNet, build_sidenet


def make_active(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Randomise the zero-initialised output layer so the SideNet acts."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("out.", "conv_out.")):
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return net


OLD_MLP_KEYS = {"class", "dim", "hidden", "depth", "embed_dim", "num_classes", "guidance", "max_freq",
                "offset_log_sign", "path_features"}
OLD_CONV_KEYS = {"class", "in_channels", "base_channels", "time_embed_dim", "num_layers", "num_classes", "num_heads",
                 "guidance", "res_blocks", "max_freq", "offset_log_sign", "path_features"}


def test_unconditioned_configs_keep_the_old_key_set():
    assert set(MLPSideNet(3, hidden=8, depth=1, embed_dim=4).config()) == OLD_MLP_KEYS
    assert set(ConvSideNet(2, base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1).config()) == OLD_CONV_KEYS
    assert MLPSideNet(3, hidden=8, depth=1, embed_dim=4, cond_dim=5).config()["cond_dim"] == 5


def test_a_file_in_the_old_format_loads(tmp_path):
    """A SideNet file as written before cond_dim: config without the key, weights of that net."""
    torch.manual_seed(0)
    old_config = {"class": "MLPSideNet", "dim": 3, "hidden": 8, "depth": 2, "embed_dim": 4, "num_classes": None,
                  "guidance": False, "max_freq": 100.0, "offset_log_sign": True, "path_features": False}
    net = make_active(build_sidenet(old_config))
    meta = {"format": "baquad-sidenet", "version": 1, "sidenet_config": old_config, "extra": {}}
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "old.safetensors"),
              metadata={"baquad": json.dumps(meta)})
    loaded = load_sidenet(tmp_path / "old.safetensors")
    x, v = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.equal(loaded(x, v, 0.5, -0.1), net(x, v, 0.5, -0.1))  # weights loaded untouched: same arithmetic
    assert loaded.config() == old_config


@pytest.mark.parametrize("make", [
    lambda: MLPSideNet(6, hidden=16, depth=2, embed_dim=8, cond_dim=5),
    lambda: ConvSideNet(2, base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1, cond_dim=5),
    lambda: TokenSideNet(6, width=8, time_embed_dim=8, num_layers=1, num_heads=2, cond_dim=5),
])
def test_cond_is_read_checked_and_saved(make, tmp_path):
    torch.manual_seed(1)
    net = make_active(make())
    shape = {"MLPSideNet": (3, 6), "ConvSideNet": (3, 2, 4, 4), "TokenSideNet": (3, 7, 6)}[type(net).__name__]
    x, v = torch.randn(shape), torch.randn(shape)
    c1, c2 = torch.randn(3, 5), torch.randn(3, 5)
    g1, g2 = net(x, v, 0.5, -0.1, cond=c1), net(x, v, 0.5, -0.1, cond=c2)
    assert not torch.allclose(g1, g2)
    with pytest.raises(ValueError, match="cond_dim = 5"):
        net(x, v, 0.5, -0.1)
    with pytest.raises(ValueError, match="cond: expected shape"):
        net(x, v, 0.5, -0.1, cond=torch.randn(3, 4))
    save_sidenet(net, tmp_path / "c.safetensors")
    loaded = load_sidenet(tmp_path / "c.safetensors")
    assert torch.equal(loaded(x, v, 0.5, -0.1, cond=c1), g1)  # weights loaded untouched: same arithmetic


def test_neural_perception_passes_cond_per_offset():
    torch.manual_seed(2)
    net = make_active(MLPSideNet(4, hidden=16, depth=2, embed_dim=8, cond_dim=3)).double()
    x, v, c = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    offsets = (-0.1, -0.25, 0.3)
    out = NeuralPerception(net, cond=c)(x, v, 0.7, offsets)
    for k, d in enumerate(offsets):
        expected = v + d * net(x, v, 0.7, d, cond=c)
        torch.testing.assert_close(out[k], expected, rtol=1e-12, atol=1e-12)
    one = NeuralPerception(net, cond=c[0])(x, v, 0.7, offsets)  # one vector for the whole batch
    torch.testing.assert_close(one[1], v + offsets[1] * net(x, v, 0.7, offsets[1], cond=c[0].expand(5, 3)))


def test_token_sidenet_is_zero_then_permutation_equivariant():
    torch.manual_seed(3)
    net = TokenSideNet(8, width=16, time_embed_dim=8, num_layers=2, num_heads=4, path_features=True)
    x, v = torch.randn(2, 10, 8), torch.randn(2, 10, 8)
    assert torch.equal(net(x, v, 0.4, 0.1), torch.zeros_like(x))  # zero weights give exact zeros
    make_active(net)
    perm = torch.randperm(10)
    g = net(x, v, 0.4, 0.1)
    # attention sums the tokens in another order: NETWORK_ULPS float32 ulps of |g|
    torch.testing.assert_close(net(x[:, perm], v[:, perm], 0.4, 0.1), g[:, perm], rtol=0,
                               atol=ulps(NETWORK_ULPS, torch.float32, g))
    assert build_sidenet(net.config()).config() == net.config()
    with pytest.raises(ValueError, match=r"\(B, N, D\)"):
        net(torch.randn(2, 8), torch.randn(2, 8), 0.4, 0.1)


def test_chain_with_conditioning_vectors_is_solve_per_sample():
    """The chain's simulation with per-sample conditioning vectors (SideNet and backbone) equals
    ``baquad.solve`` run sample by sample with that sample's vector."""
    import baquad
    from adapters.torch_sit.backbones import Backbone, get_backbone
    from adapters.torch_sit.sidenet.chain import ChainConfig, chain_losses, sample_batch, simulate_chain

    ring = get_backbone("gmm-ring2d")

    def fn(t, x, labels=None, cond=None):
        return ring(t, x) * (1.0 + 0.2 * torch.tanh(cond[:, :1]))  # the backbone reads cond too

    def sample_cond(n, g):
        labels = torch.randint(0, 3, (n,), generator=g)
        return labels, torch.randn(n, 3, generator=g)

    bb = Backbone("cond-ring", fn, (2,), cond_dim=3, sample_cond=sample_cond)
    torch.manual_seed(4)
    net = make_active(MLPSideNet(2, hidden=16, depth=2, embed_dim=8, cond_dim=3))
    cfg = ChainConfig(chain_length=3, batch_size=5, intervals="dirichlet")
    batch = sample_batch(cfg, bb, 0)
    assert batch.cond.shape == (5, 3) and batch.labels.shape == (5,)
    ro = simulate_chain(net, bb, batch.x, batch.times, cfg, batch.labels, batch.cond)
    for i in range(5):
        c = batch.cond[i:i + 1]
        field = lambda t, x: fn(torch.full((1,), t), x, cond=c)  # noqa: E731
        res = baquad.solve(field, batch.x[i:i + 1], batch.times[:, i].tolist(), rule="gauss-legendre-3",
                           perception=NeuralPerception(net, cond=c), anchors="single", save_states=True)
        # float32 forwards of the batch of 5 against single rows: each of the K steps
        # x + h (v + d g) may move by NETWORK_ULPS float32 ulps of the states and velocities
        tol = cfg.chain_length * ulps(NETWORK_ULPS, torch.float32, *ro.X, *ro.V)
        torch.testing.assert_close(torch.stack([X[i] for X in ro.X]), res.xs[:, 0], rtol=0, atol=tol)
    loss, _ = chain_losses(net, bb, batch.x, batch.t0, cfg, times=batch.times, cond=batch.cond)
    other, _ = chain_losses(net, bb, batch.x, batch.t0, cfg, times=batch.times, cond=batch.cond.flip(0))
    assert loss.item() != other.item()
