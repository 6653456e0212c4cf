"""Train a SideNet on a diffusers pipeline's transformer (Stable Diffusion 3, Flux) by chain training.

    python -m adapters.diffusers_flow.train --model PATH --prompt-embeddings emb.safetensors \\
        --latent-size 64 --guidance-scale 7.0 --out runs/sd3

The chain trainer of ``python -m adapters.torch_sit.train`` (:mod:`adapters.torch_sit.sidenet.train`:
the same recipe flags, from ``--chain-length`` to ``--guidance-scale``, the same SideNet
architecture flags, resuming, torchrun) on the backbone :mod:`.backbone` builds from the
transformer and a file of prompt embeddings (``python -m adapters.diffusers_flow.embeddings``).
The flags of the registry's backbones (``--backbone``, ``--ckpt``, ``--guidance-low/-high``,
``--backbone-kwargs``) are not taken: the transformer is given by ``--model``. See
``docs/diffusers.md``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from adapters.torch_sit.backbones import Backbone
from adapters.torch_sit.sidenet import train as chain_train

from .backbone import load_diffusers_backbone

__all__ = ["PROG", "build_parser", "main"]

PROG = "python -m adapters.diffusers_flow.train"

_EPILOG = """examples:
  python -m adapters.diffusers_flow.embeddings --model ./stable-diffusion-3.5-medium \\
      --prompts prompts.txt --negative-prompt "" --out runs/sd3/emb.safetensors
  python -m adapters.diffusers_flow.train --model ./stable-diffusion-3.5-medium \\
      --prompt-embeddings runs/sd3/emb.safetensors --latent-size 128 --guidance-scale 4.5 \\
      --model-dtype bfloat16 --out runs/sd3
  torchrun --nproc_per_node=8 -m adapters.diffusers_flow.train ...same flags...

Every recipe field defaults to the measured recipe for a backbone without one of its own, then to
the checkpoint's when resuming; flags given win. A run resumes from OUT automatically."""


def build_parser() -> argparse.ArgumentParser:
    """The chain trainer's parser without the registry's backbone flags, plus the transformer's group."""
    p = chain_train.build_parser(
        prog=PROG, epilog=_EPILOG, backbone_options=False,
        description="Chain-train a BA-solver SideNet on a diffusers transformer (SD3, Flux) with a file of "
                    "prompt embeddings (no image data set: chains start from noise).")
    d = p.add_argument_group("diffusers transformer (Stable Diffusion 3 / Flux)")
    d.add_argument("--model", required=True, help="local diffusers pipeline (or transformer) directory")
    d.add_argument("--prompt-embeddings", required=True,
                   help="file of python -m adapters.diffusers_flow.embeddings (the prompts chains are conditioned on)")
    d.add_argument("--latent-size", type=int, default=None,
                   help="latent height = width to train at (SD3 default: the transformer's sample_size; Flux: required)")
    d.add_argument("--model-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype the transformer runs in")
    return p


def _backbone(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backbone:
    """The transformer with its prompt table; a bad model directory, embedding file or latent size
    is a parser error (the messages name the flag or the file)."""
    try:
        return load_diffusers_backbone(args.model, args.prompt_embeddings, args.latent_size, args.model_dtype)
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line (module docstring); returns the exit status."""
    parser = build_parser()
    return chain_train.run_parsed(parser.parse_args(argv), parser, _backbone)


if __name__ == "__main__":
    sys.exit(main())
