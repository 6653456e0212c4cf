"""reference_solve refuses what would make a wrong reference (issue 12).

The reference is the truth behind the oracle perception and every benchmark, so a field output
of the wrong shape (which the flattened DOP853 system would broadcast), dtype or backend, a
non-finite output, a state that is not real, and tolerances DOP853 would silently clip must all
be errors that name the argument (and, for the field, the call and its time). The accepted
cases are checked against closed-form solutions written out here.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from baquad.reference import reference_solve


def decay(t, x):
    """dx/dt = -x: x(t) = x(t0) exp(-(t - t0))."""
    return -x


# ----------------------------------------------------------------------------- field outputs


def test_wrong_shape_of_the_first_call_is_refused_not_broadcast():
    # The reproduction: x[:1] of a 2-vector broadcasts to both entries in the flat system
    # and gave the "reference" [e, e + 1] for dx/dt = ... without any error.
    with pytest.raises(ValueError, match=r"vfield: call 1 \(t = 0\.0\).*shape \(1,\).*shape \(2,\)"):
        reference_solve(lambda t, x: x[:1], np.array([1.0, 2.0]), [0.0, 1.0])


@pytest.mark.parametrize(
    "field",
    [
        lambda t, x: x[:, :1],  # (4, 1): broadcastable to (4, 3)
        lambda t, x: x.reshape(3, 4),  # same size, other shape: the flat system took it as is
        lambda t, x: x[None],  # an extra axis
        lambda t, x: 1.0,  # a Python scalar
        lambda t, x: (-x).tolist(),  # a list of the right length
        lambda t, x: np.float64(0.0),  # a numpy scalar
    ],
    ids=["broadcast-column", "reshaped", "extra-axis", "python-scalar", "list", "numpy-scalar"],
)
def test_wrong_output_type_or_shape_is_refused(field):
    with pytest.raises(ValueError, match=r"vfield: call 1 \(t = 1\.0\).*expected numpy\.ndarray of shape \(4, 3\)"):
        reference_solve(field, np.ones((4, 3)), [1.0, 0.0])


def test_wrong_output_dtype_is_refused_numpy():
    # the field is called in float64; a float32 answer would make a float32-accurate "reference"
    with pytest.raises(ValueError, match="vfield: call 1 .*dtype float32.*dtype float64"):
        reference_solve(lambda t, x: (-x).astype(np.float32), np.ones((2, 2)), [0.0, 1.0])
    # with field_dtype="input" the call dtype is x0's
    with pytest.raises(ValueError, match="vfield: call 1 .*dtype float64.*dtype float32"):
        reference_solve(lambda t, x: (-x).astype(np.float64), np.ones((2, 2), np.float32), [0.0, 1.0],
                        field_dtype="input")


def test_wrong_output_dtype_or_backend_is_refused_torch():
    x0 = torch.ones(3, 2)
    with pytest.raises(ValueError, match="vfield: call 1 .*torch.float32.*torch.float64"):
        reference_solve(lambda t, x: (-x).float(), x0, [0.0, 1.0])
    with pytest.raises(ValueError, match="vfield: call 1 .*numpy.ndarray.*expected torch.Tensor"):
        reference_solve(lambda t, x: -x.numpy(), x0, [0.0, 1.0])
    with pytest.raises(ValueError, match="vfield: call 1 .*expected numpy.ndarray"):
        reference_solve(lambda t, x: torch.from_numpy(-x), np.ones((3, 2)), [0.0, 1.0])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_output_names_the_call_and_its_time(bad):
    def field(t, x):
        return -x if t < 0.5 else np.full_like(x, bad)

    with pytest.raises(ValueError, match="non-finite") as err:
        reference_solve(field, np.ones((2, 2)), [0.0, 1.0])
    m = re.search(r"vfield: call (\d+) \(t = ([0-9.e+-]+)\)", str(err.value))
    assert m is not None, str(err.value)
    assert int(m.group(1)) > 1 and float(m.group(2)) >= 0.5  # the first bad call, not call 1


@settings(max_examples=40, deadline=None)
@given(
    shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=4),
    out_shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
)
def test_any_other_output_shape_is_refused(shape, out_shape):
    """Property: whatever the state's shape, an output of any other shape is an error."""
    if tuple(out_shape) == tuple(shape):
        out_shape = tuple(shape) + (1,)
    with pytest.raises(ValueError, match=r"vfield: call 1 .*returned numpy\.ndarray of shape"):
        reference_solve(lambda t, x: np.zeros(out_shape), np.ones(shape), [0.0, 1.0])


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float16, np.float32, np.int64, np.int8, np.uint8, np.bool_, np.complex128]))
def test_any_other_output_dtype_is_refused(dtype):
    """Property: with the default float64 calls, an output of any other dtype is an error."""
    with pytest.raises(ValueError, match=r"vfield: call 1 .*dtype"):
        reference_solve(lambda t, x: np.zeros(x.shape, dtype=dtype), np.ones(3), [0.0, 1.0])


# ----------------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    "x0",
    [
        np.array([1.0 + 1.0j, 2.0]),
        torch.tensor([1.0 + 1.0j, 2.0]),
        np.array([True, False]),
        torch.tensor([True, False]),
        np.array(["a", "b"]),
        np.array([1.0, None], dtype=object),
    ],
    ids=["complex-np", "complex-torch", "bool-np", "bool-torch", "str", "object"],
)
def test_non_real_state_is_refused(x0):
    # before: a complex state lost its imaginary part with only a numpy warning
    with pytest.raises(TypeError, match="x0: has dtype"):
        reference_solve(decay, x0, [0.0, 1.0])


@pytest.mark.parametrize("x0", [np.array([1, 2]), torch.tensor([1, 2])], ids=["numpy", "torch"])
def test_integer_state_is_integrated_in_float64(x0):
    # dx/dt = -x from (1, 2): exp(-1) * (1, 2). A torch integer state used to come back truncated.
    out = reference_solve(decay, x0, [0.0, 1.0])
    assert out.dtype in (np.float64, torch.float64)
    np.testing.assert_allclose(np.asarray(out[-1]), math.exp(-1.0) * np.array([1.0, 2.0]), rtol=1e-8)
    with pytest.raises(TypeError, match="x0: has the integer dtype.*field_dtype='input'"):
        # the field would see states truncated to integers (it gave [1, 1] for [e^-1, 2 e^-1])
        reference_solve(decay, x0, [0.0, 1.0], field_dtype="input")


@pytest.mark.parametrize("x0", [np.array([np.nan, 1.0]), torch.tensor([1.0, math.inf])], ids=["nan", "inf"])
def test_non_finite_state_is_refused(x0):
    with pytest.raises(ValueError, match="x0: contains NaN or inf"):
        reference_solve(decay, x0, [0.0, 1.0])


def test_other_state_types_are_refused():
    with pytest.raises(TypeError, match="x0: expected a numpy array or a torch tensor, got list"):
        reference_solve(decay, [1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ValueError, match="x0: a 0-d numpy array"):
        reference_solve(decay, np.array(1.0), [0.0, 1.0])
    with pytest.raises(TypeError, match="vfield: expected a callable"):
        reference_solve("decay", np.ones(2), [0.0, 1.0])


@pytest.mark.parametrize("name", ["rtol", "atol"])
@pytest.mark.parametrize("value", [-1e-8, math.nan, math.inf, "1e-8", True, None])
def test_bad_tolerances_are_refused(name, value):
    with pytest.raises(ValueError, match=f"{name}: must be a finite real number"):
        reference_solve(decay, np.ones(2), [0.0, 1.0], **{name: value})


def test_rtol_below_the_dop853_floor_is_refused_not_clipped():
    # scipy raises rtol < 100 eps to that floor with only a warning: a tighter reference is not had
    with pytest.raises(ValueError, match=r"rtol: must be a finite real number >= 2\.22e-14"):
        reference_solve(decay, np.ones(2), [0.0, 1.0], rtol=1e-16)
    with pytest.raises(ValueError, match="rtol"):
        reference_solve(decay, np.ones(2), [0.0, 1.0], rtol=0.0)


def test_zero_atol_is_a_pure_relative_tolerance():
    out = reference_solve(decay, np.array([1.0, -2.0]), [0.0, 2.0], atol=0.0, rtol=1e-12)
    np.testing.assert_allclose(out[-1], math.exp(-2.0) * np.array([1.0, -2.0]), rtol=1e-10)


@pytest.mark.parametrize("ts", [["a", "b"], [0.0, "x"], {"t": 1}])
def test_non_numeric_times_are_refused(ts):
    with pytest.raises(ValueError, match="ts"):
        reference_solve(decay, np.ones(2), ts)


def test_bad_field_dtype_is_refused():
    for fd in ("float32", np.float64, None):
        with pytest.raises(ValueError, match="field_dtype"):
            reference_solve(decay, np.ones(2), [0.0, 1.0], field_dtype=fd)
