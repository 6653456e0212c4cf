"""The one grid check (``baquad.grids.check_grid``) and the log-SNR coordinate.

Independent truth: the definitions written out here (lambda(t) = log((1 - t)/t), the logistic
inverse) and the grids themselves (which position breaks monotonicity is read off by hand).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baquad.grids import check_grid, lam, t_of_lam


def test_accepts_either_direction_and_array_types():
    assert check_grid([0.0, 0.5, 1.0]) == (0.0, 0.5, 1.0)
    assert check_grid(np.array([2.0, -1.0])) == (2.0, -1.0)
    assert check_grid(t for t in (1.0, 0.0)) == (1.0, 0.0)  # a one-pass iterable
    torch = pytest.importorskip("torch")
    assert check_grid(torch.tensor([1.0, 0.25], requires_grad=True)) == (1.0, 0.25)


@pytest.mark.parametrize(
    "ts, options, pattern",
    [
        ([1.0], {}, r"^ts: need a 1-D grid with at least 2 times"),
        ([[1.0, 0.0]], {}, r"^ts: need a 1-D grid"),
        ("10", {}, r"^ts: need a 1-D grid"),  # a string is not a sequence of times
        (["a", "b"], {}, r"^ts: expected a 1-D sequence of real times"),
        ([1.0, math.nan, 0.0], {}, r"^ts: contains NaN/inf at positions \[1\]"),
        ([0.0, 0.4, 0.4, 1.0], {}, r"^ts: the grid must be strictly monotone.*ts\[1\] = 0\.4 and ts\[2\] = 0\.4"),
        ([0.0, 0.5, 1.0], {"decreasing": True}, r"^ts: the times must be strictly decreasing.*ts\[0\] = 0\.0"),
        ([1.0, 0.2, 0.4], {"decreasing": True}, r"strictly decreasing.*ts\[1\] = 0\.2 and ts\[2\] = 0\.4"),
        ([1.5, 0.0], {"unit_interval": True}, r"^ts: the times must lie in \[0, 1\].*positions \[0\]"),
        ([0.5, -0.1], {"unit_interval": True}, r"positions \[1\]"),
    ],
)
def test_refusals_name_the_argument_and_the_position(ts, options, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_grid(ts, **options)


@settings(max_examples=300, deadline=None)
@given(ts=st.lists(st.one_of(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0, 0.5, math.inf, -math.inf, math.nan])),
                   min_size=0, max_size=6),
       decreasing=st.booleans(), unit_interval=st.booleans(), as_tuple=st.booleans())
def test_a_list_of_floats_is_accepted_exactly_when_the_definition_says(ts, decreasing, unit_interval, as_tuple):
    """Lists and tuples of Python floats (what solve hands its samplers) against the definition
    written out here: at least 2 times, all finite, strictly decreasing, or increasing when
    ``decreasing`` is not asked, inside [0, 1] when ``unit_interval`` is; accepted grids come back
    as the same floats, refused ones raise naming ``ts``."""
    grid = tuple(ts) if as_tuple else list(ts)
    pairs = list(zip(ts, ts[1:]))
    ok = (len(ts) >= 2 and all(math.isfinite(t) for t in ts)
          and (not unit_interval or all(0.0 <= t <= 1.0 for t in ts))
          and (all(a > b for a, b in pairs) or (not decreasing and all(a < b for a, b in pairs))))
    if ok:
        got = check_grid(grid, decreasing=decreasing, unit_interval=unit_interval)
        assert type(got) is tuple and got == tuple(ts) and all(type(t) is float for t in got)
    else:
        with pytest.raises(ValueError, match=r"^ts: "):
            check_grid(grid, decreasing=decreasing, unit_interval=unit_interval)


def test_name_and_min_points():
    with pytest.raises(ValueError, match=r"^grid\['steps'\]\['2'\]: the grid must be strictly monotone"):
        check_grid([1.0, 1.0, 0.0], "grid['steps']['2']")
    assert check_grid([0.3], min_points=1) == (0.3,)
    with pytest.raises(ValueError, match="at least 1 time"):
        check_grid([], min_points=1)


def test_every_grid_entry_point_uses_the_one_check():
    """solve, the fixed-grid and multistep solvers, user grids, saved grid specs and the
    reference solve all refuse a repeated time, naming their argument."""
    import baquad
    from baquad.reference import reference_solve
    from baquad.schedules import check_grid_spec, user_grid
    from baquad.methods import get_method

    bad = [1.0, 0.5, 0.5, 0.0]
    x0 = np.ones(2)
    field = lambda t, x: -x  # noqa: E731
    calls = [
        lambda: baquad.solve(field, x0, bad),
        lambda: get_method("euler").sampler(field, x0, bad),
        lambda: get_method("dpm++").sampler(field, x0, bad),
        lambda: get_method("unipc").sampler(field, x0, bad),
        lambda: user_grid(bad),
        lambda: reference_solve(field, x0, bad),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"ts(\[\d\])?.*ts\[1\] = 0\.5 and ts\[2\] = 0\.5"):
            call()
    with pytest.raises(ValueError, match=r"^saved: the times must be strictly decreasing.*saved\[1\]"):
        check_grid_spec(bad, where="saved")


@pytest.mark.parametrize("t", [1e-12, 1e-3, 0.2, 0.5, 0.9, 1 - 1e-9])
def test_lam_and_its_inverse(t):
    assert lam(t) == pytest.approx(math.log((1.0 - t) / t), rel=1e-12, abs=1e-12)
    assert t_of_lam(lam(t)) == pytest.approx(t, rel=1e-9)
    assert t_of_lam(-lam(t)) == pytest.approx(1.0 - t, rel=1e-9, abs=1e-15)


def test_lam_endpoints_and_extreme_inverse():
    assert lam(0.0) == math.inf
    assert t_of_lam(700.0) == pytest.approx(math.exp(-700.0), rel=1e-12)  # 1 / (1 + e^700) = e^-700 / (1 + e^-700)
    assert t_of_lam(-800.0) == 1.0  # no overflow of e^800
