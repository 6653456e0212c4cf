"""BA-solver as the scheduler of a diffusers Stable Diffusion 3 pipeline, and a SideNet trained for it.

With your own local model (a diffusers SD3 directory) and a SideNet trained for it
(docs/diffusers.md shows the two commands that make one):

    python examples/diffusers_scheduler.py --model ./stable-diffusion-3.5-medium \\
        --sidenet runs/sd3/sidenet.safetensors --prompt "a lighthouse at dusk" --steps 8

Offline, with nothing to download (a tiny random SD3 transformer; about a minute on a CPU): build
the model, precompute prompt embeddings, train a SideNet for 60 iterations, and compare 5-step
sampling with the trained SideNet against Euler on a reference solve of the same ODE:

    python examples/diffusers_scheduler.py --tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def sample_with_your_model(model: str, sidenet: str, prompt: str, steps: int, out: str) -> None:
    from diffusers import StableDiffusion3Pipeline

    from adapters.diffusers_flow import BASolverScheduler

    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    pipe = StableDiffusion3Pipeline.from_pretrained(model, torch_dtype=dtype).to("cuda" if torch.cuda.is_available() else "cpu")
    # The three lines: swap the scheduler, keep the pipeline's schedule settings, read the prompt.
    pipe.scheduler = BASolverScheduler.from_config(pipe.scheduler.config, sidenet=sidenet)
    pipe.scheduler.bind(pipe)  # the SideNet reads the pooled prompt embedding (and the guidance scale)
    image = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(0)).images[0]
    image.save(out)
    print(f"{steps} steps, {steps} transformer calls (x2 with guidance) -> {out}")


def tiny_round_trip(work: Path) -> None:
    import baquad
    from adapters.diffusers_flow import BASolverScheduler
    from adapters.diffusers_flow.backbone import load_diffusers_backbone
    from adapters.diffusers_flow.embeddings import PromptEmbeddings, save_prompt_embeddings
    from adapters.diffusers_flow.tiny import sd3_transformer
    from adapters.diffusers_flow import train
    from adapters.torch_sit.sidenet.checkpoint import load_sidenet

    torch.set_num_threads(1)
    sd3_transformer(seed=0).save_pretrained(work / "transformer")  # stands in for your model's directory
    # Stand-in for `python -m adapters.diffusers_flow.embeddings --model PATH --prompts prompts.txt --out ...`,
    # which needs the pipeline's text encoders: random "prompt embeddings" of the tiny model's sizes.
    g = torch.Generator().manual_seed(1)
    save_prompt_embeddings(PromptEmbeddings(torch.randn(16, 7, 32, generator=g), torch.randn(16, 64, generator=g),
                                            0.1 * torch.randn(1, 7, 32, generator=g), 0.1 * torch.randn(1, 64, generator=g)),
                           work / "emb.safetensors")
    train.main(["--model", str(work / "transformer"), "--prompt-embeddings",
                str(work / "emb.safetensors"), "--latent-size", "8", "--guidance-scale", "2.0", "--out", str(work / "run"),
                "--iters", "60", "--batch", "16", "--chain-length", "5", "--lr", "3e-3", "--no-resume",
                "--base-channels", "16", "--time-embed-dim", "32", "--num-layers", "1", "--res-blocks", "1",
                "--num-heads", "2"])

    backbone = load_diffusers_backbone(work / "transformer", work / "emb.safetensors", latent_size=8)
    gen = torch.Generator().manual_seed(123)
    x0 = torch.randn(16, 4, 8, 8, generator=gen)
    prompts, pooled = backbone.sample_cond(16, gen)
    field = backbone.vfield(labels=prompts, guidance_scale=2.0)  # what the pipeline integrates, with guidance
    truth = baquad.solve(field, x0, torch.linspace(1, 0, 201).tolist(), method="rk4").x

    def five_steps(sidenet) -> float:
        scheduler = BASolverScheduler(sidenet=sidenet)
        scheduler.set_timesteps(5)
        scheduler.set_condition(cond=pooled)
        x = x0
        for k, t in enumerate(scheduler.timesteps):  # the pipeline's loop: one transformer call per step
            x = scheduler.step(field(float(scheduler.sigmas[k]), x), t, x).prev_sample
        return float((x - truth).pow(2).mean(dim=(1, 2, 3)).sqrt().mean())

    print(f"5 steps, rms error against RK4-200: Euler {five_steps(None):.4f}, "
          f"BA-solver + trained SideNet {five_steps(load_sidenet(work / 'run' / 'sidenet.safetensors')):.4f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="offline demonstration on a tiny random SD3 transformer")
    p.add_argument("--work", default="runs/example-diffusers", help="--tiny: working directory")
    p.add_argument("--model", help="a local diffusers Stable Diffusion 3 directory")
    p.add_argument("--sidenet", help="a SideNet trained for it (sidenet.safetensors)")
    p.add_argument("--prompt", default="a lighthouse at dusk, oil painting")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default="ba_solver.png")
    args = p.parse_args()
    if args.tiny:
        tiny_round_trip(Path(args.work))
    elif args.model and args.sidenet:
        sample_with_your_model(args.model, args.sidenet, args.prompt, args.steps, args.out)
    else:
        p.error("give --model and --sidenet, or --tiny")


if __name__ == "__main__":
    main()
