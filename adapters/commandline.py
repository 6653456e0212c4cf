"""What every command line of the adapters shares: the help layout, ``module:name`` loading, and
flags generated from a dataclass.

- :class:`HelpFormatter`: ``(default: X)`` where a default exists, line breaks kept.
- :class:`ExplainingParser`: argparse's parser whose refusal of a stray value says where it came
  from (an unknown flag, a second value of a one-value flag) instead of "invalid choice".
- :func:`load_object`: ``--flag module:name`` (or a bare module) imported, the working directory on
  the path as ``python -m`` has it; a bad value raises a ValueError naming the flag and the form.
- :func:`flag_field`, :func:`add_dataclass_flags`, :func:`dataclass_kwargs`: a dataclass's fields
  become argparse flags (name, type, help, default) and a parsed namespace becomes the
  dataclass's keyword arguments again, so a config is written out once.

Importing this module imports neither torch nor anything of the adapters.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import sys
import typing
from typing import Any, Callable, Mapping, Optional, Sequence

__all__ = ["HelpFormatter", "ExplainingParser", "load_object", "json_object", "flag_field", "add_dataclass_flags", "dataclass_kwargs",
           "optional_number"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` only where a default exists and the help does not already state
    one; keeps the line breaks of the description and the epilog (the examples)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], {}, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)


class ExplainingParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose refusal of a stray word names its cause.

    argparse gives a word it cannot place to the next positional argument or to "unrecognized
    arguments", so ``demo --nfe 3 5`` and ``demo --seed 3`` both read "invalid choice: '5'
    (choose from 'sample', 'edit')". This parser adds, to those two refusals, the unknown flags
    among the words it was given (``--seed`` is not a flag of this command) or, for a stray
    value, the one-value flag before it (``--nfe takes one value; '5' is one too many``). Use it
    as the ``parser_class`` of the sub-commands too, so each sees its own words.
    """

    def parse_known_args(self, args: Optional[Sequence[str]] = None, namespace: Any = None) -> Any:  # noqa: D102
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def _actions_by_flag(self) -> dict:
        """Every option string of this parser and of its sub-commands' parsers, with its action."""
        found = dict(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found.update(sub._actions_by_flag() if isinstance(sub, ExplainingParser)
                                 else sub._option_string_actions)
        return found

    def _explain(self, stray: str) -> str:
        given, flags = getattr(self, "_given", []), self._actions_by_flag()

        def known(word: str) -> bool:
            name = word.split("=", 1)[0]
            return any(flag.startswith(name) for flag in flags)  # argparse accepts unique prefixes

        unknown = [w for w in given if w.startswith("-") and len(w) > 1 and not _is_number(w) and not known(w)]
        if unknown:
            return (f"{', '.join(unknown)}: no such flag here; --help lists the flags (a flag's value goes right "
                    "after it)")
        if stray not in given:
            return ""
        at = given.index(stray)
        for back in range(at - 1, -1, -1):
            word = given[back]
            if word.startswith("-") and not _is_number(word):
                action = next((a for f, a in flags.items() if f.startswith(word.split("=", 1)[0])), None)
                if action is not None and action.nargs is None and back < at - 1:
                    shown = " ".join(given[back:at + 1])
                    return f"{word} takes one value; {stray!r} is one too many (in '{shown}')"
                break
        return ""

    def error(self, message: str) -> Any:  # noqa: D102
        m = re.search(r"invalid choice: '?(.*?)'? \(choose from|unrecognized arguments: (\S+)", message)
        hint = self._explain(m.group(1) if m.group(1) is not None else m.group(2)) if m else ""
        super().error(hint or message)


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def load_object(spec: str, flag: str, *, form: str = "module:name", module_only: bool = False) -> Any:
    """The object ``spec`` names: ``module:name`` (``name`` may be dotted, ``pkg.mod:Class.attr``),
    or with ``module_only`` a bare module name (the module itself).

    The working directory is put on ``sys.path`` first (as ``python -m`` has it), so a user's
    module beside their data is found.

    Args:
        spec: the flag's value.
        flag: the flag, for the messages (``"--backbone"``; ``""`` in an argparse ``type=``
            function, whose errors argparse prefixes with the flag itself).
        form: how the messages spell the expected form (``"module:factory"``).
        module_only: ``spec`` is a module name without ``:name``.

    Raises:
        ValueError: ``spec`` is not of the form, or the module or the name cannot be imported;
            the message names the flag, the value and the expected form.
    """
    module, sep, name = (spec, "", "") if module_only else str(spec).partition(":")
    if not _DOTTED.fullmatch(module) or (not module_only and not (sep and _DOTTED.fullmatch(name))):
        example = "mymodule" if module_only else "mymodule:" + form.split(":")[-1]
        raise ValueError(f"{flag + ': ' if flag else ''}expected {form} (e.g. {example}), got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = importlib.import_module(module)
        for part in name.split(".") if name else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        what = f"module {module!r}" if module_only else f"{name!r} from {module!r}"
        raise ValueError(f"{flag + ' ' if flag else ''}{spec!r}: cannot import {what} ({err}); expected {form} "
                         "importable from the working directory or the Python path") from err
    return obj


def json_object(text: str) -> dict:
    """argparse ``type=`` of a flag whose value is a JSON object (``--backbone-kwargs``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}); write e.g. '{{\"name\": 1}}'") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object {{...}}, got {text!r}")
    return value


_NONE = ("none", "off", "null")


def optional_number(kind: type) -> Callable[[str], Any]:
    """argparse ``type=`` of an Optional[int] / Optional[float] flag: ``none`` (or ``off``,
    ``null``) is None, anything else ``kind(text)``."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() in _NONE else kind(text)

    parse.__name__ = f"{kind.__name__} or none"
    return parse


#: the key of a field's metadata that :func:`flag_field` fills
_META = "commandline"
#: the keys of that metadata that are not argparse options
_SPEC_KEYS = ("help", "flag", "aliases", "group", "convert")


def flag_field(help: str, *, default: Any = dataclasses.MISSING, default_factory: Any = dataclasses.MISSING,
               flag: Optional[str] = None, aliases: Sequence[str] = (), group: Optional[str] = None,
               convert: Optional[Callable[[Any], Any]] = None, flag_default: Any = dataclasses.MISSING,
               **argparse_options: Any) -> Any:
    """A dataclass field that carries its command-line flag (read by :func:`add_dataclass_flags`).

    Args:
        help: the flag's help.
        default, default_factory: as :func:`dataclasses.field`; no default makes the flag required.
        flag: the flag's name (default ``--field-name``); ``aliases``: more names.
        group: the argument group it is listed in (a key of ``add_dataclass_flags(groups=)``).
        convert: turns the parsed value into the field's (``dict`` for an appended list of pairs).
        flag_default: the flag's default where it differs from the field's (``[]`` for an
            ``action="append"`` flag that ``convert`` turns into the field's value).
        **argparse_options: passed to ``add_argument`` (``choices``, ``type``, ``action``, ``metavar``).
    """
    spec = {"help": help, "flag": flag, "aliases": tuple(aliases), "group": group, "convert": convert,
            **argparse_options}
    if flag_default is not dataclasses.MISSING:
        spec["default"] = flag_default
    return dataclasses.field(default=default, default_factory=default_factory, metadata={_META: spec})


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _type_options(hint: Any) -> tuple[dict, bool]:
    """argparse options for a field's type hint, and whether the field is Optional."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if optional else hint
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}, optional
    if optional and base in (int, float):
        return {"type": optional_number(base)}, optional
    if base in (int, float, str):
        return {"type": base}, optional
    if isinstance(base, type) and base not in (dict, list, tuple, set):  # e.g. pathlib.Path
        return {"type": base}, optional
    return {}, optional


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *,
                        groups: Optional[Mapping[Optional[str], Any]] = None, defaults: str = "field",
                        skip: Sequence[str] = (), overrides: Optional[Mapping[str, Mapping[str, Any]]] = None) -> None:
    """Add a flag for every field of the dataclass ``cls`` (``--field-name``, dest the field name).

    The type comes from the field's hint (``bool``: ``--x/--no-x``; ``Optional[int|float]``: a
    number or ``none``; ``int``, ``float``, ``str``, ``Path``), the help and the rest from
    :func:`flag_field` metadata, then from ``overrides[field]`` (same keys), which wins.

    Args:
        parser: the parser.
        cls: the dataclass.
        groups: argument groups by the name a field's ``group`` gives (None: the parser).
        defaults: ``"field"``: a flag's default is the field's (no default: the flag is
            required); ``"suppress"``: an absent flag leaves no attribute (the value then comes
            from elsewhere, e.g. a recipe), and the help states the field's default.
        skip: fields that get no flag.
        overrides: per field, options that replace the metadata's.
    """
    if defaults not in ("field", "suppress"):
        raise ValueError(f"defaults: 'field' or 'suppress', got {defaults!r}")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        spec = {**f.metadata.get(_META, {}), **(overrides or {}).get(f.name, {})}
        options, optional = _type_options(hints[f.name])
        default = _field_default(f)
        text = spec.get("help") or ""
        if defaults == "suppress":
            options["default"] = argparse.SUPPRESS
            if "default" not in text:
                shown = "none" if default is None else repr(default)
                text = f"{text} (default {shown}{'; none to disable' if optional else ''})".strip()
        elif default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = default
        options.update({k: v for k, v in spec.items() if k not in _SPEC_KEYS})
        names = [spec.get("flag") or "--" + f.name.replace("_", "-"), *spec.get("aliases", ())]
        target = parser if groups is None else groups.get(spec.get("group"), parser)
        target.add_argument(*names, dest=f.name, help=text, **options)


def dataclass_kwargs(namespace: argparse.Namespace, cls: type) -> dict:
    """The keyword arguments of ``cls`` that ``namespace`` holds (fields whose flag was absent
    under ``defaults="suppress"`` are left out), each through its field's ``convert``."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if hasattr(namespace, f.name):
            convert = f.metadata.get(_META, {}).get("convert")
            value = getattr(namespace, f.name)
            kwargs[f.name] = convert(value) if convert is not None and value is not None else value
    return kwargs
