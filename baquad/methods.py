"""The solver registry: every method ``baquad.solve`` runs, with its options and its NFE cost.

A method is a :class:`Method`: a sampler function with the shared contract

    sampler(field, x0, ts, *, callback=None, **options) -> x

(``field(t, x)`` the velocity, ``ts`` a strictly monotone grid, ``callback(i, ts[i], x_i[, info])``
after each grid point), the options it takes (its keyword-only parameters), an optional
``resolve(**options) -> options`` that checks the values and fills defaults, and its cost: how
many field calls (NFE) it makes on a grid of N steps, ``NFE = a * N + b`` with
``(a, b) = cost(**options)``. BA-solver (:mod:`baquad.bianchor`) and the baselines
(:mod:`baquad.solvers`) are registered the same way; so is a user's method::

    baquad.methods.register_method(Method("my-solver", my_sampler, cost=lambda **o: (1, 0)))

A method registered without a cost can be solved with but not planned: :func:`steps_for_nfe`
(and ``baquad.schedules.nfe_grid``) refuse it, naming it, rather than guessing one call per step.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional

__all__ = ["Method", "register_method", "get_method", "method_names", "nfe_per_steps", "steps_for_nfe"]


@dataclass(frozen=True)
class Method:
    """A registered solver.

    Attributes:
        name: the name ``solve(method=...)`` takes.
        sampler: ``sampler(field, x0, ts, *, callback=None, **options) -> x``.
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

    @property
    def option_names(self) -> tuple[str, ...]:
        """The sampler's keyword-only parameters other than ``callback``."""
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


_REGISTRY: dict[str, Method] = {}


def register_method(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (``replace=True`` to overwrite a name already taken)."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a baquad.methods.Method, got {type(method).__name__}")
    if method.name in _REGISTRY and not replace and _REGISTRY[method.name] is not method:
        raise ValueError(f"method: the name {method.name!r} is already registered; pass replace=True to overwrite it")
    _REGISTRY[method.name] = method
    return method


def _load_builtin() -> None:
    from . import solvers  # noqa: F401  (registers BA-solver and the baselines on import)


def method_names() -> tuple[str, ...]:
    """The registered method names, sorted."""
    _load_builtin()
    return tuple(sorted(_REGISTRY))


def get_method(name: str) -> Method:
    """The registered method ``name``.

    Raises:
        ValueError: naming ``method`` and listing the registered names.
    """
    _load_builtin()
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
    call), BA-solver N (``final="single"`` or ``anchors="single"``) or N + 1 (``final="bi"``).

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
