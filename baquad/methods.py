"""The solver registry: every method ``baquad.solve`` runs, with its options and its NFE cost.

A method is a :class:`Method`: a sampler function with the shared contract

    sampler(field, x0, ts, *, callback=None, **options) -> x

(``field(t, x)`` the velocity, ``ts`` a strictly monotone grid, ``callback(i, ts[i], x_i[, info])``
after each grid point), the options it takes (its keyword-only parameters), an optional
``resolve(**options) -> options`` that checks the values and fills defaults, and its cost: how
many field calls (NFE) it makes on a grid of N steps, ``NFE = a * N + b`` with
``(a, b) = cost(**options)``. The registry resolves a method's options once
(:meth:`Method.options`) and hands the resolved options to the sampler, which does not resolve
them again.

The built-in methods are the one table ``_BUILTIN`` below; this module imports their samplers
(:mod:`baquad.bianchor`, :mod:`baquad.solvers`), which import nothing from here. The NFE counts
are only used to plan grids (:func:`nfe_per_steps`, :func:`steps_for_nfe`,
``baquad.schedules.nfe_grid``); ``solve`` counts the real calls, and the tests check one against
the other.

=================  =====================================================  =================
method             options (defaults first)                               NFE for N steps
=================  =====================================================  =================
``ba-solver``      ``rule="gauss-lobatto-4"``, ``perception``,            N | N + 1
                   ``final="single"|"bi"``, ``anchors="bi"|"single"``
``euler``          -                                                      N
``heun``           ``final_step="euler"|"heun"``                          2N - 1 | 2N
``midpoint``       -                                                      2N
``rk4``            -                                                      4N
``dpm++``          ``order=2|1|3``, ``solver_type="midpoint"|"heun"``,    N
                   ``lower_order_final="min"|"diffusers"|"none"``
``dpm++2m``        as ``dpm++`` with ``order=2``                          N
``dpm++3m``        as ``dpm++`` with ``order=3``                          N
``adams``          ``order=2|1`` (Adams-Bashforth in t; any direction)    N
``unipc``          ``order=2|1|3``, ``variant="bh2"|"bh1"``,              N
                   ``lower_order_final``, ``disable_corrector=()``
``bns``            ``coefficients`` (required: a                          N
                   ``NonStationaryCoefficients`` or a ``bns.npz`` path;
                   the grid must be ``coefficients.times``)
=================  =====================================================  =================

BA-solver (docs/algorithm.md#counting-nfe), N = number of intervals: the initial anchor is one
NFE and every bi-anchor interval one more. ``final="single"`` (scheme B, default): the last
interval is single-anchor and needs no call, so N intervals = N NFE. ``final="bi"`` (scheme A):
N intervals = N + 1 NFE (a budget of N NFE buys N - 1 intervals). ``anchors="single"`` (every
interval single-anchor): N intervals = N NFE. DPM-Solver++, UniPC and Adams make one call per
step: the final point is never evaluated, and UniC reuses the next step's call. A BNS solver
(:mod:`baquad.solvers.bns`) calls the field once per grid point but the last.

A user's method is registered the same way::

    baquad.methods.register_method(Method("my-solver", my_sampler, cost=lambda **o: (1, 0)))

A method registered without a cost can be solved with but not planned: :func:`steps_for_nfe`
(and ``baquad.schedules.nfe_grid``) refuse it, naming it, rather than guessing one call per step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Optional

from .bianchor import ba_cost, ba_solver_resolved, resolve_ba_options
from .solvers.adams import adams_bashforth
from .solvers.bns import bns, resolve_bns_options
from .solvers.dpmpp import dpmpp, dpmpp_2m, dpmpp_3m
from .solvers.fixed import euler, heun, heun_cost, midpoint, rk4
from .solvers.unipc import unipc

__all__ = ["Method", "register_method", "get_method", "method_names", "nfe_per_steps", "steps_for_nfe"]


@dataclass(frozen=True)
class Method:
    """A registered solver.

    Attributes:
        name: the name ``solve(method=...)`` takes.
        sampler: ``sampler(field, x0, ts, *, callback=None, **options) -> x``, called with the
            options as ``resolve`` returned them (it should not resolve them again).
        cost: ``cost(**options) -> (a, b)`` with NFE = a * n_steps + b for the resolved options;
            None: the method declares no cost and cannot be planned by NFE.
        resolve: ``resolve(**options) -> options``: validates the values (raising ValueError or
            TypeError naming the option) and returns every option with its default filled in.
            None: the options pass through as given (the sampler checks them).
    """

    name: str
    sampler: Callable[..., Any]
    cost: Optional[Callable[..., tuple[int, int]]] = None
    resolve: Optional[Callable[..., dict]] = None

    @cached_property
    def option_names(self) -> tuple[str, ...]:
        """The sampler's keyword-only parameters other than ``callback`` (read from its signature
        once per method)."""
        params = inspect.signature(self.sampler).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "callback")

    def options(self, given: dict) -> dict:
        """``given`` checked against the method's option names and resolved.

        Raises:
            TypeError: naming every option the method does not take, with the ones it takes (and
                the methods that do take it, when another registered method does).
        """
        valid = self.option_names
        unknown = sorted(set(given) - set(valid))
        if unknown:
            owners = {n: [m for m in method_names() if n in get_method(m).option_names] for n in unknown}
            hint = "; ".join(f"{n} is an option of {', '.join(o)}" for n, o in owners.items() if o)
            raise TypeError(
                f"options: {', '.join(unknown)} not understood by method {self.name!r}; its options are "
                f"{', '.join(valid) or '(none)'}" + (f" ({hint})" if hint else "")
            )
        return self.resolve(**given) if self.resolve is not None else dict(given)

    def nfe(self, n_steps: int, **options: Any) -> int:
        """Field calls on a grid of ``n_steps`` steps (see :func:`nfe_per_steps`)."""
        a, b = self._affine(options)
        return a * _positive_int(n_steps, "n_steps") + b

    def _affine(self, options: dict) -> tuple[int, int]:
        if self.cost is None:
            raise ValueError(
                f"method {self.name!r} declares no NFE cost, so no grid can be planned for an NFE budget; "
                "register it with cost=lambda **options: (a, b) (NFE = a * n_steps + b), or pass the grid yourself"
            )
        return self.cost(**self.options(options))


def _per_step(a: int, b: int = 0) -> Callable[..., tuple[int, int]]:
    """A cost that does not depend on the options: NFE = a * N + b."""

    def cost(**options: Any) -> tuple[int, int]:
        return a, b

    return cost


#: The built-in methods, the one place they are registered. BA-solver's sampler takes the options
#: ``resolve_ba_options`` resolved (the public ``baquad.bianchor.ba_solver`` resolves them itself
#: for a direct call); the baselines check their own options, so they register no ``resolve``,
#: but for BNS, whose ``resolve`` checks (or loads) its required ``coefficients``.
_BUILTIN: tuple[Method, ...] = (
    Method("ba-solver", ba_solver_resolved, cost=ba_cost, resolve=resolve_ba_options),
    Method("euler", euler, cost=_per_step(1)),
    Method("heun", heun, cost=heun_cost),
    Method("midpoint", midpoint, cost=_per_step(2)),
    Method("rk4", rk4, cost=_per_step(4)),
    Method("dpm++", dpmpp, cost=_per_step(1)),
    Method("dpm++2m", dpmpp_2m, cost=_per_step(1)),
    Method("dpm++3m", dpmpp_3m, cost=_per_step(1)),
    Method("unipc", unipc, cost=_per_step(1)),
    Method("adams", adams_bashforth, cost=_per_step(1)),
    Method("bns", bns, cost=_per_step(1), resolve=resolve_bns_options),
)

_REGISTRY: dict[str, Method] = {method.name: method for method in _BUILTIN}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to overwrite a name already taken)."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a baquad.methods.Method, got {type(method).__name__}")
    if method.name in _REGISTRY and not replace and _REGISTRY[method.name] is not method:
        raise ValueError(f"method: the name {method.name!r} is already registered; pass replace=True to overwrite it")
    _REGISTRY[method.name] = method
    return method


def method_names() -> tuple[str, ...]:
    """The registered method names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ValueError: naming ``method`` and listing the registered names.
    """
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"method: unknown method {name!r}; valid methods are: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _positive_int(n: Any, name: str) -> int:
    try:
        ok = not isinstance(n, bool) and int(n) == n and n >= 1
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def nfe_per_steps(method: str, n_steps: int, **options: Any) -> int:
    """Number of field calls of ``method`` on a grid of ``n_steps`` steps (``len(ts) - 1``).

    Euler N, Heun 2N - 1 (``final_step="euler"``) or 2N, midpoint 2N, RK4 4N, DPM-Solver++ and
    UniPC N (one call per step: the final point is never evaluated, UniC reuses the next step's
    call), BA-solver N (``final="single"`` or ``anchors="single"``) or N + 1 (``final="bi"``),
    BNS N (on its coefficients' own grid).

    Raises:
        ValueError: unknown method, a method without a declared cost, a bad option value, or
            ``n_steps < 1``.
        TypeError: an option the method does not take.
    """
    return get_method(method).nfe(n_steps, **options)


def steps_for_nfe(method: str, nfe: int, **options: Any) -> int:
    """The number of grid steps for which ``method`` makes exactly ``nfe`` field calls.

    Raises:
        ValueError: naming ``nfe`` if no whole number of steps >= 1 costs exactly ``nfe`` (an even
            NFE for Heun with ``final_step="euler"``, an odd one for full Heun or midpoint, one not
            divisible by 4 for RK4, ``nfe < 2`` for BA-solver scheme A), and naming the method if it
            declares no cost.
    """
    nfe = _positive_int(nfe, "nfe")
    a, b = get_method(method)._affine(options)
    steps, rem = divmod(nfe - b, a)
    if rem != 0 or steps < 1:
        valid = ", ".join(str(a * k + b) for k in range(1, 5))
        raise ValueError(
            f"nfe={nfe} cannot be met exactly by {method!r} with options {options}: "
            f"it costs {a} * n_steps {'+' if b >= 0 else '-'} {abs(b)} NFE (valid budgets {valid}, ...)"
        )
    return steps
