"""BNS solvers (``method="bns"``, baquad/solvers/bns.py): the classical methods as BNS solvers,
the general update, counted NFE, autograd through torch coefficients, the coefficient file and
every refusal.

Truths: Euler, the RK midpoint method and variable-step Adams-Bashforth 2 as ``baquad.solve``
runs them (the brief's construction: the same update, another grouping, so a few ulps); the
two-step update x_{i+1} = sum A x + sum B u written out by hand on the linear field v = lam x;
the derivatives of that closed form; calls counted by wrapping the field.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

import baquad
from baquad.methods import nfe_per_steps
from baquad.solvers.bns import NonStationaryCoefficients as C
from baquad.solvers.bns import bns

from _ulps import ulps

torch = pytest.importorskip("torch")


def field(t, x):
    """A nonlinear field with an explicit time dependence, for numpy and torch states alike."""
    lib = torch if torch.is_tensor(x) else np
    return -(1.0 + t) * x + 0.3 * lib.sin(3.0 * x) + t * t


GRID_DOWN = (1.0, 0.83, 0.6, 0.41, 0.22, 0.1, 0.0)
GRID_UP = tuple(reversed(GRID_DOWN))


def _state(kind):
    x = np.array([[0.7, -1.2, 2.0], [0.1, 0.4, -0.9]])
    return x if kind == "numpy" else torch.tensor(x, dtype=kind)


def _dtype(x):
    return x.dtype


CASES = [
    ("euler", {}, lambda ts: C.euler(ts), lambda ts: ts),
    ("adams", {}, lambda ts: C.adams(ts), lambda ts: ts),
    ("adams", {"order": 1}, lambda ts: C.adams(ts, order=1), lambda ts: ts),
    # the midpoint method's coarse grid; its BNS grid holds the stage times
    ("midpoint", {}, lambda ts: C.midpoint(ts[::2]), lambda ts: ts[::2]),
]


@pytest.mark.parametrize("kind", ["numpy", torch.float32, torch.float64], ids=["numpy", "float32", "float64"])
@pytest.mark.parametrize("grid", [GRID_DOWN, GRID_UP], ids=["1->0", "0->1"])
@pytest.mark.parametrize("method, options, make, classical_grid", CASES, ids=["euler", "adams2", "adams1", "midpoint"])
def test_the_classical_methods_as_bns_solvers(kind, grid, method, options, make, classical_grid):
    x0 = _state(kind)
    c = make(grid)
    want = baquad.solve(field, x0, classical_grid(grid), method=method, **options)
    got = baquad.solve(field, x0, c.times, method="bns", coefficients=c)
    assert got.nfe == want.nfe == c.nfe
    diff = float(np.abs(np.asarray(got.x, dtype=np.float64) - np.asarray(want.x, dtype=np.float64)).max())
    # the same update grouped otherwise: a few ulps of the state dtype per step
    assert diff <= ulps(4 * c.nfe, _dtype(x0), want.x, x0), (method, diff)
    assert type(got.x) is type(x0) and got.x.dtype == x0.dtype


def test_the_update_written_out_on_a_linear_field():
    lam = -0.8
    a = np.array([[0.9, 0.0], [0.3, 0.6]])
    b = np.array([[-0.4, 0.0], [0.2, -0.35]])
    c = C([1.0, 0.4, 0.0], a, b, {"init": "hand"})
    x0 = np.array([1.5, -0.5])
    u0 = lam * x0
    x1 = a[0, 0] * x0 + b[0, 0] * u0
    u1 = lam * x1
    x2 = a[1, 0] * x0 + a[1, 1] * x1 + b[1, 0] * u0 + b[1, 1] * u1
    got = baquad.solve(lambda t, x: lam * x, x0, c.times, method="bns", coefficients=c).x
    np.testing.assert_allclose(got, x2, rtol=0, atol=ulps(8, np.float64, x2, x0))


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_nfe_counted_and_callbacks(n):
    ts = np.linspace(1.0, 0.0, n + 1)
    c = C.adams(ts)
    calls, seen = [], []

    def counted(t, x):
        calls.append(t)
        assert isinstance(t, float)
        return field(t, x)

    bns(counted, np.ones(3), c.times, coefficients=c, callback=lambda i, t, x: seen.append((i, t)))
    assert len(calls) == n == nfe_per_steps("bns", n, coefficients=c)
    assert calls == list(ts[:-1])
    assert seen == [(i, ts[i]) for i in range(1, n + 1)]


def test_midpoint_spends_two_calls_per_coarse_step():
    c = C.midpoint([1.0, 0.5, 0.0])
    assert c.nfe == 4 and np.allclose(c.times, [1.0, 0.75, 0.5, 0.25, 0.0], rtol=0, atol=0)


def test_autograd_reaches_coefficients_and_times():
    """One step on v = t x: x1 = a x0 + b t0 x0, so dx1/da = x0, dx1/db = t0 x0, dx1/dt0 = b x0."""
    times = torch.tensor([0.9, 0.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([[1.1]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[-0.7]], dtype=torch.float64, requires_grad=True)
    c = C(times, a, b)
    x0 = torch.tensor([2.0, -1.0], dtype=torch.float32)
    seen_t = []

    def f(t, x):
        seen_t.append(t)
        return t.to(x.dtype) * x

    x1 = bns(f, x0, [times[0], times[1]], coefficients=c)
    assert torch.is_tensor(seen_t[0]) and seen_t[0].ndim == 0  # learned times reach the field as tensors
    assert x1.dtype == torch.float32  # float64 coefficients keep the state's dtype
    x1.sum().backward()
    s = float(x0.double().sum())
    assert a.grad.item() == pytest.approx(s, rel=1e-6)
    assert b.grad.item() == pytest.approx(0.9 * s, rel=1e-6)
    assert times.grad[0].item() == pytest.approx(-0.7 * s, rel=1e-6)


def test_torch_coefficients_without_gradient_call_the_field_with_floats():
    c = C(torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64), torch.eye(2, dtype=torch.float64),
          torch.diag(torch.tensor([-0.5, -0.5], dtype=torch.float64)))
    ts = []
    baquad.solve(lambda t, x: (ts.append(t), -x)[1], torch.ones(2), c.times, method="bns", coefficients=c)
    assert ts == [1.0, 0.5]


def test_save_and_load_round_trip(tmp_path):
    c = C.adams(GRID_DOWN)
    path = c.save(tmp_path / "bns.npz")
    back = C.load(path)
    # save's promise: float64 arrays stored and read back unchanged
    assert np.array_equal(back.times, c.times) and np.array_equal(back.a, c.a) and np.array_equal(back.b, c.b)
    assert back.meta == {"init": "adams-2"}
    assert [p.name for p in tmp_path.iterdir()] == ["bns.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as z:  # the format: plain arrays, no pickled objects
        assert sorted(z.files) == ["a", "b", "format", "meta", "times"]
        assert json.loads(str(z["meta"])) == {"init": "adams-2"}
    # torch coefficients (a trainer's) are written as float64 numbers
    t = C(torch.tensor(c.times, requires_grad=True), torch.tensor(c.a), torch.tensor(c.b), {"k": 1})
    np.testing.assert_array_equal(C.load(t.save(tmp_path / "t.npz")).b, c.b)
    # the registry loads a path given as the coefficients
    r = baquad.solve(field, np.ones(3), c.times, method="bns", coefficients=str(path))
    assert r.nfe == c.nfe


# ------------------------------------------------------------------------------------------
# refusals


def test_the_grid_must_be_the_coefficients_own():
    c = C.euler([1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match=r"ts: .*coefficients\.times"):
        baquad.solve(field, np.ones(2), [1.0, 0.4, 0.0], method="bns", coefficients=c)
    with pytest.raises(ValueError, match="ts: "):
        baquad.solve(field, np.ones(2), [1.0, 0.5, 0.25, 0.0], method="bns", coefficients=c)
    # a few ulps away is the same grid
    bns(field, np.ones(2), [1.0, float(np.nextafter(0.5, 1.0)), 0.0], coefficients=c)


@pytest.mark.parametrize("times, a, b, match", [
    ([1.0, 0.5, 0.0], np.eye(3), np.eye(2), r"coefficients\.a: must have shape \(N, N\) = \(2, 2\)"),
    ([1.0, 0.5, 0.0], np.eye(2), np.ones((2, 2)), r"coefficients\.b: must be lower-triangular.*b\[0, 1\]"),
    ([1.0, 0.5, 0.0], np.eye(2), [[1.0, 0.0], [np.nan, 1.0]], r"coefficients\.b: b\[1, 0\] is nan"),
    ([1.0, 0.5, 0.7], np.eye(2), np.eye(2), r"coefficients\.times: .*strictly monotone"),
    ([1.0, np.inf, 0.0], np.eye(2), np.eye(2), r"coefficients\.times: contains NaN/inf"),
])
def test_construction_refusals(times, a, b, match):
    with pytest.raises(ValueError, match=match):
        C(times, a, b)


def test_other_refusals(tmp_path):
    with pytest.raises(TypeError, match="all numpy arrays or all torch tensors"):
        C(torch.tensor([1.0, 0.0], dtype=torch.float64), np.eye(1), np.eye(1))
    with pytest.raises(ValueError, match=r"coefficients\.meta: must be JSON-serialisable"):
        C([1.0, 0.0], np.eye(1), np.eye(1), {"f": object()})
    with pytest.raises(ValueError, match="coefficients: method 'bns' needs coefficients="):
        baquad.solve(field, np.ones(2), [1.0, 0.0], method="bns")
    with pytest.raises(TypeError, match="coefficients: expected a NonStationaryCoefficients"):
        baquad.solve(field, np.ones(2), [1.0, 0.0], method="bns", coefficients=np.eye(1))
    tc = C(torch.tensor([1.0, 0.0], dtype=torch.float64), torch.eye(1, dtype=torch.float64),
           torch.eye(1, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"coefficients: torch coefficients need a torch state.*numpy\(\)"):
        bns(field, np.ones(2), [1.0, 0.0], coefficients=tc)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        C.adams([1.0, 0.0], order=3)


def test_load_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        C.load(tmp_path / "missing.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match=r"text\.npz: not a BNS coefficient file"):
        C.load(tmp_path / "text.npz")
    good = C.euler([1.0, 0.5, 0.0])

    def write(name, **fields):
        arrays = {"format": np.array("baquad-bns-coefficients"), "times": good.times, "a": good.a, "b": good.b,
                  "meta": np.array("{}")}
        arrays.update(fields)
        arrays = {k: v for k, v in arrays.items() if v is not None}
        np.savez(tmp_path / name, **arrays)
        return tmp_path / name

    with pytest.raises(ValueError, match=r"holds the fields .* this one"):
        C.load(write("missing.npz", b=None))
    with pytest.raises(ValueError, match="field 'format'"):
        C.load(write("format.npz", format=np.array("something-else")))
    with pytest.raises(ValueError, match=r"upper\.npz: field 'a': must be lower-triangular"):
        C.load(write("upper.npz", a=np.ones((2, 2))))
    with pytest.raises(ValueError, match="field 'meta' must be a JSON object"):
        C.load(write("meta.npz", meta=np.array("[1, 2]")))
    with pytest.raises(ValueError, match="not a BNS coefficient file"):  # a pickled object array is never loaded
        C.load(write("pickled.npz", meta=np.array([{"x": 1}], dtype=object)))
    assert zipfile.is_zipfile(tmp_path / "pickled.npz")
