"""What a plain ``pip install baquad`` gives, and what a missing optional package says.

Each case runs in a fresh interpreter in which the package is made unimportable
(``sys.modules[name] = None``, the documented way to block an import), so nothing cached by
other tests hides the import. Truth: the import system's own failure, and the install command
written out here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_EXTRA = "pip install 'baquad[torch]'"


def run_without(blocked: list[str], code: str) -> subprocess.CompletedProcess:
    prelude = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
    return subprocess.run([sys.executable, "-c", prelude + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("blocked", [["torch"], ["torchdiffeq"]])
def test_torchdiffeq_method_without_torch_names_the_extra(blocked):
    proc = run_without(blocked, "import baquad.torchdiffeq")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: baquad.torchdiffeq needs " + blocked[0]), last
    assert TORCH_EXTRA in last, last


def test_the_core_imports_and_solves_without_torch():
    proc = run_without(["torch", "torchdiffeq"], (
        "import numpy as np, baquad\n"
        "r = baquad.solve(lambda t, x: -x, np.ones(2), [0.0, 0.5, 1.0], method='euler')\n"
        "print(r.x.tolist())\n"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[0.25,", "0.25]"]  # (1 - 0.5)^2 by hand: two Euler steps of x' = -x


def test_symbolic_analysis_without_sympy_names_it_and_the_install():
    proc = run_without(["sympy"], "from baquad.order import degree_of_exactness\n"
                                  "degree_of_exactness('gauss-lobatto-3')\n")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:") and "needs sympy" in last and "pip install sympy" in last, last


def test_sympy_is_a_dependency_of_the_package():
    """The symbolic analysis is part of the core, so a plain ``pip install baquad`` brings sympy;
    numpy and scipy likewise. torch and torchdiffeq come with the extra the messages name."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("<")[0].strip() for dep in meta["dependencies"]}
    assert {"numpy", "scipy", "sympy"} <= names and "torch" not in names
    extra = {dep.split(">")[0].strip() for dep in meta["optional-dependencies"]["torch"]}
    assert {"torch", "torchdiffeq"} <= extra
