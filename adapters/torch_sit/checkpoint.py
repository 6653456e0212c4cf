"""Checkpoints and exported SideNets: safetensors + JSON, written atomically, never pickled.

A training checkpoint is ONE safetensors file (``checkpoint.safetensors``) holding

- tensors: ``model.<name>`` (SideNet weights), ``ema.<name>`` (EMA weights, if any),
  ``optim.<param index>.<state name>`` (AdamW moments and step counters), ``rng.torch``
  (the global torch RNG state, and ``rng.cuda.<i>`` on a GPU);
- metadata (the safetensors header, a JSON string under the key ``"baquad"``): the step, the
  SideNet architecture config (``sidenet.config()``), the full training config, the optimiser's
  param groups and non-tensor state, and free-form extras.

One file makes the checkpoint atomic: it is written to a temporary file in the same directory,
flushed and fsync'ed, then moved over the old one with ``os.replace`` (and the directory entry
fsync'ed), so a crash at any point leaves either the old or the new checkpoint, never a mix or a
torn file. A readable copy of the metadata is written beside it (``checkpoint.json``, also
atomically, after the checkpoint); the copy inside the safetensors file is the one that loading
trusts. ``history=True`` also keeps ``history/checkpoint-<step>.safetensors``.

Loading uses ``safetensors`` and ``json`` only, so no pickled code ever runs, and refuses a
checkpoint whose SideNet architecture differs from the requested one, naming the differing keys.

An exported SideNet (``save_sidenet``) is ``<name>.safetensors`` (weights, with the config in its
metadata) plus ``<name>.json`` (the config); ``load_sidenet(path)`` rebuilds the module.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from torch import nn

from .sidenet import build_sidenet

__all__ = [
    "CHECKPOINT_NAME",
    "ArchitectureMismatch",
    "Checkpoint",
    "atomic_write",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "check_architecture",
    "save_sidenet",
    "load_sidenet",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
_FORMAT_CKPT = "baquad-sidenet-checkpoint"
_FORMAT_SIDENET = "baquad-sidenet"
_VERSION = 1


class ArchitectureMismatch(ValueError):
    """A checkpoint's SideNet architecture differs from the requested one."""


def atomic_write(path: "str | os.PathLike", data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, os.replace.

    If anything fails before the replace, the temporary file is removed and ``path`` keeps its
    previous content.
    """
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
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _cpu(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu").contiguous().clone()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _read(path: Path) -> tuple[dict, dict]:
    """(tensors, metadata dict) of a baquad safetensors file, without pickle."""
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = f.metadata() or {}
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
    except Exception as err:  # safetensors raises its own error types for torn/corrupt files
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    if "baquad" not in raw:
        raise ValueError(f"{path}: no baquad metadata in the safetensors header")
    return tensors, json.loads(raw["baquad"])


def check_architecture(saved: dict, requested: Optional[dict], where: str = "checkpoint") -> None:
    """Raise :class:`ArchitectureMismatch` naming every key where the configs differ."""
    if requested is None:
        return
    missing = object()
    keys = sorted(set(saved) | set(requested))
    diff = [k for k in keys if saved.get(k, missing) != requested.get(k, missing)]
    if diff:
        show = lambda d, k: repr(d[k]) if k in d else "(absent)"
        parts = "; ".join(f"{k}: saved {show(saved, k)}, requested {show(requested, k)}" for k in diff)
        raise ArchitectureMismatch(
            f"{where} holds a SideNet with a different architecture; differing keys: {', '.join(diff)} ({parts}). "
            "Use the checkpoint's architecture settings, or a new output directory to train another SideNet."
        )


@dataclass
class Checkpoint:
    """A loaded training checkpoint."""

    step: int
    sidenet_config: dict
    config: dict
    model: dict[str, torch.Tensor]
    ema: Optional[dict[str, torch.Tensor]]
    optimizer: Optional[dict]
    rng: dict[str, torch.Tensor] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    path: Optional[Path] = None

    def build_sidenet(self, weights: str = "model") -> nn.Module:
        """The SideNet with the ``"model"`` or ``"ema"`` weights."""
        net = build_sidenet(self.sidenet_config)
        state = self.ema if weights == "ema" else self.model
        if state is None:
            raise ValueError(f"{self.path}: the checkpoint has no EMA weights")
        net.load_state_dict(state)
        return net


def save_checkpoint(
    path: "str | os.PathLike",
    *,
    sidenet: nn.Module,
    step: int,
    sidenet_config: dict,
    config: dict,
    optimizer: Optional[torch.optim.Optimizer] = None,
    ema: Optional[dict[str, torch.Tensor]] = None,
    extra: Optional[dict] = None,
    history: bool = False,
) -> Path:
    """Write a training checkpoint atomically (see the module docstring). ``path`` is the file
    (or a directory, which gets ``checkpoint.safetensors``). Returns the file's path."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / CHECKPOINT_NAME
    tensors: dict[str, torch.Tensor] = {f"model.{k}": _cpu(v) for k, v in sidenet.state_dict().items()}
    if ema is not None:
        tensors.update({f"ema.{k}": _cpu(v) for k, v in ema.items()})
    optim_meta = None
    if optimizer is not None:
        sd = optimizer.state_dict()
        other: dict[str, dict] = {}
        for idx, st in sd["state"].items():
            for name, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"optim.{idx}.{name}"] = _cpu(val)
                else:
                    other.setdefault(str(idx), {})[name] = _jsonable(val)
        optim_meta = {"class": type(optimizer).__name__, "param_groups": _jsonable(sd["param_groups"]),
                      "state_other": other, "state_keys": sorted(str(i) for i in sd["state"])}
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "format": _FORMAT_CKPT,
        "version": _VERSION,
        "step": int(step),
        "sidenet_config": _jsonable(sidenet_config),
        "config": _jsonable(config),
        "optimizer": optim_meta,
        "has_ema": ema is not None,
        "extra": _jsonable(extra or {}),
    }
    data = st_save(tensors, metadata={"baquad": json.dumps(meta)})
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    if history:
        atomic_write(path.parent / "history" / f"checkpoint-{int(step):08d}.safetensors", data)
    return path


def find_checkpoint(out_dir: "str | os.PathLike") -> Optional[Path]:
    """The checkpoint file of an output directory, or None."""
    p = Path(out_dir) / CHECKPOINT_NAME
    return p if p.is_file() else None


def load_checkpoint(path: "str | os.PathLike", sidenet_config: Optional[dict] = None) -> Checkpoint:
    """Read a checkpoint (file or output directory) with safetensors and json only.

    Raises:
        ArchitectureMismatch: ``sidenet_config`` is given and differs from the checkpoint's (the
            message names the differing keys).
        ValueError: not a baquad checkpoint, or a torn/corrupt file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    tensors, meta = _read(path)
    if meta.get("format") != _FORMAT_CKPT:
        raise ValueError(f"{path}: not a baquad SideNet training checkpoint (format {meta.get('format')!r})")
    check_architecture(meta["sidenet_config"], sidenet_config, where=f"checkpoint {path}")
    model = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
    ema = {k[4:]: v for k, v in tensors.items() if k.startswith("ema.")} if meta.get("has_ema") else None
    optimizer = None
    om = meta.get("optimizer")
    if om is not None:
        state: dict[int, dict] = {int(i): {} for i in om["state_keys"]}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state[int(idx)][name] = v
        for idx, d in om.get("state_other", {}).items():
            state[int(idx)].update(d)
        groups = []
        for g in om["param_groups"]:
            g = dict(g)
            if isinstance(g.get("betas"), list):
                g["betas"] = tuple(g["betas"])
            groups.append(g)
        optimizer = {"state": state, "param_groups": groups}
    rng = {k[4:]: v for k, v in tensors.items() if k.startswith("rng.")}
    return Checkpoint(int(meta["step"]), meta["sidenet_config"], meta["config"], model, ema, optimizer, rng,
                      meta.get("extra", {}), path)


def save_sidenet(sidenet: nn.Module, path: "str | os.PathLike", state: Optional[dict] = None,
                 extra: Optional[dict] = None) -> Path:
    """Export a SideNet: ``<path>.safetensors`` (weights ``state`` or the module's, with the
    config in the header) and ``<path>.json`` (the config and ``extra``), both atomically."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    config = sidenet.config()
    weights = state if state is not None else sidenet.state_dict()
    meta = {"format": _FORMAT_SIDENET, "version": _VERSION, "sidenet_config": config, "extra": _jsonable(extra or {})}
    data = st_save({k: _cpu(v) for k, v in weights.items()}, metadata={"baquad": json.dumps(meta)})
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def load_sidenet(path: "str | os.PathLike", map_location: Any = "cpu", weights: str = "auto") -> nn.Module:
    """Load a SideNet in one line: ``net = load_sidenet("runs/ring2d/sidenet.safetensors")``.

    ``path``: an exported SideNet (``.safetensors``, or its ``.json``), a training checkpoint, or
    an output directory (its ``sidenet.safetensors``, else its checkpoint). For a checkpoint,
    ``weights`` picks ``"model"``, ``"ema"`` or ``"auto"`` (EMA when present). The module comes
    back in eval mode on ``map_location``.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "sidenet.safetensors" if (path / "sidenet.safetensors").is_file() else path / CHECKPOINT_NAME
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    tensors, meta = _read(path)
    if meta.get("format") == _FORMAT_CKPT:
        ck = load_checkpoint(path)
        which = ("ema" if ck.ema is not None else "model") if weights == "auto" else weights
        net = ck.build_sidenet(which)
    elif meta.get("format") == _FORMAT_SIDENET:
        net = build_sidenet(meta["sidenet_config"])
        net.load_state_dict(tensors)
    else:
        raise ValueError(f"{path}: not a baquad SideNet file (format {meta.get('format')!r})")
    return net.to(map_location).eval()
