"""What every gpt2rs console script shares: an argument parser whose errors
are one line, and a help formatter that shows each default once."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, no usage dump."""
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """argparse's "(default: X)", except where the help already says its
    default (an environment variable, or a value that depends on the machine)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.help and "default:" in action.help:
            return action.help
        if action.default == "" and action.help and "%(default)" not in action.help:
            return action.help + " (default: '')"
        return super()._get_help_string(action)
