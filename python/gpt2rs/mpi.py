"""Data-parallel runs over MPI and NCCL, both loaded at run time.

mpi4py initialises MPI and picks the library (the ``mpich`` wheel of
``pip install 'gpt2rs[mpi]'``, or a cluster's MPI mpi4py was built against);
the core borrows that same library (``Communicator.mpi()``), never a second
one. NCCL comes from the ``nvidia-nccl-cu13`` wheel (``gpt2rs[nccl]``).

    $ mpiexec -n 2 python -c "from gpt2rs import mpi; c = mpi.init(); print(c.rank, c.size)"

``import gpt2rs`` never needs MPI: mpi4py is imported by :func:`init` only.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
from pathlib import Path

from gpt2rs._gpt2rs import Communicator, DistError
from gpt2rs.cuda_libraries import loaded_libraries

__all__ = ["Communicator", "DistError", "init", "launched_by_mpi", "nccl_library_path"]

# Environment variables a launcher sets in every rank it starts: MPICH's and
# Intel MPI's hydra (PMI), Open MPI's mpirun/PRRTE, any PMIx launcher (prterun,
# Slurm with --mpi=pmix). Slurm's srun is told apart from a batch script by
# the step's task count, which only srun sets.
_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMIX_NAMESPACE")
_SRUN_VARS = ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID")


def launched_by_mpi() -> bool:
    """Whether this process is a rank started by an MPI launcher (mpiexec or
    mpirun of MPICH, Intel MPI or Open MPI, prterun, a PMIx launcher, or
    Slurm's srun), from the environment the launcher sets."""
    env = os.environ
    return any(v in env for v in _LAUNCHER_VARS) or all(v in env for v in _SRUN_VARS)


def init() -> Communicator:
    """Initialise MPI through mpi4py (at thread level MULTIPLE, mpi4py's
    default) and return this rank's communicator. Collective: every rank
    calls it.

    Raises:
        DistError: mpi4py is not installed, it cannot load an MPI library,
            or the core cannot use the MPI it loaded (one line each).
    """
    try:
        importlib.import_module("mpi4py.MPI")
    except ModuleNotFoundError as e:
        if e.name is not None and e.name.split(".")[0] != "mpi4py":
            raise
        raise DistError(
            "MPI needs mpi4py, which is not installed: pip install 'gpt2rs[mpi]' "
            "(mpi4py and the mpich wheel)"
        ) from None
    except (ImportError, RuntimeError) as e:
        first = str(e).strip().splitlines()
        why = "; ".join(line.strip() for line in first if line.strip()) or type(e).__name__
        raise DistError(f"mpi4py cannot load an MPI library: {why}") from None
    return Communicator.mpi()


def nccl_library_path() -> Path:
    """The NCCL library to use: the ``libnccl.so.2`` already mapped into this
    process if one is (say, PyTorch's: one NCCL per process), else the
    ``nvidia-nccl-cu13`` wheel's ``nvidia/nccl/lib/libnccl.so.2``.

    Raises:
        DistError: neither is there (one line, with the pip command).
    """
    mapped = loaded_libraries().get("nccl", [])
    if mapped:
        return Path(mapped[0])
    # nvidia/ and nvidia/nccl/ are namespace packages: every site folder's
    # copy is on the search path.
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("nvidia.nccl")
        for folder in (spec.submodule_search_locations or []) if spec else []:
            p = Path(folder) / "lib" / "libnccl.so.2"
            if p.is_file():
                return p
    raise DistError(
        "NCCL is not installed: pip install 'gpt2rs[nccl]' (the nvidia-nccl-cu13 wheel's "
        "nvidia/nccl/lib/libnccl.so.2 was not found on sys.path)"
    )
