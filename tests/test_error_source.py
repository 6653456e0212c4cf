"""``analysis.error_source``: the windowed perception picks the intervals by their midpoints, and
the script's end rows equal independent anchor-only and oracle solves."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("matplotlib")
torch = pytest.importorskip("torch")

import baquad  # noqa: E402
from analysis.error_source import WindowedPerception, main  # noqa: E402
from baquad.flows import get_flow  # noqa: E402
from baquad.perception import AnchorOnly, Oracle, Perception  # noqa: E402
from baquad.reference import reference_solve  # noqa: E402


class Recorder(Perception):
    """Anchor-only predictions; remembers (anchor time, sign of the offsets) of every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, v, t, offsets, history=()):
        self.calls.append((round(float(t), 12), int(np.sign(max(offsets, key=abs)))))
        return AnchorOnly()(x, v, t, offsets, history)


@pytest.mark.parametrize("final", ["single", "bi"])
@pytest.mark.parametrize("window", [(0.25, 0.5), (0.0, 0.3), (0.7, 1.1)])
def test_windowed_perception_serves_the_intervals_whose_midpoint_is_in_the_window(final, window):
    ts = np.linspace(1.0, 0.0, 8)
    inside, outside = Recorder(), Recorder()
    flow = get_flow("gmm-ring2d")
    res = baquad.solve(flow, np.random.default_rng(0).standard_normal((4, 2)), ts,
                       perception=WindowedPerception(inside, outside, ts, *window), final=final)
    assert res.perception_calls == len(inside.calls) + len(outside.calls)
    # expected, from the grid: the forward probe of an interval sits at its start and looks toward
    # smaller t (negative offsets); a bi-anchor interval's backward probe sits at its end
    want_in, want_out = Counter(), Counter()
    n = len(ts) - 1
    for i in range(n):
        bi = final == "bi" or i < n - 1
        mid = 0.5 * (ts[i] + ts[i + 1])
        target = want_in if window[0] <= mid < window[1] else want_out
        target[(round(ts[i], 12), -1)] += 1
        if bi:
            target[(round(ts[i + 1], 12), 1)] += 1
    assert Counter(inside.calls) == want_in
    assert Counter(outside.calls) == want_out
    assert want_in and want_out


def test_windowed_perception_rejects_a_probe_outside_the_grid():
    w = WindowedPerception(AnchorOnly(), AnchorOnly(), [1.0, 0.5, 0.0], 0.0, 0.5)
    with pytest.raises(ValueError, match="no interval"):
        w.in_window(1.0, (0.2,))


def test_script_end_rows_equal_independent_solves(tmp_path):
    from adapters.torch_sit.sidenet.checkpoint import save_sidenet
    from adapters.torch_sit.sidenet.networks import MLPSideNet

    # an untrained SideNet (zero output layer) is the anchor-only perception
    path = save_sidenet(MLPSideNet(2, hidden=16, depth=2, embed_dim=8), tmp_path / "untrained.safetensors")
    assert main(["--sidenet", str(path), "--nfe", "4", "--n", "16", "--seed", "3", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "error_source_gmm-ring2d.md").read_text()
    assert (tmp_path / "error_source_gmm-ring2d.png").stat().st_size > 10_000
    row = lambda name: float(re.search(rf"^\| {re.escape(name)} \| ([0-9.e+-]+) \+-", md, re.M).group(1))

    flow = get_flow("gmm-ring2d")
    x0 = np.random.default_rng(3).standard_normal((16, 2))
    ref = reference_solve(flow, x0, [1.0, 0.0], rtol=1e-10, atol=1e-10)[-1]
    ts = np.linspace(1.0, 0.0, 5)
    for name, perception in (("SideNet everywhere", AnchorOnly()), ("oracle everywhere", Oracle(flow))):
        x = baquad.solve(flow, x0, ts, perception=perception).x
        assert row(name) == pytest.approx(np.linalg.norm(x - ref, axis=1).mean(), rel=1e-3), name
    # the oracle is far better than anchor-only at 4 NFE, so the swap rows are not all the same
    assert row("oracle everywhere") < 0.2 * row("SideNet everywhere")


@pytest.mark.slow
def test_backbone_rows_equal_independent_solves(tmp_path):
    """--backbone digits-sit with an untrained (zero-output) SideNet: its row is the anchor-only
    BA-solver, and the reference comes from torchdiffeq's dopri5 here, not from baquad."""
    torchdiffeq = pytest.importorskip("torchdiffeq")
    pytest.importorskip("sklearn")
    from adapters.torch_sit.sidenet.checkpoint import save_sidenet
    from adapters.torch_sit.digits.model import DIGITS_GUIDANCE_SCALE, digits_sit_backbone
    from adapters.torch_sit.sidenet.networks import MLPSideNet

    path = save_sidenet(MLPSideNet(64, hidden=16, depth=2, embed_dim=8, num_classes=10, guidance=True),
                        tmp_path / "untrained.safetensors")
    n = 6
    assert main(["--backbone", "digits-sit", "--sidenet", str(path), "--nfe", "3", "--n", str(n), "--seed", "5",
                 "--cuts", "0.5", "--oracle-rtol", "1e-6", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "error_source_digits-sit.md").read_text()
    assert "mode switches" not in md
    row = lambda name: float(re.search(rf"^\| {re.escape(name)} \| ([0-9.e+-]+) \+-", md, re.M).group(1))

    bb = digits_sit_backbone(dtype=torch.float64)
    labels = torch.arange(n) % 10
    field = bb.vfield(labels=labels, guidance_scale=DIGITS_GUIDANCE_SCALE)
    x0 = torch.randn((n, 1, 8, 8), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        ref = torchdiffeq.odeint(lambda t, x: field(float(t), x), x0, torch.tensor([1.0, 0.0], dtype=torch.float64),
                                 method="dopri5", rtol=1e-9, atol=1e-9)[-1]
        x = baquad.solve(field, x0, np.linspace(1.0, 0.0, 4), perception=AnchorOnly()).x
    want = (x - ref).flatten(1).norm(dim=1).mean().item()
    assert row("SideNet everywhere") == pytest.approx(want, rel=1e-3)
    assert row("oracle everywhere") < 0.5 * row("SideNet everywhere")
