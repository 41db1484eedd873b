"""Every rank initialises the MPI library given on the command line itself
(ctypes, RTLD_GLOBAL), without mpi4py, then runs the checks. For the MPI-5
standard ABI (the mpich wheel's libmpi_abi.so.1), which mpi4py 4.1's wheel
has no extension for.

    mpiexec -n 2 python abi_ctypes.py LIBRARY THREAD_MULTIPLE
"""

from __future__ import annotations

import ctypes
import os
import sys

from checks import check_collectives

from gpt2rs.mpi import Communicator

lib = ctypes.CDLL(sys.argv[1], mode=os.RTLD_GLOBAL)
provided = ctypes.c_int(-1)
rc = lib.MPI_Init_thread(None, None, ctypes.c_int(int(sys.argv[2])), ctypes.byref(provided))
assert rc == 0, rc
check_collectives(Communicator.mpi())
assert lib.MPI_Finalize() == 0
