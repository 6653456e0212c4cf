"""Small helpers shared by the analysis scripts."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from adapters.report import markdown_table, pyplot, save_figure  # noqa: F401 (the analysis scripts' names)

#: where the committed figures live (the README shows them)
FIGURES = Path(__file__).resolve().parent / "figures"


def command(module: str, argv: Optional[Sequence[str]]) -> str:
    """The command line that reproduces a run, for the markdown header."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *args])


def output_paths(out: "str | os.PathLike", stem: str) -> tuple[Path, Path]:
    """``out/stem.png`` and ``out/stem.md``, creating ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{stem}.png", out / f"{stem}.md"


def write_report(out: "str | os.PathLike", stem: str, text: str) -> Path:
    """Print ``text``, write it to ``out/stem.md`` and say so; returns the path."""
    print(text)
    _, md = output_paths(out, stem)
    md.write_text(text + "\n")
    print(f"wrote {md}")
    return md


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Score(NamedTuple):
    """Samples x(0) of one solve scored against reference solutions from the same noises: mean,
    median and standard error of the trajectory error |x - x_ref|_2, the fraction of mode
    switches, and the NLL under the exact mixture; ``errors`` keeps the per-sample errors for
    paired comparisons on the same noises."""

    err: float
    nll: float
    median: float
    se: float
    switched: float
    errors: Optional[np.ndarray] = None


class Paired(NamedTuple):
    """A paired comparison of two per-sample error arrays on the same noises: the difference of
    the statistic (first minus second) and its standard error."""

    diff: float
    se: float

    @property
    def no_worse(self) -> bool:
        """The first is no worse: its statistic is at most the second's plus one standard error of
        the paired difference."""
        return self.diff <= self.se


def paired(a: np.ndarray, b: np.ndarray, stat: str = "mean", boot: int = 400, seed: int = 0) -> Paired:
    """``stat(a) - stat(b)`` for per-sample errors on the same noises, with its standard error:
    the standard error of the mean of a - b for ``"mean"``; for ``"median"`` a paired bootstrap
    (the same resampled noises for both, ``boot`` resamples) of median(a) - median(b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"paired: need two 1-D error arrays of one length >= 2, got {a.shape} and {b.shape}")
    if stat == "mean":
        d = a - b
        return Paired(float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))))
    if stat != "median":
        raise ValueError(f"paired: stat must be 'mean' or 'median', got {stat!r}")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(boot, len(a)))
    diffs = np.median(a[idx], axis=1) - np.median(b[idx], axis=1)
    return Paired(float(np.median(a) - np.median(b)), float(diffs.std(ddof=1)))


class Scorer:
    """``Scorer(flow, ref)(x) -> Score`` for a Gaussian-mixture flow.

    A mode switch is a sample whose most probable component at t = 0 (``flow.posterior``)
    differs from its reference solution's. Such a trajectory has an error of the order of the
    distance between modes, so the few switches a seed draws move the mean error; the median and
    the switch fraction separate the two kinds of error."""

    def __init__(self, flow: Any, ref: np.ndarray):
        self.flow, self.ref = flow, np.asarray(ref)
        self.ref_mode = np.asarray(flow.posterior(0.0, self.ref)).argmax(-1)

    def __call__(self, x: Any) -> Score:
        xn = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
        err = np.linalg.norm(xn - self.ref, axis=1)
        switched = np.asarray(self.flow.posterior(0.0, xn)).argmax(-1) != self.ref_mode
        return Score(err=float(err.mean()), nll=-float(np.mean(self.flow.log_prob(xn))), median=float(np.median(err)),
                     se=float(err.std(ddof=1) / np.sqrt(len(err))), switched=float(switched.mean()), errors=err)


# ---------------------------------------------------------------------------------------------
# command-line checks: every script validates its flags at parse time, before it trains, loads or
# writes anything (argparse then prints the flag, the value and the reason, and exits with 2)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that also refuses an empty value: Python's argparse turns
    ``--flag=--`` into ``[]`` without calling the flag's ``type=`` check, so a number flag would
    reach the script as an empty list."""

    def parse_args(self, args=None, namespace=None):  # noqa: D102 (argparse's)
        parsed = super().parse_args(args, namespace)
        for action in self._actions:
            if action.option_strings and action.type is not None and getattr(parsed, action.dest, None) == []:
                self.error(f"argument {'/'.join(action.option_strings)}: expected a value, got none")
        return parsed


def _number(kind: type, low: float, low_open: bool, high: Optional[float] = None, high_open: bool = False) -> Any:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}")
        too_high = high is not None and (value >= high if high_open else value > high)
        if not np.isfinite(value) or (value <= low if low_open else value < low) or too_high:
            bound = f"{'>' if low_open else '>='} {low:g}" + ("" if high is None else f" and {'<' if high_open else '<='} {high:g}")
            raise argparse.ArgumentTypeError(f"must be a finite number {bound}, got {text!r}")
        return value

    return parse


#: argparse ``type=`` checks
positive_int = _number(int, 0, True)
non_negative_int = _number(int, 0, False)
positive_float = _number(float, 0.0, True)
unit_time = _number(float, 0.0, False, 1.0)
#: a number of scored samples: at least 2, for the standard errors and the paired comparisons
sample_count = _number(int, 2, False)


#: a time strictly inside (0, 1) (a window boundary)
open_unit_time = _number(float, 0.0, True, 1.0, high_open=True)


def finite_float(text: str) -> float:
    """argparse ``type=``: any finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def generation_step(text: str) -> float:
    """argparse ``type=`` of an interval size h of generation (t: 1 -> 0): finite, in [-1, 0)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not (np.isfinite(value) and -1.0 <= value < 0.0):
        raise argparse.ArgumentTypeError(
            f"must be a finite number in [-1, 0) (generation runs t: 1 -> 0, so steps are negative), got {text!r}")
    return value


def even_int_at_least_2(text: str) -> int:
    """argparse ``type=``: an even integer >= 2 (e.g. offsets per interval with a midpoint)."""
    value = positive_int(text)
    if value < 2 or value % 2:
        raise argparse.ArgumentTypeError(f"must be an even integer >= 2, got {text!r}")
    return value


def flow_name(name: str) -> str:
    """argparse ``type=`` for any registered analytic flow."""
    from baquad.flows import FLOW_NAMES

    if name not in FLOW_NAMES:
        raise argparse.ArgumentTypeError(f"unknown flow {name!r}; valid: {', '.join(FLOW_NAMES)}")
    return name


def flow_with_density(name: str) -> str:
    """argparse ``type=`` for flows the trajectory/NLL scores need (Gaussian mixtures)."""
    from baquad.flows import FLOW_NAMES, get_flow

    flow = get_flow(flow_name(name))
    if "density" not in flow.truth or not hasattr(flow, "posterior"):
        raise argparse.ArgumentTypeError(
            f"{name!r} has no exact density and mode posterior (needed for the NLL and mode-switch scores); "
            f"use a Gaussian mixture: {', '.join(n for n in FLOW_NAMES if n.startswith('gmm'))}")
    return name


def resolve_out(args: Any, quick_dir: str = "runs/quick") -> Path:
    """The output directory: ``--out`` when given, else the committed figures, or ``quick_dir``
    for a ``--quick`` smoke run, which never writes into the committed figures (an explicit
    ``--out analysis/figures`` with ``--quick`` is refused)."""
    quick = getattr(args, "quick", False)
    out = Path(args.out) if args.out is not None else (Path(quick_dir) if quick else FIGURES)
    if quick and out.resolve() == FIGURES.resolve():
        raise SystemExit(f"--quick: a smoke run never writes into the committed figures ({FIGURES}); pass another --out")
    args.out = str(out)
    return out


def existing_file(flag: str, path: "str | os.PathLike") -> Path:
    """``path`` as a Path, or SystemExit naming ``flag`` when there is no file there."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"{flag}: {path} does not exist")
    return path


# ---------------------------------------------------------------------------------------------
# the shared setup of a benchmark: flow, seeded noises, reference solutions, scorer, threads


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads to ``threads`` (at most the machine's cores); nothing without
    torch."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional for the numpy-only scripts
        return
    torch.set_num_threads(max(1, min(threads, os.cpu_count() or 1)))


class Problem(NamedTuple):
    """A benchmark problem (see :func:`setup_problem`)."""

    flow: Any
    noise: np.ndarray  #: ``(n, dim)`` float64 standard-normal states at ``times[0]``
    times: tuple  #: the reference times (empty: no reference solved)
    ref: Optional[np.ndarray]  #: ``(len(times), n, dim)`` reference states, or None
    score: Optional[Scorer]  #: scores states at t = 0 against ``ref[-1]``, or None
    ref_seconds: float  #: wall time of the reference solve


def setup_problem(flow: Any, n: int, seed: int, *, times: Sequence[float] = (1.0, 0.0), rtol: float = 1e-10,
                  scored: bool = True, threads: Optional[int] = 2) -> Problem:
    """The setup the benchmark scripts share: the flow ``flow`` (a registered name, or a flow
    object), ``n`` noises drawn
    from ``numpy.random.default_rng(seed)`` (standard normal, shape ``(n, dim)``), their reference
    solutions at ``times`` (DOP853, ``rtol = atol = rtol``; ``times=()`` solves none), a
    :class:`Scorer` against the last reference states when ``scored`` (Gaussian-mixture flows),
    and torch pinned to ``threads`` threads (None leaves torch alone and unimported)."""
    import time

    from baquad.flows import get_flow
    from baquad.reference import reference_solve

    if threads is not None:
        set_threads(threads)
    model = get_flow(flow) if isinstance(flow, str) else flow
    noise = np.random.default_rng(seed).standard_normal((n, model.dim))
    ref, seconds = None, 0.0
    if len(times):
        start = time.perf_counter()
        ref = reference_solve(model, noise, list(times), rtol=rtol, atol=rtol)
        seconds = time.perf_counter() - start
    score = Scorer(model, ref[-1]) if scored and ref is not None else None
    return Problem(model, noise, tuple(times), ref, score, seconds)


def load_flow_sidenet(path: "str | os.PathLike", flow: Any, flag: str = "--sidenet") -> Any:
    """A trained SideNet for the states of ``flow`` (``(B, flow.dim)``), loaded with
    ``adapters.torch_sit.sidenet.checkpoint.load_sidenet``; SystemExit naming ``flag`` when the adapter
    cannot be imported, the file is missing or unreadable, the SideNet is for states of another
    shape (``check_sidenet_state``), or its file records another backbone than ``flow``
    (``check_sidenet_backbone``: gmm-64d's SideNet reads the 64 numbers of any state)."""
    try:
        from adapters.torch_sit.sidenet.checkpoint import check_sidenet_backbone, load_sidenet
        from adapters.torch_sit.sidenet.perception import check_sidenet_state
    except ImportError as err:
        raise SystemExit(
            f"{flag}: cannot import adapters.torch_sit ({err}). The SideNet needs torch and the "
            "adapters/torch_sit package of this repository; install the torch extra, or drop the SideNet."
        ) from None
    path = existing_file(flag, path)
    try:
        net = load_sidenet(path)
    except (OSError, ValueError) as err:
        raise SystemExit(f"{flag}: cannot load {path}: {err}") from None
    try:
        check_sidenet_state(net, (1, flow.dim), f"{flag} {path}")
        check_sidenet_backbone(net, flow.name, f"{flag} {path}")
    except ValueError as err:
        raise SystemExit(f"{err} ({flow.name} has {flow.dim}-dimensional states; its SideNet: "
                         f"python -m adapters.torch_sit.train --backbone {flow.name})") from None
    return net


def digits_scoring(reference: "Optional[os.PathLike | str]", n: Optional[int]) -> tuple:
    """What the digits scripts score against: ``(ref, guidance, field)``, the reference set at
    ``reference`` (default: the shipped one) cut to its first ``n`` samples (None: all), its
    guidance scale, and the digits SiT's guided field for its labels; SystemExit naming
    ``--reference`` when the set cannot be read."""
    from adapters.torch_sit.digits.model import digits_sit_backbone, shipped_path
    from adapters.torch_sit.digits.reference import load_reference

    try:
        ref = load_reference(reference or shipped_path("reference"))
    except (OSError, ValueError) as err:
        raise SystemExit(f"--reference: {err}") from None
    if n is not None:
        ref = ref.head(n)
    guidance = float(ref.meta["guidance_scale"])
    return ref, guidance, digits_sit_backbone().vfield(labels=ref.labels, guidance_scale=guidance)
