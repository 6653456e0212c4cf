"""baquad's safetensors files: written atomically with a SHA-256 of their contents, read with checks.

A baquad file is a safetensors file (an 8-byte little-endian header length, a JSON header naming
every tensor's dtype, shape and byte range, then the raw tensor bytes) whose header metadata holds
two strings:

- ``"baquad"``: the file's own metadata as JSON (its format, ``version``, SideNet architecture,
  ...), interpreted by :mod:`adapters.torch_sit.sidenet.checkpoint`;
- ``"baquad.sha256"``: the hex SHA-256 of the contents (:func:`content_hash`), from version 2 on.

The content hash is SHA-256 over a sequence of fields, each fed as its length (8 bytes,
little-endian) followed by its bytes: the tag ``b"baquad-sha256-v1"``; the metadata JSON string
(UTF-8, exactly as stored); then, for every tensor in sorted name order, its name (UTF-8), its
dtype as torch spells it (``"torch.float32"``), its shape as a JSON list (``"[8, 4]"``) and its
raw bytes (C order, little-endian, as safetensors stores them). Any change to a tensor's bytes,
dtype, shape or name, or to any metadata field, changes the hash.

Reading (:func:`read_header`, then :func:`read_tensors`) never executes code and fails with an
error that names the file and says what is wrong:

1. the path must be a regular file, checked with ``os.stat`` without opening it (a FIFO would block
   a reader forever; a directory or device is no SideNet); a missing file is a FileNotFoundError,
   any other OS error is re-raised with the file's name and its cause;
2. safetensors parses the header (tensor data is not read; byte ranges are validated against the
   file's size), and the ``"baquad"`` metadata must be a JSON object with an integer ``version``;
3. :func:`read_tensors` reads the tensors and recomputes the hash. A mismatch is an error. A
   version-1 file (written before the hash existed) loads with an :class:`UnverifiedFileWarning`
   naming the file; a version-2 file without a hash is refused.

Everything between 2 and 3 (that the metadata describes the stored tensors) is the caller's to
check, before it allocates anything the header asks for.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save

from baquad.solvers._files import atomic_stream, atomic_write

__all__ = [
    "FORMAT_VERSION",
    "InvalidFile",
    "UnverifiedFileWarning",
    "FileHeader",
    "atomic_stream",
    "atomic_write",
    "sha256_file",
    "content_hash",
    "serialise",
    "read_header",
    "read_tensors",
    "require_regular_file",
]

#: The version written now: 2 added the content hash. Version 1 files load with a warning.
FORMAT_VERSION = 2
META_KEY = "baquad"
HASH_KEY = "baquad.sha256"
_HASH_TAG = b"baquad-sha256-v1"


class InvalidFile(ValueError):
    """A baquad file that is not a regular file, not safetensors, corrupt, or inconsistent. The
    message starts with the file's path."""


class UnverifiedFileWarning(UserWarning):
    """A file written before baquad stored a content hash was loaded without an integrity check."""


def sha256_file(path: "str | os.PathLike") -> str:
    """The hex SHA-256 of a file's bytes (read in blocks of 4 MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _feed(h: "hashlib._Hash", data: Any) -> None:
    view = memoryview(data).cast("B")
    h.update(len(view).to_bytes(8, "little"))
    h.update(view)


def content_hash(meta_json: str, tensors: Mapping[str, torch.Tensor]) -> str:
    """The hex SHA-256 of a file's metadata string and tensors (see the module docstring)."""
    h = hashlib.sha256()
    _feed(h, _HASH_TAG)
    _feed(h, meta_json.encode("utf-8"))
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        _feed(h, name.encode("utf-8"))
        _feed(h, str(t.dtype).encode("utf-8"))
        _feed(h, json.dumps(list(t.shape)).encode("utf-8"))
        _feed(h, t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def serialise(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> bytes:
    """The bytes of a baquad file: ``tensors`` (CPU, contiguous) with ``meta`` and its hash.

    ``meta`` gets ``"version": FORMAT_VERSION``.
    """
    try:
        meta_json = json.dumps({**meta, "version": FORMAT_VERSION})
    except (TypeError, ValueError) as err:
        raise TypeError(f"metadata: not JSON-serialisable ({err}); pass plain numbers, strings, lists and dicts") from err
    return st_save(dict(tensors), metadata={META_KEY: meta_json, HASH_KEY: content_hash(meta_json, tensors)})


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _reraise_os_error(path: Path, err: OSError, doing: str) -> OSError:
    cls = type(err) if err.errno is not None else OSError
    return cls(err.errno, f"{path}: cannot {doing}: {err.strerror or err}")


def require_regular_file(path: Path) -> None:
    """Raise unless ``path`` is a regular file (followed through symlinks; never opened)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{path}: no such file") from None
    except OSError as err:
        raise _reraise_os_error(path, err, "inspect the file") from err
    if not stat.S_ISREG(mode):
        raise InvalidFile(f"{path}: is {_kind(mode)}, not a regular file; SideNets and checkpoints are read from regular files only")


@dataclass
class FileHeader:
    """What the header of a baquad file says, read without reading any tensor data.

    Attributes:
        path: the file.
        meta: the ``"baquad"`` metadata (a dict with an integer ``version``).
        meta_json: the metadata string exactly as stored (hashed).
        shapes: every stored tensor's shape, by name.
        digest: the stored content hash, or None (version 1).
    """

    path: Path
    meta: dict
    meta_json: str
    shapes: dict
    digest: Optional[str]


def _open(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except OSError as err:
        raise _reraise_os_error(path, err, "read the file") from err
    except Exception as err:  # safetensors raises its own error type for torn/corrupt files
        raise InvalidFile(f"{path}: not a readable safetensors file ({err})") from err


def read_header(path: "str | os.PathLike") -> FileHeader:
    """Check that ``path`` is a regular safetensors file with baquad metadata; read its header."""
    path = Path(path)
    require_regular_file(path)
    with _open(path) as f:
        try:
            raw = f.metadata() or {}
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as err:  # pragma: no cover - safetensors validated the header on open
            raise InvalidFile(f"{path}: not a readable safetensors file ({err})") from err
    meta_json = raw.get(META_KEY)
    if meta_json is None:
        raise InvalidFile(f"{path}: no baquad metadata in the safetensors header (not a file written by baquad)")
    try:
        meta = json.loads(meta_json)
    except json.JSONDecodeError as err:
        raise InvalidFile(f"{path}: the baquad metadata in its header is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise InvalidFile(f"{path}: the baquad metadata must be a JSON object, got {type(meta).__name__}")
    version = meta.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidFile(f"{path}: the metadata field 'version' must be an integer >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise InvalidFile(f"{path}: written in format version {version} by a newer baquad; this one reads up to {FORMAT_VERSION}")
    digest = raw.get(HASH_KEY)
    if digest is None and version >= 2:
        raise InvalidFile(f"{path}: a version-{version} file without its content hash ({HASH_KEY!r}): the header is damaged")
    return FileHeader(path, meta, meta_json, shapes, digest)


def read_tensors(header: FileHeader) -> dict[str, torch.Tensor]:
    """Read every tensor of the file and check the content hash (see the module docstring)."""
    path = header.path
    with _open(path) as f:
        if tuple(sorted(f.keys())) != tuple(sorted(header.shapes)):
            raise InvalidFile(f"{path}: the file changed while it was being read")
        try:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as err:
            raise InvalidFile(f"{path}: cannot read its tensors ({err})") from err
    if header.digest is None:
        warnings.warn(
            f"{path}: written before baquad stored a content hash (format version 1); loaded without an "
            "integrity check. Save it again to add one.",
            UnverifiedFileWarning,
            stacklevel=3,
        )
    elif content_hash(header.meta_json, tensors) != header.digest:
        raise InvalidFile(
            f"{path}: its contents do not match the SHA-256 stored when it was written: the file is "
            "corrupt (or was edited). Use an intact copy."
        )
    return tensors
