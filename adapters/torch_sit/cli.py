"""The ``baquad`` console script (declared in ``pyproject.toml``): ``baquad demo [...]``.

Each subcommand lives in its own module and contributes ``add_arguments(parser)`` and
``run(args) -> exit status``; ``baquad <command> --help`` explains its flags.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..commandline import HelpFormatter

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from .digits import demo

    p = argparse.ArgumentParser(prog="baquad", formatter_class=HelpFormatter,
                                description="BA-solver (baquad) from the command line.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", formatter_class=HelpFormatter, help="sample the shipped digits model with BA-solver "
                       "and the baselines; print the accuracy-per-NFE table, write the pictures",
                       description=demo.__doc__)
    demo.add_arguments(d)
    d.set_defaults(run=demo.run)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
