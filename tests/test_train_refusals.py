"""What training refuses, and what it never writes (adapters/torch_sit/sidenet/chain.py, train.py).

Truths used: the valid range of every numeric ChainConfig field, stated here from its meaning
(a count is a positive integer, a rate or step size is positive, a decay or a beta lies in
[0, 1), a ratio in [0, 1], nothing is NaN or infinite), checked by a property test over every
field and every kind of out-of-range value; the files on disk before and after a refused run;
a backbone that turns NaN at a known iteration.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.torch_sit.backbones import Backbone
from adapters.torch_sit.sidenet.chain import ChainConfig
from adapters.torch_sit.sidenet.checkpoint import load_checkpoint, load_sidenet, save_checkpoint
from adapters.torch_sit.sidenet.networks import MLPSideNet, build_sidenet
from adapters.torch_sit.sidenet.train import main, train

INF = math.inf
# field: (integer?, low, high, low excluded?, high excluded?, None allowed?)
RANGES = {
    "chain_length": (True, 1, INF, False, True, False),
    "iters": (True, 1, INF, False, True, False),
    "batch_size": (True, 1, INF, False, True, False),
    "loss_chunks": (True, 1, INF, False, True, False),
    "micro_batch": (True, 1, INF, False, True, True),
    "warmup_iters": (True, 0, INF, False, True, False),
    "seed": (True, 0, INF, False, True, False),
    "exp_rate": (False, 0.0, INF, True, True, False),
    "h_min": (False, 0.0, INF, True, True, False),
    "h_max": (False, 0.0, INF, True, True, False),
    "start_min": (False, 0.0, 1.0, False, False, False),
    "start_max": (False, 0.0, 1.0, False, False, False),
    "forward_weight": (False, 0.0, INF, False, True, False),
    "backward_weight": (False, 0.0, INF, False, True, False),
    "guidance_scale": (False, 0.0, INF, False, True, True),
    "guidance_max": (False, 0.0, INF, False, True, True),
    "lr": (False, 0.0, INF, True, True, False),
    "weight_decay": (False, 0.0, INF, False, True, False),
    "beta1": (False, 0.0, 1.0, False, True, False),
    "beta2": (False, 0.0, 1.0, False, True, False),
    "min_lr_ratio": (False, 0.0, 1.0, False, False, False),
    "ema_decay": (False, 0.0, 1.0, False, True, True),
    "grad_clip": (False, 0.0, INF, True, True, True),
}


def test_every_numeric_field_has_a_stated_range():
    # window_weights (a list of [lo, hi, w], None by default) has its own refusal test in test_chain_truth.py
    numeric = {f for f, v in ChainConfig().to_dict().items() if not isinstance(v, (str, bool)) and f != "window_weights"}
    numeric |= {"guidance_scale", "guidance_max", "ema_decay", "grad_clip", "micro_batch"}  # None by default
    assert numeric == set(RANGES)


@st.composite
def out_of_range(draw):
    name = draw(st.sampled_from(sorted(RANGES)))
    integer, low, high, low_open, high_open, _ = RANGES[name]
    options = [st.just(math.nan), st.just(INF), st.just(-INF)]
    if integer:
        options += [st.integers(max_value=low - 1), st.just(low + 0.5), st.just(True)]
    else:
        options.append(st.floats(max_value=low, exclude_max=not low_open, allow_nan=False, allow_infinity=False))
        if high < INF:
            options.append(st.floats(min_value=high, exclude_min=not high_open, allow_nan=False, allow_infinity=False))
        options.append(st.just("0.5"))
    return name, draw(st.one_of(options))


@st.composite
def in_range(draw):
    name = draw(st.sampled_from(sorted(RANGES)))
    integer, low, high, low_open, high_open, optional = RANGES[name]
    if name == "h_min":  # h_min <= h_max (default 1.0)
        high, high_open = 1.0, False
    if name == "h_max":  # h_max >= h_min (default 0.01)
        low, low_open = 0.01, False
    if integer:
        return name, draw(st.integers(min_value=low, max_value=10**6))
    top = min(high, 1e6)
    value = draw(st.floats(min_value=low, max_value=top, exclude_min=low_open, exclude_max=high_open and top == high))
    return name, (None if optional and draw(st.booleans()) else value)


@given(out_of_range())
@settings(max_examples=300, deadline=None)
def test_out_of_range_fields_are_refused_naming_the_field(case):
    name, value = case
    with pytest.raises(ValueError, match=rf"ChainConfig\.{name}\b"):
        ChainConfig(**{name: value})


@given(in_range())
@settings(max_examples=200, deadline=None)
def test_in_range_fields_are_accepted(case):
    name, value = case
    extra = {"guidance_scale": 0.0} if name == "guidance_max" else {}  # a range needs its lower end
    assert getattr(ChainConfig(**{name: value}, **extra), name) == value


class CountingField:
    def __init__(self, nan_from_call=None):
        self.calls = 0
        self.nan_from_call = nan_from_call

    def __call__(self, t, x, **cond):
        self.calls += 1
        v = -(0.5 + t[:, None]) * x + torch.tanh(x)
        return v * math.nan if self.nan_from_call is not None and self.calls >= self.nan_from_call else v


ARCH = MLPSideNet(2, hidden=8, depth=1, embed_dim=4).config()


def run(out, cfg=None, backbone="gmm-ring2d", **kw):
    cfg = cfg or ChainConfig(iters=4, batch_size=8, chain_length=2, ema_decay=0.9)
    return train(cfg, backbone=backbone, out=out, sidenet_config=kw.pop("arch", ARCH), progress=False,
                 log=lambda *a: None, **kw)


@given(out_of_range())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_train_refuses_a_changed_field_before_any_step(tmp_path, case):
    name, value = case
    cfg = ChainConfig(iters=2, batch_size=4, chain_length=2)
    setattr(cfg, name, value)  # a dataclass can be changed after its checks ran
    field = CountingField()
    with pytest.raises(ValueError, match=rf"ChainConfig\.{name}\b"):
        run(tmp_path / "never", cfg, backbone=Backbone("counting", field, (2,)))
    assert field.calls == 0 and not (tmp_path / "never").exists()


CLI = ["--backbone", "gmm-ring2d", "--iters", "2", "--batch", "8", "--chain-length", "2", "--hidden", "8",
       "--depth", "1", "--embed-dim", "4", "--no-progress"]


@pytest.mark.parametrize("flags, named", [
    (["--lr", "inf"], "lr"), (["--grad-clip", "nan"], "grad_clip"), (["--min-lr-ratio", "-5"], "min_lr_ratio"),
    (["--ema-decay", "1.5"], "ema_decay"), (["--seed", "-1"], "seed"), (["--ckpt-every", "-1"], "--ckpt-every"),
    (["--threads", "0"], "--threads"), (["--batch", "0"], "batch_size"),
])
def test_cli_refuses_bad_numbers_before_anything_is_written(tmp_path, capsys, flags, named):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as exit_:
        main(CLI + ["--out", str(out)] + flags)
    assert exit_.value.code == 2 and named in capsys.readouterr().err
    assert not out.exists()


def test_empty_output_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(CLI + ["--out", ""])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    with pytest.raises(ValueError, match="out"):
        run("")
    assert list(tmp_path.iterdir()) == []  # nothing written into the working directory


def test_negative_checkpoint_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match="ckpt_every"):
        run(tmp_path / "c", ckpt_every=-1)
    assert not (tmp_path / "c").exists()


def log_steps(out: Path) -> list[int]:
    with open(out / "log.csv", newline="") as fh:
        return [int(r["step"]) for r in csv.DictReader(fh)]


def test_nan_loss_stops_at_its_iteration_and_writes_no_nan(tmp_path):
    # 2 intervals per chain: 3 backbone calls per iteration; NaN from the first call of iteration 3
    field = CountingField(nan_from_call=7)
    with pytest.raises(FloatingPointError, match="iteration 3: the chain loss is NaN"):
        run(tmp_path / "n", backbone=Backbone("nan-at-3", field, (2,)), ckpt_every=1)
    assert log_steps(tmp_path / "n") == [1, 2]
    assert not (tmp_path / "n" / "sidenet.safetensors").exists()
    ck = load_checkpoint(tmp_path / "n")
    assert ck.step == 2 and all(bool(torch.isfinite(t).all()) for t in ck.model.values())


def test_nan_loss_leaves_the_weights_and_optimiser_untouched():
    from adapters.torch_sit.sidenet.chain import ChainTrainer, sample_batch

    cfg = ChainConfig(batch_size=8, chain_length=2, ema_decay=0.9)
    torch.manual_seed(0)
    net = MLPSideNet(2, hidden=8, depth=1, embed_dim=4)
    with torch.no_grad():
        net.out.weight.normal_()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bb = Backbone("nan", CountingField(nan_from_call=1), (2,))
    trainer = ChainTrainer(net, bb, cfg)
    with pytest.raises(FloatingPointError, match="iteration 1: the chain loss is NaN"):
        trainer.step(sample_batch(cfg, bb, 0))
    # a refused step is a no-op: weights and EMA untouched, bit for bit
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(before[k], trainer.ema[k]) for k in trainer.ema)
    assert trainer.step_count == 0 and not trainer.optimizer.state


def test_a_diverging_run_stops_and_writes_no_inf(tmp_path):
    # lr = 1e37: the first AdamW step moves the (zero-initialised) output layer by about
    # lr / (1 - beta1) = 1e38, still finite in float32; the squared residuals of the next step are not
    cfg = ChainConfig(iters=4, batch_size=8, chain_length=2, lr=1e37, grad_clip=None)
    with pytest.raises(FloatingPointError, match="iteration 2"):
        run(tmp_path / "o", cfg, ckpt_every=1)
    assert not (tmp_path / "o" / "sidenet.safetensors").exists()
    ck = load_checkpoint(tmp_path / "o")
    assert ck.step == 1 and all(bool(torch.isfinite(t).all()) for t in ck.model.values())


class InfAtStep2(torch.optim.AdamW):
    """AdamW whose second step writes an infinite weight (an optimiser overflow)."""

    @torch.no_grad()
    def step(self, closure=None):
        super().step(closure)
        self.steps = getattr(self, "steps", 0) + 1
        if self.steps == 2:
            self.param_groups[0]["params"][0].view(-1)[0] = INF


def test_non_finite_weights_after_an_update_stop_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", InfAtStep2)
    with pytest.raises(FloatingPointError, match="iteration 2: the SideNet weights"):
        run(tmp_path / "w", ckpt_every=1)
    assert log_steps(tmp_path / "w") == [1] and load_checkpoint(tmp_path / "w").step == 1
    assert not (tmp_path / "w" / "sidenet.safetensors").exists()


@pytest.mark.parametrize("part", ["model", "ema"])
def test_checkpoint_with_nan_is_not_resumed(tmp_path, part):
    out = tmp_path / "k"
    run(out, ckpt_every=2)
    # save_checkpoint refuses to write NaN, so forge the file: same header, one NaN, a valid hash
    from adapters.torch_sit.files import read_header, read_tensors, serialise

    path = out / "checkpoint.safetensors"
    header = read_header(path)
    tensors = read_tensors(header)
    tensors[f"{part}.out.bias"][0] = math.nan
    meta = {k: v for k, v in header.meta.items() if k != "version"}
    path.write_bytes(serialise(tensors, meta))
    before = (out / "sidenet.safetensors").read_bytes()
    with pytest.raises(ValueError, match=rf"{part}\.out\.bias.*NaN"):
        run(out, ChainConfig(iters=6, batch_size=8, chain_length=2, ema_decay=0.9))
    assert (out / "sidenet.safetensors").read_bytes() == before and log_steps(out) == [1, 2, 3, 4]  # file untouched


def test_resume_below_the_checkpoint_step_is_refused(tmp_path):
    out = tmp_path / "r"
    run(out, ChainConfig(iters=6, batch_size=8, chain_length=2), ckpt_every=3)
    summary = (out / "summary.json").read_text()
    with pytest.raises(ValueError, match="iters.*6"):
        run(out, ChainConfig(iters=4, batch_size=8, chain_length=2))
    with pytest.raises(ValueError, match="iters"):
        main(CLI[:2] + ["--out", str(out), "--iters", "4", "--no-progress"])
    assert log_steps(out) == [1, 2, 3, 4, 5, 6] and (out / "summary.json").read_text() == summary
    assert load_checkpoint(out).step == 6


def test_orphaned_temporary_files_are_removed_and_only_ours(tmp_path):
    out = tmp_path / "t"
    ours = [out / ".checkpoint.safetensors.ab12cd_9.tmp", out / ".sidenet.json.zz99yy88.tmp",
            out / ".log.csv.q1w2e3r4.tmp", out / "history" / ".checkpoint-00000004.safetensors.k9j8h7g6.tmp"]
    theirs = [out / ".notes.txt.ab12cd34.tmp", out / "checkpoint.safetensors.tmp", out / "data.tmp",
              out / "history" / ".other-00000004.safetensors.k9j8h7g6.tmp"]
    for p in ours + theirs:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    run(out)  # fresh start
    assert not any(p.exists() for p in ours) and all(p.exists() for p in theirs)
    ours[0].write_bytes(b"partial")
    run(out, ChainConfig(iters=6, batch_size=8, chain_length=2, ema_decay=0.9))  # resume
    assert not ours[0].exists() and all(p.exists() for p in theirs)


def test_fresh_start_over_an_old_run_keeps_nothing_of_it(tmp_path):
    out = tmp_path / "f"
    run(out, ChainConfig(iters=4, batch_size=8, chain_length=2), ckpt_every=2, keep_history=True)
    (out / "history" / "my-notes.txt").write_text("kept")
    run(out, ChainConfig(iters=3, batch_size=8, chain_length=2, seed=9), ckpt_every=3, keep_history=True, resume=False)
    names = sorted(p.name for p in (out / "history").iterdir())
    assert names == ["checkpoint-00000003.safetensors", "my-notes.txt"]
    assert log_steps(out) == [1, 2, 3] and load_checkpoint(out).config["seed"] == 9
    # the CLI's --no-resume does the same
    assert main(CLI + ["--out", str(out), "--no-resume", "--keep-history", "--ckpt-every", "1"]) == 0
    names = sorted(p.name for p in (out / "history").iterdir())
    assert names == ["checkpoint-00000001.safetensors", "checkpoint-00000002.safetensors", "my-notes.txt"]
    assert log_steps(out) == [1, 2]
    assert load_sidenet(out / "sidenet.safetensors").config()["path_features"]  # the recipe's, not the old run's


def test_a_diffusers_backbone_is_sent_to_its_own_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", "diffusers", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and "python -m adapters.diffusers_flow.train" in err[-1]
    assert not (tmp_path / "never").exists()
