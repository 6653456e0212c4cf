"""The README's code does what it says.

- The quick start block runs as written and its solve matches the closed form it prints next to
  it, x(2) = x0 exp(-sin 2) for dx/dt = -x cos t, to the accuracy of 8 Gauss-Lobatto-4 intervals
  with the default (training-free) perception, with the 8 field calls it states.
- The README has exactly two set-up commands (bash blocks), the first ending in the main job
  (``baquad demo``), the second in the tests; ``.ci/run`` runs the second verbatim.

Independent truth: the closed form; the text of ``.ci/run``.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def test_quick_start_runs_and_matches_the_closed_form():
    code = blocks("python")[0]
    assert "baquad.solve" in code
    namespace: dict = {}
    with contextlib.redirect_stdout(io.StringIO()) as out:
        exec(compile(code, "README.md quick start", "exec"), namespace)
    res, x0 = namespace["res"], namespace["x0"]
    exact = x0 * np.exp(-np.sin(2.0))
    assert res.nfe == 8
    np.testing.assert_allclose(res.x, exact, rtol=1e-3)
    assert out.getvalue().strip(), "the quick start prints its result"


def test_two_set_up_commands_and_ci_runs_the_test_command():
    commands = [b.strip() for b in blocks("bash")]
    assert len(commands) == 2, commands
    main_job, tests = commands
    assert main_job.endswith("baquad demo") and tests.endswith("python -m pytest -q")
    for command in commands:
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0")
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci
