"""Every command the documentation shows parses, flag for flag, without the optional extras.

The commands are read from README.md, CONTRIBUTING.md and docs/*.md: fenced code blocks (not the
Python ones) and inline code, ``\\`` continuations joined, ``&&``/``;``/``|`` chains split, ``#``
comments and ``NAME=value`` environment prefixes dropped. Each command that runs a module of this
repository (``python -m <module>``, ``torchrun ... -m <module>``, ``baquad ...``, which is
``adapters.torch_sit.cli``) is parsed in-process by the module's own parser, nothing run:
``build_parser().parse_args(argv)``, or the analysis scripts' ``parse_args(argv)`` (their flag
checks, file checks included, are part of it). Parsing is strict: no abbreviated flags, no
``parse_known_args`` leniency, so a misspelt flag fails the test. Commands of other programs
(pip, pytest, venv, git, cd) are skipped; a bare mention of a command (``python -m x`` with no
arguments, in running text) may leave out the arguments its parser requires.

Placeholders are values: ``<dir>``, ``PATH``, ``FILE``, ``$VAR`` and ``${...}`` (a whole token
becomes a value its flag accepts: its first choice, an existing file, or a number; inside a token,
``x``), ``[...]`` marks optional parts of a synopsis (kept), ``*`` globs match one file, and
``"${ARRAY[@]}"`` expands to each value the document gives the array (``ARRAY=(...)``) in turn. The commands run in an empty directory in which every file
they name exists (empty, a SideNet with its ``summary.json``), and a ``module:function`` the reader
is to write is a stub there.

All parsing happens in one fresh interpreter in which diffusers and torch-fidelity cannot be
imported (``sys.modules[name] = None``): building a parser must not need them.

Independent truth: argparse's own refusals, the shell's word splitting (``shlex``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
#: the console script declared in pyproject.toml
SCRIPTS = {"baquad": "adapters.torch_sit.cli"}
#: optional extras a parser must not need
BLOCKED = ("diffusers", "torch_fidelity")
#: fenced blocks in these languages are code, not commands
NOT_SHELL = {"python", "py", "pycon", "json", "toml", "yaml", "yml", "text", "txt", "csv", "math", "diff"}
#: marks a whole-token placeholder; the parsing process replaces it with a value its flag accepts
PLACEHOLDER = "\x00placeholder"
FILE_SUFFIXES = {".safetensors", ".pt", ".pth", ".ckpt", ".bin", ".npz", ".npy", ".json", ".txt", ".csv", ".png", ".md"}
SEPARATORS = {"&&", "||", ";", "|", "&", ";;"}


class Command(NamedTuple):
    where: str  # file:line
    text: str  # as written
    module: str
    argv: tuple


def module_exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def code_of(text: str):
    """(line number, code) of every shell command line in a markdown text: the lines of fenced
    blocks (continuations joined) and the inline code spans outside them."""
    lines = text.splitlines()
    fence, lang, pending, start = None, "", "", 0
    for n, line in enumerate(lines, 1):
        m = re.match(r"^\s*(```|~~~)\s*([\w+-]*)", line)
        if m and (fence is None or m.group(1) == fence):
            fence, lang = (m.group(1), m.group(2).lower()) if fence is None else (None, "")
            continue
        if fence is not None:
            if lang in NOT_SHELL:
                continue
            code = (re.sub(r"^\s*\$\s+", "", line) if not pending else line).strip()  # a console prompt
            if not pending:
                start = n
            if code.endswith("\\"):
                pending += code[:-1].strip() + " "
                continue
            yield start, pending + code
            pending = ""
        else:
            for span in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", line):
                yield n, span


#: a placeholder such as <dir> or <its sidenet.safetensors>: a word of its own, or part of one
ANGLED = re.compile(r"<[^<>\s][^<>\n]*>")
WHOLE = "__placeholder__"


def words(code: str) -> list:
    """The shell's words of one command line, operators (&&, ;, |) as words of their own; an
    angle-bracket placeholder is a word (or part of one), not a redirection."""
    code = ANGLED.sub(lambda m: WHOLE if _alone(code, m) else "x", code)
    lexer = shlex.shlex(code, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _alone(code: str, m: re.Match) -> bool:
    before, after = code[:m.start()], code[m.end():]
    return (not before or before[-1].isspace()) and (not after or after[0].isspace())


def as_value(word: str) -> str | None:
    """A documented word as the value the command receives (None: the word expands to nothing)."""
    if re.fullmatch(r"\$\{\w+\[[@*]\]\}", word):  # an array the document never fills: no words
        return None
    if word == WHOLE or re.fullmatch(r"<[^<>]+>|\$\w+|\$\{[^}]+\}|[A-Z][A-Z_]{2,}", word):
        return PLACEHOLDER
    if word.startswith("[") and re.match(r"\[[-\w]", word):  # [--flag or [word]: an optional part
        word = word[1:]
    if word.endswith("]") and re.search(r"[\w.]\]$", word) and "[" not in word:
        word = word[:-1]
    word = re.sub(r"<[^<>]+>|\$\{[^}]+\}|\$\w+", "x", word)
    return word.replace("*", "x")


def arrays_in(text: str) -> dict:
    """The values the document's shell code gives each array, ``NAME=(words)``: name -> list of
    word lists (a command's ``"${NAME[@]}"`` is checked with each)."""
    arrays: dict = {}
    for _, code in code_of(text):
        for m in re.finditer(r"(?<![\w$])([A-Za-z_]\w*)=\(([^()]*)\)", code):
            try:
                arrays.setdefault(m.group(1), []).append(shlex.split(m.group(2)))
            except ValueError:
                pass
    return arrays


def expansions(ws: list, arrays: dict) -> list:
    """The word lists ``ws`` stands for, each ``${NAME[@]}`` replaced by each value of NAME."""
    for i, w in enumerate(ws):
        m = re.fullmatch(r"\$\{(\w+)\[[@*]\]\}", w)
        if m:
            return [ws[:i] + value + rest for value in arrays.get(m.group(1), [[]])
                    for rest in expansions(ws[i + 1:], arrays)]
    return [ws]


def commands_in(path: Path) -> list:
    found = []
    rel = path.relative_to(ROOT).as_posix()
    text = path.read_text(encoding="utf-8")
    arrays = arrays_in(text)
    for n, code in code_of(text):
        if not re.search(r"\b(python3?|torchrun|baquad)\b", code):
            continue
        where = f"{rel}:{n}"
        try:
            all_words = words(code)
        except ValueError as err:  # unbalanced quotes
            found.append(Command(where, code.strip(), "", (f"shlex: {err}",)))
            continue
        chain, current = [], []
        for w in all_words:
            if w in SEPARATORS:
                chain.append(current)
                current = []
            else:
                current.append(w)
        chain.append(current)
        for ws in chain:
            while ws and (re.fullmatch(r"[A-Za-z_]\w*=.*", ws[0]) or ws[0] == "env"):
                ws = ws[1:]  # environment prefixes
            if not ws:
                continue
            if ws[0] in SCRIPTS and len(ws) > 1:  # `baquad` alone names the package
                module, rest = SCRIPTS[ws[0]], ws[1:]
            elif ws[0] in ("python", "python3") and len(ws) > 2 and ws[1] == "-m":
                module, rest = ws[2], ws[3:]
            elif ws[0] == "torchrun" and "-m" in ws[:-1]:
                i = ws.index("-m")
                module, rest = ws[i + 1], ws[i + 2:]
            else:
                continue
            if not module_exists(module):
                continue  # pytest, venv, pip: not baquad's
            for words_ in expansions(rest, arrays):
                argv = tuple(v for v in map(as_value, words_) if v is not None)
                found.append(Command(where, " ".join(ws), module, argv))
    return found


COMMANDS = [c for doc in DOCS if doc.is_file() for c in commands_in(doc)]

# ---------------------------------------------------------------------------------------------
# the parsing process: one interpreter, the extras blocked, every command parsed in turn

PARSE = r'''
import argparse, contextlib, importlib, io, json, os, sys
BLOCKED, PLACEHOLDER, commands = json.loads(sys.stdin.read())
for name in BLOCKED:
    sys.modules[name] = None
sys.path.insert(0, os.getcwd())
FILE = os.path.abspath("placeholder/sidenet.safetensors")

def parsers_of(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from parsers_of(sub)

def value_for(parser, flag):
    """A value the flag accepts: its first choice, the existing file, or a number."""
    action = None
    for p in parsers_of(parser):
        action = p._option_string_actions.get(flag.split("=")[0]) or action
    if action is not None and action.choices:
        return str(list(action.choices)[0])
    for candidate in (FILE, "1", "0.5", "x"):
        try:
            if action is None or action.type is None or action.type(candidate) is not None:
                return candidate
        except Exception:
            pass
    return FILE

original = argparse.ArgumentParser.parse_known_args

def strict(self, args=None, namespace=None):
    """No abbreviated flags, and placeholders replaced by values their flags accept."""
    self.allow_abbrev = False
    if args is not None:
        args = list(args)
        for i, word in enumerate(args):
            if word == PLACEHOLDER:
                before = args[i - 1] if i else ""
                args[i] = value_for(self, before) if before.startswith("-") else FILE
    return original(self, args, namespace)

argparse.ArgumentParser.parse_known_args = strict
results = []
for module, argv in commands:
    out, err = io.StringIO(), io.StringIO()
    status = "ok"
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            m = importlib.import_module(module)
            if hasattr(m, "build_parser"):
                parse = lambda a: m.build_parser().parse_args(a)
            elif hasattr(m, "parse_args"):
                parse = m.parse_args
            else:
                parse = None
            if parse is None:
                if argv:
                    status = f"{module} has no build_parser() or parse_args(argv) to parse {argv}"
            else:
                parse(argv)
    except SystemExit as exc:
        helped = any(a in ("-h", "--help") for a in argv) and exc.code in (0, None)
        # a bare mention in running text ("python -m x") names the command, not its arguments
        mention = not argv and "the following arguments are required" in err.getvalue()
        if not (helped or mention):
            status = f"exit {exc.code!r}: {err.getvalue().strip()[-1500:]}"
    except BaseException as exc:
        status = f"{type(exc).__name__}: {exc}"
    leaked = [n for n in BLOCKED if sys.modules.get(n) is not None]
    if leaked:
        status += f" (imported {leaked})"
    results.append(status)
print(json.dumps(results))
'''


def stub_inputs(folder: Path, commands: list) -> None:
    """The files the commands name, empty (a SideNet with its summary.json beside it), and a stub
    module for each ``module:function`` the reader is to write."""
    named = {Path("placeholder/sidenet.safetensors")}
    stubs: dict = {}
    for command in commands:
        for word in command.argv:
            value = word.split("=", 1)[1] if word.startswith("--") and "=" in word else word
            if value.startswith("-") or value == PLACEHOLDER:
                continue
            m = re.fullmatch(r"([A-Za-z_]\w*):([A-Za-z_]\w*)", value)
            if m and not module_exists(m.group(1)) and not (ROOT / "tests" / f"{m.group(1)}.py").is_file():
                stubs.setdefault(m.group(1), set()).add(m.group(2))
            elif Path(value).suffix in FILE_SUFFIXES and not Path(value).is_absolute() and ".." not in Path(value).parts:
                named.add(Path(value))
    for rel in named:
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        if path.suffix == ".safetensors":
            (path.parent / "summary.json").write_text("{}")
    for module, functions in stubs.items():
        (folder / f"{module}.py").write_text("".join(
            f"def {f}(*args, **kwargs):\n    raise NotImplementedError('a documented placeholder')\n\n\n"
            for f in sorted(functions)))


@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    pytest.importorskip("torch")  # the commands are the torch extra's (adapters/, analysis/)
    folder = tmp_path_factory.mktemp("documented")
    stub_inputs(folder, COMMANDS)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    todo = [(c.module, list(c.argv)) for c in COMMANDS if c.module]
    proc = subprocess.run([sys.executable, "-c", PARSE], input=json.dumps([BLOCKED, PLACEHOLDER, todo]), cwd=folder,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = iter(json.loads(proc.stdout.strip().splitlines()[-1]))
    return [next(results) if c.module else c.argv[0] for c in COMMANDS]


def test_the_documentation_shows_commands_of_every_kind():
    """Guards the extraction: commands from fenced blocks and inline code, every entry point."""
    modules = {c.module for c in COMMANDS}
    assert {"adapters.torch_sit.cli", "adapters.torch_sit.train", "analysis.nfe_sweep"} <= modules
    assert any(c.where.startswith("docs/imagenet.md") and "torchrun" in c.text for c in COMMANDS)
    assert not any(c.module in ("pytest", "venv", "pip") for c in COMMANDS)


def test_extraction_rules_by_hand():
    code = 'OUT=/tmp python -m analysis.host_step --steps 3 && baquad demo [--n 2000]  # a comment'
    ws = words(code)
    assert ws[:4] == ["OUT=/tmp", "python", "-m", "analysis.host_step"] and "&&" in ws and "#" not in " ".join(ws)
    assert [as_value(w) for w in ("[--n", "2000]", "[sample]", "<dir>", "runs/<dir>", "$NFE", "${EXTRA[@]}",
                                  "runs/*/sidenet.safetensors", "[[1.0, 0.5]]", "PATH")] == \
        ["--n", "2000", "sample", PLACEHOLDER, "runs/x", PLACEHOLDER, None, "runs/x/sidenet.safetensors",
         "[[1.0, 0.5]]", PLACEHOLDER]
    assert expansions(["a", "${E[@]}", "b"], {"E": [[], ["--x", "1"]]}) == [["a", "b"], ["a", "--x", "1", "b"]]
    assert arrays_in("```bash\nE=()\n[ x ] && E=(--x 'a b')\n```\n") == {"E": [[], ["--x", "a b"]]}
    assert list(code_of("```bash\npython -m a \\\n    --b c\n```\nsee `baquad demo` and `pip x`\n")) == \
        [(2, "python -m a --b c"), (5, "baquad demo"), (5, "pip x")]


@pytest.mark.parametrize("k", range(len(COMMANDS)), ids=[f"{c.where} {c.module}" for c in COMMANDS])
def test_documented_command_parses(k, parsed):
    command = COMMANDS[k]
    assert parsed[k] == "ok", f"{command.where}: `{command.text}`\n  argv {list(command.argv)}\n  {parsed[k]}"
