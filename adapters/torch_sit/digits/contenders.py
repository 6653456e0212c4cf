"""The solvers ``baquad demo`` compares, one row family each: how it samples at a given NFE, and
how it was trained.

- **BA-solver (learned)**: the shipped SideNet trained end to end (``python -m
  adapters.torch_sit.learned.ba``): its learned grid for the NFE and its learned per-interval
  weights (Gauss-Lobatto-4, scheme B: NFE = intervals). ``--sidenet`` replaces it.
- **BA-solver + SideNet (chain)**: the chain-trained SideNet it started from, on the demo's grid
  with the rule's weights (the paper's solver, the row the learned one improves on).
- **BNS**: bespoke non-stationary solvers (``python -m adapters.torch_sit.learned.bns``), one
  coefficient file per NFE, each on its own learned grid.
- **LD3 + UniPC**, **LD3 + Euler**: the grids LD3 learned for those methods
  (``python -m adapters.torch_sit.learned.ld3``), one grid per NFE.
- Euler, Heun, DPM-Solver++ 2M, UniPC: training-free, on the demo's grid (the uniform grid shifted
  by ``--shift``).

Every learned solver here was trained on the same teacher set (4,000 noises of seed 101, their
DOP853 solutions; docs/digits.md), never on the demo's noises. A learned file the package does
not ship is skipped (its rows are absent), so a development tree without them still runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from ..budget import longest_minutes
from .model import shipped_path
from .shipped import verified

__all__ = ["Contender", "contenders", "LEARNED_FILES"]

#: the shipped files of the learned rows (kinds of :func:`.model.shipped_path`)
LEARNED_FILES = ("sidenet-chain", "bns-3", "bns-5", "bns-7", "bns-10", "ld3-unipc", "ld3-euler")


@dataclass
class Contender:
    """One row family: ``prepare(nfe, labels, guidance)`` returns the grid, the options of
    ``baquad.solve`` and the timed SideNet (None when the solver has none) for that NFE.

    Attributes:
        label: the row's name in the table.
        method: the ``baquad.solve`` method.
        trained: how long it trained and on what ("" for a training-free solver).
        nfes: the NFE it has a solver for (a learned solver may cover fewer than the table).
    """

    label: str
    method: str
    prepare: Callable[[int, torch.Tensor, float], tuple]
    trained: str = ""
    nfes: tuple = field(default_factory=tuple)


class TimedModule(nn.Module):
    """Wraps a module and adds up the wall time of its forwards (``seconds``, ``calls``)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.seconds = 0.0
        self.calls = 0
        # what the perception reads from its SideNet besides the forward
        for name in ("sampling_grid", "learned_steps", "base_perception"):
            if hasattr(module, name):
                setattr(self, name, getattr(module, name))

    def config(self) -> dict:
        return self.module.config()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        import time

        t0 = time.perf_counter()
        out = self.module(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def _baseline(label: str, method: str, shift: float, nfes: tuple) -> Contender:
    from baquad.schedules import nfe_grid

    def prepare(nfe: int, labels: torch.Tensor, guidance: float) -> tuple:
        options = {"final_step": "euler" if nfe % 2 else "heun"} if method == "heun" else {}
        return nfe_grid(method, nfe, "uniform", shift, **options), options, None

    return Contender(label, method, prepare, "", nfes)


def _ba(label: str, sidenet: nn.Module, shift: Optional[float], trained: str, nfes: tuple) -> Contender:
    """BA-solver with ``sidenet``: on its learned grid and steps when ``shift`` is None, else on the
    shifted uniform grid with the rule's weights."""
    from baquad.schedules import default_grid, nfe_grid

    from ..sidenet.perception import NeuralPerception

    def prepare(nfe: int, labels: torch.Tensor, guidance: float) -> tuple:
        timed = TimedModule(sidenet)
        perception = NeuralPerception(timed, labels=labels, guidance_scale=guidance)
        options = {"rule": "gauss-lobatto-4", "final": "single", "perception": perception}
        if shift is None:
            return default_grid("ba-solver", nfe, perception), options, timed
        return nfe_grid("ba-solver", nfe, "uniform", shift), {**options, "steps": False}, timed

    return Contender(label, "ba-solver", prepare, trained, nfes)


def contenders(sidenet: nn.Module, sidenet_is_shipped: bool, shift: float, nfes: tuple) -> list[Contender]:
    """The demo's rows (module docstring), the learned ones from the shipped files that exist.

    Args:
        sidenet: the SideNet of the first row (the shipped learned one, or ``--sidenet``'s).
        sidenet_is_shipped: whether it is the shipped one (then the chain-trained row follows it).
        shift: the demo's grid shift (``--shift``).
        nfes: the table's NFE.
    """
    from baquad.solvers.bns import NonStationaryCoefficients
    from baquad.solvers.learned_grid import load_grid

    from ..sidenet.checkpoint import load_sidenet

    extra = getattr(sidenet, "file_extra", {}) or {}
    learned_by = extra.get("learned_by", {}) if isinstance(extra, dict) else {}
    has_steps = bool(getattr(sidenet, "learned_steps", None))
    if has_steps:
        chain = learned_by.get("start_training_s")
        trained = f"end to end {longest_minutes([learned_by.get('wall_time_s')])}" + (
            f" after chain training {longest_minutes([chain])}" if chain else "")
        rows = [_ba("BA-solver (learned)", sidenet, None, trained, tuple(sorted(sidenet.learned_steps)))]
    else:
        rows = [_ba("BA-solver + SideNet", sidenet, shift, "chain training", nfes)]
    have = {kind: shipped_path(kind) for kind in LEARNED_FILES if shipped_path(kind).is_file()}
    if sidenet_is_shipped and has_steps and "sidenet-chain" in have:
        chain_net = load_sidenet(verified(have["sidenet-chain"]))
        seconds = chain_net.file_extra.get("training_wall_time_s")
        rows.append(_ba("BA-solver + SideNet (chain)", chain_net, shift, f"chain {longest_minutes([seconds])}", nfes))
    bns = {n: NonStationaryCoefficients.load(verified(have[f"bns-{n}"])) for n in nfes if f"bns-{n}" in have}
    if bns:
        def prepare_bns(nfe: int, labels: torch.Tensor, guidance: float) -> tuple:
            c = bns[nfe]
            return tuple(float(t) for t in c.times), {"coefficients": c}, None

        secs = [c.meta.get("wall_time_s") for c in bns.values()]
        each = longest_minutes(secs)
        rows.append(Contender("BNS", "bns", prepare_bns, f"{each} per NFE", tuple(sorted(bns))))
    for method, label in (("unipc", "LD3 + UniPC"), ("euler", "LD3 + Euler")):
        if f"ld3-{method}" not in have:
            continue
        grid = load_grid(verified(have[f"ld3-{method}"]))
        covered = tuple(int(n) for n in sorted(grid.grid["steps"], key=int))

        def prepare_ld3(nfe: int, labels: torch.Tensor, guidance: float, grid=grid, method=method) -> tuple:
            return grid.grid_for(method, nfe), {}, None

        by_steps = grid.meta.get("by_steps", {n: grid.meta for n in grid.grid["steps"]})
        secs = [m.get("wall_time_s") for m in by_steps.values()]
        each = longest_minutes(secs)
        rows.append(Contender(label, method, prepare_ld3, f"{each} per NFE", covered))
    rows += [_baseline(label, method, shift, nfes) for label, method in
             (("Euler", "euler"), ("Heun", "heun"), ("DPM-Solver++ 2M", "dpm++2m"), ("UniPC", "unipc"))]
    return rows
