"""Smoke test of ``python -m analysis.gpu_check_sit --tiny`` (CPU, tiny random SiT).

Truths used: the NFE the solver counts (10 for both methods at ``--nfe 10``), the rows the
guided backbone must see in chain training (K + 1 calls of B rows, plus the guided rows), and
the JSON it writes to $OUT.
"""

from __future__ import annotations

import json

from analysis import gpu_check_sit


def test_tiny_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    res = gpu_check_sit.main(["--tiny", "--nfe", "4", "--repeats", "1", "--iters", "1"])
    out = capsys.readouterr().out
    assert "| ba-solver |" in out and "| ChainTrainer.step |" in out
    saved = json.loads((tmp_path / "gpu_check_sit.json").read_text())
    assert saved["sampling"] == json.loads(json.dumps(res["sampling"]))  # JSON's float repr round-trips exactly
    assert [r["method"] for r in res["sampling"]] == ["euler", "ba-solver"] * 2
    assert all(r["nfe"] == 4 for r in res["sampling"])
    assert all(r["perception_calls"] > 0 for r in res["sampling"] if r["method"] == "ba-solver")
    unguided, guided = res["training"]
    assert unguided["backbone_rows_per_iter"] == 4 * 9  # K + 1 = 9 calls of 4 chains
    assert 4 * 9 < guided["backbone_rows_per_iter"] < 2 * 4 * 9
