"""Editing by inversion (``baquad demo edit``, adapters/torch_sit/digits/edit.py).

Truths: the flow map is a bijection, so a tight DOP853 inversion followed by regeneration under
the same label returns the input (a property of the ODE, independent of BA-solver); the Gaussian
flow's exact trajectories (``flow.exact``) for BA-solver's inversion with the oracle perception.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import baquad
from baquad.flows import get_flow
from baquad.perception import Oracle


def test_ba_solver_inversion_with_the_oracle_matches_the_exact_inverse_map():
    flow = get_flow("gaussian-2d")
    x_data = flow.sample_data(64, np.random.default_rng(0))
    ts = np.linspace(0.0, 1.0, 7)  # t: 0 -> 1, six intervals
    res = baquad.solve(flow, x_data, ts, rule="gauss-lobatto-4", perception=Oracle(flow))
    # order 6 with the exact perception: max error 1.3e-7 measured on six intervals; a wrong direction
    # or node would be off by orders of magnitude more
    np.testing.assert_allclose(res.x, flow.exact(1.0, x_data, 0.0), rtol=0, atol=1e-6)
    assert res.nfe == 6
    # and back: regenerating from the exact noise returns the data
    back = baquad.solve(flow, flow.exact(1.0, x_data, 0.0), ts[::-1], rule="gauss-lobatto-4", perception=Oracle(flow))
    np.testing.assert_allclose(back.x, x_data, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_reference_round_trip_returns_the_input_on_the_digits_model():
    from adapters.torch_sit.digits.model import digits_sit_backbone, load_digits_split
    from adapters.torch_sit.digits.edit import generate, invert

    backbone = digits_sit_backbone(dtype=torch.float64)
    images, labels = load_digits_split("held-out")
    x0, y = images[:4].double(), labels[:4]
    z = invert(backbone, x0, y, method="reference", guidance=1.5)
    assert (z - x0).abs().max() > 0.5  # it really moved (to noise)
    x_rec = generate(backbone, z, y, method="reference", guidance=1.5)
    torch.testing.assert_close(x_rec, x0, rtol=0, atol=1e-4)


def test_edit_command_at_reduced_size_writes_the_table_and_the_picture(tmp_path, monkeypatch):
    from adapters.torch_sit.digits import edit
    from adapters.torch_sit.cli import main

    small = (("BA-solver + SideNet", "ba-solver", 3), ("Euler", "euler", 4), ("Adams-Bashforth 2", "adams", 4))
    monkeypatch.setattr(edit, "ROUND_TRIP_PLAN", small)
    monkeypatch.setattr(edit.round_trip, "__defaults__", (small, False, None))
    out = tmp_path / "edit"
    assert main(["demo", "edit", "--n", "6", "--digits", "0", "3", "--nfe", "3", "--out", str(out), "--no-progress"]) == 0
    text = (out / "edit.md").read_text()
    assert "Guidance 1.5" in text and "Guidance 1 in both directions" in text
    assert text.count("| BA-solver + SideNet | 3 |") == 2
    assert (out / "edits.png").stat().st_size > 5_000
    with pytest.raises(SystemExit) as info:  # refused by the parser (tests/test_demo_refusals.py)
        main(["demo", "edit", "--n", "6", "--digits", "999", "--nfe", "3", "--out", str(out), "--no-progress"])
    assert info.value.code == 2
