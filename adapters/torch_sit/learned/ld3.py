"""LD3: learn the time grid of any registered method against a teacher set's endpoints.

    python -m adapters.torch_sit.learned.ld3 --backbone digits-sit --guidance-scale 1.5 --method unipc \\
        --nfe 5 --teacher runs/teachers/digits-train.safetensors --out runs/ld3-unipc-digits-5 --radius 0.1

LD3 (Tong et al., *Learning to Discretize Denoising Diffusion ODEs*, ICLR 2025, arXiv 2405.15506)
keeps the solver and learns only its N time points. Here (:class:`LD3Grid`):

- the grid of ``nfe_grid(method, nfe)``'s length, N steps, is t_i = t_0 - (t_0 - t_N)
  cumsum(softmax(l))_{i-1} for 0 < i < N, with N logits l and the ends of the starting grid
  fixed (``--init-schedule``, ``--init-shift``);
- soft teacher forcing: every training sample k has its own start x'_k, kept in the ball
  |x'_k - z_k| <= r |z_k| around its teacher noise z_k (r = ``--radius``; projected back after
  every step; r = 0 is plain teacher forcing, x' = z), and the loss is the trajectory error
  |solver(x'_k) - x_teacher,k| (the student need not reproduce the teacher from the very same
  noise, only from one close to it); the starts are one parameter tensor under Adam, so rows
  outside a minibatch keep moving with their momentum (inside their balls);
- the result is a grid file (:mod:`baquad.solvers.learned_grid`, ``<out>/grid.json``) that the
  method runs on through ``baquad.schedules.nfe_grid(method, nfe, load_grid(path))``.

Gradients. The core samplers take Python-float times (UniPC and DPM-Solver++ compute their
coefficients with math and numpy), so the solve is not differentiated in time. The gradient with
respect to x' comes from autograd through the solve (the samplers touch the state only with
float arithmetic). The gradient with respect to the logits comes from central finite differences
of the solve on the same minibatch and the same x': for each logit j,

    d x / d l_j  ~  (x(l + eps e_j) - x(l - eps e_j)) / (2 eps)

(2N extra solves per step, without gradient), contracted with the loss gradient dL/dx by the
chain rule, dL/dl_j = <dL/dx, d x / d l_j>; this is the central difference of the minibatch loss
to first order, and it leaves the loss to the trainer. The step is eps = u^(1/3) with u the
state dtype's machine epsilon (4.9e-3 in float32, 6.1e-6 in float64): the central difference's
truncation error grows as eps^2 and the rounding error of the solves as u / eps, and u^(1/3)
balances the two. Softmax is invariant to adding a constant to every logit, so a step in one logit
moves the grid by at most about eps times the interval fractions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

import baquad
from baquad.methods import get_method
from baquad.schedules import SCHEDULES, nfe_grid
from baquad.solvers.learned_grid import LearnedGrid, method_options, save_grid

from ...commandline import json_object
from ..backbones import Backbone
from .teacher import TeacherSet
from .trainer import EndpointConfig, EndpointResult, add_run_flags, run_command, solver_parser, train_solver

__all__ = ["LD3Grid", "grid_times", "train_ld3", "build_parser", "main"]


def grid_times(logits: np.ndarray, t_start: float, t_end: float) -> tuple[float, ...]:
    """The grid of N = len(logits) steps: the ends fixed, the interval fractions softmax(logits),
    computed in float64 (module docstring)."""
    p = np.exp(logits - logits.max())
    c = np.cumsum(p / p.sum())
    return (float(t_start), *(float(t_start - (t_start - t_end) * ci) for ci in c[:-1]), float(t_end))


class _FiniteDifference(torch.autograd.Function):
    """Zero in the forward pass; in the backward pass, the logits' gradient
    ``<grad_output, columns[j]>`` for every j (``columns``: the central-difference derivatives
    of the output, one per logit)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(columns)
        ctx.logits_dtype = logits.dtype
        return torch.zeros_like(columns[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        (columns,) = ctx.saved_tensors
        return (columns * grad.unsqueeze(0)).flatten(1).sum(1).to(ctx.logits_dtype), None


class LD3Grid(nn.Module):
    """The grid of ``method`` at ``nfe`` calls, learned (module docstring), as a solver module of
    the endpoint trainer.

    Args:
        backbone: the frozen backbone.
        method: a registered method; ``options`` its options.
        init: the starting grid (N + 1 times from noise to data; its ends stay fixed).
        noise: the train set's noises (the centres of the soft-teacher-forcing balls).
        radius: r >= 0, the balls' radius relative to |z|; 0: plain teacher forcing.
    """

    #: the file :meth:`export` writes in the output directory
    export_name = "grid.json"

    def __init__(self, backbone: Backbone, method: str, options: dict, init: Sequence[float], *,
                 noise: torch.Tensor, radius: float = 0.0):
        super().__init__()
        if not (isinstance(radius, (int, float)) and np.isfinite(radius) and radius >= 0):
            raise ValueError(f"radius: must be a finite number >= 0, got {radius!r}")
        get_method(method).options(dict(options))  # refuse a bad option now, naming it
        ts = np.asarray(init, dtype=np.float64)
        self.backbone, self.method, self.options = backbone, method, dict(options)
        self.ends = (float(ts[0]), float(ts[-1]))
        self.logits = nn.Parameter(torch.tensor(np.log(np.diff(ts) / (ts[-1] - ts[0])), dtype=torch.float64))
        self.radius = float(radius)
        self.eps = float(torch.finfo(noise.dtype).eps) ** (1.0 / 3.0)
        self.start = nn.Parameter(noise.clone()) if radius > 0 else None
        self.register_buffer("centre", noise.clone() if radius > 0 else torch.zeros(0))

    def times(self, logits: Optional[torch.Tensor] = None) -> tuple[float, ...]:
        """The grid the logits (default: the module's) define."""
        lg = (self.logits if logits is None else logits).detach().cpu().numpy()
        return grid_times(lg, *self.ends)

    def _solve(self, ts: Sequence[float], x: torch.Tensor, cond: dict) -> torch.Tensor:
        return baquad.solve(self.backbone.vfield(**cond), x, ts, method=self.method, check_finite=False,
                            **self.options).x

    def forward(self, noise: torch.Tensor, cond: dict, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.start[index] if self.start is not None and index is not None else noise
        out = self._solve(self.times(), x, cond)
        if self.logits.requires_grad and torch.is_grad_enabled():
            with torch.no_grad():
                x0, columns = x.detach(), []
                for j in range(self.logits.shape[0]):
                    step = torch.zeros_like(self.logits)
                    step[j] = self.eps
                    up = self._solve(self.times(self.logits + step), x0, cond)
                    down = self._solve(self.times(self.logits - step), x0, cond)
                    columns.append((up - down) / (2.0 * self.eps))
            out = out + _FiniteDifference.apply(self.logits, torch.stack(columns))
        return out

    @torch.no_grad()
    def after_step(self) -> None:
        """Project every x'_k back into its ball |x'_k - z_k| <= r |z_k|."""
        if self.start is None:
            return
        d = self.start - self.centre
        norm = d.flatten(1).norm(dim=1)
        bound = self.radius * self.centre.flatten(1).norm(dim=1)
        scale = torch.where(norm > bound, bound / norm.clamp_min(torch.finfo(norm.dtype).tiny), torch.ones_like(norm))
        self.start.copy_(self.centre + d * scale.reshape(-1, *([1] * (d.ndim - 1))))

    def export(self, out: Path, meta: dict) -> Path:
        """``<out>/grid.json``: the learned grid for the method and its options, ``meta`` with it."""
        ts = self.times()
        grid = LearnedGrid(self.method, method_options(self.method, **self.options),
                           {"steps": {str(len(ts) - 1): list(ts)}},
                           {**meta, "learned_by": "ld3", "radius": self.radius, "finite_difference_step": self.eps})
        return save_grid(out / self.export_name, grid)


def train_ld3(backbone: Backbone, train: TeacherSet, out: "str | Path", config: EndpointConfig, *, method: str,
              nfe: int, options: Optional[dict] = None, guidance_scale: Optional[float] = None, radius: float = 0.0,
              init_schedule: str = "uniform", init_shift: float = 1.0, validation: Optional[TeacherSet] = None,
              resume: Optional[bool] = None, device: Any = "cpu", progress: bool = True) -> EndpointResult:
    """Learn the grid of ``method`` (with ``options``) at ``nfe`` calls on the teacher sets
    ``train`` and ``validation`` (module docstring), starting from ``nfe_grid(method, nfe,
    init_schedule, init_shift)``."""
    options = dict(options or {})
    init = nfe_grid(method, nfe, init_schedule, init_shift, **options)
    module = LD3Grid(backbone, method, options, init, noise=train.noise, radius=radius)
    identity = {"solver": "ld3", "method": method, "options": method_options(method, **options), "nfe": nfe,
                "radius": float(radius), "init": {"schedule": init_schedule, "shift": init_shift}}
    return train_solver(module, backbone, train, out, config, identity=identity, guidance_scale=guidance_scale,
                        validation=validation, resume=resume, device=device, progress=progress)


def build_parser() -> argparse.ArgumentParser:
    p = solver_parser("python -m adapters.torch_sit.learned.ld3", __doc__)
    p.add_argument("--method", required=True,
                   help="the registered method whose grid is learned (euler, unipc, dpm++, ...)")
    p.add_argument("--method-options", type=json_object, default=None,
                   help="its options as a JSON object, e.g. '{\"order\": 3}'")
    p.add_argument("--radius", type=float, default=0.0,
                   help="soft teacher forcing: x' within r |z| of the teacher noise z (0: plain teacher forcing)")
    p.add_argument("--init-schedule", choices=sorted(SCHEDULES), default="uniform", help="the starting grid's schedule")
    p.add_argument("--init-shift", type=float, default=1.0, help="the starting grid's SD3 shift")
    add_run_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_command(build_parser(), argv, lambda args, bb, train, validation, config: train_ld3(
        bb, train, args.out, config, method=args.method, nfe=args.nfe, options=args.method_options,
        guidance_scale=args.guidance_scale, radius=args.radius, init_schedule=args.init_schedule,
        init_shift=args.init_shift, validation=validation, resume=args.resume, device=args.device,
        progress=not args.no_progress))


if __name__ == "__main__":
    sys.exit(main())
