"""gpt2rs-prepare: tokenize a corpus into train.bin / val.bin / meta.json (NNTile's
causal_lm_data_preparation, with the same options).

    gpt2rs-prepare --seq-len=1024 --batch-size=1024 --dataset-select=25000
    gpt2rs-prepare --input stories.txt more.jsonl --val-fraction 0.01 --name mydata
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from typing_extensions import Self

from ._common import Formatter, Parser

PROG = "gpt2rs-prepare"

EPILOG = """\
Every --dashed-option is also accepted as --underscore_option (NNTile's spelling).

Output: {dataset-path}/{name}/train.bin and val.bin (raw little-endian uint16 token
ids, each document followed by the end-of-text id, as nanoGPT and NNTile read them)
and meta.json. Files are written under temporary names and renamed at the end, so a
failed run leaves nothing behind.

Documents: a .txt file is split at <|endoftext|> when its first chunk holds one
(blank lines then stay inside documents, as in TinyStories' own .txt), else at blank
lines; .jsonl/.parquet give one document per row's "text". --hf-dataset reads the
train split of a hub dataset repo (parquet first, needs pyarrow; else jsonl; else
txt) without the `datasets` library; owner/name/file picks one file of the repo.

train.bin is trimmed, as NNTile does, to a whole number of batches of batch-size
sequences of seq-len + 1 tokens (--no-trim keeps every token); val.bin is not.
The val split takes documents evenly spread through the input: floor(n * f) of
the first n, for f = --val-fraction (0: val.bin is empty, train.bin has all).

GPT-2 tokenizer names (openai-community/gpt2, gpt2, gpt2-medium, ...) use the
built-in BPE, with no network; other names, or a --tokenizer-path holding a
tokenizer.json, use the `tokenizers` package.
"""


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog=PROG,
        description=(__doc__ or "").split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=Formatter,
    )

    def opt(name: str, **kw: Any) -> None:
        under = "--" + name[2:].replace("-", "_")
        ap.add_argument(name, *([under] if under != name else []), **kw)

    opt(
        "--hf-dataset",
        default="roneneldan/TinyStories",
        help="hub dataset repo (owner/name[/file]) to read when no --input",
    )
    opt("--dataset-path", default=".data", help="output root (and hub download cache)")
    opt(
        "--dataset-select",
        type=int,
        default=None,
        help="keep the first N documents, -1 for all (default: 100 for --hf-dataset, as NNTile; all for --input)",
    )
    opt(
        "--hf-tokenizer",
        default="openai-community/gpt2",
        help="tokenizer name (GPT-2 names use the built-in BPE)",
    )
    opt(
        "--tokenizer-path",
        default=None,
        help="a tokenizer.json (or a directory holding one) to use instead; else the cache for a hub tokenizer",
    )
    opt(
        "--seq-len",
        type=int,
        default=1024,
        help="sequence length (train.bin trimmed to batches of seq-len + 1)",
    )
    opt(
        "--batch-size",
        type=int,
        default=1,
        help="sequences per batch (train.bin trimmed to whole batches)",
    )
    opt(
        "--no-trim",
        action="store_true",
        help="keep every train token instead of trimming to whole batches",
    )
    opt(
        "--input",
        nargs="+",
        action="extend",
        default=None,
        metavar="FILE",
        help="local .txt/.jsonl/.parquet files to read instead of --hf-dataset",
    )
    opt("--val-fraction", type=float, default=0.0, help="share of documents for val.bin, in [0, 1)")
    cores = _cores()
    opt("--workers", type=int, default=cores, help="tokenizer threads (default: every core)")
    opt(
        "--name",
        default=None,
        help="output subdirectory (default: dataset name in lower case, or the first input's stem)",
    )
    return ap


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.seq_len < 1:
        ap.error(f"--seq-len must be >= 1 (got {args.seq_len})")
    if args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1 (got {args.batch_size})")
    if args.dataset_select is not None and (args.dataset_select == 0 or args.dataset_select < -1):
        ap.error(f"--dataset-select must be -1 (all) or >= 1 (got {args.dataset_select})")
    if not 0.0 <= args.val_fraction < 1.0:
        ap.error(f"--val-fraction must be in [0, 1) (got {args.val_fraction})")
    if args.workers < 1:
        ap.error(f"--workers must be >= 1 (got {args.workers})")
    return args


class _Bar:
    """A rich progress bar over input bytes (or documents, under --dataset-select) on a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TaskProgressColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            TextColumn(
                "{task.fields[docs]:>10,} docs  {task.fields[tokens]:>13,} tokens  {task.fields[mbps]:6.1f} MB/s"
            ),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.enabled,
        )
        self.task = self.progress.add_task("tokenizing", total=None, docs=0, tokens=0, mbps=0.0)

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def __call__(self, p: Any) -> None:
        if p.max_documents is not None:
            total, done = p.max_documents, p.documents
        else:
            total, done = p.total_bytes, p.read_bytes
        mbps = p.text_bytes / 1e6 / p.seconds if p.seconds > 0 else 0.0
        self.progress.update(
            self.task,
            total=total,
            completed=done,
            docs=p.documents,
            tokens=p.tokens,
            mbps=mbps,
            description=os.path.basename(p.source) or "tokenizing",
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs gpt2rs-prepare; returns the exit status (0 ok, 1 data error, 2 bad option)."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # --help, or a bad option (already reported)
        return int(e.code or 0)

    from gpt2rs.data import DataError, prepare

    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: warning: %(message)s")
    # The hub client logs every retry; the failure is reported once, below. It
    # sets its level when imported (from HF_HUB_VERBOSITY), or it already was.
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")
    if "huggingface_hub" in sys.modules:
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        with _Bar() as bar:
            summary = prepare(
                args.input,
                hf_dataset=args.hf_dataset,
                dataset_path=args.dataset_path,
                dataset_select=args.dataset_select,
                hf_tokenizer=args.hf_tokenizer,
                tokenizer_path=args.tokenizer_path,
                seq_len=args.seq_len,
                batch_size=args.batch_size,
                trim=not args.no_trim,
                val_fraction=args.val_fraction,
                workers=args.workers,
                name=args.name,
                progress=bar,
            )
    except DataError as e:
        sys.stderr.write(f"{PROG}: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; nothing written\n")
        return 130
    s = summary
    print(
        f"{PROG}: {s['out_dir']}: train {s['train_tokens']:,} tokens ({s['train_documents']:,} docs"
        + (
            f", trimmed from {s['train_tokens_untrimmed']:,}"
            if s["train_tokens"] != s["train_tokens_untrimmed"]
            else ""
        )
        + f"), val {s['val_tokens']:,} tokens ({s['val_documents']:,} docs); "
        f"{s['text_bytes'] / 1e6:.1f} MB of text in {s['seconds']:.2f} s = {s['mb_per_s']:.1f} MB/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
