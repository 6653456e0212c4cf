"""Learned solvers trained against teacher endpoints (adapters/torch_sit/learned/): teacher sets,
the endpoint trainer, BNS and LD3.

Truths: the closed-form trajectories of Gaussian data on the linear path (x(t) = x(1) sigma(t)
with sigma(t)^2 = (1 - t)^2 s^2 + t^2 for N(0, s^2)); on that flow the two-step Euler solution
x_2 = R(t_1) x(1), R(t) = t (1 - t) s^2 / sigma(t)^2 (worked out in the test below), whose best
middle point solves R'(t) = 0 (sympy's derivative, scipy's brentq; it is s / (1 + s)); the chain
rule on that closed form for the finite-difference gradient; an uninterrupted run for resuming
(bitwise: the resume promise, same machine and threads); calls counted by wrapping the backbone;
the classical methods as ``baquad.solve`` runs them.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sympy = pytest.importorskip("sympy")
from scipy.optimize import brentq  # noqa: E402

import baquad  # noqa: E402
from adapters.torch_sit.backbones import Backbone  # noqa: E402
from adapters.torch_sit.files import read_header, read_tensors  # noqa: E402
from adapters.torch_sit.learned import bns as bns_cli  # noqa: E402
from adapters.torch_sit.learned import ld3 as ld3_cli  # noqa: E402
from adapters.torch_sit.learned import teacher as teacher_mod  # noqa: E402
from adapters.torch_sit.learned import trainer as trainer_mod  # noqa: E402
from adapters.torch_sit.learned.bns import BNSSolver, initial_coefficients, train_bns  # noqa: E402
from adapters.torch_sit.learned.ld3 import LD3Grid, train_ld3  # noqa: E402
from adapters.torch_sit.learned.teacher import build_teacher, load_teacher  # noqa: E402
from adapters.torch_sit.learned.trainer import EndpointConfig  # noqa: E402
from baquad.flows import GaussianFlow  # noqa: E402
from baquad.schedules import nfe_grid, uniform  # noqa: E402
from baquad.solvers.bns import NonStationaryCoefficients  # noqa: E402
from baquad.solvers.learned_grid import load_grid  # noqa: E402

from _ulps import ulps  # noqa: E402

S = 0.5  # the data's standard deviation
QUIET = {"progress": False}


def gaussian_backbone(s: float = S, name: str = "gauss-1d") -> Backbone:
    """N(0, s^2) data on the linear path: v = sigma'(t) / sigma(t) x (baquad.flows.GaussianFlow)."""
    flow = GaussianFlow([0.0], [s])
    return Backbone(name, lambda t, x, **cond: flow(t, x), (1,), extra={"flow": flow})


class TinyConditional(torch.nn.Module):
    """A class-conditional velocity model with random weights: v = W x + e[label] + t (guided
    as cond + (g - 1) (cond - uncond), class 3 the null class)."""

    def __init__(self):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = torch.nn.Parameter(0.3 * torch.randn(2, 2, generator=gen))
        self.embed = torch.nn.Parameter(torch.randn(4, 2, generator=gen))

    def forward(self, t, x, labels=None, guidance_scale=None):
        v = lambda y: x @ self.w.T.to(x.dtype) + self.embed[y].to(x.dtype) + t.to(x.dtype)[:, None]  # noqa: E731
        if guidance_scale is None:
            return v(labels)
        cond, uncond = v(labels), v(torch.full_like(labels, 3))
        return uncond + guidance_scale * (cond - uncond)


def conditional_backbone() -> Backbone:
    return Backbone.from_module(TinyConditional(), "tiny-cond", (2,), num_classes=3)


def teacher(tmp_path, bb=None, name="train", role="train", seed=1, n=64, **kw):
    kw = {"rtol": 1e-10, "dtype": "float64", "log": lambda *a: None, **QUIET, **kw}
    return build_teacher(bb or gaussian_backbone(), tmp_path / f"{name}.safetensors", n=n, seed=seed, role=role, **kw)


def config(**kw) -> EndpointConfig:
    return EndpointConfig(**{"lr": 0.02, "batch_size": 16, "iters": 40, "seed": 3, **kw})


def quiet(fn, *args, **kw):
    return fn(*args, progress=False, **kw)


# ------------------------------------------------------------------------------------------
# teacher sets


def test_teacher_targets_are_the_exact_solutions(tmp_path):
    t = teacher(tmp_path)
    z = torch.randn((64, 1), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.equal(t.noise, z)  # the documented draw: float64 normals from a generator seeded by the seed
    # x(0) = sigma(0) / sigma(1) x(1) = s x(1) (sigma(1) = 1)
    np.testing.assert_allclose(t.target.numpy(), S * z.numpy(), rtol=0, atol=1e-8)
    meta = read_header(tmp_path / "train.safetensors").meta
    assert meta["network_dtype"] == "float64" and meta["role"] == "train" and meta["n"] == 64
    assert meta["backbone"]["name"] == "gauss-1d" and len(meta["backbone"]["flow_sha256"]) == 64


def test_teacher_conditioning_float64_network_and_restore(tmp_path):
    bb = conditional_backbone()
    before = {k: v.clone() for k, v in bb.module.state_dict().items()}
    t = teacher(tmp_path, bb, n=7, guidance_scale=1.5, dtype="float32", rtol=1e-9)
    assert t.labels.tolist() == [i % 3 for i in range(7)]
    assert read_header(tmp_path / "train.safetensors").meta["network_dtype"] == "float64"
    after = bb.module.state_dict()
    # the float64 cast is undone: float32 -> float64 -> float32 is exact
    assert all(after[k].dtype == torch.float32 and torch.equal(after[k], before[k]) for k in before)
    # the targets solve the guided linear ODE: scipy's DOP853 at a tighter tolerance, independently
    from scipy.integrate import solve_ivp

    m = TinyConditional().double()
    for i in (0, 4):
        lab = torch.tensor([i % 3])

        def f(tt, y):
            with torch.no_grad():
                return m(torch.tensor([tt], dtype=torch.float64), torch.tensor(y)[None], lab, 1.5)[0].numpy()

        sol = solve_ivp(f, (1.0, 0.0), t.noise[i].double().numpy(), method="Radau", rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(t.target[i].numpy(), sol.y[:, -1], rtol=0, atol=1e-6)


def test_teacher_is_cached_and_resumes_by_chunk(tmp_path, monkeypatch):
    solve_chunk = teacher_mod._solve_chunk
    calls = []

    def counted(*args, **kw):
        calls.append(1)
        if len(calls) == 2 and kw.get("fail", True) and not hasattr(counted, "passed"):
            counted.passed = True
            raise KeyboardInterrupt("killed")
        return solve_chunk(*args)

    full = teacher(tmp_path, name="full", n=48, chunk=16)
    monkeypatch.setattr(teacher_mod, "_solve_chunk", counted)
    with pytest.raises(KeyboardInterrupt):
        teacher(tmp_path, name="cut", n=48, chunk=16)
    assert sorted(p.name for p in (tmp_path / "cut.safetensors.parts").iterdir()) == ["chunk-00000.safetensors"]
    calls.clear()
    cut = teacher(tmp_path, name="cut", n=48, chunk=16)
    assert len(calls) == 2  # the first chunk was kept, the other two solved
    assert not (tmp_path / "cut.safetensors.parts").exists()
    assert torch.equal(cut.target, full.target)  # the same solves, chunk by chunk (same machine, same threads)
    calls.clear()
    again = teacher(tmp_path, name="cut", n=48, chunk=16)  # built already: loaded, nothing solved
    assert calls == [] and torch.equal(again.target, full.target)
    with pytest.raises(ValueError, match=r"other settings \(seed: 1 there, 2 asked\)"):
        teacher(tmp_path, name="cut", n=48, chunk=16, seed=2)


def test_teacher_refusals(tmp_path):
    with pytest.raises(ValueError, match="role: one of train, validation, score"):
        teacher(tmp_path, role="test")
    with pytest.raises(ValueError, match="guidance_scale: backbone 'gauss-1d' is not class-conditional"):
        teacher(tmp_path, guidance_scale=1.5)
    with pytest.raises(ValueError, match="n: must be an integer >= 1"):
        teacher(tmp_path, n=0)


def test_trainers_refuse_the_wrong_teacher_set(tmp_path):
    bb = gaussian_backbone()
    score = teacher(tmp_path, role="score", name="score")
    train = teacher(tmp_path, name="train")
    with pytest.raises(ValueError, match=r"teacher: .*score\.safetensors has role 'score' \(held out"):
        quiet(train_bns, bb, score, tmp_path / "run", config(), nfe=2)
    with pytest.raises(ValueError, match="validation: .*has role 'train'.*needs a 'validation' set"):
        quiet(train_bns, bb, train, tmp_path / "run", config(), nfe=2, validation=train)
    same = teacher(tmp_path, role="validation", name="same", seed=1, n=16)
    with pytest.raises(ValueError, match="validation: drawn from seed 1, as the train set is"):
        quiet(train_bns, bb, train, tmp_path / "run", config(), nfe=2, validation=same)
    other = gaussian_backbone(s=0.7)
    with pytest.raises(ValueError, match=r"built for backbone 'gauss-1d' \(flow_sha256=.*\), not for backbone "
                                         r"'gauss-1d'"):
        quiet(train_ld3, other, train, tmp_path / "run", config(), method="euler", nfe=2)
    cbb = conditional_backbone()
    guided = teacher(tmp_path, cbb, name="guided", n=8, guidance_scale=1.5, rtol=1e-8)
    with pytest.raises(ValueError, match="built with guidance scale 1.5, this run uses 2.0"):
        quiet(train_bns, cbb, guided, tmp_path / "run", config(batch_size=4), nfe=2, guidance_scale=2.0)
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------------
# BNS


def test_bns_module_starts_as_euler_spends_its_nfe_and_reaches_every_parameter():
    bb = gaussian_backbone()
    calls = []
    counted = Backbone("gauss-1d", lambda t, x, **c: (calls.append(t), bb.fn(t, x))[1], (1,))
    module = BNSSolver(counted, initial_coefficients("euler", 3, shift=0.5))
    z = torch.randn((5, 1), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = module(z, {}, None)
    assert len(calls) == 3 and all(t.shape == (5,) and t.requires_grad for t in calls)
    euler = baquad.solve(bb.vfield(), z, uniform(3, shift=0.5), method="euler").x
    # the module's times come back from softmax and cumsum: a few float64 ulps off the grid
    assert float((x.detach() - euler).abs().max()) <= ulps(64, torch.float64, euler, z)
    x.sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in (module.logits, module.a, module.b))


def test_bns_training_lowers_the_error_from_euler(tmp_path):
    bb = gaussian_backbone()
    train, val = teacher(tmp_path), teacher(tmp_path, name="val", role="validation", seed=2, n=32)
    res = quiet(train_bns, bb, train, tmp_path / "run", config(iters=60), nfe=2, validation=val)
    # Euler on (1, 0.5, 0) ends at R(0.5) z = 0.2 z instead of 0.5 z: error 0.3 E|z|
    assert res.summary["validation_error_initial"] == pytest.approx(0.3 * float(val.noise.abs().mean()), rel=1e-6)
    assert res.summary["validation_error_final"] < 0.3 * res.summary["validation_error_initial"]
    c = NonStationaryCoefficients.load(tmp_path / "run" / "bns.npz")
    x = baquad.solve(bb.vfield(), val.noise, c.times, method="bns", coefficients=c).x
    assert float((x - val.target).abs().mean()) == pytest.approx(res.summary["validation_error_final"], rel=1e-9)


# ------------------------------------------------------------------------------------------
# LD3 on two Euler steps, whose best grid is known
#
# Euler from 1 to t1: v(x, 1) = (sigma'(1) / sigma(1)) x = x, so x_1 = x + (t1 - 1) x = t1 x. Then
# x_2 = x_1 (1 - t1 sigma'(t1) / sigma(t1)) with sigma sigma' = (t - 1) s^2 + t, which gives
# x_2 = R(t1) x, R(t) = t (1 - t) s^2 / sigma(t)^2. Since sigma^2 >= 2 t (1 - t) s, R <= s / 2 < s:
# two Euler steps never reach s x, and the error E|x| (s - R(t1)) is least where R' = 0.


def _R():
    t = sympy.symbols("t")
    r = t * (1 - t) * S**2 / ((1 - t) ** 2 * S**2 + t**2)
    return sympy.lambdify(t, r), sympy.lambdify(t, sympy.diff(r, t))


def test_ld3_moves_the_euler_grid_toward_its_optimum(tmp_path):
    r, dr = _R()
    best = brentq(dr, 0.05, 0.95)
    assert best == pytest.approx(S / (1 + S), abs=1e-12)  # u = t / (1 - t): R = s^2 u / (s^2 + u^2), best at u = s
    bb = gaussian_backbone()
    train, val = teacher(tmp_path), teacher(tmp_path, name="val", role="validation", seed=2, n=32)
    res = quiet(train_ld3, bb, train, tmp_path / "run", config(iters=60, lr=0.05), method="euler", nfe=2,
                validation=val)
    grid = load_grid(tmp_path / "run" / "grid.json")
    t1 = nfe_grid("euler", 2, grid)[1]
    assert abs(t1 - best) < 0.2 * abs(0.5 - best), t1
    mean_z = float(val.noise.abs().mean())
    assert res.summary["validation_error_initial"] == pytest.approx(mean_z * (S - r(0.5)), rel=1e-6)
    assert res.summary["validation_error_final"] == pytest.approx(mean_z * (S - r(t1)), rel=1e-6)
    assert res.summary["validation_error_final"] < res.summary["validation_error_initial"]


def test_ld3_logit_gradient_is_the_chain_rule_of_the_closed_form(tmp_path):
    """L = E|z| (s - R(t1)) with t1 = 1 - p0, p = softmax(l): dL/dl0 = E|z| R'(t1) p0 p1 = -dL/dl1."""
    _, dr = _R()
    bb = gaussian_backbone()
    train = teacher(tmp_path, n=16)
    init = (1.0, 0.37, 0.0)
    module = LD3Grid(bb, "euler", {}, init, noise=train.noise)
    x = module(train.noise, {}, torch.arange(16))
    trainer_mod.trajectory_error(x, train.target).mean().backward()
    p0, p1 = 1 - init[1], init[1]
    expected = float(train.noise.abs().mean()) * dr(init[1]) * p0 * p1
    # the central difference's error, eps^2 ~ 4e-11 relative (module docstring), and the teacher's 1e-10
    np.testing.assert_allclose(module.logits.grad.numpy(), [expected, -expected], rtol=1e-6)


def test_ld3_soft_teacher_forcing_stays_in_its_ball(tmp_path):
    bb = gaussian_backbone()
    train = teacher(tmp_path, n=16)
    res = quiet(train_ld3, bb, train, tmp_path / "run", config(iters=10), method="euler", nfe=2, radius=0.1)
    start, centre = res.module.start.detach(), train.noise
    dist = (start - centre).flatten(1).norm(dim=1)
    assert bool((dist > 0).any())  # the starts moved
    assert bool((dist <= 0.1 * centre.flatten(1).norm(dim=1) * (1 + 1e-12)).all())


# ------------------------------------------------------------------------------------------
# the trainer's run directory: resume, refusals, time budget


class Stop(RuntimeError):
    pass


def _stop_at(monkeypatch, step):
    real = trainer_mod.batch_indices

    def draw_or_stop(n, batch, s, seed):
        if s == step:
            raise Stop(f"stopped before step {s + 1}")
        return real(n, batch, s, seed)

    monkeypatch.setattr(trainer_mod, "batch_indices", draw_or_stop)


def _tensors(path):
    return read_tensors(read_header(path))


def _rows(out):
    with open(out / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("solver", ["bns", "ld3"])
def test_an_interrupted_run_resumes_bitwise(tmp_path, monkeypatch, solver):
    bb = gaussian_backbone()
    train = teacher(tmp_path, n=24)
    run = (lambda out, **kw: quiet(train_bns, bb, train, out, config(iters=6, batch_size=10, ckpt_every=2), nfe=3,
                                   **kw)) if solver == "bns" else (
        lambda out, **kw: quiet(train_ld3, bb, train, out, config(iters=6, batch_size=10, ckpt_every=2),
                                method="euler", nfe=3, radius=0.05, **kw))
    run(tmp_path / "a")
    with monkeypatch.context() as mp:
        _stop_at(mp, 3)
        with pytest.raises(Stop):
            run(tmp_path / "b")
    assert read_header(tmp_path / "b" / "checkpoint.safetensors").meta["step"] == 2
    res = run(tmp_path / "b")
    assert res.summary["resumed_from"] == 2 and res.summary["iterations"] == 4
    a, b = _tensors(tmp_path / "a" / "checkpoint.safetensors"), _tensors(tmp_path / "b" / "checkpoint.safetensors")
    # the resume promise: parameters, Adam's state and the RNG bit for bit (same machine, same threads)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["step"] for r in _rows(tmp_path / "b")] == [str(i) for i in range(1, 7)]
    assert [r["loss"] for r in _rows(tmp_path / "a")] == [r["loss"] for r in _rows(tmp_path / "b")]


def test_resuming_onto_another_run_is_refused(tmp_path):
    bb = gaussian_backbone()
    train = teacher(tmp_path, n=24)
    quiet(train_bns, bb, train, tmp_path / "run", config(iters=2), nfe=2)
    with pytest.raises(ValueError, match=r"nfe: 2 in the checkpoint, 3 in this run"):
        quiet(train_bns, bb, train, tmp_path / "run", config(iters=4), nfe=3)
    with pytest.raises(ValueError, match=r"solver: 'bns' in the checkpoint, 'ld3' in this run"):
        quiet(train_ld3, bb, train, tmp_path / "run", config(iters=4), method="euler", nfe=2)
    quiet(train_ld3, bb, train, tmp_path / "ld3", config(iters=2), method="euler", nfe=2)
    with pytest.raises(ValueError, match=r"method: 'euler' in the checkpoint, 'heun' in this run"):
        quiet(train_ld3, bb, train, tmp_path / "ld3", config(iters=4), method="heun", nfe=3)
    with pytest.raises(ValueError, match=r"optimisation\.lr: 0\.02 in the checkpoint, 0\.5 in this run"):
        quiet(train_bns, bb, train, tmp_path / "run", config(iters=4, lr=0.5), nfe=2)
    other = teacher(tmp_path, name="other", seed=5, n=24)
    with pytest.raises(ValueError, match=r"train_set\.seed: 1 in the checkpoint, 5 in this run"):
        quiet(train_bns, bb, other, tmp_path / "run", config(iters=4), nfe=2)
    # a fresh start is allowed, and removes the previous run's files first, its export included
    with pytest.MonkeyPatch.context() as mp:
        _stop_at(mp, 0)
        with pytest.raises(Stop):
            quiet(train_bns, bb, train, tmp_path / "run", config(iters=2), nfe=3, resume=False)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["log.csv"]
    quiet(train_bns, bb, train, tmp_path / "run", config(iters=2), nfe=3)
    assert NonStationaryCoefficients.load(tmp_path / "run" / "bns.npz").nfe == 3


def test_a_non_finite_loss_stops_the_run_before_any_update(tmp_path):
    bb = gaussian_backbone()
    train = teacher(tmp_path, n=24)
    broken = Backbone("gauss-1d", lambda t, x, **c: x / 0.0, (1,), extra=bb.extra)  # inf velocities
    with pytest.raises(FloatingPointError, match="step 1: the loss .* is not finite; no update made"):
        quiet(train_bns, broken, train, tmp_path / "run", config(iters=3), nfe=2)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_the_time_budget_is_converted_once_and_recorded(tmp_path, monkeypatch, capsys):
    bb = gaussian_backbone()
    train = teacher(tmp_path, n=24)

    def fake_clock(dt):
        now = [0.0]

        def clock():
            now[0] += dt
            return now[0]

        return clock

    minutes, dt = 0.05, 0.25
    expected = int(minutes * 60 / dt)  # every timed iteration takes one tick of the fake clock
    cfg = config(iters=None, minutes=minutes, batch_size=8, ckpt_every=2)
    monkeypatch.setattr(trainer_mod, "clock", fake_clock(dt))
    with monkeypatch.context() as mp:
        _stop_at(mp, 5)
        with pytest.raises(Stop):
            train_bns(bb, train, tmp_path / "run", cfg, nfe=2, progress=False)
    assert read_header(tmp_path / "run" / "checkpoint.safetensors").meta["iters"] == expected
    monkeypatch.setattr(trainer_mod, "clock", fake_clock(dt / 10))  # a machine ten times faster now
    assert f"the time budget of {minutes:g} min is {expected} iterations" in capsys.readouterr().out
    res = train_bns(bb, train, tmp_path / "run", cfg, nfe=2, progress=False)
    assert res.summary["steps_total"] == expected and len(_rows(tmp_path / "run")) == expected
    assert f"converted to {expected} iterations when the run started" in capsys.readouterr().out


def test_the_budget_times_a_whole_cycle_and_leaves_room_for_validation(tmp_path, monkeypatch, capsys):
    """A module that trains several NFEs in turn (``iteration_cycle`` 3) whose iterations cost
    1, 2 and 6 ticks in turn, and a validation pass of 5 ticks: the budget is converted from the
    mean over one whole cycle, after the ten validation passes are taken out."""
    bb = gaussian_backbone()
    train, val = teacher(tmp_path, n=24), teacher(tmp_path, name="val", role="validation", seed=2, n=8)
    now, costs, val_cost = [0.0], (1.0, 2.0, 6.0), 5.0
    monkeypatch.setattr(trainer_mod, "clock", lambda: now[0])
    real_step, real_val = trainer_mod._train_step, trainer_mod._validation_error

    def timed_step(module, optimizer, data, idx, device, step):
        now[0] += costs[step % 3]
        return real_step(module, optimizer, data, idx, device, step)

    def timed_validation(*args, **kwargs):
        now[0] += val_cost
        return real_val(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "_train_step", timed_step)
    monkeypatch.setattr(trainer_mod, "_validation_error", timed_validation)
    monkeypatch.setattr(BNSSolver, "iteration_cycle", 3, raising=False)
    minutes = 2.0
    # (120 - 10 x 5) / 3 = 23; timing steps 1 and 2 alone (2 and 6 ticks) would give 17, no room
    # for validation 40
    expected = int((minutes * 60 - trainer_mod.VALIDATIONS * val_cost) / 3.0)
    assert expected == 23
    cfg = config(iters=None, minutes=minutes, batch_size=8)
    res = train_bns(bb, train, tmp_path / "run", cfg, nfe=2, validation=val, progress=False)
    assert res.summary["steps_total"] == expected
    assert "one iteration takes 3 s on this machine" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------
# the commands


def test_the_commands_run_on_the_ring(tmp_path, capsys):
    t, v = str(tmp_path / "t.safetensors"), str(tmp_path / "v.safetensors")
    for path, role, seed in ((t, "train", 1), (v, "validation", 2)):
        assert teacher_mod.main(["--backbone", "gmm-ring2d", "--n", "24", "--seed", str(seed), "--role", role,
                                 "--out", path, "--no-progress"]) == 0
    common = ["--backbone", "gmm-ring2d", "--teacher", t, "--validation", v, "--iters", "3", "--batch", "8",
              "--no-progress"]
    assert bns_cli.main([*common, "--nfe", "4", "--init", "adams", "--out", str(tmp_path / "bns")]) == 0
    assert ld3_cli.main([*common, "--method", "unipc", "--nfe", "4", "--radius", "0.1",
                         "--out", str(tmp_path / "ld3")]) == 0
    c = NonStationaryCoefficients.load(tmp_path / "bns" / "bns.npz")
    assert c.nfe == 4 and c.meta["learned_by"] == "bns"
    assert len(nfe_grid("unipc", 4, load_grid(tmp_path / "ld3" / "grid.json"))) == 5
    summary = json.loads((tmp_path / "ld3" / "summary.json").read_text())
    assert summary["steps_total"] == 3 and summary["wall_time_s"] > 0
    out = capsys.readouterr().out
    assert "one iteration takes" in out and "iterations (about" in out
    with pytest.raises(SystemExit):
        bns_cli.main([*common, "--nfe", "4", "--minutes", "1", "--out", str(tmp_path / "x")])  # both --iters, --minutes
    assert "give exactly one" in capsys.readouterr().err
