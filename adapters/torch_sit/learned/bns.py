"""Learned BNS solvers: the grid and the coefficients of a bespoke non-stationary solver, trained
against a teacher set's endpoints.

    python -m adapters.torch_sit.learned.bns --backbone digits-sit --guidance-scale 1.5 --nfe 5 \\
        --teacher runs/teachers/digits-train.safetensors --out runs/bns-digits-5 --minutes 5

The solver (:mod:`baquad.solvers.bns`; Shaul et al., arXiv 2403.01329) makes N backbone calls
u_j = v(x_j, t_j) on the grid t_0 > ... > t_N and sets x_{i+1} = sum_{j<=i} A[i, j] x_j +
sum_{j<=i} B[i, j] u_j. Its parameters (:class:`BNSSolver`):

- N time logits l: t_i = t_0 - (t_0 - t_N) cumsum(softmax(l))_{i-1} for 0 < i < N, the ends t_0
  and t_N fixed (the grid stays strictly decreasing whatever the logits); ``learn_times=False``
  keeps the grid;
- the lower triangles of A and B, N (N + 1) / 2 entries each (N (N + 2) parameters in all with
  the logits: 35 at NFE 5, 63 at NFE 7).

They start from a classical method's coefficients (``--init euler``, ``midpoint`` (even NFE) or
``adams`` on the shifted uniform grid, ``--init-shift``; or ``--init-from`` a ``bns.npz``), so
training starts from that method's error, and are trained by the endpoint trainer
(:mod:`.trainer`) on the mean L2 error to the teacher endpoints. The learned times reach the
backbone as a per-sample float64 tensor carrying their gradient. The result is written as
``<out>/bns.npz``, which ``baquad.solve(field, x, c.times, method="bns", coefficients=c)`` runs
with ``c = NonStationaryCoefficients.load(path)`` (no torch needed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from baquad.schedules import uniform
from baquad.solvers.bns import NonStationaryCoefficients, bns

from ..backbones import Backbone
from .teacher import TeacherSet
from .trainer import EndpointConfig, EndpointResult, add_run_flags, run_command, solver_parser, train_solver

__all__ = ["BNSSolver", "initial_coefficients", "train_bns", "build_parser", "main", "INITS"]

INITS = ("euler", "midpoint", "adams")


def initial_coefficients(init: str, nfe: int, shift: float = 1.0) -> NonStationaryCoefficients:
    """A classical method as BNS coefficients of ``nfe`` calls on the SD3-shifted uniform grid:
    Euler or Adams-Bashforth 2 on ``nfe`` steps, the RK midpoint method on ``nfe / 2`` steps.

    Raises:
        ValueError: an unknown ``init``, ``nfe`` < 1, an odd ``nfe`` for ``midpoint``.
    """
    if init not in INITS:
        raise ValueError(f"init: one of {', '.join(INITS)}, got {init!r}")
    if isinstance(nfe, bool) or not isinstance(nfe, int) or nfe < 1:
        raise ValueError(f"nfe: must be an integer >= 1, got {nfe!r}")
    if init == "midpoint":
        if nfe % 2:
            raise ValueError(f"nfe: the midpoint method spends 2 calls per step, so its NFE is even; got {nfe}")
        return NonStationaryCoefficients.midpoint(uniform(nfe // 2, shift=shift))
    grid = uniform(nfe, shift=shift)
    return NonStationaryCoefficients.euler(grid) if init == "euler" else NonStationaryCoefficients.adams(grid)


class BNSSolver(nn.Module):
    """A BNS solver with trainable grid and coefficients (module docstring), as a solver module
    of the endpoint trainer: ``forward(noise, cond, index)`` spends ``nfe`` backbone calls.

    Args:
        backbone: the frozen backbone (not a submodule: its weights are not the solver's).
        init: the starting coefficients (their grid's ends stay fixed).
        learn_times: train the grid (the N logits) too.
    """

    #: the file :meth:`export` writes in the output directory
    export_name = "bns.npz"

    def __init__(self, backbone: Backbone, init: NonStationaryCoefficients, *, learn_times: bool = True):
        super().__init__()
        c = init.numpy()
        times = np.asarray(c.times)
        n = c.nfe
        self.backbone = backbone
        self.nfe = n
        self.init_meta = dict(c.meta)
        self.register_buffer("ends", torch.tensor([times[0], times[-1]], dtype=torch.float64))
        self.logits = nn.Parameter(torch.tensor(np.log(np.diff(times) / (times[-1] - times[0])), dtype=torch.float64),
                                   requires_grad=learn_times)
        rows, cols = np.tril_indices(n)
        self.a = nn.Parameter(torch.tensor(c.a[rows, cols], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(c.b[rows, cols], dtype=torch.float64))

    def coefficients(self) -> NonStationaryCoefficients:
        """The current coefficients as torch tensors (differentiable in every parameter)."""
        n = self.nfe
        t0, tn = self.ends[0], self.ends[1]
        inner = t0 - (t0 - tn) * torch.cumsum(torch.softmax(self.logits, 0), 0)[:-1]
        times = torch.cat([t0[None], inner, tn[None]])
        rows, cols = torch.tril_indices(n, n, device=self.a.device)
        a = torch.zeros(n, n, dtype=self.a.dtype, device=self.a.device).index_put((rows, cols), self.a)
        b = torch.zeros(n, n, dtype=self.b.dtype, device=self.b.device).index_put((rows, cols), self.b)
        return NonStationaryCoefficients(times, a, b, {"init": self.init_meta})

    def forward(self, noise: torch.Tensor, cond: dict, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        c = self.coefficients()
        fn = self.backbone.fn

        def field(t: Any, x: torch.Tensor) -> torch.Tensor:
            tt = t.expand(x.shape[0]) if torch.is_tensor(t) else torch.full((x.shape[0],), float(t),
                                                                             dtype=torch.float64, device=x.device)
            return fn(tt, x, **cond)

        return bns(field, noise, c.times, coefficients=c)

    def export(self, out: Path, meta: dict) -> Path:
        """``<out>/bns.npz``: the coefficients (float64), ``meta`` recorded with them."""
        c = self.coefficients().numpy()
        learned = NonStationaryCoefficients(c.times, c.a, c.b, {**c.meta, **meta, "learned_by": "bns"})
        return learned.save(out / self.export_name)


def train_bns(backbone: Backbone, train: TeacherSet, out: "str | Path", config: EndpointConfig, *, nfe: int,
              guidance_scale: Optional[float] = None, init: "str | Path" = "euler", init_shift: float = 1.0,
              learn_times: bool = True, validation: Optional[TeacherSet] = None, resume: Optional[bool] = None,
              device: Any = "cpu", progress: bool = True) -> EndpointResult:
    """Train a BNS solver of ``nfe`` calls (module docstring) on the teacher sets ``train`` (role
    "train") and ``validation`` (role "validation", optional), both built for ``backbone`` at
    ``guidance_scale``. ``init``: a name of :data:`INITS` or a ``bns.npz`` path."""
    if str(init) in INITS:
        coefficients = initial_coefficients(str(init), nfe, init_shift)
    else:
        coefficients = NonStationaryCoefficients.load(init)
        if coefficients.nfe != nfe:
            raise ValueError(f"init: {init} holds a solver of {coefficients.nfe} calls, not --nfe {nfe}")
    module = BNSSolver(backbone, coefficients, learn_times=learn_times)
    identity = {"solver": "bns", "nfe": nfe, "init": str(init), "init_shift": init_shift, "learn_times": learn_times}
    return train_solver(module, backbone, train, out, config, identity=identity, guidance_scale=guidance_scale,
                        validation=validation, resume=resume, device=device, progress=progress)


# ----------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = solver_parser("python -m adapters.torch_sit.learned.bns", __doc__)
    p.add_argument("--init", default="euler",
                   help=f"starting coefficients: {', '.join(INITS)} (on the shifted uniform grid), or a bns.npz")
    p.add_argument("--init-shift", type=float, default=1.0,
                   help="SD3 shift of the starting grid (the digits demo's: 0.4)")
    p.add_argument("--fixed-times", action="store_true", help="keep the starting grid; learn A and B only")
    add_run_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(build_parser(), argv, lambda args, bb, train, validation, config: train_bns(
        bb, train, args.out, config, nfe=args.nfe, guidance_scale=args.guidance_scale, init=args.init,
        init_shift=args.init_shift, learn_times=not args.fixed_times, validation=validation, resume=args.resume,
        device=args.device, progress=not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
