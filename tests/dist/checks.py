"""The collectives every rank checks, for the scripts in this folder (run
under mpiexec by tests/test_dist_engines.py). Each rank prints one JSON line."""

from __future__ import annotations

import json

from gpt2rs.mpi import Communicator


def check_collectives(c: Communicator, rounds: int = 20) -> None:
    """Checks alltoallv, allgatherv (a zero count included), broadcast and
    barrier over several rounds, then prints this rank's JSON line."""
    r, n = c.rank, c.size
    for k in range(rounds):
        # Rank r sends (r + 1) bytes of value 10 r + d + k to each rank d.
        send = b"".join(bytes([(10 * r + d + k) % 256]) * (r + 1) for d in range(n))
        got = c.alltoallv(send, [r + 1] * n, [s + 1 for s in range(n)])
        want = b"".join(bytes([(10 * s + r + k) % 256]) * (s + 1) for s in range(n))
        assert got == want, (k, got, want)

        counts = [(s + k) % 3 for s in range(n)]
        got = c.allgatherv(bytes([r]) * counts[r], counts)
        assert got == b"".join(bytes([s]) * counts[s] for s in range(n)), (k, got)

        root = k % n
        payload = bytes([root, k % 256]) * 32 if r == root else bytes(64)
        assert c.broadcast(payload, root) == bytes([root, k % 256]) * 32
        c.barrier()
    print(json.dumps({"rank": r, "size": n, "backend": c.backend}), flush=True)
