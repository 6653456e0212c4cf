"""One time convention for fields: ``baquad.solve``, ``reference_solve`` and ``Oracle`` call
``vfield(t, x)`` with ``t`` a Python float; torchdiffeq passes 0-dim tensors. A field written for
tensor times fails on its first call with an error naming the convention and the fix.

Truths used: the closed-form solution of dx/dt = -t x, x(t) = x(t0) exp((t0^2 - t^2) / 2), and the
types the fields record themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import baquad
from baquad.perception import Oracle
from baquad.reference import reference_solve


def tensor_time_field(t, x):
    """dx/dt = -t x, written for torchdiffeq's tensor times (t.expand fails on a float)."""
    return -t.expand(x.shape[0])[:, None] * x


def exact(x0, t0, t1):
    return x0 * math.exp((t0**2 - t1**2) / 2)


X0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]], dtype=torch.float64)


def check_convention_error(info, caller):
    msg = str(info.value)
    assert f"{caller} calls vfield(t, x) with t a Python float" in msg
    assert "torch.tensor(t" in msg and "0-dim tensor" in msg and "'float' object has no attribute 'expand'" in msg
    assert isinstance(info.value.__cause__, AttributeError)  # the original error is kept
    assert "'float' object has no attribute 'expand'" in str(info.value.__cause__)


@pytest.mark.parametrize("method", ["ba-solver", "euler", "rk4"])
def test_solve_names_the_convention_when_the_field_wants_a_tensor_time(method):
    with pytest.raises(AttributeError) as info:
        baquad.solve(tensor_time_field, X0, [1.0, 0.5, 0.0], method=method)
    check_convention_error(info, "baquad.solve")


def test_reference_solve_names_the_convention_and_passes_float_times():
    with pytest.raises(AttributeError) as info:
        reference_solve(tensor_time_field, X0, [1.0, 0.0])
    check_convention_error(info, "reference_solve")
    seen = set()

    def field(t, x):
        seen.add(type(t))
        return -t * x

    out = reference_solve(field, X0, [1.0, 0.0])[-1]
    assert seen == {float}
    torch.testing.assert_close(out, exact(X0, 1.0, 0.0), rtol=1e-9, atol=0)


def test_the_suggested_fix_works_with_solve_and_reference_solve():
    def fixed(t, x):
        return tensor_time_field(torch.tensor(t, dtype=x.dtype, device=x.device), x)

    want = exact(X0, 1.0, 0.0)
    torch.testing.assert_close(reference_solve(fixed, X0, [1.0, 0.0])[-1], want, rtol=1e-9, atol=0)
    res = baquad.solve(fixed, X0, np.linspace(1.0, 0.0, 41), method="rk4")
    torch.testing.assert_close(res.x, want, rtol=1e-7, atol=0)


def test_oracle_calls_the_field_with_float_times():
    seen = set()

    def field(t, x):
        seen.add(type(t))
        return -t * x

    res = baquad.solve(field, X0, np.linspace(1.0, 0.0, 5), perception=Oracle(field))
    assert seen == {float}
    torch.testing.assert_close(res.x, exact(X0, 1.0, 0.0), rtol=1e-6, atol=0)
    with pytest.raises(AttributeError, match="Python float"):
        Oracle(tensor_time_field)(X0, tensor_time_field(torch.tensor(1.0), X0), 1.0, (-0.1,))


def test_errors_after_the_first_call_and_other_errors_pass_unchanged():
    calls = []

    def late(t, x):
        calls.append(t)
        if len(calls) == 3:
            raise TypeError("boom at call 3")
        return -x

    with pytest.raises(TypeError, match="^boom at call 3$"):
        baquad.solve(late, X0, [1.0, 0.5, 0.0, -0.5], method="euler")

    def value_error(t, x):
        raise ValueError("not a convention problem")

    with pytest.raises(ValueError, match="^not a convention problem$"):
        baquad.solve(value_error, X0, [1.0, 0.0])


def test_torchdiffeq_keeps_its_tensor_times():
    torchdiffeq = pytest.importorskip("torchdiffeq")
    import baquad.torchdiffeq as btd

    btd.register()
    seen = set()

    def field(t, x):
        seen.add(type(t))
        return tensor_time_field(t, x)

    t = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    xs = torchdiffeq.odeint(field, X0, t, method="ba-solver")
    assert seen == {torch.Tensor}
    # the default perception is second order: about 1e-3 relative at 10 steps
    torch.testing.assert_close(xs[-1], exact(X0, 1.0, 0.0), rtol=1e-2, atol=0)
