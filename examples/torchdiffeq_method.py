"""BA-solver as a torchdiffeq method, with counted NFE.

    python examples/torchdiffeq_method.py
"""

import torch
import torchdiffeq

import baquad.torchdiffeq as btd

btd.register()  # idempotent: adds method "ba-solver" to torchdiffeq


class Field(torch.nn.Module):
    def forward(self, t, x):
        return torch.stack([-x[..., 1], x[..., 0]], -1) * torch.cos(t)


stats = btd.Stats()
x0 = torch.tensor([[1.0, 0.0]])
t = torch.linspace(1.0, 0.0, 11)  # decreasing time is fine
xs = torchdiffeq.odeint(Field(), x0, t, method="ba-solver", options=dict(rule="gauss-lobatto-4", stats=stats))
ref = torchdiffeq.odeint(Field(), x0, t, method="dopri5", rtol=1e-10, atol=1e-10)
print(f"NFE {stats.nfe}, perception calls {stats.perception_calls}, max error {(xs - ref).abs().max():.2e}")
