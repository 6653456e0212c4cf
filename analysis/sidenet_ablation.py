"""Compare trained SideNets (recipe ablations) on one flow: BA-solver error against NFE.

    python -m analysis.sidenet_ablation --flow gmm-ring2d runs/ablation/*/sidenet.safetensors

Every SideNet is scored the same way: BA-solver Gauss-Lobatto-4 on uniform grids from the same
noises, mean |x(0) - x_ref(0)| against the DOP853 reference (rtol 1e-10), scheme B (last interval
single-anchor) at each NFE and scheme A at the largest, plus the medians at the largest; Euler at
100 NFE is printed as the bar.
The recipe of each run is read from the ``summary.json`` beside its weights (written by
``adapters.torch_sit.train``), so the table states what differs, and the command that retrains
each row is printed under it. Writes ``<out>/sidenet_ablation_<flow>.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ._common import command, load_flow_sidenet, markdown_table, output_paths, setup_problem, shown

#: recipe fields shown in the table (the others are equal across the runs or printed in the commands)
SHOWN = ("intervals", "exp_rate", "h_max", "loss_norm", "start", "state_update", "iters", "batch_size")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sidenets", nargs="+", help="trained SideNet files (summary.json beside each)")
    p.add_argument("--flow", default="gmm-ring2d")
    p.add_argument("--nfe", type=int, nargs="+", default=[3, 5, 7, 10])
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", default="analysis/figures")
    args = p.parse_args(argv)

    import torch

    import baquad
    from adapters.torch_sit.perception import NeuralPerception
    from adapters.torch_sit.sidenet import count_parameters
    from baquad.schedules import uniform

    problem = setup_problem(args.flow, args.n, args.seed)  # threads, flow, noises, DOP853 references, scorer
    flow, score = problem.flow, problem.score
    x0 = torch.from_numpy(problem.noise)
    euler100 = score(baquad.solve(flow, x0, uniform(100), method="euler").x)
    top = max(args.nfe)

    header = (["run", *SHOWN, "net", "path features"] + [f"B, NFE {n}" for n in args.nfe] + [f"A, NFE {top}"]
              + [f"median B, NFE {top}", f"median A, NFE {top}"])
    rows, commands = [], []
    for path in args.sidenets:
        path = Path(path)
        summary = json.loads(path.with_name("summary.json").read_text())
        cfg, arch = summary["config"], summary["sidenet_config"]
        sidenet = load_flow_sidenet(path, flow, "sidenets")
        perception = NeuralPerception(sidenet)
        scores = [score(baquad.solve(flow, x0, uniform(n), perception=perception).x) for n in args.nfe]
        scores.append(score(baquad.solve(flow, x0, uniform(top - 1), perception=perception, final="bi").x))
        name = path.parent.name
        net = f"{arch['class']} {arch.get('hidden', '?')}x{arch.get('depth', '?')}, {count_parameters(sidenet):,} p."
        rows.append([name, *(str(cfg[k]) for k in SHOWN), net, str(arch.get("path_features", False))]
                    + [f"{s.err:.4f}" for s in scores] + [f"{scores[-2].median:.4f}", f"{scores[-1].median:.4f}"])
        flags = " ".join(f"--{k.replace('_', '-')} {cfg[k]}" for k in
                         ("intervals", "exp_rate", "h_min", "h_max", "loss_norm", "start", "state_update", "iters",
                          "batch_size", "ema_decay", "chain_length", "seed"))
        pf = "--path-features" if arch.get("path_features") else "--no-path-features"
        pf += "".join(f" --{k.replace('_', '-')} {arch[k]}" for k in ("hidden", "depth", "embed_dim") if k in arch)
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
