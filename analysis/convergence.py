"""Measured convergence orders of BA-solver and the baselines on a flow with a known solution.

Run ``python -m analysis.convergence`` (options: ``--flow``, ``--methods``, ``--t0``/``--t1``,
``--steps``, ``--quick``, ``--out``). For every method it integrates the flow from ``t0`` to ``t1``
on uniform grids of several step counts, measures the max-abs error of the final states of 8
seeded noise samples against the flow's exact solution (``flow.exact``; ``reference_solve`` for a
flow without one) with :func:`baquad.order.empirical_order`, and writes

- ``<out>/convergence_<flow>.png``: log-log error against step size, the fitted slopes in the
  legend (BA-solver variants left, baselines right);
- ``<out>/convergence_<flow>.md``: the table of fitted orders (method, fitted order, expected
  order, residual of the log-log fit, step counts, smallest error) and the reasons for the
  expected orders.

It prints the table and where it wrote the files. Default: ``gaussian-2d`` (Gaussian data on the
linear path, exact trajectories) over t: 0.9 -> 0.1; runtime about 15 s on 2 cores (the oracle
perception integrates a DOP853 reference per probe). ``--quick`` writes under ``runs/quick`` unless
``--out`` says otherwise, never into ``analysis/figures``.

Your own ODE: ``--field module:function`` names a field ``f(t, x)`` (t a Python float, x an array
like x0; the module is imported from the working directory too), with ``--x0`` the initial state
as a JSON list (``'[[1.0, 0.5]]'``) or a ``module:function`` returning it, ``--t0``/``--t1`` the span
(default 0 -> 1 for a field), and optionally ``--exact module:function``, ``exact(t1, x0, t0)``
returning the exact state at t1; without it the truth is a DOP853 reference at rtol = atol =
1e-13. The files are then ``convergence_<function>.png/.md``. For example::

    python -m analysis.convergence --field mymodule:f --x0 '[[1.0, 0.0]]' --t0 0 --t1 2 \
        --methods euler,heun,rk4,ba-polynomial --out runs/convergence-mine

Each row also gives the order fitted over the three smallest steps; where it differs from the
order over all steps by more than 0.25 (or the residual exceeds 0.25) the row is marked as
pre-asymptotic (``baquad.order.empirical_order``). The flow solvers (DPM-Solver++, UniPC) run
only on the linear-path flows (the Gaussian and mixture flows) with 0 < t1 < t0 <= 1, and with
``lower_order_final="none"`` so that the measured order is the formula's, not that of a final
order-1 step.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

from adapters.commandline import load_object
from baquad.flows import FLOW_NAMES, GaussianMixtureFlow, get_flow
from baquad.order import EmpiricalOrder, empirical_order

from ._common import command, finite_float, markdown_table, output_paths, pyplot, resolve_out, save_figure, shown

ORACLE_TOL = dict(oracle_rtol=1e-13, oracle_atol=1e-14)
FLOW_SOLVER_OPTIONS = dict(lower_order_final="none")


@dataclass(frozen=True)
class Spec:
    """One curve: a ``baquad.solve`` method with options, its expected order and step counts."""

    label: str
    method: str
    options: dict
    expected: str
    why: str
    steps: tuple[int, ...]
    quick: tuple[int, ...]
    flow_solver: bool = False
    style: dict = field(default_factory=dict)


_O1 = (16, 32, 64, 128, 256)
_O2 = (8, 16, 32, 64, 128)
_O4 = (4, 6, 8, 12, 16, 24)
_O6 = (6, 8, 12, 16, 20)

METHODS: dict[str, Spec] = {
    "ba-oracle-gl2": Spec(
        "BA GL2 oracle", "ba-solver", dict(rule="gauss-lobatto-2", perception="oracle"), "2",
        "Gauss-Lobatto-n has degree 2n - 3: local error O(h^(2n-1)), global 2n - 2 (exact velocities)",
        _O2, (8, 16, 32), style=dict(color="C0", marker="o"),
    ),
    "ba-oracle-gl3": Spec(
        "BA GL3 oracle", "ba-solver", dict(rule="gauss-lobatto-3", perception="oracle"), "4",
        "as GL2: 2n - 2", _O4, (8, 12, 16), style=dict(color="C1", marker="s"),
    ),
    "ba-oracle-gl4": Spec(
        "BA GL4 oracle", "ba-solver", dict(rule="gauss-lobatto-4", perception="oracle"), "6",
        "as GL2: 2n - 2", _O6, (8, 12, 16), style=dict(color="C2", marker="^"),
    ),
    "ba-oracle-gl4-single": Spec(
        "BA GL4 oracle, single-anchor", "ba-solver",
        dict(rule="gauss-lobatto-4", perception="oracle", anchors="single"), "6",
        "with exact velocities the single-anchor predictor is the rule itself; the bi-anchor "
        "corrector only changes the O(h^(2n)) terms (tests/test_order_empirical.py)",
        _O6, (8, 12, 16), style=dict(color="C2", marker="v", linestyle="--"),
    ),
    "ba-polynomial": Spec(
        "BA GL4 polynomial (default)", "ba-solver", dict(), "2",
        "the forward probes extrapolate the anchors linearly (error O(h^2) per node): local O(h^3)",
        _O2, (16, 32, 64), style=dict(color="C3", marker="D"),
    ),
    "ba-anchor-only": Spec(
        "BA GL4 anchor-only", "ba-solver", dict(perception="anchor-only"), "2",
        "g = 0 makes bi-anchor GL4 Heun with state reuse",
        _O2, (16, 32, 64), style=dict(color="C4", marker="P"),
    ),
    "ba-anchor-only-single": Spec(
        "BA GL4 anchor-only, single-anchor", "ba-solver", dict(perception="anchor-only", anchors="single"), "1",
        "g = 0 and no terminal anchor: every node gets the start velocity, Euler",
        _O1, (32, 64, 128), style=dict(color="C4", marker="X", linestyle="--"),
    ),
    "ba-polynomial-gl3": Spec(
        "BA GL3 polynomial", "ba-solver", dict(rule="gauss-lobatto-3"), "3",
        "the midpoint node is in the backward half: quadratic interpolation of three anchors, "
        "error O(h^3), local O(h^4) (GL4's node at 0.28 is forward-only: linear extrapolation, order 2)",
        _O2, (16, 32, 64), style=dict(color="C3", marker="d", linestyle=":"),
    ),
    "ba-anchor-only-gl3": Spec(
        "BA GL3 anchor-only", "ba-solver", dict(rule="gauss-lobatto-3", perception="anchor-only"), "1",
        "g = 0 gives the midpoint node (weight 2/3) the end anchor's velocity: h (v0 + 5 v1) / 6, "
        "a first-order rule; anchor-only is order 2 only for rules symmetric in their use of the anchors",
        _O1, (32, 64, 128), style=dict(color="C4", marker="p", linestyle=":"),
    ),
    "ba-anchor-only-gl2": Spec(
        "BA GL2 anchor-only", "ba-solver", dict(rule="gauss-lobatto-2", perception="anchor-only"), "2",
        "no interior nodes: the trapezoid rule on the predicted end state, Heun with state reuse",
        _O2, (16, 32, 64), style=dict(color="C4", marker="h", linestyle="-."),
    ),
    "euler": Spec("Euler", "euler", {}, "1", "", _O1, (32, 64, 128), style=dict(color="C5", marker="o")),
    "heun": Spec("Heun", "heun", {}, "2", "", _O2, (16, 32, 64), style=dict(color="C6", marker="s")),
    "rk4": Spec("RK4", "rk4", {}, "4", "", (8, 12, 16, 24, 32), (8, 12, 16), style=dict(color="C7", marker="^")),
    "dpm++2m": Spec(
        "DPM-Solver++ 2M", "dpm++", dict(order=2, **FLOW_SOLVER_OPTIONS), "2", "",
        (16, 32, 64, 128, 256), (32, 64, 128), flow_solver=True, style=dict(color="C8", marker="D"),
    ),
    "dpm++3m": Spec(
        "DPM-Solver++ 3M", "dpm++", dict(order=3, **FLOW_SOLVER_OPTIONS), "2",
        "the published 3M update is order 2 (tests/test_baselines_order.py), and its order-1 "
        "warm-up step (local O(h^2)) caps a uniform grid at 2 anyway",
        (16, 32, 64, 128, 256), (32, 64, 128), flow_solver=True, style=dict(color="C9", marker="P"),
    ),
    "unipc": Spec(
        "UniPC-2 (bh2)", "unipc", dict(order=2, **FLOW_SOLVER_OPTIONS), "3",
        "the corrector UniC raises UniP-2 by one order",
        (16, 32, 64, 128, 256), (32, 64, 128), flow_solver=True, style=dict(color="k", marker="X"),
    ),
}


def _linear_path_span(flow: Any, t0: float, t1: float) -> bool:
    return isinstance(flow, GaussianMixtureFlow) and 0.0 < t1 < t0 <= 1.0


def measure(flow_name: str, keys: Sequence[str], t0: float, t1: float, quick: bool,
            steps: Optional[Sequence[int]] = None, *, field: Optional[Callable] = None, x0: Any = None,
            exact: Optional[Callable] = None) -> tuple[list[tuple[str, Spec, EmpiricalOrder]], list[str]]:
    """Run every method; returns the results and the notes about skipped methods. With ``field``
    (a user's ``f(t, x)``), ``flow_name`` is only its label, ``x0`` is required and ``exact``
    (``exact(t1, x0, t0)``) is optional (else a DOP853 reference)."""
    if field is None:
        flow = get_flow(flow_name)
        x0 = np.random.default_rng(0).standard_normal((8, flow.dim))
        truth = None
    else:
        flow = field
        truth = None if exact is None else exact(t1, x0, t0)
    results, notes = [], []
    for key in keys:
        spec = METHODS[key]
        if spec.flow_solver and not _linear_path_span(flow, t0, t1):
            notes.append(
                f"{spec.label} skipped: flow solvers need a linear-path flow (Gaussian/mixture) and "
                f"0 < t1 < t0 <= 1 (got {flow_name}, t {t0:g} -> {t1:g})"
            )
            continue
        counts = tuple(steps) if steps else (spec.quick if quick else spec.steps)
        opts = dict(spec.options)
        if opts.get("perception") == "oracle":
            opts.update(ORACLE_TOL)
        with warnings.catch_warnings():  # a pre-asymptotic fit is marked in the table instead
            warnings.simplefilter("ignore", UserWarning)
            res = empirical_order(spec.method, flow, counts, x0=x0, t0=t0, t1=t1, exact=truth, **opts)
        results.append((key, spec, res))
    return results, notes


def plot(results, flow_name: str, t0: float, t1: float, path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 6.4), sharex=True, sharey=True)
    for ax, title, want_ba in ((axes[0], "BA-solver", True), (axes[1], "baselines", False)):
        for key, spec, res in results:
            if (spec.method == "ba-solver") != want_ba:
                continue
            ax.loglog(res.step_sizes, res.errors, label=f"{spec.label}: slope {res.order:.2f}",
                      markersize=5, **{"linestyle": "-", **spec.style})
        ax.set_title(f"{title}: {flow_name}, t {t0:g} -> {t1:g}")
        ax.set_xlabel("step size h")
        ax.grid(True, which="both", alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    axes[0].set_ylabel("max |x_N - x(t1)|")
    save_figure(fig, path, dpi=90)


def table(results, span: float) -> str:
    """The markdown table of fitted orders."""
    rows = []
    for key, spec, res in results:
        counts = ", ".join(str(int(round(span / h))) for h in res.step_sizes)
        tail = f"{res.tail.order:.2f}" + (" (pre-asymptotic)" if res.pre_asymptotic else "")
        rows.append([f"`{key}`", spec.label, f"{res.order:.2f}", spec.expected, f"{res.residual:.3f}", tail,
                     counts, f"{res.errors.min():.1e}"])
    return markdown_table(
        ["key", "method", "fitted order", "expected order", "residual", "order, 3 smallest steps", "step counts",
         "smallest error"],
        rows, "llrrrrlr",
    )


def notes_text(results) -> str:
    lines = ["Expected orders:", ""]
    for key, spec, _ in results:
        if spec.why:
            lines.append(f"- `{key}` ({spec.expected}): {spec.why}.")
    return "\n".join(lines)


def symbolic_text(rules: Sequence[str] = ("gauss-lobatto-2", "gauss-lobatto-3", "gauss-lobatto-4")) -> str:
    """The sympy side of the same story (baquad.order), for the rules on the plot."""
    try:
        from baquad.order import anchor_error_bounds, leading_lte, quadrature_anchor_bounds
    except ImportError:  # pragma: no cover - sympy is a dev dependency
        return ""
    rows = []
    for rule in rules:
        lte = leading_lte(rule)
        q = quadrature_anchor_bounds(rule)
        rows.append([rule, lte.degree, lte.degree + 1, f"`{lte.term}`", f"`{q.ratio}` = {float(q.ratio):.3f}"])
    b = anchor_error_bounds()
    return "\n".join([
        "Symbolic (`baquad.order`, sympy): degree of exactness d from the exact nodes and weights, the "
        "leading local error `C h^(d+2) v^(d+1)` (Dv = v^(d+1)), and the ratio of the bi- to the "
        "single-anchor error bound of the rule's own offsets (`quadrature_anchor_bounds`; the "
        f"paper's continuous bounds are {b.single} and {b.bi}, ratio {b.ratio}).",
        "",
        markdown_table(["rule", "degree d", "global order d + 1", "leading local error",
                        "bi/single bound ratio"], rows, "lrrll"),
    ])


def _import_object(text: str) -> Any:
    """``module:name`` imported (:func:`adapters.commandline.load_object`), as an argparse error."""
    try:
        return load_object(text, "", form="module:function")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


class Imported(NamedTuple):
    """A function named on the command line: the function and its ``module:function``."""

    fn: Callable
    spec: str

    @property
    def label(self) -> str:
        """A file-name stem: ``module-function`` with other characters replaced by ``_``."""
        return re.sub(r"[^\w.-]", "_", self.spec.replace(":", "-"))


def callable_spec(text: str) -> Imported:
    """argparse ``type=`` of ``--field``/``--exact``: ``module:function``, a callable."""
    obj = _import_object(text)
    if not callable(obj):
        raise argparse.ArgumentTypeError(f"{text!r} is not a function (its type is {type(obj).__name__})")
    return Imported(obj, text)


def initial_state(text: str) -> np.ndarray:
    """argparse ``type=`` of ``--x0``: a JSON number or (nested) list, or ``module:function``
    returning the state; a finite real array (a number becomes a one-element state)."""
    if ":" in text and not text.lstrip().startswith(("[", "{")):
        fn = _import_object(text)
        value = fn() if callable(fn) else fn
        where = f"{text}() returned"
    else:
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise argparse.ArgumentTypeError(f"expected a JSON list such as '[[1.0, 0.5]]' or module:function, "
                                             f"got {text!r} ({err.msg})")
        where = "JSON"
    try:
        x0 = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value, dtype=np.float64)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"{where} {value!r}: not a rectangular array of real numbers")
    if not np.all(np.isfinite(x0)):
        raise argparse.ArgumentTypeError(f"{where} non-finite values")
    return x0.reshape(1) if x0.ndim == 0 else x0


def step_counts(text: str) -> list[int]:
    """argparse ``type=`` of ``--steps``: comma-separated whole numbers >= 1, at least 2 distinct."""
    counts = []
    for part in text.split(","):
        try:
            n = int(part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated step counts such as 8,16,32, got {text!r} "
                                             f"({part.strip()!r} is not a whole number)")
        if n < 1:
            raise argparse.ArgumentTypeError(f"step counts must be >= 1, got {n} in {text!r}")
        counts.append(n)
    if len(set(counts)) < 2:
        raise argparse.ArgumentTypeError(f"need at least 2 distinct step counts to fit an order, got {text!r}")
    return counts


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flow", default=None, choices=FLOW_NAMES, help="built-in flow (default gaussian-2d)")
    parser.add_argument("--field", type=callable_spec, default=None,
                        help="your own ODE instead of a flow: module:function, f(t, x) with t a float")
    parser.add_argument("--x0", type=initial_state, default=None,
                        help="with --field: the initial state, a JSON list ('[[1.0, 0.5]]') or module:function")
    parser.add_argument("--exact", type=callable_spec, default=None,
                        help="with --field: module:function, exact(t1, x0, t0) -> x(t1) (default: a DOP853 reference)")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated method keys (default all): {', '.join(METHODS)}")
    parser.add_argument("--t0", type=finite_float, default=None, help="start time (default 0.9 for a flow, 0 for --field)")
    parser.add_argument("--t1", type=finite_float, default=None, help="end time (default 0.1 for a flow, 1 for --field)")
    parser.add_argument("--steps", type=step_counts, default=None,
                        help="comma-separated step counts for every method (default: per method)")
    parser.add_argument("--quick", action="store_true", help="3 step counts per method (a smoke run, under runs/quick)")
    parser.add_argument("--out", default=None,
                        help="output directory (default analysis/figures; runs/quick with --quick)")
    args = parser.parse_args(argv)

    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown or not keys:
        parser.error(f"--methods: unknown {', '.join(unknown) or '(none given)'}; valid: {', '.join(METHODS)}")
    args.keys = keys
    if args.field is not None:
        if args.flow is not None:
            parser.error("--flow and --field: give one (a built-in flow, or your own field)")
        if args.x0 is None:
            parser.error("--field needs --x0: the initial state, a JSON list such as '[[1.0, 0.5]]' or module:function")
        args.t0 = 0.0 if args.t0 is None else args.t0
        args.t1 = 1.0 if args.t1 is None else args.t1
        args.label = args.field.label
    else:
        for flag in ("x0", "exact"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag}: only with --field (a built-in flow brings its own)")
        args.flow = args.flow or "gaussian-2d"
        args.t0 = 0.9 if args.t0 is None else args.t0
        args.t1 = 0.1 if args.t1 is None else args.t1
        args.label = args.flow
    if args.t0 == args.t1:
        parser.error(f"--t0, --t1: the start and end time must differ, got {args.t0:g} for both")
    try:
        resolve_out(args)
    except SystemExit as err:
        parser.error(str(err))
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    results, notes = measure(args.label, args.keys, args.t0, args.t1, args.quick, args.steps,
                             field=args.field and args.field.fn, x0=args.x0, exact=args.exact and args.exact.fn)
    if not results:
        raise SystemExit("no method could run: " + "; ".join(notes))
    png, md = output_paths(args.out, f"convergence_{args.label}")
    plot(results, args.label, args.t0, args.t1, png)
    text = table(results, abs(args.t1 - args.t0))
    elapsed = time.perf_counter() - start
    cmd = command("analysis.convergence", argv)
    if args.field is None:
        flow = get_flow(args.flow)
        truth = "flow.exact" if "trajectory" in flow.truth else "reference_solve (DOP853, rtol = atol = 1e-13)"
        what = (f"# Convergence orders on {args.flow}\n\n`{cmd}`\n\n"
                f"t: {args.t0:g} -> {args.t1:g} on uniform grids, 8 seeded standard-normal states of dimension {flow.dim}")
    else:
        truth = (f"`{args.exact.spec}` (exact)" if args.exact is not None
                 else "reference_solve (DOP853, rtol = atol = 1e-13)")
        what = (f"# Convergence orders on {args.field.spec}\n\n`{cmd}`\n\n"
                f"t: {args.t0:g} -> {args.t1:g} on uniform grids, x0 of shape {tuple(args.x0.shape)} (--x0)")
    header = (
        f"{what}; error = max |x_N - x(t1)| over all entries against {truth}; fitted order = "
        "least-squares slope of log(error) against log(step size) (`baquad.order.empirical_order`), over all "
        "step counts and over the 3 smallest steps (marked pre-asymptotic where the two differ by more than "
        "0.25 or the residual exceeds 0.25), residual = RMS deviation of log(error) from that line. Oracle "
        "perception: DOP853 at rtol 1e-13, atol 1e-14. BA-solver uses solve's defaults (Gauss-Lobatto-4, "
        "scheme B: the last interval single-anchor) unless stated. Flow solvers: `lower_order_final=\"none\"`.\n"
    )
    body = "\n".join([header, text, ""] + ([f"- {n}" for n in notes] + [""] if notes else [])
                     + [notes_text(results), "", symbolic_text(), ""])
    md.write_text(body)
    print(f"$ {cmd}")
    print(text)
    for n in notes:
        print(f"note: {n}")
    print(f"wrote {shown(png)}")
    print(f"wrote {shown(md)}")
    print(f"({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
