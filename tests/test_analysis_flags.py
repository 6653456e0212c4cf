"""The analysis scripts refuse bad flags at parse time and never write where they must not.

- A property test over the numeric flags of nfe_sweep, prediction_drift, sidenet_ablation,
  chain_bias, host_step, error_source and tune_grid: every out-of-range value (negative, zero where the flag must be
  positive, NaN, infinities, numbers that are not integers, words) ends the command with
  argparse's exit status 2 and a message naming the flag, and nothing is written: not in the
  working directory (where ``runs/`` would go), not in the committed ``analysis/figures/``.
  The in-range values of the same flags parse to the number given (so the refusals come from
  the range checks, not from something else in the command line).
- A ``--quick`` run never writes into ``analysis/figures/``; a flow without a density and a
  SideNet for states of another dimension are refused with a message, before anything is
  written.

Independent truth: the ranges are written out here from the flags' documented meaning.
"""

from __future__ import annotations

import importlib
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from analysis._common import FIGURES

pytest.importorskip("matplotlib")

#: flag kinds: (is a valid value?, integer flag?)
POSITIVE_INT = (lambda v: v >= 1, True)
AT_LEAST_2 = (lambda v: v >= 2, True)
EVEN_AT_LEAST_2 = (lambda v: v >= 2 and v % 2 == 0, True)
NON_NEGATIVE_INT = (lambda v: v >= 0, True)
POSITIVE = (lambda v: math.isfinite(v) and v > 0, False)
UNIT_TIME = (lambda v: math.isfinite(v) and 0 <= v <= 1, False)
GENERATION_STEP = (lambda v: math.isfinite(v) and -1 <= v < 0, False)
OPEN_UNIT_TIME = (lambda v: math.isfinite(v) and 0 < v < 1, False)
FINITE = (lambda v: math.isfinite(v), False)

#: (script, flag, kind)
FLAGS = [
    ("nfe_sweep", "--iters", POSITIVE_INT),
    ("nfe_sweep", "--batch", POSITIVE_INT),
    ("nfe_sweep", "--n", AT_LEAST_2),
    ("nfe_sweep", "--seed", NON_NEGATIVE_INT),
    ("nfe_sweep", "--nfe", POSITIVE_INT),
    ("nfe_sweep", "--shift", POSITIVE),
    ("prediction_drift", "--steps", POSITIVE_INT),
    ("prediction_drift", "--samples", POSITIVE_INT),
    ("prediction_drift", "--sub", EVEN_AT_LEAST_2),
    ("sidenet_ablation", "--nfe", POSITIVE_INT),
    ("sidenet_ablation", "--n", AT_LEAST_2),
    ("sidenet_ablation", "--seed", NON_NEGATIVE_INT),
    ("chain_bias", "--n", POSITIVE_INT),
    ("chain_bias", "--t0", UNIT_TIME),
    ("chain_bias", "--h", GENERATION_STEP),
    ("host_step", "--steps", POSITIVE_INT),
    ("host_step", "--repeats", POSITIVE_INT),
    ("host_step", "--threads", POSITIVE_INT),
    ("error_source", "--nfe", POSITIVE_INT),
    ("error_source", "--n", AT_LEAST_2),
    ("error_source", "--seed", NON_NEGATIVE_INT),
    ("error_source", "--shift", POSITIVE),
    ("error_source", "--oracle-rtol", POSITIVE),
    ("error_source", "--cuts", OPEN_UNIT_TIME),
    ("error_source", "--guidance-scale", FINITE),
    ("tune_grid", "--n", AT_LEAST_2),
    ("tune_grid", "--seed", NON_NEGATIVE_INT),
    ("tune_grid", "--nfe", POSITIVE_INT),
    ("cost_model", "--batch", POSITIVE_INT),
    ("cost_model", "--nfe", POSITIVE_INT),
    ("cost_model", "--guidance-scale", POSITIVE),
    ("sidenet_design", "--n", AT_LEAST_2),
    ("sidenet_design", "--seed", NON_NEGATIVE_INT),
    ("sidenet_design", "--nfe", POSITIVE_INT),
    ("sidenet_design", "--iters", POSITIVE_INT),
    ("sidenet_design", "--batch", POSITIVE_INT),
    ("sidenet_design", "--lr", POSITIVE),
    ("sidenet_design", "--threads", POSITIVE_INT),
    ("own_model", "--minutes", POSITIVE),
    ("own_model", "--threads", POSITIVE_INT),
    ("own_model", "--n", AT_LEAST_2),
    ("own_model", "--seed", NON_NEGATIVE_INT),
    ("own_model", "--model-steps", POSITIVE_INT),
    ("digits_never_worse", "--n", AT_LEAST_2),
    ("digits_never_worse", "--nfe", POSITIVE_INT),
    ("digits_never_worse", "--threads", POSITIVE_INT),
    ("learned_ablation", "--n", AT_LEAST_2),
    ("learned_ablation", "--nfe", POSITIVE_INT),
    ("learned_ablation", "--threads", POSITIVE_INT),
    ("inversion_distance", "--n", AT_LEAST_2),
    ("inversion_distance", "--guidance-scale", POSITIVE),
    ("inversion_distance", "--shift", POSITIVE),
    ("inversion_distance", "--threads", POSITIVE_INT),
]

WORDS = st.sampled_from(["", " ", "a", "a,b", "3,4", "ten", "1/2", "0x10", "1_0_", "--", "None", "true"])


def bad_values(kind) -> st.SearchStrategy[str]:
    valid, integer = kind
    if integer:
        ints = st.integers(min_value=-10**6, max_value=10**6).filter(lambda v: not valid(v)).map(str)
        floats = st.floats(allow_nan=True, allow_infinity=True).map(repr)  # never an integer literal
        return st.one_of(ints, floats, WORDS)
    floats = st.floats(allow_nan=True, allow_infinity=True).filter(lambda v: not valid(v)).map(repr)
    return st.one_of(floats, st.sampled_from(["nan", "inf", "-inf", "NaN", "Infinity"]), WORDS)


def good_values(kind) -> st.SearchStrategy:
    valid, integer = kind
    if integer:
        return st.integers(min_value=0, max_value=10**6).filter(valid)
    return st.floats(min_value=-1.0, max_value=1e6).filter(valid)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A SideNet path that exists (with the summary.json sidenet_ablation needs): parsing checks
    only that it is there, so an empty file serves."""
    folder = tmp_path_factory.mktemp("inputs") / "run"
    folder.mkdir()
    (folder / "sidenet.safetensors").write_bytes(b"")
    (folder / "summary.json").write_text("{}")
    return folder / "sidenet.safetensors"


def base_argv(script: str, sidenet: Path) -> list[str]:
    return {"sidenet_ablation": [str(sidenet)], "chain_bias": ["--sidenet", str(sidenet)],
            "tune_grid": ["--sidenet", str(sidenet)], "learned_ablation": [f"start={sidenet}"]}.get(script, [])


def figures_state() -> dict:
    return {p.name: p.stat().st_mtime_ns for p in FIGURES.iterdir()}


@pytest.mark.parametrize("script, flag, kind", FLAGS, ids=[f"{s}{f}" for s, f, _ in FLAGS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_out_of_range_numeric_flags_are_refused_at_parse_time(script, flag, kind, data, inputs, tmp_path,
                                                              monkeypatch, capsys):
    module = importlib.import_module(f"analysis.{script}")
    monkeypatch.chdir(tmp_path)
    before = figures_state()
    value = data.draw(bad_values(kind), label="value")
    with pytest.raises(SystemExit) as info:
        module.main(base_argv(script, inputs) + [f"{flag}={value}"])
    assert info.value.code == 2, (flag, value, info.value.code)
    assert f"argument {flag}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [] and figures_state() == before

    # one value alone: sidenet_ablation's scheme-A column needs a largest budget >= 2
    good = data.draw(good_values(AT_LEAST_2 if (script, flag) == ("sidenet_ablation", "--nfe") else kind), label="good")
    args = module.parse_args(base_argv(script, inputs) + [f"{flag}={good!r}"] + (["--out", str(tmp_path)]
                                                                                  if script not in ("chain_bias", "tune_grid") else []))
    got = getattr(args, flag.lstrip("-").replace("-", "_"))
    assert (got[0] if isinstance(got, list) else got) == good
    assert list(tmp_path.iterdir()) == []


def test_quick_runs_never_write_into_the_committed_figures(tmp_path, monkeypatch):
    from analysis import prediction_drift

    monkeypatch.chdir(tmp_path)
    before = figures_state()
    assert prediction_drift.main(["--quick", "--steps", "2", "--perceptions", "anchor-only"]) == 0
    assert (tmp_path / "runs" / "quick" / "prediction_drift_gmm-ring2d.md").is_file()
    assert figures_state() == before
    for script in ("prediction_drift", "nfe_sweep"):
        with pytest.raises(SystemExit, match="never writes into the committed figures"):
            importlib.import_module(f"analysis.{script}").main(["--quick", "--out", str(FIGURES)])
    assert figures_state() == before


@pytest.mark.parametrize("argv, pattern", [
    (["nfe_sweep", "--quick", "--schedule", "bogus"], "argument --schedule: unknown schedule 'bogus'"),
    (["nfe_sweep", "--flow", "linear-2d"], "argument --flow: 'linear-2d' has no exact density"),
    (["sidenet_ablation", "SIDENET", "--flow", "rotation-2d"], "argument --flow: 'rotation-2d' has no exact density"),
    (["prediction_drift", "--flow", "nowhere"], "argument --flow: unknown flow 'nowhere'"),
    (["prediction_drift", "--perceptions", "anchor-only,psychic"], "argument --perceptions: unknown perception"),
    (["chain_bias", "--sidenet", "SIDENET", "--t0", "2.0"], r"argument --t0: must be a finite number >= 0 and <= 1, got '2.0'"),
    (["chain_bias", "--sidenet", "SIDENET", "--h", "0.1"], r"argument --h: must be a finite number in \[-1, 0\)"),
    (["sidenet_ablation", "SIDENET", "--nfe", "1"], "--nfe: the largest budget must be >= 2"),
    (["prediction_drift", "--steps", "a,b"], "argument --steps: expected an integer, got 'a,b'"),
    (["error_source", "--flow", "linear-2d"], "argument --flow: 'linear-2d' has no exact density"),
    (["error_source", "--flow", "gmm-32d", "--backbone", "digits-sit"], "--flow and --backbone: give one of them"),
    (["error_source", "--sidenet", "nowhere.safetensors"], "does not exist"),
])
def test_bad_choices_are_refused_with_a_message_before_anything_is_written(argv, pattern, inputs, tmp_path,
                                                                          monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    before = figures_state()
    module = importlib.import_module(f"analysis.{argv[0]}")
    with pytest.raises(SystemExit) as info:
        module.main([str(inputs) if a == "SIDENET" else a for a in argv[1:]])
    assert info.value.code == 2
    import re

    assert re.search(pattern, capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == [] and figures_state() == before


def test_a_sidenet_for_other_states_is_refused_by_every_script(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from adapters.torch_sit.sidenet.checkpoint import save_sidenet
    from adapters.torch_sit.sidenet.networks import MLPSideNet

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = save_sidenet(MLPSideNet(3, hidden=8, depth=1, embed_dim=4), inputs / "sidenet.safetensors")
    (inputs / "summary.json").write_text("{}")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    before = figures_state()
    runs = {
        "prediction_drift": ["--quick", "--sidenet", str(path)],
        "chain_bias": ["--sidenet", str(path), "--n", "4"],
        "sidenet_ablation": [str(path), "--n", "4"],
        "nfe_sweep": ["--quick", "--sidenet", str(path)],
    }
    for script, argv in runs.items():
        with pytest.raises(SystemExit, match=r"MLPSideNet for states of 3 number\(s\) per sample .* \(B, 2\), 2 per"):
            importlib.import_module(f"analysis.{script}").main(argv)
    assert list(work.iterdir()) == [] and figures_state() == before
    with pytest.raises(SystemExit, match="does not exist"):
        importlib.import_module("analysis.chain_bias").main(["--sidenet", str(tmp_path / "missing.safetensors")])


@pytest.mark.parametrize("argv, named", [
    (["digits_never_worse", "--reference", "MISSING"], "--reference: "),
    (["digits_never_worse", "--sidenet", "MISSING"], "--sidenet: "),
    (["digits_never_worse", "--reference", "GARBAGE"], "--reference: "),
    (["learned_ablation", "mine=GARBAGE"], "mine=GARBAGE"),
])
def test_the_digits_scripts_refuse_unreadable_files_in_one_line(argv, named, tmp_path):
    """A missing or garbage reference set or SideNet ends the digits scripts with one line naming
    the argument (no traceback), before anything is written."""
    pytest.importorskip("torch")
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file")
    paths = {"MISSING": str(tmp_path / "missing.safetensors"), "GARBAGE": str(tmp_path / "garbage.safetensors")}
    argv = [a.replace("MISSING", paths["MISSING"]).replace("GARBAGE", paths["GARBAGE"]) for a in argv]
    named = named.replace("GARBAGE", paths["GARBAGE"])
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as info:
        importlib.import_module(f"analysis.{argv[0]}").main(argv[1:] + ["--n", "2", "--out", str(out)])
    assert str(info.value).startswith(named) and "\n" not in str(info.value)
    assert not out.exists()
