"""build_sidenet and the SideNet constructors refuse bad configs, naming the field (issue 12).

Truths: the published constraints on each argument (sizes are positive integers, the sinusoidal
embedding needs a cos/sin pair, a frequency is a positive finite number, flags are booleans,
attention heads divide the channels), and tensor counts of the built modules.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from adapters.torch_sit.sidenet.networks import SIDENETS, ConvSideNet, MLPSideNet, build_sidenet

MLP = dict(dim=2, hidden=8, depth=2, embed_dim=4)
CONV = dict(in_channels=2, base_channels=8, time_embed_dim=8, num_layers=1, num_heads=2, res_blocks=1)

# field -> smallest valid integer, per class
INT_FIELDS = {
    "MLPSideNet": {"dim": 1, "hidden": 1, "depth": 1, "embed_dim": 2},
    "ConvSideNet": {"in_channels": 1, "base_channels": 1, "time_embed_dim": 2, "num_layers": 1, "num_heads": 1, "res_blocks": 0},
}
BOOL_FIELDS = ("guidance", "offset_log_sign", "path_features")
BASE = {"MLPSideNet": MLP, "ConvSideNet": CONV}


def config(cls: str, **kw) -> dict:
    return {"class": cls, **BASE[cls], **kw}


@pytest.mark.parametrize("cls", ["MLPSideNet", "ConvSideNet"])
@pytest.mark.parametrize("bad", [0, -1, -30000, 2.5, 8.0, math.nan, math.inf, "8", None, True])
def test_bad_integer_fields_are_refused_by_name(cls, bad):
    for field, smallest in INT_FIELDS[cls].items():
        if isinstance(bad, int) and not isinstance(bad, bool) and bad >= smallest:
            continue
        with pytest.raises(ValueError, match=f"{cls}: {field} must be an integer >= {smallest}, got"):
            build_sidenet(config(cls, **{field: bad}))


@pytest.mark.parametrize("cls", ["MLPSideNet", "ConvSideNet"])
def test_sizes_below_the_minimum_are_refused(cls):
    # embed_dim 1 gives sinusoidal features of zero frequencies: t and d would be invisible
    field = "embed_dim" if cls == "MLPSideNet" else "time_embed_dim"
    with pytest.raises(ValueError, match=f"{field} must be an integer >= 2, got 1"):
        build_sidenet(config(cls, **{field: 1}))


@pytest.mark.parametrize("cls", ["MLPSideNet", "ConvSideNet"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, 0.0, -100.0, "100", None, True])
def test_bad_max_freq_is_refused_by_name(cls, bad):
    with pytest.raises(ValueError, match=f"{cls}: max_freq must be a finite number > 0, got"):
        build_sidenet(config(cls, max_freq=bad))


@pytest.mark.parametrize("cls", ["MLPSideNet", "ConvSideNet"])
@pytest.mark.parametrize("bad", [0, -3, 2.0, "10", True])
def test_bad_num_classes_is_refused_by_name(cls, bad):
    # 0 used to build an unconditional net while the config said 0 classes
    with pytest.raises(ValueError, match=f"{cls}: num_classes must be None .* or an integer >= 1"):
        build_sidenet(config(cls, num_classes=bad))


@pytest.mark.parametrize("cls", ["MLPSideNet", "ConvSideNet"])
@pytest.mark.parametrize("field", BOOL_FIELDS)
@pytest.mark.parametrize("bad", ["yes", "false", 1, 0, None])
def test_bad_flags_are_refused_by_name(cls, field, bad):
    # bool("false") is True: a flag must be a real boolean
    with pytest.raises(ValueError, match=f"{cls}: {field} must be True or False"):
        build_sidenet(config(cls, **{field: bad}))


def test_heads_must_divide_channels_even_without_attention_built_yet():
    with pytest.raises(ValueError, match="base_channels 8 must be divisible by num_heads 3"):
        build_sidenet(config("ConvSideNet", num_heads=3))


def test_config_structure_is_checked():
    with pytest.raises(TypeError, match="build_sidenet: config must be a dict"):
        build_sidenet(["MLPSideNet"])
    with pytest.raises(ValueError, match="unknown SideNet class 'Nope'"):
        build_sidenet({"class": "Nope"})
    with pytest.raises(ValueError, match="unknown SideNet class None"):
        build_sidenet({"dim": 2})
    with pytest.raises(ValueError, match="MLPSideNet has no argument.*widht; its arguments are dim, hidden"):
        build_sidenet(config("MLPSideNet", widht=4))
    with pytest.raises(ValueError, match="MLPSideNet needs the argument.*dim"):
        build_sidenet({"class": "MLPSideNet", "hidden": 4})


BAD_VALUES = st.sampled_from([0, -1, -(2**40), 0.5, math.nan, math.inf, -math.inf, "3", None, [3], True, False])


@settings(max_examples=60, deadline=None)
@given(cls=st.sampled_from(["MLPSideNet", "ConvSideNet"]), data=st.data())
def test_any_out_of_range_value_is_refused_naming_its_field(cls, data):
    """Property: one field set to an out-of-range or mistyped value is refused, naming it."""
    fields = sorted(INT_FIELDS[cls]) + ["max_freq", "num_classes"] + list(BOOL_FIELDS)
    field = data.draw(st.sampled_from(fields))
    value = data.draw(BAD_VALUES)
    ok = (
        (field in INT_FIELDS[cls] and type(value) is int and value >= INT_FIELDS[cls][field])
        or (field == "max_freq" and type(value) in (int, float) and math.isfinite(value) and value > 0)
        or (field == "num_classes" and (value is None or (type(value) is int and value >= 1)))
        or (field in BOOL_FIELDS and isinstance(value, bool))
    )
    if ok:
        return
    with pytest.raises(ValueError, match=f"{cls}: {field} must"):
        build_sidenet(config(cls, **{field: value}))


@settings(max_examples=25, deadline=None)
@given(
    cls=st.sampled_from(["MLPSideNet", "ConvSideNet"]),
    depth=st.integers(1, 4),
    res_blocks=st.integers(0, 2),
    guidance=st.booleans(),
    num_classes=st.sampled_from([None, 3]),
)
def test_min_tensor_count_is_a_lower_bound(cls, depth, res_blocks, guidance, num_classes):
    """Loaders refuse a file with fewer tensors than min_tensor_count before building: the bound
    must hold for every valid config (counted on the built module)."""
    extra = dict(depth=depth) if cls == "MLPSideNet" else dict(num_layers=depth, res_blocks=res_blocks)
    cfg = config(cls, guidance=guidance, num_classes=num_classes, **extra)
    with torch.device("meta"):
        net = build_sidenet(cfg)
    assert SIDENETS[cls].min_tensor_count(cfg) <= len(net.state_dict())


def test_valid_configs_keep_their_architecture():
    # parameter counts by hand: MLP dim 2, hidden 8, depth 2, embed 4, offset features (+2 inputs)
    mlp = build_sidenet(config("MLPSideNet"))
    t_mlp = (4 * 4 + 4) + (4 * 4 + 4)  # t: Linear(4, 4), Linear(4, 4)
    d_mlp = (6 * 4 + 4) + (4 * 4 + 4)  # d: Linear(4 + 2, 4), Linear(4, 4)
    inp, layer, proj, out = 4 * 8 + 8, 8 * 8 + 8, 2 * (4 * 8 + 8), 8 * 2 + 2
    assert sum(p.numel() for p in mlp.parameters()) == t_mlp + d_mlp + inp + layer + proj + out
    assert isinstance(mlp, MLPSideNet) and mlp.config() == config("MLPSideNet", num_classes=None, guidance=False,
                                                                   max_freq=100.0, offset_log_sign=True,
                                                                   path_features=False)
    conv = build_sidenet(config("ConvSideNet"))
    assert isinstance(conv, ConvSideNet) and len(conv.blocks) == 2  # one ResBlock + one attention
