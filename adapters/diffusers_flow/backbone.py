"""A diffusers pipeline's transformer (Stable Diffusion 3, Flux) as a chain-training backbone.

    python -m adapters.diffusers_flow.train --model PATH \\
        --prompt-embeddings emb.safetensors --latent-size 64 --guidance-scale 7.0 --out runs/sd3

The backbone is the velocity field the pipeline integrates, called exactly as the pipeline calls
its transformer, so that the SideNet learns the ODE it will sample:

- time: the flow time t = sigma in [0, 1] (1 noise); SD3's transformer gets ``timestep = 1000 t``,
  Flux's ``timestep = t`` (the pipeline divides its 0-1000 timesteps by 1000);
- state: SD3 latents ``(C, H, W)``; Flux packed latents ``(H/2 * W/2, 4 C')`` (the transformer's
  ``in_channels`` = 4 C'), with the image-position ids of an (H, W) latent, as the pipeline packs
  them (so the SideNet for Flux is a :class:`~adapters.torch_sit.sidenet.networks.TokenSideNet`);
- conditions: a prompt of the embedding file (:mod:`.embeddings`) per sample; the chain's
  ``labels`` are the prompt indices and its ``cond`` their pooled embeddings, which the SideNet
  reads (``cond_dim`` = the pooled size), so a SideNet trained here is conditioned on the pooled
  prompt embedding like the scheduler feeds it;
- guidance, matching sampling: SD3 with ``guidance_scale`` s > 1 evaluates the negative and the
  positive prompt in one batch and returns v_neg + s (v_pos - v_neg), as its pipeline does (no
  guidance for s <= 1 or None); Flux with guidance embedding (FLUX.1-dev) passes s as the
  transformer's ``guidance`` input (required then), as its pipeline does. Flux's "true CFG"
  (``true_cfg_scale`` > 1) is not reproduced here.

The transformer is frozen (``requires_grad`` False, eval mode) and runs in its own dtype;
states and velocities are float32 outside it.

Importing this module registers :func:`load_diffusers_backbone` as the backbone ``"diffusers"``
(``get_backbone("diffusers", model=..., prompt_embeddings=..., latent_size=..., dtype=...)``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from adapters.torch_sit.backbones import Backbone, register_backbone

from .embeddings import PromptEmbeddings, load_prompt_embeddings

__all__ = ["DiffusersBackbone", "load_diffusers_backbone", "load_transformer"]

_KINDS = {"SD3Transformer2DModel": "sd3", "FluxTransformer2DModel": "flux"}


def load_transformer(model: "str | os.PathLike", dtype: torch.dtype = torch.float32) -> nn.Module:
    """The transformer of a local diffusers pipeline directory (its ``transformer/`` folder) or of
    a transformer directory (a ``config.json`` naming SD3Transformer2DModel or FluxTransformer2DModel)."""
    import diffusers

    root = Path(model)
    folder = root / "transformer" if (root / "model_index.json").is_file() else root
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--model: {root} is neither a diffusers pipeline directory (model_index.json) nor a "
                                "transformer directory (config.json)")
    name = json.loads(config.read_text()).get("_class_name")
    if name not in _KINDS:
        raise ValueError(f"--model: {folder} holds a {name!r}; supported transformers: {', '.join(_KINDS)}")
    return getattr(diffusers, name).from_pretrained(str(folder), torch_dtype=dtype)


class DiffusersBackbone:
    """The velocity field ``fn(t, x, labels=, cond=, guidance_scale=)`` of a transformer with a
    prompt table (see the module docstring). ``labels`` are prompt indices ``(B,)``."""

    def __init__(self, transformer: nn.Module, prompts: PromptEmbeddings, latent_size: tuple[int, int]):
        name = type(transformer).__name__
        if name not in _KINDS:
            raise ValueError(f"model: a {name} is not supported; use one of {', '.join(_KINDS)}")
        self.kind = _KINDS[name]
        self.transformer = transformer.requires_grad_(False).eval()
        self.prompts = prompts
        cfg = transformer.config
        pooled = getattr(cfg, "pooled_projection_dim", None)
        if pooled is not None and pooled != prompts.pooled_dim:
            raise ValueError(f"prompt embeddings: pooled size {prompts.pooled_dim} but the transformer's "
                             f"pooled_projection_dim is {pooled}; compute them with this model's pipeline")
        joint = getattr(cfg, "joint_attention_dim", None)
        if joint is not None and joint != prompts.prompt_embeds.shape[2]:
            raise ValueError(f"prompt embeddings: width {prompts.prompt_embeds.shape[2]} but the transformer's "
                             f"joint_attention_dim is {joint}")
        h, w = latent_size
        if self.kind == "flux" and (h % 2 or w % 2):
            raise ValueError(f"latent_size: Flux packs 2x2 latent patches; the latent height and width must be even, got {h}x{w}")
        self.latent_size = (h, w)
        if self.kind == "sd3":
            self.state_shape = (cfg.in_channels, h, w)
        else:
            self.state_shape = ((h // 2) * (w // 2), cfg.in_channels)
        self._cache: dict = {}

    def _table(self, device: torch.device, dtype: torch.dtype) -> dict:
        key = (device, dtype)
        if key not in self._cache:
            p = self.prompts
            self._cache = {key: {k: None if v is None else v.to(device, dtype) for k, v in dict(
                pe=p.prompt_embeds, pp=p.pooled_prompt_embeds, ne=p.negative_prompt_embeds,
                np=p.negative_pooled_prompt_embeds).items()}}
        return self._cache[key]

    def __call__(self, t: torch.Tensor, x: torch.Tensor, labels: Optional[torch.Tensor] = None,
                 cond: Optional[torch.Tensor] = None, guidance_scale: Optional[float] = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("diffusers backbone: pass labels= (prompt indices into the embedding table)")
        p = next(self.transformer.parameters())
        tab = self._table(p.device, p.dtype)
        idx = labels.to(p.device).long()
        xin, tin = x.to(p.dtype), t.to(device=p.device, dtype=p.dtype).reshape(-1).expand(x.shape[0])
        with torch.no_grad():
            if self.kind == "sd3":
                v = self._sd3(xin, tin, tab, idx, guidance_scale)
            else:
                v = self._flux(xin, tin, tab, idx, guidance_scale)
        return v.to(x.dtype)

    def _sd3(self, x, t, tab, idx, s):
        pe, pp = tab["pe"][idx], tab["pp"][idx]
        if s is None or s <= 1.0:
            return self._sd3_call(x, t, pe, pp)
        if tab["ne"] is None:
            raise ValueError("guidance_scale > 1 needs the negative prompt's embeddings in the prompt-embedding file")
        b = x.shape[0]
        ne, npool = tab["ne"].expand(b, -1, -1), tab["np"].expand(b, -1)
        both = self._sd3_call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([ne, pe]), torch.cat([npool, pp]))
        v_neg, v_pos = both.chunk(2)
        return v_neg + s * (v_pos - v_neg)

    def _sd3_call(self, x, t, pe, pp):
        return self.transformer(hidden_states=x, timestep=t * 1000.0, encoder_hidden_states=pe,
                                pooled_projections=pp, return_dict=False)[0]

    def _flux(self, x, t, tab, idx, s):
        from diffusers import FluxPipeline

        b, (h, w) = x.shape[0], self.latent_size
        guidance = None
        if self.transformer.config.guidance_embeds:
            if s is None:
                raise ValueError("this Flux transformer embeds the guidance scale: set --guidance-scale "
                                 "(the value you will sample with, e.g. 3.5)")
            guidance = torch.full((b,), float(s), device=x.device, dtype=torch.float32)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, x.device, x.dtype)
        pe = tab["pe"][idx]
        txt_ids = torch.zeros(pe.shape[1], 3, device=x.device, dtype=x.dtype)
        return self.transformer(hidden_states=x, timestep=t, guidance=guidance, pooled_projections=tab["pp"][idx],
                                encoder_hidden_states=pe, txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]

    def sample_cond(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random prompts: their indices ``(n,)`` and pooled embeddings ``(n, Dp)`` (float32, CPU)."""
        idx = torch.randint(0, len(self.prompts), (n,), generator=generator)
        return idx, self.prompts.pooled_prompt_embeds[idx].float()


def load_diffusers_backbone(model: "str | os.PathLike | nn.Module", prompt_embeddings: "str | os.PathLike | PromptEmbeddings",
                            latent_size: "int | tuple[int, int] | None" = None, dtype: "str | torch.dtype" = "float32") -> Backbone:
    """The chain trainer's :class:`~adapters.torch_sit.backbones.Backbone` for a diffusers transformer.

    Args:
        model: a local pipeline or transformer directory, or the transformer module itself.
        prompt_embeddings: a file of :mod:`.embeddings` (or the loaded table).
        latent_size: the latent height (and width: an int, or ``(h, w)``) to train at; SD3's default
            is the transformer's ``sample_size``; Flux needs it (e.g. 64 for 512-pixel images).
        dtype: the transformer's dtype when loading from a directory (``"bfloat16"`` on a GPU).
    """
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    transformer = model if isinstance(model, nn.Module) else load_transformer(model, dt)
    table = prompt_embeddings if isinstance(prompt_embeddings, PromptEmbeddings) else load_prompt_embeddings(prompt_embeddings)
    if latent_size is None:
        size = getattr(transformer.config, "sample_size", None)
        if size is None or type(transformer).__name__ != "SD3Transformer2DModel":
            raise ValueError("latent_size: give the latent height to train at (--latent-size; e.g. 64 for Flux at 512 px)")
        latent_size = size
    hw = (int(latent_size), int(latent_size)) if isinstance(latent_size, int) else tuple(int(s) for s in latent_size)
    field = DiffusersBackbone(transformer, table, hw)
    n = sum(p.numel() for p in transformer.parameters())
    return Backbone(f"diffusers:{type(transformer).__name__}", field, field.state_shape, None, n, transformer,
                    extra={"kind": field.kind, "latent_size": list(hw), "prompts": len(table)},
                    cond_dim=table.pooled_dim, sample_cond=field.sample_cond)


register_backbone("diffusers", load_diffusers_backbone)
