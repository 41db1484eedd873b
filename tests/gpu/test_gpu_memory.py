"""GPU memory limits: training a model whose parameters, gradients and AdamW
state are three times the GPU's (deliberately small) limit, as NNTile trains
models larger than GPU memory: the memory manager evicts clean tiles and
writes dirty ones back to the host, and the results do not change."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from conftest import assert_close, rel_err

import gpt2rs
from gpt2rs import ops

from .conftest import ran_on_gpu

CFG = {"vocab_size": 4096, "n_positions": 256, "n_embd": 256, "n_layer": 4, "n_head": 4}
TILES = {
    "seq_len_tile": 64,
    "minibatch_size_tile": 1,
    "hidden_size_tile": 128,
    "intermediate_size_tile": 256,
    "n_head_tile": 2,
    "vocab_tile": 1024,
}
B, T, STEPS = 4, 256, 3


def node(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in st["nodes"] if n["name"] == name)


def train(limit: int | None) -> tuple[list[float], dict[str, np.ndarray], dict[str, Any], int]:
    """STEPS AdamW steps on one GPU; (losses, weights, cuda0 stats, model bytes)."""
    limits = None if limit is None else {"cuda0": limit}
    with gpt2rs.Runtime(ncpu=1, ncuda=1, restrict="cuda", memory_limits=limits) as rt:
        model = gpt2rs.GPT2LMHead.from_config(
            CFG, seed=0, dtype="fp32", runtime=rt, deterministic=True, **TILES
        )
        opt = gpt2rs.AdamW(model, lr=1e-3, weight_decay=0.01)
        rng = np.random.default_rng(0)
        losses = []
        with ran_on_gpu(rt):
            for _ in range(STEPS):
                ids = rng.integers(0, CFG["vocab_size"], (B, T))
                model.zero_grad()
                losses.append(model.forward_backward(ids))
                opt.step()
        state = model.state_dict()
        # fp32 weights, gradients and AdamW's two moments
        model_bytes = 4 * 4 * model.num_parameters()
        return losses, state, node(rt.stats(), "cuda0"), model_bytes


def test_training_beyond_the_gpu_memory_limit() -> None:
    losses, state, free, model_bytes = train(None)
    limit = model_bytes // 3
    assert free["peak_bytes"] > limit, (
        "the unlimited run fits in the limit: the test would prove nothing"
    )
    assert free["evictions"] == 0
    small_losses, small_state, st, _ = train(limit)
    assert st["limit"] == limit
    assert st["peak_bytes"] <= limit, st
    assert st["evictions"] > 0 and st["writebacks"] > 0, st
    np.testing.assert_allclose(small_losses, losses, rtol=1e-5)
    # Where an eviction changes the order of commutative (ACC) accumulations,
    # gradients differ in the last bits, and Adam can turn that into +-lr on
    # entries whose gradient is ~0.
    for k, v in state.items():
        assert rel_err(small_state[k], v) <= 1e-4, k


@pytest.mark.parametrize("scheduler", ["eager", "dmda"])
def test_gemm_chain_evicts_on_the_gpu(scheduler: str) -> None:
    # Six 32x32 fp64 tiles fit on cuda0; a 96x96 GEMM chain touches 27 tiles.
    limit = 6 * 32 * 32 * 8
    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((96, 96))
    with gpt2rs.Runtime(
        ncpu=1, ncuda=1, restrict="cuda", scheduler=scheduler, memory_limits={"cuda0": limit}
    ) as rt:
        with ran_on_gpu(rt):
            a = gpt2rs.Tensor.from_numpy(a_np, (32, 32), runtime=rt)
            c, ref = a, a_np
            for _ in range(4):
                c = ops.gemm(c, a, alpha=1.0 / 96)
                ref = ref @ a_np / 96
            out = c.to_numpy()
        st = node(rt.stats(), "cuda0")
    assert_close(out, ref, "fp64")
    assert st["evictions"] > 0 and st["peak_bytes"] <= limit, st


def test_task_bigger_than_the_gpu_limit_fails_cleanly() -> None:
    # One 32x32 fp32 tile is 4096 bytes; the GEMM task needs A, B and C at once.
    with gpt2rs.Runtime(ncpu=1, ncuda=1, restrict="cuda", memory_limits={"cuda0": 8192}) as rt:
        a = gpt2rs.Tensor.from_numpy(np.ones((32, 32), np.float32), None, runtime=rt)
        c = ops.gemm(a, a)
        with pytest.raises(gpt2rs.TaskError, match="cuda0"):
            rt.wait_all()
        with pytest.raises(gpt2rs.TaskError):
            c.to_numpy()
        # still usable with operands that fit
        x = gpt2rs.Tensor.from_numpy(
            np.arange(16.0, dtype=np.float32).reshape(4, 4), (2, 4), runtime=rt
        )
        y = gpt2rs.Tensor.zeros((4, 4), (2, 4), runtime=rt)
        with ran_on_gpu(rt):
            ops.add(x, y, alpha=2.0)
        np.testing.assert_array_equal(y.to_numpy(), 2.0 * np.arange(16.0).reshape(4, 4))
