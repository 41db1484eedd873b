"""gpt2rs-logger and the metrics client: several runs, a client that
disconnects, a server that restarts, a server that is not there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2rs.logger_server import LoggerServer, safe_run_name
from gpt2rs.metrics import RemoteSink, TensorBoardSink, read_scalars, runtime_scalars


def _wait_for(pred, timeout: float = 20.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _steps(log_dir: Path, tag: str = "loss") -> list[int]:
    return sorted(s for s, _ in read_scalars(log_dir).get(tag, []))


def test_tensorboard_sink_round_trip(tmp_path: Path) -> None:
    w = TensorBoardSink(tmp_path)
    for i in range(5):
        w.scalar("train/loss", 1.0 / (i + 1), i)
    w.text("args", "{}", 0)
    w.close()
    got = read_scalars(tmp_path)["train/loss"]
    assert [s for s, _ in got] == list(range(5)) and got[1][1] == pytest.approx(0.5)


def test_two_clients_one_disconnects(tmp_path: Path) -> None:
    with LoggerServer("127.0.0.1", 0, tmp_path / "logs") as server:
        a = RemoteSink("127.0.0.1", server.port, "run-a")
        b = RemoteSink("localhost", server.port, "run-b")  # host names work
        for i in range(5):
            a.scalar("loss", float(i), i)
            b.scalar("loss", float(i), i)
        _wait_for(lambda: server.messages >= 10)
        b.close()  # b leaves mid-run
        # c drops its connection abruptly, in the middle of a line.
        c = socket.create_connection(("127.0.0.1", server.port))
        c.sendall(b'{"type": "hello", "run": "../run c"}\n')
        c.sendall(b'{"type": "scalar", "tag": "loss", "value": 1, "step": 0}\n{"type": "sca')
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.close()
        for i in range(5, 20):
            a.scalar("loss", float(i), i)
        a.close(timeout=5)
        _wait_for(lambda: server.messages >= 26)
        assert a.dropped == 0 and b.dropped == 0
    assert _steps(tmp_path / "logs" / "run-a") == list(range(20))
    assert _steps(tmp_path / "logs" / "run-b") == list(range(5))
    assert _steps(tmp_path / "logs" / "run_c") == [
        0
    ]  # the name cannot climb out of the log directory
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["run-a", "run-b", "run_c"]


def test_client_survives_a_server_restart(tmp_path: Path) -> None:
    s1 = LoggerServer("127.0.0.1", 0, tmp_path / "logs").start()
    port = s1.port
    sink = RemoteSink("127.0.0.1", port, "r", min_backoff=0.05, max_backoff=0.3)
    for i in range(5):
        sink.scalar("loss", float(i), i)
    _wait_for(lambda: s1.messages == 5)
    s1.stop()
    _wait_for(lambda: not sink.connected)  # noticed without sending anything
    for i in range(5, 10):  # queued while the server is away
        sink.scalar("loss", float(i), i)
    time.sleep(0.3)
    s2 = LoggerServer("127.0.0.1", port, tmp_path / "logs").start()
    try:
        _wait_for(lambda: sink.connects == 2)
        for i in range(10, 15):
            sink.scalar("loss", float(i), i)
        sink.close(timeout=5)
        _wait_for(lambda: s2.messages == 10)
    finally:
        s2.stop()
    assert sink.dropped == 0
    assert _steps(tmp_path / "logs" / "r") == list(range(15))


def test_absent_server_never_blocks(tmp_path: Path) -> None:
    sink = RemoteSink("127.0.0.1", _free_port(), "x", queue_size=100, max_backoff=0.2)
    t = time.perf_counter()
    for i in range(5000):
        sink.scalar("loss", 1.0, i)
    assert time.perf_counter() - t < 1.0
    t = time.perf_counter()
    sink.close(timeout=0.3)
    assert time.perf_counter() - t < 2.0
    assert sink.dropped == 5000 and sink.sent == 0


def test_runtime_scalars() -> None:
    prev = {
        "workers": [{"name": "cpu0", "busy_s": 1.0}],
        "buses": [{"name": "host->sim0", "bytes": 100}],
        "nodes": [],
    }
    now = {
        "workers": [{"name": "cpu0", "busy_s": 1.5}, {"name": "cpu1", "busy_s": 0.25}],
        "buses": [{"name": "host->sim0", "bytes": 400}],
        "nodes": [{"name": "host", "used_bytes": 10, "peak_bytes": 20}],
    }
    got = runtime_scalars(prev, now, 1.0)
    assert got == {
        "workers/cpu0/busy_share": 0.5,
        "workers/cpu1/busy_share": 0.25,
        "buses/host->sim0/bytes": 300.0,
        "memory/host/used_bytes": 10.0,
        "memory/host/peak_bytes": 20.0,
    }


def test_safe_run_name() -> None:
    assert safe_run_name("../../etc") == "etc"
    assert safe_run_name("") == "run" and safe_run_name(None) == "run"
    assert safe_run_name("2024-01-01 host/123") == "2024-01-01_host_123"


def test_logger_cli(tmp_path: Path) -> None:
    port = _free_port()
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2rs.cli.logger",
            "--port",
            str(port),
            "--log-dir",
            str(tmp_path / "logs"),
            "--client-port",
            str(_free_port()),
        ]
        + ([] if shutil.which("tensorboard") is None else ["--no-tensorboard"]),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert f"listening on 127.0.0.1:{port}" in line, line
        if shutil.which("tensorboard") is None:
            assert "not installed" in p.stdout.readline()
        sink = RemoteSink("127.0.0.1", port, "cli-run")
        for i in range(3):
            sink.scalar("loss", float(i), i)
        sink.close(timeout=5)
        time.sleep(0.3)
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "3 metrics from 1 run(s)" in out
    assert _steps(tmp_path / "logs" / "cli-run") == [0, 1, 2]


def test_logger_cli_port_in_use(tmp_path: Path) -> None:
    with LoggerServer("127.0.0.1", 0, tmp_path / "a") as server:
        p = subprocess.run(
            [
                sys.executable,
                "-m",
                "gpt2rs.cli.logger",
                "--port",
                str(server.port),
                "--log-dir",
                str(tmp_path / "b"),
                "--no-tensorboard",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert (
        p.returncode == 1
        and p.stderr.startswith("gpt2rs-logger: error: cannot listen")
        and p.stderr.count("\n") == 1
    )


def test_training_outlives_its_server(tmp_path: Path) -> None:
    """A server that goes away mid-run neither stops nor fails the training."""
    (tmp_path / "data").mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 64, 17 * 400).astype("<u2").tofile(tmp_path / "data" / "train.bin")
    (tmp_path / "cfg.json").write_text(
        json.dumps(dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2))
    )
    server = LoggerServer("127.0.0.1", 0, tmp_path / "logs").start()
    m = tmp_path / "m.jsonl"
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpt2rs.cli.train",
            "--restrict",
            "cpu",
            "--config-path",
            str(tmp_path / "cfg.json"),
            "--dataset-path",
            str(tmp_path / "data"),
            "--dataset-file",
            "train.bin",
            "--seq-len",
            "16",
            "--ncpu",
            "1",
            "--batch-size",
            "2",
            "--nepochs",
            "1",
            "--logger",
            "--logger-server-addr",
            "localhost",
            "--logger-server-port",
            str(server.port),
            "--run-name",
            "t",
            "--metrics-file",
            str(m),
            "--save-checkpoint-path",
            str(tmp_path / "ck"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    _wait_for(lambda: server.messages > 20, timeout=60)
    server.stop()
    t = time.perf_counter()
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert time.perf_counter() - t < 10
    assert len(m.read_text().splitlines()) == 200
    assert _steps(tmp_path / "logs" / "t", "train/loss")[:2] == [1, 2]


def test_a_full_disk_under_tensorboard_is_one_warning_not_a_hang(tmp_path: Path) -> None:
    """Event files are written in the caller's thread, so a failed write (ENOSPC) reaches Guarded, which warns
    once and drops the sink; tensorboardX's threaded writer would block for ever once its thread died."""
    from gpt2rs.metrics import Guarded, TensorBoardSink, read_scalars

    warnings: list[str] = []
    tb = TensorBoardSink(tmp_path / "tb", flush_secs=0)
    sink = Guarded(tb, tmp_path / "tb", warnings.append)
    sink.scalar("loss", 1.0, 1)

    def full(*a: object) -> None:
        raise OSError(28, "No space left on device")

    tb._w.write_event = full
    for step in range(2, 50):
        sink.scalar("loss", 1.0, step)
    sink.flush()
    sink.close()
    assert (
        len(warnings) == 1
        and "No space left on device" in warnings[0]
        and str(tmp_path / "tb") in warnings[0]
    )
    assert read_scalars(tmp_path / "tb")["loss"] == [(1, 1.0)]


def test_a_second_process_with_a_taken_run_name_gets_its_own_run(tmp_path: Path) -> None:
    """Same run name from another (host, pid): suffixed, never mixed; the same process reconnecting keeps it."""

    def client(port: int, pid: int, steps: range) -> None:
        with socket.create_connection(("127.0.0.1", port)) as c:
            hello = {"type": "hello", "run": "same", "host": "h", "pid": pid, "protocol": 1}
            lines = [hello] + [
                {"type": "scalar", "tag": "loss", "value": 1.0, "step": i} for i in steps
            ]
            c.sendall("".join(json.dumps(x) + "\n" for x in lines).encode())

    def registered(server: LoggerServer, names: set[str]) -> None:
        # Each connection has its own server thread: wait, so that the order
        # of the hellos is the order of the connections.
        deadline = time.time() + 10
        while time.time() < deadline and set(server.clients) != names:
            time.sleep(0.02)

    with LoggerServer("127.0.0.1", 0, tmp_path / "logs") as server:
        client(server.port, 1, range(0, 3))
        registered(server, {"same"})
        client(server.port, 2, range(10, 12))
        registered(server, {"same", "same-2"})
        client(server.port, 1, range(3, 5))  # process 1 again: a reconnect
        deadline = time.time() + 10
        while time.time() < deadline and server.messages < 7:
            time.sleep(0.02)
    assert set(server.clients) == {"same", "same-2"}
    assert _steps(tmp_path / "logs" / "same") == [0, 1, 2, 3, 4]
    assert _steps(tmp_path / "logs" / "same-2") == [10, 11]
