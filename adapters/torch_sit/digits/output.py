"""Where a demo writes its results: never over an earlier run's unless asked, and checked first.

A demo decides where its results go before it loads or runs anything (:func:`results_dir`):

- ``--out`` itself, when it holds none of this demo's result files (the first run: ``baquad
  demo`` writes ``runs/demo/demo.md``);
- otherwise the first free ``--out/run-2``, ``--out/run-3``, ...: the earlier results stay as
  they were, and a second ``baquad demo`` in a row still works;
- with ``--overwrite``, ``--out`` itself again, its earlier results replaced.

``--out`` (or its nearest existing parent) must be a directory this process can write in; that
is checked before any sampling, not discovered after it. The results are rendered in memory and
written at the end, each file atomically (:func:`write_results`).
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..files import atomic_write

__all__ = ["results_dir", "writable_dir", "write_results", "figure_bytes"]


def writable_dir(out: Path, flag: str = "--out") -> None:
    """Refuse, naming ``flag``, a ``out`` that is a file, lies below a file, or lies in a
    directory this process cannot write in (permissions, a read-only file system). Nothing is
    created."""
    probe = Path(out)
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        where = "is" if probe == Path(out) else f"lies below {probe}, which is"
        raise ValueError(f"{flag}: {out} {where} a file, not a directory; pass a directory (it is created if missing)")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: cannot write in {probe} (no permission, or a read-only file system); pass a "
                         "directory you can write in")


def results_dir(out: Path, names: Sequence[str], overwrite: bool, flag: str = "--out") -> Path:
    """The directory this run writes ``names`` into (module docstring); nothing is written.

    Raises:
        ValueError: ``out`` cannot hold results (:func:`writable_dir`).
    """
    out = Path(out)
    writable_dir(out, flag)
    if overwrite or not any((out / name).exists() for name in names):
        return out
    k = 2
    while (out / f"run-{k}").exists():
        k += 1
    return out / f"run-{k}"


def earlier_results(out: Path, target: Path, names: Sequence[str]) -> str:
    """The line a demo logs when ``target`` is not ``out`` (earlier results kept) or when it
    replaces them (``--overwrite``); empty when ``out`` held none."""
    held = [name for name in names if (Path(out) / name).exists()]
    if not held:
        return ""
    if Path(target) != Path(out):
        return (f"{out} holds the results of an earlier run ({', '.join(held)}); they are kept, and this run writes "
                f"to {target} (--overwrite replaces them instead)")
    return f"--overwrite: replacing the earlier results in {out} ({', '.join(held)})"


def figure_bytes(plot: Callable[..., None], *args: Any) -> bytes:
    """The PNG that ``plot(*args, path)`` would write, as bytes (rendered in memory)."""
    buffer = io.BytesIO()
    plot(*args, buffer)
    return buffer.getvalue()


def write_results(directory: Path, files: Mapping[str, bytes]) -> None:
    """Create ``directory`` and write every ``name: bytes`` into it, each file atomically and
    readable like any file the user creates (``0666 & ~umask``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write(directory / name, data, shared=True)
