"""Loading REPA checkpoints (adapters/torch_sit/sit/checkpoint.py).

Truths used: the outputs of the model that was saved (a loaded copy must reproduce them bit for
bit), the published file layouts (a flat state dict; a training checkpoint
``{"model", "ema", "opt", "args": argparse.Namespace, "steps"}`` written with ``torch.save``; the
legacy ``decoder_blocks.{i}`` = ``blocks.{i + encoder_depth}`` naming), and a pickle whose
unpickling creates a marker file (shown to do so when loaded unsafely, so the refusal is real).
"""

from __future__ import annotations

import argparse
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from adapters.torch_sit.sit.model import SiT, SiTConfig
from adapters.torch_sit.sit.checkpoint import CheckpointMismatch, UnsafeCheckpoint, load_repa_checkpoint

CFG = SiTConfig(depth=2, hidden_size=32, num_heads=2, patch_size=2, input_size=4, num_classes=5, encoder_depth=1,
                z_dims=(8,), projector_dim=16)


def random_sit(seed: int) -> SiT:
    return SiT(CFG, zero_init=False, generator=torch.Generator().manual_seed(seed))


def outputs(model: SiT) -> torch.Tensor:
    """The model on fixed inputs. Compared bitwise below: weights loaded from a file are its bytes,
    untouched, so the same arithmetic on the same numbers gives the same outputs."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4, 4, 4, generator=g)
    with torch.no_grad():
        return model(x, torch.tensor([0.9, 0.4, 0.05]), torch.tensor([1, 4, 5]))


def blank() -> SiT:
    return SiT(CFG, zero_init=True, generator=torch.Generator().manual_seed(123))


def training_checkpoint(model_sd: dict, ema_sd: dict) -> dict:
    net = random_sit(5)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net(torch.randn(1, 4, 4, 4), 0.5, 1).square().mean().backward()
    opt.step()
    args = argparse.Namespace(model="SiT-XL/2", encoder_depth=8, projector_embed_dims="768", cfg_prob=0.1,
                              learning_rate=1e-4, mixed_precision="fp16", seed=0, resume_step=0, legacy=False)
    return {"model": model_sd, "ema": ema_sd, "opt": opt.state_dict(), "args": args, "steps": 400000}


def test_flat_state_dict_loads_strictly_with_identical_outputs(tmp_path):
    src = random_sit(0)
    path = tmp_path / "last.pt"
    torch.save(src.state_dict(), path)
    dst = blank()
    assert not torch.equal(outputs(dst), outputs(src))
    report = load_repa_checkpoint(path, dst)
    assert report.source == "state_dict" and report.num_tensors == len(src.state_dict())
    assert torch.equal(outputs(dst), outputs(src))
    assert "flat state dict" in report.describe()


def test_training_checkpoint_takes_ema_by_default_and_model_on_request(tmp_path):
    raw, ema = random_sit(1), random_sit(2)
    path = tmp_path / "0400000.pt"
    torch.save(training_checkpoint(raw.state_dict(), ema.state_dict()), path)
    dst = blank()
    report = load_repa_checkpoint(path, dst)
    assert report.source == "ema" and report.steps == 400000 and report.args["model"] == "SiT-XL/2"
    assert torch.equal(outputs(dst), outputs(ema))
    assert "EMA" in report.describe() and "400000" in report.describe()
    dst2 = blank()
    assert load_repa_checkpoint(path, dst2, weights="model").source == "model"
    assert torch.equal(outputs(dst2), outputs(raw))


def test_safetensors_file_loads(tmp_path):
    src = random_sit(3)
    path = tmp_path / "sit.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = blank()
    load_repa_checkpoint(path, dst)
    assert torch.equal(outputs(dst), outputs(src))


def test_renamed_key_is_named(tmp_path):
    sd = random_sit(0).state_dict()
    sd["blocks.1.attn.qkv_renamed.weight"] = sd.pop("blocks.1.attn.qkv.weight")
    path = tmp_path / "bad.pt"
    torch.save(sd, path)
    dst = blank()
    before = outputs(dst)
    with pytest.raises(CheckpointMismatch) as err:
        load_repa_checkpoint(path, dst)
    msg = str(err.value)
    assert "missing keys (1): blocks.1.attn.qkv.weight" in msg
    assert "unexpected keys (1): blocks.1.attn.qkv_renamed.weight" in msg
    assert torch.equal(outputs(dst), before)  # nothing was loaded


def test_shape_mismatch_is_named(tmp_path):
    other = SiT(CFG.replace(input_size=8))  # another resolution: pos_embed (1, 16, 32)
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(CheckpointMismatch, match=r"pos_embed: checkpoint \(1, 16, 32\), model \(1, 4, 32\).*resolution"):
        load_repa_checkpoint(path, blank())


def test_legacy_block_names(tmp_path):
    src = random_sit(4)
    sd = {}
    for k, v in src.state_dict().items():  # encoder_depth 1: blocks.1 was saved as decoder_blocks.0
        sd[k.replace("blocks.1.", "decoder_blocks.0.") if k.startswith("blocks.1.") else k] = v
    path = tmp_path / "legacy.pt"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatch, match="legacy=True"):
        load_repa_checkpoint(path, blank())
    dst = blank()
    report = load_repa_checkpoint(path, dst, legacy=True)
    assert report.renamed["decoder_blocks.0.attn.qkv.weight"] == "blocks.1.attn.qkv.weight"
    assert torch.equal(outputs(dst), outputs(src))


class MarkerPayload:
    """Unpickling this object opens (creates) a marker file: code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("layout", ["zip", "plain-pickle"])
def test_pickle_that_runs_code_is_refused(tmp_path, layout):
    marker = tmp_path / "marker"
    obj = {"ema": random_sit(0).state_dict(), "args": MarkerPayload(str(marker)), "steps": 1}
    path = tmp_path / "evil.pt"
    if layout == "zip":
        torch.save(obj, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)
    with pytest.raises(UnsafeCheckpoint, match="refused to load") as err:
        load_repa_checkpoint(path, blank())
    assert not marker.exists()
    if layout == "zip":
        assert "io.open" in str(err.value)
        torch.load(path, weights_only=False)  # the control: an unsafe load does run the payload
    else:
        with open(path, "rb") as fh:
            pickle.load(fh)
    assert marker.exists()


def test_missing_file_and_bad_weights_choice(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        load_repa_checkpoint(tmp_path / "nope.pt", blank())
    path = tmp_path / "flat.pt"
    torch.save(random_sit(0).state_dict(), path)
    with pytest.raises(ValueError, match="flat state dict"):
        load_repa_checkpoint(path, blank(), weights="ema")
    with pytest.raises(ValueError, match="weights must be one of"):
        load_repa_checkpoint(path, blank(), weights="best")
    torch.save({"something": 1}, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match="'ema' entry"):
        load_repa_checkpoint(tmp_path / "odd.pt", blank())


# ------------------------------------------------------------ issue 27: damaged values


def test_27_13_a_nan_weight_is_refused_naming_the_tensor(tmp_path):
    state = random_sit(0).state_dict()
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 4)
    state[name] = state[name].clone()
    state[name].view(-1)[[1, 3]] = torch.tensor([float("nan"), float("inf")])
    torch.save(state, tmp_path / "nan.pt")
    model = blank()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointMismatch, match=rf"nan.pt \(state_dict\): NaN or inf in 1 tensor\(s\): "
                                                 rf"{name} \(2 of {state[name].numel()} values\).*damaged"):
        load_repa_checkpoint(tmp_path / "nan.pt", model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded


def test_27_14_float_weights_stored_as_integers_are_refused_half_precision_loads(tmp_path):
    state = random_sit(0).state_dict()
    cast = {k: (v * 100).to(torch.int64) if k == "x_embedder.proj.weight" else v for k, v in state.items()}
    torch.save(cast, tmp_path / "int.pt")
    with pytest.raises(CheckpointMismatch, match=r"x_embedder.proj.weight: checkpoint torch.int64, model torch.float32"):
        load_repa_checkpoint(tmp_path / "int.pt", blank())
    # deliberate: a float16 checkpoint of the model loads (cast to the model's float32, as load_state_dict does)
    half = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    torch.save(half, tmp_path / "half.pt")
    model = blank()
    load_repa_checkpoint(tmp_path / "half.pt", model)
    assert all(torch.equal(model.state_dict()[k], v.float()) for k, v in half.items() if v.is_floating_point())
