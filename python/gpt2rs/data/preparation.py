"""`prepare`: a corpus (local files or a hub dataset) tokenized into a dataset
directory of train.bin, val.bin and meta.json (see `gpt2rs.data`).

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

import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from ..atomic import Staged
from .documents import check_inputs, file_documents, input_kind
from .download import hub_download, hub_files
from .errors import DataError, one_line
from .tokenize import get_tokenizer

log = logging.getLogger(__name__)

BATCH_BYTES = 4 << 20  # characters of text handed to the tokenizer at a time


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

    try:
        # meta.json last: it marks a whole dataset.
        staged = Staged(out_dir, ["train.bin", "val.bin", "meta.json"])
    except OSError as e:
        raise DataError(f"cannot write to {out_dir}: {e.strerror or one_line(e)}") from None
    try:
        with staged as tmp:
            counts = {"train": [0, 0], "val": [0, 0]}  # [documents, tokens]
            t0 = time.perf_counter()
            with (
                open(tmp["train.bin"], "wb") as ftrain,
                open(tmp["val.bin"], "wb") as fval,
                ThreadPoolExecutor(1, thread_name_prefix="gpt2rs-encode") as pool,
            ):

                def write(
                    fut: Future[tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]],
                    docs: list[str],
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
            with open(tmp["meta.json"], "w") as f:
                json.dump(meta, f, indent=2)
                f.write("\n")
    except OSError as e:
        raise DataError(f"{e.filename or out_dir}: {e.strerror or one_line(e)}") from None
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
