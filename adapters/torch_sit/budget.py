"""Time budgets: an iteration count from a few timed iterations, converted once.

A trainer given a budget of M minutes times its first :data:`PROBE_ITERS` iterations on this
machine. The first one warms up (allocations, kernel choice, caches) and is left out; the mean
of the others is the time of one iteration, s, and the budget becomes

    N = max(PROBE_ITERS, floor(60 M / s))

iterations. The count is converted ONCE, when the run starts, and recorded with the run (in its
checkpoints), so a resumed run does the same N iterations whatever the machine's speed is then,
and resuming stays bitwise. Without a budget the same timing says how long the run's iterations
will take. Used by the SideNet trainer (:mod:`adapters.torch_sit.sidenet.train`) and the endpoint
trainer (:mod:`adapters.torch_sit.learned.trainer`).
"""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Optional, Sequence

__all__ = ["PROBE_ITERS", "clock", "seconds_per_iteration", "iterations_for", "duration_text", "say_duration",
           "check_minutes", "longest_minutes"]

#: iterations timed to convert a time budget into an iteration count (the first one is not counted)
PROBE_ITERS = 3


def clock() -> float:
    """The trainers' clock (seconds); tests replace it (``budget.clock``) to make a budget
    deterministic."""
    return time.perf_counter()


def check_minutes(minutes: Optional[float], name: str = "minutes") -> Optional[float]:
    """``minutes`` when None or a finite number > 0, else ValueError naming ``name``."""
    if minutes is None:
        return None
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not (math.isfinite(minutes) and minutes > 0):
        raise ValueError(f"{name}: a time budget in minutes, a finite number > 0, got {minutes!r}")
    return float(minutes)


def seconds_per_iteration(times: Sequence[float]) -> float:
    """The time of one iteration from the durations of the first iterations of a run: the mean of
    ``times[1:]`` (the first warms up), or ``times[0]`` when it is the only one."""
    if not times:
        raise ValueError("seconds_per_iteration: no timed iteration")
    rest = list(times[1:]) or list(times)
    return sum(rest) / len(rest)


def iterations_for(minutes: float, per_iter: float) -> int:
    """The iteration count of a budget of ``minutes`` at ``per_iter`` seconds per iteration:
    ``max(PROBE_ITERS, floor(60 minutes / per_iter))`` (module docstring)."""
    if not (per_iter > 0 and math.isfinite(per_iter)):  # a clock that did not move: as fast as one tick allows
        per_iter = 1e-9
    return max(PROBE_ITERS, int(minutes * 60 / per_iter))


def duration_text(seconds: float) -> str:
    """``seconds`` in the unit a person reads: s below 2 minutes, min below 2 hours, then h."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def longest_minutes(seconds: "Iterable[Optional[float]]") -> str:
    """The longest of some recorded training times as "x.x min" ("?" when there are none, or one
    of them was not recorded): how the demo and the NFE sweep report a learned solver's training."""
    seconds = list(seconds)
    return "?" if not seconds or None in seconds else f"{max(seconds) / 60:.1f} min"


def say_duration(say: Callable[..., None], per_iter: float, iters: int, minutes: Optional[float],
                 hint: str = "") -> None:
    """Tell ``say`` how long ``iters`` iterations of ``per_iter`` seconds take: "one iteration
    takes ... s on this machine, so the time budget of M min is N iterations (about T in all)",
    or "... so this run does N iterations ..." without a budget; ``hint`` is appended."""
    what = f"the time budget of {minutes:g} min is" if minutes is not None else "this run does"
    say(f"one iteration takes {per_iter:.3g} s on this machine, so {what} {iters} iterations "
        f"(about {duration_text(iters * per_iter)} in all){hint}")
