"""The GPU check in one command: the SiT and diffusers checks, and the table of the speed bars.

    python -m analysis.gpu_check              # one H100 (78 GiB) or H200: about 4 minutes
    python -m analysis.gpu_check --tiny       # the same code on tiny models, on the CPU (a smoke run)

It runs :mod:`analysis.gpu_check_sit` (a random-weight SiT-XL/2 at 256 px, batch 256, BA-solver
with Gauss-Lobatto-4, scheme B, 10 NFE against Euler at 10 NFE, unguided and guided at 2 on
t <= 0.7, in fp32/TF32 and in bf16 autocast, with the patch SideNet of ``paper_sidenet_config``;
a guided solve watched for host syncs; the sampling loop captured in a CUDA graph against eager;
chain training at 128 chains, within an H100's memory) and then :mod:`analysis.gpu_check_diffusers`
(SD3-medium and Flux-dev sizes: the share of a sampling step spent in the SD3 ConvSideNet and in
the Flux TokenSideNet; the tiny-pipeline device checks), and prints one table:

- the SideNet's share of BA-solver's sampling time, per precision and guidance (bar: under 5%);
- BA-solver's images per second over Euler's at the same NFE (bar: at least 0.95);
- host syncs inside a guided solve's loop with ``check_finite=False`` (bar: none;
  ``torch.cuda.set_sync_debug_mode("error")`` around the sampler);
- the CUDA-graph-captured sampling loop against eager in float32 (bar: 1e-5 relative);
- the diffusers SideNets' shares of a sampling step and chain training's peak memory (reported).

Each part writes its JSON to ``$OUT`` when ``OUT`` names a directory, and so does this command
(``gpu_check.json``). A part that fails is reported in the table and the other runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import traceback
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from adapters.torch_sit.files import atomic_write

from . import gpu_check_diffusers, gpu_check_sit
from ._common import command, markdown_table, positive_int


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models on the CPU (smoke run)")
    p.add_argument("--device", default=None, help="default: cuda (cpu with --tiny)")
    p.add_argument("--design", choices=("patch", "table4"), default="patch", help="the SiT check's SideNet")
    p.add_argument("--repeats", type=positive_int, default=None, help="timed solves per setting (default 2; 1 with --tiny)")
    p.add_argument("--train-batch", type=positive_int, default=None,
                   help="chains per training iteration (default 128, what an H100's 78 GiB holds; 4 with --tiny)")
    p.add_argument("--no-diffusers", dest="diffusers", action="store_false", help="run the SiT check only")
    return p


def _run(name: str, fn: Any) -> tuple[Optional[dict], Optional[str]]:
    try:
        return fn(), None
    except Exception:  # a check reports what failed and the other runs
        return None, traceback.format_exc()[-2000:]
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def table_rows(sit: Optional[dict], sit_error: Optional[str], diffusers: Optional[dict],
               diffusers_error: Optional[str], tiny: bool = False) -> list[list]:
    """The rows of the bars table: the SiT check's bars, chain training's peak memory and the
    diffusers SideNets' shares (reported without a bar)."""
    mark = {True: "yes", False: "NO", None: "n/a"}
    rows = []
    if sit is None:
        rows.append(["SiT check", "", f"failed: {sit_error.strip().splitlines()[-1] if sit_error else '?'}", "", "NO"])
    else:
        rows += [[b["check"], b["setting"], b["value"], b["bar"], mark[b["ok"]]] for b in sit["bars"]]
        for r in sit["training"]:
            guided = "unguided" if r["guidance_scale"] is None else f"guided {r['guidance_scale']:g}"
            rows.append(["chain training peak memory", f"{r['batch']} chains, {guided}", f"{r['peak_memory_gib']:.1f} GiB",
                         "report", ""])
    if diffusers is not None or diffusers_error is not None:
        for key, what in (("sd3_size_costs", "SD3-medium ConvSideNet (cond_dim 2048)"),
                          ("flux_size_costs", "Flux-dev TokenSideNet (cond_dim 768)")):
            got = (diffusers or {}).get(key) or {"error": diffusers_error or "not run"}
            value = (f"{100 * got['sidenet_share_of_sampling']:.2f}%" if "sidenet_share_of_sampling" in got
                     else f"failed: {str(got.get('error', '?')).strip().splitlines()[-1]}")
            rows.append([f"{what}: SideNet's share of a sampling step", "tiny" if tiny else "1 image, 1024 px", value,
                         "report", ""])
    return rows


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    device = args.device or ("cpu" if args.tiny else "cuda")
    repeats = args.repeats or (1 if args.tiny else 2)
    tiny = ["--tiny"] if args.tiny else []
    sit_argv = tiny + ["--device", device, "--design", args.design, "--repeats", str(repeats), "--iters",
                       str(repeats)] + (["--train-batch", str(args.train_batch)] if args.train_batch else [])
    sit, sit_error = _run("sit", lambda: gpu_check_sit.main(sit_argv))
    diffusers, diffusers_error = (None, None)
    if args.diffusers:
        diffusers, diffusers_error = _run("diffusers", lambda: gpu_check_diffusers.main(
            tiny + ["--device", device, "--repeats", str(repeats + 1)]))
    rows = table_rows(sit, sit_error, diffusers, diffusers_error, args.tiny)
    print()
    print(f"# {command('analysis.gpu_check', argv)}")
    print(f"device: {sit['device'] if sit else device}; total {time.perf_counter() - start:.0f} s")
    print()
    print(markdown_table(["check", "setting", "measured", "bar", "pass"], rows, "lllll"))
    results = dict(sit=sit, sit_error=sit_error, diffusers=diffusers, diffusers_error=diffusers_error,
                   table=rows, total_seconds=time.perf_counter() - start)
    out = os.environ.get("OUT")
    if out:
        atomic_write(Path(out) / "gpu_check.json", (json.dumps(results, indent=1, default=str) + "\n").encode())
    return results


if __name__ == "__main__":
    main()
