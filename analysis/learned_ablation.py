"""What each part of BA-solver's end-to-end training buys, on the digits SiT.

    python -m analysis.learned_ablation start=adapters/torch_sit/digits/weights/digits_sidenet_chain.safetensors \
        full=runs/ablation-ba/full/sidenet.safetensors fixed-times=runs/ablation-ba/fixed-times/sidenet.safetensors \
        no-history=runs/ablation-ba/no-history/sidenet.safetensors \
        fixed-sidenet=runs/ablation-ba/fixed-sidenet/sidenet.safetensors \
        shipped=adapters/torch_sit/digits/weights/digits_sidenet.safetensors \
        --reference runs/score/digits-final/digits_reference.safetensors --nfe 5
    python -m analysis.learned_ablation --quick           # smoke run: the shipped SideNets, 8 samples

Each ``name=path`` is a digits SideNet file: the output of ``python -m adapters.torch_sit.learned.ba``
with or without one of its parts (``--fixed-times``: the grid is not learned; ``--no-history``: no
terms on earlier states and anchors; ``--fixed-sidenet``: the SideNet is frozen, only the grid and
the weights learn), or the chain-trained SideNet they all start from. Every one samples as
BA-solver does by default (Gauss-Lobatto-4, scheme B): on the grid and with the steps its file
carries for that NFE, else on the file's grid (or the demo's, shift 0.4) with the rule's weights.
Scored against a digits reference set (``--reference``; default the shipped one): mean trajectory
error |x - x_ref|_2 ± its standard error, the median, and the paired difference to the first
file with its standard error. Writes ``learned_ablation.md`` into ``--out`` (default
``analysis/figures``; ``--quick``: ``runs/quick``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ._common import (ArgumentParser, command, digits_scoring, markdown_table, paired, positive_int,
                      resolve_out, sample_count, set_threads, write_report)


def _named_file(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected name=path, got {text!r}")
    return name, Path(path)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m analysis.learned_ablation", description=__doc__.splitlines()[0])
    p.add_argument("sidenets", nargs="*", type=_named_file, help="name=path of each SideNet file (the first is "
                   "the baseline of the paired differences)")
    p.add_argument("--reference", type=Path, default=None, help="a digits reference set (default: the shipped one)")
    p.add_argument("--n", type=sample_count, default=None, help="samples scored (default: all of the set)")
    p.add_argument("--nfe", type=positive_int, nargs="+", default=[5], help="NFE (default 5)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: the shipped SideNets, 8 samples")
    p.add_argument("--out", default=None, help="directory for learned_ablation.md (default analysis/figures)")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 8
    if not args.sidenets and not args.quick:
        p.error("give name=path SideNet files (or --quick)")
    resolve_out(args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import torch

    import baquad
    from baquad.schedules import default_grid, grid_from_spec, nfe_grid
    from adapters.torch_sit.digits.model import DIGITS_GRID_SHIFT, load_digits_sidenet, shipped_path
    from adapters.torch_sit.sidenet.perception import NeuralPerception

    files = args.sidenets or [("chain", shipped_path("sidenet-chain")), ("shipped", shipped_path("sidenet"))]
    try:
        nets = [(name, load_digits_sidenet(path, flag=f"{name}={path}")) for name, path in files]
    except ValueError as err:  # the message names the name=path argument and why
        raise SystemExit(str(err)) from None
    ref, guidance, field = digits_scoring(args.reference, args.n)
    start = time.perf_counter()
    body = []
    for nfe in args.nfe:
        first = None
        for name, net in nets:
            perception = NeuralPerception(net, labels=ref.labels, guidance_scale=guidance)
            steps = getattr(net, "learned_steps", None) or {}
            if nfe in steps:
                ts, how = default_grid("ba-solver", nfe, perception), "learned grid + steps"
            elif grid_from_spec(getattr(net, "sampling_grid", None), nfe) is not None:
                ts, how = default_grid("ba-solver", nfe, perception), "its grid, rule weights"
            else:
                ts, how = nfe_grid("ba-solver", nfe, "uniform", DIGITS_GRID_SHIFT), "shift 0.4, rule weights"
            with torch.no_grad():
                x = baquad.solve(field, ref.noise, ts, perception=perception, check_finite=False).x
            e = (x.double() - ref.reference.double()).flatten(1).norm(dim=1).numpy()
            se = e.std(ddof=1) / np.sqrt(len(e))
            if first is None:
                first, diff = e, ""
            else:
                d = paired(e, first)
                diff = f"{d.diff:+.4f} ± {d.se:.4f}"
            body.append([nfe, name, how, f"{e.mean():.4f} ± {se:.4f}", f"{np.median(e):.4f}", diff])
    table = markdown_table(["NFE", "SideNet", "samples with", "trajectory error", "median",
                            f"minus {nets[0][0]} (paired)"], body, "rlllrr")
    text = "\n".join([f"# {command('analysis.learned_ablation', argv)}", "",
                      f"Digits SiT, guidance {guidance:g}, {len(ref)} noises of "
                      f"{args.reference or 'the shipped reference set'}.", "", table, "",
                      f"Wall time {time.perf_counter() - start:.0f} s with {torch.get_num_threads()} thread(s)."])
    write_report(args.out, "learned_ablation", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
