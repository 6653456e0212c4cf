"""Choose the grid a trained SideNet samples on, on calibration noises, and record it in the file.

    python -m analysis.tune_grid --flow gmm-ring2d --sidenet runs/gmm-ring2d/sidenet.safetensors --save

The default learned solver (BA-solver + the SideNet, Gauss-Lobatto-4, scheme B) is run on every
grid of the NFE sweep's comparison set (uniform; SD3 shifts 0.3-3; log-SNR; EDM) at every NFE of
the sweep, from calibration noises drawn with a seed other than the sweep's (7 against 1234), and
scored against DOP853 solutions of the same noises. The chosen grid is the one with the smallest
mean over the NFEs of log(mean trajectory error): one rule for every budget, not a grid per NFE
picked on the noises it is then scored on. ``--save`` records it in the SideNet file
(``adapters.torch_sit.sidenet.checkpoint.set_sidenet_grid``), after which ``baquad.schedules.default_grid``
and the sweep's default rows use it; the weights are unchanged. When the file's directory has a
``SHA256SUMS`` that lists it, its entry is updated too (a file that no longer matches its entry is
refused before anything runs), so the manifest check still passes.

Refused before anything runs: a SideNet for other states, or whose file records another backbone
than ``--flow``; an ``--nfe`` given twice (each NFE counts once in the score); with ``--save``, a
path that is not an exported SideNet (a training checkpoint) or cannot be written.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

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
    p.add_argument("--save", action="store_true", help="record the chosen grid in the SideNet file (and its "
                   "SHA256SUMS entry, when its directory has one that lists it)")
    args = p.parse_args(argv)
    repeated = sorted({n for n in args.nfe if args.nfe.count(n) > 1})
    if repeated:
        p.error(f"--nfe: {', '.join(map(str, repeated))} given more than once; each NFE counts once in the score "
                "(the mean over the NFEs of log error): list each once")
    return args


def save_target(sidenet: str) -> tuple[Path, bool]:
    """The file ``--save`` rewrites and whether a ``SHA256SUMS`` beside it lists it, checked
    before the calibration runs; SystemExit naming ``--save`` otherwise."""
    from adapters.torch_sit.digits.shipped import ChecksumError, read_sums, verified
    from adapters.torch_sit.sidenet.checkpoint import grid_target

    try:
        path = grid_target(sidenet)
        listed = path.name in read_sums(path.parent)
        if listed:
            verified(path)
    except ChecksumError as err:
        raise SystemExit(f"--save: refusing to rewrite a file that no longer matches its manifest: {err}") from None
    except (OSError, ValueError) as err:
        raise SystemExit(f"--save: {err} (the grid is recorded in an exported SideNet, sidenet.safetensors)") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise SystemExit(f"--save: cannot write in {path.parent}; drop --save, or copy the SideNet somewhere writable")
    return path, listed


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
    target = save_target(args.sidenet) if args.save else None
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
    if target is not None:
        from adapters.torch_sit.digits.shipped import record_sum, read_sums

        path, listed = target
        set_sidenet_grid(path, GRIDS[best])
        sums = read_sums(path.parent) if listed else {}
        updated = [f.name for f in (path, path.with_suffix(".json")) if f.name in sums]
        for name in updated:
            record_sum(path.parent / name)
        print(f"recorded in {path}" + (f" (and its SHA256SUMS entry: {', '.join(updated)})" if updated else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
