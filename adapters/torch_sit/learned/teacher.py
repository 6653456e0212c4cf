"""Teacher endpoint sets: noises, their conditioning and their tight solutions at t = 0.

    python -m adapters.torch_sit.learned.teacher --backbone digits-sit --guidance-scale 1.5 \\
        --n 1000 --seed 1 --role train --out runs/teachers/digits-train.safetensors

A set holds ``n`` noises ``z_i`` (standard normal, drawn in float64 from a torch generator seeded
by ``seed``, stored in ``dtype``), the labels ``i mod num_classes`` of a class-conditional backbone
(every class equally often, up to one) with the guidance scale, and the solutions ``x_i`` at
t = 0 of the generation ODE from ``z_i`` at t = 1: scipy's DOP853
(:func:`baquad.reference.reference_solve`) at ``rtol = atol`` (1e-7 by default), with the network
in float64 where it runs in float64 (its floating weights are cast for the solve and cast back
after; a network that refuses float64 runs in its own dtype, and the header says which), in
chunks of ``chunk`` samples (DOP853's step control then adapts to each chunk).

Every learned solver here trains on such a set (docs/learned-solvers.md). Its ROLE keeps the
numbers honest: ``"train"`` sets are fitted, ``"validation"`` sets choose (they are scored during
training), ``"score"`` sets are held out for the reported errors; a trainer refuses a score set,
and a set built for another backbone or guidance scale (:meth:`TeacherSet.require`).

The file is a baquad safetensors file (:mod:`adapters.torch_sit.files`: atomic, hashed) with the
tensors ``noise``, ``target`` and, for a class-conditional backbone, ``labels``; its header
(``format: "baquad-teacher-set"``) names the backbone (:func:`backbone_identity`: its name, state
shape, classes, settings and a SHA-256 of its weights, or of an analytic flow's parameters), the
guidance scale, seed, n, tolerances, chunk, dtype, role, the network's dtype and the wall time.

Cached and resumable: building a set whose file exists loads it when every setting matches (and
refuses, naming the differences, when one does not); the chunks already solved are kept in
``<out>.parts/`` while the set is being built, so a killed build resumes where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch

from baquad.reference import reference_solve

from ...commandline import HelpFormatter, json_object
from ..backbones import Backbone, backbone_names
from ..files import InvalidFile, atomic_write, content_hash, read_header, read_tensors, serialise
from ..sidenet.train import backbone_from_flag

__all__ = ["TeacherSet", "ROLES", "backbone_identity", "build_teacher", "load_teacher", "add_backbone_flags",
           "backbone_from_args", "build_parser", "main"]

FORMAT = "baquad-teacher-set"
ROLES = ("train", "validation", "score")
DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: the header fields that define a set; building again with the same ones loads the file
SETTINGS = ("role", "backbone", "guidance_scale", "seed", "n", "rtol", "atol", "chunk", "dtype")


def _json(value: Any) -> Any:
    """``value`` as JSON reads it back (tuples as lists), or None when JSON cannot hold it."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def backbone_identity(bb: Backbone) -> dict:
    """What names a backbone in teacher sets and checkpoints: its name, state shape, classes, the
    JSON-able settings of ``bb.extra`` (e.g. a guidance interval), and a SHA-256 of its weights
    (``weights_sha256``, over the module's state dict as :func:`adapters.torch_sit.files.content_hash`
    hashes tensors) or, for an analytic flow, of the flow's parameter arrays (``flow_sha256``)."""
    ident: dict = {"name": bb.name, "state_shape": list(bb.state_shape), "num_classes": bb.num_classes}
    settings = {k: v for k, v in ((k, _json(v)) for k, v in sorted(bb.extra.items())) if v is not None}
    if settings:
        ident["settings"] = settings
    if bb.module is not None:
        ident["weights_sha256"] = content_hash(json.dumps({"backbone": bb.name}), bb.module.state_dict())
    flow = bb.extra.get("flow")
    if flow is not None:
        h = hashlib.sha256()
        for k, v in sorted(vars(flow).items()):
            if isinstance(v, np.ndarray):
                h.update(k.encode() + str(v.dtype).encode() + str(v.shape).encode() + np.ascontiguousarray(v).tobytes())
        ident["flow_sha256"] = h.hexdigest()
    return ident


@dataclass
class TeacherSet:
    """A teacher endpoint set (module docstring). ``meta`` is the file's header."""

    noise: torch.Tensor
    target: torch.Tensor
    labels: Optional[torch.Tensor]
    meta: dict
    path: Optional[Path] = None

    def __len__(self) -> int:
        return int(self.noise.shape[0])

    @property
    def role(self) -> str:
        return self.meta["role"]

    @property
    def guidance_scale(self) -> Optional[float]:
        return self.meta["guidance_scale"]

    def settings(self) -> dict:
        """The settings that define the set (:data:`SETTINGS`), for checkpoints."""
        return {k: self.meta[k] for k in SETTINGS}

    def cond(self, index: Optional[torch.Tensor] = None, device: Any = None) -> dict:
        """The backbone's conditioning keywords for the samples ``index`` (all when None):
        ``labels`` of a class-conditional backbone and ``guidance_scale`` when set."""
        cond: dict = {}
        if self.labels is not None:
            labels = self.labels if index is None else self.labels[index]
            cond["labels"] = labels.to(device) if device is not None else labels
        if self.guidance_scale is not None:
            cond["guidance_scale"] = self.guidance_scale
        return cond

    def _name(self) -> str:
        return f"teacher set {self.path}" if self.path else "the teacher set"

    def require(self, backbone: dict, guidance_scale: Optional[float], roles: Sequence[str], what: str) -> None:
        """Refuse the set for ``what`` (a flag, e.g. ``--teacher``) unless its role is one of
        ``roles`` and it was built for ``backbone`` (a :func:`backbone_identity`) at
        ``guidance_scale``; each message names both sides and the fix."""
        if self.role not in roles:
            held = " (held out for the reported errors; never trained on)" if self.role == "score" else ""
            raise ValueError(f"{what}: {self._name()} has role {self.role!r}{held}; this needs a "
                             f"{' or '.join(map(repr, roles))} set: build one with python -m "
                             f"adapters.torch_sit.learned.teacher --role {roles[0]} ...")
        if self.meta["backbone"] != _json(backbone):
            diff = sorted(k for k in set(backbone) | set(self.meta["backbone"])
                          if _json(backbone.get(k)) != self.meta["backbone"].get(k))
            raise ValueError(f"{what}: {self._name()} was built for backbone {self.meta['backbone']['name']!r} ("
                             + ", ".join(f"{k}={self.meta['backbone'].get(k)!r}" for k in diff) + f"), not for "
                             f"backbone {backbone['name']!r} (" + ", ".join(f"{k}={backbone.get(k)!r}" for k in diff)
                             + "); build a teacher set for this backbone")
        if self.guidance_scale != guidance_scale:
            raise ValueError(f"{what}: {self._name()} was built with guidance scale {self.guidance_scale}, this run "
                             f"uses {guidance_scale}; build a set at guidance scale {guidance_scale} or pass "
                             f"--guidance-scale {self.guidance_scale}")


def teacher_noise(n: int, seed: int, shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``n`` standard normal states of ``shape``, drawn in float64 from a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((n, *shape), generator=gen, dtype=torch.float64).to(dtype)


@contextlib.contextmanager
def _float64_network(bb: Backbone) -> Iterator[None]:
    """The backbone's floating weights in float64 for the block, cast back to their own dtypes after."""
    module = bb.module
    if module is None:
        yield
        return
    tensors = lambda: itertools.chain(module.named_parameters(), module.named_buffers())  # noqa: E731
    dtypes = {name: t.dtype for name, t in tensors()}
    module.to(torch.float64)
    try:
        yield
    finally:
        for name, t in tensors():
            if t.dtype != dtypes[name]:
                t.data = t.data.to(dtypes[name])


def _runs_in_float64(bb: Backbone, cond: dict, device: Any) -> bool:
    """Whether the backbone, its weights cast by :func:`_float64_network`, returns finite float64
    velocities for a float64 state (one probe call of two samples)."""
    x = torch.zeros((2, *bb.state_shape), dtype=torch.float64, device=device)
    probe = {k: v[:2] if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
    try:
        with _float64_network(bb), torch.no_grad():
            out = bb.fn(torch.full((2,), 0.5, dtype=torch.float64, device=device), x, **probe)
    except (RuntimeError, TypeError, ValueError):
        return False
    return isinstance(out, torch.Tensor) and out.dtype == torch.float64 and bool(torch.isfinite(out).all())


def _weights_dtype(bb: Backbone) -> torch.dtype:
    """The dtype of the backbone's first floating weight (float32 for an analytic field)."""
    tensors = itertools.chain(bb.module.parameters(), bb.module.buffers()) if bb.module is not None else ()
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _solve_chunk(bb: Backbone, noise: torch.Tensor, cond: dict, rtol: float, atol: float, net_dtype: torch.dtype,
                 device: Any) -> torch.Tensor:
    x0 = noise.to(device=device, dtype=net_dtype)
    field = bb.vfield(**cond)
    with torch.no_grad():
        x = reference_solve(field, x0, [1.0, 0.0], rtol=rtol, atol=atol, field_dtype="input")[-1]
    return x.to("cpu", noise.dtype)


def _parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _load_part(path: Path, settings: dict) -> Optional[torch.Tensor]:
    """A solved chunk written by an earlier build, or None; refused when it belongs to another build."""
    if not path.is_file():
        return None
    header = read_header(path)
    if header.meta.get("settings") != settings:
        raise ValueError(f"{path}: a chunk of another teacher build (settings {header.meta.get('settings')}, this "
                         f"build {settings}); remove {path.parent} or build into another --out")
    return read_tensors(header)["target"]


def build_teacher(backbone: Backbone, out: "str | Path", *, n: int, seed: int, role: str,
                  guidance_scale: Optional[float] = None, rtol: float = 1e-7, chunk: int = 250,
                  dtype: str = "float32", device: Any = "cpu", progress: bool = True,
                  log: Callable[..., None] = print) -> TeacherSet:
    """Build (or load, when ``out`` holds the same set) a teacher set and write it to ``out``
    (module docstring).

    Raises:
        ValueError: naming the argument: ``role`` not one of :data:`ROLES`, ``n``/``chunk`` < 1,
            ``rtol`` not in (0, 1), an unknown ``dtype``, a guidance scale for a backbone without
            classes; ``out`` holding a set with other settings (each differing one named).
    """
    if role not in ROLES:
        raise ValueError(f"role: one of {', '.join(ROLES)}, got {role!r}")
    for name, value in (("n", n), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {value!r}")
    if not (isinstance(rtol, float) and 0.0 < rtol < 1.0):
        raise ValueError(f"rtol: must be a float in (0, 1), got {rtol!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: one of {', '.join(DTYPES)}, got {dtype!r}")
    if guidance_scale is not None and backbone.num_classes is None:
        raise ValueError(f"guidance_scale: backbone {backbone.name!r} is not class-conditional, so it has no guidance; "
                         "leave it out (None)")
    out = Path(out)
    ident = backbone_identity(backbone)
    settings = {"role": role, "backbone": _json(ident), "guidance_scale": None if guidance_scale is None else
                float(guidance_scale), "seed": int(seed), "n": n, "rtol": rtol, "atol": rtol, "chunk": chunk,
                "dtype": dtype}
    if out.exists():
        have = load_teacher(out)
        diff = [k for k in SETTINGS if have.meta.get(k) != settings[k]]
        if diff:
            raise ValueError(f"out: {out} holds a teacher set with other settings ("
                             + "; ".join(f"{k}: {have.meta.get(k)!r} there, {settings[k]!r} asked" for k in diff)
                             + "); give another --out, or remove the file to build this one")
        log(f"teacher set {out}: already built with these settings; loaded")
        return have

    noise = teacher_noise(n, seed, backbone.state_shape, DTYPES[dtype])
    labels = None if backbone.num_classes is None else torch.arange(n, dtype=torch.int64) % backbone.num_classes
    base = TeacherSet(noise, noise, labels, {**settings})
    parts = _parts_dir(out)
    parts.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    targets = []
    in_float64 = _runs_in_float64(backbone, base.cond(torch.arange(min(2, n)), device), device)
    net_dtype = torch.float64 if in_float64 else _weights_dtype(backbone)
    if not in_float64:
        log(f"backbone {backbone.name!r} does not run in float64; the teacher solve uses its {net_dtype}")
    with _float64_network(backbone) if in_float64 else contextlib.nullcontext():
        with tqdm(total=n, desc=f"teacher (DOP853, rtol {rtol:g})", file=sys.stderr,
                  disable=None if progress else True) as bar:
            for k, lo in enumerate(range(0, n, chunk)):
                part = parts / f"chunk-{k:05d}.safetensors"
                target = _load_part(part, settings)
                if target is None:
                    index = torch.arange(lo, min(lo + chunk, n))
                    target = _solve_chunk(backbone, noise[index], base.cond(index, device), rtol, rtol, net_dtype,
                                          device)
                    atomic_write(part, serialise({"target": target.contiguous()}, {"settings": settings}))
                targets.append(target)
                bar.update(target.shape[0])
    wall = time.perf_counter() - t0
    meta = {"format": FORMAT, **settings, "network_dtype": str(net_dtype).replace("torch.", ""), "method": "DOP853",
            "labels": None if labels is None else "i mod num_classes", "wall_time_s": wall}
    tensors = {"noise": noise, "target": torch.cat(targets)}
    if labels is not None:
        tensors["labels"] = labels
    atomic_write(out, serialise(tensors, meta))
    shutil.rmtree(parts)
    log(f"teacher set {out}: {n} DOP853 solves of {backbone.name!r} (rtol {rtol:g}, network {meta['network_dtype']}) "
        f"in {wall:.1f} s, role {role!r}")
    return load_teacher(out)


def load_teacher(path: "str | Path") -> TeacherSet:
    """Read a teacher set (hash-checked, no pickle), with its tensors checked against its header.

    Raises:
        FileNotFoundError: no such file.
        InvalidFile: not a teacher set, or tensors that do not match the header; naming the file.
    """
    header = read_header(path)
    meta = header.meta
    if meta.get("format") != FORMAT:
        raise InvalidFile(f"{header.path}: not a teacher set (format {meta.get('format')!r}; build one with "
                          "python -m adapters.torch_sit.learned.teacher)")
    missing = [k for k in SETTINGS if k not in meta]
    if missing or meta["role"] not in ROLES:
        raise InvalidFile(f"{header.path}: the header lacks {missing} or has an unknown role {meta.get('role')!r}")
    t = read_tensors(header)
    n, shape = meta["n"], tuple(meta["backbone"]["state_shape"])
    want = {"noise": (n, *shape), "target": (n, *shape)}
    if meta["backbone"].get("num_classes") is not None:
        want["labels"] = (n,)
    got = {k: tuple(v.shape) for k, v in t.items()}
    if got != want:
        raise InvalidFile(f"{header.path}: holds tensors {got}; its header describes {want}")
    for k in ("noise", "target"):
        if not bool(torch.isfinite(t[k]).all()):
            raise InvalidFile(f"{header.path}: {k} holds NaN or inf")
    return TeacherSet(t["noise"], t["target"], t.get("labels"), meta, header.path)


# ----------------------------------------------------------------------------------------
# command line: the backbone flags every learned-solver command shares


def add_backbone_flags(p: argparse.ArgumentParser) -> None:
    """``--backbone`` (a registered name or ``module:factory``), ``--ckpt``, ``--backbone-kwargs``,
    ``--guidance-scale``."""
    p.add_argument("--backbone", required=True,
                   help=f"registered backbone ({', '.join(backbone_names())}) or module:factory returning a Backbone")
    p.add_argument("--ckpt", default=None, help="the backbone's weights, for a backbone that takes them")
    p.add_argument("--backbone-kwargs", type=json_object, default=None,
                   help="other options of the backbone's factory, as a JSON object")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="classifier-free guidance scale of a class-conditional backbone (default: none)")


def backbone_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Backbone:
    """The backbone the flags of :func:`add_backbone_flags` describe (bad values through
    ``parser.error``)."""
    kwargs = dict(args.backbone_kwargs or {})
    if args.ckpt is not None:
        kwargs["ckpt"] = args.ckpt
    return backbone_from_flag(args.backbone, parser, **kwargs)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adapters.torch_sit.learned.teacher", formatter_class=HelpFormatter,
                                description=__doc__.split("\n\n")[0])
    add_backbone_flags(p)
    p.add_argument("--n", type=_positive_int, required=True, help="number of noises")
    p.add_argument("--seed", type=int, required=True, help="seed of the noises (use different seeds per role)")
    p.add_argument("--role", choices=ROLES, required=True,
                   help="train: fitted; validation: scored during training; score: held out for reported errors")
    p.add_argument("--out", type=Path, required=True, help="the teacher set's .safetensors file")
    p.add_argument("--rtol", type=float, default=1e-7, help="DOP853 rtol = atol")
    p.add_argument("--chunk", type=_positive_int, default=250, help="samples per DOP853 solve")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="float32", help="dtype of the stored noises and targets")
    p.add_argument("--device", default="cpu", help="torch device of the backbone")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bb = backbone_from_args(args, parser).to(args.device)
    try:
        build_teacher(bb, args.out, n=args.n, seed=args.seed, role=args.role, guidance_scale=args.guidance_scale,
                      rtol=args.rtol, chunk=args.chunk, dtype=args.dtype, device=args.device,
                      progress=not args.no_progress)
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
