"""Editing by inversion with BA-solver (paper Fig. 6) on the shipped digits model: ``baquad demo edit``.

A deterministic solver is also an inversion tool. Integrating the probability-flow ODE from a
data point x_0 at t = 0 up to t = 1 gives its noise z = Phi_{0->1}(x_0); integrating back from z
under the same label returns x_0 (the flow map is a bijection), and under another label gives an
edit that keeps what the noise encodes (position, stroke width, slant). Both directions use the
same field, so the round trip is exact up to the solver's error in each direction; with
classifier-free guidance the field is the guided one in both directions (an inversion at one
scale and a regeneration at another do not invert each other).

Grids: generation runs on the demo's shifted uniform grid of NFE intervals (``--shift``),
inversion on the same grid reversed (t: 0 -> 1), so both spend their steps where the field
changes fastest, near the data. BA-solver inverts with Gauss-Lobatto-4 and scheme B (the last
interval, the one ending at t = 1, single-anchor): N intervals cost N backbone calls each way.

The round-trip table compares reconstruction error |x_rec - x_0| (invert, then regenerate with
the same label) for BA-solver with the shipped chain-trained SideNet, Euler and Adams-Bashforth-2 (the
multistep baseline that works in both directions; DPM-Solver++ and UniPC are written in the log
signal-to-noise ratio, infinite at t = 0, and do not start an inversion), and a tight DOP853
reference, with guidance in both directions and without.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from ...report import markdown_table, pyplot, save_figure

__all__ = ["invert", "generate", "round_trip", "RoundTrip", "edit_grid", "run_edit", "ROUND_TRIP_PLAN", "RESULTS",
           "DEFAULT_NFE"]

#: (label, method, NFE per direction) of the round-trip table; "reference" is DOP853
ROUND_TRIP_PLAN: tuple[tuple[str, str, int], ...] = (
    *(("BA-solver + SideNet", "ba-solver", n) for n in (5, 7, 10)),
    *(("Euler", "euler", n) for n in (10, 20, 50, 100)),
    *(("Adams-Bashforth 2", "adams", n) for n in (10, 20, 50, 100)),
    ("DOP853 reference (rtol 1e-7)", "reference", 0),
)
#: the edit demo's result files in ``--out``
RESULTS: tuple[str, ...] = ("edit.md", "edit.json", "edits.png")
#: BA-solver's NFE per direction in the edit grid when ``--nfe`` is not given
DEFAULT_NFE = 10


def _grid(nfe: int, method: str, shift: float, direction: str) -> tuple[float, ...]:
    from baquad.schedules import nfe_grid

    options = {"final": "single"} if method == "ba-solver" else {}
    ts = nfe_grid(method, nfe, "uniform", shift, **options)
    return ts if direction == "generate" else tuple(reversed(ts))


def _solve(backbone: Any, sidenet: Optional[torch.nn.Module], method: str, nfe: int, x: torch.Tensor,
           labels: torch.Tensor, guidance: float, shift: float, direction: str) -> torch.Tensor:
    import baquad
    from baquad.reference import reference_solve

    from ..sidenet.perception import NeuralPerception

    field = backbone.vfield(labels=labels, guidance_scale=guidance)
    t0, t1 = (1.0, 0.0) if direction == "generate" else (0.0, 1.0)
    with torch.no_grad():
        if method == "reference":
            return reference_solve(field, x.double(), [t0, t1], rtol=1e-7, atol=1e-7)[-1].to(x.dtype)
        options: dict = {}
        if method == "ba-solver":
            options = dict(rule="gauss-lobatto-4", final="single",
                           perception=NeuralPerception(sidenet, labels=labels, guidance_scale=guidance, strict=False))
        res = baquad.solve(field, x, _grid(nfe, method, shift, direction), method=method, check_finite=False, **options)
    if res.nfe != nfe:
        raise RuntimeError(f"{method} spent {res.nfe} NFE, planned {nfe}")
    return res.x


def invert(backbone: Any, x0: torch.Tensor, labels: torch.Tensor, *, method: str = "ba-solver", nfe: int = 10,
           guidance: float = 1.5, shift: float = 1.0, sidenet: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """The noise z of data x0 under ``labels``: the ODE integrated from t = 0 to t = 1 (``method``
    at ``nfe`` backbone calls, or ``"reference"`` for DOP853)."""
    return _solve(backbone, sidenet, method, nfe, x0, labels, guidance, shift, "invert")


def generate(backbone: Any, z: torch.Tensor, labels: torch.Tensor, *, method: str = "ba-solver", nfe: int = 10,
             guidance: float = 1.5, shift: float = 1.0, sidenet: Optional[torch.nn.Module] = None) -> torch.Tensor:
    """The data point of noise z under ``labels``: the ODE integrated from t = 1 to t = 0."""
    return _solve(backbone, sidenet, method, nfe, z, labels, guidance, shift, "generate")


@dataclass
class RoundTrip:
    """One row of the round-trip table: reconstruction error (mean |x_rec - x_0|_2 over the
    digits, its standard error) at ``nfe`` calls per direction, and the wall time of both."""

    label: str
    method: str
    nfe: int
    guidance: float
    error: float
    se: float
    seconds: float


def round_trip(backbone: Any, sidenet: Optional[torch.nn.Module], x0: torch.Tensor, labels: torch.Tensor,
               guidance: float, shift: float, plan: Sequence[tuple[str, str, int]] = ROUND_TRIP_PLAN,
               progress: bool = False, reference_backbone: Any = None) -> list[RoundTrip]:
    """Invert then regenerate with the same label, for every (label, method, NFE) of ``plan``;
    the ``"reference"`` rows run on ``reference_backbone`` (e.g. the network in float64) when
    given."""
    from tqdm.auto import tqdm

    rows = []
    for label, method, nfe in tqdm(plan, desc=f"round trips (guidance {guidance:g})", disable=not progress,
                                   file=sys.stderr, dynamic_ncols=True):
        bb = reference_backbone if method == "reference" and reference_backbone is not None else backbone
        t0 = time.perf_counter()
        z = invert(bb, x0, labels, method=method, nfe=nfe, guidance=guidance, shift=shift, sidenet=sidenet)
        x_rec = generate(bb, z, labels, method=method, nfe=nfe, guidance=guidance, shift=shift, sidenet=sidenet)
        seconds = time.perf_counter() - t0
        e = (x_rec.double() - x0.double()).flatten(1).norm(dim=1)
        rows.append(RoundTrip(label, method, nfe, guidance, float(e.mean()), float(e.std() / len(e) ** 0.5), seconds))
    return rows


def edit_grid(backbone: Any, sidenet: torch.nn.Module, x0: torch.Tensor, labels: torch.Tensor, *, nfe: int,
              guidance: float, shift: float, num_classes: int = 10) -> torch.Tensor:
    """``(n, 2 + num_classes - 1, 1, 8, 8)``: per digit its original, its round trip, and its
    regeneration under each of the other labels, all from the noise BA-solver inverted."""
    z = invert(backbone, x0, labels, nfe=nfe, guidance=guidance, shift=shift, sidenet=sidenet)
    rows = [x0, generate(backbone, z, labels, nfe=nfe, guidance=guidance, shift=shift, sidenet=sidenet)]
    for k in range(1, num_classes):
        other = (labels + k) % num_classes
        rows.append(generate(backbone, z, other, nfe=nfe, guidance=guidance, shift=shift, sidenet=sidenet))
    return torch.stack(rows, 1)


def _plot_edits(cells: torch.Tensor, labels: torch.Tensor, path: Any) -> None:
    """One row per digit: original, round trip, then the edits (each cell's label under it)."""

    plt = pyplot()
    n, m = cells.shape[:2]
    fig, axes = plt.subplots(n, m, figsize=(0.9 * m, 0.95 * n + 0.4), squeeze=False)
    for i in range(n):
        for j in range(m):
            ax = axes[i][j]
            ax.imshow(cells[i, j, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("original" if j == 0 else ("round trip" if j == 1 else f"label +{j - 1}"), fontsize=7)
            ax.set_xlabel(f"{(int(labels[i]) + max(j - 1, 0)) % 10}", fontsize=6, labelpad=1)
    save_figure(fig, path, dpi=110)


def report(rows: Sequence[RoundTrip], args: argparse.Namespace, n: int) -> str:

    lines = ["# baquad demo edit: round trips by inversion", "",
             f"{n} held-out digits, inverted from t = 0 to t = 1 under their true label and regenerated under the "
             f"same label; grids: uniform with shift {args.shift:g} (reversed for the inversion); NFE per direction. "
             "Reconstruction error: mean |x_rec - x_0|_2 over the digits (64 pixels in [-1, 1]), +- its standard error.",
             ""]
    for g in sorted({r.guidance for r in rows}):
        lines.append(f"Guidance {g:g} in both directions{' (none)' if g == 1.0 else ''}:")
        lines.append("")
        lines.append(markdown_table(["solver", "NFE per direction", "reconstruction error", "wall s"],
                                    [[r.label, r.nfe if r.method != "reference" else "adaptive",
                                      f"{r.error:.4g} +- {r.se:.2g}", f"{r.seconds:.2f}"] for r in rows if r.guidance == g],
                                    "lrrr"))
        lines.append("")
    return "\n".join(lines)


def run_edit(args: argparse.Namespace, log: Callable[..., None] = print) -> list[RoundTrip]:
    """``baquad demo edit``: the round-trip table (with and without guidance) and the edit grid.

    The flags are checked by ``baquad demo`` before this runs; here the results directory
    (:func:`.output.results_dir`) and the SideNet are checked before any network is loaded, and
    the results are written at the end, each file atomically."""
    from .model import digits_sit_backbone, load_digits_sidenet, load_digits_split
    from .output import earlier_results, figure_bytes, results_dir, write_results

    nfe = DEFAULT_NFE if args.nfe is None else args.nfe
    images, labels = load_digits_split("held-out")
    digits = [int(d) for d in args.digits] if args.digits else list(range(min(10, len(labels))))
    if any(not 0 <= d < len(labels) for d in digits):
        raise ValueError(f"--digits: indices into the {len(labels)} held-out digits, 0 to {len(labels) - 1}; "
                         f"got {digits}")
    target = results_dir(args.out, RESULTS, getattr(args, "overwrite", False))
    # the chain-trained SideNet: the end-to-end one is fitted to its own forward grids and steps
    # (round trip at 10 NFE: 0.0737 with the chain-trained one, 0.0859 with it; docs/results.md)
    sidenet = load_digits_sidenet(args.sidenet, kind="sidenet-chain")
    note = earlier_results(args.out, target, RESULTS)
    if note:
        log(note)
    backbone = digits_sit_backbone()
    reference_backbone = digits_sit_backbone(dtype=torch.float64)
    pick = torch.arange(len(labels))[: args.n]  # --n above the held-out count: all of them
    x0, y = images[pick], labels[pick]
    rows = []
    for g in (args.guidance_scale, 1.0) if args.guidance_scale != 1.0 else (1.0,):
        rows += round_trip(backbone, sidenet, x0, y, g, args.shift, progress=args.progress,
                           reference_backbone=reference_backbone)
    text = report(rows, args, len(pick))
    print(text)
    settings = {"n": len(pick), "guidance": args.guidance_scale, "shift": args.shift, "nfe": nfe}
    idx = torch.tensor(digits)
    cells = edit_grid(backbone, sidenet, images[idx], labels[idx], nfe=nfe, guidance=args.guidance_scale, shift=args.shift)
    write_results(target, {"edit.md": (text + "\n").encode(),
                           "edit.json": (json.dumps({"settings": settings, "rows": [asdict(r) for r in rows]},
                                                    indent=2) + "\n").encode(),
                           "edits.png": figure_bytes(_plot_edits, cells, labels[idx])})
    log(f"wrote {target / 'edit.md'}, {target / 'edit.json'} and {target / 'edits.png'}")
    return rows
