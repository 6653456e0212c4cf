"""The trainer's output directory: the files a run leaves, the backbone its checkpoint belongs to,
and how a fresh start sets the previous run aside without losing it.

Files of a run (:data:`RUN_FILES`, plus ``history/checkpoint-<step>.safetensors``), and the
temporary files of their atomic writes (``.<name>.<8 random characters>.tmp``, left only by a
killed process; a second trainer on the same directory is not supported, so every one found at
start-up is stale and removed).

The backbone (:func:`backbone_identity`). A checkpoint records what it was trained on: the
backbone's name, its state shape, class count and parameter count, and, for a torch module, a
fingerprint of its weights: the SHA-256 over every tensor of its ``state_dict`` in name order,
fed its name, dtype, shape and :data:`FINGERPRINT_VALUES` of its values taken at evenly spaced
positions of the flattened tensor (``round(k (n - 1) / (m - 1))``, k = 0 .. m - 1). The values
are the stored numbers themselves, so the fingerprint is the same on every device. Resuming
compares every entry the checkpoint records (a checkpoint from before the identity was recorded
gives only the name) and refuses another backbone (:class:`BackboneMismatch`).

A fresh start (:func:`set_previous_run_aside`) moves the previous run's files into
``previous-run-<k>/`` (the smallest k not yet taken) before anything of the new run is written,
so no file of one run is mistaken for the other's and an interrupted fresh start loses nothing.
They are deleted (:func:`remove_runs_set_aside`) only when a run in the directory has written its
SideNet; until then ``previous-run-<k>/`` holds them, ``sidenet.safetensors`` included.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch

from ..backbones import Backbone

__all__ = ["RUN_FILES", "BackboneMismatch", "backbone_identity", "check_backbone", "remove_temp_files",
           "set_previous_run_aside", "remove_runs_set_aside", "FINGERPRINT_VALUES"]

#: the files a run writes in its output directory
RUN_FILES = ("checkpoint.safetensors", "checkpoint.json", "sidenet.safetensors", "sidenet.json", "summary.json",
             "log.csv")
_TEMP_NAME = re.compile(r"^\.(?:%s)\.[a-z0-9_]{8}\.tmp$" % "|".join(re.escape(n) for n in RUN_FILES))
_HISTORY_NAME = re.compile(r"^checkpoint-\d{8}\.safetensors$")
_HISTORY_TEMP_NAME = re.compile(r"^\.checkpoint-\d{8}\.safetensors\.[a-z0-9_]{8}\.tmp$")
_ASIDE_NAME = re.compile(r"^previous-run-\d+$")
#: values per tensor in a weights fingerprint
FINGERPRINT_VALUES = 16


class BackboneMismatch(ValueError):
    """The output directory's checkpoint was trained on another backbone."""


def _fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        flat = t.detach().reshape(-1)
        n = flat.numel()
        m = min(FINGERPRINT_VALUES, n)
        at = [round(k * (n - 1) / (m - 1)) if m > 1 else 0 for k in range(m)]
        values = flat[torch.tensor(at, dtype=torch.long, device=flat.device)].cpu().contiguous() if n else flat.cpu()
        for part in (name, str(t.dtype), str(list(t.shape))):
            h.update(part.encode() + b"\0")
        h.update(values.view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return h.hexdigest()


def backbone_identity(bb: Backbone) -> dict:
    """What a checkpoint records of its backbone (module docstring), as JSON values."""
    identity: dict[str, Any] = {"name": bb.name, "state_shape": list(bb.state_shape), "num_classes": bb.num_classes,
                                "num_parameters": bb.num_parameters}
    if bb.module is not None:
        identity["weights_fingerprint"] = _fingerprint(bb.module)
    return identity


def _describe(identity: dict, keys: list[str]) -> str:
    def show(k: str) -> str:
        v = identity.get(k)
        return f"{v[:12]}..." if k == "weights_fingerprint" and isinstance(v, str) else repr(v)

    shown = ", ".join(f"{k} {show(k)}" for k in keys if k != "name")
    return f"{identity.get('name')!r}" + (f" ({shown})" if shown else "")


def check_backbone(recorded: Optional[dict], now: dict, out: Path, step: int) -> None:
    """Refuse to resume the checkpoint of ``out`` (at ``step``) with a backbone other than the one
    it recorded. ``recorded``: the checkpoint's :func:`backbone_identity`, or ``{"name": ...}``
    (None: nothing recorded, nothing to compare); ``now``: this run's.

    Raises:
        BackboneMismatch: naming ``--out``, both backbones (the entries that differ) and the fix.
    """
    if not recorded:
        return
    differ = [k for k in recorded if k in now and recorded[k] != now[k]]
    if differ:
        raise BackboneMismatch(
            f"--out {out} holds a checkpoint (step {step}) of a SideNet trained on backbone "
            f"{_describe(recorded, differ)}, but this run's backbone is {_describe(now, differ)}: resuming would "
            "train one SideNet on two models. Start afresh with --no-resume (the previous run's files are kept in "
            f"{out}/previous-run-<k>/ until the new SideNet is written), or use another --out.")


def remove_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files a killed atomic write left in ``out`` and ``out/history``
    (only this project's own temporary names). Returns the removed paths."""
    found = [p for p in out.glob(".*.tmp") if _TEMP_NAME.match(p.name)]
    found += [p for p in (out / "history").glob(".*.tmp") if _HISTORY_TEMP_NAME.match(p.name)]
    for p in found:
        p.unlink(missing_ok=True)
    return found


def _run_files(folder: Path) -> list[Path]:
    found = [folder / n for n in RUN_FILES if (folder / n).is_file()]
    return found + sorted(p for p in (folder / "history").glob("checkpoint-*.safetensors") if _HISTORY_NAME.match(p.name))


def set_previous_run_aside(out: Path) -> Optional[Path]:
    """A fresh start in ``out``: move the previous run's files (checkpoint, history, exported
    SideNet, summary, log) into a new ``out/previous-run-<k>/``; returns it, or None when there
    was nothing to move."""
    found = _run_files(out)
    if not found:
        return None
    k = 1
    while (out / f"previous-run-{k}").exists():
        k += 1
    aside = out / f"previous-run-{k}"
    for p in found:
        target = aside / p.relative_to(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, target)
    return aside


def remove_runs_set_aside(out: Path) -> list[Path]:
    """Delete what :func:`set_previous_run_aside` moved (its file names only; a folder left empty
    goes too). Call once the new SideNet is written. Returns the folders emptied."""
    emptied = []
    for aside in sorted(p for p in out.glob("previous-run-*") if p.is_dir() and _ASIDE_NAME.match(p.name)):
        for p in _run_files(aside):
            p.unlink(missing_ok=True)
        for folder in (aside / "history", aside):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        emptied.append(aside)
    return emptied
