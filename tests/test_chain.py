"""Chain training (adapters/torch_sit/sidenet/chain.py; paper Sec. 3.2.3, docs/algorithm.md#chain-training).

Truths used: a chain written out here interval by interval from the algorithm's formulas
(nodes and weights from baquad.rules), call counts of a wrapped backbone, autograd's own
bookkeeping (grad-mode at each backbone call, requires_grad of its outputs, saved tensors),
and the definitions of the interval distributions.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _ulps import NETWORK_ULPS, ulps
from baquad.rules import get_rule
from adapters.torch_sit.backbones import Backbone, CountingBackbone, get_backbone
from adapters.torch_sit.sidenet.chain import (
    ChainConfig,
    ChainTrainer,
    chain_losses,
    lr_factor,
    sample_batch,
    sample_times,
    valid_pairs,
)
from adapters.torch_sit.sidenet.networks import MLPSideNet


def small_mlp(seed: int = 0, hidden: int = 32, random_out: bool = True) -> MLPSideNet:
    torch.manual_seed(seed)
    net = MLPSideNet(2, hidden=hidden, depth=2, embed_dim=16)
    if random_out:
        with torch.no_grad():
            net.out.weight.normal_(0.0, 0.2)
    return net


class MLPVelocity(nn.Module):
    """A small neural backbone with parameters; records grad mode at each call."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.net = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 2))
        self.grad_modes: list[bool] = []

    def forward(self, t, x, **cond):
        self.grad_modes.append(torch.is_grad_enabled())
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        return self.net(torch.cat([x, t[:, None]], 1))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- backbone calls, gradients, graph --------------------------------------------------------


@pytest.mark.parametrize("K", [1, 3, 8])
@pytest.mark.parametrize("intervals", ["dirichlet", "uniform-grid", "trunc-exp"])
def test_backbone_called_k_plus_one_times(K, intervals):
    # trunc-exp with small sizes never reaches t = 0 within K intervals: the chain is full
    cfg = ChainConfig(chain_length=K, intervals=intervals, h_min=0.01, h_max=0.05)
    bb = CountingBackbone(get_backbone("gmm-ring2d"))
    x = torch.randn(16, 2, generator=gen())
    loss, stats = chain_losses(small_mlp(), bb, x, 1.0, cfg, gen(1))
    assert bb.calls == K + 1 == stats["backbone_calls"]
    assert stats["intervals"] == K
    loss.backward()


def test_trunc_exp_chain_stops_at_zero_and_masks():
    cfg = ChainConfig(chain_length=8, intervals="trunc-exp", exp_rate=1.0, h_min=0.3, h_max=0.6,
                      shared_partition=True)
    times = sample_times(cfg, torch.ones(4, dtype=torch.float64), gen(2))
    steps = (times[1:] - times[:-1])[:, 0]
    n_valid = int((steps != 0).sum())
    assert 2 <= n_valid <= 4 and float(times[-1, 0]) == 0.0
    bb = CountingBackbone(get_backbone("gmm-ring2d"))
    _, stats = chain_losses(small_mlp(), bb, torch.randn(4, 2, generator=gen()), 1.0, cfg, times=times)
    assert bb.calls == n_valid + 1 and stats["count"] == 4 * n_valid


def test_backbone_never_differentiated_and_graph_independent_of_K():
    backbone = MLPVelocity()  # parameters require grad: only no_grad protects them
    assert all(p.requires_grad for p in backbone.parameters())
    saved: dict[int, tuple[int, int]] = {}
    for K in (2, 4, 8):
        counted = CountingBackbone(backbone)
        backbone.grad_modes.clear()
        net = small_mlp()
        cfg = ChainConfig(chain_length=K, batch_size=8)
        x = torch.randn(8, 2, generator=gen())
        count = [0, 0]

        def pack(t):
            count[0] += 1
            count[1] += t.numel()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss, stats = chain_losses(net, counted, x, 1.0, cfg, gen(1))
        saved[K] = tuple(count)
        assert backbone.grad_modes == [False] * (K + 1)
        assert not counted.any_output_requires_grad
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        loss.backward()
        opt.step()
        assert all(p.grad is None for p in backbone.parameters())
        assert all(p.grad is not None for p in net.parameters())
    # one batched SideNet forward carries the whole chain's loss: the NUMBER of tensors saved for
    # backward does not depend on K (a per-interval graph, or one through the simulation or the
    # backbone, would add tensors per interval) ...
    assert saved[2][0] == saved[4][0] == saved[8][0]
    # ... and their size is affine in K: the SideNet's own activations on 2 K B loss inputs
    assert saved[8][1] - saved[4][1] == 2 * (saved[4][1] - saved[2][1])


def test_trainer_step_freezes_nothing_but_updates_sidenet_only():
    backbone = MLPVelocity()
    before = [p.detach().clone() for p in backbone.parameters()]
    net = small_mlp(random_out=False)
    w0 = [p.detach().clone() for p in net.parameters()]
    cfg = ChainConfig(chain_length=3, batch_size=16)
    wrapped = Backbone.from_module(backbone, "mlp-velocity", (2,))
    trainer = ChainTrainer(net, CountingBackbone(wrapped), cfg)
    trainer.step(sample_batch(cfg, wrapped, 0))
    assert trainer.backbone_calls == 4
    assert all(p.grad is None for p in backbone.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, backbone.parameters()))  # frozen: never written
    assert any(not torch.equal(a, b) for a, b in zip(w0, net.parameters()))


# --- the loss itself, against a chain written out here ----------------------------------------


def manual_chain_loss(net, f, x, times, cfg):
    """Algorithm 2 interval by interval, from the formulas of docs/algorithm.md#chain-training."""
    rule = get_rule(cfg.rule)
    T = times.to(x.dtype)
    v = f(T[0], x)
    total, count = 0.0, 0
    for k in range(T.shape[0] - 1):
        t, t1 = T[k], T[k + 1]
        h = t1 - t
        with torch.no_grad():
            acc = torch.zeros_like(x)
            for c, w in zip(rule.nodes, rule.weights):
                d = c * h
                u = v + d[:, None] * net(x, v, t, d)
                acc = acc + w * u
            x1 = x + h[:, None] * acc
            v1 = f(t1, x1)
        rf = v + h[:, None] * net(x, v, t, h) - v1
        rb = v1 - h[:, None] * net(x1, v1, t1, -h) - v
        if cfg.loss_norm == "g":
            rf, rb = rf / h[:, None], rb / h[:, None]
        total = total + (cfg.forward_weight * rf.pow(2).mean(1) + cfg.backward_weight * rb.pow(2).mean(1)).sum()
        count += x.shape[0]
        x, v = x1, v1
    return total / count


@pytest.mark.parametrize("loss_norm,wf,wb,shared", [("v", 1.0, 1.0, False), ("g", 0.7, 0.3, True), ("v", 1.0, 0.0, True)])
def test_loss_matches_the_written_out_chain(loss_norm, wf, wb, shared):
    cfg = ChainConfig(chain_length=4, loss_norm=loss_norm, forward_weight=wf, backward_weight=wb, shared_partition=shared)
    bb = get_backbone("gmm-ring2d")
    net = small_mlp()
    x = torch.randn(12, 2, generator=gen())
    times = sample_times(cfg, torch.ones(12, dtype=torch.float64), gen(4))
    loss, stats = chain_losses(net, bb, x, 1.0, cfg, times=times)
    want = manual_chain_loss(net, bb, x, times, cfg)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    ga = torch.autograd.grad(loss, list(net.parameters()))
    gb = torch.autograd.grad(manual_chain_loss(net, bb, x, times, cfg), list(net.parameters()))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_sidenet_sees_both_offset_signs_in_both_directions():
    seen: list[torch.Tensor] = []
    net = small_mlp()
    net.register_forward_hook(lambda mod, args, out: seen.append(args[3].detach().clone()) if torch.is_grad_enabled() else None)
    bb = get_backbone("gmm-ring2d")
    x = torch.randn(8, 2, generator=gen())
    chain_losses(net, bb, x, 1.0, ChainConfig(chain_length=3), gen(1))
    d = torch.cat(seen)
    assert (d < 0).sum() == (d > 0).sum() == 3 * 8  # forward (h < 0) and backward (-h > 0) losses
    # inversion chains run toward t = 1 from a sampled point of the path
    cfg = ChainConfig(chain_length=3, start="path", direction="invert", start_max=0.2, batch_size=8)
    batch = sample_batch(cfg, bb, 0)
    assert (batch.times[1:] >= batch.times[:-1]).all() and (batch.times[-1] == 1.0).all()
    seen.clear()
    chain_losses(net, bb, batch.x, batch.t0, cfg, times=batch.times)
    d = torch.cat(seen)
    assert (d > 0).sum() == (d < 0).sum() == 3 * 8


def test_corrector_state_update_runs_and_differs():
    bb = CountingBackbone(get_backbone("gmm-ring2d"))
    x = torch.randn(8, 2, generator=gen())
    la, _ = chain_losses(small_mlp(), bb, x, 1.0, ChainConfig(chain_length=3), gen(1))
    lb, _ = chain_losses(small_mlp(), bb, x, 1.0, ChainConfig(chain_length=3, state_update="corrector"), gen(1))
    assert bb.calls == 8 and not torch.allclose(la, lb)


# --- interval distributions and batches --------------------------------------------------------


@pytest.mark.parametrize("intervals", ["dirichlet", "uniform-grid", "trunc-exp"])
@pytest.mark.parametrize("shared", [False, True])
def test_time_grids(intervals, shared):
    K, B = 6, 4000
    cfg = ChainConfig(chain_length=K, intervals=intervals, shared_partition=shared, exp_rate=4.0, h_min=0.02, h_max=0.5)
    times = sample_times(cfg, torch.ones(B, dtype=torch.float64), gen(7))
    assert times.shape == (K + 1, B) and (times[0] == 1.0).all()
    steps = times[1:] - times[:-1]
    assert (steps <= 0).all() and (times >= 0).all()
    if shared or intervals == "uniform-grid":
        assert (times == times[:, :1]).all()  # one partition for all: the same numbers in every column
    else:
        assert not (times == times[:, :1]).all()
    if intervals != "trunc-exp":
        assert (times[-1] == 0.0).all() and (steps < 0).all()  # the end time is set, not summed
    if intervals == "uniform-grid":
        torch.testing.assert_close(steps, torch.full_like(steps, -1.0 / K))
    if intervals == "dirichlet" and not shared:
        # a uniform random partition: each part has mean 1/K and P(part > s) = (1 - s)^(K - 1)
        torch.testing.assert_close(steps.mean(1), torch.full((K,), -1.0 / K, dtype=torch.float64), atol=0.01, rtol=0)
        frac = float((-steps[0] > 0.2).double().mean())
        assert abs(frac - 0.8 ** (K - 1)) < 0.03
    if intervals == "trunc-exp":
        sizes = -steps
        full = sizes[times[1:] > 0]  # intervals not clipped at t = 0
        assert (full >= 0.02 - 1e-12).all() and (full <= 0.5 + 1e-12).all()
        reached = times[1:] == 0.0
        assert (reached[1:] >= reached[:-1]).all()  # once at 0, the chain stays there


def test_trunc_exp_sizes_follow_the_truncated_exponential():
    cfg = ChainConfig(chain_length=1, intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.5)
    sizes = -(sample_times(cfg, torch.ones(20000, dtype=torch.float64), gen(9))[1] - 1.0)
    lam, a, b = 5.0, 0.01, 0.5
    mean = (a + 1 / lam) - (b - a) * math.exp(-lam * (b - a)) / (1 - math.exp(-lam * (b - a)))
    assert abs(float(sizes.mean()) - mean) < 0.005


def test_batches_are_deterministic_and_sliceable():
    cfg = ChainConfig(batch_size=8, chain_length=3, seed=3)
    bb = get_backbone("gmm-ring2d")
    a, b, c = sample_batch(cfg, bb, 5), sample_batch(cfg, bb, 5), sample_batch(cfg, bb, 6)
    assert torch.equal(a.x, b.x) and torch.equal(a.times, b.times)  # the promise: batch = f(seed, step)
    assert not torch.equal(a.x, c.x)
    s = a.slice(4, 8)
    assert torch.equal(s.x, a.x[4:]) and torch.equal(s.times, a.times[:, 4:])  # a slice is a copy
    assert valid_pairs(a.times) == 3 * 8
    p = sample_batch(ChainConfig(batch_size=8, start="path", start_min=0.3, start_max=0.6), bb, 0)
    assert ((p.t0 >= 0.3) & (p.t0 <= 0.6)).all() and torch.equal(p.times[0], p.t0)  # t0 stored untouched


def test_chunked_loss_gives_the_same_step():
    bb = get_backbone("gmm-ring2d")
    nets = []
    for chunks in (1, 3):
        cfg = ChainConfig(chain_length=3, batch_size=12, loss_chunks=chunks)
        net = small_mlp(random_out=False)
        ChainTrainer(net, bb, cfg).step(sample_batch(cfg, bb, 0))
        nets.append(net)
    # the chunks' gradients are summed in another order, so they round differently; AdamW's first
    # step moves each weight by about lr * sign(g) whatever the last bits of g, so the weights
    # agree to a few float32 ulps of their magnitude (NETWORK_ULPS, per tensor)
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=ulps(NETWORK_ULPS, torch.float32, b))


def test_config_validation_and_schedule():
    with pytest.raises(ValueError, match="intervals"):
        ChainConfig(intervals="gamma")
    with pytest.raises(ValueError, match="direction"):
        ChainConfig(direction="invert")  # inversion cannot start from noise at t = 1
    with pytest.raises(ValueError, match="start_max"):
        ChainConfig(start="path", start_min=0.0, start_max=0.0)  # chains would start at t = 0
    with pytest.raises(ValueError, match="rule"):
        ChainConfig(rule="no-such-rule")
    with pytest.raises(ValueError, match="unknown fields"):
        ChainConfig.from_dict({"chain_lenght": 3})
    cfg = ChainConfig(iters=100, warmup_iters=10, min_lr_ratio=0.1)
    assert lr_factor(cfg, 0) == pytest.approx(0.1) and lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 100) == pytest.approx(0.1) and lr_factor(cfg, 55) == pytest.approx(0.55)
    assert ChainConfig.from_dict(cfg.to_dict()) == cfg


# --- learning ---------------------------------------------------------------------------------


def test_loss_decreases_on_the_ring():
    bb = get_backbone("gmm-ring2d")
    cfg = ChainConfig(batch_size=128, iters=150, lr=2e-3)
    torch.manual_seed(0)
    net = MLPSideNet(2, hidden=128, depth=3, embed_dim=32)
    held_out = sample_batch(cfg, bb, 10**6)

    def evaluate() -> float:
        loss, _ = chain_losses(net, bb, held_out.x, held_out.t0, cfg, times=held_out.times)
        return float(loss.detach())

    initial = evaluate()
    trainer = ChainTrainer(net, bb, cfg)
    for step in range(cfg.iters):
        trainer.step(sample_batch(cfg, bb, step))
    final = evaluate()
    assert final < 0.5 * initial, (initial, final)


def test_conv_sidenet_chain_with_labels_on_image_states():
    field = lambda t, x, **cond: torch.tanh(x) * (1 + t.view(-1, 1, 1, 1)) - 0.3 * x.flip(-1)
    bb = CountingBackbone(Backbone("toy-image", field, (3, 8, 8), num_classes=5))
    from adapters.torch_sit.sidenet.networks import ConvSideNet

    torch.manual_seed(0)
    net = ConvSideNet(3, base_channels=16, time_embed_dim=32, num_layers=1, num_heads=2, res_blocks=1, num_classes=5)
    cfg = ChainConfig(batch_size=6, chain_length=3, loss_chunks=2)
    trainer = ChainTrainer(net, bb, cfg)
    batch = sample_batch(cfg, bb, 0)
    assert batch.labels is not None and batch.labels.shape == (6,) and int(batch.labels.max()) < 5
    w0 = net.conv_out.weight.detach().clone()
    stats = trainer.step(batch)
    assert bb.calls == 4 and math.isfinite(stats["loss"])
    assert not torch.equal(w0, net.conv_out.weight)


@pytest.mark.parametrize("micro_batch", [1, 3, 8])
def test_micro_batches_accumulate_to_the_full_batch_step(micro_batch):
    """Gradient accumulation (``micro_batch``): the slice simulated and back-propagated in pieces
    gives the same loss, gradient and updated weights as the whole slice at once."""
    backbone = get_backbone("gmm-ring2d")
    base_cfg = dict(chain_length=3, intervals="trunc-exp", h_min=0.2, h_max=0.5, batch_size=8, loss_chunks=2,
                    loss_norm="h", ema_decay=0.9)
    batch = sample_batch(ChainConfig(**base_cfg), backbone, step=0)
    batch.x = batch.x.double()
    out = {}
    for mb in (None, micro_batch):
        net = small_mlp(seed=1).double()
        trainer = ChainTrainer(net, backbone, ChainConfig(**base_cfg, micro_batch=mb))
        stats = trainer.step(batch)
        out[mb] = (stats, [p.detach().clone() for p in net.parameters()], [p.grad.clone() for p in net.parameters()])
    (s0, w0, g0), (s1, w1, g1) = out[None], out[micro_batch]
    assert s1["loss"] == pytest.approx(s0["loss"], rel=1e-12)
    for a, b in zip(g0, g1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
    for a, b in zip(w0, w1):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
