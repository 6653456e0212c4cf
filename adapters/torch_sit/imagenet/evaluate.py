"""Evaluate image batches the way the ADM evaluator does: IS, FID, sFID, precision, recall.

    python -m adapters.torch_sit.imagenet.evaluate REF.npz SAMPLES.npz [MORE_SAMPLES.npz ...] \\
        --inception-weights pretrained/weights-inception-2015-12-05-6726825d.pth

``REF.npz`` is a reference batch: ``arr_0`` (uint8 images, NHWC) and/or precomputed statistics
``mu``, ``sigma``, ``mu_s``, ``sigma_s`` (ADM's ``VIRTUAL_imagenet256_labeled.npz`` has both: 10,000
images and statistics). ``SAMPLES.npz`` holds ``arr_0`` as written by
``python -m adapters.torch_sit.imagenet.sample``. Each sample batch prints ADM's five lines
(``Inception Score:``, ``FID:``, ``sFID:``, ``Precision:``, ``Recall:``) followed by where every
number came from; ``--json`` also writes them to a file.

What is computed (formulas in :mod:`adapters.torch_sit.imagenet.metrics`):

- FID: Fréchet distance between the 2048-d pool features of the samples and the reference
  statistics ``mu``/``sigma`` stored in REF (as ADM does; ``--reference-stats recompute``
  computes them from REF's images with the same extractor instead).
- sFID: the same distance on spatial features (``mu_s``/``sigma_s`` for the reference).
- Inception Score: from the 1008-way softmax of the pool features times the classifier weights
  without bias (ADM's ``softmax/logits/MatMul``), in splits of 5,000 samples, averaged.
- Precision / recall: k = 3 nearest neighbours on pool features, reference = REF's images.
  A statistics-only REF gives no precision/recall (reported as unavailable).

Features: the extractor is any callable ``images (B, H, W, 3) uint8 -> {"pool": (B, 2048),
"spatial": (B, S), "logits": (B, K)}`` with a ``provenance`` dict describing each entry
(:class:`FeatureExtractor`). The default is :class:`TorchFidelityInception`, torch-fidelity's
port of the TensorFlow Inception-v3 graph that ADM runs, with weights from a local file. It is
an optional dependency (``pip install 'baquad[eval]'``; it imports torchvision, which must match
the installed torch build). ``--extractor MODULE:NAME`` plugs in another one.

Caveats, stated in every report: ADM's numbers come from the TensorFlow graph itself; those
here come from torch-fidelity's re-implementation, which its authors match to the TF pool
features, so FID and IS are close to but not bit-identical with ADM's. torch-fidelity has no
sFID: the spatial features here are read from the output of its ``Mixed_6d.branch1x1`` layer,
the port of TF's ``mixed_6/conv`` that ADM reads, keeping its first 7 channels of 17 x 17 as ADM
does; whether that port reproduces the TF tensor was not verified here, and the reference's
``mu_s``/``sigma_s`` were computed by TF, so treat sFID as the least comparable of the five.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Protocol, Sequence

import numpy as np

from . import metrics
from ...commandline import HelpFormatter, load_object
from ..files import sha256_file
from .npz import iter_npz_array, npz_array_info, npz_members, read_npz_array

__all__ = [
    "FEATURE_KEYS",
    "STAT_KEYS",
    "FeatureExtractor",
    "TorchFidelityInception",
    "compute_features",
    "read_statistics",
    "Evaluation",
    "evaluate",
    "build_parser",
    "main",
]

#: what an extractor returns for a batch of images
FEATURE_KEYS = ("pool", "spatial", "logits")
#: the statistics a reference batch may carry (ADM's names)
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
#: ADM's Inception Score split size and number of neighbours for precision/recall
IS_SPLIT_SIZE = 5000
PR_NEIGHBOURS = 3
#: torch-fidelity's spatial layer standing in for TF's mixed_6/conv, and how many channels ADM keeps
SPATIAL_LAYER = "Mixed_6d.branch1x1"
SPATIAL_CHANNELS = 7
EVAL_EXTRA = "pip install 'baquad[eval]'  (or: pip install torch-fidelity)"


class FeatureExtractor(Protocol):
    """Images in, features out. ``name`` says which implementation; ``provenance`` says, per key
    of :data:`FEATURE_KEYS`, which layer the features are."""

    name: str
    provenance: dict[str, str]

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def _import_torch_fidelity() -> Any:
    try:
        import torch_fidelity
    except ImportError as err:
        raise ImportError(
            "the Inception feature extractor needs torch-fidelity, an optional dependency: "
            f"{EVAL_EXTRA}. It imports torchvision, whose wheel must match your torch build (a CPU-only "
            "torch needs the CPU torchvision wheel). Alternatively pass --extractor MODULE:NAME."
        ) from err
    return torch_fidelity


class TorchFidelityInception:
    """torch-fidelity's Inception-v3 (``FeatureExtractorInceptionV3``) with local weights.

    ``pool`` is its ``'2048'`` output (pool_3), ``logits`` its ``'logits_unbiased'`` output (pool_3
    times the 1008-class weights, no bias, as ADM's Inception Score uses), ``spatial`` the output
    of ``Mixed_6d.branch1x1`` (N, 192, 17, 17), captured by a forward hook, reordered to
    (N, 17, 17, 192) as TensorFlow lays it out, cut to its first 7 channels and flattened
    (2023 values; ADM's sFID features). Images of any size are resized to 299 x 299 by the model
    (TF1-compatible bilinear).

    Args:
        weights: torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``. It is checked to
            load with ``torch.load(weights_only=True)`` first, so no pickled code runs.
        device: torch device for the network.

    Raises:
        ImportError: torch-fidelity is missing (the message says how to install it).
        FileNotFoundError: ``weights`` does not exist.
    """

    def __init__(self, weights: "str | os.PathLike", device: Any = "cpu"):
        tfid = _import_torch_fidelity()
        import torch

        weights = Path(weights)
        if not weights.is_file():
            raise FileNotFoundError(f"--inception-weights: {weights} does not exist; download torch-fidelity's "
                                    "weights-inception-2015-12-05-6726825d.pth (see docs/imagenet.md)")
        try:
            torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"--inception-weights: {weights} is not a plain state dict readable with "
                             f"torch.load(weights_only=True) ({err})") from err
        self.torch = torch
        self.device = torch.device(device)
        try:
            model = tfid.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                                      feature_extractor_weights_path=str(weights))
        except RuntimeError as err:
            raise ValueError(f"--inception-weights: {weights} does not fit torch-fidelity's Inception-v3 "
                             f"({err}); use weights-inception-2015-12-05-6726825d.pth") from err
        self.model = model.to(self.device).eval()
        self._spatial: Optional[Any] = None
        layer = self.model.get_submodule(SPATIAL_LAYER)
        layer.register_forward_hook(self._keep_spatial)
        version = getattr(tfid, "__version__", "unknown version")
        self.name = (f"torch-fidelity {version} FeatureExtractorInceptionV3 "
                     f"(weights {weights.name}, sha256 {sha256_file(weights)[:12]}...)")
        self.provenance = {
            "pool": "its '2048' output (pool_3)",
            "logits": "its 'logits_unbiased' output (pool_3 x classifier weights, no bias, 1008 classes)",
            "spatial": (f"output of {SPATIAL_LAYER} (1x1 branch of the 7th mixed block after batch norm and ReLU, "
                        f"17x17x192; TF's mixed_6/conv), first {SPATIAL_CHANNELS} channels flattened in "
                        "(row, column, channel) order; torch-fidelity has no sFID of its own and ADM reads this "
                        "tensor from the TF graph, so agreement with ADM's sFID is not guaranteed"),
        }

    def _keep_spatial(self, module: Any, inputs: Any, output: Any) -> None:
        self._spatial = output.detach()

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous().to(self.device)
        self._spatial = None
        with torch.no_grad():
            pool, logits = self.model(x)
        if self._spatial is None:  # pragma: no cover - the layer always runs before the pool
            raise RuntimeError(f"{SPATIAL_LAYER} did not run; torch-fidelity's model changed")
        spatial = self._spatial.permute(0, 2, 3, 1)[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
        self._spatial = None
        return {"pool": pool.float().cpu().numpy(), "spatial": spatial.float().cpu().numpy(),
                "logits": logits.float().cpu().numpy()}


def _load_extractor(spec: str, weights: Optional[str], device: Any) -> FeatureExtractor:
    if spec == "torch-fidelity":
        if weights is None:
            raise ValueError("--inception-weights is required with the torch-fidelity extractor "
                             "(nothing is downloaded at run time); see docs/imagenet.md")
        return TorchFidelityInception(weights, device)
    return load_object(spec, "--extractor", form="'torch-fidelity' or module:name")()


def _check_images(images: np.ndarray, where: str) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{where}: expected uint8 images of shape (N, H, W, 3), got {images.dtype} {images.shape}")


def _image_batches(source: "str | os.PathLike | np.ndarray", batch_size: int) -> tuple[int, Iterable[np.ndarray]]:
    if isinstance(source, np.ndarray):
        _check_images(source, "images")
        return len(source), (source[i:i + batch_size] for i in range(0, len(source), batch_size))
    info = npz_array_info(source, "arr_0")
    if info.dtype != np.uint8 or len(info.shape) != 4 or info.shape[-1] != 3:
        raise ValueError(f"{source}: arr_0 must be uint8 images of shape (N, H, W, 3) (ADM layout), "
                         f"got {info.dtype} {info.shape}")
    return info.shape[0], iter_npz_array(source, "arr_0", batch_size)


def compute_features(source: "str | os.PathLike | np.ndarray", extractor: FeatureExtractor, batch_size: int = 64,
                     progress: bool = False, desc: str = "features") -> dict[str, np.ndarray]:
    """Run ``extractor`` over the images of an ``.npz`` (streamed) or an array; concatenated
    float32 features per key of :data:`FEATURE_KEYS`."""
    n, batches = _image_batches(source, batch_size)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_KEYS}
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, desc=desc, unit="img", dynamic_ncols=True, file=sys.stderr,
                   disable=None)  # off when not a terminal
    for images in batches:
        out = extractor(images)
        for k in FEATURE_KEYS:
            if k not in out:
                raise KeyError(f"extractor {getattr(extractor, 'name', extractor)!r} returned no {k!r} features")
            f = np.asarray(out[k], dtype=np.float32)
            if f.ndim != 2 or f.shape[0] != len(images):
                raise ValueError(f"extractor returned {k!r} features of shape {f.shape} for {len(images)} images")
            parts[k].append(f)
        if bar is not None:
            bar.update(len(images))
    if bar is not None:
        bar.close()
    if n == 0:
        raise ValueError(f"{source}: no images")
    return {k: np.concatenate(v) for k, v in parts.items()}


def read_statistics(path: "str | os.PathLike") -> Optional[dict[str, np.ndarray]]:
    """``{mu, sigma, mu_s, sigma_s}`` stored in a batch file, or None when it has none.

    Raises:
        ValueError: the file has some of the four but not all, or one holds NaN or inf.
    """
    keys = set(npz_members(path))
    present = [k for k in STAT_KEYS if k in keys]
    if not present:
        return None
    if len(present) != len(STAT_KEYS):
        missing = [k for k in STAT_KEYS if k not in keys]
        raise ValueError(f"{path}: has statistics {present} but not {missing}; a reference needs all of {list(STAT_KEYS)}")
    stats = {k: read_npz_array(path, k).astype(np.float64) for k in STAT_KEYS}
    for k, v in stats.items():
        if not np.isfinite(v).all():
            raise ValueError(f"{path}: {k} holds NaN or inf values, so the reference statistics are damaged; use an "
                             "intact copy of the reference batch, or --reference-stats recompute (from its images)")
    return stats


@dataclass
class Evaluation:
    """The five numbers of one sample batch and where each came from."""

    samples: str
    reference: str
    num_samples: int
    inception_score: float
    fid: float
    sfid: float
    precision: Optional[float]
    recall: Optional[float]
    extractor: str
    provenance: dict[str, str] = field(default_factory=dict)

    def report(self) -> str:
        """ADM's five lines (``n/a`` where unavailable), then the provenance of each."""
        show = lambda v: "n/a" if v is None else f"{v}"
        lines = [f"== {self.samples} ({self.num_samples} images) vs {self.reference}",
                 f"Inception Score: {show(self.inception_score)}", f"FID: {show(self.fid)}",
                 f"sFID: {show(self.sfid)}", f"Precision: {show(self.precision)}", f"Recall: {show(self.recall)}",
                 f"features: {self.extractor}"]
        lines += [f"  {k}: {v}" for k, v in self.provenance.items()]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def _describe(extractor: FeatureExtractor, key: str) -> str:
    return f"{key} features ({getattr(extractor, 'provenance', {}).get(key, 'as the extractor defines them')})"


def evaluate(
    reference: "str | os.PathLike",
    samples: "str | os.PathLike",
    extractor: FeatureExtractor,
    *,
    reference_stats: str = "file",
    batch_size: int = 64,
    split_size: int = IS_SPLIT_SIZE,
    k: int = PR_NEIGHBOURS,
    progress: bool = False,
    reference_features: Optional[dict[str, np.ndarray]] = None,
) -> Evaluation:
    """IS, FID, sFID, precision and recall of the ``samples`` batch against ``reference``.

    Args:
        reference: ``.npz`` with ``arr_0`` and/or ``mu``, ``sigma``, ``mu_s``, ``sigma_s``.
        samples: ``.npz`` with ``arr_0`` (uint8 NHWC). Statistics stored in it are ignored; they
            are computed from its images.
        extractor: see :class:`FeatureExtractor`.
        reference_stats: ``"file"`` (default, as ADM): use the statistics stored in ``reference``
            when it has them; ``"recompute"``: compute them from its images with ``extractor``.
        reference_features: features of the reference images computed earlier (to evaluate many
            sample batches against one reference without recomputing them).
    """
    if reference_stats not in ("file", "recompute"):
        raise ValueError(f"reference_stats must be 'file' or 'recompute', got {reference_stats!r}")
    ref_has_images = "arr_0" in npz_members(reference)
    stored = read_statistics(reference) if reference_stats == "file" else None
    if not ref_has_images and stored is None:
        raise ValueError(f"{reference}: has no images (arr_0), which reference_stats='recompute' needs"
                         if reference_stats == "recompute" else
                         f"{reference}: has neither images (arr_0) nor statistics ({', '.join(STAT_KEYS)})")
    if ref_has_images and reference_features is None:
        reference_features = compute_features(reference, extractor, batch_size, progress, desc="reference")
    smp = compute_features(samples, extractor, batch_size, progress, desc="samples")
    name = getattr(extractor, "name", repr(extractor))
    prov: dict[str, str] = {}

    if stored is not None:
        ref_pool = (stored["mu"], stored["sigma"])
        ref_spatial = (stored["mu_s"], stored["sigma_s"])
        ref_src = (f"the statistics stored in {Path(reference).name} (mu/sigma, mu_s/sigma_s; for ADM's reference "
                   "batches computed by ADM's TensorFlow Inception, not by the extractor above)")
    else:
        ref_pool = metrics.feature_statistics(reference_features["pool"])
        ref_spatial = metrics.feature_statistics(reference_features["spatial"])
        ref_src = f"{len(reference_features['pool'])} reference images of {Path(reference).name}, same extractor"
    fid = metrics.frechet_distance(*metrics.feature_statistics(smp["pool"]), *ref_pool)
    sfid = metrics.frechet_distance(*metrics.feature_statistics(smp["spatial"]), *ref_spatial)
    prov["FID"] = f"Fréchet distance of the samples' {_describe(extractor, 'pool')} to {ref_src}"
    prov["sFID"] = f"same formula on the samples' {_describe(extractor, 'spatial')} against {ref_src}"

    inception = metrics.inception_score(metrics.softmax(smp["logits"]), split_size)
    n_splits = math.ceil(len(smp["logits"]) / split_size)
    prov["Inception Score"] = (f"softmax of the samples' {_describe(extractor, 'logits')}, "
                               f"{n_splits} split(s) of {split_size}, mean over splits")

    precision = recall = None
    if reference_features is not None:
        try:
            precision, recall = metrics.precision_recall(reference_features["pool"], smp["pool"], k)
        except ValueError as err:  # too few images: name the files
            raise ValueError(f"{samples} against {reference}: {err}") from err
        prov["Precision/Recall"] = (f"k = {k} nearest neighbours on {_describe(extractor, 'pool')} of "
                                    f"{len(reference_features['pool'])} reference and {len(smp['pool'])} sample images")
    else:
        prov["Precision/Recall"] = f"not available: {Path(reference).name} holds statistics but no images (arr_0)"
    return Evaluation(str(samples), str(reference), len(smp["pool"]), inception, fid, sfid, precision, recall, name, prov)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adapters.torch_sit.imagenet.evaluate",
        description="IS, FID, sFID, precision and recall of ADM-style .npz image batches: the ADM evaluator's\n"
                    "formulas on torch-fidelity's Inception-v3 (pip install 'baquad[eval]').",
        epilog="example:\n"
               "  python -m adapters.torch_sit.imagenet.evaluate pretrained/VIRTUAL_imagenet256_labeled.npz \\\n"
               "      samples/ba-solver-nfe7/samples.npz \\\n"
               "      --inception-weights pretrained/weights-inception-2015-12-05-6726825d.pth",
        formatter_class=HelpFormatter)
    p.add_argument("reference", type=Path, help="reference batch: arr_0 images and/or mu, sigma, mu_s, sigma_s")
    p.add_argument("samples", type=Path, nargs="+", help="sample batch(es) with arr_0 (uint8 N x H x W x 3)")
    p.add_argument("--inception-weights", default=None,
                   help="local copy of torch-fidelity's weights-inception-2015-12-05-6726825d.pth (required by the "
                        "default extractor; nothing is downloaded)")
    p.add_argument("--extractor", default="torch-fidelity",
                   help="'torch-fidelity', or MODULE:NAME naming a zero-argument callable that returns an extractor")
    p.add_argument("--reference-stats", choices=("file", "recompute"), default="file",
                   help="'file': use the reference's stored statistics (as ADM); 'recompute': from its images")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=64, help="images per extractor call")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; a bad file or flag is one line on stderr (``...: error: ...``, exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except (ValueError, KeyError, FileNotFoundError, ImportError) as err:
        text = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"{parser.prog}: error: {text}", file=sys.stderr, flush=True)
        return 2


def _run(args: argparse.Namespace) -> int:
    device = args.device
    if device is None and args.extractor == "torch-fidelity":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    extractor = _load_extractor(args.extractor, args.inception_weights, device)
    ref_features = None
    if "arr_0" in npz_members(args.reference):
        ref_features = compute_features(args.reference, extractor, args.batch_size, not args.no_progress,
                                        desc="reference")
    results = []
    for sample in args.samples:
        ev = evaluate(args.reference, sample, extractor, reference_stats=args.reference_stats,
                      batch_size=args.batch_size, progress=not args.no_progress, reference_features=ref_features)
        print(ev.report(), flush=True)
        results.append(ev.to_dict())
    if args.json is not None:
        from ..files import atomic_write

        atomic_write(args.json, (json.dumps(results, indent=2) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
