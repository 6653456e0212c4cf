"""Checkpoints and exported SideNets: safetensors + JSON, written atomically, never pickled.

A training checkpoint is ONE safetensors file (``checkpoint.safetensors``) holding

- tensors: ``model.<name>`` (SideNet weights), ``ema.<name>`` (EMA weights, if any),
  ``optim.<param index>.<state name>`` (AdamW moments and step counters), ``rng.torch``
  (the global torch RNG state, and ``rng.cuda.<i>`` on a GPU);
- metadata (the safetensors header, a JSON string under the key ``"baquad"``): the step, the
  SideNet architecture config (``sidenet.config()``), the full training config, the optimiser's
  param groups and non-tensor state, and free-form extras; and under ``"baquad.sha256"`` a SHA-256
  of the metadata and every tensor (:mod:`adapters.torch_sit.files` defines it).

One file makes the checkpoint atomic: it is written to a temporary file in the same directory,
flushed and fsync'ed, then moved over the old one with ``os.replace`` (and the directory entry
fsync'ed), so a crash at any point leaves either the old or the new checkpoint, never a mix or a
torn file. A readable copy of the metadata is written beside it (``checkpoint.json``, also
atomically, after the checkpoint); the copy inside the safetensors file is the one that loading
trusts. ``history=True`` also keeps ``history/checkpoint-<step>.safetensors``.

An exported SideNet (``save_sidenet``) is ``<name>.safetensors`` (weights, with the config in its
metadata) plus ``<name>.json`` (the config); ``load_sidenet(path)`` rebuilds the module.

Writing refuses what could not be loaded back: non-finite weights or optimiser state, EMA or
exported weights that are not the SideNet's, an architecture config that does not describe the
SideNet, an optimiser over other parameters.

Loading uses ``safetensors`` and ``json`` only, so no pickled code ever runs, and trusts nothing
in the file: every failure is an error that names the file and says what is wrong.

1. The path must be a regular file (checked without opening it; a FIFO would hang the reader).
2. The header must parse, with every metadata field present and of its type.
3. The SHA-256 is recomputed over the metadata and the tensors and must match (a file written
   before the hash existed loads with an :class:`~adapters.torch_sit.files.UnverifiedFileWarning`
   naming it).
4. The SideNet the header describes is built on the ``meta`` device (no memory) after a bound on
   its depth against the number of stored tensors, and its tensor names and shapes must be the
   stored ones (weights, EMA weights, optimiser state), so a header that claims a huge network is
   refused before anything is allocated for it; weights and optimiser state must be finite.
5. Only then is the SideNet built and loaded. A requested architecture that differs from the
   checkpoint's is refused naming the differing keys (:class:`ArchitectureMismatch`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
from torch import nn

from baquad.schedules import check_grid_spec
from baquad.solvers.learned_steps import LearnedSteps

from ..files import (
    FORMAT_VERSION,
    InvalidFile,
    UnverifiedFileWarning,
    atomic_write,
    read_header,
    read_tensors,
    require_regular_file,
    serialise,
)
from .networks import build_sidenet, sidenet_class

__all__ = [
    "CHECKPOINT_NAME",
    "sidenet_file_extra",
    "check_sidenet_backbone",
    "grid_target",
    "ArchitectureMismatch",
    "InvalidFile",
    "UnverifiedFileWarning",
    "Checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "find_checkpoint",
    "check_architecture",
    "save_sidenet",
    "load_sidenet",
    "set_sidenet_grid",
    "WEIGHT_CHOICES",
]

CHECKPOINT_NAME = "checkpoint.safetensors"
SIDENET_NAME = "sidenet.safetensors"
_FORMAT_CKPT = "baquad-sidenet-checkpoint"
_FORMAT_SIDENET = "baquad-sidenet"
#: ``weights=`` choices of :func:`load_sidenet`: EMA when present, else the raw weights ("auto").
WEIGHT_CHOICES = ("auto", "model", "ema")


class ArchitectureMismatch(ValueError):
    """A checkpoint's SideNet architecture differs from the requested one."""


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


# ----------------------------------------------------------------------------------------
# consistency checks shared by writing and reading


def _meta_sidenet(config: Any, n_tensors: int, where: str, error: type = InvalidFile) -> nn.Module:
    """The SideNet ``config`` describes, built on the meta device (no memory), after checking
    that it can have at most ``n_tensors`` tensors' worth of blocks. Errors (``error``, a
    ValueError) start with ``where``."""
    try:
        cls = sidenet_class(config)
        least = cls.min_tensor_count(config)
    except (TypeError, ValueError) as err:
        raise error(f"{where}: invalid SideNet config: {err}") from None
    if least > n_tensors:
        raise error(
            f"{where}: the SideNet config {dict(config)} needs at least {least} weight tensors, but "
            f"only {n_tensors} are stored: the config does not describe the stored weights"
        )
    try:
        with torch.device("meta"):
            return build_sidenet(config)
    except (TypeError, ValueError) as err:
        raise error(f"{where}: invalid SideNet config: {err}") from None


def _compare_shapes(expected: Mapping[str, tuple], stored: Mapping[str, tuple], where: str, what: str,
                    error: type = InvalidFile) -> None:
    """Raise naming every tensor that is missing, unexpected or of another shape."""
    problems = []
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for k in sorted(set(expected) & set(stored)):
        if tuple(expected[k]) != tuple(stored[k]):
            problems.append(f"{k} stored with shape {tuple(stored[k])}, the config needs {tuple(expected[k])}")
    if problems:
        raise error(f"{where}: the SideNet config does not describe the {what}: {'; '.join(problems)}")


def _require_finite(tensors: Mapping[str, torch.Tensor], where: str, doing: str, error: type = InvalidFile) -> None:
    for k, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise error(f"{where}: {k} holds NaN or inf; {doing}")


def _shapes(tensors: Mapping[str, torch.Tensor]) -> dict:
    return {k: tuple(v.shape) for k, v in tensors.items()}


def _check_weights(net: nn.Module, state: Mapping[str, torch.Tensor], where: str, what: str, params_only: bool = False,
                   error: type = InvalidFile) -> None:
    """``state`` must hold ``net``'s tensors (its parameters only, for EMA) with their shapes and
    floating dtypes where ``net``'s are floating."""
    ref = dict(net.named_parameters()) if params_only else net.state_dict()
    _compare_shapes(_shapes(ref), _shapes(state), where, what, error)
    for k, t in state.items():
        if ref[k].is_floating_point() and not t.is_floating_point():
            raise error(f"{where}: {what} tensor {k} has dtype {t.dtype}; the SideNet needs a floating dtype")


# ----------------------------------------------------------------------------------------
# metadata fields


def _field(meta: Mapping, key: str, kind: Any, where: str, what: str) -> Any:
    """``meta[key]``, which must exist and be of type ``kind`` (bool is not an int here)."""
    if key not in meta:
        raise InvalidFile(f"{where}: the metadata has no {key!r} field")
    value = meta[key]
    if (isinstance(value, bool) and kind is int) or not isinstance(value, kind):
        raise InvalidFile(f"{where}: the metadata field {key!r} must be {what}, got {value!r}")
    return value


def _read(path: Path, formats: tuple[str, ...]) -> tuple[dict, dict]:
    """(metadata, tensors) of a baquad file of one of ``formats``, after the file, header,
    format and hash checks."""
    header = read_header(path)
    meta = header.meta
    fmt = meta.get("format")
    if fmt not in formats:
        what = "training checkpoint" if formats == (_FORMAT_CKPT,) else "file"
        raise InvalidFile(f"{path}: not a baquad SideNet {what} (format {fmt!r}; expected {' or '.join(map(repr, formats))})")
    _field(meta, "sidenet_config", dict, path, "a dict (the SideNet's class and arguments)")
    _field(meta, "extra", dict, path, "a dict")
    return meta, read_tensors(header)


# ----------------------------------------------------------------------------------------
# training checkpoints


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
        """The SideNet with the ``"model"`` or ``"ema"`` weights (``"auto"``: EMA when present)."""
        _check_weight_choice(weights)
        if weights == "auto":
            weights = "ema" if self.ema is not None else "model"
        if weights == "ema" and self.ema is None:
            raise ValueError(f"{self.path}: weights='ema', but the checkpoint has no EMA weights; use weights='model'")
        net = build_sidenet(self.sidenet_config)
        net.load_state_dict({**self.model, **self.ema} if weights == "ema" else self.model)
        return net


def _check_weight_choice(weights: Any) -> None:
    if not (isinstance(weights, str) and weights in WEIGHT_CHOICES):
        raise ValueError(f"weights: must be one of {', '.join(repr(w) for w in WEIGHT_CHOICES)}, got {weights!r}")


def _optimizer_meta(optimizer: torch.optim.Optimizer, sidenet: nn.Module, tensors: dict) -> dict:
    """The optimiser's non-tensor state for the metadata; its tensor state goes into ``tensors``."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    own = list(sidenet.parameters())
    if len(params) != len(own) or any(a is not b for a, b in zip(params, own)):
        raise ValueError(
            "optimizer: must optimise exactly sidenet.parameters(), in that order (a checkpoint maps "
            "the optimiser state to the SideNet's parameters by position)"
        )
    sd = optimizer.state_dict()
    other: dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for name, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = _cpu(val)
            else:
                other.setdefault(str(idx), {})[name] = _jsonable(val)
    return {"class": type(optimizer).__name__, "param_groups": _jsonable(sd["param_groups"]),
            "state_other": other, "state_keys": sorted(str(i) for i in sd["state"])}


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
    (or a directory, which gets ``checkpoint.safetensors``). Returns the file's path.

    Raises:
        ValueError: ``step`` not an integer >= 0; ``sidenet_config`` does not describe
            ``sidenet``; ``ema`` does not hold its parameters; non-finite weights, EMA weights or
            optimiser state (nothing is written); an optimiser over other parameters.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / CHECKPOINT_NAME
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step: must be an integer >= 0, got {step!r}")
    model = {k: _cpu(v) for k, v in sidenet.state_dict().items()}
    net = _meta_sidenet(sidenet_config, len(model), "sidenet_config", ValueError)
    _check_weights(net, model, "sidenet_config", "SideNet's weights", error=ValueError)
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.items()}
    if ema is not None:
        ema_cpu = {k: _cpu(v) for k, v in ema.items()}
        _check_weights(net, ema_cpu, "ema", "EMA weights", params_only=True, error=ValueError)
        tensors.update({f"ema.{k}": v for k, v in ema_cpu.items()})
    optim_meta = _optimizer_meta(optimizer, sidenet, tensors) if optimizer is not None else None
    _require_finite(tensors, f"save_checkpoint({path})", "refusing to write non-finite weights or optimiser state", ValueError)
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    meta = {
        "format": _FORMAT_CKPT,
        "version": FORMAT_VERSION,
        "step": int(step),
        "sidenet_config": _jsonable(sidenet_config),
        "config": _jsonable(config),
        "optimizer": optim_meta,
        "has_ema": ema is not None,
        "extra": _jsonable(extra or {}),
    }
    data = serialise(tensors, meta)
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    if history:
        atomic_write(path.parent / "history" / f"checkpoint-{int(step):08d}.safetensors", data)
    return path


def find_checkpoint(out_dir: "str | os.PathLike") -> Optional[Path]:
    """The checkpoint file of an output directory, or None when there is none.

    Raises:
        InvalidFile: ``checkpoint.safetensors`` exists but is not a regular file.
        OSError: it cannot be inspected (naming the file and the cause).
    """
    p = Path(out_dir) / CHECKPOINT_NAME
    try:
        require_regular_file(p)
    except FileNotFoundError:
        return None
    return p


def _resolve(path: "str | os.PathLike", names: tuple[str, ...]) -> Path:
    """``path``, or for a directory not itself named ``*.safetensors`` the first of ``names``
    that exists in it (a missing file raises FileNotFoundError naming what was looked for)."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if path.suffix != ".safetensors" and path.is_dir():
        for name in names:
            if os.path.lexists(path / name):
                return path / name
        raise FileNotFoundError(2, f"{path}: a directory with no {' or '.join(names)}")
    return path


def _step(meta: Mapping, where: Path) -> int:
    step = _field(meta, "step", int, where, "an integer >= 0")
    if step < 0:
        raise InvalidFile(f"{where}: the metadata field 'step' must be an integer >= 0, got {step!r}")
    return step


def _split(tensors: Mapping[str, torch.Tensor], where: Path) -> dict[str, dict]:
    groups: dict[str, dict] = {"model": {}, "ema": {}, "optim": {}, "rng": {}}
    for k, v in tensors.items():
        prefix, dot, rest = k.partition(".")
        if prefix not in groups or not dot or not rest:
            raise InvalidFile(f"{where}: unexpected tensor {k!r} (a checkpoint stores model.*, ema.*, optim.* and rng.* tensors)")
        groups[prefix][rest] = v
    return groups


def _load_optimizer(om: Any, state_tensors: Mapping[str, torch.Tensor], net: nn.Module, where: Path) -> Optional[dict]:
    """The optimiser state dict, after checking it against the SideNet's parameters."""
    if om is None:
        if state_tensors:
            raise InvalidFile(f"{where}: optimiser state tensors are stored but the metadata has no optimizer")
        return None
    if not isinstance(om, dict):
        raise InvalidFile(f"{where}: the metadata field 'optimizer' must be a dict or null, got {om!r}")
    _field(om, "class", str, where, "a string")
    groups = _field(om, "param_groups", list, where, "a list of dicts")
    keys = _field(om, "state_keys", list, where, "a list of parameter indices")
    other = om.get("state_other", {})
    shapes = [tuple(p.shape) for p in net.parameters()]
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
        raise InvalidFile(f"{where}: every optimizer param group must be a dict with a 'params' list, got {groups!r}")
    indices = [i for g in groups for i in g["params"]]
    if indices != list(range(len(shapes))):
        raise InvalidFile(
            f"{where}: the optimizer's param groups index the parameters {indices}; the SideNet has "
            f"{len(shapes)} parameters (indices 0..{len(shapes) - 1} in order)"
        )
    if not all(isinstance(k, str) and k.isdigit() and int(k) < len(shapes) for k in keys):
        raise InvalidFile(f"{where}: the optimizer's state_keys {keys!r} are not parameter indices below {len(shapes)}")
    if not isinstance(other, dict) or not all(k in keys and isinstance(v, dict) for k, v in other.items()):
        raise InvalidFile(f"{where}: the optimizer's state_other must map state keys to dicts, got {other!r}")
    state: dict[int, dict] = {int(i): {} for i in keys}
    for k, v in state_tensors.items():
        idx, _, name = k.partition(".")
        if idx not in keys or not name:
            raise InvalidFile(f"{where}: optimiser tensor optim.{k} is not the state of a parameter in state_keys {keys}")
        if v.numel() != 1 and tuple(v.shape) != shapes[int(idx)]:
            raise InvalidFile(
                f"{where}: optimiser tensor optim.{k} has shape {tuple(v.shape)}; parameter {idx} has shape {shapes[int(idx)]}"
            )
        state[int(idx)][name] = v
    for idx, d in other.items():
        state[int(idx)].update(d)
    out_groups = []
    for g in groups:
        g = dict(g)
        if isinstance(g.get("betas"), list):
            g["betas"] = tuple(g["betas"])
        out_groups.append(g)
    return {"state": state, "param_groups": out_groups}


def _check_rng(rng: Mapping[str, torch.Tensor], where: Path) -> None:
    for name, t in rng.items():
        if name != "torch" and not (name.startswith("cuda.") and name[5:].isdigit()):
            raise InvalidFile(f"{where}: unexpected RNG state rng.{name} (a checkpoint stores rng.torch and rng.cuda.<i>)")
        if t.dtype != torch.uint8 or t.ndim != 1:
            raise InvalidFile(f"{where}: RNG state rng.{name} must be a 1-D uint8 tensor, got {t.dtype} of shape {tuple(t.shape)}")
    if "torch" in rng and rng["torch"].numel() != torch.get_rng_state().numel():
        raise InvalidFile(
            f"{where}: rng.torch holds {rng['torch'].numel()} bytes; torch's CPU generator state has {torch.get_rng_state().numel()}"
        )


def load_checkpoint(path: "str | os.PathLike", sidenet_config: Optional[dict] = None) -> Checkpoint:
    """Read a checkpoint (file or output directory) with safetensors and json only, checking it
    (see the module docstring).

    Raises:
        ArchitectureMismatch: ``sidenet_config`` is given and differs from the checkpoint's (the
            message names the differing keys).
        FileNotFoundError: no such file (or no checkpoint in the directory).
        InvalidFile (a ValueError): not a regular file, not a baquad checkpoint, a torn, corrupt
            or inconsistent file, or non-finite weights; the message names the file.
        OSError: the file cannot be read (naming it and the cause).
    """
    path = _resolve(path, (CHECKPOINT_NAME,))
    meta, tensors = _read(path, (_FORMAT_CKPT,))
    step = _step(meta, path)
    config = _field(meta, "config", dict, path, "a dict (the training config)")
    has_ema = _field(meta, "has_ema", bool, path, "true or false")
    groups = _split(tensors, path)
    net = _meta_sidenet(meta["sidenet_config"], len(groups["model"]), str(path))
    _check_weights(net, groups["model"], str(path), "stored weights (model.*)")
    if has_ema:
        _check_weights(net, groups["ema"], str(path), "stored EMA weights (ema.*)", params_only=True)
    elif groups["ema"]:
        raise InvalidFile(f"{path}: EMA weights are stored but the metadata says has_ema = false")
    optimizer = _load_optimizer(meta.get("optimizer"), groups["optim"], net, path)
    _check_rng(groups["rng"], path)
    _require_finite({f"model.{k}": v for k, v in groups["model"].items()}, str(path), "the checkpoint is unusable")
    _require_finite({f"ema.{k}": v for k, v in groups["ema"].items()}, str(path), "the checkpoint is unusable")
    _require_finite({f"optim.{k}": v for k, v in groups["optim"].items()}, str(path), "the checkpoint is unusable")
    check_architecture(meta["sidenet_config"], sidenet_config, where=f"checkpoint {path}")
    return Checkpoint(step, meta["sidenet_config"], config, groups["model"], groups["ema"] if has_ema else None,
                      optimizer, groups["rng"], meta["extra"], path)


# ----------------------------------------------------------------------------------------
# exported SideNets


def save_sidenet(sidenet: nn.Module, path: "str | os.PathLike", state: Optional[dict] = None,
                 extra: Optional[dict] = None) -> Path:
    """Export a SideNet: ``<path>.safetensors`` (weights ``state`` or the module's, with the
    config in the header) and ``<path>.json`` (the config and ``extra``), both atomically.

    Raises:
        ValueError: ``state`` is not a state of ``sidenet`` (names or shapes), or holds non-finite
            values (nothing is written).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    config = sidenet.config()
    own = sidenet.state_dict()
    weights = {k: _cpu(v) for k, v in (state if state is not None else own).items()}
    if state is not None:
        # EMA states hold the parameters only; the module's buffers complete them
        weights = {**{k: _cpu(v) for k, v in own.items() if k not in weights}, **weights}
    _compare_shapes(_shapes(own), _shapes(weights), "state", "weights", ValueError)
    _require_finite(weights, f"save_sidenet({path})", "refusing to write non-finite weights", ValueError)
    meta = {"format": _FORMAT_SIDENET, "version": FORMAT_VERSION, "sidenet_config": config, "extra": _jsonable(extra or {})}
    data = serialise(weights, meta)
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())
    return path


def _load_exported(path: Path, meta: dict, tensors: dict, weights: str) -> nn.Module:
    recorded = meta["extra"].get("weights")
    if weights != "auto" and recorded != weights:
        held = f"holds the {recorded!r} weights" if recorded in ("model", "ema") else "does not record which weights it holds"
        raise ValueError(
            f"{path}: weights={weights!r}, but this exported SideNet {held}; pass weights='auto', or load "
            "the training checkpoint for the other set"
        )
    net = _meta_sidenet(meta["sidenet_config"], len(tensors), str(path))
    _check_weights(net, tensors, str(path), "stored weights")
    _require_finite(tensors, str(path), "the SideNet is unusable")
    net = build_sidenet(meta["sidenet_config"])
    net.load_state_dict(tensors)
    # the grid it was tuned for, if one was saved with it (read by NeuralPerception.grid)
    net.sampling_grid = check_grid_spec(meta["extra"].get("grid"), where=f"{path}: saved grid")
    net.learned_steps = _learned_steps(meta["extra"].get("learned_steps"), path)
    return net


def _learned_steps(data: Any, path: Path) -> Optional[dict]:
    """The learned per-interval weights a SideNet file carries (``python -m
    adapters.torch_sit.learned.ba``), by number of intervals, each checked; None when it carries
    none."""
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InvalidFile(f"{path}: 'learned_steps' must map numbers of intervals to learned steps, got "
                          f"{type(data).__name__}")
    out = {}
    for key, value in data.items():
        try:
            steps = LearnedSteps.from_dict(value, where=f"{path}: learned_steps[{key!r}]")
        except ValueError as err:
            raise InvalidFile(str(err)) from None
        if str(steps.intervals) != str(key):
            raise InvalidFile(f"{path}: learned_steps[{key!r}] holds {steps.intervals} intervals")
        out[steps.intervals] = steps
    return out


def sidenet_file_extra(path: "str | os.PathLike") -> dict:
    """What an exported SideNet file records besides its weights (its header's ``extra``: the
    backbone, the grid, learned steps, how it was trained), after every check of a load."""
    path = _resolve(path, (SIDENET_NAME,))
    meta, tensors = _read(path, (_FORMAT_SIDENET,))
    _load_exported(path, meta, tensors, "auto")
    return dict(meta["extra"])


def _grid_target(path: "str | os.PathLike") -> tuple[Path, dict, dict]:
    """The exported SideNet file :func:`set_sidenet_grid` rewrites, with its metadata and tensors,
    after every check of a load (before anything is written)."""
    path = _resolve(path, (SIDENET_NAME,))
    meta, tensors = _read(path, (_FORMAT_SIDENET,))
    _load_exported(path, meta, tensors, "auto")
    return path, meta, tensors


def grid_target(path: "str | os.PathLike") -> Path:
    """The file :func:`set_sidenet_grid` would rewrite for ``path`` (an exported SideNet, or a
    training directory holding one), checked as it checks it, so a caller can refuse a path
    before a long computation rather than after it.

    Raises:
        InvalidFile: not an exported SideNet (a training checkpoint: export it first), or a file
            that does not load; FileNotFoundError, OSError as :func:`load_sidenet`.
    """
    return _grid_target(path)[0]


def set_sidenet_grid(path: "str | os.PathLike", grid: Any) -> Path:
    """Record the grid an exported SideNet should sample on (a grid spec, see
    :func:`baquad.schedules.check_grid_spec`; None removes it), rewriting the file atomically with
    its weights and everything else unchanged. ``baquad.schedules.default_grid`` and the sweep's
    default rows then use it.

    Raises:
        ValueError: a bad grid spec (nothing is written); InvalidFile etc. as :func:`load_sidenet`.
    """
    grid = check_grid_spec(grid, where="grid")
    path, meta, tensors = _grid_target(path)
    extra = {k: v for k, v in meta["extra"].items() if k != "grid"}
    if grid is not None:
        extra["grid"] = grid
    meta = {**{k: v for k, v in meta.items() if k != "version"}, "extra": extra}
    data = serialise(tensors, meta)
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), (json.dumps({**meta, "version": FORMAT_VERSION}, indent=2) + "\n").encode())
    return path


def load_sidenet(path: "str | os.PathLike", map_location: Any = "cpu", weights: str = "auto") -> nn.Module:
    """Load a SideNet in one line: ``net = load_sidenet("runs/ring2d/sidenet.safetensors")``.

    ``path``: an exported SideNet (``.safetensors``, or its ``.json``), a training checkpoint, or
    an output directory (its ``sidenet.safetensors``, else its checkpoint). ``weights``:
    ``"auto"`` (default: what an exported file holds; a checkpoint's EMA weights when present),
    ``"model"`` or ``"ema"``; an exported file that holds the other set is refused. The module
    comes back in eval mode on ``map_location``, with ``trained_on`` set to the backbone name the
    file records (None when it records none; :func:`check_sidenet_backbone`). Every check of
    :func:`load_checkpoint` applies.

    Raises:
        ValueError: an unknown ``weights`` choice (listing the valid ones), or one the file cannot
            give; InvalidFile, FileNotFoundError, OSError as :func:`load_checkpoint`.
    """
    _check_weight_choice(weights)
    path = _resolve(path, (SIDENET_NAME, CHECKPOINT_NAME))
    if read_header(path).meta.get("format") == _FORMAT_CKPT:
        ckpt = load_checkpoint(path)
        net, extra = ckpt.build_sidenet(weights), ckpt.extra
    else:
        meta, tensors = _read(path, (_FORMAT_SIDENET, _FORMAT_CKPT))
        net, extra = _load_exported(path, meta, tensors, weights), meta["extra"]
    backbone = extra.get("backbone") if isinstance(extra, dict) else None
    net.trained_on = backbone if isinstance(backbone, str) else None
    net.file_extra = dict(extra) if isinstance(extra, dict) else {}  # what the file records besides its weights
    return net.to(map_location).eval()


def check_sidenet_backbone(sidenet: nn.Module, backbone: str, where: str) -> None:
    """Refuse a SideNet whose file records another backbone than ``backbone``.

    A SideNet learns the velocity deviations of ONE backbone; another backbone's SideNet can read
    the same state shape (gmm-64d's and the digits SiT's states are both 64 numbers) and still be
    wrong for it. :func:`load_sidenet` sets ``trained_on`` from the file; a SideNet that records
    none (built in Python, or exported without it) is not judged.

    Raises:
        ValueError: the recorded backbone differs, naming ``where``, both backbones and the fix.
    """
    trained_on = getattr(sidenet, "trained_on", None)
    if trained_on is not None and trained_on != backbone:
        raise ValueError(f"{where}: this SideNet was trained on the backbone {trained_on!r} (its file records it), "
                         f"but it is used with {backbone!r}; pass a SideNet trained on {backbone!r} "
                         f"(python -m adapters.torch_sit.train --backbone {backbone})")
