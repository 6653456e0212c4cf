"""Mutation check: plant known, plausible bugs one at a time and see which tests catch them.

    python tests/mutation_check.py                    # every mutant (4 to 15 minutes on 2 cores, by load)
    python tests/mutation_check.py --list             # the mutants and the tests each one runs
    python tests/mutation_check.py ema-update-skipped loss-norm-h-as-g   # some of them
    python tests/mutation_check.py --every-failure    # list every failing test, not only the first
    python tests/mutation_check.py --python .venv/bin/python --keep      # another interpreter; keep the copies

For each mutant the script copies the repository's files (tracked and untracked-but-not-ignored,
as ``git ls-files`` lists them) into a temporary directory, replaces one exact snippet of one
source file (the snippet must occur exactly once: a snippet that no longer matches means the
code moved and the mutant list needs updating, and is reported as STALE), and runs
``python -m pytest -x -q`` on the test files that should catch it, with the copy first on
``PYTHONPATH``. It prints, per mutant, the first failing test ("caught by ...", or all of them with
``--every-failure``), SURVIVED, or BROKEN (pytest could not run the files), and exits with
status 1 unless every mutant was caught. Nothing in the working tree changes.

The mutants are bugs that once passed the whole suite (the EMA, the loss normalisation, the
backward offset of the corrector simulation, guidance in training) and bugs in the core
numerics and the baselines. A surviving mutant is a hole in the tests: add a test that compares
the code with independent truth until it is caught. This file is not collected by pytest (its
name does not start with ``test_``); see docs/testing.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAINING_TESTS = ("tests/test_chain_truth.py", "tests/test_chain.py", "tests/test_one_step.py",
                  "tests/test_train_resume.py", "tests/test_train_refusals.py",
                  "tests/test_training_improves_sampling.py")
CORE_TESTS = ("tests/test_bianchor.py", "tests/test_one_step.py", "tests/test_rules.py", "tests/test_sidenet.py")
BASELINE_TESTS = ("tests/test_baselines_fixed.py", "tests/test_baselines_order.py")


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str


CHAIN = "adapters/torch_sit/sidenet/chain.py"
TRAIN = "adapters/torch_sit/sidenet/train.py"
BIANCHOR = "baquad/bianchor.py"

MUTANTS = (
    Mutant("ema-update-skipped", CHAIN, "self.ema[k].lerp_(p.detach(), 1.0 - cfg.ema_decay)",
           "self.ema[k].lerp_(p.detach(), 0.0)", TRAINING_TESTS,
           "the EMA never moves: the exported SideNet is the zero-initialised one (anchor-only)"),
    Mutant("ema-decay-inverted", CHAIN, "self.ema[k].lerp_(p.detach(), 1.0 - cfg.ema_decay)",
           "self.ema[k].lerp_(p.detach(), cfg.ema_decay)", TRAINING_TESTS,
           "e = (1 - beta) e + beta w instead of beta e + (1 - beta) w"),
    Mutant("ema-resumed-from-raw-weights", TRAIN, "src = ck.ema if ck.ema is not None else ck.model",
           "src = ck.model", TRAINING_TESTS, "a resumed run restarts the EMA from the raw weights"),
    Mutant("loss-norm-h-as-g", CHAIN, 'hs = hs if cfg.loss_norm == "g" else hs.sqrt()', "hs = hs",
           TRAINING_TESTS, 'loss_norm "h" (the default recipe\'s) divides by h^2 like "g"'),
    Mutant("loss-mask-ignored", CHAIN, "mask = valid.to(lf.dtype)", "mask = torch.ones_like(lf)",
           TRAINING_TESTS, "empty intervals of ended chains count in the loss"),
    Mutant("backward-loss-offset-sign", CHAIN, "d_in = torch.cat([h.reshape(-1), -h.reshape(-1)])",
           "d_in = torch.cat([h.reshape(-1), h.reshape(-1)])", TRAINING_TESTS,
           "the backward loss asks the SideNet for the offset +h instead of -h"),
    Mutant("backward-weight-ignored", CHAIN, "(cfg.forward_weight * sum_f + cfg.backward_weight * sum_b)",
           "(cfg.forward_weight * sum_f + sum_b)", TRAINING_TESTS, "backward_weight has no effect on the gradient"),
    Mutant("corrector-backward-offset-sign", BIANCHOR,
           "tuple(nodes[k] - 1.0 for k in backward)",
           "tuple(1.0 - nodes[k] for k in backward)", TRAINING_TESTS + CORE_TESTS,
           "the backward refinement (the corrector simulation of state_update='corrector', and sampling) "
           "looks forward from the terminal anchor"),
    Mutant("state-update-swapped", CHAIN, 'bi=cfg.state_update == "corrector"', 'bi=cfg.state_update == "predictor"',
           TRAINING_TESTS, "the chain simulates the corrector when asked for the predictor and vice versa"),
    Mutant("guidance-not-in-simulation", CHAIN,
           "NeuralPerception(unwrap(sidenet), labels, cfg.guidance_scale)", "NeuralPerception(unwrap(sidenet), labels, None)",
           TRAINING_TESTS, "the simulation's SideNet probes never get the guidance scale"),
    Mutant("guidance-not-in-loss", CHAIN, "gs = None if guidance is None else torch.full_like(t, float(guidance))",
           "gs = None", TRAINING_TESTS, "the loss forward never passes the guidance scale to the SideNet"),
    Mutant("labels-not-in-loss", CHAIN, "lab = None if ro.labels is None else ro.labels[samples].repeat(2 * K)",
           "lab = None", TRAINING_TESTS, "the loss forward drops the class labels"),
    Mutant("grad-clip-skipped", CHAIN, "clip_grad_norm_(self.module.parameters(), cfg.grad_clip)",
           "clip_grad_norm_(self.module.parameters(), float('inf'))", TRAINING_TESTS, "grad_clip has no effect"),
    Mutant("min-lr-ratio-ignored", CHAIN,
           "return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))",
           "return 0.5 * (1.0 + math.cos(math.pi * p))", TRAINING_TESTS, "the cosine schedule decays to 0 always"),
    Mutant("non-finite-loss-not-checked", CHAIN, "self._check_finite_before_update(sums)\n", "\n", TRAINING_TESTS,
           "a NaN loss updates the weights"),
    Mutant("ddp-normaliser-not-divided", CHAIN, "normalizer = count / self.world_size", "normalizer = count",
           ("tests/test_train_ddp.py",), "DDP averages gradients normalised for one process: N times too small"),
    # core numerics
    Mutant("backward-node-set-excludes-midpoint", BIANCHOR, "0.5 <= c < 1.0", "0.5 < c < 1.0", CORE_TESTS,
           "the midpoint node is taken from the forward perception"),
    Mutant("perception-offset-dropped", "adapters/torch_sit/sidenet/perception.py", "return v.unsqueeze(0) + d * g",
           "return v.unsqueeze(0) + g", CORE_TESTS, "v_hat = v + g instead of v + d g (Eq. 5)"),
    Mutant("merged-coefficient-overwritten", BIANCHOR, "coeffs[j] += w * c", "coeffs[j] = w * c", CORE_TESTS,
           "an anchor velocity that two nodes use keeps only the last node's weight"),
    Mutant("predictor-weights-unused", BIANCHOR,
           "nodes.ahead])\n        return Prediction(state, t1, h, kept, B.add_scaled(x, h, coeffs, arrays), corrector)",
           "nodes.ahead])\n        return Prediction(state, t1, h, kept, B.add_scaled(x, h, [1.0], [v]), corrector)",
           CORE_TESTS,
           "the predictor is an Euler step"),
    Mutant("heun-corrector-at-start-time", "baquad/solvers/fixed.py", "(v + field(t_next, x_pred))",
           "(v + field(t, x_pred))", BASELINE_TESTS, "Heun's corrector stage at t_i"),
    Mutant("rk4-wrong-stage-weight", "baquad/solvers/fixed.py", "2.0 * k2 + 2.0 * k3 + k4", "2.0 * k2 + 2.0 * k2 + k4",
           BASELINE_TESTS, "RK4 weights k2 twice and k3 never"),
    Mutant("dpmpp-2m-midpoint-weight", "baquad/solvers/dpmpp.py", "x = ratio * x + c * m + (0.5 * c) * d1_0",
           "x = ratio * x + c * m + (0.25 * c) * d1_0", BASELINE_TESTS, "DPM-Solver++(2M) D1 weight c/4"),
    Mutant("unipc-predictor-sign", "baquad/solvers/unipc.py", "x_pred = x_base - (a * big_b) * pred",
           "x_pred = x_base + (a * big_b) * pred", BASELINE_TESTS, "UniP's correction term with the wrong sign"),
)


def repository_files(root: Path) -> list[str]:
    """Tracked files and untracked files that git does not ignore (the working tree as it is)."""
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def make_copy(root: Path, files: list[str], dest: Path) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def plant(copy: Path, m: Mutant) -> bool:
    """Apply the mutant in the copy; False when its snippet does not occur exactly once."""
    path = copy / m.path
    text = path.read_text()
    if text.count(m.old) != 1:
        return False
    path.write_text(text.replace(m.old, m.new))
    return True


def run_tests(copy: Path, m: Mutant, python: str, every_failure: bool) -> tuple[str, str]:
    """(verdict, detail): ``caught`` with the first failing test (all of them with
    ``every_failure``), or ``SURVIVED``."""
    env = dict(os.environ, PYTHONPATH=str(copy) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")
    probe = subprocess.run([python, "-c", "import baquad, adapters; print(baquad.__file__); print(adapters.__file__)"],
                           cwd=copy, env=env, capture_output=True, text=True)
    if probe.returncode or any(not Path(f).resolve().is_relative_to(copy.resolve()) for f in probe.stdout.split()):
        raise RuntimeError(f"{python} does not import the packages from the mutated copy {copy}: "
                           f"{probe.stdout.strip()} {probe.stderr.strip()[-500:]}")
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", *([] if every_failure else ["-x"]), *m.tests]
    proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True)
    if proc.returncode == 0:
        return "SURVIVED", proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, flags=re.M)
    if proc.returncode in (1, 2) and failed:  # 1: tests failed; 2: a collection error (the mutant broke an import)
        return "caught", "by " + (", ".join(failed) if every_failure else failed[0])
    return "BROKEN", f"pytest exit status {proc.returncode}: " + (proc.stdout + proc.stderr).strip()[-300:]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", help="mutants to run (default: all)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    p.add_argument("--python", default=sys.executable, help="interpreter that runs pytest (default: this one)")
    p.add_argument("--keep", action="store_true", help="keep the temporary copies (their paths are printed)")
    p.add_argument("--every-failure", action="store_true",
                   help="run each mutant's test files to the end and list every failing test (slower)")
    args = p.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        p.error(f"unknown mutants {unknown}; --list shows them")
    chosen = [known[n] for n in args.names] if args.names else list(MUTANTS)
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.what}\n    {m.path}: {m.old!r} -> {m.new!r}\n    tests: {' '.join(m.tests)}")
        return 0

    files = repository_files(ROOT)
    results = []
    for i, m in enumerate(chosen, 1):
        start = time.perf_counter()
        copy = Path(tempfile.mkdtemp(prefix=f"baquad-mutant-{m.name}-"))
        try:
            make_copy(ROOT, files, copy)
            missing = [t for t in m.tests if not (copy / t).is_file()]
            if missing:
                verdict, detail = "STALE", f"test files missing: {', '.join(missing)}"
            elif plant(copy, m):
                verdict, detail = run_tests(copy, m, args.python, args.every_failure)
            else:
                verdict, detail = "STALE", f"{m.path}: the snippet {m.old!r} does not occur exactly once"
        finally:
            if args.keep:
                print(f"    copy kept at {copy}")
            else:
                shutil.rmtree(copy, ignore_errors=True)
        results.append((m, verdict, detail))
        print(f"[{i}/{len(chosen)}] {m.name}: {verdict} {detail} ({time.perf_counter() - start:.0f} s)", flush=True)

    bad = [(m, v) for m, v, _ in results if v != "caught"]
    print(f"\n{len(results) - len(bad)} of {len(results)} mutants caught")
    for m, v in bad:
        print(f"  {v}: {m.name} ({m.what})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
