"""The ``baquad`` console script (declared in ``pyproject.toml``): ``baquad demo [...]``.

Each subcommand lives in its own module and contributes ``add_arguments(parser)`` and
``run(args) -> exit status``; ``baquad <command> --help`` explains its flags.

Errors are one line, never a traceback: a refused flag exits with status 2 through the
sub-command's parser (``args.usage_error``), and a file that cannot be read or written, or an
input refused while the command runs (a ``ValueError`` or ``OSError`` naming what and why), exits
with status 1 after ``baquad <command>: error: <message>``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..commandline import ExplainingParser, HelpFormatter

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .digits import demo

    p = ExplainingParser(prog="baquad", formatter_class=HelpFormatter,
                         description="BA-solver (baquad) from the command line.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=ExplainingParser)
    d = sub.add_parser("demo", formatter_class=HelpFormatter, help="sample the shipped digits model with BA-solver "
                       "and the baselines; print the accuracy-per-NFE table, write the pictures",
                       description=demo.__doc__)
    demo.add_arguments(d)
    d.set_defaults(run=demo.run, usage_error=d.error)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (OSError, ValueError) as err:  # named by the code that refused it (module docstring)
        print(f"baquad {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
