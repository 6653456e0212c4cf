"""The trainer's output directory never mixes or loses work (issue 27, adapters/torch_sit/sidenet/train.py
and rundir.py).

Cases (numbered as in the issue's list):
- 27.2: a run resumed onto another backbone is refused (API and command line), naming --out,
  both backbones and the fix; nothing in the directory changes;
- 27.3: a fresh start sets the previous run aside and deletes it only once the new SideNet is
  written, so an interrupted fresh start keeps the previous SideNet.
Further fault cases of the same family: another backbone of the same name (other weights), a
checkpoint that records only the backbone's name (older files), an --out that is a file, a user's
file inside the folder set aside.

Truths used: the bytes of the files on disk before and after (a refused run changes none), the
weights the first run wrote, and backbones built here with known weights.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adapters.torch_sit.backbones import Backbone
from adapters.torch_sit.sidenet.chain import ChainConfig
from adapters.torch_sit.sidenet.checkpoint import load_checkpoint, load_sidenet, save_checkpoint
from adapters.torch_sit.sidenet.networks import MLPSideNet
from adapters.torch_sit.sidenet.rundir import BackboneMismatch
from adapters.torch_sit.sidenet import train as train_module
from adapters.torch_sit.sidenet.train import main, train

ARCH = MLPSideNet(2, hidden=16, depth=1, embed_dim=8).config()
CLI = ["--batch", "8", "--chain-length", "2", "--hidden", "16", "--depth", "1", "--embed-dim", "8", "--no-progress"]


def cfg(**kw) -> ChainConfig:
    return ChainConfig(**{**dict(iters=4, batch_size=8, chain_length=2, ema_decay=0.9, seed=3), **kw})


def run(out, backbone="gmm-ring2d", chain=None, **kw):
    return train(chain or cfg(), backbone=backbone, out=out, sidenet_config=ARCH, progress=False,
                 log=lambda *a: None, **kw)


def snapshot(out):
    """Every file under ``out`` with its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


class Linear2D(nn.Module):
    """v(t, x) = A x + t b with A, b drawn from ``seed``: a tiny module backbone with known weights."""

    def __init__(self, seed: int):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.lin.weight.copy_(0.3 * torch.randn(2, 2, generator=g))
            self.lin.bias.copy_(torch.randn(2, generator=g))

    def forward(self, t, x):
        return self.lin(x) * (1.0 + t[:, None])


def linear_backbone(seed: int) -> Backbone:
    return Backbone.from_module(Linear2D(seed), "linear-2d", (2,))


# ------------------------------------------------------------------------------- 27.2


def test_27_2_resuming_onto_another_backbone_is_refused_and_changes_nothing(tmp_path, stop_training_after):
    out = tmp_path / "x"
    with stop_training_after(6):
        run(out, chain=cfg(iters=10), ckpt_every=3)
    assert load_checkpoint(out).step == 6
    before = snapshot(out)
    with pytest.raises(BackboneMismatch) as err:
        run(out, backbone="gmm-32d", chain=cfg(iters=10))
    text = str(err.value)
    for part in (f"--out {out}", "step 6", "'gmm-ring2d'", "'gmm-32d'", "state_shape [2]", "state_shape [32]",
                 "--no-resume", "another --out"):
        assert part in text, part
    assert snapshot(out) == before  # nothing written, moved or deleted

    # the command line: one line from the parser, exit status 2, nothing changed
    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", "gmm-32d", "--out", str(out), "--iters", "10"] + CLI)
    assert exit_.value.code == 2
    assert snapshot(out) == before


def test_27_2_cli_message_is_one_line(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "2"] + CLI) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--backbone", "gmm-32d", "--out", str(out), "--iters", "4"] + CLI)
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    assert "error: --out" in err[-1] and "'gmm-ring2d'" in err[-1] and "'gmm-32d'" in err[-1]
    assert "--no-resume" in err[-1]


def test_27_2_same_name_other_weights_is_refused_same_weights_resume(tmp_path, stop_training_after):
    out = tmp_path / "lin"
    with stop_training_after(2):
        run(out, backbone=linear_backbone(1), ckpt_every=2)
    recorded = load_checkpoint(out).extra["backbone_identity"]
    assert recorded["name"] == "linear-2d" and recorded["num_parameters"] == 6 and recorded["state_shape"] == [2]
    with pytest.raises(BackboneMismatch, match="weights_fingerprint"):
        run(out, backbone=linear_backbone(2))
    # a new module object with the same weights is the same backbone
    assert run(out, backbone=linear_backbone(1)).summary["resumed_from"] == 2


def test_27_2_a_checkpoint_that_records_only_the_name_is_compared_by_name(tmp_path):
    out = tmp_path / "old"
    net = MLPSideNet(**{k: v for k, v in ARCH.items() if k != "class"})
    save_checkpoint(out, sidenet=net, step=1, sidenet_config=ARCH, config=cfg().to_dict(),
                    extra={"backbone": "gmm-32d"})  # as checkpoints were written before the identity
    with pytest.raises(BackboneMismatch, match="'gmm-32d'.*'gmm-ring2d'"):
        run(out)
    save_checkpoint(out, sidenet=net, step=1, sidenet_config=ARCH, config=cfg().to_dict(),
                    extra={"backbone": "gmm-ring2d"})
    assert run(out).summary["resumed_from"] == 1


def test_27_2_no_resume_trains_the_other_backbone_afresh(tmp_path):
    out = tmp_path / "x"
    run(out)
    result = train(cfg(), backbone="gmm-32d", out=out, resume=False, progress=False, log=lambda *a: None)
    assert result.summary["backbone"] == "gmm-32d" and result.summary["resumed_from"] is None
    assert load_checkpoint(out).extra["backbone_identity"]["name"] == "gmm-32d"
    assert not (out / "previous-run-1").exists()  # the ring run was deleted once the new SideNet existed


# ------------------------------------------------------------------------------- 27.3


def test_27_3_an_interrupted_fresh_start_keeps_the_previous_sidenet(tmp_path, stop_training_after):
    out = tmp_path / "x"
    first = run(out)
    sidenet = (out / "sidenet.safetensors").read_bytes()
    (out / "checkpoint.safetensors").unlink()  # deleted to save space: the next start is a fresh one
    (out / "checkpoint.json").unlink()
    with stop_training_after(1):
        run(out, chain=cfg(seed=4))  # Ctrl-C or a crash before the new SideNet exists
    aside = out / "previous-run-1"
    assert (aside / "sidenet.safetensors").read_bytes() == sidenet
    assert {p.name for p in aside.iterdir()} == {"sidenet.safetensors", "sidenet.json", "summary.json", "log.csv"}
    kept = load_sidenet(aside / "sidenet.safetensors")
    assert all(torch.equal(p, first.ema[k]) for k, p in kept.named_parameters())  # the stored bytes, untouched
    assert not (out / "sidenet.safetensors").exists()  # nothing of the old run is left to pass for the new one

    # the next fresh start sets the crashed run aside too; its SideNet replaces both
    run(out, chain=cfg(seed=4))
    assert not (out / "previous-run-1").exists() and not (out / "previous-run-2").exists()
    assert load_checkpoint(out).config["seed"] == 4 and (out / "sidenet.safetensors").is_file()


def test_27_3_a_users_file_in_the_folder_set_aside_is_kept(tmp_path):
    out = tmp_path / "x"
    run(out, keep_history=True, ckpt_every=2)

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with pytest.MonkeyPatch.context() as mp:  # the new run fails to export its SideNet
        mp.setattr(train_module, "save_sidenet", disk_full)
        with pytest.raises(OSError, match="No space left"):
            run(out, resume=False, keep_history=True, ckpt_every=2)
    aside = out / "previous-run-1"
    assert sorted(p.name for p in (aside / "history").iterdir()) == ["checkpoint-00000002.safetensors",
                                                                     "checkpoint-00000004.safetensors"]
    assert (aside / "sidenet.safetensors").is_file()  # the failed export deleted nothing
    (aside / "notes.txt").write_text("mine")
    run(out, resume=False)
    assert (aside / "notes.txt").read_text() == "mine" and sorted(p.name for p in aside.iterdir()) == ["notes.txt"]
    assert not (out / "previous-run-2").exists()


# ------------------------------------------------------------------------- more faults


def test_an_out_that_is_a_file_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("not a directory")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        run(out)
    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", "gmm-ring2d", "--out", str(out)] + CLI)
    assert exit_.value.code == 2 and "is not a directory" in capsys.readouterr().err.strip().splitlines()[-1]
    assert out.read_text() == "not a directory"


def test_a_corrupt_checkpoint_on_resume_is_one_line_with_the_way_out(tmp_path, capsys):
    out = tmp_path / "x"
    assert main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "2"] + CLI) == 0
    data = bytearray((out / "checkpoint.safetensors").read_bytes())
    data[-3] ^= 0x10  # a flipped bit in the last tensor
    (out / "checkpoint.safetensors").write_bytes(bytes(data))
    before = snapshot(out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "4"] + CLI)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "do not match the SHA-256" in err and "--no-resume" in err
    assert snapshot(out) == before
    # the way out it names works, and keeps the damaged run until the new SideNet exists
    assert main(["--backbone", "gmm-ring2d", "--out", str(out), "--iters", "2", "--no-resume"] + CLI) == 0
    assert load_checkpoint(out).step == 2 and not (out / "previous-run-1").exists()
