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
``unipc``          ``order=2|1|3``, ``variant="bh2"|"bh1"``,              N
                   ``lower_order_final``, ``disable_corrector=()``
``ba-solver``      (implemented in the core) ``final="single"|"bi"``,     N | N + 1
                   ``anchors="bi"|"single"``                              (see below)
=================  =====================================================  =================

BA-solver (``algorithm.md`` section 5), N = number of intervals: the initial anchor is one
NFE and every bi-anchor interval one more.  ``final="single"`` (scheme B, default): the
last interval is single-anchor and needs no call, so N intervals = N NFE.  ``final="bi"``
(scheme A): N intervals = N + 1 NFE (a budget of N NFE buys N - 1 intervals).
``anchors="single"`` (every interval single-anchor): N intervals = N NFE.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from .dpmpp import dpmpp, dpmpp_2m, dpmpp_3m
from .fixed import euler, heun, midpoint, rk4
from .unipc import unipc

__all__ = [
    "SOLVERS",
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
]

#: method name -> sampler function (the BA-solver is added to ``baquad.solve``'s dispatch by
#: the core, not here).
SOLVERS: dict[str, Callable[..., Any]] = {
    "euler": euler,
    "heun": heun,
    "midpoint": midpoint,
    "rk4": rk4,
    "dpm++": dpmpp,
    "dpm++2m": dpmpp_2m,
    "dpm++3m": dpmpp_3m,
    "unipc": unipc,
}

_BA = "ba-solver"


def _options_of(fn: Callable[..., Any]) -> set[str]:
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY} - {"callback"}


def _affine(method: str, options: dict[str, Any]) -> tuple[int, int]:
    """``(a, b)`` with NFE = a * n_steps + b for ``method`` under ``options``."""
    if method == _BA:
        final = options.get("final", "single")
        anchors = options.get("anchors", "bi")
        if final not in ("single", "bi"):
            raise ValueError(f"ba-solver option final must be 'single' or 'bi', got {final!r}")
        if anchors not in ("bi", "single"):
            raise ValueError(f"ba-solver option anchors must be 'bi' or 'single', got {anchors!r}")
        if anchors == "single" or final == "single":
            return 1, 0
        return 1, 1
    if method not in SOLVERS:
        known = sorted(SOLVERS) + [_BA]
        raise ValueError(f"unknown method {method!r}; known methods: {known}")
    unknown = set(options) - _options_of(SOLVERS[method])
    if unknown:
        raise TypeError(
            f"method {method!r} has no option(s) {sorted(unknown)}; "
            f"its options are {sorted(_options_of(SOLVERS[method]))}"
        )
    if method == "heun":
        final_step = options.get("final_step", "euler")
        if final_step == "euler":
            return 2, -1
        if final_step == "heun":
            return 2, 0
        raise ValueError(f"final_step must be 'euler' or 'heun', got {final_step!r}")
    if method == "midpoint":
        return 2, 0
    if method == "rk4":
        return 4, 0
    return 1, 0  # euler and the multistep flow solvers: one call per step


def nfe_per_steps(method: str, n_steps: int, **options: Any) -> int:
    """Number of field calls of ``method`` on a grid of ``n_steps`` steps (``len(ts) - 1``).

    See the module table: euler N, heun 2N - 1 (``final_step="euler"``) or 2N, midpoint 2N,
    rk4 4N, dpm++ / unipc N (one call per step, the final point is never evaluated, UniC
    reuses the next step's call), ba-solver N (``final="single"`` or ``anchors="single"``)
    or N + 1 (``final="bi"``).

    Raises:
        ValueError: unknown method, bad option value, or ``n_steps < 1``.
        TypeError: an option the method does not have (ba-solver options other than
            ``final``/``anchors`` are ignored here; the core validates them).
    """
    if isinstance(n_steps, bool) or int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be a positive integer, got {n_steps!r}")
    a, b = _affine(method, options)
    return a * int(n_steps) + b


def steps_for_nfe(method: str, nfe: int, **options: Any) -> int:
    """The number of grid steps for which ``method`` makes exactly ``nfe`` field calls.

    Raises:
        ValueError: naming ``nfe`` if no whole number of steps >= 1 costs exactly ``nfe``
            (e.g. an even NFE for Heun with ``final_step="euler"``, an odd one for full Heun or
            midpoint, one not divisible by 4 for rk4, ``nfe < 2`` for ba-solver scheme A).
    """
    if isinstance(nfe, bool) or int(nfe) != nfe or nfe < 1:
        raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    a, b = _affine(method, options)
    steps, rem = divmod(int(nfe) - b, a)
    if rem != 0 or steps < 1:
        valid = ", ".join(str(a * k + b) for k in range(1, 5))
        raise ValueError(
            f"nfe={nfe} cannot be met exactly by {method!r} with options {options}: "
            f"it costs {a} * n_steps {'+' if b >= 0 else '-'} {abs(b)} NFE (valid budgets {valid}, ...)"
        )
    return steps
