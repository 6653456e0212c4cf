"""Every solver at 10 NFE on the 2-D Gaussian-mixture flow, scored against the exact ODE solution.

    python examples/compare_solvers.py
"""

import numpy as np

import baquad
from baquad.flows import get_flow
from baquad.reference import reference_solve
from baquad.schedules import nfe_grid

flow = get_flow("gmm-ring2d")  # 8 Gaussians on a circle; t = 1 noise -> t = 0 data
x0 = np.random.default_rng(0).standard_normal((512, 2))
truth = reference_solve(flow, x0, [1.0, 0.0])[-1]  # DOP853, rtol 1e-10

NFE = 10
runs = {
    "euler": {},
    "heun": dict(final_step="heun"),  # full Heun: 2 NFE per step
    "dpm++": dict(order=2),
    "unipc": dict(order=3),
    "ba-solver": {},  # training-free polynomial perception
}
for method, opts in runs.items():
    ts = nfe_grid(method, NFE, **opts)
    res = baquad.solve(flow, x0, ts, method=method, **opts)
    err = np.linalg.norm(res.x - truth, axis=1).mean()
    print(f"{method:10s} NFE {res.nfe:3d}  mean error {err:.4f}")
