"""Use your own model: wrap a torch velocity model, train a SideNet for it, sample and compare.

    python examples/own_model.py                  # about 5 minutes on 2 CPU cores
    python examples/own_model.py --minutes 2      # the SideNet trained for a 2-minute budget instead
    python examples/own_model.py --quick          # a smoke run in seconds (the test suite's size)

The "own model" here is a small MLP velocity field v(t, x) trained in this script by flow matching
on a toy 2-D data set (two moons), standing in for the network you bring: it is a torch module
called ``model(t, x)`` with t a (B,) tensor of flow times (t = 1 noise, t = 0 data). The steps:

1. wrap it: ``Backbone.from_module(model, name, state_shape)`` (one probe call checks the
   ``(t, x)`` order and the output's shape and dtype);
2. train a SideNet with the measured recipe: ``recipe_for(backbone)`` and ``train(...)``
   (it starts as the training-free default and says how long its iterations take; ``minutes=``
   trains for a time budget; checkpoints every ``ckpt_every`` iterations; rerunning resumes);
3. sample with ``NeuralPerception`` through ``baquad.solve`` and compare with Euler, UniPC and the
   training-free BA-solver at the same NFE, against a tight reference solution of the model's ODE;
4. tune the grid on held-out noises and record it with the SideNet (``set_sidenet_grid``), so
   ``baquad.schedules.default_grid`` samples on it from then on.

docs/own-model.md explains each step.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import nn

import baquad
from adapters.torch_sit.backbones import Backbone
from adapters.torch_sit.sidenet.checkpoint import load_sidenet, set_sidenet_grid
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.train import recipe_for, train
from baquad.reference import reference_solve
from baquad.schedules import default_grid, nfe_grid


class VelocityMLP(nn.Module):
    """v(t, x) for 2-D states: an MLP on x and sinusoidal features of t (t a (B,) tensor)."""

    def __init__(self, width: int = 128, frequencies: int = 8):
        super().__init__()
        self.register_buffer("freqs", math.pi * torch.arange(1, frequencies + 1, dtype=torch.float32))
        self.net = nn.Sequential(
            nn.Linear(2 + 2 * frequencies, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 2),
        )

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        angle = t.reshape(-1, 1).to(x.dtype) * self.freqs.to(x.dtype)
        return self.net(torch.cat([x, torch.sin(angle), torch.cos(angle)], dim=1))


def two_moons(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points of two interleaved half circles with Gaussian noise of 0.05, centred."""
    s = torch.rand(n, generator=generator) * math.pi
    upper = torch.rand(n, generator=generator) < 0.5
    x = torch.where(upper, torch.cos(s), 1.0 - torch.cos(s))
    y = torch.where(upper, torch.sin(s), 0.5 - torch.sin(s))
    pts = torch.stack([x - 0.5, y - 0.25], dim=1) * 1.5
    return pts + 0.05 * torch.randn(n, 2, generator=generator)


def fit_velocity(model: nn.Module, steps: int, batch: int = 256, seed: int = 0) -> float:
    """Flow matching on the linear path x_t = (1 - t) x_data + t z: regress v on z - x_data."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        data, z, t = two_moons(batch, g), torch.randn(batch, 2, generator=g), torch.rand(batch, generator=g)
        xt = (1 - t[:, None]) * data + t[:, None] * z
        loss = (model(t, xt) - (z - data)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return float(loss.detach())


def mean_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    return float((x.double() - truth).norm(dim=1).mean())


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: short training, few samples")
    parser.add_argument("--out", default="runs/example-own-model", help="the SideNet's training directory")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--iters", type=int, default=1500, help="SideNet training iterations (the recipe's: 4000)")
    budget.add_argument("--minutes", type=float, default=None,
                        help="train the SideNet for this time budget instead (converted once into iterations)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)

    # --- your model: here a velocity MLP trained by flow matching (yours is already trained) ---
    model = VelocityMLP()
    fm_loss = fit_velocity(model, steps=60 if args.quick else 1000)
    print(f"velocity model: flow-matching loss {fm_loss:.3f} after training")

    # 1. wrap it: called model(t, x), t a (B,) tensor, t = 1 noise; frozen and probed once
    backbone = Backbone.from_module(model, "two-moons-mlp", state_shape=(2,))

    # 2. train a SideNet with the measured recipe (trunc-exp intervals, loss / |h|, EMA, a SideNet
    #    sized to about 2% of the backbone, a residual on the training-free default perception);
    #    checkpoints every 100 iterations, reruns resume; minutes= trains for a time budget
    cfg, arch = recipe_for(backbone, iters=args.iters, quick=args.quick)
    train(cfg, backbone=backbone, out=out, sidenet_config=arch, ckpt_every=100, log=print, minutes=args.minutes)
    sidenet = load_sidenet(out / "sidenet.safetensors")  # the exported (EMA) weights
    perception = NeuralPerception(sidenet)

    # 3. compare at equal NFE against a tight reference solution of the model's own ODE
    n = 256 if args.quick else 2048
    x1 = torch.randn(n, 2, generator=torch.Generator().manual_seed(1))
    model64 = copy.deepcopy(model).double()  # the reference integrates in float64
    truth = reference_solve(lambda t, x: model64(torch.full((x.shape[0],), t, dtype=x.dtype), x),
                            x1.double(), [1.0, 0.0], rtol=1e-9, atol=1e-9)[-1]
    field = backbone.vfield()  # vfield(t: float, x) for baquad.solve
    samplers = {
        "Euler": dict(method="euler"),
        "UniPC-2": dict(method="unipc"),
        "BA (training-free)": dict(method="ba-solver"),
        "BA + SideNet": dict(method="ba-solver", perception=perception),
    }
    nfes = (4, 6, 8)
    errors: dict = {name: {} for name in samplers}
    for nfe in nfes:
        for name, opts in samplers.items():
            res = baquad.solve(field, x1, nfe_grid(opts["method"], nfe), **opts)
            assert res.nfe == nfe
            errors[name][nfe] = mean_error(res.x, truth)
    print("\nmean |x - x_ref| at t = 0 over", n, "noises (reference: DOP853 on the model's ODE)")
    print(f"{'sampler':20s}" + "".join(f"{'NFE ' + str(k):>10s}" for k in nfes))
    for name, row in errors.items():
        print(f"{name:20s}" + "".join(f"{row[k]:10.4f}" for k in nfes))

    # 4. tune the grid (SD3 shift) on held-out noises; record it with the SideNet
    held = torch.randn(n, 2, generator=torch.Generator().manual_seed(2))
    held_truth = reference_solve(lambda t, x: model64(torch.full((x.shape[0],), t, dtype=x.dtype), x),
                                 held.double(), [1.0, 0.0], rtol=1e-9, atol=1e-9)[-1]
    tune_nfe = nfes[0]

    def held_error(shift: float) -> float:
        ts = nfe_grid("ba-solver", tune_nfe, "sd3", shift=shift)
        return mean_error(baquad.solve(field, held, ts, perception=perception).x, held_truth)

    best = min((0.25, 0.5, 1.0, 2.0), key=held_error)
    set_sidenet_grid(out / "sidenet.safetensors", {"schedule": "sd3", "shift": best})
    tuned = NeuralPerception(load_sidenet(out / "sidenet.safetensors"))
    ts = default_grid("ba-solver", tune_nfe, tuned)  # now the recorded grid
    tuned_err = mean_error(baquad.solve(field, x1, ts, perception=tuned).x, truth)
    print(f"\nbest SD3 shift on held-out noises at NFE {tune_nfe}: {best:g}; recorded with the SideNet. "
          f"BA + SideNet on it: {tuned_err:.4f} (uniform grid: {errors['BA + SideNet'][tune_nfe]:.4f})")
    return {"errors": errors, "shift": best, "tuned_error": tuned_err, "grid": ts, "out": out}


if __name__ == "__main__":
    main()
