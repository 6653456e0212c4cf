"""The core's small files (BNS coefficients, learned grids): atomic writes and the check that a
file to read is there.

The core imports nothing from the adapters, so the one atomic writer lives here (the adapters
import it through ``adapters.torch_sit.files``): the bytes go to a temporary
file in the target's directory (``.<name>.<random>.tmp``), which is flushed, fsync'ed and moved
over the target with ``os.replace``; then the directory entry is fsync'ed. A crash at any point
leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

__all__ = ["atomic_stream", "atomic_write", "existing_file"]


@contextlib.contextmanager
def atomic_stream(path: "str | os.PathLike", *, shared: bool = False) -> Iterator[IO[bytes]]:
    """A binary file handle (read-write, seekable) whose content replaces ``path`` only when the
    block succeeds (module docstring). If the block raises, the temporary file is removed and
    ``path`` keeps its previous content.

    Args:
        path: the file to write (its directory is created).
        shared: the file's permissions. False: 0600, readable by its owner only (checkpoints,
            SideNets, run records). True: 0666 less the umask, as ``open`` would make it (data
            files other users read, such as a sample batch).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w+b") as fh:
            if shared:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide a shared data file from other users
            yield fh
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


def atomic_write(path: "str | os.PathLike", data: bytes, *, shared: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_stream`; its directory is created,
    permissions 0600 unless ``shared``); returns the path."""
    with atomic_stream(path, shared=shared) as fh:
        fh.write(data)
    return Path(path)


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
