"""The endpoint trainer: fit a few-step solver to where a tight solve ends.

A *solver module* is a torch ``nn.Module`` whose ``forward(noise, cond, index)`` runs the solver
from ``noise`` at t = 1 with the backbone's conditioning ``cond`` and returns its state at t = 0,
spending exactly its NFE of backbone calls (the backbone frozen; gradients reach the module's
parameters). ``index`` holds the positions of the samples in the train set (for per-sample
parameters, such as LD3's relaxed noises); it is None for the validation set. The module may
also define

- ``param_groups(lr) -> list[dict]``: Adam parameter groups, each with its own learning rate
  (default: all parameters at ``lr``);
- ``after_step()``: called after every optimiser step (a projection, e.g. LD3's noise ball);
- ``export(out, meta) -> Path``: the trained solver as a core file in the directory ``out``,
  named by the module's ``export_name`` (``bns.npz``, ``grid.json``).

The loss is the mean over the minibatch of the per-sample trajectory error, the L2 norm
``|x - x_teacher|`` over the whole state (what the tables report), minimised with Adam.
Minibatches: step s takes the s-th window of ``batch_size`` indices of the concatenated per-epoch
permutations of the train set (each permutation drawn from a generator seeded by (seed, epoch)),
so every sample is used once per epoch and a resumed run draws exactly what it would have drawn.

Output directory (the conventions of ``python -m adapters.torch_sit.train``):

    checkpoint.safetensors / .json   every ``ckpt_every`` steps and at the end (atomic): the
                                     module's state, Adam's state, the torch RNG, the step, the
                                     iteration count, the run's identity
    log.csv                          step, loss, grad_norm, elapsed_s, validation_error (every
                                     ``iters // VALIDATIONS`` steps and at the end)
    summary.json                     wall time, seconds per iteration, losses, validation errors
    the export                       written by the module's ``export`` at the end

Resuming: automatic when the directory holds a checkpoint (``resume=False`` / ``--no-resume``
starts afresh and removes the previous run's files first). It is bitwise on the same machine with
the same threads: the checkpoint restores every tensor and the RNG, and the minibatches depend on
(seed, step) only. A checkpoint of another run is refused, naming every setting that differs:
backbone, NFE, method, teacher set, solver settings, learning rate, batch size, seed (only the
iteration count may change: ``iters`` at or above the checkpoint's step).

Time budget: ``minutes=M`` (``--minutes``) is converted ONCE into an iteration count, from the
first few iterations of the run (which are real training steps), timed on this machine: the
first one warms up, and the next ``max(PROBE_ITERS - 1, cycle)`` are averaged, ``cycle`` being
the module's ``iteration_cycle`` (1 by default; a module that trains several NFEs in turn, like
BA-solver's, sets it to their number, so the timed iterations cover every NFE once). The
validation passes the run will make (ten, every tenth of the run) are taken out of the budget
first, each timed by the pass made before training. The count is recorded
in every checkpoint, so a resumed run does exactly the same iterations whatever the machine's
speed is then. ``iters=N`` (``--iters``) fixes it instead. Either way the run says how long it
will take on this machine once the first iterations are timed.

Refused: bad settings (named) before anything is written; a teacher set of another role (a
"score" set above all), backbone or guidance scale (by the commands, :meth:`TeacherSet.require`);
a NaN/inf loss or gradient, which stops the run at that step with a FloatingPointError before
any update (the last checkpoint stays the last good one).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ...commandline import HelpFormatter, add_dataclass_flags, dataclass_kwargs, flag_field
from ..files import InvalidFile, atomic_write, read_header, read_tensors, serialise
from ..backbones import Backbone
from ..budget import PROBE_ITERS, iterations_for, say_duration, seconds_per_iteration
from .teacher import TeacherSet, add_backbone_flags, backbone_from_args, backbone_identity, load_teacher

__all__ = ["EndpointConfig", "EndpointResult", "train_endpoint", "train_solver", "batch_indices", "trajectory_error",
           "PROBE_ITERS",
           "add_run_flags", "parsed_run", "solver_parser", "run_command"]

FORMAT = "baquad-endpoint-checkpoint"
CHECKPOINT = "checkpoint.safetensors"
LOG_FIELDS = ("step", "loss", "grad_norm", "elapsed_s", "validation_error")
#: the run's own files in its output directory (removed by a fresh start)
RUN_FILES = (CHECKPOINT, "checkpoint.json", "log.csv", "summary.json")
#: validation passes a run makes (every iters // VALIDATIONS steps, and at the end)
VALIDATIONS = 10


def clock() -> float:
    """The trainer's clock (seconds); tests replace it to make the time budget deterministic."""
    return time.perf_counter()


@dataclass
class EndpointConfig:
    """The optimisation settings of an endpoint run (each is a flag of the learned-solver commands)."""

    lr: float = flag_field("Adam learning rate", default=2e-3)
    batch_size: int = flag_field("samples per step (at most the train set's size)", default=100, aliases=("--batch",))
    iters: Optional[int] = flag_field("optimiser steps in all (default: from --minutes; a resumed run keeps the "
                                      "checkpoint's unless given)", default=None)
    minutes: Optional[float] = flag_field("time budget, converted once into --iters from the first iterations",
                                          default=None)
    seed: int = flag_field("seeds the minibatch order and torch's RNG", default=0)
    ckpt_every: Optional[int] = flag_field("checkpoint every N steps (default: iters / 10, at most 100)", default=None)

    def validate(self) -> None:
        """Raise ValueError naming the first invalid setting and its range."""
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr: must be a finite number > 0, got {self.lr!r}")
        for name, low in (("batch_size", 1), ("seed", 0), ("iters", 1), ("ckpt_every", 1)):
            value = getattr(self, name)
            if value is None and name in ("iters", "ckpt_every"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        if self.minutes is not None and not (math.isfinite(self.minutes) and self.minutes > 0):
            raise ValueError(f"minutes: must be a finite number > 0, got {self.minutes!r}")
        if (self.iters is None) == (self.minutes is None):
            raise ValueError("iters, minutes: give exactly one, an iteration count (--iters) or a time budget "
                             "(--minutes)")


@dataclass
class EndpointResult:
    """What :func:`train_endpoint` returns: the trained module, the summary (also in
    ``summary.json``), the output directory and the exported file."""

    module: nn.Module
    summary: dict
    out: Path
    export: Optional[Path]


def trajectory_error(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample, the L2 norm of ``x - target`` over the whole state (shape ``(B,)``)."""
    return (x - target).flatten(1).norm(dim=1)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> torch.Tensor:
    """The train-set indices of step ``step``: the window ``[step * B, (step + 1) * B)`` of the
    concatenated permutations of ``range(n)``, epoch e's drawn from a generator seeded by
    ``seed * 1_000_003 + e`` (module docstring)."""
    start, out = step * batch_size, []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset:offset + batch_size - len(out)].tolist())
    return torch.tensor(out, dtype=torch.int64)


# ----------------------------------------------------------------------------------------
# checkpoints


def _optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict) -> dict:
    """Adam's tensor state into ``tensors`` (``optim.<param index>.<name>``); returns the rest for
    the metadata (param groups, non-tensor state)."""
    sd = optimizer.state_dict()
    other: dict = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{name}"] = value.detach().cpu().contiguous().clone()
            else:
                other.setdefault(str(idx), {})[name] = value
    return {"param_groups": sd["param_groups"], "state_other": other, "state_keys": sorted(map(str, sd["state"]))}


def _load_optimizer(optimizer: torch.optim.Optimizer, meta: dict, tensors: dict, where: Path) -> None:
    state: dict = {int(k): {} for k in meta["state_keys"]}
    for key, value in tensors.items():
        idx, _, name = key.partition(".")
        if not idx.isdigit() or int(idx) not in state:
            raise InvalidFile(f"{where}: optimiser tensor optim.{key} belongs to no parameter with state")
        state[int(idx)][name] = value
    for idx, values in meta["state_other"].items():
        state[int(idx)].update(values)
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else dict(g) for g in meta["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as err:
        raise InvalidFile(f"{where}: its optimiser state does not fit this module's parameters ({err})") from err


def _save_checkpoint(out: Path, module: nn.Module, optimizer: torch.optim.Optimizer, step: int, iters: int,
                     identity: dict, extra: dict) -> None:
    tensors = {f"param.{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise FloatingPointError(f"checkpoint at step {step}: NaN/inf in {', '.join(bad)}; nothing written")
    optim = _optimizer_tensors(optimizer, tensors)
    tensors["rng.torch"] = torch.get_rng_state()
    meta = {"format": FORMAT, "step": step, "iters": iters, "identity": identity, "optimizer": optim, "extra": extra}
    atomic_write(out / CHECKPOINT, serialise(tensors, meta))
    atomic_write(out / "checkpoint.json", (json.dumps(meta, indent=2) + "\n").encode())


def _identity_diff(saved: Any, given: Any, prefix: str = "") -> list[str]:
    """The dotted keys where two JSON identities differ."""
    if isinstance(saved, dict) and isinstance(given, dict):
        return [d for k in sorted(set(saved) | set(given))
                for d in _identity_diff(saved.get(k), given.get(k), f"{prefix}{k}.")]
    return [] if saved == given else [f"{prefix[:-1]}: {saved!r} in the checkpoint, {given!r} in this run"]


def _load_checkpoint(out: Path, module: nn.Module, optimizer: torch.optim.Optimizer, identity: dict) -> dict:
    """Restore a checkpoint into ``module`` and ``optimizer`` (and torch's RNG); returns its metadata."""
    header = read_header(out / CHECKPOINT)
    meta = header.meta
    if meta.get("format") != FORMAT:
        raise InvalidFile(f"{header.path}: not an endpoint-training checkpoint (format {meta.get('format')!r})")
    diff = _identity_diff(meta.get("identity"), json.loads(json.dumps(identity)))
    if diff:
        raise ValueError(f"{header.path}: written by another run; it differs in " + "; ".join(diff)
                         + ". Use another output directory, or start afresh there (--no-resume)")
    tensors = read_tensors(header)
    groups: dict = {"param": {}, "optim": {}, "rng": {}}
    for key, value in tensors.items():
        prefix, _, rest = key.partition(".")
        if prefix not in groups or not rest:
            raise InvalidFile(f"{header.path}: unexpected tensor {key!r}")
        groups[prefix][rest] = value
    try:
        module.load_state_dict(groups["param"])
    except RuntimeError as err:
        raise InvalidFile(f"{header.path}: its parameters do not fit this module ({err})") from err
    _load_optimizer(optimizer, meta["optimizer"], groups["optim"], header.path)
    rng = groups["rng"].get("torch")
    if rng is None or rng.dtype != torch.uint8 or rng.shape != torch.get_rng_state().shape:
        raise InvalidFile(f"{header.path}: rng.torch is missing or not torch's CPU generator state")
    torch.set_rng_state(rng)
    return meta


def _prepare_directory(out: Path, resume: Optional[bool], say: Callable[..., None], export_name: Optional[str]) -> bool:
    """Remove temporary files of killed writes; on a fresh start the previous run's files (its
    export ``export_name`` included). Returns whether to resume."""
    out.mkdir(parents=True, exist_ok=True)
    names = RUN_FILES + ((export_name,) if export_name else ())
    temp = re.compile(r"^\.(?:%s)\..+\.tmp$" % "|".join(re.escape(n) for n in names))
    for p in out.iterdir():
        if temp.match(p.name):
            p.unlink()
            say(f"removed {p}, a temporary file left by an interrupted write")
    has = (out / CHECKPOINT).is_file()
    if resume is True and not has:
        raise FileNotFoundError(2, f"resume: no checkpoint in {out}")
    if resume is False or not has:
        removed = [out / n for n in names if (out / n).is_file()]
        for p in removed:
            p.unlink()
        if removed:
            say(f"starting afresh in {out}: removed the previous run's files {', '.join(p.name for p in removed)}")
        return False
    return True


def _rewind_log(path: Path, upto: int) -> None:
    rows = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= upto]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, LOG_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


# ----------------------------------------------------------------------------------------
# the loop


def _param_groups(module: nn.Module, lr: float) -> list:
    if hasattr(module, "param_groups"):
        return module.param_groups(lr)
    return [{"params": [p for p in module.parameters() if p.requires_grad], "lr": lr}]


def _train_step(module: nn.Module, optimizer: torch.optim.Optimizer, train: TeacherSet, idx: torch.Tensor,
                device: torch.device, step: int) -> tuple[float, float]:
    """One Adam step on the samples ``idx`` of the train set: the loss, its gradient, the update
    (and the module's ``after_step``). Returns the loss and the gradient norm.

    Raises:
        FloatingPointError: a NaN/inf loss or gradient (before any update), naming the step.
    """
    if hasattr(module, "set_step"):
        module.set_step(step)
    x = module(train.noise[idx].to(device), train.cond(idx, device), idx.to(device))
    loss = trajectory_error(x, train.target[idx].to(device)).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
    if not grads:
        raise ValueError("module: none of its parameters received a gradient; the solver's output must depend on them")
    grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
    value = float(loss.detach())
    if not (math.isfinite(value) and math.isfinite(grad_norm)):
        raise FloatingPointError(f"step {step + 1}: the loss ({value}) or the gradient norm ({grad_norm}) is not "
                                 "finite; no update made, the last checkpoint is the last good state")
    optimizer.step()
    if hasattr(module, "after_step"):
        module.after_step()
    return value, grad_norm


@torch.no_grad()
def _validation_error(module: nn.Module, data: TeacherSet, batch_size: int, device: torch.device) -> float:
    """Mean trajectory error of the module on ``data`` (no per-sample parameters: index None); a
    module that learns several solvers at once (``validation_error(error)``) averages them."""
    if hasattr(module, "validation_error"):
        return module.validation_error(lambda m: _mean_error(m, data, batch_size, device))
    return _mean_error(module, data, batch_size, device)


def _mean_error(module: nn.Module, data: TeacherSet, batch_size: int, device: torch.device) -> float:
    total = 0.0
    for lo in range(0, len(data), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(data)))
        x = module(data.noise[idx].to(device), data.cond(idx, device), None)
        total += float(trajectory_error(x, data.target[idx].to(device)).sum())
    return total / len(data)


def train_endpoint(module: nn.Module, train: TeacherSet, out: "str | os.PathLike", config: EndpointConfig, *,
                   identity: dict, validation: Optional[TeacherSet] = None, resume: Optional[bool] = None,
                   device: Any = "cpu", progress: bool = True, log: Callable[..., None] = print) -> EndpointResult:
    """Train ``module`` on ``train`` (module docstring) and write the run to ``out``.

    Args:
        module: the solver module (forward(noise, cond, index) -> x at t = 0).
        train: the train set (its role and backbone are the caller's to check).
        out: output directory.
        config: the optimisation settings.
        identity: what the run is (solver, method, NFE, backbone, ...; JSON-able), recorded in the
            checkpoint; a checkpoint with another identity is refused. The train set's settings
            are added to it.
        validation: a set scored at every checkpoint and at the end (``validation_error``).
        resume: True / False / None (automatic), as the module docstring says.
        device: where the module runs.
        progress: a tqdm bar (shown on a terminal only).
        log: where messages go.

    Raises:
        ValueError: a bad setting (named) before anything is written; a batch larger than the
            train set; a checkpoint of another run (the differing settings named), ``iters``
            below the checkpoint's step.
        FloatingPointError: a NaN/inf loss or gradient, naming the step.
    """
    config.validate()
    if config.batch_size > len(train):
        raise ValueError(f"batch_size: {config.batch_size} is more than the {len(train)} samples of the train set")
    out = Path(out)
    device = torch.device(device)
    identity = {**identity, "train_set": train.settings(),
                "optimisation": {"lr": config.lr, "batch_size": config.batch_size, "seed": config.seed}}
    torch.manual_seed(config.seed)
    module.to(device)
    optimizer = torch.optim.Adam(_param_groups(module, config.lr))
    start, iters, extra = 0, config.iters, {"config": asdict(config)}
    if _prepare_directory(out, resume, log, getattr(module, "export_name", None)):
        meta = _load_checkpoint(out, module, optimizer, identity)
        start, extra = meta["step"], meta["extra"]
        iters = config.iters if config.iters is not None else meta["iters"]
        if iters < start:
            raise ValueError(f"iters: {iters} is below the checkpoint's step {start}; resuming cannot go back")
        if config.minutes is not None:
            log(f"note: the time budget was converted to {meta['iters']} iterations when the run started; "
                "resuming keeps that count")
        log(f"resuming from {out / CHECKPOINT} at step {start} of {iters}")
    _rewind_log(out / "log.csv", start)
    validation_s = 0.0
    if validation is not None and "validation_error_initial" not in extra:
        t0 = clock()
        extra["validation_error_initial"] = _validation_error(module, validation, config.batch_size, device)
        validation_s = clock() - t0
        log(f"validation error before training: {extra['validation_error_initial']:.5g} ({len(validation)} samples)")
    probe = 1 + max(PROBE_ITERS - 1, int(getattr(module, "iteration_cycle", 1)))

    from tqdm.auto import tqdm

    bar = tqdm(total=iters, initial=start, desc="endpoint", file=sys.stderr, disable=None if progress else True)
    fh = open(out / "log.csv", "a", newline="")
    writer = csv.DictWriter(fh, LOG_FIELDS)
    t_start, times, last = clock(), [], {}
    ckpt_every = config.ckpt_every
    try:
        step = start
        while iters is None or step < iters:
            t0 = clock()
            idx = batch_indices(len(train), config.batch_size, step, config.seed)
            loss, grad_norm = _train_step(module, optimizer, train, idx, device, step)
            step += 1
            times.append(clock() - t0)
            if step - start == (probe if iters is None else min(probe, iters - start)):
                # the first iterations timed (the very first warms up): the budget becomes a count, once
                per_iter = seconds_per_iteration(times)
                if iters is None:
                    # about ten validation passes (one per checkpoint) come out of the budget first
                    left = max(config.minutes * 60 - VALIDATIONS * validation_s, 0.0)
                    iters = max(probe, iterations_for(left / 60, per_iter))
                    bar.reset(total=iters)
                    bar.update(step - 1)
                say_duration(log, per_iter, iters - start, config.minutes if start == 0 else None,
                             f"; and {VALIDATIONS} validation passes of {validation_s:.0f} s" if validation_s else "")
            if ckpt_every is None and iters is not None:
                ckpt_every = max(1, min(100, iters // 10))
            row = {"step": step, "loss": loss, "grad_norm": grad_norm, "elapsed_s": clock() - t_start,
                   "validation_error": ""}
            checkpoint = iters is not None and (step == iters or step % ckpt_every == 0)
            validate = iters is not None and (step == iters or step % max(1, iters // VALIDATIONS) == 0)
            if validate and validation is not None:
                row["validation_error"] = _validation_error(module, validation, config.batch_size, device)
            writer.writerow(row)
            fh.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4g}")
            if checkpoint:
                _save_checkpoint(out, module, optimizer, step, iters, identity, extra)
            last = row
    finally:
        bar.close()
        fh.close()
    wall = clock() - t_start
    summary = {"identity": identity, "iterations": iters - start, "steps_total": iters,
               "resumed_from": start or None, "wall_time_s": wall,
               "seconds_per_iteration": wall / max(1, iters - start), "time_budget_minutes": config.minutes,
               "final_loss": last.get("loss"), "validation_set": None if validation is None else validation.settings(),
               "validation_error_initial": extra.get("validation_error_initial"),
               "validation_error_final": last.get("validation_error") or None}
    export = None
    if hasattr(module, "export"):
        export = module.export(out, {"identity": identity, "steps": iters, "final_loss": summary["final_loss"],
                                     "validation_error": summary["validation_error_final"],
                                     "wall_time_s": summary["wall_time_s"],
                                     "loss": "mean L2 trajectory error against the teacher set"})
        summary["export"] = str(export)
    atomic_write(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    log(f"done: {iters - start} iterations in {wall:.1f} s; final loss {summary['final_loss']}"
        + (f"; validation error {summary['validation_error_initial']:.5g} -> {summary['validation_error_final']:.5g}"
           if validation is not None else "") + (f"; wrote {export}" if export else ""))
    return EndpointResult(module, summary, out, export)


def train_solver(module: nn.Module, backbone: Backbone, train: TeacherSet, out: "str | os.PathLike",
                 config: EndpointConfig, *, identity: dict, guidance_scale: Optional[float] = None,
                 validation: Optional[TeacherSet] = None, **kwargs: Any) -> EndpointResult:
    """:func:`train_endpoint` after the teacher sets' checks: ``train`` of role "train" and
    ``validation`` of role "validation" (drawn from another seed), both built for ``backbone``
    at ``guidance_scale`` (:meth:`TeacherSet.require`). The backbone's identity and the guidance
    scale join ``identity``; ``kwargs`` go to :func:`train_endpoint`.

    Raises:
        ValueError: a set of another role, backbone or guidance scale, or a validation set with
            the train set's noises, each named.
    """
    ident = backbone_identity(backbone)
    train.require(ident, guidance_scale, ("train",), "teacher")
    if validation is not None:
        validation.require(ident, guidance_scale, ("validation",), "validation")
        if validation.meta["seed"] == train.meta["seed"]:
            raise ValueError(f"validation: drawn from seed {train.meta['seed']}, as the train set is, so it holds the "
                             "same noises; build it with another --seed")
    identity = {**identity, "backbone": ident, "guidance_scale": guidance_scale}
    return train_endpoint(module, train, out, config, identity=identity, validation=validation, **kwargs)


# ----------------------------------------------------------------------------------------
# command line: the flags every endpoint-training command shares


def solver_parser(prog: str, doc: str, *, nfe_help: str = "backbone calls of the solver",
                  several_nfe: bool = False) -> argparse.ArgumentParser:
    """A learned-solver command's parser with the backbone flags and ``--nfe`` (one value, or with
    ``several_nfe`` one or more); the command adds its own flags, then :func:`add_run_flags`."""
    p = argparse.ArgumentParser(prog=prog, formatter_class=HelpFormatter, description=doc.split("\n\n")[0])
    add_backbone_flags(p)
    p.add_argument("--nfe", type=_nfe, nargs="+" if several_nfe else None, required=True, help=nfe_help)
    return p


def _nfe(text: str) -> int:
    """argparse ``type=`` of ``--nfe``: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"an integer >= 1 (backbone calls), got {text!r}")
    return value


def run_command(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]],
                train: Callable[[argparse.Namespace, Backbone, TeacherSet, Optional[TeacherSet], EndpointConfig], Any]
                ) -> int:
    """Parse ``argv``, build the backbone, teacher sets and settings (:func:`parsed_run`) and call
    ``train(args, backbone, train_set, validation_set, config)``; a refusal (ValueError,
    TypeError) goes to ``parser.error``. Returns the exit status."""
    args = parser.parse_args(argv)
    bb, train_set, validation, config = parsed_run(args, parser)
    try:
        train(args, bb, train_set, validation, config)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
    return 0


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags every endpoint-training command shares: teacher sets, output, resume, device,
    and the optimisation settings (:class:`EndpointConfig`)."""
    p.add_argument("--teacher", type=Path, required=True, help="the train teacher set (role train)")
    p.add_argument("--validation", type=Path, default=None, help="a validation teacher set, scored at checkpoints")
    p.add_argument("--out", type=Path, required=True, help="output directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="resume from OUT's checkpoint (default: automatically when there is one)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="start afresh (the previous run's files in OUT are removed)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dataclass_flags(p.add_argument_group("optimisation"), EndpointConfig)


def parsed_run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple:
    """(backbone, train set, validation set or None, EndpointConfig) from the shared flags;
    errors through ``parser.error``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    config = EndpointConfig(**dataclass_kwargs(args, EndpointConfig))
    try:
        config.validate()
    except ValueError as err:
        parser.error(str(err))
    bb = backbone_from_args(args, parser)
    for flag, path in (("--teacher", args.teacher), ("--validation", args.validation)):
        if path is not None and not path.is_file():
            parser.error(f"{flag}: no file {path}; build one with python -m adapters.torch_sit.learned.teacher")
    train = load_teacher(args.teacher)
    validation = load_teacher(args.validation) if args.validation is not None else None
    return bb, train, validation, config
