"""Baseline fixed-grid samplers sharing one contract, plus their NFE accounting.

Every solver is one function (k-diffusion ``sampling.py`` style)::

    solver(field, x0, ts, *, callback=None, **its_own_options) -> x

``field(t, x)`` is the velocity (``t`` a Python float), ``x0`` a numpy array or torch
tensor, ``ts`` a strictly monotone grid; ``callback(i, ts[i], x_i)`` is called after each
grid point ``i = 1 .. len(ts) - 1``.  NFE is what the wrapped field counts; the formulas
below (:func:`nfe_per_steps`) are only used to plan grids and are checked against counted
calls in the tests.

=================  =====================================================  =================
method             options (defaults first)                               NFE for N steps
=================  =====================================================  =================
``euler``          -                                                      N
``heun``           ``final_step="euler"|"heun"``                          2N - 1 | 2N
``midpoint``       -                                                      2N
``rk4``            -                                                      4N
``dpm++``          ``order=2|1|3``, ``solver_type="midpoint"|"heun"``,    N
                   ``lower_order_final="min"|"diffusers"|"none"``
``dpm++2m``        as ``dpm++`` with ``order=2``                          N
``dpm++3m``        as ``dpm++`` with ``order=3``                          N
``adams``          ``order=2|1`` (Adams-Bashforth in t; any direction)      N
``unipc``          ``order=2|1|3``, ``variant="bh2"|"bh1"``,              N
                   ``lower_order_final``, ``disable_corrector=()``
``ba-solver``      (:mod:`baquad.bianchor`) ``rule``, ``perception``,      N | N + 1
                   ``final="single"|"bi"``, ``anchors="bi"|"single"``     (see below)
=================  =====================================================  =================

Every method, BA-solver included, is registered as a :class:`baquad.methods.Method` that owns
its options and declares its NFE cost; :func:`nfe_per_steps` and :func:`steps_for_nfe` read the
cost from the registry (a method that declares none is refused, naming it).

BA-solver (docs/algorithm.md#counting-nfe), N = number of intervals: the initial anchor is one
NFE and every bi-anchor interval one more.  ``final="single"`` (scheme B, default): the
last interval is single-anchor and needs no call, so N intervals = N NFE.  ``final="bi"``
(scheme A): N intervals = N + 1 NFE (a budget of N NFE buys N - 1 intervals).
``anchors="single"`` (every interval single-anchor): N intervals = N NFE.
"""

from __future__ import annotations

from typing import Any, Callable

from ..bianchor import BA_SOLVER
from ..methods import Method, nfe_per_steps, register_method, steps_for_nfe
from .adams import adams_bashforth
from .dpmpp import dpmpp, dpmpp_2m, dpmpp_3m
from .fixed import euler, heun, midpoint, rk4
from .unipc import unipc

__all__ = [
    "SOLVERS",
    "METHODS",
    "nfe_per_steps",
    "steps_for_nfe",
    "euler",
    "heun",
    "midpoint",
    "rk4",
    "dpmpp",
    "dpmpp_2m",
    "dpmpp_3m",
    "unipc",
    "adams_bashforth",
]


def _one_per_step(**options: Any) -> tuple[int, int]:
    return 1, 0


def _heun_cost(final_step: str = "euler") -> tuple[int, int]:
    if final_step == "euler":
        return 2, -1
    if final_step == "heun":
        return 2, 0
    raise ValueError(f"final_step must be 'euler' or 'heun', got {final_step!r}")


#: the baselines: method name -> (sampler, cost(**options) -> (a, b) with NFE = a * steps + b).
_BASELINES: dict[str, tuple[Callable[..., Any], Callable[..., tuple[int, int]]]] = {
    "euler": (euler, _one_per_step),
    "heun": (heun, _heun_cost),
    "midpoint": (midpoint, lambda: (2, 0)),
    "rk4": (rk4, lambda: (4, 0)),
    "dpm++": (dpmpp, _one_per_step),
    "dpm++2m": (dpmpp_2m, _one_per_step),
    "dpm++3m": (dpmpp_3m, _one_per_step),
    "unipc": (unipc, _one_per_step),
    "adams": (adams_bashforth, _one_per_step),
}

#: method name -> registered :class:`~baquad.methods.Method`, BA-solver first.
METHODS: dict[str, Method] = {"ba-solver": BA_SOLVER}
METHODS.update({name: register_method(Method(name, fn, cost=cost)) for name, (fn, cost) in _BASELINES.items()})

#: baseline name -> sampler function (BA-solver is ``baquad.bianchor.ba_solver``).
SOLVERS: dict[str, Callable[..., Any]] = {name: fn for name, (fn, _) in _BASELINES.items()}
