"""Rank 0 makes an NCCL unique id from the wheel's library and broadcasts it
over our MPI communicator; every rank prints what it holds."""

from __future__ import annotations

import hashlib
import json

from gpt2rs import mpi
from gpt2rs._gpt2rs import nccl_unique_id, nccl_version

c = mpi.init()
path = mpi.nccl_library_path()
uid = nccl_unique_id(path) if c.rank == 0 else bytes(128)
uid = c.broadcast(uid, 0)
print(
    json.dumps(
        {
            "rank": c.rank,
            "version": nccl_version(path),
            "len": len(uid),
            "id": hashlib.sha256(uid).hexdigest(),
            "nonzero": any(uid),
        }
    ),
    flush=True,
)
