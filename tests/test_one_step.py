"""One bi-anchor step for sampling and training; methods that own their options and cost; a
perception history that no wrapper can lose.

Truths used: ``baquad.solve`` run sample by sample on each sample's own grid (the sampling path)
against the chain trainer's batched simulation with per-sample times (the training path); the
polynomial perception's result without any wrapper against the same solve inside every wrapper
the project has, and inside a user wrapper that declares nothing; the registry's documented
refusal of a method without a cost.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import baquad
from baquad.bianchor import BiAnchorSolver, ba_solver
from baquad.flows import get_flow
from baquad.methods import Method, get_method, register_method, steps_for_nfe
from baquad.perception import Anchor, AnchorPolynomial, Perception, get_perception
from baquad.rules import get_rule
from baquad.schedules import nfe_grid
from adapters.torch_sit.backbones import get_backbone
from adapters.torch_sit.sidenet.chain import ChainConfig, sample_times, simulate_chain
from adapters.torch_sit.sidenet.perception import NeuralPerception
from adapters.torch_sit.sidenet.networks import MLPSideNet
from _ulps import ulps

# ---------------------------------------------------------------------------------------------
# the chain's simulation is baquad.solve, sample by sample


def nonzero_sidenet(seed: int = 0, num_classes=None, guidance: bool = False, base: str = "anchor-only") -> MLPSideNet:
    torch.manual_seed(seed)
    net = MLPSideNet(2, hidden=32, depth=2, embed_dim=16, num_classes=num_classes, guidance=guidance,
                     base_perception=base)
    with torch.no_grad():
        net.out.weight.normal_(0.0, 0.3)  # zero-initialised by design: make it act
        net.out.bias.normal_(0.0, 0.1)
    return net.double()


def per_sample_solve(net, backbone, x, times, anchors, labels=None, guidance=None):
    """Each sample on its own grid (empty intervals dropped), through baquad.solve."""
    rows = []
    for i in range(x.shape[0]):
        ts = times[:, i].tolist()
        grid = [ts[0]] + [b for a, b in zip(ts[:-1], ts[1:]) if b != a]
        cond = {} if labels is None else {"labels": labels[i:i + 1]}
        if guidance is not None:
            cond["guidance_scale"] = guidance
        perception = NeuralPerception(net, None if labels is None else labels[i:i + 1], guidance)
        res = baquad.solve(backbone.vfield(**cond), x[i:i + 1], grid, rule="gauss-legendre-3", perception=perception,
                           anchors=anchors, final="bi", save_states=True)
        rows.append(res.xs[:, 0])
    return rows


@pytest.mark.parametrize("state_update, anchors", [("predictor", "single"), ("corrector", "bi")])
@pytest.mark.parametrize("intervals, base", [("dirichlet", "anchor-only"), ("trunc-exp", "anchor-only"),
                                             ("trunc-exp", "polynomial")])
def test_chain_simulation_equals_solve_per_sample(state_update, anchors, intervals, base):
    cfg = ChainConfig(chain_length=5, intervals=intervals, exp_rate=2.0, h_min=0.1, h_max=0.4,
                      state_update=state_update)
    backbone = get_backbone("gmm-ring2d")
    net = nonzero_sidenet(base=base)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64)
    times = sample_times(cfg, torch.ones(6, dtype=torch.float64), g)
    if intervals == "trunc-exp":  # the grids really end early for some samples (empty intervals)
        assert bool(((times[1:] - times[:-1]) == 0).any())
    ro = simulate_chain(net, backbone, x, times, cfg)
    expected = per_sample_solve(net, backbone, x, times, anchors)
    for i, xs in enumerate(expected):
        n = xs.shape[0]
        chain = torch.stack([ro.X[k][i] for k in range(n)])
        torch.testing.assert_close(chain, xs, rtol=1e-12, atol=1e-12)
        for k in range(n, len(ro.X)):
            # simulate_chain's promise: an empty interval (h = 0) leaves the row untouched, so
            # after its end the sample stays bitwise at the chain's own endpoint (compared with
            # the chain's endpoint, not solve's, which is another arithmetic path: 1e-12 above)
            assert torch.equal(ro.X[k][i], ro.X[n - 1][i]), (i, k)
    # the SideNet really acts: anchor-only would give another chain
    zero = nonzero_sidenet(base=base)
    with torch.no_grad():
        zero.out.weight.zero_()
        zero.out.bias.zero_()
    assert not torch.allclose(simulate_chain(zero, backbone, x, times, cfg).X[-1], ro.X[-1])


def test_chain_simulation_with_labels_and_guidance_equals_solve():
    calls = []

    def fn(t, x, labels=None, guidance_scale=None):
        calls.append((labels, guidance_scale))
        flow = get_backbone("gmm-ring2d")
        return flow(t, x) * (1.0 + 0.1 * labels.to(x.dtype)[:, None]) * guidance_scale

    backbone = get_backbone("gmm-ring2d")
    backbone.fn = fn
    backbone.num_classes = 3
    net = nonzero_sidenet(num_classes=3, guidance=True)
    cfg = ChainConfig(chain_length=3, state_update="corrector", guidance_scale=1.5)
    g = torch.Generator().manual_seed(4)
    x = torch.randn(4, 2, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    times = sample_times(cfg, torch.ones(4, dtype=torch.float64), g)
    ro = simulate_chain(net, backbone, x, times, cfg, labels)
    assert all(lab is labels and gs == 1.5 for lab, gs in calls)
    expected = per_sample_solve(net, backbone, x, times, "bi", labels, 1.5)
    for i, xs in enumerate(expected):
        torch.testing.assert_close(torch.stack([ro.X[k][i] for k in range(xs.shape[0])]), xs, rtol=1e-12, atol=1e-12)


def test_per_sample_times_need_a_perception_that_declares_them():
    class FloatsOnly(Perception):
        def __call__(self, x, v, t, offsets, history=()):
            return torch.stack([v] * len(offsets))

    solver = BiAnchorSolver(get_rule("gauss-legendre-3"), FloatsOnly())
    x = torch.zeros(3, 2)
    state = solver.init(lambda t, x: -x, torch.ones(3), x)
    with pytest.raises(TypeError, match="per_sample_times"):
        solver.step(lambda t, x: -x, state, torch.full((3,), 0.5))


# ---------------------------------------------------------------------------------------------
# the polynomial perception keeps its history inside every wrapper


def _wrappers():
    from analysis.error_source import WindowedPerception
    from analysis.nfe_sweep import TimedPerception
    from baquad.perception import PerceptionWrapper
    from baquad.solve import CountedPerception, _Where

    class Forgetful(Perception):
        """A user's wrapper that forwards the call and declares nothing."""

        def __init__(self, inner):
            self.inner = inner

        def __call__(self, x, v, t, offsets, history=()):
            return self.inner(x, v, t, offsets, history)

    ts = np.linspace(1.0, 0.0, 9)
    return {
        "counting": lambda p: CountedPerception(p, _Where(tuple(ts))),
        "timing": TimedPerception,
        "windowing": lambda p: WindowedPerception(p, AnchorPolynomial(), ts, 0.25, 0.75),
        "plain wrapper base": PerceptionWrapper,
        "user wrapper declaring nothing": Forgetful,
    }


#: the wrappers that only forward calls, and so forward the polynomial's linear_terms too
#: (baquad.perception: a wrapper that times, windows or declares nothing goes through the calls)
FORWARDING = ("counting", "plain wrapper base")


@pytest.mark.parametrize("name", list(_wrappers()))
def test_polynomial_perception_same_inside_every_wrapper(name):
    flow = get_flow("gmm-ring2d")
    x0 = np.random.default_rng(0).standard_normal((64, 2))
    ts = tuple(np.linspace(1.0, 0.0, 9))
    bare = ba_solver(flow, x0, ts, rule=get_rule("gauss-lobatto-4"), perception=AnchorPolynomial())
    anchor_only = ba_solver(flow, x0, ts, perception="anchor-only")
    assert np.abs(bare - anchor_only).max() > 1e-3  # the history matters on this grid
    wrapped = _wrappers()[name](AnchorPolynomial())
    via_solve = baquad.solve(flow, x0, ts, perception=wrapped).x  # solve adds its counting wrapper too
    if name in FORWARDING:
        np.testing.assert_array_equal(via_solve, bare)  # wrappers only delegate: the same arithmetic, bit for bit
    else:
        # through the calls: the same quadrature sums, added up in another order (the stacked
        # predictions weighted node by node, not the anchor velocities once each), so they agree
        # to rounding: a few ulps per interval, 8 ulps of the state's size per interval allowed
        np.testing.assert_allclose(via_solve, bare, rtol=0, atol=ulps(8 * (len(ts) - 1), np.float64, bare))


def test_history_is_bounded_by_the_declaration():
    seen = []

    class Spy(Perception):
        history_size = 2

        def __call__(self, x, v, t, offsets, history=()):
            seen.append(len(history))
            return np.stack([v] * len(offsets))

    baquad.solve(lambda t, x: -x, np.ones(2), np.linspace(1, 0, 7), perception=Spy())
    assert max(seen) == 2
    seen.clear()

    class Undeclared(Spy):
        history_size = None

    baquad.solve(lambda t, x: -x, np.ones(2), np.linspace(1, 0, 7), perception=Undeclared())
    assert max(seen) == 6  # every anchor: the initial one and the five of the bi-anchor intervals (scheme B)


def test_bad_history_declaration_is_refused():
    class Bad(Perception):
        history_size = 0

        def __call__(self, x, v, t, offsets, history=()):
            return np.stack([v] * len(offsets))

    with pytest.raises(ValueError, match="history_size"):
        baquad.solve(lambda t, x: -x, np.ones(2), [1.0, 0.0], perception=Bad())


# ---------------------------------------------------------------------------------------------
# methods own their options and their cost


def _twice_euler(field, x0, ts, *, callback=None, scale: float = 1.0):
    x = x0
    for i in range(len(ts) - 1):
        h = ts[i + 1] - ts[i]
        x = x + h * scale * 0.5 * (field(ts[i], x) + field(ts[i], x))
        if callback is not None:
            callback(i + 1, ts[i + 1], x)
    return x


def test_planner_refuses_a_method_without_cost():
    register_method(Method("test-no-cost", _twice_euler), replace=True)
    res = baquad.solve(lambda t, x: -x, np.ones(2), [1.0, 0.5, 0.0], method="test-no-cost")
    assert res.nfe == 4  # it solves; only planning needs the cost
    with pytest.raises(ValueError, match="test-no-cost") as info:
        steps_for_nfe("test-no-cost", 10)
    assert "cost" in str(info.value)
    with pytest.raises(ValueError, match="test-no-cost"):
        nfe_grid("test-no-cost", 10)


def test_registered_method_with_cost_is_planned_and_its_options_checked():
    register_method(Method("test-two-per-step", _twice_euler, cost=lambda scale=1.0: (2, 0)), replace=True)
    ts = nfe_grid("test-two-per-step", 8)
    res = baquad.solve(lambda t, x: -x, np.ones(2), ts, method="test-two-per-step", scale=1.0)
    assert len(ts) - 1 == 4 and res.nfe == 8
    with pytest.raises(TypeError, match="scal") as info:
        baquad.solve(lambda t, x: -x, np.ones(2), ts, method="test-two-per-step", scal=1.0)
    assert "scale" in str(info.value)


def test_ba_solver_is_a_registered_method_like_the_baselines():
    ba = get_method("ba-solver")
    assert set(ba.option_names) == {"rule", "perception", "anchors", "final", "steps"}
    assert ba.nfe(10) == 10 and ba.nfe(9, final="bi") == 10 and ba.nfe(10, anchors="single", final="bi") == 10
    with pytest.raises(ValueError, match="anchors"):
        ba.nfe(3, anchors="double")
    # the documented calls
    f = lambda t, x: -x  # noqa: E731
    a = baquad.solve(f, np.ones(2), np.linspace(1, 0, 5), rule="gauss-lobatto-4").x
    b = baquad.solve(f, np.ones(2), np.linspace(1, 0, 5), rule="gauss-lobatto-4", method="ba-solver").x
    c = ba_solver(f, np.ones(2), np.linspace(1, 0, 5))  # a direct call resolves the same defaults
    np.testing.assert_array_equal(a, c)  # spellings of one call resolve to the same arithmetic, bit for bit
    np.testing.assert_array_equal(a, b)


def test_polynomial_perception_per_sample_equals_float_path_row_by_row():
    """The per-sample polynomial (chain training) against the float path run on each row alone;
    a row whose anchors repeat a time (a stopped chain) predicts its anchor velocity."""
    from baquad.perception import Anchor

    p = AnchorPolynomial()
    g = torch.Generator().manual_seed(0)
    b = 5
    times = [torch.rand(b, generator=g, dtype=torch.float64) * 0.1 + c for c in (0.9, 0.6, 0.3)]
    hist = tuple(Anchor(t, torch.randn(b, 3, generator=g, dtype=torch.float64),
                        torch.randn(b, 3, generator=g, dtype=torch.float64)) for t in times)
    t, x, v = hist[-1]
    offsets = torch.stack([torch.full((b,), -0.1, dtype=torch.float64), torch.full((b,), 0.2, dtype=torch.float64),
                           0.5 * (times[1] - times[2])])  # extrapolation, beyond, interpolation
    out = p(x, v, t, offsets, hist)
    for i in range(b):
        row = tuple(Anchor(float(a.t[i]), a.x[i:i + 1], a.v[i:i + 1]) for a in hist)
        ref = p(x[i:i + 1], v[i:i + 1], float(t[i]), tuple(float(o) for o in offsets[:, i]), row)
        torch.testing.assert_close(out[:, i:i + 1], ref, rtol=1e-12, atol=1e-12)
    stopped = hist + (Anchor(t, x, v),)
    torch.testing.assert_close(p(x, v, t, 0.0 * offsets, stopped), v.expand(3, b, 3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("base", ["polynomial", "anchor-only"])
def test_residual_sidenet_with_zero_output_is_exactly_its_base(base):
    """A SideNet trained as a residual on a training-free perception: zero output (its
    initialisation) gives exactly that perception, inside the whole solve."""
    net = MLPSideNet(2, hidden=16, depth=1, embed_dim=8, base_perception=base).double()
    flow = get_flow("gmm-ring2d")
    x0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ts = np.linspace(1.0, 0.0, 7)
    learned = NeuralPerception(net)
    free = get_perception(base)

    class ThroughCalls(Perception):
        """The base perception, its stacked predictions only (as the learned one gives them)."""

        history_size = None

        def __call__(self, x, v, t, offsets, history=()):
            return free(x, v, t, offsets, history)

    with_net = baquad.solve(flow, x0, ts, perception=learned)
    without = baquad.solve(flow, x0, ts, perception=ThroughCalls())
    assert torch.equal(with_net.x, without.x) and with_net.nfe == without.nfe  # base + d * 0 is base, bit for bit
    t, offsets = 0.5, (0.1, -0.2, 0.3)
    anchors = tuple(Anchor(a, x0 * a, flow(a, x0 * a)) for a in (0.9, 0.7, t))
    x, v = anchors[-1].x, anchors[-1].v
    assert torch.equal(learned(x, v, t, offsets, anchors), free(x, v, t, offsets, anchors))  # one probe, bit for bit
    # and the base's own solve, which adds each anchor velocity once (its linear_terms), to rounding
    direct = baquad.solve(flow, x0, ts, perception=base).x
    torch.testing.assert_close(with_net.x, direct, rtol=0, atol=ulps(8 * (len(ts) - 1), torch.float64, direct))
    assert net.config().get("base_perception", "anchor-only") == base
