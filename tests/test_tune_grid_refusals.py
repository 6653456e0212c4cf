"""Issue 27: ``analysis.tune_grid`` refuses, before its calibration runs, what it used to accept.

Truths used: the files on disk (bytes before and after), ``sha256sum``'s manifest format written
out here (``<hex>  <name>``) and hashlib's digest of the rewritten file, and the exit message.
"""

from __future__ import annotations

import hashlib

import pytest

torch = pytest.importorskip("torch")

from adapters.torch_sit.sidenet.checkpoint import save_sidenet  # noqa: E402
from adapters.torch_sit.sidenet.networks import MLPSideNet  # noqa: E402
from analysis import tune_grid  # noqa: E402


def _sidenet(path, dim, backbone=None):
    extra = {} if backbone is None else {"backbone": backbone}
    return save_sidenet(MLPSideNet(dim, hidden=8, depth=1, embed_dim=4), path, extra=extra)


def _no_calibration(monkeypatch):
    """The calibration's reference solve must not start: reaching it fails the test."""
    monkeypatch.setattr(tune_grid, "setup_problem", lambda *a, **k: pytest.fail("the calibration started"))


def test_27_tune_grid_sidenet_trained_on_another_flow_of_the_same_dimension(tmp_path, monkeypatch):
    _no_calibration(monkeypatch)
    path = _sidenet(tmp_path / "sidenet.safetensors", 64, backbone="gmm-64d")
    before = path.read_bytes()
    with pytest.raises(SystemExit) as info:
        tune_grid.main(["--flow", "gmm-32d", "--sidenet", str(path)])  # dimension differs: refused before too
    assert "MLPSideNet for states of 64" in str(info.value)
    other = _sidenet(tmp_path / "digits.safetensors", 64, backbone="digits-sit")  # 64 numbers, like gmm-64d
    with pytest.raises(SystemExit) as info:
        tune_grid.main(["--flow", "gmm-64d", "--sidenet", str(other), "--save"])
    msg = str(info.value)
    assert f"--sidenet {other}: this SideNet was trained on the backbone 'digits-sit'" in msg
    assert "used with 'gmm-64d'" in msg and "--backbone gmm-64d" in msg
    assert path.read_bytes() == before


def test_27_tune_grid_repeated_nfe_is_refused(tmp_path, capsys, monkeypatch):
    _no_calibration(monkeypatch)
    path = _sidenet(tmp_path / "sidenet.safetensors", 2, backbone="gmm-ring2d")
    with pytest.raises(SystemExit) as info:
        tune_grid.main(["--sidenet", str(path), "--nfe", "3", "5", "3", "7", "5"])
    assert info.value.code == 2
    assert "--nfe: 3, 5 given more than once; each NFE counts once in the score" in capsys.readouterr().err


def test_27_tune_grid_save_updates_the_manifest_that_lists_the_file(tmp_path, capsys):
    path = _sidenet(tmp_path / "sidenet.safetensors", 2, backbone="gmm-ring2d")
    other = "0" * 64
    (tmp_path / "SHA256SUMS").write_text(f"{other}  another.safetensors\n"
                                         f"{hashlib.sha256(path.read_bytes()).hexdigest()}  sidenet.safetensors\n")
    assert tune_grid.main(["--sidenet", str(path), "--n", "8", "--nfe", "3", "--save"]) == 0
    rewritten = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "SHA256SUMS").read_text() == f"{other}  another.safetensors\n{rewritten}  sidenet.safetensors\n"
    assert "and its SHA256SUMS entry: sidenet.safetensors" in capsys.readouterr().out


def test_27_tune_grid_save_refuses_a_file_that_no_longer_matches_its_manifest(tmp_path, monkeypatch):
    _no_calibration(monkeypatch)
    path = _sidenet(tmp_path / "sidenet.safetensors", 2, backbone="gmm-ring2d")
    manifest = f"{'1' * 64}  sidenet.safetensors\n"
    (tmp_path / "SHA256SUMS").write_text(manifest)
    before = path.read_bytes()
    with pytest.raises(SystemExit, match="--save: refusing to rewrite a file that no longer matches its manifest"):
        tune_grid.main(["--sidenet", str(path), "--nfe", "3", "--save"])
    assert path.read_bytes() == before and (tmp_path / "SHA256SUMS").read_text() == manifest


def test_27_tune_grid_save_into_a_training_checkpoint_is_refused_before_the_calibration(tmp_path, monkeypatch):
    from adapters.torch_sit.sidenet.checkpoint import save_checkpoint

    _no_calibration(monkeypatch)
    net = MLPSideNet(2, hidden=8, depth=1, embed_dim=4)
    save_checkpoint(tmp_path, sidenet=net, step=1, sidenet_config=net.config(), config={},
                    extra={"backbone": "gmm-ring2d"})
    ckpt = tmp_path / "checkpoint.safetensors"
    before = ckpt.read_bytes()
    with pytest.raises(SystemExit, match=r"--save: .*\(the grid is recorded in an exported SideNet"):
        tune_grid.main(["--sidenet", str(ckpt), "--nfe", "3", "--save"])
    assert ckpt.read_bytes() == before
