"""Small helpers shared by the analysis scripts."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

#: where the committed figures live (the README shows them)
FIGURES = Path(__file__).resolve().parent / "figures"


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: "str | os.PathLike", dpi: int) -> None:
    """Lay out ``fig``, write it as PNG to ``path`` and free it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def command(module: str, argv: Optional[Sequence[str]]) -> str:
    """The command line that reproduces a run, for the markdown header."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python -m", module, *args])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column, ``l`` or ``r``."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def output_paths(out: "str | os.PathLike", stem: str) -> tuple[Path, Path]:
    """``out/stem.png`` and ``out/stem.md``, creating ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return out / f"{stem}.png", out / f"{stem}.md"


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class Score(NamedTuple):
    """Samples x(0) of one solve scored against reference solutions from the same noises: mean,
    median and standard error of the trajectory error |x - x_ref|_2, the fraction of mode
    switches, and the NLL under the exact mixture."""

    err: float
    nll: float
    median: float
    se: float
    switched: float


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
                     se=float(err.std(ddof=1) / np.sqrt(len(err))), switched=float(switched.mean()))
