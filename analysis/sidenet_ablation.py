"""Compare trained SideNets (recipe ablations) on one flow: BA-solver error against NFE.

    python -m analysis.sidenet_ablation --flow gmm-ring2d runs/ablation/*/sidenet.safetensors

Every SideNet is scored the same way: BA-solver Gauss-Lobatto-4 on uniform grids from the same
noises, mean |x(0) - x_ref(0)| against the DOP853 reference (rtol 1e-10), scheme B (last interval
single-anchor) at each NFE and scheme A at the largest, plus the medians at the largest; Euler at
100 NFE is printed as the bar.
The recipe of each run is read from the ``summary.json`` beside its weights (written by
``adapters.torch_sit.sidenet.train``), so the table states what differs, and the command that retrains
each row is printed under it. Writes ``<out>/sidenet_ablation_<flow>.md``. Every flag and every
SideNet (present, with its summary.json, for the flow's states) is checked before any solve.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import (ArgumentParser, command, existing_file, flow_with_density, load_flow_sidenet, markdown_table,
                      non_negative_int, output_paths, positive_int, resolve_out, sample_count, setup_problem, shown)

#: recipe fields shown in the table (the others are equal across the runs or printed in the commands)
SHOWN = ("intervals", "exp_rate", "h_max", "loss_norm", "start", "state_update", "iters", "batch_size")


def parse_args(argv=None) -> argparse.Namespace:
    """The flags, every one checked before anything is computed, loaded or written."""
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sidenets", nargs="+", help="trained SideNet files (summary.json beside each)")
    p.add_argument("--flow", default="gmm-ring2d", type=flow_with_density,
                   help="Gaussian-mixture flow the SideNets were trained on (gmm-ring2d, gmm-32d, gmm-64d)")
    p.add_argument("--nfe", type=positive_int, nargs="+", default=[3, 5, 7, 10],
                   help="NFE budgets of scheme B; the largest (>= 2) also runs scheme A")
    p.add_argument("--n", type=sample_count, default=512, help="number of noise samples scored (>= 2)")
    p.add_argument("--seed", type=non_negative_int, default=123, help="seed of the scored noises")
    p.add_argument("--out", default=None, help="output directory (default analysis/figures)")
    args = p.parse_args(argv)
    resolve_out(args)
    if max(args.nfe) < 2:
        p.error("--nfe: the largest budget must be >= 2 (scheme A spends NFE = intervals + 1)")
    for path in args.sidenets:
        summary = existing_file("sidenets", path).with_name("summary.json")
        if not summary.is_file():
            raise SystemExit(f"sidenets: {path} has no summary.json beside it (the recipe the table reads); "
                             "pass the sidenet.safetensors of a run directory written by adapters.torch_sit.sidenet.train")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    import baquad
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from adapters.torch_sit.sidenet.networks import count_parameters
    from baquad.flows import get_flow
    from baquad.schedules import uniform

    flow = get_flow(args.flow)
    runs = [(Path(path), load_flow_sidenet(path, flow, "sidenets")) for path in args.sidenets]  # checked first
    problem = setup_problem(flow, args.n, args.seed)  # threads, noises, DOP853 references, scorer
    score = problem.score
    x0 = torch.from_numpy(problem.noise)
    euler100 = score(baquad.solve(flow, x0, uniform(100), method="euler").x)
    top = max(args.nfe)

    header = (["run", *SHOWN, "window weights", "net", "base", "path features"] + [f"B, NFE {n}" for n in args.nfe] + [f"A, NFE {top}"]
              + [f"median B, NFE {top}", f"median A, NFE {top}"])
    rows, commands = [], []
    for path, sidenet in runs:
        summary = json.loads(path.with_name("summary.json").read_text())
        cfg, arch = summary["config"], summary["sidenet_config"]
        perception = NeuralPerception(sidenet)
        scores = [score(baquad.solve(flow, x0, uniform(n), perception=perception).x) for n in args.nfe]
        scores.append(score(baquad.solve(flow, x0, uniform(top - 1), perception=perception, final="bi").x))
        name = path.parent.name
        net = f"{arch['class']} {arch.get('hidden', '?')}x{arch.get('depth', '?')}, {count_parameters(sidenet):,} p."
        windows = cfg.get("window_weights")
        base = arch.get("base_perception", "anchor-only")
        rows.append([name, *(str(cfg[k]) for k in SHOWN), "-" if not windows else json.dumps(windows), net, base,
                     str(arch.get("path_features", False))]
                    + [f"{s.err:.4f}" for s in scores] + [f"{scores[-2].median:.4f}", f"{scores[-1].median:.4f}"])
        flags = " ".join(f"--{k.replace('_', '-')} {cfg[k]}" for k in
                         ("intervals", "exp_rate", "h_min", "h_max", "loss_norm", "start", "state_update", "iters",
                          "batch_size", "ema_decay", "chain_length", "seed"))
        pf = "--path-features" if arch.get("path_features") else "--no-path-features"
        pf += "".join(f" --{k.replace('_', '-')} {arch[k]}" for k in ("hidden", "depth", "embed_dim") if k in arch)
        pf += f" --base-perception {base}"
        if windows:
            pf += f" --window-weights '{json.dumps(windows)}'"
        commands.append(f"python -m adapters.torch_sit.train --backbone {args.flow} --out runs/ablation/{name} "
                        f"--no-resume {flags} {pf}")

    lines = [f"# SideNet recipe ablation on `{args.flow}`", "",
             f"Command: `{command('analysis.sidenet_ablation', argv)}`", "",
             f"BA-solver GL4 mean trajectory error, {args.n} noises (seed {args.seed}), uniform grids; "
             f"scheme B = last interval single-anchor, A = all bi-anchor; the last two columns are medians (the mean "
             f"moves with the few samples that end in another mode). Euler at 100 NFE: mean {euler100.err:.4f} "
             f"+- {euler100.se:.2g}, median {euler100.median:.4f}.", "",
             markdown_table(header, rows), "", "Retrain a row:", "", "```", *commands, "```"]
    text = "\n".join(lines) + "\n"
    print(text)
    _, md = output_paths(args.out, f"sidenet_ablation_{args.flow}")
    md.write_text(text)
    print(f"wrote {shown(md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
