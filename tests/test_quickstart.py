"""The README's main job, shrunk: every stage runs and leaves its outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2rs import quickstart


def test_quickstart_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        quickstart.main(["--out", str(tmp_path), "--steps", "4", "--stories", "300", "--ncpu", "2"])
        == 0
    )
    out = capsys.readouterr().out
    # The printed commands run as they are, in an activated venv or not.
    cmds = {
        t: quickstart.runnable(t) for t in ("gpt2rs-prepare", "gpt2rs-train", "gpt2rs-generate")
    }
    assert all(f"$ {c} " in out for c in cmds.values()), out
    assert all(c == t or Path(c).is_file() for t, c in cmds.items()), cmds
    assert "Once upon a time" in out.split(f"$ {cmds['gpt2rs-generate']}")[1]
    assert (tmp_path / "data" / "stories" / "train.bin").stat().st_size > 0
    latest = (tmp_path / "checkpoints" / "latest").read_text().strip()
    assert (tmp_path / "checkpoints" / latest / "model.safetensors").is_file()
    assert any((tmp_path / "runs").rglob("events.out.tfevents*"))
    losses = [
        json.loads(x)["loss"]
        for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in x
    ]
    assert len(losses) >= 4


def test_corpus_is_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    quickstart.write_corpus(a, 20, seed=1)
    quickstart.write_corpus(b, 20, seed=1)
    assert a.read_text() == b.read_text() and a.read_text().count("Once upon a time") == 20


def test_a_rerun_starts_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs into one --out leave one run's metrics, one TensorBoard run and its own checkpoints."""
    argv = ["--out", str(tmp_path), "--steps", "2", "--stories", "200", "--ncpu", "2"]
    assert quickstart.main(argv) == 0
    assert quickstart.main(argv) == 0
    capsys.readouterr()
    steps = [
        json.loads(x)["step"]
        for x in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if '"step"' in x
    ]
    assert steps == sorted(set(steps)) and steps[-1] == 2, steps
    assert len(list((tmp_path / "runs").iterdir())) == 1
