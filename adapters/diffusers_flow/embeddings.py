"""Precomputed prompt embeddings: what the chain trainer draws its text conditions from.

Training a SideNet for a text-conditioned transformer needs the transformer's text inputs for
many prompts, at every backbone call of every chain; the text encoders (CLIP, T5: often larger
than the transformer) are run once, here, and not during training.

    python -m adapters.diffusers_flow.embeddings --model PATH --prompts prompts.txt --out emb.safetensors

``PATH`` is a local diffusers pipeline directory (Stable Diffusion 3 or Flux) with its text
encoders and tokenizers; ``prompts.txt`` has one prompt per line (blank lines skipped). The
file is one safetensors file, written atomically:

- ``prompt_embeds`` ``(P, L, D)``: the sequence embedding of each prompt (the transformer's
  ``encoder_hidden_states``);
- ``pooled_prompt_embeds`` ``(P, Dp)``: the pooled embedding (``pooled_projections``; also the
  SideNet's conditioning vector);
- ``negative_prompt_embeds`` ``(1, L, D)`` and ``negative_pooled_prompt_embeds`` ``(1, Dp)``: the
  negative prompt (default empty), the unconditional branch of classifier-free guidance;
- metadata (JSON under ``"baquad"``): the format name, the prompts, the negative prompt, the
  pipeline class and the model path.

Loading reads safetensors and JSON only (no pickled code).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from adapters.torch_sit.files import atomic_write

__all__ = ["PromptEmbeddings", "compute_prompt_embeddings", "save_prompt_embeddings", "load_prompt_embeddings", "main"]

FORMAT = "baquad-prompt-embeddings"


@dataclass
class PromptEmbeddings:
    """A table of prompt embeddings (see the module docstring for the shapes)."""

    prompt_embeds: torch.Tensor
    pooled_prompt_embeds: torch.Tensor
    negative_prompt_embeds: Optional[torch.Tensor] = None
    negative_pooled_prompt_embeds: Optional[torch.Tensor] = None
    prompts: Optional[list] = None
    meta: Optional[dict] = None

    def __post_init__(self) -> None:
        pe, pp = self.prompt_embeds, self.pooled_prompt_embeds
        if pe.ndim != 3 or pp.ndim != 2 or pe.shape[0] != pp.shape[0] or pe.shape[0] < 1:
            raise ValueError(f"prompt embeddings: expected prompt_embeds (P, L, D) and pooled_prompt_embeds (P, Dp) "
                             f"with the same P >= 1, got {tuple(pe.shape)} and {tuple(pp.shape)}")
        if (self.negative_prompt_embeds is None) != (self.negative_pooled_prompt_embeds is None):
            raise ValueError("prompt embeddings: give both negative_prompt_embeds and negative_pooled_prompt_embeds, or neither")
        if self.negative_prompt_embeds is not None:
            ne, npool = self.negative_prompt_embeds, self.negative_pooled_prompt_embeds
            if tuple(ne.shape) != (1, *pe.shape[1:]) or tuple(npool.shape) != (1, pp.shape[1]):
                raise ValueError(f"prompt embeddings: the negative pair must have shapes (1, {pe.shape[1]}, {pe.shape[2]}) "
                                 f"and (1, {pp.shape[1]}), got {tuple(ne.shape)} and {tuple(npool.shape)}")
        if not all(torch.isfinite(t).all() for t in (pe, pp)):
            raise ValueError("prompt embeddings: contain NaN or inf")

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    @property
    def pooled_dim(self) -> int:
        return self.pooled_prompt_embeds.shape[1]


def _encode_kind(pipe: Any) -> str:
    params = inspect.signature(pipe.encode_prompt).parameters
    return "cfg-pair" if "do_classifier_free_guidance" in params else "single"


@torch.no_grad()
def compute_prompt_embeddings(pipe: Any, prompts: Sequence[str], negative_prompt: str = "", batch_size: int = 16,
                              device: Any = None, progress: bool = True) -> PromptEmbeddings:
    """Run ``pipe.encode_prompt`` over ``prompts`` (in batches) and over ``negative_prompt``.

    Works with pipelines whose ``encode_prompt`` returns (embeds, negative embeds, pooled,
    negative pooled) when asked for classifier-free guidance (Stable Diffusion 3) and with those
    that return (embeds, pooled, text ids) for one prompt list (Flux). The tensors come back as
    float32 on the CPU.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("prompts: need at least one prompt")
    kind = _encode_kind(pipe)
    device = device if device is not None else getattr(pipe, "_execution_device", "cpu")
    chunks, pooled, neg = [], [], None
    batches = range(0, len(prompts), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encode prompts", file=sys.stderr, disable=None)  # off when not a terminal
    for start in batches:
        batch = prompts[start:start + batch_size]
        if kind == "cfg-pair":
            pe, npe, pp, npp = pipe.encode_prompt(prompt=batch, prompt_2=None, prompt_3=None, device=device,
                                                  do_classifier_free_guidance=True,
                                                  negative_prompt=[negative_prompt] * len(batch))
            neg = neg if neg is not None else (npe[:1], npp[:1])
        else:
            pe, pp, _ = pipe.encode_prompt(prompt=batch, prompt_2=None, device=device)
        chunks.append(pe.float().cpu())
        pooled.append(pp.float().cpu())
    if neg is None:
        npe, npp, _ = pipe.encode_prompt(prompt=[negative_prompt], prompt_2=None, device=device)
        neg = (npe, npp)
    meta = {"pipeline": type(pipe).__name__, "negative_prompt": negative_prompt}
    return PromptEmbeddings(torch.cat(chunks), torch.cat(pooled), neg[0].float().cpu(), neg[1].float().cpu(),
                            prompts, meta)


def save_prompt_embeddings(table: PromptEmbeddings, path: "str | os.PathLike") -> Path:
    """Write the table as one safetensors file, atomically."""
    path = Path(path)
    tensors = {"prompt_embeds": table.prompt_embeds, "pooled_prompt_embeds": table.pooled_prompt_embeds}
    if table.negative_prompt_embeds is not None:
        tensors["negative_prompt_embeds"] = table.negative_prompt_embeds
        tensors["negative_pooled_prompt_embeds"] = table.negative_pooled_prompt_embeds
    meta = {"format": FORMAT, "prompts": table.prompts, **(table.meta or {})}
    data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                   metadata={"baquad": json.dumps(meta)})
    atomic_write(path, data)
    return path


def load_prompt_embeddings(path: "str | os.PathLike") -> PromptEmbeddings:
    """Read a file written by :func:`save_prompt_embeddings` (safetensors and JSON only).

    Raises:
        ValueError: naming the file when it is not a prompt-embedding file or is malformed.
    """
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = json.loads((f.metadata() or {}).get("baquad", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a prompt-embedding file (format {meta.get('format')!r}); write one with "
                         "python -m adapters.diffusers_flow.embeddings")
    missing = {"prompt_embeds", "pooled_prompt_embeds"} - set(tensors)
    if missing:
        raise ValueError(f"{path}: lacks the tensors {sorted(missing)}")
    try:
        return PromptEmbeddings(tensors["prompt_embeds"], tensors["pooled_prompt_embeds"],
                                tensors.get("negative_prompt_embeds"), tensors.get("negative_pooled_prompt_embeds"),
                                meta.get("prompts"), {k: v for k, v in meta.items() if k not in ("format", "prompts")})
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


def read_prompts(path: "str | os.PathLike") -> list[str]:
    """One prompt per line; blank lines skipped."""
    lines = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [line for line in lines if line]
    if not prompts:
        raise ValueError(f"--prompts: {path} holds no prompt (one per line)")
    return prompts


class _ConfigOnly:
    """Stands in for a pipeline component of which only the config is read."""

    def __init__(self, config_file: Path):
        from types import SimpleNamespace

        self.config = SimpleNamespace(**json.loads(Path(config_file).read_text()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.diffusers_flow.embeddings",
                                description="Precompute prompt embeddings for SideNet training on a diffusers transformer.")
    p.add_argument("--model", required=True, help="local diffusers pipeline directory (with its text encoders)")
    p.add_argument("--prompts", required=True, type=Path, help="text file, one prompt per line")
    p.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    p.add_argument("--negative-prompt", default="", help="the unconditional prompt of classifier-free guidance")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="torch device for the text encoders (default: cuda if available)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from diffusers import DiffusionPipeline

    prompts = read_prompts(args.prompts)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    index = json.loads((Path(args.model) / "model_index.json").read_text())
    absent = {k: None for k, v in index.items() if isinstance(v, list) and v == [None, None]}  # saved as None
    dtype = {} if args.dtype == "float32" else {"torch_dtype": getattr(torch, args.dtype)}
    pipe = DiffusionPipeline.from_pretrained(str(args.model), **{**absent, "transformer": None, "vae": None},
                                             **dtype).to(device)
    if getattr(pipe, "text_encoder_3", "absent") is None:
        # SD3 without its T5 encoder fills that part with zeros as wide as the transformer's
        # joint_attention_dim: give it the transformer's config, not its weights.
        pipe.transformer = _ConfigOnly(Path(args.model) / "transformer" / "config.json")
    table = compute_prompt_embeddings(pipe, prompts, args.negative_prompt, args.batch_size, device)
    table.meta["model"] = str(args.model)
    save_prompt_embeddings(table, args.out)
    print(f"{len(table)} prompts -> {args.out} (prompt_embeds {tuple(table.prompt_embeds.shape)}, "
          f"pooled {tuple(table.pooled_prompt_embeds.shape)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
