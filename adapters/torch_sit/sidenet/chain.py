"""Chain training of the SideNet (paper Sec. 3.2.3, Algorithm 2; docs/algorithm.md#chain-training).

The backbone f is frozen and never differentiated; no data set is needed (chains start from
noise). One chain of K intervals from a start (x_0, t_0), with v_0 = f(x_0, t_0):

    simulate (no gradient), for the nodes c_j and weights w_j of the rule (Gauss-Legendre-3):
        u_j  = v_k + c_j h_k g(x_k, v_k, t_k, c_j h_k)                              (Eq. 5, 7)
        x~   = x_k + h_k sum_j w_j u_j                                              (Eq. 8)
    target (stop-gradient, the interval's only backbone call):
        v_{k+1} = f(x~, t_k + h_k)
    losses (the SideNet perceives both directions):
        forward   L_f = || v_k + h_k g(x_k, v_k, t_k, h_k) - sg(v_{k+1}) ||^2            (Eq. 11)
        backward  L_b = || v_{k+1} - h_k g(x~, v_{k+1}, t_k + h_k, -h_k) - sg(v_k) ||^2
    state reuse: v_{k+1} is the next interval's anchor, so K intervals cost K + 1 backbone calls.

Generation runs t: 1 -> 0, so h_k < 0: the forward loss trains offsets d = h < 0 and the backward
loss offsets d = -h > 0 (both signs, as inversion and the backward refinement need).
The losses are averaged over the (sample, interval) pairs of the chain.

Implementation: the simulation runs first, entirely under ``torch.no_grad()`` (SideNet and
backbone), one step of the core integrator ``baquad.bianchor.BiAnchorSolver`` per interval with
per-sample times (the same step that samples), and stores the anchors; then ONE SideNet forward with gradient evaluates all 2K
(forward and backward) loss terms, stacked along the batch. The autograd graph therefore holds
exactly one SideNet forward on 2KB inputs and nothing from the backbone or the simulation; the
trainer may split that forward over the batch (``loss_chunks``) and backpropagate chunk by chunk,
so activation memory does not grow with K.

Everything is set by one dataclass, :class:`ChainConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch
from torch import nn

from baquad.bianchor import BiAnchorSolver
from baquad.rules import get_rule

from .networks import per_sample
from .perception import NeuralPerception

__all__ = [
    "ChainConfig",
    "Rollout",
    "Batch",
    "sample_times",
    "sample_batch",
    "simulate_chain",
    "rollout_loss",
    "chain_losses",
    "ChainTrainer",
    "lr_factor",
    "valid_pairs",
    "step_generator",
    "unwrap",
]

INTERVALS = ("dirichlet", "trunc-exp", "uniform-grid")
STARTS = ("noise", "path")
DIRECTIONS = ("generate", "invert")
LOSS_NORMS = ("v", "h", "g")
STATE_UPDATES = ("predictor", "corrector")


@dataclass
class ChainConfig:
    """Every setting of the chain-training recipe (one place, for ablations).

    Chain
        chain_length: K, intervals per chain (paper: 8). A chain costs K + 1 backbone calls.
        intervals: how the K interval sizes are drawn:
            ``"dirichlet"``: a uniform random partition of the remaining time (|t_end - t_0|, i.e.
            [0, 1] from t_0 = 1) into K parts (Dirichlet(1, ..., 1));
            ``"trunc-exp"``: |h| ~ Exponential(``exp_rate``) truncated to [``h_min``, ``h_max``],
            i.i.d.; the chain stops at t_end (the last interval is clipped there and the rest are
            empty, masked out of the loss, and cost no backbone call once every chain of the
            batch has stopped). The paper's "Truncated Exp. 50" is not defined further;
            ``exp_rate`` is the setting to measure;
            ``"uniform-grid"``: K equal steps |t_end - t_0| / K.
        exp_rate, h_min, h_max: the truncated exponential's rate and truncation bounds.
        shared_partition: True: one partition (and one start time) for the whole batch, as an early
            prototype did (docs/algorithm.md#interval-sizes); False: drawn per sample (the backbone gets a
            per-sample time tensor).
        start: ``"noise"``: x_0 ~ N(0, I) at t_0 = 1; ``"path"``: t_0 ~ U[``start_min``,
            ``start_max``] and x_0 = (1 - t_0) x_data + t_0 z on the linear path, which needs a
            backbone with ``sample_data`` (the analytic flows).
        start_min, start_max: the range of the sampled start time (``start="path"``).
        direction: ``"generate"`` (toward t = 0, h < 0) or ``"invert"`` (toward t = 1, h > 0;
            needs ``start="path"``).
        rule: simulation quadrature rule (paper: Gauss-Legendre, 3 nodes).
        state_update: the simulated next state: ``"predictor"`` (x~, Algorithm 2 as written) or
            ``"corrector"`` (the BA-solver's corrector with backward refinement from (x~, v_{k+1}),
            one more no-gradient SideNet call per interval; the anchor velocity stays f(x~)).
    Loss
        forward_weight, backward_weight: weights of L_f and L_b.
        window_weights: ``[[lo, hi, w], ...]``: the loss terms of an interval whose midpoint time
            lies in [lo, hi] are multiplied by w (by the product of the w of every window that
            holds it); the normaliser stays the number of terms. None (default): every term
            weighs 1. For weighting the windows of t where ``analysis.error_source`` finds the
            error (e.g. ``[[0.5, 1.0, 3.0]]``).
        loss_norm: ``"v"``: squared error of the velocity (as above); ``"h"``: divided by |h| (weights small
            offsets more than "v" and less than "g"); ``"g"``: divided by h^2,
            i.e. regression of g on (v_{k+1} - v_k) / h.
        guidance_scale: classifier-free guidance scale passed to the backbone (``guidance_scale=``)
            and to a guidance-conditioned SideNet; None: no guidance.
        guidance_max: with ``guidance_scale``, every chain draws its own scale uniformly from
            [guidance_scale, guidance_max] (a per-sample tensor reaches the backbone and the SideNet),
            so that one guidance-conditioned SideNet serves every scale of the range (the paper's
            sampling settings change the scale with the NFE); None: the one scale.
    Optimisation
        iters: optimiser steps. batch_size: the GLOBAL batch (split over DDP ranks).
        lr, weight_decay, beta1, beta2: AdamW. cosine: cosine decay of the learning rate to
        ``min_lr_ratio * lr`` after ``warmup_iters`` linear warm-up steps.
        ema_decay: exponential moving average of the SideNet weights (None: off).
        grad_clip: clip the global gradient norm (None: off).
        loss_chunks: split the loss forward/backward over the batch in this many chunks (memory).
        micro_batch: gradient accumulation: each process simulates and back-propagates its slice of
            the global batch in pieces of at most this many chains, summing the gradients before
            the one optimiser step (None: the whole slice at once). The global batch, the loss and
            the step are the same up to float round-off; only peak memory changes (the paper's
            global batch of 4096 on GPUs that cannot hold a slice at once).
        seed: seeds the SideNet initialisation and every iteration's data (noise, times, labels
            are drawn from a generator seeded by (seed, step), so resuming and DDP are exact).

    Valid ranges (checked on construction and by :meth:`validate`; NaN and infinities are never
    valid): integers chain_length, iters, batch_size, loss_chunks >= 1, micro_batch >= 1 or None,
    and warmup_iters, seed >= 0; exp_rate, h_min <= h_max, lr > 0; grad_clip > 0 or None; 0 <= start_min <= start_max
    <= 1; forward_weight, backward_weight, weight_decay >= 0; guidance_scale >= 0 or None;
    beta1, beta2 in [0, 1); min_lr_ratio in [0, 1]; ema_decay in [0, 1) or None.
    """

    chain_length: int = 8
    intervals: str = "dirichlet"
    exp_rate: float = 5.0
    h_min: float = 0.01
    h_max: float = 1.0
    shared_partition: bool = False
    start: str = "noise"
    start_min: float = 0.0
    start_max: float = 1.0
    direction: str = "generate"
    rule: str = "gauss-legendre-3"
    state_update: str = "predictor"
    forward_weight: float = 1.0
    backward_weight: float = 1.0
    window_weights: Optional[list] = None
    loss_norm: str = "v"
    guidance_scale: Optional[float] = None
    guidance_max: Optional[float] = None
    iters: int = 1000
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.999
    cosine: bool = True
    warmup_iters: int = 0
    min_lr_ratio: float = 0.0
    ema_decay: Optional[float] = None
    grad_clip: Optional[float] = 1.0
    loss_chunks: int = 1
    micro_batch: Optional[int] = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field and its valid range.

        Every numeric field is checked for its type and range (NaN and infinities are out of
        every range), whatever the other settings, so a recipe is refused before any training
        step rather than failing (or silently misbehaving) later.
        """
        for name in ("chain_length", "iters", "batch_size", "loss_chunks"):
            self._check_int(name, 1)
        for name in ("warmup_iters", "seed"):
            self._check_int(name, 0)
        if self.micro_batch is not None:
            self._check_int("micro_batch", 1)
        for name in ("intervals", "start", "direction", "state_update", "loss_norm"):
            if not isinstance(getattr(self, name), str):
                self._bad(name, "must be a string")
        for name in ("shared_partition", "cosine"):
            if not isinstance(getattr(self, name), bool):
                self._bad(name, "must be True or False")
        self._check_real("exp_rate", 0.0, open_low=True)
        self._check_real("h_min", 0.0, open_low=True)
        self._check_real("h_max", 0.0, open_low=True)
        if self.h_min > self.h_max:
            self._bad("h_min", f"must be <= h_max = {self.h_max}")
        self._check_real("start_min", 0.0, 1.0)
        self._check_real("start_max", 0.0, 1.0)
        if self.start_min > self.start_max:
            self._bad("start_min", f"must be <= start_max = {self.start_max}")
        self._check_real("forward_weight", 0.0)
        self._check_real("backward_weight", 0.0)
        self._check_window_weights()
        if self.forward_weight + self.backward_weight == 0:
            self._bad("forward_weight", "forward_weight and backward_weight must not both be 0")
        self._check_real("guidance_scale", 0.0, optional=True)
        self._check_real("guidance_max", 0.0, optional=True)
        if self.guidance_max is not None and (self.guidance_scale is None or self.guidance_max < self.guidance_scale):
            self._bad("guidance_max", f"needs guidance_scale set and guidance_max >= guidance_scale = {self.guidance_scale}")
        self._check_real("lr", 0.0, open_low=True)
        self._check_real("weight_decay", 0.0)
        self._check_real("beta1", 0.0, 1.0, open_high=True)
        self._check_real("beta2", 0.0, 1.0, open_high=True)
        self._check_real("min_lr_ratio", 0.0, 1.0)
        self._check_real("ema_decay", 0.0, 1.0, open_high=True, optional=True)
        self._check_real("grad_clip", 0.0, open_low=True, optional=True)

        if self.intervals not in INTERVALS:
            self._bad("intervals", f"must be one of {INTERVALS}")
        if self.start not in STARTS:
            self._bad("start", f"must be one of {STARTS}")
        if self.direction not in DIRECTIONS:
            self._bad("direction", f"must be one of {DIRECTIONS}")
        if self.start == "path" and (self.start_max if self.direction == "generate" else 1.0 - self.start_min) <= 0.0:
            self._bad("start_max" if self.direction == "generate" else "start_min",
                      "the start-time range leaves no time to integrate toward the end of the chain")
        if self.direction == "invert" and self.start == "noise":
            self._bad("direction", "inversion chains run toward t = 1 and cannot start from noise at t = 1; use start='path'")
        get_rule(self.rule).check_unit_interval("rule")
        if self.state_update not in STATE_UPDATES:
            self._bad("state_update", f"must be one of {STATE_UPDATES}")
        if self.loss_norm not in LOSS_NORMS:
            self._bad("loss_norm", f"must be one of {LOSS_NORMS}")

    def _check_window_weights(self) -> None:
        """``window_weights``: None or a non-empty list of [lo, hi, w] with 0 <= lo < hi <= 1 and a
        finite w >= 0, stored as a list of lists of floats (its JSON form)."""
        value = self.window_weights
        if value is None:
            return
        why = "must be None or a non-empty list of [lo, hi, w] with 0 <= lo < hi <= 1 and a finite weight w >= 0"
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            self._bad("window_weights", why)
        out = []
        for item in value:
            if isinstance(item, (str, bytes)) or not isinstance(item, (list, tuple)) or len(item) != 3 or any(
                    isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v)
                    for v in item):
                self._bad("window_weights", why)
            lo, hi, w = (float(v) for v in item)
            if not (0.0 <= lo < hi <= 1.0) or w < 0.0:
                self._bad("window_weights", why)
            out.append([lo, hi, w])
        self.window_weights = out

    def _bad(self, name: str, why: str) -> None:
        raise ValueError(f"ChainConfig.{name}: {why} (got {getattr(self, name)!r})")

    def _check_int(self, name: str, low: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            self._bad(name, f"must be an integer >= {low}")
        if value < low:
            self._bad(name, f"must be >= {low}")

    def _check_real(self, name: str, low: float, high: float = math.inf, *, open_low: bool = False,
                    open_high: bool = False, optional: bool = False) -> None:
        """A finite real number in the interval from ``low`` to ``high`` (open where asked), or
        None when ``optional``."""
        value = getattr(self, name)
        if value is None and optional:
            return
        left, right = "(" if open_low else "[", ")" if open_high or high == math.inf else "]"
        span = f"{left}{low:g}, {high:g}{right}"
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            self._bad(name, f"must be a real number in {span}" + (" or None" if optional else ""))
        if not math.isfinite(value):
            self._bad(name, f"must be finite, in {span}")
        if value < low or (open_low and value == low) or value > high or (open_high and value == high):
            self._bad(name, f"must be in {span}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ChainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"ChainConfig: unknown fields {unknown}")
        return cls(**d)

    @property
    def t_end(self) -> float:
        return 0.0 if self.direction == "generate" else 1.0


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel/DataParallel wrapper (or the module)."""
    return getattr(module, "module", module)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator seeded by (seed, step): every iteration's data depends on nothing else."""
    state = np.random.SeedSequence([int(seed), int(step)]).generate_state(2, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


def sample_times(cfg: ChainConfig, t0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The chains' time grids, shape ``(K + 1, B)`` (float64, CPU), from ``t0`` of shape ``(B,)``.

    Row 0 is t0 and the grid moves monotonically toward ``cfg.t_end``; for "dirichlet" and
    "uniform-grid" the last row is exactly t_end, for "trunc-exp" the grid stops there (repeated
    times = empty intervals). One partition for the batch when ``cfg.shared_partition``.
    """
    t0 = t0.detach().to("cpu", torch.float64).reshape(-1)
    b, k = t0.shape[0], cfg.chain_length
    cols = 1 if cfg.shared_partition else b
    sign = -1.0 if cfg.direction == "generate" else 1.0
    span = (cfg.t_end - t0).abs()
    if cfg.intervals == "dirichlet":
        e = -torch.log1p(-torch.rand(k, cols, generator=generator, dtype=torch.float64))
        frac = torch.cumsum(e, 0) / e.sum(0, keepdim=True)
        frac[-1] = 1.0
        dist = frac * span
    elif cfg.intervals == "uniform-grid":
        frac = torch.arange(1, k + 1, dtype=torch.float64)[:, None] / k
        frac[-1] = 1.0
        dist = frac.expand(k, cols) * span
    else:  # trunc-exp: inverse CDF of Exp(rate) restricted to [h_min, h_max]
        u = torch.rand(k, cols, generator=generator, dtype=torch.float64)
        a, c = math.exp(-cfg.exp_rate * cfg.h_min), math.exp(-cfg.exp_rate * cfg.h_max)
        sizes = (-torch.log(a - u * (a - c)) / cfg.exp_rate).clamp(cfg.h_min, cfg.h_max)
        dist = torch.minimum(torch.cumsum(sizes, 0), span[None, :])
    dist = dist.expand(k, b)
    times = torch.cat([t0[None, :], t0[None, :] + sign * dist], 0)
    end_reached = dist >= span[None, :]
    times[1:] = torch.where(end_reached, torch.full_like(dist, cfg.t_end), times[1:])
    return times


@dataclass
class Batch:
    """One iteration's data (global batch): start states, start times, time grids, labels and
    conditioning vectors.

    ``labels`` are per-sample integer conditions of the backbone (class labels, or the prompt
    indices of a text-conditioned backbone); ``cond`` the per-sample conditioning vectors of the
    SideNet (``cond_dim``; e.g. the pooled prompt embeddings), passed to the backbone as well.
    """

    x: torch.Tensor  # (B, *state_shape) float32
    t0: torch.Tensor  # (B,) float64
    times: torch.Tensor  # (K + 1, B) float64
    labels: Optional[torch.Tensor]  # (B,) long or None
    cond: Optional[torch.Tensor] = None  # (B, cond_dim) float32 or None
    guidance: Optional[torch.Tensor] = None  # (B,) float64 per-chain guidance scales (guidance_max) or None

    def slice(self, start: int, stop: int) -> "Batch":
        part = lambda a: None if a is None else a[start:stop]  # noqa: E731
        return Batch(self.x[start:stop], self.t0[start:stop], self.times[:, start:stop], part(self.labels),
                     part(self.cond), part(self.guidance))


def sample_batch(cfg: ChainConfig, backbone: Any, step: int) -> Batch:
    """The GLOBAL batch of iteration ``step``, drawn on the CPU from :func:`step_generator`.

    Every DDP rank draws the same global batch and takes its slice, so N processes see exactly
    the data of one process. Draw order: noise, [start times, data], time grids, labels,
    [conditions]. A backbone with ``sample_cond(n, generator) -> (labels, cond)`` (a
    text-conditioned one: prompt indices and their pooled embeddings) supplies both.
    """
    g = step_generator(cfg.seed, step)
    b = cfg.batch_size
    shape = tuple(backbone.state_shape)
    z = torch.randn((b, *shape), generator=g, dtype=torch.float32)
    if cfg.start == "noise":
        t0 = torch.ones(b, dtype=torch.float64)
        x = z
    else:
        sample_data = getattr(backbone, "sample_data", None)
        if sample_data is None:
            raise ValueError(f"ChainConfig.start='path' needs data samples; backbone {getattr(backbone, 'name', '?')!r} has no sample_data")
        n_t = 1 if cfg.shared_partition else b
        u = torch.rand(n_t, generator=g, dtype=torch.float64)
        t0 = (cfg.start_min + (cfg.start_max - cfg.start_min) * u).expand(b).clone()
        data = sample_data(b, g).to(torch.float32).reshape(b, *shape)
        tb = t0.float().reshape(b, *([1] * len(shape)))
        x = (1.0 - tb) * data + tb * z
    times = sample_times(cfg, t0, g)
    nc = getattr(backbone, "num_classes", None)
    labels = torch.randint(0, nc, (b,), generator=g) if nc else None
    cond = None
    sample_cond = getattr(backbone, "sample_cond", None)
    if sample_cond is not None:
        labels, cond = sample_cond(b, g)
    guidance = None
    if cfg.guidance_max is not None:  # drawn last, so configs without it keep their batches
        lo, hi = cfg.guidance_scale, cfg.guidance_max
        guidance = lo + (hi - lo) * torch.rand(b, generator=g, dtype=torch.float64)
    return Batch(x, t0, times, labels, cond, guidance)


@dataclass
class Rollout:
    """A simulated chain (no gradient anywhere).

    X[k]: the anchor state of interval k (k = 0..K), V[k] = f(Xe[k], T[k]) its anchor velocity,
    where Xe[k] is the point the backbone was evaluated at (Xe[0] = X[0]; Xe[k] = x~ of interval
    k - 1, and X[k] = Xe[k] unless ``state_update="corrector"``); T: (K + 1, B) times; H: (K, B)
    steps T[k + 1] - T[k]; valid: (K, B) non-empty intervals. K here is the number of intervals
    actually simulated (a "trunc-exp" chain stops once every sample has reached t_end).
    """

    X: list
    Xe: list
    V: list
    T: torch.Tensor
    H: torch.Tensor
    valid: torch.Tensor
    labels: Optional[torch.Tensor]
    guidance: Any  # None, one float, or a (B,) tensor of per-chain scales
    backbone_calls: int
    cond: Optional[torch.Tensor] = None
    #: for a SideNet that is a residual on a training-free perception P0 (``base_perception``),
    #: P0's predictions at the loss offsets: base_f[k] = P0(x_k, v_k, t_k; h_k) with the history
    #: of anchor k, base_b[k] = P0(x~_{k+1}, v_{k+1}, t_{k+1}; -h_k) with that of anchor k + 1;
    #: None for the paper's anchor-only base (P0 = v).
    base_f: Optional[list] = None
    base_b: Optional[list] = None


def _cond(labels: Optional[torch.Tensor], guidance: Optional[float]) -> dict:
    cond: dict = {}
    if labels is not None:
        cond["labels"] = labels
    if guidance is not None:
        cond["guidance_scale"] = guidance
    return cond


@torch.no_grad()
def simulate_chain(sidenet: nn.Module, backbone: Callable, x: torch.Tensor, times: torch.Tensor,
                   cfg: ChainConfig, labels: Optional[torch.Tensor] = None,
                   cond: Optional[torch.Tensor] = None, guidance: Optional[torch.Tensor] = None) -> Rollout:
    """Simulate the chain through the time grid ``times`` (K + 1, B) from x at times[0].

    Each interval is one step of the core integrator, :class:`baquad.bianchor.BiAnchorSolver`,
    with per-sample times (every sample on its own grid), the SideNet behind
    :class:`~adapters.torch_sit.sidenet.perception.NeuralPerception` and the rule ``cfg.rule``:
    a single-anchor step for ``state_update="predictor"`` (the next state is the predictor x~,
    Eq. 8) and a bi-anchor step for ``"corrector"``. So the chain is exactly what
    ``baquad.solve`` computes per sample on that sample's grid with ``anchors="single"`` or
    ``anchors="bi", final="bi"``. Backbone calls: one at the start and one per simulated interval
    (K + 1 for a full chain), all under ``torch.no_grad()``, as are the SideNet probes. Empty
    intervals (h = 0, a "trunc-exp" chain that reached its end) leave their rows unchanged and
    are masked out of the loss; once every chain of the batch has ended, no more calls are made.
    ``cond``: per-sample conditioning vectors ``(B, cond_dim)`` for the SideNet, also passed to
    the backbone (``cond=``). ``guidance``: per-chain guidance scales ``(B,)`` (``guidance_max``)
    instead of ``cfg.guidance_scale``.
    """
    gs = cfg.guidance_scale if guidance is None else guidance.to(x.device, x.dtype)
    perception = NeuralPerception(unwrap(sidenet), labels, gs, cond=cond, strict=False)
    solver = BiAnchorSolver(get_rule(cfg.rule), perception)
    base = perception.base  # None: anchor-only (v_hat = v + d g)
    kwargs = _cond(labels, gs)
    if cond is not None:
        kwargs["cond"] = cond

    def field(t: torch.Tensor, xt: torch.Tensor) -> torch.Tensor:
        return backbone(t, xt, **kwargs)

    T = times.to(device=x.device, dtype=x.dtype)
    H = T[1:] - T[:-1]
    valid = H != 0
    state = solver.init(field, T[0], x)
    calls = 1
    X, Xe, V = [x], [x], [state.v]
    base_f, base_b = ([], []) if base is not None else (None, None)
    for k in range(H.shape[0]):
        if not bool(valid[k:].any()):
            break
        if base is not None:  # P0 at the forward loss offset, from anchor k with its history
            base_f.append(base(state.x, state.v, state.t, H[k][None], state.history)[0])
        state, _ = solver.step(field, state, T[k + 1], bi=cfg.state_update == "corrector", evaluate_end=True)
        calls += 1
        X.append(state.x)
        Xe.append(state.anchor.x)
        V.append(state.v)
        if base is not None:  # P0 at the backward loss offset, from anchor k + 1 with its history
            base_b.append(base(state.anchor.x, state.v, state.t, -H[k][None], state.history)[0])
    kk = len(X) - 1
    return Rollout(X, Xe, V, T[: kk + 1], H[:kk], valid[:kk], labels, gs, calls, cond, base_f, base_b)


def rollout_loss(sidenet: nn.Module, ro: Rollout, cfg: ChainConfig,
                 samples: slice = slice(None), normalizer: Optional[float] = None) -> tuple[torch.Tensor, dict]:
    """Forward and backward losses of a rollout, in ONE SideNet forward with gradient.

    For the samples ``samples`` of the batch and every simulated interval k, with d_k = h_k:
        L_f = mean_dims (v_k + h_k g(x_k, v_k, t_k, h_k) - v_{k+1})^2
        L_b = mean_dims (v_{k+1} - h_k g(x~_{k+1}, v_{k+1}, t_{k+1}, -h_k) - v_k)^2
    (a residual SideNet replaces the v_k of L_f and the v_{k+1} of L_b by its base perception's
    predictions, ``ro.base_f`` and ``ro.base_b``)
    (divided by h_k^2 for ``loss_norm="g"``, by |h_k| for ``"h"``). Returns
    ``sum over valid pairs (w_f L_f + w_b L_b) / normalizer`` (default: the number of valid pairs
    among ``samples``) and stats with the sums and counts (``sum_forward``, ``sum_backward``,
    ``count``) and their means (``loss_forward``, ``loss_backward``, ``loss``) as floats.
    """
    K = ro.H.shape[0]
    if K == 0:
        raise ValueError("rollout_loss: the rollout has no interval (every chain started at its end time)")
    xf = torch.stack(ro.X[:K])[:, samples]
    xb = torch.stack(ro.Xe[1:])[:, samples]
    v0 = torch.stack(ro.V[:K])[:, samples]
    v1 = torch.stack(ro.V[1:])[:, samples]
    t0, t1 = ro.T[:K, samples], ro.T[1:, samples]
    h = ro.H[:, samples]
    valid = ro.valid[:, samples]
    b = xf.shape[1]
    shape = xf.shape[2:]
    flat = lambda a: a.reshape(-1, *shape)
    x_in = torch.cat([flat(xf), flat(xb)])
    v_in = torch.cat([flat(v0), flat(v1)])
    t_in = torch.cat([t0.reshape(-1), t1.reshape(-1)])
    d_in = torch.cat([h.reshape(-1), -h.reshape(-1)])
    rows = dict(blocks=2 * K)  # the b samples once per interval, forward then backward
    lab = per_sample(None if ro.labels is None else ro.labels[samples], b, what="labels", **rows)
    cnd = per_sample(None if ro.cond is None else ro.cond[samples], b, item_ndim=1, what="cond", **rows)
    gsc = per_sample(ro.guidance[samples] if torch.is_tensor(ro.guidance) else ro.guidance, b,
                     device=t_in.device, dtype=t_in.dtype, what="guidance", **rows)
    g = sidenet(x_in, v_in, t_in, d_in, lab, gsc, **({} if cnd is None else {"cond": cnd}))
    g = g.reshape(2, K, b, *shape)
    hb = h.reshape(K, b, *([1] * len(shape)))
    pf = v0 if ro.base_f is None else torch.stack(ro.base_f)[:, samples]
    pb = v1 if ro.base_b is None else torch.stack(ro.base_b)[:, samples]
    res_f = pf + hb * g[0] - v1
    res_b = pb - hb * g[1] - v0
    if cfg.loss_norm in ("g", "h"):
        hs = torch.where(valid, h.abs(), torch.ones_like(h)).reshape(hb.shape)
        hs = hs if cfg.loss_norm == "g" else hs.sqrt()
        res_f, res_b = res_f / hs, res_b / hs
    dims = tuple(range(2, 2 + len(shape)))
    lf = res_f.pow(2).mean(dim=dims) if dims else res_f.pow(2)
    lb = res_b.pow(2).mean(dim=dims) if dims else res_b.pow(2)
    mask = valid.to(lf.dtype)
    if cfg.window_weights:  # weight each interval's terms by the windows holding its midpoint
        mid = 0.5 * (t0 + t1)
        for lo, hi, w in cfg.window_weights:
            mask = torch.where((mid >= lo) & (mid <= hi), mask * w, mask)
    sum_f, sum_b = (lf * mask).sum(), (lb * mask).sum()
    count = float(valid.sum())
    denom = count if normalizer is None else float(normalizer)
    loss = (cfg.forward_weight * sum_f + cfg.backward_weight * sum_b) / max(denom, 1e-12)
    sf, sb = float(sum_f.detach()), float(sum_b.detach())
    stats = {
        "sum_forward": sf,
        "sum_backward": sb,
        "count": count,
        "loss_forward": sf / max(count, 1.0),
        "loss_backward": sb / max(count, 1.0),
        "loss": (cfg.forward_weight * sf + cfg.backward_weight * sb) / max(count, 1.0),
        "intervals": K,
        "mean_abs_h": float(h.abs()[valid].mean()) if count else 0.0,
    }
    return loss, stats


def chain_losses(sidenet: nn.Module, backbone: Callable, x: torch.Tensor, t: Any, cfg: ChainConfig,
                 generator: Optional[torch.Generator] = None, *, labels: Optional[torch.Tensor] = None,
                 times: Optional[torch.Tensor] = None, normalizer: Optional[float] = None,
                 cond: Optional[torch.Tensor] = None, guidance: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
    """The chain loss of one batch: simulate (no gradient) then the forward/backward losses.

    Args:
        sidenet: the SideNet (or its DDP wrapper; the simulation uses the inner module).
        backbone: ``backbone(t: Tensor[B], x, **cond) -> v``, called K + 1 times, never with
            gradient.
        x: start states ``(B, ...)`` at time ``t`` (a float or a ``(B,)`` tensor).
        cfg: the recipe; the time grid is drawn from ``generator`` with :func:`sample_times`
            unless ``times`` ``(K + 1, B)`` is given (its row 0 must equal t).
        labels: class labels ``(B,)`` for a conditional backbone/SideNet.
        cond: conditioning vectors ``(B, cond_dim)`` for the SideNet (and the backbone).
        guidance: per-chain guidance scales ``(B,)`` instead of ``cfg.guidance_scale``.
        normalizer: divide the summed losses by this instead of the number of valid pairs
            (the DDP trainer passes the global count / world size).

    Returns:
        (loss, stats): a differentiable scalar (gradient reaches the SideNet only) and floats,
        including ``backbone_calls``.
    """
    b = x.shape[0]
    tt = torch.as_tensor(t).detach().to("cpu", torch.float64).reshape(-1)
    t0 = tt.expand(b) if tt.numel() == 1 else tt
    if times is None:
        if generator is None:
            raise ValueError("chain_losses: pass a generator (or an explicit time grid)")
        times = sample_times(cfg, t0, generator)
    elif not torch.equal(times[0].to("cpu", torch.float64), t0.to(torch.float64)):
        raise ValueError("chain_losses: times[0] must equal the start time t")
    ro = simulate_chain(sidenet, backbone, x, times, cfg, labels, cond, guidance)
    loss, stats = rollout_loss(sidenet, ro, cfg, normalizer=normalizer)
    stats["backbone_calls"] = ro.backbone_calls
    return loss, stats


def _all_finite(tensors: list) -> bool:
    """True when every entry of every tensor is finite (one host sync)."""
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()) if tensors else True


def valid_pairs(times: torch.Tensor, dtype: torch.dtype = torch.float32) -> int:
    """Number of non-empty (interval, sample) pairs of a time grid ``(K + 1, B)`` once cast to
    the state dtype (as :func:`simulate_chain` sees it): the loss normaliser of a global batch."""
    t = times.to(dtype)
    return int((t[1:] != t[:-1]).sum())


def lr_factor(cfg: ChainConfig, step: int) -> float:
    """Learning-rate multiplier at optimiser step ``step`` (0-based): linear warm-up over
    ``warmup_iters`` steps, then cosine decay from 1 to ``min_lr_ratio`` at ``iters``."""
    if cfg.warmup_iters and step < cfg.warmup_iters:
        return (step + 1) / cfg.warmup_iters
    if not cfg.cosine:
        return 1.0
    span = max(cfg.iters - cfg.warmup_iters, 1)
    p = min(max(step - cfg.warmup_iters, 0) / span, 1.0)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


class ChainTrainer:
    """Optimiser state around a SideNet: AdamW, cosine schedule, clipping, optional EMA.

    ``step(batch)`` runs one iteration on this process's slice of the global batch: simulate
    (no gradient), then the loss forward/backward in ``cfg.loss_chunks`` chunks (with DDP's
    ``no_sync`` on all but the last), clip, AdamW step with the scheduled learning rate, EMA.
    The backbone is only ever called under ``torch.no_grad()``.

    Args:
        sidenet: the SideNet, or its DistributedDataParallel wrapper.
        backbone: the frozen backbone (``(t, x, **cond) -> v``).
        cfg: the recipe.
        world_size: DDP world size (for the loss normaliser; 1 single-process).
    """

    def __init__(self, sidenet: nn.Module, backbone: Callable, cfg: ChainConfig, world_size: int = 1):
        self.net = sidenet
        self.module = unwrap(sidenet)
        self.backbone = backbone
        self.cfg = cfg
        self.world_size = world_size
        self.optimizer = torch.optim.AdamW(self.module.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                           weight_decay=cfg.weight_decay)
        self.ema: Optional[dict[str, torch.Tensor]] = None
        if cfg.ema_decay is not None:
            self.ema = {k: p.detach().clone() for k, p in self.module.named_parameters()}
        self.step_count = 0
        self.backbone_calls = 0

    def _check_finite_before_update(self, sums: dict) -> None:
        """Refuse to update the weights from a non-finite loss or gradient (FloatingPointError
        naming the iteration). The gradient is the all-reduced one under DDP, so every process
        stops at the same iteration."""
        it = self.step_count + 1
        if not (math.isfinite(sums["sum_forward"]) and math.isfinite(sums["sum_backward"])):
            raise FloatingPointError(
                f"iteration {it}: the chain loss is NaN/inf (forward sum {sums['sum_forward']}, backward sum "
                f"{sums['sum_backward']}); the weights were not updated. Check the backbone's outputs and the "
                "recipe (lr, grad_clip, loss_norm)."
            )
        grads = [p.grad for p in self.module.parameters() if p.grad is not None]
        if grads and not _all_finite(grads):
            raise FloatingPointError(
                f"iteration {it}: the gradient is NaN/inf (this process's loss is finite: another process's may "
                "not be, or the SideNet overflowed); the weights were not updated."
            )

    def step(self, batch: Batch, global_count: Optional[float] = None, all_reduce: Optional[Callable] = None) -> dict:
        """One optimiser step on ``batch`` (this process's slice). ``global_count`` is the number
        of valid (sample, interval) pairs of the GLOBAL batch (default: this slice's). With
        ``cfg.micro_batch`` the slice is simulated and back-propagated in pieces whose gradients
        add up before the step (gradient accumulation; DDP synchronises on the last piece only)."""
        cfg = self.cfg
        p0 = next(self.module.parameters())
        dev = p0.device
        x = batch.x.to(dev, p0.dtype)
        labels = None if batch.labels is None else batch.labels.to(dev)
        cond = None if batch.cond is None else batch.cond.to(dev, p0.dtype)
        count = float(valid_pairs(batch.times, p0.dtype)) if global_count is None else float(global_count)
        normalizer = count / self.world_size
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, self.step_count)
        self.optimizer.zero_grad(set_to_none=True)
        b = x.shape[0]
        size = cfg.micro_batch or b
        pieces = [(lo, min(lo + size, b)) for lo in range(0, b, size)]
        sums = {"sum_forward": 0.0, "sum_backward": 0.0, "count": 0.0}
        intervals, calls = 0, 0
        for j, (lo, hi) in enumerate(pieces):
            part = slice(lo, hi)
            ro = simulate_chain(self.module, self.backbone, x[part], batch.times[:, part], cfg,
                                None if labels is None else labels[part], None if cond is None else cond[part],
                                None if batch.guidance is None else batch.guidance[part])
            calls += ro.backbone_calls
            intervals = max(intervals, ro.H.shape[0])
            n = hi - lo
            n_chunks = min(cfg.loss_chunks, n)
            bounds = [round(i * n / n_chunks) for i in range(n_chunks + 1)]
            for i in range(n_chunks):
                last = j == len(pieces) - 1 and i == n_chunks - 1
                ctx = self.net.no_sync() if (not last and hasattr(self.net, "no_sync")) else contextlib.nullcontext()
                with ctx:
                    loss, st = rollout_loss(self.net, ro, cfg, slice(bounds[i], bounds[i + 1]), normalizer=normalizer)
                    loss.backward()
                for key in sums:
                    sums[key] += st[key]
        self.backbone_calls += calls
        self._check_finite_before_update(sums)
        grad_norm = float("nan")
        if cfg.grad_clip is not None:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.grad_clip))
        self.optimizer.step()
        if not _all_finite(list(self.module.parameters())):
            raise FloatingPointError(
                f"iteration {self.step_count + 1}: the SideNet weights became NaN/inf in the optimiser step "
                f"(learning rate {self.optimizer.param_groups[0]['lr']:g}); nothing is saved from this step. "
                "Lower lr or set grad_clip."
            )
        if self.ema is not None:
            with torch.no_grad():
                for k, p in self.module.named_parameters():
                    self.ema[k].lerp_(p.detach(), 1.0 - cfg.ema_decay)
        self.step_count += 1
        vals = torch.tensor([sums["sum_forward"], sums["sum_backward"], sums["count"]], dtype=torch.float64)
        if all_reduce is not None:
            vals = all_reduce(vals)
        sf, sb, c = (float(a) for a in vals)
        c = max(c, 1.0)
        return {
            "step": self.step_count,
            "loss": (cfg.forward_weight * sf + cfg.backward_weight * sb) / c,
            "loss_forward": sf / c,
            "loss_backward": sb / c,
            "lr": self.optimizer.param_groups[0]["lr"],
            "grad_norm": grad_norm,
            "intervals": intervals,
            "backbone_calls": calls,
        }
