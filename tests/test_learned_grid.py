"""Learned grid files (baquad/solvers/learned_grid.py): the JSON format, its use through
``baquad.schedules.nfe_grid`` by any method, and every refusal.

Truths: the grids written into the file by hand (read back exactly: JSON keeps float64), the
NFE formulas of docs/baselines.md (Heun with its Euler last step spends 2N - 1 calls), calls
counted by wrapping the field.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import baquad
from baquad.schedules import nfe_grid
from baquad.solvers.learned_grid import LearnedGrid, load_grid, method_options, save_grid

GRID5 = [1.0, 0.71, 0.43, 0.2, 0.06, 0.0]
GRID3 = [1.0, 0.5, 0.13, 0.0]


def _grid(method="unipc", steps=None, **options):
    return LearnedGrid(method, method_options(method, **options), {"steps": steps or {"5": GRID5}},
                       {"learned_by": "test"})


def test_round_trip_and_use_by_nfe_grid(tmp_path):
    path = save_grid(tmp_path / "grid.json", _grid())
    doc = json.loads(path.read_text())
    assert doc["format"] == "baquad-learned-grid" and doc["version"] == 1 and doc["method"] == "unipc"
    assert doc["grid"] == {"steps": {"5": GRID5}} and doc["options"]["order"] == 2
    back = load_grid(path)
    assert back == _grid() and back.source == str(path)
    assert nfe_grid("unipc", 5, back) == tuple(GRID5)  # JSON's promise: float64 numbers read back unchanged
    calls = []
    res = baquad.solve(lambda t, x: (calls.append(t), -x)[1], np.ones(2), nfe_grid("unipc", 5, back), method="unipc")
    assert res.nfe == len(calls) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["grid.json"]  # the atomic write left no temporary file


def test_options_are_recorded_resolved_with_defaults():
    assert method_options("unipc") == method_options("unipc", order=2, variant="bh2")
    assert method_options("unipc", disable_corrector=(0,))["disable_corrector"] == [0]
    assert method_options("heun") == {"final_step": "euler"}


def test_nfe_maps_to_steps_by_the_method_cost():
    g = _grid("heun", {"3": GRID3})
    assert nfe_grid("heun", 5, g) == tuple(GRID3)  # Heun, Euler last step: 2 * 3 - 1 = 5 calls
    with pytest.raises(ValueError, match=r"nfe: the learned grid holds 'heun' grids for NFE 5, not NFE 7"):
        nfe_grid("heun", 7, g)


def test_refusals_name_both_sides():
    g = _grid()
    with pytest.raises(ValueError, match=r"method: .*learned for 'unipc', not 'euler'"):
        nfe_grid("euler", 5, g)
    with pytest.raises(ValueError, match=r"options: .*order=2; got order=3"):
        nfe_grid("unipc", 5, g, order=3)
    with pytest.raises(ValueError, match=r"nfe: .*NFE 5, not NFE 6"):
        nfe_grid("unipc", 6, g)
    with pytest.raises(ValueError, match="shift"):
        nfe_grid("unipc", 5, g, shift=3.0)


@pytest.mark.parametrize("grid, match", [
    ({"steps": {"2": [1.0, 0.5, 0.1]}}, r"must start in \(0, 1\] and end at 0"),
    ({"steps": {"2": [1.0, 0.5, 0.7, 0.0]}}, "strictly decreasing"),
    ({"steps": {"3": [1.0, 0.5, 0.0]}}, "has 2 steps, not 3"),
    ({"shift": 3.0}, "field 'grid' must be"),
])
def test_invalid_grids_are_refused(grid, match):
    with pytest.raises(ValueError, match=match):
        LearnedGrid("euler", {}, grid, {})


def test_file_refusals(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_grid(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a learned-grid file \(not JSON"):
        load_grid(bad)
    doc = {"format": "baquad-learned-grid", "version": 1, "method": "euler", "options": {},
           "grid": {"steps": {"2": [1.0, 0.5, 0.0]}}, "meta": {}}
    for change, match in [({"format": "other"}, "format 'other'"), ({"version": 2}, "field 'version' is 2"),
                          ({"grid": {"steps": {"2": [0.0, 0.5, 1.0]}}}, "field 'grid'"),
                          ({"options": [1]}, "field 'options' must be a JSON object")]:
        bad.write_text(json.dumps({**doc, **change}))
        with pytest.raises(ValueError, match=match):
            load_grid(bad)
    bad.write_text(json.dumps({k: v for k, v in doc.items() if k != "meta"}))
    with pytest.raises(ValueError, match="missing field"):
        load_grid(bad)


def test_merged_holds_both_and_refuses_conflicts():
    a, b = _grid(steps={"5": GRID5}), _grid(steps={"3": GRID3})
    m = a.merged(b)
    assert nfe_grid("unipc", 5, m) == tuple(GRID5) and nfe_grid("unipc", 3, m) == tuple(GRID3)
    with pytest.raises(ValueError, match="only grids of one method"):
        a.merged(_grid("euler", steps={"3": GRID3}))
    with pytest.raises(ValueError, match="they differ"):
        a.merged(_grid(steps={"5": [1.0, 0.8, 0.43, 0.2, 0.06, 0.0]}))
