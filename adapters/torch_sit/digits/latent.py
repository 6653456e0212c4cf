"""The digits lifted to a latent shape: 4 x 16 x 16 states, and a small SiT trained on them.

A test bed shaped like the SD-VAE latents of an ImageNet SiT (4 channels, patch-2 tokens) that
trains in minutes on one CPU thread, for comparing SideNet designs
(``python -m analysis.sidenet_design``). The lift is fixed and seeded:

    u = bilinear 2x upsampling of the 8 x 8 digit (align_corners=False) to 16 x 16,
    z_c = a_c u + b_c  for the channels c = 1..4,

with a (4,) and b (4,) drawn from a torch generator seeded by ``seed`` (a ~ N(0, 1), scaled to
|a| = 1.5; b ~ N(0, 0.1^2)): a fixed random 1 x 1 map from one channel to four. The bilinear
upsampling keeps the 2 x 2 patches from lining up with the digits' own pixels.

The SiT (:data:`LATENT_SIT_CONFIG`: 64 tokens of width 64, 3 blocks, 2 heads, MLP ratio 2) is
trained by :func:`~adapters.torch_sit.digits.train.train_backbone` (flow matching on the linear
path, label dropout 0.1, the same loop as the digits SiT) on the lifted training split, and is
guided on the whole path like the digits backbone (:func:`latent_backbone`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..sit.backbone import SiTBackbone
from ..sit.model import SiTConfig
from .model import DIGITS_GUIDANCE_INTERVAL, digits_sit_backbone, load_digits_split
from .train import BackboneRecipe, train_backbone

__all__ = ["LATENT_SHAPE", "LATENT_SIT_CONFIG", "LATENT_RECIPE", "lift", "train_latent", "latent_backbone"]

#: one lifted state
LATENT_SHAPE = (4, 16, 16)
#: the latent SiT: 64 tokens (patch 2 on 16 x 16) of width 64
LATENT_SIT_CONFIG = SiTConfig(depth=3, hidden_size=64, num_heads=2, patch_size=2, input_size=16, in_channels=4,
                              mlp_ratio=2.0, num_classes=10, class_dropout_prob=0.1, encoder_depth=1, z_dims=(),
                              projector_dim=1)
#: its training: 3000 AdamW steps of 128 images (23 minutes on one thread of a shared 2-core machine)
LATENT_RECIPE = BackboneRecipe(iters=3000, batch_size=128, lr=1e-3, warmup_iters=200)


def lift(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The digits ``(N, 1, 8, 8)`` lifted to ``(N, 4, 16, 16)`` (module docstring)."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (1, 8, 8):
        raise ValueError(f"lift: expected digits of shape (N, 1, 8, 8), got {tuple(images.shape)}")
    g = torch.Generator().manual_seed(int(seed))
    a = torch.randn(4, generator=g, dtype=torch.float64)
    a = 1.5 * a / a.norm()
    b = 0.1 * torch.randn(4, generator=g, dtype=torch.float64)
    u = F.interpolate(images.double(), scale_factor=2, mode="bilinear", align_corners=False)
    return (a.view(1, 4, 1, 1) * u + b.view(1, 4, 1, 1)).to(images.dtype)


def train_latent(out: "str | Path", recipe: BackboneRecipe = LATENT_RECIPE, *, lift_seed: int = 0,
                 progress: bool = True, log: Any = print) -> Path:
    """Train the latent SiT on the lifted training split into ``out`` (resumes from a checkpoint
    there); returns the weights file."""
    images, labels = load_digits_split("train")
    return train_backbone(out, recipe, LATENT_SIT_CONFIG, data=(lift(images, lift_seed), labels), progress=progress,
                          log=log, command="python -m analysis.sidenet_design (adapters.torch_sit.digits.latent)")


def latent_backbone(weights: "str | Path", *, guidance_low: float = DIGITS_GUIDANCE_INTERVAL[0],
                    guidance_high: float = DIGITS_GUIDANCE_INTERVAL[1], dtype: torch.dtype = torch.float32,
                    device: Any = "cpu", lift_seed: int = 0) -> SiTBackbone:
    """The trained latent SiT as a guided backbone ``"digits-latent"`` on ``(B, 4, 16, 16)``
    states (float64 for tight reference solves); ``sample_data`` draws lifted training images
    (``lift_seed``)."""
    return digits_sit_backbone(weights, guidance_low=guidance_low, guidance_high=guidance_high, dtype=dtype,
                               device=device, name="digits-latent", state_shape=LATENT_SHAPE,
                               training_images=lambda: lift(load_digits_split("train")[0], lift_seed))
