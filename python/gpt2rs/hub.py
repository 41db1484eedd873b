"""Hugging Face weights: find a model (local directory or hub id), read its
config.json and safetensors files (single or sharded), map the names onto
GPT-2's, and write `save_pretrained` directories that transformers loads.

No torch is needed: safetensors files are read and written with numpy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from . import atomic

PREFIX = "transformer."
#: Buffers HF files may carry that are not parameters (the causal mask).
IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class WeightsError(ValueError):
    """A weights file is missing, unreadable, or does not fit the model."""


def resolve(
    name_or_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A local directory, or the snapshot directory of a hub repo id."""
    p = Path(name_or_path)
    if p.is_dir():
        return p
    if p.exists():
        raise WeightsError(
            f"{p} is a file; give the directory holding config.json and model.safetensors"
        )
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise WeightsError(f"model directory not found: {name}")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of the package
        raise WeightsError("huggingface_hub is needed to download models from the hub") from None
    try:
        path = snapshot_download(
            repo_id=name,
            cache_dir=None if cache_dir is None else str(cache_dir),
            allow_patterns=["config.json", "*.safetensors", "*.safetensors.index.json"],
        )
    except Exception as e:  # noqa: BLE001 -- the hub raises many kinds; all mean "could not get it"
        raise WeightsError(
            f"cannot get {name!r} from the Hugging Face hub ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "check the name and the network, or pass a local directory"
        ) from None
    return Path(path)


def _load_file(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file: {e}") from None


def read_state(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of model.safetensors, or of the shards an index names."""
    single = directory / "model.safetensors"
    index = directory / "model.safetensors.index.json"
    if single.is_file():
        return _load_file(single)
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise WeightsError(f"{index} is not a safetensors index: {e}") from None
        state: dict[str, np.ndarray] = {}
        for shard in sorted(set(weight_map.values())):
            state.update(_load_file(directory / shard))
        return state
    if (directory / "pytorch_model.bin").exists():
        raise WeightsError(
            f"{directory} has only pytorch_model.bin; gpt2rs reads safetensors files"
        )
    raise WeightsError(f"no model.safetensors (or model.safetensors.index.json) in {directory}")


def normalize(state: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Names without the `transformer.` prefix, mask buffers and the tied
    `lm_head.weight` dropped."""
    out: dict[str, np.ndarray] = {}
    for k, v in state.items():
        name = k[len(PREFIX) :] if k.startswith(PREFIX) else k
        if name.endswith(IGNORED_SUFFIXES) or name == "lm_head.weight":
            continue
        out[name] = v
    return out


def check(
    state: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], source: str
) -> None:
    """Raises one WeightsError naming every missing, unexpected or mis-shaped tensor."""
    problems = []
    missing = [n for n in expected if n not in state]
    unexpected = [n for n in state if n not in expected]
    if missing:
        problems.append("missing: " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected: " + ", ".join(unexpected))
    for n, shape in expected.items():
        if n in state and tuple(state[n].shape) != tuple(shape):
            problems.append(f"{n} has shape {tuple(state[n].shape)}, expected {tuple(shape)}")
    for n, v in state.items():
        if n in expected and not np.issubdtype(np.asarray(v).dtype, np.floating):
            problems.append(f"{n} has dtype {np.asarray(v).dtype}, expected a float type")
    if problems:
        raise WeightsError(f"weights from {source} do not fit the model: " + "; ".join(problems))


def write_pretrained(
    directory: str | os.PathLike[str], config: dict, state: Mapping[str, np.ndarray]
) -> None:
    """Writes config.json and model.safetensors (names with the `transformer.`
    prefix, as transformers saves them) into `directory`, atomically
    (`atomic.Staged`): each is written under a temporary name beside it and
    then renamed onto it."""
    from safetensors.numpy import save_file

    with atomic.Staged(Path(directory), ["model.safetensors", "config.json"]) as tmp:
        tensors = {PREFIX + k: np.ascontiguousarray(v) for k, v in state.items()}
        save_file(tensors, str(tmp["model.safetensors"]), metadata={"format": "pt"})
        tmp["config.json"].write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
