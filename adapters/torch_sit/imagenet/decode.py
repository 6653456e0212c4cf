"""Latents to uint8 images: the SD-VAE decoder as REPA's ``generate.py`` uses it, and a stand-in.

A decoder is a callable ``latents (B, C, h, w) -> images (B, 3, H, W)`` with values in about
[-1, 1]; :func:`to_uint8` turns those into the ADM layout (uint8, NHWC) exactly as REPA does:
``clamp(255 (x + 1) / 2, 0, 255)`` then a cast that truncates (SiT's ``sample_ddp.py`` rounds
with ``127.5 x + 128`` instead; the two differ by at most one grey level).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["LATENT_SCALE", "SDVAEDecoder", "UpsampleDecoder", "to_uint8"]

#: SD-VAE latent scale used by REPA / SiT / DiT (model latents = scale * VAE latents)
LATENT_SCALE = 0.18215


class SDVAEDecoder:
    """SD-VAE decoder: ``vae.decode((z - bias) / scale).sample`` (images in about [-1, 1]).

    Args:
        path: local diffusers folder of ``AutoencoderKL`` (e.g. ``stabilityai/sd-vae-ft-ema``
            downloaded beforehand); loaded with ``local_files_only=True``.
        device: where the decoder runs (float32).
        scale, bias: latent normalisation (REPA: 0.18215 and 0).
    """

    def __init__(self, path: "str | os.PathLike", device: Any = "cpu", scale: float = LATENT_SCALE, bias: float = 0.0):
        try:
            from diffusers import AutoencoderKL
        except ImportError as err:
            raise ImportError("--decoder sd-vae needs diffusers: pip install diffusers") from err
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--vae: {path} is not a diffusers AutoencoderKL folder (no config.json); download "
                                    "stabilityai/sd-vae-ft-ema there first (see docs/imagenet.md)")
        self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.vae.requires_grad_(False)
        self.scale, self.bias = float(scale), float(bias)
        self.name = f"sd-vae ({path.name}, scale {self.scale:g}, bias {self.bias:g})"

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode((latents.float() - self.bias) / self.scale).sample


class UpsampleDecoder:
    """Stand-in decoder for tests and dry runs: ``tanh(z[:, :3])`` repeated ``factor`` x ``factor``
    (nearest neighbour). Deterministic, no weights; its images mean nothing."""

    name = "upsample (stand-in, not a VAE)"

    def __init__(self, factor: int = 8):
        self.factor = int(factor)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        if latents.ndim != 4 or latents.shape[1] < 3:
            raise ValueError(f"--decoder upsample needs (B, C >= 3, h, w) latents, got {tuple(latents.shape)}")
        rgb = torch.tanh(latents[:, :3].float())
        return rgb.repeat_interleave(self.factor, dim=2).repeat_interleave(self.factor, dim=3)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """REPA's conversion: ``clamp(255 (x + 1) / 2, 0, 255)``, NCHW -> NHWC, uint8 by truncation."""
    x = torch.clamp(255.0 * ((images.float() + 1.0) / 2.0), 0.0, 255.0)
    return x.permute(0, 2, 3, 1).to("cpu", dtype=torch.uint8).numpy()
