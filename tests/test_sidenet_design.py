"""The latent test bed (adapters/torch_sit/digits/latent.py) and ``python -m analysis.sidenet_design --quick``.

Truths used: bilinear 2x upsampling with align_corners=False written out in numpy (output pixel i
reads the source at (i + 1/2) / 2 - 1/2, clamped to the edge pixels); the lift's documented form,
an affine map per channel of that upsampled image with |a| = 1.5; the script's table layout.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from _ulps import ulps
from adapters.torch_sit.digits.latent import LATENT_SHAPE, lift
from adapters.torch_sit.digits.model import load_digits_split
from analysis import sidenet_design


def bilinear_2x(img: np.ndarray) -> np.ndarray:
    n = img.shape[0]
    src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n - 1)
    w = src - lo
    rows = img[lo] * (1 - w)[:, None] + img[hi] * w[:, None]
    return rows[:, lo] * (1 - w)[None, :] + rows[:, hi] * w[None, :]


def test_lift_is_an_affine_map_per_channel_of_the_upsampled_digit():
    images = load_digits_split("train")[0][:5]
    z = lift(images).double().numpy()
    assert z.shape == (5, *LATENT_SHAPE)
    a = []
    for k in range(5):
        u = bilinear_2x(images[k, 0].double().numpy()).reshape(-1)
        design = np.stack([u, np.ones_like(u)], 1)
        for c in range(4):
            coef, *_ = np.linalg.lstsq(design, z[k, c].reshape(-1), rcond=None)
            np.testing.assert_allclose(design @ coef, z[k, c].reshape(-1), rtol=0, atol=ulps(64, np.float32, z))
            if k == 0:
                a.append(coef[0])
    assert np.linalg.norm(a) == pytest.approx(1.5, rel=1e-5)
    assert torch.equal(lift(images), lift(images)) and not torch.equal(lift(images, seed=1), lift(images))
    with pytest.raises(ValueError, match=r"expected digits of shape \(N, 1, 8, 8\)"):
        lift(torch.zeros(2, 1, 16, 16))


def test_quick_run_writes_the_paired_table(tmp_path, capsys):
    assert sidenet_design.main(["--quick", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")]) == 0
    text = (tmp_path / "sidenet_design.md").read_text()
    assert text.startswith("# python -m analysis.sidenet_design --quick")
    assert "| BA@3 |" in text and "| BA@4 |" in text and "new - current (paired)" in text
    # everything a rerun loads instead of training or solving again lives in the runs directory
    files = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert {"latent_sit", "sidenet_table4", "sidenet_patch"} <= set(files)
    assert any(name.startswith("reference_n4_seed3000") for name in files)
