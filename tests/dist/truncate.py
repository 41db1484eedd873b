"""The root broadcasts 4 bytes, the other ranks expect 2: MPI reports a
truncation on each of those (a non-zero return code), as one DistError line."""

from __future__ import annotations

import json

from gpt2rs import mpi

c = mpi.init()
try:
    c.broadcast(bytes(4 if c.rank == 0 else 2), 0)
    error = None
except mpi.DistError as e:
    error = str(e)
print(json.dumps({"rank": c.rank, "error": error}), flush=True)
