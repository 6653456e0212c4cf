"""Micro-batches and their shards: the unit of work, and of crash safety, of the sampler.

Samples 0..N-1 are cut into fixed micro-batches j = [j m, (j + 1) m) (the last may be
shorter). Each finished micro-batch is one safetensors file, written atomically, holding
``images`` (uint8, n x H x W x 3) and ``labels`` (int64, n) and, in its header, the digest of
the run's settings, the index range and a sha256 of the data. :func:`read_shard` returns a
shard's arrays only when all of these check out and raises :class:`ShardInvalid` (saying why)
otherwise: missing, unreadable or truncated, written for other settings or another range, a
wrong layout, or corrupted data.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..files import atomic_write

__all__ = ["MicroBatch", "micro_batches", "ShardInvalid", "shard_path", "write_shard", "read_shard", "shard_settings"]

_SHARD_FORMAT = "baquad-sample-shard"
_VERSION = 1


class ShardInvalid(ValueError):
    """A shard is missing, unreadable, truncated, from other settings, or fails its checksum."""


@dataclass(frozen=True)
class MicroBatch:
    """Micro-batch ``index``: samples ``start .. stop - 1``."""

    index: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def micro_batches(num_samples: int, batch_size: int) -> list[MicroBatch]:
    """The fixed partition of range(num_samples) into micro-batches of ``batch_size`` (the last may be shorter)."""
    return [MicroBatch(j, s, min(s + batch_size, num_samples)) for j, s in enumerate(range(0, num_samples, batch_size))]


def shard_path(out: Path, j: int) -> Path:
    return out / "shards" / f"shard-{j:06d}.safetensors"


def _digest_data(images: np.ndarray, labels: np.ndarray) -> str:
    return hashlib.sha256(images.tobytes() + b"|" + labels.tobytes()).hexdigest()


def write_shard(path: Path, mb: MicroBatch, images: np.ndarray, labels: np.ndarray, settings_digest: str) -> None:
    """Write one micro-batch atomically: images uint8 (n, H, W, 3), labels int64 (n,), and a
    header with the settings digest, the index range and the sha256 of the data."""
    from safetensors.numpy import save

    meta = {"format": _SHARD_FORMAT, "version": _VERSION, "settings": settings_digest, "index": mb.index,
            "start": mb.start, "stop": mb.stop, "sha256": _digest_data(images, labels)}
    atomic_write(path, save({"images": np.ascontiguousarray(images), "labels": np.ascontiguousarray(labels)},
                            metadata={"baquad": json.dumps(meta)}))


def shard_settings(path: Path) -> Optional[str]:
    """The settings digest in a shard's header (its data is not read); None when the header is
    unreadable or not a shard's."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("baquad", "{}"))
    except Exception:  # safetensors raises its own types for torn files
        return None
    return meta.get("settings") if isinstance(meta, dict) and meta.get("format") == _SHARD_FORMAT else None


def read_shard(path: Path, mb: MicroBatch, settings_digest: str) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a verified shard.

    Raises:
        ShardInvalid: missing, unreadable or truncated, written for other settings or another
            micro-batch, wrong shapes/dtypes, or a checksum mismatch (the message says which).
    """
    from safetensors import safe_open

    if not path.is_file():
        raise ShardInvalid("missing")
    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("baquad", "{}"))
            images, labels = f.get_tensor("images"), f.get_tensor("labels")
    except Exception as err:  # safetensors raises its own types for torn files
        raise ShardInvalid(f"unreadable ({type(err).__name__}: {err})") from err
    if meta.get("format") != _SHARD_FORMAT or meta.get("settings") != settings_digest:
        raise ShardInvalid("written for other settings")
    if (meta.get("index"), meta.get("start"), meta.get("stop")) != (mb.index, mb.start, mb.stop):
        raise ShardInvalid(f"holds samples {meta.get('start')}..{meta.get('stop')}, expected {mb.start}..{mb.stop}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != mb.size or labels.shape != (mb.size,):
        raise ShardInvalid(f"wrong layout (images {images.dtype} {images.shape}, labels {labels.shape})")
    if _digest_data(images, labels) != meta.get("sha256"):
        raise ShardInvalid("checksum mismatch (corrupted)")
    return images, labels
