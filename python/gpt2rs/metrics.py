"""Training metrics: TensorBoard event files, a client for gpt2rs-logger, and
a JSON-lines file.

Every sink has `scalar(tag, value, step)`, `text(tag, value, step)`, `flush()`
and `close()`.

- `TensorBoardSink` writes event files with tensorboardX (protobuf + numpy,
  no TensorFlow, no torch).
- `RemoteSink` streams newline-delimited JSON over TCP to `gpt2rs-logger`
  (`gpt2rs.logger_server`). Sending never blocks training: messages go into
  a bounded queue that a background thread drains; when the queue is full
  (server absent or slow) new messages are dropped and counted. The thread
  (re)connects with exponential backoff, so a server that restarts picks the
  stream up again.
- `JsonlSink` appends one JSON object per step (the exact losses, for
  scripts and tests).

Wire protocol (one JSON object per line, UTF-8)::

    {"type": "hello", "run": "<run name>", "host": "...", "pid": 123, "protocol": 1}
    {"type": "scalar", "tag": "train/loss", "value": 3.2, "step": 10, "time": 1700000000.0}
    {"type": "text", "tag": "args", "value": "...", "step": 0, "time": ...}

`runtime_scalars` turns two `Runtime.stats()` snapshots into per-interval
scalars: the busy share of each worker, bytes moved per bus, memory per node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

PROTOCOL = 1
DEFAULT_SERVER_PORT = 5001
DEFAULT_CLIENT_PORT = 6006


class Sink(Protocol):
    def scalar(self, tag: str, value: float, step: int) -> None: ...
    def text(self, tag: str, value: str, step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def _events_writer(log_dir: str | os.PathLike[str]) -> Any:
    try:
        from tensorboardX.event_file_writer import EventsWriter
    except ImportError:  # pragma: no cover - a dependency of the package
        raise RuntimeError(
            "TensorBoard logging needs tensorboardX: pip install tensorboardX"
        ) from None
    # Event file names carry the time in whole seconds only: a unique suffix
    # keeps a writer reopened within the same second (a reconnect after a
    # server restart) from truncating the previous file.
    global _WRITERS
    _WRITERS += 1
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return EventsWriter(os.path.join(log_dir, "events"), f".{os.getpid()}.{_WRITERS}")


_WRITERS = 0


class TensorBoardSink:
    """TensorBoard event files in `log_dir`, written by tensorboardX's
    EventsWriter in the caller's thread: a write that fails (a full disk)
    raises here, where `Guarded` turns it into one warning. (SummaryWriter
    writes from a thread of its own; when that thread dies on an error, its
    bounded queue fills and the next `add_scalar` blocks for ever.)"""

    def __init__(self, log_dir: str | os.PathLike[str], flush_secs: int = 10) -> None:
        self.log_dir = Path(log_dir)
        self._w = _events_writer(log_dir)
        self._lock = threading.Lock()
        self._closed = False
        self._flush_secs = flush_secs
        self._flushed = time.monotonic()

    def _write(self, summary: Any, step: int, walltime: float | None) -> None:
        from tensorboardX.proto import event_pb2

        with self._lock:
            if self._closed:
                return
            ev = event_pb2.Event(
                wall_time=time.time() if walltime is None else walltime, step=step, summary=summary
            )
            self._w.write_event(ev)
            if time.monotonic() - self._flushed > self._flush_secs:
                self._w.flush()
                self._flushed = time.monotonic()

    def scalar(self, tag: str, value: float, step: int, walltime: float | None = None) -> None:
        from tensorboardX import summary

        self._write(summary.scalar(tag, float(value)), int(step), walltime)

    def text(self, tag: str, value: str, step: int, walltime: float | None = None) -> None:
        from tensorboardX import summary

        self._write(summary.text(tag, str(value)), int(step), walltime)

    def flush(self) -> None:
        with self._lock:
            if not self._closed:
                self._w.flush()
                self._flushed = time.monotonic()

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._w.close()


class JsonlSink:
    """One JSON object per line; `record` writes a whole step at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        # Open for the run's lifetime; `close` ends it.
        self._f = open(self.path, "a", buffering=1)  # noqa: SIM115

    def record(self, obj: dict[str, Any]) -> None:
        self._f.write(json.dumps(obj, sort_keys=True) + "\n")

    def scalar(self, tag: str, value: float, step: int) -> None:
        pass

    def text(self, tag: str, value: str, step: int) -> None:
        pass

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


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


class Guarded:
    """A local sink (JSONL file, TensorBoard directory) that a full disk must
    not stop training for: its first OSError is reported once through `warn`,
    naming `where`, and the sink drops out. Checkpoints are what must not be
    lost; they fail loudly on their own."""

    def __init__(
        self, sink: Any, where: str | os.PathLike[str], warn: Callable[[str], None]
    ) -> None:
        self.sink: Any = sink
        self.where = str(where)
        self.warn = warn

    def _call(self, name: str, *args: Any) -> None:
        if self.sink is None:
            return
        try:
            getattr(self.sink, name)(*args)
        except OSError as e:
            sink, self.sink = self.sink, None
            self.warn(
                f"cannot write metrics to {self.where}: {e.strerror or e}; going on without them"
            )
            with contextlib.suppress(OSError):
                sink.close()

    def record(self, obj: dict[str, Any]) -> None:
        self._call("record", obj)

    def scalar(self, tag: str, value: float, step: int) -> None:
        self._call("scalar", tag, value, step)

    def text(self, tag: str, value: str, step: int) -> None:
        self._call("text", tag, value, step)

    def flush(self) -> None:
        self._call("flush")

    def close(self) -> None:
        self._call("close")
        self.sink = None


class MultiSink:
    """Fans every call out to several sinks."""

    def __init__(self, sinks: Iterable[Any]) -> None:
        self.sinks = list(sinks)

    def scalar(self, tag: str, value: float, step: int) -> None:
        for s in self.sinks:
            s.scalar(tag, value, step)

    def text(self, tag: str, value: str, step: int) -> None:
        for s in self.sinks:
            s.text(tag, value, step)

    def flush(self) -> None:
        for s in self.sinks:
            s.flush()

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def runtime_scalars(
    prev: dict[str, Any] | None, now: dict[str, Any], interval_s: float
) -> dict[str, float]:
    """Scalars from two Runtime.stats() snapshots: each worker's busy share of
    the interval, bytes per bus in the interval, memory (used, peak) per node."""
    out: dict[str, float] = {}
    pw = {w["name"]: w for w in (prev or {}).get("workers", [])}
    for w in now.get("workers", []):
        busy = w["busy_s"] - pw.get(w["name"], {}).get("busy_s", 0.0)
        if interval_s > 0:
            out[f"workers/{w['name']}/busy_share"] = max(0.0, min(1.0, busy / interval_s))
    pb = {b["name"]: b for b in (prev or {}).get("buses", [])}
    for b in now.get("buses", []):
        out[f"buses/{b['name']}/bytes"] = float(b["bytes"] - pb.get(b["name"], {}).get("bytes", 0))
    for n in now.get("nodes", []):
        out[f"memory/{n['name']}/used_bytes"] = float(n["used_bytes"])
        out[f"memory/{n['name']}/peak_bytes"] = float(n["peak_bytes"])
    return out


# -- reading event files (tests, scripts) -------------------------------------


def iter_events(path: str | os.PathLike[str]) -> Iterator[Any]:
    """The Event protos of one tfevents file (TFRecord framing; CRCs not checked)."""
    from tensorboardX.proto.event_pb2 import Event

    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            f.read(4)
            if len(data) < n:
                return
            ev = Event()
            ev.ParseFromString(data)
            yield ev


def read_scalars(log_dir: str | os.PathLike[str]) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value), ...] from every event file under log_dir."""
    out: dict[str, list[tuple[int, float]]] = {}
    for f in sorted(Path(log_dir).rglob("events.out.tfevents.*")):
        for ev in iter_events(f):
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out


__all__ = [
    "DEFAULT_CLIENT_PORT",
    "DEFAULT_SERVER_PORT",
    "JsonlSink",
    "MultiSink",
    "RemoteSink",
    "Sink",
    "TensorBoardSink",
    "iter_events",
    "read_scalars",
    "runtime_scalars",
]
