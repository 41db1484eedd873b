"""Dataset files from the Hugging Face Hub: which files of a dataset repo hold
its train split, and each one fetched through the local cache."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from .documents import EXTENSIONS
from .errors import DataError, one_line

log = logging.getLogger(__name__)


def _have_pyarrow() -> bool:
    try:
        import pyarrow.parquet  # type: ignore[import-not-found, import-untyped, unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def _split_words(path: str) -> list[str]:
    return [w for w in re.split(r"[-_./]", path.lower()) if w]


def pick_split_files(
    files: Sequence[str], split: str = "train", have_pyarrow: bool = True
) -> list[str]:
    """The files of a dataset repo that hold `split`, in one format, in name order.

    A file holds the split when a word of its path (split at - _ . /) is the
    split's name. Parquet comes first (what the `datasets` library, and so
    NNTile's script, reads), then JSON Lines, then text; of several .txt files
    only the first is taken (TinyStories has two versions side by side).
    """
    ok = [f for f in files if split in _split_words(f) and Path(f).suffix.lower() in EXTENSIONS]
    by_kind: dict[str, list[str]] = {}
    for f in sorted(ok):
        by_kind.setdefault(EXTENSIONS[Path(f).suffix.lower()], []).append(f)
    if "parquet" in by_kind and (have_pyarrow or not ({"jsonl", "txt"} & by_kind.keys())):
        return by_kind["parquet"]  # without pyarrow, the read fails with a clear message
    if "parquet" in by_kind:
        other = "jsonl" if "jsonl" in by_kind else "txt"
        log.warning(
            "pyarrow is not installed: reading the dataset's %s files instead of its parquet", other
        )
    if "jsonl" in by_kind:
        return by_kind["jsonl"]
    if "txt" in by_kind:
        return by_kind["txt"][:1]
    return []


def _hub_error(repo: str, e: BaseException) -> DataError:
    return DataError(
        f"cannot get dataset {repo!r} from the Hugging Face Hub ({one_line(e)}); "
        "check the name and the network (HF_HUB_OFFLINE must be unset), or pass --input FILE"
    )


def hub_files(hf_dataset: str, cache_dir: Path) -> tuple[str, list[str]]:
    """(repo id, the repo files to read in order) for `hf_dataset` = ``owner/name[/file]``."""
    from huggingface_hub import HfApi, snapshot_download

    parts = hf_dataset.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise DataError(f"--hf-dataset {hf_dataset!r} is not a hub dataset id (owner/name[/file])")
    repo = "/".join(parts[:2])
    if len(parts) > 2:
        return repo, ["/".join(parts[2:])]
    try:
        files = HfApi().list_repo_files(repo, repo_type="dataset")
    except Exception as e:  # noqa: BLE001 -- offline, no network, no such repo, ...
        # Offline, a snapshot already in the cache still serves.
        try:
            snap = Path(
                snapshot_download(
                    repo, repo_type="dataset", cache_dir=str(cache_dir), local_files_only=True
                )
            )
        except Exception:  # noqa: BLE001 -- any failure here means the same thing
            raise _hub_error(repo, e) from None
        files = [str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()]
    chosen = pick_split_files(files, "train", _have_pyarrow())
    if not chosen:
        raise DataError(f"dataset {repo!r} has no train split in parquet, jsonl or txt files")
    return repo, chosen


def hub_download(repo: str, filename: str, cache_dir: Path) -> Path:
    """One file of a dataset repo, through the cache in `cache_dir` (NNTile's --dataset-path)."""
    from huggingface_hub import snapshot_download

    try:
        snap = snapshot_download(
            repo, repo_type="dataset", cache_dir=str(cache_dir), allow_patterns=[filename]
        )
    except Exception as e:  # noqa: BLE001 -- offline, no network, ...
        raise _hub_error(repo, e) from None
    p = Path(snap) / filename
    if not p.is_file():
        raise DataError(f"dataset {repo!r} has no file {filename!r}")
    return p
