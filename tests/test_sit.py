"""The REPA SiT model (adapters/torch_sit/sit/model.py).

Truths used: the published REPA SiT-XL/2 state-dict table (key names and shapes written out
here from the architecture description, not from our module) and its parameter counts
(683,242,512 for XL/2 at 256 px, 465,955,600 for L/2, 137,845,008 for B/2, projector included);
and a re-computation of the forward pass written here from the published arithmetic (patch
embedding as a matrix product on explicitly cut patches, the MAE 2-D sine-cosine positional
embedding built with numpy's meshgrid, the GLIDE time features, LayerNorm, adaLN modulation and
gates, softmax attention, tanh-GELU MLP, final layer, and unpatchify by explicit indexing), in
float64 from the model's own weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from adapters.torch_sit.sit.model import SIT_CONFIGS, SiT, SiTConfig, build_sit, sit_config


def expected_xl2_table(tokens: int = 256) -> dict[str, tuple[int, ...]]:
    """REPA SiT-XL/2 (z_dims [768], projector 2048, 1000 classes + null): key -> shape."""
    d, mlp, heads_out = 1152, 4608, 3456
    table = {
        "pos_embed": (1, tokens, d),
        "x_embedder.proj.weight": (d, 4, 2, 2),
        "x_embedder.proj.bias": (d,),
        "t_embedder.mlp.0.weight": (d, 256),
        "t_embedder.mlp.0.bias": (d,),
        "t_embedder.mlp.2.weight": (d, d),
        "t_embedder.mlp.2.bias": (d,),
        "y_embedder.embedding_table.weight": (1001, d),
    }
    for i in range(28):
        b = f"blocks.{i}."
        table.update({
            b + "attn.qkv.weight": (heads_out, d), b + "attn.qkv.bias": (heads_out,),
            b + "attn.proj.weight": (d, d), b + "attn.proj.bias": (d,),
            b + "mlp.fc1.weight": (mlp, d), b + "mlp.fc1.bias": (mlp,),
            b + "mlp.fc2.weight": (d, mlp), b + "mlp.fc2.bias": (d,),
            b + "adaLN_modulation.1.weight": (6 * d, d), b + "adaLN_modulation.1.bias": (6 * d,),
        })
    table.update({
        "projectors.0.0.weight": (2048, d), "projectors.0.0.bias": (2048,),
        "projectors.0.2.weight": (2048, 2048), "projectors.0.2.bias": (2048,),
        "projectors.0.4.weight": (768, 2048), "projectors.0.4.bias": (768,),
        "final_layer.adaLN_modulation.1.weight": (2 * d, d), "final_layer.adaLN_modulation.1.bias": (2 * d,),
        "final_layer.linear.weight": (16, d), "final_layer.linear.bias": (16,),
    })
    return table


def test_xl2_state_dict_matches_the_published_table():
    model = build_sit("SiT-XL/2", 256, device="meta")
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    want = expected_xl2_table()
    assert len(want) == 298
    assert sorted(set(got) - set(want)) == [] and sorted(set(want) - set(got)) == []
    assert {k: got[k] for k in want} == want
    assert sum(math.prod(s) for s in got.values()) == 683_242_512
    assert sum(p.numel() for p in model.parameters()) == 683_242_512
    assert sum(p.numel() for p in model.projectors.parameters()) == 8_131_328
    assert not model.pos_embed.requires_grad  # fixed, but a Parameter: it is in the state dict


def test_xl2_at_512_px_has_1024_position_rows():
    model = build_sit("SiT-XL/2", 512, device="meta")
    assert tuple(model.pos_embed.shape) == (1, 1024, 1152)
    assert tuple(model.final_layer.linear.weight.shape) == (16, 1152)


@pytest.mark.parametrize("name,total,proj", [("SiT-L/2", 465_955_600, 7_869_184), ("SiT-B/2", 137_845_008, 7_344_896)])
def test_published_parameter_counts(name, total, proj):
    model = build_sit(name, 256, device="meta")
    assert sum(p.numel() for p in model.parameters()) == total
    assert sum(p.numel() for p in model.projectors.parameters()) == proj


def test_named_configs():
    assert sorted(SIT_CONFIGS) == sorted(f"SiT-{s}/{p}" for s in ("S", "B", "L", "XL") for p in (2, 4, 8))
    assert (SIT_CONFIGS["SiT-S/4"].depth, SIT_CONFIGS["SiT-S/4"].hidden_size, SIT_CONFIGS["SiT-S/4"].num_heads) == (12, 384, 6)
    assert SIT_CONFIGS["SiT-L/8"].patch_size == 8
    assert sit_config("SiT-B/4", 512).input_size == 64
    model = build_sit("SiT-XL/8", 256, device="meta")
    assert tuple(model.final_layer.linear.weight.shape) == (8 * 8 * 4, 1152)
    assert tuple(model.pos_embed.shape) == (1, 16, 1152)


def test_small_variant_runs():
    """REPA's S definition has a 768-wide final layer on 384-wide tokens; ours must run."""
    model = build_sit("SiT-S/2", input_size=8, seed=0, zero_init=False)
    assert tuple(model.final_layer.linear.weight.shape) == (16, 384)
    with torch.no_grad():
        v = model(torch.randn(2, 4, 8, 8), torch.tensor([0.3, 0.9]), torch.tensor([5, 1000]))
    assert v.shape == (2, 4, 8, 8) and torch.isfinite(v).all() and v.abs().sum() > 0


def test_zero_init_outputs_exactly_zero():
    cfg = SiTConfig(depth=2, hidden_size=32, num_heads=2, input_size=4, num_classes=3, encoder_depth=1,
                    z_dims=(8,), projector_dim=16)
    v = SiT(cfg)(torch.randn(2, 4, 4, 4), 0.5, torch.tensor([0, 3]))
    assert torch.equal(v, torch.zeros_like(v))  # zero weights in the output layer give exact zeros


def test_bad_inputs_are_named():
    cfg = SiTConfig(depth=1, hidden_size=32, num_heads=2, input_size=4, num_classes=3, encoder_depth=1,
                    z_dims=(8,), projector_dim=16)
    model = SiT(cfg)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(2, 4, 8, 8), 0.5, 0)
    with pytest.raises(ValueError, match=r"labels y must lie in \[0, 3\]"):
        model(torch.randn(2, 4, 4, 4), 0.5, torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="t must be a scalar or of shape"):
        model(torch.randn(2, 4, 4, 4), torch.rand(3), 0)
    with pytest.raises(ValueError, match="encoder_depth"):
        SiTConfig(depth=2, encoder_depth=3)
    with pytest.raises(ValueError, match="num_heads"):
        SiTConfig(hidden_size=100, num_heads=3)


# --- an independent re-computation of the forward pass -------------------------------------


def mae_pos_embed(dim: int, grid: int) -> np.ndarray:
    """The MAE/DiT recipe as published: meshgrid(grid_w, grid_h), first half from grid[0]."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64))
    g = np.stack(g, axis=0).reshape(2, 1, grid, grid)
    return np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)


def layer_norm(x, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps)


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def silu(x):
    return x / (1 + torch.exp(-x))


def reference_forward(sd: dict, cfg: SiTConfig, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor):
    """The published SiT forward, float64, from a state dict. Returns (v, projector features)."""
    w = {k: v.double() for k, v in sd.items()}
    x = x.double()
    n, c, s, _ = x.shape
    p, d, heads = cfg.patch_size, cfg.hidden_size, cfg.num_heads
    h = s // p
    # patches in row-major (row, col) order, each flattened as (channel, dy, dx) like the conv weight
    patches = x.reshape(n, c, h, p, h, p).permute(0, 2, 4, 1, 3, 5).reshape(n, h * h, c * p * p)
    tok = patches @ w["x_embedder.proj.weight"].reshape(d, -1).T + w["x_embedder.proj.bias"]
    tok = tok + w["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    tf = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).double()
    temb = silu(tf @ w["t_embedder.mlp.0.weight"].T + w["t_embedder.mlp.0.bias"])
    temb = temb @ w["t_embedder.mlp.2.weight"].T + w["t_embedder.mlp.2.bias"]
    cvec = temb + w["y_embedder.embedding_table.weight"][y]
    feats = None
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        mod = silu(cvec) @ w[b + "adaLN_modulation.1.weight"].T + w[b + "adaLN_modulation.1.bias"]
        sh1, sc1, g1, sh2, sc2, g2 = [mod[:, k * d:(k + 1) * d][:, None, :] for k in range(6)]
        a_in = layer_norm(tok) * (1 + sc1) + sh1
        qkv = (a_in @ w[b + "attn.qkv.weight"].T + w[b + "attn.qkv.bias"]).reshape(n, h * h, 3, heads, d // heads)
        q, k, v = (qkv[:, :, j].transpose(1, 2) for j in range(3))  # (n, heads, T, hd)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // heads), dim=-1) @ v
        att = att.transpose(1, 2).reshape(n, h * h, d) @ w[b + "attn.proj.weight"].T + w[b + "attn.proj.bias"]
        tok = tok + g1 * att
        m_in = layer_norm(tok) * (1 + sc2) + sh2
        hid = gelu_tanh(m_in @ w[b + "mlp.fc1.weight"].T + w[b + "mlp.fc1.bias"])
        tok = tok + g2 * (hid @ w[b + "mlp.fc2.weight"].T + w[b + "mlp.fc2.bias"])
        if i + 1 == cfg.encoder_depth:
            z = tok
            for j in (0, 2, 4):
                z = z @ w[f"projectors.0.{j}.weight"].T + w[f"projectors.0.{j}.bias"]
                z = silu(z) if j < 4 else z
            feats = z
    mod = silu(cvec) @ w["final_layer.adaLN_modulation.1.weight"].T + w["final_layer.adaLN_modulation.1.bias"]
    shift, scale = mod[:, None, :d], mod[:, None, d:]
    out = (layer_norm(tok) * (1 + scale) + shift) @ w["final_layer.linear.weight"].T + w["final_layer.linear.bias"]
    img = torch.zeros(n, c, s, s, dtype=torch.float64)
    for i in range(h):
        for j in range(h):
            patch = out[:, i * h + j].reshape(n, p, p, c)  # (row offset, col offset, channel)
            img[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p] = patch.permute(0, 3, 1, 2)
    return img, feats


def tiny_config(**kw) -> SiTConfig:
    base = dict(depth=2, hidden_size=64, num_heads=2, patch_size=2, input_size=8, num_classes=10,
                encoder_depth=1, z_dims=(32,), projector_dim=64)
    base.update(kw)
    return SiTConfig(**base)


def test_pos_embed_is_the_mae_recipe():
    model = SiT(tiny_config(input_size=12, patch_size=2, hidden_size=32))  # 6 x 6 grid
    want = torch.from_numpy(mae_pos_embed(32, 6)).float()
    assert torch.allclose(model.pos_embed[0], want, atol=1e-6)


@pytest.mark.parametrize("patch", [2, 4])
def test_forward_equals_the_published_arithmetic(patch):
    cfg = tiny_config(patch_size=patch)
    model = SiT(cfg, zero_init=False, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the adaLN layers would leave gates and shifts tiny; make them count
        for blk in model.blocks:
            blk.adaLN_modulation[1].weight.mul_(3.0)
            blk.adaLN_modulation[1].bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([1.0, 0.37, 0.0])
    y = torch.tensor([0, 7, 10])  # 10 = the null class
    with torch.no_grad():
        v, feats = model(x, t, y, return_features=True)
        v_only = model(x, t, y)
    ref_v, ref_feats = reference_forward(model.state_dict(), cfg, x, t, y)
    assert torch.equal(v, v_only)  # the features are a by-product: the velocity is the same computation
    assert ref_v.abs().mean() > 0.1
    assert torch.allclose(v.double(), ref_v, rtol=1e-4, atol=1e-5), float((v.double() - ref_v).abs().max())
    assert len(feats) == 1 and feats[0].shape == (3, (8 // patch) ** 2, 32)
    assert torch.allclose(feats[0].double(), ref_feats, rtol=1e-4, atol=1e-5)
