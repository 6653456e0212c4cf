"""Integrity of SideNet files and training checkpoints (issue 12).

Truths used: the safetensors layout itself (8-byte little-endian header length, JSON header with
each tensor's dtype, shape and byte range, then the raw bytes), read here with ``struct`` and
``json``; a SHA-256 written out here from the definition in adapters/torch_sit/files.py's
docstring (fed field by field as length + bytes), used both to check the stored hash against the
file's raw bytes and to craft files whose header lies with a VALID hash (so the structural checks,
not the hash, must catch them); the pre-hash (version 1) layout written by hand; an uninterrupted
training run (bitwise) for resuming from a version-1 checkpoint; and the device of every module
the loader builds (recorded by wrapping ``build_sidenet``).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import warnings

import pytest
import torch
from hypothesis import given, settings, strategies as st
from safetensors import safe_open
from safetensors.torch import save as st_save

from adapters.torch_sit.sidenet import checkpoint as ckpt_mod
from adapters.torch_sit import files as safefile_mod
from adapters.torch_sit.sidenet.chain import ChainConfig
from adapters.torch_sit.sidenet.checkpoint import (
    InvalidFile,
    UnverifiedFileWarning,
    find_checkpoint,
    load_checkpoint,
    load_sidenet,
    save_checkpoint,
    save_sidenet,
)
from adapters.torch_sit.sidenet.networks import MLPSideNet
from adapters.torch_sit.sidenet.train import train

ST_DTYPES = {"F32": "torch.float32", "F64": "torch.float64", "U8": "torch.uint8", "I64": "torch.int64"}


# ----------------------------------------------------------------------------- helpers


def layout(raw: bytes) -> tuple[dict, int]:
    """(JSON header, start of the data region) of a safetensors file's bytes."""
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n


def documented_hash(meta_json: str, entries) -> str:
    """SHA-256 as safefile's docstring defines it; ``entries``: (name, torch dtype name, shape, bytes)."""
    h = hashlib.sha256()

    def feed(b: bytes) -> None:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    feed(b"baquad-sha256-v1")
    feed(meta_json.encode())
    for name, dtype, shape, data in sorted(entries):
        feed(name.encode())
        feed(dtype.encode())
        feed(json.dumps(list(shape)).encode())
        feed(data)
    return h.hexdigest()


def tensor_hash(meta_json: str, tensors: dict) -> str:
    return documented_hash(
        meta_json, [(k, str(t.dtype), tuple(t.shape), t.contiguous().numpy().tobytes()) for k, t in tensors.items()]
    )


def craft(path, tensors: dict, meta, seal: bool = True):
    """Write a safetensors file with ``meta`` (a dict, or a raw string) and, when ``seal``, a
    valid content hash of what is written: a file that is consistent except for what ``meta`` says."""
    meta_json = meta if isinstance(meta, str) else json.dumps(meta)
    md = {"baquad": meta_json}
    if seal:
        md["baquad.sha256"] = tensor_hash(meta_json, tensors)
    path.write_bytes(st_save(tensors, metadata=md))
    return path


def contents(path) -> tuple[dict, dict]:
    """(baquad metadata, tensors) of a file, read with safetensors alone."""
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["baquad"]), {k: f.get_tensor(k) for k in f.keys()}


def random_net(seed: int = 0, **kw) -> MLPSideNet:
    torch.manual_seed(seed)
    net = MLPSideNet(2, **{"hidden": 8, "depth": 1, "embed_dim": 4, **kw})
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net


def small_checkpoint(path, step: int = 7):
    net = random_net(step)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(3, 2), torch.randn(3, 2), 0.5, -0.1).pow(2).sum().backward()
    opt.step()
    ema = {k: p.detach() * 2 for k, p in net.named_parameters()}
    f = save_checkpoint(path, sidenet=net, step=step, sidenet_config=net.config(), config={"seed": step},
                        optimizer=opt, ema=ema)
    return f, net, opt, ema


def assert_names_file(err: pytest.ExceptionInfo, path) -> None:
    assert str(path) in str(err.value), str(err.value)


@pytest.fixture
def built_on(monkeypatch):
    """Devices (by type) on which the loader built SideNets."""
    devices = []
    real = ckpt_mod.build_sidenet

    def spy(config):
        devices.append(torch.empty(0).device.type)  # the default device inside the caller's context
        return real(config)

    monkeypatch.setattr(ckpt_mod, "build_sidenet", spy)
    return devices


# ----------------------------------------------------------------------------- the content hash


def test_stored_hash_is_the_documented_sha256_of_the_raw_bytes(tmp_path):
    net = random_net()
    path = save_sidenet(net, tmp_path / "side")
    raw = path.read_bytes()
    header, start = layout(raw)
    md = header.pop("__metadata__")
    entries = [(k, ST_DTYPES[v["dtype"]], v["shape"], raw[start + v["data_offsets"][0] : start + v["data_offsets"][1]])
               for k, v in header.items()]
    assert md["baquad.sha256"] == documented_hash(md["baquad"], entries)
    assert json.loads(md["baquad"])["version"] == 2


def test_a_flipped_byte_in_the_tensor_data_is_refused(tmp_path):
    # c5b13e5 loaded this file silently with one weight changed
    net = random_net()
    path = save_sidenet(net, tmp_path / "side")
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(InvalidFile, match="do not match the SHA-256") as err:
        load_sidenet(path)
    assert_names_file(err, path)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Bytes and contents of an exported SideNet and of a training checkpoint."""
    d = tmp_path_factory.mktemp("pristine")
    net = random_net(3)
    side = save_sidenet(net, d / "side", extra={"weights": "model"})
    ck, *_ = small_checkpoint(d / "ck")
    return {
        "sidenet": (side.read_bytes(), ({k: v.clone() for k, v in net.state_dict().items()}, net.config())),
        "checkpoint": (ck.read_bytes(), load_checkpoint(ck)),
        "dir": d,
    }


def same_checkpoint(a, b) -> bool:
    # bitwise: a file stores its tensors' bytes, so loading must give them back untouched
    same = lambda x, y: x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    return (a.step == b.step and a.config == b.config and a.sidenet_config == b.sidenet_config
            and same(a.model, b.model) and same(a.ema, b.ema) and same(a.rng, b.rng)
            and a.optimizer["param_groups"] == b.optimizer["param_groups"]
            and all(same(a.optimizer["state"][i], b.optimizer["state"][i]) for i in a.optimizer["state"]))


def flip_and_load(pristine, kind: str, bit: int, region: str):
    raw, original = pristine[kind]
    _, start = layout(raw)
    lo, hi = (0, start) if region == "header" else (start, len(raw))
    pos = lo * 8 + bit % ((hi - lo) * 8)
    data = bytearray(raw)
    data[pos // 8] ^= 1 << (pos % 8)
    path = pristine["dir"] / f"flipped-{kind}.safetensors"
    path.write_bytes(bytes(data))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a flipped file must never pass as an unverified old one
        try:
            loaded = load_sidenet(path) if kind == "sidenet" else load_checkpoint(path)
        except InvalidFile as err:
            assert str(path) in str(err), f"bit {pos}: {err}"
            return
    # only a flip that changes nothing the file means may load, and then to the same contents
    if kind == "sidenet":
        state, config = original
        got = loaded.state_dict()
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in got), pos  # stored bytes, untouched
        assert loaded.config() == config, pos  # e.g. max_freq changes the outputs, not the weights
    else:
        assert same_checkpoint(loaded, original), pos


@pytest.mark.parametrize("kind", ["sidenet", "checkpoint"])
@pytest.mark.parametrize("region", ["header", "data"])
@settings(max_examples=150, deadline=None)
@given(bit=st.integers(min_value=0, max_value=2**40))
def test_any_single_bit_flip_is_refused_or_harmless(pristine, kind, region, bit):
    """Property: flipping any one bit of a saved file (header or tensor data) either raises an
    InvalidFile naming the file, or loads contents identical to the original."""
    flip_and_load(pristine, kind, bit, region)


def test_every_bit_of_the_metadata_and_hash_is_covered(pristine):
    """Exhaustively, one bit per byte of the exported SideNet's header (cycling through the eight
    bit positions): the JSON metadata, the hash and the tensor table."""
    raw, _ = pristine["sidenet"]
    _, start = layout(raw)
    for byte in range(start):
        flip_and_load(pristine, "sidenet", byte * 8 + byte % 8, "header")


# ----------------------------------------------------------------------------- files written before the hash


def legacy(path, tensors: dict, meta: dict):
    """The version-1 layout (no content hash), as c5b13e5 wrote it."""
    return craft(path, tensors, {**meta, "version": 1}, seal=False)


def test_a_file_written_before_the_hash_loads_with_a_warning_naming_it(tmp_path):
    net = random_net()
    path = legacy(tmp_path / "old.safetensors", dict(net.state_dict()),
                  {"format": "baquad-sidenet", "sidenet_config": net.config(), "extra": {}})
    with pytest.warns(UnverifiedFileWarning, match=str(path)):
        loaded = load_sidenet(path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in net.state_dict().items())  # stored bytes, untouched


def test_training_resumes_from_a_checkpoint_written_before_the_hash(tmp_path, stop_training_after):
    arch = MLPSideNet(2, hidden=16, depth=2, embed_dim=8).config()
    cfg = ChainConfig(iters=12, batch_size=16, chain_length=3, lr=3e-3, ema_decay=0.9, seed=5)
    run = lambda out, **kw: train(cfg, backbone="gmm-ring2d", out=out, sidenet_config=arch, progress=False,
                                  log=lambda *a: None, **kw)
    whole = run(tmp_path / "a", ckpt_every=6)
    with stop_training_after(8):
        run(tmp_path / "b", ckpt_every=6)
    f = tmp_path / "b" / "checkpoint.safetensors"
    meta, tensors = contents(f)
    legacy(f, tensors, meta)  # the same checkpoint, as a version-1 file
    with pytest.warns(UnverifiedFileWarning, match=str(f)):
        resumed = run(tmp_path / "b", ckpt_every=6)
    assert resumed.summary["resumed_from"] == 6
    a, b = whole.sidenet.state_dict(), resumed.sidenet.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the resume promise: bit for bit (same machine, threads)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_checkpoint(tmp_path / "b")  # rewritten with a hash: no warning any more


def test_a_current_file_without_its_hash_or_from_the_future_is_refused(tmp_path):
    net = random_net()
    meta = {"format": "baquad-sidenet", "version": 2, "sidenet_config": net.config(), "extra": {}}
    path = craft(tmp_path / "nohash.safetensors", dict(net.state_dict()), meta, seal=False)
    with pytest.raises(InvalidFile, match="without its content hash") as err:
        load_sidenet(path)
    assert_names_file(err, path)
    path = craft(tmp_path / "future.safetensors", dict(net.state_dict()), {**meta, "version": 3})
    with pytest.raises(InvalidFile, match="format version 3 by a newer baquad"):
        load_sidenet(path)


# ----------------------------------------------------------------------------- what the path is


def test_a_fifo_is_refused_without_being_opened(tmp_path, monkeypatch):
    # c5b13e5 opened it and blocked forever; safetensors must not even be asked to open it
    def no_open(*args, **kwargs):
        raise AssertionError("the FIFO was opened")

    monkeypatch.setattr(safefile_mod, "safe_open", no_open)
    fifo = tmp_path / "side.safetensors"
    os.mkfifo(fifo)
    for load in (load_sidenet, load_checkpoint):
        with pytest.raises(InvalidFile, match=r"is a named pipe \(FIFO\), not a regular file") as err:
            load(fifo)
        assert_names_file(err, fifo)
    out = tmp_path / "run"
    out.mkdir()
    os.mkfifo(out / "checkpoint.safetensors")
    with pytest.raises(InvalidFile, match="named pipe"):
        find_checkpoint(out)  # not "no checkpoint": training would start over beside it
    with pytest.raises(InvalidFile, match="named pipe"):
        load_checkpoint(out)


def test_a_directory_in_place_of_the_file_is_reported_as_such(tmp_path):
    d = tmp_path / "side.safetensors"
    d.mkdir()
    for load in (load_sidenet, load_checkpoint):
        with pytest.raises(InvalidFile, match="is a directory, not a regular file") as err:
            load(d)
        assert_names_file(err, d)
    out = tmp_path / "run"
    (out / "checkpoint.safetensors").mkdir(parents=True)
    with pytest.raises(InvalidFile, match="is a directory"):
        find_checkpoint(out)
    with pytest.raises(InvalidFile, match="checkpoint.safetensors: is a directory"):
        load_checkpoint(out)
    with pytest.raises(InvalidFile, match="checkpoint.safetensors: is a directory"):
        load_sidenet(out)


def test_an_os_error_on_open_is_reported_with_its_cause(tmp_path, monkeypatch):
    # root reads a chmod-000 file, so the failing open is simulated
    path = save_sidenet(random_net(), tmp_path / "side")

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(safefile_mod, "safe_open", denied)
    with pytest.raises(PermissionError, match="Permission denied") as err:
        load_sidenet(path)
    assert_names_file(err, path)
    assert not isinstance(err.value, FileNotFoundError)


def test_an_os_error_on_stat_is_reported_with_its_cause(tmp_path, monkeypatch):
    out = tmp_path / "run"
    small_checkpoint(out)
    target = str(out / "checkpoint.safetensors")
    real_stat = os.stat

    def stat(path, *args, **kwargs):
        if str(path) == target:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(safefile_mod.os, "stat", stat)
    with pytest.raises(PermissionError, match="Permission denied") as err:
        find_checkpoint(out)  # c5b13e5: None, "no checkpoint", and training started over
    assert_names_file(err, target)
    with pytest.raises(PermissionError, match="Permission denied"):
        load_checkpoint(out)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors: no such file"):
        load_sidenet(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty: a directory with no sidenet.safetensors or checkpoint.safetensors"):
        load_sidenet(tmp_path / "empty")
    assert find_checkpoint(tmp_path / "empty") is None


# ----------------------------------------------------------------------------- headers that lie


ARCH_CHANGES = {
    "dim": 3, "hidden": 9, "depth": 2, "embed_dim": 6, "num_classes": 4, "guidance": True,
    "offset_log_sign": False, "path_features": True, "class": "ConvSideNet",
}


@pytest.mark.parametrize("seal", [True, False], ids=["valid-hash", "version-1"])
@pytest.mark.parametrize("field, value", list(ARCH_CHANGES.items()))
def test_an_architecture_field_that_disagrees_with_the_tensors_is_refused(tmp_path, built_on, field, value, seal):
    net = random_net()
    meta = {"format": "baquad-sidenet", "version": 2 if seal else 1, "sidenet_config": {**net.config(), field: value},
            "extra": {}}
    path = craft(tmp_path / "lie.safetensors", dict(net.state_dict()), meta, seal=seal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        with pytest.raises(InvalidFile, match="does not describe|invalid SideNet config|needs at least") as err:
            load_sidenet(path)
    assert_names_file(err, path)
    assert set(built_on) <= {"meta"}  # nothing was built with real memory


@settings(max_examples=40, deadline=None)
@given(field=st.sampled_from(["dim", "hidden", "depth", "embed_dim", "num_classes"]), value=st.integers(1, 10**9))
def test_any_size_in_the_header_that_disagrees_is_refused_before_allocating(tmp_path_factory, field, value):
    """Property: a header size that is not the stored one (up to 1e9: gigabytes of weights, or
    a billion layers) is refused without building anything outside the meta device."""
    net = random_net()
    if net.config()[field] == value:
        return
    path = craft(tmp_path_factory.mktemp("lie") / "lie.safetensors", dict(net.state_dict()),
                 {"format": "baquad-sidenet", "version": 2, "sidenet_config": {**net.config(), field: value}, "extra": {}})
    devices = []
    real = ckpt_mod.build_sidenet

    def spy(config):
        devices.append(torch.empty(0).device.type)
        return real(config)

    ckpt_mod.build_sidenet = spy
    try:
        with pytest.raises(InvalidFile) as err:
            load_sidenet(path)
    finally:
        ckpt_mod.build_sidenet = real
    assert_names_file(err, path)
    assert set(devices) <= {"meta"}
    if field == "depth" and 2 * value > len(net.state_dict()):
        assert devices == []  # more layers than stored tensors: refused before even the meta build


def test_the_issue_example_hidden_30000_is_refused_before_allocating(tmp_path, built_on):
    net = random_net()
    meta = {"format": "baquad-sidenet", "version": 1, "sidenet_config": {**net.config(), "hidden": 30000}, "extra": {}}
    path = legacy(tmp_path / "big.safetensors", dict(net.state_dict()), meta)
    with pytest.warns(UnverifiedFileWarning), pytest.raises(InvalidFile, match=r"inp.weight stored with shape \(8, 4\), the config needs \(30000, 4\)"):
        load_sidenet(path)
    assert built_on == ["meta"]


def sidenet_meta(net, **over):
    return {"format": "baquad-sidenet", "version": 2, "sidenet_config": net.config(), "extra": {}, **over}


@pytest.mark.parametrize(
    "meta, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('"text"', "must be a JSON object"),
        ({"format": "baquad-sidenet", "sidenet_config": {}, "extra": {}}, "'version' must be an integer >= 1, got None"),
        ("version-str", "'version' must be an integer >= 1, got '2'"),
        ("version-bool", "'version' must be an integer >= 1, got True"),
        ("no-format", "not a baquad SideNet file .format None"),
        ("format-other", "not a baquad SideNet file .format 'pickle'"),
        ("no-config", "the metadata has no 'sidenet_config' field"),
        ("config-list", "'sidenet_config' must be a dict"),
        ("no-extra", "the metadata has no 'extra' field"),
        ("extra-int", "'extra' must be a dict"),
        ("class-unknown", "invalid SideNet config: build_sidenet: unknown SideNet class 'Nope'"),
        ("hidden-str", "invalid SideNet config: MLPSideNet: hidden must be an integer >= 1, got '8'"),
        ("hidden-neg", "invalid SideNet config: MLPSideNet: hidden must be an integer >= 1, got -8"),
        ("max-freq-nan", "invalid SideNet config: MLPSideNet: max_freq must be a finite number > 0, got nan"),
        ("unknown-arg", "invalid SideNet config: build_sidenet: MLPSideNet has no argument.*widht"),
    ],
)
def test_malformed_sidenet_headers_are_refused_naming_the_file(tmp_path, meta, match):
    net = random_net()
    variants = {
        "version-str": sidenet_meta(net, version="2"),
        "version-bool": sidenet_meta(net, version=True),
        "no-format": {k: v for k, v in sidenet_meta(net).items() if k != "format"},
        "format-other": sidenet_meta(net, format="pickle"),
        "no-config": {k: v for k, v in sidenet_meta(net).items() if k != "sidenet_config"},
        "config-list": sidenet_meta(net, sidenet_config=[1]),
        "no-extra": {k: v for k, v in sidenet_meta(net).items() if k != "extra"},
        "extra-int": sidenet_meta(net, extra=5),
        "class-unknown": sidenet_meta(net, sidenet_config={**net.config(), "class": "Nope"}),
        "hidden-str": sidenet_meta(net, sidenet_config={**net.config(), "hidden": "8"}),
        "hidden-neg": sidenet_meta(net, sidenet_config={**net.config(), "hidden": -8}),
        "max-freq-nan": sidenet_meta(net, sidenet_config={**net.config(), "max_freq": float("nan")}),
        "unknown-arg": sidenet_meta(net, sidenet_config={**net.config(), "widht": 3}),
    }
    path = craft(tmp_path / "bad.safetensors", dict(net.state_dict()), variants[meta] if isinstance(meta, str) and meta in variants else meta)
    with pytest.raises(InvalidFile, match=match) as err:
        load_sidenet(path)
    assert_names_file(err, path)


def checkpoint_variants(meta: dict, tensors: dict) -> dict:
    """name -> (meta, tensors, expected message) for a checkpoint whose header lies."""
    om = meta["optimizer"]
    drop = lambda d, k: {x: y for x, y in d.items() if x != k}
    model_keys = sorted(k for k in tensors if k.startswith("model."))
    return {
        "step-negative": ({**meta, "step": -1}, tensors, "'step' must be an integer >= 0, got -1"),
        "step-str": ({**meta, "step": "7"}, tensors, "'step' must be an integer >= 0"),
        "step-bool": ({**meta, "step": True}, tensors, "'step' must be an integer >= 0"),
        "no-step": (drop(meta, "step"), tensors, "no 'step' field"),
        "config-null": ({**meta, "config": None}, tensors, "'config' must be a dict"),
        "has-ema-str": ({**meta, "has_ema": "yes"}, tensors, "'has_ema' must be true or false"),
        "has-ema-false": ({**meta, "has_ema": False}, tensors, "EMA weights are stored but the metadata says has_ema = false"),
        "ema-missing": (meta, {k: v for k, v in tensors.items() if not k.startswith("ema.")}, "does not describe the stored EMA weights"),
        "model-missing": (meta, drop(tensors, model_keys[0]), "does not describe the stored weights.*missing"),
        "extra-tensor": (meta, {**tensors, "junk.x": torch.zeros(1)}, "unexpected tensor 'junk.x'"),
        "optimizer-str": ({**meta, "optimizer": "adam"}, tensors, "'optimizer' must be a dict or null"),
        "optimizer-null": ({**meta, "optimizer": None}, tensors, "optimiser state tensors are stored but the metadata has no optimizer"),
        "groups-index": ({**meta, "optimizer": {**om, "param_groups": [{**om["param_groups"][0], "params": [0, 1]}]}},
                         tensors, "param groups index the parameters"),
        "state-keys": ({**meta, "optimizer": {**om, "state_keys": ["0", "99"]}}, tensors, "state_keys"),
        "optim-shape": (meta, {**tensors, "optim.0.exp_avg": torch.zeros(3, 3)}, r"optim.0.exp_avg has shape \(3, 3\)"),
        "rng-size": (meta, {**tensors, "rng.torch": torch.zeros(10, dtype=torch.uint8)}, "rng.torch holds 10 bytes"),
        "rng-dtype": (meta, {**tensors, "rng.torch": torch.zeros(5056)}, "must be a 1-D uint8 tensor"),
        "format-sidenet": ({**meta, "format": "baquad-sidenet"}, tensors, "not a baquad SideNet training checkpoint"),
        "nan-weight": (meta, {**tensors, model_keys[0]: torch.full_like(tensors[model_keys[0]], float("nan"))},
                       f"{model_keys[0]} holds NaN or inf"),
        "nan-moment": (meta, {**tensors, "optim.0.exp_avg_sq": torch.full_like(tensors["optim.0.exp_avg_sq"], float("inf"))},
                       "optim.0.exp_avg_sq holds NaN or inf"),
    }


VARIANTS = sorted(checkpoint_variants({"optimizer": {"param_groups": [{}]}}, {"model.a": torch.zeros(1), "optim.0.exp_avg_sq": torch.zeros(1)}))


@pytest.mark.parametrize("seal", [True, False], ids=["valid-hash", "version-1"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_checkpoint_headers_that_disagree_with_the_tensors_are_refused(tmp_path, variant, seal):
    f, *_ = small_checkpoint(tmp_path / "ok")
    meta, tensors = contents(f)
    bad_meta, bad_tensors, match = checkpoint_variants(meta, tensors)[variant]
    path = craft(tmp_path / "bad.safetensors", bad_tensors, {**bad_meta, "version": 2 if seal else 1}, seal=seal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        with pytest.raises(InvalidFile, match=match) as err:
            load_checkpoint(path)
    assert_names_file(err, path)


# ----------------------------------------------------------------------------- choices and writing


@pytest.mark.parametrize("weights", ["emma", "", "EMA", None, 1])
def test_an_unknown_weights_choice_is_refused_listing_the_valid_ones(tmp_path, weights):
    f, *_ = small_checkpoint(tmp_path)
    with pytest.raises(ValueError, match="weights: must be one of 'auto', 'model', 'ema'"):
        load_sidenet(f, weights=weights)  # c5b13e5: "emma" returned the raw weights silently
    with pytest.raises(ValueError, match="weights: must be one of"):
        load_sidenet(tmp_path / "missing.safetensors", weights=weights)  # before touching the file


def test_weights_choices_give_what_they_name(tmp_path):
    f, net, _, ema = small_checkpoint(tmp_path / "ck")
    for choice, want in (("model", dict(net.state_dict())), ("ema", ema), ("auto", ema)):
        got = load_sidenet(f, weights=choice).state_dict()
        assert all(torch.equal(got[k], want[k]) for k in want), choice  # stored bytes, untouched
    exported = save_sidenet(net, tmp_path / "ema.safetensors", state=ema, extra={"weights": "ema"})
    assert all(torch.equal(load_sidenet(exported, weights="ema").state_dict()[k], ema[k]) for k in ema)
    with pytest.raises(ValueError, match="weights='model', but this exported SideNet holds the 'ema' weights") as err:
        load_sidenet(exported, weights="model")
    assert_names_file(err, exported)
    plain = save_sidenet(net, tmp_path / "plain")
    with pytest.raises(ValueError, match="does not record which weights it holds"):
        load_sidenet(plain, weights="ema")
    nomodel = save_checkpoint(tmp_path / "noema", sidenet=net, step=1, sidenet_config=net.config(), config={})
    with pytest.raises(ValueError, match="weights='ema', but the checkpoint has no EMA weights"):
        load_sidenet(nomodel, weights="ema")


def test_non_finite_or_foreign_weights_are_never_written(tmp_path):
    net = random_net()
    bad = {k: v.clone() for k, v in net.state_dict().items()}
    bad["out.bias"][0] = float("nan")
    with pytest.raises(ValueError, match="out.bias holds NaN or inf; refusing to write"):
        save_sidenet(net, tmp_path / "s", state=bad)
    with pytest.raises(ValueError, match="state: the SideNet config does not describe the weights: unexpected x"):
        save_sidenet(net, tmp_path / "s", state={**net.state_dict(), "x": torch.zeros(1)})
    with torch.no_grad():
        net.out.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="model.out.weight holds NaN or inf; refusing to write"):
        save_checkpoint(tmp_path / "ck", sidenet=net, step=1, sidenet_config=net.config(), config={})
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_inconsistent_checkpoint_arguments_are_refused_at_save(tmp_path):
    net = random_net()
    with pytest.raises(ValueError, match="sidenet_config: the SideNet config does not describe"):
        save_checkpoint(tmp_path, sidenet=net, step=1, sidenet_config={**net.config(), "hidden": 9}, config={})
    with pytest.raises(ValueError, match="ema: the SideNet config does not describe the EMA weights"):
        save_checkpoint(tmp_path, sidenet=net, step=1, sidenet_config=net.config(), config={}, ema={"x": torch.zeros(1)})
    with pytest.raises(ValueError, match="step: must be an integer >= 0"):
        save_checkpoint(tmp_path, sidenet=net, step=-1, sidenet_config=net.config(), config={})
    other = torch.optim.AdamW(random_net(1).parameters())
    with pytest.raises(ValueError, match=r"optimizer: must optimise exactly sidenet.parameters\(\)"):
        save_checkpoint(tmp_path, sidenet=net, step=1, sidenet_config=net.config(), config={}, optimizer=other)
    assert list(tmp_path.iterdir()) == []
