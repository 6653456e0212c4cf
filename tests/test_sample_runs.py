"""The sampler's run directory never loses or mixes work (issue 27, adapters/torch_sit/imagenet/sample.py).

Cases (numbered as in the issue's list; 27.4 onwards are its "failures a user has to decode"):
- 27.1: finished samples are tied to their settings: with settings.json deleted, another seed is
  refused (summary.json records the settings) instead of "nothing to do";
- 27.4: every check runs before anything is written: a typo (--rule, --seed, --guidance-scale,
  a SideNet of the wrong shape) leaves no settings.json and the corrected command runs;
- 27.5: --seed -1 is one line naming the flag, no numpy traceback;
- 27.6: a garbage or foreign settings.json is one line naming the file and the fix;
- 27.7: a newcomer on the same --out removes only temporary files nobody wrote to for an hour;
- 27.8: a flipped byte in a finished samples.npz is caught by its sha256 and the file made again;
- 27.9: a SideNet for another state shape is refused before sampling, naming --sidenet;
- 27.15: samples.npz assembled from 12 micro-batches equals a one-batch run (the shards in index
  order, not in the string order of their numbers).
Further fault cases: an --out that is a file, --guidance-low above --guidance-high, an unknown
--solver-option, a guidance-conditioned SideNet without --guidance-scale, a SideNet for another
class count, shards of other settings without settings.json, samples.npz that nothing describes,
summary.json and settings.json that disagree, a torn summary.json.

Truths used: the bytes on disk before and after a refused run, an uninterrupted run of the same
settings, and the per-index inputs of the sampler's documented definition.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from adapters.torch_sit.imagenet import sample as S
from _tiny_image import CLASSES, NAME

N, M = 6, 4  # 2 micro-batches, the last one short


def config(out, **kw):
    base = dict(backbone=NAME, solver="euler", nfe=2, out=out, num_samples=N, batch_size=M, seed=5,
                decoder="upsample", guidance_scale=2.0, guidance_high=0.7)
    base.update(kw)
    return S.SampleConfig(**base)


class Log(list):
    def __call__(self, msg):
        self.append(msg)

    @property
    def text(self):
        return "\n".join(self)


def run(out, log=None, **kw):
    return S.sample(config(out, **kw), progress=False, log=log if log is not None else Log())


ARGV = ["--import", "_tiny_image", "--backbone", NAME, "--solver", "ba-solver", "--nfe", "2", "--num-samples", str(N),
        "--batch-size", str(M), "--decoder", "upsample", "--no-progress", "--guidance-scale", "2.0"]


def cli(out, *extra):
    return S.main(ARGV + ["--out", str(out), *extra])


def one_line_error(capsys, *parts):
    """The command's stderr is one line, ``...: error: ...``, holding every part."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: " in err[0] and "Traceback" not in err[0], err
    for part in parts:
        assert part in err[0], (part, err[0])
    return err[0]


def snapshot(out):
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def save_mlp_sidenet(path, dim=2, **kw):
    from adapters.torch_sit.sidenet.checkpoint import save_sidenet
    from adapters.torch_sit.sidenet.networks import MLPSideNet

    return save_sidenet(MLPSideNet(dim, hidden=8, depth=1, embed_dim=4, **kw), path)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run (seed 5) and the bytes of its samples.npz."""
    out = tmp_path_factory.mktemp("finished") / "run"
    npz = run(out)
    return out, npz.read_bytes()


class Stop(RuntimeError):
    """A run stopped on purpose, as a crash would stop it."""


def stopped_after_one_shard(out, **kw):
    """Run until the first shard is written, then stop (the sampler's own write_shard is wrapped)."""
    write = S.write_shard

    def write_then_stop(*args, **kwargs):
        write(*args, **kwargs)
        raise Stop("stopped after one shard")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Stop):
        mp.setattr(S, "write_shard", write_then_stop)
        run(out, **kw)


def copy_of(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished[0], out)
    return out


# ------------------------------------------------------------------------------- 27.1


def test_27_1_finished_samples_of_other_settings_are_refused_without_settings_json(finished, tmp_path, capsys):
    out = copy_of(finished, tmp_path)
    (out / S.SETTINGS_NAME).unlink()  # "holds samples made with other settings": the obvious reaction
    before = snapshot(out)
    with pytest.raises(S.SettingsMismatch, match=r"samples.npz was made with other settings \(seed: recorded 5, "
                                                 r"requested 6.*new --out.*move samples.npz and summary.json away"):
        run(out, seed=6)
    assert snapshot(out) == before  # no settings.json naming seed 6 over seed 5's images
    assert cli(out, "--solver", "euler", "--seed", "6", "--guidance-high", "0.7") == 2
    one_line_error(capsys, "seed: recorded 5, requested 6", "--out")
    assert snapshot(out) == before


def test_27_1_the_same_settings_without_settings_json_are_complete_and_it_is_restored(finished, tmp_path):
    """Deliberate: summary.json records the settings, so a matching run needs nothing else."""
    out = copy_of(finished, tmp_path)
    (out / S.SETTINGS_NAME).unlink()
    log = Log()
    assert run(out, log).read_bytes() == finished[1]
    assert "nothing to do" in log.text
    assert json.loads((out / S.SETTINGS_NAME).read_text())["settings"]["seed"] == 5
    log.clear()  # --keep-shards (like --out and the process count) does not change the samples
    assert run(out, log, keep_shards=True).read_bytes() == finished[1] and "nothing to do" in log.text


def test_under_matching_settings_a_shard_of_other_settings_is_recomputed(finished, tmp_path):
    """Deliberate: settings.json says what the directory is for; a shard whose header names
    other settings (copied in by hand) is recomputed, never stitched in."""
    stopped_after_one_shard(tmp_path / "seed6", seed=6)
    out = tmp_path / "run"
    stopped_after_one_shard(out)
    shutil.copy(tmp_path / "seed6" / "shards" / "shard-000000.safetensors", out / "shards")
    log = Log()
    assert run(out, log).read_bytes() == finished[1]
    assert "shard 0: written for other settings; it will be recomputed" in log.text


def test_27_1_summary_and_settings_that_disagree_are_refused(finished, tmp_path):
    """settings.json names seed 6 (as the old code wrote it), samples.npz and summary.json seed 5."""
    out = copy_of(finished, tmp_path)
    other = tmp_path / "other"
    stopped_after_one_shard(other, seed=6)  # only its settings.json is used here
    shutil.copy(other / S.SETTINGS_NAME, out / S.SETTINGS_NAME)
    before = snapshot(out)
    with pytest.raises(S.SettingsMismatch, match="samples.npz was made with other settings .seed: recorded 5, requested 6"):
        run(out, seed=6)
    assert snapshot(out) == before


def test_samples_npz_that_nothing_describes_is_refused(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / S.SETTINGS_NAME).unlink()
    (out / S.SUMMARY_NAME).unlink()
    before = snapshot(out)
    with pytest.raises(S.SettingsMismatch, match="settings.json is missing and summary.json is missing: nothing says"):
        run(out)
    assert snapshot(out) == before


def test_shards_of_other_settings_without_settings_json_are_refused(tmp_path):
    out = tmp_path / "run"
    stopped_after_one_shard(out)  # one shard of seed 5
    (out / S.SETTINGS_NAME).unlink()
    before = snapshot(out)
    with pytest.raises(S.SettingsMismatch, match=r"1 micro-batch\(es\) made with other settings \(shard-000000"):
        run(out, seed=6)
    assert snapshot(out) == before  # the seed-5 shard is not recomputed over
    assert run(out).name == S.NPZ_NAME  # its own settings take it up again


# ----------------------------------------------------------------------- 27.4, 27.5, 27.9


@pytest.mark.parametrize("typo, parts", [
    (["--rule", "gauss-lobatto-9"], ["--rule", "unknown rule 'gauss-lobatto-9'", "gauss-lobatto-8"]),  # 27.4
    (["--seed", "-1"], ["--seed must be an integer >= 0", "-1"]),  # 27.5
    (["--guidance-scale", "nan"], ["--guidance-scale must be a finite number", "nan"]),
    (["--sidenet", "RING"], ["--sidenet", "MLPSideNet for states of 2 number(s)", "(B, 4, 8, 8)"]),  # 27.9
    (["--guidance-low", "0.8", "--guidance-high", "0.7"], ["--guidance-low 0.8 is above --guidance-high 0.7"]),
    (["--solver-option", "order=3"], ["--solver-option", "order not understood by method 'ba-solver'"]),
    (["--shift", "0"], ["--shift must be a finite number > 0"]),
])
def test_27_4_a_typo_writes_nothing_and_the_corrected_command_runs(tmp_path, capsys, typo, parts):
    ring = save_mlp_sidenet(tmp_path / "ring")  # the ring's 2-D SideNet: not for 4 x 8 x 8 latents
    typo = [str(ring) if a == "RING" else a for a in typo]
    out = tmp_path / "run"
    assert cli(out, *typo) == 2
    one_line_error(capsys, *parts)
    assert not out.exists()  # no settings.json to refuse the corrected command with
    assert cli(out) == 0 and (out / S.NPZ_NAME).is_file()


def test_27_9_a_sidenet_for_other_classes_or_guidance_is_refused_before_writing(tmp_path, capsys):
    other_classes = save_mlp_sidenet(tmp_path / "c", dim=256, num_classes=CLASSES + 2)
    assert cli(tmp_path / "a", "--sidenet", str(other_classes)) == 2
    one_line_error(capsys, "a SideNet for 7 classes", "has 5", "--sidenet")
    guided = save_mlp_sidenet(tmp_path / "g", dim=256, num_classes=CLASSES, guidance=True)
    args = [a for a in ARGV if a not in ("--guidance-scale", "2.0")]
    assert S.main(args + ["--out", str(tmp_path / "b"), "--sidenet", str(guided)]) == 2
    one_line_error(capsys, "conditioned on the guidance scale; pass --guidance-scale")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_out_that_is_a_file_is_refused(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("mine")
    assert cli(out) == 2
    one_line_error(capsys, f"--out {out}: exists and is not a directory")
    assert out.read_text() == "mine"


# ------------------------------------------------------------------------------- 27.6


@pytest.mark.parametrize("content, why", [
    ("{ half a", "is not readable JSON"),
    ("[1, 2]", "holds a JSON list"),
    (json.dumps({"format": "baquad-sidenet", "version": 2}), "its format is 'baquad-sidenet'"),
    (json.dumps({"format": "baquad-sample-run", "digest": "0" * 64, "settings": {"seed": 5}}),
     "do not match the digest"),
])
def test_27_6_a_garbage_or_foreign_settings_json_is_one_line(tmp_path, capsys, content, why):
    out = tmp_path / "run"
    out.mkdir()
    (out / S.SETTINGS_NAME).write_text(content)
    assert cli(out) == 2
    one_line_error(capsys, str(out / S.SETTINGS_NAME), why, "Move it away", "new --out")
    assert snapshot(out) == {S.SETTINGS_NAME: content.encode()}


# ------------------------------------------------------------------------------- 27.7


def test_27_7_only_temporary_files_nobody_writes_to_are_removed(tmp_path):
    out = tmp_path / "run"
    (out / "shards").mkdir(parents=True)
    in_flight = [out / "shards" / ".shard-000001.safetensors.a1b2c3d4.tmp", out / ".samples.npz.q9w8e7r6.tmp"]
    stale = [out / "shards" / ".shard-000000.safetensors.z9y8x7w6.tmp", out / ".summary.json.k1j2h3g4.tmp"]
    theirs = out / "shards" / ".notes.txt.a1b2c3d4.tmp"
    for p in in_flight + stale + [theirs]:
        p.write_bytes(b"part of a write")
    hour_ago = stale[0].stat().st_mtime - S.STALE_TEMP_SECONDS - 1
    for p in stale + [theirs]:
        os.utime(p, (hour_ago, hour_ago))
    log = Log()
    run(out, log)
    assert all(p.exists() for p in in_flight)  # another sampler's writes in progress
    assert not any(p.exists() for p in stale) and theirs.exists()
    assert f"removed {stale[0]}" in log.text


# ------------------------------------------------------------------------------- 27.8


def test_27_8_a_flipped_byte_in_a_finished_npz_is_caught_and_the_file_made_again(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    data = bytearray((out / S.NPZ_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit of one image
    (out / S.NPZ_NAME).write_bytes(bytes(data))
    log = Log()
    assert run(out, log).read_bytes() == finished[1]
    assert "does not match the sha256 that summary.json records" in log.text and "nothing to do" not in log.text


def test_a_torn_summary_json_is_made_again(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    (out / S.SUMMARY_NAME).write_text('{"num_samples": 6, "sha')
    assert run(out).read_bytes() == finished[1]
    summary = json.loads((out / S.SUMMARY_NAME).read_text())
    assert summary["settings"]["seed"] == 5 and len(summary["settings_digest"]) == 64


# ------------------------------------------------------------------------------ 27.15


def test_27_15_twelve_micro_batches_assemble_as_one(tmp_path):
    """The assembly takes the shards in index order: with shards sorted as strings (10 and 11
    before 2) images and labels are paired wrongly from 11 micro-batches on."""
    n = 12
    many = run(tmp_path / "many", num_samples=n, batch_size=1)
    one = run(tmp_path / "one", num_samples=n, batch_size=n)
    with np.load(many, allow_pickle=False) as a, np.load(one, allow_pickle=False) as b:
        images, labels, ref_images, ref_labels = a["arr_0"], a["arr_1"], b["arr_0"], b["arr_1"]
    _, y = S.sample_inputs(5, range(n), (4, 8, 8), CLASSES)
    np.testing.assert_array_equal(labels, y.numpy())  # the per-index definition
    np.testing.assert_array_equal(ref_labels, y.numpy())
    # a batch of 1 and of 12 run the same arithmetic on the same numbers up to float reassociation,
    # which may flip the uint8 truncation of a value by one
    diff = np.abs(images.astype(int) - ref_images.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    per_image = diff.reshape(n, -1).max(axis=1)
    assert (per_image <= 1).all()
    # and the images really are told apart by this comparison (a shuffled pair would fail it)
    assert np.abs(images[2].astype(int) - ref_images[10].astype(int)).max() > 1
