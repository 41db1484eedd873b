"""Data-parallel training: every rank holds the model, trains on its slice of
each global batch, and the gradient tiles are summed over the ranks by
collectives that run as tasks of the runtime's graph (overlapping backward).

    $ mpiexec -n 2 python train.py

    import gpt2rs
    from gpt2rs import dist

    world = dist.init()                  # MPI when started by mpiexec/srun; else one process
    model = gpt2rs.GPT2LMHead.from_config(config, seed=0)
    opt = gpt2rs.AdamW(model, lr=3e-4)
    for ids in batches:                  # each rank: its own slice of the global batch
        model.zero_grad()
        loss = model.forward_backward(ids)   # gradients pre-scaled by 1 / world.size
        model.clip_grad_norm(1.0)            # reduces the gradients first
        opt.step()                           # (reduces them if clip did not)
        loss = world.mean(loss)              # the global batch's loss, the same on every rank

On GPUs, each rank takes one: ``gpt2rs.Runtime(ncuda=1, first_gpu=world.local_rank,
comm=True)`` for the model's runtime; its collectives then run through NCCL
(``pip install 'gpt2rs[nccl]'``) on a stream of their own.

With ``zero_stage=1`` the optimizer state and the master weights are
sharded by parameter tile (ZeRO-1): each tile's owner steps it and the
updated tile is gathered by every rank; the result is stage 0's, bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from dataclasses import dataclass

from gpt2rs import mpi
from gpt2rs._gpt2rs import Communicator, DistError, Runtime, set_default_runtime

__all__ = ["Communicator", "DistError", "World", "init", "world"]

ZERO_STAGES = (0, 1)
DEFAULT_BUCKET_MB = 4.0


@dataclass(frozen=True)
class World:
    """The processes training together: this one's rank among `size`, and how
    they share the work. A world of one (``comm`` None) changes nothing."""

    comm: Communicator | None = None
    zero_stage: int = 0
    bucket_bytes: int = int(DEFAULT_BUCKET_MB * (1 << 20))
    #: This rank's index among the ranks on its machine (the GPU it takes).
    local_rank: int = 0

    @property
    def rank(self) -> int:
        return 0 if self.comm is None else self.comm.rank

    @property
    def size(self) -> int:
        return 1 if self.comm is None else self.comm.size

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that draws progress, logs and writes checkpoints."""
        return self.rank == 0

    def gather_floats(self, values: list[float]) -> list[list[float]]:
        """Every rank's `values` (the same count on each), in rank order."""
        if self.comm is None:
            return [list(values)]
        mine = struct.pack(f"<{len(values)}d", *values)
        data = self.comm.allgatherv(mine, [len(mine)] * self.size)
        k = len(values)
        flat = struct.unpack(f"<{k * self.size}d", data)
        return [list(flat[r * k : (r + 1) * k]) for r in range(self.size)]

    def mean(self, value: float) -> float:
        """The mean of `value` over the ranks, summed in rank order (the same
        bits on every rank). Collective; call it between steps."""
        parts = self.gather_floats([value])
        total = 0.0
        for (v,) in parts:
            total += v
        return total / self.size

    def disagreeing(self, what: str) -> list[int]:
        """The ranks whose `what` (a flag set, a file's identity) differs from
        rank 0's, compared by a hash. Collective."""
        digest = hashlib.sha256(what.encode()).digest()
        if self.comm is None:
            return []
        everyone = self.comm.allgatherv(digest, [len(digest)] * self.size)
        first = everyone[: len(digest)]
        return [
            r
            for r in range(self.size)
            if everyone[r * len(digest) : (r + 1) * len(digest)] != first
        ]

    def barrier(self) -> None:
        if self.comm is not None:
            self.comm.barrier()

    def abort(self, code: int = 1) -> None:
        """Ends every rank of the job (MPI_Abort); a world of one just returns."""
        if self.comm is not None:
            self.comm.abort(code)


_WORLD = World()


def _local_rank(comm: Communicator | None) -> int:
    """How many lower ranks run on this machine (by host name): the same
    answer under every launcher. Collective."""
    if comm is None:
        return 0
    me = hashlib.sha256(socket.gethostname().encode()).digest()
    everyone = comm.allgatherv(me, [len(me)] * comm.size)
    hosts = [everyone[r * len(me) : (r + 1) * len(me)] for r in range(comm.size)]
    return hosts[: comm.rank].count(me)


def world() -> World:
    """The world set by `init` (a world of one before)."""
    return _WORLD


def check_method(method: str) -> str:
    if method not in ("auto", "mpi") and not (method.startswith("file:") and method[5:]):
        raise ValueError(f"method must be auto, mpi or file:DIR, got {method!r}")
    return method


def _env_int(names: tuple[str, ...]) -> int | None:
    for name in names:
        v = os.environ.get(name)
        if v is not None:
            try:
                return int(v)
            except ValueError:
                raise DistError(f"{name}={v!r} is not a whole number") from None
    return None


def _file_comm(folder: str) -> tuple[Communicator, int | None]:
    """The file-system method: (this rank's communicator, LOCAL_RANK if set)."""
    rank = _env_int(("RANK", "SLURM_PROCID"))
    size = _env_int(("WORLD_SIZE", "SLURM_NTASKS"))
    if rank is None or size is None:
        raise DistError(
            "--dist-init file: needs the rank and the job size in the environment: "
            "RANK and WORLD_SIZE (as torchrun sets them) or SLURM_PROCID and SLURM_NTASKS"
        )
    if not 0 <= rank < size:
        raise DistError(f"RANK {rank} is not in 0..WORLD_SIZE-1 ({size} ranks)")
    return Communicator.file(folder, rank, size), _env_int(("LOCAL_RANK", "SLURM_LOCALID"))


def check_zero_stage(stage: int) -> int:
    if stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be 0 or 1, got {stage!r}")
    return stage


def init(
    *,
    zero_stage: int = 0,
    bucket_mb: float = DEFAULT_BUCKET_MB,
    method: str = "auto",
    comm: Communicator | None = None,
    default_runtime: bool = True,
) -> World:
    """Joins the job this process belongs to and makes it the world that new
    models train in. Collective: every rank calls it.

    With ``comm`` None, ``method`` says how the ranks find each other:
    "auto" is MPI (through mpi4py) when this process was started by an MPI
    launcher (mpiexec, mpirun, srun), else a world of one; "mpi" is MPI or
    an error; "file:DIR" is the file-system method for launchers without
    MPI (torchrun-style): the rank and size come from ``RANK`` and
    ``WORLD_SIZE`` (or Slurm's ``SLURM_PROCID`` and ``SLURM_NTASKS``), and
    the ranks exchange messages through files in DIR, a directory all of
    them share (``LOCAL_RANK``, when set, is the GPU a rank takes). A world
    of more than one rank makes the default runtime one with a
    communication worker (``Runtime(comm=True)``; not with
    ``default_runtime=False``); models built on a runtime of your own need
    that too.

    Raises:
        ValueError: a bad zero_stage, bucket size or method.
        DistError: MPI required but not launched by an MPI launcher, MPI
            unusable, or the file method without its environment or
            directory (one line each).
    """
    global _WORLD
    check_zero_stage(zero_stage)
    if not bucket_mb > 0:
        raise ValueError(f"bucket_mb must be > 0, got {bucket_mb!r}")
    check_method(method)
    local: int | None = None
    if comm is None:
        if method.startswith("file:"):
            comm, local = _file_comm(method[len("file:") :])
        elif mpi.launched_by_mpi():
            comm = mpi.init()
        elif method == "mpi":
            raise DistError(
                "MPI was asked for, but this process was not started by an MPI launcher "
                "(run it as: mpiexec -n N <command>, or srun)"
            )
    comm = comm if comm is not None and comm.size > 1 else None
    w = World(
        comm=comm,
        zero_stage=zero_stage,
        bucket_bytes=max(1, int(bucket_mb * (1 << 20))),
        local_rank=_local_rank(comm) if local is None else local,
    )
    if w.size > 1 and default_runtime:
        set_default_runtime(Runtime(comm=True))
    _WORLD = w
    return w
