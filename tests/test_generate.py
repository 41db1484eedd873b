"""Incremental decoding (the KV cache), GPT2LMHead.generate, the sampler and
the gpt2rs-generate CLI.

The cache checks use token ids directly (no tokenizer): logits of
`forward_cached` run in chunks equal the full forward's (and HF's float64
golden logits) at every position, for several tilings and batch > 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import rel_err

import gpt2rs
from gpt2rs import _gpt2rs
from gpt2rs.cli import generate as cli
from gpt2rs.generate import next_token_probs, sample

GOLDEN = Path(__file__).parent / "golden"

TILINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "untiled": dict(
        seq_len_tile="whole",
        minibatch_size_tile="whole",
        intermediate_size_tile="whole",
        n_head_tile="whole",
        vocab_tile="whole",
    ),
    "seq1": dict(seq_len_tile=1, n_head_tile=1),
    "seq2": dict(seq_len_tile=2, minibatch_size_tile=1),
    "odd": dict(
        seq_len_tile=3,
        minibatch_size_tile=2,
        hidden_size_tile=5,
        intermediate_size_tile=7,
        n_head_tile=1,
    ),
}

HAS_TOKENIZER = hasattr(_gpt2rs, "gpt2_encode_batch") and hasattr(_gpt2rs, "gpt2_decode_bytes")


def load(case: str, rt: gpt2rs.Runtime, dtype: str = "fp64", **tiles: Any) -> gpt2rs.GPT2LMHead:
    return gpt2rs.GPT2LMHead.from_pretrained(GOLDEN / case, dtype=dtype, runtime=rt, **tiles)


def cached_logits(model: gpt2rs.GPT2LMHead, ids: np.ndarray, chunks: list[int]) -> np.ndarray:
    """Logits [B, T, V] of ids fed through one cache in chunks of these lengths."""
    bsz, v = ids.shape[0], model.config.vocab_size
    cache = model.new_cache(bsz)
    out, t = [], 0
    for n in chunks:
        part = np.ascontiguousarray(ids[:, t : t + n])
        out.append(model.forward_cached(cache, part).reshape(bsz, n, v))
        t += n
        assert len(cache) == t
    return np.concatenate(out, axis=1)


# -- the cache against the full forward -----------------------------------------------


@pytest.mark.parametrize("case", ["tiny", "odd", "sinusoidal", "relu", "hubstyle"])
@pytest.mark.parametrize("tiling", list(TILINGS))
def test_cached_matches_full_forward(rt: gpt2rs.Runtime, case: str, tiling: str) -> None:
    """Prefill 3 positions, then one at a time, up to n_positions, batch 3:
    every position's logits equal the full forward's (fp64, 1e-12)."""
    model = load(case, rt, **TILINGS[tiling])
    cfg = model.config
    ids = np.random.default_rng(1).integers(0, cfg.vocab_size, (3, cfg.n_positions))
    full = model.forward(ids)
    got = cached_logits(model, ids, [3] + [1] * (cfg.n_positions - 3))
    for t in range(cfg.n_positions):
        assert rel_err(got[:, t], full[:, t]) <= 1e-12, (t, rel_err(got[:, t], full[:, t]))


@pytest.mark.parametrize("case", ["tiny", "odd", "relu"])
def test_cached_matches_hf(rt: gpt2rs.Runtime, case: str) -> None:
    """The golden inputs through the cache against HF's float64 logits."""
    with np.load(GOLDEN / case / "reference.npz") as z:
        ids, ref = z["input_ids"], z["logits"]
    model = load(case, rt, **TILINGS["odd"])
    t = ids.shape[1]
    got = cached_logits(model, ids, [min(3, t)] + [1] * (t - min(3, t)))
    assert rel_err(got, ref) <= 1e-12


def test_cached_any_chunking(rt: gpt2rs.Runtime) -> None:
    """Chunks of any lengths (prefill of 1, long chunks crossing sequence
    tiles, the whole window at once) give the same logits."""
    model = load("odd", rt, seq_len_tile=3, minibatch_size_tile=1)
    cfg = model.config
    rng = np.random.default_rng(2)
    ids = rng.integers(0, cfg.vocab_size, (2, cfg.n_positions))
    full = model.forward(ids)
    for chunks in ([1] * 11, [11], [1, 4, 2, 4], [5, 5, 1], [2, 7, 2]):
        assert rel_err(cached_logits(model, ids, chunks), full) <= 1e-12, chunks


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cached_other_dtypes(rt: gpt2rs.Runtime, dtype: str) -> None:
    model = load("tiny", rt, dtype, seq_len_tile=2, n_head_tile=1)
    ids = np.random.default_rng(3).integers(0, 37, (2, 16))
    full = model.forward(ids)
    got = cached_logits(model, ids, [3] + [1] * 13)
    assert got.dtype == np.float32
    assert rel_err(got, full) <= (1e-5 if dtype == "fp32" else 3e-2)


def test_last_only(rt: gpt2rs.Runtime) -> None:
    """last_only: the logits of the last new position, [B, V]."""
    model = load("tiny", rt, seq_len_tile=2, minibatch_size_tile=1)
    ids = np.random.default_rng(4).integers(0, 37, (3, 9))
    full = model.forward(ids)
    cache = model.new_cache(3)
    last = model.forward_cached(cache, np.ascontiguousarray(ids[:, :5]), last_only=True).reshape(
        3, 37
    )
    assert rel_err(last, full[:, 4]) <= 1e-12
    last = model.forward_cached(cache, np.ascontiguousarray(ids[:, 5:]), last_only=True).reshape(
        3, 37
    )
    assert rel_err(last, full[:, 8]) <= 1e-12
    assert len(cache) == 9


def test_cache_full_and_misuse(rt: gpt2rs.Runtime) -> None:
    model = load("tiny", rt, seq_len_tile=4)
    ids = np.random.default_rng(5).integers(0, 37, (2, 16))
    cache = model.new_cache(2)
    assert (cache.batch, cache.capacity, len(cache)) == (2, 16, 0)
    model.forward_cached(cache, ids)
    with pytest.raises(
        ValueError, match=r"KV cache is full: 16 cached \+ 1 new positions exceed n_positions = 16"
    ):
        model.forward_cached(cache, ids[:, :1].copy())
    assert len(cache) == 16  # a refused call changes nothing
    # truncate / reset make room again, and the logits are those of the new prefix
    cache.truncate(10)
    with pytest.raises(ValueError, match="cannot truncate"):
        cache.truncate(11)
    other = np.ascontiguousarray(ids[:, ::-1][:, :6])
    got = model.forward_cached(cache, other).reshape(2, 6, 37)
    assert rel_err(got, model.forward(np.concatenate([ids[:, :10], other], 1))[:, 10:]) <= 1e-12
    cache.reset()
    assert len(cache) == 0
    with pytest.raises(ValueError, match="batch of 1 rows for a cache of 2"):
        model.forward_cached(cache, ids[:1, :2].copy())
    with pytest.raises(ValueError, match="another model"):
        load("tiny", rt).forward_cached(cache, ids[:, :2].copy())
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward_cached(cache, np.full((2, 1), 37, np.int64))
    with pytest.raises(ValueError, match="batch size"):
        model.new_cache(0)
    assert "len=0" in repr(cache)


# -- generate ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["fp64", "fp32"])
@pytest.mark.parametrize(
    "sampling",
    [
        dict(temperature=0.0),
        dict(temperature=1.0, seed=7),
        dict(temperature=0.8, top_k=5, top_p=0.9, seed=11),
    ],
    ids=["greedy", "sampled", "topk-topp"],
)
def test_generate_cache_equals_no_cache(
    rt: gpt2rs.Runtime, dtype: str, sampling: dict[str, Any]
) -> None:
    model = load("odd", rt, dtype, seq_len_tile=2, n_head_tile=1)
    prompt = np.random.default_rng(6).integers(0, 53, (2, 3))
    a = model.generate(prompt, 8, use_cache=True, **sampling)
    b = model.generate(prompt, 8, use_cache=False, **sampling)
    assert a.shape == (2, 11) and a.dtype == np.int64
    np.testing.assert_array_equal(a[:, :3], prompt)
    np.testing.assert_array_equal(a, b)


def test_generate_greedy_is_argmax(rt: gpt2rs.Runtime) -> None:
    """Greedy tokens are the argmax of the full forward at each step."""
    model = load("tiny", rt)
    out = model.generate([3, 1, 4], 6, temperature=0)
    assert out.shape == (9,)
    logits = model.forward(out[None, :-1])[0]
    np.testing.assert_array_equal(out[3:], np.argmax(logits[2:], axis=-1))


def test_generate_seeds(rt: gpt2rs.Runtime) -> None:
    model = load("tiny", rt)
    prompt = np.array([[1, 2, 3]])
    a = model.generate(prompt, 12, seed=1)
    np.testing.assert_array_equal(a, model.generate(prompt, 12, seed=1))
    assert not np.array_equal(a, model.generate(prompt, 12, seed=2))
    # rows of a batch draw independently but reproducibly
    two = model.generate(np.repeat(prompt, 2, 0), 12, seed=1)
    assert two.shape == (2, 15)


def test_generate_limits_and_errors(rt: gpt2rs.Runtime) -> None:
    model = load("tiny", rt)  # n_positions 16
    prompt = np.arange(10)[None] % 37
    # 10 + 7 tokens run 16 positions (the last token is never fed back)
    assert model.generate(prompt, 7, temperature=0).shape == (1, 17)
    assert model.generate(prompt, 7, temperature=0, use_cache=False).shape == (1, 17)
    with pytest.raises(ValueError, match="more than n_positions = 16"):
        model.generate(prompt, 8)
    np.testing.assert_array_equal(model.generate(prompt, 0), prompt)
    bad: list[tuple[dict[str, Any], str]] = [
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(top_k=-2), "top_k"),
        (dict(top_k=2.5), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=-1), "seed"),
        (dict(eos_token_id=99), "eos_token_id"),
    ]
    for kw, msg in bad:
        with pytest.raises(ValueError, match=msg):
            model.generate(prompt, 2, **kw)
    with pytest.raises(ValueError, match="max_new_tokens"):
        model.generate(prompt, -1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([[40]], 2)
    with pytest.raises(ValueError, match="2-D"):
        model.generate(np.zeros((1, 1, 1), np.int64), 2)


def test_generate_stops_at_eos(rt: gpt2rs.Runtime) -> None:
    model = load("tiny", rt)
    prompt = np.array([[1, 2], [5, 6]])
    free = model.generate(prompt, 10, temperature=0)
    eos = int(free[0, 4])  # the third token row 0 produces
    out = model.generate(prompt, 10, temperature=0, eos_token_id=eos)
    for row, ref in zip(out, free):
        hits = np.flatnonzero(ref[2:] == eos)
        n = hits[0] + 1 if hits.size else out.shape[1] - 2
        np.testing.assert_array_equal(row[: 2 + n], ref[: 2 + n])
        assert (row[2 + n :] == eos).all()  # a finished row pads with eos
    if all((r[2:] == eos).any() for r in free):
        assert out.shape[1] < free.shape[1]


# -- sampling semantics on a controlled distribution --------------------------------------


def hf_reference(
    logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None
) -> np.ndarray:
    """HF's TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper, in numpy."""
    x = logits / temperature
    if top_k:
        kth = np.sort(x)[-min(top_k, x.size)]
        x = np.where(x < kth, -np.inf, x)
    if top_p is not None and top_p < 1.0:
        order = np.argsort(x, kind="stable")  # ascending
        p = np.exp(x[order] - x.max())
        cum = np.cumsum(p / p.sum())
        remove = cum <= 1 - top_p
        remove[-1] = False
        x = x.copy()
        x[order[remove]] = -np.inf
    e = np.exp(x - x.max())
    return e / e.sum()


def test_probs_semantics() -> None:
    p = np.array([0.4, 0.3, 0.2, 0.1])
    lg = np.log(p)
    np.testing.assert_allclose(next_token_probs(lg), p)
    # temperature: softmax(logits / T)
    t = np.exp(lg / 0.5)
    np.testing.assert_allclose(next_token_probs(lg, 0.5), t / t.sum())
    # greedy: one-hot on the argmax, whatever top-k / top-p say
    np.testing.assert_array_equal(next_token_probs(lg, 0.0, top_k=3, top_p=0.1), [1, 0, 0, 0])
    # top-k keeps the k largest, renormalized
    np.testing.assert_allclose(next_token_probs(lg, top_k=2), [4 / 7, 3 / 7, 0, 0])
    np.testing.assert_allclose(next_token_probs(lg, top_k=0), p)  # 0: off
    # top-k keeps every token tied with the k-th
    np.testing.assert_allclose(
        next_token_probs(np.log([0.4, 0.2, 0.2, 0.2]), top_k=2), [0.4, 0.2, 0.2, 0.2]
    )
    # top-p: the smallest prefix (by probability) whose mass reaches p, the crossing token included
    np.testing.assert_allclose(next_token_probs(lg, top_p=0.35), [1, 0, 0, 0])
    np.testing.assert_allclose(next_token_probs(lg, top_p=0.45), [4 / 7, 3 / 7, 0, 0])
    np.testing.assert_allclose(next_token_probs(lg, top_p=0.75), [4 / 9, 3 / 9, 2 / 9, 0])
    np.testing.assert_allclose(next_token_probs(lg, top_p=1.0), p)
    # order: top-k first, then top-p on the renormalized survivors
    np.testing.assert_allclose(next_token_probs(lg, top_k=3, top_p=0.75), [4 / 7, 3 / 7, 0, 0])
    rng = np.random.default_rng(8)
    for _ in range(200):
        v = int(rng.integers(1, 12))
        x = rng.normal(0, 2, v)
        temp = float(rng.uniform(0.2, 2.0))
        k = int(rng.integers(0, v + 2)) or None
        tp = float(rng.uniform(0.05, 1.0))
        np.testing.assert_allclose(
            next_token_probs(x, temp, k, tp), hf_reference(x, temp, k, tp), atol=1e-12
        )
    # batches: the last axis is the vocabulary
    assert next_token_probs(np.stack([lg, lg[::-1]]), top_k=1).tolist() == [
        [1, 0, 0, 0],
        [0, 0, 0, 1],
    ]


def test_sample_frequencies() -> None:
    """Draws follow the filtered distribution; filtered-out tokens never appear."""
    lg = np.log([0.4, 0.3, 0.2, 0.1])
    n = 40000
    rng = np.random.default_rng(9)
    cases: list[tuple[dict[str, Any], list[float]]] = [
        (dict(), [0.4, 0.3, 0.2, 0.1]),
        (dict(top_k=2), [4 / 7, 3 / 7, 0, 0]),
        (dict(top_p=0.75), [4 / 9, 3 / 9, 2 / 9, 0]),
        (dict(temperature=0.5), [16 / 30, 9 / 30, 4 / 30, 1 / 30]),
    ]
    for kw, expect in cases:
        draws = sample(np.tile(lg, (n, 1)), rng, **kw)
        freq = np.bincount(draws, minlength=4) / n
        e = np.asarray(expect)
        assert (freq[e == 0] == 0).all(), (kw, freq)
        assert np.all(np.abs(freq - e) <= 5 * np.sqrt(e * (1 - e) / n) + 1e-12), (kw, freq)
    np.testing.assert_array_equal(sample(np.stack([lg, lg[::-1]]), rng, temperature=0), [0, 3])
    # the same seed draws the same tokens
    a = sample(np.tile(lg, (50, 1)), np.random.default_rng(1))
    np.testing.assert_array_equal(a, sample(np.tile(lg, (50, 1)), np.random.default_rng(1)))


# -- timing (printed, not asserted) ----------------------------------------------------------


def test_time_per_token_by_context(rt: gpt2rs.Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    """Decode cost with the cache grows slowly with the context (attention
    only); without it every token reruns the whole window."""
    cfg = dict(vocab_size=512, n_positions=320, n_embd=64, n_layer=2, n_head=4)
    model = gpt2rs.GPT2LMHead.from_config(cfg, dtype="fp32", runtime=rt)
    rng = np.random.default_rng(10)
    lines = []
    for ctx in (32, 256):
        ids = rng.integers(0, 512, (1, ctx))
        cache = model.new_cache(1)
        model.forward_cached(cache, ids, last_only=True)
        steps = 16
        t0 = time.perf_counter()
        for i in range(steps):
            model.forward_cached(cache, np.array([[i]], np.int64), last_only=True)
        cached = (time.perf_counter() - t0) / steps
        t0 = time.perf_counter()
        for _ in range(3):
            model.forward(ids)
        full = (time.perf_counter() - t0) / 3
        lines.append(
            f"context {ctx:3d}: {cached * 1e3:6.2f} ms/token with the KV cache, {full * 1e3:7.2f} ms/token without"
        )
    with capsys.disabled():
        print(
            "\n[gpt2rs] decode time per token (2 layers, n_embd 64, vocab 512, 2 workers):\n  "
            + "\n  ".join(lines)
        )


# -- the CLI ---------------------------------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = cli.main(["--ncpu", "2", *argv])
    except SystemExit as e:
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_defaults_and_aliases() -> None:
    ns = cli.parse_args([])
    assert ns.model == "openai-community/gpt2"
    assert ns.prompt == "Once upon a time"
    assert (ns.max_new_tokens, ns.temperature, ns.top_k, ns.top_p, ns.seed) == (64, 1.0, 50, 1.0, 0)
    assert (ns.dtype, ns.restrict, ns.no_cache, ns.model_path) == ("fp32", None, False, ".model")
    ns = cli.parse_args(
        [
            "--max_new_tokens=5",
            "--top_k",
            "0",
            "--cache-dir",
            "/x",
            "--restrict",
            "None",
            "--no-cache",
        ]
    )
    assert (ns.max_new_tokens, ns.top_k, ns.model_path, ns.restrict, ns.no_cache) == (
        5,
        0,
        "/x",
        None,
        True,
    )
    assert cli.parse_args(["--prompt-ids", "1, 2 3"]).prompt_ids == [1, 2, 3]
    assert cli.parse_args(["--model-path", "/y"]).model_path == "/y"
    # The model flags are gpt2rs-train's: one ModelOptions, -1 = "whole".
    opts = cli.parse_args(["--vocab-tile", "-1", "--seq_len_tile", "8", "--dtype", "bf16"]).options
    assert (opts.vocab_tile, opts.seq_len_tile, opts.dtype) == ("whole", 8, "bf16")


def test_cli_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """StarPU's variables fill the flags left unset, as for gpt2rs-train."""
    monkeypatch.setenv("STARPU_NCPU", "3")
    monkeypatch.setenv("STARPU_NCUDA", "0")
    ns = cli.parse_args([])
    assert (ns.ncpu, ns.ncuda) == (3, 0)
    assert cli.parse_args(["--ncpu", "1"]).ncpu == 1
    monkeypatch.setenv("STARPU_NCPU", "many")
    with pytest.raises(SystemExit) as e:
        cli.parse_args([])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "STARPU_NCPU='many' is not an integer" in err, err
    assert err.count("\n") == 1


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["--top-p", "0"], "--top-p must be in (0, 1]"),
        (["--top-p", "2"], "--top-p must be in (0, 1]"),
        (["--temperature", "-1"], "--temperature"),
        (["--top-k", "-3"], "--top-k"),
        (["--max-new-tokens", "-1"], "--max-new-tokens"),
        (["--seed", "-1"], "--seed"),
        (["--ncpu", "0"], "--ncpu"),
        (["--n-head-tile", "0"], "--n-head-tile must be >= 1 or -1"),
        (["--dtype", "fp8"], "invalid choice"),
        (["--restrict", "tpu"], "invalid choice"),
        (["--prompt-ids", "1,x"], "not a list of token ids"),
        (["--bogus"], "unrecognized arguments"),
    ],
)
def test_cli_bad_options(capsys: pytest.CaptureFixture[str], argv: list[str], msg: str) -> None:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("gpt2rs-generate: error:") and msg in err and err.count("\n") == 1, err


def test_cli_bad_models(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = [
        (["--model", str(tmp_path / "missing")], "model directory not found"),
        (["--model", str(tmp_path)], "no config.json"),
        (["--restrict", "cuda"], "CUDA is not available"),
        (
            ["--model", str(GOLDEN / "tiny"), "--prompt-ids", "1", "--max-new-tokens", "40"],
            "at most 16 new tokens",
        ),
        (
            ["--model", str(GOLDEN / "tiny"), "--prompt-ids", "99"],
            "outside the model's vocabulary [0, 37)",
        ),
    ]
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "latest").write_text("checkpoint-9\n")
    cases.append((["--model", str(tmp_path / "root")], "not a model directory with a config.json"))
    (tmp_path / "file").write_text("x")
    cases.append((["--model", str(tmp_path / "file")], "is a file"))
    for argv, msg in cases:
        rc, out, err = run_cli(capsys, *argv)
        assert rc == 1 and out == "", argv
        assert err.startswith("gpt2rs-generate: error:") and msg in err and err.count("\n") == 1, (
            argv,
            err,
        )
        assert "Traceback" not in err


def test_cli_hub_offline(tmp_path: Path) -> None:
    """The installed console script, an unknown hub id, no network: one line, exit 1."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    code = "import sys; from gpt2rs.cli.generate import main; sys.exit(main())"
    argv = [
        "--model",
        "no-such-org/no-such-model",
        "--cache-dir",
        str(tmp_path / "hub"),
        "--ncpu",
        "1",
    ]
    r = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert r.stderr.startswith("gpt2rs-generate: error: cannot get 'no-such-org/no-such-model'"), (
        r.stderr
    )
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_cli_ids_and_checkpoint_root(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """--prompt-ids / --print-ids need no tokenizer; a checkpoint root resolves
    through `latest`; --no-cache prints the same tokens."""
    model = gpt2rs.GPT2LMHead.from_pretrained(GOLDEN / "tiny", dtype="fp32")
    ck = tmp_path / "ckpts" / "checkpoint-12"
    model.save_pretrained(ck)
    (ck / "optimizer.json").write_text("{}")  # checkpoints carry extra files
    (tmp_path / "ckpts" / "latest").write_text("checkpoint-12\n")
    common = [
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "9",
        "--print-ids",
        "--ignore-eos",
        "--seed",
        "4",
    ]
    rc, out, err = run_cli(capsys, "--model", str(tmp_path / "ckpts"), *common)
    assert rc == 0, err
    ids = [int(x) for x in out.split()]
    assert ids[:3] == [1, 2, 3] and len(ids) == 12
    assert "9 new tokens" in err
    expect = model.generate([1, 2, 3], 9, top_k=50, seed=4)
    assert ids == expect.tolist()
    rc, out2, _ = run_cli(capsys, "--model", str(ck), "--no-cache", *common)
    assert rc == 0 and out2 == out
    rc, out3, err3 = run_cli(
        capsys, "--model", str(GOLDEN / "tiny"), "--temperature", "0", "--quiet", *common
    )
    assert rc == 0 and err3 == ""
    assert [int(x) for x in out3.split()] == model.generate([1, 2, 3], 9, temperature=0).tolist()


@pytest.mark.skipif(not HAS_TOKENIZER, reason="this build has no GPT-2 tokenizer")
def test_cli_text(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """A GPT-2-vocabulary model: the prompt is encoded, the text printed."""
    from gpt2rs.generate import decode, encode

    cfg = dict(vocab_size=50257, n_positions=64, n_embd=8, n_layer=1, n_head=2)
    d = tmp_path / "m"
    gpt2rs.GPT2LMHead.from_config(cfg, seed=3).save_pretrained(d)
    assert decode(encode("Once upon a time")) == "Once upon a time"
    rc, out, err = run_cli(capsys, "--model", str(d), "--max-new-tokens", "12", "--ignore-eos")
    assert rc == 0, err
    assert out.startswith("Once upon a time") and out.endswith("\n")
    rc, ids_out, _ = run_cli(
        capsys, "--model", str(d), "--max-new-tokens", "12", "--ignore-eos", "--print-ids"
    )
    ids = [int(x) for x in ids_out.split()]
    assert ids[:4] == encode("Once upon a time").tolist() and len(ids) == 16
    assert out == decode(ids) + "\n"
    # an empty prompt starts from end-of-text, which is not printed
    rc, out, err = run_cli(
        capsys, "--model", str(d), "--prompt", "", "--max-new-tokens", "3", "--ignore-eos"
    )
    assert rc == 0, err
