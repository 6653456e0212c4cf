"""``python -m analysis.gpu_check --tiny``: the one GPU command, run on tiny models on the CPU.

Truths used: the bars of issue 24 written out here (share under 5%, speed ratio at least 0.95, no
host syncs, graph against eager within 1e-5) and the rows a result must produce; the diffusers
part's share is a ratio of positive times, so it lies in (0, 1).
"""

from __future__ import annotations

import pytest

from analysis import gpu_check, gpu_check_diffusers


def test_tiny_sit_check_prints_every_bar(capsys):
    res = gpu_check.main(["--tiny", "--no-diffusers"])
    out = capsys.readouterr().out
    assert "| check | setting | measured | bar | pass |" in out
    bars = res["sit"]["bars"]
    shares = [b for b in bars if b["check"] == "SideNet share of BA-solver's time"]
    speeds = [b for b in bars if b["check"] == "BA-solver img/s over Euler's (same NFE)"]
    assert [b["setting"] for b in shares] == ["fp32, unguided", "fp32, guided 2", "bf16, unguided", "bf16, guided 2"]
    assert len(speeds) == 4 and all(b["bar"] == ">= 0.95" for b in speeds)
    for b, r in zip(shares, [r for r in res["sit"]["sampling"] if r["method"] == "ba-solver"]):
        assert b["ok"] == (r["sidenet_share"] < 0.05)
    syncs = [b for b in bars if b["check"] == "host syncs inside a guided solve's loop"]
    assert syncs[0]["ok"] is True and syncs[0]["value"] == "none"
    graph = [b for b in bars if b["check"] == "CUDA-graph solve against eager"]
    assert graph[0]["ok"] is None  # needs CUDA
    assert res["diffusers"] is None and res["sit_error"] is None


def test_failed_parts_are_rows_not_crashes():
    rows = gpu_check.table_rows(None, "Traceback ...\nRuntimeError: CUDA out of memory", None,
                                "Traceback ...\nImportError: no diffusers", tiny=True)
    assert rows[0][2] == "failed: RuntimeError: CUDA out of memory" and rows[0][4] == "NO"
    assert [r[2] for r in rows[1:]] == ["failed: ImportError: no diffusers"] * 2


@pytest.mark.slow
def test_tiny_flux_and_sd3_shares():
    res = gpu_check_diffusers.main(["--tiny", "--only", "flux_size_costs"])
    got = res["flux_size_costs"]
    assert "error" not in got and 0 < got["sidenet_share_of_sampling"] < 1
    assert "sd3_size_costs" not in res
