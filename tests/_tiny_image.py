"""Test helpers: a tiny class-conditional image backbone, registered as ``tiny-image-test``
(import this module, or pass ``--import _tiny_image`` to the sample command with tests/ on the
path; it is not imported as ``tests._tiny_image`` because torch-fidelity 0.4.0 installs a
top-level package named ``tests`` that would shadow this folder), and a toy
feature extractor for the evaluate command.

The backbone is a fixed random 3x3 convolution plus a class embedding on 4 x 8 x 8 latents with
5 classes, and applies classifier-free guidance ``v_u + s (v_c - v_u)`` for
``guidance_low <= t <= guidance_high`` (the null class is 5) with the scale s given per call as
``guidance_scale=`` (the project's backbone convention, as the SiT binding), so the sampler's
pass-through of those settings changes the samples.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from adapters.torch_sit.backbones import Backbone, register_backbone

NAME = "tiny-image-test"
SHAPE = (4, 8, 8)
CLASSES = 5


class TinyImageField(nn.Module):
    def __init__(self, guidance_low: float = 0.0, guidance_high: float = 1.0, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(SHAPE[0], SHAPE[0], 3, padding=1)
        self.embed = nn.Embedding(CLASSES + 1, SHAPE[0])
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
        self.low, self.high = float(guidance_low), float(guidance_high)

    def _v(self, t: torch.Tensor, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tt = t.reshape(-1, 1, 1, 1)
        return torch.tanh(self.conv(x)) * (1.0 + tt) + self.embed(labels)[:, :, None, None] - 0.5 * x

    def forward(self, t: torch.Tensor, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                guidance_scale: Optional[float] = None) -> torch.Tensor:
        if labels is None:
            labels = torch.full((x.shape[0],), CLASSES, dtype=torch.long, device=x.device)
        v = self._v(t, x, labels)
        t0 = float(t.reshape(-1)[0])
        if guidance_scale is not None and guidance_scale != 1.0 and self.low <= t0 <= self.high:
            vu = self._v(t, x, torch.full_like(labels, CLASSES))
            v = vu + guidance_scale * (v - vu)
        return v


def tiny_image_backbone(**kwargs: Any) -> Backbone:
    return Backbone.from_module(TinyImageField(**kwargs), NAME, SHAPE, num_classes=CLASSES)


register_backbone(NAME, tiny_image_backbone)


class ToyExtractor:
    """Deterministic stand-in features: pool = per-channel means and a fixed random projection of
    the 4x4-average-pooled image (16-d), spatial = the 2x2-pooled red channel (flattened), logits =
    a fixed projection of pool to 6 classes."""

    name = "toy extractor (tests)"
    provenance = {"pool": "toy pool", "spatial": "toy spatial", "logits": "toy logits"}

    def __init__(self) -> None:
        self.proj: Optional[np.ndarray] = None
        self.w = np.random.default_rng(7).standard_normal((16, 6))

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = images.astype(np.float64) / 255.0
        n, h, w, _ = x.shape
        small = x.reshape(n, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)).reshape(n, -1)
        if self.proj is None or self.proj.shape[0] != small.shape[1]:
            self.proj = np.random.default_rng(3).standard_normal((small.shape[1], 13))
        pool = np.concatenate([x.mean(axis=(1, 2)), small @ self.proj], axis=1)
        spatial = x[..., 0].reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).reshape(n, -1)
        return {"pool": pool, "spatial": spatial, "logits": pool @ self.w}


def toy_extractor() -> ToyExtractor:
    return ToyExtractor()
