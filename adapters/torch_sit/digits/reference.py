"""The demo's reference set: tight solves of the digits SiT from fixed noises and labels.

    python -m adapters.torch_sit.digits.reference --out adapters/torch_sit/digits/weights

Two sets of ``n`` initial noises (``noise`` and ``noise_b``, float32 ``(n, 1, 8, 8)``, drawn
from torch generators seeded by ``seed`` and ``seed + 1``) share the labels ``i mod 10``. Each is
integrated from t = 1 to t = 0 through the guided ``"digits-sit"`` field with scipy's DOP853
(:func:`baquad.reference.reference_solve`) at ``rtol = atol = 1e-7``, with the network in float64
so that the step-size control sees no float32 rounding; the solves run in chunks of
``chunk`` samples (DOP853's error control then adapts to each chunk). The solves of ``noise``
(``reference``) are what the demo's trajectory errors and Fréchet distances compare against; the
solves of ``noise_b`` (``reference_b``) give the noise floor of the Fréchet distance (two
reference sets that differ only in their noise). The reference's own error is measured by
re-solving a subset at ``rtol = atol = 1e-9`` (``tolerance_check`` in the header).

The file (safetensors, atomic, recorded in ``SHA256SUMS``) holds those five tensors; its header
holds the guidance scale and interval, the tolerances, the seed, and the SHA-256 of the backbone
weights it was computed with, so a stale reference (other weights or guidance) is detected.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ...commandline import HelpFormatter
from .model import (DIGITS_GUIDANCE_INTERVAL, DIGITS_GUIDANCE_SCALE, STATE_SHAPE, digits_sit_backbone,
                     shipped_path)
from ..files import InvalidFile, read_header, read_tensors, serialise
from ..files import sha256_file
from .shipped import verified, write_with_sum

__all__ = ["ReferenceSet", "reference_noise", "reference_labels", "solve_reference", "build_reference",
           "save_reference", "load_reference", "main"]

_FORMAT = "baquad-digits-reference"


@dataclass
class ReferenceSet:
    """Noises, labels and their tight solutions (module docstring); ``meta`` is the header."""

    noise: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor
    noise_b: torch.Tensor
    reference_b: torch.Tensor
    meta: dict

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int) -> "ReferenceSet":
        """The first ``n`` samples of both sets."""
        if not 1 <= n <= len(self):
            raise ValueError(f"n: the reference set holds {len(self)} samples; ask for 1 to {len(self)}, got {n}")
        return ReferenceSet(self.noise[:n], self.labels[:n], self.reference[:n], self.noise_b[:n],
                            self.reference_b[:n], dict(self.meta, n=n))


def reference_noise(n: int, seed: int) -> torch.Tensor:
    """``n`` standard normal states ``(n, 1, 8, 8)`` (float32) from a torch generator seeded by ``seed``."""
    return torch.randn((n, *STATE_SHAPE), generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float32)


def reference_labels(n: int) -> torch.Tensor:
    """The labels ``i mod 10``: every class equally often (up to one)."""
    return torch.arange(n, dtype=torch.int64) % 10


def solve_reference(noise: torch.Tensor, labels: torch.Tensor, guidance_scale: float, *,
                    weights: Optional[Path] = None, rtol: float = 1e-7, atol: float = 1e-7, chunk: int = 250,
                    progress: Optional[Callable[[int], None]] = None) -> torch.Tensor:
    """DOP853 solutions at t = 0 (float32) of the guided digits field from ``noise`` at t = 1,
    the network in float64, ``chunk`` samples per solve."""
    from baquad.reference import reference_solve

    bb = digits_sit_backbone(weights, dtype=torch.float64)
    out = []
    for i in range(0, noise.shape[0], chunk):
        x0 = noise[i:i + chunk].double()
        field = bb.vfield(labels=labels[i:i + chunk], guidance_scale=guidance_scale)
        with torch.no_grad():
            out.append(reference_solve(field, x0, [1.0, 0.0], rtol=rtol, atol=atol)[-1].float())
        if progress is not None:
            progress(x0.shape[0])
    return torch.cat(out)


def build_reference(n: int = 2000, guidance_scale: float = DIGITS_GUIDANCE_SCALE, *, seed: int = 0,
                    weights: Optional[Path] = None, rtol: float = 1e-7, check: int = 100,
                    progress: bool = True, log: Callable[..., None] = print) -> ReferenceSet:
    """Both reference sets (module docstring) and a tolerance check on the first ``check`` samples."""
    from tqdm.auto import tqdm

    weights_file = verified(shipped_path("backbone")) if weights is None else Path(weights)
    check = min(check, n)
    noise, noise_b, labels = reference_noise(n, seed), reference_noise(n, seed + 1), reference_labels(n)
    t0 = time.perf_counter()
    with tqdm(total=2 * n + check, desc="reference (DOP853)", disable=not progress or not sys.stderr.isatty(),
              file=sys.stderr) as bar:
        ref = solve_reference(noise, labels, guidance_scale, weights=weights, rtol=rtol, atol=rtol, progress=bar.update)
        ref_b = solve_reference(noise_b, labels, guidance_scale, weights=weights, rtol=rtol, atol=rtol,
                                progress=bar.update)
        tight = solve_reference(noise[:check], labels[:check], guidance_scale, weights=weights, rtol=rtol * 1e-2,
                                atol=rtol * 1e-2, progress=bar.update)
    err = (ref[:check] - tight).flatten(1).norm(dim=1)
    wall = time.perf_counter() - t0
    meta = {"format": _FORMAT, "n": n, "seed": seed, "guidance_scale": float(guidance_scale),
            "guidance_interval": list(DIGITS_GUIDANCE_INTERVAL), "rtol": rtol, "atol": rtol, "method": "DOP853",
            "network_dtype": "float64", "backbone_sha256": sha256_file(weights_file),
            "tolerance_check": {"samples": check, "rtol": rtol * 1e-2, "mean_error": float(err.mean()),
                                "max_error": float(err.max())}}
    log(f"reference: {2 * n} DOP853 solves (rtol {rtol:g}) in {wall:.0f} s; its error against rtol "
        f"{rtol * 1e-2:g} on {check} samples: mean {float(err.mean()):.2e}, max {float(err.max()):.2e}")
    return ReferenceSet(noise, labels, ref, noise_b, ref_b, meta)


def save_reference(ref: ReferenceSet, path: "str | Path") -> str:
    """Write the set atomically (recording its SHA-256 in ``SHA256SUMS``); returns the digest."""
    tensors = {"noise": ref.noise, "labels": ref.labels, "reference": ref.reference, "noise_b": ref.noise_b,
               "reference_b": ref.reference_b}
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    meta = {k: v for k, v in ref.meta.items() if k != "version"}
    return write_with_sum(Path(path), serialise(tensors, meta))


def load_reference(path: "str | Path | None" = None, *, required: Optional[bool] = None) -> ReferenceSet:
    """A reference set, checksum-verified first (the shipped one when ``path`` is None; a file
    elsewhere is checked when its directory's ``SHA256SUMS`` lists it)."""
    path = shipped_path("reference") if path is None else Path(path)
    if required is None:
        required = path.resolve().parent == shipped_path("reference").parent
    header = read_header(verified(path, required=required))
    meta = header.meta
    if meta.get("format") != _FORMAT:
        raise InvalidFile(f"{header.path}: not a digits reference set (format {meta.get('format')!r})")
    t = read_tensors(header)
    names = ("noise", "labels", "reference", "noise_b", "reference_b")
    if sorted(t) != sorted(names):
        raise InvalidFile(f"{header.path}: a reference set holds the tensors {', '.join(names)}; this one {', '.join(sorted(t))}")
    return ReferenceSet(*(t[k] for k in names), meta)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.torch_sit.digits.reference",
                                description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="directory of digits_reference.safetensors")
    p.add_argument("--n", type=int, default=2000, help="samples per set")
    p.add_argument("--guidance-scale", type=float, default=DIGITS_GUIDANCE_SCALE, help="classifier-free guidance scale")
    p.add_argument("--rtol", type=float, default=1e-7, help="DOP853 rtol = atol")
    p.add_argument("--seed", type=int, default=0, help="noise seed (the second set uses seed + 1)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the same bytes on every rerun on one machine)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    ref = build_reference(args.n, args.guidance_scale, seed=args.seed, rtol=args.rtol)
    path = args.out / shipped_path("reference").name
    digest = save_reference(ref, path)
    print(f"wrote {path} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
