"""The one error of `gpt2rs.data`, and how a foreign exception becomes part of its message."""

from __future__ import annotations


class DataError(ValueError):
    """A data file or option that cannot be used; the message is one line and says which."""


def one_line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__
