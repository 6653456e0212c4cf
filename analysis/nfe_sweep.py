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

Grids (``--grids``): besides the tables on one grid (``--schedule``/``--shift``, uniform by
default), the solvers whose best grid matters (the learned and training-free BA rows, DPM-Solver++
2M/3M, UniPC-2/3) are run on every grid of the comparison set: uniform; SD3 shift
t' = s t / (1 + (s - 1) t) with s in {0.3, 0.5, 0.7, 1.5, 2, 3}; logSNR-uniform; EDM rho = 7.
"Its best grid" is the best of this set at that NFE. The default learned solver (GL4, scheme B)
runs on ITS default grid: the one saved with the SideNet (``set_sidenet_grid``), else uniform.
Euler at 100 NFE, the headline's anchor, stays on the uniform grid.

The bars compare on the same noises: "no worse" means the learned error is at most the other's
plus one standard error of the paired difference (of means; of medians by a paired bootstrap).

Writes ``<out>/nfe_sweep_<flow>.md`` (tables) and ``.png`` (error and NLL against NFE) and
prints both tables. ``--quick`` (a smoke run) writes under ``runs/quick/`` and trains into
``runs/quick/<flow>``, never into the committed figures or the main job's ``runs/<flow>``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ._common import (ArgumentParser, Score, command, flow_with_density, load_flow_sidenet, markdown_table,
                      non_negative_int, output_paths, paired, positive_float, positive_int, pyplot, resolve_out,
                      sample_count, save_figure, set_threads, setup_problem, shown)

DEFAULT_NFES = (3, 4, 5, 7, 10, 15)
EULER_NFES = (20, 50, 100, 200)
#: the comparison set of grids (name -> grid spec, ``baquad.schedules.check_grid_spec``)
GRIDS = {
    "uniform": {"schedule": "uniform", "shift": 1.0},
    **{f"sd3-{s:g}": {"schedule": "uniform", "shift": s} for s in (0.3, 0.5, 0.7, 1.5, 2.0, 3.0)},
    "logsnr": {"schedule": "logsnr", "shift": 1.0},
    "edm": {"schedule": "edm", "shift": 1.0},
}
#: rows searched over the grids (name -> (method, options, perception key))
SEARCHED = ("BA SideNet GL4 B", "BA SideNet GL4 A", "BA polynomial GL4 B", "BA polynomial GL4 A",
            "BA anchor-only GL4 B", "BA anchor-only GL4 A", "DPM-Solver++ 2M", "DPM-Solver++ 3M", "UniPC-2 bh2",
            "UniPC-3 bh2")
TRAINING_FREE = ("BA polynomial GL4 B", "BA polynomial GL4 A", "BA anchor-only GL4 B", "BA anchor-only GL4 A")
MULTISTEP = ("DPM-Solver++ 2M", "DPM-Solver++ 3M", "UniPC-2 bh2", "UniPC-3 bh2")
DEFAULT = "BA SideNet GL4 B"
#: the end-to-end trained BA-solver (``--learned``), the default when given
LEARNED = "BA learned (end to end)"
#: the learned rivals the bars compare the default with, at these NFE
RIVALS_NFES = (5, 7, 10)


def grid_names(text: str) -> list[str]:
    """argparse ``type=`` of ``--grids``: comma-separated names of :data:`GRIDS`, or ``none``."""
    if text.strip().lower() == "none":
        return []
    names = [g.strip() for g in text.split(",") if g.strip()]
    bad = [g for g in names if g not in GRIDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown grid(s) {bad or text!r}; valid: {', '.join(GRIDS)} (or none)")
    return names


def schedule_name(text: str) -> str:
    from baquad.schedules import SCHEDULES

    if text not in SCHEDULES:
        raise argparse.ArgumentTypeError(f"unknown schedule {text!r}; valid: {', '.join(SCHEDULES)}")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--flow", default="gmm-ring2d", type=flow_with_density, help="Gaussian-mixture flow (gmm-ring2d, gmm-32d, gmm-64d)")
    p.add_argument("--sidenet", default=None, help="a trained SideNet (.safetensors); default: train one")
    p.add_argument("--learned", default=None, help="a SideNet trained end to end (python -m adapters.torch_sit."
                   "learned.ba): the default learned solver when given, on its learned grids and steps")
    p.add_argument("--bns", nargs="+", default=[], help="BNS coefficient files (bns.npz, one per NFE)")
    p.add_argument("--ld3", nargs="+", default=[], help="LD3 grid files (grid.json; one per NFE, any methods)")
    p.add_argument("--train-out", default=None, help="where to train the SideNet (default runs/<flow>; runs/quick/<flow> with --quick)")
    p.add_argument("--iters", type=positive_int, default=None, help="SideNet training iterations (default per flow)")
    p.add_argument("--batch", type=positive_int, default=None, help="SideNet training batch size")
    p.add_argument("--n", type=sample_count, default=1024, help="number of noise samples scored (>= 2)")
    p.add_argument("--seed", type=non_negative_int, default=1234, help="seed of the scored noises")
    p.add_argument("--nfe", type=positive_int, nargs="+", default=list(DEFAULT_NFES))
    p.add_argument("--schedule", type=schedule_name, default="uniform", help="grid of the main tables (uniform, sd3, logsnr, edm)")
    p.add_argument("--shift", type=positive_float, default=1.0, help="SD3 shift of that grid (1 = none)")
    p.add_argument("--grids", type=grid_names, default=list(GRIDS),
                   help=f"comparison grids for the best-grid tables and bars, comma-separated (default all: {','.join(GRIDS)}; none to skip)")
    p.add_argument("--no-oracle", action="store_true", help="skip the (slow) oracle ceiling rows")
    p.add_argument("--out", default=None, help="output directory (default analysis/figures; runs/quick with --quick)")
    p.add_argument("--quick", action="store_true", help="tiny run for smoke tests (never writes into analysis/figures or runs/<flow>)")
    args = p.parse_args(argv)
    resolve_out(args)
    if args.quick:
        args.n, args.nfe = min(args.n, 64), [n for n in args.nfe if n <= 5] or [4]
        args.grids = [g for g in args.grids if g in ("uniform", "sd3-0.5")]
    if args.quick and args.sidenet is None and args.train_out is None:
        args.train_out = f"runs/quick/{args.flow}"
    if args.sidenet is not None and not Path(args.sidenet).exists():
        p.error(f"--sidenet: {args.sidenet} does not exist")
    for flag, paths in (("--learned", [args.learned] if args.learned else []), ("--bns", args.bns), ("--ld3", args.ld3)):
        for path in paths:
            if not Path(path).is_file():
                p.error(f"{flag}: {path} does not exist; train it with python -m adapters.torch_sit.learned."
                        f"{'ba' if flag == '--learned' else flag[2:]} (docs/learned-solvers.md)")
    return args


def learned_rows(args, flow: Any, x0: Any) -> "tuple[dict, dict]":
    """The learned-solver rows (name -> solve(nfe)) and their training times (name -> text), from
    ``--learned``, ``--bns``, ``--ld3``; every file is read (and refused, naming it) before any
    solve. A row solves only at the NFE its files cover."""
    import baquad
    from baquad.schedules import default_grid
    from baquad.solvers.bns import NonStationaryCoefficients
    from baquad.solvers.learned_grid import load_grid

    from adapters.torch_sit.sidenet.perception import NeuralPerception

    rows: dict[str, Callable[..., Any]] = {}
    trained: dict[str, str] = {}
    from adapters.torch_sit.budget import longest_minutes as minutes
    if args.learned:
        net = load_flow_sidenet(args.learned, flow, "--learned")
        if not net.learned_steps:
            raise SystemExit(f"--learned: {args.learned} carries no learned steps; pass the output of python -m "
                             "adapters.torch_sit.learned.ba (a chain-trained SideNet goes to --sidenet)")
        perception = NeuralPerception(net)
        covered = set(net.learned_steps)

        def learned(nfe: int, spec: Any = None):
            if nfe not in covered:
                raise ValueError(f"nfe: no learned solver for {nfe}")
            return baquad.solve(flow, x0, default_grid("ba-solver", nfe, perception), perception=perception)

        rows[LEARNED] = learned
        by = net.file_extra.get("learned_by", {})
        trained[LEARNED] = (f"end to end {minutes([by.get('wall_time_s')])} after chain training "
                            f"{minutes([by.get('start_training_s')])}")
    try:
        bns = {c.nfe: c for c in (NonStationaryCoefficients.load(f) for f in args.bns)}
        grids = [load_grid(f) for f in args.ld3]
    except (OSError, ValueError) as err:
        raise SystemExit(f"--bns/--ld3: {err}") from None
    if bns:
        def run_bns(nfe: int, spec: Any = None):
            if nfe not in bns:
                raise ValueError(f"nfe: no BNS solver for {nfe}")
            return baquad.solve(flow, x0, tuple(float(t) for t in bns[nfe].times), method="bns",
                                coefficients=bns[nfe])

        rows["BNS"] = run_bns
        trained["BNS"] = minutes([c.meta.get("wall_time_s") for c in bns.values()]) + " per NFE"
    for method in sorted({g.method for g in grids}):
        mine = [g for g in grids if g.method == method]

        def run_ld3(nfe: int, spec: Any = None, mine=mine, method=method):
            for g in mine:
                try:
                    ts = g.grid_for(method, nfe, **g.options)
                except ValueError:
                    continue
                return baquad.solve(flow, x0, ts, method=method, **g.options)
            raise ValueError(f"nfe: no LD3 grid for {nfe}")

        name = f"LD3 + {method}"
        rows[name] = run_ld3
        trained[name] = minutes([g.meta.get("wall_time_s") for g in mine]) + " per NFE"
    return rows, trained


# ---------------------------------------------------------------------------------------------


def train_or_load(args, flow: Any):
    """The SideNet (module) for ``flow``, its training summary (dict, possibly empty) and its path."""
    flow_name = flow.name
    if args.sidenet:
        path = Path(args.sidenet)
        summary_path = path.with_name("summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        return load_flow_sidenet(path, flow), summary, path
    from adapters.torch_sit.sidenet.train import recipe_for, train

    cfg, sidenet_config = recipe_for(flow_name, iters=args.iters, batch_size=args.batch, quick=args.quick)
    out = Path(args.train_out or f"runs/{flow_name}")
    print(f"training a SideNet for {flow_name} into {out} ({cfg.iters} iterations, batch {cfg.batch_size}, "
          f"K = {cfg.chain_length}); interrupt and rerun to resume", flush=True)
    result = train(cfg, backbone=flow_name, out=out, sidenet_config=sidenet_config, ckpt_every=max(cfg.iters // 10, 1))
    # score the weights the run wrote (EMA when kept), the same ones ``--sidenet`` loads later;
    # ``result.sidenet`` holds the raw final weights instead
    path = out / "sidenet.safetensors"
    return load_flow_sidenet(path, flow), result.summary, path


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
    from baquad.schedules import default_grid, grid_from_spec, nfe_grid, steps_for_nfe
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from adapters.torch_sit.sidenet.networks import count_parameters

    set_threads(2)
    flow = get_flow(args.flow)
    sidenet, summary, sidenet_path = train_or_load(args, flow)  # a given SideNet is checked before any solve
    sidenet.eval()
    problem = setup_problem(flow, args.n, args.seed, threads=None)  # noises, DOP853 references, scorer
    score, ref_seconds = problem.score, problem.ref_seconds

    x0 = torch.from_numpy(problem.noise)  # float64 state: the solver error, not float32 round-off, is measured
    ref_nll = -float(np.mean(flow.log_prob(problem.ref[-1])))
    data_nll = -float(np.mean(flow.log_prob(flow.sample_data(4096, np.random.default_rng(args.seed + 1)))))

    neural = NeuralPerception(sidenet)
    oracle = Oracle(flow, rtol=1e-9, atol=1e-9)
    table_grid = {"schedule": args.schedule, "shift": args.shift}

    def ba(perception: Perception, rule: str, final: str = "single", anchors: str = "bi"):
        def run(nfe: int, spec: dict = table_grid):
            ts = grid_from_spec(spec, steps_for_nfe("ba-solver", nfe, final=final, anchors=anchors))
            return baquad.solve(flow, x0, ts, rule=rule, perception=perception, final=final, anchors=anchors)

        return run

    def base(method: str, **opts):
        def run(nfe: int, spec: dict = table_grid):
            ts = grid_from_spec(spec, steps_for_nfe(method, nfe, **opts))
            return baquad.solve(flow, x0, ts, method=method, **opts)

        return run

    methods: dict[str, Callable[..., Any]] = {}
    for n in (4, 3, 2):
        for final, tag in (("bi", "A"), ("single", "B")):
            methods[f"BA SideNet GL{n} {tag}"] = ba(neural, f"gauss-lobatto-{n}", final)
    methods["BA SideNet GL4 single-anchor"] = ba(neural, "gauss-lobatto-4", anchors="single")
    if not args.no_oracle:
        methods["BA oracle GL4 A"] = ba(oracle, "gauss-lobatto-4", "bi")
        methods["BA oracle GL4 B"] = ba(oracle, "gauss-lobatto-4", "single")
    for final, tag in (("single", "B"), ("bi", "A")):
        methods[f"BA polynomial GL4 {tag}"] = ba(None, "gauss-lobatto-4", final)
        methods[f"BA anchor-only GL4 {tag}"] = ba(AnchorOnly(), "gauss-lobatto-4", final)
    methods["Euler"] = base("euler")
    methods["Heun (EDM, last step Euler)"] = base("heun")
    methods["DPM-Solver++ 2M"] = base("dpm++", order=2)
    methods["DPM-Solver++ 3M"] = base("dpm++", order=3)
    methods["UniPC-2 bh2"] = base("unipc", order=2)
    methods["UniPC-3 bh2"] = base("unipc", order=3)
    own_grid = neural.grid  # the default learned solver's grid (saved with the SideNet), None: uniform

    def default_learned(nfe: int):
        ts = default_grid("ba-solver", nfe, neural)
        return baquad.solve(flow, x0, ts, rule="gauss-lobatto-4", perception=neural)

    from tqdm import tqdm

    def solve_scored(fn, nfe, *spec):
        try:
            res = fn(nfe, *spec)
        except ValueError as err:  # e.g. Heun cannot spend an even budget exactly
            if "nfe" not in str(err):
                raise
            return None
        assert res.nfe == nfe, (nfe, res.nfe)
        return score(res.x)

    results: dict[str, dict[int, Score]] = {}
    jobs = [(name, nfe) for name in methods for nfe in args.nfe]
    for name, nfe in tqdm(jobs, desc="solves", disable=None):
        got = solve_scored(methods[name], nfe)
        if got is not None:
            results.setdefault(name, {})[nfe] = got
    chain_default = {nfe: score(default_learned(nfe).x) for nfe in args.nfe}
    extra_rows, trained = learned_rows(args, flow, x0)
    learned_results: dict[str, dict[int, Score]] = {}
    for name, fn in extra_rows.items():
        for nfe in args.nfe:
            got = solve_scored(fn, nfe)
            if got is not None:
                learned_results.setdefault(name, {})[nfe] = got
    default_name = LEARNED if LEARNED in learned_results else f"{DEFAULT} (default, own grid)"
    default_row = learned_results.get(LEARNED, chain_default)
    euler_long = {nfe: score(base("euler")(nfe, GRIDS["uniform"]).x) for nfe in EULER_NFES}

    # every searched row on every comparison grid
    by_grid: dict[str, dict[str, dict[int, Score]]] = {}
    jobs = [(name, g, nfe) for name in SEARCHED if name in methods for g in args.grids for nfe in args.nfe]
    for name, g, nfe in tqdm(jobs, desc="grids", disable=None):
        got = solve_scored(methods[name], nfe, GRIDS[g])
        if got is not None:
            by_grid.setdefault(name, {}).setdefault(g, {})[nfe] = got

    # the SideNet's share of sampling time: the default learned solver at 10 NFE (or the largest budget run)
    nfe_t = 10 if 10 in args.nfe else max(args.nfe)
    timed_field, timed_p = Timed(flow), TimedPerception(neural)
    t0 = time.perf_counter()
    baquad.solve(timed_field, x0, default_grid("ba-solver", nfe_t, neural), perception=timed_p)
    total = time.perf_counter() - t0

    # ------------------------------------------------------------------------- report
    grid_text = "none saved, uniform" if own_grid is None else json.dumps(own_grid)
    lines = [f"# NFE sweep on `{args.flow}`", ""]
    lines.append(f"Command: `{command('analysis.nfe_sweep', argv)}`")
    lines.append("")
    lines.append(
        f"{args.n} noises (seed {args.seed}), main tables on schedule `{args.schedule}` (shift {args.shift:g}), every "
        "method spending exactly the NFE of its column (counted). Trajectory error: |x - x_ref| at t = 0 "
        f"against DOP853 (rtol 1e-10) from the same noise. NLL floor: reference solutions {ref_nll:.3f}, "
        f"exact data samples {data_nll:.3f}. The default learned solver is the first row: "
        + (f"`{LEARNED}` (`{shown(Path(args.learned))}`, its learned grids and steps)" if LEARNED in learned_results
           else f"`{DEFAULT}` on its own grid: {grid_text}") + "."
    )
    lines.append("")
    rows = {**learned_results, f"{DEFAULT} (chain, own grid)": chain_default, **results}
    lines += table(rows, args.nfe, "err", "Trajectory error, mean (lower is better)")
    lines += table(rows, args.nfe, "median", "Trajectory error, median (insensitive to the few mode switches)")
    lines += table(rows, args.nfe, "switched", "Mode switches: fraction of samples ending in another component than their reference")
    lines += table(rows, args.nfe, "nll", f"NLL under the exact mixture (closest to the reference solutions' {ref_nll:.3f} is best; "
                   "below it means samples contracted toward the modes)")
    lines.append("Euler at large NFE (uniform grid):")
    lines.append("")
    lines.append(markdown_table(["NFE", *map(str, EULER_NFES)],
                                [[label, *(f"{getattr(euler_long[n], key):.4g}" for n in EULER_NFES)]
                                 for label, key in (("trajectory error, mean", "err"), ("trajectory error, median", "median"),
                                                    ("mode switches", "switched"), ("NLL", "nll"))]))
    lines.append("")
    if by_grid:
        lines += grid_tables(by_grid, args.grids, args.nfe)
        lines += bars(default_row, by_grid, euler_long, args.nfe, default_name, learned_results)
    if trained:
        lines.append("Training of the learned solvers (teacher sets of other noises than these; wall time):")
        lines.append("")
        lines += [f"- {name}: {how}" for name, how in trained.items()]
        lines.append("")
    side_params = count_parameters(sidenet)
    lines.append("SideNet and cost:")
    lines.append("")
    lines.append(f"- SideNet parameters: {side_params:,} (backbone: analytic flow, no parameters); base perception "
                 f"{getattr(sidenet, 'base_perception', 'anchor-only')}; file `{sidenet_path}`; its grid: {grid_text}")
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
    plot(rows, euler_long, args, png, ref_nll)
    print(f"wrote {shown(md)} and {shown(png)}")
    return 0


def best_grid(by_grid: dict, name: str, nfe: int, key: str) -> "tuple[Optional[str], Optional[Score]]":
    """The comparison grid on which ``name`` has the lowest ``key`` at ``nfe``, and that score."""
    cands = [(g, row[nfe]) for g, row in by_grid.get(name, {}).items() if nfe in row]
    if not cands:
        return None, None
    return min(cands, key=lambda c: getattr(c[1], key))


def grid_tables(by_grid: dict, grids: list, nfes: list) -> list:
    """Per NFE: every searched row's mean error on every grid (the best grid of the row in bold),
    then each row's best grid per NFE (by mean and by median)."""
    out = ["Every searched solver on every comparison grid (mean trajectory error; **best grid of the row**):", ""]
    for nfe in nfes:
        rows = []
        for name, per_grid in by_grid.items():
            best, _ = best_grid(by_grid, name, nfe, "err")
            cells = []
            for g in grids:
                sc = per_grid.get(g, {}).get(nfe)
                cells.append("-" if sc is None else (f"**{sc.err:.4g}**" if g == best else f"{sc.err:.4g}"))
            rows.append([name, *cells])
        out += [f"NFE {nfe}:", "", markdown_table(["method", *grids], rows), ""]
    out += ["Best grid per NFE (mean; median):", ""]
    rows = []
    for name in by_grid:
        cells = []
        for nfe in nfes:
            gm, sm = best_grid(by_grid, name, nfe, "err")
            gd, sd = best_grid(by_grid, name, nfe, "median")
            cells.append("-" if sm is None else f"{gm} {sm.err:.3g}; {gd} {sd.median:.3g}")
        rows.append([name, *cells])
    out += [markdown_table(["method", *(f"NFE {n}" for n in nfes)], rows), ""]
    return out


def table(results, nfes, key: str, title: str) -> list[str]:
    rows = [[name, *(f"{getattr(row[n], key):.4g}" if n in row else "-" for n in nfes)] for name, row in results.items()]
    return [f"{title}:", "", markdown_table(["method", *(f"NFE {n}" for n in nfes)], rows), ""]


def bars(default_row: dict, by_grid: dict, euler_long: dict, nfes: list, default_name: str = DEFAULT,
         rivals: Optional[dict] = None) -> list:
    """The bars, judged on the default learned solver (GL4 scheme B on its own grid) on the mean and
    on the median trajectory error, each with the paired comparison on the same noises:

    1. 10 NFE: no larger than Euler at 100 NFE (uniform grid); stretch: 7 NFE too;
    2. 5 NFE: below the best of DPM-Solver++ 2M/3M and UniPC-2/3 at 10 NFE, each on its best grid;
    3. never worse: at every NFE, no worse than the best training-free BA perception (polynomial or
       anchor-only, scheme A or B) on that perception's best grid: at most its error plus one
       standard error of the paired difference.
    """
    out = [f"The bars (default learned solver = {default_name}; paired on the same noises, "
           "difference +- its standard error):", ""]
    e100 = euler_long[100]
    for key, label in (("err", "mean"), ("median", "median")):
        stat = "mean" if key == "err" else "median"
        val = lambda s: getattr(s, key)  # noqa: E731
        for n, tag in ((10, ""), (7, " (stretch)")):
            if n in nfes and n in default_row:
                d = default_row[n]
                pr = paired(d.errors, e100.errors, stat)
                out.append(f"- {label}{tag}: BA at {n} NFE {val(d):.4g} vs Euler at 100 NFE {val(e100):.4g}: "
                           f"{'met' if val(d) <= val(e100) else f'NOT met, {val(d) / val(e100):.2f}x'} "
                           f"(paired difference {pr.diff:.3g} +- {pr.se:.2g})")
        if 5 in nfes and 10 in nfes and 5 in default_row:
            cands = [(name, *best_grid(by_grid, name, 10, key)) for name in MULTISTEP if name in by_grid]
            cands = [c for c in cands if c[2] is not None]
            if cands:
                name, g, sc = min(cands, key=lambda c: val(c[2]))
                d5 = default_row[5]
                pr = paired(d5.errors, sc.errors, stat)
                out.append(f"- {label}: BA at 5 NFE {val(d5):.4g} vs best multistep at 10 NFE ({name} on {g}) {val(sc):.4g}: "
                           f"{'met' if val(d5) < val(sc) else f'NOT met, {val(d5) / val(sc):.2f}x'} "
                           f"(paired difference {pr.diff:.3g} +- {pr.se:.2g})")
        worse, beaten = [], []
        missing = [n for n in nfes if n not in default_row]
        for n in (n for n in nfes if n in default_row):
            cands = [(name, *best_grid(by_grid, name, n, key)) for name in TRAINING_FREE if name in by_grid]
            cands = [c for c in cands if c[2] is not None]
            if not cands:
                continue
            name, g, sc = min(cands, key=lambda c: val(c[2]))
            pr = paired(default_row[n].errors, sc.errors, stat)
            if n in RIVALS_NFES:
                beaten.append(f"NFE {n}: {val(default_row[n]):.4g} vs {name} on {g} {val(sc):.4g} "
                              f"({'better' if val(default_row[n]) < val(sc) else 'NOT better'})")
            if not pr.no_worse:
                worse.append(f"NFE {n}: {val(default_row[n]):.4g} vs {name} on {g} {val(sc):.4g} "
                             f"(difference {pr.diff:.3g} > its standard error {pr.se:.2g})")
        out.append(f"- {label}: never worse than the best training-free BA on its best grid, at NFE "
                   f"{', '.join(map(str, nfes))}: " + ("met" if not worse else "NOT met at " + "; ".join(worse))
                   + (f" (no learned solver for NFE {', '.join(map(str, missing))})" if missing else ""))
        if beaten:
            out.append(f"- {label}: better than the best training-free BA on its best grid: " + "; ".join(beaten))
        for name, row in (rivals or {}).items():
            if name == default_name:
                continue
            verdicts = []
            for n in RIVALS_NFES:
                if n in row and n in default_row:
                    pr = paired(default_row[n].errors, row[n].errors, stat)
                    won = val(default_row[n]) < val(row[n])
                    verdicts.append(f"NFE {n}: {val(default_row[n]):.4g} vs {val(row[n]):.4g} "
                                    f"({'better' if won else 'NOT better'}; difference {pr.diff:.3g} +- {pr.se:.2g})")
            if verdicts:
                out.append(f"- {label}: better than {name}: " + "; ".join(verdicts))
    out.append("")
    return out


def plot(results, euler_long, args, path: Path, ref_nll: float) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    keep = [k for k in results if not k.startswith("BA SideNet") or "default" in k or k in ("BA SideNet GL4 A", "BA SideNet GL4 B")]
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
