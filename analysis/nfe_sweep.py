"""Accuracy against NFE on a Gaussian-mixture flow: learned BA-solver vs every baseline.

    python -m analysis.nfe_sweep --flow gmm-ring2d            # trains a SideNet first (< 10 min)
    python -m analysis.nfe_sweep --flow gmm-32d --sidenet runs/gmm-32d/sidenet.safetensors

For each NFE budget (3, 4, 5, 7, 10, 15 by default) every method gets exactly that many counted
field calls on the same schedule (``baquad.schedules.nfe_grid``) from the same noises, and is
scored against exact truth:

- trajectory error: mean over samples of |x_method(0) - x_ref(0)|_2, where x_ref is the DOP853
  reference solution (rtol = atol = 1e-10) from the same noise; also its median, because the mean
  is heavy-tailed: a trajectory that ends in another mixture component than its reference has an
  error of the order of the distance between modes, and the few such samples a seed draws move
  the mean (the bars print its standard error);
- mode switches: the fraction of samples whose most probable component at t = 0 (the flow's
  posterior) differs from the reference solution's;
- NLL: mean negative log-likelihood of the samples under the exact mixture (the reference
  solution's NLL is printed for comparison: it is the floor a perfect solver reaches).

Methods: BA-solver with the learned SideNet (Gauss-Lobatto 2, 3, 4; NFE scheme A = every interval
bi-anchor, scheme B = last interval single-anchor; and all single-anchor), BA-solver with the
Oracle perception (the ceiling: exact intermediate velocities), BA-solver with the training-free
polynomial perception (``solve``'s default) and with anchor-only (g = 0), Euler, Heun (EDM variant), DPM-Solver++ 2M/3M and
UniPC (bh2, order 2 and 3); plus Euler at 20, 50, 100, 200 NFE. It also reports the SideNet's
training wall time and backbone calls, and the SideNet's share of the BA-solver's sampling time.

Writes ``<out>/nfe_sweep_<flow>.md`` (tables) and ``.png`` (error and NLL against NFE) and
prints both tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ._common import Score, Scorer, command, markdown_table, output_paths, pyplot, save_figure, shown

DEFAULT_NFES = (3, 4, 5, 7, 10, 15)
EULER_NFES = (20, 50, 100, 200)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow", default="gmm-ring2d", help="analytic flow (gmm-ring2d, gmm-32d)")
    p.add_argument("--sidenet", default=None, help="a trained SideNet (.safetensors); default: train one")
    p.add_argument("--train-out", default=None, help="where to train the SideNet (default runs/<flow>)")
    p.add_argument("--iters", type=int, default=None, help="SideNet training iterations (default per flow)")
    p.add_argument("--batch", type=int, default=None, help="SideNet training batch size")
    p.add_argument("--n", type=int, default=1024, help="number of noise samples scored")
    p.add_argument("--seed", type=int, default=1234, help="seed of the scored noises")
    p.add_argument("--nfe", type=int, nargs="+", default=list(DEFAULT_NFES))
    p.add_argument("--schedule", default="uniform", help="time schedule for every method (uniform, sd3, logsnr)")
    p.add_argument("--shift", type=float, default=1.0, help="SD3 shift of the schedule (1 = none)")
    p.add_argument("--no-oracle", action="store_true", help="skip the (slow) oracle ceiling rows")
    p.add_argument("--out", default="analysis/figures", help="output directory")
    p.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------


def train_or_load(args, flow_name: str):
    """The SideNet (module) and its training summary (dict, possibly empty)."""
    from adapters.torch_sit.checkpoint import load_sidenet

    if args.sidenet:
        path = Path(args.sidenet)
        summary_path = path.with_name("summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return load_sidenet(path), summary, path
    from adapters.torch_sit.train import recipe_for, train

    cfg, sidenet_config = recipe_for(flow_name, iters=args.iters, batch_size=args.batch, quick=args.quick)
    out = Path(args.train_out or f"runs/{flow_name}")
    print(f"training a SideNet for {flow_name} into {out} ({cfg.iters} iterations, batch {cfg.batch_size}, "
          f"K = {cfg.chain_length}); interrupt and rerun to resume", flush=True)
    result = train(cfg, backbone=flow_name, out=out, sidenet_config=sidenet_config, ckpt_every=max(cfg.iters // 10, 1))
    # score the weights the run wrote (EMA when kept), the same ones ``--sidenet`` loads later;
    # ``result.sidenet`` holds the raw final weights instead
    path = out / "sidenet.safetensors"
    return load_sidenet(path), result.summary, path


class Timed:
    """Wraps a callable and accumulates its wall time."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.seconds = 0.0

    def __call__(self, *a: Any, **k: Any):
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t0


def _wrapper_base():
    from baquad.perception import PerceptionWrapper

    return PerceptionWrapper


class TimedPerception(_wrapper_base()):
    """Wraps a perception and accumulates its wall time (declarations forwarded by the base)."""

    def __init__(self, inner):
        super().__init__(inner)
        self.seconds = 0.0

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        try:
            return self.inner(*a, **k)
        finally:
            self.seconds += time.perf_counter() - t0


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import baquad
    from baquad.flows import get_flow
    from baquad.perception import AnchorOnly, Oracle, Perception
    from baquad.reference import reference_solve
    from baquad.schedules import nfe_grid
    from adapters.torch_sit.perception import NeuralPerception
    from adapters.torch_sit.sidenet import count_parameters

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    flow = get_flow(args.flow)
    if args.quick:
        args.n, args.nfe = min(args.n, 64), [n for n in args.nfe if n <= 5] or [4]
    sidenet, summary, sidenet_path = train_or_load(args, args.flow)
    sidenet.eval()

    rng = np.random.default_rng(args.seed)
    x0_np = rng.standard_normal((args.n, flow.dim))
    x0 = torch.from_numpy(x0_np)  # float64 state: the solver error, not float32 round-off, is measured
    t0 = time.perf_counter()
    ref = reference_solve(flow, x0_np, [1.0, 0.0], rtol=1e-10, atol=1e-10)[-1]
    ref_seconds = time.perf_counter() - t0
    ref_nll = -float(np.mean(flow.log_prob(ref)))
    data_nll = -float(np.mean(flow.log_prob(flow.sample_data(4096, np.random.default_rng(args.seed + 1)))))

    score = Scorer(flow, ref)

    neural = NeuralPerception(sidenet)
    oracle = Oracle(flow, rtol=1e-9, atol=1e-9)
    sched = dict(schedule=args.schedule, shift=args.shift)

    def ba(perception: Perception, rule: str, final: str = "single", anchors: str = "bi"):
        def run(nfe: int):
            ts = nfe_grid("ba-solver", nfe, final=final, anchors=anchors, **sched)
            return baquad.solve(flow, x0, ts, rule=rule, perception=perception, final=final, anchors=anchors)

        return run

    def base(method: str, **opts):
        def run(nfe: int):
            ts = nfe_grid(method, nfe, **sched, **opts)
            return baquad.solve(flow, x0, ts, method=method, **opts)

        return run

    methods: dict[str, Callable[[int], Any]] = {}
    for n in (4, 3, 2):
        for final, tag in (("bi", "A"), ("single", "B")):
            methods[f"BA SideNet GL{n} {tag}"] = ba(neural, f"gauss-lobatto-{n}", final)
    methods["BA SideNet GL4 single-anchor"] = ba(neural, "gauss-lobatto-4", anchors="single")
    if not args.no_oracle:
        methods["BA oracle GL4 A"] = ba(oracle, "gauss-lobatto-4", "bi")
        methods["BA oracle GL4 B"] = ba(oracle, "gauss-lobatto-4", "single")
    methods["BA polynomial GL4 B (no training)"] = ba(None, "gauss-lobatto-4", "single")
    methods["BA anchor-only GL4 B (no training)"] = ba(AnchorOnly(), "gauss-lobatto-4", "single")
    methods["Euler"] = base("euler")
    methods["Heun (EDM, last step Euler)"] = base("heun")
    methods["DPM-Solver++ 2M"] = base("dpm++", order=2)
    methods["DPM-Solver++ 3M"] = base("dpm++", order=3)
    methods["UniPC-2 bh2"] = base("unipc", order=2)
    methods["UniPC-3 bh2"] = base("unipc", order=3)

    results: dict[str, dict[int, Score]] = {}
    from tqdm import tqdm

    jobs = [(name, nfe) for name in methods for nfe in args.nfe]
    for name, nfe in tqdm(jobs, desc="solves", disable=None):
        try:
            res = methods[name](nfe)
        except ValueError as err:  # e.g. Heun cannot spend an even budget exactly
            if "nfe" not in str(err):
                raise
            continue
        assert res.nfe == nfe, (name, nfe, res.nfe)
        results.setdefault(name, {})[nfe] = score(res.x)
    euler_long = {nfe: score(base("euler")(nfe).x) for nfe in EULER_NFES}

    # the SideNet's share of sampling time: GL4 scheme B at 10 NFE (or the largest budget run)
    nfe_t = 10 if 10 in args.nfe else max(args.nfe)
    timed_field, timed_p = Timed(flow), TimedPerception(neural)
    t0 = time.perf_counter()
    baquad.solve(timed_field, x0, nfe_grid("ba-solver", nfe_t, **sched), perception=timed_p)
    total = time.perf_counter() - t0

    # ------------------------------------------------------------------------- report
    lines = [f"# NFE sweep on `{args.flow}`", ""]
    lines.append(f"Command: `{command('analysis.nfe_sweep', argv)}`")
    lines.append("")
    lines.append(
        f"{args.n} noises (seed {args.seed}), schedule `{args.schedule}` (shift {args.shift}), every method "
        "spending exactly the NFE of its column (counted). Trajectory error: |x - x_ref| at t = 0 "
        f"against DOP853 (rtol 1e-10) from the same noise. NLL floor: reference solutions {ref_nll:.3f}, "
        f"exact data samples {data_nll:.3f}."
    )
    lines.append("")
    lines += table(results, args.nfe, "err", "Trajectory error, mean (lower is better)")
    lines += table(results, args.nfe, "median", "Trajectory error, median (insensitive to the few mode switches)")
    lines += table(results, args.nfe, "switched", "Mode switches: fraction of samples ending in another component than their reference")
    lines += table(results, args.nfe, "nll", f"NLL under the exact mixture (closest to the reference solutions' {ref_nll:.3f} is best; "
                   "below it means samples contracted toward the modes)")
    lines.append("Euler at large NFE:")
    lines.append("")
    lines.append(markdown_table(["NFE", *map(str, EULER_NFES)],
                                [[label, *(f"{getattr(euler_long[n], key):.4g}" for n in EULER_NFES)]
                                 for label, key in (("trajectory error, mean", "err"), ("trajectory error, median", "median"),
                                                    ("mode switches", "switched"), ("NLL", "nll"))]))
    lines.append("")
    lines += bars(results, euler_long, args.nfe)
    side_params = count_parameters(sidenet)
    lines.append("SideNet and cost:")
    lines.append("")
    lines.append(f"- SideNet parameters: {side_params:,} (backbone: analytic flow, no parameters); file `{sidenet_path}`")
    if summary:
        c = summary.get("config", {})
        lines.append(
            f"- training: {summary.get('iterations')} iterations, wall time {summary.get('wall_time_s', float('nan')):.0f} s, "
            f"{summary.get('backbone_calls_all_processes')} backbone calls, batch {c.get('batch_size')}, chain length "
            f"{c.get('chain_length')}, intervals {c.get('intervals')}; recipe in `{Path(str(sidenet_path)).with_name('summary.json')}`"
        )
    lines.append(
        f"- sampling at {nfe_t} NFE ({args.n} states): total {total * 1e3:.1f} ms, backbone {timed_field.seconds * 1e3:.1f} ms, "
        f"SideNet {timed_p.seconds * 1e3:.1f} ms ({100 * timed_p.seconds / total:.0f}% of the solve; the analytic "
        "backbone is far cheaper than a real network, so this share is an upper bound)"
    )
    lines.append(f"- reference DOP853 solve of the same noises: {ref_seconds:.1f} s")
    text = "\n".join(lines) + "\n"
    print(text)
    png, md = output_paths(args.out, f"nfe_sweep_{args.flow}")
    md.write_text(text)
    plot(results, euler_long, args, png, ref_nll)
    print(f"wrote {shown(md)} and {shown(png)}")
    return 0


def table(results, nfes, key: str, title: str) -> list[str]:
    rows = [[name, *(f"{getattr(row[n], key):.4g}" if n in row else "-" for n in nfes)] for name, row in results.items()]
    return [f"{title}:", "", markdown_table(["method", *(f"NFE {n}" for n in nfes)], rows), ""]


def bars(results, euler_long, nfes) -> list[str]:
    """The issue's two bars, on the default configuration (GL4, scheme B) and on the best SideNet
    row, judged on the mean trajectory error (the issue's metric; its standard error is printed
    because a few mode switches move it) and again on the median."""
    out = ["The bars (trajectory error; mean +- its standard error, then the median):", ""]
    side = {k: v for k, v in results.items() if k.startswith("BA SideNet")}
    default = "BA SideNet GL4 B"

    def verdict(value: float, bar: float, strict: bool) -> str:
        ok = value < bar if strict else value <= bar
        return "met" if ok else f"NOT met, {value / bar:.1f}x short"

    e100 = euler_long[100]
    for key in ("err", "median"):
        label = "mean" if key == "err" else "median"
        pm = (lambda s: f"{s.err:.4g} +- {s.se:.2g}") if key == "err" else (lambda s: f"{s.median:.4g}")
        if 10 in nfes:
            d10 = results[default][10]
            best = min(side, key=lambda k: getattr(side[k][10], key) if 10 in side[k] else np.inf)
            out.append(f"- {label}: BA at 10 NFE <= Euler at 100 NFE ({pm(e100)}): default {default} {pm(d10)} -> "
                       f"{verdict(getattr(d10, key), getattr(e100, key), False)}; best SideNet row ({best}) "
                       f"{pm(side[best][10])} -> {verdict(getattr(side[best][10], key), getattr(e100, key), False)}")
        if 5 in nfes and 10 in nfes:
            flow_rows = {k: v for k, v in results.items() if k.startswith(("DPM", "UniPC")) and 10 in v}
            fb = min(flow_rows, key=lambda k: getattr(flow_rows[k][10], key))
            bar = getattr(flow_rows[fb][10], key)
            d5 = results[default][5]
            best = min(side, key=lambda k: getattr(side[k][5], key) if 5 in side[k] else np.inf)
            out.append(f"- {label}: BA at 5 NFE < best of DPM-Solver++/UniPC at 10 NFE ({fb}: {pm(flow_rows[fb][10])}): "
                       f"default {pm(d5)} -> {verdict(getattr(d5, key), bar, True)}; best SideNet row ({best}) "
                       f"{pm(side[best][5])} -> {verdict(getattr(side[best][5], key), bar, True)}")
    out.append("")
    return out


def plot(results, euler_long, args, path: Path, ref_nll: float) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    keep = [k for k in results if not k.startswith("BA SideNet") or k in ("BA SideNet GL4 A", "BA SideNet GL4 B", "BA SideNet GL2 A")]
    # NLL: the distance to the reference solutions' NLL (a solver that contracts its samples
    # toward the modes gets an NLL *below* the exact one, so the raw value is not "lower is better")
    value = (lambda row, n: row[n].err, lambda row, n: abs(row[n].nll - ref_nll))
    titles = ("trajectory error |x - x_ref|", "|NLL - NLL(reference solutions)|")
    for k_metric, ax in enumerate(axes):
        for name in keep:
            row = results[name]
            xs = sorted(row)
            style = "-o" if name.startswith("BA SideNet") else ("--s" if name.startswith("BA") else ":x")
            ax.plot(xs, [value[k_metric](row, n) for n in xs], style, label=name, ms=4)
        ax.axhline(value[k_metric](euler_long, 100), color="k", lw=0.8, ls="-.", label="Euler, 100 NFE")
        ax.set_xlabel("NFE")
        ax.set_title(f"{args.flow}: {titles[k_metric]}")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    save_figure(fig, path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
