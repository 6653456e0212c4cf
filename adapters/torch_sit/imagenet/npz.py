"""ADM-style ``.npz`` image batches, streamed: written deterministically, read in batches.

An ADM sample batch is an ``.npz`` (a zip archive of ``.npy`` files) whose ``arr_0`` holds the
images as uint8 ``(N, H, W, 3)``; reference batches add the Inception statistics ``mu``, ``sigma``
(pool features) and ``mu_s``, ``sigma_s`` (spatial features). 50,000 images of 256 x 256 are
9.8 GB, so both directions stream:

- :func:`write_npz` writes arrays from chunk iterators into an uncompressed zip with fixed
  member metadata (timestamp 1980-01-01, permissions 0600), so equal arrays give byte-identical
  files (``numpy.savez`` stamps the current time into the archive). The file appears
  atomically (:func:`adapters.torch_sit.files.atomic_stream`), readable by other users as a
  plain ``open`` would make it (0666 less the umask).
- :func:`iter_npz_array` reads one member in batches of rows without loading the rest, for
  stored and deflated archives alike (``numpy.savez`` and ``numpy.savez_compressed`` files).

Nothing here unpickles: object arrays are refused.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
import zlib
from dataclasses import dataclass
from typing import IO, Iterable, Iterator

import numpy as np

from ..files import atomic_stream

__all__ = ["NpyInfo", "write_npz", "npz_members", "npz_array_info", "iter_npz_array", "read_npz_array"]

_FIXED_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class NpyInfo:
    """Shape and dtype of an array stored in an ``.npz``."""

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize


def _npy_header(info: NpyInfo) -> dict:
    return {"descr": np.lib.format.dtype_to_descr(info.dtype), "fortran_order": False, "shape": tuple(info.shape)}


def write_npz(path: "str | os.PathLike", arrays: "dict[str, tuple[NpyInfo, Iterable[np.ndarray]]]") -> None:
    """Write ``{name: (info, chunks)}`` as ``name.npy`` members of an uncompressed ``.npz``.

    ``chunks`` yields arrays of ``info.dtype`` whose rows (first axis) concatenate to
    ``info.shape``; the count is checked, so a short or long iterator raises instead of writing
    a wrong file. The output is byte-identical for equal inputs and appears atomically.
    """
    with atomic_stream(path, shared=True) as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, (info, chunks) in arrays.items():
            if info.dtype.hasobject:
                raise TypeError(f"{name}: object arrays cannot be written (they would need pickle)")
            member = zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_DATE)
            member.compress_type = zipfile.ZIP_STORED
            member.external_attr = 0o600 << 16
            with zf.open(member, "w", force_zip64=True) as out:
                np.lib.format.write_array_header_2_0(out, _npy_header(info))
                rows = 0
                for chunk in chunks:
                    chunk = np.ascontiguousarray(chunk)
                    if chunk.dtype != info.dtype or chunk.shape[1:] != tuple(info.shape[1:]):
                        raise ValueError(f"{name}: chunk of dtype {chunk.dtype} and shape {chunk.shape} does not fit "
                                         f"an array of dtype {info.dtype} and shape {info.shape}")
                    rows += chunk.shape[0] if chunk.ndim else 1
                    out.write(chunk.tobytes())
                expected = info.shape[0] if info.shape else 1
                if rows != expected:
                    raise ValueError(f"{name}: got {rows} rows from the chunks, the header says {expected}")


def _damaged(path: "str | os.PathLike", err: BaseException) -> ValueError:
    return ValueError(f"{path}: not a readable .npz ({type(err).__name__}: {err}); the file is truncated or damaged "
                      "(an interrupted copy or write?): copy or write it again")


def _require_file(path: "str | os.PathLike") -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (or not a regular file)")


@contextlib.contextmanager
def _open_zip(path: "str | os.PathLike") -> Iterator[zipfile.ZipFile]:
    """``zipfile.ZipFile(path)``; a damaged archive, found on opening or while reading, is a
    ValueError naming ``path``."""
    _require_file(path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        raise _damaged(path, err) from err
    with zf:
        try:
            yield zf
        except (zipfile.BadZipFile, EOFError, zlib.error) as err:  # a bad CRC or a torn member, met while reading
            raise _damaged(path, err) from err


def npz_members(path: "str | os.PathLike") -> tuple[str, ...]:
    """The array names of an ``.npz`` (member names without ``.npy``)."""
    with _open_zip(path) as zf:
        return tuple(n[:-4] for n in zf.namelist() if n.endswith(".npy"))


def _read_header(fh: IO[bytes], where: str) -> NpyInfo:
    version = np.lib.format.read_magic(fh)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
    else:  # pragma: no cover - numpy has no other versions
        raise ValueError(f"{where}: unsupported .npy version {version}")
    if fortran:
        raise ValueError(f"{where}: Fortran-ordered arrays are not supported; re-save it with numpy.savez")
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects, which would need pickle to load; refused")
    return NpyInfo(tuple(int(s) for s in shape), dtype)


def _open_member(zf: zipfile.ZipFile, key: str, path: "str | os.PathLike") -> IO[bytes]:
    name = f"{key}.npy"
    if name not in zf.namelist():
        keys = ", ".join(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        raise KeyError(f"{path}: no array {key!r} (it holds: {keys or 'nothing'})")
    return zf.open(name)


def npz_array_info(path: "str | os.PathLike", key: str = "arr_0") -> NpyInfo:
    """Shape and dtype of array ``key`` without reading its data."""
    with _open_zip(path) as zf, _open_member(zf, key, path) as fh:
        return _read_header(fh, f"{path}:{key}")


def iter_npz_array(path: "str | os.PathLike", key: str = "arr_0", batch: int = 256) -> Iterator[np.ndarray]:
    """Yield array ``key`` of ``path`` in consecutive blocks of up to ``batch`` rows."""
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    with _open_zip(path) as zf, _open_member(zf, key, path) as fh:
        info = _read_header(fh, f"{path}:{key}")
        n = info.shape[0] if info.shape else 1
        for start in range(0, n, int(batch)):
            rows = min(int(batch), n - start)
            data = fh.read(rows * info.row_bytes)
            if len(data) != rows * info.row_bytes:
                raise ValueError(f"{path}:{key}: file ends after {start} of {n} rows (truncated?)")
            yield np.frombuffer(data, dtype=info.dtype).reshape((rows, *info.shape[1:]))


def read_npz_array(path: "str | os.PathLike", key: str) -> np.ndarray:
    """Array ``key`` of ``path`` in memory (for small members such as statistics)."""
    _require_file(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise KeyError(f"{path}: no array {key!r} (it holds: {', '.join(z.files) or 'nothing'})")
            return z[key]
    except (zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise _damaged(path, err) from err
    except ValueError as err:  # numpy's, e.g. an array cut short or one that needs pickle
        raise ValueError(f"{path}:{key}: {err}") from err
