"""``baquad demo`` at reduced size: it writes the table (every solver at every NFE), the results,
the two PNG files; its Euler-100 row equals guided Euler written out here from plain SiT forwards
(trajectory error, class accuracy) and a Fréchet distance computed here from the formula; the
shipped reference set is a tight solution (checked with torchdiffeq's dopri5)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from adapters.torch_sit.cli import main  # noqa: E402
from adapters.torch_sit.digits.contenders import contenders  # noqa: E402
from adapters.torch_sit.digits.demo import EULER_NFES, NFES, plan  # noqa: E402
from adapters.torch_sit.digits.model import (DIGITS_GRID_SHIFT, DIGITS_GUIDANCE_SCALE, load_digits_classifier,  # noqa: E402
                                       load_digits_sidenet, load_digits_sit)
from adapters.torch_sit.digits.reference import load_reference  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_help_explains_the_flags(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--n", "--guidance-scale", "--out", "--threads", "--no-progress", "sample"):
        assert flag in out


def test_bad_flags_are_refused_naming_them(tmp_path, capsys):
    for argv, flag in ((["--n", "1"], "--n"), (["--guidance-scale", "0.5"], "--guidance-scale")):
        with pytest.raises(SystemExit) as info:
            main(["demo", *argv, "--out", str(tmp_path)])
        assert info.value.code == 2 and f"error: {flag}:" in capsys.readouterr().err


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the square root from an eigendecomposition
    of the symmetric S_a^(1/2) S_b S_a^(1/2) (same trace as (S_a S_b)^(1/2))."""
    ma, mb = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, u = np.linalg.eigh(sa)
    ra = (u * np.sqrt(np.clip(w, 0, None))) @ u.T
    lam = np.clip(np.linalg.eigvalsh(ra @ sb @ ra), 0, None)
    return float(((ma - mb) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.sqrt(lam).sum())


@pytest.mark.slow
def test_demo_runs_at_reduced_size(tmp_path):
    n = 24
    assert main(["demo", "--n", str(n), "--out", str(tmp_path), "--no-progress", "--threads", "1"]) == 0
    md = (tmp_path / "demo.md").read_text()
    rows = re.findall(r"^\| ([^|]+?) \| (\d+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.e+-]+) \| ([0-9.]+)% \| ([0-9.]+) \| ([0-9.]*)%? \|$",
                      md, re.M)
    planned = plan(contenders(load_digits_sidenet(), True, DIGITS_GRID_SHIFT, NFES))
    expected = {(c.label, nfe) for c, nfe in planned}
    assert {(r[0], int(r[1])) for r in rows} == expected and len(rows) == len(expected)
    # whatever learned files ship, the training-free baselines run at every NFE of the table
    training_free = {(label, nfe) for label in ("Euler", "Heun", "DPM-Solver++ 2M", "UniPC") for nfe in NFES}
    assert training_free | {("Euler", nfe) for nfe in EULER_NFES} <= expected
    assert any(label.startswith("BA-solver") for label, _ in expected)
    for png in ("samples.png", "error_vs_nfe.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5_000
    results = json.loads((tmp_path / "results.json").read_text())
    shares = [r["sidenet_share"] for r in results["rows"] if r["method"] == "ba-solver"]
    assert len(shares) == sum(c.method == "ba-solver" for c, _ in planned) and all(0 < s < 1 for s in shares)

    # Euler at 100 NFE, written out: x <- x + (t_next - t) (v_null + s (v_y - v_null)) on the uniform
    # grid shifted by t' = a t / (1 + (a - 1) t), a = the demo's default shift
    ref = load_reference().head(n)
    sit, clf = load_digits_sit(), load_digits_classifier()
    x, y, s = ref.noise.clone(), ref.labels, DIGITS_GUIDANCE_SCALE
    u, a = torch.linspace(1.0, 0.0, 101, dtype=torch.float64), DIGITS_GRID_SHIFT
    ts = a * u / (1 + (a - 1) * u)
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            tt = t.float().expand(n)
            v_y, v_null = sit(x, tt, y), sit(x, tt, torch.full_like(y, 10))
            x = x + float(t_next - t) * (v_null + s * (v_y - v_null))
        err = (x - ref.reference).flatten(1).norm(dim=1).mean().item()
        acc = (clf(x).argmax(1) == y).double().mean().item()
        fd = _frechet(clf.features(x).double().numpy(), clf.features(ref.reference).double().numpy())
    euler100 = next(r for r in results["rows"] if r["method"] == "euler" and r["nfe"] == 100)
    errors = (x - ref.reference).flatten(1).norm(dim=1)
    assert euler100["trajectory_error"] == pytest.approx(err, rel=1e-3, abs=1e-5)
    assert euler100["trajectory_error_median"] == pytest.approx(errors.median().item(), rel=1e-3, abs=1e-5)
    assert euler100["accuracy"] == pytest.approx(acc, abs=1e-9)
    assert euler100["frechet"] == pytest.approx(fd, rel=1e-3, abs=1e-4)


def test_shipped_reference_is_a_tight_solve():
    """Four reference samples re-solved with torchdiffeq's dopri5 (an independent integrator) in
    float64 through the guided field written out from plain SiT forwards."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    ref = load_reference().head(4)
    sit = load_digits_sit().double()
    y, s = ref.labels, ref.meta["guidance_scale"]

    def field(t, x):
        tt = t.expand(x.shape[0])
        v_y, v_null = sit(x, tt, y), sit(x, tt, torch.full_like(y, 10))
        return v_null + s * (v_y - v_null)

    with torch.no_grad():
        x = torchdiffeq.odeint(field, ref.noise.double(), torch.tensor([1.0, 0.0], dtype=torch.float64),
                               method="dopri5", rtol=1e-9, atol=1e-9)[-1]
    err = (x.float() - ref.reference).flatten(1).norm(dim=1)
    assert float(err.max()) < 1e-4, err
