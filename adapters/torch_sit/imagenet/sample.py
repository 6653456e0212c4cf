"""Generate N images with any solver at an NFE budget: an ADM ``.npz``, a grid PNG, restartable.

    python -m adapters.torch_sit.imagenet.sample --backbone repa-sit-xl2-256 --ckpt pretrained/last.pt \\
        --vae pretrained/sd-vae-ft-ema --solver ba-solver --sidenet runs/sit-xl2/sidenet.safetensors \\
        --nfe 7 --guidance-scale 2.8 --guidance-high 0.7 --out samples/ba-solver-nfe7
    torchrun --nproc_per_node=8 -m adapters.torch_sit.imagenet.sample ...same flags...

Output directory ``--out``:
    settings.json   what defines the samples (checked on every restart) and run information
    shards/         one ``shard-<j>.safetensors`` per finished micro-batch (removed at the end
                    unless ``--keep-shards``)
    samples.npz     ``arr_0``: uint8 images (N, H, W, 3), the ADM evaluator's input;
                    ``arr_1``: int64 class labels (N,)
    grid.png        the first 64 images, 8 x 8
    summary.json    counts, NFE, wall time of the last session, the settings and their digest,
                    sha256 of samples.npz (written last)

Reproducibility. Sample i depends only on (seed, i): its initial noise (and, with uniform
labels, its class) come from a torch generator seeded with a 64-bit hash of (seed, i)
(``numpy.random.SeedSequence([seed, i])``): noise ``randn(state_shape)`` first, then
``randint(num_classes)``. With ``--labels balanced`` every class appears floor(N/C) or ceil(N/C)
times, label i = perm[i] mod C for a permutation of range(N) drawn from (seed, N). Samples are
solved in fixed micro-batches, j = indices [j m, (j + 1) m) for ``--batch-size`` m, so the
numbers do not depend on how many processes run or on which process runs a batch; micro-batches
are dealt round-robin over the processes. On the same hardware and software the ``.npz`` is
byte-identical whatever the number of processes and however often the run was interrupted
(cuDNN autotuning is switched off; the backbone decides TF32/autocast).

Interruptions. Every finished micro-batch is written atomically as a shard holding its images,
labels, and a header with the settings digest, its index range and a sha256 of its data. A run
killed at any moment and started again with the same command continues: shards are verified
(header, length, checksum) and a missing, truncated or corrupted one is recomputed, never
stitched in; the remaining micro-batches are dealt over the processes of the new run (its
process count may differ). Rank 0 then streams the verified shards into ``samples.npz``
(written to a temporary file and renamed). A restart whose settings differ from
``settings.json`` is refused, naming the differing settings (files such as ``--ckpt``,
``--sidenet`` and ``--vae`` are identified by name, size and sha256).

Every artefact is tied to its settings: ``settings.json`` holds them, every shard's header their
digest, ``summary.json`` both and the sha256 of ``samples.npz``. Before anything is written, every
flag is checked (values, the solver's options, the SideNet against the backbone's states, classes
and guidance) and so is the run directory: other settings in ``settings.json``, or in
``summary.json`` beside a ``samples.npz``, or (with ``settings.json`` missing) in a shard's header
are refused, and so is a ``samples.npz`` that nothing describes. "Nothing to do" needs
``summary.json`` to record these settings and the sha256 of ``samples.npz`` as it is now; a
``samples.npz`` that fails that check is written again. Temporary files of killed writes are
removed only when nobody has written to them for :data:`STALE_TEMP_SECONDS` (another sampler on
the same ``--out`` may be writing the younger ones).

Decoding, as REPA's ``generate.py``: ``img = vae.decode(z / 0.18215).sample`` with diffusers'
``AutoencoderKL`` loaded from a local folder (``--vae``), then ``clamp(255 (img + 1) / 2, 0, 255)``
cast to uint8 by truncation, laid out NHWC. ``--decoder upsample`` is a stand-in for tests and
dry runs without the VAE: RGB = tanh of latent channels 0-2, nearest-upsampled 8x.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from ...commandline import (HelpFormatter, add_dataclass_flags, dataclass_kwargs, flag_field, json_object,
                            load_object)
from ..backbones import Backbone, backbone_names, get_backbone
from ..files import atomic_write, sha256_file
from ..distributed import dist_setup
from .decode import LATENT_SCALE, SDVAEDecoder, UpsampleDecoder, to_uint8
from .npz import NpyInfo, write_npz
from .shards import MicroBatch, ShardInvalid, micro_batches, read_shard, shard_path, shard_settings, write_shard

__all__ = [
    "index_seed",
    "balanced_labels",
    "sample_inputs",
    "file_identity",
    "SettingsMismatch",
    "SampleConfig",
    "sample",
    "build_parser",
    "main",
]

SETTINGS_NAME = "settings.json"
SUMMARY_NAME = "summary.json"
NPZ_NAME = "samples.npz"
_OUT_FILES = (SETTINGS_NAME, SUMMARY_NAME, NPZ_NAME, "grid.png")
#: a temporary file of an atomic write not written to for this long is stale (its writer is dead:
#: a shard is written in one call, samples.npz streamed in blocks of seconds) and is removed
STALE_TEMP_SECONDS = 3600
_SETTINGS_FORMAT = "baquad-sample-run"
_VERSION = 1


class SettingsMismatch(ValueError):
    """A restart asked for samples other than the ones the run directory holds."""


# ------------------------------------------------------------------------ per-index inputs


def index_seed(seed: int, i: int) -> int:
    """The 64-bit seed of sample i: ``SeedSequence([seed, i]).generate_state(1, uint64)[0]``."""
    return int(np.random.SeedSequence([int(seed), int(i)]).generate_state(1, np.uint64)[0])


def balanced_labels(seed: int, num_samples: int, num_classes: int) -> np.ndarray:
    """Class-balanced labels: ``perm[i] mod C`` for a permutation of range(N) seeded by (seed, N)."""
    state = np.random.SeedSequence([int(seed), int(num_samples), 1]).generate_state(1, np.uint64)[0]
    g = torch.Generator().manual_seed(int(state))
    return (torch.randperm(int(num_samples), generator=g) % int(num_classes)).numpy()


def sample_inputs(seed: int, indices: range, state_shape: Sequence[int], num_classes: Optional[int],
                  labels: str = "uniform", num_samples: Optional[int] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``(noise float32 (n, *state_shape), labels int64 (n,) or None)`` for the sample ``indices``
    (module docstring; ``num_samples`` is needed for balanced labels)."""
    noises, ys = [], []
    table = None
    if num_classes and labels == "balanced":
        if num_samples is None:
            raise ValueError("balanced labels need num_samples")
        table = balanced_labels(seed, num_samples, num_classes)
    for i in indices:
        g = torch.Generator().manual_seed(index_seed(seed, i))
        noises.append(torch.randn(tuple(state_shape), generator=g, dtype=torch.float32))
        if num_classes:
            ys.append(int(table[i]) if table is not None else int(torch.randint(0, int(num_classes), (1,), generator=g)))
    y = torch.tensor(ys, dtype=torch.int64) if num_classes else None
    return torch.stack(noises), y


# --------------------------------------------------------------------------------- settings


def file_identity(path: "str | os.PathLike | None") -> Optional[dict]:
    """Name, size and sha256 of a file; for a folder, of its files (hidden ones skipped, such as
    a download cache). None stays None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist")
    files = sorted(p for p in path.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    listing = {str(p.relative_to(path)): sha256_file(p) for p in files}
    return {"name": path.name, "bytes": sum(p.stat().st_size for p in files),
            "sha256": hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()}


def _digest(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _differences(recorded: dict, settings: dict) -> str:
    """``"key: recorded a, requested b; ..."`` for every setting that differs ("" when none)."""
    keys = sorted(set(recorded) | set(settings))
    return "; ".join(f"{k}: recorded {recorded.get(k)!r}, requested {settings.get(k)!r}"
                     for k in keys if recorded.get(k) != settings.get(k))


def _read_json(path: Path) -> tuple[Optional[dict], str]:
    """``(object, "")`` for a JSON object in ``path``; ``(None, why)`` when there is no such file or
    it holds something else."""
    if not path.is_file():
        return None, "is not a regular file" if path.exists() else "is missing"
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, f"is not readable JSON ({err})"
    return (value, "") if isinstance(value, dict) else (None, f"holds a JSON {type(value).__name__}, not an object")


def _recorded_settings(out: Path) -> Optional[dict]:
    """The settings ``out/settings.json`` records; None when there is no such file.

    Raises:
        SettingsMismatch: the file is not a settings record of this command (damaged or foreign).
    """
    path = out / SETTINGS_NAME
    if not path.exists():
        return None
    record, why = _read_json(path)
    if record is not None:
        settings = record.get("settings")
        if record.get("format") != _SETTINGS_FORMAT:
            why = f"its format is {record.get('format')!r}, not {_SETTINGS_FORMAT!r}"
        elif not isinstance(settings, dict) or record.get("digest") != _digest(settings):
            why = "its settings do not match the digest it records (edited or damaged)"
        else:
            return settings
    raise SettingsMismatch(
        f"{path} {why}: it is not a settings record of this command. Move it away (the samples, summary and "
        f"shards in {out} are then checked against the settings requested), or use a new --out directory.")


def _check_run_directory(out: Path, settings: dict, digest: str, say: Callable[[str], None]) -> bool:
    """Rank 0, before anything is written: refuse a run directory that holds work made with other
    settings; True when its ``samples.npz`` is finished for these settings.

    The work is tied to its settings by ``settings.json`` (the full settings), the header of every
    shard (their digest) and ``summary.json`` (the settings and the sha256 of the finished
    ``samples.npz``). Finished means that ``summary.json`` records these settings (or, written by
    an earlier version, none, with ``settings.json`` matching) and the sha256 of ``samples.npz``
    as it is now.

    Raises:
        SettingsMismatch: ``settings.json``, ``summary.json`` (with ``samples.npz``) or, when
            ``settings.json`` is missing, a shard records other settings; ``samples.npz`` without
            ``settings.json`` or a readable ``summary.json``; a damaged or foreign ``settings.json``.
    """
    if not out.is_dir():
        return False
    recorded = _recorded_settings(out)
    if recorded is not None:
        diff = _differences(recorded, settings)
        if diff:
            raise SettingsMismatch(
                f"{out} holds samples made with other settings ({diff}). Restart with the recorded settings to "
                f"finish that run, or use a new --out directory for these settings.")
    npz = out / NPZ_NAME
    summary, why = _read_json(out / SUMMARY_NAME)
    if npz.is_file() and summary is not None and isinstance(summary.get("settings"), dict):
        diff = _differences(summary["settings"], settings)
        if diff:
            raise SettingsMismatch(
                f"{out}: {NPZ_NAME} was made with other settings ({diff}; {SUMMARY_NAME} records them). Use a new "
                f"--out directory for these settings, or move {NPZ_NAME} and {SUMMARY_NAME} away to sample them here.")
    elif npz.is_file() and recorded is None:
        why = why if summary is None else "records no settings"
        raise SettingsMismatch(
            f"{out} holds {NPZ_NAME}, but {SETTINGS_NAME} is missing and {SUMMARY_NAME} {why}: nothing says which "
            f"settings made it. Move {NPZ_NAME} away to sample here, or use a new --out directory.")
    if recorded is None:
        shards = sorted((out / "shards").glob("shard-*.safetensors"))
        foreign = [p.name for p in shards if shard_settings(p) not in (None, digest)]  # None: torn, recomputed
        if foreign:
            raise SettingsMismatch(
                f"{out / 'shards'} holds {len(foreign)} micro-batch(es) made with other settings ({', '.join(foreign[:3])}"
                f"{', ...' if len(foreign) > 3 else ''}) and {SETTINGS_NAME}, which would name them, is missing. Restore "
                f"{SETTINGS_NAME} and restart with its settings, move shards/ away, or use a new --out directory.")
    if summary is None or not npz.is_file():
        return False
    if summary.get("sha256") != sha256_file(npz):
        say(f"{npz} does not match the sha256 that {SUMMARY_NAME} records (damaged or changed since it was "
            "written); writing it again")
        return False
    return True


def _write_settings(out: Path, settings: dict, digest: str) -> None:
    record = {"format": _SETTINGS_FORMAT, "version": _VERSION, "digest": digest, "settings": settings,
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "torch": torch.__version__}
    atomic_write(out / SETTINGS_NAME, (json.dumps(record, indent=2) + "\n").encode())


def _remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary files of atomic writes (``.<name>.<random>.tmp``, this command's names
    only) that nobody has written to for :data:`STALE_TEMP_SECONDS`: their writer is dead. Younger
    ones may belong to another sampler writing into ``out`` and are left alone."""
    found = [p for name in _OUT_FILES for p in out.glob(f".{name}.*.tmp")]
    found += (out / "shards").glob(".shard-*.safetensors.*.tmp")
    now = time.time()
    stale = []
    for p in found:
        try:
            if now - p.stat().st_mtime > STALE_TEMP_SECONDS:
                p.unlink()
                stale.append(p)
        except FileNotFoundError:  # its writer finished (or another sampler removed it) meanwhile
            pass
    return stale


# ---------------------------------------------------------------------------------- sampling


def _option(text: str) -> tuple[str, Any]:
    """argparse ``type=`` of ``--solver-option``: ``KEY=VALUE``, the value parsed as JSON when it is."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


@dataclass
class SampleConfig:
    """Everything that defines the samples; every field is a flag of the command (``--help``),
    generated from these declarations (:mod:`adapters.commandline`)."""

    backbone: str = flag_field("registered backbone (--import adds more)", group="model")
    solver: str = flag_field("integration method", group="solver")
    nfe: int = flag_field("backbone calls per sample (the grid is planned to meet it)", group="solver")
    out: Path = flag_field("run directory (settings, shards, samples.npz, grid.png)")
    num_samples: int = flag_field("number of images N", default=50_000, group="samples")
    batch_size: int = flag_field("micro-batch size m (part of the settings: the samples depend on it, not on the "
                                 "process count)", default=64, group="samples")
    seed: int = flag_field("global seed; sample i depends on (seed, i) only", default=0, group="samples")
    labels: str = flag_field("uniform random classes (REPA) or every class equally often", default="uniform",
                             choices=("uniform", "balanced"), group="samples")
    ckpt: Optional[str] = flag_field("backbone checkpoint, passed to the backbone as ckpt=", default=None, group="model")
    backbone_kwargs: dict = flag_field("JSON object of further arguments for the backbone's factory, e.g. "
                                       "'{\"name\": 1}'", default_factory=dict, type=json_object, group="model")
    guidance_scale: Optional[float] = flag_field("classifier-free guidance scale, passed to the backbone (default: "
                                                 "the backbone's)", default=None, group="model")
    guidance_low: Optional[float] = flag_field("guidance only for t >= this (REPA time)", default=None, group="model")
    guidance_high: Optional[float] = flag_field("guidance only for t <= this (REPA: 0.7)", default=None, group="model")
    sidenet: Optional[str] = flag_field("BA-solver's SideNet (sidenet.safetensors from the train command); without "
                                        "it BA-solver uses its training-free perception", default=None, group="solver")
    rule: Optional[str] = flag_field("BA-solver quadrature rule (default gauss-lobatto-4)", default=None, group="solver")
    solver_options: dict = flag_field("solver option, e.g. final_step=heun (heun at even NFE), order=3; repeatable",
                                      default_factory=dict, flag="--solver-option", action="append", flag_default=[],
                                      type=_option, metavar="KEY=VALUE", convert=dict, group="solver")
    schedule: str = flag_field("time grid: uniform, sd3 (with --shift) or logsnr", default="uniform", group="solver")
    shift: float = flag_field("SD3 time shift of the grid", default=1.0, group="solver")
    state_dtype: str = flag_field("solver state dtype", default="float32", choices=("float32", "float64"),
                                  group="solver")
    decoder: str = flag_field("sd-vae (diffusers AutoencoderKL from --vae) or the stand-in upsample decoder for dry "
                              "runs", default="sd-vae", choices=("sd-vae", "upsample"), group="samples")
    vae: Optional[str] = flag_field("local diffusers folder of stabilityai/sd-vae-ft-ema", default=None,
                                    group="samples")
    latent_scale: float = flag_field("latents are divided by this before decoding", default=LATENT_SCALE,
                                     group="samples")
    keep_shards: bool = flag_field("keep shards/ after samples.npz is written", default=False, group="run")

    def validate(self) -> None:
        """Check every field (nothing is read or written): ValueError naming the flag and the fix."""
        from baquad.methods import get_method, method_names

        if self.solver not in method_names():
            raise ValueError(f"--solver: unknown solver {self.solver!r}; choose from {', '.join(method_names())}")
        for name in ("num_samples", "batch_size", "nfe"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {v!r}")
        if self.labels not in ("uniform", "balanced"):
            raise ValueError(f"--labels must be 'uniform' or 'balanced', got {self.labels!r}")
        if self.solver != "ba-solver" and (self.sidenet or self.rule):
            raise ValueError(f"--sidenet and --rule belong to --solver ba-solver, not {self.solver!r}")
        if self.state_dtype not in ("float32", "float64"):
            raise ValueError(f"--state-dtype must be float32 or float64, got {self.state_dtype!r}")
        if self.decoder not in ("sd-vae", "upsample"):
            raise ValueError(f"--decoder must be 'sd-vae' or 'upsample', got {self.decoder!r}")
        if self.decoder == "sd-vae" and self.vae is None:
            raise ValueError("--vae PATH is required with --decoder sd-vae (a local sd-vae-ft-ema folder); "
                             "--decoder upsample is the stand-in for dry runs")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0 (sample i is seeded by (seed, i)), got {self.seed!r}")
        for name, low, high in (("guidance_scale", None, None), ("guidance_low", 0.0, 1.0),
                                ("guidance_high", 0.0, 1.0), ("shift", 0.0, None), ("latent_scale", 0.0, None)):
            _check_number(getattr(self, name), "--" + name.replace("_", "-"), low, high)
        if self.guidance_low is not None and self.guidance_high is not None and self.guidance_low > self.guidance_high:
            raise ValueError(f"--guidance-low {self.guidance_low} is above --guidance-high {self.guidance_high}; guidance "
                             "applies for guidance-low <= t <= guidance-high, so give the lower end first")
        options = dict(self.solver_options, **({} if self.rule is None else {"rule": self.rule}))
        try:  # every option value checked now, before the run directory is touched
            get_method(self.solver).options(options)
        except (TypeError, ValueError) as err:
            text = str(err)
            flag = "--rule" if self.rule is not None and text.startswith("rule") else "--solver-option"
            raise ValueError(f"{flag}: {text.removeprefix('rule: ')}") from None
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: exists and is not a directory; give a run directory (new or one this "
                             "command wrote)")

    def factory_kwargs(self) -> dict:
        """What ``get_backbone`` receives: ``--backbone-kwargs`` plus the checkpoint and the guidance
        interval when given (the guidance scale goes with every call, ``guidance_scale=``, as the
        chain trainer passes it)."""
        kw = dict(self.backbone_kwargs)
        for name in ("ckpt", "guidance_low", "guidance_high"):
            if getattr(self, name) is not None:
                kw[name] = getattr(self, name)
        return kw


def _check_number(value: Any, flag: str, low: Optional[float], high: Optional[float]) -> None:
    """``value`` must be None or a finite number: in ``[low, high]`` when ``high`` is given, above
    ``low`` when only ``low`` is."""
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if high is not None:
        ok, want = ok and low <= value <= high, f"a number in [{low:g}, {high:g}]"
    elif low is not None:
        ok, want = ok and value > low, f"a finite number > {low:g}"
    else:
        want = "a finite number"
    if not ok:
        raise ValueError(f"{flag} must be {want}, got {value!r}")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _from_rank0(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (itself when not distributed)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Generator:
    """Solves and decodes one micro-batch; holds the backbone, SideNet and decoder."""

    def __init__(self, cfg: SampleConfig, device: torch.device, backbone: Backbone):
        from baquad.schedules import nfe_grid

        self.cfg, self.device, self.backbone = cfg, device, backbone
        self.dtype = getattr(torch, cfg.state_dtype)
        self.ts = nfe_grid(cfg.solver, cfg.nfe, cfg.schedule, cfg.shift, **cfg.solver_options)
        self.sidenet = None
        if cfg.sidenet is not None:
            from ..sidenet.checkpoint import load_sidenet

            self.sidenet = load_sidenet(cfg.sidenet, map_location=device)
            _check_sidenet_fits(self.sidenet, cfg, backbone)
        if cfg.decoder == "sd-vae":
            self.decoder: Callable[[torch.Tensor], torch.Tensor] = SDVAEDecoder(cfg.vae, device, cfg.latent_scale)
        else:
            self.decoder = UpsampleDecoder()

    def __call__(self, mb: MicroBatch) -> tuple[np.ndarray, np.ndarray]:
        from baquad import solve

        from ..sidenet.perception import NeuralPerception

        cfg, bb = self.cfg, self.backbone
        noise, y = sample_inputs(cfg.seed, range(mb.start, mb.stop), bb.state_shape, bb.num_classes, cfg.labels,
                                 cfg.num_samples)
        x0 = noise.to(self.device, self.dtype)
        cond = {} if y is None else {"labels": y.to(self.device)}
        if cfg.guidance_scale is not None:
            cond["guidance_scale"] = cfg.guidance_scale
        kwargs: dict[str, Any] = dict(cfg.solver_options)
        if cfg.solver == "ba-solver":
            if self.sidenet is not None:
                kwargs["perception"] = NeuralPerception(self.sidenet, labels=cond.get("labels"),
                                                        guidance_scale=cfg.guidance_scale, strict=False,
                                                        autocast=getattr(bb.module, "autocast", None))
            if cfg.rule is not None:
                kwargs["rule"] = cfg.rule
        with torch.no_grad():
            res = solve(bb.vfield(**cond), x0, self.ts, method=cfg.solver, **kwargs)
            if res.nfe != cfg.nfe:
                raise RuntimeError(f"{cfg.solver} made {res.nfe} backbone calls on a grid planned for {cfg.nfe}")
            images = to_uint8(self.decoder(res.x.float()))
        labels = (y if y is not None else torch.full((mb.size,), -1, dtype=torch.int64)).numpy()
        return images, labels


def _check_sidenet_fits(sidenet: torch.nn.Module, cfg: SampleConfig, backbone: Backbone) -> None:
    """The SideNet reads this backbone's states, classes and guidance (before anything is written)."""
    from ..sidenet.perception import check_sidenet_state

    where = f"--sidenet {cfg.sidenet}"
    check_sidenet_state(sidenet, (cfg.batch_size, *backbone.state_shape), where)
    config = sidenet.config() if callable(getattr(sidenet, "config", None)) else {}
    classes = config.get("num_classes")
    if classes is not None and backbone.num_classes is not None and classes != backbone.num_classes:
        raise ValueError(f"{where}: a SideNet for {classes} classes, but --backbone {cfg.backbone} has "
                         f"{backbone.num_classes}; pass a SideNet trained on this backbone")
    if config.get("guidance") and cfg.guidance_scale is None:
        raise ValueError(f"{where}: the SideNet is conditioned on the guidance scale; pass --guidance-scale (the "
                         "scale the backbone samples with)")


#: the SampleConfig fields that do not change the samples (a restart may change them)
_RUN_ONLY = ("out", "keep_shards")
#: the SampleConfig fields naming files, recorded by name, size and sha256 (:func:`file_identity`)
_FILES = ("ckpt", "sidenet", "vae")


def _settings(cfg: SampleConfig, backbone: Backbone, ts: Sequence[float]) -> dict:
    """What defines the samples: every :class:`SampleConfig` field but :data:`_RUN_ONLY` (files by
    their identity; the latent scale only for the VAE decoder), the backbone's state shape and
    class count, and the time grid."""
    settings = {f.name: file_identity(getattr(cfg, f.name)) if f.name in _FILES else getattr(cfg, f.name)
                for f in dataclasses.fields(cfg) if f.name not in _RUN_ONLY}
    if cfg.decoder != "sd-vae":
        settings["latent_scale"] = None
    settings.update(state_shape=list(backbone.state_shape), num_classes=backbone.num_classes, grid=list(ts))
    return json.loads(json.dumps(settings))  # as settings.json and summary.json will hold them


def _grid_png(path: Path, images: np.ndarray, cols: int = 8, pad: int = 2) -> None:
    """Images (n, H, W, 3) tiled ``cols`` wide with white padding, written as PNG (matplotlib)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image as mpimg

    n, h, w, _ = images.shape
    rows = math.ceil(n / cols)
    canvas = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, dtype=np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + c * (w + pad):pad + c * (w + pad) + w] = img
    buf = io.BytesIO()
    mpimg.imsave(buf, canvas, format="png")
    atomic_write(path, buf.getvalue())


def _assemble(out: Path, batches: list[MicroBatch], digest: str, generate: Callable[[MicroBatch], tuple],
              cfg: SampleConfig, log: Callable[[str], None]) -> tuple[Path, np.ndarray]:
    """Rank 0: stream the verified shards into ``samples.npz`` (a shard that fails verification
    now is recomputed first). Returns the path and the first images (for the grid)."""

    def load(mb: MicroBatch) -> tuple[np.ndarray, np.ndarray]:
        try:
            return read_shard(shard_path(out, mb.index), mb, digest)
        except ShardInvalid as err:
            log(f"shard {mb.index}: {err}; recomputing it before writing {NPZ_NAME}")
            images, labels = generate(mb)
            write_shard(shard_path(out, mb.index), mb, images, labels, digest)
            return images, labels

    first_images, _ = load(batches[0])
    info = NpyInfo((cfg.num_samples, *first_images.shape[1:]), np.dtype(np.uint8))
    all_labels = np.empty(cfg.num_samples, dtype=np.int64)
    preview: list[np.ndarray] = []

    def image_chunks():
        for mb in batches:
            images, labels = load(mb)
            if images.shape[1:] != first_images.shape[1:]:
                raise ShardInvalid(f"shard {mb.index}: images of shape {images.shape[1:]}, shard 0 has "
                                   f"{first_images.shape[1:]}")
            all_labels[mb.start:mb.stop] = labels
            if sum(len(p) for p in preview) < 64:
                preview.append(images[:64])
            yield images

    # arr_0 is streamed first and fills all_labels, which arr_1 then writes
    write_npz(out / NPZ_NAME, {"arr_0": (info, image_chunks()),
                               "arr_1": (NpyInfo((cfg.num_samples,), np.dtype(np.int64)), [all_labels])})
    return out / NPZ_NAME, np.concatenate(preview)[:64]


def _pending(out: Path, batches: list[MicroBatch], digest: str, rank: int, world: int,
             log: Callable[[str], None]) -> list[int]:
    """Indices of the micro-batches without a valid shard. Each rank verifies every world-th
    shard (reading and checksumming it); the lists are then gathered on all ranks."""
    mine = []
    for mb in batches[rank::world]:
        try:
            read_shard(shard_path(out, mb.index), mb, digest)
        except ShardInvalid as err:
            if str(err) != "missing":
                log(f"shard {mb.index}: {err}; it will be recomputed")
            mine.append(mb.index)
    if not dist.is_initialized():
        return mine
    gathered: list = [None] * world
    dist.all_gather_object(gathered, mine)
    return sorted(j for part in gathered for j in part)


def sample(cfg: SampleConfig, *, device: Optional[str] = None, progress: bool = True,
           log: Callable[[str], None] = print) -> Optional[Path]:
    """Generate ``cfg.num_samples`` images into ``cfg.out`` (module docstring); single process
    or one rank under torchrun. Returns the ``.npz`` path on rank 0, None on other ranks.

    Raises:
        ValueError: a bad setting, named with its flag (nothing is written).
        SettingsMismatch: ``cfg.out`` holds work made with other settings, or records that are
            not this command's (nothing is written).
    """
    cfg.validate()
    out = Path(cfg.out)
    rank, world, dev, initialised = dist_setup(device)
    say = (lambda msg: log(msg)) if rank == 0 else (lambda msg: None)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        try:
            backbone = get_backbone(cfg.backbone, dev, **cfg.factory_kwargs())
        except TypeError as err:
            raise TypeError(f"--backbone {cfg.backbone}: its factory rejected the arguments "
                            f"{sorted(cfg.factory_kwargs())} ({err}); drop the flags it does not take") from err
        except ValueError as err:  # an unknown name, a checkpoint that does not fit, ...
            raise ValueError(f"--backbone {cfg.backbone}: {err}") from err
        generate = _Generator(cfg, dev, backbone)
        settings, digest, done = None, "", False
        if rank == 0:
            settings = _settings(cfg, backbone, generate.ts)
            digest = _digest(settings)
            done = _check_run_directory(out, settings, digest, say)  # every check done; now write
            out.mkdir(parents=True, exist_ok=True)
            if not (out / SETTINGS_NAME).is_file():
                _write_settings(out, settings, digest)
            for stale in _remove_stale_temps(out):
                say(f"removed {stale}, a temporary file not written to for over {STALE_TEMP_SECONDS} s")
        digest, done = _from_rank0((digest, done))
        if done:
            say(f"{out / NPZ_NAME} is complete (settings match, sha256 as {SUMMARY_NAME} records); nothing to do")
            return out / NPZ_NAME if rank == 0 else None

        batches = micro_batches(cfg.num_samples, cfg.batch_size)
        todo = _pending(out, batches, digest, rank, world, log)
        mine = [batches[j] for j in todo[rank::world]]
        say(f"{cfg.num_samples} samples in {len(batches)} micro-batches of {cfg.batch_size}: {len(batches) - len(todo)} "
            f"done, {len(todo)} to compute on {world} process(es); {cfg.solver} at NFE {cfg.nfe}, grid "
            f"{[round(t, 4) for t in generate.ts]}"
            + ("" if cfg.solver != "ba-solver" or cfg.sidenet else "; no --sidenet: training-free perception"))

        bar = None
        if progress and rank == 0 and mine:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(mine), desc=f"sampling (rank 0 of {world})", unit="batch", dynamic_ncols=True,
                       file=sys.stderr, disable=None)  # off when not a terminal
        t0 = time.perf_counter()
        for mb in mine:
            images, labels = generate(mb)
            write_shard(shard_path(out, mb.index), mb, images, labels, digest)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        _barrier()
        if rank != 0:
            return None

        npz, preview = _assemble(out, batches, digest, generate, cfg, say)
        _grid_png(out / "grid.png", preview)
        summary = {"num_samples": cfg.num_samples, "image_shape": list(preview.shape[1:]), "solver": cfg.solver,
                   "nfe": cfg.nfe, "grid": list(generate.ts), "processes": world, "device": str(dev),
                   "micro_batches_this_session": len(todo), "seconds_this_session_rank0": round(elapsed, 3),
                   "sha256": sha256_file(npz), "settings_digest": digest, "settings": settings}
        atomic_write(out / SUMMARY_NAME, (json.dumps(summary, indent=2) + "\n").encode())
        if not cfg.keep_shards:
            for mb in batches:
                shard_path(out, mb.index).unlink(missing_ok=True)
            _remove_stale_temps(out)
            with_shards = out / "shards"
            if with_shards.is_dir() and not any(with_shards.iterdir()):
                with_shards.rmdir()
        say(f"wrote {npz} ({cfg.num_samples} images {'x'.join(map(str, preview.shape[1:]))} uint8, sha256 "
            f"{summary['sha256'][:16]}...) and {out / 'grid.png'}")
        return npz
    finally:
        if initialised and dist.is_initialized():
            dist.destroy_process_group()


# -------------------------------------------------------------------------------------- CLI

PROG = "python -m adapters.torch_sit.imagenet.sample"


def build_parser() -> argparse.ArgumentParser:
    """The command's parser: a flag per :class:`SampleConfig` field, plus how to run it."""
    from baquad.methods import method_names

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Generate N images with a solver at an NFE budget and write the ADM evaluator's .npz\n"
                    "(arr_0: uint8 N x H x W x 3) plus a grid PNG. Runs as one process or under torchrun;\n"
                    "an interrupted run continues when started again with the same command.",
        epilog="example, 8 GPUs (docs/imagenet.md has the full Table 1 recipe):\n"
               "  torchrun --nproc_per_node=8 -m adapters.torch_sit.imagenet.sample \\\n"
               "      --backbone repa-sit-xl2-256 --ckpt pretrained/last.pt --vae pretrained/sd-vae-ft-ema \\\n"
               "      --solver ba-solver --sidenet runs/sit-xl2/sidenet.safetensors --nfe 7 \\\n"
               "      --guidance-scale 2.8 --guidance-high 0.7 --out samples/ba-solver-nfe7\n"
               "dry run without weights: --decoder upsample and a registered toy backbone",
        formatter_class=HelpFormatter)
    groups = {name: p.add_argument_group(name) for name in ("model", "solver", "samples", "run")}
    add_dataclass_flags(p, SampleConfig, groups=groups, overrides={
        "backbone": {"help": f"registered backbone (now: {', '.join(backbone_names())}; --import adds more)"},
        "solver": {"choices": sorted(method_names())},
    })
    groups["model"].add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                                 help="import MODULE first (it may register more backbones); repeatable")
    r = groups["run"]
    r.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    r.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    r.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(prog=PROG, add_help=False)
    pre.add_argument("--import", dest="imports", action="append", default=[])
    for module in pre.parse_known_args(argv)[0].imports:
        try:  # before the parser lists the registered backbones
            load_object(module, "--import", form="a module name", module_only=True)
        except ValueError as err:
            pre.error(str(err))
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = SampleConfig(**dataclass_kwargs(args, SampleConfig))
    try:
        sample(cfg, device=args.device, progress=not args.no_progress, log=lambda msg: print(msg, flush=True))
    except (ValueError, TypeError, FileNotFoundError) as err:  # bad flags or files, a run directory refused
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
