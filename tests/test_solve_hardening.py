"""Bad options of ``solve`` and the solvers refused at the start, naming the option (issue 12's
red-team list, each reproduced on commit c5b13e5 where it gave a wrong answer or a raw error).

Truths: the refusals themselves (type and the option named), and for what is accepted, the
closed-form Euler step of dx/dt = x from t = 1 to 0 (exactly zero).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import baquad
from baquad.perception import Perception
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.networks import MLPSideNet


def minus_x(t, x):
    return -x


def identity(t, x):
    return x


NON_FLOAT_NUMPY = [np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint32, bool, np.bool_, np.complex64,
                   np.complex128, "int32", "complex64", "U3", object, "not-a-dtype"]


@pytest.mark.parametrize("dtype", NON_FLOAT_NUMPY, ids=str)
def test_numpy_field_dtype_must_be_floating(dtype):
    # int32 turned an Euler step that should give [0, 0] into [0.5, 0.5] on c5b13e5
    with pytest.raises(TypeError, match="field_dtype"):
        baquad.solve(minus_x, np.array([0.5, 0.5]), [1.0, 0.0], method="euler", field_dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool, torch.complex64, np.float32, "float32"], ids=str)
def test_torch_field_dtype_must_be_a_floating_torch_dtype(dtype):
    with pytest.raises(TypeError, match="field_dtype"):
        baquad.solve(minus_x, torch.tensor([0.5, 0.5]), [1.0, 0.0], method="euler", field_dtype=dtype)


@pytest.mark.parametrize("x0, dtype", [(np.array([0.5, 0.5]), "float32"), (np.array([0.5, 0.5]), np.float16),
                                      (torch.tensor([0.5, 0.5]), torch.bfloat16)])
def test_floating_field_dtypes_are_accepted(x0, dtype):
    res = baquad.solve(identity, x0, [1.0, 0.0], method="euler", field_dtype=dtype)
    assert float(abs(res.x).max()) == 0.0  # x + (0 - 1) x = 0 exactly


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["b", "i", "u", "c"]), st.sampled_from([1, 2, 4, 8]))
def test_no_non_floating_numpy_dtype_is_accepted(kind, size):
    try:
        dtype = np.dtype(f"{kind}{size}")
    except TypeError:
        return  # not a dtype numpy knows (e.g. complex of 1 byte)
    with pytest.raises(TypeError, match="field_dtype"):
        baquad.solve(minus_x, np.array([0.5, 0.5]), [1.0, 0.0], method="euler", field_dtype=dtype)


@pytest.mark.parametrize("x0", [np.matrix([[1.0, 2.0]]), np.ma.masked_array([1.0, 2.0], mask=[0, 1])], ids=["matrix", "masked"])
def test_numpy_subclasses_that_change_arithmetic_are_refused(x0):
    with pytest.raises(TypeError, match="x0"):
        baquad.solve(minus_x, x0, [1.0, 0.0])


def test_meta_device_state_is_refused():
    with pytest.raises(ValueError, match="x0.*meta"):
        baquad.solve(minus_x, torch.ones(2, device="meta"), [1.0, 0.0])


def test_nan_from_the_perception_is_blamed_on_the_perception():
    class NaNs(Perception):
        history_size = 1

        def __call__(self, x, v, t, offsets, history=()):
            return np.full((len(offsets), *x.shape), np.nan)

    with pytest.raises(FloatingPointError, match="perception NaNs.*turned finite inputs into NaN"):
        baquad.solve(minus_x, np.ones(2), [1.0, 0.5, 0.0], perception=NaNs())
    # and a field that returns NaN at t = 0.5 is named as the field (its inputs were finite)
    with pytest.raises(FloatingPointError, match=r"vfield \(call 2, t = 0.5\) turned finite inputs"):
        baquad.solve(lambda t, x: np.full_like(x, np.nan) if t < 0.6 else -x, np.ones(2), [1.0, 0.5, 0.0])


@pytest.mark.parametrize("kwargs, name", [
    (dict(method="unipc", order=None), "order"),
    (dict(method="dpm++", order="2"), "order"),
    (dict(method="dpm++", order=2.5), "order"),
    (dict(method="unipc", disable_corrector=5), "disable_corrector"),
    (dict(method="unipc", disable_corrector=[0.5]), "disable_corrector"),
    (dict(method="unipc", disable_corrector=[-1]), "disable_corrector"),
    (dict(method="unipc", disable_corrector="01"), "disable_corrector"),
    (dict(anchors=""), "anchors"),
    (dict(final=0), "final"),
    (dict(anchors=True), "anchors"),
])
def test_bad_solver_options_name_the_option(kwargs, name):
    with pytest.raises(ValueError, match=name):
        baquad.solve(minus_x, np.ones(2), np.linspace(1.0, 0.0, 5), **kwargs)


def test_neural_perception_refuses_what_the_sidenet_cannot_take():
    with pytest.raises(TypeError, match="sidenet"):
        NeuralPerception(None)
    net = MLPSideNet(2, hidden=8, depth=1, embed_dim=4)
    with pytest.raises(ValueError, match="labels"):
        NeuralPerception(net, labels=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="guidance"):
        NeuralPerception(net, guidance_scale=2.0)
    # the chain trainer and the sampler pass the backbone's conditioning on with strict=False
    p = NeuralPerception(net, labels=torch.zeros(3, dtype=torch.long), guidance_scale=2.0, strict=False)
    assert p.labels is None and p.guidance_scale is None
