"""Files shipped inside the adapter package (``adapters/torch_sit/digits/weights``), checked by SHA-256.

The directory holds safetensors files and a ``SHA256SUMS`` manifest in the format of coreutils'
``sha256sum`` (one ``<64 hex digits>  <file name>`` line per file), so
``cd adapters/torch_sit/digits/weights && sha256sum -c SHA256SUMS`` checks them too. :func:`verified`
hashes a file before anything parses it and refuses it, naming it, when the digest differs from
the manifest's: a corrupted, truncated or swapped file never reaches the loader. Loading itself
uses safetensors (no pickled code runs).

:func:`write_with_sum` is the writing side: the file is written atomically and its line in the
manifest of the same directory is added or replaced (the manifest is rewritten atomically too);
:func:`record_sum` does the second half for a file rewritten by other code.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Optional

from ..files import atomic_write, sha256_file

__all__ = ["WEIGHTS_DIR", "SUMS_NAME", "ChecksumError", "read_sums", "verified", "write_with_sum",
           "record_sum", "shipped_file"]

#: the package-data directory of the shipped weights
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: the manifest's file name
SUMS_NAME = "SHA256SUMS"

_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


class ChecksumError(ValueError):
    """A file's SHA-256 differs from its manifest entry, or the file has no entry."""


def read_sums(directory: "str | os.PathLike") -> dict[str, str]:
    """``{file name: hex digest}`` from ``directory/SHA256SUMS`` (empty when there is none).

    Raises:
        ValueError: a malformed line (naming the manifest and the line number).
    """
    path = Path(directory) / SUMS_NAME
    if not path.is_file():
        return {}
    sums: dict[str, str] = {}
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        m = _LINE.match(line.strip())
        if m is None:
            raise ValueError(f"{path}, line {no}: expected '<sha256 hex>  <file name>', got {line!r}")
        sums[m.group(2)] = m.group(1)
    return sums


def verified(path: "str | os.PathLike", expected: Optional[str] = None, *, required: bool = True) -> Path:
    """``path``, after checking its SHA-256 against ``expected`` (default: the entry of the
    ``SHA256SUMS`` beside it).

    Args:
        path: the file.
        expected: the hex digest it must have; None reads the manifest of its directory.
        required: refuse a file without a manifest entry (False: accept it unchecked; for files
            a user trained, whose directory may carry no manifest).

    Raises:
        FileNotFoundError: no such file.
        ChecksumError: the digest differs (a corrupted or truncated file), or there is no entry
            and ``required``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if expected is None:
        expected = read_sums(path.parent).get(path.name)
        if expected is None:
            if required:
                raise ChecksumError(f"{path}: no SHA-256 entry for this file in {path.parent / SUMS_NAME}; "
                                    "refusing to load an unverified file")
            return path
    got = sha256_file(path)
    if got != expected.lower():
        raise ChecksumError(
            f"{path}: SHA-256 {got} does not match the expected {expected.lower()} "
            f"({path.stat().st_size} bytes); the file is corrupted, truncated or not the one shipped. "
            "Restore it (git checkout -- <file>) or retrain it with the command in its JSON sidecar."
        )
    return path


def write_with_sum(path: "str | os.PathLike", data: bytes) -> str:
    """Write ``data`` to ``path`` atomically and record its SHA-256 in the directory's
    ``SHA256SUMS`` (other entries kept, sorted by name). Returns the hex digest."""
    path = Path(path)
    atomic_write(path, data)
    digest = hashlib.sha256(data).hexdigest()
    _record(path, digest)
    return digest


def record_sum(path: "str | os.PathLike") -> str:
    """Record the SHA-256 of the file ``path`` as it is now in its directory's ``SHA256SUMS``
    (other entries kept, sorted by name; the manifest rewritten atomically). Returns the hex
    digest."""
    path = Path(path)
    digest = sha256_file(path)
    _record(path, digest)
    return digest


def _record(path: Path, digest: str) -> None:
    sums = read_sums(path.parent)
    sums[path.name] = digest
    text = "".join(f"{sums[name]}  {name}\n" for name in sorted(sums))
    atomic_write(path.parent / SUMS_NAME, text.encode())


def shipped_file(name: str) -> Path:
    """The shipped file ``WEIGHTS_DIR/name``, verified against the manifest (:func:`verified`)."""
    return verified(WEIGHTS_DIR / name)
