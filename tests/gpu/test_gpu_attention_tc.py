"""The two CUDA attention paths against each other and against the CPU.

The attention tasks have a warp path (cuda/attention.cu: a warp walks the
keys of one query row) and a tensor-core path (cuBLAS products with the
softmax steps of cuda/attention_tc.cu between them); GPT2RS_ATTN=warp / blas
forces one, unset picks by tile size (blas for pairs of at least 64 x 64).
The variable is read per task, so one runtime serves every mode.

Attention is reached through a GPT-2 model (the Python ops API has no
attention op): logits check the forward update, the loss gradients (through
c_attn) the backward. Head size 64 as in GPT-2, T = 200 with sequence tiles
of 64 (64+64+64+8: partial query and key tiles, which blas takes too when
forced) and 100 (two full tiles), batch tiles 2+1, head tiles 2+1; with and
without attention dropout (the CPU's mask: both paths must draw it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import rel_err

import gpt2rs

from .conftest import cuda_impl_or_skip, ran_on_gpu

CFG: dict[str, Any] = {
    "vocab_size": 500,
    "n_positions": 256,
    "n_embd": 192,
    "n_layer": 2,
    "n_head": 3,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attn_pdrop": 0.0,
}
B, T = 3, 200

# (logits and loss, each gradient): GPU vs CPU in the same dtype. The blas
# path rounds the probabilities and dS to bf16 before its products, where
# the CPU and the warp path keep them in f32: within the bf16 contract.
TOL = {"fp32": (3e-5, 1e-4), "bf16": (3e-2, 1.5e-1)}

Result = tuple[np.ndarray, float, dict[str, np.ndarray]]


def step(rt: gpt2rs.Runtime, dtype: str, seq_tile: int, dropout: bool) -> Result:
    cfg = dict(CFG, attn_pdrop=0.2 if dropout else 0.0)
    model = gpt2rs.GPT2LMHead.from_config(
        cfg,
        seed=0,
        dtype=dtype,
        runtime=rt,
        seq_len_tile=seq_tile,
        minibatch_size_tile=2,
        n_head_tile=2,
    )
    rng = np.random.default_rng(11)
    ids = rng.integers(0, CFG["vocab_size"], (B, T))
    tg = rng.integers(0, CFG["vocab_size"], (B, T))
    logits = model.forward(ids)
    model.zero_grad()
    loss = model.forward_backward(ids, targets=tg, dropout_seed=5 if dropout else None)
    return logits, loss, model.gradients()


def compare(got: Result, ref: Result, dtype: str, what: str) -> None:
    tol_out, tol_grad = TOL[dtype]
    assert np.all(np.isfinite(got[0])), f"{what}: non-finite logits"
    err = rel_err(got[0], ref[0])
    assert err <= tol_out, f"{what}: logits off by {err:.2e}"
    assert abs(got[1] - ref[1]) <= tol_out * abs(ref[1]), (what, got[1], ref[1])
    worst = max((rel_err(got[2][k], v), k) for k, v in ref[2].items())
    assert worst[0] <= tol_grad, f"{what}: gradient of {worst[1]} off by {worst[0]:.2e}"


@pytest.mark.parametrize("dropout", [False, True], ids=["nodrop", "drop"])
@pytest.mark.parametrize("seq_tile", [64, 100])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_blas_and_warp_paths_match_cpu(
    cpu_rt: gpt2rs.Runtime,
    cuda_rt: gpt2rs.Runtime,
    monkeypatch: pytest.MonkeyPatch,
    dtype: str,
    seq_tile: int,
    dropout: bool,
) -> None:
    monkeypatch.delenv("GPT2RS_ATTN", raising=False)
    ref = step(cpu_rt, dtype, seq_tile, dropout)
    out: dict[str, Result] = {}
    for mode in ["warp", "blas", "auto"]:
        if mode == "auto":
            monkeypatch.delenv("GPT2RS_ATTN", raising=False)
        else:
            monkeypatch.setenv("GPT2RS_ATTN", mode)
        with cuda_impl_or_skip(f"GPT-2 {dtype}", optional=False), ran_on_gpu(cuda_rt):
            out[mode] = step(cuda_rt, dtype, seq_tile, dropout)
        compare(out[mode], ref, dtype, f"{mode} vs CPU")
    compare(out["blas"], out["warp"], dtype, "blas vs warp")
    # The variable took effect: the paths round differently, so some logit
    # differs in its last bits at least.
    assert not np.array_equal(out["blas"][0], out["warp"][0]), "GPT2RS_ATTN=blas ran the warp path"
    if dropout:
        # The mask is drawn: a dropout run differs from the deterministic one.
        plain = step(cuda_rt, dtype, seq_tile, False)
        assert plain[1] != out["blas"][1]
