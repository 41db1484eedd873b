"""gpt2rs.data and gpt2rs-prepare: exact GPT-2 ids, documents from .txt/.jsonl/.parquet,
the val split, meta.json, the byte format, atomic output, the CLI contract, bad inputs,
TokenFile's checks, and a throughput smoke check. No network (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpt2rs import _gpt2rs
from gpt2rs.cli.prepare import main, parse_args
from gpt2rs.data import (
    EOT_ID,
    VOCAB_SIZE,
    DataError,
    TokenFile,
    decode,
    encode,
    get_tokenizer,
    pick_split_files,
    prepare,
    txt_documents,
)

# GPT-2 ids made once, outside the repo, by two independent encoders that agree: OpenAI's
# original encoder.py algorithm (encoder.json + vocab.bpe, `regex` module) and the
# `tiktoken` Python package (r50k_base ranks).
# fmt: off
KNOWN_IDS = [
    ("Hello world", [15496, 995]),
    (" the", [262]),
    ("the", [1169]),
    ("Hello, world!", [15496, 11, 995, 0]),
    ("I'm here, you're there, it's fine; we'll see, they've done, he'd go.",
     [40, 1101, 994, 11, 345, 821, 612, 11, 340, 338, 3734, 26, 356, 1183, 766, 11, 484, 1053, 1760, 11, 339,
      1549, 467, 13]),
    ("DON'T SHOUT'S", [41173, 6, 51, 6006, 12425, 6, 50]),
    ("  leading two spaces", [220, 3756, 734, 9029]),
    ("trailing spaces   ", [9535, 4386, 9029, 220, 220, 220]),
    ("tabs\tand\nnewlines\n\n\nthree", [8658, 82, 197, 392, 198, 3605, 6615, 628, 198, 15542]),
    ("\n", [198]),
    (" ", [220]),
    ("   ", [220, 220, 220]),
    ("a  b   c    d", [64, 220, 275, 220, 220, 269, 220, 220, 220, 288]),
    ("x \n y", [87, 220, 198, 331]),
    ("12345 67890 3.14159 1,000,000", [10163, 2231, 718, 3695, 3829, 513, 13, 1415, 19707, 352, 11, 830, 11, 830]),
    ("Ünïcödé façade naïve café", [127, 250, 77, 26884, 66, 9101, 67, 2634, 24685, 16175, 671, 41492, 40304]),
    ("日本語のテキスト", [33768, 98, 17312, 105, 45739, 252, 5641, 24336, 25084, 43302]),
    ("emoji 🎉🚀 done", [368, 31370, 12520, 236, 231, 8582, 248, 222, 1760]),
    ("Mixed 中文 and English", [44, 2966, 220, 40792, 23877, 229, 290, 3594]),
    ("Ελληνικά κείμενα",
     [138, 243, 39377, 39377, 138, 115, 26180, 29945, 43000, 138, 105, 7377, 118, 30950, 138, 107, 34703,
      30950, 26180, 17394]),
    ("Привет, мир!", [140, 253, 21169, 18849, 38857, 16843, 20375, 11, 12466, 120, 18849, 21169, 0]),
    ("    def f(x):\n        return x ** 2\n",
     [220, 220, 220, 825, 277, 7, 87, 2599, 198, 220, 220, 220, 220, 220, 220, 220, 1441, 2124, 12429, 362,
      198]),
    ("<html><body>hi</body></html>", [27, 6494, 6927, 2618, 29, 5303, 3556, 2618, 12240, 6494, 29]),
    ("http://example.com/path?q=1&r=2", [4023, 1378, 20688, 13, 785, 14, 6978, 30, 80, 28, 16, 5, 81, 28, 17]),
    ("!!!???...,,,", [10185, 28358, 986, 9832, 11]),
    ("Once upon a time, there was a little girl named Lily. She loved to play outside.",
     [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 2576, 3706, 20037, 13, 1375, 6151, 284, 711, 2354, 13]),
    ("\u00a0non-breaking\u00a0spaces\u2003em space", [1849, 13159, 12, 13395, 1849, 2777, 2114, 447, 225, 368, 2272]),
    ("a\r\nb\r\n\r\nc", [64, 201, 198, 65, 201, 198, 201, 198, 66]),
    ("'s", [338]),
    ("''", [7061]),
    ("'ll've're", [1183, 1053, 821]),
    ("word'S", [4775, 6, 50]),
    ("1 2 3 \uff14\uff15\uff16", [16, 362, 513, 27332, 120, 242, 171, 120, 243, 171, 120, 244]),
    ("x" * 150, [24223] * 18 + [12343, 5324]),
    (" " * 130 + "y", [220] * 129 + [331]),
    ("=" * 120, [23926, 10052, 4770, 2559]),
    ("abc" * 60, [39305] * 60),
]
# fmt: on


def _words_text(
    rng: np.random.Generator, ndocs: int, sep: str = "\n<|endoftext|>\n"
) -> tuple[str, list[str]]:
    """TinyStories-like documents (two paragraphs each) joined by `sep`."""
    words = np.array(
        [
            "once",
            "upon",
            "a",
            "time",
            "there",
            "was",
            "little",
            "girl",
            "named",
            "Lily",
            "she",
            "loved",
            "to",
            "play",
            "with",
            "her",
            "ball",
            "in",
            "the",
            "park",
            "one",
            "day",
            "saw",
            "big",
            "dog",
            "and",
            "was",
            "scared",
            "but",
            "friendly",
            "they",
            "became",
            "best",
            "friends",
            "Tim",
            "café",
            "42",
        ]
    )
    docs = []
    for _ in range(ndocs):
        paras = [
            " ".join(rng.choice(words, int(rng.integers(10, 50)))).capitalize() + "."
            for _ in range(2)
        ]
        docs.append("\n\n".join(paras))
    return sep.join(docs) + "\n", docs


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("gpt2rs-prepare: error: "), err
    assert "Traceback" not in err
    return lines[0]


def _files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# -- the tokenizer ------------------------------------------------------------------------


@pytest.mark.parametrize("text,ids", KNOWN_IDS, ids=[repr(t[:24]) for t, _ in KNOWN_IDS])
def test_known_gpt2_ids(text: str, ids: list[int]) -> None:
    (got,) = encode([text], append_eot=False)
    assert got.dtype == np.uint16
    assert got.tolist() == ids
    (with_eot,) = encode([text])
    assert with_eot.tolist() == [*ids, EOT_ID]
    assert _gpt2rs.gpt2_encode_reference(text) == ids  # tiktoken-rs's own encoder agrees
    assert decode(got) == text


def test_batch_offsets_and_empty() -> None:
    ids, offsets = _gpt2rs.gpt2_encode_batch(["Hello world", "", " the"])
    assert ids.tolist() == [15496, 995, EOT_ID, EOT_ID, 262, EOT_ID]
    assert offsets.tolist() == [0, 3, 4, 6]
    assert encode([]) == []
    with pytest.raises(TypeError):
        encode("not a list")  # type: ignore[arg-type]


def test_endoftext_in_text_is_the_token_never_text() -> None:
    (got,) = encode(["a<|endoftext|>b"], append_eot=False)
    assert got.tolist() == [64, EOT_ID, 65]
    assert _gpt2rs.gpt2_encode_reference("a<|endoftext|>b") == [64, EOT_ID, 65]
    # Half a marker is ordinary text.
    assert encode(["<|endoftext"], append_eot=False)[0].tolist() == _gpt2rs.gpt2_encode_reference(
        "<|endoftext"
    )


_ALPHABET = [
    *list("abcXYZ  \t\n\r'sdmtlvre0123456789.,!?-_()<>|="),
    "é",
    "ß",
    "中",
    "🎉",
    "\xa0",
    "\u2003",
    "\u3000",
    "٣",
    "Ⅻ",
    "́",
    "\x0b",
    "\x85",
    "\u2028",
    "<|endoftext|>",
]


@given(st.lists(st.sampled_from(_ALPHABET), max_size=60).map("".join))
def test_fast_encoder_matches_tiktoken_rs(text: str) -> None:
    (got,) = encode([text], append_eot=False)
    assert got.tolist() == _gpt2rs.gpt2_encode_reference(text)


def test_fast_encoder_matches_tiktoken_rs_bulk_and_workers() -> None:
    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(_ALPHABET, int(rng.integers(0, 80)))) for _ in range(3000)]
    ref = [_gpt2rs.gpt2_encode_reference(t) for t in texts]
    for workers in (1, 2, 3):
        got = encode(texts, append_eot=False, workers=workers)
        assert [g.tolist() for g in got] == ref


def test_decode_rejects_bad_ids() -> None:
    with pytest.raises(ValueError, match="vocabulary"):
        decode([VOCAB_SIZE])
    with pytest.raises(ValueError, match="vocabulary"):
        _gpt2rs.gpt2_decode_bytes([70000])


def test_gpt2_names_use_the_builtin_tokenizer() -> None:
    for name in ("openai-community/gpt2", "gpt2", "GPT2-medium", "gpt2-xl", "distilgpt2"):
        tok = get_tokenizer(name)
        assert (tok.vocab_size, tok.eot_id) == (VOCAB_SIZE, EOT_ID)
        assert "built-in" in tok.impl


# -- documents -------------------------------------------------------------------------------


def test_txt_blank_line_separators(tmp_path: Path) -> None:
    f = tmp_path / "blank.txt"
    f.write_text("first doc\nline two\n\n\n  second doc  \n \t \nthird\r\n\r\nfourth\n\n")
    docs = [d for batch, _ in txt_documents(f) for d in batch]
    assert docs == ["first doc\nline two", "second doc", "third", "fourth"]
    # A marker past the sniffed start (which decided on blank lines) still separates.
    f.write_text("one\n\ntwo" + " " * 100 + "three<|endoftext|>four\n")
    docs = [d for batch, _ in txt_documents(f, read_bytes=16, sniff_bytes=16) for d in batch]
    assert docs == ["one", "two" + " " * 100 + "three", "four"]


def test_txt_endoftext_separator_keeps_paragraphs(tmp_path: Path) -> None:
    f = tmp_path / "eot.txt"
    f.write_text(
        "Para one.\n\nPara two.\n<|endoftext|>\nSecond story.\n<|endoftext|>\n\n<|endoftext|>Third."
    )
    docs = [d for batch, _ in txt_documents(f) for d in batch]
    assert docs == ["Para one.\n\nPara two.", "Second story.", "Third."]


@pytest.mark.parametrize("sep", ["\n<|endoftext|>\n", "\n\n", "\r\n\r\n"])
def test_txt_streaming_chunks_give_the_same_documents(tmp_path: Path, sep: str) -> None:
    rng = np.random.default_rng(1)
    text, docs = _words_text(rng, 40, sep=sep)
    if sep != "\n<|endoftext|>\n":  # paragraphs would split, too: one paragraph per document
        docs = [d.replace("\n\n", " ") for d in docs]
        text = sep.join(docs)
    f = tmp_path / "c.txt"
    f.write_bytes(text.encode())
    whole = [d for batch, _ in txt_documents(f) for d in batch]
    for read_bytes in (1, 7, 64, 1000):
        chunked = [d for batch, _ in txt_documents(f, read_bytes=read_bytes) for d in batch]
        assert chunked == whole
    assert whole == [d.strip() for d in docs]


def test_txt_not_utf8(tmp_path: Path) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(b"fine text \xff\xfe more")
    with pytest.raises(DataError, match="not UTF-8"):
        prepare([f], dataset_path=tmp_path / "out", trim=False)
    assert not (tmp_path / "out").exists()


def _check_output(out: Path, docs: list[str]) -> dict:
    """Token files hold exactly encode(docs) (train and val by the split rule) and meta agrees."""
    meta = json.loads((out / "meta.json").read_text())
    train = np.fromfile(out / "train.bin", dtype="<u2")
    val = np.fromfile(out / "val.bin", dtype="<u2")
    enc = encode(docs)
    f = meta["val_fraction"]
    is_val = [f > 0 and np.floor((i + 1) * f) > np.floor(i * f) for i in range(len(docs))]
    exp_train = np.concatenate(
        [e for e, v in zip(enc, is_val) if not v] or [np.zeros(0, np.uint16)]
    )
    exp_val = np.concatenate([e for e, v in zip(enc, is_val) if v] or [np.zeros(0, np.uint16)])
    assert np.array_equal(train, exp_train[: len(train)])
    assert np.array_equal(val, exp_val)
    assert meta["train_tokens"] == len(train) and meta["val_tokens"] == len(val)
    assert meta["train_tokens_untrimmed"] == len(exp_train)
    assert meta["train_documents"] == len(docs) - sum(is_val) and meta["val_documents"] == sum(
        is_val
    )
    return meta


def test_prepare_txt_output_bytes_and_meta(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    text, docs = _words_text(rng, 50)
    f = tmp_path / "Stories.txt"
    f.write_text(text)
    s = prepare([f], dataset_path=tmp_path / "data", seq_len=16, batch_size=2, workers=2)
    out = tmp_path / "data" / "stories"  # default name: the input's stem, lower case
    assert s["out_dir"] == str(out)
    assert _files(out) == ["meta.json", "train.bin", "val.bin"]
    meta = _check_output(out, docs)
    assert (
        meta["train_tokens"] % (2 * 17) == 0
    )  # NNTile's trim: whole batches of seq_len + 1 tokens
    assert meta["train_tokens_untrimmed"] - meta["train_tokens"] < 2 * 17
    assert meta["train_batches"] == meta["train_tokens"] // 34
    for key, value in {
        "tokenizer": "openai-community/gpt2",
        "vocab_size": 50257,
        "eot_id": 50256,
        "seq_len": 16,
        "batch_size": 2,
        "dtype": "uint16",
        "val_fraction": 0.0,
        "documents": 50,
        "dataset_select": -1,
        "dataset": None,
    }.items():
        assert meta[key] == value, key
    assert meta["sources"] == [{"source": str(f), "kind": "txt", "documents": 50}]
    assert meta["text_bytes"] == sum(len(d.encode()) for d in docs)
    assert meta["seconds"] > 0 and meta["mb_per_s"] > 0 and "created" in meta
    assert os.path.getsize(out / "val.bin") == 0
    assert (os.stat(out / "train.bin").st_mode & 0o777) == 0o666 & ~_umask()


def _umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def test_prepare_jsonl_and_val_split(tmp_path: Path) -> None:
    docs = [f"Document number {i}: the quick brown fox.\n\nIt jumps." for i in range(40)]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)) + "\n\n")
    s = prepare([f], dataset_path=tmp_path, val_fraction=0.1, trim=False, name="j")
    meta = _check_output(tmp_path / "j", docs)
    assert meta["val_documents"] == 4 and meta["train_documents"] == 36
    assert s["val_tokens"] == meta["val_tokens"] > 0
    # Deterministic: a second run writes the same bytes.
    first = (tmp_path / "j" / "val.bin").read_bytes()
    prepare([f], dataset_path=tmp_path, val_fraction=0.1, trim=False, name="j")
    assert (tmp_path / "j" / "val.bin").read_bytes() == first


def test_val_split_is_evenly_spread() -> None:
    from gpt2rs.data.preparation import _val_mask

    m = np.concatenate([_val_mask(a, 250, 0.01) for a in range(0, 1000, 250)])
    assert m.sum() == 10 and np.flatnonzero(m).tolist() == list(range(99, 1000, 100))
    assert not _val_mask(0, 100, 0.0).any()


def test_stale_temporaries_of_dead_runs_are_removed(tmp_path: Path) -> None:
    """A kill -9 mid-prepare leaves .train.bin.<pid>.<hex>.tmp; the next run removes those of dead processes."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out" / "a"
    out.mkdir(parents=True)
    stale = out / f".train.bin.{dead.pid}.0a1b2c3d.tmp"
    live = out / f".val.bin.{os.getpid()}.0a1b2c3d.tmp"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    f = tmp_path / "a.txt"
    f.write_text("hello world, hello tokens")
    prepare([f], dataset_path=tmp_path / "out", name="a", trim=False)
    assert (out / "train.bin").is_file()
    assert not stale.exists() and live.exists()


def test_prepare_jsonl_bad_lines(tmp_path: Path) -> None:
    for body, msg in [
        ('{"text": "ok"}\nnot json\n', "line 2: not valid JSON"),
        ('{"body": "x"}\n', "no 'text'"),
        ('["a list"]\n', "JSON object per line"),
        ('{"text": "ok"}\n{"text": "a \\ud800"}\n', "line 2: the text is not valid Unicode"),
    ]:
        f = tmp_path / "bad.jsonl"
        f.write_text(body)
        with pytest.raises(DataError, match=msg):
            prepare([f], dataset_path=tmp_path / "out", trim=False)
        assert not (tmp_path / "out").exists()


def test_prepare_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = [f"Row {i} says hello to the world." for i in range(30)]
    table = pa.table({"text": [*docs[:10], None, *docs[10:]], "n": list(range(31))})
    f = tmp_path / "rows.parquet"
    pq.write_table(table, f, row_group_size=7)
    prepare([f], dataset_path=tmp_path, trim=False, name="pq")
    _check_output(tmp_path / "pq", docs)
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(DataError, match="no 'text' column"):
        prepare([tmp_path / "nocol.parquet"], dataset_path=tmp_path, trim=False)


def test_parquet_without_pyarrow_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name: str, *a, **k):  # type: ignore[no-untyped-def]
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow")
        return real_import(name, *a, **k)

    f = tmp_path / "x.parquet"
    f.write_bytes(b"PAR1 not really")
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match="needs pyarrow"):
        prepare([f], dataset_path=tmp_path / "out", trim=False)
    assert not (tmp_path / "out").exists()


def test_dataset_select_and_several_inputs(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    a.write_text("one\n\ntwo\n\nthree\n")
    b = tmp_path / "b.jsonl"
    b.write_text('{"text": "four"}\n{"text": "five"}\n')
    s = prepare([a, b], dataset_path=tmp_path, dataset_select=4, trim=False, name="sel")
    _check_output(tmp_path / "sel", ["one", "two", "three", "four"])
    assert [x["documents"] for x in s["sources"]] == [3, 1]
    s = prepare([a, b], dataset_path=tmp_path, trim=False, name="all")  # default for inputs: all
    assert s["documents"] == 5


# -- atomic output ------------------------------------------------------------------------


def test_failing_run_leaves_nothing(tmp_path: Path) -> None:
    good = tmp_path / "good.txt"
    good.write_text(_words_text(np.random.default_rng(3), 2000)[0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n')
    root = tmp_path / "data"
    with pytest.raises(DataError):
        prepare([good, bad], dataset_path=root, trim=False, name="x")
    assert not root.exists()  # the directories this run made are gone too

    # An existing dataset survives a failed run untouched, with no temporaries beside it.
    prepare([good], dataset_path=root, trim=False, name="x")
    before = {n: (root / "x" / n).read_bytes() for n in _files(root / "x")}
    with pytest.raises(DataError):
        prepare([good, bad], dataset_path=root, trim=False, name="x")
    assert {n: (root / "x" / n).read_bytes() for n in _files(root / "x")} == before


def test_trim_leaving_nothing_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "small.txt"
    f.write_text("A short story.\n")
    assert main(["--input", str(f), "--dataset-path", str(tmp_path / "o")]) == 1
    assert "fewer than one batch" in _one_error_line(capsys)
    assert not (tmp_path / "o").exists()
    assert main(["--input", str(f), "--dataset-path", str(tmp_path / "o"), "--no-trim"]) == 0
    assert (
        np.fromfile(tmp_path / "o" / "small" / "train.bin", "<u2").tolist()
        == encode(["A short story."])[0].tolist()
    )


# -- the command line ----------------------------------------------------------------------


def test_cli_defaults_match_the_contract() -> None:
    a = parse_args([])
    assert a.hf_dataset == "roneneldan/TinyStories"
    assert a.dataset_path == ".data"
    assert a.dataset_select is None  # 100 for the hub dataset, all for --input (see prepare)
    assert a.hf_tokenizer == "openai-community/gpt2"
    assert a.tokenizer_path is None
    assert (a.seq_len, a.batch_size) == (1024, 1)
    assert a.input is None and a.val_fraction == 0.0 and a.name is None
    assert a.workers >= 1 and not a.no_trim


def test_cli_notebook_command_and_spellings() -> None:
    a = parse_args(["--seq-len=1024", "--batch-size=1024", "--dataset-select=25000"])
    assert (a.seq_len, a.batch_size, a.dataset_select) == (1024, 1024, 25000)
    b = parse_args(
        [
            "--hf_dataset",
            "x/y",
            "--dataset_path",
            "p",
            "--dataset_select",
            "-1",
            "--hf_tokenizer",
            "gpt2",
            "--tokenizer_path",
            "t",
            "--seq_len",
            "8",
            "--batch_size",
            "2",
            "--val_fraction",
            "0.5",
            "--workers",
            "1",
            "--input",
            "a.txt",
            "b.jsonl",
            "--input",
            "c.parquet",
            "--no_trim",
            "--name",
            "n",
        ]
    )
    assert (b.hf_dataset, b.dataset_path, b.dataset_select, b.hf_tokenizer, b.tokenizer_path) == (
        "x/y",
        "p",
        -1,
        "gpt2",
        "t",
    )
    assert (b.seq_len, b.batch_size, b.val_fraction, b.workers, b.name, b.no_trim) == (
        8,
        2,
        0.5,
        1,
        "n",
        True,
    )
    assert b.input == ["a.txt", "b.jsonl", "c.parquet"]


def test_cli_notebook_run_on_local_text(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The notebook's options, on ~5 MB of local stories: one whole 1024 x 1025-token batch."""
    text, docs = _words_text(np.random.default_rng(4), 26000)
    f = tmp_path / "tinystories.txt"
    f.write_text(text)
    rc = main(
        [
            "--seq-len=1024",
            "--batch-size=1024",
            "--dataset-select=25000",
            "--input",
            str(f),
            "--dataset-path",
            str(tmp_path),
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "MB/s" in out and out.count("\n") == 1
    meta = json.loads((tmp_path / "tinystories" / "meta.json").read_text())
    assert meta["documents"] == 25000 and meta["dataset_select"] == 25000
    assert (
        meta["train_tokens"] == meta["train_batches"] * 1024 * 1025 and meta["train_batches"] >= 1
    )
    tf = TokenFile(tmp_path / "tinystories" / "train.bin")
    assert tf.windows(1024) == 1024 * meta["train_batches"]
    assert np.array_equal(np.asarray(tf.tokens[:2000]), np.concatenate(encode(docs[:200]))[:2000])


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    flags = [
        "--hf-dataset",
        "--dataset-path",
        "--dataset-select",
        "--hf-tokenizer",
        "--tokenizer-path",
    ]
    flags += [
        "--seq-len",
        "--batch-size",
        "--input",
        "--val-fraction",
        "--workers",
        "--name",
        "--hf_dataset",
    ]
    for flag in flags:
        assert flag in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--seq-len", "0"], "--seq-len must be >= 1"),
        (["--batch-size", "-3"], "--batch-size must be >= 1"),
        (["--val-fraction", "1.0"], "--val-fraction must be in [0, 1)"),
        (["--dataset-select", "0"], "--dataset-select must be -1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--seq-len", "abc"], "invalid int value"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_cli_bad_options_exit_2_one_line(
    argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert msg in _one_error_line(capsys)


def test_cli_bad_inputs_exit_1_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n\n   \n")
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n")
    afile = tmp_path / "afile"
    afile.write_text("x")
    ok = tmp_path / "ok.txt"
    ok.write_text("Some text.\n")
    out = ["--dataset-path", str(tmp_path / "out"), "--no-trim"]
    cases = [
        (["--input", str(tmp_path / "missing.txt"), *out], "does not exist"),
        (["--input", str(empty), *out], "is empty"),
        (["--input", str(blank), *out], "no documents"),
        (["--input", str(csv), *out], "unknown extension '.csv'"),
        (["--input", str(tmp_path), *out], "is not a file"),
        (
            ["--input", str(ok), "--dataset-path", str(afile / "sub"), "--no-trim"],
            "cannot write to",
        ),
        (["--input", str(ok), "--name", "../up", *out], "plain directory name"),
        (
            [
                "--input",
                str(ok),
                "--hf-tokenizer",
                "bert-base-uncased",
                "--tokenizer-path",
                str(ok),
                *out,
            ],
            "tokenizer",
        ),
    ]
    for argv, msg in cases:
        assert main(argv) == 1, argv
        assert msg in _one_error_line(capsys), argv
        assert not (tmp_path / "out").exists()


def test_cli_hub_unreachable_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    t = time.perf_counter()
    assert main(["--dataset-path", str(tmp_path / "d")]) == 1
    line = _one_error_line(capsys)
    assert "roneneldan/TinyStories" in line and "Hugging Face Hub" in line
    assert time.perf_counter() - t < 30
    assert not (tmp_path / "d" / "tinystories").exists()


def test_non_gpt2_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import tokenizers  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        f = tmp_path / "t.txt"
        f.write_text("text")
        assert (
            main(
                [
                    "--input",
                    str(f),
                    "--hf-tokenizer",
                    "bert-base-uncased",
                    "--dataset-path",
                    str(tmp_path),
                ]
            )
            == 1
        )
        assert "tokenizers" in _one_error_line(capsys)
        return
    from tokenizers import models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, "hello": 2, "world": 3}
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tj = tmp_path / "tokenizer.json"
    tok.save(str(tj))
    f = tmp_path / "w.txt"
    f.write_text("hello world\n\nworld what\n")
    s = prepare([f], dataset_path=tmp_path, tokenizer_path=tmp_path, trim=False, name="w")
    assert (s["vocab_size"], s["eot_id"]) == (4, 0)
    assert np.fromfile(tmp_path / "w" / "train.bin", "<u2").tolist() == [2, 3, 0, 3, 1, 0]


# -- the hub, without a network --------------------------------------------------------------

TINYSTORIES_FILES = [
    ".gitattributes",
    "README.md",
    "TinyStories-train.txt",
    "TinyStories-valid.txt",
    "TinyStoriesV2-GPT4-train.txt",
    "TinyStoriesV2-GPT4-valid.txt",
    "TinyStories_all_data.tar.gz",
    "data/train-00001-of-00004-5852b56a2bd28fd9.parquet",
    "data/train-00000-of-00004-2d5a1467fff1081b.parquet",
    "data/validation-00000-of-00001-869c898b519ad725.parquet",
]


def test_pick_split_files() -> None:
    assert pick_split_files(TINYSTORIES_FILES) == [
        "data/train-00000-of-00004-2d5a1467fff1081b.parquet",
        "data/train-00001-of-00004-5852b56a2bd28fd9.parquet",
    ]
    assert pick_split_files(TINYSTORIES_FILES, have_pyarrow=False) == ["TinyStories-train.txt"]
    assert pick_split_files(["data/train.jsonl", "train.txt"], have_pyarrow=False) == [
        "data/train.jsonl"
    ]
    assert pick_split_files(["data/train-0.parquet"], have_pyarrow=False) == [
        "data/train-0.parquet"
    ]
    assert pick_split_files(["README.md", "restrain.txt"]) == []


def test_hub_dataset_through_a_fake_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import huggingface_hub

    snap = tmp_path / "snap"
    (snap / "data").mkdir(parents=True)
    stories = [f"Story {i}.\n\nThe end." for i in range(150)]
    (snap / "TinyStories-train.txt").write_text("\n<|endoftext|>\n".join(stories))
    (snap / "TinyStories-valid.txt").write_text("Not this one.")
    calls: list[tuple] = []

    def list_repo_files(
        self: object, repo_id: str, repo_type: str | None = None, **k: object
    ) -> list[str]:
        calls.append(("list", repo_id, repo_type))
        return ["TinyStories-train.txt", "TinyStories-valid.txt", "README.md"]

    def snapshot_download(
        repo_id: str,
        repo_type: str | None = None,
        allow_patterns: list[str] | None = None,
        **k: object,
    ) -> str:
        calls.append(("download", repo_id, repo_type, tuple(allow_patterns or ())))
        return str(snap)

    monkeypatch.setattr(huggingface_hub.HfApi, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr("gpt2rs.data.download._have_pyarrow", lambda: False)
    rc = main(["--dataset-path", str(tmp_path / "d"), "--seq-len", "4", "--batch-size", "2"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "d" / "tinystories" / "meta.json").read_text())
    assert meta["documents"] == 100  # NNTile's default --dataset-select
    assert meta["dataset"] == "roneneldan/TinyStories"
    assert (
        meta["sources"][0]["source"] == "hf://datasets/roneneldan/TinyStories/TinyStories-train.txt"
    )
    assert ("download", "roneneldan/TinyStories", "dataset", ("TinyStories-train.txt",)) in calls
    train = np.fromfile(tmp_path / "d" / "tinystories" / "train.bin", "<u2")
    assert np.array_equal(train, np.concatenate(encode(stories[:100]))[: len(train)])
    assert len(train) % 10 == 0


# -- TokenFile ------------------------------------------------------------------------------


def test_token_file_checks(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        TokenFile(tmp_path / "nope.bin")
    with pytest.raises(DataError, match="not a file"):
        TokenFile(tmp_path)
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        TokenFile(tmp_path / "empty.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="odd size"):
        TokenFile(tmp_path / "odd.bin")
    np.array([1, 2, 50257, 3], dtype="<u2").tofile(tmp_path / "big.bin")
    with pytest.raises(DataError, match="id 50257 at position 2"):
        TokenFile(tmp_path / "big.bin")
    with pytest.raises(DataError, match="outside the vocabulary of 10"):
        TokenFile(tmp_path / "big.bin", vocab_size=10)
    assert len(TokenFile(tmp_path / "big.bin", vocab_size=None)) == 4
    assert issubclass(DataError, ValueError)


def test_token_file_windows(tmp_path: Path) -> None:
    ids = np.arange(23, dtype="<u2")
    ids.tofile(tmp_path / "t.bin")
    tf = TokenFile(tmp_path / "t.bin")
    assert len(tf) == 23
    assert tf.windows(4) == 4  # 23 // (4 + 1), NNTile's non-overlapping seq_len + 1 windows
    x, y = tf.window(1, 4)
    assert x.dtype == np.int64 and x.tolist() == [5, 6, 7, 8] and y.tolist() == [6, 7, 8, 9]
    assert tf.window(-1, 4)[0].tolist() == [15, 16, 17, 18]
    with pytest.raises(IndexError):
        tf.window(4, 4)
    with pytest.raises(ValueError):
        tf.windows(0)
    bx, by = tf.batch([0, 3], 4)
    assert (
        bx.shape == (2, 4) and bx[1].tolist() == [15, 16, 17, 18] and by[0].tolist() == [1, 2, 3, 4]
    )
    assert tf.windows(30) == 0


# -- throughput --------------------------------------------------------------------------------


def test_throughput_smoke(tmp_path: Path) -> None:
    """~8 MB of synthetic stories through the whole pipeline; prints MB/s (no assert on time)."""
    base, _ = _words_text(np.random.default_rng(6), 8000)
    f = tmp_path / "big.txt"
    f.write_text("<|endoftext|>".join([base] * 8))
    s = prepare([f], dataset_path=tmp_path, trim=False)
    print(
        f"\ngpt2rs-prepare throughput: {s['text_bytes'] / 1e6:.1f} MB of text, {s['mb_per_s']:.1f} MB/s"
    )
    assert s["documents"] == 64000


def test_a_token_file_shorter_than_its_meta_says_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("hello world, hello tokens, " * 50)
    meta = prepare([f], dataset_path=tmp_path / "out", name="a", trim=False)
    train = Path(meta["train_path"])
    assert len(TokenFile(train)) == meta["train_tokens"]
    with open(train, "r+b") as fh:
        fh.truncate((meta["train_tokens"] - 2) * 2)
    with pytest.raises(DataError, match=r"meta\.json says"):
        TokenFile(train)


def test_help_shows_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: every core)" in text and "(default: every core) (default:" not in text
    assert ") (default: None)" not in text
