"""Is the digits SideNet never worse than training-free BA-solver on its best grid?

    python -m analysis.digits_never_worse --reference runs/score/digits/digits_reference.safetensors
    python -m analysis.digits_never_worse --quick          # smoke run: 8 shipped reference samples

The bar of docs/results.md#learned-solvers on the digits SiT: at every NFE of ``--nfe`` (3, 4, 5,
7, 10, 15), BA-solver as the shipped SideNet samples by default (``--sidenet``; its learned grid
and steps where its file has them for that NFE, else the uniform grid with the rule's weights)
against the best training-free BA-solver: Gauss-Lobatto-4 with the polynomial perception
(``baquad.solve``'s default) or anchor-only, scheme A (every interval bi-anchor) or B (the last
interval single-anchor), on every grid of ``analysis.nfe_sweep``'s comparison set plus the
demo's shift 0.4. Its best grid is chosen per NFE on the same noises (which favours the
training-free rows). Scored against a digits reference set (``--reference``: noises, labels,
DOP853 solutions; ``python -m adapters.torch_sit.digits.reference --seed S``), mean and median
trajectory error |x - x_ref|_2 with the paired difference learned - best and its standard error.
"No worse": both differences (mean; median by a paired bootstrap) at most one standard error,
as in ``analysis.nfe_sweep``.

Writes ``digits_never_worse.md`` into ``--out`` (default ``analysis/figures``; ``--quick``:
``runs/quick``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ._common import (ArgumentParser, command, digits_scoring, markdown_table, paired, positive_int,
                      resolve_out, sample_count, set_threads, write_report)
from .nfe_sweep import GRIDS

#: the demo's grid shift, added to the comparison set
DIGITS_GRIDS = {**GRIDS, "sd3-0.4": {"schedule": "uniform", "shift": 0.4}}
DEFAULT_NFES = (3, 4, 5, 7, 10, 15)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m analysis.digits_never_worse", description=__doc__.splitlines()[0])
    p.add_argument("--reference", type=Path, default=None,
                   help="a digits reference set (default: the shipped one, on which earlier choices were made)")
    p.add_argument("--sidenet", type=Path, default=None, help="a digits SideNet file (default: the shipped one)")
    p.add_argument("--n", type=sample_count, default=None, help="samples scored (default: all of the set)")
    p.add_argument("--nfe", type=positive_int, nargs="+", default=list(DEFAULT_NFES), help="NFE (default 3 4 5 7 10 15)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 8 samples, NFE 3 and 4, three grids")
    p.add_argument("--out", default=None, help="directory for digits_never_worse.md (default analysis/figures)")
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.nfe = 8, [3, 4]
    resolve_out(args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import torch

    import baquad
    from baquad.schedules import default_grid, grid_from_spec, steps_for_nfe
    from adapters.torch_sit.digits.model import load_digits_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception

    ref, guidance, field = digits_scoring(args.reference, args.n)
    try:
        sidenet = load_digits_sidenet(args.sidenet)
    except ValueError as err:  # the message names --sidenet and why
        raise SystemExit(str(err)) from None
    grids = dict(list(DIGITS_GRIDS.items())[:3]) if args.quick else DIGITS_GRIDS

    def errors(x: torch.Tensor) -> np.ndarray:
        return (x.double() - ref.reference.double()).flatten(1).norm(dim=1).numpy()

    def solve(ts: Sequence[float], **options: Any) -> np.ndarray:
        with torch.no_grad():
            return errors(baquad.solve(field, ref.noise, ts, method="ba-solver", rule="gauss-lobatto-4",
                                       check_finite=False, **options).x)

    start = time.perf_counter()
    body = []
    for nfe in args.nfe:
        perception = NeuralPerception(sidenet, labels=ref.labels, guidance_scale=guidance)
        learned = solve(default_grid("ba-solver", nfe, perception), perception=perception, final="single")
        has_steps = nfe in (getattr(sidenet, "learned_steps", None) or {})
        best: Optional[tuple] = None
        for perc in ("polynomial", "anchor-only"):
            for final, scheme in (("single", "B"), ("bi", "A")):
                for name, spec in grids.items():
                    steps = steps_for_nfe("ba-solver", nfe, final=final)
                    if steps < 1:
                        continue
                    e = solve(grid_from_spec(spec, steps), perception=perc, final=final)
                    if best is None or e.mean() < best[0].mean():
                        best = (e, f"{perc} {scheme}, {name}")
        e_best, label = best
        diff, se = paired(learned, e_best)
        d_med, se_med = paired(learned, e_best, "median")
        body.append([nfe, "learned grid + steps" if has_steps else "uniform grid, rule weights",
                     f"{learned.mean():.4f} / {np.median(learned):.4f}", label,
                     f"{e_best.mean():.4f} / {np.median(e_best):.4f}", f"{diff:+.4f} ± {se:.4f}",
                     f"{d_med:+.4f} ± {se_med:.4f}", "yes" if diff <= se and d_med <= se_med else "NO"])
    seconds = time.perf_counter() - start
    table = markdown_table(["NFE", "SideNet samples with", "learned: mean / median", "best training-free BA",
                            "its mean / median", "learned - best: mean (paired)",
                            "median (paired bootstrap)", "no worse (both within 1 SE)"], body, "rlrlrrrl")
    source = args.reference or "the shipped reference set"
    text = "\n".join([
        f"# {command('analysis.digits_never_worse', argv)}", "",
        f"Digits SiT, guidance {guidance:g}, {len(ref)} noises of {source} (seed {ref.meta.get('seed', '?')}); "
        f"trajectory error |x - x_ref|_2 against DOP853. Training-free BA: Gauss-Lobatto-4, polynomial or "
        f"anchor-only perception, scheme A or B, best of {len(grids)} grids per NFE (chosen on these noises).", "",
        table, "", f"Wall time {seconds:.0f} s with {torch.get_num_threads()} thread(s)."])
    write_report(args.out, "digits_never_worse", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
