"""``baquad.solve`` on torch tensors: autograd, low-precision fields, host syncs, dtype/device.

Independent truths: finite differences (``torch.autograd.gradcheck`` in float64), the float32 field
for the bfloat16 one, and Python-level counts of the tensor methods that synchronise a GPU with
the host (``item``, ``__bool__``, ``__float__``, ``tolist``, ``cpu``, ...).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import baquad  # noqa: E402
from baquad.perception import AnchorPolynomial, Perception  # noqa: E402

GEN = torch.Generator().manual_seed(1)


def make_field(W: torch.Tensor, b: torch.Tensor):
    def field(t, x):
        return torch.tanh(x @ W.T + b * t) * (1.0 + t) - 0.5 * x

    return field


# --------------------------------------------------------------------------------------
# Autograd through the whole solve
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "perception, final, grid",
    [
        (None, "single", [0.0, 0.3, 0.55, 1.0]),
        ("anchor-only", "bi", [1.0, 0.6, 0.25, 0.0]),
        (AnchorPolynomial(2, 2), "bi", [1.0, 0.7, 0.45, 0.2, 0.0]),
    ],
)
def test_gradcheck_x0_and_field_parameters(perception, final, grid):
    x0 = torch.randn(2, 3, generator=GEN, dtype=torch.float64, requires_grad=True)
    W = (0.7 * torch.randn(3, 3, generator=GEN, dtype=torch.float64)).requires_grad_(True)
    b = (0.5 * torch.randn(3, generator=GEN, dtype=torch.float64)).requires_grad_(True)

    def final_state(x0, W, b):
        res = baquad.solve(make_field(W, b), x0, grid, perception=perception, final=final, check_finite=False)
        return res.x

    assert torch.autograd.gradcheck(final_state, (x0, W, b), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_gradient_of_a_loss_matches_central_differences():
    """A scalar loss of the final state: autograd vs central differences in one direction."""
    x0 = torch.randn(8, 3, generator=GEN, dtype=torch.float64, requires_grad=True)
    W = 0.7 * torch.randn(3, 3, generator=GEN, dtype=torch.float64)
    b = 0.5 * torch.randn(3, generator=GEN, dtype=torch.float64)
    ts = torch.linspace(1.0, 0.0, 6, dtype=torch.float64)

    def loss(x):
        return (baquad.solve(make_field(W, b), x, ts).x ** 2).sum()

    (g,) = torch.autograd.grad(loss(x0), x0)
    d = torch.randn(x0.shape, generator=GEN, dtype=torch.float64)
    with torch.no_grad():
        fd = (loss(x0 + 1e-6 * d) - loss(x0 - 1e-6 * d)) / 2e-6
    assert math.isclose((g * d).sum().item(), fd.item(), rel_tol=1e-7)


# --------------------------------------------------------------------------------------
# Low-precision field, full-precision state
# --------------------------------------------------------------------------------------
class DtypeSpy(Perception):
    """Records the dtype of the state the perception sees."""

    def __init__(self):
        self.inner = AnchorPolynomial()
        self.history_size = self.inner.history_size
        self.dtypes = set()

    def __call__(self, x, v, t, offsets, history=()):
        self.dtypes |= {x.dtype, v.dtype, *(a.x.dtype for a in history)}
        return self.inner(x, v, t, offsets, history)


@pytest.mark.parametrize("low, tol", [(torch.bfloat16, 1e-2), (torch.float16, 1e-3)])
def test_low_precision_field_keeps_float32_state(low, tol):
    """Documented in solve's docstring: deviation ~ rounding unit of the field dtype times |x|
    (measured 4e-3 for bfloat16, 3e-4 for float16), bounded here by 1e-2 and 1e-3."""
    W = 0.5 * torch.randn(8, 8, generator=GEN)
    seen = set()

    def field(t, x):
        seen.add(x.dtype)
        return torch.tanh(x @ W.T.to(x.dtype)) * (1.0 + t) - 0.5 * x

    x0 = torch.randn(256, 8, generator=GEN)
    ts = torch.linspace(1.0, 0.0, 9)
    ref = baquad.solve(field, x0, ts)
    spy = DtypeSpy()
    seen.clear()
    res = baquad.solve(field, x0, ts, field_dtype=low, perception=spy, save_states=True)
    assert seen == {low}
    assert res.x.dtype == torch.float32 and res.xs.dtype == torch.float32
    assert spy.dtypes == {torch.float32}
    dev = (res.x - ref.x).abs().max().item() / ref.x.abs().max().item()
    assert dev < tol
    assert dev > 1e-6  # the field really ran in low precision


# --------------------------------------------------------------------------------------
# Host synchronisation: none per step with check_finite=False
# --------------------------------------------------------------------------------------
SYNCING = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")


@pytest.fixture
def sync_counter(monkeypatch):
    counts = {"n": 0}
    for name in SYNCING:
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


@pytest.mark.parametrize("perception", ["anchor-only", None])
@pytest.mark.parametrize("final", ["single", "bi"])
def test_no_host_sync_per_step(sync_counter, perception, final):
    W = 0.7 * torch.randn(3, 3, generator=GEN)
    b = 0.5 * torch.randn(3, generator=GEN)
    x0 = torch.randn(16, 3, generator=GEN)

    def run(n, check_finite=False):
        sync_counter["n"] = 0
        res = baquad.solve(make_field(W, b), x0, [1.0 - k / n for k in range(n + 1)], perception=perception,
                           final=final, check_finite=check_finite, save_states=True)
        assert res.local_errors.shape == (n,)
        return sync_counter["n"]

    few, many = run(4), run(32)
    assert few == many <= 3  # x0 finite check + one transfer of local_errors (+ margin)
    # check_finite=True is the documented exception: exactly one sync per interval
    assert run(32, check_finite=True) - many == 32
    # a tensor grid costs one transfer at the start, not one per step
    sync_counter["n"] = 0
    baquad.solve(make_field(W, b), x0, torch.linspace(1.0, 0.0, 33), perception=perception, check_finite=False)
    assert sync_counter["n"] <= many + 2


def test_local_errors_match_per_interval_gaps():
    """The one-shot conversion of local_errors keeps the per-interval values (NaN for single)."""
    W = 0.7 * torch.randn(3, 3, generator=GEN, dtype=torch.float64)
    b = 0.5 * torch.randn(3, generator=GEN, dtype=torch.float64)
    x0 = torch.randn(16, 3, generator=GEN, dtype=torch.float64)
    grid = [0.0, 0.2, 0.5, 1.0]
    tn = baquad.solve(make_field(W, b), x0, grid).local_errors
    xn = x0.numpy()
    f_np = lambda t, x: np.tanh(x @ W.numpy().T + b.numpy() * t) * (1.0 + t) - 0.5 * x  # noqa: E731
    nn_ = baquad.solve(f_np, xn, grid).local_errors
    assert tn.dtype == np.float64 and np.isnan(tn[-1]) and np.all(np.isfinite(tn[:-1]))
    np.testing.assert_allclose(tn, nn_, rtol=1e-5, equal_nan=True)


# --------------------------------------------------------------------------------------
# dtype / device bookkeeping
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_state_dtype_device_preserved_and_numpy_agrees(dtype):
    W = 0.7 * torch.randn(3, 3, generator=GEN, dtype=torch.float64)
    b = 0.5 * torch.randn(3, generator=GEN, dtype=torch.float64)

    def field(t, x):
        return make_field(W.to(x.dtype), b.to(x.dtype))(t, x)

    x0 = torch.randn(5, 3, generator=GEN, dtype=torch.float64)
    ts = [1.0, 0.8, 0.5, 0.1, 0.0]
    res = baquad.solve(field, x0.to(dtype), ts, save_states=True)
    assert res.x.dtype == dtype and res.x.device == x0.device and res.xs.shape == (5, 5, 3)
    f_np = lambda t, x: np.tanh(x @ W.numpy().T + b.numpy() * t) * (1.0 + t) - 0.5 * x  # noqa: E731
    ref = baquad.solve(f_np, x0.numpy(), ts)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    np.testing.assert_allclose(res.x.double().numpy(), ref.x, atol=tol)
