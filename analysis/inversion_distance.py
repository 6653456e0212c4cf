"""How far the noise a solver inverts a digit to lies from the exact inversion of that digit.

    python -m analysis.inversion_distance                 # 200 training-split digits, guidance 1
    python -m analysis.inversion_distance --quick         # smoke run: 4 digits

The round-trip error of ``baquad demo edit`` hides the inversion's own error: inverting and
regenerating with the same solver cancels much of it. Here each of ``--n`` digits of the training
split (with its label) is inverted from t = 0 to t = 1 (``adapters.torch_sit.digits.edit.invert``,
uniform grid shifted by ``--shift``, reversed) by BA-solver with the shipped chain-trained SideNet,
Euler and Adams-Bashforth 2 at the NFE given, and by DOP853 (rtol = atol = 1e-7, the network in
float64) as the truth; the table gives the mean |z - z_DOP853|_2 over the 64 numbers of a noise
with its standard error, and the mean |z_DOP853|_2 for scale. Writes ``inversion_distance.md``
into ``--out`` (default ``analysis/figures``; ``--quick``: ``runs/quick``).
"""

from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

from ._common import (ArgumentParser, command, markdown_table, positive_float, positive_int,
                      resolve_out, sample_count, set_threads, write_report)

#: (label, method, NFE per direction) of the rows
ROWS = (("BA-solver + SideNet (chain)", "ba-solver", 10), ("Euler", "euler", 10), ("Euler", "euler", 100),
        ("Adams-Bashforth 2", "adams", 10))


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = ArgumentParser(prog="python -m analysis.inversion_distance", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=sample_count, default=200, help="training-split digits (default 200)")
    p.add_argument("--guidance-scale", type=positive_float, default=1.0, help="guidance scale (default 1: none)")
    p.add_argument("--shift", type=positive_float, default=0.4, help="grid shift (default 0.4, the demos')")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 digits")
    p.add_argument("--out", default=None, help="directory for inversion_distance.md (default analysis/figures)")
    args = p.parse_args(argv)
    if args.quick:
        args.n = 4
    resolve_out(args)
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    import torch

    from adapters.torch_sit.digits.edit import invert
    from adapters.torch_sit.digits.model import digits_sit_backbone, load_digits_sidenet, load_digits_split

    images, labels = load_digits_split("train")
    x0, y = images[: args.n], labels[: args.n]
    bb, sidenet = digits_sit_backbone(), load_digits_sidenet(kind="sidenet-chain")
    common = dict(guidance=args.guidance_scale, shift=args.shift)
    start = time.perf_counter()
    truth = invert(bb, x0, y, method="reference", **common).double()
    size = truth.flatten(1).norm(dim=1)
    body = []
    for label, method, nfe in ROWS:
        z = invert(bb, x0, y, method=method, nfe=nfe, sidenet=sidenet if method == "ba-solver" else None, **common)
        d = (z.double() - truth).flatten(1).norm(dim=1)
        body.append([label, nfe, f"{d.mean():.3f} ± {d.std() / len(d) ** 0.5:.3f}"])
    table = markdown_table(["solver", "NFE (inversion)", "mean L2 distance to the DOP853 noise"], body, "lrr")
    text = "\n".join([
        f"# {command('analysis.inversion_distance', argv)}", "",
        f"{args.n} training-split digits, guidance {args.guidance_scale:g}, grid shift {args.shift:g}; the exact "
        f"noises have mean |z|_2 {size.mean():.2f}.", "", table, "",
        f"Wall time {time.perf_counter() - start:.0f} s with {torch.get_num_threads()} thread(s)."])
    write_report(args.out, "inversion_distance", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
