"""Smoke test of ``python -m analysis.gpu_check_sit --tiny`` (CPU, tiny random SiT), and its
host-sync watch.

Truths used: the NFE the solver counts (4 for both methods at ``--nfe 4``), the rows the guided
backbone must see in chain training (K + 1 calls of B rows, plus the guided rows), the JSON it
writes to $OUT, and a SideNet written here to read a value back to the host (``if tensor:``) in
every call, which the watch must report, where the shipped ones must report nothing.
"""

from __future__ import annotations

import json

import torch

from adapters.torch_sit.sidenet.networks import ConvSideNet
from adapters.torch_sit.sit.backbone import repa_sit_backbone, tiny_sit_config
from analysis import gpu_check_sit


def test_tiny_run_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OUT", str(tmp_path))
    res = gpu_check_sit.main(["--tiny", "--nfe", "4", "--repeats", "1", "--iters", "1"])
    out = capsys.readouterr().out
    assert "| ba-solver | fp32 |" in out and "| ba-solver | bf16 |" in out and "| ChainTrainer.step |" in out
    assert "| host syncs inside a guided solve's loop |" in out and "| CUDA-graph solve against eager |" in out
    saved = json.loads((tmp_path / "gpu_check_sit.json").read_text())
    assert saved["sampling"] == json.loads(json.dumps(res["sampling"]))  # JSON's float repr round-trips exactly
    assert [(r["precision"], r["method"]) for r in res["sampling"]] == [
        (p, m) for p in ("fp32", "bf16") for _ in range(2) for m in ("euler", "ba-solver")]
    assert all(r["nfe"] == 4 for r in res["sampling"])
    assert all(r["perception_calls"] > 0 for r in res["sampling"] if r["method"] == "ba-solver")
    assert res["design"] == "patch" and res["syncs"]["syncs"] == []
    unguided, guided = res["training"]
    assert unguided["backbone_rows_per_iter"] == 4 * 9  # K + 1 = 9 calls of 4 chains
    assert 4 * 9 < guided["backbone_rows_per_iter"] < 2 * 4 * 9


class ReadsBack(ConvSideNet):
    """A SideNet that reads a value back to the host in every forward (``if tensor:``)."""

    def forward(self, x, v, t, d, labels=None, guidance=None, cond=None):
        if x.abs().sum() >= 0:
            pass
        return super().forward(x, v, t, d, labels, guidance, cond)


def test_the_sync_watch_reports_a_read_back_inside_the_loop():
    backbone = repa_sit_backbone(tiny_sit_config(), 256, None, zero_init=False, seed=0)
    torch.manual_seed(0)
    small = dict(base_channels=16, time_embed_dim=8, num_layers=1, res_blocks=1, num_heads=2, num_classes=10,
                 guidance=True, patch=2)
    quiet, loud = ConvSideNet(4, **small), ReadsBack(4, **small)
    kw = dict(batch=2, nfe=3, guidance_scale=2.0, device=torch.device("cpu"))
    assert gpu_check_sit.check_syncs(backbone, quiet, **kw)["syncs"] == []
    found = gpu_check_sit.check_syncs(backbone, loud, **kw)["syncs"]
    # 3 intervals: a forward probe each, a backward probe in the 2 bi-anchor ones
    # named at the innermost frame of the repository's packages: NeuralPerception's call of the SideNet
    assert len(found) == 5 and all(f.startswith("_local_scalar_dense at perception.py") for f in found)
