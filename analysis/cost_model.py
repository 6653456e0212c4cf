"""What a BA-solver sampling step costs on a GPU: FLOPs, bytes moved and a roofline time of the
backbone and of its SideNet, the Table 4 SideNet and the patch design side by side.

    python -m analysis.cost_model                      # SiT-XL/2 at 256 px, batch 256, H100 and H200
    python -m analysis.cost_model --gpu h200 --resolution 512
    python -m analysis.cost_model --peak-tflops 989 --bandwidth-tbs 3.35   # any GPU

Everything is counted on the meta device: the models are built and run there, so nothing is
allocated (SiT-XL/2's 675M parameters cost no memory) and nothing is timed. For every aten op
that runs:

- FLOPs by the formulas of ``torch.utils.flop_counter`` (what ``FlopCounterMode`` counts: matrix
  products, convolutions, attention; elementwise ops count none);
- bytes moved: the sizes of the op's tensor inputs and outputs. A view (reshape, permute,
  expand, ...) moves nothing; a broadcast input counts the memory it covers, not its expanded
  size; an embedding lookup reads the rows it gathers, not the table; ``copy_`` reads its
  source and writes its destination.

Attention (``F.scaled_dot_product_attention``) is counted as the kernel a GPU runs. PyTorch's
fused kernels (flash, memory-efficient) read q, k, v and write the output, 4 B H N^2 d FLOPs and
no N x N score matrix; it chooses them only when the last dimension of each of q, k and v is
contiguous (stride 1), so the model does too: fused iff q, k and v all have stride 1 in their
last dimension, no mask is given, and the head dimension is a multiple of 8 and at most 256.
Otherwise the call is counted as PyTorch's math path (``aten._scaled_dot_product_attention_math``:
the score matrix written, softmaxed and read).

Precision: ``fp32`` runs the models in float32 (matrix products on TF32 tensor cores); ``bf16``
follows CUDA's autocast rules: matrix products, convolutions and attention cast their float32
inputs to bfloat16 (weights on every call, as autocast does for frozen weights), LayerNorm and
GroupNorm compute in float32, and every other op keeps its inputs' dtype; the casts are counted
as ops. The SideNet call is the whole ``NeuralPerception`` call (its m offsets stacked in one
batch, the base velocity added back), the backbone call the guided SiT's (the conditional and
unconditional halves in one batch inside the guidance interval).

Rows per step come from the core itself: ``baquad.solve`` runs the rule and scheme with a stub
field and perception that record every call (the forward probe asks for every node c > 0 of the
rule, the backward refinement for the nodes 1/2 <= c < 1, scheme B's last interval is
single-anchor; docs/algorithm.md#counting-nfe). The predicted time of an op is
max(FLOPs / peak, bytes / bandwidth), peak the dense bf16 tensor-core rate for a bf16 op and
the dense TF32 rate for a float32 op with FLOPs; a step's time is the sum over the ops of its
calls, and the SideNet's share is its part of that sum. The model leaves out kernel launch
latency, caches and fusion beyond attention, and the solver's own state arithmetic (a few
state-sized vectors per interval).

It prints the tables and writes ``cost_model.md`` (the command at the top) under ``--out``.
``--quick`` counts a tiny SiT and tiny SideNets (a smoke run; it writes under runs/quick).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry, sdpa_flop_count

import baquad
from baquad.perception import Perception
from baquad.schedules import nfe_grid
from adapters.torch_sit.files import atomic_write
from adapters.torch_sit.sidenet.networks import build_sidenet, count_parameters
from adapters.torch_sit.sidenet.paper import paper_sidenet_config
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sit.backbone import DEFAULT_GUIDANCE_INTERVAL, GuidedSiT, tiny_sit_config
from adapters.torch_sit.sit.model import SiT, sit_config

from ._common import ArgumentParser, command, markdown_table, output_paths, positive_float, positive_int, resolve_out

aten = torch.ops.aten

#: published dense tensor-core rates (TFLOP/s, SXM parts, without structured sparsity) and HBM
#: bandwidths (TB/s) from NVIDIA's H100 and H200 datasheets
GPUS = {
    "h100": dict(name="H100 SXM", bf16=989.4, tf32=494.7, bandwidth=3.35),
    "h200": dict(name="H200 SXM", bf16=989.4, tf32=494.7, bandwidth=4.8),
}
PRECISIONS = ("fp32", "bf16")


# ---------------------------------------------------------------------------------------------
# counting


@dataclass
class Op:
    """One aten op that ran: its name, FLOPs, bytes moved and the dtype of its FLOPs."""

    name: str
    flops: int
    bytes: int
    dtype: Optional[torch.dtype] = None


@dataclass
class Trace:
    """The ops of one call and the batch rows it processed."""

    ops: list = field(default_factory=list)
    rows: int = 1

    @property
    def flops(self) -> int:
        return sum(op.flops for op in self.ops)

    @property
    def bytes(self) -> int:
        return sum(op.bytes for op in self.ops)

    def seconds(self, gpu: dict) -> float:
        """Roofline time: sum over the ops of max(FLOPs / peak, bytes / bandwidth)."""
        return sum(op_seconds(op, gpu) for op in self.ops)

    def by_name(self) -> dict:
        """``{op name: (count, FLOPs, bytes)}``."""
        out: dict = {}
        for op in self.ops:
            n, f, b = out.get(op.name, (0, 0, 0))
            out[op.name] = (n + 1, f + op.flops, b + op.bytes)
        return out


def op_seconds(op: Op, gpu: dict) -> float:
    """max(FLOPs / peak, bytes / bandwidth); peak bf16 for 16-bit ops, TF32 for float32 ones."""
    peak = gpu["bf16"] if op.dtype in (torch.bfloat16, torch.float16) else gpu["tf32"]
    return max(op.flops / (peak * 1e12), op.bytes / (gpu["bandwidth"] * 1e12))


def covered_bytes(t: torch.Tensor) -> int:
    """The bytes of memory a tensor covers: its size over the dimensions with a nonzero stride
    (a broadcast dimension, stride 0, reads the same memory again)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size() if t.numel() else 0


def _tensors(tree: Any) -> list:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


#: ops that move no data: allocations without a write, and reshapes that alias their input
#: without being declared views (``_unsafe_view`` reinterprets a fresh copy's memory)
_FREE = {aten.empty, aten.empty_strided, aten.empty_like, aten.new_empty, aten.new_empty_strided, aten._unsafe_view,
         aten.alias, aten.detach}


class OpCounter(TorchDispatchMode):
    """Records an :class:`Op` for every aten op (module docstring); ``paused()`` stops recording."""

    def __init__(self):
        super().__init__()
        self.ops: list = []
        self._paused = 0

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def record(self, name: str, flops: int, nbytes: int, dtype: Optional[torch.dtype]) -> None:
        if not self._paused:
            self.ops.append(Op(name, int(flops), int(nbytes), dtype))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in flop_registry and not self._paused:
            # as FlopCounterMode: an op without a formula is counted through its decomposition
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if self._paused:
            return out
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        inputs = _tensors((args, kwargs))
        if func.is_view or packet in _FREE:
            nbytes = 0
        elif packet is aten.copy_:
            nbytes = covered_bytes(args[0]) + covered_bytes(args[1])
        elif packet in (aten.embedding, aten.index_select):
            nbytes = 2 * sum(covered_bytes(o) for o in _tensors(out)) + covered_bytes(args[1 if packet is aten.embedding else 2])
        else:
            nbytes = sum(covered_bytes(t) for t in inputs) + sum(covered_bytes(o) for o in _tensors(out))
        dtype = inputs[0].dtype if flops and inputs else None
        self.record(str(packet).split(".")[-1], flops, nbytes, dtype)
        return out


def attention_is_fused(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None) -> bool:
    """Whether a GPU runs this ``scaled_dot_product_attention`` call with a fused kernel (module
    docstring): q, k and v each contiguous in the last dimension, no mask, a head dimension that
    is a multiple of 8 and at most 256."""
    d = q.shape[-1]
    return attn_mask is None and all(x.stride(-1) == 1 for x in (q, k, v)) and d % 8 == 0 and d <= 256


_LOW_PRECISION = {F.linear, torch.conv1d, torch.conv2d, torch.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                  F.conv_transpose3d, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm, torch.bmm,
                  torch.addmm, torch.baddbmm, torch.einsum, F.scaled_dot_product_attention}
_FULL_PRECISION = {F.layer_norm, torch.layer_norm, F.group_norm, torch.group_norm}


class FunctionLevel(TorchFunctionMode):
    """Attention counted as the GPU runs it (``fused=False``: always the math path, as it ran
    before the SideNet's attention was laid out for the fused kernels), and (``autocast``) CUDA's
    autocast cast rules."""

    def __init__(self, counter: OpCounter, autocast: Optional[torch.dtype] = None, fused: bool = True):
        super().__init__()
        self.counter, self.autocast, self.fused = counter, autocast, fused

    def _cast(self, tree: Any, to: torch.dtype, source: tuple) -> Any:
        return tree_map(lambda x: x.to(to) if isinstance(x, torch.Tensor) and x.dtype in source else x, tree)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.autocast is not None and func in _LOW_PRECISION:
            args, kwargs = self._cast((args, kwargs), self.autocast, (torch.float32,))
        elif self.autocast is not None and func in _FULL_PRECISION:
            args, kwargs = self._cast((args, kwargs), torch.float32, (torch.bfloat16, torch.float16))
        if func is F.scaled_dot_product_attention:
            return self.attention(*args, **kwargs)
        return func(*args, **kwargs)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: Any = None,
                  dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                  enable_gqa: bool = False) -> torch.Tensor:
        if not (self.fused and attention_is_fused(q, k, v, attn_mask)):
            return aten._scaled_dot_product_attention_math(q, k, v, attn_mask, dropout_p, is_causal, scale=scale)[0]
        with self.counter.paused():
            out = torch.empty((*q.shape[:-1], v.shape[-1]), dtype=q.dtype, device=q.device)
        nbytes = sum(covered_bytes(x) for x in (q, k, v, out))
        self.counter.record("attention (fused)", sdpa_flop_count(q.shape, k.shape, v.shape), nbytes, q.dtype)
        return out


def trace(fn: Callable[[], Any], rows: int, autocast: Optional[torch.dtype] = None, fused: bool = True) -> Trace:
    """The ops of ``fn()`` (run without gradients) and the rows it processes."""
    counter = OpCounter()
    with torch.no_grad(), counter, FunctionLevel(counter, autocast, fused):
        fn()
    return Trace(counter.ops, rows)


# ---------------------------------------------------------------------------------------------
# the models and the calls of a solve


@dataclass
class Calls:
    """The calls of one solve: the guided flag of every backbone call and the offsets of every
    perception call, as the core made them."""

    backbone: list
    perception: list

    def rows(self) -> tuple[int, int]:
        """Backbone rows and SideNet rows per image."""
        return sum(2 if g else 1 for g in self.backbone), sum(self.perception)


def solve_calls(rule: str, nfe: int, guidance_interval: Optional[tuple]) -> Calls:
    """Run ``baquad.solve`` (BA-solver, ``rule``, scheme B, a uniform grid of ``nfe`` calls) on a
    one-number state with a stub field and perception that record the calls; a backbone call at
    time t is guided when ``guidance_interval`` holds t."""
    times, offsets = [], []

    class Stub(Perception):
        def __call__(self, x, v, t, offs, history=()):
            offsets.append(len(offs))
            return np.stack([v] * len(offs))

    def field(t: float, x: np.ndarray) -> np.ndarray:
        times.append(t)
        return np.zeros_like(x)

    ts = nfe_grid("ba-solver", nfe, "uniform", rule=rule)
    baquad.solve(field, np.zeros(1), ts, rule=rule, perception=Stub(), check_finite=False)
    low, high = guidance_interval if guidance_interval else (math.inf, -math.inf)
    return Calls([low <= t <= high for t in times], offsets)


@dataclass
class Setup:
    """A backbone and the SideNets to compare, built on the meta device: ``sidenets`` maps a
    name to (SideNet, attention counted as fused when the layout allows it)."""

    backbone: GuidedSiT
    sidenets: dict
    state_shape: tuple
    num_classes: int


def build_setup(quick: bool, resolution: int) -> Setup:
    with torch.device("meta"):
        if quick:
            sit = SiT(tiny_sit_config(input_size=8), zero_init=False)
            small = dict(base_channels=16, time_embed_dim=32, num_heads=2, res_blocks=1)
            nets = {design: build_sidenet(paper_sidenet_config(num_classes=10, guidance=True, design=design, **small))
                    for design in ("table4", "patch")}
        else:
            sit = SiT(sit_config("SiT-XL/2", resolution), zero_init=False)
            nets = {design: build_sidenet(paper_sidenet_config(resolution=resolution, guidance=True, design=design))
                    for design in ("table4", "patch")}
    old, new = nets.values()
    sidenets = {"Table 4, attention as before": (old, False), "Table 4": (old, True), "patch": (new, True)}
    c = sit.config
    low, high = DEFAULT_GUIDANCE_INTERVAL
    return Setup(GuidedSiT(sit, low, high, tf32=None), sidenets, (c.in_channels, c.input_size, c.input_size),
                 c.num_classes)


def backbone_trace(setup: Setup, batch: int, guided: bool, guidance_scale: float, precision: str) -> Trace:
    x = torch.empty((batch, *setup.state_shape), device="meta")
    labels = torch.empty(batch, dtype=torch.long, device="meta")
    t = 0.5 * (DEFAULT_GUIDANCE_INTERVAL[0] + DEFAULT_GUIDANCE_INTERVAL[1]) if guided else 0.95
    scale = guidance_scale if guided else None
    return trace(lambda: setup.backbone(t, x, labels=labels, guidance_scale=scale), batch, _autocast(precision))


def sidenet_trace(sidenet: torch.nn.Module, setup: Setup, batch: int, m: int, guidance_scale: float,
                  precision: str, fused: bool = True) -> Trace:
    """One ``NeuralPerception`` call with ``m`` offsets on ``batch`` states (m batch rows)."""
    x = torch.empty((batch, *setup.state_shape), device="meta")
    labels = torch.empty(batch, dtype=torch.long, device="meta")
    perception = NeuralPerception(sidenet, labels=labels, guidance_scale=guidance_scale)
    offsets = tuple(-0.1 * (k + 1) / m for k in range(m))
    return trace(lambda: perception(x, x, 0.5, offsets), m * batch, _autocast(precision), fused)


def _autocast(precision: str) -> Optional[torch.dtype]:
    return torch.bfloat16 if precision == "bf16" else None


# ---------------------------------------------------------------------------------------------
# the report


def _g(x: float) -> str:
    return f"{x / 1e9:.3g}"


def _mib(x: float) -> str:
    return f"{x / 2**20:.3g}"


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def parse_args(argv: Optional[Sequence[str]] = None) -> Any:
    p = ArgumentParser(prog="python -m analysis.cost_model", description=__doc__.splitlines()[0])
    p.add_argument("--gpu", choices=sorted(GPUS), action="append", default=None,
                   help="GPU preset(s) for the roofline (default: all); repeat for several")
    p.add_argument("--peak-tflops", type=positive_float, default=None,
                   help="a custom GPU: its dense bf16 tensor-core TFLOP/s (with --bandwidth-tbs)")
    p.add_argument("--tf32-tflops", type=positive_float, default=None,
                   help="the custom GPU's dense TF32 TFLOP/s (default: half of --peak-tflops)")
    p.add_argument("--bandwidth-tbs", type=positive_float, default=None, help="the custom GPU's memory bandwidth, TB/s")
    p.add_argument("--batch", type=positive_int, default=256, help="images per sampling batch (default 256)")
    p.add_argument("--nfe", type=positive_int, default=10, help="backbone calls per image (default 10)")
    p.add_argument("--rule", default="gauss-lobatto-4", help="BA-solver's quadrature rule (default gauss-lobatto-4)")
    p.add_argument("--guidance-scale", type=positive_float, default=2.0, help="guided rows: scale (default 2)")
    p.add_argument("--resolution", type=int, choices=(256, 512), default=256, help="SiT-XL/2's resolution (default 256)")
    p.add_argument("--quick", action="store_true", help="tiny SiT and SideNets (smoke run; writes under runs/quick)")
    p.add_argument("--out", default=None, help="directory for cost_model.md (default analysis/figures)")
    args = p.parse_args(argv)
    if (args.peak_tflops is None) != (args.bandwidth_tbs is None):
        p.error("--peak-tflops and --bandwidth-tbs: give both for a custom GPU (or neither, for the presets)")
    if args.tf32_tflops is not None and args.peak_tflops is None:
        p.error("--tf32-tflops: only with --peak-tflops and --bandwidth-tbs (a custom GPU)")
    try:
        baquad.rules.get_rule(args.rule).check_unit_interval("rule")
    except (ValueError, TypeError) as err:
        p.error(f"--rule: {err}")
    resolve_out(args)
    return args


def gpus_of(args: Any) -> list:
    if args.peak_tflops is not None:
        return [dict(name=f"custom ({args.peak_tflops:g} TFLOP/s bf16, {args.bandwidth_tbs:g} TB/s)",
                     bf16=args.peak_tflops, tf32=args.tf32_tflops or args.peak_tflops / 2, bandwidth=args.bandwidth_tbs)]
    return [GPUS[k] for k in (args.gpu or sorted(GPUS))]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    batch = 2 if args.quick else args.batch
    setup = build_setup(args.quick, args.resolution)
    calls = {g: solve_calls(args.rule, args.nfe, DEFAULT_GUIDANCE_INTERVAL if g else None) for g in (False, True)}
    ms = sorted(set(calls[False].perception))
    traces: dict = {}
    for precision in PRECISIONS:
        for guided in (False, True):
            traces["backbone", guided, precision] = backbone_trace(setup, batch, guided, args.guidance_scale, precision)
        for name, (net, fused) in setup.sidenets.items():
            for m in ms:
                traces[name, m, precision] = sidenet_trace(net, setup, batch, m, args.guidance_scale, precision, fused)
    rows_per_interval = max(ms) + min(ms) if len(ms) > 1 else ms[0]  # a bi-anchor interval: forward + backward
    lines = [f"# {command('analysis.cost_model', argv)}", ""]
    say = lambda text="": (print(text), lines.append(text))

    backbone_name = "tiny SiT" if args.quick else f"SiT-XL/2 {args.resolution} px"
    say(f"Backbone {backbone_name}: {count_parameters(setup.backbone):,} parameters "
        f"({count_parameters(setup.backbone) - sum(p.numel() for p in setup.backbone.model.projectors.parameters()):,} "
        f"without REPA's projector heads, which sampling does not run); states {setup.state_shape}; batch {batch}; "
        f"{args.rule}, scheme B, {args.nfe} NFE, guidance {args.guidance_scale:g} on t in {DEFAULT_GUIDANCE_INTERVAL}.")
    say()
    for name, (net, fused) in setup.sidenets.items():
        how = "attention fused where the layout allows" if fused else "every attention counted on the math path, " \
            "as before q, k, v were laid out for the fused kernels"
        say(f"- SideNet {name}: {count_parameters(net):,} parameters ({how}); `{net.config()}`")
    say()
    rows = [["backbone (per image)", "", *[calls[g].rows()[0] for g in (False, True)]],
            ["SideNet (per image)", "", *[calls[g].rows()[1] for g in (False, True)]],
            ["SideNet per interval", f"forward {max(ms)} + backward {min(ms)}" if len(ms) > 1 else f"{ms[0]}",
             rows_per_interval, rows_per_interval]]
    say("Rows per sampling step (counted by running baquad.solve with stubs): the forward probe asks for every "
        "node c > 0 of the rule, the backward refinement for 1/2 <= c < 1, the last interval is single-anchor.")
    say()
    say(markdown_table(["rows", "why", "unguided", "guided"], rows, "llrr"))
    say()

    table = []
    for precision in PRECISIONS:
        bb = traces["backbone", False, precision]
        table.append([backbone_name, precision, _g(bb.flops / bb.rows), _mib(bb.bytes / bb.rows), "", ""])
        for name in setup.sidenets:
            tr = traces[name, max(ms), precision]
            per_row_f, per_row_b = tr.flops / tr.rows, tr.bytes / tr.rows
            table.append([name, precision, _g(per_row_f), _mib(per_row_b),
                          _pct(rows_per_interval * per_row_f / (bb.flops / bb.rows)),
                          _pct(rows_per_interval * per_row_b / (bb.bytes / bb.rows))])
    say(f"Per row (one image's state at one offset; the SideNet's call of {max(ms)} offsets), and a SideNet's interval "
        f"({rows_per_interval} rows) over one unguided backbone call (bars for the patch design: FLOPs at most 5%, "
        "bytes at most 10%):")
    say()
    say(markdown_table(["network", "precision", "GFLOP / row", "MiB / row", "interval FLOPs / backbone call",
                        "interval bytes / backbone call"], table, "llrrrr"))
    say()

    shares = []
    for gpu in gpus_of(args):
        for precision in PRECISIONS:
            for guided in (False, True):
                c = calls[guided]
                bb_s = sum(traces["backbone", g, precision].seconds(gpu) for g in c.backbone)
                for name in setup.sidenets:
                    side_s = sum(traces[name, m, precision].seconds(gpu) for m in c.perception)
                    shares.append([gpu["name"], precision, "yes" if guided else "no", name,
                                   f"{1e3 * bb_s / batch:.3g}", f"{1e3 * side_s / batch:.3g}",
                                   _pct(side_s / (bb_s + side_s)), f"{bb_s / (bb_s + side_s):.3f}"])
    say("Predicted time of one solve per image (roofline; ms), the SideNet's share of BA-solver's time, and "
        "BA-solver's images per second over Euler's at the same NFE (Euler: the backbone calls alone):")
    say()
    say(markdown_table(["GPU", "precision", "guided", "SideNet", "backbone ms", "SideNet ms", "SideNet share",
                        "BA / Euler img/s"], shares, "llllrrrr"))
    say()

    top = []
    for name in setup.sidenets:
        tr = traces[name, max(ms), "bf16"]
        ops = sorted(tr.by_name().items(), key=lambda kv: -kv[1][2])[:6]
        top += [[name, op, n, _g(f / tr.rows), _mib(b / tr.rows)] for op, (n, f, b) in ops]
    say("Where a SideNet call's bytes go (bf16, per row, the six largest ops):")
    say()
    say(markdown_table(["SideNet", "aten op", "calls", "GFLOP / row", "MiB / row"], top, "llrrr"))
    say()
    say(f"counted in {time.perf_counter() - start:.1f} s on the meta device")
    _, md = output_paths(args.out, "cost_model")
    atomic_write(md, ("\n".join(lines) + "\n").encode())
    print(f"wrote {md}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
