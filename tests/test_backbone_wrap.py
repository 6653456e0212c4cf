"""Wrapping a user's torch model as a backbone: the wrap-time probe and the diffusers-style adapter.

Truths used: the models themselves, called directly in the test the way their convention says
(``model(t, x)``; a diffusers-style ``model(sample, timestep=1000 t)``; a real diffusers
``UNet2DModel`` called as its pipelines call it, ``unet(x, timestep).sample``), and counts of the
calls a model records itself.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters.torch_sit.backbones import Backbone

SHAPE = (1, 8, 8)


class TimeFirst(nn.Module):
    """A velocity model in the project's convention, ``forward(t, x)``; counts its calls."""

    def __init__(self, out_dtype=None, out_shape=None):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.calls = 0
        self.out_dtype, self.out_shape = out_dtype, out_shape

    def forward(self, t, x, **cond):
        self.calls += 1
        v = self.conv(x) * (1 + t.reshape(-1, 1, 1, 1))
        if self.out_shape is not None:
            v = v.reshape(v.shape[0], -1)[:, : self.out_shape]
        return v if self.out_dtype is None else v.to(self.out_dtype)


class SampleFirst(nn.Module):
    """A diffusers-style model, ``forward(sample, timestep, class_labels=None)``, timesteps 0-1000."""

    def __init__(self, num_classes=None):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.temb = nn.Linear(1, 1)
        self.embed = nn.Embedding(num_classes, 1) if num_classes else None
        self.seen: list = []

    def forward(self, sample, timestep, class_labels=None):
        self.seen.append((timestep.detach().clone(), None if class_labels is None else class_labels.clone()))
        h = self.conv(sample) + self.temb(timestep.reshape(-1, 1) / 1000.0)[:, :, None, None]
        if self.embed is not None:
            h = h + self.embed(class_labels)[:, :, None, None]
        return h


def test_a_time_first_model_wraps_with_one_probe_call_and_no_global_randomness():
    model = TimeFirst()
    torch.manual_seed(123)
    want_next = torch.rand(3)
    torch.manual_seed(123)
    bb = Backbone.from_module(model, "mine", SHAPE)
    assert model.calls == 1  # one probe call
    assert torch.equal(torch.rand(3), want_next)  # the probe drew from its own generator
    assert bb.num_parameters == sum(p.numel() for p in model.parameters()) == 10
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert Backbone.from_module(TimeFirst(), "mine", SHAPE, probe=False).module.calls == 0


def test_swapped_arguments_fail_at_wrap_time_naming_the_convention():
    with pytest.raises(ValueError) as info:
        Backbone.from_module(SampleFirst(), "swapped", SHAPE)
    msg = str(info.value)
    for part in ("'swapped'", "module(t, x, **cond)", "TIME FIRST", "[0, 1]",
                 "t = 1 noise", "from_diffusers_style", "timestep_scale=1000", "probe=False"):
        assert part in msg, part
    assert info.value.__cause__ is not None  # the model's own exception is kept


@pytest.mark.parametrize("model, said", [
    (TimeFirst(out_dtype=torch.float64), "torch.float64 tensor of shape (2, 1, 8, 8)"),
    (TimeFirst(out_shape=10), "torch.float32 tensor of shape (2, 10)"),
])
def test_a_wrong_output_fails_at_wrap_time(model, said):
    with pytest.raises(ValueError, match=r"returned a .*expected the velocity") as info:
        Backbone.from_module(model, "bad", SHAPE)
    assert said in str(info.value) and "(t, x" in str(info.value)


def test_a_state_shape_that_is_not_a_shape_is_refused():
    for bad in ((), (0, 8), 8, (2.5,)):
        with pytest.raises(ValueError, match="state_shape"):
            Backbone.from_module(TimeFirst(), "mine", bad)


def test_class_conditional_probe_passes_class_zero_or_the_given_cond():
    class NeedsLabelsAndMore(nn.Module):
        def forward(self, t, x, labels, extra):
            assert labels.dtype == torch.long and labels.shape == (2,)
            return x * extra

    with pytest.raises(ValueError, match=r"failed with TypeError.*probe_cond="):
        Backbone.from_module(NeedsLabelsAndMore(), "cond", (3,), num_classes=4)
    with pytest.warns(UserWarning, match="may ignore t"):  # x * extra does not depend on t (issue 27)
        bb = Backbone.from_module(NeedsLabelsAndMore(), "cond", (3,), num_classes=4,
                                  probe_cond={"labels": torch.tensor([1, 2]), "extra": 2.0})
    assert bb.num_classes == 4


def test_diffusers_style_field_is_the_model_called_the_diffusers_way():
    model = SampleFirst()
    bb = Backbone.from_diffusers_style(model, "ds", SHAPE)  # timestep_scale 1000, probed
    x = torch.randn(3, *SHAPE, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([1.0, 0.5, 0.02])
    got = bb(t, x)
    want = model(x, torch.tensor([1000.0, 500.0, 20.0]))
    # pass-through: 1000 t rounds to exactly these timesteps in float32 (0.02f * 1000 -> 20.0), so
    # the model sees the same inputs and the wrapper returns its output untouched
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    # the solver's form: t a Python float (0.3f * 1000 rounds to 300.0 exactly: the same inputs)
    torch.testing.assert_close(bb.vfield()(0.3, x), model(x, torch.full((3,), 300.0)), rtol=0, atol=0)
    # a model that takes sigma itself: t passes through untouched
    with pytest.warns(UserWarning, match="seems to expect timestep_scale=1000"):  # it reads timestep / 1000
        unit = Backbone.from_diffusers_style(model, "ds1", SHAPE, timestep_scale=1)
    torch.testing.assert_close(unit(t, x), model(x, t), rtol=0, atol=0)
    for bad in (0, -1000, float("nan"), True):
        with pytest.raises(ValueError, match="timestep_scale"):
            Backbone.from_diffusers_style(model, "ds", SHAPE, timestep_scale=bad)


def test_diffusers_style_labels_reach_the_class_labels_keyword_and_guidance_is_refused():
    model = SampleFirst(num_classes=3)
    bb = Backbone.from_diffusers_style(model, "dsc", SHAPE, num_classes=3)
    assert torch.equal(model.seen[-1][1], torch.zeros(2, dtype=torch.long))  # the probe's class 0
    x = torch.randn(2, *SHAPE)
    labels = torch.tensor([2, 1])
    got = bb(torch.tensor([0.4, 0.9]), x, labels=labels)
    # pass-through, as above (0.4f * 1000 and 0.9f * 1000 round to 400.0 and 900.0 exactly)
    torch.testing.assert_close(got, model(x, torch.tensor([400.0, 900.0]), class_labels=labels), rtol=0, atol=0)
    with pytest.raises(TypeError, match="guidance_scale"):
        bb(torch.tensor([0.4, 0.9]), x, labels=labels, guidance_scale=2.0)


def test_diffusers_unet_wrapped_equals_the_unet_called_by_diffusers_convention():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    with pytest.raises(ValueError, match="TIME FIRST"):  # the diffusers order given to from_module
        Backbone.from_module(unet, "unet", SHAPE)
    bb = Backbone.from_diffusers_style(unet, "unet", SHAPE)
    x = torch.randn(2, *SHAPE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = unet(x, torch.tensor([700.0, 50.0])).sample
        got = bb(torch.tensor([0.7, 0.05]), x)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
