"""A real NCCL communicator on this rank's GPU (rank r on GPU r modulo the
visible ones), its unique id made by rank 0 and broadcast over MPI, and one
all-reduce: run under mpiexec by tests/gpu/test_gpu_nccl.py. Prints this
rank's JSON line."""

from __future__ import annotations

import json

from gpt2rs import cuda, mpi
from gpt2rs._gpt2rs import nccl_all_reduce_probe, nccl_unique_id

c = mpi.init()
lib = mpi.nccl_library_path()
uid = nccl_unique_id(lib) if c.rank == 0 else bytes(128)
uid = c.broadcast(uid, 0)
values = [float(c.rank + 1), 0.5, -2.0 * c.rank]
got = nccl_all_reduce_probe(
    lib, uid, values, nranks=c.size, rank=c.rank, device=c.rank % cuda.device_count()
)
print(json.dumps({"rank": c.rank, "size": c.size, "got": got}), flush=True)
