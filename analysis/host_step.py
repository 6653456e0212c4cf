"""The solver's host cost per step on a near-free field (v = -x): time and tensor operations.

    python -m analysis.host_step                      # writes analysis/figures/host_step.md
    python -m analysis.host_step --quick --out /tmp/hs   # a smoke run (3 steps, one repeat)

On a field that costs one negation, what remains of a step is the solver's own bookkeeping and
array arithmetic: the part of a sampling step the host must issue before the device can run it.
For each state shape it measures, per step,

- ``bare loop``: ``x = x + h * f(t, x)`` written out (the floor: one field call, two operations),
- ``solve euler``: ``baquad.solve(f, x0, ts, method="euler")``,
- ``solve BA polynomial``: ``baquad.solve(f, x0, ts)``, BA-solver's default (Gauss-Lobatto-4,
  scheme B, the training-free :class:`~baquad.perception.AnchorPolynomial`),
- ``solve BA anchor-only``: the same with ``perception="anchor-only"``,
- ``solve BA polynomial, check_finite``: the default ``check_finite=True`` (one host sync per
  interval), and, on torch with torchdiffeq installed, ``odeint euler`` and ``odeint ba-solver``,

all with ``check_finite=False`` unless named, under ``torch.no_grad()``, float32, on one torch
thread by default. Time: the best of ``--repeats`` solves (the contenders interleaved within each
repeat, so that a load change hits all of them alike), divided by the number of intervals; the
solve's one-off checks are included. Operations: the aten operations one solve dispatches
(counted with a ``TorchDispatchMode``), divided by the number of intervals, with the breakdown by
operation in a second table: the count says why a step costs what it costs, independently of the
machine. The numpy backend is timed too (no operation count).

The host-step bars, checked on the torch rows at batch 1 (one 4 x 32 x 32 latent, the issue's
case, and a 2-D state): a BA-solver step costs at most 4x an Euler step through ``solve``, and
that at most 2x the bare loop. A
benchmark, not a test: the bars are printed, not asserted; ``tests/test_analysis_scripts.py``
checks the operation counts of a ``--quick`` run against their formulas.

Writes the table ``host_step.md`` (the command on top) into ``--out``, by default
``analysis/figures``; ``--quick`` writes under ``runs/quick``.
"""

from __future__ import annotations

import argparse
import collections
import os
import time
from typing import Any, Callable, Optional

import numpy as np

import baquad

from ._common import (ArgumentParser, command, markdown_table, output_paths, positive_int, resolve_out,
                      set_threads, shown)

SHAPES = ((1, 4, 32, 32), (16, 4, 32, 32), (1, 2))
QUICK_SHAPES = ((1, 2),)
#: (numerator, denominator, at most): the host-step bars, read at batch 1
BARS = (("solve BA polynomial", "solve euler", 4.0), ("solve BA anchor-only", "solve euler", 4.0),
        ("solve euler", "bare loop", 2.0))


#: what the operation counts come to, per interval (F: the field's operations, 1 here)
OPS_NOTE = (
    "Per interval: the bare loop F + 2 (mul, add); Euler through solve the same, plus 2 for the "
    "x0 check (sum, read back) per solve; BA-solver, polynomial: F + 6 (predictor: add + add_ over "
    "the previous and start anchor velocities; corrector: add + 2 add_ over previous, start and terminal "
    "ones; gap: dist), anchor-only F + 4; check_finite adds 2 per interval. The first interval has one "
    "anchor fewer, the last (scheme B) only its predictor; the gaps are stacked once at the end and "
    "read back."
)


def field(t: Any, x: Any) -> Any:
    """The near-free field, v = -x (one operation)."""
    return -x


def bare_loop(x0: Any, ts: list[float]) -> Any:
    """Euler written out: the floor of any solver."""
    x = x0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * field(t0, x)
    return x


def contenders(x0: Any, ts: list[float], torch_states: bool) -> dict[str, Callable[[], Any]]:
    """name -> a zero-argument callable that runs one whole solve from ``x0`` over ``ts``."""
    cases: dict[str, Callable[[], Any]] = {
        "bare loop": lambda: bare_loop(x0, ts),
        "solve euler": lambda: baquad.solve(field, x0, ts, method="euler", check_finite=False),
        "solve BA polynomial": lambda: baquad.solve(field, x0, ts, check_finite=False),
        "solve BA anchor-only": lambda: baquad.solve(field, x0, ts, perception="anchor-only", check_finite=False),
        "solve BA polynomial, check_finite": lambda: baquad.solve(field, x0, ts),
    }
    if torch_states:
        try:
            import torch
            import torchdiffeq

            import baquad.torchdiffeq as btd
        except ImportError:  # pragma: no cover - torchdiffeq is optional
            return cases
        btd.register()
        t = torch.tensor(ts, dtype=x0.dtype)
        cases["odeint euler"] = lambda: torchdiffeq.odeint(field, x0, t, method="euler")
        cases["odeint ba-solver"] = lambda: torchdiffeq.odeint(field, x0, t, method="ba-solver")
    return cases


def best_seconds(cases: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The best wall time of each case over ``repeats`` rounds, the cases interleaved in each."""
    for fn in cases.values():
        fn()  # warm-up
    best = {name: float("inf") for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def count_ops(fn: Callable[[], Any]) -> collections.Counter:
    """The aten operations ``fn()`` dispatches, by name (``add``, ``mul``, ``neg``, ...)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: collections.Counter = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        fn()
    return counter.ops


def _load() -> str:
    """The 1-minute load average, as text ("-" where the system gives none): the times are only
    worth comparing within one run unless the machine was quiet."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return "-"


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags, checked before anything is measured or written."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=10, help="intervals per solve (default 10)")
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed rounds, best kept (default 7)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="shape (1, 2) only, 3 steps, one repeat (a smoke run; writes under runs/quick by default)")
    parser.add_argument("--out", default=None, help="output directory (default analysis/figures; runs/quick with --quick)")
    args = parser.parse_args(argv)
    resolve_out(args)
    if args.quick:
        args.steps, args.repeats = 3, 1
    return args


def main(argv: Optional[list[str]] = None) -> int:
    """Measure, print the tables and write ``host_step.md``."""
    args = parse_args(argv)
    import torch

    set_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    ts = [1.0 - k / args.steps for k in range(args.steps + 1)]
    rng = np.random.default_rng(0)
    load_before = _load()
    rows, op_rows, per_step = [], [], {}
    with torch.no_grad():
        for backend in ("torch", "numpy"):
            for shape in shapes:
                a = rng.standard_normal(shape).astype(np.float32)
                x0 = torch.from_numpy(a) if backend == "torch" else a
                cases = contenders(x0, ts, backend == "torch")
                seconds = best_seconds(cases, args.repeats)
                for name, fn in cases.items():
                    us = seconds[name] / args.steps * 1e6
                    per_step[backend, shape, name] = us
                    ops = count_ops(fn) if backend == "torch" else None
                    if ops is not None and shape == shapes[0]:  # the same count at every shape
                        breakdown = ", ".join(f"{op} {n}" for op, n in sorted(ops.items(), key=lambda kv: (-kv[1], kv[0])))
                        op_rows.append([name, args.steps, sum(ops.values()), breakdown])
                    rows.append([backend, str(shape), name, f"{us:.1f}",
                                 f"{us / per_step[backend, shape, 'bare loop']:.1f}",
                                 "-" if ops is None else f"{sum(ops.values()) / args.steps:.1f}"])
    bars = []
    for shape in [s for s in shapes if s[0] == 1]:  # batch 1
        for num, den, limit in BARS:
            ratio = per_step["torch", shape, num] / per_step["torch", shape, den]
            bars.append(f"- torch {shape}: {num} / {den} = {ratio:.2f}x (bar: at most {limit:g}x, "
                        f"{'met' if ratio <= limit else 'NOT met'})")
    header = (f"v = -x, {args.steps} intervals (t: 1 -> 0), float32, best of {args.repeats} interleaved solves, "
              f"torch threads {torch.get_num_threads()}, check_finite=False unless named, torch.no_grad(); "
              f"numpy {np.__version__}, torch {torch.__version__}; load average (1 min) {load_before} before, "
              f"{_load()} after, on {os.cpu_count()} cores")
    times = markdown_table(["backend", "state", "contender", "us/step", "x bare loop", "aten ops/step"], rows,
                           "lllrrr")
    ops = markdown_table(["contender", "steps", "aten ops/solve", "by operation"], op_rows, "lrrl")
    text = "\n\n".join([f"`{command('analysis.host_step', argv)}`", header, times, "\n".join(bars),
                        f"aten operations of one solve (torch; counted at {shapes[0]}, the same at every shape):",
                        ops, OPS_NOTE]) + "\n"
    print(text)
    _, md = output_paths(args.out, "host_step")
    md.write_text(text)
    print(f"wrote {shown(md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
