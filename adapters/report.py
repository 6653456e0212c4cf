"""Reports the commands write: markdown tables and PNG figures (matplotlib on the Agg backend).

Shared by the adapters' commands (``baquad demo``, the digits edit) and the analysis scripts
(``analysis/_common.py`` re-exports these names). Importing this module imports neither torch
nor matplotlib; :func:`pyplot` imports matplotlib when a figure is drawn.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

__all__ = ["markdown_table", "pyplot", "save_figure"]


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


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: Optional[str] = None) -> str:
    """A GitHub markdown table; ``align`` is one character per column, ``l`` or ``r``."""
    align = align or "l" * len(headers)
    rule = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(rule) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
