"""``python -m analysis.convergence --field module:function``: a user's own ODE, at reduced size.

Truths used: the closed form of dx/dt = -cos(t) x (``tests/_own_ode.py``), x(t1) = x(t0)
exp(sin t0 - sin t1), and Euler's method written out here; the known orders of Euler (1) and RK4 (4).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from analysis import convergence  # noqa: E402
from analysis._common import FIGURES  # noqa: E402

HERE = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _tests_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(HERE))


def rows(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            out[cells[0].strip("`")] = cells
    return out


def euler_error(n: int, t0: float, t1: float) -> float:
    import _own_ode

    x = _own_ode.x0()
    h = (t1 - t0) / n
    for i in range(n):
        x = x + h * _own_ode.field(t0 + i * h, x)
    return float(np.max(np.abs(x - _own_ode.exact(t1, _own_ode.x0(), t0))))


def test_own_field_with_its_exact_solution(tmp_path, capsys):
    argv = ["--field", "_own_ode:field", "--x0", "_own_ode:x0", "--exact", "_own_ode:exact", "--t0", "0", "--t1", "2",
            "--methods", "euler,rk4,dpm++2m", "--steps", "8,16,32", "--out", str(tmp_path)]
    assert convergence.main(argv) == 0
    md = tmp_path / "convergence__own_ode-field.md"
    assert (tmp_path / "convergence__own_ode-field.png").read_bytes().startswith(b"\x89PNG")
    text = md.read_text()
    table = rows(text)
    assert set(table) == {"euler", "rk4"}  # the flow solvers need a linear-path flow
    assert abs(float(table["euler"][2]) - 1) < 0.15 and abs(float(table["rk4"][2]) - 4) < 0.3
    assert float(table["euler"][-1]) == pytest.approx(euler_error(32, 0.0, 2.0), rel=0.06)  # printed to 2 digits
    assert "`_own_ode:exact` (exact)" in text and "x0 of shape (2, 2)" in text
    assert "DPM-Solver++ 2M skipped" in capsys.readouterr().out


def test_own_field_against_a_reference_and_a_json_x0(tmp_path):
    argv = ["--field", "_own_ode:field", "--x0", "[[1.0, 2.0], [-0.5, 0.25]]", "--t0", "0", "--t1", "2",
            "--methods", "euler", "--steps", "8,16", "--out", str(tmp_path)]
    assert convergence.main(argv) == 0
    text = (tmp_path / "convergence__own_ode-field.md").read_text()
    assert "reference_solve (DOP853" in text
    assert float(rows(text)["euler"][-1]) == pytest.approx(euler_error(16, 0.0, 2.0), rel=0.06)


def test_quick_never_writes_into_the_committed_figures(tmp_path, monkeypatch):
    before = {p.name: p.stat().st_mtime_ns for p in FIGURES.iterdir()}
    monkeypatch.chdir(tmp_path)
    argv = ["--field", "_own_ode:field", "--x0", "_own_ode:x0", "--methods", "heun", "--quick"]
    assert convergence.main(argv) == 0
    assert (tmp_path / "runs" / "quick" / "convergence__own_ode-field.md").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in FIGURES.iterdir()} == before
    with pytest.raises(SystemExit) as info:
        convergence.main(argv + ["--out", str(FIGURES)])
    assert info.value.code == 2


@pytest.mark.parametrize("argv, said", [
    (["--steps", "a,b"], "--steps: expected comma-separated step counts such as 8,16,32, got 'a,b'"),
    (["--steps", "8,8"], "at least 2 distinct step counts"),
    (["--steps", "0,8"], "step counts must be >= 1"),
    (["--field", "_own_ode:field"], "--field needs --x0"),
    (["--x0", "[1.0]"], "--x0: only with --field"),
    (["--field", "_own_ode:nothing", "--x0", "[1.0]"], "cannot import 'nothing' from '_own_ode'"),
    (["--field", "_own_ode:NOT_A_FUNCTION", "--x0", "[1.0]"], "is not a function (its type is int)"),
    (["--field", "_own_ode", "--x0", "[1.0]"], "expected module:function"),
    (["--field", "_own_ode:field", "--x0", "[1.0, \"a\"]"], "not a rectangular array of real numbers"),
    (["--field", "_own_ode:field", "--x0", "[1.0, NaN]"], "non-finite"),
    (["--field", "_own_ode:field", "--x0", "[1.0,"], "expected a JSON list"),
    (["--field", "_own_ode:field", "--x0", "[1.0]", "--flow", "gmm-ring2d"], "--flow and --field"),
    (["--t0", "0.5", "--t1", "0.5"], "the start and end time must differ"),
    (["--t0", "inf"], "must be finite"),
    (["--methods", "euler,rk5"], "--methods: unknown rk5"),
])
def test_flags_are_checked_at_parse_time(argv, said, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        convergence.main(argv + ["--out", str(tmp_path / "never")])
    assert info.value.code == 2
    assert said in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
