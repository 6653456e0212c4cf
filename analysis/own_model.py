"""A user's own model: the SideNet of ``recipe_for`` under a time budget against the training-free
samplers, at 5 and 8 NFE.

    python -m analysis.own_model                  # the model (a few min), the SideNet (--minutes 10), the table
    python -m analysis.own_model --quick          # a smoke run (seconds), under runs/quick

What a new user does with their own network, measured. The network: a conv U-Net velocity model
v(t, x) (:class:`ConvUNet`, 546,867 parameters at the defaults) on 3 x 8 x 8 states, trained here by
flow matching (linear path x_t = (1 - t) x_data + t z, target z - x_data) on colour digits: the
1,347 scikit-learn digits of the train split (``adapters.torch_sit.digits.model.load_digits_split``)
inked in a random colour each (a corner of the RGB cube other than black, jittered), background
-1. It is wrapped with ``Backbone.from_module`` and handed to ``recipe_for`` and ``train`` exactly
as docs/own-model.md says, with a time budget (``--minutes``, on ``--threads`` torch threads),
keeping every checkpoint (``history/``).

Scored: mean over ``--n`` scoring noises (seed 1000 + ``--seed``, used for nothing else) of the
L2 distance |x(0) - x_ref(0)| over the whole state, x_ref the DOP853 solution of the model's ODE
(float64, rtol = atol = 1e-9) from the same noise; every sampler on ``nfe_grid(method, nfe)``
(uniform). Rows: BA-solver with the trained SideNet, with the training-free polynomial perception
(``baquad.solve``'s default, "the default" below) and with anchor-only; UniPC (bh2, order 2)
and Euler. Each row has its standard error and the paired difference to the default with the
standard error of that difference (same noises). A second table follows the SideNet through its
training: the EMA weights of every checkpoint (and the untrained start, step 0), scored the same
way, against the default.

Files: ``--runs`` (default ``runs/own-model``; ``--quick``: ``runs/quick/own-model``) holds the
model (``velocity.safetensors``, retrained when its settings differ), the SideNet's run directory
(``sidenet/``; rerunning resumes it, and a finished run is only re-exported) and the reference
solutions (``reference.safetensors``, tied to the model's bytes and the noises). Writes the
table ``own_model`` + ``.md`` into ``--out`` (default ``analysis/figures``; ``--quick``: under
``runs/quick``, with a tiny model, a budget of 3 seconds and references at rtol 1e-6).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ._common import (ArgumentParser, command, markdown_table, non_negative_int, output_paths, paired,
                      positive_float, positive_int, resolve_out, sample_count, set_threads, shown)

NFES = (5, 8)
#: the velocity model's settings (``--quick`` shrinks them)
#: (time features of at most 30 radians per unit of t: with 1000, the trained field kept a wiggle
#: of period about 0.006 in t, and DOP853 needed 1,652 calls at rtol 1e-6, 3,824 at 1e-8, most of
#: them at t > 0.2, where the flow is smooth)
MODEL = dict(channels=(24, 48, 96), embed_dim=96, steps=2000, batch=128, lr=2e-3, max_freq=30.0)
QUICK_MODEL = dict(channels=(8, 16, 16), embed_dim=16, steps=20, batch=32, lr=2e-3, max_freq=10.0)
#: the colours a digit is inked in: the corners of the RGB cube other than black
PALETTE = ((1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (1, 0, 1), (0, 1, 1), (1, 1, 1))
NAME = "colour-digits-unet"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The flags, every one checked here, before anything is trained, loaded or written."""
    p = ArgumentParser(prog="python -m analysis.own_model", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=positive_float, default=None,
                   help="the SideNet's time budget (default 10; --quick: 0.05)")
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads for everything")
    p.add_argument("--n", type=sample_count, default=None, help="scoring noises (default 256; --quick: 16)")
    p.add_argument("--seed", type=non_negative_int, default=0,
                   help="seeds the model's training (seed), the SideNet's recipe (seed) and the noises (1000 + seed)")
    p.add_argument("--model-steps", type=positive_int, default=None,
                   help=f"flow-matching steps of the velocity model (default {MODEL['steps']}; --quick: "
                        f"{QUICK_MODEL['steps']})")
    p.add_argument("--runs", default=None, help="where the model, the SideNet and the references live "
                                                "(default runs/own-model; --quick: runs/quick/own-model)")
    p.add_argument("--out", default=None, help="where own_model.md goes (default analysis/figures)")
    p.add_argument("--quick", action="store_true", help="a smoke run: a tiny model, seconds of training")
    args = p.parse_args(argv)
    if args.runs is not None and not str(args.runs).strip():
        p.error("argument --runs: empty path; give a directory, e.g. runs/own-model")
    args.minutes = args.minutes if args.minutes is not None else (0.05 if args.quick else 10.0)
    args.n = args.n if args.n is not None else (16 if args.quick else 256)
    args.runs = Path(args.runs if args.runs is not None else ("runs/quick/own-model" if args.quick else "runs/own-model"))
    return args


# ---------------------------------------------------------------------------------------------
# the user's model


def _torch_model_classes():
    """The U-Net's classes, built on first use (torch is imported only when the script runs)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Block(nn.Module):
        """GroupNorm, SiLU, conv3x3, + the time embedding, GroupNorm, SiLU, conv3x3; a residual
        connection (a 1x1 conv where the width changes)."""

        def __init__(self, cin: int, cout: int, emb: int):
            super().__init__()
            self.norm1, self.conv1 = nn.GroupNorm(min(8, cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
            self.emb = nn.Linear(emb, cout)
            self.norm2, self.conv2 = nn.GroupNorm(min(8, cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
            self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

        def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            y = self.conv1(F.silu(self.norm1(h))) + self.emb(e)[:, :, None, None]
            return self.skip(h) + self.conv2(F.silu(self.norm2(y)))

    class ConvUNet(nn.Module):
        """v(t, x) on (3, 8, 8) states: a U-Net over 8 x 8, 4 x 4 and 2 x 2 (widths ``channels``),
        one residual block per level and side and one in the middle, skip connections, a
        sinusoidal time embedding (16 frequencies from 1 to ``max_freq`` radians per unit of t,
        geometric) through a two-layer MLP."""

        def __init__(self, channels: Sequence[int] = (24, 48, 96), embed_dim: int = 96, frequencies: int = 16,
                     max_freq: float = 30.0):
            super().__init__()
            c0, c1, c2 = channels
            self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(max_freq), frequencies)))
            self.embed = nn.Sequential(nn.Linear(2 * frequencies, embed_dim), nn.SiLU(), nn.Linear(embed_dim, embed_dim))
            self.conv_in = nn.Conv2d(3, c0, 3, padding=1)
            self.down = nn.ModuleList([Block(c0, c0, embed_dim), Block(c0, c1, embed_dim), Block(c1, c2, embed_dim)])
            self.mid = Block(c2, c2, embed_dim)
            self.up = nn.ModuleList([Block(2 * c2, c1, embed_dim), Block(2 * c1, c0, embed_dim),
                                     Block(2 * c0, c0, embed_dim)])
            self.out = nn.Sequential(nn.GroupNorm(min(8, c0), c0), nn.SiLU(), nn.Conv2d(c0, 3, 3, padding=1))

        def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            a = t.reshape(-1, 1).to(x.dtype) * self.freqs.to(x.dtype)
            e = self.embed(torch.cat([a.sin(), a.cos()], dim=1))
            h0 = self.down[0](self.conv_in(x), e)  # 8 x 8
            h1 = self.down[1](F.avg_pool2d(h0, 2), e)  # 4 x 4
            h2 = self.down[2](F.avg_pool2d(h1, 2), e)  # 2 x 2
            u = self.up[0](torch.cat([self.mid(h2, e), h2], dim=1), e)
            u = self.up[1](torch.cat([F.interpolate(u, scale_factor=2.0), h1], dim=1), e)
            u = self.up[2](torch.cat([F.interpolate(u, scale_factor=2.0), h0], dim=1), e)
            return self.out(u)

    return ConvUNet


def colour_digits(n: int, generator: Any, images: Any) -> Any:
    """``n`` states (n, 3, 8, 8) in [-1, 1] drawn from ``images`` (the digits of the train split,
    (N, 1, 8, 8) in [-1, 1]), each inked in a colour of :data:`PALETTE` jittered by U[0, 0.25]
    per channel: x = 2 ink colour - 1 with ink = (image + 1) / 2 in [0, 1]."""
    import torch

    idx = torch.randint(0, len(images), (n,), generator=generator)
    ink = (images[idx] + 1.0) / 2.0  # (n, 1, 8, 8)
    corner = torch.tensor(PALETTE, dtype=torch.float32)[torch.randint(0, len(PALETTE), (n,), generator=generator)]
    colour = 0.75 * corner + 0.25 * torch.rand(n, 3, generator=generator)
    return 2.0 * ink * colour[:, :, None, None] - 1.0


def fit_velocity(model: Any, settings: dict, seed: int) -> float:
    """Flow matching: AdamW with cosine decay, batches of fresh colour digits, t ~ U[0, 1]."""
    import torch

    from adapters.torch_sit.digits.model import load_digits_split

    images, _ = load_digits_split("train")
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, settings["steps"])
    from tqdm.auto import tqdm

    losses = []
    for _ in tqdm(range(settings["steps"]), desc="velocity model", file=sys.stderr, disable=None):
        data = colour_digits(settings["batch"], g, images)
        z = torch.randn(data.shape, generator=g)
        t = torch.rand(settings["batch"], generator=g)
        xt = (1 - t[:, None, None, None]) * data + t[:, None, None, None] * z
        loss = (model(t, xt) - (z - data)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses[-100:]))


def velocity_model(runs: Path, settings: dict, seed: int, say: Any) -> tuple[Any, dict]:
    """The trained model from ``runs/velocity.safetensors`` when its settings match, else trained
    here and written there (atomically). Returns (model, its metadata)."""
    import torch

    from adapters.torch_sit.files import InvalidFile, atomic_write, read_header, read_tensors, serialise

    ConvUNet = _torch_model_classes()
    path = runs / "velocity.safetensors"
    wanted = {"settings": {**settings, "channels": list(settings["channels"])}, "seed": seed}
    model = ConvUNet(settings["channels"], settings["embed_dim"], max_freq=settings["max_freq"])
    if path.is_file():
        try:
            header = read_header(path)
            if {k: header.meta.get(k) for k in wanted} == wanted:
                model.load_state_dict(read_tensors(header))
                say(f"velocity model: {shown(path)} (trained before: loss {header.meta['loss']:.4f}, "
                    f"{header.meta['seconds']:.0f} s)")
                return model, header.meta
            say(f"velocity model: {shown(path)} has other settings; training afresh")
        except InvalidFile as err:
            say(f"velocity model: {err}; training afresh")
    torch.manual_seed(seed)
    model = ConvUNet(settings["channels"], settings["embed_dim"], max_freq=settings["max_freq"])
    start = time.perf_counter()
    loss = fit_velocity(model, settings, seed)
    meta = {**wanted, "loss": loss, "seconds": time.perf_counter() - start,
            "parameters": sum(p.numel() for p in model.parameters())}
    runs.mkdir(parents=True, exist_ok=True)
    atomic_write(path, serialise({k: v.detach().contiguous() for k, v in model.state_dict().items()}, meta))
    say(f"velocity model: {meta['parameters']:,} parameters, flow-matching loss {loss:.4f} (mean of the last 100 "
        f"steps) after {settings['steps']} steps in {meta['seconds']:.0f} s; written to {shown(path)}")
    return model, meta


# ---------------------------------------------------------------------------------------------
# references and scores


def references(runs: Path, model: Any, noise: Any, seed: int, say: Any, rtol: float = 1e-9) -> Any:
    """DOP853 solutions (float64, rtol = atol = ``rtol``) of the model's ODE from ``noise`` at
    t = 1 to t = 0, cached in ``runs/reference.safetensors`` under the model's SHA-256, the
    noises' seed and count and the tolerance."""
    import copy

    import torch

    from adapters.torch_sit.files import InvalidFile, atomic_write, read_header, read_tensors, serialise, sha256_file
    from baquad.reference import reference_solve

    path = runs / "reference.safetensors"
    key = {"model_sha256": sha256_file(runs / "velocity.safetensors"), "noise_seed": seed, "n": int(noise.shape[0]),
           "rtol": rtol}
    if path.is_file():
        try:
            header = read_header(path)
            if {k: header.meta.get(k) for k in key} == key:
                return read_tensors(header)["x0"]
        except InvalidFile:
            pass
    model64 = copy.deepcopy(model).double()
    start = time.perf_counter()
    ref = reference_solve(lambda t, x: model64(torch.full((x.shape[0],), t, dtype=x.dtype), x), noise.double(),
                          [1.0, 0.0], rtol=key["rtol"], atol=key["rtol"])[-1]
    say(f"reference solutions: {len(noise)} noises in {time.perf_counter() - start:.0f} s (DOP853, rtol {rtol:g})")
    atomic_write(path, serialise({"x0": ref.contiguous()}, key))
    return ref


def samplers(perception: Any) -> dict:
    """Row name -> ``baquad.solve`` options."""
    return {
        "BA-solver + SideNet (recipe_for, time budget)": dict(method="ba-solver", perception=perception),
        "BA-solver, training-free polynomial (the default)": dict(method="ba-solver"),
        "BA-solver, anchor-only": dict(method="ba-solver", perception="anchor-only"),
        "UniPC (bh2, order 2)": dict(method="unipc"),
        "Euler": dict(method="euler"),
    }


DEFAULT_ROW = "BA-solver, training-free polynomial (the default)"


def errors_of(field: Any, noise: Any, ref: Any, opts: dict, nfe: int) -> np.ndarray:
    """Per-noise L2 errors |x(0) - x_ref(0)| of one sampler at ``nfe`` calls on its uniform grid."""
    import baquad
    from baquad.schedules import nfe_grid

    res = baquad.solve(field, noise, nfe_grid(opts["method"], nfe), **opts)
    if res.nfe != nfe:
        raise RuntimeError(f"{opts}: {res.nfe} calls, not {nfe}")
    return (res.x.double() - ref).flatten(1).norm(dim=1).numpy()


def cell(e: np.ndarray, base: Optional[np.ndarray]) -> str:
    """``mean ± se`` and, against the default, ``(diff ± paired se)``."""
    text = f"{e.mean():.4f} ± {e.std(ddof=1) / math.sqrt(len(e)):.4f}"
    if base is not None and e is not base:
        d = paired(e, base)
        text += f" ({d.diff:+.4f} ± {d.se:.4f})"
    return text


# ---------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    out = resolve_out(args)
    import torch

    from adapters.torch_sit.backbones import Backbone
    from adapters.torch_sit.sidenet.checkpoint import load_checkpoint, load_sidenet
    from adapters.torch_sit.sidenet.networks import build_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from adapters.torch_sit.sidenet.train import recipe_for, train

    set_threads(args.threads)
    say = print
    settings = dict(QUICK_MODEL if args.quick else MODEL)
    if args.model_steps is not None:
        settings["steps"] = args.model_steps
    runs = args.runs
    model, model_meta = velocity_model(runs, settings, args.seed, say)
    backbone = Backbone.from_module(model, NAME, state_shape=(3, 8, 8))

    # the SideNet, as a user gets it: recipe_for and a time budget
    cfg, arch = recipe_for(backbone, quick=args.quick, batch_size=8 if args.quick else None)
    if args.quick:  # a smoke run: short chains, a one-block SideNet
        cfg.chain_length = 2
        arch = {**arch, "num_layers": 1, "res_blocks": 1}
    cfg.seed = args.seed
    load = [os.getloadavg()[0]]
    start = time.perf_counter()
    result = train(cfg, backbone=backbone, out=runs / "sidenet", sidenet_config=arch, minutes=args.minutes,
                   ckpt_every=None, keep_history=True, log=say)
    wall = time.perf_counter() - start
    load.append(os.getloadavg()[0])
    summary = result.summary
    sidenet = load_sidenet(runs / "sidenet" / "sidenet.safetensors")

    # scoring noises, used for nothing else
    noise = torch.randn((args.n, 3, 8, 8), generator=torch.Generator().manual_seed(1000 + args.seed))
    ref = references(runs, model, noise, 1000 + args.seed, say, rtol=1e-6 if args.quick else 1e-9)
    field = backbone.vfield()
    rows = samplers(NeuralPerception(sidenet))
    errs = {name: {nfe: errors_of(field, noise, ref, opts, nfe) for nfe in NFES} for name, opts in rows.items()}

    # the SideNet through its training: the untrained start and the EMA weights of every checkpoint
    history = sorted((runs / "sidenet" / "history").glob("checkpoint-*.safetensors"))
    along = {0: build_sidenet(arch)}
    for path in history:
        ck = load_checkpoint(path)
        net = build_sidenet(ck.sidenet_config)
        net.load_state_dict(ck.model)
        if ck.ema is not None:  # the weights the exported SideNet carries
            net.load_state_dict(ck.ema, strict=False)
        along[ck.step] = net
    trace = {step: {nfe: errors_of(field, noise, ref, dict(method="ba-solver", perception=NeuralPerception(net)), nfe)
                    for nfe in NFES} for step, net in along.items()}

    base = errs[DEFAULT_ROW]
    table = markdown_table(["sampler"] + [f"NFE {k}" for k in NFES],
                           [[name] + [cell(errs[name][k], base[k]) for k in NFES] for name in rows])
    trace_table = markdown_table(
        ["SideNet after step"] + [f"NFE {k}: SideNet" for k in NFES] + [f"NFE {k}: SideNet - default" for k in NFES],
        [[str(step)] + [f"{trace[step][k].mean():.4f}" for k in NFES]
         + [f"{paired(trace[step][k], base[k]).diff:+.4f} ± {paired(trace[step][k], base[k]).se:.4f}" for k in NFES]
         for step in sorted(trace)])
    budget = summary.get("time_budget") or load_checkpoint(runs / "sidenet").extra.get("budget") or {}
    facts = (
        f"The model: `ConvUNet` {model_meta['parameters']:,} parameters, flow matching on colour digits, "
        f"{model_meta['settings']['steps']} steps of {model_meta['settings']['batch']} "
        f"(loss {model_meta['loss']:.4f}, {model_meta['seconds']:.0f} s). "
        f"The SideNet: `recipe_for` (generic recipe), {sidenet.config()['class']} of "
        f"{sum(p.numel() for p in sidenet.parameters()):,} parameters, residual on "
        f"`{sidenet.config().get('base_perception', 'anchor-only')}`; time budget {args.minutes:g} min on "
        f"{args.threads} thread(s): {budget.get('seconds_per_iteration', float('nan')):.3g} s per iteration timed, so "
        f"{budget.get('iters', summary['steps_total'])} iterations of {cfg.batch_size} chains; this invocation trained "
        f"{summary['iterations']} of them in {wall:.0f} s (1-minute load average {load[0]:.1f} at its start, "
        f"{load[1]:.1f} at its end, on {os.cpu_count()} cores). Scores: mean L2 error |x(0) - x_ref(0)| over "
        f"{args.n} scoring noises (seed {1000 + args.seed}) ± its standard error; in brackets the paired "
        "difference to the training-free default ± its standard error (negative: better than the default)."
    )
    text = (f"`{command('analysis.own_model', argv)}`\n\n{facts}\n\n{table}\n\n"
            f"The SideNet through its training (EMA weights of each checkpoint; step 0: untrained), same noises:\n\n"
            f"{trace_table}\n")
    _, md = output_paths(out, "own_model")
    md.write_text(text)
    print("\n" + facts + "\n\n" + table + "\n\n" + trace_table)
    print(f"\nwrote {shown(md)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
