"""NCCL on a GPU: a one-rank communicator (NCCL allows one rank per GPU, and
the usual test box has one GPU) through the real calls: the unique id made
by rank 0 and broadcast over MPI, ncclCommInitRank, an all-reduce on the
device's stream, destroy. Multi-GPU machines run the same code path with
more ranks."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt2rs import cuda

from .conftest import nccl_installed

SCRIPT = Path(__file__).resolve().parents[1] / "dist" / "nccl_gpu.py"
HYDRA = Path(sys.prefix) / "bin" / "mpiexec.hydra"


@pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not nccl_installed(),
    reason="needs mpi4py and nvidia-nccl-cu13 (pip install '.[mpi,nccl]')",
)
def test_nccl_all_reduce_on_the_gpu_with_the_id_over_mpi() -> None:
    # Under the mpich wheel's launcher, a rank per GPU (two at most); without
    # it, one rank as an MPI singleton.
    n = min(cuda.device_count(), 2) if HYDRA.exists() else 1
    launcher = [str(HYDRA), "-n", str(n)] if HYDRA.exists() else []
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "OMPI_", "MPI4PY_"))}
    p = subprocess.run(
        [*launcher, sys.executable, str(SCRIPT)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    ranks = [json.loads(x) for x in p.stdout.splitlines() if x.startswith("{")]
    want = [sum(r + 1.0 for r in range(n)), 0.5 * n, sum(-2.0 * r for r in range(n))]
    assert len(ranks) == n
    for r in ranks:
        assert r["got"] == want, r
