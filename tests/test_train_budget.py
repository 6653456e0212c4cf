"""The SideNet trainer's time estimate and time budget (adapters/torch_sit/budget.py,
adapters/torch_sit/sidenet/train.py: ``train(..., minutes=)`` and ``--minutes``).

Truths used: the conversion formula written out here, N = max(3, floor(60 M / s)), with s the
mean time of the timed iterations after the first; a fake clock on which every timed iteration
takes exactly dt seconds (so s = dt); an uninterrupted run with the same seed (bitwise on the same
machine and threads: the resume promise), and a run of ``iters = N`` without a budget (bitwise:
the budget's timing restores the state it trained from, so a budgeted run is the run of its
count); the files on disk.
"""

from __future__ import annotations

import math

import pytest
import torch

from adapters.torch_sit import budget
from adapters.torch_sit.sidenet import train as train_module
from adapters.torch_sit.sidenet.chain import ChainConfig
from adapters.torch_sit.sidenet.checkpoint import load_checkpoint
from adapters.torch_sit.sidenet.networks import MLPSideNet
from adapters.torch_sit.sidenet.train import main, train

ARCH = MLPSideNet(2, hidden=16, depth=1, embed_dim=8).config()


def cfg(**kw) -> ChainConfig:
    # cosine decay over iters: a count that changed after the first steps would change their learning rate
    base = dict(iters=1000, batch_size=16, chain_length=2, lr=3e-3, ema_decay=0.9, seed=5)
    base.update(kw)
    return ChainConfig(**base)


def fake_clock(dt: float):
    """A clock that moves dt per reading: an iteration timed between two readings takes dt."""
    now = [0.0]

    def clock() -> float:
        now[0] += dt
        return now[0]

    return clock


def run(out, messages=None, **kw):
    say = (lambda *a: messages.append(" ".join(map(str, a)))) if messages is not None else (lambda *a: None)
    return train(kw.pop("cfg", cfg()), backbone="gmm-ring2d", out=out, sidenet_config=ARCH, progress=False, log=say,
                 **kw)


def expected_count(minutes: float, dt: float) -> int:
    return max(3, math.floor(60 * minutes / dt))


def same_weights(a, b) -> bool:
    sa, sb = a.sidenet.state_dict(), b.sidenet.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa) and \
        all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)


def test_the_conversion_formula():
    assert budget.seconds_per_iteration([5.0, 1.0, 2.0]) == 1.5  # the first (warm-up) left out
    assert budget.seconds_per_iteration([4.0]) == 4.0
    assert budget.iterations_for(10, 2.0) == 300 and budget.iterations_for(0.01, 2.0) == 3
    for bad in (0, -1.0, math.nan, math.inf, True, "5"):
        with pytest.raises(ValueError, match="minutes"):
            budget.check_minutes(bad)


def test_a_budget_is_converted_once_recorded_and_kept_on_resume(tmp_path, monkeypatch, stop_training_after):
    minutes, dt = 0.05, 0.25
    n = expected_count(minutes, dt)  # 12
    monkeypatch.setattr(train_module, "clock", fake_clock(dt))
    said: list[str] = []
    whole = run(tmp_path / "whole", said, minutes=minutes, ckpt_every=4)
    assert whole.summary["steps_total"] == n and whole.summary["iterations"] == n
    assert f"the time budget of {minutes:g} min is {n} iterations (about 3 s in all)" in "\n".join(said)
    ck = load_checkpoint(tmp_path / "whole")
    assert ck.step == n and ck.config["iters"] == n
    assert ck.extra["budget"] == {"minutes": minutes, "seconds_per_iteration": dt, "iters": n}

    # interrupted after 6 iterations (checkpoint at 4), resumed on a machine ten times faster: the
    # count stays the recorded one, and the weights end bitwise where the uninterrupted run's did
    with stop_training_after(6):
        run(tmp_path / "cut", minutes=minutes, ckpt_every=4)
    assert load_checkpoint(tmp_path / "cut").step == 4
    monkeypatch.setattr(train_module, "clock", fake_clock(dt / 10))
    said.clear()
    resumed = run(tmp_path / "cut", said, minutes=minutes, ckpt_every=4)
    assert resumed.summary["resumed_from"] == 4 and resumed.summary["steps_total"] == n
    assert f"converted to {n} iterations when the run started" in "\n".join(said)
    assert same_weights(whole, resumed)  # the resume promise: bitwise, same machine and threads

    # the budgeted run is the run of its count: the timed iterations left nothing behind
    plain = run(tmp_path / "plain", cfg=cfg(iters=n), ckpt_every=4)
    assert same_weights(whole, plain)  # same arithmetic on the same numbers from the same state
    assert plain.summary["time_budget"] is None


def test_a_run_without_budget_says_how_long_it_takes(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "clock", fake_clock(10.0))  # 10 s per iteration
    said: list[str] = []
    run(tmp_path / "r", said, cfg=cfg(iters=100))
    text = "\n".join(said)
    assert "one iteration takes 10 s on this machine, so this run does 100 iterations (about 16.7 min in all)" in text
    assert "--minutes" in text  # over a quarter of an hour: the budget is offered
    said.clear()
    monkeypatch.setattr(train_module, "clock", fake_clock(0.5))
    run(tmp_path / "s", said, cfg=cfg(iters=4))
    assert "so this run does 4 iterations (about 2 s in all)" in "\n".join(said) and "--minutes" not in "\n".join(said)


def test_a_budget_on_a_run_started_without_one_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    run(out, cfg=cfg(iters=3))
    with pytest.raises(ValueError, match=r"minutes: .* started without a time budget.*\(iters / --iters"):
        run(out, minutes=1.0)
    assert load_checkpoint(out).step == 3
    with pytest.raises(SystemExit) as info:
        main(["--backbone", "gmm-ring2d", "--out", str(out), "--minutes", "1", "--no-progress"])
    assert info.value.code == 2 and "--minutes" in capsys.readouterr().err


def test_cli_takes_iters_or_minutes_not_both(tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as info:
        main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "3", "--minutes", "1"])
    assert info.value.code == 2 and "--iters, --minutes: give one of them" in capsys.readouterr().err
    assert not out.exists()
    for bad in ("0", "-1", "nan", "inf", "ten"):
        with pytest.raises(SystemExit) as info:
            main(["--backbone", "gmm-ring2d", "--out", str(out), "--minutes", bad])
        assert info.value.code == 2 and "argument --minutes" in capsys.readouterr().err
    assert not out.exists()


def test_cli_budget_run_records_its_count(tmp_path, monkeypatch, capsys):
    minutes, dt = 0.025, 0.25  # dt a power of 2: the fake clock's readings and their differences are exact
    monkeypatch.setattr(train_module, "clock", fake_clock(dt))
    out = tmp_path / "cli"
    args = ["--backbone", "gmm-ring2d", "--out", str(out), "--batch", "8", "--chain-length", "2", "--hidden", "8",
            "--depth", "1", "--embed-dim", "4", "--no-progress"]
    assert main(args + ["--minutes", str(minutes)]) == 0
    n = expected_count(minutes, dt)  # 6
    ck = load_checkpoint(out)
    assert ck.step == n and ck.config["iters"] == n and ck.extra["budget"]["iters"] == n
    assert f"time budget of {minutes:g} min is {n} iterations" in capsys.readouterr().out
    assert main(args) == 0  # rerun without flags: resumes at its end, keeps the count
    assert load_checkpoint(out).step == n
