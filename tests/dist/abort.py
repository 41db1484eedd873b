"""Rank 1 aborts while the others wait in a barrier that cannot complete:
the whole job must end, non-zero, within seconds."""

from __future__ import annotations

import time

from gpt2rs import mpi

c = mpi.init()
c.barrier()
if c.rank == 1:
    time.sleep(0.2)
    c.abort(7)
else:
    c.barrier()
print("unreachable", flush=True)
