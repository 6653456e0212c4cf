"""Loading REPA SiT checkpoints into :class:`~adapters.torch_sit.sit.model.SiT`, without running pickled code.

Accepted files:

- a flat state dict (parameter name -> tensor) saved with ``torch.save``: REPA's released 256 px
  SiT-XL/2 file is one (the EMA weights of its 4M-iteration run, projector heads included);
- a REPA training checkpoint saved with ``torch.save``: a dict with ``"model"``, ``"ema"``,
  ``"opt"`` (optimiser state), ``"args"`` (an ``argparse.Namespace`` of the run's command line)
  and ``"steps"``; the ``"ema"`` weights are taken by default (what REPA samples from);
- a ``.safetensors`` file holding a flat state dict.

``torch.load`` always runs with ``weights_only=True``: only tensors, containers, numbers and
strings are rebuilt, plus ``argparse.Namespace`` (allow-listed for the ``"args"`` entry). A file
that needs anything else, for instance an object whose unpickling would call a function, is
refused with :class:`UnsafeCheckpoint` before any of its code runs. Convert such a file to
safetensors where you trust it.

The state dict must match the model exactly: missing keys, unexpected keys, shape mismatches,
another kind of dtype (an integer tensor where the model has a float one: ``load_state_dict``
would cast it silently) and NaN or inf values are all reported by name in
:class:`CheckpointMismatch`, then nothing is loaded. REPA's
``--legacy`` checkpoints name the blocks after ``encoder_depth`` ``decoder_blocks.{i}``; with
``legacy=True`` they are renamed to ``blocks.{i + encoder_depth}``.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

__all__ = [
    "CheckpointMismatch",
    "UnsafeCheckpoint",
    "LoadReport",
    "read_repa_checkpoint",
    "select_weights",
    "rename_legacy_keys",
    "check_state_dict",
    "check_values",
    "load_repa_checkpoint",
]

WEIGHTS = ("auto", "ema", "model")


class CheckpointMismatch(ValueError):
    """The checkpoint's keys or shapes differ from the model's (the message names them)."""


class UnsafeCheckpoint(ValueError):
    """The file needs more than tensors and plain data to unpickle, so it was not loaded."""


@dataclass
class LoadReport:
    """What :func:`load_repa_checkpoint` loaded.

    Attributes:
        path: the file.
        source: ``"state_dict"`` (a flat state dict), ``"ema"`` or ``"model"`` (that entry of a
            training checkpoint).
        num_tensors: tensors loaded.
        steps: the training checkpoint's ``"steps"``, if any.
        args: the training checkpoint's ``"args"`` as a dict, if any.
        renamed: legacy keys renamed (old -> new).
    """

    path: Path
    source: str
    num_tensors: int
    steps: Optional[int] = None
    args: Optional[dict] = None
    renamed: dict = field(default_factory=dict)

    def describe(self) -> str:
        what = {"state_dict": "flat state dict", "ema": "EMA weights ('ema') of a training checkpoint",
                "model": "raw weights ('model') of a training checkpoint"}[self.source]
        steps = f" at step {self.steps}" if self.steps is not None else ""
        return f"{self.path}: {what}{steps}, {self.num_tensors} tensors"


def read_repa_checkpoint(path: "str | os.PathLike") -> Any:
    """The object in ``path`` (safetensors or ``torch.save`` file), read without executing code.

    Raises:
        FileNotFoundError: no such file.
        UnsafeCheckpoint: the pickle needs globals beyond tensors and ``argparse.Namespace``.
        ValueError: not a readable checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist (nothing is downloaded; pass the path of a local file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:  # safetensors raises its own error types
            raise ValueError(f"{path}: not a readable safetensors file ({err})") from err
    mmap = zipfile.is_zipfile(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UnsafeCheckpoint(
            f"{path}: refused to load: the file holds objects other than tensors, plain data and "
            f"argparse.Namespace, and unpickling them could run code. Loading uses "
            f"torch.load(weights_only=True) and never executes pickled code; if you trust the file, "
            f"re-save its state dict as safetensors. Detail: {_unpickler_detail(err)}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path}: not a readable torch checkpoint ({err})") from err


def _unpickler_detail(err: Exception) -> str:
    """The one sentence of torch's weights-only error that names the refused global."""
    m = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", str(err))
    return m.group(0) if m else str(err).strip().splitlines()[-1] if str(err).strip() else repr(err)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def select_weights(obj: Any, weights: str = "auto", where: str = "checkpoint") -> tuple[dict, str]:
    """The state dict inside a loaded checkpoint and where it came from.

    ``weights="auto"``: a flat state dict as is, else the ``"ema"`` entry; ``"ema"`` / ``"model"``:
    that entry of a training checkpoint (a flat state dict is accepted as the only weights there are
    only with ``"auto"``).
    """
    if weights not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}")
    if _is_state_dict(obj):
        if weights != "auto":
            raise ValueError(f"{where} is a flat state dict (no training checkpoint entries); "
                             f"use weights='auto' rather than {weights!r}")
        return dict(obj), "state_dict"
    if not isinstance(obj, Mapping):
        raise ValueError(f"{where}: expected a state dict or a training checkpoint dict, got {type(obj).__name__}")
    key = "ema" if weights == "auto" else weights
    if key not in obj:
        raise ValueError(f"{where}: a dict with keys {sorted(map(str, obj))}, neither a flat state dict "
                         f"nor a training checkpoint with an {key!r} entry")
    if not _is_state_dict(obj[key]):
        raise ValueError(f"{where}: the {key!r} entry is not a state dict of tensors")
    return dict(obj[key]), key


_LEGACY = re.compile(r"^decoder_blocks\.(\d+)\.(.*)$")


def rename_legacy_keys(state: Mapping[str, torch.Tensor], encoder_depth: int) -> tuple[dict, dict]:
    """Rename ``decoder_blocks.{i}.*`` to ``blocks.{i + encoder_depth}.*``; (new state, renames)."""
    out, renamed = {}, {}
    for k, v in state.items():
        m = _LEGACY.match(k)
        if m:
            new = f"blocks.{int(m.group(1)) + encoder_depth}.{m.group(2)}"
            renamed[k] = new
            k = new
        if k in out:
            raise CheckpointMismatch(f"legacy renaming maps two tensors to {k!r}")
        out[k] = v
    return out, renamed


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatch` naming every missing key, unexpected key and shape
    mismatch between ``state`` and ``model.state_dict()``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if shapes:
        parts.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
    hints = []
    if any(k.startswith("decoder_blocks.") for k in unexpected):
        hints.append("the checkpoint uses the legacy 'decoder_blocks' names: pass legacy=True")
    if any(s.startswith("pos_embed:") for s in shapes):
        hints.append("pos_embed differs: the checkpoint is for another resolution (input_size = resolution / 8)")
    if any(k.startswith("projectors.") for k in missing + unexpected) or any(s.startswith("projectors.") for s in shapes):
        hints.append("the projector heads differ: set z_dims to the checkpoint's projector widths (REPA's released file: (768,))")
    if any(k.startswith("module.") for k in unexpected):
        hints.append("keys start with 'module.': the state dict of a DistributedDataParallel wrapper; strip the prefix")
    hint = (" Hint: " + "; ".join(hints) + ".") if hints else ""
    raise CheckpointMismatch(f"{where} does not match the model: " + "; ".join(parts) + "." + hint)


def _kind(t: torch.Tensor) -> str:
    return "floating" if t.is_floating_point() else "complex" if t.is_complex() else "bool" if t.dtype == torch.bool \
        else "integer"


def check_values(model: nn.Module, state: Mapping[str, torch.Tensor], where: str = "checkpoint") -> None:
    """Raise :class:`CheckpointMismatch` naming every tensor of ``state`` whose kind of dtype
    (floating, integer, bool, complex) differs from the model's (``load_state_dict`` would cast a
    float to an integer silently; float16 to float32 is fine) and every floating tensor holding
    NaN or inf (a damaged file; sampling would blame the field)."""
    own = model.state_dict()
    kinds = [f"{k}: checkpoint {v.dtype}, model {own[k].dtype}" for k, v in state.items()
             if k in own and _kind(v) != _kind(own[k])]
    if kinds:
        raise CheckpointMismatch(f"{where}: tensors of another kind of dtype than the model's ({len(kinds)}): "
                                 f"{'; '.join(kinds)}. The file is not a checkpoint of this model; use the matching "
                                 "one (REPA's last.pt for repa-sit-xl2-256)")
    bad = [f"{k} ({int((~torch.isfinite(v)).sum())} of {v.numel()} values)" for k, v in state.items()
           if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointMismatch(f"{where}: NaN or inf in {len(bad)} tensor(s): {', '.join(bad[:5])}"
                                 f"{', ...' if len(bad) > 5 else ''}. The file is damaged; use an intact copy")


def load_repa_checkpoint(path: "str | os.PathLike", model: nn.Module, *, weights: str = "auto",
                         legacy: bool = False) -> LoadReport:
    """Load a REPA checkpoint into ``model`` strictly (module docstring) and say what was taken.

    Args:
        path: a ``torch.save`` file (flat state dict or training checkpoint) or a ``.safetensors``.
        model: the :class:`~adapters.torch_sit.sit.model.SiT` to fill (its config must match the file).
        weights: ``"auto"`` (flat state dict, else ``"ema"``), ``"ema"`` or ``"model"``.
        legacy: rename ``decoder_blocks.{i}`` to ``blocks.{i + encoder_depth}`` first.

    Raises:
        UnsafeCheckpoint, CheckpointMismatch (keys, shapes, dtype kinds, NaN/inf), ValueError,
        FileNotFoundError.
    """
    path = Path(path)
    obj = read_repa_checkpoint(path)
    state, source = select_weights(obj, weights, where=str(path))
    renamed: dict = {}
    if legacy:
        encoder_depth = getattr(getattr(model, "config", None), "encoder_depth", None)
        if encoder_depth is None:
            raise ValueError("legacy=True needs a model with config.encoder_depth")
        state, renamed = rename_legacy_keys(state, encoder_depth)
    check_state_dict(model, state, where=f"{path} ({source})")
    check_values(model, state, where=f"{path} ({source})")
    model.load_state_dict(state, strict=True)
    steps = args = None
    if source != "state_dict":
        raw_steps = obj.get("steps")
        steps = int(raw_steps) if isinstance(raw_steps, (int, float)) or (
            isinstance(raw_steps, torch.Tensor) and raw_steps.numel() == 1) else None
        raw_args = obj.get("args")
        args = vars(raw_args) if isinstance(raw_args, argparse.Namespace) else (
            dict(raw_args) if isinstance(raw_args, Mapping) else None)
    return LoadReport(path, source, len(state), steps, args, renamed)
