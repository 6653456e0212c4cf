"""The demo's reference set: tight solves of the digits SiT from fixed noises and labels.

    python -m adapters.torch_sit.digits.reference --out adapters/torch_sit/digits/weights --overwrite

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
           "save_reference", "load_reference", "reference_seconds", "main"]

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


def reference_seconds(n: int, guidance_scale: float, check: int = 100) -> float:
    """A rough wall-time estimate, in seconds on one core, of :func:`build_reference` for ``n``
    samples at ``guidance_scale`` (2 n + min(check, n) DOP853 solves; docs/digits.md).

    Measured on the development machine (one thread, 250 samples per solve): about 0.1 s per
    sample at guidance 1.5, where a solve takes about 250 network calls. The calls grow about
    linearly with the scale (236 at 1, 260 at 1.5, 452 at 10, 776 at 30, 1556 at 100, 3536 at
    300 on 20 samples), so the estimate scales 0.1 s by (230 + 11 g) / 246."""
    samples = 2 * n + min(check, n)
    return samples * 0.1 * (230.0 + 11.0 * guidance_scale) / 246.0


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
    the network in float64, ``chunk`` samples per solve.

    ``progress(k)`` is told the samples done as the solves advance: a chunk of c samples whose
    solve has gone from t = 1 down to t adds c (1 - t) (fractions of a sample, so a long solve
    moves the bar while it runs), and the chunk's total c when it ends."""
    from baquad.reference import reference_solve

    bb = digits_sit_backbone(weights, dtype=torch.float64)
    out = []
    for i in range(0, noise.shape[0], chunk):
        x0 = noise[i:i + chunk].double()
        field = bb.vfield(labels=labels[i:i + chunk], guidance_scale=guidance_scale)
        done = [0.0]  # the part of this chunk already reported

        def advancing(t: float, x: torch.Tensor, field=field, c=x0.shape[0], done=done) -> torch.Tensor:
            reached = c * min(max(1.0 - float(t), 0.0), 1.0)
            if progress is not None and reached > done[0]:
                progress(reached - done[0])
                done[0] = reached
            return field(t, x)

        with torch.no_grad():
            out.append(reference_solve(advancing, x0, [1.0, 0.0], rtol=rtol, atol=atol)[-1].float())
        if progress is not None and x0.shape[0] > done[0]:
            progress(x0.shape[0] - done[0])
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
              file=sys.stderr, unit="sample", bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} [{elapsed}<{remaining}]") as bar:
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
    p.add_argument("--overwrite", action="store_true", help="replace a digits_reference.safetensors already in --out")
    return p


def _refusal(args: argparse.Namespace) -> Optional[str]:
    """Why the flags cannot run (naming the flag and the fix), or None; nothing is written."""
    import math
    import os

    from .output import writable_dir

    if args.n < 1:
        return f"--n: samples per set, at least 1, got {args.n}"
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 1.0):
        return f"--guidance-scale: a finite classifier-free guidance scale >= 1 (1 = unguided), got {args.guidance_scale}"
    if not (math.isfinite(args.rtol) and 0.0 < args.rtol < 1.0):
        return f"--rtol: DOP853's relative tolerance, a number in (0, 1) such as 1e-7, got {args.rtol}"
    if args.seed < 0:
        return f"--seed: a non-negative integer, got {args.seed}"
    if not 1 <= args.threads <= (os.cpu_count() or 1):
        return f"--threads: 1 to the machine's {os.cpu_count() or 1} cores, got {args.threads}"
    try:
        writable_dir(args.out)
    except ValueError as err:
        return str(err)
    target = args.out / shipped_path("reference").name
    if target.exists() and not args.overwrite:
        return f"--out: {target} exists; pass --overwrite to replace it, or another --out"
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    why = _refusal(args)
    if why is not None:
        parser.error(why)
    torch.set_num_threads(args.threads)
    print(f"solving 2 x {args.n} samples and a tolerance check with DOP853: about "
          f"{reference_seconds(args.n, args.guidance_scale) / 60:.0f} min on one core")
    ref = build_reference(args.n, args.guidance_scale, seed=args.seed, rtol=args.rtol)
    path = args.out / shipped_path("reference").name
    digest = save_reference(ref, path)
    print(f"wrote {path} (sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
