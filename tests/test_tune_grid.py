"""analysis.tune_grid records the grid with the smallest calibration error in the SideNet file.

A zero-initialised SideNet (anchor-only base) predicts exactly what the training-free anchor-only
perception predicts, so the test recomputes every grid's error with ``baquad.perception.AnchorOnly``
against its own DOP853 solutions (scipy, through ``reference_solve``) and its own score (the mean
Euclidean error, then the mean of logs over the NFEs): the argmin must be the grid the script
records, and the recorded grid must be what ``default_grid`` then returns for the SideNet.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def test_the_recorded_grid_is_the_calibration_argmin(tmp_path, capsys):
    import baquad
    from analysis import tune_grid
    from analysis.nfe_sweep import GRIDS
    from adapters.torch_sit.sidenet.checkpoint import load_sidenet, save_sidenet
    from adapters.torch_sit.sidenet.perception import NeuralPerception
    from adapters.torch_sit.sidenet.networks import MLPSideNet
    from baquad.flows import get_flow
    from baquad.perception import AnchorOnly
    from baquad.reference import reference_solve
    from baquad.schedules import default_grid, grid_from_spec, steps_for_nfe

    path = save_sidenet(MLPSideNet(2, hidden=16, depth=1, embed_dim=8), tmp_path / "sidenet.safetensors")
    n, seed, nfes = 24, 3, (3, 5)
    assert tune_grid.main(["--flow", "gmm-ring2d", "--sidenet", str(path), "--n", str(n), "--seed", str(seed),
                           "--nfe", *map(str, nfes), "--save"]) == 0

    flow = get_flow("gmm-ring2d")
    noise = np.random.default_rng(seed).standard_normal((n, 2))
    ref = reference_solve(flow, noise, [1.0, 0.0], rtol=1e-10, atol=1e-10)[-1]
    scores = {}
    for name, spec in GRIDS.items():
        logs = []
        for nfe in nfes:
            ts = grid_from_spec(spec, steps_for_nfe("ba-solver", nfe))
            x = baquad.solve(flow, noise, ts, perception=AnchorOnly()).x
            logs.append(np.log(np.mean(np.linalg.norm(x - ref, axis=1))))
        scores[name] = np.mean(logs)
    best = min(scores, key=scores.get)
    assert sorted(scores.values())[1] - scores[best] > 1e-6, "a tie would make the check meaningless"

    recorded = NeuralPerception(load_sidenet(path)).grid
    assert recorded == {"schedule": "uniform", "shift": GRIDS[best]["shift"]} or recorded == GRIDS[best]
    assert default_grid("ba-solver", 5, NeuralPerception(load_sidenet(path))) == pytest.approx(
        grid_from_spec(GRIDS[best], steps_for_nfe("ba-solver", 5)))
    assert f"chosen: {best} " in capsys.readouterr().out
