"""The "use your own model" path: the example at reduced size, ``recipe_for`` on a Backbone
object, and ``python -m adapters.torch_sit.train --backbone module:factory``.

Truths used: the SD3 shift written out here (t' = s t / (1 + (s - 1) t) on the uniform grid), the
files on disk (the SideNet's JSON sidecar), the measured recipe's settings as the README's ablation
states them (trunc-exp interval sizes of rate 5 in [0.01, 0.35], squared error over |h|, EMA 0.99,
path features), the backbone's parameter count summed here, and the chain trainer's call count
(K + 1 backbone calls per iteration for chains that cannot reach t = 0: 2 x 0.35 < 1).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from adapters.torch_sit.sidenet.chain import ChainConfig
from adapters.torch_sit.sidenet.train import recipe_for

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent


def load_example():
    spec = importlib.util.spec_from_file_location("own_model_example", ROOT / "examples" / "own_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sd3_uniform(n: int, shift: float) -> list[float]:
    ts = [1.0 - j / n for j in range(n + 1)]
    return [shift * t / (1.0 + (shift - 1.0) * t) for t in ts]


def test_the_example_runs_at_reduced_size(tmp_path, capsys):
    out = tmp_path / "run"
    result = load_example().main(["--quick", "--out", str(out)])
    printed = capsys.readouterr().out
    for name in ("Euler", "UniPC-2", "BA (training-free)", "BA + SideNet"):
        assert name in printed
        row = result["errors"][name]
        assert set(row) == {4, 6, 8} and all(math.isfinite(e) and e > 0 for e in row.values())
    # the training directory a rerun resumes from, and the exported SideNet with its tuned grid
    assert (out / "checkpoint.safetensors").is_file() and (out / "summary.json").is_file()
    sidecar = json.loads((out / "sidenet.json").read_text())
    assert sidecar["extra"]["grid"] == {"schedule": "uniform", "shift": result["shift"]}
    assert result["shift"] in (0.25, 0.5, 1.0, 2.0)
    got = result["grid"]
    want = sd3_uniform(4, result["shift"])
    assert len(got) == 5 and all(abs(a - b) < 1e-12 for a, b in zip(got, want))


class TinyField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, t, x):
        return self.lin(torch.cat([x, t.reshape(-1, 1)], 1))


def test_recipe_for_a_backbone_object_is_the_measured_recipe():
    sys.path.insert(0, str(HERE))
    try:
        import _own_backbone
    finally:
        sys.path.remove(str(HERE))
    backbone = _own_backbone.make_backbone(width=4096)  # 24,578 parameters: the default SideNet is 6% of it
    cfg, arch = recipe_for(backbone)
    measured = dict(intervals="trunc-exp", exp_rate=5.0, h_min=0.01, h_max=0.35, loss_norm="h", ema_decay=0.99,
                    iters=4000, batch_size=256)
    assert {k: getattr(cfg, k) for k in measured} == measured
    plain = ChainConfig()
    assert any(getattr(plain, k) != v for k, v in measured.items())  # not the dataclass defaults
    assert arch["class"] == "MLPSideNet" and arch["path_features"] is True


def run_train(args, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "adapters.torch_sit.sidenet.train", *args, "--threads", "1"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_cli_trains_a_module_factory_backbone_for_a_few_iterations(tmp_path):
    out = tmp_path / "mine"
    # run from tests/, where the factory module lives, as a user runs from their project
    proc = run_train(["--backbone", "_own_backbone:make_backbone", "--backbone-kwargs", '{"width": 16}',
                      "--iters", "3", "--batch", "8", "--chain-length", "2", "--hidden", "8", "--embed-dim", "4",
                      "--out", str(out)], cwd=HERE)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backbone"] == "tiny-velocity-16"
    assert summary["iterations"] == 3
    assert summary["backbone_parameters"] == str(3 * 16 + 16 + 16 * 2 + 2)
    assert summary["backbone_calls_per_process"] == 3 * (2 + 1)
    assert summary["config"]["intervals"] == "trunc-exp" and summary["config"]["loss_norm"] == "h"
    assert (out / "sidenet.safetensors").is_file() and (out / "checkpoint.safetensors").is_file()
    # no progress bar off a terminal: tqdm's line starts with the bar's description, "chain: "
    assert not re.search(r"^chain: |\d it/s|\d+/\d+ \[", proc.stderr, re.M), proc.stderr


def test_cli_reports_a_swapped_argument_factory_at_wrap_time(tmp_path, monkeypatch, capsys):
    from adapters.torch_sit.sidenet import train as train_module

    monkeypatch.chdir(HERE)
    monkeypatch.syspath_prepend(str(HERE))
    with pytest.raises(SystemExit) as info:
        train_module.main(["--backbone", "_own_backbone:swapped_backbone", "--iters", "2", "--out", str(tmp_path / "x")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--backbone _own_backbone:swapped_backbone" in err and "TIME FIRST" in err and "from_diffusers_style" in err
    assert not (tmp_path / "x").exists()
