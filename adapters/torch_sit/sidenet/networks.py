"""SideNets: small torch networks that learn bidirectional temporal perception.

A SideNet predicts the first-order velocity deviation g of the paper's Eq. 5
(docs/algorithm.md#perception): from an anchor (x, v, t) of a trajectory, v = f(x, t) a backbone
velocity, and an offset d of either sign,

    v_hat(t + d) = v + d * g(x, v, t, d),                                       (Eq. 5)

so v_hat = v exactly at d = 0 and the combined model is lower-bounded by the backbone.

Two architectures (paper Appendix E, Table 4; docs/algorithm.md#the-sidenet-architecture):

- :class:`MLPSideNet` for vector states ``(B, dim)`` (the analytic toy flows): input
  concat(x, v); t, d (and optionally a class label and a guidance scale) enter through sinusoidal
  embeddings, a small conditioning MLP and an additive projection into every hidden layer.
- :class:`ConvSideNet` for image/latent states ``(B, C, H, W)``: input concat(x, v) (2C channels),
  ResBlocks whose GroupNorms take their scale and shift from the conditioning embedding (AdaGN),
  global self-attention, and a zero-initialised output convolution. The paper's setting is base
  channels 128, time embedding 256, 4 layers (256 px) / 8 (512 px), about 6M parameters.

  With ``patch=p`` its blocks run at 1/p of the resolution (a stride-p input convolution), and a
  light full-resolution head (a pixel shuffle, the inputs again, one AdaGN ResBlock) gives g back
  at full resolution: the patch design, the default latent SideNet (``paper_sidenet_config``,
  docs/algorithm.md#the-sidenet-architecture).

- :class:`TokenSideNet` for token states ``(B, N, D)`` (the packed latents of a Flux pipeline:
  each token a 2x2 patch of the latent, its channels folded into D): a per-token MLP on
  concat(x, v) with AdaLN conditioning and global self-attention over the tokens; it needs no
  image size.

Every attention lays q, k and v out ``(B, heads, tokens, head_dim)`` with the head dimension
contiguous, the layout PyTorch's fused attention kernels take (no tokens x tokens score matrix on
a GPU). All zero-initialise their output layer, so an untrained SideNet returns g = 0 exactly and
its perception is the anchor-only one (v_hat = v). All take ``forward(x, v, t, d, labels=None,
guidance=None, cond=None)`` with t and d per-sample tensors of shape ``(B,)`` (or scalars) and
return g with the shape of x. ``cond`` is a conditioning vector per sample ``(B, cond_dim)`` for
a SideNet built with ``cond_dim`` (a text-conditioned backbone's pooled prompt embedding); it
enters the conditioning embedding like the label and the guidance scale. SideNets saved before
``cond_dim`` existed have no such key in their config and load unchanged. Each SideNet exposes ``config()`` (its class name and constructor arguments) so a
checkpoint can rebuild it with :func:`build_sidenet`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "per_sample",
    "host_values",
    "MLPSideNet",
    "ConvSideNet",
    "TokenSideNet",
    "SIDENETS",
    "build_sidenet",
    "sidenet_class",
    "count_parameters",
    "sidenet_report",
    "sinusoidal_embedding",
]


def sinusoidal_embedding(s: torch.Tensor, dim: int, max_freq: float = 1000.0) -> torch.Tensor:
    """Sinusoidal features of a scalar per sample.

    ``[cos(f_1 s), ..., cos(f_n s), sin(f_1 s), ..., sin(f_n s)]`` with n = dim // 2 angular
    frequencies f_j geometric from 1 to ``max_freq`` (radians per unit of s), zero-padded to ``dim``
    when dim is odd. ``s`` has shape ``(B,)``; the result ``(B, dim)`` in s's dtype.
    """
    half = dim // 2
    if half == 0:
        return s.new_zeros(s.shape[0], dim)
    exps = torch.arange(half, device=s.device, dtype=torch.float32) / max(half - 1, 1)
    freqs = torch.exp(exps * math.log(max_freq)).to(s.dtype)
    ang = s[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def _offset_extras(d: torch.Tensor) -> torch.Tensor:
    """``[sign(d), log(|d| + 1e-4) / 4]``: the offset's direction and scale on a log axis, so a
    network resolves small offsets (|d| ~ 0.01) as well as large ones. Shape ``(B, 2)``."""
    return torch.stack([torch.sign(d), torch.log(d.abs() + 1e-4) / 4.0], dim=1)


def per_sample(value: Any, n: int, *, blocks: int = 1, device: Any = None, dtype: Optional[torch.dtype] = None,
               item_ndim: int = 0, what: str = "value") -> Optional[torch.Tensor]:
    """A SideNet input for every row of a batch made of ``blocks`` stacked copies of ``n`` samples
    (row ``j n + i`` is sample i): the one broadcasting of times, offsets, labels, guidance
    scales and conditioning vectors that the SideNet's forward, its perception (m offsets of one
    anchor batch) and the chain loss (2K intervals of one batch) share.

    Args:
        value: None (returned as is); one item for the whole batch (a number, or a tensor with
            ``item_ndim`` dimensions, or for scalars any one-element tensor); or one item per
            sample (a tensor whose first axis is n).
        n: the samples of a block.
        blocks: how many copies of the batch are stacked.
        device, dtype: where and as what the result is (``torch.as_tensor``; None keeps
            the value's; a Python number becomes ``dtype`` directly).
        item_ndim: the dimensions of one item (0 for a time or a label, 1 for a conditioning
            vector).
        what: the input's name, for the error.

    Returns:
        ``(blocks * n, *item_shape)``: a shared item expanded (a view), per-sample items repeated
        block by block.

    Raises:
        ValueError: neither one item nor one per sample (naming ``what`` and the shapes accepted).
    """
    if value is None:
        return None
    if isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_)) and item_ndim == 0:
        # filled on the device: torch.as_tensor would copy a host scalar there, and a copy from
        # host memory waits for the device (a host sync per call on a GPU)
        return torch.full((blocks * n,), value.item() if isinstance(value, np.number) else value, dtype=dtype,
                          device=device)
    v = torch.as_tensor(value, dtype=dtype, device=device)
    if v.ndim == item_ndim or (item_ndim == 0 and v.numel() == 1):
        v = v.reshape(v.shape if item_ndim else ())
        return v.expand(blocks * n, *v.shape)
    if v.ndim == item_ndim + 1 and v.shape[0] == n:
        return v if blocks == 1 else v.repeat(blocks, *([1] * item_ndim))
    item = "one number" if item_ndim == 0 else f"one tensor of {item_ndim} dimension(s)"
    raise ValueError(f"{what}: expected {item} for the whole batch or one per sample (first axis {n}), "
                     f"got shape {tuple(v.shape)}")


def host_values(values: Any, *, device: Any, dtype: torch.dtype) -> torch.Tensor:
    """A ``(len(values),)`` tensor of host numbers on ``device``. Off the CPU it is made by one
    fill per value and a concatenation: ``torch.tensor(values, device=...)`` copies from host
    memory, and on a GPU such a copy waits for the device (a host sync per call, and nothing a
    CUDA graph can capture)."""
    values = [float(v) for v in values]
    if torch.device(device).type == "cpu":
        return torch.tensor(values, dtype=dtype)
    return torch.cat([torch.full((1,), v, dtype=dtype, device=device) for v in values])


def _inputs(x: torch.Tensor, v: torch.Tensor, t: torch.Tensor, path_features: bool) -> torch.Tensor:
    """The SideNet's state input, concatenated on dim 1: (x, v), plus with ``path_features`` the
    linear path's data and noise predictions x0_hat = x - t v and eps_hat = x + (1 - t) v
    (flow convention t = 1 noise; docs/conventions.md#time-direction). The network could form these itself,
    but only through multiplications by t it has to learn; given directly they cut the chain loss
    and the sampling error on the mixture flows (README, ablations)."""
    parts = [x, v]
    if path_features:
        tb = t.reshape(-1, *([1] * (x.ndim - 1)))
        parts += [x - tb * v, x + (1 - tb) * v]
    return torch.cat(parts, dim=1)


class _Conditioning(nn.Module):
    """Embedding of (t, d[, class label][, guidance scale][, conditioning vector]) into one
    vector per sample.

    Each scalar goes through sinusoidal features (plus sign/log-scale features for d when
    ``offset_log_sign``) and a two-layer SiLU MLP; the label through an embedding table with one
    extra row (index ``num_classes``) for the unconditional "null" label; a conditioning vector
    (``cond_dim``) through a LayerNorm without affine parameters (prompt embeddings come at any
    scale) and a two-layer SiLU MLP; the parts are summed.
    """

    def __init__(
        self,
        out_dim: int,
        freq_dim: int,
        max_freq: float,
        offset_log_sign: bool,
        num_classes: Optional[int],
        guidance: bool,
        cond_dim: Optional[int] = None,
    ):
        super().__init__()
        self.freq_dim = freq_dim
        self.max_freq = max_freq
        self.offset_log_sign = offset_log_sign
        self.num_classes = num_classes

        def mlp(n_in: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(n_in, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

        self.t_mlp = mlp(freq_dim)
        self.d_mlp = mlp(freq_dim + (2 if offset_log_sign else 0))
        self.label_embed = nn.Embedding(num_classes + 1, out_dim) if num_classes else None
        self.g_mlp = mlp(freq_dim) if guidance else None
        self.cond_dim = cond_dim
        self.cond_mlp = nn.Sequential(nn.LayerNorm(cond_dim, elementwise_affine=False), mlp(cond_dim)) if cond_dim else None

    def forward(self, t: torch.Tensor, d: torch.Tensor, labels: Optional[torch.Tensor],
                guidance: Optional[torch.Tensor], cond: Optional[torch.Tensor] = None) -> torch.Tensor:
        feat_d = sinusoidal_embedding(d, self.freq_dim, self.max_freq)
        if self.offset_log_sign:
            feat_d = torch.cat([feat_d, _offset_extras(d)], dim=1)
        c = self.t_mlp(sinusoidal_embedding(t, self.freq_dim, self.max_freq)) + self.d_mlp(feat_d)
        if self.label_embed is not None:
            if labels is None:
                labels = torch.full((t.shape[0],), self.num_classes, dtype=torch.long, device=t.device)
            c = c + self.label_embed(labels.to(device=t.device, dtype=torch.long))
        if self.g_mlp is not None:
            if guidance is None:
                raise ValueError("this SideNet is conditioned on the guidance scale: pass guidance=...")
            c = c + self.g_mlp(sinusoidal_embedding(guidance, self.freq_dim, 10.0))
        if self.cond_mlp is not None:
            if cond is None:
                raise ValueError(f"this SideNet is conditioned on a vector (cond_dim = {self.cond_dim}): pass cond= "
                                 f"of shape (B, {self.cond_dim}), e.g. the pooled prompt embedding")
            if tuple(cond.shape) != (t.shape[0], self.cond_dim):
                raise ValueError(f"cond: expected shape ({t.shape[0]}, {self.cond_dim}) (one conditioning vector per "
                                 f"sample), got {tuple(cond.shape)}")
            c = c + self.cond_mlp(cond.to(device=t.device, dtype=t.dtype))
        return c


#: training-free perceptions a SideNet can be a residual on (``base_perception=``): its prediction is
#: v_hat(t + d) = base(t + d) + d g(x, v, t, d), so a zero g is exactly the base.
BASES = ("anchor-only", "polynomial")


def _check_base(base: str) -> str:
    if base not in BASES:
        raise ValueError(f"base_perception: the SideNet's training-free base must be one of {BASES}, got {base!r}")
    return base


def _whole(owner: str, name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or a ValueError naming ``owner``'s argument ``name``."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{owner}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _flag(owner: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return bool(value)


def _positive(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def _classes(owner: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{owner}: num_classes must be None (unconditional) or an integer >= 1, got {value!r}")
    return int(value)


def _with_cond_dim(config: dict, cond_dim: Optional[int]) -> dict:
    """``config`` plus ``cond_dim`` when the SideNet has one. Unconditioned SideNets leave the key
    out, so their configs equal those written before ``cond_dim`` existed."""
    if cond_dim is None:
        return config
    if isinstance(cond_dim, bool) or int(cond_dim) != cond_dim or cond_dim < 1:
        raise ValueError(f"cond_dim must be None (no conditioning vector) or an integer >= 1, got {cond_dim!r}")
    return {**config, "cond_dim": int(cond_dim)}


class _SideNetBase(nn.Module):
    """Shared plumbing: config, input normalisation of (t, d, labels, guidance)."""

    _config: dict

    def config(self) -> dict:
        """Class name and constructor arguments (JSON-serialisable), for checkpoints. The base is
        listed only when it is not anchor-only, so that files written before it existed (all
        anchor-only) keep their configs."""
        cfg = {"class": type(self).__name__, **self._config}
        if cfg.get("base_perception") == "anchor-only":
            del cfg["base_perception"]
        return cfg

    @property
    def base_perception(self) -> str:
        """The training-free perception this SideNet corrects (``"anchor-only"``: v_hat = v + d g,
        Eq. 5 as in the paper; ``"polynomial"``: the anchor polynomial + d g)."""
        return self._config.get("base_perception", "anchor-only")

    @classmethod
    def min_tensor_count(cls, config: Mapping) -> int:
        """A lower bound on the number of state-dict tensors of the SideNet ``config`` describes,
        computed without building it: every repeated block holds at least one weight and one
        bias. Loaders compare it with the tensors a file stores before building anything, so a
        header that claims a huge depth is refused instead of built."""
        raise NotImplementedError

    @classmethod
    def _argument(cls, config: Mapping, name: str) -> Any:
        """``config[name]``, or the constructor's default when the config leaves it out."""
        return config[name] if name in config else inspect.signature(cls.__init__).parameters[name].default

    def _prepare(self, x: torch.Tensor, t: Any, d: Any, labels: Any, guidance: Any):
        n, place = x.shape[0], dict(device=x.device, dtype=x.dtype)
        return (per_sample(t, n, what="t", **place), per_sample(d, n, what="d", **place),
                per_sample(labels, n, device=x.device, dtype=torch.long, what="labels"),
                per_sample(guidance, n, what="guidance", **place))


class MLPSideNet(_SideNetBase):
    """SideNet for vector states: an MLP on concat(x, v) conditioned on (t, d[, label, scale]).

    g = W_out h_depth, with h_1 = SiLU(A concat(x, v) + P_1 c) and h_l = SiLU(W_l h_{l-1} + P_l c)
    for l = 2..depth, where c is the conditioning embedding of (t, d) (sinusoidal features of t
    and d, plus sign(d) and log|d| features when ``offset_log_sign``). W_out is zero at
    initialisation, so g = 0 and v_hat = v (Eq. 5) until it is trained.

    Args:
        dim: state dimension (states of shape ``(B, *shape)`` are flattened; prod(shape) = dim).
        hidden: width of the hidden layers.
        depth: number of hidden layers.
        embed_dim: width of the conditioning embedding (also the sinusoidal feature count).
        num_classes: class-conditional SideNet (an embedding table with a null label) or None.
        guidance: condition on the classifier-free guidance scale.
        max_freq: highest angular frequency of the sinusoidal features (t, d in true time units).
        offset_log_sign: add sign(d) and log(|d| + 1e-4) to the offset features.
        path_features: also read x0_hat = x - t v and eps_hat = x + (1 - t) v (linear path only).
        base_perception: the training-free perception the SideNet corrects (:data:`BASES`; default
            ``"anchor-only"``, the paper's Eq. 5).
        cond_dim: size of a per-sample conditioning vector (``forward(..., cond=)``), or None.
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 64,
        num_classes: Optional[int] = None,
        guidance: bool = False,
        max_freq: float = 100.0,
        offset_log_sign: bool = True,
        path_features: bool = False,
        base_perception: str = "anchor-only",
        cond_dim: Optional[int] = None,
    ):
        super().__init__()
        me = "MLPSideNet"
        dim, hidden, depth = _whole(me, "dim", dim, 1), _whole(me, "hidden", hidden, 1), _whole(me, "depth", depth, 1)
        embed_dim = _whole(me, "embed_dim", embed_dim, 2)  # at least one cos/sin pair of t and d
        self._config = dict(dim=dim, hidden=hidden, depth=depth, embed_dim=embed_dim,
                            num_classes=_classes(me, num_classes), guidance=_flag(me, "guidance", guidance),
                            max_freq=_positive(me, "max_freq", max_freq),
                            offset_log_sign=_flag(me, "offset_log_sign", offset_log_sign),
                            path_features=_flag(me, "path_features", path_features),
                            base_perception=_check_base(base_perception))
        self._config = _with_cond_dim(self._config, cond_dim)
        num_classes, max_freq = self._config["num_classes"], self._config["max_freq"]
        self.dim = dim
        self.path_features = bool(path_features)
        self.cond = _Conditioning(embed_dim, embed_dim, max_freq, offset_log_sign, num_classes, guidance, cond_dim)
        self.inp = nn.Linear((4 if path_features else 2) * dim, hidden)
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.cond_proj = nn.ModuleList(nn.Linear(embed_dim, hidden) for _ in range(depth))
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def min_tensor_count(cls, config: Mapping) -> int:
        """``2 * depth``: each hidden layer has its conditioning projection (weight and bias)."""
        return 2 * _whole("MLPSideNet", "depth", cls._argument(config, "depth"), 1)

    def forward(self, x: torch.Tensor, v: torch.Tensor, t: Any, d: Any,
                labels: Any = None, guidance: Any = None, cond: Any = None) -> torch.Tensor:
        """g(x, v, t, d) with the shape of x. t, d, guidance: scalars or ``(B,)``; labels ``(B,)``;
        cond ``(B, cond_dim)``."""
        t, d, labels, guidance = self._prepare(x, t, d, labels, guidance)
        n = x.shape[0]
        c = F.silu(self.cond(t, d, labels, guidance, cond))
        h = F.silu(self.inp(_inputs(x.reshape(n, -1), v.reshape(n, -1), t, self.path_features)) + self.cond_proj[0](c))
        for layer, proj in zip(self.layers, self.cond_proj[1:]):
            h = F.silu(layer(h) + proj(c))
        return self.out(h).reshape(x.shape)


def _groups(channels: int, max_groups: int = 32) -> int:
    g = min(max_groups, channels)
    while channels % g:
        g -= 1
    return g


def group_norm(norm: nn.GroupNorm, h: torch.Tensor) -> torch.Tensor:
    """``norm(h)`` computed in h's dtype. Under autocast ``F.group_norm`` is one of the ops cast
    to float32, so a bfloat16 activation would come back in float32 and every elementwise op
    after it (the AdaGN modulation, SiLU) would run in float32 with a cast before the next
    convolution: twice the bytes. The aten kernel called here is not on autocast's lists, and it
    accumulates the statistics in float32 for a bfloat16 input anyway. In float32 it is the same
    computation as ``norm(h)``."""
    b, c = h.shape[:2]
    w = None if norm.weight is None else norm.weight.to(h.dtype)
    bias = None if norm.bias is None else norm.bias.to(h.dtype)
    return torch.ops.aten.native_group_norm(h.contiguous(), w, bias, b, c, h[0, 0].numel(), norm.num_groups,
                                            norm.eps)[0]


class AdaGN(nn.Module):
    """Adaptive group normalisation: GN(h) * (1 + scale(c)) + shift(c), per channel."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(channels), channels, affine=False)
        self.proj = nn.Linear(cond_dim, 2 * channels)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.proj(c)[:, :, None, None].chunk(2, dim=1)
        return group_norm(self.norm, h) * (1 + scale.to(h.dtype)) + shift.to(h.dtype)


class ResBlock(nn.Module):
    """h + conv(SiLU(AdaGN(conv(SiLU(AdaGN(h, c))), c))): a conditioned residual block."""

    def __init__(self, channels: int, cond_dim: int):
        super().__init__()
        self.norm1 = AdaGN(channels, cond_dim)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = AdaGN(channels, cond_dim)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        r = self.conv1(F.silu(self.norm1(h, c)))
        r = self.conv2(F.silu(self.norm2(r, c)))
        return h + r


class SelfAttention(nn.Module):
    """Global multi-head self-attention over the H*W positions, residual, pre-GroupNorm.

    The positions are taken as tokens ``(B, H*W, C)`` and q, k, v laid out ``(B, heads, H*W,
    C / heads)`` with the head dimension contiguous (stride 1), the layout the fused attention
    kernels read, so on a GPU no (H*W) x (H*W) score matrix is materialised. The 1 x 1
    convolutions ``qkv`` and ``proj`` are applied as the equal matrix products on the tokens;
    their weights keep the Conv2d shapes, so SideNets saved before this layout load unchanged
    and compute the same function (up to float rounding).
    """

    def __init__(self, channels: int, num_heads: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"ConvSideNet: base_channels {channels} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, ch, hh, ww = h.shape
        tokens = group_norm(self.norm, h).flatten(2).transpose(1, 2)  # (B, N, C)
        qkv = F.linear(tokens, self.qkv.weight.flatten(1), self.qkv.bias)  # channel s C + head dh + j
        q, k, v = qkv.reshape(b, hh * ww, 3, self.num_heads, ch // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, hh * ww, ch)
        return h + F.linear(a, self.proj.weight.flatten(1), self.proj.bias).transpose(1, 2).reshape(b, ch, hh, ww)


class ConvSideNet(_SideNetBase):
    """SideNet for image/latent states ``(B, C, H, W)`` (paper Appendix E, Table 4).

    conv3x3(concat(x, v)) -> ``num_layers`` x [``res_blocks`` AdaGN ResBlocks, global
    self-attention] -> GroupNorm, SiLU, conv3x3 to C channels, zero-initialised (g = 0 until
    trained). The conditioning vector (dimension ``time_embed_dim``) sums the embeddings of t, d
    (sinusoidal + MLP; d also with sign/log-scale features), the class label (with a null label
    for unconditional use) and optionally the guidance scale; every ResBlock's GroupNorms take
    their scale and shift from it (AdaGN).

    Args:
        in_channels: C (4 for SD-VAE latents); the network reads 2C channels.
        base_channels: width of every block (128 in the paper).
        time_embed_dim: conditioning dimension (256 in the paper).
        num_layers: number of (ResBlocks, attention) layers (4 at 256 px, 8 at 512 px).
        num_classes: class-conditional SideNet, or None.
        num_heads: attention heads.
        guidance: condition on the guidance scale.
        res_blocks: ResBlocks per layer. The paper does not give the block structure; 3 gives
            5.9M parameters at the defaults with 1000 classes and C = 4, its "about 6M".
        max_freq: highest angular frequency of the sinusoidal features.
        offset_log_sign: add sign(d) and log(|d| + 1e-4) to the offset features.
        path_features: also read x0_hat = x - t v and eps_hat = x + (1 - t) v (4C input channels).
        base_perception: the training-free perception the SideNet corrects (see :class:`MLPSideNet`).
        cond_dim: size of a per-sample conditioning vector (``forward(..., cond=)``), or None.
        patch: 1 (Table 4: every block at the state's resolution) or p > 1: the blocks run at
            1/p of it. The input convolution then has stride p (kernel p + 2 (p // 2), so each
            position also sees a border around its p x p patch), and a light head works at full
            resolution again: a 3x3 convolution to ``base_channels // 2`` channels per pixel put
            back as p x p patches (a pixel shuffle), concatenated with the inputs, a 3x3
            convolution, one AdaGN ResBlock, GroupNorm, SiLU and the zero-initialised 3x3 output
            convolution. H and W must be multiples of p. Configs leave the key out at 1, so they
            equal those written before it existed.
    """

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 128,
        time_embed_dim: int = 256,
        num_layers: int = 4,
        num_classes: Optional[int] = None,
        num_heads: int = 4,
        guidance: bool = False,
        res_blocks: int = 3,
        max_freq: float = 1000.0,
        offset_log_sign: bool = True,
        path_features: bool = False,
        base_perception: str = "anchor-only",
        cond_dim: Optional[int] = None,
        patch: int = 1,
    ):
        super().__init__()
        me = "ConvSideNet"
        in_channels, base_channels = _whole(me, "in_channels", in_channels, 1), _whole(me, "base_channels", base_channels, 1)
        time_embed_dim = _whole(me, "time_embed_dim", time_embed_dim, 2)  # one cos/sin pair at least
        num_layers, res_blocks = _whole(me, "num_layers", num_layers, 1), _whole(me, "res_blocks", res_blocks, 0)
        num_heads = _whole(me, "num_heads", num_heads, 1)
        if base_channels % num_heads:
            raise ValueError(f"ConvSideNet: base_channels {base_channels} must be divisible by num_heads {num_heads}")
        self.path_features = _flag(me, "path_features", path_features)
        self._config = dict(in_channels=in_channels, base_channels=base_channels,
                            time_embed_dim=time_embed_dim, num_layers=num_layers,
                            num_classes=_classes(me, num_classes),
                            num_heads=num_heads, guidance=_flag(me, "guidance", guidance), res_blocks=res_blocks,
                            max_freq=_positive(me, "max_freq", max_freq),
                            offset_log_sign=_flag(me, "offset_log_sign", offset_log_sign),
                            path_features=self.path_features, base_perception=_check_base(base_perception))
        self._config = _with_cond_dim(self._config, cond_dim)
        self.patch = _whole(me, "patch", patch, 1)
        if self.patch > 1:
            self._config["patch"] = self.patch
        num_classes, max_freq = self._config["num_classes"], self._config["max_freq"]
        self.cond = _Conditioning(time_embed_dim, time_embed_dim, max_freq, offset_log_sign, num_classes, guidance, cond_dim)
        p, n_in = self.patch, (4 if path_features else 2) * in_channels
        self.conv_in = (nn.Conv2d(n_in, base_channels, 3, padding=1) if p == 1 else
                        nn.Conv2d(n_in, base_channels, p + 2 * (p // 2), stride=p, padding=p // 2))
        self.blocks = nn.ModuleList()
        for _ in range(num_layers):
            for _ in range(res_blocks):
                self.blocks.append(ResBlock(base_channels, time_embed_dim))
            self.blocks.append(SelfAttention(base_channels, num_heads))
        self.norm_out = nn.GroupNorm(_groups(base_channels), base_channels)
        head = base_channels
        if p > 1:  # back to full resolution: features per pixel, the inputs, a conditioned block
            head = max(base_channels // 2, 1)
            self.up = nn.Conv2d(base_channels, head * p * p, 3, padding=1)
            self.refine = nn.Conv2d(head + n_in, head, 3, padding=1)
            self.head_block = ResBlock(head, time_embed_dim)
            self.head_norm = nn.GroupNorm(_groups(head), head)
        self.conv_out = nn.Conv2d(head, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @classmethod
    def min_tensor_count(cls, config: Mapping) -> int:
        """``2 * num_layers * (res_blocks + 1)``: every ResBlock and attention block has weights
        and biases."""
        layers = _whole("ConvSideNet", "num_layers", cls._argument(config, "num_layers"), 1)
        return 2 * layers * (_whole("ConvSideNet", "res_blocks", cls._argument(config, "res_blocks"), 0) + 1)

    def forward(self, x: torch.Tensor, v: torch.Tensor, t: Any, d: Any,
                labels: Any = None, guidance: Any = None, cond: Any = None) -> torch.Tensor:
        """g(x, v, t, d) with the shape of x ``(B, C, H, W)``; cond ``(B, cond_dim)``."""
        if x.ndim != 4:
            raise ValueError(f"ConvSideNet: expected states of shape (B, C, H, W), got {tuple(x.shape)}")
        t, d, labels, guidance = self._prepare(x, t, d, labels, guidance)
        c = F.silu(self.cond(t, d, labels, guidance, cond))
        if x.shape[2] % self.patch or x.shape[3] % self.patch:
            raise ValueError(f"ConvSideNet: H and W must be multiples of the patch size {self.patch}, got {tuple(x.shape)}")
        inputs = _inputs(x, v, t, self.path_features)
        h = self.conv_in(inputs)
        for block in self.blocks:
            h = block(h, c) if isinstance(block, ResBlock) else block(h)
        if self.patch == 1:
            return self.conv_out(F.silu(group_norm(self.norm_out, h)))
        u = F.pixel_shuffle(self.up(F.silu(group_norm(self.norm_out, h))), self.patch)
        f = self.head_block(self.refine(torch.cat([u, inputs.to(u.dtype)], dim=1)), c)
        return self.conv_out(F.silu(group_norm(self.head_norm, f)))


class TokenBlock(nn.Module):
    """h + MLP(AdaLN(h, c)), then h + Attention(LN(h)): one layer of :class:`TokenSideNet`."""

    def __init__(self, width: int, cond_dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.modulation = nn.Linear(cond_dim, 2 * width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.SiLU(), nn.Linear(2 * width, width))
        self.norm2 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.modulation(c)[:, None, :].chunk(2, dim=-1)
        h = h + self.mlp(self.norm1(h) * (1 + scale) + shift)
        b, n, w = h.shape
        q, k, v = self.qkv(self.norm2(h)).reshape(b, n, 3, self.num_heads, w // self.num_heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return h + self.proj(a.transpose(1, 2).reshape(b, n, w))


class TokenSideNet(_SideNetBase):
    """SideNet for token states ``(B, N, D)``, such as a Flux pipeline's packed latents.

    Linear(concat(x, v)) per token -> ``num_layers`` x :class:`TokenBlock` (an MLP whose
    LayerNorm takes its scale and shift from the conditioning embedding, AdaLN, then global
    multi-head self-attention over the N tokens) -> LayerNorm, Linear to D, zero-initialised
    (g = 0 until trained). The network carries no positional encoding: it is equivariant under a
    permutation of the tokens and works for any N, so it needs no image size. The conditioning
    embedding is that of the other SideNets (t, d, label, guidance scale, ``cond``).

    Args:
        token_dim: D (4 C for Flux's 2x2-packed latents of C channels).
        width: token width inside the network.
        time_embed_dim: conditioning dimension.
        num_layers: number of blocks.
        num_heads: attention heads (must divide ``width``).
        num_classes, guidance, cond_dim, max_freq, offset_log_sign, path_features,
            base_perception: as for :class:`ConvSideNet`.
    """

    def __init__(
        self,
        token_dim: int,
        width: int = 128,
        time_embed_dim: int = 128,
        num_layers: int = 2,
        num_heads: int = 4,
        num_classes: Optional[int] = None,
        guidance: bool = False,
        cond_dim: Optional[int] = None,
        max_freq: float = 1000.0,
        offset_log_sign: bool = True,
        path_features: bool = False,
        base_perception: str = "anchor-only",
    ):
        super().__init__()
        me = "TokenSideNet"
        token_dim, width = _whole(me, "token_dim", token_dim, 1), _whole(me, "width", width, 1)
        time_embed_dim = _whole(me, "time_embed_dim", time_embed_dim, 2)  # one cos/sin pair at least
        num_layers, num_heads = _whole(me, "num_layers", num_layers, 1), _whole(me, "num_heads", num_heads, 1)
        if width % num_heads:
            raise ValueError(f"TokenSideNet: width {width} must be divisible by num_heads {num_heads}")
        self.path_features = _flag(me, "path_features", path_features)
        self._config = _with_cond_dim(dict(
            token_dim=token_dim, width=width, time_embed_dim=time_embed_dim, num_layers=num_layers,
            num_heads=num_heads, num_classes=_classes(me, num_classes), guidance=_flag(me, "guidance", guidance),
            max_freq=_positive(me, "max_freq", max_freq), offset_log_sign=_flag(me, "offset_log_sign", offset_log_sign),
            path_features=self.path_features, base_perception=_check_base(base_perception)), cond_dim)
        num_classes, max_freq = self._config["num_classes"], self._config["max_freq"]
        self.cond = _Conditioning(time_embed_dim, time_embed_dim, max_freq, offset_log_sign, num_classes, guidance, cond_dim)
        self.inp = nn.Linear((4 if path_features else 2) * token_dim, width)
        self.blocks = nn.ModuleList(TokenBlock(width, time_embed_dim, num_heads) for _ in range(num_layers))
        self.norm_out = nn.LayerNorm(width)
        self.out = nn.Linear(width, token_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @classmethod
    def min_tensor_count(cls, config: Mapping) -> int:
        """``2 * num_layers``: each block has at least its AdaLN projection (weight and bias)."""
        return 2 * _whole("TokenSideNet", "num_layers", cls._argument(config, "num_layers"), 1)

    def forward(self, x: torch.Tensor, v: torch.Tensor, t: Any, d: Any,
                labels: Any = None, guidance: Any = None, cond: Any = None) -> torch.Tensor:
        """g(x, v, t, d) with the shape of x ``(B, N, D)``; cond ``(B, cond_dim)``."""
        if x.ndim != 3:
            raise ValueError(f"TokenSideNet: expected token states of shape (B, N, D), got {tuple(x.shape)}")
        t, d, labels, guidance = self._prepare(x, t, d, labels, guidance)
        c = F.silu(self.cond(t, d, labels, guidance, cond))
        features = _inputs(x.transpose(1, 2), v.transpose(1, 2), t, self.path_features).transpose(1, 2)
        h = self.inp(features)
        for block in self.blocks:
            h = block(h, c)
        return self.out(self.norm_out(h))


SIDENETS: dict[str, type] = {"MLPSideNet": MLPSideNet, "ConvSideNet": ConvSideNet, "TokenSideNet": TokenSideNet}


def sidenet_class(config: Any) -> type:
    """The SideNet class a config names, after checking the config's keys (no module is built).

    Raises:
        TypeError: ``config`` is not a mapping.
        ValueError: unknown class, unknown keys, or a required argument missing (each named).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"build_sidenet: config must be a dict {{'class': name, **arguments}}, got {type(config).__name__}")
    name = config.get("class")
    if not isinstance(name, str) or name not in SIDENETS:
        raise ValueError(f"build_sidenet: unknown SideNet class {name!r}; known: {', '.join(SIDENETS)}")
    cls = SIDENETS[name]
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p != "self"]
    unknown = sorted(set(config) - set(valid) - {"class"})
    if unknown:
        raise ValueError(f"build_sidenet: {name} has no argument(s) {', '.join(unknown)}; its arguments are {', '.join(valid)}")
    missing = [p for p in valid if params[p].default is inspect.Parameter.empty and p not in config]
    if missing:
        raise ValueError(f"build_sidenet: {name} needs the argument(s) {', '.join(missing)}")
    return cls


def build_sidenet(config: Mapping) -> nn.Module:
    """Rebuild a SideNet from its :meth:`config` dict (``{"class": name, **kwargs}``).

    Every value is checked by the constructor (a ValueError names the argument): integer sizes
    >= 1 (``embed_dim``/``time_embed_dim`` >= 2, ``res_blocks`` >= 0), ``num_classes`` None or
    >= 1, ``max_freq`` finite and > 0, flags True or False, ``num_heads`` dividing
    ``base_channels``.
    """
    cls = sidenet_class(config)
    return cls(**{k: v for k, v in config.items() if k != "class"})


def count_parameters(module: Any) -> int:
    """Number of scalar parameters of a module (shared parameters counted once)."""
    seen: set[int] = set()
    n = 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def sidenet_report(sidenet: nn.Module, backbone: Any = None) -> str:
    """One line: the SideNet's parameter count, the backbone's, and their ratio.

    ``backbone``: an ``nn.Module``, a :class:`adapters.torch_sit.backbones.Backbone` (analytic
    backbones report "analytic"), an int parameter count, or None.
    """
    n = count_parameters(sidenet)
    line = f"SideNet {type(sidenet).__name__}: {n:,} parameters"
    if backbone is None:
        return line
    name = getattr(backbone, "name", type(backbone).__name__)
    if isinstance(backbone, int):
        nb, name = backbone, "backbone"
    elif isinstance(backbone, nn.Module):
        nb = count_parameters(backbone)
    else:
        nb = getattr(backbone, "num_parameters", None)
    if not nb:
        return f"{line}; backbone {name}: analytic (no parameters)"
    return f"{line}; backbone {name}: {nb:,} parameters; the SideNet is {size_ratio(n / nb)}"


def size_ratio(ratio: float) -> str:
    """A SideNet-to-backbone size ratio in words: ``"0.87% of the backbone"`` below one,
    ``"152 times the backbone"`` above."""
    return f"{100.0 * ratio:.2g}% of the backbone" if ratio < 1.0 else f"{ratio:,.3g} times the backbone"
