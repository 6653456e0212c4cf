"""BA-solver trained end to end: the SideNet, the grid and per-interval weights, fitted to where
samples end.

    python -m adapters.torch_sit.learned.ba --backbone digits-sit --guidance-scale 1.5 \\
        --sidenet runs/digits/sidenet.safetensors --nfe 3 5 7 10 \\
        --teacher runs/teachers/digits-train.safetensors --out runs/ba-digits --minutes 8

Chain training (:mod:`adapters.torch_sit.sidenet.chain`) teaches the SideNet the velocities
along short stretches of trajectories; nothing in it sees where a sample ends after N intervals.
This command starts from a chain-trained SideNet and trains, against a teacher set's endpoints
(:mod:`.teacher`, the mean L2 error per sample, :mod:`.trainer`), for every NFE N of ``--nfe``
(scheme B: N intervals, N backbone calls):

- the grid t_0 = 1 > t_1 > ... > t_N = 0 (N logits, as LD3 learns a grid; ``--fixed-times``
  keeps the starting grid), starting from the grid the SideNet file carries for N intervals
  (its saved grid spec), else the uniform grid shifted by ``--init-shift``;
- the predictor and corrector weights of every interval and the history terms on the earlier
  states and anchors (:class:`baquad.solvers.learned_steps.LearnedSteps`), starting from the
  rule's weights and zero history, i.e. from the plain BA-solver (``--no-history`` drops the
  history terms);
- the SideNet's own weights, shared by all the NFEs (``--fixed-sidenet`` freezes them), at a
  learning rate ``--sidenet-lr-scale`` times the others'.

One iteration trains one NFE, in turn (iteration s: the ``s mod len(--nfe)``-th); the loss is the
one the tables report. The validation error the trainer logs is the mean over the NFEs.

Every iteration runs the core's solver, :func:`baquad.bianchor.ba_solver_resolved`, with the
grid and weights as tensors that carry gradients and the SideNet's perception building its
graph: the step that samples is the step that is trained. The result is one SideNet file,
``<out>/sidenet.safetensors``, holding the fine-tuned weights, the learned grids (its grid spec
``{"steps": {...}}``, which ``baquad.schedules.default_grid`` reads) and the learned steps per
number of intervals, which BA-solver uses on exactly those grids::

    perception = NeuralPerception(load_sidenet("runs/ba-digits/sidenet.safetensors"), labels=y, guidance_scale=1.5)
    ts = default_grid("ba-solver", 7, perception)
    baquad.solve(field, noise, ts, perception=perception)        # the learned 7-NFE solver
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from baquad.bianchor import ba_solver_resolved
from baquad.rules import get_rule
from baquad.schedules import grid_from_spec, uniform
from baquad.solvers.learned_steps import LearnedSteps

from ..backbones import Backbone
from ..files import sha256_file
from ..sidenet.checkpoint import load_sidenet, save_sidenet
from ..sidenet.perception import NeuralPerception
from .teacher import TeacherSet
from .trainer import EndpointConfig, EndpointResult, add_run_flags, run_command, solver_parser, train_solver

__all__ = ["LearnedBA", "train_ba", "build_parser", "main"]


def _logits(times: Sequence[float]) -> torch.Tensor:
    """Logits whose softmax gives the grid's step fractions (the inverse of :meth:`LearnedBA.times`)."""
    t = np.asarray(times, dtype=np.float64)
    return torch.tensor(np.log(-np.diff(t) / (t[0] - t[-1])), dtype=torch.float64)


class LearnedBA(nn.Module):
    """A SideNet with learned grids and per-interval weights for several NFEs (module docstring),
    as a solver module of the endpoint trainer.

    Args:
        backbone: the frozen backbone (not a submodule).
        sidenet: the chain-trained SideNet (trained further here unless ``learn_sidenet`` is False).
        nfes: the numbers of intervals (= NFE, scheme B) to learn a solver for.
        grids: the starting grid for each NFE (``nfe + 1`` times from 1 to 0).
        rule: the quadrature rule.
        learn_times, history, learn_sidenet: what is trained besides the weights.
        sidenet_lr_scale, times_lr_scale: learning rates of the SideNet and of the grid logits
            relative to the weights'.
    """

    #: the file :meth:`export` writes in the output directory
    export_name = "sidenet.safetensors"

    def __init__(self, backbone: Backbone, sidenet: nn.Module, nfes: Sequence[int], grids: dict, *,
                 rule: str = "gauss-lobatto-4", learn_times: bool = True, history: bool = True,
                 learn_sidenet: bool = True, sidenet_lr_scale: float = 0.15, times_lr_scale: float = 5.0):
        super().__init__()
        self.backbone = backbone
        self.sidenet = sidenet
        self.nfes = tuple(int(n) for n in nfes)
        self.rule = get_rule(rule)
        self.history = history
        self.sidenet_lr_scale, self.times_lr_scale = sidenet_lr_scale, times_lr_scale
        # what the starting file records (its backbone, how it was trained), minus what this run replaces
        self.extra = {k: v for k, v in (getattr(sidenet, "file_extra", {}) or {}).items()
                      if k not in ("learned_steps", "learned_by", "training_wall_time_s", "grid", "weights")}
        self.start_training_s = (getattr(sidenet, "file_extra", {}) or {}).get("training_wall_time_s")
        for p in sidenet.parameters():
            p.requires_grad_(learn_sidenet)
        m = len(self.rule.nodes)
        w = torch.tensor(self.rule.weights, dtype=torch.float64)
        self.logits, self.weights, self.back = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        for n in self.nfes:
            key = str(n)
            self.logits[key] = nn.Parameter(_logits(grids[n]), requires_grad=learn_times)
            self.weights[key] = nn.Parameter(torch.stack([w, w]).unsqueeze(1).expand(2, n, m).clone())
            lower = n * (n - 1) // 2
            self.back[key] = nn.Parameter(torch.zeros(2, lower, dtype=torch.float64), requires_grad=history)
        self._nfe = self.nfes[0]

    # -- the trainer's hooks -------------------------------------------------------------------

    @property
    def iteration_cycle(self) -> int:
        """Iterations until every NFE was trained once (the trainer times a whole cycle for a
        time budget: an iteration at 15 NFE costs five times one at 3)."""
        return len(self.nfes)

    def set_step(self, step: int) -> None:
        """Iteration ``step`` (0-based) trains the NFE ``nfes[step mod len(nfes)]``."""
        self._nfe = self.nfes[step % len(self.nfes)]

    def param_groups(self, lr: float) -> list[dict]:
        groups = [{"params": list(self.weights.values()), "lr": lr}]
        if self.history:
            groups.append({"params": list(self.back.values()), "lr": lr})
        if any(p.requires_grad for p in self.logits.values()):
            groups.append({"params": list(self.logits.values()), "lr": lr * self.times_lr_scale})
        side = [p for p in self.sidenet.parameters() if p.requires_grad]
        if side:
            groups.append({"params": side, "lr": lr * self.sidenet_lr_scale})
        return groups

    @torch.no_grad()
    def validation_error(self, error: Any) -> float:
        """The mean over the NFEs of ``error(self)``, the trainer's validation error of the module
        at the current NFE."""
        total = 0.0
        for n in self.nfes:
            self._nfe = n
            total += error(self)
        return total / len(self.nfes)

    # -- the solver ----------------------------------------------------------------------------

    def times(self, n: int) -> torch.Tensor:
        """The grid of ``n`` intervals, from 1 to 0 (differentiable in its logits)."""
        frac = torch.cumsum(torch.softmax(self.logits[str(n)], 0), 0)[:-1]
        one = torch.ones(1, dtype=frac.dtype, device=frac.device)
        return torch.cat([one, 1.0 - frac, 0.0 * one])

    def steps(self, n: int) -> LearnedSteps:
        """The learned steps of ``n`` intervals as tensors (differentiable in every parameter)."""
        key = str(n)
        pw, back = self.weights[key], self.back[key]
        rows, cols = torch.tril_indices(n, n, -1, device=back.device)
        a = torch.zeros(n, n, dtype=back.dtype, device=back.device).index_put((rows, cols), back[0])
        b = torch.zeros(n, n, dtype=back.dtype, device=back.device).index_put((rows, cols), back[1])
        return LearnedSteps(self.rule.name, self.times(n), pw[0], pw[1], a, b)

    def forward(self, noise: torch.Tensor, cond: dict, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        n = self._nfe
        steps = self.steps(n)
        fn = self.backbone.fn

        def field(t: Any, x: torch.Tensor) -> torch.Tensor:
            tt = t.expand(x.shape[0]) if torch.is_tensor(t) else torch.full((x.shape[0],), float(t),
                                                                             dtype=torch.float64, device=x.device)
            return fn(tt.to(x.dtype), x, **cond)

        perception = NeuralPerception(self.sidenet, labels=cond.get("labels"),
                                      guidance_scale=cond.get("guidance_scale"), grad=True, strict=False)
        ts = [steps.times[i] for i in range(n + 1)]
        return ba_solver_resolved(field, noise, ts, rule=self.rule, perception=perception, anchors="bi",
                                  final="single", steps=steps)

    def export(self, out: Path, meta: dict) -> Path:
        """``<out>/sidenet.safetensors``: the SideNet's weights with the learned grids (its grid
        spec) and learned steps per number of intervals in the file's ``extra``."""
        with torch.no_grad():
            learned = {str(n): LearnedSteps.to_dict(self.steps(n)) for n in self.nfes}
            grid = {"steps": {str(n): self.times(n).tolist() for n in self.nfes}}
        extra = {**self.extra, "weights": "model", "grid": grid, "learned_steps": learned,
                 "learned_by": {"command": "adapters.torch_sit.learned.ba", **meta,
                                "start_training_s": self.start_training_s}}
        return save_sidenet(self.sidenet, out / self.export_name, extra=extra)


def starting_grids(sidenet: nn.Module, nfes: Sequence[int], shift: float) -> dict:
    """For each NFE, the grid the SideNet file carries for that many intervals, else the uniform
    grid shifted by ``shift``."""
    spec = getattr(sidenet, "sampling_grid", None)
    return {n: grid_from_spec(spec, n) or uniform(n, shift=shift) for n in nfes}


def train_ba(backbone: Backbone, train: TeacherSet, out: "str | Path", config: EndpointConfig, *,
             sidenet: "str | Path", nfes: Sequence[int], guidance_scale: Optional[float] = None,
             rule: str = "gauss-lobatto-4", init_shift: float = 1.0, learn_times: bool = True, history: bool = True,
             learn_sidenet: bool = True, sidenet_lr_scale: float = 0.15, times_lr_scale: float = 5.0,
             validation: Optional[TeacherSet] = None, resume: Optional[bool] = None, device: Any = "cpu",
             progress: bool = True) -> EndpointResult:
    """Train a learned BA-solver (module docstring) from the SideNet file ``sidenet`` on the
    teacher sets ``train`` (role "train") and ``validation`` (role "validation", optional)."""
    nfes = sorted(set(int(n) for n in nfes))
    if not nfes or nfes[0] < 1:
        raise ValueError(f"nfe: one or more numbers of intervals >= 1, got {list(nfes)}")
    net = load_sidenet(sidenet)
    net.train()
    module = LearnedBA(backbone, net, nfes, starting_grids(net, nfes, init_shift), rule=rule, learn_times=learn_times,
                       history=history, learn_sidenet=learn_sidenet, sidenet_lr_scale=sidenet_lr_scale,
                       times_lr_scale=times_lr_scale)
    identity = {"solver": "ba", "nfes": nfes, "rule": module.rule.name, "sidenet_sha256": sha256_file(sidenet),
                "init_shift": init_shift, "learn_times": learn_times, "history": history,
                "learn_sidenet": learn_sidenet, "sidenet_lr_scale": sidenet_lr_scale, "times_lr_scale": times_lr_scale}
    return train_solver(module, backbone, train, out, config, identity=identity, guidance_scale=guidance_scale,
                        validation=validation, resume=resume, device=device, progress=progress)


# ----------------------------------------------------------------------------------------
# command line


def build_parser() -> argparse.ArgumentParser:
    p = solver_parser("python -m adapters.torch_sit.learned.ba", __doc__, nfe_help="the NFEs (numbers of "
                      "intervals, scheme B) to learn a solver for; one SideNet serves them all", several_nfe=True)
    p.add_argument("--sidenet", type=Path, required=True, help="the chain-trained SideNet file to start from")
    p.add_argument("--rule", default="gauss-lobatto-4", help="quadrature rule")
    p.add_argument("--init-shift", type=float, default=1.0,
                   help="SD3 shift of the starting grid where the SideNet file carries none for an NFE")
    p.add_argument("--fixed-times", action="store_true", help="keep the starting grids")
    p.add_argument("--no-history", action="store_true", help="no history terms (per-interval weights only)")
    p.add_argument("--fixed-sidenet", action="store_true", help="keep the SideNet's weights (train grid and weights)")
    p.add_argument("--sidenet-lr-scale", type=float, default=0.15, help="the SideNet's learning rate over --lr")
    p.add_argument("--times-lr-scale", type=float, default=5.0, help="the grid logits' learning rate over --lr")
    add_run_flags(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()

    def run(args: argparse.Namespace, bb: Backbone, train: TeacherSet, validation: Optional[TeacherSet],
            config: EndpointConfig) -> Any:
        if not args.sidenet.is_file():
            parser.error(f"--sidenet: no file {args.sidenet}; train one with python -m adapters.torch_sit.train")
        return train_ba(bb, train, args.out, config, sidenet=args.sidenet, nfes=args.nfe,
                        guidance_scale=args.guidance_scale, rule=args.rule, init_shift=args.init_shift,
                        learn_times=not args.fixed_times, history=not args.no_history,
                        learn_sidenet=not args.fixed_sidenet, sidenet_lr_scale=args.sidenet_lr_scale,
                        times_lr_scale=args.times_lr_scale, validation=validation, resume=args.resume,
                        device=args.device, progress=not args.no_progress)

    return run_command(parser, argv, run)


if __name__ == "__main__":
    sys.exit(main())
