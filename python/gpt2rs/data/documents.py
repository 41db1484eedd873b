"""Documents: the texts that input files hold, streamed in batches.

A ``.txt`` file is split at ``<|endoftext|>`` when its first MiB holds that
marker (TinyStories' own .txt files: their stories keep blank lines between
paragraphs); otherwise at blank lines *and* at the marker. Its documents are
stripped of surrounding whitespace. ``.jsonl`` (and ``.json`` holding JSON
Lines) and ``.parquet`` give one document per row's ``text``, as is. Empty
documents are dropped. The marker is never encoded as text: inside a
jsonl/parquet document it becomes the end-of-text id, as in Hugging Face's
GPT-2 tokenizer.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .errors import DataError, one_line
from .tokenize import EOT_TEXT

#: Input file kinds by extension.
EXTENSIONS = {
    ".txt": "txt",
    ".text": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
}

READ_BYTES = 4 << 20  # bytes of a .txt/.jsonl file read at a time
SNIFF_BYTES = 1 << 20  # bytes of a .txt file that decide its document separator
TEXT_COLUMN = "text"


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
                raise DataError(f"{path} line {lineno}: not valid JSON ({one_line(e)})") from None
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
        raise DataError(f"{path} is not a readable parquet file: {one_line(e)}") from None
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
