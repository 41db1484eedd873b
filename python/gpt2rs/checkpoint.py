"""Training checkpoints: written atomically, resumed exactly, loadable as HF models.

Layout of a checkpoint root (`gpt2rs-train --save-checkpoint-path`)::

    <root>/
      latest                  one line: the name of the newest complete checkpoint
      checkpoint-<step>/      one directory per saved step (the last `keep` are kept)
        config.json           \\ HF GPT2LMHeadModel (GPT2LMHead.from_pretrained,
        model.safetensors     /  transformers and gpt2rs-generate load this directory)
        optimizer.safetensors optimizer state arrays, keys "<param>/<state>"
        optimizer.json        optimizer kind, step count, lr, weight decay, hyper-parameters
        trainer_state.json    step, epoch, position in the epoch's order, the numpy
                              RNG state, the LR schedule, the run's options, and the
                              size and SHA-256 of every other file (written last)

Atomicity (`gpt2rs.atomic`): a checkpoint is built in a hidden temporary
directory beside its target (`<root>/.tmp-checkpoint-<step>-<pid>`), every file
and the directory are fsynced, and the directory is renamed into place; then
`latest` is replaced atomically (written beside it, fsynced, renamed). Older
checkpoints are pruned only after that. A kill at any moment therefore leaves
the previous checkpoint, complete, named by `latest` (or, in the one window
where a checkpoint of the same step is being replaced, found by the fallback
below). Leftover temporary directories of dead processes are removed by the
next save.

Resolution (`resolve`): a directory holding trainer_state.json is a
checkpoint; a root is resolved through `latest`, falling back to the most recently saved
complete `checkpoint-<step>` when `latest` is missing or names a directory
that is gone. `keep` prunes by save time too, so a root reused by a new run
ends up holding only the new run's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic, hub, lock
from .config import GPT2Config
from .lock import pid_alive
from .lock import release as release_lock

FORMAT = "gpt2rs-train-checkpoint"
VERSION = 1
STATE_FILE = "trainer_state.json"
LATEST = "latest"
PREFIX = "checkpoint-"
DATA_FILES = ("config.json", "model.safetensors", "optimizer.safetensors", "optimizer.json")
_NAME = re.compile(r"^checkpoint-(?P<step>\d+)$")
#: `atomic.replace_dir`'s temporaries of a checkpoint directory.
_TMP = atomic.dir_temporaries(r"checkpoint-(?P<step>\d+)")


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, corrupt, or does not fit this run."""


@dataclass
class Checkpoint:
    """A checkpoint read back from disk, checked against its recorded checksums."""

    path: Path
    config: GPT2Config
    model_state: dict[str, np.ndarray]
    optimizer_state: dict[str, Any]
    trainer_state: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.trainer_state["step"])


# -- writing -----------------------------------------------------------------


def _reason(e: BaseException) -> str:
    """One line for an I/O failure: the OS's words when there are some."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e).strip().splitlines()
    m = re.search(r'message: "([^"]+)"', str(e))  # safetensors wraps the io::Error
    return m.group(1) if m else (text[0] if text else type(e).__name__)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_latest(root: Path, name: str) -> None:
    """Points `root/latest` at `name`, atomically."""
    atomic.write_file(root / LATEST, name + "\n")


def save(
    root: str | os.PathLike[str],
    step: int,
    model: Any,
    optimizer: Any,
    trainer_state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Writes `root/checkpoint-<step>` atomically, points `latest` at it and
    prunes all but the newest `keep` checkpoints (0 keeps all). Returns the
    checkpoint directory."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step}"
    target = root / name
    try:
        with atomic.replace_dir(target) as tmp:
            model.save_pretrained(tmp)
            opt = optimizer.state_dict()
            arrays = {
                f"{p}/{s}": np.ascontiguousarray(v)
                for p, d in opt["state"].items()
                for s, v in d.items()
            }
            from safetensors.numpy import save_file

            save_file(
                arrays, str(tmp / "optimizer.safetensors"), metadata={"format": "gpt2rs-optimizer"}
            )
            scalars = {k: v for k, v in opt.items() if k != "state"}
            _write_json(tmp / "optimizer.json", scalars)
            files = {
                f: {"bytes": (tmp / f).stat().st_size, "sha256": _sha256(tmp / f)}
                for f in DATA_FILES
            }
            state = dict(trainer_state)
            state.update(
                format=FORMAT, version=VERSION, step=int(step), files=files, saved_at=time.time()
            )
            # trainer_state.json is written last: its presence marks a complete checkpoint.
            _write_json(tmp / STATE_FILE, state)
    except Exception as e:  # noqa: BLE001 -- safetensors and the model's writer raise their own kinds
        # A full disk surfaces as OSError or safetensors' SafetensorError: one line, the older checkpoints kept.
        raise CheckpointError(
            f"cannot save checkpoint {target}: {_reason(e)} (the previous checkpoints are kept)"
        ) from None
    try:
        write_latest(root, name)
    except OSError as e:
        raise CheckpointError(
            f"cannot update {root / LATEST}: {_reason(e)} ({target} is complete)"
        ) from None
    atomic.remove_stale(root, _TMP)
    if keep > 0:
        for _, old in list_checkpoints(root)[:-keep]:
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
    return target


# -- reading -----------------------------------------------------------------


def _saved_at(d: Path) -> float:
    try:
        return float(json.loads((d / STATE_FILE).read_text())["saved_at"])
    except (OSError, ValueError, KeyError, TypeError):
        return (d / STATE_FILE).stat().st_mtime if (d / STATE_FILE).exists() else 0.0


def list_checkpoints(root: str | os.PathLike[str], hidden: bool = False) -> list[tuple[int, Path]]:
    """(step, directory) of every complete-looking checkpoint in root, oldest
    save first (a root reused by a new run orders its checkpoints after the
    old run's). hidden: also the temporary and set-aside directories of an
    interrupted save."""
    root = Path(root)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = _NAME.match(p.name) or (_TMP.match(p.name) if hidden else None)
            if m and (p / STATE_FILE).is_file():
                out.append((_saved_at(p), int(m.group("step")), p))
    return [(step, p) for _, step, p in sorted(out)]


def resolve(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory that `path` names: itself, or through `latest`."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"checkpoint not found: {p}")
    if not p.is_dir():
        raise CheckpointError(
            f"checkpoint {p} is a file; give a checkpoint directory (or the root holding `latest`)"
        )
    if (p / STATE_FILE).exists():
        return p
    latest = p / LATEST
    if latest.is_file():
        name = latest.read_text().strip()
        if not name or "/" in name or name.startswith("."):
            raise CheckpointError(f"{latest} is corrupt: it names {name!r}")
        if (p / name / STATE_FILE).is_file():
            return p / name
    found = list_checkpoints(p) or list_checkpoints(p, hidden=True)
    if found:
        return found[-1][1]
    if (p / "config.json").is_file():
        raise CheckpointError(
            f"{p} is a model directory, not a gpt2rs-train checkpoint (no {STATE_FILE}); "
            "start from its weights with --pretrained remote --remote-model-name " + str(p)
        )
    raise CheckpointError(
        f"no gpt2rs-train checkpoint in {p} (no {STATE_FILE}, no `latest`, no checkpoint-<step>)"
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"checkpoint {path.parent} is incomplete: {path.name} is missing"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {path.parent} is corrupt: {path.name} is not valid JSON ({e})"
        ) from None


def _checked_state(d: Path, verify: bool = True) -> dict[str, Any]:
    """trainer_state.json of checkpoint directory `d`, after checking the
    size and (with `verify`) the SHA-256 of every file it records."""
    state = _read_json(d / STATE_FILE)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{d / STATE_FILE} is not a gpt2rs-train checkpoint state")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {d} has format version {state.get('version')}, this gpt2rs reads {VERSION}"
        )
    for key in ("step", "epoch", "position", "rng_state", "files"):
        if key not in state:
            raise CheckpointError(f"checkpoint {d} is corrupt: {STATE_FILE} has no {key!r}")
    files = state["files"]
    for fname in DATA_FILES:
        f = d / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint {d} is incomplete: {fname} is missing")
        rec = files.get(fname) if isinstance(files, dict) else None
        if not isinstance(rec, dict):
            raise CheckpointError(f"checkpoint {d} is corrupt: no checksum recorded for {fname}")
        if f.stat().st_size != rec.get("bytes"):
            raise CheckpointError(
                f"checkpoint {d} is corrupt: {fname} has {f.stat().st_size} bytes, {rec.get('bytes')} were written"
            )
        if verify and _sha256(f) != rec.get("sha256"):
            raise CheckpointError(f"checkpoint {d} is corrupt: {fname} does not match its SHA-256")
    return state


def verified(path: str | os.PathLike[str]) -> Path:
    """The checkpoint directory `path` names (itself or through its root's
    `latest`), with every file checked against its recorded SHA-256: what
    loading weights from a checkpoint (generation, from_pretrained) needs."""
    d = resolve(path)
    _checked_state(d)
    return d


def is_checkpoint(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a gpt2rs-train checkpoint directory or a root of them."""
    p = Path(path)
    return (p / STATE_FILE).is_file() or (p / LATEST).is_file() or bool(list_checkpoints(p))


def load(path: str | os.PathLike[str], verify: bool = True) -> Checkpoint:
    """Reads a checkpoint (a checkpoint directory or a root) and checks the
    size and SHA-256 of every file against trainer_state.json."""
    d = resolve(path)
    state = _checked_state(d, verify)
    try:
        config = GPT2Config.from_json_file(d / "config.json")
    except ValueError as e:
        raise CheckpointError(f"checkpoint {d}: {e}") from None
    try:
        model_state = hub.read_state(d)
    except hub.WeightsError as e:
        raise CheckpointError(str(e)) from None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        arrays = load_file(str(d / "optimizer.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {d} is corrupt: optimizer.safetensors is unreadable ({e})"
        ) from None
    opt = _read_json(d / "optimizer.json")
    if not isinstance(opt, dict) or "kind" not in opt or "step" not in opt:
        raise CheckpointError(f"checkpoint {d} is corrupt: optimizer.json lacks kind/step")
    nested: dict[str, dict[str, np.ndarray]] = {}
    for k, v in arrays.items():
        p, _, s = k.rpartition("/")
        nested.setdefault(p, {})[s] = v
    opt = dict(opt, state=nested)
    return Checkpoint(
        path=d, config=config, model_state=model_state, optimizer_state=opt, trainer_state=state
    )


LOCK = ".gpt2rs-train.lock"


def acquire_lock(root: str | os.PathLike[str]) -> Path:
    """Claims the checkpoint root for this process (`lock.acquire` on its `LOCK`
    file), so that a second run on the same root refuses instead of
    interleaving checkpoints with the first. A lock left by a process of this
    host that is gone (kill -9), or by this process, is taken over. Raises
    CheckpointError naming the owner otherwise."""
    path = Path(root) / LOCK
    try:
        return lock.acquire(path)
    except lock.LockHeld as e:
        if e.owner is None:
            raise CheckpointError(f"cannot lock {root}: {path} keeps changing") from None
        raise CheckpointError(
            f"{root} is in use by another gpt2rs-train (pid {e.owner['pid']} on {e.owner['host']}); stop it, "
            f"choose another --save-checkpoint-path, or remove {path} if that run is gone"
        ) from None


def check_writable(root: str | os.PathLike[str]) -> None:
    """Creates root if needed and proves a file can be written there; raises
    OSError with a message naming the directory otherwise."""
    p = Path(root)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write to {p}: {e.strerror or e}") from None


__all__ = [
    "LOCK",
    "Checkpoint",
    "CheckpointError",
    "acquire_lock",
    "check_writable",
    "is_checkpoint",
    "list_checkpoints",
    "load",
    "pid_alive",
    "release_lock",
    "resolve",
    "save",
    "verified",
    "write_latest",
]
