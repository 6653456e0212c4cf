"""The core's small files (BNS coefficients, learned grids): atomic writes and the check that a
file to read is there.

The core imports nothing from the adapters, so it has its own writer: the bytes go to a temporary
file in the target's directory (``.<name>.<random>.tmp``), which is flushed, fsync'ed and moved
over the target with ``os.replace``; then the directory entry is fsync'ed. A crash at any point
leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "existing_file"]


def atomic_write(path: "str | os.PathLike", data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (its directory is created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # platforms without directory file descriptors
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


def existing_file(path: "str | os.PathLike", written_by: str) -> Path:
    """``path`` as a Path, checked to be an existing regular file.

    Raises:
        FileNotFoundError: no such file (naming ``written_by``, what writes such files).
        ValueError: something else than a regular file (a directory, a FIFO, ...).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, f"{path}: no such file ({written_by})")
    if not path.is_file():
        raise ValueError(f"{path}: not a regular file; pass the file itself")
    return path
