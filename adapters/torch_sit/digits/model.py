"""The embedded default: a small class-conditional SiT on scikit-learn's 8x8 digits.

The data are the 1,797 handwritten digits of ``sklearn.datasets.load_digits`` (8 x 8 pixels with
integer values 0..16, ten classes), scaled to [-1, 1] as x = pixel / 8 - 1 and shaped
``(N, 1, 8, 8)``. The held-out split is fixed and needs no random numbers: within each class,
in the data set's order, every fifth image (positions 4, 9, 14, ... of the class) is held out,
355 images in all; the other 1,442 are the training split.

The model is our :class:`~adapters.torch_sit.sit.model.SiT` at a small size (:data:`DIGITS_SIT_CONFIG`:
patch 2 on the 8 x 8 single-channel image, so 16 tokens, no REPA projector heads), trained by
flow matching on the linear path of baquad's time convention (t = 1 noise, t = 0 data):

    x_t = (1 - t) x + t eps,   eps ~ N(0, I),   t ~ U[0, 1],
    loss = || v_theta(x_t, t, y) - (eps - x) ||^2,

with the label replaced by the null class (index 10) with probability 0.1, so the one network
gives both the conditional and the unconditional velocity for classifier-free guidance
(:mod:`adapters.torch_sit.digits.train` trains it).

Registered backbone ``"digits-sit"`` (:func:`digits_sit_backbone`): the shipped weights behind
:class:`~adapters.torch_sit.sit.backbone.GuidedSiT`, guided on the whole path by default
(interval [0, 1], :data:`DIGITS_GUIDANCE_INTERVAL`) at scale :data:`DIGITS_GUIDANCE_SCALE` when a
caller passes it. REPA's [0, 0.7] interval would make the field jump at t = 0.7, and that jump
would be charged to whichever solver's step straddles it; on the whole path the field is smooth
and the solver comparison measures the solvers.

:class:`DigitsClassifier` is the feature extractor of the demo's Fréchet distance (its
penultimate layer) and its class-accuracy judge; trained on the training split only.

Shipped files (``adapters/torch_sit/digits/weights``, checked against ``SHA256SUMS`` before loading,
:mod:`.shipped`): ``digits_sit.safetensors``, ``digits_classifier.safetensors``,
``digits_sidenet.safetensors``, and ``digits_reference.safetensors`` (the demo's reference set).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import register_backbone
from ..files import InvalidFile, atomic_write, read_header, read_tensors, serialise
from .shipped import WEIGHTS_DIR, verified, write_with_sum
from ..sit.model import SiT, SiTConfig
from ..sit.backbone import GuidedSiT, SiTBackbone

__all__ = [
    "DIGITS_SIT_CONFIG",
    "DIGITS_GUIDANCE_SCALE",
    "DIGITS_GUIDANCE_INTERVAL",
    "DIGITS_GRID_SHIFT",
    "STATE_SHAPE",
    "HELD_OUT_EVERY",
    "load_digits_split",
    "DigitsClassifier",
    "save_model",
    "load_model_file",
    "load_digits_sit",
    "load_digits_classifier",
    "load_digits_sidenet",
    "digits_sit_backbone",
    "shipped_path",
]

#: the shipped SiT's architecture: 16 tokens of width 32, 3 blocks, MLP ratio 2 (56,292 trained
#: parameters; docs/digits.md: chosen for the demo's time budget, measured against larger ones)
DIGITS_SIT_CONFIG = SiTConfig(depth=3, hidden_size=32, num_heads=2, patch_size=2, input_size=8, in_channels=1,
                              mlp_ratio=2.0, num_classes=10, class_dropout_prob=0.1, encoder_depth=1, z_dims=(),
                              projector_dim=1)
#: the demo's classifier-free guidance scale
DIGITS_GUIDANCE_SCALE = 1.5
#: the demo's time grids: uniform grids shifted by t' = s t / (1 + (s - 1) t), the same for every
#: solver (s < 1 puts more steps near t = 0, where the field of this model changes fastest)
DIGITS_GRID_SHIFT = 0.4
#: guidance on the whole path (module docstring)
DIGITS_GUIDANCE_INTERVAL = (0.0, 1.0)
#: one state: one channel of 8 x 8 pixels
STATE_SHAPE = (1, 8, 8)
#: every HELD_OUT_EVERY-th image of a class (from position HELD_OUT_EVERY - 1) is held out
HELD_OUT_EVERY = 5

_FILES = {"backbone": "digits_sit.safetensors", "classifier": "digits_classifier.safetensors",
          "sidenet": "digits_sidenet.safetensors", "reference": "digits_reference.safetensors",
          # the learned rows of the demo (.contenders): the chain-trained SideNet the shipped one
          # was trained from end to end, BNS solvers per NFE, LD3 grids
          "sidenet-chain": "digits_sidenet_chain.safetensors",
          **{f"bns-{n}": f"digits_bns_{n}.npz" for n in (3, 5, 7, 10)},
          "ld3-unipc": "digits_ld3_unipc.json", "ld3-euler": "digits_ld3_euler.json"}


def shipped_path(kind: str) -> Path:
    """Where the shipped ``kind`` file lives (``"backbone"``, ``"classifier"``, ``"sidenet"``,
    ``"reference"``, and the learned rows' ``"sidenet-chain"``, ``"bns-<nfe>"``, ``"ld3-unipc"``,
    ``"ld3-euler"``); not yet verified."""
    if kind not in _FILES:
        raise ValueError(f"kind: one of {', '.join(_FILES)}, got {kind!r}")
    return WEIGHTS_DIR / _FILES[kind]


def load_digits_split(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` of the ``"train"``, ``"held-out"`` or ``"all"`` split: images float32
    ``(N, 1, 8, 8)`` in [-1, 1], labels int64 ``(N,)`` (module docstring for the split)."""
    if split not in ("train", "held-out", "all"):
        raise ValueError(f"split: 'train', 'held-out' or 'all', got {split!r}")
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - scikit-learn is in the torch extra
        raise ImportError("the digits data come from scikit-learn: pip install scikit-learn "
                          "(it is part of the package's [torch] extra)") from err
    data = load_digits()
    pixels = np.asarray(data.images, dtype=np.float64)
    labels = np.asarray(data.target, dtype=np.int64)
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(len(idx))
    held = rank % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
    keep = {"train": ~held, "held-out": held, "all": np.ones_like(held)}[split]
    images = torch.from_numpy((pixels[keep] / 8.0 - 1.0).astype(np.float32)).reshape(-1, *STATE_SHAPE)
    return images, torch.from_numpy(labels[keep])


class DigitsClassifier(nn.Module):
    """A small convolutional digit classifier; its penultimate layer is the Fréchet feature.

    conv3x3(1 -> w), SiLU, conv3x3(w -> 2w), SiLU, 2x2 average pool (4 x 4), conv3x3(2w -> 2w),
    SiLU, 2x2 average pool (2 x 2), flatten (8w), Linear(8w, f), SiLU = the features (dimension
    f = ``feature_dim``), then Linear(f, 10) = the logits.
    """

    def __init__(self, width: int = 16, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self._config = dict(width=int(width), feature_dim=int(feature_dim), num_classes=int(num_classes))
        w = int(width)
        self.conv1 = nn.Conv2d(1, w, 3, padding=1)
        self.conv2 = nn.Conv2d(w, 2 * w, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * w, 2 * w, 3, padding=1)
        self.fc = nn.Linear(8 * w, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def config(self) -> dict:
        return {"class": "DigitsClassifier", **self._config}

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features ``(N, feature_dim)`` of images ``(N, 1, 8, 8)`` in [-1, 1]."""
        if x.ndim != 4 or tuple(x.shape[1:]) != STATE_SHAPE:
            raise ValueError(f"DigitsClassifier: expected images of shape (N, 1, 8, 8), got {tuple(x.shape)}")
        h = F.silu(self.conv2(F.silu(self.conv1(x))))
        h = F.avg_pool2d(h, 2)
        h = F.avg_pool2d(F.silu(self.conv3(h)), 2)
        return F.silu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def save_model(path: "str | os.PathLike", module: nn.Module, kind: str, config: dict, recipe: Optional[dict] = None,
               report: Optional[dict] = None) -> str:
    """Write a module's weights as a baquad safetensors file (:mod:`.safefile`: atomic, with a
    content hash) and record its SHA-256 in the directory's ``SHA256SUMS``. The header holds
    ``{"format": "baquad-digits-<kind>", "config", "recipe"}`` only (what determines the weights,
    so a rerun on the same machine writes the same bytes); the JSON sidecar (``.json``) adds
    ``report`` (wall time, accuracies, the command) and the digest. Returns the digest."""
    path = Path(path)
    meta = {"format": f"baquad-digits-{kind}", "config": config, "recipe": recipe or {}}
    meta = json.loads(json.dumps(meta, sort_keys=True))  # one key order, whatever built the dicts
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in module.state_dict().items()}
    digest = write_with_sum(path, serialise(tensors, meta))
    sidecar = {**meta, "report": report or {}, "sha256": digest}
    atomic_write(path.with_suffix(".json"), (json.dumps(sidecar, indent=2) + "\n").encode())
    return digest


def load_model_file(path: "str | os.PathLike", kind: str, *, required: bool = True) -> tuple[dict, dict]:
    """``(tensors, header metadata)`` of a file written by :func:`save_model`: its SHA-256 checked
    first (:func:`~adapters.torch_sit.digits.shipped.verified`; ``required``: it must have a manifest
    entry), then read with :mod:`.safefile` (content hash checked).

    Raises:
        ChecksumError: corrupted, truncated or unlisted file (naming it).
        InvalidFile (a ValueError): unreadable, or not a ``baquad-digits-<kind>`` file.
    """
    header = read_header(verified(path, required=required))
    if header.meta.get("format") != f"baquad-digits-{kind}":
        raise InvalidFile(f"{header.path}: not a digits {kind} file (format {header.meta.get('format')!r})")
    return read_tensors(header), header.meta


def _resolve(path: "str | os.PathLike | None", kind: str) -> tuple[Path, bool]:
    """The file to load and whether it must have a manifest entry (the shipped ones must)."""
    if path is None:
        return shipped_path(kind), True
    path = Path(path)
    if path.is_dir():
        path = path / _FILES[kind]
    return path, path.resolve().parent == WEIGHTS_DIR


def load_digits_sit(path: "str | os.PathLike | None" = None, device: Any = "cpu") -> SiT:
    """The digits SiT (eval mode, frozen) from ``path`` (a file or a directory holding
    ``digits_sit.safetensors``; None: the shipped one), checksum-verified and loaded strictly."""
    file, required = _resolve(path, "backbone")
    tensors, meta = load_model_file(file, "backbone", required=required)
    cfg = dict(meta["config"])
    cfg["z_dims"] = tuple(cfg.get("z_dims", ()))
    with torch.device("meta"):
        model = SiT(SiTConfig(**cfg))
    model = model.to_empty(device="cpu")
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval().requires_grad_(False)


def load_digits_classifier(path: "str | os.PathLike | None" = None, device: Any = "cpu") -> DigitsClassifier:
    """The digits classifier (eval mode, frozen), checksum-verified (see :func:`load_digits_sit`)."""
    file, required = _resolve(path, "classifier")
    tensors, meta = load_model_file(file, "classifier", required=required)
    cfg = {k: v for k, v in meta["config"].items() if k != "class"}
    model = DigitsClassifier(**cfg)
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval().requires_grad_(False)


def load_digits_sidenet(path: "str | os.PathLike | None" = None, flag: str = "--sidenet",
                        kind: str = "sidenet") -> nn.Module:
    """The SideNet the demos sample with: the shipped one of ``kind`` (``"sidenet"``, trained end
    to end, for sampling; ``"sidenet-chain"``, chain-trained, for grids and directions the
    end-to-end training never saw, as editing's inversion) (checksum-verified), or the one at
    ``path`` (a file or training directory; verified when its directory's ``SHA256SUMS`` lists
    it), checked before any network runs: it reads the digits states ``(B, 1, 8, 8)``
    (``check_sidenet_state``) and its file records the ``"digits-sit"`` backbone or none
    (``check_sidenet_backbone``).

    Raises:
        ValueError: the file cannot be read or is not for the digits SiT; the message starts with
            ``flag`` (the shipped file: "the shipped SideNet").
    """
    from ..sidenet.checkpoint import check_sidenet_backbone, load_sidenet
    from ..sidenet.perception import check_sidenet_state

    file = shipped_path(kind) if path is None else Path(path)
    where = "the shipped SideNet" if path is None else f"{flag} {path}"
    try:
        net = load_sidenet(verified(file, required=path is None) if file.is_file() else file)
    except (OSError, ValueError) as err:
        raise ValueError(f"{flag if path is not None else where}: {err}") from err
    check_sidenet_state(net, (1, *STATE_SHAPE), where)
    check_sidenet_backbone(net, "digits-sit", where)
    return net


def sit_config_dict(cfg: SiTConfig) -> dict:
    """A SiTConfig as a JSON-serialisable dict (``SiTConfig(**d)`` rebuilds it)."""
    d = dataclasses.asdict(cfg)
    d["z_dims"] = list(d["z_dims"])
    return d


def digits_sit_backbone(weights: "str | os.PathLike | None" = None, *,
                        guidance_low: float = DIGITS_GUIDANCE_INTERVAL[0],
                        guidance_high: float = DIGITS_GUIDANCE_INTERVAL[1],
                        dtype: torch.dtype = torch.float32, device: Any = "cpu", name: str = "digits-sit",
                        state_shape: tuple = STATE_SHAPE,
                        training_images: Optional[Callable[[], torch.Tensor]] = None) -> SiTBackbone:
    """The registered ``"digits-sit"`` backbone: ``backbone(t, x, labels=..., guidance_scale=...)``
    on states ``(B, 1, 8, 8)``.

    Args:
        weights: a ``digits_sit.safetensors`` (or its directory); None: the shipped weights.
        guidance_low, guidance_high: the guidance interval (default: the whole path).
        dtype: the network's dtype (float64 for tight reference solves).
        device: where it runs.
        name, state_shape, training_images: for a SiT trained on other states of the digits (the
            lifted latents of :mod:`.latent`): its backbone name, state shape and a function that
            returns its training states (default: the training split's images).

    ``sample_data(n, generator)`` draws training states (for path-start chains).
    """
    model = load_digits_sit(weights, device).to(dtype)
    guided = GuidedSiT(model, guidance_low, guidance_high, tf32=None)
    train_images = None

    def sample_data(n: int, generator: torch.Generator) -> torch.Tensor:
        nonlocal train_images
        if train_images is None:
            train_images = load_digits_split("train")[0] if training_images is None else training_images()
        idx = torch.randint(0, train_images.shape[0], (n,), generator=generator)
        return train_images[idx]

    extra = {"config": model.config, "null_class": model.null_class,
             "guidance_interval": (guided.guidance_low, guided.guidance_high),
             "default_guidance_scale": DIGITS_GUIDANCE_SCALE}
    return SiTBackbone.from_module(guided, name, tuple(state_shape), num_classes=model.num_classes,
                                   sample_data=sample_data, extra=extra)


register_backbone("digits-sit", digits_sit_backbone)
