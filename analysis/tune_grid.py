"""Choose the grid a trained SideNet samples on, on calibration noises, and record it in the file.

    python -m analysis.tune_grid --flow gmm-ring2d --sidenet runs/gmm-ring2d/sidenet.safetensors --save

The default learned solver (BA-solver + the SideNet, Gauss-Lobatto-4, scheme B) is run on every
grid of the NFE sweep's comparison set (uniform; SD3 shifts 0.3-3; log-SNR; EDM) at every NFE of
the sweep, from calibration noises drawn with a seed other than the sweep's (7 against 1234), and
scored against DOP853 solutions of the same noises. The chosen grid is the one with the smallest
mean over the NFEs of log(mean trajectory error): one rule for every budget, not a grid per NFE
picked on the noises it is then scored on. ``--save`` records it in the SideNet file
(``adapters.torch_sit.sidenet.checkpoint.set_sidenet_grid``), after which ``baquad.schedules.default_grid``
and the sweep's default rows use it; the weights are unchanged.
"""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np

from ._common import (ArgumentParser, command, flow_with_density, load_flow_sidenet, markdown_table,
                      non_negative_int, positive_int, sample_count, setup_problem)
from .nfe_sweep import DEFAULT_NFES, GRIDS


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default="gmm-ring2d", type=flow_with_density, help="Gaussian-mixture flow")
    p.add_argument("--sidenet", required=True, help="trained SideNet (sidenet.safetensors)")
    p.add_argument("--n", type=sample_count, default=1024, help="calibration noises")
    p.add_argument("--seed", type=non_negative_int, default=7, help="seed of the calibration noises (the sweep's is 1234)")
    p.add_argument("--nfe", type=positive_int, nargs="+", default=list(DEFAULT_NFES))
    p.add_argument("--save", action="store_true", help="record the chosen grid in the SideNet file")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    import baquad
    from baquad.flows import get_flow
    from baquad.schedules import grid_from_spec, steps_for_nfe
    from adapters.torch_sit.sidenet.checkpoint import set_sidenet_grid
    from adapters.torch_sit.sidenet.perception import NeuralPerception

    flow = get_flow(args.flow)
    sidenet = load_flow_sidenet(args.sidenet, flow)  # checked before the reference solve
    problem = setup_problem(flow, args.n, args.seed)
    x0 = torch.from_numpy(problem.noise)
    perception = NeuralPerception(sidenet)

    errors: dict[str, list[float]] = {}
    for name, spec in GRIDS.items():
        errors[name] = []
        for nfe in args.nfe:
            ts = grid_from_spec(spec, steps_for_nfe("ba-solver", nfe))
            res = baquad.solve(problem.flow, x0, ts, perception=perception)
            errors[name].append(problem.score(res.x.numpy()).err)
    log_mean = {name: float(np.mean(np.log(e))) for name, e in errors.items()}
    best = min(log_mean, key=log_mean.get)

    print(f"# Grid for {args.sidenet}\n\nCommand: `{command('analysis.tune_grid', argv)}`\n")
    print(f"{args.n} calibration noises (seed {args.seed}); BA-solver + SideNet, GL4, scheme B; mean trajectory "
          "error against DOP853; score = mean over the NFEs of log(error), lower is better.\n")
    rows = [[f"**{n}**" if n == best else n, *[f"{e:.4g}" for e in errors[n]], f"{log_mean[n]:.3f}"] for n in GRIDS]
    print(markdown_table(["grid", *[f"NFE {n}" for n in args.nfe], "score"], rows))
    print(f"\nchosen: {best} {GRIDS[best]} (geometric-mean error {math.exp(log_mean[best]):.4g}; "
          f"uniform {math.exp(log_mean['uniform']):.4g})")
    if args.save:
        set_sidenet_grid(args.sidenet, GRIDS[best])
        print(f"recorded in {args.sidenet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
