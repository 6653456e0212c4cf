"""The 50K sampler on a tiny class-conditional backbone with a stand-in decoder.

What is checked against what:
- the per-index noise and labels against their definition (a torch generator seeded by
  ``SeedSequence([seed, i])``), and class-balanced labels by counting;
- the uint8 conversion against REPA's formula written here in numpy, the SD-VAE decoder against
  diffusers' own ``AutoencoderKL.decode`` on a tiny saved VAE;
- the images of a run against Euler steps and the stand-in decoder written out in this file;
- restarts (an injected failure, SIGKILL under torchrun, corrupted and truncated shards) and
  process counts against an uninterrupted single-process run of the same settings, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adapters.torch_sit.imagenet import sample as S
from adapters.torch_sit.imagenet.decode import SDVAEDecoder, UpsampleDecoder, to_uint8
from adapters.torch_sit.imagenet.shards import micro_batches, shard_path
from _tiny_image import CLASSES, NAME, SHAPE, TinyImageField

ROOT = Path(__file__).resolve().parents[1]
N, M = 22, 4  # 6 micro-batches, the last one short


def config(out, **kw):
    base = dict(backbone=NAME, solver="euler", nfe=3, out=out, num_samples=N, batch_size=M, seed=5,
                decoder="upsample", guidance_scale=2.0, guidance_high=0.7)
    base.update(kw)
    return S.SampleConfig(**base)


def quiet(msg):
    quiet.lines.append(msg)


quiet.lines = []


def run(out, **kw):
    return S.sample(config(out, **kw), progress=False, log=quiet)


class Interrupted(RuntimeError):
    """A sampling run stopped on purpose by :func:`interrupted_after`."""


@contextlib.contextmanager
def interrupted_after(k):
    """``with interrupted_after(k): S.sample(...)``: the run stops with ``Interrupted`` right after
    it wrote its k-th shard, as a crash would stop it (the sampler's own ``write_shard`` is
    wrapped), and the block checks that it did."""
    write = S.write_shard
    written = []

    def write_then_stop(*args, **kwargs):
        write(*args, **kwargs)
        written.append(args[0])
        if len(written) == k:
            raise Interrupted(f"interrupted after {k} shard(s)")

    with pytest.MonkeyPatch.context() as mp, pytest.raises(Interrupted):
        mp.setattr(S, "write_shard", write_then_stop)
        yield


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted single-process run: the bytes every other run must reproduce."""
    out = tmp_path_factory.mktemp("ref")
    return run(out).read_bytes()


# ------------------------------------------------------------------------- inputs, decoding


def test_noise_and_labels_come_from_the_per_index_generator():
    noise, labels = S.sample_inputs(7, range(3, 6), SHAPE, CLASSES)
    for k, i in enumerate(range(3, 6)):
        seed = int(np.random.SeedSequence([7, i]).generate_state(1, np.uint64)[0])
        g = torch.Generator().manual_seed(seed)
        # sample.py's promise: sample i's noise is these draws from the (seed, i) generator, untouched
        torch.testing.assert_close(noise[k], torch.randn(SHAPE, generator=g), rtol=0, atol=0)
        assert labels[k] == int(torch.randint(0, CLASSES, (1,), generator=g))
    alone, alone_label = S.sample_inputs(7, range(4, 5), SHAPE, CLASSES)
    torch.testing.assert_close(alone[0], noise[1], rtol=0, atol=0)  # depends on (seed, i) only
    assert alone_label[0] == labels[1]


def test_balanced_labels_use_every_class_equally():
    _, labels = S.sample_inputs(1, range(23), SHAPE, CLASSES, labels="balanced", num_samples=23)
    counts = np.bincount(labels.numpy(), minlength=CLASSES)
    assert sorted(counts) == [4, 4, 5, 5, 5]  # 23 = 5 * 4 + 3
    _, part = S.sample_inputs(1, range(10, 15), SHAPE, CLASSES, labels="balanced", num_samples=23)
    np.testing.assert_array_equal(part.numpy(), labels.numpy()[10:15])


def test_to_uint8_is_repas_truncating_conversion():
    x = torch.tensor([-1.5, -1.0, -0.2, 0.0, 0.33, 0.999, 1.0, 2.0]).reshape(1, 1, 2, 4).repeat(2, 3, 1, 1)
    x[1] *= -0.5
    got = to_uint8(x)
    assert got.dtype == np.uint8 and got.shape == (2, 2, 4, 3)  # NHWC
    expected = np.clip(255.0 * (x.numpy().astype(np.float32) + 1) / 2, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(got, expected)  # REPA's conversion op for op (elementwise, correctly rounded)
    assert got[0, 0, 3, 0] == 127  # 127.5 truncates, SiT's 127.5 x + 128 would give 128


def test_sd_vae_decoder_matches_diffusers(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 8),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        layers_per_block=1, latent_channels=4, norm_num_groups=2)
    vae.save_pretrained(tmp_path / "vae")
    z = torch.randn(2, 4, 8, 8)
    ours = SDVAEDecoder(tmp_path / "vae")(z)
    expected = vae.eval().decode(z / 0.18215).sample
    assert ours.shape == (2, 3, 16, 16)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="--vae"):
        SDVAEDecoder(tmp_path / "nothing")


# ------------------------------------------------------------------------------ a whole run


def test_run_writes_the_adm_batch_with_independently_computed_images(tmp_path, reference):
    out = tmp_path / "run"
    npz = run(out)
    # sample.py's promise: on the same hardware and software the .npz is byte-identical, whatever
    # the number of processes and however often the run was interrupted (here and below)
    assert npz.read_bytes() == reference
    with np.load(npz, allow_pickle=False) as z:
        assert z.files == ["arr_0", "arr_1"]
        images, labels = z["arr_0"], z["arr_1"]
    assert images.dtype == np.uint8 and images.shape == (N, 64, 64, 3)  # NHWC, 8x the 8x8 latents

    # Euler (REPA's euler_sampler without the float64 state) + the stand-in decoder, written out
    field = TinyImageField(guidance_high=0.7).eval()
    noise, y = S.sample_inputs(5, range(N), SHAPE, CLASSES)
    np.testing.assert_array_equal(labels, y.numpy())
    x, ts = noise.clone(), np.linspace(1.0, 0.0, 4)
    with torch.no_grad():
        for t_cur, t_next in zip(ts[:-1], ts[1:]):
            x = x + float(t_next - t_cur) * field(torch.full((N,), float(t_cur)), x, labels=y, guidance_scale=2.0)
    rgb = np.tanh(x[:, :3].numpy()).repeat(8, axis=2).repeat(8, axis=3)
    expected = np.clip(255.0 * (rgb + 1) / 2, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    diff = np.abs(images.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # float rounding may flip a truncation

    import matplotlib.image as mpimg

    grid = mpimg.imread(out / "grid.png")
    assert grid.shape[:2] == (3 * 66 + 2, 8 * 66 + 2)  # 22 images, 8 per row, 2 px padding
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nfe"] == 3 and summary["num_samples"] == N
    assert not (out / "shards").exists()  # removed once the .npz is written

    quiet.lines.clear()
    before = npz.stat().st_mtime_ns
    run(out)
    assert npz.stat().st_mtime_ns == before and any("complete" in line for line in quiet.lines)


def test_interrupted_run_with_damaged_shards_finishes_identically(tmp_path, reference):
    out = tmp_path / "run"
    with interrupted_after(4):
        S.sample(config(out), progress=False, log=quiet)
    batches = micro_batches(N, M)
    flip, cut = shard_path(out, 1), shard_path(out, 2)
    data = bytearray(flip.read_bytes())
    data[-5] ^= 0xFF  # inside the image data
    flip.write_bytes(bytes(data))
    cut.write_bytes(cut.read_bytes()[:-100])
    stale = out / "shards" / ".shard-000003.safetensors.abc.tmp"
    stale.write_bytes(b"half a write")
    old = stale.stat().st_mtime - S.STALE_TEMP_SECONDS - 60  # not written to for over the threshold: stale
    os.utime(stale, (old, old))
    assert not (out / "samples.npz").exists() and len(batches) == 6

    quiet.lines.clear()
    npz = run(out)
    text = "\n".join(quiet.lines)
    assert "shard 1: checksum mismatch" in text and "shard 2: unreadable" in text
    assert "2 done, 4 to compute" in text  # shards 0 and 3 were kept, 1 and 2 recomputed, 4 and 5 new
    assert npz.read_bytes() == reference
    assert not (out / "shards").exists()  # the stale temporary file went with the shards


def test_restart_with_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with interrupted_after(1):
        S.sample(config(out), progress=False, log=quiet)
    with pytest.raises(S.SettingsMismatch, match=r"nfe: recorded 3, requested 4.*new --out"):
        run(out, nfe=4)
    with pytest.raises(S.SettingsMismatch, match="seed"):
        run(out, seed=6)
    argv = ["--import", "_tiny_image", "--backbone", NAME, "--solver", "euler", "--nfe", "3", "--out", str(out),
            "--num-samples", str(N), "--batch-size", str(M), "--seed", "5", "--decoder", "upsample", "--no-progress"]
    assert S.main(argv) == 2  # no --guidance-scale / --guidance-high this time
    assert "guidance_scale: recorded 2.0, requested None" in capsys.readouterr().err


def test_bad_settings_name_the_flag(tmp_path):
    with pytest.raises(ValueError, match="--vae PATH is required"):
        run(tmp_path / "a", decoder="sd-vae")
    with pytest.raises(ValueError, match="nfe=4 cannot be met exactly by 'heun'"):
        run(tmp_path / "b", solver="heun", nfe=4)
    with pytest.raises(ValueError, match="--sidenet and --rule belong to --solver ba-solver"):
        run(tmp_path / "c", sidenet="x.safetensors")
    with pytest.raises(ValueError, match="--solver: unknown solver"):
        run(tmp_path / "d", solver="rk45")


# ----------------------------------------------------------------------------- torchrun


def tiny_sidenet(path):
    from adapters.torch_sit.sidenet.checkpoint import save_sidenet
    from adapters.torch_sit.sidenet.networks import ConvSideNet

    torch.manual_seed(1)
    net = ConvSideNet(4, base_channels=16, time_embed_dim=16, num_layers=1, num_classes=CLASSES, num_heads=2,
                      res_blocks=1)
    with torch.no_grad():  # the output layer starts at zero; make the SideNet matter
        net.conv_out.weight.normal_(0, 0.05)
    return save_sidenet(net, path)


def torchrun(args, nproc=2, entry=("-m", "adapters.torch_sit.imagenet.sample")):
    """The sample command under torchrun; ``entry`` is what each rank runs (a module or a script
    with its leading arguments)."""
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])  # tests/: _tiny_image
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           *entry, "--threads", "1", "--no-progress", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_torchrun_matches_single_process_and_survives_sigkill(tmp_path):
    sidenet = tiny_sidenet(tmp_path / "sidenet")
    kw = dict(solver="ba-solver", nfe=4, sidenet=str(sidenet), num_samples=30, batch_size=4, labels="balanced")
    single = S.sample(config(tmp_path / "single", **kw), progress=False, log=quiet).read_bytes()
    args = ["--import", "_tiny_image", "--backbone", NAME, "--solver", "ba-solver", "--nfe", "4",
            "--sidenet", str(sidenet), "--num-samples", "30", "--batch-size", "4", "--labels", "balanced",
            "--seed", "5", "--decoder", "upsample", "--guidance-scale", "2.0", "--guidance-high", "0.7"]

    proc = torchrun(args + ["--out", str(tmp_path / "ddp")])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 process(es)" in proc.stdout
    assert (tmp_path / "ddp" / "samples.npz").read_bytes() == single

    # every rank kills itself (SIGKILL) after its second shard; torchrun tears the job down
    killed = torchrun(args + ["--out", str(tmp_path / "killed")],
                      entry=(str(ROOT / "tests" / "_sample_killed_after.py"), "2"))
    assert killed.returncode != 0 and "SIGKILL" in killed.stdout + killed.stderr
    shards = sorted((tmp_path / "killed" / "shards").glob("shard-*.safetensors"))
    assert 2 <= len(shards) < 8 and not (tmp_path / "killed" / "samples.npz").exists()
    shards[0].write_bytes(shards[0].read_bytes()[:-1])  # truncated
    # ... and finished by a single process (another process count)
    quiet.lines.clear()
    npz = S.sample(config(tmp_path / "killed", **kw), progress=False, log=quiet)
    assert any(f"shard {int(shards[0].stem[-6:])}: unreadable" in line for line in quiet.lines)
    assert npz.read_bytes() == single
