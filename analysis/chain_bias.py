"""Is chain training limited by its targets or by fitting them? (diagnostic for a trained SideNet)

    python -m analysis.chain_bias --flow gmm-ring2d --sidenet runs/gmm-ring2d/sidenet.safetensors

Chain training (docs/algorithm.md#chain-training) targets v' = f(x', t + h) at the end state x' that the
SideNet itself simulated with Gauss-Legendre-3, not at the exact trajectory point x(t + h). For
states x(t0) on exact trajectories (DOP853 from seeded noise) and several interval sizes h, this
prints, as means over samples of Euclidean norms:

- ``|x' - x(t0+h)|``: the simulation's state error;
- target bias ``|f(x') - f(x(t0+h))|``: how wrong the training target is;
- ``SideNet vs truth``: |v + h g(x, v, t0, h) - f(x(t0+h))|, the forward prediction's real error;
- ``SideNet vs target``: the same against its own (biased) target, what the loss sees;
- ``anchor-only``: |v - f(x(t0+h))|, the error with g = 0.

If the target bias is much smaller than the SideNet's error against its target, better targets
would not help: the SideNet does not fit the targets it has.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--flow", default="gmm-ring2d")
    p.add_argument("--sidenet", required=True)
    p.add_argument("--n", type=int, default=512)
    p.add_argument("--t0", type=float, nargs="+", default=[1.0, 0.7, 0.5, 0.3, 0.15])
    p.add_argument("--h", type=float, nargs="+", default=[-0.05, -0.1, -0.2, -0.3])
    args = p.parse_args(argv)

    import torch

    from adapters.torch_sit.checkpoint import load_sidenet
    from baquad.flows import get_flow
    from baquad.reference import reference_solve
    from baquad.rules import get_rule

    torch.set_num_threads(2)
    flow = get_flow(args.flow)
    net = load_sidenet(args.sidenet).double().eval()
    rule = get_rule("gauss-legendre-3")
    noise = np.random.default_rng(5).standard_normal((args.n, flow.dim))
    print(f"$ python -m analysis.chain_bias {' '.join(sys.argv[1:] if argv is None else argv)}")
    print("| t0 | h | abs(x' - x(t0+h)) | target bias | SideNet vs truth | SideNet vs target | anchor-only |")
    print("|---|---|---|---|---|---|---|")
    norm = lambda a, b: float((a - b).norm(dim=1).mean())
    for t0 in args.t0:
        x_np = noise if t0 >= 1.0 else reference_solve(flow, noise, [1.0, t0])[-1]
        x = torch.from_numpy(x_np)
        v = flow(t0, x)
        tt = torch.full((args.n,), t0, dtype=torch.float64)
        for h in args.h:
            if t0 + h < -1e-12:
                continue
            x_true = torch.from_numpy(reference_solve(flow, x_np, [t0, t0 + h])[-1])
            v_true = flow(t0 + h, x_true)
            with torch.no_grad():
                u = [v + (c * h) * net(x, v, tt, torch.full_like(tt, c * h)) for c in rule.nodes]
                x_sim = x + h * sum(w * uk for w, uk in zip(rule.weights, u))
                v_target = flow(t0 + h, x_sim)
                pred = v + h * net(x, v, tt, torch.full_like(tt, h))
            print(f"| {t0:.2f} | {h:+.2f} | {norm(x_sim, x_true):.4f} | {norm(v_target, v_true):.4f} | "
                  f"{norm(pred, v_true):.4f} | {norm(pred, v_target):.4f} | {norm(v, v_true):.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
