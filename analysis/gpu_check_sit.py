"""GPU check of the REPA SiT backbone: sampling throughput, the SideNet's share, host syncs,
CUDA graphs and chain-training speed.

Run ``python -m analysis.gpu_check_sit`` on a CUDA machine (about 2 minutes on one H100; the
weights are random, nothing is downloaded), or ``python -m analysis.gpu_check`` for this and the
diffusers check together. It builds a random-weight SiT-XL/2 at 256 px (latents 4 x 32 x 32) and
the SideNet of ``paper_sidenet_config`` (``--design patch``, the default, or ``table4``; zero
output layer, so its cost is what is measured) and measures:

- sampling throughput in latents per second (no VAE decoding) of BA-solver at 10 NFE
  (``baquad.solve(..., rule="gauss-lobatto-4", perception=NeuralPerception(sidenet))``, 10
  intervals, scheme B) against Euler at 10 NFE (``method="euler"``), without and with
  classifier-free guidance (guided for t in [0, 0.7], REPA's evaluation interval, which doubles
  the batch there), in float32 with TF32 matrix products and in bf16 autocast (the backbone's
  ``autocast`` and the SideNet's, ``NeuralPerception(..., autocast=)``); the median of
  ``--repeats`` timed solves after one warm-up, ``torch.cuda.synchronize`` around each; the share
  of BA-solver's time spent in the SideNet and in the backbone, from CUDA events around each call;
- host syncs inside a guided solve with ``check_finite=False``: the sampler runs under
  ``torch.cuda.set_sync_debug_mode("error")`` and a dispatch hook (:class:`SyncWatch`) that names
  every op reading a value back from the device (on the CPU, the hook alone);
- BA-solver's sampling loop (``baquad.bianchor.ba_solver``, guided, float32) captured in a CUDA
  graph and replayed, against the eager loop (relative difference; CUDA only);
- chain-training iterations per second (``ChainTrainer.step`` on ``sample_batch``, chain length
  8, Gauss-Legendre-3 simulation, ``--train-batch`` chains per iteration, 128 by default, what
  an H100's memory holds) and the peak GPU memory of those iterations
  (``torch.cuda.max_memory_allocated``), without and with guidance.

It prints markdown tables, the bars of docs/imagenet.md#the-gpu-check with pass or fail, and, when
the environment variable ``OUT`` names a directory, writes the results to
``$OUT/gpu_check_sit.json``. ``--tiny`` runs the same code on a tiny random SiT and a small
SideNet with a few iterations, on the CPU unless ``--device`` says otherwise (a smoke test).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import statistics
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch

from torch.utils._python_dispatch import TorchDispatchMode

import baquad
from baquad.bianchor import ba_solver
from baquad.methods import get_method, register_method
from baquad.perception import Perception
from adapters.torch_sit.sidenet.chain import ChainConfig, ChainTrainer, sample_batch
from adapters.torch_sit.files import atomic_write
from adapters.torch_sit.sidenet.paper import paper_sidenet
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.networks import ConvSideNet, count_parameters
from adapters.torch_sit.sit.backbone import repa_sit_backbone, tiny_sit_config

from ._common import command, markdown_table, positive_float, positive_int

aten = torch.ops.aten


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


@contextlib.contextmanager
def precision(backbone: Any, name: str, device: torch.device) -> Iterator[Optional[torch.dtype]]:
    """Run the backbone in ``name``: ``"fp32"`` (float32, TF32 matrix products on CUDA, the SiT
    backbone's default, here for the SideNet too) or ``"bf16"`` (bfloat16 autocast, the backbone's
    ``autocast``); yields the SideNet's autocast dtype (None or torch.bfloat16)."""
    module, old = backbone.module, backbone.module.autocast
    module.autocast = torch.bfloat16 if name == "bf16" else None
    previous = torch.get_float32_matmul_precision()
    if device.type == "cuda" and name == "fp32":
        torch.set_float32_matmul_precision("high")
    try:
        yield module.autocast
    finally:
        module.autocast = old
        torch.set_float32_matmul_precision(previous)


def sampling_inputs(backbone: Any, batch: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of noise and labels (seeded)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x0 = torch.randn((batch, *backbone.state_shape), generator=g).to(device)
    return x0, torch.randint(0, backbone.num_classes, (batch,), generator=g).to(device)


def sidenet_perception(sidenet: torch.nn.Module, labels: torch.Tensor, guidance_scale: Optional[float],
                       autocast: Optional[torch.dtype]) -> NeuralPerception:
    takes_guidance = getattr(sidenet, "config", lambda: {})().get("guidance")
    return NeuralPerception(sidenet, labels=labels, guidance_scale=guidance_scale if takes_guidance else None,
                            autocast=autocast)


def measure_sampling(backbone: Any, sidenet: torch.nn.Module, *, batch: int, nfe: int, guidance_scale: Optional[float],
                     repeats: int, device: torch.device, precision_name: str = "fp32", seed: int = 0) -> list[dict]:
    """Euler and BA-solver at ``nfe`` NFE on one batch of noise (module docstring)."""
    x0, labels = sampling_inputs(backbone, batch, device, seed)
    cond = dict(labels=labels, guidance_scale=guidance_scale)
    ts = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64).tolist()
    field_timer, side_timer = CallTimer(device), CallTimer(device)
    field = backbone.vfield(**cond)
    timed_field = lambda t, x: field_timer.run(lambda: field(t, x))
    rows = []
    with precision(backbone, precision_name, device) as autocast:
        perception = TimedPerception(sidenet_perception(sidenet, labels, guidance_scale, autocast), side_timer)
        for method in ("euler", "ba-solver"):
            if method == "euler":
                run = lambda: baquad.solve(timed_field, x0, ts, method="euler", check_finite=False)
            else:
                run = lambda: baquad.solve(timed_field, x0, ts, rule="gauss-lobatto-4", perception=perception,
                                           check_finite=False)

            def reset() -> None:
                field_timer.reset()
                side_timer.reset()

            with torch.no_grad():
                seconds, total, result = _median_seconds(run, repeats, device, after_warmup=reset)
            backbone_s, sidenet_s = field_timer.seconds(), side_timer.seconds()  # over all timed solves
            rows.append(dict(
                method=method, precision=precision_name, guidance_scale=guidance_scale, batch=batch, nfe=result.nfe,
                perception_calls=result.perception_calls, seconds_per_batch=seconds, images_per_second=batch / seconds,
                backbone_seconds_per_batch=backbone_s / repeats, sidenet_seconds_per_batch=sidenet_s / repeats,
                sidenet_share=sidenet_s / total, backbone_share=backbone_s / total,
                final_rms=float(result.x.float().pow(2).mean().sqrt()),
            ))
    return rows


class SyncWatch(TorchDispatchMode):
    """Records the aten ops that read a value back to the host: ``_local_scalar_dense`` (what
    ``.item()``, ``float(t)``, ``int(t)`` and ``if t:`` run), ``nonzero`` (its output size is
    data-dependent) and ``is_nonzero``/``equal``, and, for tensors on a GPU, copies between the
    host and the device; each with the innermost frame of this repository that asked for it."""

    SYNCING = {aten._local_scalar_dense, aten.nonzero, aten.is_nonzero, aten.equal}

    def __init__(self):
        super().__init__()
        self.events: list = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        copy = packet in (aten._to_copy, aten.copy_) and _crosses_host(func, args, kwargs)
        if packet in self.SYNCING or copy:
            self.events.append(f"{packet.__name__} at {_caller()}")
        return func(*args, **kwargs)


def _crosses_host(func: Any, args: tuple, kwargs: dict) -> bool:
    """A copy between host memory and a GPU (``_to_copy`` to another device, ``copy_`` across)."""
    if func._overloadpacket is aten.copy_:
        devices = {args[0].device.type, args[1].device.type}
    else:
        target = kwargs.get("device")
        devices = {args[0].device.type, (torch.device(target).type if target is not None else args[0].device.type)}
    return "cpu" in devices and len(devices) > 1


def _caller() -> str:
    """``file:line (function)`` of the innermost frame under the repository's packages."""
    for frame in reversed(traceback.extract_stack()):
        if any(f"/{pkg}/" in frame.filename for pkg in ("baquad", "adapters")) and "gpu_check" not in frame.filename:
            return f"{Path(frame.filename).name}:{frame.lineno} ({frame.name})"
    return "outside the repository"


def check_syncs(backbone: Any, sidenet: torch.nn.Module, *, batch: int, nfe: int, guidance_scale: float,
                device: torch.device) -> dict:
    """A guided BA-solver solve with ``check_finite=False`` after one warm-up solve on the same
    labels (a labels tensor is read once, at its first call): every op inside the sampler that
    reads back from the device (:class:`SyncWatch`), and on CUDA whether
    ``torch.cuda.set_sync_debug_mode("error")`` raised inside the sampler (the x0/grid checks before
    it and the transfer of the per-interval gaps after it are outside, as ``baquad.solve``
    documents)."""
    x0, labels = sampling_inputs(backbone, batch, device)
    field = backbone.vfield(labels=labels, guidance_scale=guidance_scale)
    perception = sidenet_perception(sidenet, labels, guidance_scale, None)
    watch, raised = SyncWatch(), []
    spec = get_method("ba-solver")

    @functools.wraps(spec.sampler)  # the same options (the registry reads the signature)
    def watched(*args: Any, **kwargs: Any) -> Any:
        debug = torch.cuda.get_sync_debug_mode() if device.type == "cuda" else None
        if debug is not None:
            torch.cuda.set_sync_debug_mode("error")
        try:
            with watch:
                return spec.sampler(*args, **kwargs)
        except RuntimeError as err:
            if "synchroniz" not in str(err):
                raise
            raised.append(f"{err} at {_caller_of(err)}")
            raise
        finally:
            if debug is not None:
                torch.cuda.set_sync_debug_mode(debug)

    register_method(dataclasses.replace(spec, name="ba-solver-sync-check", sampler=watched), replace=True)
    ts = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64).tolist()
    with torch.no_grad():
        baquad.solve(field, x0, ts, rule="gauss-lobatto-4", perception=perception, check_finite=False)  # warm-up
        try:
            baquad.solve(field, x0, ts, method="ba-solver-sync-check", rule="gauss-lobatto-4", perception=perception,
                         check_finite=False)
        except RuntimeError:
            if not raised:
                raise
    return dict(syncs=watch.events, debug_mode_error=raised[0] if raised else None,
                debug_mode="error" if device.type == "cuda" else "n/a (cpu)")


def _caller_of(err: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(err.__traceback__)
              if any(f"/{pkg}/" in f.filename for pkg in ("baquad", "adapters"))]
    return f"{Path(frames[-1].filename).name}:{frames[-1].lineno} ({frames[-1].name})" if frames else "unknown"


def check_graph(backbone: Any, sidenet: torch.nn.Module, *, batch: int, nfe: int, guidance_scale: float,
                device: torch.device) -> dict:
    """BA-solver's sampling loop (``baquad.bianchor.ba_solver``, guided, float32 with TF32 as the
    backbone's default) captured in a CUDA graph and replayed, against the same loop run eagerly:
    the largest difference over the largest magnitude (bar: 1e-5). CUDA only."""
    if device.type != "cuda":
        return dict(relative_difference=None, note="n/a (needs CUDA)")
    x0, labels = sampling_inputs(backbone, batch, device)
    field = backbone.vfield(labels=labels, guidance_scale=guidance_scale)
    perception = sidenet_perception(sidenet, labels, guidance_scale, None)
    ts = torch.linspace(1.0, 0.0, nfe + 1, dtype=torch.float64).tolist()
    run = lambda: ba_solver(field, x0, ts, rule="gauss-lobatto-4", perception=perception)
    with torch.no_grad():
        eager = run()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream (cuBLAS workspaces, kernels chosen)
            for _ in range(2):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = run()
        graph.replay()
        torch.cuda.synchronize()
        rel = float((captured - eager).abs().max() / eager.abs().max())
    return dict(relative_difference=rel, batch=batch, note="CUDA graph of ba_solver, replayed")


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


def _tiny_sidenet(num_classes: int, guidance: bool, design: str) -> ConvSideNet:
    torch.manual_seed(0)
    return ConvSideNet(4, base_channels=16, time_embed_dim=32, num_layers=1, num_classes=num_classes,
                       num_heads=2, guidance=guidance, res_blocks=1, patch=2 if design == "patch" else 1)


#: the speed bars (docs/imagenet.md#the-gpu-check)
SHARE_BAR, SPEED_BAR, GRAPH_BAR = 0.05, 0.95, 1e-5


def bars(sampling: list, syncs: dict, graph: dict) -> list[dict]:
    """The pass/fail rows: per precision and guidance, the SideNet's share of BA-solver's time
    (< 5%) and BA-solver's images per second over Euler's (>= 0.95); no host sync inside a
    guided solve's loop; the CUDA-graph solve against eager (<= 1e-5 relative)."""
    out = []
    by = {(r["method"], r["precision"], r["guidance_scale"]): r for r in sampling}
    for (method, prec, scale), r in by.items():
        if method != "ba-solver":
            continue
        setting = f"{prec}, {'unguided' if scale is None else f'guided {scale:g}'}"
        euler = by[("euler", prec, scale)]
        out.append(dict(check="SideNet share of BA-solver's time", setting=setting, value=f"{100 * r['sidenet_share']:.2f}%",
                        bar="< 5%", ok=r["sidenet_share"] < SHARE_BAR))
        ratio = r["images_per_second"] / euler["images_per_second"]
        out.append(dict(check="BA-solver img/s over Euler's (same NFE)", setting=setting, value=f"{ratio:.3f}",
                        bar=">= 0.95", ok=ratio >= SPEED_BAR))
    found = syncs["syncs"] + ([syncs["debug_mode_error"]] if syncs["debug_mode_error"] else [])
    out.append(dict(check="host syncs inside a guided solve's loop", setting=f"check_finite=False, debug mode "
                    f"{syncs['debug_mode']}", value="none" if not found else "; ".join(found[:3]), bar="none",
                    ok=not found))
    rel = graph.get("relative_difference")
    out.append(dict(check="CUDA-graph solve against eager", setting="fp32, guided", value=graph.get("note") if rel is None
                    else f"{rel:.2e}", bar="<= 1e-5 relative", ok=None if rel is None else rel <= GRAPH_BAR))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis.gpu_check_sit", description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random SiT and SideNet, few iterations (CPU smoke test)")
    parser.add_argument("--device", default=None, help="default: cuda when available (cpu with --tiny)")
    parser.add_argument("--batch", type=positive_int, default=None, help="sampling batch (default 256; 4 with --tiny)")
    parser.add_argument("--train-batch", type=positive_int, default=None,
                        help="chains per training iteration (default 128; 4 with --tiny)")
    parser.add_argument("--loss-chunks", type=positive_int, default=None,
                        help="ChainConfig.loss_chunks (default 8; 1 with --tiny)")
    parser.add_argument("--nfe", type=positive_int, default=10)
    parser.add_argument("--guidance-scale", type=positive_float, default=2.0, help="guidance scale of the guided runs")
    parser.add_argument("--repeats", type=positive_int, default=None, help="timed solves per setting (default 3; 1 with --tiny)")
    parser.add_argument("--iters", type=positive_int, default=None, help="timed training iterations (default 2; 1 with --tiny)")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's; 1 with --tiny)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), nargs="+", default=["fp32", "bf16"],
                        help="sampling precisions: fp32 (float32, TF32 matrix products) and/or bf16 (autocast); default both")
    parser.add_argument("--design", choices=("patch", "table4"), default="patch",
                        help="the SideNet: the patch design (default) or Table 4's ConvSideNet (paper_sidenet_config)")
    parser.add_argument("--graph-batch", type=positive_int, default=None,
                        help="batch of the CUDA-graph check (default 64)")
    parser.add_argument("--no-training", dest="training", action="store_false", help="skip the chain-training timing")
    return parser


def main(argv: Optional[list[str]] = None) -> dict:
    """Run the check, print the markdown tables, write ``$OUT/gpu_check_sit.json``; return the results."""
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not tiny else "cpu"))
    batch = args.batch or (4 if tiny else 256)
    train_batch = args.train_batch or (4 if tiny else 128)
    loss_chunks = args.loss_chunks or (1 if tiny else 8)
    repeats = args.repeats or (1 if tiny else 3)
    iters = args.iters or (1 if tiny else 2)
    threads = args.threads or (1 if tiny else None)
    if threads:
        torch.set_num_threads(threads)

    t0 = time.perf_counter()
    model = tiny_sit_config() if tiny else "SiT-XL/2"
    backbone = repa_sit_backbone(model, 256, None, zero_init=False, seed=0, device=device,
                                 name="repa-sit-tiny" if tiny else "SiT-XL/2 256px (random weights)")
    build_s = time.perf_counter() - t0
    make_sidenet = (lambda g: _tiny_sidenet(backbone.num_classes, g, args.design)) if tiny else (
        lambda g: paper_sidenet(backbone, guidance=g, design=args.design))
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# {command('analysis.gpu_check_sit', argv)}")
    print(f"device: {gpu}; backbone {backbone.name}: {backbone.num_parameters:,} parameters, built in {build_s:.1f} s")

    sampling, training = [], []
    nets = {g: make_sidenet(g).to(device).eval() for g in (False, True)}
    for prec in args.precision:
        for scale in (None, args.guidance_scale):
            sampling += measure_sampling(backbone, nets[scale is not None], batch=batch, nfe=args.nfe,
                                         guidance_scale=scale, repeats=repeats, device=device, precision_name=prec)
    syncs = check_syncs(backbone, nets[True], batch=batch, nfe=args.nfe, guidance_scale=args.guidance_scale,
                        device=device)
    try:
        graph = check_graph(backbone, nets[True], batch=args.graph_batch or (4 if tiny else 64), nfe=args.nfe,
                            guidance_scale=args.guidance_scale, device=device)
    except Exception as err:  # a benchmark reports what failed and goes on
        graph = dict(relative_difference=None, note=f"failed: {type(err).__name__}: {str(err)[:300]}")
    for scale in (None, args.guidance_scale) if args.training else ():
        sidenet = make_sidenet(scale is not None).to(device)
        training.append(measure_training(backbone, sidenet, batch=train_batch, chain_length=8, loss_chunks=loss_chunks,
                                         guidance_scale=scale, iters=iters, device=device))
    n_side = {g: count_parameters(net) for g, net in nets.items()}
    total_s = time.perf_counter() - t0
    passed = bars(sampling, syncs, graph)

    cfg_name = lambda s: "none" if s is None else f"{s:g} on t in {backbone.extra['guidance_interval']}"
    print()
    print(markdown_table(
        ["sampling (latents, no VAE)", "precision", "CFG", "NFE", "batch", "images/s", "s/batch", "SideNet share",
         "backbone share"],
        [[r["method"], r["precision"], cfg_name(r["guidance_scale"]), r["nfe"], r["batch"],
          f"{r['images_per_second']:.1f}", f"{r['seconds_per_batch']:.3f}", f"{100 * r['sidenet_share']:.1f}%",
          f"{100 * r['backbone_share']:.1f}%"] for r in sampling], "lllrrrrrr"))
    if training:
        print()
        print(markdown_table(
            ["chain training (K = 8)", "CFG", "batch", "it/s", "s/it", "peak GiB", "backbone rows/it"],
            [["ChainTrainer.step", cfg_name(r["guidance_scale"]), r["batch"], f"{r['iters_per_second']:.3f}",
              f"{r['seconds_per_iter']:.3f}", f"{r['peak_memory_gib']:.1f}", f"{r['backbone_rows_per_iter']:.0f}"]
             for r in training], "llrrrrr"))
    print()
    print(markdown_table(["bar", "setting", "measured", "bar", "pass"],
                         [[b["check"], b["setting"], b["value"], b["bar"], {True: "yes", False: "NO", None: "n/a"}[b["ok"]]]
                          for b in passed], "lllll"))
    print()
    print(f"SideNet ({args.design}): {n_side[False]:,} parameters ({100 * n_side[False] / backbone.num_parameters:.3f}% "
          f"of the backbone), guidance-conditioned {n_side[True]:,}; total time {total_s:.1f} s")
    results = dict(command=command("analysis.gpu_check_sit", argv), device=gpu, tiny=tiny, torch=torch.__version__,
                   backbone=backbone.name, backbone_parameters=backbone.num_parameters, design=args.design,
                   sidenet_parameters=n_side[False], sidenet_parameters_guidance=n_side[True],
                   build_seconds=build_s, total_seconds=total_s, sampling=sampling, training=training,
                   syncs=syncs, graph=graph, bars=passed)
    out = os.environ.get("OUT")
    if out:
        path = Path(out) / "gpu_check_sit.json"
        atomic_write(path, (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
