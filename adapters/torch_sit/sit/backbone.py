"""The REPA SiT as a guided backbone: classifier-free guidance inside a guidance interval.

:class:`GuidedSiT` turns a :class:`~adapters.torch_sit.sit.model.SiT` into the backbone form
``backbone(t, x, labels=..., guidance_scale=...) -> v`` used by the chain trainer and, through
``Backbone.vfield``, by ``baquad.solve``. With guidance scale s, labels y, the null class
y_null and the interval [low, high] (REPA time, t = 1 noise), a sample at time t is guided iff

    s > 1  and  low <= t <= high,

and then its velocity is

    v = v(x, t, y_null) + s (v(x, t, y) - v(x, t, y_null))          (on every channel),

otherwise v = v(x, t, y). One backbone call runs ONE network forward (one NFE): the conditional
pass for the whole batch and the unconditional pass for the guided samples only, concatenated
in that order (conditional first), so a batch is doubled exactly when all of it is inside the
interval and not enlarged at all outside it. The decision is per sample, so a chain-training
batch that mixes times inside and outside the interval only pays for the samples inside.
This is how REPA's Euler and Euler-Maruyama samplers apply guidance (they test the time of the
step, with the whole batch at one time); REPA's published evaluation uses [0, 0.7], i.e. no
guidance on the noisiest 30% of the path, which is this module's default.

Precision: the network runs in float32 with TF32 matmuls on CUDA by default (REPA's sampling
setting), set only for the duration of each call and restored afterwards (``tf32=None`` leaves
the process setting alone, ``False`` forces full float32 matmuls); ``autocast="bf16"`` runs it
under bfloat16 autocast instead. The weights stay float32, inputs are cast to the weights' dtype
and the velocity is returned in the state's dtype, so a float64 solver state works (the guidance
combination is then formed in float64, as REPA's sampler does). :meth:`SiTBackbone.vfield`
passes the solver's time as a Python float, so the interval test sees the exact grid time and is
decided on the host: a sampling call reads nothing back from the device (the label values are
checked once per labels tensor).

Registered backbones (:func:`adapters.torch_sit.backbones.get_backbone`):

- ``"repa-sit-xl2-256"``: SiT-XL/2 at 256 px (latents 4 x 32 x 32), 1000 classes; needs
  ``ckpt=PATH`` (REPA's released file or a REPA training checkpoint), or ``random_weights=True``
  for timing runs;
- ``"repa-sit-xl2-512"``: the same at 512 px (latents 4 x 64 x 64); no 512 px REPA checkpoint is
  published, so it needs one of your own (``ckpt=PATH``) or ``random_weights=True``;
- ``"repa-sit-tiny"``: a tiny random SiT (4 x 8 x 8 latents, 10 classes, no checkpoint), for
  tests and dry runs.

All take ``guidance_low``, ``guidance_high``, ``autocast``, ``tf32`` and (checkpoints)
``weights``, ``legacy``; see :func:`repa_sit_backbone`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from numbers import Real
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..backbones import Backbone, register_backbone
from .model import SiT, SiTConfig, sit_config
from .checkpoint import LoadReport, load_repa_checkpoint

__all__ = [
    "GuidedSiT",
    "SiTBackbone",
    "repa_sit_backbone",
    "tiny_sit_config",
    "matmul_precision",
    "DEFAULT_GUIDANCE_INTERVAL",
]

#: REPA's published evaluation interval: guidance for t in [0, 0.7]
DEFAULT_GUIDANCE_INTERVAL = (0.0, 0.7)

_AUTOCAST = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def _autocast_dtype(autocast: Any) -> Optional[torch.dtype]:
    if autocast is None or autocast is False:
        return None
    if isinstance(autocast, torch.dtype) and autocast in (torch.bfloat16, torch.float16):
        return autocast
    if isinstance(autocast, str) and autocast.lower() in _AUTOCAST:
        return _AUTOCAST[autocast.lower()]
    raise ValueError(f"autocast must be None, 'bf16' or 'fp16' (or torch.bfloat16 / torch.float16), got {autocast!r}")


@contextlib.contextmanager
def matmul_precision(device: torch.device, tf32: Optional[bool]) -> Iterator[None]:
    """On CUDA, float32 matmuls in TF32 (``tf32=True``) or full float32 (``False``) inside the
    block, restoring the previous setting after; a no-op for ``None`` and off CUDA."""
    if tf32 is None or device.type != "cuda":
        yield
        return
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _number(value: Any) -> bool:
    """A Python or numpy real number (not a bool, not a tensor)."""
    return isinstance(value, Real) and not isinstance(value, bool)


class GuidedSiT(nn.Module):
    """``forward(t, x, labels=None, guidance_scale=None) -> v`` with interval guidance (module doc).

    Args:
        model: the SiT (its label table needs the null row when guiding).
        guidance_low, guidance_high: the guidance interval in REPA time (inclusive).
        autocast: None (float32), ``"bf16"`` or ``"fp16"`` autocast of the network.
        tf32: TF32 matmuls on CUDA during each call (True), full float32 (False), untouched (None).

    Attributes:
        calls: network forwards run (one per call).
        rows: total batch rows the network saw (B per unguided call, B + guided per call).
    """

    def __init__(self, model: SiT, guidance_low: float = DEFAULT_GUIDANCE_INTERVAL[0],
                 guidance_high: float = DEFAULT_GUIDANCE_INTERVAL[1], autocast: Any = None,
                 tf32: Optional[bool] = True):
        super().__init__()
        if not float(guidance_low) <= float(guidance_high):
            raise ValueError(f"guidance_low ({guidance_low}) must be <= guidance_high ({guidance_high}); "
                             "guidance applies for guidance_low <= t <= guidance_high (t = 1 is noise)")
        self.model = model
        self.guidance_low = float(guidance_low)
        self.guidance_high = float(guidance_high)
        self.autocast = _autocast_dtype(autocast)
        self.tf32 = tf32
        self.calls = 0
        self.rows = 0
        self._labels_checked: tuple = (None, -1)

    @property
    def config(self) -> SiTConfig:
        return self.model.config

    def _per_sample(self, value: Any, n: int, device: torch.device, name: str, dtype: torch.dtype) -> torch.Tensor:
        """``value`` as a ``(n,)`` tensor on ``device``; Python numbers become ``dtype`` exactly
        (no float32 detour), tensors keep their floating dtype (integers become ``dtype``)."""
        if isinstance(value, torch.Tensor):
            v = value.to(device)
            v = v.to(dtype) if dtype.is_floating_point and not v.is_floating_point() else v
        elif _number(value):  # filled on the device (torch.as_tensor would copy from the host: a sync)
            return torch.full((n,), value, dtype=dtype, device=device)
        else:
            v = torch.as_tensor(value, dtype=dtype, device=device)
        if v.numel() == 1:
            return v.reshape(()).expand(n)
        if tuple(v.shape) != (n,):
            raise ValueError(f"{name}: expected a scalar or a tensor of shape ({n},), got shape {tuple(v.shape)}")
        return v

    def guided(self, t: torch.Tensor, guidance_scale: Any) -> torch.Tensor:
        """The per-sample guidance decision: ``s > 1 and low <= t <= high`` (bool, shape of t)."""
        if guidance_scale is None:
            return torch.zeros_like(t, dtype=torch.bool)
        s = self._per_sample(guidance_scale, t.shape[0], t.device, "guidance_scale", torch.float64)
        return (s > 1.0) & (t >= self.guidance_low) & (t <= self.guidance_high)

    def _network(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.model.x_embedder.proj.weight
        ctx = torch.autocast(x.device.type, dtype=self.autocast) if self.autocast else contextlib.nullcontext()
        with matmul_precision(x.device, self.tf32), ctx:
            return self.model(x.to(p.dtype), t.to(p.dtype), y, check_labels=False)  # checked by _check_labels

    def forward(self, t: Any, x: torch.Tensor, labels: Any = None, guidance_scale: Any = None) -> torch.Tensor:
        """v(x, t) with labels ``(B,)`` (or one label) and an optional guidance scale (a float or
        ``(B,)``); t a float or ``(B,)`` in REPA time. Returns x's shape, dtype and device."""
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"x: expected a floating torch tensor, got {type(x).__name__}")
        b = x.shape[0]
        tt = self._per_sample(t, b, x.device, "t", x.dtype)
        if labels is None:
            raise ValueError(f"labels: this backbone is class-conditional; pass labels=... (class indices in "
                             f"[0, {self.config.num_classes}), or {self.config.num_classes} for the null class)")
        y = self._per_sample(labels, b, x.device, "labels", torch.long)
        self._check_labels(labels, y)
        if _number(t) and (guidance_scale is None or _number(guidance_scale)):
            # one time and one scale for the whole batch (sampling): decided on the host, so the
            # call reads nothing back from the device
            every = guidance_scale is not None and guidance_scale > 1.0 and self.guidance_low <= t <= self.guidance_high
            idx, guided = None, b if every else 0
        else:
            idx = self.guided(tt, guidance_scale).nonzero().reshape(-1)
            guided = idx.numel()
            every = guided == b  # the whole batch at one time inside the interval
        self.calls += 1
        self.rows += b + guided
        if guided == 0:
            return self._network(x, tt, y).to(x.dtype)
        null = self.model.null_class
        if null is None:
            raise ValueError("guidance_scale > 1 needs a null class, but this SiT's label table has none "
                             "(class_dropout_prob = 0); use guidance_scale=None")
        x_in = torch.cat([x, x if every else x[idx]])
        t_in = torch.cat([tt, tt if every else tt[idx]])
        y_in = torch.cat([y, torch.full((guided,), null, dtype=y.dtype, device=y.device)])
        out = self._network(x_in, t_in, y_in).to(x.dtype)
        cond, uncond = out[:b], out[b:]
        if idx is None:
            return uncond + float(guidance_scale) * (cond - uncond)
        s = self._per_sample(guidance_scale, b, x.device, "guidance_scale", torch.float64)[idx].to(x.dtype)
        s = s.reshape(-1, *([1] * (x.ndim - 1)))
        return cond.index_copy(0, idx, uncond + s * (cond[idx] - uncond))

    def _check_labels(self, labels: Any, y: torch.Tensor) -> None:
        """The label values checked by the SiT once per labels tensor: a tensor already checked
        and not written since (the same object at the same version, as in every step of one
        solve) is not read again, so a solve reads its labels back from the device once."""
        if isinstance(labels, torch.Tensor) and self._labels_checked[0] is labels \
                and self._labels_checked[1] == labels._version:
            return
        self.model.check_label_values(y)
        if isinstance(labels, torch.Tensor):
            self._labels_checked = (labels, labels._version)


@dataclasses.dataclass
class SiTBackbone(Backbone):
    """A :class:`Backbone` whose ``vfield`` passes the solver's time as a Python float, so the
    guidance-interval test sees the exact grid time and is made on the host (the network itself
    gets the time in float32, filled on the device): a solve's backbone calls read nothing back
    from the device."""

    def vfield(self, **cond: Any) -> Callable[[float, torch.Tensor], torch.Tensor]:
        def field_(t: float, x: torch.Tensor) -> torch.Tensor:
            return self.fn(float(t), x, **cond)

        return field_


def tiny_sit_config(num_classes: int = 10, input_size: int = 8) -> SiTConfig:
    """A tiny SiT for tests: depth 2, width 64, 2 heads, patch 2, projector 64 -> 32."""
    return SiTConfig(depth=2, hidden_size=64, num_heads=2, patch_size=2, input_size=input_size, in_channels=4,
                     num_classes=num_classes, encoder_depth=1, z_dims=(32,), projector_dim=64)


def repa_sit_backbone(
    model: "str | SiTConfig" = "SiT-XL/2",
    resolution: Optional[int] = 256,
    ckpt: Optional[str] = None,
    *,
    weights: str = "auto",
    legacy: bool = False,
    guidance_low: float = DEFAULT_GUIDANCE_INTERVAL[0],
    guidance_high: float = DEFAULT_GUIDANCE_INTERVAL[1],
    autocast: Any = None,
    tf32: Optional[bool] = True,
    seed: int = 0,
    zero_init: bool = True,
    name: Optional[str] = None,
    device: Any = "cpu",
    **config_overrides: Any,
) -> SiTBackbone:
    """A guided REPA SiT backbone.

    Args:
        model: a named config (``"SiT-XL/2"``, ...) or a :class:`SiTConfig`.
        resolution: image resolution (latent side = resolution / 8); ignored for a SiTConfig.
        ckpt: a REPA checkpoint to load strictly (:func:`load_repa_checkpoint`); None: random
            weights from ``seed`` (``zero_init`` as in :class:`SiT`).
        weights, legacy: which weights of a training checkpoint, legacy block names.
        guidance_low, guidance_high, autocast, tf32: see :class:`GuidedSiT`.
        name: the backbone's name (default from the model and resolution).
        device: where to build it (random weights are initialised there, e.g. on the GPU).
        **config_overrides: :class:`SiTConfig` fields (default ``z_dims=(768,)``,
            ``encoder_depth=8``, REPA's released setting).

    Returns:
        a frozen (eval, no grad) :class:`SiTBackbone` on ``device`` with ``num_classes`` set;
        ``extra`` holds ``config``, ``null_class``, ``guidance_interval`` and ``load_report``
        (a :class:`LoadReport` or None).
    """
    if isinstance(model, SiTConfig):
        cfg = model.replace(**config_overrides) if config_overrides else model
    else:
        cfg = sit_config(model, resolution, **config_overrides)
    report: Optional[LoadReport] = None
    device = torch.device(device)
    if ckpt is None:
        with device:
            net = SiT(cfg, zero_init=zero_init, generator=torch.Generator(device=device).manual_seed(int(seed)))
    else:  # every tensor comes from the file (strict load): skip the random initialisation
        with torch.device("meta"):
            net = SiT(cfg)
        net = net.to_empty(device="cpu")
        report = load_repa_checkpoint(ckpt, net, weights=weights, legacy=legacy)
        net = net.to(device)
    guided = GuidedSiT(net, guidance_low, guidance_high, autocast=autocast, tf32=tf32)
    if name is None:
        label = model if isinstance(model, str) else "SiT"
        name = f"{label}-{cfg.input_size * 8}px"
    extra = {"config": cfg, "null_class": cfg.null_class, "guidance_interval": (guided.guidance_low, guided.guidance_high),
             "load_report": report}
    return SiTBackbone.from_module(guided, name, (cfg.in_channels, cfg.input_size, cfg.input_size),
                                   num_classes=cfg.num_classes, extra=extra)


def _checkpoint_factory(reg_name: str, resolution: int) -> Callable[..., SiTBackbone]:
    def factory(ckpt: Optional[str] = None, random_weights: bool = False, **kwargs: Any) -> SiTBackbone:
        if ckpt is None and not random_weights:
            where = ("REPA's released SiT-XL/2 file or a REPA training checkpoint" if resolution == 256 else
                     "a 512 px SiT-XL/2 checkpoint of your own (REPA publishes none)")
            raise ValueError(f"backbone {reg_name!r} needs ckpt=PATH ({where}); nothing is downloaded. "
                             "Pass random_weights=True for random weights (timing only).")
        if ckpt is not None and random_weights:
            raise ValueError(f"backbone {reg_name!r}: give ckpt or random_weights=True, not both")
        return repa_sit_backbone("SiT-XL/2", resolution, ckpt, name=reg_name, **kwargs)

    return factory


def _tiny_factory(seed: int = 0, num_classes: int = 10, input_size: int = 8, zero_init: bool = False,
                  **kwargs: Any) -> SiTBackbone:
    return repa_sit_backbone(tiny_sit_config(num_classes, input_size), seed=seed, zero_init=zero_init,
                             name="repa-sit-tiny", **kwargs)


register_backbone("repa-sit-xl2-256", _checkpoint_factory("repa-sit-xl2-256", 256))
register_backbone("repa-sit-xl2-512", _checkpoint_factory("repa-sit-xl2-512", 512))
register_backbone("repa-sit-tiny", _tiny_factory)
