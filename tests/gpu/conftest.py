"""GPU suite: fixtures and helpers shared by tests/gpu.

Every test here is marked `gpu` and skipped, at collection and without
touching CUDA beyond `gpt2rs.cuda.device_count()`, unless a CUDA device is
visible. With GPT2RS_REQUIRE_GPU=1 (benches/gpu_suite.sh sets it) a missing
GPU is a usage error instead, so that a GPU run can never pass by skipping.

A test here is worthless if it would also pass with every task on the CPU, so
the CUDA runtime is restricted to its CUDA workers and `ran_on_gpu` checks the
workers' task counts after each operation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Relative Frobenius error of a CUDA result against the same op on the CPU
# (the same rounded inputs): accumulation order is all that differs, except
# that the 16-bit types may round intermediates differently.
GPU_TOL = {"fp64": 1e-12, "fp32": 1e-5, "bf16": 2e-2, "fp16": 2e-2}

_NO_CUDA_IMPL = "no worker of this runtime can run"

_reason: list[str | None] = []


def gpu_unavailable() -> str | None:
    """Why the GPU suite cannot run here, or None (computed once)."""
    if _reason:
        return _reason[0]
    reason: str | None = None
    try:
        from gpt2rs import cuda
    except Exception as e:  # noqa: BLE001 - a broken install must skip here, not crash collection
        reason = f"gpt2rs does not import: {e}"
    else:
        count = getattr(cuda, "device_count", None)
        if count is None:
            reason = "this gpt2rs has no gpt2rs.cuda.device_count (no CUDA runtime)"
        else:
            try:
                n = int(count())
            except Exception as e:  # noqa: BLE001 - any failure means no GPU suite
                n, reason = 0, f"gpt2rs.cuda.device_count() raised {e!r}"
            if reason is None and n < 1:
                why = getattr(cuda, "unavailable_reason", lambda: None)()
                reason = "no CUDA device visible (gpt2rs.cuda.device_count() == 0)" + (
                    f": {why}" if why else ""
                )
    _reason.append(reason)
    return reason


def pytest_report_header(config: pytest.Config) -> list[str]:
    reason = gpu_unavailable()
    if reason is None:
        from gpt2rs import cuda

        return [f"gpt2rs GPU suite: {cuda.device_count()} CUDA device(s)"]
    return [f"gpt2rs GPU suite: skipped ({reason})"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mine = [it for it in items if HERE in Path(str(it.path)).resolve().parents]
    if not mine:
        return
    reason = gpu_unavailable()
    if reason is not None and os.environ.get("GPT2RS_REQUIRE_GPU") == "1":
        raise pytest.UsageError(f"GPT2RS_REQUIRE_GPU=1 but the GPU suite cannot run: {reason}")
    skip = pytest.mark.skip(reason=reason or "")
    for it in mine:
        it.add_marker(pytest.mark.gpu)
        if reason is not None:
            it.add_marker(skip)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cuda_rt() -> Iterator[object]:
    """One GPU; every task restricted to the CUDA worker."""
    import gpt2rs

    r = gpt2rs.Runtime(ncpu=1, ncuda=1, restrict="cuda")
    yield r
    r.shutdown()


@pytest.fixture(scope="module")
def cpu_rt() -> Iterator[object]:
    """The CPU reference: CPU workers only."""
    import gpt2rs

    r = gpt2rs.Runtime(ncpu=2, restrict="cpu")
    yield r
    r.shutdown()


# ---------------------------------------------------------------- helpers


def nccl_installed() -> bool:
    """Whether the nvidia-nccl-cu13 wheel's library can be found."""
    try:
        from gpt2rs import mpi

        mpi.nccl_library_path()
    except Exception:  # noqa: BLE001 - any failure: the wheel is not usable here
        return False
    return True


def task_counts(rt: object) -> tuple[int, int]:
    """(tasks run by CUDA workers, tasks run by every other worker) so far."""
    ws = rt.stats()["workers"]  # type: ignore[attr-defined]
    cuda = sum(w["tasks"] for w in ws if w["kind"] == "cuda")
    return cuda, sum(w["tasks"] for w in ws) - cuda


@contextlib.contextmanager
def ran_on_gpu(rt: object, only: bool = True) -> Iterator[None]:
    """Waits for the block's tasks, then asserts that the CUDA worker ran some
    of them (and, with only=True, that no other worker ran any)."""
    c0, o0 = task_counts(rt)
    try:
        yield
    except BaseException:
        # Collect the failed tasks' errors here, or the next test's wait_all
        # on this module's runtime would report them.
        with contextlib.suppress(Exception):
            rt.wait_all()  # type: ignore[attr-defined]
        raise
    rt.wait_all()  # type: ignore[attr-defined]
    c1, o1 = task_counts(rt)
    assert c1 > c0, "no task ran on the GPU"
    if only:
        assert o1 == o0, f"{o1 - o0} task(s) ran on a CPU worker of a CUDA-restricted runtime"


@contextlib.contextmanager
def cuda_impl_or_skip(what: str, optional: bool) -> Iterator[None]:
    """Turns 'no worker can run this task' (a codelet without a CUDA
    implementation for these dtypes) into a skip for combinations the GPU
    backend need not support, and into a clear failure for the others."""
    try:
        yield
    except Exception as e:
        if _NO_CUDA_IMPL not in str(e):
            raise
        if optional:
            pytest.skip(f"{what}: no CUDA implementation ({e})")
        raise AssertionError(
            f"{what} must run on the GPU but has no CUDA implementation: {e}"
        ) from e
