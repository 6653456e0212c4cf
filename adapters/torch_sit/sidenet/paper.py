"""The paper's SideNet for latent backbones (Appendix E, Table 4).

Table 4 fixes a :class:`~adapters.torch_sit.sidenet.networks.ConvSideNet` reading the 4-channel latent and
its velocity, with base width 128, a 256-d conditioning embedding (time, offset, class label) and
4 layers at 256 px / 8 layers at 512 px. The block structure inside a layer is not given; we use 3
AdaGN ResBlocks and one global self-attention (4 heads) per layer, which gives the paper's
"about 6M parameters" at 256 px (5.9M with 1000 classes, 0.86% of REPA's SiT-XL/2 with its
projector heads; ``python -m analysis.gpu_check_sit --tiny`` prints the counts). Optionally the
SideNet is also conditioned on the guidance scale, so one network serves several scales.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .networks import ConvSideNet, build_sidenet

__all__ = ["PAPER_SIDENET", "paper_sidenet_config", "paper_sidenet"]

#: Table 4's architecture settings (``num_layers`` is 4 at 256 px and 8 at 512 px)
PAPER_SIDENET = dict(base_channels=128, time_embed_dim=256, num_heads=4, res_blocks=3)


def paper_sidenet_config(backbone: Any = None, *, resolution: Optional[int] = None, in_channels: Optional[int] = None,
                         num_classes: Optional[int] = None, guidance: bool = False, **overrides: Any) -> dict:
    """The Table 4 ConvSideNet config for a backbone (a dict for :func:`build_sidenet`).

    Args:
        backbone: a Backbone with ``state_shape`` ``(C, S, S)`` (latents of a 8x VAE, so the
            resolution is 8 S) and ``num_classes``; or None and give the keywords.
        resolution: image resolution (overrides the backbone's): 4 layers up to 256 px, 8 above.
        in_channels, num_classes: override the backbone's (defaults without a backbone: 4, 1000).
        guidance: condition on the classifier-free guidance scale.
        **overrides: other ConvSideNet arguments (e.g. ``path_features=True``).

    Returns:
        the full, normalised config (``{"class": "ConvSideNet", ...}``).
    """
    shape = tuple(getattr(backbone, "state_shape", ())) if backbone is not None else ()
    if backbone is not None and len(shape) != 3:
        raise ValueError(f"paper_sidenet_config: the backbone's states must be (C, H, W) latents, got {shape}")
    if in_channels is None:
        in_channels = shape[0] if shape else 4
    if num_classes is None:
        num_classes = getattr(backbone, "num_classes", None) if backbone is not None else 1000
    if resolution is None:
        resolution = 8 * shape[-1] if shape else 256
    if resolution < 8:
        raise ValueError(f"paper_sidenet_config: resolution must be >= 8 pixels, got {resolution}")
    settings = dict(PAPER_SIDENET, in_channels=int(in_channels), num_layers=4 if resolution <= 256 else 8,
                    num_classes=num_classes, guidance=bool(guidance))
    settings.update(overrides)
    with torch.device("meta"):
        return ConvSideNet(**settings).config()


def paper_sidenet(backbone: Any = None, *, seed: Optional[int] = 0, **kwargs: Any) -> ConvSideNet:
    """The Table 4 SideNet itself (on the CPU; output layer zero, so g = 0 until trained), its
    initialisation seeded by ``seed`` (None: the global RNG). Keywords as
    :func:`paper_sidenet_config`."""
    config = paper_sidenet_config(backbone, **kwargs)
    if seed is None:
        return build_sidenet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_sidenet(config)
