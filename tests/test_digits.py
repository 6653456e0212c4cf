"""The embedded digits models: the shipped files match their SHA-256 (computed here with hashlib
from the bytes) and are refused, naming the file, when corrupted or truncated; the held-out split
is the one documented (recomputed from scikit-learn's arrays); the classifier recognises held-out
real digits; and the SiT is a real model: guided 200-step Euler samples (Euler written out here,
not baquad's) are recognised as the requested class."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from adapters.torch_sit.digits import model as digits  # noqa: E402
from adapters.torch_sit.sidenet.checkpoint import load_sidenet  # noqa: E402
from adapters.torch_sit.digits.model import (DIGITS_GUIDANCE_SCALE, load_digits_classifier, load_digits_sit,  # noqa: E402
                                       load_digits_split)
from adapters.torch_sit.digits.reference import load_reference  # noqa: E402
from adapters.torch_sit.digits.shipped import WEIGHTS_DIR, ChecksumError, verified  # noqa: E402

SHIPPED = ["digits_sit.safetensors", "digits_classifier.safetensors", "digits_sidenet.safetensors",
           "digits_reference.safetensors"]


def manifest() -> dict[str, str]:
    lines = (WEIGHTS_DIR / "SHA256SUMS").read_text().splitlines()
    return {name: digest for digest, name in (re.fullmatch(r"([0-9a-f]{64})  (\S+)", l).groups() for l in lines)}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_file_matches_its_sha256(name):
    data = (WEIGHTS_DIR / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest()[name]
    assert len(data) < 4_000_000  # "a few MB at most"


def test_shipped_files_load():
    sit = load_digits_sit()
    assert sum(p.numel() for p in sit.parameters()) > 10_000
    assert load_digits_classifier().head.out_features == 10
    net = load_sidenet(verified(WEIGHTS_DIR / "digits_sidenet.safetensors"))
    assert net.config()["guidance"] and net.config()["num_classes"] == 10
    ref = load_reference()
    assert len(ref) == 2000 and ref.meta["guidance_scale"] == DIGITS_GUIDANCE_SCALE


def _copy_shipped(tmp_path, name):
    shutil.copyfile(WEIGHTS_DIR / name, tmp_path / name)
    shutil.copyfile(WEIGHTS_DIR / "SHA256SUMS", tmp_path / "SHA256SUMS")
    return tmp_path / name


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("name,load", [
    ("digits_sit.safetensors", lambda p: load_digits_sit(p)),
    ("digits_classifier.safetensors", lambda p: load_digits_classifier(p)),
    ("digits_reference.safetensors", lambda p: load_reference(p)),
    ("digits_sidenet.safetensors", lambda p: load_sidenet(verified(p))),
])
def test_a_damaged_file_is_refused_naming_it(tmp_path, name, load, damage):
    path = _copy_shipped(tmp_path, name)
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=re.escape(str(path)) + ".*corrupted, truncated"):
        load(path)


def test_an_unlisted_file_in_the_shipped_directory_is_refused(tmp_path, monkeypatch):
    shutil.copyfile(WEIGHTS_DIR / "digits_sit.safetensors", tmp_path / "digits_sit.safetensors")
    (tmp_path / "SHA256SUMS").write_text("")
    monkeypatch.setattr(digits, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(ChecksumError, match="no SHA-256 entry"):
        load_digits_sit()


def test_held_out_split_is_every_fifth_image_of_each_class():
    from sklearn.datasets import load_digits

    data = load_digits()
    target = data.target
    held = np.zeros(len(target), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(target == c)
        held[idx[4::5]] = True
    x_test, y_test = load_digits_split("held-out")
    x_train, y_train = load_digits_split("train")
    assert len(y_test) + len(y_train) == 1797 and held.sum() == len(y_test)
    np.testing.assert_array_equal(y_test.numpy(), target[held])
    # pixels k / 8 - 1 (k = 0..16) are exact in float32 on any machine: 1e-7, under one float32
    # ulp at 1, admits no rounding
    np.testing.assert_allclose(x_test.numpy().reshape(-1, 64), data.data[held] / 8.0 - 1.0, atol=1e-7)
    np.testing.assert_allclose(x_train.numpy().reshape(-1, 64), data.data[~held] / 8.0 - 1.0, atol=1e-7)


def test_classifier_recognises_held_out_real_digits():
    x, y = load_digits_split("held-out")
    with torch.no_grad():
        acc = (load_digits_classifier()(x).argmax(1) == y).double().mean().item()
    assert acc > 0.95, acc


@pytest.mark.slow
def test_backbone_samples_are_the_requested_digits():
    """200 guided Euler steps from t = 1 to 0, written out: x <- x + (t_next - t) v(x, t), with
    v = v_null + s (v_y - v_null) from two plain forwards of the SiT."""
    sit, clf = load_digits_sit(), load_digits_classifier()
    n, steps, s = 200, 200, DIGITS_GUIDANCE_SCALE
    x = torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(123))
    y = torch.arange(n) % 10
    null = torch.full_like(y, 10)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            tt = t.expand(n)
            v_y, v_null = sit(x, tt, y), sit(x, tt, null)
            x = x + (t_next - t) * (v_null + s * (v_y - v_null))
        acc = (clf(x).argmax(1) == y).double().mean().item()
    assert acc > 0.95, acc


def test_backbone_training_resumes_exactly(tmp_path):
    """Two iterations, then two more resumed from the checkpoint, give the same weights as four
    uninterrupted ones (batches come from the (seed, step) generator; AdamW state is restored)."""
    from safetensors.torch import load_file

    from adapters.torch_sit.digits.model import DIGITS_SIT_CONFIG
    from adapters.torch_sit.digits.train import BackboneRecipe, train_backbone

    cfg = DIGITS_SIT_CONFIG.replace(depth=1, hidden_size=16)
    recipe = dict(batch_size=8, warmup_iters=1, decay_fraction=0.0)
    say = lambda *a, **k: None
    train_backbone(tmp_path / "a", BackboneRecipe(iters=4, **recipe), cfg, progress=False, log=say)
    a = load_file(str(tmp_path / "a" / "digits_sit.safetensors"))
    train_backbone(tmp_path / "b", BackboneRecipe(iters=2, **recipe), cfg, progress=False, log=say)
    half = load_file(str(tmp_path / "b" / "digits_sit.safetensors"))
    assert any(not torch.equal(half[k], a[k]) for k in a)  # two steps are not four
    train_backbone(tmp_path / "b", BackboneRecipe(iters=4, **recipe), cfg, progress=False, log=say)
    b = load_file(str(tmp_path / "b" / "digits_sit.safetensors"))
    assert a.keys() == b.keys()
    for k in a:  # the resume promise: bit for bit on the same machine and threads
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
