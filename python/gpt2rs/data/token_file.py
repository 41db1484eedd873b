"""`TokenFile`: a prepared train.bin / val.bin read back for training, checked first."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import DataError
from .tokenize import VOCAB_SIZE


def _check_against_meta(path: Path, tokens: int) -> None:
    """A train.bin / val.bin beside the meta.json of its `prepare` must hold
    the tokens that file records (a copy cut short, or a file swapped in)."""
    key = {"train.bin": "train_tokens", "val.bin": "val_tokens"}.get(path.name)
    meta_path = path.with_name("meta.json")
    if key is None or not meta_path.is_file():
        return
    try:
        want = json.loads(meta_path.read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return  # not a meta.json of ours: nothing to check against
    if isinstance(want, int) and not isinstance(want, bool) and want != tokens:
        raise DataError(
            f"token file {path} holds {tokens} tokens but {meta_path} says {want}: "
            "cut short or replaced? run gpt2rs-prepare again"
        )


class TokenFile:
    """A token file (train.bin / val.bin) mapped read-only, with its checks done.

    Windows are NNTile's: window ``i`` is the ``seq_len + 1`` tokens from
    ``i * (seq_len + 1)``, split into inputs ``[:-1]`` and targets ``[1:]``, so
    a file that `prepare` trimmed holds a whole number of batches of them.

    Raises:
        DataError: the file is missing, not a file, empty, of an odd byte size,
            or holds an id >= `vocab_size` (a different tokenizer's file, or
            not a token file); one line each.
    """

    def __init__(self, path: str | os.PathLike[str], vocab_size: int | None = VOCAB_SIZE) -> None:
        p = Path(path).expanduser()
        self.path = p
        if not p.exists():
            raise DataError(f"token file {p} does not exist (make one with gpt2rs-prepare)")
        if not p.is_file():
            raise DataError(f"token file {p} is not a file")
        size = p.stat().st_size
        if size == 0:
            raise DataError(f"token file {p} is empty")
        if size % 2:
            raise DataError(
                f"token file {p} has an odd size ({size} bytes); token files hold 2-byte (uint16) ids"
            )
        _check_against_meta(p, size // 2)
        self.tokens: np.memmap[Any, np.dtype[np.uint16]] = np.memmap(p, dtype="<u2", mode="r")
        self.vocab_size = vocab_size
        if vocab_size is not None:
            step = 1 << 24
            for start in range(0, len(self.tokens), step):
                chunk = self.tokens[start : start + step]
                if int(chunk.max()) >= vocab_size:
                    at = start + int(np.argmax(chunk >= vocab_size))
                    raise DataError(
                        f"token file {p} holds id {int(self.tokens[at])} at position {at}, outside the vocabulary "
                        f"of {vocab_size} (another tokenizer's file, or not a token file?)"
                    )

    def __len__(self) -> int:
        """Tokens in the file."""
        return len(self.tokens)

    def __repr__(self) -> str:
        return f"TokenFile({str(self.path)!r}, tokens={len(self)}, vocab_size={self.vocab_size})"

    def windows(self, seq_len: int) -> int:
        """How many whole ``seq_len + 1``-token windows the file holds."""
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1 (got {seq_len})")
        return len(self.tokens) // (seq_len + 1)

    def window(self, i: int, seq_len: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(input ids, target ids) of window `i`, each `seq_len` long (int64)."""
        n = self.windows(seq_len)
        if not -n <= i < n:
            raise IndexError(
                f"window {i} out of range: {self.path} holds {n} windows of {seq_len} + 1 tokens"
            )
        i %= n
        w = np.asarray(self.tokens[i * (seq_len + 1) : (i + 1) * (seq_len + 1)], dtype=np.int64)
        return w[:-1], w[1:]

    def batch(
        self, indices: Sequence[int], seq_len: int
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """(inputs, targets) of the windows `indices`, each ``(len(indices), seq_len)`` int64."""
        x = np.empty((len(indices), seq_len), dtype=np.int64)
        y = np.empty_like(x)
        for r, i in enumerate(indices):
            x[r], y[r] = self.window(int(i), seq_len)
        return x, y
