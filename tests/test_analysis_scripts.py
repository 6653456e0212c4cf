"""End-to-end runs of ``analysis.convergence`` and ``analysis.prediction_drift`` on tiny settings."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from analysis import convergence, prediction_drift  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def table_rows(md: str) -> dict[str, list[str]]:
    """Rows of the first markdown table keyed by their first cell (backticks stripped)."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return rows


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 5000 and data.startswith(PNG_MAGIC), path


def test_convergence_quick_run(tmp_path, capsys):
    assert convergence.main(["--quick", "--out", str(tmp_path)]) == 0
    png, md = tmp_path / "convergence_gaussian-2d.png", tmp_path / "convergence_gaussian-2d.md"
    assert_png(png)
    text = md.read_text()
    out = capsys.readouterr().out
    assert f"wrote {png}" in out and f"wrote {md}" in out
    assert "| key | method | fitted order | expected order | residual |" in text
    rows = table_rows(text)
    assert set(convergence.METHODS) <= set(rows)  # the flow solvers run on the Gaussian flow
    for n in (2, 3, 4):
        cells = rows[f"ba-oracle-gl{n}"]
        fitted, expected = float(cells[2]), int(cells[3])
        assert expected == 2 * n - 2
        assert abs(fitted - (2 * n - 2)) < 0.3, cells
    assert abs(float(rows["ba-oracle-gl4-single"][2]) - 6) < 0.3
    # every fitted order is within 0.3 of the expected one, also for the baselines
    for key, cells in rows.items():
        assert abs(float(cells[2]) - float(cells[3])) < 0.3, cells
    # the symbolic table is part of the report
    assert "5/6 - sqrt(5)/6" in text and "-Dv*h**3/12" in text


def test_convergence_skips_flow_solvers_off_the_linear_path(tmp_path, capsys):
    argv = ["--flow", "time-scaled-linear-2d", "--t0", "1", "--t1", "-0.5", "--methods",
            "ba-oracle-gl3,euler,dpm++2m", "--steps", "8,12,16", "--out", str(tmp_path)]
    assert convergence.main(argv) == 0
    text = (tmp_path / "convergence_time-scaled-linear-2d.md").read_text()
    rows = table_rows(text)
    assert set(rows) == {"ba-oracle-gl3", "euler"}
    assert abs(float(rows["ba-oracle-gl3"][2]) - 4) < 0.3
    assert "DPM-Solver++ 2M skipped" in text and "DPM-Solver++ 2M skipped" in capsys.readouterr().out


def test_convergence_rejects_unknown_methods(tmp_path):
    with pytest.raises(SystemExit):
        convergence.main(["--methods", "euler,rk5", "--out", str(tmp_path)])


def test_convergence_runs_as_a_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.convergence", "--methods", "heun,ba-anchor-only", "--quick",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and (tmp_path / "convergence_gaussian-2d.png").is_file()


def test_prediction_drift_quick_run(tmp_path, capsys):
    assert prediction_drift.main(["--quick", "--steps", "4", "--out", str(tmp_path)]) == 0
    png, md = tmp_path / "prediction_drift_gmm-ring2d.png", tmp_path / "prediction_drift_gmm-ring2d.md"
    assert_png(png)
    text = md.read_text()
    out = capsys.readouterr().out
    assert f"wrote {png}" in out and f"wrote {md}" in out
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[1] in ("single", "bi"):
            rows[(cells[0], cells[1])] = cells
    assert set(rows) == {(p, a) for p in ("anchor-only", "polynomial") for a in ("single", "bi")}
    for p in ("anchor-only", "polynomial"):
        single, bi = rows[(p, "single")], rows[(p, "bi")]
        # both start at the same anchor and agree up to h/4 (bi copies the forward prediction for
        # s < h/2: the same numbers, so the same printed cell); the bi-anchor error is 0 at s = h
        assert single[2] == bi[2] and float(bi[5]) == 0.0 and float(single[5]) > 0.1
        assert float(bi[6]) < float(single[6])  # interval mean
    assert re.search(r"\| 1\.00 -> 0\.75 \|", text)  # per-interval table


def test_drift_of_the_anchor_only_perception_grows_linearly():
    """Anchor-only predicts v(t + d) = v(t): its error is |v(t + d) - v(t)| ~ |v'| |d|, the paper's
    linear-drift picture, so the bi-anchor interval mean is about half the single-anchor one."""
    flow = prediction_drift.get_flow("gaussian-2d")
    steps, sub = 4, 8
    times = np.linspace(1.0, 0.0, steps * sub + 1)
    xs, vs = prediction_drift.trajectories(flow, 16, times)
    fwd, bwd = prediction_drift.drift(prediction_drift.AnchorOnly(), times, xs, vs, steps, sub)
    np.testing.assert_allclose(fwd[:, 0], 0.0)
    np.testing.assert_allclose(bwd[:, -1], 0.0)
    # by hand for one interval and offset: |v(t_i + s) - v_i| averaged over samples
    i, j = 1, 5
    by_hand = np.linalg.norm(vs[i * sub + j] - vs[i * sub], axis=-1).mean()
    assert fwd[i, j] == pytest.approx(by_hand, rel=1e-12)
    bi = prediction_drift.bi_curve(fwd, bwd, sub)
    ratio = prediction_drift.interval_mean(bi.mean(0)) / prediction_drift.interval_mean(fwd.mean(0))
    assert 0.35 < ratio < 0.65


def test_sidenet_option(tmp_path, capsys):
    with pytest.raises(SystemExit, match="does not exist"):
        prediction_drift.main(["--quick", "--sidenet", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)])
    try:
        from adapters.torch_sit.sidenet.checkpoint import save_sidenet
        from adapters.torch_sit.sidenet.networks import MLPSideNet
    except ImportError as err:  # pragma: no cover - the torch adapter is optional
        pytest.skip(f"adapters.torch_sit not importable: {err}")
    # an untrained SideNet has a zero output layer, g = 0: it must reproduce anchor-only
    path = save_sidenet(MLPSideNet(2, hidden=16, depth=2, embed_dim=8), tmp_path / "untrained.safetensors")
    assert prediction_drift.main(["--quick", "--steps", "3", "--perceptions", "anchor-only",
                                  "--sidenet", str(path), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "prediction_drift_gmm-ring2d.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 8 and cells[1] in ("single", "bi"):
            rows[(cells[0].split(" ")[0], cells[1])] = [float(c) for c in cells[2:7]]
    for a in ("single", "bi"):
        np.testing.assert_allclose(rows[("sidenet", a)], rows[("anchor-only", a)], rtol=2e-3)


def test_nfe_sweep_quick_runs_end_to_end_and_scores_euler_independently(tmp_path):
    """The sweep trains a tiny SideNet, solves every method at exactly its NFE budget (asserted
    inside the script) and writes the tables; its Euler row is re-derived here by hand."""
    from analysis import nfe_sweep
    from baquad.flows import get_flow
    from baquad.reference import reference_solve

    out = tmp_path / "fig"
    assert nfe_sweep.main(["--flow", "gmm-ring2d", "--quick", "--no-oracle", "--nfe", "3", "4",
                           "--train-out", str(tmp_path / "run"), "--out", str(out), "--seed", "7"]) == 0
    md = (out / "nfe_sweep_gmm-ring2d.md").read_text()
    assert (out / "nfe_sweep_gmm-ring2d.png").stat().st_size > 10_000
    assert (tmp_path / "run" / "sidenet.safetensors").is_file()
    for row in ("BA SideNet GL4 B", "BA polynomial GL4 B", "DPM-Solver++ 2M", "UniPC-3 bh2"):
        assert f"| {row}" in md
    # Euler at 3 NFE on a uniform grid, written out here, scored the same way
    flow = get_flow("gmm-ring2d")
    x = np.random.default_rng(7).standard_normal((64, 2))
    ref = reference_solve(flow, x.copy(), [1.0, 0.0], rtol=1e-10, atol=1e-10)[-1]
    ts = np.linspace(1.0, 0.0, 4)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * flow(t0, x)
    err = np.linalg.norm(x - ref, axis=1)
    euler_rows = [float(v) for v in re.findall(r"^\| Euler \| ([0-9.e+-]+) \|", md, re.M)]
    # tables in order: mean error, median error, mode switches, NLL
    assert euler_rows[0] == pytest.approx(err.mean(), rel=1e-3)
    assert euler_rows[1] == pytest.approx(np.median(err), rel=1e-3)
    # mode switch: most probable component (scipy densities, written out here) differs from the reference's
    from scipy.stats import multivariate_normal

    def mode(y):
        logp = [np.log(w) + multivariate_normal(m, np.diag(s**2)).logpdf(y)
                for m, s, w in zip(flow.means, flow.stds, flow.weights)]
        return np.argmax(np.stack(logp, -1), -1)

    switched = np.mean(mode(x) != mode(ref))
    assert euler_rows[2] == pytest.approx(switched, abs=1e-3)
    assert euler_rows[3] == pytest.approx(-np.mean(flow.log_prob(x)), rel=1e-3)
    # the SideNet row scores the weights written to disk (what --sidenet loads later), solved here
    torch = pytest.importorskip("torch")
    import baquad
    from adapters.torch_sit.sidenet.checkpoint import load_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception

    x0 = np.random.default_rng(7).standard_normal((64, 2))
    side = NeuralPerception(load_sidenet(tmp_path / "run" / "sidenet.safetensors"))
    x_ba = baquad.solve(flow, torch.from_numpy(x0), np.linspace(1.0, 0.0, 4), perception=side).x.numpy()
    got = float(re.search(r"^\| BA SideNet GL4 B \| ([0-9.e+-]+) \|", md, re.M).group(1))
    assert got == pytest.approx(np.linalg.norm(x_ba - ref, axis=1).mean(), rel=1e-3)

    # the ablation table reads the recipe back from summary.json and scores the same SideNet
    from analysis import sidenet_ablation

    assert sidenet_ablation.main([str(tmp_path / "run" / "sidenet.safetensors"), "--nfe", "3", "--n", "16",
                                  "--out", str(out)]) == 0
    table = (out / "sidenet_ablation_gmm-ring2d.md").read_text()
    assert "| run | intervals |" in table and "--intervals trunc-exp" in table

    from analysis import chain_bias

    assert chain_bias.main(["--sidenet", str(tmp_path / "run" / "sidenet.safetensors"), "--n", "8",
                            "--t0", "0.5", "--h", "-0.1"]) == 0


def test_scorer_against_scipy_densities():
    """``Scorer`` on samples of which some were moved to another mode: error statistics by numpy,
    mode switches and NLL from scipy's Gaussian densities of the mixture, written out here."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from analysis._common import Scorer
    from baquad.flows import get_flow

    flow = get_flow("gmm-32d")
    rng = np.random.default_rng(5)
    ref = flow.sample_data(300, rng)
    x = ref + 0.01 * rng.standard_normal(ref.shape)
    moved = rng.random(len(x)) < 0.2
    x[moved] = flow.sample_data(int(moved.sum()), rng)  # fresh samples: most land in another mode

    comp = np.stack([np.log(w) + multivariate_normal(m, np.diag(s**2)).logpdf(x)
                     for m, s, w in zip(flow.means, flow.stds, flow.weights)], -1)
    comp_ref = np.stack([multivariate_normal(m, np.diag(s**2)).logpdf(ref) + np.log(w)
                         for m, s, w in zip(flow.means, flow.stds, flow.weights)], -1)
    want_switched = np.mean(comp.argmax(-1) != comp_ref.argmax(-1))
    err = np.sqrt(((x - ref) ** 2).sum(1))

    got = Scorer(flow, ref)(x)
    assert 0.1 < want_switched < 0.2  # the case has switches, and not every moved sample switched
    assert got.switched == pytest.approx(want_switched, abs=1e-12)
    assert got.err == pytest.approx(err.mean(), rel=1e-12)
    assert got.median == pytest.approx(np.median(err), rel=1e-12)
    assert got.se == pytest.approx(err.std(ddof=1) / np.sqrt(len(err)), rel=1e-12)
    assert got.nll == pytest.approx(-np.mean(logsumexp(comp, axis=-1)), rel=1e-9)


def host_step_ops(md: str) -> dict[str, dict[str, int]]:
    """The operations table of ``host_step.md``: contender -> {operation: count} for one solve."""
    ops = {}
    for line in md.split("aten operations of one solve")[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[1].isdigit():
            counts = dict(item.rsplit(" ", 1) for item in cells[3].split(", "))
            ops[cells[0]] = {name: int(n) for name, n in counts.items()}
            assert sum(ops[cells[0]].values()) == int(cells[2])
    return ops


def test_host_step_quick_run_counts_the_operations_the_algorithms_need(tmp_path, capsys):
    """The operations of one solve against the count written out from each algorithm, on
    N = 3 intervals of v = -x (one ``neg`` per field call). Every update x + h sum_j c_j a_j is
    one ``add`` and one in-place ``add_`` per further array; BA-solver (Gauss-Lobatto-4, scheme
    B: N field calls, the last interval single-anchor) combines the anchor velocities, each
    once: the predictor of interval 1 has the start anchor only, the later ones the previous and
    the start anchor (linear extrapolation); the corrector of interval 1 the start and the
    terminal anchor, the later ones the previous, start and terminal anchor (the polynomial's
    quadratic interpolation), anchor-only always the start and the terminal one; each bi-anchor
    interval's gap |x_{i+1} - x~| is one ``dist`` (scaled to the rms on the host at the end).
    ``solve`` checks x0 once and the state after every interval with check_finite (a finite
    state: its ``sum`` read back, finite), and stacks the gaps once at the end (read back as Python floats)."""
    from analysis import host_step

    assert host_step.main(["--quick", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "host_step.md").read_text()
    assert md.startswith(f"`python -m analysis.host_step --quick --out {tmp_path}`")
    assert f"wrote {tmp_path / 'host_step.md'}" in capsys.readouterr().out
    n = 3
    check = {"sum": 1, "_local_scalar_dense": 1}  # one finiteness check of a finite state
    euler = {"neg": n, "mul": n, "add": n}
    ba_poly = {"neg": n, "add": n + (n - 1), "add_": (n - 1) + 1 + 2 * (n - 2), "dist": n - 1, "stack": 1}
    ba_anchor_only = {"neg": n, "add": n + (n - 1), "add_": n - 1, "dist": n - 1, "stack": 1}

    def plus(*counts):
        out: dict = {}
        for c in counts:
            for name, k in c.items():
                out[name] = out.get(name, 0) + k
        return out

    def times(c, k):
        return {name: k * v for name, v in c.items()}

    want = {
        "bare loop": euler,
        "solve euler": plus(euler, check),
        "solve BA polynomial": plus(ba_poly, check),
        "solve BA anchor-only": plus(ba_anchor_only, check),
        "solve BA polynomial, check_finite": plus(ba_poly, check, times(check, n)),
    }
    got = host_step_ops(md)
    for name, counts in want.items():
        assert got[name] == counts, name
    # the timing table has every contender for both backends, and the bars are printed
    for backend in ("torch", "numpy"):
        for name in want:
            assert re.search(rf"\| {backend} \| \(1, 2\) \| {re.escape(name)} \| [0-9.]+ \|", md), (backend, name)
    assert "solve BA polynomial / solve euler" in md and "solve euler / bare loop" in md


def test_own_model_quick_run_scores_euler_independently(tmp_path, capsys):
    """``analysis.own_model --quick``: the table's Euler row against Euler written out here,
    x_{k+1} = x_k - v(t_k, x_k) / N on t_k = 1 - k / N, with the saved model, the scoring noises
    (seed 1000) and the saved references; the untrained SideNet (step 0) is the default."""
    import torch

    from adapters.torch_sit.files import read_header, read_tensors
    from adapters.torch_sit.sidenet.checkpoint import load_checkpoint
    from analysis import own_model

    runs = tmp_path / "runs"
    assert own_model.main(["--quick", "--out", str(tmp_path), "--runs", str(runs), "--threads", "1"]) == 0
    text = (tmp_path / "own_model.md").read_text()
    assert text.startswith("`python -m analysis.own_model --quick --out ")
    rows = {c[0]: c for c in ([x.strip() for x in line.strip("|").split("|")] for line in text.splitlines()
                              if line.startswith("| ") and not line.startswith("| ---"))}
    header = read_header(runs / "velocity.safetensors")
    settings = header.meta["settings"]
    model = own_model._torch_model_classes()(settings["channels"], settings["embed_dim"], max_freq=settings["max_freq"])
    model.load_state_dict(read_tensors(header))
    ref = read_tensors(read_header(runs / "reference.safetensors"))["x0"]
    noise = torch.randn((16, 3, 8, 8), generator=torch.Generator().manual_seed(1000))
    for col, nfe in ((1, 5), (2, 8)):
        x = noise.clone()
        with torch.no_grad():
            for k in range(nfe):
                x = x - model(torch.full((16,), 1.0 - k / nfe), x) / nfe
        err = float((x.double() - ref).flatten(1).norm(dim=1).mean())
        shown = float(rows["Euler"][col].split(" ")[0])
        assert abs(shown - err) <= 5e-5 + 1e-4 * err, (nfe, shown, err)
    # the SideNet through its training: step 0 (untrained) is the default, to the 4 digits shown
    assert rows["0"][3].startswith(("+0.0000", "-0.0000")) and rows["0"][4].startswith(("+0.0000", "-0.0000"))
    # the time budget was converted into a count and recorded
    ck = load_checkpoint(runs / "sidenet")
    assert ck.extra["budget"]["iters"] == ck.config["iters"] == ck.step >= 3
    assert "SideNet after step" in capsys.readouterr().out


def test_digits_never_worse_quick_reports_the_best_of_its_grids(tmp_path):
    """``analysis.digits_never_worse --quick``: one row per NFE, and the best training-free error
    it reports is at most that of one member of its search written out here (anchor-only, scheme
    B, Gauss-Lobatto-4 on the uniform grid), on the same 8 shipped reference samples."""
    torch = pytest.importorskip("torch")
    import baquad
    from analysis import digits_never_worse
    from adapters.torch_sit.digits.model import digits_sit_backbone, shipped_path
    from adapters.torch_sit.digits.reference import load_reference

    assert digits_never_worse.main(["--quick", "--out", str(tmp_path)]) == 0
    rows = [line.split("|")[1:-1] for line in (tmp_path / "digits_never_worse.md").read_text().splitlines()
            if line.startswith("| 3 ") or line.startswith("| 4 ")]
    assert [int(r[0]) for r in rows] == [3, 4]
    ref = load_reference(shipped_path("reference")).head(8)
    field = digits_sit_backbone().vfield(labels=ref.labels, guidance_scale=float(ref.meta["guidance_scale"]))
    for row in rows:
        nfe = int(row[0])
        with torch.no_grad():
            x = baquad.solve(field, ref.noise, [1 - k / nfe for k in range(nfe + 1)], method="ba-solver",
                             perception="anchor-only", final="single").x
        member = float((x.double() - ref.reference.double()).flatten(1).norm(dim=1).mean())
        best = float(row[4].split("/")[0])
        assert best <= member + 5e-5  # printed to 4 decimals


def test_inversion_distance_quick_euler_row_is_written_out_here(tmp_path):
    """``analysis.inversion_distance --quick``: its Euler-10 row against Euler inversion written out
    here (x <- x + h v on the reversed shifted grid) and DOP853 through scipy directly."""
    torch = pytest.importorskip("torch")
    from scipy.integrate import solve_ivp

    from analysis import inversion_distance
    from adapters.torch_sit.digits.model import digits_sit_backbone, load_digits_split

    assert inversion_distance.main(["--quick", "--out", str(tmp_path)]) == 0
    row = next(line for line in (tmp_path / "inversion_distance.md").read_text().splitlines()
               if line.startswith("| Euler | 10 |"))
    reported = float(row.split("|")[3].split("±")[0])
    images, labels = load_digits_split("train")
    x0, y = images[:4], labels[:4]
    field = digits_sit_backbone().vfield(labels=y, guidance_scale=1.0)
    s, u = 0.4, torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    ts = s * u / (1 + (s - 1) * u)  # the shifted grid, from t = 0 up to t = 1
    x = x0.clone()
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:]):
            x = x + float(t_next - t) * field(float(t), x)

        def rhs(t, z):
            zt = torch.from_numpy(z).reshape(x0.shape)
            return field(float(t), zt).double().numpy().ravel() if zt.dtype == torch.float64 else \
                field(float(t), zt.float()).double().numpy().ravel()

        sol = solve_ivp(rhs, (0.0, 1.0), x0.double().numpy().ravel(), method="DOP853", rtol=1e-8, atol=1e-8)
    truth = torch.from_numpy(sol.y[:, -1]).reshape(x0.shape)
    expected = float((x.double() - truth).flatten(1).norm(dim=1).mean())
    assert reported == pytest.approx(expected, abs=2e-3)
