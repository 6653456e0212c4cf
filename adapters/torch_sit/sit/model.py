"""The REPA-trained SiT: a class-conditional latent transformer predicting the flow velocity.

Plain PyTorch, written from the published architecture, with parameter names and shapes equal to
the REPA release's so its checkpoints load with ``strict=True`` (:mod:`.sit_checkpoint`).

Time convention (the same as baquad's): t = 1 is noise, t = 0 is data, on the linear path
x_t = (1 - t) x_data + t eps; the network returns v(x_t, t, y) ~ eps - x_data, the velocity of
that path, and is fed the raw t in [0, 1] (no x1000 scale).

Architecture, for a latent x of shape (N, C, S, S), patch p, width D, h = w = S / p tokens per
side and T = h w tokens:

- patch embedding: a p x p convolution of stride p to D channels, tokens in row-major (row, col)
  order, plus a fixed 2-D sine-cosine positional embedding (:func:`sincos_pos_embed_2d`) kept as a
  non-trainable parameter, so it is part of the state dict;
- conditioning c = MLP(tau(t)) + E[y]: tau the 256-d sinusoidal time features
  (:func:`timestep_features`), MLP = Linear(256, D), SiLU, Linear(D, D); E a label table with
  one extra row, index ``num_classes``, for the "null" class of classifier-free guidance;
- ``depth`` blocks, each with (shift1, scale1, gate1, shift2, scale2, gate2) = Linear(SiLU(c))
  (6 chunks of D, in that order) and modulate(z, shift, scale) = z (1 + scale) + shift:
      x <- x + gate1 * Attn(modulate(LN(x), shift1, scale1))
      x <- x + gate2 * MLP(modulate(LN(x), shift2, scale2))
  LN is a LayerNorm without affine parameters (eps 1e-6); Attn is multi-head self-attention with
  a fused qkv projection (split as (3, heads, head_dim)), softmax(q k^T / sqrt(head_dim)) v and an
  output projection; MLP = Linear(D, 4D), GELU (tanh approximation), Linear(4D, D);
- final layer: (shift, scale) = Linear(SiLU(c)) (2 chunks of D), then
  Linear(modulate(LN(x), shift, scale)) to p * p * C values per token;
- unpatchify: token (i, j) holds its p x p x C patch as (row offset, column offset, channel),
  placed at rows i p .. i p + p - 1 and columns j p .. j p + p - 1 of the output (N, C, S, S).

REPA adds projector heads (three-layer SiLU MLPs, D -> 2048 -> 2048 -> z) on the tokens after
block ``encoder_depth``, trained to align with a vision encoder's features. Their weights are in
the checkpoints, so the model holds them, but :meth:`SiT.forward` runs them only when asked
(``return_features=True``); sampling never needs them. The output has C channels (no learned
variance), and the model never drops labels at random (it is used frozen; guidance passes the
null class explicitly).

Named configurations (:data:`SIT_CONFIGS`): SiT-S, -B, -L, -XL with patch 2, 4 or 8. The S
variant's final layer has the block width (384) here; REPA's own S definition gives it width 768
and cannot run, so no REPA S checkpoint exists to be incompatible with.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "SiTConfig",
    "SIT_CONFIGS",
    "sit_config",
    "SiT",
    "build_sit",
    "timestep_features",
    "sincos_pos_embed_2d",
]


@dataclass(frozen=True)
class SiTConfig:
    """Architecture of a SiT (all that fixes the state dict's keys and shapes).

    Attributes:
        depth: number of transformer blocks.
        hidden_size: token width D.
        num_heads: attention heads (D must be divisible by it).
        patch_size: p.
        input_size: latent side S (resolution / 8 for the SD-VAE: 32 at 256 px, 64 at 512 px).
        in_channels: latent channels C (also the output channels).
        mlp_ratio: MLP hidden width / D.
        num_classes: class labels 0 .. num_classes - 1.
        class_dropout_prob: the label-dropout rate used in training; > 0 adds the null-class row
            ``num_classes`` to the label table (REPA: 0.1).
        encoder_depth: the projector heads read the tokens after this many blocks (1-based).
        z_dims: output width of each projector head (one head per entry).
        projector_dim: hidden width of the projector heads.
        qk_norm: LayerNorm (with affine parameters, eps 1e-5) on q and k per head.
    """

    depth: int = 28
    hidden_size: int = 1152
    num_heads: int = 16
    patch_size: int = 2
    input_size: int = 32
    in_channels: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 1000
    class_dropout_prob: float = 0.1
    encoder_depth: int = 8
    z_dims: tuple[int, ...] = (768,)
    projector_dim: int = 2048
    qk_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "z_dims", tuple(int(z) for z in self.z_dims))
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first inconsistent field."""
        def bad(name: str, why: str) -> None:
            raise ValueError(f"SiTConfig.{name}: {why} (got {getattr(self, name)!r})")

        for name in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels",
                     "num_classes", "projector_dim"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if self.hidden_size % self.num_heads:
            bad("hidden_size", f"must be divisible by num_heads = {self.num_heads}")
        if self.hidden_size % 4:
            bad("hidden_size", "must be divisible by 4 (the 2-D sine-cosine positional embedding)")
        if self.input_size % self.patch_size:
            bad("input_size", f"must be divisible by patch_size = {self.patch_size}")
        if not 1 <= self.encoder_depth <= self.depth:
            bad("encoder_depth", f"must be in [1, depth = {self.depth}]")
        if not 0.0 <= self.class_dropout_prob < 1.0:
            bad("class_dropout_prob", "must be in [0, 1)")
        if self.mlp_ratio <= 0:
            bad("mlp_ratio", "must be > 0")
        if any(z < 1 for z in self.z_dims):
            bad("z_dims", "every projector width must be >= 1")

    @property
    def num_tokens(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def null_class(self) -> Optional[int]:
        """The label index of the null class, or None when the table has no null row."""
        return self.num_classes if self.class_dropout_prob > 0 else None

    def replace(self, **changes: Any) -> "SiTConfig":
        return dataclasses.replace(self, **changes)


#: (depth, hidden_size, num_heads) of the named sizes
_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}

#: the named configurations ``"SiT-XL/2"`` ... at 256 px (input_size 32), REPA's defaults otherwise
SIT_CONFIGS: dict[str, SiTConfig] = {
    f"SiT-{size}/{p}": SiTConfig(depth=d, hidden_size=w, num_heads=h, patch_size=p)
    for size, (d, w, h) in _SIZES.items()
    for p in (2, 4, 8)
}


def sit_config(name: str, resolution: Optional[int] = None, **overrides: Any) -> SiTConfig:
    """The named configuration (``"SiT-XL/2"``, ...) with optional changes.

    Args:
        name: a key of :data:`SIT_CONFIGS`.
        resolution: image resolution in pixels; sets ``input_size = resolution // 8`` (SD-VAE
            latents). Give ``input_size`` directly instead for other latent sizes.
        **overrides: any :class:`SiTConfig` field (e.g. ``z_dims=(768,)``, ``encoder_depth=4``).
    """
    if name not in SIT_CONFIGS:
        raise ValueError(f"sit_config: unknown model {name!r}; known: {', '.join(SIT_CONFIGS)}")
    if resolution is not None:
        if "input_size" in overrides:
            raise ValueError("sit_config: give resolution or input_size, not both")
        if resolution % 8:
            raise ValueError(f"sit_config: resolution must be a multiple of 8 (the VAE's factor), got {resolution}")
        overrides["input_size"] = resolution // 8
    return SIT_CONFIGS[name].replace(**overrides)


def timestep_features(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the raw time t (shape ``(N,)``): ``[cos(t f_k), sin(t f_k)]``,
    k = 0 .. dim/2 - 1, with f_k = max_period^(-k / (dim/2)); computed in float32, returned in
    t's dtype, shape ``(N, dim)`` (an odd dim gets a zero last column)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    ang = t[:, None].float() * freqs[None, :]
    emb = torch.cat([torch.cos(ang), torch.sin(ang)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb.to(t.dtype)


def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """``[sin(pos w_k), cos(pos w_k)]``, w_k = 10000^(-k / (dim/2)), k < dim/2; (len(pos), dim)."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    ang = pos.reshape(-1, 1).double() * omega[None, :]
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_size: int) -> torch.Tensor:
    """The fixed 2-D positional embedding, shape ``(grid_size**2, dim)``, float64.

    Token n = i * grid_size + j (row i, column j): the first dim/2 features are the 1-D
    sine-cosine embedding of the column j, the last dim/2 those of the row i.
    """
    if dim % 4:
        raise ValueError(f"sincos_pos_embed_2d: dim must be divisible by 4, got {dim}")
    idx = torch.arange(grid_size, dtype=torch.float64)
    rows = idx.repeat_interleave(grid_size)
    cols = idx.repeat(grid_size)
    return torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (1 + scale) + shift, with (N, D) shift/scale broadcast over the tokens of x (N, T, D)."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class PatchEmbed(nn.Module):
    """(N, C, S, S) -> (N, (S/p)^2, D) by a p x p, stride-p convolution (``proj``)."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """t (N,) -> MLP(timestep_features(t)) (N, D); ``mlp`` = Linear(256, D), SiLU, Linear(D, D)."""

    def __init__(self, hidden_size: int, frequency_dim: int = 256):
        super().__init__()
        self.frequency_dim = frequency_dim
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        feats = timestep_features(t, self.frequency_dim)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class label -> row of ``embedding_table``; row ``num_classes`` (present when the model was
    trained with label dropout) is the null class."""

    def __init__(self, num_classes: int, hidden_size: int, with_null: bool):
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + int(with_null), hidden_size)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention: ``qkv`` Linear(D, 3D) split as (3, heads, head_dim), optional
    per-head LayerNorm of q and k, scaled dot-product attention, ``proj`` Linear(D, D)."""

    def __init__(self, hidden_size: int, num_heads: int, qk_norm: bool):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, tokens, width = x.shape
        qkv = self.qkv(x).reshape(n, tokens, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, width))


class Mlp(nn.Module):
    """``fc1`` Linear(D, H), GELU (tanh approximation), ``fc2`` Linear(H, D)."""

    def __init__(self, hidden_size: int, mlp_hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiTBlock(nn.Module):
    """One adaLN-Zero transformer block (see the module docstring for the arithmetic)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads, qk_norm)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """Linear(modulate(LN(x), shift, scale)) to p * p * C per token, (shift, scale) from c."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def projector(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    """Linear(D, P), SiLU, Linear(P, P), SiLU, Linear(P, z)."""
    return nn.Sequential(
        nn.Linear(hidden_size, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, projector_dim), nn.SiLU(),
        nn.Linear(projector_dim, z_dim),
    )


class SiT(nn.Module):
    """The REPA SiT (module docstring). ``forward(x, t, y) -> v`` in REPA/baquad time.

    Args:
        config: the architecture (:class:`SiTConfig`; see :func:`sit_config` for named ones).
        zero_init: True (the published recipe): the adaLN output layers and the final linear layer
            start at zero, so a fresh model returns exactly 0. False: they get Xavier-uniform
            weights like every other linear layer, so a random model has a non-trivial field
            (tests, benchmarks).
        generator: a torch generator for the random initialisation (None: the global RNG).
    """

    def __init__(self, config: SiTConfig, zero_init: bool = True, generator: Optional[torch.Generator] = None):
        super().__init__()
        cfg = config
        self.config = cfg
        d = cfg.hidden_size
        self.x_embedder = PatchEmbed(cfg.in_channels, d, cfg.patch_size)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(cfg.num_classes, d, with_null=cfg.class_dropout_prob > 0)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_tokens, d), requires_grad=False)
        self.blocks = nn.ModuleList(SiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.projectors = nn.ModuleList(projector(d, cfg.projector_dim, z) for z in cfg.z_dims)
        self.final_layer = FinalLayer(d, cfg.patch_size, cfg.in_channels)
        self.init_weights(zero_init=zero_init, generator=generator)

    @torch.no_grad()
    def init_weights(self, zero_init: bool = True, generator: Optional[torch.Generator] = None) -> None:
        """Xavier-uniform linear layers (and patch convolution, viewed as a linear map) with zero
        biases, N(0, 0.02) label table and time-MLP weights, the fixed positional embedding, and
        with ``zero_init`` zero adaLN output layers and final linear layer."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight, generator=generator)
                nn.init.zeros_(m.bias)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1), generator=generator)
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02, generator=generator)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02, generator=generator)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02, generator=generator)
        if zero_init:
            for m in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                     self.final_layer.linear]:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        grid = self.config.input_size // self.config.patch_size
        pos = sincos_pos_embed_2d(self.config.hidden_size, grid)
        if self.pos_embed.device.type != "meta":
            self.pos_embed.copy_(pos.to(self.pos_embed.dtype).unsqueeze(0))

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    @property
    def null_class(self) -> Optional[int]:
        return self.config.null_class

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(N, T, p * p * C) -> (N, C, S, S) (module docstring)."""
        cfg = self.config
        p, c, side = cfg.patch_size, cfg.in_channels, cfg.input_size // cfg.patch_size
        x = tokens.reshape(tokens.shape[0], side, side, p, p, c)
        return x.permute(0, 5, 1, 3, 2, 4).reshape(tokens.shape[0], c, side * p, side * p)

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                      check_labels: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"SiT: x must have shape (N, {', '.join(map(str, expected))}) for this model "
                             f"(input_size {cfg.input_size}), got {tuple(x.shape)}")
        n = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(x.dtype)
        t = t.reshape(()).expand(n) if t.numel() == 1 else t
        if tuple(t.shape) != (n,):
            raise ValueError(f"SiT: t must be a scalar or of shape ({n},), got {tuple(t.shape)}")
        y = torch.as_tensor(y, device=x.device)
        if y.is_floating_point() or y.dtype == torch.bool:
            raise ValueError(f"SiT: y must hold integer class labels, got dtype {y.dtype}")
        y = y.long()
        y = y.reshape(()).expand(n) if y.numel() == 1 else y
        if tuple(y.shape) != (n,):
            raise ValueError(f"SiT: y must be a scalar or of shape ({n},), got {tuple(y.shape)}")
        if check_labels:
            self.check_label_values(y)
        return t, y

    def check_label_values(self, y: torch.Tensor) -> None:
        """Refuse labels outside the label table (one read of y's range from its device).

        Raises:
            ValueError: naming the valid range and the null class.
        """
        rows = self.y_embedder.embedding_table.num_embeddings
        if y.device.type == "meta":  # no values to check (a structure-only run, e.g. analysis.cost_model)
            return
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= rows):
            null = f"; {self.config.num_classes} is the null class" if rows > self.config.num_classes else \
                " (this model has no null class)"
            raise ValueError(f"SiT: labels y must lie in [0, {rows - 1}]{null}; got values in "
                             f"[{int(y.min())}, {int(y.max())}]")

    def forward(self, x: torch.Tensor, t: Any, y: Any, return_features: bool = False, check_labels: bool = True):
        """The velocity v(x, t, y), shape of x.

        Args:
            x: latents ``(N, C, S, S)``.
            t: time in [0, 1] (1 = noise), a scalar or ``(N,)``.
            y: class labels ``(N,)`` (or a scalar), ``num_classes`` for the null class.
            return_features: also run the projector heads and return ``(v, [z_1, ...])`` with
                z_k of shape ``(N, T, z_dims[k])`` (REPA's alignment features).
            check_labels: check the label values (a read from y's device, a host sync on a GPU);
                False for a caller that checked them already (:class:`~adapters.torch_sit.sit.backbone.GuidedSiT`
                checks each labels tensor once).
        """
        t, y = self._check_inputs(x, t, y, check_labels)
        h = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y)
        features = None
        for i, block in enumerate(self.blocks):
            h = block(h, c)
            if return_features and i + 1 == self.config.encoder_depth:
                features = [proj(h) for proj in self.projectors]
        v = self.unpatchify(self.final_layer(h, c))
        return (v, features) if return_features else v


def build_sit(name: str, resolution: Optional[int] = None, *, zero_init: bool = True, seed: Optional[int] = None,
              device: Any = None, **overrides: Any) -> SiT:
    """A named SiT (``"SiT-XL/2"``, ...) with random weights; see :func:`sit_config`.

    ``device="meta"`` builds the structure without memory (for key/shape checks or
    ``to_empty``). ``seed`` seeds the initialisation (None: the global RNG).
    """
    cfg = sit_config(name, resolution, **overrides)
    gen = None
    if seed is not None and torch.device(device or "cpu").type != "meta":
        gen = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    with torch.device(device or "cpu"):
        return SiT(cfg, zero_init=zero_init, generator=gen)
