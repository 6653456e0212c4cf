"""GPU check of BA-solver inside diffusers pipelines: device handling, and costs at SD3 size.

Run ``python -m analysis.gpu_check_diffusers`` on a CUDA machine (about 2-4 minutes on one H100;
random weights, nothing is downloaded). It reports:

- device handling in tiny random pipelines moved to the GPU: the largest difference, over the
  steps of an SD3 (shift 3) and a Flux (dynamic shifting) run, between ``BASolverScheduler`` with
  a zero SideNet created on the CPU and ``FlowMatchEulerDiscreteScheduler`` (float32; the
  SideNet must end up on the GPU); a bfloat16 SD3 run with a conditioned SideNet read through
  ``bind`` and the lagged bi-anchor form (finite output, the SideNet's device and dtype, the
  predictor/corrector gaps); a short chain training through
  ``python -m adapters.diffusers_flow.train`` with a bfloat16 transformer;
- costs with a random transformer of the Stable Diffusion 3 medium configuration (24 joint
  blocks, width 1536, 16 latent channels, patch 2; 1024 px images = latents 16 x 128 x 128,
  333 text tokens) in bfloat16 and a ConvSideNet at the repository defaults with a 2048-wide
  pooled-embedding input: one transformer call on a classifier-free-guidance batch of 2, one
  single-anchor ``BASolverScheduler.step`` (three SideNet probes) and one Euler step on one
  image, and one chain-training iteration (4 chains of 8 intervals, guidance 4.5, the SideNet in
  float32, the loss in 4 chunks) with its peak GPU memory. Timings are the mean of ``--repeats``
  calls after warm-up, with ``torch.cuda.synchronize`` around them.

It prints the results as JSON and, when the environment variable ``OUT`` names a directory,
writes them to ``$OUT/gpu_check_diffusers.json``. ``--tiny`` runs everything on the CPU with a
tiny transformer and SideNet in place of the SD3-size ones and 3 training iterations (a smoke
test). A benchmark, not a test: nothing is
asserted.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from adapters.diffusers_flow import tiny
from adapters.diffusers_flow.backbone import DiffusersBackbone
from adapters.diffusers_flow.embeddings import PromptEmbeddings, save_prompt_embeddings
from adapters.torch_sit.backbones import Backbone
from adapters.torch_sit.sidenet.chain import ChainConfig, ChainTrainer, sample_batch
from adapters.torch_sit.files import atomic_write
from adapters.torch_sit.sidenet.networks import ConvSideNet, TokenSideNet
from adapters.torch_sit.sidenet.perception import NeuralPerception

from ._common import positive_int

SD3_MEDIUM = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
                  num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_TINY = dict(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=(4, 4, 8))
SD3_TINY = dict(sample_size=16, patch_size=2, in_channels=16, num_layers=1, attention_head_dim=8, num_attention_heads=2,
                joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=64, out_channels=16,
                pos_embed_max_size=16)


def _small_conv(**kw: Any) -> ConvSideNet:
    torch.manual_seed(0)
    return ConvSideNet(4, base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1, **kw)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, warm: int, reps: int) -> float:
    for _ in range(warm):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps * 1000.0


def _generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device.type).manual_seed(0)


def zero_sidenet_against_euler(device: torch.device) -> dict:
    # diffusers is imported where it is used, so that the command line parses without it
    from diffusers import FlowMatchEulerDiscreteScheduler

    from adapters.diffusers_flow import BASolverScheduler

    out = {}
    for kind in ("sd3", "flux"):
        if kind == "sd3":
            pipe, prompt, net = tiny.sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0)), tiny.sd3_prompt(), _small_conv()
        else:
            pipe = tiny.flux_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True))
            torch.manual_seed(0)
            prompt, net = tiny.flux_prompt(), TokenSideNet(4, width=8, time_embed_dim=8, num_layers=1, num_heads=2)
        pipe = pipe.to(device)
        prompt = {k: v.to(device) for k, v in prompt.items()}
        call = dict(num_inference_steps=5, height=16, width=16, output_type="latent")
        ref, _ = tiny.trajectory(pipe, **prompt, **call, generator=_generator(device))
        pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=net)
        got, _ = tiny.trajectory(pipe, **prompt, **call, generator=_generator(device))
        out[kind] = {"max_step_difference": max(float((a - b).abs().max()) for a, b in zip(got, ref)),
                     "sidenet_device": str(next(net.parameters()).device)}
    return out


def bf16_conditioned_bi_anchor(device: torch.device) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler

    from adapters.diffusers_flow import BASolverScheduler

    pipe = tiny.sd3_pipeline(FlowMatchEulerDiscreteScheduler(shift=3.0)).to(device, torch.bfloat16)
    prompt = {k: v.to(device, torch.bfloat16) for k, v in tiny.sd3_prompt(batch=2).items()}
    net = _small_conv(cond_dim=64, guidance=True)
    with torch.no_grad():
        net.conv_out.weight.normal_(0.0, 0.1)
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=net, anchors="bi").bind(pipe)
    images = pipe(**prompt, num_inference_steps=4, height=16, width=16, guidance_scale=3.0, output_type="latent").images
    p = next(net.parameters())
    return {"output_dtype": str(images.dtype), "finite": bool(torch.isfinite(images).all()),
            "sidenet": f"{p.device} {p.dtype}", "gaps": pipe.scheduler.gaps}


def train_cli(device: torch.device, iters: int) -> dict:
    from adapters.diffusers_flow import train as train_module

    work = Path(tempfile.mkdtemp())
    tiny.sd3_transformer().save_pretrained(work / "transformer")
    g = torch.Generator().manual_seed(0)
    table = PromptEmbeddings(torch.randn(8, 7, 32, generator=g), torch.randn(8, 64, generator=g),
                             torch.zeros(1, 7, 32), torch.zeros(1, 64))
    save_prompt_embeddings(table, work / "emb.safetensors")
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    train_module.main(["--model", str(work / "transformer"),
                       "--prompt-embeddings", str(work / "emb.safetensors"), "--latent-size", "16", "--out", str(work / "run"),
                       "--iters", str(iters), "--batch", "16", "--chain-length", "4", "--guidance-scale", "2.0",
                       "--model-dtype", dtype, "--device", str(device), "--no-progress", "--base-channels", "16",
                       "--time-embed-dim", "32", "--num-layers", "1", "--res-blocks", "1", "--num-heads", "2"])
    summary = json.loads((work / "run" / "summary.json").read_text())
    return {"model_dtype": dtype, "final_loss": summary["final_loss"], "wall_time_s": summary["wall_time_s"]}


def sd3_size_costs(device: torch.device, config: dict, latent: int, text_tokens: int, repeats: int,
                   sidenet_kwargs: dict) -> dict:
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

    from adapters.diffusers_flow import BASolverScheduler

    with torch.device(device):
        transformer = SD3Transformer2DModel(**config)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    transformer = transformer.to(dtype).eval().requires_grad_(False)
    width, pooled, channels = config["joint_attention_dim"], config["pooled_projection_dim"], config["in_channels"]
    n_params = sum(p.numel() for p in transformer.parameters())
    pe = torch.randn(2, text_tokens, width, device=device, dtype=dtype)
    pp = torch.randn(2, pooled, device=device, dtype=dtype)
    x = torch.randn(2, channels, latent, latent, device=device, dtype=dtype)
    with torch.no_grad():
        t_call = _timed(lambda: transformer(hidden_states=x, timestep=torch.full((2,), 500.0, device=device),
                                            encoder_hidden_states=pe, pooled_projections=pp, return_dict=False)[0],
                        device, 2, repeats)
    torch.manual_seed(0)
    sidenet = ConvSideNet(channels, cond_dim=pooled, **sidenet_kwargs)
    n_side = sum(p.numel() for p in sidenet.parameters())
    ba = BASolverScheduler(shift=3.0, sidenet=sidenet)
    euler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    v, x1 = torch.randn_like(x[:1]), x[:1]
    for s in (ba, euler):
        s.set_timesteps(28)
    ba.set_condition(cond=pp[1:].float())

    def step(s):
        def run():
            s._step_index = 3
            return s.step(v, s.timesteps[3], x1)
        return run

    with torch.no_grad():
        t_ba, t_euler = _timed(step(ba), device, 2, repeats), _timed(step(euler), device, 2, repeats)
        t_side = _sidenet_ms(sidenet, x1, pp[1:].float(), device, repeats)

    prompts = PromptEmbeddings(torch.randn(8, text_tokens, width), torch.randn(8, pooled),
                               torch.zeros(1, text_tokens, width), torch.zeros(1, pooled))
    field = DiffusersBackbone(transformer, prompts, (latent, latent))
    backbone = Backbone("sd3-size", field, field.state_shape, None, n_params, transformer,
                        cond_dim=pooled, sample_cond=field.sample_cond)
    cfg = ChainConfig(batch_size=4, chain_length=8, guidance_scale=4.5, loss_chunks=4, iters=10)
    trainer = ChainTrainer(ConvSideNet(channels, cond_dim=pooled, **sidenet_kwargs).to(device), backbone, cfg)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    count = [0]

    def iteration():
        trainer.step(sample_batch(cfg, backbone, count[0]))
        count[0] += 1

    t_iter = _timed(iteration, device, 1, max(1, repeats // 2))
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"transformer_parameters": n_params, "sidenet_parameters": n_side, "latent": [channels, latent, latent],
            "transformer_call_cfg_batch2_ms": round(t_call, 2), "ba_single_anchor_step_ms": round(t_ba, 2),
            "euler_step_ms": round(t_euler, 3), "sidenet_three_probes_ms": round(t_side, 3),
            "sidenet_share_of_sampling": t_side / (t_call + t_ba), "chain_iteration_4x8_ms": round(t_iter, 1),
            "chain_peak_memory_GiB": None if peak is None else round(peak, 1)}


def _sidenet_ms(sidenet: torch.nn.Module, x: torch.Tensor, cond: torch.Tensor, device: torch.device,
                repeats: int) -> float:
    """One image's SideNet call as a single-anchor step makes it: three probe offsets in one
    batch (a ``NeuralPerception`` call), in ms."""
    perception = NeuralPerception(sidenet.to(x.device), cond=cond)
    v = torch.randn_like(x)
    with torch.no_grad():
        return _timed(lambda: perception(x, v, 0.5, (-0.01, -0.02, -0.03)), device, 2, repeats)


def flux_size_costs(device: torch.device, tiny_size: bool, repeats: int) -> dict:
    """Flux-dev's transformer (19 double and 38 single blocks, width 3072; 12B parameters, random,
    bfloat16, built in bfloat16) on one 1024 px image (4096 packed tokens of 64, 512 text tokens,
    distilled guidance: no CFG batch), against the default TokenSideNet with Flux's 768-wide
    pooled embedding: one transformer call, one single-anchor ``BASolverScheduler.step`` and the
    SideNet's three probes alone; the SideNet's share of a sampling step (call + step)."""
    from diffusers import FluxTransformer2DModel

    from adapters.diffusers_flow import BASolverScheduler

    config, tokens, text = (FLUX_TINY, 64, 7) if tiny_size else (FLUX_DEV, 4096, 512)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its dtype: 12B float32 parameters would need 48 GB
    try:
        with torch.device(device):
            transformer = FluxTransformer2DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    transformer = transformer.eval().requires_grad_(False)
    n_params = sum(p.numel() for p in transformer.parameters())
    width, pooled, channels = config["joint_attention_dim"], config["pooled_projection_dim"], config["in_channels"]
    g = torch.Generator(device.type).manual_seed(0)
    x = torch.randn(1, tokens, channels, device=device, dtype=dtype, generator=g)
    pe = torch.randn(1, text, width, device=device, dtype=dtype, generator=g)
    pp = torch.randn(1, pooled, device=device, dtype=dtype, generator=g)
    side = int(math.isqrt(tokens))
    rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).to(device, dtype)
    txt_ids = torch.zeros(text, 3, device=device, dtype=dtype)
    call = dict(hidden_states=x, encoder_hidden_states=pe, pooled_projections=pp, img_ids=img_ids, txt_ids=txt_ids,
                timestep=torch.full((1,), 0.5, device=device, dtype=dtype), return_dict=False)
    if config.get("guidance_embeds"):
        call["guidance"] = torch.full((1,), 3.5, device=device, dtype=dtype)
    with torch.no_grad():
        t_call = _timed(lambda: transformer(**call)[0], device, 2, repeats)
    del transformer
    torch.manual_seed(0)
    sidenet = TokenSideNet(channels, cond_dim=pooled).to(device)
    ba = BASolverScheduler(shift=3.0, sidenet=sidenet)
    ba.set_timesteps(28)
    ba.set_condition(cond=pp.float())
    v = torch.randn_like(x)

    def step():
        ba._step_index = 3
        return ba.step(v, ba.timesteps[3], x)

    with torch.no_grad():
        t_ba = _timed(step, device, 2, repeats)
    t_side = _sidenet_ms(sidenet, x, pp.float(), device, repeats)
    return {"transformer_parameters": n_params, "sidenet_parameters": sum(p.numel() for p in sidenet.parameters()),
            "tokens": [tokens, channels], "transformer_call_ms": round(t_call, 2),
            "ba_single_anchor_step_ms": round(t_ba, 2), "sidenet_three_probes_ms": round(t_side, 3),
            "sidenet_share_of_sampling": t_side / (t_call + t_ba)}


#: the checks, by name (``--only``)
CHECKS = ("zero_sidenet_against_euler", "bf16_conditioned_bi_anchor", "train_cli", "sd3_size_costs", "flux_size_costs")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.gpu_check_diffusers", description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run with a tiny transformer")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    p.add_argument("--repeats", type=positive_int, default=5)
    p.add_argument("--only", nargs="+", choices=CHECKS, default=None, help="run these checks only (default: all)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """Run the checks, print each result as JSON, write ``$OUT/gpu_check_diffusers.json``; return the results."""
    args = build_parser().parse_args(argv)
    device = torch.device(args.device or ("cpu" if args.tiny else "cuda"))
    if device.type == "cpu":
        torch.set_num_threads(1)  # small ops on shared cores: one thread is much faster than two
    small = dict(base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1)
    results: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                     "torch": torch.__version__}
    checks = [("zero_sidenet_against_euler", lambda: zero_sidenet_against_euler(device)),
              ("bf16_conditioned_bi_anchor", lambda: bf16_conditioned_bi_anchor(device)),
              ("train_cli", lambda: train_cli(device, 3 if args.tiny else 20)),
              ("sd3_size_costs", lambda: sd3_size_costs(device, SD3_TINY if args.tiny else SD3_MEDIUM,
                                                        16 if args.tiny else 128, 9 if args.tiny else 333,
                                                        2 if args.tiny else args.repeats, small if args.tiny else {})),
              ("flux_size_costs", lambda: flux_size_costs(device, args.tiny, 2 if args.tiny else args.repeats))]
    checks = [(name, fn) for name, fn in checks if args.only is None or name in args.only]
    out_dir = os.environ.get("OUT")
    for name, fn in checks:
        start = time.perf_counter()
        try:
            results[name] = fn()
        except Exception:  # a benchmark reports what failed and goes on
            results[name] = {"error": traceback.format_exc()[-3000:]}
        results[name + "_wall_s"] = round(time.perf_counter() - start, 1)
        print(name, json.dumps(results[name]), flush=True)
        if out_dir:
            atomic_write(Path(out_dir, "gpu_check_diffusers.json"), (json.dumps(results, indent=1) + "\n").encode())
    return results


if __name__ == "__main__":
    main()
