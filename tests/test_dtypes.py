"""Array types and dtypes through ``baquad.solve``: numpy/torch, float32/float64, recorded
states, torch autograd and a field run in bfloat16.

Truths: the same solve in numpy float64 (the array type must not change the mathematics),
central finite differences for gradients, and exact algebra for the recorded states.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import baquad
from baquad.perception import FromDeviation

A = np.array([[-0.5, 1.0], [-2.0, -0.3]])
X0 = np.array([[1.0, 0.5], [-0.3, 0.8], [0.25, -1.5]])
TS = [1.0, 0.8, 0.55, 0.3, 0.12, 0.0]


def _A_like(x):
    if isinstance(x, torch.Tensor):
        return torch.as_tensor(A, dtype=x.dtype, device=x.device)
    return A.astype(x.dtype)


def field(t, x):
    """dx/dt = cos(t) A x, written for numpy and torch; keeps the input's type and dtype."""
    return math.cos(t) * (x @ _A_like(x).T)


def g_numpy_torch(x, v, t, d):
    """An analytic deviation g(x, v, t, d) (Eq. 5) for either backend: the first-order
    Taylor slope of v along the flow, (-tan(t) + cos(t) A) v, with a mild d-dependence."""
    if isinstance(x, torch.Tensor):
        assert isinstance(d, torch.Tensor) and d.dtype == x.dtype and d.ndim == 1
        slope = -math.tan(t) * v + math.cos(t) * (v @ _A_like(x).T)
        return (1.0 + 0.1 * d).reshape(-1, *([1] * x.ndim)) * slope.unsqueeze(0)
    assert isinstance(d, np.ndarray) and d.dtype == x.dtype and d.ndim == 1
    slope = -math.tan(t) * v + math.cos(t) * (v @ _A_like(x).T)
    return (1.0 + 0.1 * d).reshape(-1, *([1] * x.ndim)) * slope[None]


PERCEPTIONS = {
    "default": lambda: None,
    "anchor-only": lambda: "anchor-only",
    "from-deviation": lambda: FromDeviation(g_numpy_torch),
}

INPUTS = {
    "numpy-float32": (lambda a: a.astype(np.float32), np.ndarray, np.float32, 1e-5),
    "numpy-float64": (lambda a: a.astype(np.float64), np.ndarray, np.float64, 1e-12),
    "torch-float32": (lambda a: torch.tensor(a, dtype=torch.float32), torch.Tensor, torch.float32, 1e-5),
    "torch-float64": (lambda a: torch.tensor(a, dtype=torch.float64), torch.Tensor, torch.float64, 1e-12),
}


def _np(x):
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


@pytest.mark.parametrize("final", ["single", "bi"])
@pytest.mark.parametrize("perception", list(PERCEPTIONS))
@pytest.mark.parametrize("kind", list(INPUTS))
def test_same_answer_and_same_type_for_every_backend(kind, perception, final):
    make, cls, dtype, rtol = INPUTS[kind]
    ref = baquad.solve(field, X0, TS, perception=PERCEPTIONS[perception](), final=final)
    res = baquad.solve(field, make(X0), TS, perception=PERCEPTIONS[perception](), final=final)
    assert type(res.x) is cls and res.x.dtype == dtype
    assert tuple(res.x.shape) == X0.shape
    np.testing.assert_allclose(_np(res.x), ref.x, rtol=rtol, atol=rtol * np.abs(ref.x).max())
    assert res.nfe == ref.nfe and res.perception_calls == ref.perception_calls
    assert res.local_errors.shape == ref.local_errors.shape
    np.testing.assert_allclose(res.local_errors, ref.local_errors, rtol=max(rtol, 1e-6) * 10)


def test_from_deviation_perception_changes_the_answer():
    """Guards the test above: the three perceptions really give different solutions."""
    xs = [baquad.solve(field, X0, TS, perception=p()).x for p in PERCEPTIONS.values()]
    assert np.abs(xs[0] - xs[1]).max() > 1e-4 and np.abs(xs[1] - xs[2]).max() > 1e-4


@pytest.mark.parametrize("method", ["ba-solver", "euler"])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_save_states(kind, method):
    make, cls, dtype, _ = INPUTS[kind]
    x0 = make(X0)
    res = baquad.solve(field, x0, TS, method=method, save_states=True)
    assert type(res.xs) is cls and res.xs.dtype == dtype
    assert tuple(res.xs.shape) == (len(TS), *X0.shape)
    assert (_np(res.xs[0]) == _np(x0)).all()  # the initial state is stored untouched
    assert (_np(res.xs[-1]) == _np(res.x)).all()  # the last stored state is the one returned
    # intermediate states are the solves on the truncated grids (the scheme is causal, but
    # the last interval of the default scheme is single-anchor: use final="bi" to compare)
    if method == "ba-solver":
        full = baquad.solve(field, x0, TS, save_states=True, final="bi")
        for k in range(1, len(TS)):
            part = baquad.solve(field, x0, TS[: k + 1], final="bi").x
            # bitwise: the first k steps of a solve are the same operations on the same numbers
            # as the solve on the first k + 1 times (the scheme is causal)
            np.testing.assert_allclose(_np(full.xs[k]), _np(part), rtol=0, atol=0)


def test_no_states_by_default():
    assert baquad.solve(field, X0, TS).xs is None


@pytest.mark.parametrize("perception", list(PERCEPTIONS))
def test_torch_autograd_matches_finite_differences(perception):
    ts = [0.9, 0.6, 0.35, 0.1]
    weights = torch.tensor([[0.3, -1.0], [2.0, 0.5], [-0.7, 1.1]], dtype=torch.float64)

    def loss(x0):
        res = baquad.solve(field, x0, ts, perception=PERCEPTIONS[perception](), final="bi")
        return (weights * res.x).sum() + (res.x**2).sum()

    x0 = torch.tensor(X0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(x0), x0)
    assert grad.shape == x0.shape and torch.isfinite(grad).all()
    eps = 1e-6
    fd = torch.zeros_like(grad)
    with torch.no_grad():
        for idx in np.ndindex(*X0.shape):
            e = torch.zeros_like(x0)
            e[idx] = eps
            fd[idx] = (loss(x0 + e) - loss(x0 - e)) / (2 * eps)
    torch.testing.assert_close(grad, fd, rtol=1e-7, atol=1e-8)


def test_torch_gradcheck():
    ts = [1.0, 0.5, 0.0]
    x0 = torch.tensor(X0[:2], dtype=torch.float64, requires_grad=True)

    def nonlinear(t, x):
        return torch.sin(x) * math.cos(t) - 0.3 * x**2

    assert torch.autograd.gradcheck(lambda z: baquad.solve(nonlinear, z, ts, final="bi").x, (x0,))


def test_field_dtype_bfloat16():
    seen = []

    def bf16_field(t, x):
        assert x.dtype == torch.bfloat16, x.dtype
        seen.append(x.dtype)
        return math.cos(t) * (x @ _A_like(x).T)

    x0 = torch.tensor(X0, dtype=torch.float32)
    res = baquad.solve(bf16_field, x0, TS, field_dtype=torch.bfloat16)
    ref = baquad.solve(field, x0, TS)
    assert res.x.dtype == torch.float32 and type(res.x) is torch.Tensor
    assert len(seen) == res.nfe == ref.nfe
    # bfloat16 keeps 8 significant bits: unit round-off 2^-8 ~ 3.9e-3 on each input and output
    # of the field. Over a unit of time with |A| ~ 2 these relative errors enter the velocity and
    # are integrated, so the state carries errors of a few 1e-3 of its size: 2e-2 leaves margin
    # while still being 100x tighter than the state itself.
    scale = ref.x.abs().max()
    err = (res.x - ref.x).abs().max()
    assert err <= 2e-2 * scale, err / scale
    assert err > 1e-6 * scale  # the field really ran in bfloat16


def test_field_dtype_numpy_float32():
    seen = []

    def f32(t, x):
        seen.append(x.dtype)
        return field(t, x)

    res = baquad.solve(f32, X0, TS, field_dtype=np.float32)
    ref = baquad.solve(field, X0, TS)
    assert set(seen) == {np.dtype(np.float32)}
    assert res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------
# regressions of bugs found by these tests


@pytest.mark.parametrize("scale", [1e22, 1e-25])
def test_torch_float64_local_errors_scale_with_a_linear_problem(scale):
    # dx/dt = cos(t) A x is linear: every state and every gap scales exactly with x0
    ref = baquad.solve(field, X0, TS, final="bi").local_errors
    got = baquad.solve(field, torch.tensor(X0 * scale, dtype=torch.float64), TS, final="bi").local_errors
    np.testing.assert_allclose(got / scale, ref, rtol=1e-10)


def test_numpy_local_errors_scale_with_a_linear_problem():
    ref = baquad.solve(field, X0, TS, final="bi").local_errors
    for scale in (1e22, 1e-25):
        got = baquad.solve(field, X0 * scale, TS, final="bi").local_errors
        np.testing.assert_allclose(got / scale, ref, rtol=1e-12)


def test_zero_dimensional_numpy_state_is_refused_with_the_fix():
    # 0-d ndarray arithmetic returns np.float64 scalars, so the state would silently change type
    with pytest.raises(ValueError, match=r"x0.*reshape\(1\)"):
        baquad.solve(lambda t, x: -x, np.array(1.0), np.linspace(0.0, 1.0, 6), perception="anchor-only")
