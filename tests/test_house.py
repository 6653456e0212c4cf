"""The house the code's imports draw: no circles, the floors in order, no room too big.

Drawn from the source itself: the AST of every non-test ``.py`` file under ``baquad/``,
``adapters/``, ``analysis/`` and ``examples/`` (git's tracked files plus new ones it does not
ignore; a walk of the tree where git is unavailable). Every import counts, at module level and
inside functions alike (``import a.b``, ``from a import b``, relative imports resolved against
the importing module's package, and ``importlib.import_module("a.b")`` / ``__import__("a.b")``
with a literal string), and points at the deepest module of the repository it names.

- (i) no import circle among the modules (each one found is reported as ``a -> b -> ... -> a``);
- (ii) the floors: ``baquad`` (the torch-free core) imports neither ``adapters`` nor
  ``analysis``, and ``adapters`` does not import ``analysis`` (each arrow against the order is
  reported with the file and line);
- (iii) no directory's own ``.py`` files (its subdirectories not counted) hold more than a
  quarter of the lines of the repository's non-test Python files (every ``.py`` outside
  ``tests/``).

Independent truth: Python's own parser (``ast``) and the file system.
"""

from __future__ import annotations

import ast
import os
import subprocess
from collections import defaultdict
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("baquad", "adapters", "analysis", "examples")
SKIP_DIRS = {".venv", "venv", "build", "dist", "__pycache__", "node_modules", "runs"}
#: a layer may import only from itself and the layers listed before it
LAYERS = ("baquad", "adapters", "analysis")
MAX_SHARE = 0.25


@lru_cache(maxsize=None)
def python_files() -> tuple[Path, ...]:
    """Every ``.py`` file of the repository: git's tracked and untracked-but-not-ignored files
    that exist, or a walk of the tree (skipping hidden and build directories) without git."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", "*.py"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
        names = {ROOT / line for line in out.splitlines() if line}
    except (OSError, subprocess.CalledProcessError):
        names = set()
        for folder, dirs, files in os.walk(ROOT):
            dirs[:] = [d for d in dirs if not d.startswith(".") and d not in SKIP_DIRS and not d.endswith(".egg-info")]
            names.update(Path(folder) / f for f in files if f.endswith(".py"))
    return tuple(sorted(p for p in names if p.suffix == ".py" and p.is_file()))


def is_test(path: Path) -> bool:
    rel = path.relative_to(ROOT)
    return (rel.parts[0] == "tests" or path.name.startswith("test_") or path.name.endswith("_test.py")
            or path.name == "conftest.py")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    """The modules of the house: dotted name -> file."""
    return {module_name(p): p for p in python_files()
            if p.relative_to(ROOT).parts[0] in PACKAGES and not is_test(p)}


def resolve(name: str) -> str | None:
    """The deepest module of the repository that ``name`` (a dotted module path, or a module
    path followed by attribute names) lies in; None for a module from outside."""
    known = modules()
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in known:
            return candidate
    return None


def package_of(module: str) -> str:
    """The package a module's relative imports start from."""
    return module if modules()[module].name == "__init__.py" else module.rpartition(".")[0]


def absolute(module: str, level: int, target: str | None) -> str:
    """The absolute name of ``from <level dots><target> import ...`` written in ``module``."""
    if level == 0:
        return target or ""
    base = package_of(module).split(".")
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def literal(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def imports_of(module: str) -> list[tuple[str, int]]:
    """Every name ``module`` imports, with the line: ``import``/``from ... import`` statements
    anywhere in the file, and ``importlib.import_module`` / ``__import__`` with a literal name."""
    tree = ast.parse(modules()[module].read_text(encoding="utf-8"), filename=str(modules()[module]))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute(module, node.level, node.module)
            # ``from pkg import sub`` imports the submodule pkg.sub when there is one
            found += [(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules() else base, node.lineno)
                      for alias in node.names]
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
            name = literal(node.args[0])
            if called in ("import_module", "__import__") and name:
                if name.startswith("."):  # relative: import_module(".x", __name__ or __package__)
                    level = len(name) - len(name.lstrip("."))
                    name = absolute(module, level, name.lstrip(".") or None)
                found.append((name, node.lineno))
    return found


@lru_cache(maxsize=None)
def graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of the repository: first line of an import}."""
    edges: dict[str, dict[str, int]] = {}
    for module in modules():
        targets: dict[str, int] = {}
        for name, line in imports_of(module):
            target = resolve(name)
            if target is not None and target != module:
                targets.setdefault(target, line)
        edges[module] = targets
    return edges


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def a_cycle(edges: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """One shortest cycle through the component's first module, as a list of modules."""
    start, inside = component[0], set(component)
    paths = {start: [start]}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w == start:
                return paths[v] + [start]
            if w in inside and w not in paths:
                paths[w] = paths[v] + [w]
                queue.append(w)
    raise AssertionError(f"no cycle through {start} in {component}")  # cannot happen in an SCC


def describe(edges: dict[str, dict[str, int]], cycle: list[str]) -> str:
    steps = [f"{a} ({modules()[a].relative_to(ROOT)}:{edges[a][b]})" for a, b in zip(cycle, cycle[1:])]
    return " -> ".join(steps + [cycle[-1]])


def layer(module: str) -> str:
    return module.split(".")[0]


# ---------------------------------------------------------------------------------------------


def test_the_house_is_drawn_from_the_code():
    """Guards the tests below: the drawing finds the modules and imports known to exist."""
    known = modules()
    assert {"baquad", "baquad.solve", "adapters.torch_sit.cli", "analysis._common"} <= set(known)
    assert not any(name.startswith("tests") for name in known)
    edges = graph()
    assert "baquad" in edges["analysis._common"] or any(t.startswith("baquad.") for t in edges["analysis._common"])
    # a relative import resolves: baquad/rules.py has ``from ._optional import sympy``
    assert "baquad._optional" in edges["baquad.rules"]


def test_drawing_rules_on_a_written_out_example():
    """The resolution rules on modules of the repository, checked by hand."""
    assert resolve("baquad.solve.solve") == "baquad.solve"  # an attribute of a module
    assert resolve("numpy.linalg") is None  # not ours
    assert absolute("baquad.rules", 1, "_optional") == "baquad._optional"
    assert absolute("baquad", 1, "rules") == "baquad.rules"  # a package's __init__ is its own package
    assert absolute("baquad.solvers.fixed", 2, "grids") == "baquad.grids"
    edges = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3, "d": 4}, "d": {}}
    assert strongly_connected(edges) == [["a", "b", "c"]]
    assert a_cycle(edges, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_circles():
    edges = graph()
    cycles = [describe(edges, a_cycle(edges, c)) for c in strongly_connected(edges)]
    assert not cycles, "import circles (module (file:line of the import) -> ...):\n  " + "\n  ".join(cycles)


def test_the_floors_are_in_order():
    """baquad < adapters < analysis: a layer imports only from itself and the layers below."""
    wrong = []
    for module, targets in sorted(graph().items()):
        if layer(module) not in LAYERS:
            continue
        below = LAYERS[: LAYERS.index(layer(module)) + 1]
        for target, line in sorted(targets.items()):
            if layer(target) not in below:
                wrong.append(f"{module} -> {target} ({modules()[module].relative_to(ROOT)}:{line})")
    assert not wrong, (f"imports against the order {' < '.join(LAYERS)} (a floor may import only the floors "
                       "below it):\n  " + "\n  ".join(wrong))


def test_no_directory_holds_more_than_a_quarter_of_the_code():
    lines: dict[str, int] = defaultdict(int)
    for path in python_files():
        if is_test(path):
            continue
        with open(path, encoding="utf-8") as fh:
            lines[path.parent.relative_to(ROOT).as_posix()] += sum(1 for _ in fh)
    total = sum(lines.values())
    assert total > 0
    shares = {folder: n / total for folder, n in lines.items()}
    too_big = [f"{folder}/: {lines[folder]} of {total} lines ({share:.1%})"
               for folder, share in sorted(shares.items(), key=lambda kv: -kv[1]) if share > MAX_SHARE]
    assert not too_big, f"directories holding more than {MAX_SHARE:.0%} of the non-test Python lines:\n  " + \
        "\n  ".join(too_big)
