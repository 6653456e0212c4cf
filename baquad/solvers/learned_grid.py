"""Learned grids: time grids trained for one method (LD3 learns them), saved as small JSON files
that any sampler can run on.

A :class:`LearnedGrid` holds the method and the options it was learned for, one grid per number
of steps in the grid-spec form of :mod:`baquad.schedules` (``{"steps": {"N": [t_0, ..., t_N]}}``,
each strictly decreasing from a start in (0, 1] to exactly 0; one grid per NFE, since the NFE
fixes the number of steps), and free-form metadata (backbone, guidance, training noises, loss,
...). :meth:`LearnedGrid.grid_for` returns the grid for a method and an NFE and refuses, naming
both, a grid learned for another method (or other options) or an NFE the file lacks;
``baquad.schedules.nfe_grid(method, nfe, learned_grid)`` calls it, so a learned grid goes
wherever a schedule goes.

File format (:func:`save_grid`, :func:`load_grid`), JSON written atomically::

    {"format": "baquad-learned-grid", "version": 1,
     "method": "unipc", "options": {"order": 2, ...},
     "grid": {"steps": {"5": [1.0, 0.71, 0.43, 0.2, 0.06, 0.0]}},
     "meta": {"learned_by": "ld3", "backbone": {...}, "guidance_scale": 1.5, ...}}

``options`` are the method's options as the registry resolves them, every default filled in, in
JSON form (tuples as lists; an option that JSON cannot hold, such as a perception object, as its
``repr``), so that ``unipc`` and ``unipc`` with ``order=2`` name the same grid.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Optional

from ..methods import get_method, nfe_per_steps, steps_for_nfe
from ..schedules import check_grid_spec
from ._files import atomic_write, existing_file

__all__ = ["LearnedGrid", "method_options", "save_grid", "load_grid", "FORMAT"]

FORMAT = "baquad-learned-grid"
VERSION = 1


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def method_options(method: str, **options: Any) -> dict:
    """``method``'s options as a learned grid records them: resolved by the registry, every
    keyword default of its sampler filled in, in JSON form, sorted by name.

    Raises:
        ValueError, TypeError: an unknown method or option, a bad value (from the registry).
    """
    spec = get_method(method)
    resolved = spec.options(options)
    defaults = {p.name: p.default for p in inspect.signature(spec.sampler).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "callback" and p.default is not p.empty}
    full = {**defaults, **resolved}
    return {k: _jsonable(full[k]) for k in sorted(full)}


@dataclass(frozen=True)
class LearnedGrid:
    """Grids learned for one method (module docstring).

    Attributes:
        method: the registered method the grids were learned for.
        options: its options, in :func:`method_options` form.
        grid: ``{"steps": {"N": [t_0, ..., t_N]}}``, one grid per number of steps.
        meta: JSON-able description (backbone, guidance, training noises, loss, ...).
        source: where it was read from, for messages (not compared).

    Raises:
        ValueError: naming the field: a method that is not a string, options or meta that are not
            JSON objects, a grid that is not a valid ``{"steps": ...}`` spec.
    """

    method: str
    options: dict
    grid: dict
    meta: dict = dc_field(default_factory=dict)
    source: Optional[str] = dc_field(default=None, compare=False)

    def __post_init__(self) -> None:
        where = self.source or "learned grid"
        if not isinstance(self.method, str) or not self.method:
            raise ValueError(f"{where}: field 'method' must be a method name, got {self.method!r}")
        for name in ("options", "meta"):
            value = getattr(self, name)
            if not isinstance(value, dict) or _jsonable(value) != value:
                raise ValueError(f"{where}: field {name!r} must be a JSON object, got {value!r}")
        if not (isinstance(self.grid, dict) and set(self.grid) == {"steps"}):
            raise ValueError(f"{where}: field 'grid' must be {{'steps': {{'N': [t_0, ..., t_N]}}}}, got {self.grid!r}")
        object.__setattr__(self, "grid", check_grid_spec(self.grid, f"{where}: field 'grid'"))

    def _name(self) -> str:
        return f"the grid file {self.source}" if self.source else "the learned grid"

    def grid_for(self, method: str, nfe: int, **options: Any) -> tuple[float, ...]:
        """The grid on which ``method`` (with ``options``) spends exactly ``nfe`` calls.

        Raises:
            ValueError: naming ``method`` when the grids were learned for another method,
                ``options`` when for other options (each differing one named with both values),
                ``nfe`` when no grid has that NFE (listing the NFEs there are).
        """
        if method != self.method:
            raise ValueError(f"method: {self._name()} was learned for {self.method!r}, not {method!r}; sample with "
                             f"method={self.method!r}, or learn a grid for {method!r} "
                             f"(python -m adapters.torch_sit.learned.ld3 --method {method} ...)")
        given = method_options(method, **options)
        diff = sorted(k for k in set(given) | set(self.options) if given.get(k) != self.options.get(k))
        if diff:
            raise ValueError(f"options: {self._name()} was learned for {method!r} with "
                             + ", ".join(f"{k}={self.options.get(k)!r}" for k in diff) + "; got "
                             + ", ".join(f"{k}={given.get(k)!r}" for k in diff)
                             + ". Pass the options it was learned with, or learn a grid for these.")
        steps = steps_for_nfe(method, nfe, **options)
        ts = self.grid["steps"].get(str(steps))
        if ts is None:
            have = sorted(nfe_per_steps(method, int(n), **options) for n in self.grid["steps"])
            raise ValueError(f"nfe: {self._name()} holds {method!r} grids for NFE {', '.join(map(str, have))}, not "
                             f"NFE {nfe}; sample at one of those, or learn a grid for NFE {nfe}")
        return tuple(ts)

    def merged(self, other: "LearnedGrid") -> "LearnedGrid":
        """One grid file holding the grids of both (same method and options; the meta of each
        NFE kept under ``meta["by_steps"]``).

        Raises:
            ValueError: another method or other options, or two different grids for one NFE.
        """
        if (other.method, other.options) != (self.method, self.options):
            raise ValueError(f"other: learned for {other.method!r} with {other.options}, this one for {self.method!r} "
                             f"with {self.options}; only grids of one method and options share a file")
        steps = dict(self.grid["steps"])
        for n, ts in other.grid["steps"].items():
            if n in steps and steps[n] != ts:
                raise ValueError(f"other: both hold a grid of {n} steps, and they differ; keep one of them")
            steps[n] = ts
        by_steps = {**self.meta.get("by_steps", {n: self.meta for n in self.grid["steps"]}),
                    **other.meta.get("by_steps", {n: other.meta for n in other.grid["steps"]})}
        return LearnedGrid(self.method, self.options, {"steps": steps}, {"by_steps": by_steps})


def save_grid(path: "str | os.PathLike", grid: LearnedGrid) -> Path:
    """Write ``grid`` to ``path`` as JSON (module docstring), atomically; returns the path."""
    if not isinstance(grid, LearnedGrid):
        raise TypeError(f"grid: expected a LearnedGrid, got {type(grid).__name__}")
    doc = {"format": FORMAT, "version": VERSION, "method": grid.method, "options": grid.options,
           "grid": grid.grid, "meta": grid.meta}
    return atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())


def load_grid(path: "str | os.PathLike") -> LearnedGrid:
    """Read a grid file written by :func:`save_grid`, checked.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a learned-grid file (not JSON, another format or version, a missing or
            invalid field); the message names the file and the field.
    """
    path = existing_file(path, "grid files are written by save_grid or python -m adapters.torch_sit.learned.ld3")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a learned-grid file (not JSON: {err})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ValueError(f"{path}: not a learned-grid file (format {found!r}, expected {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise ValueError(f"{path}: field 'version' is {doc.get('version')!r}; this baquad reads version {VERSION}")
    missing = [k for k in ("method", "options", "grid", "meta") if k not in doc]
    if missing:
        raise ValueError(f"{path}: missing field(s) {', '.join(map(repr, missing))}")
    return LearnedGrid(doc["method"], doc["options"], doc["grid"], doc["meta"], source=str(path))
