r"""Bespoke non-stationary (BNS) solvers: every step a linear combination of all earlier states
and velocities, with its own coefficients.

On a grid ``t_0, t_1, ..., t_N`` (strictly monotone; generation runs from noise t_0 = 1 to data
t_N = 0) a BNS solver makes one field call per grid point but the last, ``u_j = v(x_j, t_j)``
(N NFE), and sets, for i = 0 .. N - 1,

    x_{i+1} = sum_{j<=i} A[i, j] x_j  +  sum_{j<=i} B[i, j] u_j

with lower-triangular N x N matrices A and B. The family holds the classical explicit methods:

- Euler on the grid: A = I, B = diag(h_i), h_i = t_{i+1} - t_i (:meth:`~NonStationaryCoefficients.euler`);
- an explicit linear multistep method is another lower-triangular (A, B): the variable-step
  Adams-Bashforth 2 of :mod:`baquad.solvers.adams` has A = I and, with r_i = h_i / h_{i-1},
  B[i, i] = h_i (1 + r_i / 2), B[i, i - 1] = -h_i r_i / 2 (an Euler first step;
  :meth:`~NonStationaryCoefficients.adams`);
- an explicit Runge-Kutta method is a BNS solver on the grid of its stages: the RK midpoint
  method on s_0, s_1, ..., s_M (steps H_k = s_{k+1} - s_k) runs on
  s_0, s_0 + H_0 / 2, s_1, s_1 + H_1 / 2, ..., s_M with x_{2k+1} = x_{2k} + (H_k / 2) u_{2k}
  and x_{2k+2} = x_{2k} + H_k u_{2k+1}, two calls per coarse step
  (:meth:`~NonStationaryCoefficients.midpoint`).

A learned BNS solver (Shaul et al., *Bespoke Non-Stationary Solvers for Fast Sampling of Diffusion
and Flow Models*, ICML 2024, arXiv 2403.01329) trains the grid and the lower triangles of A and B
against a tight solve's endpoints; ``python -m adapters.torch_sit.learned.bns`` does it
(docs/learned-solvers.md) and writes a coefficient file that :meth:`NonStationaryCoefficients.load`
reads without torch.

The coefficients hold numpy arrays (float64) or torch tensors. With torch tensors the sampler
indexes them and never converts them to floats, so a trainer's autograd reaches A, B and, when
``times`` requires grad, the times (the field is then called with 0-dim tensor times).

File format (``save``/``load``): an ``.npz`` archive read with ``allow_pickle=False``, holding
``format`` (the string ``"baquad-bns-coefficients"``), ``times`` ``(N + 1,)``, ``a`` and ``b``
``(N, N)`` (float64), and ``meta``, a JSON object as a string (what the coefficients were made or
learned for: the initialisation, the backbone, the loss, ...). Written atomically.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from dataclasses import dataclass, field as dc_field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .._backend import is_torch
from ..grids import check_grid
from ._files import atomic_write, existing_file

__all__ = ["NonStationaryCoefficients", "bns", "resolve_bns_options", "FORMAT"]

X = Any
FORMAT = "baquad-bns-coefficients"
#: how far, in float64 ulps, a grid passed as ``ts`` may sit from the coefficients' own times
TS_ULPS = 4


def host_array(value: Any) -> np.ndarray:
    """A float64 numpy copy of an array, a tensor (detached) or a sequence of numbers."""
    if is_torch(value):
        return value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def _check(times: Any, a: Any, b: Any, meta: Any, name: Callable[[str], str]) -> None:
    """Raise ValueError (TypeError for wrong kinds) naming the field (``name(field)``) and the fix."""
    backends = {f: is_torch(v) for f, v in (("times", times), ("a", a), ("b", b))}
    if len(set(backends.values())) != 1:
        raise TypeError(f"{name('times')}, {name('a')}, {name('b')}: all numpy arrays or all torch tensors, got "
                        + ", ".join(f"{f} {'torch' if t else 'numpy'}" for f, t in backends.items()))
    for f, v in (("times", times), ("a", a), ("b", b)):
        floating = v.dtype.is_floating_point if is_torch(v) else np.issubdtype(v.dtype, np.floating)
        if not floating:
            raise TypeError(f"{name(f)}: needs a real floating dtype, got {v.dtype}")
    grid = check_grid(host_array(times), name("times"))
    n = len(grid) - 1
    for f, v in (("a", a), ("b", b)):
        m = host_array(v)
        if m.shape != (n, n):
            raise ValueError(f"{name(f)}: must have shape (N, N) = ({n}, {n}) for a grid of {n + 1} times, "
                             f"got {m.shape}")
        if not np.isfinite(m).all():
            bad = np.argwhere(~np.isfinite(m))[0].tolist()
            raise ValueError(f"{name(f)}: {f}[{bad[0]}, {bad[1]}] is {m[tuple(bad)]}; every coefficient must be finite")
        upper = np.triu(m, 1)
        if upper.any():
            i, j = np.argwhere(upper != 0)[0].tolist()
            raise ValueError(f"{name(f)}: must be lower-triangular (step i may use x_j and u_j for j <= i only), "
                             f"but {f}[{i}, {j}] = {m[i, j]!r}; set the entries above the diagonal to 0")
    if not isinstance(meta, dict):
        raise TypeError(f"{name('meta')}: expected a dict, got {type(meta).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name('meta')}: must be JSON-serialisable (plain numbers, strings, lists, dicts): "
                         f"{err}") from None


@dataclass(frozen=True, eq=False)
class NonStationaryCoefficients:
    """A BNS solver: its grid and its coefficient matrices (module docstring).

    Attributes:
        times: ``(N + 1,)`` strictly monotone times t_0 .. t_N.
        a: ``(N, N)`` lower-triangular state coefficients, ``a[i, j]`` multiplies x_j in x_{i+1}.
        b: ``(N, N)`` lower-triangular velocity coefficients, ``b[i, j]`` multiplies u_j.
        meta: JSON-able description (how they were made, what they were learned for).

    numpy inputs (and lists) are stored as float64 arrays; torch tensors are kept as they are
    (gradients included). Every field is checked on construction.

    Raises:
        ValueError, TypeError: naming the field: shapes, lower-triangularity, finite values, a
            strictly monotone grid, a JSON-able ``meta``, one backend for all three arrays.
    """

    times: Any
    a: Any
    b: Any
    meta: dict = dc_field(default_factory=dict)

    def __post_init__(self) -> None:
        for f in ("times", "a", "b"):
            value = getattr(self, f)
            if not is_torch(value):
                try:
                    arr = np.array(value, dtype=np.float64)
                except (TypeError, ValueError) as err:
                    raise TypeError(f"coefficients.{f}: expected an array of real numbers, got {value!r}") from err
                arr.setflags(write=False)
                object.__setattr__(self, f, arr)
        _check(self.times, self.a, self.b, self.meta, lambda f: f"coefficients.{f}")

    @property
    def nfe(self) -> int:
        """Field calls per solve: N, one per grid point but the last."""
        return int(self.times.shape[0]) - 1

    def numpy(self) -> "NonStationaryCoefficients":
        """The same coefficients as float64 numpy arrays (tensors detached and copied)."""
        return NonStationaryCoefficients(host_array(self.times), host_array(self.a), host_array(self.b), dict(self.meta))

    def __repr__(self) -> str:
        kind = "torch" if is_torch(self.times) else "numpy"
        return f"NonStationaryCoefficients(nfe={self.nfe}, {kind}, times={np.round(host_array(self.times), 6).tolist()})"

    # -- the classical methods as BNS solvers ------------------------------------------------

    @classmethod
    def euler(cls, times: Sequence[float]) -> "NonStationaryCoefficients":
        """Euler on ``times``: A = I, B = diag(t_{i+1} - t_i); N calls."""
        grid = check_grid(times, "times")
        n = len(grid) - 1
        b = np.diag([grid[i + 1] - grid[i] for i in range(n)])
        return cls(grid, np.eye(n), b, {"init": "euler"})

    @classmethod
    def midpoint(cls, coarse_times: Sequence[float]) -> "NonStationaryCoefficients":
        """The explicit midpoint method on ``coarse_times`` (M steps) as a BNS solver on its 2M + 1
        stage times (module docstring); 2M calls, the same stage times and arithmetic as
        :func:`baquad.solvers.fixed.midpoint`."""
        coarse = check_grid(coarse_times, "coarse_times")
        m = len(coarse) - 1
        times, a, b = [], np.zeros((2 * m, 2 * m)), np.zeros((2 * m, 2 * m))
        for k in range(m):
            h = coarse[k + 1] - coarse[k]
            half = 0.5 * h
            times += [coarse[k], coarse[k] + half]
            a[2 * k, 2 * k], b[2 * k, 2 * k] = 1.0, half  # x_mid = x_k + (H/2) u_k
            a[2 * k + 1, 2 * k], b[2 * k + 1, 2 * k + 1] = 1.0, h  # x_{k+1} = x_k + H u_mid
        times.append(coarse[-1])
        return cls(times, a, b, {"init": "midpoint", "coarse_times": list(coarse)})

    @classmethod
    def adams(cls, times: Sequence[float], order: int = 2) -> "NonStationaryCoefficients":
        """The variable-step Adams-Bashforth method of :mod:`baquad.solvers.adams` (``order`` 1
        or 2, an Euler first step) on ``times``: A = I, B[i, i] = h_i (1 + r_i / 2),
        B[i, i - 1] = -h_i r_i / 2 with r_i = h_i / h_{i-1}; N calls."""
        if isinstance(order, bool) or order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order!r}")
        grid = check_grid(times, "times")
        n = len(grid) - 1
        b = np.zeros((n, n))
        for i in range(n):
            h = grid[i + 1] - grid[i]
            if order == 1 or i == 0:
                b[i, i] = h
            else:
                r = h / (grid[i] - grid[i - 1])
                b[i, i], b[i, i - 1] = h * (1.0 + 0.5 * r), -(h * (0.5 * r))
        return cls(grid, np.eye(n), b, {"init": f"adams-{order}"})

    # -- files --------------------------------------------------------------------------------

    def save(self, path: "str | os.PathLike") -> Path:
        """Write the coefficients (float64) to ``path`` atomically (the module docstring's format)."""
        c = self.numpy()
        buf = io.BytesIO()
        np.savez(buf, format=np.array(FORMAT), times=c.times, a=c.a, b=c.b, meta=np.array(json.dumps(c.meta)))
        return atomic_write(path, buf.getvalue())

    @classmethod
    def load(cls, path: "str | os.PathLike") -> "NonStationaryCoefficients":
        """Read a coefficient file written by :meth:`save` (numpy only, no pickle), checked as on
        construction.

        Raises:
            FileNotFoundError: no such file.
            ValueError: not a BNS coefficient file, or a field that fails the checks; the message
                names the file and the field.
        """
        path = existing_file(path, "BNS coefficients are written by NonStationaryCoefficients.save or "
                                   "python -m adapters.torch_sit.learned.bns")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
            raise ValueError(f"{path}: not a BNS coefficient file (an npz written by NonStationaryCoefficients.save): "
                             f"{err}") from None
        expected = {"format", "times", "a", "b", "meta"}
        if set(data) != expected:
            raise ValueError(f"{path}: a BNS coefficient file holds the fields {sorted(expected)}, this one "
                             f"{sorted(data)}; write it with NonStationaryCoefficients.save")
        if data["format"].shape != () or str(data["format"]) != FORMAT:
            raise ValueError(f"{path}: field 'format' is {data['format']!r}, not {FORMAT!r}")
        try:
            meta = json.loads(str(data["meta"])) if data["meta"].shape == () else None
        except json.JSONDecodeError:
            meta = None
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: field 'meta' must be a JSON object stored as one string")
        try:
            _check(data["times"], data["a"], data["b"], meta, lambda f: f"{path}: field {f!r}")
        except (TypeError, ValueError) as err:
            raise ValueError(str(err)) from None
        return cls(data["times"], data["a"], data["b"], meta)


def grid_floats(ts: Any) -> tuple[float, ...]:
    """``ts`` (floats, a 1-D array or tensor, or a sequence of 0-dim tensors) checked as a grid."""
    if isinstance(ts, (list, tuple)) and any(is_torch(t) for t in ts):
        ts = [float(t.detach()) if is_torch(t) else t for t in ts]
    return check_grid(ts, "ts")


def same_grid(grid: tuple[float, ...], times: np.ndarray) -> bool:
    g = np.asarray(grid)
    if g.shape != times.shape:
        return False
    return bool((np.abs(g - times) <= TS_ULPS * np.spacing(np.maximum(np.abs(g), np.abs(times)))).all())


def bns(
    field: Callable[[Any, X], X],
    x0: X,
    ts: Sequence[Any],
    *,
    callback: Optional[Callable[..., None]] = None,
    coefficients: NonStationaryCoefficients,
) -> X:
    """Run the BNS solver ``coefficients`` from ``x0`` (module docstring): N = len(ts) - 1 steps,
    N NFE.

    Args:
        field: ``field(t, x)``, called at ``t = ts[i]`` (a Python float), or at the 0-dim tensor
            ``coefficients.times[i]`` when the times require grad (a trainer).
        x0: the state at ``ts[0]``, numpy or torch (torch when the coefficients are tensors).
        ts: the coefficients' own grid, ``coefficients.times`` (to a few float64 ulps): floats,
            a 1-D array or tensor, or a sequence of 0-dim tensors.
        callback: ``callback(i, ts[i], x_i)`` after each grid point i = 1 .. N.
        coefficients: a :class:`NonStationaryCoefficients`.

    Raises:
        TypeError: ``coefficients`` of another type; torch coefficients with a numpy state.
        ValueError: naming ``ts`` when it is not ``coefficients.times``.
    """
    c = coefficients
    if not isinstance(c, NonStationaryCoefficients):
        raise TypeError(f"coefficients: expected a NonStationaryCoefficients, got {type(c).__name__}")
    grid = grid_floats(ts)
    if not same_grid(grid, host_array(c.times)):
        raise ValueError(f"ts: a BNS solver runs on its own grid; got {list(grid)}, but coefficients.times = "
                         f"{host_array(c.times).tolist()}. Pass ts=coefficients.times.")
    learned = is_torch(c.times)
    if learned and not is_torch(x0):
        raise TypeError("coefficients: torch coefficients need a torch state; pass a tensor x0, or "
                        "coefficients.numpy() for a numpy one")
    # torch: index the tensors (autograd reaches them); numpy: Python floats (the state keeps its dtype)
    a, b = (c.a, c.b) if learned else (c.a.tolist(), c.b.tolist())
    tensor_times = learned and bool(c.times.requires_grad)
    xs, us = [x0], []
    for i in range(len(grid) - 1):
        us.append(field(c.times[i] if tensor_times else grid[i], xs[i]))
        x = None
        for coef, terms in ((a[i], xs), (b[i], us)):
            for j in range(i + 1):
                if not learned and coef[j] == 0.0:
                    continue  # an exact zero adds nothing; skipping it keeps the classical arithmetic
                term = coef[j] * terms[j]
                x = term if x is None else x + term
        xs.append(x if x is not None else 0.0 * xs[i])
        if callback is not None:
            callback(i + 1, grid[i + 1], xs[-1])
    return xs[-1]


def resolve_bns_options(coefficients: Any = None) -> dict:
    """``coefficients`` checked for :func:`bns` (the registry's ``resolve``): a
    :class:`NonStationaryCoefficients`, or the path of a coefficient file (loaded).

    Raises:
        ValueError: none given, or a file that does not load.
        TypeError: anything else.
    """
    if coefficients is None:
        raise ValueError("coefficients: method 'bns' needs coefficients=NonStationaryCoefficients(...) or the path "
                         "of a bns.npz (NonStationaryCoefficients.euler(ts) reproduces Euler; "
                         "python -m adapters.torch_sit.learned.bns learns one)")
    if isinstance(coefficients, (str, os.PathLike)):
        coefficients = NonStationaryCoefficients.load(coefficients)
    if not isinstance(coefficients, NonStationaryCoefficients):
        raise TypeError(f"coefficients: expected a NonStationaryCoefficients or a path, got "
                        f"{type(coefficients).__name__}")
    return {"coefficients": coefficients}

