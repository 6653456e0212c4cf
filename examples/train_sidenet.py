"""Train a SideNet briefly on the 2-D Gaussian-mixture flow and sample with it (about 2 minutes).

    python examples/train_sidenet.py
"""

import numpy as np
import torch

import baquad
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.train import recipe_for, train
from baquad.flows import get_flow
from baquad.reference import reference_solve

cfg, arch = recipe_for("gmm-ring2d", iters=600)  # the measured recipe, shortened (README: 4000 iterations)
result = train(cfg, backbone="gmm-ring2d", out="runs/example-ring2d", sidenet_config=arch)  # resumes if interrupted
perception = NeuralPerception(result.sidenet)

flow = get_flow("gmm-ring2d")
x0 = torch.from_numpy(np.random.default_rng(0).standard_normal((512, 2)))
truth = torch.from_numpy(reference_solve(flow, x0.numpy(), [1.0, 0.0])[-1])
for nfe in (5, 10):
    ts = np.linspace(1.0, 0.0, nfe + 1)  # scheme B: nfe intervals = nfe backbone calls
    learned = baquad.solve(flow, x0, ts, perception=perception)
    euler = baquad.solve(flow, x0, ts, method="euler")
    err = lambda x: (x - truth).norm(dim=1).mean().item()
    print(f"NFE {nfe}: BA + SideNet {err(learned.x):.4f}, Euler {err(euler.x):.4f}")
