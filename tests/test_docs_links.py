"""No file of the repository refers to a document outside it.

Every ``.py``, ``.md`` and ``.toml`` file of the repository (the ones git tracks plus new ones it
does not ignore) is scanned for mentions of markdown files, such as
``docs/algorithm.md#the-bi-anchor-step`` in a docstring or ``README.md`` in ``pyproject.toml``.
Each must name a file inside the repository, relative to the mentioning file or to the
repository root, and an ``#anchor`` must name a heading of that file. In the markdown pages every
relative link target (``[text](target)``, images included) is checked the way GitHub resolves
it: relative to the page itself.

Independent truth: the file system, and heading anchors computed by GitHub's rule, written out
here (lower case; punctuation other than ``-`` and ``_`` dropped; spaces become hyphens; the
second heading with the same anchor gets ``-1``, the third ``-2``, ...).
"""

from __future__ import annotations

import os
import re
import subprocess
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = (".py", ".md", ".toml")
SKIP_DIRS = {"runs", "build", "dist", "node_modules", "__pycache__"}

#: a mention of a markdown file: a relative path ending in .md, not part of a longer name or URL
MD_MENTION = re.compile(r"(?<![\w./-])([\w./-]*[\w-]\.md)(?![\w])(#[\w-]+)?")
#: a markdown link or image: [text](target) or ![alt](target "title")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$")
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")

#: mentions that are not references to a repository file, each with the reason
NOT_REFERENCES = {
    ("analysis/_common.py", "out/stem.md"): "a placeholder: the table an analysis script writes under --out",
    ("docs/imagenet.md", "evaluations/README.md"): "a file of the openai/guided-diffusion repository, cited with it",
    ("README.md", "runs/demo/demo.md"): "the table `baquad demo` writes under its --out (default runs/demo)",
    ("adapters/torch_sit/digits/demo.py", "demo.md"): "the table `baquad demo` writes under its --out",
    ("docs/digits.md", "demo.md"): "the table `baquad demo` writes under its --out",
    ("tests/test_demo.py", "demo.md"): "the table `baquad demo` writes under its --out",
    ("adapters/torch_sit/digits/edit.py", "edit.md"): "the table `baquad demo edit` writes under its --out",
    ("tests/test_edit.py", "edit.md"): "the table `baquad demo edit` writes under its --out",
    ("adapters/torch_sit/digits/demo.py", "edit.md"): "the table `baquad demo edit` writes under its --out",
    ("adapters/torch_sit/digits/output.py", "runs/demo/demo.md"): "the table `baquad demo` writes under its --out",
    ("tests/test_demo_refusals.py", "demo.md"): "the table `baquad demo` writes under its --out",
    ("docs/digits.md", "edit.md"): "the table `baquad demo edit` writes under its --out",
}


def repository_files() -> list[Path]:
    """The text files to scan: git's tracked and untracked-but-not-ignored files, or a walk of
    the tree (skipping hidden and build directories) where git is unavailable."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
        names = [ROOT / line for line in out.splitlines() if line]
    except (OSError, subprocess.CalledProcessError):
        names = []
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")]
            names += [Path(folder) / f for f in files]
    return sorted(p for p in names if p.suffix in SUFFIXES and p.is_file())


def analysis_outputs() -> tuple[str, ...]:
    """Name prefixes of the tables the analysis scripts write (``<out>/<script>_<flow>.md``, or
    ``<out>/<script>.md`` for a script with one table)."""
    scripts = [p.stem for p in (ROOT / "analysis").glob("*.py") if not p.stem.startswith("_")]
    return tuple(f"{s}_" for s in scripts) + tuple(f"{s}.md" for s in scripts)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading's text."""
    text = heading.replace("`", "")
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@lru_cache(maxsize=None)
def anchors_of(path: Path) -> frozenset[str]:
    """Every heading anchor of a markdown file (headings inside code fences are not headings)."""
    seen: dict[str, int] = {}
    anchors = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = github_anchor(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            anchors.add(base if n == 0 else f"{base}-{n}")
    return frozenset(anchors)


def inside_repository(path: Path) -> bool:
    try:
        path.resolve().relative_to(ROOT)
    except ValueError:
        return False
    return True


def check_target(source: Path, target: str, anchor: str, bases: list[Path]) -> str | None:
    """None if ``target`` (relative to one of ``bases``) is a file in the repository with the
    heading ``anchor`` (when given); otherwise why not."""
    for base in bases:
        path = (base / target) if target else source
        if path.exists() and inside_repository(path):
            if anchor and path.suffix == ".md" and anchor not in anchors_of(path.resolve()):
                return f"{path.relative_to(ROOT) if target else 'this file'} has no heading with anchor #{anchor}"
            return None
    return "no such file in the repository"


def problems_in(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text(encoding="utf-8")
    outputs = analysis_outputs()
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for m in MD_MENTION.finditer(line):
            name, anchor = m.group(1), (m.group(2) or "")[1:]
            if (rel, name) in NOT_REFERENCES or ("/" not in name and name.startswith(outputs)):
                continue
            why = check_target(path, name, anchor, [path.parent, ROOT])
            if why:
                found.append(f"{rel}:{lineno}: {m.group(0)}: {why}")
    if path.suffix == ".md":
        fenced = False
        for lineno, line in enumerate(text.splitlines(), 1):
            if FENCE.match(line):
                fenced = not fenced
                continue
            if fenced:
                continue
            for m in MD_LINK.finditer(re.sub(r"`[^`]*`", "", line)):
                target = m.group(1)
                if SCHEME.match(target):
                    continue
                name, _, anchor = target.partition("#")
                why = check_target(path, name, anchor, [path.parent])
                if why:
                    found.append(f"{rel}:{lineno}: link ({target}): {why}")
    return found


def test_every_markdown_reference_resolves_inside_the_repository():
    files = repository_files()
    assert any(p.name == "README.md" for p in files), "the scan found no README.md: wrong root?"
    this = Path(__file__).resolve()  # its own examples are not references
    problems = [p for f in files if f.resolve() != this for p in problems_in(f)]
    assert not problems, f"{len(problems)} references do not resolve:\n" + "\n".join(problems)


def test_the_anchor_rule_on_known_headings():
    # GitHub's anchors for these headings, written out by hand.
    assert github_anchor("The bi-anchor step") == "the-bi-anchor-step"
    assert github_anchor("The paper's SideNet") == "the-papers-sidenet"
    assert github_anchor("DPM-Solver++") == "dpm-solver"
    assert github_anchor("Adding a `Method`") == "adding-a-method"
    assert github_anchor("Reproducing Table 1 (ImageNet 256 x 256) on 8 GPUs") == "reproducing-table-1-imagenet-256-x-256-on-8-gpus"


def test_the_scan_catches_a_reference_outside_the_repository(tmp_path):
    # The checker itself can fail: an existing file outside the repository, a missing file and a
    # heading that does not exist are all reported.
    outside = tmp_path / "algorithm.md"
    outside.write_text("# The bi-anchor step\n")
    probe = ROOT / "docs" / "algorithm.md"
    assert check_target(probe, "algorithm.md", "", [tmp_path]) is not None
    assert check_target(probe, "../../outside/notes.md", "", [probe.parent, ROOT]) is not None
    assert check_target(probe, "algorithm.md", "no-such-heading", [probe.parent]) is not None
    assert check_target(probe, "algorithm.md", "the-bi-anchor-step", [probe.parent]) is None
