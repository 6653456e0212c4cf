"""Sample-quality metrics on precomputed features: Fréchet distance (FID, sFID), Inception Score,
and improved precision / recall. numpy and scipy only; the features come from elsewhere
(:mod:`adapters.torch_sit.imagenet.evaluate` runs an Inception network, a digits model can bring its own).

The formulas are those of the ADM evaluator (Dhariwal & Nichol 2021, the evaluator used by
DiT, SiT, REPA and the BA-solver paper), so numbers computed from the same features agree:

Fréchet distance between Gaussians N(mu1, S1) and N(mu2, S2) (Heusel et al. 2017)::

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

with the statistics of a feature set being its mean and its unbiased covariance
(``np.cov(features, rowvar=False)``, divisor n - 1). The matrix square root is
``scipy.linalg.sqrtm(S1 @ S2)``; when it is not finite, it is recomputed as
``sqrtm((S1 + eps I)(S2 + eps I))`` with eps = 1e-6; a complex result is accepted only when the
imaginary parts of its diagonal are within 1e-3 of zero (then its real part is used), otherwise
the computation fails loudly. FID uses the 2048-d pool features of Inception-v3, sFID the same
formula on spatial features (ADM: the first 7 channels of a 17x17 intermediate map, flattened).

Inception Score (Salimans et al. 2016) of class probabilities p(y|x), computed in consecutive
splits of ``split_size`` samples (5000 in ADM, so 10 splits for 50,000 images; a last, shorter
split counts like the others), and averaged over splits::

    IS = mean over splits of exp( mean_x KL(p(y|x) || p_split(y)) ),   p_split = mean_x p(y|x)

Precision and recall (Kynkäänniemi et al. 2019) with k nearest neighbours (k = 3): every point
of a set gets the radius r_k = squared Euclidean distance to its k-th nearest neighbour in its
own set (the point itself excluded); a point lies on the other set's manifold when it is within
(<=) the radius of at least one point of that set. Precision is the fraction of samples on the
reference manifold, recall the fraction of reference points on the sample manifold.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from scipy import linalg
from scipy.special import xlogy

__all__ = [
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_of_features",
    "softmax",
    "inception_score",
    "squared_distances",
    "manifold_radii",
    "manifold_membership",
    "precision_recall",
]

#: the covariance offset of the fallback square root
SQRTM_EPS = 1e-6
#: largest |imaginary part| of the square root's diagonal that is dropped
IMAG_TOLERANCE = 1e-3


def _features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected features of shape (n, dim), got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"{name}: need at least 2 feature vectors, got {x.shape[0]}")
    if not np.issubdtype(x.dtype, np.number):
        raise TypeError(f"{name}: expected numeric features, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or inf (check the images the features came from)")
    return x


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)``: mean and unbiased covariance (rows are samples), in float64."""
    f = _features(features, "features").astype(np.float64, copy=False)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _check_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
        raise ValueError(f"{name}: mean of shape {mu.shape} and covariance of shape {sigma.shape} do not match "
                         f"(expected ({mu.size},) and ({mu.size}, {mu.size}))")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: the statistics hold NaN or inf values (damaged, or computed from non-finite "
                         "features); use intact statistics")
    return mu, sigma


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = SQRTM_EPS) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (module docstring).

    Raises:
        ValueError: mismatched shapes, or a matrix square root whose diagonal has an imaginary
            part above 1e-3 (the covariances are far from positive semi-definite).
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "mu1/sigma1")
    mu2, sigma2 = _check_stats(mu2, sigma2, "mu2/sigma2")
    if mu1.shape != mu2.shape:
        raise ValueError(f"mu1/mu2: the two statistics have different dimensions ({mu1.size} and {mu2.size})")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max(initial=0.0)
        if imag > IMAG_TOLERANCE:
            raise ValueError(f"frechet_distance: the matrix square root has imaginary diagonal parts up to {imag:.3g} "
                             "(> 1e-3); the covariances are not positive semi-definite (too few samples?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_of_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """:func:`frechet_distance` between the statistics of two feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (max-subtracted)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def inception_score(probs: np.ndarray, split_size: int = 5000) -> float:
    """Inception Score of class probabilities ``probs`` (n, classes), in splits of ``split_size``.

    ``0 log 0`` is taken as 0 (``scipy.special.xlogy``), so exactly one-hot predictions are
    allowed; for strictly positive probabilities this is the ADM formula term for term.
    """
    p = _features(probs, "probs").astype(np.float64, copy=False)
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs: rows must be probability vectors (non-negative, summing to 1); "
                         "pass softmax(logits) rather than logits")
    if int(split_size) != split_size or split_size < 1:
        raise ValueError(f"split_size must be a positive integer, got {split_size!r}")
    scores = []
    for start in range(0, len(p), int(split_size)):
        part = p[start:start + int(split_size)]
        marginal = part.mean(axis=0, keepdims=True)
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1).mean()
        scores.append(math.exp(kl))
    return float(np.mean(scores))


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|a_i - b_j|^2`` as ``|a_i|^2 - 2 a_i.b_j + |b_j|^2``, clipped at 0 (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _row_blocks(n: int, block: int) -> Iterator[slice]:
    for start in range(0, n, block):
        yield slice(start, min(start + block, n))


def manifold_radii(features: np.ndarray, k: int = 3, block: int = 1024) -> np.ndarray:
    """Squared distance from every point to its k-th nearest neighbour in the same set (the point
    itself, at distance 0, is neighbour number 0)."""
    f = _features(features, "features")
    if int(k) != k or not 1 <= k < len(f):
        raise ValueError(f"k must be an integer in [1, {len(f) - 1}] for {len(f)} points, got {k!r}")
    radii = np.empty(len(f), dtype=np.float64)
    for rows in _row_blocks(len(f), block):
        d = squared_distances(f[rows], f)
        radii[rows] = np.partition(d, int(k), axis=1)[:, int(k)]
    return radii


def manifold_membership(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray, block: int = 1024) -> np.ndarray:
    """For each point, whether it lies within (<=) the radius of at least one manifold point."""
    inside = np.zeros(len(points), dtype=bool)
    for rows in _row_blocks(len(points), block):
        inside[rows] = (squared_distances(points[rows], manifold) <= radii[None, :]).any(axis=1)
    return inside


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3,
                     block: int = 1024) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with ``k`` neighbours.

    Returns ``(precision, recall)``: the fraction of ``samples`` on the reference manifold and
    the fraction of ``reference`` points on the sample manifold.
    """
    ref = _features(reference, "reference")
    smp = _features(samples, "samples")
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"reference/samples: feature dimensions differ ({ref.shape[1]} and {smp.shape[1]})")
    for name, f in (("samples", smp), ("reference", ref)):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 and len(f) <= k:
            raise ValueError(f"{name}: {len(f)} images; precision and recall with k = {k} nearest neighbours need at "
                             f"least {k + 1} in each set (ADM: 50,000 samples, 10,000 reference images); evaluate "
                             "more images")
    r_ref = manifold_radii(ref, k, block)
    r_smp = manifold_radii(smp, k, block)
    precision = manifold_membership(smp, ref, r_ref, block).mean()
    recall = manifold_membership(ref, smp, r_smp, block).mean()
    return float(precision), float(recall)
