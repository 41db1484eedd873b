"""Data parallelism on GPUs: the gradient collectives run through NCCL on the
communication worker's own stream of the GPU (`Runtime(comm=True)` with a
GPU). One rank per GPU is NCCL's rule, so a one-GPU machine runs a world of
one through the real calls (a one-rank NCCL communicator: its sums are
copies, so the run must equal the plain one bit for bit); a machine with two
GPUs or more also runs two ranks under mpiexec, which must agree bitwise."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt2rs
from gpt2rs import cuda, dist
from gpt2rs._gpt2rs import Communicator

from .conftest import nccl_installed

SCRIPT = Path(__file__).resolve().parents[1] / "dist" / "train_api.py"
HYDRA = Path(sys.prefix) / "bin" / "mpiexec.hydra"

CFG = gpt2rs.GPT2Config(
    vocab_size=61,
    n_positions=16,
    n_embd=16,
    n_layer=2,
    n_head=2,
    n_inner=40,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)


needs_nccl = pytest.mark.skipif(
    not nccl_installed(), reason="needs nvidia-nccl-cu13 (pip install '.[nccl]')"
)


def _train(rt: gpt2rs.Runtime, dtype: str, world: dist.World | None) -> dict[str, np.ndarray]:
    model = gpt2rs.GPT2LMHead.from_config(
        CFG,
        seed=3,
        runtime=rt,
        dtype=dtype,
        hidden_size_tile=6,
        intermediate_size_tile=16,
        vocab_tile=25,
        deterministic=True,
    )
    if world is not None:
        model.data_parallel(world)
    opt = gpt2rs.AdamW(model, lr=1e-2)
    rng = np.random.default_rng(11)
    for _ in range(3):
        batch = rng.integers(0, 61, size=(4, 9))
        model.zero_grad()
        for k in range(2):
            mb = batch[2 * k : 2 * k + 2]
            model.forward_backward(mb[:, :-1], targets=mb[:, 1:], grad_scale=0.5)
        model.clip_grad_norm(0.05)
        opt.step()
    rt.wait_all()
    return model.state_dict()


@needs_nccl
@pytest.mark.parametrize("zero_stage", [0, 1])
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_rank_over_nccl_equals_the_plain_run(dtype: str, zero_stage: int) -> None:
    plain_rt = gpt2rs.Runtime(ncpu=1, ncuda=1, restrict="cuda")
    dp_rt = gpt2rs.Runtime(ncpu=1, ncuda=1, restrict="cuda", comm=True)
    try:
        assert dp_rt.comm_on_gpu and not plain_rt.comm_on_gpu
        want = _train(plain_rt, dtype, None)
        (comm,) = Communicator.loopback(1)
        got = _train(dp_rt, dtype, dist.World(comm=comm, zero_stage=zero_stage))
        workers = dp_rt.stats()["workers"]
        assert sum(w["tasks"] for w in workers if w["kind"] == "comm") > 0
    finally:
        plain_rt.shutdown()
        dp_rt.shutdown()
    for name, w in want.items():
        np.testing.assert_array_equal(got[name], w, err_msg=name)


@needs_nccl
@pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not HYDRA.exists(),
    reason="needs mpi4py and the mpich wheel's mpiexec",
)
@pytest.mark.parametrize("zero_stage", [0, 1])
def test_two_ranks_on_two_gpus_agree(zero_stage: int) -> None:
    if cuda.device_count() < 2:
        pytest.skip("needs two GPUs (NCCL: one rank per GPU)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI4PY_"))}
    args = ["--gpu", "--batch", "4", "--zero-stage", str(zero_stage)]
    p = subprocess.run(
        [str(HYDRA), "-n", "2", sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    ranks = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    assert len(ranks) == 2
    assert ranks[0]["hashes"] == ranks[1]["hashes"]
    assert ranks[0]["losses"] == ranks[1]["losses"]
