"""Token data: GPT-2 encoding, corpus preparation into token files, and a checked reader.

A prepared dataset is a directory ``{dataset_path}/{name}/`` with

- ``train.bin`` and ``val.bin``: raw little-endian uint16 token ids, the
  format nanoGPT's and NNTile's loaders read: the documents in order, each
  followed by the end-of-text id (50256 for GPT-2);
- ``meta.json``: tokenizer, vocabulary size, end-of-text id, token and
  document counts per split, sources, ``seq_len``, ``batch_size``, timing.

`prepare` makes one (``gpt2rs-prepare`` is its command line), `TokenFile`
reads one back for training, and `encode` is GPT-2's tokenizer on every core:

    >>> from gpt2rs.data import encode
    >>> [a.tolist() for a in encode(["Hello world", " the"])]
    [[15496, 995, 50256], [262, 50256]]

Choices, so that they are written down once:

- **Documents.** A ``.txt`` file is split at ``<|endoftext|>`` when its first
  MiB holds that marker (TinyStories' own .txt files: their stories keep
  blank lines between paragraphs); otherwise at blank lines *and* at the
  marker. Its documents are stripped of surrounding whitespace. ``.jsonl``
  (and ``.json`` holding JSON Lines) and ``.parquet`` give one document per
  row's ``text``, as is. Empty documents are dropped. The marker is never
  encoded as text: inside a jsonl/parquet document it becomes the end-of-text
  id, as in Hugging Face's GPT-2 tokenizer.
- **Validation split** by document, deterministic and streaming: document
  ``i`` (0-based, in input order) goes to val when ``floor((i + 1) * f) >
  floor(i * f)`` for ``f = val_fraction``, so exactly ``floor(n * f)`` of the
  first ``n`` documents, evenly spread. The default ``f = 0`` puts everything
  in train.bin (what NNTile's script writes) and leaves val.bin empty.
- **Trimming** (NNTile's ``causal_lm_data_preparation``): train.bin is cut to
  a whole number of batches of ``batch_size`` sequences of ``seq_len + 1``
  tokens (inputs plus the shifted targets), i.e. a multiple of ``batch_size *
  (seq_len + 1)`` tokens; ``trim=False`` keeps every token. val.bin is never
  trimmed. `TokenFile.window` reads those same non-overlapping
  ``seq_len + 1``-token windows.
- **Dataset selection.** ``dataset_select`` keeps the first N documents
  (-1: all). Its default is NNTile's 100 for a hub dataset, and all for local
  ``inputs``.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from .checkpoint import pid_alive

log = logging.getLogger(__name__)

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
#: Input file kinds by extension.
EXTENSIONS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}
#: End-of-text tokens looked for in a non-GPT-2 tokenizer, in this order.
EOT_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")

READ_BYTES = 4 << 20  # bytes of a .txt/.jsonl file read at a time
BATCH_BYTES = 4 << 20  # characters of text handed to the tokenizer at a time
SNIFF_BYTES = 1 << 20  # bytes of a .txt file that decide its document separator
TEXT_COLUMN = "text"


_NEEDS_TOKENIZERS = "tokenizer {!r} is not GPT-2's; using it needs the `tokenizers` package (pip install tokenizers)"


class DataError(ValueError):
    """A data file or option that cannot be used; the message is one line and says which."""


# -- tokenizers ----------------------------------------------------------------------


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
                f"{tokenizer_json} is not a tokenizer.json the tokenizers package reads: {_line(e)}"
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
            f"cannot get tokenizer.json of {hf_tokenizer!r} from the Hugging Face Hub: {_line(e)}"
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


# -- sources: files of documents -------------------------------------------------------


def _line(e: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0]}" if msg else type(e).__name__


def input_kind(path: Path) -> str:
    """'txt', 'jsonl' or 'parquet', from the file name."""
    kind = EXTENSIONS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown extension {path.suffix!r} (use .txt, .jsonl or .parquet)")
    return kind


_BLANK_OR_EOT = re.compile(r"\n\s*\n|<\|endoftext\|>")


def txt_documents(
    path: Path, read_bytes: int = READ_BYTES, sniff_bytes: int = SNIFF_BYTES
) -> Iterator[tuple[list[str], int]]:
    """Documents of a .txt file, streamed: yields (documents, bytes of the file read so far).

    The separator is chosen from the first `sniff_bytes` (see the module doc)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="strict")
    split: Callable[[str], list[str]] | None = None
    carry = ""
    done = 0
    with open(path, "rb") as f:
        while True:
            raw = f.read(read_bytes if split is not None else max(read_bytes, sniff_bytes))
            eof = not raw
            try:
                text = carry + decoder.decode(raw, final=eof)
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{path} is not UTF-8 text (bad byte near offset {done + e.start})"
                ) from None
            done += len(raw)
            if split is None:
                # Decided once, from the first read (see the module doc).
                split = (lambda s: s.split(EOT_TEXT)) if EOT_TEXT in text else _BLANK_OR_EOT.split
            parts = split(text)
            carry = "" if eof else parts.pop()
            docs = [d for p in parts if (d := p.strip())]
            if docs or eof:
                yield docs, done
            if eof:
                return


def jsonl_documents(path: Path, read_bytes: int = READ_BYTES) -> Iterator[tuple[list[str], int]]:
    """Documents of a JSON Lines file (each line an object with a "text" string)."""
    docs: list[str] = []
    done = 0
    pending = 0
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, 1):
            done += len(line)
            pending += len(line)
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{path} line {lineno}: not valid JSON ({_line(e)})") from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"{path} line {lineno}: expected one JSON object per line (JSON Lines)"
                )
            text = obj.get(TEXT_COLUMN)
            if not isinstance(text, str):
                raise DataError(f"{path} line {lineno}: no {TEXT_COLUMN!r} string field")
            if not text.isascii():
                try:
                    text.encode("utf-8")
                except UnicodeEncodeError as e:
                    # JSON's \ud800 escapes decode to lone surrogates, which no UTF-8 holds.
                    raise DataError(
                        f"{path} line {lineno}: the text is not valid Unicode ({e.reason} at character {e.start})"
                    ) from None
            if text.strip():
                docs.append(text)
            if pending >= read_bytes:
                yield docs, done
                docs, pending = [], 0
    yield docs, done


def parquet_documents(path: Path, batch_rows: int = 4096) -> Iterator[tuple[list[str], int]]:
    """Documents of a parquet file's "text" column (needs pyarrow); progress in file bytes, by rows."""
    try:
        import pyarrow.parquet as pq  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise DataError(
            f"{path}: reading .parquet files needs pyarrow (pip install pyarrow)"
        ) from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises ArrowInvalid, OSError, ...
        raise DataError(f"{path} is not a readable parquet file: {_line(e)}") from None
    names = pf.schema_arrow.names
    if TEXT_COLUMN not in names:
        raise DataError(f"{path} has no {TEXT_COLUMN!r} column (columns: {', '.join(names)})")
    rows = max(pf.metadata.num_rows, 1)
    size = path.stat().st_size
    seen = 0
    for batch in pf.iter_batches(batch_size=batch_rows, columns=[TEXT_COLUMN]):
        seen += batch.num_rows
        docs = [t for t in batch.column(0).to_pylist() if isinstance(t, str) and t.strip()]
        yield docs, size * seen // rows
    if seen == 0:
        yield [], size


def file_documents(path: Path, kind: str) -> Iterator[tuple[list[str], int]]:
    if kind == "txt":
        return txt_documents(path)
    if kind == "jsonl":
        return jsonl_documents(path)
    return parquet_documents(path)


def check_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, str]]:
    """(path, kind) of each input file; DataError for a missing, empty or unknown one."""
    out = []
    for i in inputs:
        p = Path(i).expanduser()
        if not p.exists():
            raise DataError(f"input file {p} does not exist")
        if not p.is_file():
            raise DataError(f"input {p} is not a file")
        kind = input_kind(p)
        if p.stat().st_size == 0:
            raise DataError(f"input file {p} is empty")
        out.append((p, kind))
    return out


# -- the Hugging Face hub ------------------------------------------------------------


def _have_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def _split_words(path: str) -> list[str]:
    return [w for w in re.split(r"[-_./]", path.lower()) if w]


def pick_split_files(
    files: Sequence[str], split: str = "train", have_pyarrow: bool = True
) -> list[str]:
    """The files of a dataset repo that hold `split`, in one format, in name order.

    A file holds the split when a word of its path (split at - _ . /) is the
    split's name. Parquet comes first (what the `datasets` library, and so
    NNTile's script, reads), then JSON Lines, then text; of several .txt files
    only the first is taken (TinyStories has two versions side by side).
    """
    ok = [f for f in files if split in _split_words(f) and Path(f).suffix.lower() in EXTENSIONS]
    by_kind: dict[str, list[str]] = {}
    for f in sorted(ok):
        by_kind.setdefault(EXTENSIONS[Path(f).suffix.lower()], []).append(f)
    if "parquet" in by_kind and (have_pyarrow or not ({"jsonl", "txt"} & by_kind.keys())):
        return by_kind["parquet"]  # without pyarrow, the read fails with a clear message
    if "parquet" in by_kind:
        other = "jsonl" if "jsonl" in by_kind else "txt"
        log.warning(
            "pyarrow is not installed: reading the dataset's %s files instead of its parquet", other
        )
    if "jsonl" in by_kind:
        return by_kind["jsonl"]
    if "txt" in by_kind:
        return by_kind["txt"][:1]
    return []


def _hub_error(repo: str, e: BaseException) -> DataError:
    return DataError(
        f"cannot get dataset {repo!r} from the Hugging Face Hub ({_line(e)}); "
        "check the name and the network (HF_HUB_OFFLINE must be unset), or pass --input FILE"
    )


def hub_files(hf_dataset: str, cache_dir: Path) -> tuple[str, list[str]]:
    """(repo id, the repo files to read in order) for `hf_dataset` = ``owner/name[/file]``."""
    from huggingface_hub import HfApi, snapshot_download

    parts = hf_dataset.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise DataError(f"--hf-dataset {hf_dataset!r} is not a hub dataset id (owner/name[/file])")
    repo = "/".join(parts[:2])
    if len(parts) > 2:
        return repo, ["/".join(parts[2:])]
    try:
        files = HfApi().list_repo_files(repo, repo_type="dataset")
    except Exception as e:  # noqa: BLE001 -- offline, no network, no such repo, ...
        # Offline, a snapshot already in the cache still serves.
        try:
            snap = Path(
                snapshot_download(
                    repo, repo_type="dataset", cache_dir=str(cache_dir), local_files_only=True
                )
            )
        except Exception:  # noqa: BLE001 -- any failure here means the same thing
            raise _hub_error(repo, e) from None
        files = [str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()]
    chosen = pick_split_files(files, "train", _have_pyarrow())
    if not chosen:
        raise DataError(f"dataset {repo!r} has no train split in parquet, jsonl or txt files")
    return repo, chosen


def hub_download(repo: str, filename: str, cache_dir: Path) -> Path:
    """One file of a dataset repo, through the cache in `cache_dir` (NNTile's --dataset-path)."""
    from huggingface_hub import snapshot_download

    try:
        snap = snapshot_download(
            repo, repo_type="dataset", cache_dir=str(cache_dir), allow_patterns=[filename]
        )
    except Exception as e:  # noqa: BLE001 -- offline, no network, ...
        raise _hub_error(repo, e) from None
    p = Path(snap) / filename
    if not p.is_file():
        raise DataError(f"dataset {repo!r} has no file {filename!r}")
    return p


# -- prepare -----------------------------------------------------------------------------


@dataclass
class Progress:
    """Where `prepare` is, for a progress bar."""

    read_bytes: int = 0  # of the input files
    total_bytes: int | None = None  # of all input files, when known
    documents: int = 0
    max_documents: int | None = None  # the --dataset-select limit
    tokens: int = 0
    text_bytes: int = 0  # UTF-8 bytes of the documents encoded
    seconds: float = 0.0  # working time (downloads excluded)
    source: str = ""


def _val_mask(first: int, n: int, fraction: float) -> npt.NDArray[np.bool_]:
    """Which of documents first .. first+n-1 go to val (see the module doc)."""
    if fraction <= 0.0:
        return np.zeros(n, dtype=bool)
    i = np.arange(first, first + n, dtype=np.float64)
    return np.floor((i + 1) * fraction) > np.floor(i * fraction)


_TMP = re.compile(r"^\.(?:.+)\.(\d+)\.[0-9a-f]{8}\.tmp$")


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Removes the temporary files of runs that died mid-write (a kill -9 leaves them)."""
    for p in out_dir.iterdir():
        m = _TMP.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)


class _AtomicDir:
    """Temporary files in the output directory, renamed into place only by `commit`.

    On failure `abort` removes the temporaries and any directory this run
    created, so a failed run leaves nothing behind and an older dataset intact.
    """

    def __init__(self, out_dir: Path, names: Sequence[str]) -> None:
        self.out_dir = out_dir
        self.created: list[Path] = []
        self.tmp: dict[str, Path] = {}
        p = out_dir
        while not p.exists() and p != p.parent:
            self.created.append(p)
            p = p.parent
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            _remove_stale_temporaries(out_dir)
            for n in names:
                # Not mkstemp: its files are 0600; these get the umask's mode, as open() would.
                tmp = out_dir / f".{n}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                self.tmp[n] = tmp
        except OSError as e:
            self.abort()
            raise DataError(f"cannot write to {out_dir}: {e.strerror or _line(e)}") from None

    def commit(self, order: Sequence[str]) -> None:
        for n in order:
            os.replace(self.tmp.pop(n), self.out_dir / n)

    def abort(self) -> None:
        for t in self.tmp.values():
            t.unlink(missing_ok=True)
        self.tmp.clear()
        for d in self.created:  # deepest first
            try:
                d.rmdir()
            except OSError:
                break


def default_name(hf_dataset: str, inputs: Sequence[str | os.PathLike[str]] | None) -> str:
    """NNTile's output subdirectory: the dataset's name in lower case (``tinystories``),
    or the first input file's stem."""
    if inputs:
        return Path(inputs[0]).name.split(".")[0].lower() or "data"
    parts = hf_dataset.strip("/").split("/")
    return (parts[1] if len(parts) > 1 else parts[0]).lower()


def prepare(
    inputs: Sequence[str | os.PathLike[str]] | None = None,
    *,
    hf_dataset: str = "roneneldan/TinyStories",
    dataset_path: str | os.PathLike[str] = ".data",
    dataset_select: int | None = None,
    hf_tokenizer: str = "openai-community/gpt2",
    tokenizer_path: str | os.PathLike[str] | None = None,
    seq_len: int = 1024,
    batch_size: int = 1,
    trim: bool = True,
    val_fraction: float = 0.0,
    workers: int = 0,
    name: str | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Tokenizes a corpus into ``{dataset_path}/{name}/`` train.bin, val.bin and meta.json.

    Args:
        inputs: local .txt/.jsonl/.parquet files; None or empty reads `hf_dataset`.
        hf_dataset: hub dataset ``owner/name`` (its train split) or ``owner/name/file``.
        dataset_path: the output root, and the hub download cache (as NNTile).
        dataset_select: keep the first N documents; -1 all; None: 100 for a hub
            dataset (NNTile's default), all for `inputs`.
        hf_tokenizer, tokenizer_path: the tokenizer (see `get_tokenizer`).
        seq_len, batch_size: train.bin is trimmed to whole batches of
            `batch_size` sequences of `seq_len` + 1 tokens, unless not `trim`.
        val_fraction: share of documents for val.bin, in [0, 1).
        workers: tokenizer threads, 0 for every core.
        name: output subdirectory; default from the dataset or first input.
        progress: called with a `Progress` after each batch.

    Returns:
        meta.json's fields, plus ``out_dir``, ``train_path``, ``val_path``, ``meta_path``.

    Raises:
        DataError: a bad option, input, tokenizer, hub failure or unwritable
            output; nothing is left behind.
    """
    if seq_len < 1 or batch_size < 1:
        raise DataError(f"seq_len and batch_size must be >= 1 (got {seq_len} and {batch_size})")
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    if workers < 0:
        raise DataError(f"workers must be >= 0 (got {workers})")
    inputs = list(inputs or [])
    if dataset_select is None:
        dataset_select = -1 if inputs else 100
    if dataset_select == 0 or dataset_select < -1:
        raise DataError(f"dataset_select must be -1 (all) or >= 1 (got {dataset_select})")
    limit = None if dataset_select == -1 else dataset_select
    name = name or default_name(hf_dataset, inputs)
    if name in (".", "..") or "/" in name or os.sep in name:
        raise DataError(f"name {name!r} must be a plain directory name")
    root = Path(dataset_path).expanduser()
    out_dir = root / name

    local = check_inputs(inputs)
    tok = get_tokenizer(hf_tokenizer, tokenizer_path, workers)
    state = Progress(max_documents=limit)
    sources: list[dict[str, Any]] = []
    download_s = 0.0
    if local:
        state.total_bytes = sum(p.stat().st_size for p, _ in local)

        def files() -> Iterator[tuple[str, Path, str]]:
            for p, kind in local:
                yield str(p), p, kind

    else:
        t = time.perf_counter()
        repo, names = hub_files(hf_dataset, root)
        download_s += time.perf_counter() - t

        def files() -> Iterator[tuple[str, Path, str]]:
            nonlocal download_s
            for f in names:
                t = time.perf_counter()
                p = hub_download(repo, f, root)
                download_s += time.perf_counter() - t
                yield f"hf://datasets/{repo}/{f}", p, input_kind(p)

    def batches() -> Iterator[list[str]]:
        """Batches of about BATCH_BYTES of documents, at most `limit` in all."""
        batch: list[str] = []
        size = 0
        taken = 0
        read_before = 0
        for label, path, kind in files():
            state.source = label
            src: dict[str, Any] = {"source": label, "kind": kind, "documents": 0}
            sources.append(src)
            consumed = 0
            for docs, consumed in file_documents(path, kind):
                if limit is not None:
                    docs = docs[: limit - taken]
                taken += len(docs)
                src["documents"] += len(docs)
                state.read_bytes = read_before + consumed
                batch.extend(docs)
                size += sum(map(len, docs))
                if size >= BATCH_BYTES:
                    yield batch
                    batch, size = [], 0
                if limit is not None and taken >= limit:
                    break
            read_before += consumed
            if limit is not None and taken >= limit:
                break
        if batch:
            yield batch

    atomic = _AtomicDir(out_dir, ["train.bin", "val.bin", "meta.json"])
    try:
        counts = {"train": [0, 0], "val": [0, 0]}  # [documents, tokens]
        t0 = time.perf_counter()
        with (
            open(atomic.tmp["train.bin"], "wb") as ftrain,
            open(atomic.tmp["val.bin"], "wb") as fval,
            ThreadPoolExecutor(1, thread_name_prefix="gpt2rs-encode") as pool,
        ):

            def write(
                fut: Future[tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]], docs: list[str]
            ) -> None:
                ids, offsets = fut.result()
                _write_batch(
                    ids,
                    offsets,
                    state.documents,
                    val_fraction,
                    ftrain,
                    fval,
                    counts,
                    tok.vocab_size,
                )
                state.documents += len(docs)
                state.tokens += len(ids)
                state.text_bytes += sum(len(d.encode("utf-8")) for d in docs)
                state.seconds = time.perf_counter() - t0 - download_s
                if progress is not None:
                    progress(state)

            # Two stages: the next batch is read (Python) while this one is
            # encoded (Rust, every core, GIL released).
            pending: tuple[Future[Any], list[str]] | None = None
            for batch in batches():
                fut = pool.submit(tok.encode_batch, batch)
                if pending is not None:
                    write(*pending)
                pending = (fut, batch)
            if pending is not None:
                write(*pending)

            if state.documents == 0:
                what = ", ".join(s["source"] for s in sources) or hf_dataset
                raise DataError(f"no documents in {what}")
            untrimmed = counts["train"][1]
            window = batch_size * (seq_len + 1)
            if trim:
                keep = untrimmed // window * window
                if keep == 0:
                    raise DataError(
                        f"the train split has {untrimmed} tokens, fewer than one batch of batch_size * (seq_len + 1) = "
                        f"{window}; select more documents, lower --seq-len/--batch-size, or pass --no-trim"
                    )
                ftrain.truncate(keep * 2)
                counts["train"][1] = keep
        seconds = max(time.perf_counter() - t0 - download_s, 1e-9)
        if val_fraction > 0 and counts["val"][0] == 0:
            log.warning(
                "val_fraction %g of %d documents selects none: val.bin is empty",
                val_fraction,
                state.documents,
            )
        meta: dict[str, Any] = {
            "format": "uint16 little-endian token ids, documents concatenated, each followed by eot_id",
            "dtype": "uint16",
            "tokenizer": tok.name,
            "tokenizer_impl": tok.impl,
            "vocab_size": tok.vocab_size,
            "eot_id": tok.eot_id,
            "train_tokens": counts["train"][1],
            "train_tokens_untrimmed": untrimmed,
            "train_documents": counts["train"][0],
            "val_tokens": counts["val"][1],
            "val_documents": counts["val"][0],
            "documents": state.documents,
            "val_fraction": val_fraction,
            "seq_len": seq_len,
            "batch_size": batch_size,
            "trim": trim,
            "train_batches": counts["train"][1] // window,
            "dataset": None if local else hf_dataset,
            "dataset_select": dataset_select,
            "sources": sources,
            "text_bytes": state.text_bytes,
            "seconds": round(seconds, 3),
            "download_seconds": round(download_s, 3),
            "mb_per_s": round(state.text_bytes / 1e6 / seconds, 2),
            "workers": workers or (os.cpu_count() or 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        with open(atomic.tmp["meta.json"], "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
        atomic.commit(
            ["train.bin", "val.bin", "meta.json"]
        )  # meta.json last: it marks a whole dataset
    except OSError as e:
        atomic.abort()
        raise DataError(f"{e.filename or out_dir}: {e.strerror or _line(e)}") from None
    except BaseException:
        atomic.abort()
        raise
    return {
        **meta,
        "out_dir": str(out_dir),
        "train_path": str(out_dir / "train.bin"),
        "val_path": str(out_dir / "val.bin"),
        "meta_path": str(out_dir / "meta.json"),
    }


def _write_batch(
    ids: npt.NDArray[np.uint16],
    offsets: npt.NDArray[np.int64],
    first_doc: int,
    val_fraction: float,
    ftrain: IO[bytes],
    fval: IO[bytes],
    counts: dict[str, list[int]],
    vocab_size: int,
) -> None:
    """Appends one encoded batch to train.bin / val.bin, split by document."""
    ndocs = len(offsets) - 1
    if len(ids) and int(ids.max()) >= vocab_size:  # only a foreign tokenizer could
        raise DataError(
            f"the tokenizer produced id {int(ids.max())} >= its vocabulary size {vocab_size}"
        )
    ids = ids.astype("<u2", copy=False)
    is_val = _val_mask(first_doc, ndocs, val_fraction)
    nval = int(is_val.sum())
    if nval == 0:
        ftrain.write(ids.data)
        counts["train"][0] += ndocs
        counts["train"][1] += len(ids)
        return
    tok_val = np.repeat(is_val, np.diff(offsets))
    train, val = ids[~tok_val], ids[tok_val]
    ftrain.write(train.data)
    fval.write(val.data)
    counts["train"][0] += ndocs - nval
    counts["train"][1] += len(train)
    counts["val"][0] += nval
    counts["val"][1] += len(val)


# -- reading token files --------------------------------------------------------------


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


__all__ = [
    "EOT_ID",
    "VOCAB_SIZE",
    "DataError",
    "Progress",
    "TokenFile",
    "decode",
    "encode",
    "get_tokenizer",
    "is_gpt2_tokenizer",
    "pick_split_files",
    "prepare",
]
