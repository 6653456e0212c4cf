"""The baseline fixed-grid samplers BA-solver is compared with, sharing one contract.

Every solver is one function (k-diffusion ``sampling.py`` style)::

    solver(field, x0, ts, *, callback=None, **its_own_options) -> x

``field(t, x)`` is the velocity (``t`` a Python float), ``x0`` a numpy array or torch
tensor, ``ts`` a strictly monotone grid; ``callback(i, ts[i], x_i)`` is called after each
grid point ``i = 1 .. len(ts) - 1``. Each checks its own options and grid.

- :mod:`.fixed`: ``euler``, ``heun`` (and its NFE cost ``heun_cost``), ``midpoint``, ``rk4``,
  the generic one-step Runge-Kutta methods for any grid and field;
- :mod:`.dpmpp`: ``dpmpp`` (``dpmpp_2m``, ``dpmpp_3m``), DPM-Solver++ multistep in the log-SNR
  lambda of the flow-matching path;
- :mod:`.unipc`: ``unipc``, UniPC's predictor-corrector in the same variable;
- :mod:`.adams`: ``adams_bashforth``, the multistep method in t for either direction;
- :mod:`.bns`: ``bns`` and ``NonStationaryCoefficients``, the bespoke non-stationary solvers
  (every step a linear combination of all earlier states and velocities; Euler, Adams and the RK
  methods are special cases, learned ones come from ``python -m adapters.torch_sit.learned.bns``);
- :mod:`.learned_grid`: ``LearnedGrid``, ``save_grid``, ``load_grid``, the grid files LD3 writes
  (usable by every method through ``baquad.schedules.nfe_grid``); not imported here, since it
  reads the registry (``from baquad.solvers.learned_grid import load_grid``).

These modules register nothing: the method names ``baquad.solve(method=...)`` takes, their
options and NFE costs are the one table of :mod:`baquad.methods`, which imports the samplers from
here (:func:`baquad.methods.nfe_per_steps` and :func:`baquad.methods.steps_for_nfe` read the
costs).
"""

from __future__ import annotations

from .adams import adams_bashforth
from .bns import NonStationaryCoefficients, bns
from .dpmpp import dpmpp, dpmpp_2m, dpmpp_3m
from .fixed import euler, heun, midpoint, rk4
from .unipc import unipc

__all__ = [
    "euler",
    "heun",
    "midpoint",
    "rk4",
    "dpmpp",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "adams_bashforth",
    "bns",
    "NonStationaryCoefficients",
]
