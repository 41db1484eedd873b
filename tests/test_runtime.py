"""gpt2rs.Runtime: configuration, schedulers, statistics, simulated device with
a memory limit (transfers and eviction), trace, performance models, failures
and shutdown."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_close, f64

import gpt2rs
from gpt2rs import ops


def gemm_chain(
    rt: gpt2rs.Runtime, n: int = 96, tile: int = 32, steps: int = 3, seed: int = 0
) -> None:
    """A chain of dependent tiled GEMMs, checked against numpy."""
    a_np = np.random.default_rng(seed).standard_normal((n, n))
    a = gpt2rs.Tensor.from_numpy(a_np, (tile, tile), runtime=rt)
    c, ref = a, a_np
    for _ in range(steps):
        c = ops.gemm(c, a, alpha=1.0 / n)
        ref = ref @ a_np / n
    assert_close(c.to_numpy(), ref, "fp64")


def run_until(rt: gpt2rs.Runtime, done: Callable[[dict], bool], tile: int = 16) -> dict:
    """Runs GEMM chains until `done(stats)`: which worker takes a task is up
    to the scheduler, so the simulated device may sit out a short run."""
    for seed in range(20):
        gemm_chain(rt, tile=tile, seed=seed)
        rt.wait_all()
        st = rt.stats()
        if done(st):
            break
    return st


@pytest.mark.parametrize("ncpu", [1, 2])
@pytest.mark.parametrize("scheduler", ["eager", "dmda"])
def test_workers_and_schedulers(ncpu: int, scheduler: str) -> None:
    with gpt2rs.Runtime(ncpu=ncpu, scheduler=scheduler) as rt:
        assert (rt.nworkers, rt.nnodes, rt.scheduler) == (ncpu, 1, scheduler)
        assert repr(rt) == f"Runtime(nworkers={ncpu}, nnodes=1, scheduler='{scheduler}')"
        gemm_chain(rt)
        rt.wait_all()
        st = rt.stats()
        assert st["scheduler"] == scheduler
        assert len(st["workers"]) == ncpu
        assert sum(w["tasks"] for w in st["workers"]) == st["tasks_submitted"] > 0
        assert sum(w["flops"] for w in st["workers"]) >= 3 * 2 * 96**3
        assert all(w["failed"] == 0 and w["busy_s"] >= 0 for w in st["workers"])
    assert rt.is_shut_down


@pytest.mark.parametrize(
    "name,kind", [("lws", "eager"), ("prio", "eager"), ("dmdas", "dmda"), ("DMDA", "dmda")]
)
def test_starpu_scheduler_names(name: str, kind: str) -> None:
    with gpt2rs.Runtime(ncpu=1, scheduler=name) as rt:
        assert rt.scheduler == kind


def test_stats_by_phase() -> None:
    """Tasks count in the phase current at their submission, whenever they run."""
    with gpt2rs.Runtime(ncpu=2) as rt:
        a = gpt2rs.Tensor.from_numpy(np.ones((64, 64), np.float32), (16, 16), runtime=rt)
        rt.set_phase("one")
        ops.scale(a, 2.0)
        rt.set_phase("two")
        ops.scale(a, 2.0)
        ops.scale(a, 2.0)
        rt.wait_all()
        st = rt.stats()
        by = {p["name"]: p for p in st["phases"]}
        assert (by["one"]["tasks"], by["two"]["tasks"]) == (16, 32)
        assert set(by) <= {"", "one", "two"}
        total = sum(p["busy_s"] for p in st["phases"])
        assert total == pytest.approx(sum(w["busy_s"] for w in st["workers"]), rel=1e-9)


def test_stats_layout() -> None:
    with gpt2rs.Runtime(ncpu=1, nsim=2, memory_limits={"sim1": 1 << 20}) as rt:
        st = rt.stats()
        assert set(st) == {
            "scheduler",
            "wall_s",
            "tasks_submitted",
            "workers",
            "buses",
            "nodes",
            "phases",
        }
        assert [w["name"] for w in st["workers"]] == ["cpu0", "sim0", "sim1"]
        assert set(st["workers"][0]) == {
            "id",
            "name",
            "kind",
            "node",
            "tasks",
            "failed",
            "busy_s",
            "flops",
        }
        assert [n["name"] for n in st["nodes"]] == ["host", "sim0", "sim1"]
        assert [n["limit"] for n in st["nodes"]] == [None, None, 1 << 20]
        assert set(st["nodes"][0]) == {
            "id",
            "name",
            "kind",
            "limit",
            "used_bytes",
            "peak_bytes",
            "evictions",
            "writebacks",
        }
        assert len(st["buses"]) == 6  # every ordered pair of distinct nodes
        assert set(st["buses"][0]) == {"src", "dst", "name", "transfers", "bytes", "seconds"}


@pytest.mark.parametrize(
    "limits", [[None, 4096], {1: 4096}, {"sim0": 4096, "host": None}, (None, 4096)]
)
def test_memory_limits_forms(limits: Any) -> None:
    with gpt2rs.Runtime(ncpu=1, nsim=1, memory_limits=limits) as rt:
        assert [n["limit"] for n in rt.stats()["nodes"]] == [None, 4096]


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"ncpu": 0}, ValueError, "ncpu"),
        ({"ncpu": -2}, ValueError, "ncpu"),
        ({"scheduler": "fifo-ish"}, ValueError, "unknown scheduler"),
        ({"memory_limits": {"sim0": 10}}, ValueError, "unknown memory node"),
        ({"memory_limits": {7: 10}}, ValueError, "unknown memory node"),
        ({"memory_limits": {"gpu0": 10}}, ValueError, "unknown memory node"),
        ({"memory_limits": [None, 10]}, ValueError, "memory limits"),
        ({"memory_limits": [-1]}, ValueError, "byte count"),
        ({"memory_limits": {"host": "1GB"}}, ValueError, "byte count"),
        ({"memory_limits": 1024}, TypeError, "memory_limits"),
        ({"memory_limits": {"cuda0": 10}}, ValueError, "unknown memory node"),
        ({"restrict": "gpu"}, ValueError, "restrict"),
        ({"restrict": "cuda"}, ValueError, "ncuda >= 1"),
    ],
)
def test_bad_runtime_arguments(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        gpt2rs.Runtime(**kwargs)


@pytest.mark.skipif(gpt2rs.cuda.device_count() > 0, reason="a GPU is visible")
def test_missing_gpu_is_a_cuda_error() -> None:
    with pytest.raises(gpt2rs.cuda.CudaError, match="CUDA"):
        gpt2rs.Runtime(ncpu=1, ncuda=1)


@pytest.mark.parametrize("scheduler", ["eager", "dmda"])
def test_simulated_device_transfers_and_evicts(scheduler: str) -> None:
    # Six 32x32 fp64 tiles fit on sim0; a 96x96 GEMM chain touches 27 tiles.
    limit = 6 * 32 * 32 * 8
    with gpt2rs.Runtime(ncpu=1, nsim=1, scheduler=scheduler, memory_limits={"sim0": limit}) as rt:
        st = run_until(rt, lambda st: st["nodes"][1]["evictions"] > 0, tile=32)
        sim = st["nodes"][1]
        assert st["workers"][1]["name"] == "sim0" and st["workers"][1]["tasks"] > 0
        to_sim = next(b for b in st["buses"] if b["name"] == "host->sim0")
        assert to_sim["bytes"] > 0 and to_sim["transfers"] > 0
        assert sim["evictions"] > 0
        assert sim["peak_bytes"] <= limit


def test_trace_file(tmp_path: Path) -> None:
    path = tmp_path / "run.trace.json"
    with gpt2rs.Runtime(ncpu=1, nsim=1, trace=True) as rt:
        run_until(rt, lambda st: st["buses"][0]["transfers"] > 0)
        rt.save_trace(path)
        rt.save_trace(str(tmp_path / "again.json"))
    doc = json.loads(path.read_text())
    cats = {e.get("cat") for e in doc["traceEvents"]}
    assert {"task", "transfer"} <= cats
    tasks = [e for e in doc["traceEvents"] if e.get("cat") == "task"]
    assert {e["name"] for e in tasks} >= {"gemm"}
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in tasks)


def test_trace_errors(tmp_path: Path) -> None:
    with gpt2rs.Runtime(ncpu=1) as rt, pytest.raises(ValueError, match="trace=True"):
        rt.save_trace(tmp_path / "x.json")
    with gpt2rs.Runtime(ncpu=1, trace=True) as rt, pytest.raises(OSError):
        rt.save_trace(tmp_path / "no" / "such" / "dir" / "x.json")


def test_perf_models_persist(tmp_path: Path) -> None:
    d = tmp_path / "perf"
    rt = gpt2rs.Runtime(ncpu=2, scheduler="dmda", perf_model_dir=d)
    gemm_chain(rt)
    rt.shutdown()
    files = list(d.iterdir())
    assert [f.name for f in files] == ["gpt2rs-perfmodels.json"]
    entries = json.loads(files[0].read_text())
    assert any(e["codelet"] == "gemm" and e["n"] >= 1 for e in entries)
    # A new runtime loads them and saves them again on request.
    with gpt2rs.Runtime(ncpu=1, scheduler="dmda", perf_model_dir=str(d)) as rt2:
        gemm_chain(rt2)
        rt2.save_perf_models()
    assert len(json.loads(files[0].read_text())) >= len(entries)


def test_task_failure_is_reported_and_runtime_survives() -> None:
    # One 32x32 fp32 tile is 4096 bytes; the GEMM task needs A, B and C at once.
    rt = gpt2rs.Runtime(ncpu=2, memory_limits={"host": 8192})
    a = gpt2rs.Tensor.from_numpy(np.ones((32, 32), np.float32), None, runtime=rt)
    b = gpt2rs.Tensor.from_numpy(np.ones((32, 32), np.float32), None, runtime=rt)
    c = ops.gemm(a, b)  # submission succeeds: the failure is the task's
    ops.scale(c, 2.0)  # depends on the failed task: cancelled
    with pytest.raises(
        gpt2rs.TaskError, match=r"memory node host.*gemm#\d+ needs 12288 bytes"
    ) as ei:
        rt.wait_all()
    assert isinstance(ei.value, RuntimeError)
    # Cancelled, with the first failure's reason.
    with pytest.raises(
        gpt2rs.TaskError, match=r"cancelled because task gemm#\d+ \(.*needs 12288 bytes.*\) failed"
    ):
        c.to_numpy()
    rt.wait_all()  # the error was reported once
    del a, b, c
    gc.collect()
    # The runtime is still usable with operands that fit.
    x = gpt2rs.Tensor.from_numpy(
        np.arange(16.0, dtype=np.float32).reshape(4, 4), (2, 4), runtime=rt
    )
    y = gpt2rs.Tensor.zeros((4, 4), (2, 4), runtime=rt)
    ops.add(x, y, alpha=2.0)
    np.testing.assert_array_equal(y.to_numpy(), 2.0 * f64(x))
    rt.wait_all()
    rt.shutdown()


def test_context_manager_and_shutdown(tmp_path: Path) -> None:
    with gpt2rs.Runtime(ncpu=1) as rt:
        x = gpt2rs.Tensor.zeros((4,), (2,), runtime=rt)
        ops.fill(x, 1.0)
    assert rt.is_shut_down
    assert "shut down" in repr(rt)
    rt.shutdown()  # twice is fine
    rt.wait_all()
    assert rt.stats()["tasks_submitted"] == 2
    for call in (
        lambda: ops.fill(x, 2.0),
        lambda: ops.norm(x),
        lambda: x.to_numpy(),
        lambda: x.astype("fp64"),
    ):
        with pytest.raises(gpt2rs.RuntimeShutdownError, match="shut down"):
            call()


def test_default_runtime() -> None:
    d = gpt2rs.default_runtime()
    assert d is gpt2rs.default_runtime()
    assert d.scheduler == "eager" and d.nnodes == 1 and d.nworkers >= 1
    mine = gpt2rs.Runtime(ncpu=1)
    gpt2rs.set_default_runtime(mine)
    try:
        assert gpt2rs.default_runtime() is mine
        assert gpt2rs.Tensor.zeros((2,), None).runtime is mine
        mine.shutdown()
        # A shut-down default is replaced by a fresh one on next use.
        fresh = gpt2rs.default_runtime()
        assert fresh is not mine and not fresh.is_shut_down
    finally:
        gpt2rs.set_default_runtime(d)
    with pytest.raises(TypeError):
        gpt2rs.set_default_runtime("eager")  # type: ignore[arg-type]


def test_demo_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gpt2rs import demo

    trace = tmp_path / "demo.trace.json"
    assert demo.main(["--ncpu", "2", "--size", "96", "--tile", "40", "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert "relative error vs numpy" in out and "host->sim0" in out and "evictions" in out
    assert "traceEvents" in json.loads(trace.read_text())


def test_atexit_shuts_the_default_runtime_down(tmp_path: Path) -> None:
    # Tasks still queued at exit finish, and the performance models are saved.
    code = f"""
import numpy as np, gpt2rs
from gpt2rs import ops
gpt2rs.set_default_runtime(gpt2rs.Runtime(ncpu=2, perf_model_dir={str(tmp_path)!r}))
a = gpt2rs.Tensor.from_numpy(np.ones((64, 64)), (16, 16))
ops.gemm(a, a)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    entries = json.loads((tmp_path / "gpt2rs-perfmodels.json").read_text())
    assert any(e["codelet"] == "gemm" for e in entries)
