"""Which process owns what: a lock file that claims a directory for one process, and
whether a process that left something behind is still alive.

A lock is a file created exclusively that holds its owner's PID and host. A lock
whose owner is gone (kill -9) is taken over, so a crash never needs a hand-made
cleanup; a lock of a live owner, or of another host (whose processes cannot be
checked from here), is refused.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs here (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed process not yet reaped by its parent is a zombie: gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class LockHeld(Exception):
    """The lock at `path` is held by `owner` (its ``pid`` and ``host``), or, with
    `owner` None, kept changing while it was being taken."""

    def __init__(self, path: Path, owner: dict[str, Any] | None) -> None:
        super().__init__(f"{path} is held by {owner}" if owner else f"{path} keeps changing")
        self.path = path
        self.owner = owner


def acquire(path: Path) -> Path:
    """Creates the lock file `path` for this process and returns it. A lock left by
    a process of this host that is gone, or by this process, is taken over; any
    other raises `LockHeld`."""
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                owner = _owner(path)
            except FileNotFoundError:
                continue  # released meanwhile
            mine = owner is not None and owner["host"] == me["host"]
            if owner is None or (
                mine and (owner["pid"] == me["pid"] or not pid_alive(owner["pid"]))
            ):
                # Stale: set it aside atomically, so that of two processes taking it over one wins.
                aside = path.with_name(f"{path.name}.stale.{os.getpid()}")
                try:
                    os.replace(path, aside)
                    aside.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            raise LockHeld(path, owner) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        return path
    raise LockHeld(path, None)


def _owner(path: Path) -> dict[str, Any] | None:
    """The lock's owner, or None when the file is unreadable or half-written
    (a process killed while writing it; a fresh one is given a second to finish).
    FileNotFoundError when it is gone."""
    for attempt in range(2):
        try:
            d = json.loads(path.read_text())
            if (
                isinstance(d, dict)
                and isinstance(d.get("pid"), int)
                and isinstance(d.get("host"), str)
            ):
                return d
        except FileNotFoundError:
            raise
        except (OSError, ValueError):
            pass
        if attempt == 0 and time.time() - path.stat().st_mtime < 1.0:
            time.sleep(1.0)
        else:
            break
    return None


def release(path: Path) -> None:
    """Removes the lock if this process holds it."""
    try:
        owner = _owner(path)
    except FileNotFoundError:
        return
    if owner is not None and owner["pid"] == os.getpid() and owner["host"] == socket.gethostname():
        path.unlink(missing_ok=True)


__all__ = ["LockHeld", "acquire", "pid_alive", "release"]
