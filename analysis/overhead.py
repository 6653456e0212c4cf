"""The solver's own overhead per step, against Euler, on a near-free field (v = -x).

Run ``python -m analysis.overhead`` (options: ``--steps``, ``--repeats``, ``--threads``). It prints
the command and a markdown table: per-step wall time (median over repeats of one whole solve,
``time.perf_counter``, divided by the number of intervals) of

- a hand-written Euler loop (the floor: one field call and one update per step),
- ``baquad.solve(method="euler")``,
- ``baquad.solve`` BA-solver with the anchor-only and the default polynomial perception
  (``check_finite=False``, and once with the default ``check_finite=True``),
- on torch also ``torchdiffeq.odeint`` with ``method="euler"`` and ``method="ba-solver"``,

for numpy and torch states of shape (64, 2) and (16, 4, 32, 32). The field costs one negation, so
the times are the solvers' bookkeeping and array arithmetic. A benchmark, not a test: nothing is
asserted. Runtime is well under a minute.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any, Callable, Optional

import numpy as np

import baquad

from ._common import ArgumentParser, positive_int

SHAPES = ((64, 2), (16, 4, 32, 32))


def _field(t: Any, x: Any) -> Any:
    return -x


def _euler_loop(x0: Any, ts: list[float]) -> Any:
    x = x0
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * _field(t0, x)
    return x


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cases(x0: Any, ts: list[float], torch_mod: Optional[Any]) -> list[tuple[str, Callable[[], Any]]]:
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("Euler loop (floor)", lambda: _euler_loop(x0, ts)),
        ("solve euler", lambda: baquad.solve(_field, x0, ts, method="euler", check_finite=False)),
        ("solve BA anchor-only", lambda: baquad.solve(_field, x0, ts, perception="anchor-only", check_finite=False)),
        ("solve BA polynomial", lambda: baquad.solve(_field, x0, ts, check_finite=False)),
        ("solve BA polynomial, check_finite", lambda: baquad.solve(_field, x0, ts)),
    ]
    if torch_mod is not None:
        try:
            import torchdiffeq

            import baquad.torchdiffeq as btd
        except ImportError:  # pragma: no cover - torchdiffeq is optional
            return cases
        btd.register()
        t = torch_mod.tensor(ts, dtype=x0.dtype)
        cases += [
            ("odeint euler", lambda: torchdiffeq.odeint(_field, x0, t, method="euler")),
            ("odeint ba-solver polynomial", lambda: torchdiffeq.odeint(_field, x0, t, method="ba-solver")),
        ]
    return cases


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The flags, checked before anything is measured."""
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=positive_int, default=20, help="intervals per solve (default 20)")
    parser.add_argument("--repeats", type=positive_int, default=15, help="timed solves per case (default 15)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch intra-op threads (default 1)")
    return parser.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> None:
    """Measure and print the markdown table."""
    args = parse_args(argv)

    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        torch = None
    if torch is not None:
        torch.set_num_threads(args.threads)

    ts = [1.0 - k / args.steps for k in range(args.steps + 1)]
    rng = np.random.default_rng(0)
    cmd = "python -m analysis.overhead " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"$ {cmd.strip()}")
    print(
        f"v = -x, {args.steps} intervals (t: 1 -> 0), median of {args.repeats} solves, float32, "
        f"torch threads {args.threads if torch is not None else '-'}, "
        f"numpy {np.__version__}, torch {torch.__version__ if torch is not None else '-'}\n"
    )
    print("| backend | state | method | us/step | overhead over floor, us/step | x floor |")
    print("|---|---|---|---:|---:|---:|")
    backends = [("numpy", None)] + ([("torch", torch)] if torch is not None else [])
    with (torch.no_grad() if torch is not None else _nullcontext()):
        for backend, mod in backends:
            for shape in SHAPES:
                a = rng.standard_normal(shape).astype(np.float32)
                x0 = a if mod is None else mod.from_numpy(a)
                floor = None
                for name, fn in _cases(x0, ts, mod):
                    per_step = _median_seconds(fn, args.repeats) / args.steps * 1e6
                    if floor is None:
                        floor = per_step
                    print(
                        f"| {backend} | {shape} | {name} | {per_step:.1f} | {per_step - floor:.1f} | "
                        f"{per_step / floor:.1f} |"
                    )


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


if __name__ == "__main__":
    main()
