"""Issue 27: the wrap-time probe of ``Backbone.from_module`` / ``from_diffusers_style`` and the
label check of every call.

Each case was accepted by the old probe and failed later (inside the model at the first step, or
with torch's index error), or was accepted silently. Truths used: the models defined here, whose
faults are written into them (a float16 network, an in-place write, a NaN output, a time input on
0-1000, a sigma clamped to [0, 1]), and the caller's noise compared with its own copy.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from adapters.torch_sit.backbones import Backbone


class Linear2(nn.Module):
    """v(t, x) = W x + t b on 2-D states, in the dtype of its weights (no cast inside)."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.lin = nn.Linear(2, 2).to(dtype)
        with torch.no_grad():
            self.lin.weight.copy_(torch.randn(2, 2, generator=g))
            self.lin.bias.copy_(torch.randn(2, generator=g))

    def forward(self, t, x, labels=None):
        return x @ self.lin.weight.T + t[:, None] * self.lin.bias


def _no_warning(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_27_probe_float16_model_with_float32_noise():
    model = Linear2(torch.float16)
    x = torch.randn(3, 2)
    with pytest.raises(RuntimeError):  # what the old probe (run in float16) let through to the first step
        model(torch.full((3,), 0.5), x)
    with pytest.raises(ValueError) as info:
        Backbone.from_module(model, "half", (2,))
    msg = str(info.value)
    for part in ("'half'", "torch.float32 states", "works with torch.float16", "state_dtype=torch.float16",
                 "field_dtype=torch.float16", "model.to(torch.float32)"):
        assert part in msg, (part, msg)
    # the caller who does solve in float16 says so and is served
    bb = _no_warning(lambda: Backbone.from_module(Linear2(torch.float16), "half", (2,), state_dtype=torch.float16))
    assert bb(torch.full((3,), 0.5, dtype=torch.float16), x.half()).dtype == torch.float16


def test_27_probe_float32_model_with_float64_noise():
    with pytest.raises(ValueError) as info:
        Backbone.from_module(Linear2(torch.float32), "single", (2,), state_dtype=torch.float64)
    msg = str(info.value)
    assert "torch.float64 states" in msg and "works with torch.float32" in msg and "state_dtype=torch.float32" in msg
    _no_warning(lambda: Backbone.from_module(Linear2(torch.float64), "double", (2,), state_dtype=torch.float64))


def test_27_probe_float16_model_refused_by_the_train_command(tmp_path, monkeypatch, capsys):
    (tmp_path / "half_factory.py").write_text(
        "import torch\nfrom torch import nn\nfrom adapters.torch_sit.backbones import Backbone\n\n"
        "class Half(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.lin = nn.Linear(3, 2).half()\n"
        "    def forward(self, t, x):\n        return self.lin(torch.cat([x, t[:, None]], 1))\n\n"
        "def make():\n    return Backbone.from_module(Half(), 'half', (2,))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from adapters.torch_sit.sidenet import train as train_module

    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train_module.main(["--backbone", "half_factory:make", "--iters", "2", "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--backbone half_factory:make" in err and "torch.float16" in err and "state_dtype" in err
    assert "Traceback" not in err and not out.exists()


class InPlace(nn.Module):
    def forward(self, t, x):
        return x.mul_(2.0)  # writes into the caller's state


class InPlaceTime(nn.Module):
    def forward(self, t, x):
        t.clamp_(0.2, 0.8)
        return x * t[:, None]


@pytest.mark.parametrize("model", [InPlace(), InPlaceTime()])
def test_27_probe_model_that_writes_into_its_input(model):
    noise = torch.randn(4, 2)
    kept = noise.clone()
    model(torch.full((4,), 0.5), noise)
    if isinstance(model, InPlace):
        assert not torch.equal(noise, kept)  # the fault: the caller's noise is corrupted
    with pytest.raises(ValueError, match=r"wrote into its input.*x = x.clone\(\)"):
        Backbone.from_module(model, "inplace", (2,))


class Embedding4(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(4, 2)

    def forward(self, t, x, labels):
        return x * (1 + t[:, None]) + self.embed(labels)


def test_27_probe_labels_out_of_range_or_wrongly_sized():
    bb = Backbone.from_module(Embedding4(), "cls", (2,), num_classes=4)
    x, t = torch.randn(2, 2), torch.tensor([0.5, 0.5])
    with pytest.raises(IndexError):  # the fault: torch's index error from inside the model
        Embedding4()(t, x, torch.tensor([4, 0]))
    with pytest.raises(ValueError, match=r"labels: backbone 'cls' has num_classes = 4, so labels must be in \[0, 3\]; got 4"):
        bb(t, x, labels=torch.tensor([4, 0]))
    with pytest.raises(ValueError, match=r"labels: .* got -1"):
        bb(t, x, labels=torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"labels: expected one label per sample, shape \(2,\).*got shape \(3,\)"):
        bb(t, x, labels=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels: .*integer class labels.*torch.float32; pass labels.long\(\)"):
        bb(t, x, labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"labels: .*num_classes = 4"):  # at wrap time, from probe_cond
        Backbone.from_module(Embedding4(), "cls", (2,), num_classes=4, probe_cond={"labels": torch.tensor([0, 9])})
    good = torch.tensor([3, 0])
    torch.testing.assert_close(bb(t, x, labels=good), Embedding4.forward(bb.module, t, x, good), rtol=0, atol=0)
    good[0] = 7  # the same tensor written after its check is checked again
    with pytest.raises(ValueError, match="got 7"):
        bb(t, x, labels=good)


def test_27_probe_null_class_is_a_valid_label_when_the_backbone_has_one():
    class Embedding5(Embedding4):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 2)

    bb = Backbone.from_module(Embedding5(), "cfg", (2,), num_classes=4, extra={"null_class": 4})
    bb(torch.tensor([0.5, 0.5]), torch.randn(2, 2), labels=torch.tensor([4, 1]))
    with pytest.raises(ValueError, match=r"\[0, 3\] or the null class 4; got 5"):
        bb(torch.tensor([0.5, 0.5]), torch.randn(2, 2), labels=torch.tensor([5, 1]))


class NaNOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float("nan")))

    def forward(self, t, x):
        return x * self.scale


def test_27_probe_model_that_returns_nan():
    with pytest.raises(ValueError, match=r"non-finite values \(4 of 4 are NaN or inf\).*Check the weights"):
        Backbone.from_module(NaNOut(), "nan", (2,))


class Timesteps1000(nn.Module):
    """Time first, but trained on timesteps tau in [0, 1000]: v = tanh(W x) (1 + cos(pi tau / 1000)),
    smooth over its own time range, so tau = 0.1 and 0.9 are nearly the same time to it (the
    factor changes by about (pi 0.9 / 1000)^2 / 2 = 4e-6)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(2, 2, generator=g))

    def forward(self, t, x):
        return torch.tanh(x @ self.w) * (1 + torch.cos(torch.pi * t / 1000.0))[:, None]


def test_27_probe_warns_for_a_time_first_model_on_timesteps_0_1000():
    with pytest.warns(UserWarning) as record:
        bb = Backbone.from_module(Timesteps1000(), "t1000", (2,))
    msg = str(record[0].message)
    assert "t = 0.9 and t = 0.1" in msg and "seems to expect t scaled by 1000" in msg and "model(1000 * t, x)" in msg
    assert bb.name == "t1000"  # a warning, not a refusal


class FluxStyle(nn.Module):
    """forward(sample, timestep) with sigma in [0, 1] (clamped, as some models do)."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.w = nn.Parameter(torch.randn(3, 2, generator=g))

    def forward(self, sample, timestep):
        sigma = timestep.clamp(0.0, 1.0)
        return torch.tanh(torch.cat([sample, sigma[:, None]], 1) @ self.w)


def test_27_probe_warns_for_a_flux_style_model_wrapped_with_timestep_scale_1000():
    with pytest.warns(UserWarning, match=r"seems to expect timestep_scale=1: pass timestep_scale=1 "):
        Backbone.from_diffusers_style(FluxStyle(), "flux", (2,))
    _no_warning(lambda: Backbone.from_diffusers_style(FluxStyle(), "flux", (2,), timestep_scale=1))


def test_27_probe_legitimate_own_backbone_does_not_warn(monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent))
    sys.modules.pop("_own_backbone", None)
    import _own_backbone

    for width in (8, 32):
        bb = _no_warning(lambda: _own_backbone.make_backbone(width))
        assert bb.module.calls == 1  # one probe call: no second call was needed


def test_27_probe_a_zero_output_model_is_not_judged_on_time():
    class Zero(nn.Module):
        def forward(self, t, x):
            return torch.zeros_like(x)

    _no_warning(lambda: Backbone.from_module(Zero(), "zero", (2,)))


@pytest.mark.parametrize("bad", ["float32", torch.int64, None])
def test_27_probe_state_dtype_must_be_a_floating_torch_dtype(bad):
    with pytest.raises(ValueError, match="state_dtype: expected a floating torch dtype"):
        Backbone.from_module(Linear2(), "x", (2,), state_dtype=bad)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_27_probe_num_classes_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match="num_classes: expected None"):
        Backbone.from_module(Embedding4(), "x", (2,), num_classes=bad)
