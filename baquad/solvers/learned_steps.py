r"""BA-solver with learned, per-interval (non-stationary) quadrature weights.

The bi-anchor step (:mod:`baquad.bianchor`, paper Algorithm 1) sums the start anchor, the
SideNet's predictions and the terminal anchor with the rule's weights w_k, the same in every
interval. A learned BA-solver gives interval i (from t_i to t_{i+1}, h_i = t_{i+1} - t_i) its own
weights and lets it reach back to the earlier states and anchors of the trajectory, as a bespoke
non-stationary solver does with its states and velocities (:mod:`baquad.solvers.bns`):

    predictor   x~_{i+1} = x_i + h_i sum_k P[i, k] u_k            (forward probe, u_0 = v_i)
    corrector   x^_{i+1} = x_i + h_i sum_k W[i, k] u_k            (backward probe for c_k >= 1/2)
    history     x_{i+1}  = x^_{i+1} + sum_{j<i} a[i, j] (x_j - x_i) + h_i sum_{j<i} b[i, j] v_j

(a single-anchor interval, such as scheme B's last one, has x^_{i+1} = x~_{i+1}). u_k are the
velocities at the rule's nodes c_k exactly as in the plain step, v_j is the start anchor of
interval j (the backbone velocity, evaluated at the previous predictor) and x_j the state at t_j.
The times t_0 .. t_N are part of the learned solver too.

- With P = W = the rule's weights and a = b = 0 it is the plain BA-solver on that grid
  (:meth:`LearnedSteps.plain`).
- With a perception that predicts the anchor velocity itself (g = 0: anchor-only) every u_k is
  an anchor velocity, so each step is a linear combination of earlier states and anchor
  velocities: a BNS solver over the anchors.

The NFE is that of the plain BA-solver on the same grid: the weights cost nothing. They are
learned together with the grid and the SideNet against a tight solve's endpoints
(``python -m adapters.torch_sit.learned.ba``, docs/learned-solvers.md) and travel inside the
SideNet file (one set per number of intervals); :func:`baquad.bianchor.ba_solver_resolved` uses
the set a perception carries for exactly the grid it is given.

The weights hold numpy arrays (float64) or torch tensors; with tensors (a trainer) the step
indexes them and autograd reaches them. ``to_dict``/``from_dict`` give a JSON-able form.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field as dc_field
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .._backend import is_torch
from ..grids import check_grid
from ..rules import QuadratureRule, get_rule
from .bns import grid_floats, host_array, same_grid

__all__ = ["LearnedSteps", "carried_steps"]

FORMAT = "baquad-learned-steps"


@dataclass(frozen=True, eq=False)
class LearnedSteps:
    """Per-interval weights of a learned BA-solver (module docstring) for one grid.

    Attributes:
        rule: the quadrature rule's canonical name (``"gauss-lobatto-4"``); m = its node count.
        times: ``(N + 1,)`` strictly monotone grid t_0 .. t_N.
        predictor: ``(N, m)`` predictor weights P, one row per interval.
        corrector: ``(N, m)`` corrector weights W (unused in a single-anchor interval).
        a: ``(N, N)`` strictly lower-triangular, ``a[i, j]`` multiplies x_j - x_i.
        b: ``(N, N)`` strictly lower-triangular, ``b[i, j]`` multiplies h_i v_j.
        meta: JSON-able description (what they were learned for and how).

    Raises:
        ValueError, TypeError: naming the field: an unknown rule, shapes, strict lower
            triangles, finite values, a strictly monotone grid, one backend for all arrays.
    """

    rule: str
    times: Any
    predictor: Any
    corrector: Any
    a: Any
    b: Any
    meta: dict = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            name = get_rule(self.rule).name if isinstance(self.rule, str) else None
        except ValueError as err:
            raise ValueError(f"steps.rule: {err}") from None
        if name is None:
            raise TypeError(f"steps.rule: the name of a quadrature rule, got {self.rule!r}")
        object.__setattr__(self, "rule", name)
        fields = ("times", "predictor", "corrector", "a", "b")
        torch_fields = [f for f in fields if is_torch(getattr(self, f))]
        if torch_fields and len(torch_fields) != len(fields):
            raise TypeError(f"steps: {', '.join(fields)} must all be numpy arrays or all torch tensors; "
                            f"{', '.join(torch_fields)} are tensors")
        if not torch_fields:
            for f in fields:
                try:
                    arr = np.array(getattr(self, f), dtype=np.float64)
                except (TypeError, ValueError) as err:
                    raise TypeError(f"steps.{f}: expected an array of real numbers ({err})") from None
                arr.setflags(write=False)
                object.__setattr__(self, f, arr)
        grid = check_grid(host_array(self.times), "steps.times")
        n, m = len(grid) - 1, len(get_rule(self.rule).nodes)
        for f, shape in (("predictor", (n, m)), ("corrector", (n, m)), ("a", (n, n)), ("b", (n, n))):
            value = host_array(getattr(self, f))
            if value.shape != shape:
                raise ValueError(f"steps.{f}: must have shape {shape} for {n} intervals of {self.rule} "
                                 f"({m} nodes), got {value.shape}")
            if not np.isfinite(value).all():
                i = tuple(np.argwhere(~np.isfinite(value))[0].tolist())
                raise ValueError(f"steps.{f}: {f}{list(i)} is {value[i]}; every weight must be finite")
            if f in ("a", "b") and np.triu(value).any():
                i, j = np.argwhere(np.triu(value) != 0)[0].tolist()
                raise ValueError(f"steps.{f}: must be strictly lower-triangular (interval i reaches back to the "
                                 f"states and anchors j < i only), but {f}[{i}, {j}] = {value[i, j]!r}")
        if not isinstance(self.meta, dict):
            raise TypeError(f"steps.meta: expected a dict, got {type(self.meta).__name__}")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as err:
            raise ValueError(f"steps.meta: must be JSON-serialisable: {err}") from None

    @property
    def intervals(self) -> int:
        """N, the number of intervals."""
        return int(self.times.shape[0]) - 1

    @classmethod
    def plain(cls, times: Sequence[float], rule: "str | QuadratureRule" = "gauss-lobatto-4") -> "LearnedSteps":
        """The plain BA-solver on ``times`` as learned steps: P = W = the rule's weights, a = b = 0
        (the starting point of training)."""
        q = get_rule(rule)
        grid = check_grid(times, "times")
        n = len(grid) - 1
        w = np.tile(np.asarray(q.weights, dtype=np.float64), (n, 1))
        return cls(q.name, grid, w, w.copy(), np.zeros((n, n)), np.zeros((n, n)), {"init": "plain"})

    def numpy(self) -> "LearnedSteps":
        """The same weights as float64 numpy arrays (tensors detached and copied)."""
        return LearnedSteps(self.rule, *(host_array(getattr(self, f)) for f in ("times", "predictor", "corrector",
                                                                                 "a", "b")), dict(self.meta))

    def to_dict(self) -> dict:
        """A JSON-able form (float64 values as lists), read back by :meth:`from_dict`."""
        c = self.numpy()
        return {"format": FORMAT, "rule": c.rule, "times": c.times.tolist(), "predictor": c.predictor.tolist(),
                "corrector": c.corrector.tolist(), "a": c.a.tolist(), "b": c.b.tolist(), "meta": c.meta}

    @classmethod
    def from_dict(cls, data: Mapping, where: str = "steps") -> "LearnedSteps":
        """The inverse of :meth:`to_dict`, checked as on construction.

        Raises:
            ValueError: naming ``where`` when the dict is not of this format or a field fails.
        """
        keys = {"format", "rule", "times", "predictor", "corrector", "a", "b", "meta"}
        if not isinstance(data, Mapping) or set(data) != keys or data.get("format") != FORMAT:
            found = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"{where}: learned BA steps hold the fields {sorted(keys)} with format {FORMAT!r}; got "
                             f"{found}")
        try:
            return cls(data["rule"], data["times"], data["predictor"], data["corrector"], data["a"], data["b"],
                       dict(data["meta"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{where}: {err}") from None

    def check_grid_matches(self, ts: Sequence[Any]) -> tuple[float, ...]:
        """``ts`` as floats when it is this set's grid (to a few float64 ulps).

        Raises:
            ValueError: naming ``ts`` and saying to pass ``steps.times``.
        """
        grid = grid_floats(ts)
        if not same_grid(grid, host_array(self.times)):
            raise ValueError(f"ts: learned BA steps belong to their own grid; got {list(grid)}, but steps.times = "
                             f"{host_array(self.times).tolist()}. Pass ts=steps.times (baquad.schedules.default_grid "
                             "returns it for a perception that carries them).")
        return grid

    def rows(self) -> tuple[list, list, list, list]:
        """(P, W, a, b) row by row: Python floats for numpy weights (the state keeps its dtype),
        the tensors' rows for torch weights (autograd reaches them)."""
        if is_torch(self.times):
            return list(self.predictor), list(self.corrector), list(self.a), list(self.b)
        return self.predictor.tolist(), self.corrector.tolist(), self.a.tolist(), self.b.tolist()

    def __repr__(self) -> str:
        kind = "torch" if is_torch(self.times) else "numpy"
        return (f"LearnedSteps({self.rule}, intervals={self.intervals}, {kind}, "
                f"times={np.round(host_array(self.times), 6).tolist()})")


def carried_steps(perception: Any, ts: Sequence[Any], rule: QuadratureRule) -> Optional[LearnedSteps]:
    """The learned steps ``perception`` carries for exactly the grid ``ts`` and ``rule``, or None.

    A perception built from a SideNet file that holds learned steps (``learned_steps``: a mapping
    from the number of intervals to :class:`LearnedSteps`) uses them on their own grid; on any
    other grid, or with another rule, BA-solver runs with the rule's weights.
    """
    carried = getattr(perception, "learned_steps", None)
    if not carried:
        return None
    steps = carried.get(len(ts) - 1)
    if steps is None or steps.rule != rule.name:
        return None
    return steps if same_grid(grid_floats(ts), host_array(steps.times)) else None
