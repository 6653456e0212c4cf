"""The ADM metrics on given features, and the evaluate command's wiring.

Truth comes from closed forms (Fréchet distance of diagonal Gaussians, Inception Score of
one-hot predictions), eigendecomposition-based matrix square roots, scipy's KL divergence and
brute-force nearest neighbours written here from the published definitions.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
import types

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.stats import entropy

from adapters.torch_sit.imagenet import evaluate as ev
from adapters.torch_sit.imagenet import metrics as M
from adapters.torch_sit.imagenet.npz import NpyInfo, iter_npz_array, write_npz
from _tiny_image import ToyExtractor


def exact_gaussian_features(rng, n, mu, var):
    """Features whose sample mean is exactly ``mu`` and unbiased sample covariance exactly diag(var)."""
    x = rng.standard_normal((n, len(mu)))
    x -= x.mean(0)
    chol = np.linalg.cholesky(np.cov(x, rowvar=False))
    z = np.linalg.solve(chol, x.T).T  # np.cov(z) = I
    return z * np.sqrt(var) + mu


def psd_sqrt(a):
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_by_eigh(mu1, s1, mu2, s2):
    r = psd_sqrt(s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(r @ s2 @ r)))


# ------------------------------------------------------------------------------ Fréchet


def test_fid_of_identical_features_is_zero():
    f = np.random.default_rng(0).standard_normal((300, 10))
    assert abs(M.frechet_distance_of_features(f, f)) < 1e-9


def test_frechet_distance_of_diagonal_gaussians_is_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, -0.5])
    v1, v2 = np.array([1.0, 4.0, 0.25, 2.0]), np.array([9.0, 1.0, 0.25, 0.5])
    f1 = exact_gaussian_features(rng, 500, mu1, v1)
    f2 = exact_gaussian_features(rng, 400, mu2, v2)
    # |mu1 - mu2|^2 + sum (sqrt v1 - sqrt v2)^2 = (1 + 0 + 4 + 1) + (4 + 1 + 0 + (sqrt2 - sqrt.5)^2)
    expected = 6.0 + 5.0 + (np.sqrt(2.0) - np.sqrt(0.5)) ** 2
    assert M.frechet_distance_of_features(f1, f2) == pytest.approx(expected, rel=1e-9)
    assert M.frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_of_non_commuting_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((6, 6)), rng.standard_normal((6, 6))
    s1, s2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_by_eigh(mu1, s1, mu2, s2), rel=1e-9)


def test_frechet_offset_retry_and_imaginary_parts(monkeypatch):
    s1, s2 = np.diag([1.0, 2.0]), np.diag([3.0, 0.5])
    seen = []

    def fake_sqrtm(a):
        seen.append(a)
        return np.full_like(a, np.inf) if len(seen) == 1 else np.real(psd_sqrt(a))

    monkeypatch.setattr(M.linalg, "sqrtm", fake_sqrtm)
    M.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
    assert len(seen) == 2
    want = (s1 + 1e-6 * np.eye(2)) @ (s2 + 1e-6 * np.eye(2))
    # the code may form the product another way: 4 float64 ulps of its magnitude
    np.testing.assert_allclose(seen[1], want, rtol=0, atol=4 * np.finfo(np.float64).eps * np.abs(want).max())

    monkeypatch.setattr(M.linalg, "sqrtm", lambda a: psd_sqrt(a) + 1e-2j * np.eye(2))
    with pytest.raises(ValueError, match="imaginary"):
        M.frechet_distance(np.zeros(2), s1, np.zeros(2), s2)
    monkeypatch.setattr(M.linalg, "sqrtm", lambda a: psd_sqrt(a) + 1e-5j * np.eye(2))
    expected = np.trace(s1) + np.trace(s2) - 2 * np.trace(psd_sqrt(s1 @ s2))
    assert M.frechet_distance(np.zeros(2), s1, np.zeros(2), s2) == pytest.approx(expected, rel=1e-12)


def test_frechet_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mu1/sigma1"):
        M.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="features"):
        M.feature_statistics(np.zeros((1, 3)))


# ------------------------------------------------------------------------ Inception Score


def test_inception_score_of_uniform_one_hot_is_the_class_count():
    c = 7
    probs = np.tile(np.eye(c), (30, 1))
    assert M.inception_score(probs) == pytest.approx(c, rel=1e-12)
    logits = 50.0 * np.tile(np.eye(c), (30, 1))  # softmax is one-hot up to e^-50
    assert M.inception_score(M.softmax(logits)) == pytest.approx(c, rel=1e-9)


def test_inception_score_of_identical_predictions_is_one():
    p = np.random.default_rng(3).dirichlet(np.ones(9))
    assert M.inception_score(np.tile(p, (200, 1))) == pytest.approx(1.0, abs=1e-12)


def test_inception_score_uses_splits_of_5000_and_averages():
    probs = np.zeros((10_000, 2))
    probs[:5000, 0] = 1.0
    probs[5000:, 1] = 1.0
    assert M.inception_score(probs) == pytest.approx(1.0, abs=1e-12)  # each split holds one class
    assert M.inception_score(probs, split_size=10_000) == pytest.approx(2.0, rel=1e-12)


def test_inception_score_matches_scipy_kl():
    probs = np.random.default_rng(4).dirichlet(np.ones(5) * 0.3, size=250)
    expected = np.mean([np.exp(np.mean([entropy(p, part.mean(0)) for p in part]))
                        for part in (probs[:100], probs[100:200], probs[200:])])
    assert M.inception_score(probs, split_size=100) == pytest.approx(expected, rel=1e-10)


# --------------------------------------------------------------------- precision / recall


def brute_force_pr(ref, smp, k):
    def radii(x):
        return np.sort(cdist(x, x, "sqeuclidean"), axis=1)[:, k]  # column 0 is the point itself

    d = cdist(smp, ref, "sqeuclidean")
    precision = np.mean([(d[i] <= radii(ref)).any() for i in range(len(smp))])
    recall = np.mean([(d[:, j] <= radii(smp)).any() for j in range(len(ref))])
    return precision, recall


def test_precision_recall_identical_and_far_apart():
    f = np.random.default_rng(5).standard_normal((60, 4))
    assert M.precision_recall(f, f.copy()) == (1.0, 1.0)
    assert M.precision_recall(f, f + 1000.0) == (0.0, 0.0)


def test_precision_recall_balls_are_closed_by_hand():
    # reference 0, 1, 2, 3 on a line: 3rd-neighbour squared radii 9, 4, 4, 9
    ref = np.array([[0.0], [1.0], [2.0], [3.0]])
    smp = np.array([[-3.0], [6.0], [7.0], [10.0]])  # -3 and 6 lie exactly on a ball's boundary
    np.testing.assert_array_equal(M.manifold_radii(ref), [9.0, 4.0, 4.0, 9.0])  # small integers: exact in any order
    precision, recall = M.precision_recall(ref, smp)
    assert precision == 0.5
    # sample radii: -3 -> 100 (to 7), 6 -> 16 (to 10), 7 -> 100 (to -3), 10 -> 169 (to -3): every ref point is inside
    assert recall == 1.0


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(6)
    ref = rng.standard_normal((70, 3))
    smp = np.concatenate([rng.standard_normal((30, 3)) * 0.5, rng.standard_normal((25, 3)) + 3.0])
    p, r = M.precision_recall(ref, smp, k=3, block=16)  # blocks smaller than the sets
    bp, br = brute_force_pr(ref, smp, 3)
    assert (p, r) == pytest.approx((bp, br), abs=1e-12)
    assert 0.0 < p < 1.0 and 0.0 < r < 1.0


# ------------------------------------------------------------------- evaluate (wiring)


def save_images(path, images):
    np.savez(path, arr_0=images)
    return path


def toy_batches(tmp_path):
    rng = np.random.default_rng(8)
    ref = rng.integers(0, 256, (48, 16, 16, 3), dtype=np.uint8)
    smp = np.clip(ref[:40].astype(int) + rng.integers(-40, 40, (40, 16, 16, 3)), 0, 255).astype(np.uint8)
    return ref, smp, save_images(tmp_path / "ref.npz", ref), save_images(tmp_path / "smp.npz", smp)


def stats(f):
    return f.mean(0), np.cov(f, rowvar=False)


def test_evaluate_feeds_each_metric_its_features(tmp_path):
    ref, smp, ref_path, smp_path = toy_batches(tmp_path)
    tx = ToyExtractor()
    fr, fs = tx(ref), tx(smp)
    out = ev.evaluate(ref_path, smp_path, ToyExtractor(), batch_size=7, split_size=15)
    assert out.fid == pytest.approx(frechet_by_eigh(*stats(fs["pool"]), *stats(fr["pool"])), rel=1e-4)
    # sFID: the same Fréchet formula, on the spatial features
    assert out.sfid == pytest.approx(frechet_by_eigh(*stats(fs["spatial"]), *stats(fr["spatial"])), rel=1e-4)
    assert out.sfid != pytest.approx(out.fid, rel=1e-2)
    e = np.exp(fs["logits"] - fs["logits"].max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    expected_is = np.mean([np.exp(np.mean([entropy(p, part.mean(0)) for p in part]))
                           for part in (probs[:15], probs[15:30], probs[30:])])
    assert out.inception_score == pytest.approx(expected_is, rel=1e-5)
    bp, br = brute_force_pr(fr["pool"].astype(np.float32).astype(np.float64),
                            fs["pool"].astype(np.float32).astype(np.float64), 3)
    assert (out.precision, out.recall) == pytest.approx((bp, br), abs=1e-12)
    assert out.num_samples == 40
    assert "toy spatial" in out.provenance["sFID"] and "toy logits" in out.provenance["Inception Score"]


def test_reference_statistics_file(tmp_path):
    _, smp, _, smp_path = toy_batches(tmp_path)
    fs = ToyExtractor()(smp)
    dp, ds = fs["pool"].shape[1], fs["spatial"].shape[1]
    ref_stats = dict(mu=np.linspace(0, 1, dp), sigma=np.diag(np.linspace(0.5, 2, dp)),
                     mu_s=np.full(ds, 0.3), sigma_s=0.2 * np.eye(ds))
    only_stats = tmp_path / "stats.npz"
    np.savez(only_stats, **ref_stats)
    out = ev.evaluate(only_stats, smp_path, ToyExtractor())
    assert out.fid == pytest.approx(frechet_by_eigh(*stats(fs["pool"]), ref_stats["mu"], ref_stats["sigma"]), rel=1e-4)
    assert out.sfid == pytest.approx(frechet_by_eigh(*stats(fs["spatial"]), ref_stats["mu_s"], ref_stats["sigma_s"]),
                                     rel=1e-4)
    assert out.precision is None and out.recall is None and "no images" in out.provenance["Precision/Recall"]
    assert "Precision: n/a" in out.report()

    # images and statistics: FID uses the stored statistics (as ADM), precision/recall the images
    ref = np.random.default_rng(9).integers(0, 256, (30, 16, 16, 3), dtype=np.uint8)
    both = tmp_path / "both.npz"
    np.savez(both, arr_0=ref, **ref_stats)
    out = ev.evaluate(both, smp_path, ToyExtractor())
    fr = ToyExtractor()(ref)
    assert out.fid == pytest.approx(frechet_by_eigh(*stats(fs["pool"]), ref_stats["mu"], ref_stats["sigma"]), rel=1e-4)
    assert out.precision is not None
    recomputed = ev.evaluate(both, smp_path, ToyExtractor(), reference_stats="recompute")
    assert recomputed.fid == pytest.approx(frechet_by_eigh(*stats(fs["pool"]), *stats(fr["pool"])), rel=1e-4)

    partial = tmp_path / "partial.npz"
    np.savez(partial, mu=ref_stats["mu"], sigma=ref_stats["sigma"])
    with pytest.raises(ValueError, match="mu_s"):
        ev.evaluate(partial, smp_path, ToyExtractor())


def test_cli_prints_adm_lines_and_writes_json(tmp_path, capsys):
    _, _, ref_path, smp_path = toy_batches(tmp_path)
    rc = ev.main([str(ref_path), str(smp_path), str(smp_path), "--extractor", "_tiny_image:toy_extractor",
                  "--json", str(tmp_path / "m.json"), "--no-progress"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    for start in ("Inception Score: ", "FID: ", "sFID: ", "Precision: ", "Recall: ", "features: toy extractor"):
        assert sum(line.startswith(start) for line in lines) == 2
    saved = json.loads((tmp_path / "m.json").read_text())
    direct = ev.evaluate(ref_path, smp_path, ToyExtractor())
    assert saved[0]["fid"] == pytest.approx(direct.fid, rel=1e-12) and saved[1]["recall"] == direct.recall


def test_bad_image_batches_are_refused(tmp_path):
    np.savez(tmp_path / "f.npz", arr_0=np.zeros((4, 8, 8, 3), dtype=np.float32))
    np.savez(tmp_path / "ok.npz", arr_0=np.zeros((4, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        ev.evaluate(tmp_path / "ok.npz", tmp_path / "f.npz", ToyExtractor())


# -------------------------------------------------------------- the torch-fidelity extractor


def test_missing_torch_fidelity_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"baquad\[eval\]"):
        ev.TorchFidelityInception(tmp_path / "w.pth")
    assert ev.main([str(tmp_path / "r.npz"), str(tmp_path / "s.npz")]) == 2
    assert "error: --inception-weights is required" in capsys.readouterr().err


def fake_torch_fidelity():
    """A stand-in with torch-fidelity's documented interface: FeatureExtractorInceptionV3(name,
    features_list, feature_extractor_weights_path=...) taking uint8 NCHW and returning one
    tensor per requested feature, with a Mixed_6d.branch1x1 layer of 192 channels at 17 x 17."""
    from torch import nn

    class Branch(nn.Module):
        def forward(self, x):
            base = x.float().mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)
            c = torch.arange(192.0).reshape(1, 192, 1, 1)
            h = torch.arange(17.0).reshape(1, 1, 17, 1)
            w = torch.arange(17.0).reshape(1, 1, 1, 17)
            return base + 1000 * c + 100 * h + w

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.branch1x1 = Branch()

    class FeatureExtractorInceptionV3(nn.Module):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__()
            assert feature_extractor_weights_path is not None, "would download"
            self.features_list = features_list
            self.Mixed_6d = Mixed()
            self.lin = nn.Linear(1, 1)
            self.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=True))

        def forward(self, x):
            assert x.dtype == torch.uint8 and x.shape[1] == 3
            self.Mixed_6d.branch1x1(x)
            m = x.float().mean(dim=(1, 2, 3))
            feats = {"2048": m[:, None].repeat(1, 2048), "logits_unbiased": m[:, None].repeat(1, 1008)}
            return tuple(feats[k] for k in self.features_list)

    mod = types.ModuleType("torch_fidelity")
    mod.FeatureExtractorInceptionV3 = FeatureExtractorInceptionV3
    mod.__version__ = "fake"
    return mod, FeatureExtractorInceptionV3


def test_torch_fidelity_wrapper_reads_spatial_features_in_tf_order(monkeypatch, tmp_path):
    mod, _ = fake_torch_fidelity()
    monkeypatch.setitem(sys.modules, "torch_fidelity", mod)
    weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save({"lin.weight": torch.ones(1, 1), "lin.bias": torch.zeros(1)}, weights)
    x = ev.TorchFidelityInception(weights)
    images = np.stack([np.full((20, 24, 3), v, dtype=np.uint8) for v in (3, 60)])
    out = x(images)
    assert out["pool"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
    assert out["spatial"].shape == (2, 17 * 17 * 7)
    for n, v in enumerate((3, 60)):
        expected = [v + 1000 * c + 100 * h + w for h in range(17) for w in range(17) for c in range(7)]
        np.testing.assert_allclose(out["spatial"][n], expected, rtol=0, atol=1e-3)
    assert "fake" in x.name and hashlib.sha256(weights.read_bytes()).hexdigest()[:12] in x.name
    assert "Mixed_6d.branch1x1" in x.provenance["spatial"]


def test_real_torch_fidelity_extractor(monkeypatch, tmp_path):
    """Runs only where torch-fidelity is installed (an optional extra; it needs a torchvision that
    matches torch). Random Inception weights, as nothing may be downloaded: checks our wrapper
    against torch-fidelity's own modules run layer by layer."""
    tfi = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    with monkeypatch.context() as m:  # build the network with its random initialisation
        m.setattr(tfi, "load_state_dict_from_url", lambda *a, **k: {})
        m.setattr(tfi.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = tfi.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(net.state_dict(), tmp_path / "w.pth")
    x = ev.TorchFidelityInception(tmp_path / "w.pth")
    images = np.random.default_rng(12).integers(0, 256, (3, 64, 48, 3), dtype=np.uint8)
    out = x(images)
    assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1008)

    t = torch.from_numpy(images).permute(0, 3, 1, 2)
    with torch.no_grad():
        h = interpolate_bilinear_2d_like_tensorflow1x(t.float(), size=(299, 299), align_corners=False)
        h = (h - 128) / 128
        for name in ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
                     "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c"):
            h = getattr(x.model, name)(h)
        branch = x.model.Mixed_6d.branch1x1(h)  # (3, 192, 17, 17)
        pool, unbiased = x.model(t)
    expected = np.stack([[branch[n, c, i, j].item() for i in range(17) for j in range(17) for c in range(7)]
                         for n in range(3)])
    np.testing.assert_allclose(out["spatial"], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["pool"], pool.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["logits"], (pool @ x.model.fc.weight.T).numpy(), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ npz files


def test_npz_writer_is_deterministic_and_loadable(tmp_path, monkeypatch):
    images = np.random.default_rng(10).integers(0, 256, (9, 5, 4, 3), dtype=np.uint8)
    labels = np.arange(9, dtype=np.int64)

    def write(path):
        write_npz(path, {"arr_0": (NpyInfo(images.shape, images.dtype), [images[:4], images[4:]]),
                         "arr_1": (NpyInfo(labels.shape, labels.dtype), [labels])})

    write(tmp_path / "a.npz")
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3e7)  # a year later
    write(tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()  # npz.py's promise: equal arrays, equal bytes
    with np.load(tmp_path / "a.npz", allow_pickle=False) as z:
        assert z.files == ["arr_0", "arr_1"]
        np.testing.assert_array_equal(z["arr_0"], images)
        np.testing.assert_array_equal(z["arr_1"], labels)
    with pytest.raises(ValueError, match="rows"):
        write_npz(tmp_path / "c.npz", {"arr_0": (NpyInfo(images.shape, images.dtype), [images[:4]])})
    assert not (tmp_path / "c.npz").exists()


@pytest.mark.parametrize("saver", [np.savez, np.savez_compressed])
def test_npz_reader_streams_numpy_files(tmp_path, saver):
    images = np.random.default_rng(11).integers(0, 256, (10, 3, 2, 3), dtype=np.uint8)
    saver(tmp_path / "x.npz", arr_0=images, other=np.ones(3))
    blocks = list(iter_npz_array(tmp_path / "x.npz", "arr_0", batch=4))
    assert [len(b) for b in blocks] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), images)
    with pytest.raises(KeyError, match="other"):
        list(iter_npz_array(tmp_path / "x.npz", "missing"))


# ------------------------------------------------------------ issue 27: what a user is told


def test_27_10_precision_recall_on_too_few_images_says_how_many_are_needed(tmp_path, capsys):
    ref = np.random.default_rng(1).integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=ref)
    np.savez(tmp_path / "three.npz", arr_0=ref[:3])
    with pytest.raises(ValueError, match=r"three.npz against .*ref.npz: samples: 3 images; precision and recall "
                                         r"with k = 3 nearest neighbours need at least 4 in each set"):
        ev.evaluate(tmp_path / "ref.npz", tmp_path / "three.npz", ToyExtractor())
    # k + 1 points is the least the definition allows: every point needs k neighbours besides itself
    assert M.precision_recall(np.eye(4), np.eye(4), k=3) == (1.0, 1.0)
    with pytest.raises(ValueError, match="reference: 3 images.*at least 4"):
        M.precision_recall(np.eye(4)[:3], np.eye(4), k=3)
    rc = ev.main([str(tmp_path / "ref.npz"), str(tmp_path / "three.npz"), "--extractor", "_tiny_image:toy_extractor",
                  "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "need at least 4" in err[0]


def test_27_11_nan_in_stored_reference_statistics_names_the_file_and_the_key(tmp_path):
    _, smp, _, smp_path = toy_batches(tmp_path)
    f = ToyExtractor()(smp)
    stats_ = dict(mu=f["pool"].mean(0), sigma=np.cov(f["pool"], rowvar=False), mu_s=f["spatial"].mean(0),
                  sigma_s=np.cov(f["spatial"], rowvar=False))
    stats_["sigma_s"][2, 1] = np.nan
    np.savez(tmp_path / "stats.npz", **stats_)
    with pytest.raises(ValueError, match=r"stats.npz: sigma_s holds NaN or inf.*--reference-stats recompute"):
        ev.evaluate(tmp_path / "stats.npz", smp_path, ToyExtractor())
    with pytest.raises(ValueError, match="mu2/sigma2: the statistics hold NaN or inf"):
        M.frechet_distance(stats_["mu"], stats_["sigma"], stats_["mu_s"], stats_["sigma_s"])


@pytest.mark.parametrize("damage", ["cut-half", "cut-tail", "flip"])
def test_27_12_a_damaged_npz_names_the_file(tmp_path, damage, capsys):
    ref, smp, ref_path, smp_path = toy_batches(tmp_path)
    data = bytearray(smp_path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01  # inside arr_0: the member's CRC-32 no longer matches
    else:
        data = data[:len(data) // 2] if damage == "cut-half" else data[:-30]
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(bytes(data))
    for a, b in ((ref_path, bad), (bad, ref_path)):
        with pytest.raises(ValueError, match=r"damaged.npz: not a readable .npz .*truncated or damaged"):
            ev.evaluate(a, b, ToyExtractor())
    assert ev.main([str(ref_path), str(bad), "--extractor", "_tiny_image:toy_extractor", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]


def test_a_missing_npz_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.npz: no such file"):
        ev.read_statistics(tmp_path / "nothing.npz")
