"""BA-solver as a torchdiffeq method (``baquad.torchdiffeq``).

Independent truths: ``baquad.solve`` on the same grid (the method must reproduce it step for step,
with the same NFE counted inside the field), torchdiffeq's own dopri5 at tight tolerance, the field
evaluated independently of the solver, and ``odeint`` backprop gradients for ``odeint_adjoint``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

if os.environ.get("BAQUAD_REQUIRE_REFERENCES") == "1":  # CI (.ci/run): a broken install must fail, not skip
    import torch
    import torchdiffeq
else:  # torchdiffeq comes with the torch extra; without it these tests skip
    torch = pytest.importorskip("torch")
    torchdiffeq = pytest.importorskip("torchdiffeq")

import baquad  # noqa: E402
import baquad.torchdiffeq as btd  # noqa: E402
from _ulps import ulps  # noqa: E402
from baquad.perception import AnchorOnly, AnchorPolynomial, Oracle, Perception  # noqa: E402

DT = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _registered():
    btd.register()
    yield


# --------------------------------------------------------------------------------------
# Fields: smooth, nonlinear, time-dependent; t may be a Python float (baquad.solve, Oracle)
# or a 0-dim tensor (torchdiffeq).
# --------------------------------------------------------------------------------------
GEN = torch.Generator().manual_seed(0)
W = torch.randn(3, 3, generator=GEN, dtype=DT) * 0.8
B0 = torch.randn(3, generator=GEN, dtype=DT) * 0.5
X0 = torch.randn(4, 3, generator=GEN, dtype=DT)


def vec_field(t, x):
    return torch.tanh(x @ W.T + B0 * t) * (1.0 + t) - 0.5 * x


def tuple_field(t, y):
    x, z = y
    return vec_field(t, x), -0.3 * (x * x).sum(-1) + torch.sin(z) * t


def flat_tuple_field(t, y):
    x, z = y[:12].reshape(4, 3), y[12:]
    fx, fz = tuple_field(t, (x, z))
    return torch.cat([fx.reshape(-1), fz])


Z0 = torch.linspace(-0.5, 0.5, 4, dtype=DT)


class Counted:
    def __init__(self, f):
        self.f, self.n = f, 0

    def __call__(self, t, y):
        self.n += 1
        return self.f(t, y)


def make_perception(kind: str, state: str):
    if kind == "default":
        return None
    if kind == "anchor-only":
        return AnchorOnly()
    field = vec_field if state == "tensor" else flat_tuple_field
    return Oracle(field, rtol=1e-11, atol=1e-11)


# --------------------------------------------------------------------------------------
# Same result and same NFE as baquad.solve on the same grid
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("final", ["single", "bi"])
@pytest.mark.parametrize("kind", ["default", "anchor-only", "oracle"])
@pytest.mark.parametrize("state", ["tensor", "tuple"])
@pytest.mark.parametrize("direction", ["increasing", "decreasing"])
def test_matches_baquad_solve(direction, state, kind, final):
    t = torch.tensor([0.0, 0.15, 0.35, 0.6, 1.0], dtype=DT)
    if direction == "decreasing":
        t = t.flip(0)
    if state == "tensor":
        y0, f, flat_f, flat0 = X0, vec_field, vec_field, X0
    else:
        y0, f, flat_f = (X0, Z0), tuple_field, flat_tuple_field
        flat0 = torch.cat([X0.reshape(-1), Z0])

    counted = Counted(f)
    stats = btd.Stats()
    ys = torchdiffeq.odeint(
        counted, y0, t, method="ba-solver",
        options=dict(perception=make_perception(kind, state), final=final, stats=stats),
    )
    counted_ref = Counted(flat_f)
    ref = baquad.solve(counted_ref, flat0, t, perception=make_perception(kind, state), final=final, save_states=True)

    got = ys if state == "tensor" else torch.cat([ys[0].reshape(len(t), -1), ys[1]], dim=1)
    want = ref.xs.reshape(len(t), -1) if state == "tuple" else ref.xs
    assert torch.allclose(got, want, rtol=0, atol=1e-6), (got - want).abs().max()
    assert counted.n == counted_ref.n == ref.nfe == stats.nfe
    assert counted.n == (len(t) - 1) + (final == "bi")
    assert stats.perception_calls == ref.perception_calls
    assert stats.steps == len(t) - 1 and stats.solves == 1
    np.testing.assert_allclose(stats.local_errors.numpy(), ref.local_errors, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_step_size_grid_and_interpolated_outputs(direction):
    """With step_size the grid is torchdiffeq's; output times off the grid are linearly interpolated."""
    t = direction * torch.tensor([0.0, 0.3, 1.0], dtype=DT)
    stats = btd.Stats()
    ys = torchdiffeq.odeint(vec_field, X0, t, method="ba-solver", options=dict(step_size=0.25, stats=stats))
    grid = direction * torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=DT)
    ref = baquad.solve(vec_field, X0, grid, save_states=True)
    assert stats.nfe == ref.nfe == 4
    assert torch.allclose(ys[-1], ref.x, atol=1e-12)
    lerp = ref.xs[1] + (0.3 - 0.25) / 0.25 * (ref.xs[2] - ref.xs[1])
    assert torch.allclose(ys[1], lerp, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        dict(anchors="single"),
        dict(rule="gauss-lobatto-3", final="bi"),
        dict(rule="gauss-legendre-3", perception="anchor-only"),
        dict(rule="trapezoid", perception=AnchorPolynomial(2, 2)),
    ],
)
def test_anchors_and_rule_options(options):
    t = torch.tensor([1.0, 0.8, 0.5, 0.25, 0.0], dtype=DT)
    counted, counted_ref = Counted(vec_field), Counted(vec_field)
    ys = torchdiffeq.odeint(counted, X0, t, method="ba-solver", options=dict(options))
    ref = baquad.solve(counted_ref, X0, t, **options)
    assert torch.allclose(ys[-1], ref.x, rtol=0, atol=1e-12)
    assert counted.n == counted_ref.n == ref.nfe


# --------------------------------------------------------------------------------------
# Independent reference: torchdiffeq dopri5 at tight tolerance
# --------------------------------------------------------------------------------------
def test_oracle_matches_dopri5_with_high_order():
    """Oracle + Gauss-Lobatto-4 is order ~6: the error must be tiny and fall fast with N."""
    ref = torchdiffeq.odeint(vec_field, X0, torch.tensor([1.0, 0.0], dtype=DT), method="dopri5", rtol=1e-12, atol=1e-12)[-1]
    errs = []
    for n in (3, 6):
        t = torch.linspace(1.0, 0.0, n + 1, dtype=DT)
        y = torchdiffeq.odeint(
            vec_field, X0, t, method="ba-solver", options=dict(perception=Oracle(vec_field, rtol=1e-12, atol=1e-12))
        )[-1]
        errs.append((y - ref).abs().max().item())
    euler = torchdiffeq.odeint(vec_field, X0, torch.linspace(1.0, 0.0, 7, dtype=DT), method="euler")[-1]
    assert errs[1] < 1e-6, errs
    assert errs[0] / errs[1] > 2**5, errs  # order > 5 (nominally 6; measured ratio 52, then 63 at 12)
    assert errs[1] < 1e-3 * (euler - ref).abs().max().item()


# --------------------------------------------------------------------------------------
# The perception sees true (non-negated) time and velocities for decreasing t
# --------------------------------------------------------------------------------------
class Recording(Perception):
    def __init__(self, inner):
        self.inner = inner
        self.history_size = inner.history_size
        self.calls = []

    def __call__(self, x, v, t, offsets, history=()):
        self.calls.append((t, tuple(offsets), v, history[-1]))
        return self.inner(x, v, t, offsets, history)


@pytest.mark.parametrize("state", ["tensor", "tuple"])
def test_perception_sees_true_time_and_velocity(state):
    t = torch.tensor([1.0, 0.7, 0.4, 0.0], dtype=DT)
    rec = Recording(AnchorPolynomial())
    y0 = X0 if state == "tensor" else (X0, Z0)
    f = vec_field if state == "tensor" else tuple_field
    flat_f = vec_field if state == "tensor" else flat_tuple_field
    torchdiffeq.odeint(f, y0, t, method="ba-solver", options=dict(perception=rec, final="bi"))
    grid = t.tolist()
    assert len(rec.calls) == 2 * 3  # forward + backward probe per bi-anchor interval
    for k, (tt, offsets, v, anchor) in enumerate(rec.calls):
        i, backward = divmod(k, 2)
        assert isinstance(tt, float)
        assert tt == grid[i + backward]  # 1.0, 0.7, ... never -1.0
        h = grid[i + 1] - grid[i]  # negative: true time runs backwards
        for d in offsets:
            assert isinstance(d, float)
            assert (d < 0) if not backward else (d > 0)  # forward probes look down in true time
            assert abs(d) <= abs(h) + 1e-15
        assert anchor.t == tt and anchor.v is v
        v_indep = flat_f(tt, anchor.x)  # the field evaluated independently at the anchor
        assert torch.allclose(v, v_indep, rtol=0, atol=1e-14)
    _, _, first_v, _ = rec.calls[0]
    flat0 = X0 if state == "tensor" else torch.cat([X0.reshape(-1), Z0])
    assert torch.allclose(first_v, flat_f(1.0, flat0), atol=1e-14)


# --------------------------------------------------------------------------------------
# Gradients: odeint backprop and odeint_adjoint
# --------------------------------------------------------------------------------------
class ModuleField(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.W = torch.nn.Parameter(W.clone())
        self.b = torch.nn.Parameter(B0.clone())

    def forward(self, t, x):
        return torch.tanh(x @ self.W.T + self.b * t) * (1.0 + t) - 0.5 * x


def _grads(odeint_fn, method, options, t, **kw):
    torch.manual_seed(0)
    mod = ModuleField()
    x0 = X0.clone().requires_grad_(True)
    y = odeint_fn(mod, x0, t, method=method, options=options, **kw)
    loss = (y[-1] ** 2).sum() + y[-1][:, 0].sin().sum()
    loss.backward()
    return torch.cat([x0.grad.reshape(-1), mod.W.grad.reshape(-1), mod.b.grad])


def test_adjoint_gradients_agree_with_backprop():
    """Backprop through ba-solver and the adjoint integrated by ba-solver (polynomial perception,
    valid on the augmented system) are two discretisations of the same exact gradient, both of
    order 2 here (measured: relative errors 8e-4, 2e-4, 5e-5 at steps 1/16, 1/32, 1/64). At step
    1/32 both lie within 1e-3 of a tight dopri5 reference and of each other, their difference
    shrinks ~4x when the step halves (same limit), and a coarse solve differs visibly (the check
    is not vacuous)."""
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
    exact = _grads(torchdiffeq.odeint, "dopri5", None, t, rtol=1e-11, atol=1e-11)
    scale = exact.abs().max().item()
    gaps = []
    for h in (1 / 16, 1 / 32):
        opts = dict(step_size=h, perception="polynomial")
        stats = btd.Stats()
        back = _grads(torchdiffeq.odeint, "ba-solver", dict(opts), t)
        adj = _grads(torchdiffeq.odeint_adjoint, "ba-solver", dict(opts, stats=stats), t)
        gaps.append((adj - back).abs().max().item() / scale)
    assert (back - exact).abs().max().item() < 1e-3 * scale
    assert (adj - exact).abs().max().item() < 1e-3 * scale
    assert gaps[1] < 1e-3 and gaps[0] / gaps[1] > 3.0, gaps
    # one forward solve of 32 intervals; the adjoint runs once per output interval (2 x 16)
    assert stats.solves == 1 and stats.nfe == 32
    assert stats.adjoint_solves == 2 and stats.adjoint_nfe == 32 and stats.adjoint_steps == 32
    coarse = _grads(torchdiffeq.odeint_adjoint, "ba-solver", dict(perception="polynomial"), t)
    assert (coarse - exact).abs().max().item() > 1e-2 * scale


def test_adjoint_with_forward_only_perception_raises_and_rk4_works():
    t = torch.tensor([0.0, 1.0], dtype=DT)
    oracle = Oracle(vec_field, rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match="adjoint_method='rk4'"):
        _grads(torchdiffeq.odeint_adjoint, "ba-solver", dict(perception=oracle, step_size=0.25), t)
    # the recommended path: rk4 on a fine adjoint grid. The forward states are the oracle ones
    # (order ~6), the adjoint rk4 at step 1/64 has error ~1e-8: agreement to 1e-5 relative.
    exact = _grads(torchdiffeq.odeint, "dopri5", None, t, rtol=1e-11, atol=1e-11)
    g = _grads(
        torchdiffeq.odeint_adjoint, "ba-solver", dict(perception=oracle, step_size=0.25), t,
        adjoint_method="rk4", adjoint_options=dict(step_size=1 / 64),
    )
    assert (g - exact).abs().max().item() < 1e-5 * exact.abs().max().item()


# --------------------------------------------------------------------------------------
# Registration and options
# --------------------------------------------------------------------------------------
def test_register_is_idempotent():
    from torchdiffeq._impl.odeint import SOLVERS

    a = btd.register()
    b = btd.register()
    assert a is b is btd.BASolver is SOLVERS["ba-solver"]
    y = torchdiffeq.odeint(vec_field, X0, torch.tensor([0.0, 0.5, 1.0], dtype=DT), method="ba-solver")
    assert y.shape == (3, 4, 3)


def test_register_with_defaults_binds_options():
    stats = btd.Stats()
    try:
        c1 = btd.register("ba-test-anchor", perception="anchor-only", stats=stats, final="bi")
        c2 = btd.register("ba-test-anchor", perception="anchor-only", stats=stats, final="bi")
        assert c1 is c2 and issubclass(c1, btd.BASolver)
        t = torch.tensor([0.0, 0.5, 1.0], dtype=DT)
        y = torchdiffeq.odeint(vec_field, X0, t, method="ba-test-anchor")
        ref = baquad.solve(vec_field, X0, t, perception="anchor-only", final="bi")
        assert torch.allclose(y[-1], ref.x, atol=1e-12) and stats.nfe == 3
        y = torchdiffeq.odeint(vec_field, X0, t, method="ba-test-anchor", options=dict(final="single"))
        assert stats.nfe == 3 + 2  # explicit option overrides the bound default
    finally:
        btd.unregister("ba-test-anchor")
    with pytest.raises(ValueError, match="built-in|already"):
        btd.register("euler")
    with pytest.raises(TypeError, match="'bogus'"):
        btd.register("ba-test-x", bogus=1)


def test_unknown_option_raises_naming_it():
    t = torch.tensor([0.0, 1.0], dtype=DT)
    with pytest.raises(TypeError, match="'perceptoin'"):
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver", options=dict(perceptoin="anchor-only"))
    with pytest.raises(ValueError, match="interp"):
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver", options=dict(interp="cubic"))
    with pytest.raises(TypeError, match="Stats"):
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver", options=dict(stats={}))


def test_no_warnings_and_float32_state():
    t = torch.linspace(1.0, 0.0, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = torchdiffeq.odeint(vec_field_f32, X0.float(), t, method="ba-solver")
    assert y.dtype == torch.float32
    ref = baquad.solve(vec_field_f32, X0.float(), t)
    # two call paths (torchdiffeq's flattened state and time tensors, solve's floats): each of the
    # 4 float32 steps may round differently, by a few (4) float32 ulps of the magnitudes involved
    tol = (len(t) - 1) * ulps(4, torch.float32, y, ref.x)
    assert torch.allclose(y[-1], ref.x, rtol=0, atol=tol), float((y[-1] - ref.x).abs().max())


def vec_field_f32(t, x):
    return torch.tanh(x @ W.T.float() + B0.float() * t) * (1.0 + t) - 0.5 * x


class WithCallback(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, t, x):
        return vec_field(t, x)

    def callback_step(self, t0, y0, dt):
        self.seen.append((float(t0), float(dt)))


def test_callback_step_and_single_time():
    func = WithCallback()
    t = torch.tensor([1.0, 0.6, 0.0], dtype=DT)
    torchdiffeq.odeint(func, X0, t, method="ba-solver")
    # torchdiffeq un-negates the callback's t0 for decreasing time (as for its own solvers)
    got = [(round(a, 12), round(b, 12)) for a, b in func.seen]
    assert got == [(1.0, 0.4), (0.6, 0.6)]
    y = torchdiffeq.odeint(vec_field, X0, torch.tensor([0.5], dtype=DT), method="ba-solver")
    assert y.shape == (1, 4, 3) and torch.equal(y[0], X0)  # a single time returns the initial state untouched


def test_event_fn_refused():
    with pytest.raises(NotImplementedError, match="event"):
        torchdiffeq.odeint(
            vec_field, X0, torch.tensor([0.0, 1.0], dtype=DT), method="ba-solver",
            options=dict(step_size=0.1), event_fn=lambda t, y: y.sum() - 100.0,
        )


def test_host_syncs_do_not_grow_with_steps(monkeypatch):
    """Count Python-level host syncs (item/bool/float/tolist/cpu) during odeint: constant in N."""
    counts = {"n": 0}
    for name in ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self, *a, _orig=orig, **k):
            counts["n"] += 1
            return _orig(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, wrapped)

    def run(n):
        counts["n"] = 0
        torchdiffeq.odeint(vec_field, X0, torch.linspace(1.0, 0.0, n + 1, dtype=DT), method="ba-solver",
                           options=dict(perception="polynomial", stats=btd.Stats()))
        return counts["n"]

    # torchdiffeq's own input checks sync 4 times (direction, monotonicity); ba-solver reads the
    # grid once; nothing per step
    assert run(4) == run(32) <= 6


# --------------------------------------------------------------------------------------
# Gradients with respect to the time points (torchdiffeq's gradient test, adapted: its
# fixed-grid methods differentiate through t, and autograd's finite differences are the truth)
# --------------------------------------------------------------------------------------
GRAD_FIELDS = {
    "constant": lambda t, y: torch.ones_like(y) * 0.7,
    "linear": lambda t, y: -0.5 * y + 0.2 * t,
    "sine": lambda t, y: torch.sin(y) * (1.0 + t),
}


@pytest.mark.parametrize("field", list(GRAD_FIELDS))
@pytest.mark.parametrize("perception", ["polynomial", "anchor-only"])
@pytest.mark.parametrize("times, options", [
    ([0.0, 0.3, 0.55, 1.0], {}),
    ([1.0, 0.7, 0.2, 0.0], {}),
    ([1.0, 0.6, 0.1], {"step_size": 0.25}),
    ([0.0, 0.45, 0.8], {"step_size": 0.3}),  # output times between grid nodes: interpolated
])
def test_gradcheck_with_respect_to_y0_and_times(field, perception, times, options):
    f = GRAD_FIELDS[field]
    y0 = torch.tensor([0.3, -0.8], dtype=DT, requires_grad=True)
    t = torch.tensor(times, dtype=DT, requires_grad=True)

    def run(y, tt):
        return torchdiffeq.odeint(f, y, tt, method="ba-solver", options=dict(perception=perception, **options))

    assert torch.autograd.gradcheck(run, (y0, t))
    # and the gradient with respect to t is not identically zero (the fault this guards against)
    g = torch.autograd.grad(run(y0, t)[-1].sum(), t)[0]
    assert g.abs().max() > 1e-3


def test_time_gradient_with_a_perception_not_differentiable_in_time_is_an_error():
    t = torch.tensor([0.0, 0.5, 1.0], dtype=DT, requires_grad=True)
    with pytest.raises(TypeError, match="differentiable"):
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver", options=dict(perception=Oracle(vec_field)))
    # a detached t is fine, and the same perception then works
    torchdiffeq.odeint(vec_field, X0, t.detach(), method="ba-solver", options=dict(perception=Oracle(vec_field)))


@pytest.mark.parametrize("step", [0.0, -0.1, float("nan"), float("inf"), "0.1", True])
def test_bad_step_size_is_refused(step):
    with pytest.raises(ValueError, match="step_size"):
        torchdiffeq.odeint(vec_field, X0, torch.tensor([0.0, 1.0], dtype=DT), method="ba-solver",
                           options=dict(step_size=step))


def test_single_interval_without_step_size_warns_once():
    btd._WARNED.clear()
    t = torch.tensor([0.0, 1.0], dtype=DT)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver")
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver")
        torchdiffeq.odeint(vec_field, X0, t, method="ba-solver", options=dict(step_size=0.1))
    msgs = [str(w.message) for w in caught if "single interval" in str(w.message)]
    assert len(msgs) == 1 and "step_size" in msgs[0]
