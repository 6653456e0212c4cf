"""``baquad demo``: BA-solver against the baselines on the shipped digits SiT, in about 90 s.

    baquad demo                        # 1,000 digits per solver and NFE, output in runs/demo
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
and ``error_vs_nfe.png``. When ``--out`` already holds an earlier run's results they are kept and
this run writes into the first free ``--out/run-N`` (``--overwrite`` replaces them instead;
:mod:`.output`). A guidance scale or sample count the shipped reference does not cover is solved
once with DOP853 (with a progress bar and a time estimate first) and cached in ``--out``.

Every flag is checked before anything is loaded or written, and refused with the flag's name and
the fix: ``--n`` from 2 to :data:`MAX_SAMPLES`, ``--guidance-scale`` from 1 to
:data:`MAX_GUIDANCE_SCALE` (the limits bound the time of the reference solve; the message gives
the estimate), a ``--sidenet`` for other states or another backbone, a ``--reference`` that does
not cover ``--n`` and ``--guidance-scale``, an ``--out`` that cannot be written.

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
from .contenders import Contender, TimedModule, contenders

__all__ = ["DemoRow", "NFES", "EULER_NFES", "plan", "run_demo", "add_arguments", "DEMOS",
           "MAX_SAMPLES", "MAX_GUIDANCE_SCALE", "MAX_EDIT_NFE", "RESULTS"]

#: the NFE budgets of every solver
NFES: tuple[int, ...] = (3, 5, 7, 10)
#: the extra Euler budgets (the "many small steps" yardstick)
EULER_NFES: tuple[int, ...] = (50, 70, 100)
#: the most samples per solver and NFE ``--n`` takes: about 8 min of sampling on one core, and
#: about 35 min more for the DOP853 reference set it needs (the shipped one covers 2,000)
MAX_SAMPLES = 10_000
#: the largest ``--guidance-scale``: DOP853's network calls grow about linearly with the scale
#: (``reference.reference_seconds``), about 40% more than at the default 1.5 at 10
MAX_GUIDANCE_SCALE = 10.0
#: the most NFE per direction ``baquad demo edit --nfe`` takes (the edit grid makes 11 solves)
MAX_EDIT_NFE = 1000
#: the sampling demo's result files in ``--out``
RESULTS: tuple[str, ...] = ("demo.md", "results.json", "samples.png", "error_vs_nfe.png")
#: seconds of sampling per sample on one core, every row (about 50 s for the default 1,000; docs/digits.md)
_SECONDS_PER_SAMPLE = 0.05


@dataclass
class DemoRow:
    """One solver at one NFE, scored."""

    solver: str
    method: str
    nfe: int
    trajectory_error: float
    trajectory_error_se: float
    trajectory_error_median: float
    frechet: float
    accuracy: float
    wall_s: float
    sidenet_s: Optional[float] = None
    trained: str = ""

    @property
    def sidenet_share(self) -> Optional[float]:
        return None if self.sidenet_s is None else self.sidenet_s / self.wall_s


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

    def error(self, x: torch.Tensor) -> tuple[float, float, float]:
        """Mean trajectory error, its standard error, and the median."""
        e = (x.double() - self.reference.double()).flatten(1).norm(dim=1)
        se = float(e.std() / len(e) ** 0.5) if len(e) > 1 else 0.0
        return float(e.mean()), se, float(e.median())


def plan(rows: Sequence[Contender]) -> list[tuple[Contender, int]]:
    """Every (row family, nfe) the demo runs, in table order: each solver at the NFE of the table
    it has a solver for, then Euler at :data:`EULER_NFES`."""
    runs = [(c, nfe) for c in rows for nfe in NFES if nfe in c.nfes]
    euler = next(c for c in rows if c.method == "euler" and not c.trained)
    return runs + [(euler, nfe) for nfe in EULER_NFES]


def sample(backbone: Any, contender: Contender, nfe: int, noise: torch.Tensor, labels: torch.Tensor,
           guidance: float) -> tuple[torch.Tensor, float, Optional[float]]:
    """One solve of ``contender`` at ``nfe`` calls: ``(x at t = 0, wall seconds, SideNet seconds
    or None)``."""
    import baquad

    ts, options, timed = contender.prepare(nfe, labels, guidance)
    field = backbone.vfield(labels=labels, guidance_scale=guidance)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = baquad.solve(field, noise, ts, method=contender.method, check_finite=False, **options)
    wall = time.perf_counter() - t0
    if res.nfe != nfe:
        raise RuntimeError(f"{contender.label} spent {res.nfe} NFE, planned {nfe}")
    return res.x, wall, None if timed is None else timed.seconds


def _find_reference(args: argparse.Namespace, log: Callable[..., None]) -> tuple[Any, Path]:
    """The reference set for ``--n`` and ``--guidance-scale``, found without writing anything:
    ``--reference`` when given (refused, naming it, when it does not cover them), else the
    shipped one when it covers them, else the one cached in ``--out`` by an earlier run.
    Returns ``(None, cache path)`` when none covers them and it must be solved
    (:func:`_solve_reference`). A cached file that cannot be read, or is stale, is solved again
    (it is a cache; the log says so)."""
    from .model import shipped_path
    from .reference import load_reference
    from ..files import sha256_file

    backbone_sha = sha256_file(shipped_path("backbone"))

    def misfit(ref) -> str:
        m = ref.meta
        if m.get("backbone_sha256") != backbone_sha:
            return "it was solved with other backbone weights than the shipped digits SiT"
        if abs(m["guidance_scale"] - args.guidance_scale) >= 1e-12:
            return f"it was solved at guidance {m['guidance_scale']:g}, not --guidance-scale {args.guidance_scale:g}"
        if len(ref) < args.n:
            return f"it holds {len(ref)} samples, fewer than --n {args.n}"
        return ""

    if args.reference is not None:
        try:
            ref = load_reference(args.reference)
        except (OSError, ValueError) as err:
            raise ValueError(f"--reference: {err}") from err
        why = misfit(ref)
        if why:
            raise ValueError(f"--reference {args.reference}: {why}; drop --reference (the demo then uses the shipped "
                             "set or solves one), or build a set for these settings with python -m "
                             "adapters.torch_sit.digits.reference --out DIR --n N --guidance-scale G")
        return ref.head(args.n), Path(args.reference)
    shipped = load_reference(shipped_path("reference"))
    if not misfit(shipped):
        return shipped.head(args.n), shipped_path("reference")
    cached = args.out / f"reference-g{args.guidance_scale:g}-n{args.n}.safetensors"
    if cached.is_file():
        try:
            ref = load_reference(cached)
        except (OSError, ValueError) as err:
            log(f"the cached reference set {cached} cannot be read ({err}); it is solved again and replaced")
        else:
            why = misfit(ref)
            if not why:
                return ref.head(args.n), cached
            log(f"the cached reference set {cached} does not fit ({why}); it is solved again and replaced")
    return None, cached


def _solve_reference(args: argparse.Namespace, cached: Path, log: Callable[..., None]) -> Any:
    """Solve the reference set for ``--n`` and ``--guidance-scale`` with DOP853 (a progress bar on
    a terminal) and cache it at ``cached``."""
    from .reference import build_reference, reference_seconds, save_reference

    minutes = reference_seconds(args.n, args.guidance_scale) / 60
    log(f"no reference set covers n = {args.n} at guidance {args.guidance_scale:g}: solving it once with DOP853 "
        f"(2 x {args.n} samples; about {minutes:.0f} min on one core), cached as {cached}")
    ref = build_reference(args.n, args.guidance_scale, progress=args.progress, log=log)
    cached.parent.mkdir(parents=True, exist_ok=True)
    save_reference(ref, cached)
    return ref


def run_demo(args: argparse.Namespace, log: Callable[..., None] = print) -> list[DemoRow]:
    """Sample with every solver, score, print and write the table and the figures.

    Everything that can be refused is checked first, before any network runs or anything is
    written: where the results go (:func:`.output.results_dir`), the SideNet
    (:func:`.model.load_digits_sidenet`), the reference set (:func:`_find_reference`). The
    results are written at the end, each file atomically."""
    from tqdm.auto import tqdm

    from .model import digits_sit_backbone, load_digits_classifier, load_digits_sidenet, load_digits_split
    from ..imagenet.metrics import feature_statistics
    from .output import earlier_results, figure_bytes, results_dir, write_results

    target = results_dir(args.out, RESULTS, getattr(args, "overwrite", False))
    sidenet = load_digits_sidenet(args.sidenet)
    ref, ref_path = _find_reference(args, log)
    note = earlier_results(args.out, target, RESULTS)
    if note:
        log(note)
    backbone = digits_sit_backbone()
    classifier = load_digits_classifier()
    if ref is None:
        ref = _solve_reference(args, ref_path, log)
    judge = Judge(classifier, ref.reference, ref.labels)
    held_out = load_digits_split("held-out")[0]
    context = {
        "reference_to_held_out": judge.frechet(ref.reference, feature_statistics(judge.features(held_out))),
        "noise_floor": judge.frechet(ref.reference_b),
        "reference_accuracy": judge.accuracy(ref.reference),
        "reference_file": str(ref_path),
        "reference_tolerance": f"DOP853 rtol {ref.meta['rtol']:g}",
    }
    families = contenders(sidenet, args.sidenet is None, args.shift, NFES)
    runs = plan(families)
    rows: list[DemoRow] = []
    shown: dict[tuple[str, int], torch.Tensor] = {}
    bar = tqdm(runs, desc="sampling", disable=not args.progress, file=sys.stderr, dynamic_ncols=True)
    for c, nfe in bar:
        bar.set_postfix_str(f"{c.label}, NFE {nfe}")
        x, wall, side = sample(backbone, c, nfe, ref.noise, ref.labels, args.guidance_scale)
        err, se, median = judge.error(x)
        rows.append(DemoRow(c.label, c.method, nfe, err, se, median, judge.frechet(x), judge.accuracy(x), wall, side,
                            c.trained))
        shown[(c.label, nfe)] = x[:10]
    bar.close()
    shown[("reference", 0)] = ref.reference[:10]
    text = report(rows, context, args)
    print(text)
    payload = {"settings": {"n": args.n, "guidance": args.guidance_scale, "shift": args.shift,
                            "threads": torch.get_num_threads()},
               "context": context, "rows": [dict(asdict(r), sidenet_share=r.sidenet_share) for r in rows]}
    labels = [c.label for c in families]
    write_results(target, {"demo.md": (text + "\n").encode(),
                           "results.json": (json.dumps(payload, indent=2) + "\n").encode(),
                           "samples.png": figure_bytes(plot_samples, shown, labels),
                           "error_vs_nfe.png": figure_bytes(plot_errors, rows, context, labels)})
    log(f"wrote {target / 'demo.md'}, {target / 'results.json'}, {target / 'samples.png'} and "
        f"{target / 'error_vs_nfe.png'}")
    return rows


def report(rows: Sequence[DemoRow], context: dict, args: argparse.Namespace) -> str:
    """The markdown table with its header lines."""

    body = [[r.solver, r.nfe, f"{r.trajectory_error:.4f}", f"{r.trajectory_error_median:.4f}", f"{r.frechet:.3f}", f"{100 * r.accuracy:.1f}%",
             f"{r.wall_s:.2f}", "" if r.sidenet_share is None else f"{100 * r.sidenet_share:.1f}%"] for r in rows]
    table = markdown_table(["solver", "NFE", "trajectory error", "median", "Fréchet distance", "class accuracy",
                            "wall s", "SideNet share"], body, "lrrrrrrr")
    trained = {r.solver: r.trained for r in rows if r.trained}
    training = [f"- {name}: {how}" for name, how in trained.items()]
    return "\n".join([
        f"# baquad demo: {args.n} digits per solver, guidance {args.guidance_scale:g}, grid shift {args.shift:g}, "
        f"{torch.get_num_threads()} torch thread(s)", "",
        "Trajectory error: mean (and median) |x - x_ref|_2 over samples (64 pixels in [-1, 1]) against the reference solve of "
        f"the same noise ({context['reference_tolerance']}). Fréchet distance: classifier features of the samples "
        "against those of the reference solves.", "",
        table, "",
        f"Reference set vs held-out real digits: Fréchet distance {context['reference_to_held_out']:.3f} (the model's own "
        f"distance to real data); noise floor (two reference sets from different noises): "
        f"{context['noise_floor']:.3f}; class accuracy of the reference set: {100 * context['reference_accuracy']:.1f}%.",
        *(["", "Training of the learned solvers (on the teacher set's noises, never on these; one CPU thread):",
           *training] if training else []),
    ])


def _tile(x: torch.Tensor) -> np.ndarray:
    """Ten 8 x 8 digits as one 16 x 40 image (2 rows of 5), values clipped to [-1, 1]."""
    imgs = x.detach().float().clamp(-1, 1).reshape(-1, 8, 8).numpy()
    imgs = np.concatenate([imgs, np.full((10 - len(imgs), 8, 8), -1.0)]) if len(imgs) < 10 else imgs[:10]
    return np.concatenate([np.concatenate(list(imgs[r * 5:(r + 1) * 5]), axis=1) for r in range(2)], axis=0)


def plot_samples(shown: dict, labels: Sequence[str], path: Any) -> None:
    """Rows: solvers (and the reference), columns: NFE; the same ten noises in every cell."""

    plt = pyplot()
    cols = list(NFES) + list(EULER_NFES)
    labels = list(labels) + ["reference"]
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


def plot_errors(rows: Sequence[DemoRow], context: dict, labels: Sequence[str], path: Any) -> None:
    """Trajectory error and Fréchet distance against NFE, one line per solver."""

    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, label in enumerate(labels):
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
    p.add_argument("--n", type=int, default=1000,
                   help=f"samples per solver and NFE, 2 to {MAX_SAMPLES:,} (the shipped reference covers up to 2000 "
                        "at the default guidance; other values are solved once with DOP853 and cached in --out); "
                        "edit: the number of held-out digits in the round-trip table, at least 2 (all 355 when "
                        "larger)")
    p.add_argument("--guidance-scale", type=float, default=DIGITS_GUIDANCE_SCALE,
                   help=f"classifier-free guidance scale, 1 (none) to {MAX_GUIDANCE_SCALE:g}")
    p.add_argument("--shift", type=float, default=DIGITS_GRID_SHIFT,
                   help="time shift of every solver's grid, t' = s t / (1 + (s - 1) t) on a uniform grid "
                        "(s < 1 puts more steps near the data end t = 0; 1 = uniform)")
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="output directory for demo.md, results.json, samples.png, error_vs_nfe.png (edit: edit.md, "
                        "edit.json, edits.png). When it holds an earlier run's results, they are kept and this run "
                        "writes into the first free --out/run-N (N = 2, 3, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run's results in --out instead of writing into --out/run-N")
    p.add_argument("--sidenet", type=Path, default=None,
                   help="a SideNet of your own (python -m adapters.torch_sit.train --backbone digits-sit) instead of "
                        "the shipped one; it must read the digits states (B, 1, 8, 8)")
    p.add_argument("--reference", type=Path, default=None,
                   help="sample: a reference set file (python -m adapters.torch_sit.digits.reference) instead of the "
                        "shipped one; it must cover --n and --guidance-scale")
    e = p.add_argument_group("edit")
    e.add_argument("--digits", type=int, nargs="+", default=None,
                   help="edit: indices (0 to 354) of the held-out digits in the edit grid (default the first ten)")
    e.add_argument("--nfe", type=int, default=None,
                   help=f"edit: BA-solver's NFE per direction in the edit grid, 2 to {MAX_EDIT_NFE} (default 10); the "
                        "sample demo runs the NFE of its table")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads, 1 to the machine's cores (one thread is fastest on 2 shared cores: 82 s "
                        "against 270 s with 2, see docs/digits.md)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (it is off anyway when stdout or stderr is not a terminal)")


def check_flags(args: argparse.Namespace) -> Optional[str]:
    """Why the flags cannot run (naming the flag and the fix), or None. Reads nothing but the
    held-out split's size; loads no network and writes nothing."""
    from .output import writable_dir
    from .reference import reference_seconds

    edit = args.which == "edit"
    if not 1 <= args.threads <= (os.cpu_count() or 1):
        return f"--threads: 1 to the machine's {os.cpu_count() or 1} cores, got {args.threads}"
    if not (np.isfinite(args.shift) and args.shift > 0):
        return f"--shift: must be a finite positive number (1 = uniform grid), got {args.shift}"
    g = args.guidance_scale
    if not (np.isfinite(g) and 1.0 <= g <= MAX_GUIDANCE_SCALE):
        if np.isfinite(g) and g > MAX_GUIDANCE_SCALE:
            # sample: the reference set of --n; edit: the DOP853 round trips (two solves per digit)
            hours = (reference_seconds(min(max(args.n, 2), 355), g, check=0) if edit else
                     reference_seconds(max(args.n, 2), g)) / 3600
            return (f"--guidance-scale: at most {MAX_GUIDANCE_SCALE:g}; DOP853 needs about 230 + 11 g network calls "
                    f"per solve, so the reference solves at {g:g} would take about {hours:.1f} h on one core; "
                    f"got {g:g}")
        return (f"--guidance-scale: classifier-free guidance scales are finite numbers from 1 (unguided) to "
                f"{MAX_GUIDANCE_SCALE:g}, got {g}")
    if edit:
        if args.n < 2:
            return (f"--n: the round-trip table needs at least 2 held-out digits (for its standard errors), "
                    f"got {args.n}")
        if args.reference is not None:
            return "--reference: the edit demo uses no reference set (its DOP853 rows solve their own); drop it"
        if args.nfe is not None and not 2 <= args.nfe <= MAX_EDIT_NFE:
            return (f"--nfe: BA-solver's NFE per direction in the edit grid, 2 to {MAX_EDIT_NFE} (the grid makes 11 "
                    f"solves of --nfe network calls), got {args.nfe}")
        if args.digits is not None:
            from .model import load_digits_split

            count = len(load_digits_split("held-out")[1])
            bad = [d for d in args.digits if not 0 <= d < count]
            if bad:
                return (f"--digits: indices into the {count} held-out digits, 0 to {count - 1}; got "
                        f"{', '.join(map(str, bad))}")
    else:
        if args.n < 2:
            return f"--n: need at least 2 samples (a Fréchet distance needs a covariance), got {args.n}"
        if args.n > MAX_SAMPLES:
            minutes = (args.n * _SECONDS_PER_SAMPLE + reference_seconds(args.n, g)) / 60
            return (f"--n: at most {MAX_SAMPLES:,} samples per solver and NFE; {args.n:,} would take about "
                    f"{minutes:,.0f} min on one core (sampling, about 100 s per 2,000, plus the DOP853 reference set "
                    f"it needs) and hold {args.n * 1024 / 2**30:,.1f} GiB in its reference set alone (four float32 "
                    f"tensors of 64 pixels per sample); got {args.n}")
        if args.nfe is not None:
            return (f"--nfe: only baquad demo edit takes --nfe; the sample demo runs the NFE of its table "
                    f"({', '.join(map(str, NFES))}, and Euler at {', '.join(map(str, EULER_NFES))}); drop it")
        if args.digits is not None:
            return "--digits: only baquad demo edit takes --digits (the held-out digits of its edit grid); drop it"
        if args.reference is not None and not args.reference.is_file():
            return f"--reference: {args.reference} is not a file; pass a reference set file, or drop --reference"
    if args.sidenet is not None and not args.sidenet.exists():
        return f"--sidenet: {args.sidenet} does not exist; pass a SideNet file or training directory, or drop --sidenet"
    try:
        writable_dir(args.out)
    except ValueError as err:
        return str(err)
    return None


def run(args: argparse.Namespace) -> int:
    """Check the flags (:func:`check_flags`; a refusal exits with status 2 through the parser
    when ``args.usage_error`` is set, as the ``baquad`` command sets it), set the threads, run the
    chosen demo."""
    why = check_flags(args)
    if why is not None:
        error = getattr(args, "usage_error", None)
        if error is not None:
            error(why)
        raise SystemExit(f"baquad demo: error: {why}")
    torch.set_num_threads(args.threads)
    args.progress = bool(args.progress and sys.stdout.isatty() and sys.stderr.isatty())
    return DEMOS[args.which][1](args)
