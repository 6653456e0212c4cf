"""Tiny random diffusers pipelines (SD3, Flux) for offline tests, the example and the GPU check.

Nothing is downloaded; a transformer call takes milliseconds on a CPU. Every text encoder and
tokenizer is None, so the pipelines are called with precomputed ``prompt_embeds`` /
``pooled_prompt_embeds`` (and the negative pair); :func:`sd3_prompt` and :func:`flux_prompt`
make random ones of the right sizes. The VAE has one block (``vae_scale_factor`` 1), so an
image of 16 x 16 pixels has 16 x 16 latents.
"""

from __future__ import annotations

import torch

NO_TEXT = {k: None for k in ("text_encoder", "text_encoder_2", "text_encoder_3", "tokenizer", "tokenizer_2", "tokenizer_3")}
NO_TEXT_FLUX = {k: None for k in ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")}


def sd3_transformer(seed: int = 0):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=32, patch_size=1, in_channels=4, num_layers=1, attention_head_dim=8,
                                 num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                 pooled_projection_dim=64, out_channels=4).eval()


def vae(latent_channels: int = 4, seed: int = 0):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(4,), layers_per_block=1,
                         latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                         use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035).eval()


def sd3_pipeline(scheduler, img2img: bool = False, seed: int = 0):
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3Pipeline

    cls = StableDiffusion3Img2ImgPipeline if img2img else StableDiffusion3Pipeline
    return cls(transformer=sd3_transformer(seed), vae=vae(4, seed), scheduler=scheduler, **NO_TEXT)


def flux_pipeline(scheduler, seed: int = 0):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]).eval()
    return FluxPipeline(transformer=transformer, vae=vae(1, seed), scheduler=scheduler, **NO_TEXT_FLUX)


def sd3_prompt(seed: int = 1, batch: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    pe, pp = torch.randn(batch, 7, 32, generator=g), torch.randn(batch, 64, generator=g)
    return dict(prompt_embeds=pe, pooled_prompt_embeds=pp, negative_prompt_embeds=0.1 * torch.randn(batch, 7, 32, generator=g),
                negative_pooled_prompt_embeds=0.1 * torch.randn(batch, 64, generator=g))


def flux_prompt(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(prompt_embeds=torch.randn(1, 7, 32, generator=g), pooled_prompt_embeds=torch.randn(1, 32, generator=g))


class CallCounter:
    """Counts a module's forward calls (a forward pre-hook)."""

    def __init__(self, module: torch.nn.Module):
        self.calls = 0
        self.handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1

    def remove(self) -> None:
        self.handle.remove()


def trajectory(pipe, **kwargs) -> tuple[list, torch.Tensor]:
    """The latents after every step (callback_on_step_end) and the final output."""
    states: list = []

    def record(p, i, t, cb):
        states.append(cb["latents"].detach().clone())
        return {}

    out = pipe(callback_on_step_end=record, callback_on_step_end_tensor_inputs=["latents"], **kwargs).images
    return states, out
