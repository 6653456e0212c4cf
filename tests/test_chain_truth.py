"""The chain trainer against independent truth: the loss, its gradient, the EMA, guidance.

Truths used:
- the chain loss written out here sample by sample and interval by interval from the formulas
  of chain training (paper Sec. 3.2.3, Algorithm 2, Eqs. 5, 7, 8, 11; the module docstring of
  ``adapters.torch_sit.sidenet.chain``), with the Gauss-Legendre-3 nodes and weights in closed form
  (c = 1/2 -+ sqrt(15)/10, 1/2; w = 5/18, 8/18, 5/18), a backbone and a SideNet whose outputs
  are closed-form expressions, and no code of the package in the loop;
- the definition of the exponential moving average, e_0 = w_0, e_n = beta e_{n-1} + (1 - beta) w_n,
  over a weight sequence scripted by the test (a stand-in optimiser sets the weights);
- what a recording backbone and a recording SideNet received.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from _ulps import ulps
from adapters.torch_sit.backbones import Backbone
from adapters.torch_sit.sidenet.chain import Batch, ChainConfig, ChainTrainer, chain_losses, sample_batch
from adapters.torch_sit.sidenet.checkpoint import load_sidenet
from adapters.torch_sit.sidenet.networks import MLPSideNet
from adapters.torch_sit.sidenet.train import train

GL3_NODES = (0.5 - math.sqrt(15.0) / 10.0, 0.5, 0.5 + math.sqrt(15.0) / 10.0)
GL3_WEIGHTS = (5.0 / 18.0, 8.0 / 18.0, 5.0 / 18.0)
MEANS = torch.tensor([[1.0, -0.5], [-0.8, 0.3], [0.2, 1.1]], dtype=torch.float64)
GUIDANCE = 1.7


def velocity(t: torch.Tensor, x: torch.Tensor, label, scale) -> torch.Tensor:
    """The test backbone for ONE sample x of shape (2,):
    v = -(0.5 + t) x + (1 - 0.3 t) m_label + 0.2 s sin(x), m = 0 without a label, s = 0 without guidance."""
    m = MEANS[label] if label is not None else torch.zeros(2, dtype=x.dtype)
    s = 0.0 if scale is None else scale
    return -(0.5 + t) * x + (1.0 - 0.3 * t) * m + 0.2 * s * torch.sin(x)


class RecordingBackbone:
    """The batched backbone the trainer calls: row by row through :func:`velocity`; records its
    conditioning and grad mode."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, t, x, labels=None, guidance_scale=None):
        self.calls.append((None if labels is None else labels.clone(), guidance_scale, torch.is_grad_enabled()))
        t = t.reshape(-1).expand(x.shape[0])
        scale = (lambda i: float(guidance_scale[i])) if torch.is_tensor(guidance_scale) else (lambda i: guidance_scale)
        rows = [velocity(t[i], x[i], None if labels is None else int(labels[i]), scale(i))
                for i in range(x.shape[0])]
        return torch.stack(rows)


class ClosedFormSideNet(nn.Module):
    """g(x, v, t, d) = a x + b v d + c t + e d^2 + L[label] + k s  (per sample), every coefficient a
    trainable parameter; L has a null row (index num_classes) used without labels, and the
    guidance term exists only when ``guidance`` (then s must be given, as the real SideNets)."""

    def __init__(self, num_classes=None, guidance=False):
        super().__init__()
        gen = torch.Generator().manual_seed(3)
        p = lambda *shape: nn.Parameter(0.5 * torch.randn(*shape, generator=gen, dtype=torch.float64))  # noqa: E731
        self.a, self.b, self.c, self.e = p(2), p(2), p(()), p(())
        self.num_classes = num_classes
        self.L = p((num_classes or 0) + 1, 2)
        self.k = p(2) if guidance else None

    def forward(self, x, v, t, d, labels=None, guidance=None):
        n = x.shape[0]
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1).expand(n)[:, None]
        d = torch.as_tensor(d, dtype=x.dtype).reshape(-1).expand(n)[:, None]
        idx = torch.full((n,), self.num_classes or 0) if labels is None else labels.long().reshape(-1).expand(n)
        g = self.a * x + self.b * v * d + self.c * t + self.e * d * d + self.L[idx]
        if self.k is not None:
            if guidance is None:
                raise ValueError("guidance-conditioned: pass guidance")
            g = g + self.k * torch.as_tensor(guidance, dtype=x.dtype).reshape(-1).expand(n)[:, None]
        return g


def expected_chain_loss(net, x0, times, labels, scale, cfg, weight=lambda t0, t1: 1.0) -> torch.Tensor:
    """Chain training's loss written out from its formulas, one sample and one interval at a time;
    ``weight(t0, t1)`` multiplies an interval's terms (the normaliser stays the number of terms)."""
    per_pair = []
    for i in range(x0.shape[0]):
        label = None if labels is None else int(labels[i])
        lab_in = None if labels is None else labels[i:i + 1]
        s_in = None if scale is None else torch.full((1,), float(scale), dtype=torch.float64)

        def f(t, x):
            return velocity(t, x, label, scale)

        def g(x, v, t, d):
            return net(x[None], v[None], t.reshape(1), d.reshape(1), lab_in, s_in)[0]

        x, t = x0[i], times[0, i]
        v = f(t, x)
        for k in range(times.shape[0] - 1):
            t1 = times[k + 1, i]
            h = t1 - t
            if h == 0:  # an empty interval (the chain has ended): no loss term
                continue
            with torch.no_grad():
                u = [v + c * h * g(x, v, t, c * h) for c in GL3_NODES]  # forward perception (Eq. 5, 7)
                x_pred = x + h * sum(w * uj for w, uj in zip(GL3_WEIGHTS, u))  # predictor (Eq. 8)
                v1 = f(t1, x_pred)  # the interval's backbone call
                if cfg.state_update == "corrector":  # backward refinement for the nodes c >= 1/2
                    back = [v1 + (c - 1.0) * h * g(x_pred, v1, t1, (c - 1.0) * h) for c in GL3_NODES[1:]]
                    x1 = x + h * (GL3_WEIGHTS[0] * u[0] + GL3_WEIGHTS[1] * back[0] + GL3_WEIGHTS[2] * back[1])
                else:
                    x1 = x_pred
            res_f = v + h * g(x, v, t, h) - v1  # forward loss (Eq. 11)
            res_b = v1 - h * g(x_pred, v1, t1, -h) - v  # backward loss, from the terminal anchor
            scale_n = {"v": 1.0, "h": abs(h), "g": h * h}[cfg.loss_norm]
            per_pair.append(weight(float(t), float(t1)) * (cfg.forward_weight * res_f.pow(2).mean() / scale_n
                                                           + cfg.backward_weight * res_b.pow(2).mean() / scale_n))
            x, v, t = x1, v1, t1
    return torch.stack(per_pair).sum() / len(per_pair)


# per-sample grids (K = 3, B = 3): sample 1 reaches t = 0 after two intervals (an empty third one)
TIMES = torch.tensor([[1.0, 1.0, 1.0], [0.7, 0.6, 0.9], [0.45, 0.0, 0.55], [0.0, 0.0, 0.2]], dtype=torch.float64)
X0 = torch.tensor([[0.3, -1.2], [1.1, 0.4], [-0.6, 0.9]], dtype=torch.float64)
LABELS = torch.tensor([2, 0, 1])


@pytest.mark.parametrize("conditioning", ["none", "labels", "guidance", "labels+guidance"])
@pytest.mark.parametrize("state_update", ["predictor", "corrector"])
@pytest.mark.parametrize("loss_norm", ["v", "h", "g"])
def test_chain_loss_and_gradient_equal_the_written_out_formulas(loss_norm, state_update, conditioning):
    use_labels, use_guidance = "labels" in conditioning, "guidance" in conditioning
    cfg = ChainConfig(chain_length=3, loss_norm=loss_norm, state_update=state_update, forward_weight=0.7,
                      backward_weight=0.4, guidance_scale=GUIDANCE if use_guidance else None, grad_clip=None,
                      loss_chunks=2, batch_size=3)
    labels = LABELS if use_labels else None
    scale = GUIDANCE if use_guidance else None
    net = ClosedFormSideNet(num_classes=3 if use_labels else None, guidance=use_guidance)
    backbone = RecordingBackbone()

    loss, stats = chain_losses(net, backbone, X0, 1.0, cfg, labels=labels, times=TIMES)
    want = expected_chain_loss(net, X0, TIMES, labels, scale, cfg)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    assert stats["loss"] == pytest.approx(want.detach().item(), rel=1e-12)
    assert stats["count"] == 8  # 3 x 3 pairs, one empty
    got = torch.autograd.grad(loss, list(net.parameters()))
    expected_grad = torch.autograd.grad(want, list(net.parameters()))
    for a, b in zip(got, expected_grad):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    # the backbone saw the conditioning and never built a graph
    assert len(backbone.calls) == 4
    for lab, gs, grad_mode in backbone.calls:
        assert gs == scale and not grad_mode
        assert (lab is None) if labels is None else torch.equal(lab, labels)

    # the trainer's optimiser step receives exactly this gradient (chunked over the batch)
    trainer = ChainTrainer(net, RecordingBackbone(), cfg)
    trainer.step(Batch(X0, TIMES[0], TIMES, labels))
    for p, b in zip(net.parameters(), expected_grad):
        torch.testing.assert_close(p.grad, b, rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("state_update", ["predictor", "corrector"])
def test_window_weights_multiply_the_terms_of_the_intervals_whose_midpoint_they_hold(state_update):
    """Midpoints of TIMES' intervals: 0.85, 0.575, 0.225 (sample 0), 0.8, 0.3 (sample 1), 0.95,
    0.725, 0.375 (sample 2). The windows weight [0.5, 0.8] by 3 and [0.7, 1] by 0.5 (0.725 and 0.8
    get both: 1.5) and [0, 0.25] by 0 (drops 0.225)."""
    windows = [[0.5, 0.8, 3.0], [0.7, 1.0, 0.5], [0.0, 0.25, 0.0]]

    def weight(t0, t1):
        mid = 0.5 * (t0 + t1)
        return (3.0 if 0.5 <= mid <= 0.8 else 1.0) * (0.5 if mid >= 0.7 else 1.0) * (0.0 if mid <= 0.25 else 1.0)

    assert [weight(1.0, 0.7), weight(0.7, 0.45), weight(0.45, 0.0), weight(0.9, 0.55)] == [0.5, 3.0, 0.0, 1.5]
    cfg = ChainConfig(chain_length=3, loss_norm="h", state_update=state_update, grad_clip=None, batch_size=3,
                      window_weights=windows)
    net = ClosedFormSideNet()
    loss, stats = chain_losses(net, RecordingBackbone(), X0, 1.0, cfg, times=TIMES)
    want = expected_chain_loss(net, X0, TIMES, None, None, cfg, weight)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(loss, list(net.parameters())), torch.autograd.grad(want, list(net.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    unweighted = expected_chain_loss(net, X0, TIMES, None, None, cfg)
    assert abs(float(want.detach()) - float(unweighted.detach())) > 1e-3  # the weights change the loss


@pytest.mark.parametrize("bad", [[], [[0.5, 0.5, 1.0]], [[0.2, 1.1, 1.0]], [[-0.1, 0.5, 1.0]], [[0.1, 0.5, -1.0]],
                                 [[0.1, 0.5, float("nan")]], [[0.1, 0.5]], "0.5,1,3", [[0.1, 0.5, True]], [0.1, 0.5, 2.0]])
def test_bad_window_weights_are_refused(bad):
    with pytest.raises(ValueError, match="ChainConfig.window_weights: must be None or a non-empty list of"):
        ChainConfig(window_weights=bad)


def lagrange_prediction(anchors, s):
    """The anchor polynomial written out: anchors (t_j, v_j) oldest first; Lagrange through the
    last 3 (quadratic) when s lies within their time span, the last 2 (linear) beyond it."""
    ts = [a[0] for a in anchors]
    used = anchors[-3:] if min(ts) <= s <= max(ts) else anchors[-2:]
    out = 0.0
    for j, (tj, vj) in enumerate(used):
        w = 1.0
        for m, (tm, _) in enumerate(used):
            if m != j:
                w = w * (s - tm) / (tj - tm)
        out = out + w * vj
    return out


def expected_residual_loss(net, x0, times, cfg) -> torch.Tensor:
    """The chain loss of a SideNet that is a residual on the anchor polynomial, written out: every
    prediction is P0(t + d) + d g (P0 from the anchors of the sample's own chain so far)."""
    per_pair = []
    for i in range(x0.shape[0]):
        f = lambda t, x: velocity(t, x, None, None)  # noqa: E731

        def g(x, v, t, d):
            return net(x[None], v[None], t.reshape(1), d.reshape(1))[0]

        x, t = x0[i], times[0, i]
        v = f(t, x)
        anchors = [(t, v)]
        for k in range(times.shape[0] - 1):
            t1 = times[k + 1, i]
            h = t1 - t
            if h == 0:
                continue
            with torch.no_grad():
                u = [lagrange_prediction(anchors, t + c * h) + c * h * g(x, v, t, c * h) for c in GL3_NODES]
                x_pred = x + h * sum(w * uj for w, uj in zip(GL3_WEIGHTS, u))
                v1 = f(t1, x_pred)
            after = anchors + [(t1, v1)]
            res_f = lagrange_prediction(anchors, t1) + h * g(x, v, t, h) - v1
            res_b = lagrange_prediction(after, t) - h * g(x_pred, v1, t1, -h) - v
            scale_n = {"v": 1.0, "h": abs(h), "g": h * h}[cfg.loss_norm]
            per_pair.append((res_f.pow(2).mean() + res_b.pow(2).mean()) / scale_n)
            x, v, t, anchors = x_pred, v1, t1, after
    return torch.stack(per_pair).sum() / len(per_pair)


@pytest.mark.parametrize("loss_norm", ["v", "h"])
def test_residual_sidenet_chain_loss_equals_the_written_out_formula(loss_norm):
    """A SideNet that corrects the anchor polynomial (``base_perception="polynomial"``): the
    simulation and both loss terms use the polynomial's predictions from the chain's own anchors."""
    cfg = ChainConfig(chain_length=3, loss_norm=loss_norm, grad_clip=None, batch_size=3)
    net = ClosedFormSideNet()
    net.base_perception = "polynomial"
    loss, stats = chain_losses(net, RecordingBackbone(), X0, 1.0, cfg, times=TIMES)
    want = expected_residual_loss(net, X0, TIMES, cfg)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(loss, list(net.parameters())), torch.autograd.grad(want, list(net.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)
    # and it differs from the anchor-only SideNet's loss (the base matters)
    net.base_perception = "anchor-only"
    assert abs(float(chain_losses(net, RecordingBackbone(), X0, 1.0, cfg, times=TIMES)[0].detach()) - float(want.detach())) > 1e-3


def test_per_chain_guidance_scales_over_a_range():
    """``guidance_max``: every chain draws its own scale in [guidance_scale, guidance_max]; the
    backbone and the SideNet get it per sample, and the loss is the per-sample written-out loss
    with each chain's own scale."""
    cfg = ChainConfig(chain_length=3, guidance_scale=1.5, guidance_max=3.0, grad_clip=None, batch_size=3)
    net = ClosedFormSideNet(guidance=True)
    backbone = Backbone("test", RecordingBackbone(), (2,))
    batch = sample_batch(cfg, backbone, step=4)
    scales = batch.guidance
    assert scales.shape == (3,) and bool(((scales >= 1.5) & (scales <= 3.0)).all()) and len(set(scales.tolist())) == 3
    loss, stats = chain_losses(net, RecordingBackbone(), X0, 1.0, cfg, times=TIMES, guidance=scales)
    pairs = [int((TIMES[1:, i] != TIMES[:-1, i]).sum()) for i in range(3)]
    want = sum(p * expected_chain_loss(net, X0[i:i + 1], TIMES[:, i:i + 1], None, float(scales[i]), cfg)
               for i, p in enumerate(pairs)) / sum(pairs)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-14)
    for a, b in zip(torch.autograd.grad(loss, list(net.parameters())), torch.autograd.grad(want, list(net.parameters()))):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-13)


def test_gradient_clipping_scales_the_written_out_gradient_to_the_bound():
    # torch's clip_grad_norm_: g -> g * min(1, c / (|g| + 1e-6)), |g| the norm over all parameters
    cfg = ChainConfig(chain_length=3, loss_norm="h", grad_clip=None)
    net = ClosedFormSideNet()
    want = torch.autograd.grad(expected_chain_loss(net, X0, TIMES, None, None, cfg), list(net.parameters()))
    norm = float(torch.sqrt(sum((g * g).sum() for g in want)))
    for clip, factor in ((0.25 * norm, 0.25 * norm / (norm + 1e-6)), (4.0 * norm, 1.0)):
        net = ClosedFormSideNet()
        trainer = ChainTrainer(net, RecordingBackbone(), ChainConfig(chain_length=3, loss_norm="h", grad_clip=clip))
        stats = trainer.step(Batch(X0, TIMES[0], TIMES, None))
        assert stats["grad_norm"] == pytest.approx(norm, rel=1e-10)
        for p, g in zip(net.parameters(), want):
            torch.testing.assert_close(p.grad, factor * g, rtol=1e-9, atol=1e-13)


def test_loss_norms_differ_as_their_definitions_say():
    # one interval of size |h| = 0.25 per sample: "h" = "v" / |h| and "g" = "v" / h^2, exactly
    times = torch.tensor([[1.0, 1.0, 1.0], [0.75, 0.75, 0.75]], dtype=torch.float64)
    losses = {}
    for norm in ("v", "h", "g"):
        cfg = ChainConfig(chain_length=1, loss_norm=norm)
        losses[norm] = chain_losses(ClosedFormSideNet(), RecordingBackbone(), X0, 1.0, cfg, times=times)[0].item()
    assert losses["h"] == pytest.approx(losses["v"] / 0.25, rel=1e-12)
    assert losses["g"] == pytest.approx(losses["v"] / 0.25**2, rel=1e-12)


# --- the EMA against its definition ------------------------------------------------------------


def scripted_weight(n: int, j: int, shape) -> torch.Tensor:
    """The weights the stand-in optimiser sets at its step n (1-based) for parameter j."""
    numel = math.prod(shape)
    base = torch.arange(numel, dtype=torch.float32) * 0.1
    return (torch.sin(base + 0.7 * n + j) * (1.0 + 0.1 * n)).reshape(shape)


class ScriptedOptimizer(torch.optim.Optimizer):
    """Stands in for AdamW: its n-th step sets parameter j to ``scripted_weight(n, j)``; n is kept
    in the optimiser state, so it survives a checkpoint and a resume. Records the first
    instance's starting weights."""

    initial: list = []

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))
        if not ScriptedOptimizer.initial:
            ScriptedOptimizer.initial.append([p.detach().clone() for p in self.param_groups[0]["params"]])

    @torch.no_grad()
    def step(self, closure=None):
        for j, p in enumerate(self.param_groups[0]["params"]):
            st = self.state[p]
            n = int(st["n"]) + 1 if "n" in st else 1
            st["n"] = torch.tensor(float(n))
            p.copy_(scripted_weight(n, j, p.shape))


ARCH = MLPSideNet(2, hidden=8, depth=1, embed_dim=4).config()


def train_scripted(tmp_path, monkeypatch, name, *, iters, ema_decay, **kw):
    monkeypatch.setattr(torch.optim, "AdamW", ScriptedOptimizer)
    ScriptedOptimizer.initial = []
    cfg = ChainConfig(iters=iters, batch_size=4, chain_length=2, ema_decay=ema_decay, seed=2)
    out = tmp_path / name
    result = train(cfg, backbone="gmm-ring2d", out=out, sidenet_config=ARCH, progress=False, log=lambda *a: None, **kw)
    return result, out


@pytest.mark.parametrize("decay", [0.9, 0.5])
def test_exported_ema_is_the_exponential_average_of_the_weights(tmp_path, monkeypatch, decay, stop_training_after):
    n_steps = 7
    result, out = train_scripted(tmp_path, monkeypatch, "a", iters=n_steps, ema_decay=decay)
    w0 = ScriptedOptimizer.initial[0]
    names = [k for k, _ in result.sidenet.named_parameters()]
    ema = [w.clone() for w in w0]
    for n in range(1, n_steps + 1):
        ema = [decay * e + (1.0 - decay) * scripted_weight(n, j, e.shape) for j, e in enumerate(ema)]
    exported = dict(load_sidenet(out / "sidenet.safetensors").named_parameters())
    # the trainer's lerp_ and the formula above round differently: up to 2 float32 ulps of the
    # weights' magnitude (|scripted_weight(n)| <= 1 + 0.1 n) per step, for n_steps steps
    tol = ulps(2 * n_steps, torch.float32, 1.0 + 0.1 * n_steps)
    for j, k in enumerate(names):
        torch.testing.assert_close(exported[k].detach(), ema[j], rtol=0, atol=tol)
    # the raw weights are the last scripted ones, not the average
    raw = dict(result.sidenet.named_parameters())
    torch.testing.assert_close(raw[names[0]].detach(), scripted_weight(n_steps, 0, ema[0].shape))

    # interrupted after step 4 (checkpoint at step 3), then resumed: the same average
    with stop_training_after(4):
        train_scripted(tmp_path, monkeypatch, "b", iters=n_steps, ema_decay=decay, ckpt_every=3)
    train_scripted(tmp_path, monkeypatch, "b", iters=n_steps, ema_decay=decay, ckpt_every=3)
    resumed = dict(load_sidenet(tmp_path / "b" / "sidenet.safetensors").named_parameters())
    for j, k in enumerate(names):
        torch.testing.assert_close(resumed[k].detach(), ema[j], rtol=0, atol=tol)


def test_ema_direction_and_limits(tmp_path, monkeypatch):
    # decay 0.99 over 2 steps: the average has moved 1 - 0.99^2 ~ 2% of the way from the initial
    # weights toward the new ones, not 98%
    result, out = train_scripted(tmp_path, monkeypatch, "slow", iters=2, ema_decay=0.99)
    w0 = ScriptedOptimizer.initial[0]
    names = [k for k, _ in result.sidenet.named_parameters()]
    exported = dict(load_sidenet(out / "sidenet.safetensors").named_parameters())
    for j, k in enumerate(names):
        e, w2 = exported[k].detach(), scripted_weight(2, j, w0[j].shape)
        assert (e - w0[j]).abs().max() <= 0.03 * (w2 - w0[j]).abs().max() + 1e-6
    # decay 0: the average is the last weights; no EMA: the exported SideNet holds the raw weights
    for name, decay in (("zero", 0.0), ("off", None)):
        result, out = train_scripted(tmp_path, monkeypatch, name, iters=3, ema_decay=decay)
        exported = dict(load_sidenet(out / "sidenet.safetensors").named_parameters())
        for j, k in enumerate(names):
            # lerp_ toward the weights with weight 1 rounds at most 2 float32 ulps of |w| <= 1.3
            torch.testing.assert_close(exported[k].detach(), scripted_weight(3, j, w0[j].shape), rtol=0,
                                       atol=ulps(2, torch.float32, 1.0 + 0.1 * 3))


# --- a guidance-conditioned SideNet trains --------------------------------------------------------


def test_guidance_conditioned_sidenet_trains_and_receives_the_scale(tmp_path):
    backbone_seen: list = []

    def fn(t, x, guidance_scale=None, **cond):
        backbone_seen.append(guidance_scale)
        return -(0.5 + t[:, None]) * x + 0.3 * guidance_scale * torch.tanh(x)

    bb = Backbone("recording-guided", fn, (2,))
    arch = MLPSideNet(2, hidden=16, depth=2, embed_dim=8, guidance=True).config()
    sidenet_seen: list = []
    cfg = ChainConfig(iters=4, batch_size=8, chain_length=2, guidance_scale=2.5, lr=1e-2, seed=1)

    torch.manual_seed(cfg.seed)
    from adapters.torch_sit.sidenet.networks import build_sidenet

    init = build_sidenet(arch).state_dict()
    real_forward = MLPSideNet.forward

    def recording_forward(self, x, v, t, d, labels=None, guidance=None):
        sidenet_seen.append(None if guidance is None else guidance.detach().clone())
        return real_forward(self, x, v, t, d, labels, guidance)

    mp = pytest.MonkeyPatch()
    mp.setattr(MLPSideNet, "forward", recording_forward)
    try:
        result = train(cfg, backbone=bb, out=tmp_path / "g", sidenet_config=arch, progress=False, log=lambda *a: None)
    finally:
        mp.undo()
    assert backbone_seen and all(s == 2.5 for s in backbone_seen)
    # simulation probes (no grad) and the loss forward: every SideNet call got the scale, per sample
    assert len(sidenet_seen) >= 2 * cfg.iters
    assert all(s is not None and bool((s == 2.5).all()) for s in sidenet_seen)  # the scale passed through untouched
    # the guidance branch of the conditioning was trained
    trained = result.sidenet.state_dict()
    assert any(not torch.equal(init[k], trained[k]) for k in init if k.startswith("cond.g_mlp"))
    net = load_sidenet(tmp_path / "g" / "sidenet.safetensors")
    x, v = torch.randn(5, 2), torch.randn(5, 2)
    assert not torch.allclose(net(x, v, 0.5, -0.2, None, 2.5), net(x, v, 0.5, -0.2, None, 1.0))


def test_guidance_conditioned_sidenet_without_a_scale_is_refused_before_training(tmp_path):
    arch = MLPSideNet(2, hidden=8, depth=1, embed_dim=4, guidance=True).config()
    with pytest.raises(ValueError, match="guidance_scale"):
        train(ChainConfig(iters=2, batch_size=4), backbone="gmm-ring2d", out=tmp_path / "x", sidenet_config=arch,
              progress=False, log=lambda *a: None)
    assert not (tmp_path / "x" / "log.csv").exists()
