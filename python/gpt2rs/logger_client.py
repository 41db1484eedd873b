"""The client of gpt2rs-logger: `RemoteSink` streams newline-delimited JSON
over TCP to `gpt2rs.logger_server`. Sending never blocks training: messages
go into a bounded queue that a background thread drains; when the queue is
full (server absent or slow) new messages are dropped and counted. The thread
(re)connects with exponential backoff, so a server that restarts picks the
stream up again.

Wire protocol (one JSON object per line, UTF-8)::

    {"type": "hello", "run": "<run name>", "host": "...", "pid": 123, "protocol": 1}
    {"type": "scalar", "tag": "train/loss", "value": 3.2, "step": 10, "time": 1700000000.0}
    {"type": "text", "tag": "args", "value": "...", "step": 0, "time": ...}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import threading
import time
from typing import Any

log = logging.getLogger("gpt2rs.metrics")

PROTOCOL = 1
DEFAULT_SERVER_PORT = 5001
DEFAULT_CLIENT_PORT = 6006


class RemoteSink:
    """Streams metrics to a gpt2rs-logger server without ever blocking the caller.

    Args:
        host, port: the server (host names work).
        run: the run name; the server writes this run's logs in <log-dir>/<run>.
        queue_size: messages held while the server is away; beyond that new
            messages are dropped and counted in `dropped`.
        max_backoff: the longest wait between connection attempts (seconds).
    """

    def __init__(
        self,
        host: str,
        port: int,
        run: str,
        queue_size: int = 10000,
        connect_timeout: float = 2.0,
        max_backoff: float = 10.0,
        min_backoff: float = 0.1,
    ) -> None:
        self.host, self.port, self.run = host, int(port), run
        self.connect_timeout = connect_timeout
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.dropped = 0
        self.sent = 0
        self.connects = 0
        self._q: queue.Queue[bytes] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._pending: bytes | None = None
        self._reachable: bool | None = None  # None: not tried yet
        self._tried = threading.Event()  # set after the first connection attempt
        self._thread = threading.Thread(target=self._loop, name="gpt2rs-metrics", daemon=True)
        self._thread.start()

    # -- caller side (training thread): never blocks --------------------------

    def _put(self, msg: dict[str, Any]) -> None:
        try:
            self._q.put_nowait((json.dumps(msg, allow_nan=True) + "\n").encode())
        except queue.Full:
            self.dropped += 1

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._put(
            {
                "type": "scalar",
                "tag": tag,
                "value": float(value),
                "step": int(step),
                "time": time.time(),
            }
        )

    def text(self, tag: str, value: str, step: int) -> None:
        self._put(
            {
                "type": "text",
                "tag": tag,
                "value": str(value),
                "step": int(step),
                "time": time.time(),
            }
        )

    def flush(self, timeout: float = 0.0) -> None:
        """Waits up to `timeout` seconds for the queue to drain while the
        server is reachable (0, or the last connection attempt failed:
        returns at once)."""
        end = time.monotonic() + timeout
        while (
            timeout > 0
            and self._reachable is not False
            and (not self._q.empty() or self._pending is not None)
            and time.monotonic() < end
        ):
            time.sleep(0.01)

    def close(self, timeout: float = 2.0) -> None:
        """Sends what it can within `timeout` seconds, then stops; whatever is
        left is counted as dropped."""
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=max(timeout, 0.5))
        self.dropped += self._q.qsize() + (self._pending is not None)
        self._disconnect()

    @property
    def connected(self) -> bool:
        return self._sock is not None

    # -- background thread -------------------------------------------------

    def _disconnect(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _connect(self) -> bool:
        try:
            sock = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
            sock.settimeout(5.0)  # a stuck server makes us reconnect, never hang
            hello = {
                "type": "hello",
                "run": self.run,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "protocol": PROTOCOL,
            }
            sock.sendall((json.dumps(hello) + "\n").encode())
        except OSError as e:
            log.debug("logger server %s:%s unreachable: %s", self.host, self.port, e)
            self._reachable = False
            self._tried.set()
            return False
        self._sock = sock
        self._reachable = True
        self._tried.set()
        self.connects += 1
        return True

    def reachable_at_start(self) -> bool:
        """Whether the first connection attempt reached the server (waits for
        that attempt, at most the connect timeout): so that a run can say at
        its start that its metrics are only being queued."""
        self._tried.wait(self.connect_timeout + 1.0)
        return bool(self._reachable)

    def _check_alive(self) -> None:
        """The server never writes: a readable socket means it closed (or
        reset) the connection, so reconnect now rather than lose the next
        message in a dead connection."""
        sock = self._sock
        if sock is None:
            return
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable and not sock.recv(4096):
                self._disconnect()
        except (OSError, ValueError):
            self._disconnect()

    def _loop(self) -> None:
        backoff = self.min_backoff
        while not self._stop.is_set():
            if self._sock is None:
                if not self._connect():
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                backoff = self.min_backoff
            if self._pending is None:
                try:
                    self._pending = self._q.get(timeout=0.1)
                except queue.Empty:
                    self._check_alive()
                    continue
            try:
                assert self._sock is not None
                self._sock.sendall(self._pending)
                self._pending = None
                self.sent += 1
            except OSError as e:
                log.debug("logger server connection lost: %s", e)
                self._disconnect()
