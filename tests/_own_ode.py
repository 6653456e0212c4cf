"""A user's own ODE for the ``analysis.convergence --field`` tests (imported with tests/ on the path):
dx/dt = -cos(t) x, whose solution is x(t1) = x(t0) exp(sin t0 - sin t1)."""

import math

import numpy as np


def field(t, x):
    return -math.cos(t) * x


def x0():
    return np.array([[1.0, 2.0], [-0.5, 0.25]])


def exact(t1, x0, t0):
    return np.asarray(x0) * math.exp(math.sin(t0) - math.sin(t1))


NOT_A_FUNCTION = 3
