"""Issue 27: what ``baquad demo`` and ``baquad demo edit`` refuse, and where they write.

Every refusal is one error line naming the flag and the fix (status 2 from the parser for a flag,
1 with ``baquad demo: error:`` for a file found wrong while loading), with no traceback and
nothing written or deleted; earlier results are never overwritten silently. The runs that get
through sample a one-row plan on 4 digits (``demo.plan`` patched, figures stood in for), and the DOP853 reference
solve is replaced by a guard that fails the test if reached (or by a cheap stand-in where the
test needs a solve), so no test waits for one.

Truths used: the files on disk (bytes before and after), the exit status and stderr of the
command, a SideNet built here for other states, the shipped reference's own header.
"""

from __future__ import annotations

import hashlib
import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from adapters.torch_sit.cli import main  # noqa: E402
from adapters.torch_sit.digits import demo, reference as reference_module  # noqa: E402
from adapters.torch_sit.digits import model as model_module  # noqa: E402
from adapters.torch_sit.sidenet.checkpoint import save_sidenet  # noqa: E402
from adapters.torch_sit.sidenet.networks import MLPSideNet  # noqa: E402



@pytest.fixture(autouse=True)
def _no_reference_solve(monkeypatch):
    """A DOP853 reference solve takes minutes: reaching one fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a DOP853 reference solve was started")

    monkeypatch.setattr(reference_module, "build_reference", refuse)


@pytest.fixture
def one_row(monkeypatch):
    """One solver at one NFE, and stand-in figures (drawing them is most of a small run's time;
    tests/test_demo.py checks the real ones)."""
    monkeypatch.setattr(demo, "plan", lambda rows: [(next(c for c in rows if c.label == "Euler"), 3)])
    for plot in ("plot_samples", "plot_errors"):
        monkeypatch.setattr(demo, plot, lambda *args: args[-1].write(b"\x89PNG stand-in"))


def _refused(capsys, argv, status=2):
    """Run ``baquad demo ...`` expecting a refusal; returns its error line."""
    try:
        code = main(["demo", *argv])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == status, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


def _tree(path):
    """Every file below ``path`` with its bytes (what a refusal must leave alone)."""
    return {p.relative_to(path): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()} if path.exists() else None


def _mlp_sidenet(tmp_path, dim, backbone):
    net = MLPSideNet(dim, hidden=8, depth=1, embed_dim=4)
    return save_sidenet(net, tmp_path / f"sidenet-{dim}", extra={"backbone": backbone})


# --- --sidenet: checked against the digits states and backbone before any network runs ----------


def test_27_demo_sidenet_for_another_state_shape(tmp_path, capsys, monkeypatch):
    ring = _mlp_sidenet(tmp_path, 2, "gmm-ring2d")  # the ring's 2-D MLP SideNet
    monkeypatch.setattr(model_module, "digits_sit_backbone", lambda *a, **k: pytest.fail("network loaded"))
    out = tmp_path / "out"
    for which in ("sample", "edit"):
        line = _refused(capsys, [which, "--sidenet", str(ring), "--n", "4", "--out", str(out)], status=1)
        assert line.startswith(f"baquad demo: error: --sidenet {ring}: this is an MLPSideNet for states of 2"), line
        assert "(B, 1, 8, 8), 64 per sample" in line and "pass a SideNet trained on states of this shape" in line
    assert not out.exists()


def test_27_demo_sidenet_for_another_backbone_of_the_same_size(tmp_path, capsys):
    other = _mlp_sidenet(tmp_path, 64, "gmm-64d")  # 64 numbers per state, like a digit
    line = _refused(capsys, ["--sidenet", str(other), "--n", "4", "--out", str(tmp_path / "out")], status=1)
    assert "trained on the backbone 'gmm-64d'" in line and "--backbone digits-sit" in line
    assert not (tmp_path / "out").exists()


def test_27_demo_sidenet_file_that_is_missing_or_corrupt(tmp_path, capsys):
    line = _refused(capsys, ["--sidenet", str(tmp_path / "nope.safetensors"), "--out", str(tmp_path / "o")])
    assert "--sidenet:" in line and "does not exist" in line
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    line = _refused(capsys, ["--sidenet", str(bad), "--n", "4", "--out", str(tmp_path / "o")], status=1)
    assert line.startswith("baquad demo: error: --sidenet:") and str(bad) in line
    assert not (tmp_path / "o").exists()


# --- --out: earlier results kept, unwritable places found first ---------------------------------


def test_27_demo_earlier_results_are_kept_and_a_second_run_still_works(tmp_path, capsys, one_row):
    out = tmp_path / "out"
    out.mkdir()
    (out / "demo.md").write_text("my earlier table\n")
    (out / "notes.txt").write_text("mine\n")
    assert main(["demo", "--n", "4", "--out", str(out), "--no-progress"]) == 0
    assert (out / "demo.md").read_text() == "my earlier table\n" and (out / "notes.txt").read_text() == "mine\n"
    assert not (out / "results.json").exists()  # nothing of the new run mixed into the old one
    fresh = out / "run-2"
    assert {p.name for p in fresh.iterdir()} == set(demo.RESULTS)
    assert "| Euler | 3 |" in (fresh / "demo.md").read_text()
    said = capsys.readouterr().out
    assert f"they are kept, and this run writes to {fresh}" in said
    assert main(["demo", "--n", "4", "--out", str(out), "--no-progress"]) == 0  # a third run: run-3
    assert (out / "run-3" / "demo.md").is_file() and (fresh / "demo.md").read_text().count("| Euler | 3 |") == 1
    assert main(["demo", "--n", "4", "--out", str(out), "--no-progress", "--overwrite"]) == 0
    assert "| Euler | 3 |" in (out / "demo.md").read_text() and not (out / "run-4").exists()
    assert json.loads((out / "results.json").read_text())["settings"]["n"] == 4


def test_27_demo_out_that_cannot_be_written_is_refused_before_sampling(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    before = _tree(tmp_path)
    line = _refused(capsys, ["--n", "4", "--out", str(blocker / "out")])
    assert "--out:" in line and f"lies below {blocker}, which is a file" in line
    line = _refused(capsys, ["edit", "--out", str(blocker)])
    assert f"--out: {blocker} is a file, not a directory" in line
    assert _tree(tmp_path) == before


def test_27_demo_out_in_a_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        import os

        if os.access(locked, os.W_OK):
            pytest.skip("this user writes anywhere (root): a read-only directory cannot be made")
        line = _refused(capsys, ["--n", "4", "--out", str(locked / "out")])
        assert f"--out: cannot write in {locked}" in line
    finally:
        locked.chmod(0o700)


# --- flags the sample demo does not take, and stray values --------------------------------------


def test_27_demo_nfe_is_not_silently_ignored_by_the_sample_demo(tmp_path, capsys, one_row):
    line = _refused(capsys, ["--nfe", "5", "--n", "4", "--out", str(tmp_path / "o")])
    assert "--nfe: only baquad demo edit takes --nfe" in line and "drop it" in line
    line = _refused(capsys, ["--digits", "3", "--n", "4", "--out", str(tmp_path / "o")])
    assert "--digits: only baquad demo edit takes --digits" in line
    line = _refused(capsys, ["edit", "--reference", str(tmp_path), "--out", str(tmp_path / "o")])
    assert "--reference: the edit demo uses no reference set" in line
    assert not (tmp_path / "o").exists()


def test_27_demo_stray_values_name_their_cause(tmp_path, capsys):
    line = _refused(capsys, ["--nfe", "3", "5"])
    assert "--nfe takes one value; '5' is one too many" in line and "invalid choice" not in line
    line = _refused(capsys, ["edit", "--nfe", "3", "5"])
    assert "--nfe takes one value; '5' is one too many" in line
    line = _refused(capsys, ["--seed", "3"])
    assert "--seed: no such flag here" in line and "invalid choice" not in line
    line = _refused(capsys, ["edit", "--seed=3"])
    assert "--seed=3: no such flag here" in line
    line = _refused(capsys, ["smaple"])  # a real invalid choice keeps argparse's message
    assert "invalid choice: 'smaple'" in line


# --- upper limits with their estimates ----------------------------------------------------------


def test_27_demo_n_has_an_upper_limit_with_its_cost(capsys):
    line = _refused(capsys, ["--n", "1000000000"])
    assert f"--n: at most {demo.MAX_SAMPLES:,} samples" in line and "min on one core" in line and "GiB" in line
    assert "953.7 GiB" in line  # 1e9 samples x 4 tensors x 64 float32 pixels, in GiB: 1e9 * 1024 / 2**30


@pytest.mark.parametrize("value, said", [
    ("inf", "finite numbers from 1 (unguided) to 10"),
    ("nan", "finite numbers from 1 (unguided) to 10"),
    ("-inf", "finite numbers from 1 (unguided) to 10"),
    ("1000", "--guidance-scale: at most 10; DOP853 needs about 230 + 11 g network calls per solve"),
])
def test_27_demo_guidance_scale_limits(capsys, value, said):
    # the estimates, written out: samples x 0.1 s x (230 + 11 g) / 246, in hours, for the sample demo's
    # reference set at the default --n (2 x 1000 + 100 checked) and the edit demo's round trips
    # (2 x 355 held-out digits)
    for which, samples in (("sample", 2 * 1000 + 100), ("edit", 2 * 355)):
        line = _refused(capsys, [which, f"--guidance-scale={value}"])
        assert said in line, line
        if value == "1000":
            assert f"about {samples * 0.1 * (230 + 11 * 1000) / 246 / 3600:.1f} h" in line, line


# --- --reference and the cached reference -------------------------------------------------------


def test_27_demo_reference_that_does_not_fit_is_refused(tmp_path, capsys):
    shipped = model_module.shipped_path("reference")
    held = len(reference_module.load_reference())
    line = _refused(capsys, ["--reference", str(shipped), "--n", str(held + 1), "--out", str(tmp_path / "o")],
                    status=1)
    assert f"--reference {shipped}: it holds {held} samples, fewer than --n {held + 1}" in line
    assert "drop --reference" in line
    line = _refused(capsys, ["--reference", str(shipped), "--guidance-scale", "2", "--n", "4",
                             "--out", str(tmp_path / "o")], status=1)
    assert "it was solved at guidance 1.5, not --guidance-scale 2" in line
    line = _refused(capsys, ["--reference", str(tmp_path / "none.safetensors"), "--out", str(tmp_path / "o")])
    assert "--reference:" in line and "is not a file" in line
    assert not (tmp_path / "o").exists()


def test_27_demo_corrupt_cached_reference_is_solved_again(tmp_path, capsys, monkeypatch, one_row):
    out = tmp_path / "out"
    out.mkdir()
    cached = out / "reference-g2-n4.safetensors"
    cached.write_bytes(b"torn write")
    (out / "SHA256SUMS").write_text(f"{hashlib.sha256(b'the bytes it had').hexdigest()}  {cached.name}\n")
    shipped = reference_module.load_reference().head(4)
    solves = []

    def stand_in(n, guidance_scale, **kwargs):  # the shipped solutions relabelled: a cheap, valid set
        solves.append((n, guidance_scale))
        return reference_module.ReferenceSet(shipped.noise, shipped.labels, shipped.reference, shipped.noise_b,
                                             shipped.reference_b, dict(shipped.meta, guidance_scale=guidance_scale))

    monkeypatch.setattr(reference_module, "build_reference", stand_in)
    assert main(["demo", "--n", "4", "--guidance-scale", "2", "--out", str(out), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert f"the cached reference set {cached} cannot be read" in said and "solved again and replaced" in said
    assert solves == [(4, 2.0)]
    assert reference_module.load_reference(cached).meta["guidance_scale"] == 2.0  # the cache works again
    assert main(["demo", "--n", "4", "--guidance-scale", "2", "--out", str(out), "--no-progress"]) == 0
    assert solves == [(4, 2.0)]  # the second run used the cache


# --- baquad demo edit ---------------------------------------------------------------------------


def test_27_edit_digits_out_of_range_refused_before_loading_or_writing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(model_module, "digits_sit_backbone", lambda *a, **k: pytest.fail("network loaded"))
    out = tmp_path / "out"
    line = _refused(capsys, ["edit", "--digits", "0", "99999", "-3", "--out", str(out)])
    assert "--digits: indices into the 355 held-out digits, 0 to 354; got 99999, -3" in line
    assert not out.exists()


def test_27_edit_n_1_speaks_of_the_round_trip_table(tmp_path, capsys):
    line = _refused(capsys, ["edit", "--n", "1", "--out", str(tmp_path / "o")])
    assert "--n: the round-trip table needs at least 2 held-out digits" in line and "Fréchet" not in line


@pytest.mark.parametrize("nfe", ["1", "0", str(demo.MAX_EDIT_NFE + 1)])
def test_27_edit_nfe_range(tmp_path, capsys, nfe):
    line = _refused(capsys, ["edit", "--nfe", nfe, "--out", str(tmp_path / "o")])
    assert f"--nfe: BA-solver's NFE per direction in the edit grid, 2 to {demo.MAX_EDIT_NFE}" in line


# --- more flags of the same family --------------------------------------------------------------


@pytest.mark.parametrize("argv, said", [
    (["--threads", "0"], "--threads: 1 to the machine's"),
    (["--threads", "100000"], "--threads: 1 to the machine's"),
    (["--shift", "inf"], "--shift: must be a finite positive number"),
    (["--shift", "0"], "--shift: must be a finite positive number"),
    (["--n", "2.5"], "argument --n: invalid int value: '2.5'"),
])
def test_27_demo_more_flags_refused(tmp_path, capsys, argv, said):
    line = _refused(capsys, [*argv, "--out", str(tmp_path / "o")])
    assert said in line
    assert not (tmp_path / "o").exists()


# --- the reference set's own command (same family: flags checked before a long solve) -----------


@pytest.mark.parametrize("argv, said", [
    (["--n", "0"], "--n: samples per set, at least 1"),
    (["--guidance-scale=inf"], "--guidance-scale: a finite classifier-free guidance scale >= 1"),
    (["--rtol", "0"], "--rtol: DOP853's relative tolerance, a number in (0, 1)"),
    (["--rtol", "nan"], "--rtol: DOP853's relative tolerance, a number in (0, 1)"),
    (["--seed", "-1"], "--seed: a non-negative integer"),
])
def test_27_reference_command_flags_refused_before_solving(tmp_path, capsys, argv, said):
    with pytest.raises(SystemExit) as info:
        reference_module.main(["--out", str(tmp_path / "ref"), *argv])
    err = capsys.readouterr().err
    assert info.value.code == 2 and said in err and "Traceback" not in err
    assert not (tmp_path / "ref").exists()


def test_27_reference_command_never_overwrites_silently(tmp_path, capsys):
    existing = tmp_path / model_module.shipped_path("reference").name
    existing.write_bytes(b"a reference set of mine")
    with pytest.raises(SystemExit) as info:
        reference_module.main(["--out", str(tmp_path), "--n", "4"])
    assert info.value.code == 2 and f"--out: {existing} exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"a reference set of mine"
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SystemExit):
        reference_module.main(["--out", str(blocker / "ref"), "--n", "4"])
    assert "which is a file" in capsys.readouterr().err
