"""The digits SideNet trains through the same entry point as every backbone
(``python -m adapters.torch_sit.train --backbone digits-sit``): the recipe's MLP SideNet,
conditioned on the class and on the guidance scale, with chains guided over a range of scales that
holds the demo's."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

from adapters.torch_sit.sidenet.checkpoint import load_sidenet  # noqa: E402
from adapters.torch_sit.digits.model import DIGITS_GUIDANCE_SCALE  # noqa: E402
from adapters.torch_sit.sidenet.train import main  # noqa: E402


def test_train_command_runs_the_digits_recipe(tmp_path):
    assert main(["--backbone", "digits-sit", "--out", str(tmp_path), "--iters", "3", "--batch", "8",
                 "--chain-length", "2", "--threads", "1", "--no-progress"]) == 0
    net = load_sidenet(tmp_path / "sidenet.safetensors")
    cfg = net.config()
    assert cfg["class"] == "MLPSideNet" and cfg["dim"] == 64 and cfg["num_classes"] == 10 and cfg["guidance"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["guidance_scale"] <= DIGITS_GUIDANCE_SCALE <= summary["config"]["guidance_max"]
    assert summary["backbone"] == "digits-sit" and summary["backbone_calls_per_process"] == 3 * 3
    # the guidance scale reaches the network: a trained SideNet answers differently at another scale
    x, v = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    t, d, y = torch.full((4,), 0.5), torch.full((4,), -0.1), torch.arange(4)
    with torch.no_grad():
        g1, g2 = net(x, v, t, d, y, torch.full((4,), 1.5)), net(x, v, t, d, y, torch.full((4,), 3.0))
    assert g1.shape == x.shape and not torch.allclose(g1, g2)
