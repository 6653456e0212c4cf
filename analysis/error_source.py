"""Where along t does a learned perception's error enter? Swap it for the oracle window by window.

    python -m analysis.error_source --flow gmm-32d --sidenet runs/gmm-32d/sidenet.safetensors

The BA-solver is run on one uniform grid of ``--nfe`` backbone calls (GL4, scheme B by default)
with a perception that is the trained SideNet on some intervals and the Oracle (exact
intermediate velocities, ``baquad.perception.Oracle``) on the others. An interval belongs to the
time window that contains its midpoint; the windows are cut at ``--cuts`` (default 0.25, 0.5,
0.75). Rows:

- SideNet everywhere (the learned solver) and oracle everywhere (the ceiling);
- "SideNet only on [a, b)": the error the SideNet's window [a, b) causes on its own;
- "oracle only on [a, b)": what fixing that window alone would gain.

Each row is scored against DOP853 reference solutions from the same ``--n`` noises (mean and
median trajectory error, the fraction of mode switches; ``analysis._common.Scorer``). A window
whose "SideNet only" row is close to the ceiling is not where the error comes from. Writes
``<out>/error_source_<flow>.md`` and ``.png`` and prints the table.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import numpy as np

from baquad.perception import Perception, PerceptionWrapper

from ._common import Scorer, command, markdown_table, output_paths, pyplot, save_figure, shown


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
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default="gmm-ring2d", help="Gaussian-mixture flow (gmm-ring2d, gmm-32d)")
    p.add_argument("--sidenet", default=None, help="trained SideNet (default runs/<flow>/sidenet.safetensors)")
    p.add_argument("--nfe", type=int, default=10)
    p.add_argument("--rule", default="gauss-lobatto-4")
    p.add_argument("--final", default="single", choices=("single", "bi"), help="NFE scheme B (single) or A (bi)")
    p.add_argument("--cuts", type=float, nargs="+", default=[0.25, 0.5, 0.75], help="window boundaries in (0, 1)")
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", default="analysis/figures")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import baquad
    from adapters.torch_sit.checkpoint import load_sidenet
    from adapters.torch_sit.perception import NeuralPerception
    from baquad.flows import get_flow
    from baquad.perception import Oracle
    from baquad.reference import reference_solve
    from baquad.schedules import nfe_grid

    cuts = sorted(args.cuts)
    if not all(0.0 < c < 1.0 for c in cuts):
        raise SystemExit(f"--cuts: every cut must lie in (0, 1), got {args.cuts}")
    torch.set_num_threads(2)
    flow = get_flow(args.flow)
    sidenet_path = args.sidenet or f"runs/{args.flow}/sidenet.safetensors"
    side = NeuralPerception(load_sidenet(sidenet_path))
    oracle = Oracle(flow, rtol=1e-9, atol=1e-9)
    x0 = np.random.default_rng(args.seed).standard_normal((args.n, flow.dim))
    score = Scorer(flow, reference_solve(flow, x0, [1.0, 0.0], rtol=1e-10, atol=1e-10)[-1])
    ts = nfe_grid("ba-solver", args.nfe, final=args.final)
    edges = [0.0, *cuts, 1.0 + 1e-12]

    def run(perception: Perception) -> Any:
        res = baquad.solve(flow, torch.from_numpy(x0), ts, rule=args.rule, perception=perception, final=args.final)
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

    text = "\n".join([
        f"# Where the learned perception's error enters (`{args.flow}`)", "",
        f"Command: `{command('analysis.error_source', argv)}`", "",
        f"BA-solver {args.rule}, NFE {args.nfe} (scheme {'B' if args.final == 'single' else 'A'}), uniform grid, "
        f"{args.n} noises (seed {args.seed}), SideNet `{sidenet_path}`. An interval uses the oracle or the SideNet "
        "by the window its midpoint lies in. Errors |x - x_ref| at t = 0 against DOP853 from the same noise.", "",
        markdown_table(["perception", "mean error", "median error", "mode switches"],
                       [[name, f"{s.err:.4g} +- {s.se:.2g}", f"{s.median:.4g}", f"{s.switched:.4f}"] for name, s in rows],
                       "lrrr"), ""])
    print(text)
    png, md = output_paths(args.out, f"error_source_{args.flow}")
    md.write_text(text)
    plot(rows, windows, label, args, png)
    print(f"wrote {shown(md)} and {shown(png)}")
    return 0


def plot(rows, windows, label, args, path) -> None:
    plt = pyplot()
    by = dict(rows)
    names = [label(a, b) for a, b in windows]
    x = np.arange(len(windows))
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in zip(axes, ("err", "median", "switched"), ("mean error", "median error", "mode switches")):
        only = [getattr(by[f"SideNet only on t in {n}"], key) for n in names]
        fixed = [getattr(by[f"oracle only on t in {n}"], key) for n in names]
        ax.bar(x - 0.2, only, 0.4, label="SideNet only on this window")
        ax.bar(x + 0.2, fixed, 0.4, label="oracle only on this window")
        ax.axhline(getattr(by["SideNet everywhere"], key), color="C3", ls="--", label="SideNet everywhere")
        ax.axhline(getattr(by["oracle everywhere"], key), color="k", ls=":", label="oracle everywhere")
        ax.set_xticks(x, names)
        ax.set_xlabel("window of t")
        ax.set_title(f"{args.flow}, NFE {args.nfe}: {title}")
    axes[0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
