"""GPU check of the REPA SiT backbone: sampling throughput and chain-training speed.

Run ``python -m analysis.gpu_check_sit`` on a CUDA machine (about 1-3 minutes on one H100; the
weights are random, nothing is downloaded). It builds a random-weight SiT-XL/2 at 256 px (latents
4 x 32 x 32, float32 with TF32 matmuls) and a paper-size ConvSideNet (Table 4, zero output layer)
and measures:

- sampling throughput in latents per second (no VAE decoding) of BA-solver at 10 NFE
  (``baquad.solve(..., rule="gauss-lobatto-4", perception=NeuralPerception(sidenet))``, 10
  intervals) against Euler at 10 NFE (``method="euler"``), without and with classifier-free
  guidance (guided for t in [0, 0.7], REPA's evaluation interval, which doubles the batch there);
  the median of ``--repeats`` timed solves after one warm-up, ``torch.cuda.synchronize`` around
  each; the share of BA-solver's time spent in the SideNet and in the backbone, from CUDA events
  around each call;
- chain-training iterations per second (``ChainTrainer.step`` on ``sample_batch``, chain length
  8, Gauss-Legendre-3 simulation, ``--train-batch`` chains per iteration) and the peak GPU memory
  of those iterations (``torch.cuda.max_memory_allocated``), without and with guidance.

It prints a markdown table and, when the environment variable ``OUT`` names a directory, writes
the results to ``$OUT/gpu_check_sit.json``. ``--tiny`` runs the same code on a tiny random SiT and
a small SideNet with a few iterations, on the CPU unless ``--device`` says otherwise (a smoke
test). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

import baquad
from baquad.perception import Perception
from adapters.torch_sit.sidenet.chain import ChainConfig, ChainTrainer, sample_batch
from adapters.torch_sit.files import atomic_write
from adapters.torch_sit.sidenet.paper import paper_sidenet
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.networks import ConvSideNet, count_parameters
from adapters.torch_sit.sit.backbone import repa_sit_backbone, tiny_sit_config

from ._common import command, markdown_table


class CallTimer:
    """Accumulates the time spent inside calls: CUDA events on a GPU (no host sync per call),
    ``time.perf_counter`` on the CPU. ``seconds()`` synchronises and sums."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.events: list = []
        self.cpu = 0.0

    def run(self, fn: Callable[[], Any]) -> Any:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = fn()
            end.record()
            self.events.append((start, end))
            return out
        t0 = time.perf_counter()
        out = fn()
        self.cpu += time.perf_counter() - t0
        return out

    def seconds(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(s.elapsed_time(e) for s, e in self.events) / 1000.0
        return self.cpu

    def reset(self) -> None:
        self.events, self.cpu = [], 0.0


class TimedPerception(Perception):
    """A perception whose calls are timed by a :class:`CallTimer`."""

    def __init__(self, inner: Perception, timer: CallTimer):
        self.inner, self.timer = inner, timer
        self.history_size = getattr(inner, "history_size", 1)

    def __call__(self, x, v, t, offsets, history=()):
        return self.timer.run(lambda: self.inner(x, v, t, offsets, history))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_seconds(fn: Callable[[], Any], repeats: int, device: torch.device,
                    after_warmup: Callable[[], None] = lambda: None) -> tuple[float, float, Any]:
    """(median, total) wall time of ``fn`` over ``repeats`` runs after one warm-up run
    (``after_warmup`` runs once between them), and the last output."""
    out = fn()
    _sync(device)
    after_warmup()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(times), out


def measure_sampling(backbone: Any, sidenet: torch.nn.Module, *, batch: int, nfe: int, guidance_scale: Optional[float],
                     repeats: int, device: torch.device, seed: int = 0) -> list[dict]:
    """Euler and BA-solver at ``nfe`` NFE on one batch of noise (module docstring)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x0 = torch.randn((batch, *backbone.state_shape), generator=g).to(device)
    labels = torch.randint(0, backbone.num_classes, (batch,), generator=g).to(device)
    cond = dict(labels=labels, guidance_scale=guidance_scale)
    ts = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64).tolist()
    field_timer, side_timer = CallTimer(device), CallTimer(device)
    field = backbone.vfield(**cond)
    timed_field = lambda t, x: field_timer.run(lambda: field(t, x))
    sidenet_guidance = guidance_scale if getattr(sidenet, "config", lambda: {})().get("guidance") else None
    perception = TimedPerception(NeuralPerception(sidenet, labels=labels, guidance_scale=sidenet_guidance), side_timer)
    rows = []
    for method in ("euler", "ba-solver"):
        if method == "euler":
            run = lambda: baquad.solve(timed_field, x0, ts, method="euler", check_finite=False)
        else:
            run = lambda: baquad.solve(timed_field, x0, ts, rule="gauss-lobatto-4", perception=perception, check_finite=False)

        def reset() -> None:
            field_timer.reset()
            side_timer.reset()

        with torch.no_grad():
            seconds, total, result = _median_seconds(run, repeats, device, after_warmup=reset)
        backbone_s, sidenet_s = field_timer.seconds(), side_timer.seconds()  # over all timed solves
        rows.append(dict(
            method=method, guidance_scale=guidance_scale, batch=batch, nfe=result.nfe,
            perception_calls=result.perception_calls, seconds_per_batch=seconds, images_per_second=batch / seconds,
            backbone_seconds_per_batch=backbone_s / repeats, sidenet_seconds_per_batch=sidenet_s / repeats,
            sidenet_share=sidenet_s / total, backbone_share=backbone_s / total,
            final_rms=float(result.x.float().pow(2).mean().sqrt()),
        ))
    return rows


def measure_training(backbone: Any, sidenet: torch.nn.Module, *, batch: int, chain_length: int, loss_chunks: int,
                     guidance_scale: Optional[float], iters: int, device: torch.device) -> dict:
    """``iters`` timed ChainTrainer steps after one warm-up step; iterations/s and peak memory."""
    cfg = ChainConfig(chain_length=chain_length, batch_size=batch, guidance_scale=guidance_scale,
                      loss_chunks=loss_chunks, iters=iters + 1, seed=0)
    trainer = ChainTrainer(sidenet, backbone, cfg)
    stats = trainer.step(sample_batch(cfg, backbone, 0))
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows0 = getattr(backbone.module, "rows", 0)
    t0 = time.perf_counter()
    for step in range(1, iters + 1):
        stats = trainer.step(sample_batch(cfg, backbone, step))
    _sync(device)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return dict(guidance_scale=guidance_scale, batch=batch, chain_length=chain_length, loss_chunks=loss_chunks,
                iters=iters, seconds_per_iter=seconds / iters, iters_per_second=iters / seconds,
                peak_memory_gib=peak, backbone_calls_per_iter=stats["backbone_calls"],
                backbone_rows_per_iter=(getattr(backbone.module, "rows", 0) - rows0) / iters,
                loss=stats["loss"])


def _tiny_sidenet(num_classes: int, guidance: bool) -> ConvSideNet:
    torch.manual_seed(0)
    return ConvSideNet(4, base_channels=16, time_embed_dim=32, num_layers=1, num_classes=num_classes,
                       num_heads=2, guidance=guidance, res_blocks=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random SiT and SideNet, few iterations (CPU smoke test)")
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    parser.add_argument("--batch", type=int, default=None, help="sampling batch (default 64; 4 with --tiny)")
    parser.add_argument("--train-batch", type=int, default=None, help="chains per training iteration (default 64; 4 with --tiny)")
    parser.add_argument("--loss-chunks", type=int, default=None, help="ChainConfig.loss_chunks (default 4; 1 with --tiny)")
    parser.add_argument("--nfe", type=int, default=10)
    parser.add_argument("--guidance-scale", type=float, default=2.0, help="guidance scale of the guided runs")
    parser.add_argument("--repeats", type=int, default=None, help="timed solves per setting (default 3; 1 with --tiny)")
    parser.add_argument("--iters", type=int, default=None, help="timed training iterations (default 4; 1 with --tiny)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's; 1 with --tiny)")
    parser.add_argument("--autocast", default=None, choices=["bf16"], help="run the backbone under bf16 autocast")
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the check, print the markdown table, write ``$OUT/gpu_check_sit.json``; return the results."""
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not tiny else "cpu"))
    batch = args.batch or (4 if tiny else 64)
    train_batch = args.train_batch or (4 if tiny else 64)
    loss_chunks = args.loss_chunks or (1 if tiny else 4)
    repeats = args.repeats or (1 if tiny else 3)
    iters = args.iters or (1 if tiny else 4)
    threads = args.threads or (1 if tiny else None)
    if threads:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    model = tiny_sit_config() if tiny else "SiT-XL/2"
    backbone = repa_sit_backbone(model, 256, None, zero_init=False, seed=0, device=device, autocast=args.autocast,
                                 name="repa-sit-tiny" if tiny else "SiT-XL/2 256px (random weights)")
    build_s = time.perf_counter() - t0
    make_sidenet = (lambda g: _tiny_sidenet(backbone.num_classes, g)) if tiny else (
        lambda g: paper_sidenet(backbone, guidance=g))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {command('analysis.gpu_check_sit', argv)}")
    print(f"device: {gpu}; backbone {backbone.name}: {backbone.num_parameters:,} parameters, built in {build_s:.1f} s")

    sampling, training = [], []
    for scale in (None, args.guidance_scale):
        sidenet = make_sidenet(scale is not None).to(device).eval()
        sampling += measure_sampling(backbone, sidenet, batch=batch, nfe=args.nfe, guidance_scale=scale,
                                     repeats=repeats, device=device)
    for scale in (None, args.guidance_scale):
        sidenet = make_sidenet(scale is not None).to(device)
        training.append(measure_training(backbone, sidenet, batch=train_batch, chain_length=8, loss_chunks=loss_chunks,
                                         guidance_scale=scale, iters=iters, device=device))
    n_side = {g: count_parameters(make_sidenet(g)) for g in (False, True)}
    total_s = time.perf_counter() - t0

    cfg_name = lambda s: "none" if s is None else f"{s:g} on t in {backbone.extra['guidance_interval']}"
    print()
    print(markdown_table(
        ["sampling (latents, no VAE)", "CFG", "NFE", "batch", "images/s", "s/batch", "SideNet share", "backbone share"],
        [[r["method"], cfg_name(r["guidance_scale"]), r["nfe"], r["batch"], f"{r['images_per_second']:.1f}",
          f"{r['seconds_per_batch']:.3f}", f"{100 * r['sidenet_share']:.1f}%", f"{100 * r['backbone_share']:.1f}%"]
         for r in sampling], "llrrrrrr"))
    print()
    print(markdown_table(
        ["chain training (K = 8)", "CFG", "batch", "it/s", "s/it", "peak GiB", "backbone rows/it"],
        [["ChainTrainer.step", cfg_name(r["guidance_scale"]), r["batch"], f"{r['iters_per_second']:.3f}",
          f"{r['seconds_per_iter']:.3f}", f"{r['peak_memory_gib']:.1f}", f"{r['backbone_rows_per_iter']:.0f}"]
         for r in training], "llrrrrr"))
    print()
    print(f"SideNet parameters: {n_side[False]:,} ({100 * n_side[False] / backbone.num_parameters:.3f}% of the backbone), "
          f"guidance-conditioned {n_side[True]:,}; total time {total_s:.1f} s")
    results = dict(command=command("analysis.gpu_check_sit", argv), device=gpu, tiny=tiny, torch=torch.__version__,
                   backbone=backbone.name, backbone_parameters=backbone.num_parameters,
                   sidenet_parameters=n_side[False], sidenet_parameters_guidance=n_side[True],
                   autocast=args.autocast, build_seconds=build_s, total_seconds=total_s,
                   sampling=sampling, training=training)
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "gpu_check_sit.json"
        atomic_write(path, (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
