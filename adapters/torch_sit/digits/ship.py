"""Put the learned solvers of the digits demo into the package (``digits/weights``, with their
SHA-256 in ``SHA256SUMS``).

    python -m adapters.torch_sit.digits.ship --runs runs/digits --chain-seconds 430

Reads, under ``--runs``, the output directories of the training commands (docs/digits.md):
``ba/`` (``python -m adapters.torch_sit.learned.ba``: the SideNet trained end to end, shipped as
``digits_sidenet.safetensors``), ``bns-<n>/`` (``bns.npz`` per NFE, shipped as
``digits_bns_<n>.npz``), ``ld3-unipc-<n>/`` and ``ld3-euler-<n>/`` (``grid.json`` per NFE, merged
into ``digits_ld3_unipc.json`` and ``digits_ld3_euler.json``). The chain-trained SideNet the
end-to-end run started from (``--chain``, default the shipped ``digits_sidenet_chain``, else the
shipped ``digits_sidenet`` when it carries no learned steps) is shipped as ``digits_sidenet_chain.safetensors`` with its
training time (``--chain-seconds``) recorded. Every file's training wall time comes from its
run's ``summary.json`` and is recorded in the shipped file, which the demo's table reports.

Everything is read and checked before anything is written; each file is written atomically.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional, Sequence

from ...commandline import HelpFormatter
from ..files import sha256_file
from ..sidenet.checkpoint import load_sidenet, save_sidenet
from .model import shipped_path
from .shipped import WEIGHTS_DIR, record_sum, verified

__all__ = ["ship", "build_parser", "main"]


def _summary_seconds(run: Path) -> float:
    summary = json.loads((run / "summary.json").read_text())
    return float(summary["wall_time_s"])


def ship(runs: Path, chain: Optional[Path], chain_seconds: Optional[float], log=print) -> list[Path]:
    """Assemble the learned files (module docstring); returns the files written."""
    from baquad.solvers.bns import NonStationaryCoefficients
    from baquad.solvers.learned_grid import load_grid, save_grid

    ba_file = runs / "ba" / "sidenet.safetensors"
    if not ba_file.is_file():
        raise ValueError(f"--runs: no {ba_file}; train it with python -m adapters.torch_sit.learned.ba (docs/digits.md)")
    learned = load_sidenet(ba_file)
    if not learned.learned_steps:
        raise ValueError(f"--runs: {ba_file} carries no learned steps; is it the output of adapters.torch_sit.learned.ba?")
    start = learned.file_extra.get("learned_by", {}).get("identity", {}).get("sidenet_sha256")
    # default: the chain-trained SideNet already shipped beside a learned one, else the shipped one
    chain_file = chain or (shipped_path("sidenet-chain") if shipped_path("sidenet-chain").is_file()
                           else shipped_path("sidenet"))
    chain_net = load_sidenet(chain_file)
    if chain_net.learned_steps:
        raise ValueError(f"--chain: {chain_file} is itself trained end to end; pass the chain-trained SideNet")
    # a shipped chain file was re-saved with its training time: it records the file it came from
    chain_sha = chain_net.file_extra.get("shipped_from_sha256") or sha256_file(chain_file)
    if start is not None and start not in (chain_sha, sha256_file(chain_file)):
        raise ValueError(f"--chain: {chain_file} is not the SideNet {ba_file} was trained from (its sha256 differs "
                         "from the one the run records)")
    bns = {}
    for run in sorted(p for p in runs.glob("bns-*") if p.is_dir()):
        m = re.fullmatch(r"bns-(\d+)", run.name)
        if m and (run / "bns.npz").is_file():
            c = NonStationaryCoefficients.load(run / "bns.npz")
            bns[int(m.group(1))] = NonStationaryCoefficients(c.times, c.a, c.b,
                                                            {**c.meta, "wall_time_s": _summary_seconds(run)})
    grids = {}
    for method in ("unipc", "euler"):
        merged = None
        found = (p for p in runs.glob(f"ld3-{method}-*") if p.is_dir())
        for run in sorted(found, key=lambda p: int(p.name.rsplit("-", 1)[1])):
            if not (run / "grid.json").is_file():
                continue
            g = load_grid(run / "grid.json")
            g = type(g)(g.method, g.options, g.grid, {**g.meta, "wall_time_s": _summary_seconds(run)})
            merged = g if merged is None else merged.merged(g)
        if merged is not None:
            grids[method] = merged
    # nothing was written so far; now the files
    written = []
    seconds = chain_seconds if chain_seconds is not None else chain_net.file_extra.get("training_wall_time_s")
    chain_extra = {**chain_net.file_extra, "training_wall_time_s": seconds, "shipped_from_sha256": chain_sha}
    if chain_file.resolve() != shipped_path("sidenet-chain").resolve():
        written.append(save_sidenet(chain_net, shipped_path("sidenet-chain"), extra=chain_extra))
    extra = dict(learned.file_extra)
    extra["learned_by"] = {**extra.get("learned_by", {}), "start_training_s": seconds,
                           "wall_time_s": _summary_seconds(ba_file.parent)}
    written.append(save_sidenet(learned, shipped_path("sidenet"), extra=extra))
    for n, c in bns.items():
        written.append(c.save(shipped_path(f"bns-{n}")))
    for method, g in grids.items():
        written.append(save_grid(shipped_path(f"ld3-{method}"), g))
    for path in written:
        record_sum(path)
    for path in written:
        verified(path)
        log(f"shipped {path.relative_to(WEIGHTS_DIR.parent)}")
    return written


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.torch_sit.digits.ship", formatter_class=HelpFormatter,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, required=True, help="the directory holding ba/, bns-<n>/, ld3-<method>-<n>/")
    p.add_argument("--chain", type=Path, default=None, help="the chain-trained SideNet the ba run started from "
                   "(default: the shipped digits_sidenet_chain.safetensors, else digits_sidenet.safetensors)")
    p.add_argument("--chain-seconds", type=float, default=None, help="its training wall time, recorded in the file")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        ship(args.runs, args.chain, args.chain_seconds)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
