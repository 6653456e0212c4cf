"""Train a SideNet by chain training (paper Sec. 3.2.3, Algorithm 2): single process or DDP.

    python -m adapters.torch_sit.train --backbone gmm-ring2d --out runs/ring2d --iters 2000
    torchrun --nproc_per_node=2 -m adapters.torch_sit.train --backbone gmm-ring2d --out runs/ring2d

Every :class:`~adapters.torch_sit.chain.ChainConfig` field is a flag (``--chain-length``,
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

Resuming: ``--resume``, or automatically when the output directory holds a checkpoint (the run
says so). The SideNet architecture and the recipe default to the checkpoint's; an explicitly
different architecture is refused, naming the differing keys. ``--no-resume`` starts afresh and
overwrites.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from .backbones import Backbone, CountingBackbone, backbone_names, get_backbone
from .chain import ChainConfig, ChainTrainer, sample_batch, valid_pairs
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, save_sidenet
from .digits import DIGITS_GUIDANCE_SCALE
from .sidenet import SIDENETS, build_sidenet, count_parameters, sidenet_report

__all__ = ["train", "TrainResult", "TrainingInterrupted", "default_sidenet_config", "recipe_for", "RECIPES", "main",
           "build_parser"]

LOG_FIELDS = ("step", "loss", "loss_forward", "loss_backward", "lr", "grad_norm", "intervals",
              "backbone_calls", "elapsed_s")


class TrainingInterrupted(RuntimeError):
    """Raised by ``train(..., interrupt_after=n)`` after iteration n (to test resuming)."""


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
    ``(C, H, W)`` states, class-conditional when the backbone is; ``overrides`` replace defaults."""
    shape = tuple(backbone.state_shape)
    arch = arch or ("mlp" if len(shape) == 1 else "conv")
    if arch == "mlp":
        net = SIDENETS["MLPSideNet"](int(math.prod(shape)), num_classes=backbone.num_classes)
    elif arch == "conv":
        if len(shape) != 3:
            raise ValueError(f"--arch conv needs (C, H, W) states; backbone {backbone.name!r} has {shape}")
        net = SIDENETS["ConvSideNet"](shape[0], num_classes=backbone.num_classes)
    else:
        raise ValueError(f"arch: 'mlp' or 'conv', got {arch!r}")
    cfg = net.config()
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"SideNet {cfg['class']}: unknown architecture settings {unknown}; valid: {sorted(set(cfg) - {'class'})}")
    cfg.update(overrides)
    return build_sidenet(cfg).config()  # normalised (types as the constructor stores them)


#: The measured default recipe for the analytic mixture flows (README, "SideNet recipe
#: ablations"): interval sizes from an exponential of rate 5 truncated to [0.01, 0.35] rather than
#: a Dirichlet partition of [0, 1], the squared error divided by |h| (loss_norm "h"), path
#: features, EMA of the weights. Chains start from noise at t = 1, as the paper's (no data set).
RECIPES: dict[str, dict] = {
    "gmm-ring2d": dict(chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", iters=4000,
                                  batch_size=256, ema_decay=0.99),
                       sidenet=dict(path_features=True)),
    "gmm-32d": dict(chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", iters=4000,
                               batch_size=256, ema_decay=0.99),
                    sidenet=dict(path_features=True)),
    # The digits SiT (adapters.torch_sit.digits, docs/digits.md): an MLP SideNet on the 64 pixels (an 8 x 8
    # ConvSideNet costs more per sample than the SiT itself), conditioned on the class and the guidance
    # scale, chains guided at the demo's scale.
    "digits-sit": dict(arch="mlp",
                       chain=dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h",
                                  iters=3000, batch_size=128, ema_decay=0.99, guidance_scale=DIGITS_GUIDANCE_SCALE),
                       sidenet=dict(hidden=64, depth=2, embed_dim=32, guidance=True, path_features=True)),
}


def recipe_for(backbone: str, *, iters: Optional[int] = None, batch_size: Optional[int] = None,
               quick: bool = False) -> tuple[ChainConfig, dict]:
    """The default (ChainConfig, SideNet config) for a registered backbone (``RECIPES``; the plain
    ``ChainConfig()`` and :func:`default_sidenet_config` for others). ``quick``: a few iterations,
    for smoke tests."""
    recipe = RECIPES.get(backbone, dict(chain={}, sidenet={}))
    chain = dict(recipe["chain"])
    if iters is not None:
        chain["iters"] = iters
    if batch_size is not None:
        chain["batch_size"] = batch_size
    if quick:
        chain.update(iters=min(chain.get("iters", 20), 20), batch_size=min(chain.get("batch_size", 64), 64))
    return ChainConfig(**chain), default_sidenet_config(get_backbone(backbone), recipe.get("arch"), **recipe["sidenet"])


def _dist_setup(device: Optional[str]) -> tuple[int, int, torch.device, bool]:
    """(rank, world, device, initialised_here). Starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        dev = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialised = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        initialised = True
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return rank, world, dev, initialised


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [row for row in csv.DictReader(fh) if int(row["step"]) <= upto]


def train(
    cfg: ChainConfig,
    *,
    backbone: "str | Backbone",
    out: "str | os.PathLike",
    sidenet_config: Optional[dict] = None,
    resume: Optional[bool] = None,
    ckpt_every: int = 0,
    keep_history: bool = False,
    device: Optional[str] = None,
    progress: bool = True,
    interrupt_after: Optional[int] = None,
    log=print,
) -> TrainResult:
    """Chain-train a SideNet on a frozen backbone; see the module docstring.

    Args:
        cfg: the recipe (``cfg.iters`` optimiser steps in total, counting resumed ones).
        backbone: a registered name (``"gmm-ring2d"``, ``"gmm-32d"``) or a :class:`Backbone`.
        out: output directory.
        sidenet_config: the architecture (``sidenet.config()`` form). None: the checkpoint's when
            resuming, else :func:`default_sidenet_config`. Given and different from a
            checkpoint's: refused (:class:`~adapters.torch_sit.checkpoint.ArchitectureMismatch`).
        resume: True: resume (a checkpoint must exist); False: start afresh; None: resume when
            ``out`` holds a checkpoint.
        ckpt_every: checkpoint every this many iterations (0: only at the end).
        keep_history: keep every checkpoint under ``out/history``.
        device: torch device (default: ``cuda:<LOCAL_RANK>`` when available, else CPU).
        progress: tqdm progress bar on rank 0.
        interrupt_after: raise :class:`TrainingInterrupted` after this iteration (tests).
        log: where rank 0's messages go.
    """
    out = Path(out)
    rank, world, dev, initialised = _dist_setup(device)
    say = log if rank == 0 else (lambda *a, **k: None)
    try:
        bb = get_backbone(backbone, dev) if isinstance(backbone, str) else backbone.to(dev)
        if cfg.batch_size % world:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes {world}")
        ckpt_path = find_checkpoint(out)
        if resume is True and ckpt_path is None:
            raise FileNotFoundError(f"--resume: no checkpoint in {out}")
        ck = None
        if ckpt_path is not None and resume is not False:
            ck = load_checkpoint(ckpt_path, sidenet_config=sidenet_config)
            say(f"resuming from {ckpt_path} at step {ck.step} (of {cfg.iters})")
            diffs = {k: (ck.config.get(k), v) for k, v in cfg.to_dict().items() if ck.config.get(k) != v}
            if diffs:
                say("note: recipe settings differ from the checkpoint's: "
                    + ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()))
            sidenet_config = ck.sidenet_config
        elif sidenet_config is None:
            sidenet_config = default_sidenet_config(bb)

        torch.manual_seed(cfg.seed)
        module = build_sidenet(sidenet_config).to(dev)
        if ck is not None:
            module.load_state_dict(ck.model)
        net: torch.nn.Module = module
        if world > 1:
            net = torch.nn.parallel.DistributedDataParallel(module, device_ids=[dev.index] if dev.type == "cuda" else None)
        counted = CountingBackbone(bb)
        trainer = ChainTrainer(net, counted, cfg, world_size=world)
        start = 0
        if ck is not None:
            if ck.optimizer is not None:
                trainer.optimizer.load_state_dict(ck.optimizer)
                for group in trainer.optimizer.param_groups:  # the recipe given now wins
                    group.update(betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
            if trainer.ema is not None:
                src = ck.ema if ck.ema is not None else ck.model
                trainer.ema = {k: src[k].to(dev).clone() for k in trainer.ema}
            if "torch" in ck.rng:
                torch.set_rng_state(ck.rng["torch"])
            start = ck.step
            trainer.step_count = start
        dtype = next(module.parameters()).dtype

        def all_reduce(t: torch.Tensor) -> torch.Tensor:
            t = t.to(dev)
            dist.all_reduce(t)
            return t.cpu()

        def save(step: int) -> None:
            if rank == 0:
                save_checkpoint(out, sidenet=module, step=step, sidenet_config=sidenet_config,
                                config=cfg.to_dict(), optimizer=trainer.optimizer, ema=trainer.ema,
                                extra={"backbone": bb.name, "world_size": world}, history=keep_history)
            if world > 1:
                dist.barrier()

        log_path = out / "log.csv"
        rows: list[dict] = []
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            rows = _read_log(log_path, start) if ck is not None else []
            with open(log_path, "w", newline="") as fh:
                w = csv.DictWriter(fh, LOG_FIELDS)
                w.writeheader()
                w.writerows(rows)
        say(sidenet_report(module, bb))
        say(f"training {cfg.iters - start} iterations on {world} process(es), device {dev}, global batch {cfg.batch_size}")

        bar = None
        if rank == 0 and progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.iters, initial=start, desc="chain", dynamic_ncols=True, file=sys.stderr)
        lo, hi = rank * cfg.batch_size // world, (rank + 1) * cfg.batch_size // world
        t_start = time.perf_counter()
        last: dict = {}
        fh = open(log_path, "a", newline="") if rank == 0 else None
        writer = csv.DictWriter(fh, LOG_FIELDS) if fh is not None else None
        try:
            for step in range(start, cfg.iters):
                batch = sample_batch(cfg, bb, step)
                stats = trainer.step(batch.slice(lo, hi), global_count=valid_pairs(batch.times, dtype),
                                     all_reduce=all_reduce if world > 1 else None)
                stats["elapsed_s"] = time.perf_counter() - t_start
                last = stats
                if writer is not None:
                    writer.writerow({k: stats[k] for k in LOG_FIELDS})
                    fh.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{stats['loss']:.4g}", lr=f"{stats['lr']:.2e}")
                if ckpt_every and (step + 1) % ckpt_every == 0 and step + 1 < cfg.iters:
                    save(step + 1)
                if interrupt_after is not None and step + 1 == interrupt_after:
                    raise TrainingInterrupted(f"interrupted after iteration {step + 1}")
        finally:
            if bar is not None:
                bar.close()
            if fh is not None:
                fh.close()
        wall = time.perf_counter() - t_start
        save(cfg.iters)
        calls = torch.tensor([float(counted.calls)], dtype=torch.float64)
        if world > 1:
            calls = all_reduce(calls)
        summary = {
            "backbone": bb.name,
            "iterations": cfg.iters - start,
            "steps_total": cfg.iters,
            "resumed_from": start if ck is not None else None,
            "world_size": world,
            "device": str(dev),
            "wall_time_s": wall,
            "backbone_calls_per_process": counted.calls,
            "backbone_calls_all_processes": int(calls.item()),
            "backbone_parameters": bb.describe_parameters(),
            "sidenet_parameters": count_parameters(module),
            "sidenet_config": sidenet_config,
            "config": cfg.to_dict(),
            "final_loss": last.get("loss"),
        }
        if rank == 0:
            weights = trainer.ema if trainer.ema is not None else None
            save_sidenet(module, out / "sidenet.safetensors", state=weights,
                         extra={"weights": "ema" if weights is not None else "model", "backbone": bb.name,
                                "steps": cfg.iters})
            (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            say(f"done: {summary['iterations']} iterations in {wall:.1f} s; backbone calls "
                f"{counted.calls} per process ({summary['backbone_calls_all_processes']} over {world} process(es)); "
                f"final loss {summary['final_loss']}")
            say(sidenet_report(module, bb))
            say(f"SideNet written to {out / 'sidenet.safetensors'} (load_sidenet(path))")
        if world > 1:
            dist.barrier()
        return TrainResult(module, trainer.ema, summary, out)
    finally:
        if initialised and dist.is_initialized():
            dist.destroy_process_group()


# ----------------------------------------------------------------------------------------
# command line

_ARCH_FLAGS = {  # SideNet config key (flag --key-with-dashes) -> type
    "hidden": int, "depth": int, "embed_dim": int, "base_channels": int, "time_embed_dim": int,
    "num_layers": int, "num_heads": int, "res_blocks": int, "max_freq": float,
}


def _optional_float(s: str) -> Optional[float]:
    return None if s.lower() in ("none", "off", "null") else float(s)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.torch_sit.train",
                                description="Chain-train a BA-solver SideNet on a frozen backbone.")
    p.add_argument("--backbone", required=True, help=f"registered backbone: {', '.join(backbone_names())}")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", dest="resume", action="store_const", const=True, default=None,
                   help="resume from OUT/checkpoint.safetensors (default: automatically when it exists)")
    g.add_argument("--no-resume", dest="resume", action="store_const", const=False,
                   help="start afresh even if OUT holds a checkpoint (it is overwritten)")
    p.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N iterations (0: at the end only)")
    p.add_argument("--keep-history", action="store_true", help="keep every checkpoint in OUT/history")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bar")

    c = p.add_argument_group("recipe (ChainConfig; defaults: the checkpoint's when resuming, else the dataclass's)")
    hints = typing.get_type_hints(ChainConfig)
    for f in dataclasses.fields(ChainConfig):
        flag = "--" + f.name.replace("_", "-")
        names = [flag] + (["--batch"] if f.name == "batch_size" else [])
        hint = hints[f.name]
        if hint is bool:
            c.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=f"(default {f.default})")
        else:
            conv = _optional_float if typing.get_origin(hint) is typing.Union else hint
            c.add_argument(*names, dest=f.name, type=conv, default=argparse.SUPPRESS,
                           help=f"(default {f.default!r}{'; none to disable' if conv is _optional_float else ''})")

    a = p.add_argument_group("SideNet architecture (defaults: the checkpoint's when resuming)")
    a.add_argument("--arch", choices=("mlp", "conv"), default=None, help="mlp for vector states, conv for (C, H, W)")
    for key, typ in _ARCH_FLAGS.items():
        a.add_argument("--" + key.replace("_", "-"), dest="arch_" + key, type=typ, default=None)
    a.add_argument("--offset-log-sign", dest="arch_offset_log_sign", action=argparse.BooleanOptionalAction, default=None,
                   help="sign(d) and log|d| offset features")
    a.add_argument("--path-features", dest="arch_path_features", action=argparse.BooleanOptionalAction, default=None,
                   help="also feed x0_hat = x - t v and eps_hat = x + (1 - t) v (linear-path flows)")
    a.add_argument("--sidenet-guidance", dest="arch_guidance", action=argparse.BooleanOptionalAction, default=None,
                   help="condition the SideNet on the guidance scale")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    chain_fields = {f.name for f in dataclasses.fields(ChainConfig)}
    overrides = {k: v for k, v in vars(args).items() if k in chain_fields}
    recipe_cfg, recipe_sidenet = recipe_for(args.backbone) if args.backbone in RECIPES else (ChainConfig(), None)
    base = recipe_cfg.to_dict()
    ckpt = find_checkpoint(args.out) if args.resume is not False else None
    if ckpt is not None:
        base.update(load_checkpoint(ckpt).config)
    cfg = ChainConfig.from_dict({**base, **overrides})

    arch = {k[5:]: v for k, v in vars(args).items() if k.startswith("arch_") and v is not None}
    sidenet_config = recipe_sidenet if ckpt is None else None
    if arch or args.arch:
        bb = get_backbone(args.backbone)
        if ckpt is not None:
            saved = load_checkpoint(ckpt).sidenet_config
            same_class = args.arch is None or default_sidenet_config(bb, args.arch)["class"] == saved["class"]
            # resuming: only the settings given explicitly change (and are refused if different)
            sidenet_config = {**saved, **arch} if same_class else default_sidenet_config(bb, args.arch, **arch)
        else:
            recipe = RECIPES.get(args.backbone, {})
            chosen = args.arch or recipe.get("arch")  # a recipe may name its architecture ("arch")
            recipe_arch = recipe.get("sidenet", {}) if (chosen or "mlp") == recipe.get("arch", "mlp") else {}
            sidenet_config = default_sidenet_config(bb, chosen, **{**recipe_arch, **arch})
    train(cfg, backbone=args.backbone, out=args.out, sidenet_config=sidenet_config, resume=args.resume,
          ckpt_every=args.ckpt_every, keep_history=args.keep_history, device=args.device,
          progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
