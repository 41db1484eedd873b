"""Training metrics: TensorBoard event files, a JSON-lines file, and (in
`gpt2rs.logger_client`) a client for gpt2rs-logger.

Every sink has `scalar(tag, value, step)`, `text(tag, value, step)`, `flush()`
and `close()`.

- `TensorBoardSink` writes event files with tensorboardX (protobuf + numpy,
  no TensorFlow, no torch).
- `RemoteSink` (`gpt2rs.logger_client`) streams them to `gpt2rs-logger`.
- `JsonlSink` appends one JSON object per step (the exact losses, for
  scripts and tests).

`runtime_scalars` turns two `Runtime.stats()` snapshots into per-interval
scalars: the busy share of each worker, bytes moved per bus, memory per node.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from .logger_client import DEFAULT_CLIENT_PORT, DEFAULT_SERVER_PORT, RemoteSink


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
    "Guarded",
    "JsonlSink",
    "MultiSink",
    "RemoteSink",
    "Sink",
    "TensorBoardSink",
    "iter_events",
    "read_scalars",
    "runtime_scalars",
]
