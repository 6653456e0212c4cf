"""BA-solver trained end to end (adapters/torch_sit/learned/ba.py).

Truths: before training, the module is the plain BA-solver with the chain-trained SideNet on the
starting grid (``baquad.solve`` with the rule's weights); the NFE counted by wrapping the
backbone; the exported file, loaded as a user loads a SideNet, samples exactly what the module
computed (the learned grid through ``default_grid``, the learned steps through the perception);
training lowers the teacher-endpoint error; an interrupted run resumes bit for bit (the resume
promise: same machine, same threads)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import baquad  # noqa: E402
from adapters.torch_sit.backbones import get_backbone  # noqa: E402
from adapters.torch_sit.learned import trainer as trainer_mod  # noqa: E402
from adapters.torch_sit.learned.ba import LearnedBA, build_parser, starting_grids, train_ba  # noqa: E402
from adapters.torch_sit.learned.teacher import build_teacher  # noqa: E402
from adapters.torch_sit.learned.trainer import EndpointConfig  # noqa: E402
from adapters.torch_sit.sidenet.checkpoint import load_sidenet, save_sidenet  # noqa: E402
from adapters.torch_sit.sidenet.networks import build_sidenet  # noqa: E402
from adapters.torch_sit.sidenet.perception import NeuralPerception  # noqa: E402
from adapters.torch_sit.files import read_header, read_tensors  # noqa: E402
from baquad.schedules import default_grid, uniform  # noqa: E402

from _ulps import ulps  # noqa: E402


class Stop(RuntimeError):
    pass


def ring():
    return get_backbone("gmm-ring2d")


def sidenet_file(tmp_path, seed=0):
    """A small MLP SideNet with random (not zero) output weights, so that it predicts something."""
    torch.manual_seed(seed)
    net = build_sidenet({"class": "MLPSideNet", "dim": 2, "hidden": 16, "depth": 1, "embed_dim": 8})
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return save_sidenet(net, tmp_path / "sn.safetensors", extra={"backbone": "gmm-ring2d"})


def teacher(tmp_path, name, role, seed, n=48):
    return build_teacher(ring(), tmp_path / f"{name}.safetensors", n=n, seed=seed, role=role, rtol=1e-9,
                         dtype="float64", log=lambda *a: None, progress=False)


def config(**kw):
    return EndpointConfig(**{"lr": 5e-3, "batch_size": 16, "iters": 30, "seed": 0, **kw})


def test_before_training_it_is_the_plain_solver_and_spends_its_nfe(tmp_path):
    bb = ring()
    net = load_sidenet(sidenet_file(tmp_path)).double()
    grids = starting_grids(net, (3, 5), shift=0.7)
    module = LearnedBA(bb, net, (3, 5), grids).double()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    calls = []
    real = bb.fn
    bb.fn = lambda t, x, **c: calls.append(1) or real(t, x, **c)
    for n in (3, 5):
        module.set_step((3, 5).index(n))
        calls.clear()
        with torch.no_grad():
            x = module(noise, {}, None)
        assert len(calls) == n  # scheme B: n intervals, n backbone calls
        expected = baquad.solve(bb.vfield(), noise, uniform(n, shift=0.7), perception=NeuralPerception(net), steps=False).x
        torch.testing.assert_close(x, expected, rtol=0, atol=ulps(64, torch.float64, expected))


def test_training_lowers_the_error_and_the_file_samples_what_was_trained(tmp_path):
    bb = ring()
    train, val = teacher(tmp_path, "train", "train", 1), teacher(tmp_path, "val", "validation", 2, n=32)
    res = train_ba(bb, train, tmp_path / "run", config(iters=40), sidenet=sidenet_file(tmp_path), nfes=(3, 4),
                   init_shift=0.7, validation=val, progress=False)
    assert res.summary["validation_error_final"] < 0.8 * res.summary["validation_error_initial"]
    loaded = load_sidenet(res.export)
    assert set(loaded.learned_steps) == {3, 4}
    perception = NeuralPerception(loaded)
    for n in (3, 4):
        ts = default_grid("ba-solver", n, perception)
        assert ts != tuple(uniform(n, shift=0.7))  # the grid moved
        with torch.no_grad():
            x = baquad.solve(bb.vfield(), val.noise.float(), ts, perception=perception).x
            res.module.set_step((3, 4).index(n))
            res.module.eval()
            y = res.module(val.noise.float(), {}, None)
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)  # float32 grid and weights through the file
        # the learned steps matter: without them, on the same grid, the error is larger
        with torch.no_grad():
            plain = baquad.solve(bb.vfield(), val.noise.float(), ts, perception=perception, steps=False).x
        err = lambda z: float((z - val.target.float()).norm(dim=1).mean())  # noqa: E731
        assert err(x) < err(plain)


def test_an_interrupted_run_resumes_bitwise(tmp_path, monkeypatch):
    bb, sn = ring(), sidenet_file(tmp_path)
    train = teacher(tmp_path, "train", "train", 1, n=24)
    run = lambda out: train_ba(bb, train, out, config(iters=6, batch_size=8, ckpt_every=2), sidenet=sn,  # noqa: E731
                               nfes=(2, 3), progress=False)
    run(tmp_path / "a")
    real = trainer_mod.batch_indices

    def draw_or_stop(n, batch, s, seed):
        if s == 3:
            raise Stop
        return real(n, batch, s, seed)

    with monkeypatch.context() as mp:
        mp.setattr(trainer_mod, "batch_indices", draw_or_stop)
        with pytest.raises(Stop):
            run(tmp_path / "b")
    run(tmp_path / "b")
    a = read_tensors(read_header(tmp_path / "a" / "checkpoint.safetensors"))
    b = read_tensors(read_header(tmp_path / "b" / "checkpoint.safetensors"))
    # the resume promise (same machine, same threads): every tensor bit for bit
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_command_takes_several_nfes_and_refuses_bad_ones():
    args = build_parser().parse_args(["--backbone", "gmm-ring2d", "--sidenet", "s.safetensors", "--nfe", "3", "5",
                                      "--teacher", "t.safetensors", "--out", "o", "--iters", "3"])
    assert args.nfe == [3, 5]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--backbone", "gmm-ring2d", "--sidenet", "s", "--nfe", "0", "--teacher", "t",
                                   "--out", "o", "--iters", "3"])
