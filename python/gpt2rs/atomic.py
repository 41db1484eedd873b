"""Atomic writes: files and directories that appear whole or not at all.

Everything is written under a hidden temporary name beside its target and
renamed onto it (a rename within a directory is atomic), so a reader, or a
run killed at any moment, sees either the old target or the new one. The
temporaries carry the writer's PID, so that the next writer removes those of
processes that died mid-write (kill -9) and never those of a live one:

- `Staged` (and `write_file`): files of one directory, each written as
  ``.{name}.{pid}.{8 hex digits}.tmp`` and renamed in a given order (the last
  one can mark the set complete);
- `replace_dir`: a whole directory, built as ``.tmp-{name}-{pid}``; a target it
  replaces is first set aside as ``.trash-{name}-{pid}``, because a rename
  cannot replace a directory that is not empty.

With ``durable`` (always for `replace_dir`) the data and the renames are
fsynced, so that they survive a power loss too, not only a killed process.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from .lock import pid_alive

#: The names of `Staged`'s temporary files; group "pid" is the writer's.
FILE_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def dir_temporaries(name: str) -> re.Pattern[str]:
    """The names of `replace_dir`'s temporaries for targets whose name matches the
    regex `name` (its groups are kept); group "pid" is the writer's."""
    return re.compile(rf"^\.(?:tmp|trash)-{name}-(?P<pid>\d+)$")


def fsync_file(path: Path) -> None:
    """Flushes `path`'s data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flushes `path`'s entries to the disk, which makes a rename in it durable."""
    # Some file systems refuse to open or fsync a directory; the rename still happened.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale(directory: Path, pattern: re.Pattern[str] = FILE_TEMP) -> None:
    """Removes the entries of `directory` that `pattern` matches whose writer
    (group "pid") is gone: the temporaries of a process that died mid-write."""
    for p in directory.iterdir():
        m = pattern.match(p.name)
        if m is None or pid_alive(int(m.group("pid"))):
            continue
        # Best effort: a leftover that cannot be removed must not stop this write.
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()


class Staged:
    """Files `names` of `directory`, written at the temporary paths `tmp[name]` and
    renamed onto their names, in the order given, only by `commit`.

    `directory` (and its missing parents) is created, and the temporaries of dead
    writers in it are removed. `abort` removes this writer's temporaries and the
    directories it created, so a failed write leaves nothing behind and the
    files it would have replaced untouched. As a context manager (which yields
    `tmp`) it commits when the block ends and aborts when it raises.

    Raises:
        OSError: the directory or a temporary cannot be created (nothing is left).
    """

    def __init__(self, directory: Path, names: Sequence[str], *, durable: bool = False) -> None:
        self.directory = directory
        self.names = list(names)
        self.durable = durable
        self.tmp: dict[str, Path] = {}
        self._created: list[Path] = []  # deepest first
        p = directory
        while not p.exists() and p != p.parent:
            self._created.append(p)
            p = p.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            remove_stale(directory)
            for n in self.names:
                # Not mkstemp: its files are 0600; these get the umask's mode, as open() would.
                tmp = directory / f".{n}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                self.tmp[n] = tmp
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> dict[str, Path]:
        return self.tmp

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        """Renames every temporary onto its name, in order; on a failure the
        temporaries not yet renamed are removed."""
        try:
            if self.durable:
                for t in self.tmp.values():
                    fsync_file(t)
            for n in self.names:
                os.replace(self.tmp[n], self.directory / n)
                del self.tmp[n]
        except BaseException:
            self.abort()
            raise
        if self.durable:
            fsync_dir(self.directory)

    def abort(self) -> None:
        """Removes the temporaries left and the directories this created."""
        for t in self.tmp.values():
            t.unlink(missing_ok=True)
        self.tmp.clear()
        for d in self._created:
            try:
                d.rmdir()
            except OSError:
                break


def write_file(path: Path, data: str | bytes) -> None:
    """Replaces the file `path` with `data` (text is UTF-8), atomically and durably."""
    with Staged(path.parent, [path.name], durable=True) as tmp:
        tmp[path.name].write_bytes(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def replace_dir(target: Path) -> Iterator[Path]:
    """Yields an empty directory beside `target` to build its new contents in.

    When the block ends, every file in it and the directory itself are fsynced
    and it takes `target`'s place: a kill at any moment leaves the old target
    or the new one whole (or, between the two renames that replace an existing
    target, the old one set aside under its ``.trash-`` name). When the block
    raises, or a rename fails, the temporary directory is removed.
    """
    parent = target.parent
    tmp = parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():  # this process's own, from a write that was cut short
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                fsync_file(p)
            elif p.is_dir():
                fsync_dir(p)
        fsync_dir(tmp)
        if target.exists():
            trash = parent / f".trash-{target.name}-{os.getpid()}"
            os.replace(target, trash)
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_dir(parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


__all__ = [
    "FILE_TEMP",
    "Staged",
    "dir_temporaries",
    "fsync_dir",
    "fsync_file",
    "remove_stale",
    "replace_dir",
    "write_file",
]
