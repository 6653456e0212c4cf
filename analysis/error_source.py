"""Where along t does a learned perception's error enter? Swap it for the oracle window by window.

    python -m analysis.error_source --flow gmm-32d --sidenet runs/gmm-32d/sidenet.safetensors
    python -m analysis.error_source --backbone digits-sit --n 200

``--flow`` takes an analytic Gaussian mixture; ``--backbone`` any registered backbone
(``adapters.torch_sit.backbones``, e.g. the digits SiT), whose oracle is a tight DOP853 solve of
its own field (``Oracle(field, rtol=--oracle-rtol)``) from the anchor to each probe time, with the
network in float64. A class-conditional backbone gets the labels ``i mod num_classes`` and the
guidance scale ``--guidance-scale`` (default: the backbone's documented default), the same for the
backbone, the SideNet and the oracle. Without ``--sidenet``, ``digits-sit`` uses its shipped
SideNet and other backbones ``runs/<name>/sidenet.safetensors``.

The BA-solver is run on one uniform grid of ``--nfe`` backbone calls (GL4, scheme B by default)
with a perception that is the trained SideNet on some intervals and the Oracle (exact
intermediate velocities, ``baquad.perception.Oracle``) on the others. An interval belongs to the
time window that contains its midpoint; the windows are cut at ``--cuts`` (default 0.25, 0.5,
0.75). Rows:

- SideNet everywhere (the learned solver) and oracle everywhere (the ceiling);
- "SideNet only on [a, b)": the error the SideNet's window [a, b) causes on its own;
- "oracle only on [a, b)": what fixing that window alone would gain.

Each row is scored against DOP853 reference solutions from the same ``--n`` noises (mean and
median trajectory error, and for the mixtures the fraction of mode switches;
``analysis._common.Scorer``). A window
whose "SideNet only" row is close to the ceiling is not where the error comes from. Writes
``<out>/error_source_<flow>.md`` and ``.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from baquad.perception import Perception, PerceptionWrapper

from ._common import (ArgumentParser, Score, Scorer, command, finite_float, flow_with_density,
                      markdown_table, non_negative_int, open_unit_time, output_paths, positive_float, positive_int,
                      pyplot, resolve_out, sample_count, save_figure, shown)


class WindowedPerception(PerceptionWrapper):
    """``inside`` on the intervals of ``ts`` whose midpoint lies in ``[lo, hi)``, ``outside`` on
    the rest.

    A probe is placed on its interval by the point ``t + d / 2``, ``d`` its offset of largest
    magnitude: forward probes look into the interval from its start, backward probes from its
    end, so that point is strictly inside the interval the probe serves."""

    def __init__(self, inside: Perception, outside: Perception, ts: Sequence[float], lo: float, hi: float):
        super().__init__(inside, outside)
        self.inside, self.outside = inside, outside
        self.ts = np.asarray(ts, dtype=np.float64)
        self.lo, self.hi = float(lo), float(hi)

    def in_window(self, t: float, offsets: Sequence[float]) -> bool:
        d = max(offsets, key=abs)
        if d == 0:
            raise ValueError("WindowedPerception: a probe with only zero offsets has no interval")
        p = float(t) + 0.5 * float(d)
        lo_t, hi_t = np.minimum(self.ts[:-1], self.ts[1:]), np.maximum(self.ts[:-1], self.ts[1:])
        hits = np.flatnonzero((lo_t < p) & (p < hi_t))
        if len(hits) != 1:
            raise ValueError(f"WindowedPerception: probe at t={t} with offset {d} is in no interval of ts")
        mid = 0.5 * (self.ts[hits[0]] + self.ts[hits[0] + 1])
        return self.lo <= mid < self.hi

    def __call__(self, x, v, t, offsets, history=()):
        chosen = self.inside if self.in_window(t, offsets) else self.outside
        return chosen(x, v, t, offsets, history)

    def __repr__(self) -> str:
        return f"WindowedPerception({self.inside!r} on [{self.lo}, {self.hi}), else {self.outside!r})"


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default=None, type=flow_with_density,
                   help="Gaussian-mixture flow (gmm-ring2d, gmm-32d, gmm-64d); gmm-ring2d when --backbone is not given")
    p.add_argument("--backbone", default=None, help="a registered backbone instead of a mixture (e.g. digits-sit)")
    p.add_argument("--guidance-scale", type=finite_float, default=None, help="guidance scale of a class-conditional backbone "
                   "(default: its documented default)")
    p.add_argument("--oracle-rtol", type=positive_float, default=1e-7, help="DOP853 rtol = atol of a backbone's oracle; "
                   "its reference solutions use a tenth of it")
    p.add_argument("--sidenet", default=None, help="trained SideNet (default runs/<flow>/sidenet.safetensors)")
    p.add_argument("--nfe", type=positive_int, default=10)
    p.add_argument("--shift", type=positive_float, default=1.0, help="time shift of the uniform grid, t' = s t / (1 + (s - 1) t)")
    p.add_argument("--rule", default="gauss-lobatto-4")
    p.add_argument("--final", default="single", choices=("single", "bi"), help="NFE scheme B (single) or A (bi)")
    p.add_argument("--cuts", type=open_unit_time, nargs="+", default=[0.25, 0.5, 0.75], help="window boundaries in (0, 1)")
    p.add_argument("--n", type=sample_count, default=1024)
    p.add_argument("--seed", type=non_negative_int, default=1234)
    p.add_argument("--out", default=None, help="output directory (default analysis/figures)")
    args = p.parse_args(argv)
    resolve_out(args)
    if args.flow is not None and args.backbone is not None:
        p.error("--flow and --backbone: give one of them")
    if args.sidenet is not None and not Path(args.sidenet).is_file():
        p.error(f"argument --sidenet: {args.sidenet} does not exist")
    return args


class Problem(NamedTuple):
    """What the windows are run on: the field, the noises, the scorer, the two perceptions."""

    name: str
    field: Any
    x0: Any
    score: Any
    side: Perception
    oracle: Perception
    sidenet_path: str
    note: str


def mixture_problem(args: argparse.Namespace) -> Problem:
    """An analytic mixture: its exact field, DOP853 at 1e-9 as the oracle, 1e-10 as the reference."""
    import torch

    from adapters.torch_sit.sidenet.checkpoint import load_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from baquad.flows import get_flow
    from baquad.perception import Oracle
    from baquad.reference import reference_solve

    name = args.flow or "gmm-ring2d"
    flow = get_flow(name)
    sidenet_path = args.sidenet or f"runs/{name}/sidenet.safetensors"
    x0 = np.random.default_rng(args.seed).standard_normal((args.n, flow.dim))
    score = Scorer(flow, reference_solve(flow, x0, [1.0, 0.0], rtol=1e-10, atol=1e-10)[-1])
    return Problem(name, flow, torch.from_numpy(x0), score, NeuralPerception(load_sidenet(sidenet_path)),
                   Oracle(flow, rtol=1e-9, atol=1e-9), sidenet_path, "")


class TrajectoryScorer:
    """Trajectory errors |x - x_ref|_2 (per sample, over all state dimensions) against reference
    solutions; no likelihood or modes (the NLL and mode-switch fields are NaN)."""

    def __init__(self, ref: Any):
        self.ref = ref.detach().double().reshape(ref.shape[0], -1).cpu().numpy()

    def __call__(self, x: Any) -> Score:
        xn = x.detach().double().reshape(x.shape[0], -1).cpu().numpy()
        err = np.linalg.norm(xn - self.ref, axis=1)
        return Score(err=float(err.mean()), nll=float("nan"), median=float(np.median(err)),
                     se=float(err.std(ddof=1) / np.sqrt(len(err))), switched=float("nan"))


def backbone_problem(args: argparse.Namespace) -> Problem:
    """A registered backbone in float64: its guided field, DOP853 at ``--oracle-rtol`` as the
    oracle and at a tenth of it as the reference, the SideNet given the same labels and scale."""
    import torch

    from adapters.torch_sit.backbones import get_backbone
    from adapters.torch_sit.sidenet.checkpoint import load_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from baquad.perception import Oracle
    from baquad.reference import reference_solve

    bb = get_backbone(args.backbone)
    if bb.module is not None:
        bb.module.double()
    cond: dict = {}
    if bb.num_classes:
        cond["labels"] = torch.arange(args.n) % bb.num_classes
        guidance = args.guidance_scale if args.guidance_scale is not None else bb.extra.get("default_guidance_scale")
        if guidance is not None:
            cond["guidance_scale"] = float(guidance)
    if args.sidenet is None and args.backbone == "digits-sit":
        from adapters.torch_sit.digits.model import shipped_path
        from adapters.torch_sit.digits.shipped import verified

        sidenet_path = shown(verified(shipped_path("sidenet")))
    else:
        sidenet_path = args.sidenet or f"runs/{args.backbone}/sidenet.safetensors"
    field = bb.vfield(**cond)
    gen = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn((args.n, *bb.state_shape), generator=gen, dtype=torch.float64)
    rtol = args.oracle_rtol
    with torch.no_grad():
        ref = reference_solve(field, x0, [1.0, 0.0], rtol=rtol / 10, atol=rtol / 10)[-1]
    side = NeuralPerception(load_sidenet(sidenet_path), labels=cond.get("labels"),
                            guidance_scale=cond.get("guidance_scale"))
    note = "; ".join(f"{k} {v if k != 'labels' else 'i mod ' + str(bb.num_classes)}" for k, v in cond.items())
    return Problem(args.backbone, field, x0, TrajectoryScorer(ref), side, Oracle(field, rtol=rtol, atol=rtol),
                   sidenet_path, f"Oracle: DOP853 rtol {rtol:g} of the float64 field; reference rtol {rtol / 10:g}"
                   + (f"; {note}" if note else "") + ".")


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import baquad
    from baquad.schedules import nfe_grid

    cuts = sorted(args.cuts)
    if not all(0.0 < c < 1.0 for c in cuts):
        raise SystemExit(f"--cuts: every cut must lie in (0, 1), got {args.cuts}")
    if args.flow and args.backbone:
        raise SystemExit("--flow and --backbone: give one (a mixture flow or a registered backbone)")
    torch.set_num_threads(2)
    prob = backbone_problem(args) if args.backbone else mixture_problem(args)
    side, oracle, score, sidenet_path = prob.side, prob.oracle, prob.score, prob.sidenet_path
    ts = nfe_grid("ba-solver", args.nfe, "uniform", args.shift, final=args.final)
    edges = [0.0, *cuts, 1.0 + 1e-12]

    def run(perception: Perception) -> Any:
        with torch.no_grad():
            res = baquad.solve(prob.field, prob.x0, ts, rule=args.rule, perception=perception, final=args.final)
        assert res.nfe == args.nfe, (res.nfe, args.nfe)
        return score(res.x)

    rows = [("SideNet everywhere", run(side))]
    windows = [(a, b) for a, b in zip(edges[:-1], edges[1:])]
    label = lambda a, b: f"[{a:g}, {min(b, 1.0):g}{']' if b > 1 else ')'}"
    for a, b in windows:
        rows.append((f"SideNet only on t in {label(a, b)}", run(WindowedPerception(side, oracle, ts, a, b))))
    for a, b in windows:
        rows.append((f"oracle only on t in {label(a, b)}", run(WindowedPerception(oracle, side, ts, a, b))))
    rows.append(("oracle everywhere", run(oracle)))

    modes = not args.backbone
    table = markdown_table(["perception", "mean error", "median error"] + (["mode switches"] if modes else []),
                           [[name, f"{s.err:.4g} +- {s.se:.2g}", f"{s.median:.4g}"]
                            + ([f"{s.switched:.4f}"] if modes else []) for name, s in rows], "lrrr" if modes else "lrr")
    text = "\n".join([
        f"# Where the learned perception's error enters (`{prob.name}`)", "",
        f"Command: `{command('analysis.error_source', argv)}`", "",
        f"BA-solver {args.rule}, NFE {args.nfe} (scheme {'B' if args.final == 'single' else 'A'}), "
        f"{'uniform grid' if args.shift == 1 else f'uniform grid shifted by {args.shift:g}'} "
        f"({', '.join(f'{t:.3g}' for t in ts)}), "
        f"{args.n} noises (seed {args.seed}), SideNet `{sidenet_path}`. An interval uses the oracle or the SideNet "
        "by the window its midpoint lies in. Errors |x - x_ref| at t = 0 against DOP853 from the same noise."
        + (f" {prob.note}" if prob.note else ""), "",
        table, ""])
    print(text)
    png, md = output_paths(args.out, f"error_source_{prob.name}")
    md.write_text(text)
    plot(rows, windows, label, args, png, prob.name, modes)
    print(f"wrote {shown(md)} and {shown(png)}")
    return 0


def plot(rows, windows, label, args, path, name, modes=True) -> None:
    plt = pyplot()
    by = dict(rows)
    names = [label(a, b) for a, b in windows]
    x = np.arange(len(windows))
    panels = (("err", "mean error"), ("median", "median error")) + ((("switched", "mode switches"),) if modes else ())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.7 * len(panels), 4))
    for ax, (key, title) in zip(axes, panels):
        only = [getattr(by[f"SideNet only on t in {n}"], key) for n in names]
        fixed = [getattr(by[f"oracle only on t in {n}"], key) for n in names]
        ax.bar(x - 0.2, only, 0.4, label="SideNet only on this window")
        ax.bar(x + 0.2, fixed, 0.4, label="oracle only on this window")
        ax.axhline(getattr(by["SideNet everywhere"], key), color="C3", ls="--", label="SideNet everywhere")
        ax.axhline(getattr(by["oracle everywhere"], key), color="k", ls=":", label="oracle everywhere")
        ax.set_xticks(x, names)
        ax.set_xlabel("window of t")
        ax.set_title(f"{name}, NFE {args.nfe}: {title}")
    axes[0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
