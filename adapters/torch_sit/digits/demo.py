"""``baquad demo``: BA-solver against the baselines on the shipped digits SiT, in about 90 s.

    baquad demo                        # 2,000 digits per solver and NFE, output in runs/demo
    baquad demo --n 500 --out runs/demo-small

Everything it loads ships with the package and is checked by SHA-256 before use
(``adapters/torch_sit/digits/weights``): the digits SiT (:mod:`.digits`), its SideNet, the feature
classifier, and the reference set (:mod:`.digits_reference`: fixed noises and labels with their
tight DOP853 solutions). Every solver starts from the same ``--n`` noises with the same labels
(``i mod 10``) and the same guidance, and spends exactly the NFE of its column (counted by
``baquad.solve``): BA-solver with the SideNet (Gauss-Lobatto-4, scheme B: NFE = intervals),
Euler, Heun, DPM-Solver++ 2M and UniPC at NFE 3, 5, 7 and 10, and Euler at 50, 70 and 100, every
solver on the same grid family: uniform, then shifted by t' = s t / (1 + (s - 1) t) (``--shift``;
the default s = 0.4 puts more steps near the data end, where this model's field changes fastest).
The table reports, per solver and NFE:

- trajectory error: the mean over samples of |x - x_ref|_2, x_ref the reference solution from the
  same noise (64 pixels in [-1, 1]);
- Fréchet distance: between the classifier's penultimate features of the samples and of the
  reference solutions (``adapters.torch_sit.imagenet.metrics``), so it measures the solver's error, not the
  model's; the table also gives the distance of the reference set to the held-out real digits
  (what the model itself achieves) and the noise floor, the distance between two reference sets
  that differ only in their noises;
- class accuracy: the fraction of samples the classifier assigns to the requested label;
- wall time of the solve, and for BA-solver the SideNet's share of it.

Outputs in ``--out`` (default ``runs/demo``): ``demo.md`` (the table), ``results.json``,
``samples.png`` (rows: solvers, columns: NFE; the same ten noises, one per class, in every cell)
and ``error_vs_nfe.png``. A guidance scale or sample count the shipped reference does not cover
is solved once with DOP853 and cached in the output directory (minutes on a laptop).

Subcommands: ``baquad demo`` is ``baquad demo sample``; further demos register in :data:`DEMOS`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from ...report import markdown_table, pyplot, save_figure

__all__ = ["DemoRow", "SOLVERS", "NFES", "EULER_NFES", "TimedModule", "run_demo", "add_arguments", "DEMOS"]

#: (label, method) of the table's rows, BA-solver first
SOLVERS: tuple[tuple[str, str], ...] = (
    ("BA-solver + SideNet", "ba-solver"),
    ("Euler", "euler"),
    ("Heun", "heun"),
    ("DPM-Solver++ 2M", "dpm++2m"),
    ("UniPC", "unipc"),
)
#: the NFE budgets of every solver
NFES: tuple[int, ...] = (3, 5, 7, 10)
#: the extra Euler budgets (the "many small steps" yardstick)
EULER_NFES: tuple[int, ...] = (50, 70, 100)


@dataclass
class DemoRow:
    """One solver at one NFE, scored."""

    solver: str
    method: str
    nfe: int
    trajectory_error: float
    trajectory_error_se: float
    frechet: float
    accuracy: float
    wall_s: float
    sidenet_s: Optional[float] = None

    @property
    def sidenet_share(self) -> Optional[float]:
        return None if self.sidenet_s is None else self.sidenet_s / self.wall_s


class TimedModule(nn.Module):
    """Wraps a module and adds up the wall time of its forwards (``seconds``, ``calls``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.seconds = 0.0
        self.calls = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self.module(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def solver_options(method: str, nfe: int) -> dict:
    """The options that make ``method`` spend exactly ``nfe`` calls (Heun: an Euler last step
    for odd budgets, a full Heun step for even ones)."""
    if method == "heun":
        return {"final_step": "euler" if nfe % 2 else "heun"}
    if method == "ba-solver":
        return {"rule": "gauss-lobatto-4", "final": "single"}
    return {}


def plan() -> list[tuple[str, str, int]]:
    """Every (label, method, nfe) the demo runs, in table order."""
    runs = [(label, method, nfe) for label, method in SOLVERS for nfe in NFES]
    return runs + [("Euler", "euler", nfe) for nfe in EULER_NFES]


class Judge:
    """Scores samples against the reference set: trajectory error, Fréchet distance of the
    classifier features to the reference's, class accuracy."""

    def __init__(self, classifier: nn.Module, reference: torch.Tensor, labels: torch.Tensor):
        from ..imagenet.metrics import feature_statistics

        self.classifier, self.reference, self.labels = classifier, reference, labels
        self.ref_stats = feature_statistics(self.features(reference))

    def features(self, x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return self.classifier.features(x.float()).double().numpy()

    def frechet(self, x: torch.Tensor, stats: Optional[tuple] = None) -> float:
        from ..imagenet.metrics import feature_statistics, frechet_distance

        return frechet_distance(*feature_statistics(self.features(x)), *(stats or self.ref_stats))

    def accuracy(self, x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((self.classifier(x.float()).argmax(1) == self.labels).double().mean())

    def error(self, x: torch.Tensor) -> tuple[float, float]:
        e = (x.double() - self.reference.double()).flatten(1).norm(dim=1)
        return float(e.mean()), float(e.std() / max(len(e), 1) ** 0.5) if len(e) > 1 else 0.0


def sample(backbone: Any, sidenet: Optional[nn.Module], method: str, nfe: int, noise: torch.Tensor,
           labels: torch.Tensor, guidance: float, shift: float = 1.0) -> tuple[torch.Tensor, float, Optional[float]]:
    """One solve on the ``shift``-ed uniform grid of ``nfe`` calls:
    ``(x at t = 0, wall seconds, SideNet seconds or None)``."""
    import baquad
    from baquad.schedules import nfe_grid

    from ..sidenet.perception import NeuralPerception

    options = solver_options(method, nfe)
    ts = nfe_grid(method, nfe, "uniform", shift, **options)
    timed = None
    if method == "ba-solver":
        timed = TimedModule(sidenet)
        options["perception"] = NeuralPerception(timed, labels=labels, guidance_scale=guidance)
    field = backbone.vfield(labels=labels, guidance_scale=guidance)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = baquad.solve(field, noise, ts, method=method, check_finite=False, **options)
    wall = time.perf_counter() - t0
    if res.nfe != nfe:
        raise RuntimeError(f"{method} spent {res.nfe} NFE, planned {nfe}")
    return res.x, wall, None if timed is None else timed.seconds


def _reference_for(args: argparse.Namespace, log: Callable[..., None]):
    """The reference set for ``--n`` and ``--guidance-scale``: the shipped one when it covers them,
    else one solved now and cached in the output directory."""
    from .model import shipped_path
    from .reference import build_reference, load_reference, save_reference
    from ..files import sha256_file

    backbone_sha = sha256_file(shipped_path("backbone"))

    def fits(ref) -> bool:
        m = ref.meta
        return (len(ref) >= args.n and abs(m["guidance_scale"] - args.guidance_scale) < 1e-12
                and m["backbone_sha256"] == backbone_sha)

    candidates = [Path(args.reference)] if args.reference else [shipped_path("reference")]
    cached = args.out / f"reference-g{args.guidance_scale:g}-n{args.n}.safetensors"
    candidates.append(cached)
    for path in candidates:
        if path.is_file():
            ref = load_reference(path)
            if fits(ref):
                return ref.head(args.n), path
    log(f"no reference set covers n = {args.n} at guidance {args.guidance_scale:g}: solving it once with DOP853 "
        f"(2 x {args.n} samples; several minutes), cached as {cached}")
    ref = build_reference(args.n, args.guidance_scale, progress=args.progress, log=log)
    save_reference(ref, cached)
    return ref, cached


def run_demo(args: argparse.Namespace, log: Callable[..., None] = print) -> list[DemoRow]:
    """Sample with every solver, score, print and write the table and the figures."""
    from tqdm.auto import tqdm

    from ..sidenet.checkpoint import load_sidenet
    from .model import digits_sit_backbone, load_digits_classifier, load_digits_split, shipped_path
    from ..imagenet.metrics import feature_statistics
    from .shipped import verified

    args.out.mkdir(parents=True, exist_ok=True)
    backbone = digits_sit_backbone()
    sidenet_file = shipped_path("sidenet") if args.sidenet is None else args.sidenet
    sidenet = load_sidenet(verified(sidenet_file, required=args.sidenet is None))
    classifier = load_digits_classifier()
    ref, ref_path = _reference_for(args, log)
    judge = Judge(classifier, ref.reference, ref.labels)
    held_out = load_digits_split("held-out")[0]
    context = {
        "reference_to_held_out": judge.frechet(ref.reference, feature_statistics(judge.features(held_out))),
        "noise_floor": judge.frechet(ref.reference_b),
        "reference_accuracy": judge.accuracy(ref.reference),
        "reference_file": str(ref_path),
        "reference_tolerance": f"DOP853 rtol {ref.meta['rtol']:g}",
    }
    runs = plan()
    rows: list[DemoRow] = []
    shown: dict[tuple[str, int], torch.Tensor] = {}
    bar = tqdm(runs, desc="sampling", disable=not args.progress, file=sys.stderr, dynamic_ncols=True)
    for label, method, nfe in bar:
        bar.set_postfix_str(f"{label}, NFE {nfe}")
        x, wall, side = sample(backbone, sidenet, method, nfe, ref.noise, ref.labels, args.guidance_scale, args.shift)
        err, se = judge.error(x)
        rows.append(DemoRow(label, method, nfe, err, se, judge.frechet(x), judge.accuracy(x), wall, side))
        shown[(label, nfe)] = x[:10]
    bar.close()
    shown[("reference", 0)] = ref.reference[:10]
    text = report(rows, context, args)
    print(text)
    (args.out / "demo.md").write_text(text + "\n")
    payload = {"settings": {"n": args.n, "guidance": args.guidance_scale, "shift": args.shift,
                            "threads": torch.get_num_threads()},
               "context": context, "rows": [dict(asdict(r), sidenet_share=r.sidenet_share) for r in rows]}
    (args.out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    plot_samples(shown, args.out / "samples.png")
    plot_errors(rows, context, args.out / "error_vs_nfe.png")
    log(f"wrote {args.out / 'demo.md'}, {args.out / 'samples.png'} and {args.out / 'error_vs_nfe.png'}")
    return rows


def report(rows: Sequence[DemoRow], context: dict, args: argparse.Namespace) -> str:
    """The markdown table with its header lines."""

    body = [[r.solver, r.nfe, f"{r.trajectory_error:.4f}", f"{r.frechet:.3f}", f"{100 * r.accuracy:.1f}%",
             f"{r.wall_s:.2f}", "" if r.sidenet_share is None else f"{100 * r.sidenet_share:.1f}%"] for r in rows]
    table = markdown_table(["solver", "NFE", "trajectory error", "Fréchet distance", "class accuracy", "wall s",
                            "SideNet share"], body, "lrrrrrr")
    return "\n".join([
        f"# baquad demo: {args.n} digits per solver, guidance {args.guidance_scale:g}, grid shift {args.shift:g}, "
        f"{torch.get_num_threads()} torch thread(s)", "",
        "Trajectory error: mean |x - x_ref|_2 over samples (64 pixels in [-1, 1]) against the reference solve of "
        f"the same noise ({context['reference_tolerance']}). Fréchet distance: classifier features of the samples "
        "against those of the reference solves.", "",
        table, "",
        f"Reference set vs held-out real digits: Fréchet distance {context['reference_to_held_out']:.3f} (the model's own "
        f"distance to real data); noise floor (two reference sets from different noises): "
        f"{context['noise_floor']:.3f}; class accuracy of the reference set: {100 * context['reference_accuracy']:.1f}%.",
    ])


def _tile(x: torch.Tensor) -> np.ndarray:
    """Ten 8 x 8 digits as one 16 x 40 image (2 rows of 5), values clipped to [-1, 1]."""
    imgs = x.detach().float().clamp(-1, 1).reshape(-1, 8, 8).numpy()
    imgs = np.concatenate([imgs, np.full((10 - len(imgs), 8, 8), -1.0)]) if len(imgs) < 10 else imgs[:10]
    return np.concatenate([np.concatenate(list(imgs[r * 5:(r + 1) * 5]), axis=1) for r in range(2)], axis=0)


def plot_samples(shown: dict, path: Path) -> None:
    """Rows: solvers (and the reference), columns: NFE; the same ten noises in every cell."""

    plt = pyplot()
    cols = list(NFES) + list(EULER_NFES)
    labels = [label for label, _ in SOLVERS] + ["reference"]
    fig, axes = plt.subplots(len(labels), len(cols), figsize=(1.6 * len(cols), 0.9 * len(labels) + 0.4))
    for i, label in enumerate(labels):
        for j, nfe in enumerate(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            key = (label, 0 if label == "reference" and j == 0 else nfe)
            if key in shown:
                ax.imshow(_tile(shown[key]), cmap="gray_r", vmin=-1, vmax=1, interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0:
                ax.set_title(f"NFE {nfe}", fontsize=8)
            if j == 0:
                ax.set_ylabel(label if label != "reference" else "DOP853\nreference", fontsize=7)
    save_figure(fig, path, dpi=110)


def plot_errors(rows: Sequence[DemoRow], context: dict, path: Path) -> None:
    """Trajectory error and Fréchet distance against NFE, one line per solver."""

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (label, _) in enumerate(SOLVERS):
        mine = sorted((r for r in rows if r.solver == label), key=lambda r: r.nfe)
        nfe = [r.nfe for r in mine]
        style = dict(marker="o", color=f"C{k}", lw=2.5 if k == 0 else 1.2, label=label)
        axes[0].plot(nfe, [r.trajectory_error for r in mine], **style)
        axes[1].plot(nfe, [max(r.frechet, 1e-6) for r in mine], **style)
    axes[1].axhline(context["noise_floor"], color="k", ls=":", label="noise floor")
    for ax, title in zip(axes, ("trajectory error |x - x_ref|", "Fréchet distance to the reference")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    save_figure(fig, path, dpi=110)


def _sample_command(args: argparse.Namespace) -> int:
    run_demo(args)
    return 0


#: ``baquad demo <name>``: the demos (the first is the default)
def _edit_command(args: argparse.Namespace) -> int:
    from .edit import run_edit

    run_edit(args)
    return 0


DEMOS: dict[str, tuple[str, Callable[[argparse.Namespace], int]]] = {
    "sample": ("sample digits with BA-solver and the baselines and compare them (default)", _sample_command),
    "edit": ("invert held-out digits with BA-solver and regenerate them under other labels (paper Fig. 6); "
             "round-trip table against Euler, Adams-Bashforth 2 and DOP853, with and without guidance", _edit_command),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``baquad demo`` flags."""
    from .model import DIGITS_GRID_SHIFT, DIGITS_GUIDANCE_SCALE

    p.add_argument("which", nargs="?", choices=list(DEMOS), default=next(iter(DEMOS)),
                   help="; ".join(f"{k}: {v[0]}" for k, v in DEMOS.items()))
    p.add_argument("--n", type=int, default=2000,
                   help="samples per solver and NFE (the shipped reference covers up to 2000 at the default "
                        "guidance; other values are solved once and cached in --out); edit: the number of held-out "
                        "digits in the round-trip table (all 355 when larger)")
    p.add_argument("--guidance-scale", type=float, default=DIGITS_GUIDANCE_SCALE,
                   help="classifier-free guidance scale (1 = none)")
    p.add_argument("--shift", type=float, default=DIGITS_GRID_SHIFT,
                   help="time shift of every solver's grid, t' = s t / (1 + (s - 1) t) on a uniform grid "
                        "(s < 1 puts more steps near the data end t = 0; 1 = uniform)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="output directory for demo.md, results.json, samples.png, error_vs_nfe.png")
    p.add_argument("--sidenet", type=Path, default=None,
                   help="a SideNet of your own (python -m adapters.torch_sit.train --backbone digits-sit) instead of "
                        "the shipped one")
    p.add_argument("--reference", type=Path, default=None,
                   help="a reference set file (python -m adapters.torch_sit.digits.reference) instead of the shipped one")
    e = p.add_argument_group("edit")
    e.add_argument("--digits", type=int, nargs="+", default=None,
                   help="edit: indices of the held-out digits in the edit grid (default the first ten)")
    e.add_argument("--nfe", type=int, default=10, help="edit: BA-solver's NFE per direction in the edit grid")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (one thread is fastest on 2 shared cores: 82 s against 270 s with 2, see docs/digits.md)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is off anyway when stdout or stderr is not a terminal)")


def run(args: argparse.Namespace) -> int:
    """Validate the flags, set the threads, run the chosen demo."""
    if args.n < 2:
        raise SystemExit(f"--n: need at least 2 samples (a Fréchet distance needs a covariance), got {args.n}")
    if args.threads < 1:
        raise SystemExit(f"--threads: need at least 1, got {args.threads}")
    if args.nfe < 2:
        raise SystemExit(f"--nfe: BA-solver needs at least 2 calls per direction, got {args.nfe}")
    if not (args.shift > 0 and np.isfinite(args.shift)):
        raise SystemExit(f"--shift: must be a positive number, got {args.shift}")
    if not args.guidance_scale >= 1.0:
        raise SystemExit(f"--guidance-scale: classifier-free guidance scales are >= 1 (1 = unguided), got {args.guidance_scale}")
    if args.out.exists() and not args.out.is_dir():
        raise SystemExit(f"--out: {args.out} exists and is not a directory")
    torch.set_num_threads(args.threads)
    args.progress = bool(args.progress and sys.stdout.isatty() and sys.stderr.isatty())
    return DEMOS[args.which][1](args)
