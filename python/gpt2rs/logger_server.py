"""gpt2rs-logger's server: receives metrics from training processes over TCP
and writes TensorBoard logs, one subdirectory per run.

Each client opens a connection, says hello with its run name, then sends one
JSON object per line (see `gpt2rs.metrics` for the protocol). Runs are
independent: several training processes may log at once, and a client that
reconnects (after its network or this server went away) continues the same
run directory. Malformed lines are counted and skipped.

    server = LoggerServer("127.0.0.1", 5001, "logs")
    server.start()          # serves in a background thread
    ...
    server.stop()           # closes connections, flushes and closes every writer
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import socketserver
import subprocess
import threading
from pathlib import Path
from typing import Any

from typing_extensions import Self

from .metrics import TensorBoardSink

log = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._=+-]+")


def safe_run_name(name: Any) -> str:
    """A run name usable as one directory name (no separators, no leading dot)."""
    s = _UNSAFE.sub("_", str(name) if name is not None else "").strip("._")
    return s[:128] or "run"


class _Handler(socketserver.StreamRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        owner: LoggerServer = self.server.owner
        owner._track(self.connection, True)
        run: str | None = None
        try:
            for raw in self.rfile:
                try:
                    msg = json.loads(raw)
                    kind = msg["type"]
                except (ValueError, KeyError, TypeError):
                    owner.bad_lines += 1
                    continue
                if kind == "hello":
                    run = owner._hello(safe_run_name(msg.get("run")), msg)
                elif run is None:
                    owner.bad_lines += 1
                else:
                    owner._record(run, msg)
        except OSError:
            pass
        finally:
            owner._track(self.connection, False)
            if run is not None:
                owner._goodbye(run)


class _TCPServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    owner: LoggerServer

    def __init__(self, addr: tuple[str, int], owner: LoggerServer) -> None:
        self.owner = owner
        family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.address_family = family
        super().__init__(addr, _Handler)


class LoggerServer:
    """TensorBoard logs for many training processes.

    Args:
        host: the address to listen on ("0.0.0.0" for every interface).
        port: the TCP port (0 picks a free one; see `port` after start()).
        log_dir: run logs go to <log_dir>/<run name>/.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 5001, log_dir: str | os.PathLike[str] = "logs"
    ) -> None:
        self.host = host
        self.log_dir = Path(log_dir)
        self._requested_port = int(port)
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._writers: dict[str, TensorBoardSink] = {}
        self._conns: set[socket.socket] = set()
        self.clients: dict[str, dict[str, Any]] = {}
        self.messages = 0
        self.bad_lines = 0

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server else self._requested_port

    def start(self) -> Self:
        """Binds the port and serves in a background thread."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._server = _TCPServer((self.host, self._requested_port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="gpt2rs-logger", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self._server is None:
            self.start()
        assert self._thread is not None
        while self._thread.is_alive():
            self._thread.join(0.5)

    def stop(self) -> None:
        """Stops serving, drops open connections, flushes and closes every writer."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
        with self._lock:
            for w in self._writers.values():
                w.close()
            self._writers.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- called from connection threads ----------------------------------------

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def _writer(self, run: str) -> TensorBoardSink:
        with self._lock:
            w = self._writers.get(run)
            if w is None:
                w = TensorBoardSink(self.log_dir / run, flush_secs=5)
                self._writers[run] = w
            return w

    def _hello(self, asked: str, msg: dict[str, Any]) -> str:
        """Registers a connection; returns the run name its logs go under:
        the one asked for, or, when another process (host, pid) already
        logged under it, the first free `<name>-2`, `<name>-3`, ...: two
        trainers never write into one TensorBoard run. A reconnecting
        process keeps its name."""
        who = (msg.get("host"), msg.get("pid"))
        with self._lock:
            run, n = asked, 1
            while (
                run in self.clients
                and (self.clients[run].get("host"), self.clients[run].get("pid")) != who
            ):
                n += 1
                run = f"{asked}-{n}"
            info = self.clients.setdefault(run, {"connects": 0})
            info.update(connects=info["connects"] + 1, host=who[0], pid=who[1], connected=True)
        self._writer(run)
        if run != asked:
            log.warning(
                "run name %s is taken by another process: host %s pid %s logs as %s",
                asked,
                *who,
                run,
            )
        log.info("run %s connected (host %s, pid %s)", run, *who)
        return run

    def _goodbye(self, run: str) -> None:
        with self._lock:
            if run in self.clients:
                self.clients[run]["connected"] = False
            w = self._writers.get(run)
        if w is not None:
            w.flush()
        log.info("run %s disconnected", run)

    def _record(self, run: str, msg: dict[str, Any]) -> None:
        w = self._writer(run)
        try:
            kind, tag, step = msg["type"], str(msg["tag"]), int(msg.get("step", 0))
            wall = msg.get("time")
            wall = float(wall) if wall is not None else None
            if kind == "scalar":
                w.scalar(tag, float(msg["value"]), step, walltime=wall)
            elif kind == "text":
                w.text(tag, str(msg["value"]), step, walltime=wall)
            else:
                self.bad_lines += 1
                return
        except (KeyError, TypeError, ValueError):
            self.bad_lines += 1
            return
        self.messages += 1

    def flush(self) -> None:
        with self._lock:
            writers = list(self._writers.values())
        for w in writers:
            w.flush()


def start_tensorboard(
    log_dir: str | os.PathLike[str], port: int, host: str = "127.0.0.1"
) -> subprocess.Popen[bytes] | None:
    """Starts `tensorboard --logdir log_dir --port port` if the command exists."""
    exe = shutil.which("tensorboard")
    if exe is None:
        return None
    return subprocess.Popen(
        [exe, "--logdir", str(log_dir), "--port", str(port), "--host", host],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


__all__ = ["LoggerServer", "safe_run_name", "start_tensorboard"]
