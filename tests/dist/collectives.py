"""Every rank: gpt2rs.mpi.init(), mpi4py traffic interleaved with ours (our
private duplicate of MPI_COMM_WORLD must not match it), then the checks."""

from __future__ import annotations

from checks import check_collectives
from mpi4py import MPI

from gpt2rs import mpi

c = mpi.init()
world = MPI.COMM_WORLD
# A message of the user's in flight on COMM_WORLD while ours run: with the
# same (source, tag) matching on one communicator it would be taken by ours.
req = world.isend(b"user", dest=(c.rank + 1) % c.size, tag=0)
check_collectives(c)
assert world.recv(source=(c.rank - 1) % c.size, tag=0) == b"user"
req.wait()
