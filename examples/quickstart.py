"""BA-solver on a toy ODE with an exact solution, against Euler at the same NFE.

    python examples/quickstart.py
"""

import numpy as np

import baquad


def vfield(t, x):
    """dx/dt = cos(t) A x with A a rotation generator: x(t) = expm(A sin t) x(0), a rotation by sin t."""
    return np.cos(t) * np.stack([-x[:, 1], x[:, 0]], axis=1)


x0 = np.array([[1.0, 2.0], [-0.5, 0.3]])
angle = np.sin(2.0)
exact = x0 @ np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]).T
for n in (5, 10, 20, 40):
    ts = np.linspace(0.0, 2.0, n + 1)
    ba = baquad.solve(vfield, x0, ts)  # Gauss-Lobatto-4, training-free polynomial perception
    oracle = baquad.solve(vfield, x0, ts, perception=baquad.Oracle(vfield))  # exact perception: the ceiling
    euler = baquad.solve(vfield, x0, ts, method="euler")
    print(
        f"{n:2d} intervals: NFE BA {ba.nfe}, Euler {euler.nfe} | max error: "
        f"BA {np.abs(ba.x - exact).max():.2e}, BA+oracle {np.abs(oracle.x - exact).max():.2e}, "
        f"Euler {np.abs(euler.x - exact).max():.2e}"
    )
