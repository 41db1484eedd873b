"""GPT2LMHead against HF transformers in float64 (the golden files in
tests/golden, made by tests/golden/make_golden.py): logits, loss and every
gradient, for every case, several tilings (down to 1) and every dtype."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from conftest import rel_err

import gpt2rs
from gpt2rs.hub import WeightsError

GOLDEN = Path(__file__).parent / "golden"
CASES = ["tiny", "odd", "relu", "hubstyle", "sinusoidal"]

# Relative Frobenius error bounds (the numerics contract).
TOL = {
    "fp64": (1e-12, 1e-12),
    "fp32": (1e-5, 1e-5),
    "tf32": (1e-3, 1e-3),
    "fp32_fast_bf16": (1e-3, 1e-3),
    "fp32_fast_fp16": (1e-3, 1e-3),
    "fp32_fast_tf32": (1e-3, 1e-3),
    "bf16": (3e-2, 1.5e-1),  # (logits and loss, each gradient)
}

TILINGS: dict[str, dict[str, int | None]] = {
    # No tile arguments: cut from the shapes and the runtime's CPU workers.
    "default": {},
    "untiled": dict(
        seq_len_tile="whole",
        minibatch_size_tile="whole",
        hidden_size_tile="whole",
        intermediate_size_tile="whole",
        n_head_tile="whole",
        vocab_tile="whole",
    ),
    "odd": dict(
        seq_len_tile=3,
        minibatch_size_tile=1,
        hidden_size_tile=5,
        intermediate_size_tile=7,
        n_head_tile=1,
    ),
    "ones": dict(
        seq_len_tile=1,
        minibatch_size_tile=1,
        hidden_size_tile=1,
        intermediate_size_tile=1,
        n_head_tile=1,
    ),
}


def reference(case: str) -> dict[str, Any]:
    with np.load(GOLDEN / case / "reference.npz") as z:
        return {k: z[k] for k in z.files}


def load(case: str, rt: gpt2rs.Runtime, dtype: str = "fp64", **tiles: Any) -> gpt2rs.GPT2LMHead:
    return gpt2rs.GPT2LMHead.from_pretrained(GOLDEN / case, dtype=dtype, runtime=rt, **tiles)


def check_case(model: gpt2rs.GPT2LMHead, ref: dict[str, Any], dtype: str) -> None:
    tol_out, tol_grad = TOL[dtype]
    logits = model.forward(ref["input_ids"])
    assert logits.dtype == (np.float64 if dtype == "fp64" else np.float32)
    assert rel_err(logits, ref["logits"]) <= tol_out, rel_err(logits, ref["logits"])
    eval_loss = model.loss(ref["input_ids"], labels=ref["labels"])
    assert abs(eval_loss - float(ref["loss"])) <= tol_out * abs(float(ref["loss"]))
    model.zero_grad()
    loss = model.forward_backward(ref["input_ids"], labels=ref["labels"])
    assert abs(loss - float(ref["loss"])) <= tol_out * abs(float(ref["loss"]))
    grads = model.gradients()
    expected = {k[len("grad/") :]: v for k, v in ref.items() if k.startswith("grad/")}
    assert set(grads) == set(expected)
    worst = max((rel_err(grads[k], v), k) for k, v in expected.items())
    assert worst[0] <= tol_grad, f"{dtype}: gradient of {worst[1]} off by {worst[0]:.2e}"


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("tiling", list(TILINGS))
def test_fp64_matches_hf(rt: gpt2rs.Runtime, case: str, tiling: str) -> None:
    check_case(load(case, rt, "fp64", **TILINGS[tiling]), reference(case), "fp64")


@pytest.mark.parametrize("dtype", ["fp32", "tf32", "fp32_fast_bf16", "bf16"])
@pytest.mark.parametrize("case", ["tiny", "odd"])
def test_other_dtypes_match_hf(rt: gpt2rs.Runtime, case: str, dtype: str) -> None:
    check_case(load(case, rt, dtype, **TILINGS["odd"]), reference(case), dtype)


def test_gradient_accumulation_with_targets(rt: gpt2rs.Runtime) -> None:
    """k minibatches with grad_scale = 1/k give the gradient of the whole batch
    (every target counted, so the per-minibatch means weigh equally)."""
    rng = np.random.default_rng(0)
    model = load("tiny", rt, "fp32", seq_len_tile=2)
    ids = rng.integers(0, 37, (4, 7))
    tg = rng.integers(0, 37, (4, 7))
    model.zero_grad()
    model.forward_backward(ids, targets=tg)
    whole = model.gradients()
    model.zero_grad()
    for i in range(0, 4, 2):
        model.forward_backward(ids[i : i + 2], targets=tg[i : i + 2], grad_scale=0.5)
    acc = model.gradients()
    for k in whole:
        assert rel_err(acc[k], whole[k]) <= 1e-5, k


def test_recompute_gives_the_same_gradients(rt: gpt2rs.Runtime) -> None:
    ref = reference("tiny")
    a = load("tiny", rt, "fp64", seq_len_tile=3)
    b = gpt2rs.GPT2LMHead.from_pretrained(
        GOLDEN / "tiny", dtype="fp64", runtime=rt, seq_len_tile=3, recompute=True
    )
    for m in (a, b):
        m.zero_grad()
        m.forward_backward(ref["input_ids"], labels=ref["labels"])
    ga, gb = a.gradients(), b.gradients()
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k])


def test_dropout_is_seeded_and_off_in_forward(rt: gpt2rs.Runtime) -> None:
    ref = reference("tiny")
    cfg = json.loads((GOLDEN / "tiny" / "config.json").read_text())
    cfg.update(resid_pdrop=0.3, embd_pdrop=0.3, attn_pdrop=0.3)
    model = gpt2rs.GPT2LMHead(cfg, dtype="fp64", runtime=rt, seq_len_tile=3)
    model.load_state_dict(
        gpt2rs.GPT2LMHead.from_pretrained(GOLDEN / "tiny", dtype="fp64", runtime=rt).state_dict()
    )
    # forward never drops
    assert rel_err(model.forward(ref["input_ids"]), ref["logits"]) <= 1e-12
    ids, labels = ref["input_ids"], ref["labels"]
    plain = model.forward_backward(ids, labels=labels)
    assert abs(plain - float(ref["loss"])) <= 1e-12 * float(ref["loss"])
    l1 = model.forward_backward(ids, labels=labels, dropout_seed=1)
    l1b = model.forward_backward(ids, labels=labels, dropout_seed=1)
    l2 = model.forward_backward(ids, labels=labels, dropout_seed=2)
    assert l1 == l1b and l1 != l2 and l1 != plain


def test_dropout_statistics(rt: gpt2rs.Runtime) -> None:
    """Embedding dropout only, one sequence: d(wpe)[t] = d(x0)[t] * mask[t] / (1 - p),
    so the share of exact zeros in the wpe gradient is the share dropped."""
    p = 0.25
    cfg = dict(
        vocab_size=64,
        n_positions=64,
        n_embd=16,
        n_layer=1,
        n_head=2,
        embd_pdrop=p,
        resid_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = gpt2rs.GPT2LMHead.from_config(cfg, seed=0, dtype="fp64", runtime=rt)
    rng = np.random.default_rng(1)
    ids, tg = rng.integers(0, 64, (1, 64)), rng.integers(0, 64, (1, 64))
    model.zero_grad()
    model.forward_backward(ids, targets=tg)
    assert np.mean(model.gradients()["transformer.wpe.weight"] == 0.0) == 0.0
    dropped = []
    for seed in range(8):
        model.zero_grad()
        model.forward_backward(ids, targets=tg, dropout_seed=seed)
        dropped.append(np.mean(model.gradients()["transformer.wpe.weight"] == 0.0))
    # 8 x 1024 Bernoulli(p) draws: sigma ~ 0.005.
    assert abs(float(np.mean(dropped)) - p) < 0.025, dropped
    assert len(set(dropped)) > 1


def test_hubstyle_file_loads_without_prefix(rt: gpt2rs.Runtime) -> None:
    model = load("hubstyle", rt, "fp32")
    assert "transformer.h.0.attn.c_attn.weight" in model.state_dict()


def test_save_pretrained_round_trip(rt: gpt2rs.Runtime, tmp_path: Path) -> None:
    ref = reference("odd")
    model = load("odd", rt, "fp64", n_head_tile=1)
    model.save_pretrained(tmp_path / "out")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["config.json", "model.safetensors"]
    again = gpt2rs.GPT2LMHead.from_pretrained(
        tmp_path / "out", dtype="fp64", runtime=rt, n_head_tile=1
    )
    np.testing.assert_array_equal(again.forward(ref["input_ids"]), model.forward(ref["input_ids"]))
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.GPT2LMHeadModel.from_pretrained(
        tmp_path / "out", attn_implementation="eager"
    ).double()
    with torch.no_grad():
        out = hf(torch.tensor(ref["input_ids"])).logits.numpy()
    assert rel_err(out, ref["logits"]) <= 1e-12


def test_sharded_weights_load(rt: gpt2rs.Runtime, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    src = GOLDEN / "tiny"
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(src / "config.json", d / "config.json")
    state = load_file(str(src / "model.safetensors"))
    names = sorted(state)
    half = len(names) // 2
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        fname = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: state[n] for n in part}, str(d / fname))
        weight_map.update({n: fname for n in part})
    (d / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map})
    )
    ref = reference("tiny")
    model = gpt2rs.GPT2LMHead.from_pretrained(d, dtype="fp64", runtime=rt)
    assert rel_err(model.forward(ref["input_ids"]), ref["logits"]) <= 1e-12


def test_weight_errors_name_every_problem(rt: gpt2rs.Runtime, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    d = tmp_path / "bad"
    d.mkdir()
    shutil.copy(GOLDEN / "tiny" / "config.json", d / "config.json")
    state = load_file(str(GOLDEN / "tiny" / "model.safetensors"))
    del state["transformer.h.1.ln_2.bias"]
    state["transformer.h.0.mlp.extra"] = np.zeros(3)
    state["transformer.ln_f.weight"] = np.zeros(5)
    save_file(state, str(d / "model.safetensors"))
    with pytest.raises(WeightsError) as e:
        gpt2rs.GPT2LMHead.from_pretrained(d, runtime=rt)
    msg = str(e.value)
    assert "h.1.ln_2.bias" in msg and "h.0.mlp.extra" in msg and "ln_f.weight has shape (5,)" in msg
    (d / "model.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(WeightsError, match="not a readable safetensors"):
        gpt2rs.GPT2LMHead.from_pretrained(d, runtime=rt)
    with pytest.raises(WeightsError, match="not found"):
        gpt2rs.GPT2LMHead.from_pretrained(tmp_path / "nowhere", runtime=rt)


def test_bad_inputs(rt: gpt2rs.Runtime) -> None:
    model = load("tiny", rt, "fp32")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward([[1, 2, 37]])
    with pytest.raises(ValueError, match="n_positions"):
        model.forward(np.zeros((1, 17), dtype=np.int64))
    with pytest.raises(ValueError, match="2-D"):
        model.forward(np.zeros((1, 2, 3), dtype=np.int64))
    with pytest.raises(TypeError, match="integers"):
        model.forward(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.forward_backward([[1, 2]], targets=[[1, 99]])
    with pytest.raises(ValueError, match="not divisible"):
        gpt2rs.GPT2LMHead(
            dict(n_embd=10, n_head=3, n_layer=1, vocab_size=5, n_positions=4), runtime=rt
        )
    with pytest.raises(ValueError, match="unknown dtype"):
        gpt2rs.GPT2LMHead(
            dict(n_embd=4, n_head=2, n_layer=1, vocab_size=5, n_positions=4),
            dtype="int8",
            runtime=rt,
        )


def test_model_options_one_object_for_every_constructor(rt: gpt2rs.Runtime) -> None:
    """One ModelOptions (or its fields as keywords) for the constructor,
    from_config and from_pretrained; validated once in Python, read by the
    core attribute by attribute."""
    opts = gpt2rs.ModelOptions(dtype="fp64", seq_len_tile=3, vocab_tile=np.int64(16))
    assert opts.vocab_tile == 16 and type(opts.vocab_tile) is int
    a = gpt2rs.GPT2LMHead.from_pretrained(GOLDEN / "tiny", opts, runtime=rt)
    b = gpt2rs.GPT2LMHead.from_pretrained(
        GOLDEN / "tiny", runtime=rt, dtype="fp64", seq_len_tile=3, vocab_tile=16
    )
    assert a.options == b.options == opts and a.dtype == "fp64"
    ids = np.arange(12).reshape(2, 6) % 37
    np.testing.assert_array_equal(a.forward(ids), b.forward(ids))
    # Keywords replace the object's fields; dropout sets the config's three pdrops.
    c = gpt2rs.GPT2LMHead.from_config(a.config, opts, seed=1, runtime=rt, dropout=0.25)
    assert c.options.seq_len_tile == 3 and c.options.dropout == 0.25
    assert (c.config.resid_pdrop, c.config.embd_pdrop, c.config.attn_pdrop) == (0.25,) * 3
    whole = gpt2rs.GPT2LMHead.from_pretrained(
        GOLDEN / "tiny", runtime=rt, dtype="fp64", **{k: "whole" for k in opts.tiles()}
    )
    assert rel_err(whole.forward(ids), a.forward(ids)) <= 1e-12
    for bad, needle in [
        ({"vocab_tile": -1}, "vocab_tile must be an int >= 1, 'whole'"),
        ({"n_head_tile": 0}, "n_head_tile must be"),
        ({"seq_len_tile": True}, "seq_len_tile must be"),
        ({"dtype": "float32"}, "unknown dtype 'float32'"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"recompute": "yes"}, "recompute must be True or False"),
    ]:
        with pytest.raises(ValueError, match=re.escape(needle)):
            gpt2rs.ModelOptions(**bad)
    with pytest.raises(TypeError, match="unexpected keyword argument 'tile'"):
        gpt2rs.GPT2LMHead(a.config, runtime=rt, tile=4)
    with pytest.raises(TypeError, match=r"options must be a gpt2rs\.ModelOptions"):
        gpt2rs.GPT2LMHead(a.config, "fp64", runtime=rt)  # type: ignore[arg-type]
    # The core reads the same object (and still refuses what Python would).
    from gpt2rs._gpt2rs import Gpt2Core

    with pytest.raises(TypeError, match=r"ModelOptions\.vocab_tile") as e:
        Gpt2Core(a.config, SimpleNamespace(**{**vars(opts), "vocab_tile": -1}), rt)
    assert "a tile size must be" in str(e.value.__cause__)


def test_from_config_initialises_like_hf(rt: gpt2rs.Runtime) -> None:
    cfg = gpt2rs.GPT2Config(vocab_size=100, n_positions=32, n_embd=32, n_layer=4, n_head=4)
    model = gpt2rs.GPT2LMHead.from_config(cfg, seed=3, runtime=rt)
    sd = model.state_dict()
    assert abs(sd["transformer.wte.weight"].std() - 0.02) < 0.002
    assert abs(sd["transformer.h.0.attn.c_proj.weight"].std() - 0.02 / np.sqrt(8)) < 0.001
    assert np.all(sd["transformer.h.0.ln_1.weight"] == 1) and np.all(
        sd["transformer.h.0.mlp.c_fc.bias"] == 0
    )
    again = gpt2rs.GPT2LMHead.from_config(cfg, seed=3, runtime=rt).state_dict()
    assert all(np.array_equal(sd[k], again[k]) for k in sd)


@pytest.mark.parametrize(
    ("field", "value", "msg"),
    [
        ("layer_norm_epsilon", None, "layer_norm_epsilon must be a finite number"),
        ("resid_pdrop", None, "resid_pdrop must be a finite number"),
        ("initializer_range", "0.02", "initializer_range must be a finite number"),
        ("layer_norm_epsilon", 0.0, "layer_norm_epsilon = 0.0 must be > 0"),
        ("model_type", "llama", "model_type 'llama' is not gpt2"),
    ],
)
def test_bad_config_fields_name_the_field(
    tmp_path: Path, field: str, value: object, msg: str
) -> None:
    d = {
        "n_layer": 1,
        "n_embd": 32,
        "n_head": 2,
        "vocab_size": 50,
        "model_type": "gpt2",
        field: value,
    }
    (tmp_path / "config.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=re.escape(msg)):
        gpt2rs.GPT2Config.coerce(tmp_path)
