"""Tokenizers: GPT-2's BPE built into gpt2rs (every core, no network), or any
Hugging Face ``tokenizer.json`` through the ``tokenizers`` package.

    >>> from gpt2rs.data import encode
    >>> [a.tolist() for a in encode(["Hello world", " the"])]
    [[15496, 995, 50256], [262, 50256]]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .errors import DataError, one_line

#: GPT-2's end-of-text token id.
EOT_ID = 50256
#: GPT-2's vocabulary size (50256 BPE tokens and end-of-text).
VOCAB_SIZE = 50257
EOT_TEXT = "<|endoftext|>"
#: Names of GPT-2's tokenizer (all GPT-2 sizes share tiktoken's r50k_base).
GPT2_TOKENIZERS = frozenset(
    {
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "distilgpt2",
        "r50k_base",
        "openai-community/gpt2",
        "openai-community/gpt2-medium",
        "openai-community/gpt2-large",
        "openai-community/gpt2-xl",
        "distilbert/distilgpt2",
    }
)
#: End-of-text tokens looked for in a non-GPT-2 tokenizer, in this order.
EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")

_NEEDS_TOKENIZERS = "tokenizer {!r} is not GPT-2's; using it needs the `tokenizers` package (pip install tokenizers)"


class Tokenizer:
    """What `prepare` needs of a tokenizer: a batch of documents to ids, EOT after each."""

    name: str
    impl: str
    vocab_size: int
    eot_id: int

    def encode_batch(
        self, texts: list[str]
    ) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]:
        """(every document's ids with EOT appended, concatenated; len(texts) + 1 offsets)."""
        raise NotImplementedError


class Gpt2Tokenizer(Tokenizer):
    """GPT-2's BPE compiled into gpt2rs (tiktoken's r50k_base ranks, bundled)."""

    def __init__(self, name: str = "openai-community/gpt2", workers: int = 0) -> None:
        self.name = name
        self.impl = "gpt2rs built-in GPT-2 BPE (tiktoken r50k_base)"
        self.vocab_size = VOCAB_SIZE
        self.eot_id = EOT_ID
        self.workers = workers

    def encode_batch(
        self, texts: list[str]
    ) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]:
        from gpt2rs._gpt2rs import gpt2_encode_batch

        return gpt2_encode_batch(texts, append_eot=True, workers=self.workers)


class HfTokenizer(Tokenizer):
    """A Hugging Face ``tokenizer.json``, through the ``tokenizers`` package."""

    def __init__(self, tokenizer_json: Path, name: str) -> None:
        try:
            from tokenizers import Tokenizer as _Tok  # type: ignore[import-not-found, import-untyped, unused-ignore]
        except ImportError:
            raise DataError(_NEEDS_TOKENIZERS.format(name)) from None
        try:
            self._tok = _Tok.from_file(str(tokenizer_json))
        except Exception as e:  # noqa: BLE001 -- tokenizers raises its own Exception type
            raise DataError(
                f"{tokenizer_json} is not a tokenizer.json the tokenizers package reads: {one_line(e)}"
            ) from None
        self.name = name
        self.impl = f"tokenizers ({tokenizer_json})"
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        if self.vocab_size > 1 << 16:
            raise DataError(
                f"tokenizer {name!r} has {self.vocab_size} tokens; uint16 token files hold at most 65536"
            )
        eot = next((i for t in EOT_CANDIDATES if (i := self._tok.token_to_id(t)) is not None), None)
        if eot is None:
            raise DataError(
                f"tokenizer {name!r} has no end-of-text token (looked for {', '.join(EOT_CANDIDATES)})"
            )
        self.eot_id = int(eot)

    def encode_batch(
        self, texts: list[str]
    ) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]:
        encs = self._tok.encode_batch(texts, add_special_tokens=False)
        lens = np.array([len(e.ids) + 1 for e in encs], dtype=np.int64)
        offsets = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        ids = np.empty(int(offsets[-1]), dtype=np.uint16)
        for e, a, b in zip(encs, offsets[:-1], offsets[1:]):
            ids[a : b - 1] = e.ids
            ids[b - 1] = self.eot_id
        return ids, offsets


def is_gpt2_tokenizer(name: str) -> bool:
    """Whether `name` is one of GPT-2's tokenizers (all share r50k_base)."""
    return name.strip().lower() in GPT2_TOKENIZERS


def get_tokenizer(
    hf_tokenizer: str = "openai-community/gpt2",
    tokenizer_path: str | os.PathLike[str] | None = None,
    workers: int = 0,
) -> Tokenizer:
    """The tokenizer `prepare` uses.

    `tokenizer_path` naming a ``tokenizer.json`` (or a directory holding one)
    loads that file with the ``tokenizers`` package. Otherwise a GPT-2 name
    gets the built-in BPE (no network), and any other name is a hub repo (or a
    local directory) whose ``tokenizer.json`` is fetched into `tokenizer_path`
    (NNTile's cache directory) and loaded with ``tokenizers``.
    """
    if tokenizer_path is not None:
        p = Path(tokenizer_path).expanduser()
        tj = p / "tokenizer.json" if p.is_dir() else p
        if tj.is_file():
            return HfTokenizer(tj, str(tj))
        if p.exists() and not p.is_dir():
            raise DataError(f"--tokenizer-path {p} is neither a tokenizer.json nor a directory")
    if is_gpt2_tokenizer(hf_tokenizer):
        return Gpt2Tokenizer(hf_tokenizer, workers)
    local = Path(hf_tokenizer).expanduser()
    if (local / "tokenizer.json").is_file():
        return HfTokenizer(local / "tokenizer.json", hf_tokenizer)
    try:  # fail before a download that could not be used
        import tokenizers  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        raise DataError(_NEEDS_TOKENIZERS.format(hf_tokenizer)) from None
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            hf_tokenizer,
            "tokenizer.json",
            cache_dir=None if tokenizer_path is None else str(tokenizer_path),
        )
    except Exception as e:  # noqa: BLE001 -- the hub raises many kinds; all mean "could not get it"
        raise DataError(
            f"cannot get tokenizer.json of {hf_tokenizer!r} from the Hugging Face Hub: {one_line(e)}"
        ) from None
    return HfTokenizer(Path(path), hf_tokenizer)


def encode(
    texts: Sequence[str], *, append_eot: bool = True, workers: int = 0
) -> list[npt.NDArray[np.uint16]]:
    """GPT-2 ids of each text (uint16), EOT (50256) appended unless `append_eot` is False.

    Exactly GPT-2's tokenizer (tiktoken's r50k_base), on `workers` threads (0:
    every core) with the GIL released. A literal ``<|endoftext|>`` becomes 50256.
    """
    from gpt2rs._gpt2rs import gpt2_encode_batch

    if isinstance(texts, str):
        raise TypeError("encode takes a list of texts, not one str")
    ids, offsets = gpt2_encode_batch(list(texts), append_eot=append_eot, workers=workers)
    return np.split(ids, offsets[1:-1]) if len(texts) else []


def decode(ids: npt.ArrayLike) -> str:
    """The text of GPT-2 ids (bytes that are not whole UTF-8 characters become U+FFFD)."""
    from gpt2rs._gpt2rs import gpt2_decode_bytes

    flat = np.asarray(ids).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= VOCAB_SIZE):
        bad = flat[(flat < 0) | (flat >= VOCAB_SIZE)][0]
        raise ValueError(f"token id {bad} is not in GPT-2's vocabulary of {VOCAB_SIZE}")
    return bytes(gpt2_decode_bytes([int(i) for i in flat])).decode("utf-8", errors="replace")
