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

The choices are written down once, each in its module: how files split into
documents in `.documents`; the validation split, trimming and dataset
selection in `.preparation`; which files of a hub dataset are read in
`.download`; the tokenizers in `.tokenize`; the reader's checks in `.token_file`.
"""

from __future__ import annotations

from .documents import (
    EXTENSIONS,
    READ_BYTES,
    SNIFF_BYTES,
    TEXT_COLUMN,
    check_inputs,
    file_documents,
    input_kind,
    jsonl_documents,
    parquet_documents,
    txt_documents,
)
from .download import hub_download, hub_files, pick_split_files
from .errors import DataError
from .preparation import BATCH_BYTES, Progress, default_name, prepare
from .token_file import TokenFile
from .tokenize import (
    EOT_CANDIDATES,
    EOT_ID,
    EOT_TEXT,
    GPT2_TOKENIZERS,
    VOCAB_SIZE,
    Gpt2Tokenizer,
    HfTokenizer,
    Tokenizer,
    decode,
    encode,
    get_tokenizer,
    is_gpt2_tokenizer,
)

__all__ = [
    "BATCH_BYTES",
    "EOT_CANDIDATES",
    "EOT_ID",
    "EOT_TEXT",
    "EXTENSIONS",
    "GPT2_TOKENIZERS",
    "READ_BYTES",
    "SNIFF_BYTES",
    "TEXT_COLUMN",
    "VOCAB_SIZE",
    "DataError",
    "Gpt2Tokenizer",
    "HfTokenizer",
    "Progress",
    "TokenFile",
    "Tokenizer",
    "check_inputs",
    "decode",
    "default_name",
    "encode",
    "file_documents",
    "get_tokenizer",
    "hub_download",
    "hub_files",
    "input_kind",
    "is_gpt2_tokenizer",
    "jsonl_documents",
    "parquet_documents",
    "pick_split_files",
    "prepare",
    "txt_documents",
]
