"""The SideNet for latent backbones: the paper's (Appendix E, Table 4) and the patch design.

Table 4 fixes a :class:`~adapters.torch_sit.sidenet.networks.ConvSideNet` reading the 4-channel latent and
its velocity, with base width 128, a 256-d conditioning embedding (time, offset, class label) and
4 layers at 256 px / 8 layers at 512 px. The block structure inside a layer is not given; we use 3
AdaGN ResBlocks and one global self-attention (4 heads) per layer, which gives the paper's
"about 6M parameters" at 256 px (5.9M with 1000 classes, 0.86% of REPA's SiT-XL/2 with its
projector heads; ``python -m analysis.gpu_check_sit --tiny`` prints the counts) (``design="table4"``).

That network runs every block at the latent's full resolution (32 x 32 at 256 px), and on a GPU
it moves about half as many bytes per interval as the SiT-XL/2 call it serves (more than the
call before its attention was laid out for the fused kernels; ``python -m analysis.cost_model``,
docs/imagenet.md#what-a-sampling-step-costs). The default, ``design="patch"``, is the same
ConvSideNet on 2 x 2 patches (4 x 4 at 512 px, so its blocks run at 16 x 16): Table 4's width
128, conditioning 256 and layer (3 AdaGN ResBlocks and an attention with 4 heads), one layer,
and a light full-resolution head (``ConvSideNet(patch=...)``). Its bytes per interval are 5.2%
of one SiT-XL/2 call's in float32, 3.7% in bf16 (``analysis/figures/cost_model.md``). On a latent
test bed at narrow width (``analysis/figures/sidenet_design.md``, 1,000 fresh noises) it is more
accurate than Table 4's layer at 5 and 7 NFE (by 10% and 9%) and less accurate at 10 NFE (by 1.8%,
3.2 standard errors): the 2-standard-error bar of that comparison is not met at 10 NFE.
``design="table4"`` keeps the paper's network.
Optionally the SideNet is also conditioned on the guidance scale, so one network serves several
scales.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from .networks import ConvSideNet, build_sidenet

__all__ = ["PAPER_SIDENET", "PATCH_SIDENET", "DESIGNS", "paper_sidenet_config", "paper_sidenet"]

#: Table 4's architecture settings (``num_layers`` is 4 at 256 px and 8 at 512 px)
PAPER_SIDENET = dict(base_channels=128, time_embed_dim=256, num_heads=4, res_blocks=3)
#: the patch design's settings (``patch`` 2 at 256 px and 4 at 512 px: blocks at 16 x 16)
PATCH_SIDENET = dict(base_channels=128, time_embed_dim=256, num_heads=4, res_blocks=3, num_layers=1)
#: the designs :func:`paper_sidenet_config` builds
DESIGNS = ("patch", "table4")


def paper_sidenet_config(backbone: Any = None, *, resolution: Optional[int] = None, in_channels: Optional[int] = None,
                         num_classes: Optional[int] = None, guidance: bool = False, design: str = "patch",
                         **overrides: Any) -> dict:
    """The latent SideNet config for a backbone (a dict for :func:`build_sidenet`).

    Args:
        backbone: a Backbone with ``state_shape`` ``(C, S, S)`` (latents of a 8x VAE, so the
            resolution is 8 S) and ``num_classes``; or None and give the keywords.
        resolution: image resolution (overrides the backbone's): Table 4 has 4 layers up to
            256 px and 8 above; the patch design takes patches of 2 up to 256 px and 4 above.
        in_channels, num_classes: override the backbone's (defaults without a backbone: 4, 1000).
        guidance: condition on the classifier-free guidance scale.
        design: ``"patch"`` (default: :data:`PATCH_SIDENET` on patches) or ``"table4"``
            (:data:`PAPER_SIDENET`, the paper's network at full resolution).
        **overrides: other ConvSideNet arguments (e.g. ``path_features=True``).

    Returns:
        the full, normalised config (``{"class": "ConvSideNet", ...}``).
    """
    if design not in DESIGNS:
        raise ValueError(f"paper_sidenet_config: design must be one of {DESIGNS}, got {design!r}")
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
    if design == "table4":
        settings = dict(PAPER_SIDENET, num_layers=4 if resolution <= 256 else 8)
    else:
        settings = dict(PATCH_SIDENET, patch=2 if resolution <= 256 else 4)
    settings.update(in_channels=int(in_channels), num_classes=num_classes, guidance=bool(guidance))
    settings.update(overrides)
    with torch.device("meta"):
        return ConvSideNet(**settings).config()


def paper_sidenet(backbone: Any = None, *, seed: Optional[int] = 0, **kwargs: Any) -> ConvSideNet:
    """The latent SideNet itself (on the CPU; output layer zero, so g = 0 until trained), its
    initialisation seeded by ``seed`` (None: the global RNG). Keywords as
    :func:`paper_sidenet_config`."""
    config = paper_sidenet_config(backbone, **kwargs)
    if seed is None:
        return build_sidenet(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build_sidenet(config)
