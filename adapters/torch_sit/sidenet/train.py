"""Train a SideNet by chain training (paper Sec. 3.2.3, Algorithm 2): single process or DDP.

    python -m adapters.torch_sit.train --backbone gmm-ring2d --out runs/ring2d --iters 2000
    torchrun --nproc_per_node=2 -m adapters.torch_sit.train --backbone gmm-ring2d --out runs/ring2d

A diffusers SD3/Flux transformer has a command of its own, with these flags plus the
transformer's (:mod:`adapters.diffusers_flow.train`): ``python -m adapters.diffusers_flow.train --model PATH ...``.

Every :class:`~adapters.torch_sit.sidenet.chain.ChainConfig` field is a flag (``--chain-length``,
``--intervals``, ``--batch``/``--batch-size``, ``--lr``, ``--ema-decay none``, ...), and the
SideNet architecture has its own flags (``--arch``, ``--hidden``, ``--depth``, ...).

Data parallelism: every rank draws the same GLOBAL batch (noise, time grids, labels) from a
generator seeded by (seed, step) and takes its slice, and the loss of a slice is normalised by
the global number of (sample, interval) pairs, so N processes reproduce one process's training
up to the order of the gradient all-reduce. Backend: nccl on CUDA, gloo on CPU.

Output directory:
    checkpoint.safetensors / .json   the last checkpoint (every ``--ckpt-every`` iterations and at
                                     the end; atomic, written by rank 0, followed by a barrier)
    history/                         older checkpoints (``--keep-history``)
    log.csv                          step, loss, forward/backward losses, lr, grad norm, ...
    sidenet.safetensors / .json      the final SideNet (EMA weights when EMA is on):
                                     ``load_sidenet("<out>/sidenet.safetensors")``
    summary.json                     wall time, backbone calls, parameter counts
    previous-run-<k>/                the files of a run a fresh start set aside (below)

How long: the run times its first iterations on this machine and says how long its iterations
will take. ``--minutes M`` (``train(..., minutes=M)``; not with ``--iters``) is a time budget:
before the loop, :data:`~adapters.torch_sit.budget.PROBE_ITERS` iterations are timed on the run's
state, which is then restored, and the budget becomes the iteration count N = max(PROBE_ITERS,
floor(60 M / s)) for s seconds per iteration (the first timed iteration left out;
:mod:`adapters.torch_sit.budget`), once: N is recorded in every checkpoint, and a resumed run
keeps it whatever the machine's speed is then (resuming stays bitwise; the budgeted run is the
run of ``--iters N``).

Resuming: ``--resume``, or automatically when the output directory holds a checkpoint (the run
says so). The SideNet architecture and the recipe default to the checkpoint's; an explicitly
different architecture is refused, naming the differing keys, and so is ``--iters`` below the
checkpoint's step (resuming never rolls back), and so is another backbone than the checkpoint
records (its name, state shape, classes, parameter count and a fingerprint of its weights;
:mod:`~adapters.torch_sit.sidenet.rundir`). ``--no-resume`` (or a directory without a
checkpoint) starts afresh: the previous run's files (checkpoint, history, exported SideNet,
summary, log) are first moved into ``previous-run-<k>/``, so the two runs never mix, and are
deleted only once the new run has written its SideNet: an interrupted fresh start loses nothing.
Temporary files left by a killed write (``.<name>.<random>.tmp``, this module's names only) are
removed on every start.

What training refuses: every recipe field out of its range (NaN and infinities included) and
the other arguments, before anything is written; a checkpoint holding NaN/inf values; a NaN/inf
loss, gradient or weight during training, which stops the run at that iteration with a
FloatingPointError naming it (the weights are not updated from it, and nothing non-finite is
ever written: the last checkpoint stays the last good one).
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import inspect
import io
import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from ...commandline import HelpFormatter, add_dataclass_flags, dataclass_kwargs, json_object, load_object
from ..budget import PROBE_ITERS, check_minutes, clock, iterations_for, say_duration, seconds_per_iteration
from ..backbones import Backbone, CountingBackbone, backbone_names, get_backbone
from .chain import ChainConfig, ChainTrainer, sample_batch, valid_pairs
from ..files import atomic_write
from .checkpoint import InvalidFile, find_checkpoint, load_checkpoint, save_checkpoint, save_sidenet
from ..distributed import dist_setup
from .networks import BASES, SIDENETS, build_sidenet, count_parameters, sidenet_report, size_ratio
from .rundir import (BackboneMismatch, backbone_identity, check_backbone, remove_runs_set_aside, remove_temp_files,
                     set_previous_run_aside)

__all__ = ["train", "TrainResult", "default_sidenet_config", "recipe_for", "RECIPES", "main",
           "build_parser", "run_parsed", "backbone_from_factory", "backbone_from_flag", "OWN_COMMANDS"]

LOG_FIELDS = ("step", "loss", "loss_forward", "loss_backward", "lr", "grad_norm", "intervals",
              "backbone_calls", "elapsed_s")


@dataclass
class TrainResult:
    """What :func:`train` returns: the trained SideNet (unwrapped, final weights), its EMA weights,
    the summary dict (also written to ``summary.json``) and the output paths."""

    sidenet: torch.nn.Module
    ema: Optional[dict]
    summary: dict
    out: Path


def default_sidenet_config(backbone: Any, arch: Optional[str] = None, **overrides: Any) -> dict:
    """The default SideNet config for a backbone: an MLP for vector states, a ConvSideNet for
    ``(C, H, W)`` states, a TokenSideNet for token states ``(N, D)``, class-conditional when the
    backbone is and reading a conditioning vector when it declares ``cond_dim``; ``overrides``
    replace defaults."""
    shape = tuple(backbone.state_shape)
    arch = arch or {1: "mlp", 2: "token"}.get(len(shape), "conv")
    cond = {} if getattr(backbone, "cond_dim", None) is None else {"cond_dim": backbone.cond_dim}
    if arch == "mlp":
        net = SIDENETS["MLPSideNet"](int(math.prod(shape)), num_classes=backbone.num_classes, **cond)
    elif arch == "conv":
        if len(shape) != 3:
            raise ValueError(f"--arch conv needs (C, H, W) states; backbone {backbone.name!r} has {shape}")
        net = SIDENETS["ConvSideNet"](shape[0], num_classes=backbone.num_classes, **cond)
    elif arch == "token":
        if len(shape) != 2:
            raise ValueError(f"--arch token needs (N, D) token states; backbone {backbone.name!r} has {shape}")
        net = SIDENETS["TokenSideNet"](shape[1], num_classes=backbone.num_classes, **cond)
    else:
        raise ValueError(f"arch: 'mlp', 'conv' or 'token', got {arch!r}")
    cfg = net.config()
    valid = [p for p in inspect.signature(type(net).__init__).parameters if p != "self"]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(f"SideNet {cfg['class']}: unknown architecture settings {unknown}; valid: {sorted(valid)}")
    cfg.update(_sized_for(cfg, backbone, overrides))
    cfg.update(overrides)
    with torch.device("meta"):
        net = build_sidenet(cfg)
    ratio = count_parameters(net) / backbone.num_parameters if getattr(backbone, "num_parameters", None) else 0.0
    if ratio > SIDENET_WARN_RATIO:
        warnings.warn(f"the SideNet ({count_parameters(net):,} parameters) is {size_ratio(ratio)} {backbone.name!r}: "
                      f"above {SIDENET_WARN_RATIO:.0%} its cost is no longer small next to the "
                      "backbone's (the paper's is about 1%); choose a smaller one (--hidden, --base-channels, --width)",
                      stacklevel=2)
    return net.config()  # normalised (types as the constructor stores them)


#: the SideNet size the default aims at: 2% of a neural backbone's parameters (the paper's is
#: 0.9-1.7%), and the ratio above which the default warns
SIDENET_TARGET_RATIO = 0.02
SIDENET_WARN_RATIO = 0.10
#: the width settings tried, largest first, when sizing a default SideNet to its backbone
_WIDTHS = {
    "MLPSideNet": ("hidden", "embed_dim", ((256, 64), (128, 64), (64, 32), (32, 16), (16, 8))),
    "ConvSideNet": ("base_channels", "time_embed_dim", ((128, 256), (64, 128), (32, 64), (16, 32), (8, 16))),
    "TokenSideNet": ("width", "time_embed_dim", ((128, 128), (64, 64), (32, 32), (16, 16))),
}


def _sized_for(cfg: dict, backbone: Any, overrides: dict) -> dict:
    """For a neural backbone, the largest (width, conditioning width) of :data:`_WIDTHS` whose
    SideNet has at most :data:`SIDENET_TARGET_RATIO` of the backbone's parameters (the smallest
    if none does); nothing for an analytic backbone or when a width is given."""
    key, embed, sizes = _WIDTHS[cfg["class"]]
    nb = getattr(backbone, "num_parameters", None)
    if not nb or key in overrides or embed in overrides:
        return {}
    for width, dim in sizes:
        with torch.device("meta"):
            n = count_parameters(build_sidenet({**cfg, **overrides, key: width, embed: dim}))
        if n <= SIDENET_TARGET_RATIO * nb:
            break
    return {key: width, embed: dim}


#: The measured default recipe for the analytic mixture flows (README, "SideNet recipe
#: ablations"): interval sizes from an exponential of rate 5 truncated to [0.01, 0.35] rather than
#: a Dirichlet partition of [0, 1], the squared error divided by |h| (loss_norm "h"), path
#: features, EMA of the weights. Chains start from noise at t = 1, as the paper's (no data set).
RECIPES: dict[str, dict] = {
    "gmm-ring2d": dict(chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", iters=4000,
                                  batch_size=256, ema_decay=0.99),
                       sidenet=dict(path_features=True)),
    # On the higher-dimensional mixtures the SideNet is a residual on the training-free polynomial
    # perception (docs/results.md, "What was tried on the 32-D mixture"): on gmm-32d, 4096 noises, 10 NFE,
    # mean 0.103 / median 0.029 against 0.125 / 0.069 for the plain SideNet. On the ring the plain
    # one stays: the residual one measured 0.0101 against 0.0043 there (10 NFE, uniform grid).
    "gmm-32d": dict(chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", iters=4000,
                               batch_size=256, ema_decay=0.99),
                    sidenet=dict(path_features=True, base_perception="polynomial")),
    "gmm-64d": dict(chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", iters=4000,
                               batch_size=256, ema_decay=0.99),
                    sidenet=dict(path_features=True, base_perception="polynomial")),
    # REPA's SiT-XL/2 (docs/imagenet.md): the paper's settings (Table 4: chain length 8,
    # Gauss-Legendre-3 simulation, global batch 4096, 250 iterations at 256 px and 500 at 512 px),
    # with the patch design of paper_sidenet_config in place of Table 4's ConvSideNet (one Table 4
    # layer on 2 x 2 patches, a light full-resolution head: its bytes per interval are 5.2% of a
    # backbone call's instead of 46% in float32, analysis/figures/cost_model.md; at equal narrow width on a
    # latent test bed it is 10% and 9% more accurate at 5 and 7 NFE and 1.8% less at 10 NFE,
    # analysis/figures/sidenet_design.md), here
    # conditioned on the guidance scale and trained over the guidance
    # range of the sampling settings, 2.0-3.1 at 256 px and 1.95-3.5 at 512 px, guided on t <= 0.7),
    # with the interval sizes and loss normalisation measured on the mixtures (the paper's
    # "Truncated Exp. 50" is not defined further: --exp-rate 50 is the literal reading). The global
    # batch is accumulated from micro-batches of 128 chains per GPU (peak memory at 256 chains was
    # 89 GiB on an H200, over an H100's 80).
    **{f"repa-sit-xl2-{res}": dict(
        arch="conv",
        chain=dict(chain_length=8, rule="gauss-legendre-3", intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35,
                   loss_norm="h", iters=250 if res == 256 else 500, batch_size=4096, micro_batch=128, loss_chunks=8,
                   lr=1e-3, warmup_iters=10, ema_decay=None, guidance_scale=gmin, guidance_max=gmax),
        sidenet=dict(base_channels=128, time_embed_dim=256, num_heads=4, res_blocks=3, num_layers=1,
                     patch=2 if res == 256 else 4, guidance=True))
       for res, gmin, gmax in ((256, 2.0, 3.1), (512, 1.95, 3.5))},
    # The digits SiT (adapters.torch_sit.digits.model, docs/digits.md): an MLP SideNet on the 64 pixels (an 8 x 8
    # ConvSideNet costs more per sample than the SiT itself), conditioned on the class and the guidance
    # scale; every chain draws its scale from [1, 3], around the demo's 1.5.
    "digits-sit": dict(arch="mlp",
                       chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h",
                                  iters=3000, batch_size=128, ema_decay=0.99, guidance_scale=1.0, guidance_max=3.0),
                       sidenet=dict(hidden=64, depth=2, embed_dim=32, guidance=True, path_features=True)),
}


#: the measured recipe (the mixtures') for a backbone that has none of its own: trunc-exp interval
#: sizes, squared error over |h|, path features, EMA; the SideNet sized to the backbone and a
#: residual on the polynomial perception, the training-free default of ``baquad.solve``: its
#: output layer starts at zero, so before any training it IS that default (to rounding), and
#: training starts from the solver a user already has instead of the anchor-only one, which on a
#: user's conv U-Net (docs/own-model.md) was 1.6x worse at 8 NFE and still there after minutes of
#: training (analysis/figures/own_model.md measures the start and the training).
GENERIC_RECIPE = dict(chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", iters=4000,
                                 batch_size=256, ema_decay=0.99),
                      sidenet=dict(path_features=True, base_perception="polynomial"))


def recipe_for(backbone: "str | Backbone", *, iters: Optional[int] = None, batch_size: Optional[int] = None,
               quick: bool = False) -> tuple[ChainConfig, dict]:
    """The default (ChainConfig, SideNet config) for a backbone: its own entry in ``RECIPES``
    (looked up by name), else :data:`GENERIC_RECIPE`, the recipe measured on the mixtures, with
    the default SideNet for its state shape sized to it (:func:`default_sidenet_config`) and a
    residual on the polynomial perception, so that untrained it samples as ``baquad.solve``'s
    training-free default does. ``backbone`` is a registered name or a :class:`Backbone` (a
    user's own model). ``quick``: a few iterations, for smoke tests."""
    bb = get_backbone(backbone) if isinstance(backbone, str) else backbone
    recipe = RECIPES.get(bb.name, GENERIC_RECIPE)
    chain = dict(recipe["chain"])
    if iters is not None:
        chain["iters"] = iters
    if batch_size is not None:
        chain["batch_size"] = batch_size
    if quick:
        chain.update(iters=min(chain.get("iters", 20), 20), batch_size=min(chain.get("batch_size", 64), 64))
        chain.pop("micro_batch", None)
    return ChainConfig(**chain), default_sidenet_config(bb, recipe.get("arch"), **recipe["sidenet"])


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto]


def _check_arguments(cfg: ChainConfig, out: Any, resume: Any, ckpt_every: Any, minutes: Any) -> Path:
    """The checks of :func:`train`'s arguments, before anything is loaded or written."""
    if not isinstance(cfg, ChainConfig):
        raise TypeError(f"cfg: expected a ChainConfig, got {type(cfg).__name__}")
    cfg.validate()  # the fields may have been changed after construction
    if out is None or not str(out).strip():
        raise ValueError(f"out: the output directory is empty ({out!r}); give a directory, e.g. runs/<name>")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"out: {out} exists and is not a directory; give an output directory, e.g. runs/<name>")
    if resume not in (None, True, False):
        raise ValueError(f"resume: True, False or None (automatic), got {resume!r}")
    if ckpt_every is not None and (isinstance(ckpt_every, bool) or not isinstance(ckpt_every, int) or ckpt_every < 0):
        raise ValueError(f"ckpt_every: an integer >= 0 (0: checkpoint at the end only; None: every iters / 10, "
                         f"at most 100), got {ckpt_every!r}")
    check_minutes(minutes)
    return Path(out)


def _check_finite_checkpoint(ck: Any) -> None:
    """Refuse to resume from a checkpoint holding NaN/inf weights, EMA weights or optimiser state."""
    parts = {"model": ck.model, "ema": ck.ema or {},
             "optim": {f"{i}.{k}": v for i, st in (ck.optimizer or {}).get("state", {}).items()
                       for k, v in st.items() if isinstance(v, torch.Tensor)}}
    for part, tensors in parts.items():
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise ValueError(
                    f"checkpoint {ck.path}: {part}.{name} holds NaN/inf values; it cannot be resumed. Start afresh "
                    "(--no-resume, resume=False) or restore an older checkpoint (history/ with --keep-history)."
                )


def _refuse_non_finite(state: dict, what: str) -> None:
    bad = [k for k, t in state.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise FloatingPointError(f"{what}: NaN/inf in {', '.join(bad)}; nothing written")


def _log_text(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, LOG_FIELDS)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue().encode()


def train(
    cfg: ChainConfig,
    *,
    backbone: "str | Backbone",
    out: "str | os.PathLike",
    sidenet_config: Optional[dict] = None,
    resume: Optional[bool] = None,
    ckpt_every: Optional[int] = 0,
    keep_history: bool = False,
    device: Optional[str] = None,
    progress: bool = True,
    log: Callable[..., None] = print,
    minutes: Optional[float] = None,
) -> TrainResult:
    """Chain-train a SideNet on a frozen backbone; see the module docstring.

    How long it takes: the first iterations are timed on this machine and the run says how long
    all of them will take (:mod:`adapters.torch_sit.budget`). With a time budget (``minutes``)
    the first ``PROBE_ITERS`` iterations are timed before the loop, on the run's state, which is
    then restored (nothing of them is kept), and the budget becomes ``iters`` once: N =
    max(PROBE_ITERS, floor(60 minutes / s)) for s seconds per iteration (the first timed one left
    out). The count is recorded in every checkpoint; a resumed run keeps it, however fast the
    machine is then, so an interrupted budgeted run resumed ends bitwise where it would have
    ended uninterrupted, and a budgeted run of N iterations is the run with ``cfg.iters = N``.

    Args:
        cfg: the recipe (``cfg.iters`` optimiser steps in total, counting resumed ones; replaced
            by the budget's count when ``minutes`` is given).
        backbone: a registered name (``"gmm-ring2d"``, ``"gmm-32d"``) or a :class:`Backbone`.
        out: output directory (not empty).
        sidenet_config: the architecture (``sidenet.config()`` form). None: the checkpoint's when
            resuming, else :func:`default_sidenet_config`. Given and different from a
            checkpoint's: refused (:class:`~adapters.torch_sit.sidenet.checkpoint.ArchitectureMismatch`).
        resume: True: resume (a checkpoint must exist); False: start afresh; None: resume when
            ``out`` holds a checkpoint. A fresh start moves the previous run's files (checkpoint,
            history, exported SideNet, summary, log) into ``out/previous-run-<k>/``, deleted once
            this run has written its SideNet. A checkpoint of another backbone is refused.
        ckpt_every: checkpoint every this many iterations (0: only at the end; None: every
            ``iters / 10``, at most 100, from the count the budget gives).
        keep_history: keep every checkpoint under ``out/history``.
        device: torch device (default: ``cuda:<LOCAL_RANK>`` when available, else CPU).
        progress: tqdm progress bar on rank 0.
        log: where rank 0's messages go.
        minutes: a time budget (a number > 0), converted once into ``cfg.iters`` as said above.
            Resuming a budgeted run keeps the count its checkpoint records; resuming a run that
            was started without a budget with one is refused (give ``cfg.iters`` instead).

    Raises:
        ValueError: an invalid argument or recipe field (named), before anything is written; a
            checkpoint with NaN/inf values; ``cfg.iters`` below the checkpoint's step; a
            checkpoint of another backbone (:class:`~.rundir.BackboneMismatch`); ``minutes`` on
            a checkpoint of a run started without a budget.
        FloatingPointError: a NaN/inf loss, gradient or weight, naming the iteration; the run
            stops there, and no non-finite weights are ever written.
    """
    out = _check_arguments(cfg, out, resume, ckpt_every, minutes)
    rank, world, dev, initialised = dist_setup(device)
    say = log if rank == 0 else (lambda *a, **k: None)
    try:
        run = _start_run(cfg, backbone, out, sidenet_config, resume, keep_history, rank, world, dev, say, minutes)
        if minutes is not None and run.ck is None:
            _convert_budget(run, minutes)
        if ckpt_every is None:
            ckpt_every = max(1, min(100, run.cfg.iters // 10))
        last, wall = _run_iterations(run, ckpt_every, progress)
        return _finish_run(run, last, wall)
    finally:
        if initialised and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class _Run:
    """A training run between :func:`_start_run`, :func:`_run_iterations` and :func:`_finish_run`."""

    cfg: ChainConfig
    out: Path
    rank: int
    world: int
    dev: torch.device
    say: Callable[..., None]
    bb: Backbone
    counted: CountingBackbone  #: the backbone, counting its calls
    ck: Any  #: the checkpoint resumed from, or None
    sidenet_config: dict
    module: torch.nn.Module  #: the SideNet (unwrapped)
    trainer: ChainTrainer
    start: int  #: the step the run starts from (the checkpoint's when resuming)
    keep_history: bool
    identity: dict  #: what the checkpoints record of the backbone (rundir.backbone_identity)
    budget: Optional[dict] = None  #: the time budget and the count it became (recorded in the checkpoints)
    per_iter: Optional[float] = None  #: seconds per iteration, once timed

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes (on the CPU)."""
        t = t.to(self.dev)
        dist.all_reduce(t)
        return t.cpu()

    def save(self, step: int) -> None:
        """A checkpoint at ``step`` (rank 0 writes, never non-finite weights; all ranks wait)."""
        if self.rank == 0:
            _refuse_non_finite(self.module.state_dict(), f"checkpoint at step {step}")
            save_checkpoint(self.out, sidenet=self.module, step=step, sidenet_config=self.sidenet_config,
                            config=self.cfg.to_dict(), optimizer=self.trainer.optimizer, ema=self.trainer.ema,
                            extra={"backbone": self.bb.name, "backbone_identity": self.identity,
                                   "world_size": self.world, **({"budget": self.budget} if self.budget else {})},
                            history=self.keep_history)
        if self.world > 1:
            dist.barrier()


def _resume_checkpoint(cfg: ChainConfig, out: Path, resume: Optional[bool], sidenet_config: Optional[dict],
                       bb: Backbone, identity: dict, say: Callable[..., None],
                       minutes: Optional[float] = None) -> tuple[Any, dict, ChainConfig, Optional[dict]]:
    """The checkpoint to resume from (None: a fresh start), the SideNet architecture, the recipe
    and the run's time budget. The architecture: the checkpoint's when resuming (a different one
    given is refused by ``load_checkpoint``, another backbone than ``identity`` describes by
    :func:`~.rundir.check_backbone`), else the one given, else the backbone's recipe's
    (:func:`recipe_for`). With ``minutes`` a resumed run keeps the iteration count its
    checkpoint's budget became (refused on a checkpoint of a run without a budget)."""
    ckpt_path = find_checkpoint(out)
    if resume is True and ckpt_path is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {out}")
    if ckpt_path is None or resume is False:
        return None, sidenet_config if sidenet_config is not None else _recipe_sidenet(bb), cfg, None
    ck = load_checkpoint(ckpt_path, sidenet_config=sidenet_config)
    check_backbone(_recorded_backbone(ck), identity, out, ck.step)
    _check_finite_checkpoint(ck)
    recorded = ck.extra.get("budget") if isinstance(ck.extra.get("budget"), dict) else None
    if minutes is not None:
        if recorded is None:
            raise ValueError(
                f"minutes: the checkpoint {ckpt_path} is of a run of {ck.config.get('iters')} iterations started "
                "without a time budget, and a budget is converted into an iteration count once, when a run starts. "
                f"Resume with an iteration count instead (iters / --iters, at least its step {ck.step}), or start "
                "afresh (resume=False / --no-resume) or in another directory.")
        cfg = dataclasses.replace(cfg, iters=int(recorded["iters"]))
        say(f"note: the time budget of {recorded['minutes']:g} min was converted to {recorded['iters']} iterations "
            f"when the run started ({recorded['seconds_per_iteration']:.3g} s per iteration then); resuming keeps "
            "that count" + ("" if minutes == recorded["minutes"] else f" (the budget given now, {minutes:g} min, is "
                                                                       "not used)"))
    if cfg.iters < ck.step:
        raise ValueError(
            f"iters: {cfg.iters} is below the step of the checkpoint {ckpt_path} ({ck.step}); resuming cannot "
            f"go back. Pass iters >= {ck.step}, or start afresh (--no-resume) or in another directory."
        )
    say(f"resuming from {ckpt_path} at step {ck.step} (of {cfg.iters})")
    diffs = {k: (ck.config.get(k), v) for k, v in cfg.to_dict().items() if ck.config.get(k) != v}
    if diffs:
        say("note: recipe settings differ from the checkpoint's: "
            + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()))
    return ck, ck.sidenet_config, cfg, recorded


def _recipe_sidenet(bb: Backbone) -> dict:
    """The SideNet of the backbone's recipe (``RECIPES``, else :data:`GENERIC_RECIPE`)."""
    recipe = RECIPES.get(bb.name, GENERIC_RECIPE)
    return default_sidenet_config(bb, recipe.get("arch"), **recipe["sidenet"])


def _recorded_backbone(ck: Any) -> Optional[dict]:
    """The backbone a checkpoint records: its identity, or only the name (older checkpoints), or None."""
    identity = ck.extra.get("backbone_identity")
    if isinstance(identity, dict):
        return identity
    return {"name": ck.extra["backbone"]} if isinstance(ck.extra.get("backbone"), str) else None


def _restore(trainer: ChainTrainer, ck: Any, cfg: ChainConfig, dev: torch.device) -> int:
    """Load a checkpoint's optimiser state (the recipe given now wins for betas and weight
    decay), EMA weights and torch RNG state into ``trainer``; returns the step to start from."""
    if ck.optimizer is not None:
        trainer.optimizer.load_state_dict(ck.optimizer)
        for group in trainer.optimizer.param_groups:
            group.update(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if trainer.ema is not None:
        src = ck.ema if ck.ema is not None else ck.model
        trainer.ema = {k: src[k].to(dev).clone() for k in trainer.ema}
    if "torch" in ck.rng:
        torch.set_rng_state(ck.rng["torch"])
    trainer.step_count = ck.step
    return ck.step


def _start_run(cfg: ChainConfig, backbone: "str | Backbone", out: Path, sidenet_config: Optional[dict],
               resume: Optional[bool], keep_history: bool, rank: int, world: int, dev: torch.device,
               say: Callable[..., None], minutes: Optional[float] = None) -> _Run:
    """Setup: the backbone, the checkpoint (when resuming), the SideNet and its trainer with the
    checkpoint's state, and the output directory (leftover temporary files removed, a previous
    run's files removed on a fresh start, ``log.csv`` rewound to the checkpoint's step)."""
    bb = get_backbone(backbone, dev) if isinstance(backbone, str) else backbone.to(dev)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
    identity = backbone_identity(bb)
    ck, sidenet_config, cfg, recorded = _resume_checkpoint(cfg, out, resume, sidenet_config, bb, identity, say, minutes)
    if sidenet_config.get("guidance") and cfg.guidance_scale is None:
        raise ValueError("ChainConfig.guidance_scale: the SideNet is conditioned on the guidance scale "
                         "(architecture guidance=True) but the recipe has none; set guidance_scale (--guidance-scale)")

    torch.manual_seed(cfg.seed)
    module = build_sidenet(sidenet_config).to(dev)
    if ck is not None:
        module.load_state_dict(ck.model)
    net: torch.nn.Module = module
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
    counted = CountingBackbone(bb)
    trainer = ChainTrainer(net, counted, cfg, world_size=world)
    start = _restore(trainer, ck, cfg, dev) if ck is not None else 0

    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        for p in remove_temp_files(out):
            say(f"removed {p}, a temporary file left by an interrupted write")
        aside = set_previous_run_aside(out) if ck is None else None
        if aside is not None:
            say(f"starting afresh in {out}: the previous run's files are moved to {aside} and deleted once this run "
                "has written its SideNet")
        log_path = out / "log.csv"
        atomic_write(log_path, _log_text(_read_log(log_path, start) if ck is not None else []))
    if world > 1:
        dist.barrier()
    say(sidenet_report(module, bb))
    if minutes is None or ck is not None:
        say(f"training {cfg.iters - start} iterations on {world} process(es), device {dev}, "
            f"global batch {cfg.batch_size}")
    return _Run(cfg, out, rank, world, dev, say, bb, counted, ck, sidenet_config, module, trainer, start, keep_history,
                identity, recorded)


def _timed_step(run: _Run, step: int, lo: int, hi: int, dtype: torch.dtype) -> tuple[dict, float]:
    """One training iteration (this process's slice of the global batch of ``step``) and its
    duration on :func:`~adapters.torch_sit.budget.clock`."""
    t0 = clock()
    batch = sample_batch(run.cfg, run.bb, step)
    stats = run.trainer.step(batch.slice(lo, hi), global_count=valid_pairs(batch.times, dtype),
                             all_reduce=run.all_reduce if run.world > 1 else None)
    return stats, clock() - t0


def _convert_budget(run: _Run, minutes: float) -> None:
    """Time ``PROBE_ITERS`` iterations from the run's start on its own state, restore that state
    (weights, AdamW and EMA state, step and call counters, torch's RNG), and set the iteration
    count the budget buys: once, every process the same (the slowest process's time)."""
    trainer, module = run.trainer, run.module
    saved = dict(model={k: v.detach().clone() for k, v in module.state_dict().items()},
                 optim=copy.deepcopy(trainer.optimizer.state_dict()),
                 ema=None if trainer.ema is None else {k: v.clone() for k, v in trainer.ema.items()},
                 counts=(trainer.step_count, trainer.backbone_calls, run.counted.calls), rng=torch.get_rng_state(),
                 cuda_rng=torch.cuda.get_rng_state(run.dev) if run.dev.type == "cuda" else None)
    run.say(f"timing {PROBE_ITERS} iterations to convert the time budget of {minutes:g} min into an iteration count "
            "(their results are discarded)")
    lo, hi = run.rank * run.cfg.batch_size // run.world, (run.rank + 1) * run.cfg.batch_size // run.world
    dtype = next(module.parameters()).dtype
    times = [_timed_step(run, run.start + i, lo, hi, dtype)[1] for i in range(PROBE_ITERS)]
    per_iter = torch.tensor([seconds_per_iteration(times)], dtype=torch.float64)
    if run.world > 1:
        per_iter = per_iter.to(run.dev)
        dist.all_reduce(per_iter, op=dist.ReduceOp.MAX)
    per_iter = float(per_iter.item())
    with torch.no_grad():
        module.load_state_dict(saved["model"])
    trainer.optimizer.load_state_dict(saved["optim"])
    trainer.ema = saved["ema"]
    trainer.step_count, trainer.backbone_calls, run.counted.calls = saved["counts"]
    torch.set_rng_state(saved["rng"])
    if saved["cuda_rng"] is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], run.dev)
    iters = iterations_for(minutes, per_iter)
    run.cfg = dataclasses.replace(run.cfg, iters=iters)
    trainer.cfg = run.cfg
    run.budget = {"minutes": minutes, "seconds_per_iteration": per_iter, "iters": iters}
    run.per_iter = per_iter
    say_duration(run.say, per_iter, iters, minutes)
    run.say(f"training {iters} iterations on {run.world} process(es), device {run.dev}, "
            f"global batch {run.cfg.batch_size}")


def _run_iterations(run: _Run, ckpt_every: int, progress: bool) -> tuple[dict, float]:
    """The loop: steps ``run.start .. cfg.iters - 1``, each on this process's slice of the global
    batch, a ``log.csv`` row per step (rank 0), a checkpoint every ``ckpt_every`` steps before the
    last. Unless a time budget was timed already, its first ``PROBE_ITERS`` iterations are timed
    and the run says how long the rest takes. Returns the last step's statistics and the loop's
    wall time."""
    cfg, rank, world = run.cfg, run.rank, run.world
    bar = None
    if rank == 0 and progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.iters, initial=run.start, desc="chain", dynamic_ncols=True, file=sys.stderr, disable=None)
    lo, hi = rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world
    dtype = next(run.module.parameters()).dtype
    t_start = time.perf_counter()
    last: dict = {}
    fh = open(run.out / "log.csv", "a", newline="") if rank == 0 else None
    writer = csv.DictWriter(fh, LOG_FIELDS) if fh is not None else None
    times: list[float] = []
    try:
        for step in range(run.start, cfg.iters):
            stats, seconds = _timed_step(run, step, lo, hi, dtype)
            if run.per_iter is None:
                times.append(seconds)
                if len(times) == min(PROBE_ITERS, cfg.iters - run.start):
                    run.per_iter = seconds_per_iteration(times)
                    _say_estimate(run)
            stats["elapsed_s"] = time.perf_counter() - t_start
            last = stats
            if writer is not None:
                writer.writerow({k: stats[k] for k in LOG_FIELDS})
                fh.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.4g}", lr=f"{stats['lr']:.2e}")
            if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < cfg.iters:
                run.save(step + 1)
    finally:
        if bar is not None:
            bar.close()
        if fh is not None:
            fh.close()
    return last, time.perf_counter() - t_start


#: a run without a time budget whose estimate is longer than this (seconds) is told about the budget
_LONG_RUN_S = 900.0


def _say_estimate(run: _Run) -> None:
    """How long the run's iterations (those left when resuming) take at ``run.per_iter``, with
    a word about time budgets when that is long."""
    left = run.cfg.iters - run.start
    hint = ("; to stop sooner, give a time budget (--minutes M, train(..., minutes=M)): it is converted once into "
            "an iteration count" if run.per_iter * left > _LONG_RUN_S else "")
    say_duration(run.say, run.per_iter, left, None, hint)


def _finish_run(run: _Run, last: dict, wall: float) -> TrainResult:
    """The final checkpoint, the summary (``summary.json``) and the exported SideNet (EMA weights
    when EMA is on; never non-finite ones)."""
    cfg, bb, module, trainer, counted = run.cfg, run.bb, run.module, run.trainer, run.counted
    run.save(cfg.iters)
    calls = torch.tensor([float(counted.calls)], dtype=torch.float64)
    if run.world > 1:
        calls = run.all_reduce(calls)
    summary = {
        "backbone": bb.name,
        "iterations": cfg.iters - run.start,
        "steps_total": cfg.iters,
        "resumed_from": run.start if run.ck is not None else None,
        "world_size": run.world,
        "device": str(run.dev),
        "wall_time_s": wall,
        "backbone_calls_per_process": counted.calls,
        "backbone_calls_all_processes": int(calls.item()),
        "backbone_parameters": bb.describe_parameters(),
        "sidenet_parameters": count_parameters(module),
        "sidenet_config": run.sidenet_config,
        "config": cfg.to_dict(),
        "final_loss": last.get("loss"),
        "seconds_per_iteration": run.per_iter,
        "time_budget": run.budget,
    }
    if run.rank == 0:
        weights = trainer.ema if trainer.ema is not None else None
        _refuse_non_finite(weights if weights is not None else module.state_dict(), "the exported SideNet")
        save_sidenet(module, run.out / "sidenet.safetensors", state=weights,
                     extra={"weights": "ema" if weights is not None else "model", "backbone": bb.name,
                            "steps": cfg.iters})
        atomic_write(run.out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        for aside in remove_runs_set_aside(run.out):
            run.say(f"deleted the files of the run set aside in {aside}, now replaced by this run's SideNet")
        run.say(f"done: {summary['iterations']} iterations in {wall:.1f} s; backbone calls "
                f"{counted.calls} per process ({summary['backbone_calls_all_processes']} over {run.world} process(es)); "
                f"final loss {summary['final_loss']}")
        run.say(sidenet_report(module, bb))
        run.say(f"SideNet written to {run.out / 'sidenet.safetensors'} (load_sidenet(path))")
    if run.world > 1:
        dist.barrier()
    return TrainResult(module, trainer.ema, summary, run.out)


# ----------------------------------------------------------------------------------------
# command line

PROG = "python -m adapters.torch_sit.train"

_ARCH_FLAGS = {  # SideNet config key (flag --key-with-dashes) -> type
    "hidden": int, "depth": int, "embed_dim": int, "base_channels": int, "time_embed_dim": int,
    "num_layers": int, "num_heads": int, "res_blocks": int, "max_freq": float, "width": int, "patch": int,
}

#: backbones trained by a command of their own (they need flags this one does not have)
OWN_COMMANDS = {"diffusers": "python -m adapters.diffusers_flow.train"}

_EPILOG = """examples:
  python -m adapters.torch_sit.train --backbone gmm-ring2d --out runs/gmm-ring2d          # a few minutes on a CPU
  python -m adapters.torch_sit.train --backbone digits-sit --out runs/digits              # the demo's SideNet
  torchrun --nproc_per_node=8 -m adapters.torch_sit.train --backbone repa-sit-xl2-256 \\
      --ckpt pretrained/last.pt --out runs/sit-xl2-256                                    # the paper's (docs/imagenet.md)
  python -m adapters.torch_sit.train --backbone mymodels:make_backbone --out runs/mine     # your own model (docs/own-model.md)
  python -m adapters.torch_sit.train --backbone mymodels:make_backbone --minutes 30 --out runs/mine  # a 30-minute budget
  python -m adapters.diffusers_flow.train --model PATH ...                                # a diffusers SD3/Flux transformer

Every recipe field below defaults to the backbone's recipe (RECIPES in this module; the mixtures'
measured recipe for a backbone without one), then to the checkpoint's when resuming; flags given
win. A run resumes from OUT automatically and checkpoints every --ckpt-every iterations."""


def _directory(s: str) -> Path:
    if not s.strip():
        raise argparse.ArgumentTypeError("empty path; give an output directory, e.g. runs/<name>")
    if Path(s).exists() and not Path(s).is_dir():
        raise argparse.ArgumentTypeError(f"{s} exists and is not a directory; give an output directory, e.g. runs/<name>")
    return Path(s)


def _int_at_least(low: int):
    def parse(s: str) -> int:
        value = int(s)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _minutes(s: str) -> float:
    """argparse ``type=`` of ``--minutes``: a finite number > 0."""
    try:
        return check_minutes(float(s), "--minutes")
    except ValueError:
        raise argparse.ArgumentTypeError(f"a time budget in minutes, a finite number > 0, got {s!r}") from None


def build_parser(*, prog: str = PROG, description: Optional[str] = None, epilog: str = _EPILOG,
                 backbone_options: bool = True) -> argparse.ArgumentParser:
    """The trainer's parser: the run's flags, every :class:`ChainConfig` field (the recipe) and
    the SideNet architecture.

    A command for another kind of backbone builds on it (:mod:`adapters.diffusers_flow.train`):
    it names itself (``prog``, ``description``, ``epilog``), leaves out the registry's backbone
    flags (``backbone_options=False``: ``--backbone``, ``--ckpt``, ``--guidance-low/-high``,
    ``--backbone-kwargs``), adds its own argument group, builds the backbone and calls
    :func:`run_parsed`.
    """
    p = argparse.ArgumentParser(
        prog=prog, formatter_class=HelpFormatter, epilog=epilog,
        description=description or "Chain-train a BA-solver SideNet on a frozen backbone (no data set: chains "
                                   "start from noise).")
    if backbone_options:
        p.add_argument("--backbone", required=True,
                       help=f"registered backbone ({', '.join(backbone_names())}) or module:factory returning a Backbone")
        p.add_argument("--ckpt", default=None, help="the backbone's weights (e.g. REPA's last.pt for repa-sit-xl2-256)")
        p.add_argument("--guidance-low", type=float, default=None,
                       help="guidance interval of a guided backbone: low end (REPA: 0)")
        p.add_argument("--guidance-high", type=float, default=None,
                       help="guidance interval: high end (REPA's evaluation: 0.7)")
        p.add_argument("--backbone-kwargs", type=json_object, default=None,
                       help="other options of the backbone's factory, as a JSON object, e.g. '{\"seed\": 1}'")
    p.add_argument("--out", required=True, type=_directory, help="output directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="resume from OUT/checkpoint.safetensors (default: automatically when it exists)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="start afresh even if OUT holds a checkpoint (the previous run's files are moved to "
                        "OUT/previous-run-<k>/ and deleted once the new SideNet is written)")
    p.add_argument("--minutes", type=_minutes, default=None,
                   help="a time budget: the first iterations are timed on this machine and the budget becomes the "
                        "iteration count, once (recorded in the checkpoint: a resumed run keeps it); not with --iters")
    p.add_argument("--ckpt-every", type=_int_at_least(0), default=None,
                   help="checkpoint every N iterations (default: every iters/10, at most 100; 0: at the end only)")
    p.add_argument("--keep-history", action="store_true", help="keep every checkpoint in OUT/history")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--threads", type=_int_at_least(1), default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")

    c = p.add_argument_group("recipe (ChainConfig; defaults: the checkpoint's when resuming, else the dataclass's)")
    add_dataclass_flags(c, ChainConfig, defaults="suppress", overrides={
        "batch_size": {"aliases": ("--batch",)},
        "window_weights": {"type": _window_weights, "help": "JSON list of [lo, hi, w]: loss terms of intervals whose "
                           "midpoint lies in [lo, hi] weigh w, e.g. '[[0.5, 1, 3]]' (default none)"},
    })

    a = p.add_argument_group("SideNet architecture (defaults: the checkpoint's when resuming)")
    a.add_argument("--arch", choices=("mlp", "conv", "token"), default=None,
                   help="mlp for vector states, conv for (C, H, W) (--patch p: its blocks on p x p patches), "
                        "token for (N, D) token states (Flux)")
    for key, typ in _ARCH_FLAGS.items():
        a.add_argument("--" + key.replace("_", "-"), dest="arch_" + key, type=typ, default=None)
    a.add_argument("--offset-log-sign", dest="arch_offset_log_sign", action=argparse.BooleanOptionalAction, default=None,
                   help="sign(d) and log|d| offset features")
    a.add_argument("--path-features", dest="arch_path_features", action=argparse.BooleanOptionalAction, default=None,
                   help="also feed x0_hat = x - t v and eps_hat = x + (1 - t) v (linear-path flows)")
    a.add_argument("--sidenet-guidance", dest="arch_guidance", action=argparse.BooleanOptionalAction, default=None,
                   help="condition the SideNet on the guidance scale")
    a.add_argument("--base-perception", dest="arch_base_perception", choices=BASES, default=None,
                   help="the training-free perception the SideNet corrects: anchor-only (the paper's v + d g) or "
                        "polynomial (the anchor polynomial + d g; a zero SideNet is then exactly the polynomial)")
    return p


def _window_weights(text: str) -> Any:
    """argparse ``type=`` of ``--window-weights``: 'none' or a JSON list of [lo, hi, w] (checked by
    ChainConfig, which names what is wrong)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON list of [lo, hi, w] such as '[[0.5, 1, 3]]', got {text!r}")
    try:
        ChainConfig(window_weights=value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).replace("ChainConfig.window_weights: ", ""))
    return value


def _backbone_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backbone:
    """The backbone the flags describe, built: a registered name with its options (``--ckpt``,
    ``--guidance-low/--guidance-high``, ``--backbone-kwargs``), or a user's ``module:factory``
    called with the options."""
    if args.backbone in OWN_COMMANDS:
        parser.error(f"--backbone {args.backbone}: trained by its own command, {OWN_COMMANDS[args.backbone]} "
                     "(the same recipe and architecture flags plus its own; see its --help)")
    kwargs = dict(args.backbone_kwargs or {})
    for key in ("ckpt", "guidance_low", "guidance_high"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    return backbone_from_flag(args.backbone, parser, **kwargs)


def backbone_from_flag(spec: str, parser: argparse.ArgumentParser, **kwargs: Any) -> Backbone:
    """``--backbone spec``: a registered name built with ``kwargs``, or a user's ``module:factory``
    (:func:`backbone_from_factory`); an unknown name or a refused option through ``parser.error``."""
    if ":" in spec:
        return backbone_from_factory(spec, parser, **kwargs)
    if spec not in backbone_names():
        parser.error(f"--backbone: unknown backbone {spec!r}; registered: {', '.join(backbone_names())}; "
                     "or pass your own as module:factory (a function returning a Backbone, see docs/own-model.md)")
    try:
        return get_backbone(spec, **kwargs)
    except (TypeError, ValueError, FileNotFoundError) as err:
        parser.error(f"--backbone {spec}: {err}")


def backbone_from_factory(spec: str, parser: Optional[argparse.ArgumentParser] = None, **kwargs: Any) -> Backbone:
    """``module:factory`` (e.g. ``mypkg.models:make_backbone``): import the module (from the
    working directory too; :func:`adapters.commandline.load_object`) and call
    ``factory(**kwargs)``, which must return a :class:`Backbone` (``Backbone.from_module(model,
    name, state_shape, ...)`` wraps a torch velocity model). Errors go to ``parser.error`` when a
    parser is given, else raise ValueError."""
    def fail(msg: str):
        if parser is not None:
            parser.error(msg)
        raise ValueError(msg)

    try:
        factory = load_object(spec, "--backbone", form="module:factory")
    except ValueError as err:
        fail(str(err))
    try:
        bb = factory(**kwargs)
    except ValueError as err:  # a bad option, or the wrap-time probe of Backbone.from_module
        if parser is None:
            raise
        parser.error(f"--backbone {spec}: {err}")
    if not isinstance(bb, Backbone):
        fail(f"--backbone {spec!r}: the factory returned {type(bb).__name__}, not a Backbone; wrap your model with "
             "Backbone.from_module(model, name, state_shape, num_classes=...)")
    return bb


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line. Recipe precedence: the backbone's recipe (``RECIPES``), then the
    checkpoint's when resuming, then the flags given. Invalid flag values (a recipe field out of
    its range, an empty ``--out``, a negative ``--ckpt-every``) are reported by the parser
    (exit status 2) before anything is loaded or written."""
    parser = build_parser()
    return run_parsed(parser.parse_args(argv), parser, _backbone_from_args)


def run_parsed(args: argparse.Namespace, parser: argparse.ArgumentParser,
               make_backbone: Callable[[argparse.Namespace, argparse.ArgumentParser], Backbone]) -> int:
    """Train as the parsed flags of :func:`build_parser` say: the torch threads set, the
    backbone built by ``make_backbone(args, parser)`` (which reports bad flags through
    ``parser.error``), the recipe and the SideNet architecture from the backbone's recipe, the
    checkpoint and the flags, then :func:`train`. A bad recipe is reported through
    ``parser.error``. Returns the exit status."""
    if args.minutes is not None and getattr(args, "iters", None) is not None:
        parser.error("--iters, --minutes: give one of them, an iteration count or a time budget (which becomes the "
                     "iteration count once, when the run starts)")
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = make_backbone(args, parser)
    overrides = dataclass_kwargs(args, ChainConfig)
    recipe_cfg, recipe_sidenet = recipe_for(backbone)
    base = recipe_cfg.to_dict()
    ckpt = find_checkpoint(args.out) if args.resume is not False else None
    if ckpt is not None:
        try:
            ck = load_checkpoint(ckpt)
        except InvalidFile as err:  # torn, corrupt, non-finite: say so in one line, with the way out
            parser.error(f"{err} Or start afresh with --no-resume (the previous run's files are set aside in "
                         f"{args.out}/previous-run-<k>/), or use another --out.")
        try:
            check_backbone(_recorded_backbone(ck), backbone_identity(backbone), args.out, ck.step)
        except BackboneMismatch as err:
            parser.error(str(err))
        base.update(ck.config)
        if args.minutes is not None and not isinstance(ck.extra.get("budget"), dict):
            parser.error(f"--minutes: {ckpt} is the checkpoint of a run of {ck.config.get('iters')} iterations started "
                         "without a time budget; a budget becomes an iteration count once, when a run starts. Resume "
                         f"with --iters (at least its step {ck.step}), or start afresh with --no-resume or another --out.")
    try:
        cfg = ChainConfig.from_dict({**base, **overrides})
    except ValueError as err:
        parser.error(str(err))

    arch = {k[5:]: v for k, v in vars(args).items() if k.startswith("arch_") and v is not None}
    sidenet_config = recipe_sidenet if ckpt is None else None
    if arch or args.arch:
        recipe = RECIPES.get(backbone.name, GENERIC_RECIPE)
        if ckpt is not None:
            saved = load_checkpoint(ckpt).sidenet_config
            same_class = args.arch is None or default_sidenet_config(backbone, args.arch)["class"] == saved["class"]
            # resuming: only the settings given explicitly change (and are refused if different)
            sidenet_config = {**saved, **arch} if same_class else default_sidenet_config(backbone, args.arch, **arch)
        else:
            chosen = args.arch or recipe.get("arch")  # a recipe may name its architecture ("arch")
            # settings of a recipe that names no architecture hold for any (the generic recipe's residual start)
            recipe_arch = recipe.get("sidenet", {}) if "arch" not in recipe or chosen == recipe["arch"] else {}
            sidenet_config = default_sidenet_config(backbone, chosen, **{**recipe_arch, **arch})
    train(cfg, backbone=backbone, out=args.out, sidenet_config=sidenet_config, resume=args.resume,
          ckpt_every=args.ckpt_every, keep_history=args.keep_history, device=args.device,
          progress=not args.no_progress, minutes=args.minutes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
