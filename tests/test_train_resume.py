"""Checkpoints and resuming (adapters/torch_sit/sidenet/checkpoint.py, train.py).

Truths used: an uninterrupted run with the same seed (bitwise, CPU), the previous checkpoint's
contents after a simulated crash, and the safetensors file format itself (no pickle).
"""

from __future__ import annotations

import csv
import json
import struct

import pytest
import torch

from adapters.torch_sit.sidenet import checkpoint as ckpt_mod
from adapters.torch_sit.sidenet.chain import ChainConfig
from adapters.torch_sit.sidenet.checkpoint import (
    ArchitectureMismatch,
    load_checkpoint,
    load_sidenet,
    save_checkpoint,
)
from adapters.torch_sit.sidenet.networks import MLPSideNet
from adapters.torch_sit.sidenet.train import main, train


ARCH = MLPSideNet(2, hidden=32, depth=2, embed_dim=16).config()


def tiny_cfg(**kw) -> ChainConfig:
    base = dict(iters=20, batch_size=32, chain_length=3, lr=3e-3, ema_decay=0.9, weight_decay=0.01, seed=11)
    base.update(kw)
    return ChainConfig(**base)


def run(out, **kw):
    return train(kw.pop("cfg", tiny_cfg()), backbone="gmm-ring2d", out=out, sidenet_config=kw.pop("arch", ARCH),
                 progress=False, log=lambda *a: None, **kw)


def log_rows(out):
    with open(out / "log.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_interrupted_and_resumed_run_is_bitwise_identical(tmp_path, stop_training_after):
    a = run(tmp_path / "a", ckpt_every=10)
    with stop_training_after(12):
        run(tmp_path / "b", ckpt_every=10)
    assert load_checkpoint(tmp_path / "b").step == 10
    b = run(tmp_path / "b", ckpt_every=10)  # resumes automatically from step 10
    assert b.summary["resumed_from"] == 10 and b.summary["iterations"] == 10
    sa, sb = a.sidenet.state_dict(), b.sidenet.state_dict()  # the resume promise: bitwise, same machine and threads
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(torch.equal(a.ema[k], b.ema[k]) for k in a.ema)
    # the log was rewound to the checkpoint and continued: same rows as the uninterrupted run
    ra, rb = log_rows(tmp_path / "a"), log_rows(tmp_path / "b")
    assert [r["step"] for r in rb] == [str(i) for i in range(1, 21)]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    # the exported SideNet (EMA weights) loads in one line
    net = load_sidenet(tmp_path / "b" / "sidenet.safetensors")
    assert all(torch.equal(p, b.ema[k]) for k, p in net.named_parameters())  # stored bytes, untouched
    assert json.loads((tmp_path / "b" / "sidenet.json").read_text())["sidenet_config"] == ARCH
    summary = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert summary["backbone_parameters"] == "analytic" and summary["backbone_calls_per_process"] == 10 * 4
    assert summary["sidenet_parameters"] == sum(p.numel() for p in net.parameters())


def test_explicit_resume_and_fresh_start(tmp_path):
    with pytest.raises(FileNotFoundError):
        run(tmp_path / "r", resume=True)
    run(tmp_path / "r", cfg=tiny_cfg(iters=4))
    fresh = run(tmp_path / "r", cfg=tiny_cfg(iters=4), resume=False)
    assert fresh.summary["resumed_from"] is None and fresh.summary["iterations"] == 4


def test_architecture_mismatch_is_refused_naming_the_keys(tmp_path):
    run(tmp_path / "m", cfg=tiny_cfg(iters=2))
    other = dict(ARCH, hidden=64, embed_dim=8)
    with pytest.raises(ArchitectureMismatch) as err:
        load_checkpoint(tmp_path / "m", sidenet_config=other)
    msg = str(err.value)
    assert "hidden" in msg and "embed_dim" in msg and "depth" not in msg.split("(")[0]
    with pytest.raises(ArchitectureMismatch, match="hidden"):
        run(tmp_path / "m", cfg=tiny_cfg(iters=4), arch=other)
    # the same architecture is accepted
    assert load_checkpoint(tmp_path / "m", sidenet_config=ARCH).step == 2


def test_cli_trains_resumes_and_refuses_a_different_architecture(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--backbone", "gmm-ring2d", "--out", str(out), "--batch", "16", "--chain-length", "2",
            "--hidden", "32", "--depth", "2", "--embed-dim", "16", "--no-progress", "--ema-decay", "none"]
    assert main(args + ["--iters", "3"]) == 0
    ck = load_checkpoint(out)
    assert ck.step == 3 and ck.config["batch_size"] == 16 and ck.config["ema_decay"] is None
    # flags not given come from the backbone's recipe (train.RECIPES): path features, truncated-exp intervals
    assert ck.sidenet_config == dict(ARCH, path_features=True)
    assert ck.config["intervals"] == "trunc-exp" and ck.config["h_max"] == 0.35
    # resuming without flags takes the checkpoint's recipe and architecture, and says so
    assert main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "5", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "resuming from" in text and "step 3" in text
    assert load_checkpoint(out).step == 5 and load_checkpoint(out).config["chain_length"] == 2
    with pytest.raises(ArchitectureMismatch, match="hidden"):
        main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "6", "--hidden", "48", "--no-progress"])


def _small_checkpoint(path, step):
    torch.manual_seed(step)
    net = MLPSideNet(2, hidden=8, depth=1, embed_dim=4)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(3, 2), torch.randn(3, 2), 0.5, -0.1).pow(2).sum().backward()
    opt.step()
    save_checkpoint(path, sidenet=net, step=step, sidenet_config=net.config(), config={"seed": step},
                    optimizer=opt, ema={k: p.detach() * 2 for k, p in net.named_parameters()})
    return net, opt


def test_checkpoint_roundtrip_without_pickle(tmp_path):
    net, opt = _small_checkpoint(tmp_path, 7)
    f = tmp_path / "checkpoint.safetensors"
    raw = f.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])  # a safetensors file: JSON header + raw tensor bytes
    assert "__metadata__" in header and b"pickle" not in raw[:8 + n]
    ck = load_checkpoint(f, sidenet_config=net.config())
    assert ck.step == 7 and ck.config == {"seed": 7}
    # a file stores its tensors' bytes: they load untouched
    assert all(torch.equal(ck.model[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(ck.ema[k], 2 * p.detach()) for k, p in net.named_parameters())
    opt2 = torch.optim.AdamW(MLPSideNet(2, hidden=8, depth=1, embed_dim=4).parameters(), lr=1e-3)
    opt2.load_state_dict(ck.optimizer)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k])
    assert s1["param_groups"][0]["betas"] == s2["param_groups"][0]["betas"]
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 7


def test_crash_during_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    _small_checkpoint(tmp_path, 1)

    def crash(*args, **kwargs):
        raise OSError("simulated crash before os.replace")

    monkeypatch.setattr(ckpt_mod.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        _small_checkpoint(tmp_path, 2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.safetensors"]  # no temp files


def test_torn_file_is_refused_clearly(tmp_path):
    _small_checkpoint(tmp_path, 1)
    f = tmp_path / "checkpoint.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_checkpoint(tmp_path)


def test_history(tmp_path):
    run(tmp_path / "h", cfg=tiny_cfg(iters=4, ema_decay=None), ckpt_every=2, keep_history=True)
    names = sorted(p.name for p in (tmp_path / "h" / "history").iterdir())
    assert names == ["checkpoint-00000002.safetensors", "checkpoint-00000004.safetensors"]
    assert load_checkpoint(tmp_path / "h" / "history" / names[0]).step == 2
