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
    assert arch["base_perception"] == "polynomial"  # starts from the training-free default


def own_backbones():
    sys.path.insert(0, str(HERE))
    try:
        import _own_backbone
    finally:
        sys.path.remove(str(HERE))
    return _own_backbone


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_an_untrained_recipe_sidenet_samples_as_the_training_free_default(kind):
    """What ``recipe_for`` gives a user's own model starts as ``baquad.solve``'s default: the
    SideNet is a residual on the polynomial perception with a zero output layer, so before any
    training v_hat = P(t + d) + d * 0 = P(t + d) exactly; the BA-solver then sums the same
    predictions with the same weights in another order (the default folds the weights into the
    anchor velocities), which moves each interval's update by a few ulps of the state and
    velocity magnitudes. The bound: 8 ulps per interval of the largest magnitude of x and
    h * sum(w) * max|v|, both at most the state's scale here, over NFE intervals, doubled for the
    field's amplification of earlier differences (Lipschitz constant below 1 on [0, 1]: the
    networks subtract x and their weights are below 0.5)."""
    import baquad
    from adapters.torch_sit.sidenet.networks import build_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from baquad.schedules import nfe_grid

    sys.path.insert(0, str(HERE))
    try:
        from _ulps import ulps
    finally:
        sys.path.remove(str(HERE))
    mod = own_backbones()
    if kind == "vector":
        backbone, noise = mod.make_backbone(width=64), torch.randn(64, 2, generator=torch.Generator().manual_seed(3))
    else:
        backbone = mod.make_image_backbone()
        noise = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with pytest.warns(UserWarning, match="SideNet"):  # the smallest SideNets are larger than these toy models
        cfg, arch = recipe_for(backbone)
    assert arch["base_perception"] == "polynomial" and arch["class"] == ("MLPSideNet" if kind == "vector" else
                                                                          "ConvSideNet")
    torch.manual_seed(cfg.seed)  # as train() builds it before its first step
    untrained = NeuralPerception(build_sidenet(arch))
    plain = NeuralPerception(build_sidenet({**arch, "base_perception": "anchor-only"}))  # the old start
    field = backbone.vfield()
    for nfe in (5, 8):
        ts = nfe_grid("ba-solver", nfe)
        default = baquad.solve(field, noise, ts).x  # the training-free default perception
        got = baquad.solve(field, noise, ts, perception=untrained).x
        tol = ulps(2 * 8 * nfe, torch.float32, default, noise)
        assert float((got - default).abs().max()) <= tol, (nfe, float((got - default).abs().max()), tol)
        # an anchor-only start is another solver: far outside the bound (the test can fail)
        off = float((baquad.solve(field, noise, ts, perception=plain).x - default).abs().max())
        assert off > 100 * tol, (nfe, off, tol)


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
