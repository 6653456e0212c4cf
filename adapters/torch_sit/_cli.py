"""Shared argparse help formatting for the command-line tools."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` only where a default exists and the help does not already state
    one; keeps the line breaks of the description and the epilog (the examples)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, [], {}, argparse.SUPPRESS) or "default" in text:
            return text
        return super()._get_help_string(action)
