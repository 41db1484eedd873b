"""gpt2rs.checkpoint: atomic save, exact load, pruning, corruption and crash recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import gpt2rs
from gpt2rs import checkpoint as ck

CFG = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)


@pytest.fixture
def trained(rt: gpt2rs.Runtime) -> tuple[gpt2rs.GPT2LMHead, gpt2rs.Adam]:
    model = gpt2rs.GPT2LMHead.from_config(CFG, seed=1, runtime=rt, deterministic=True)
    opt = gpt2rs.Adam(model, lr=1e-2)
    ids = np.random.default_rng(0).integers(0, 64, (2, 9))
    for _ in range(2):
        model.zero_grad()
        model.forward_backward(ids[:, :-1], targets=ids[:, 1:])
        opt.step()
    return model, opt


def _state(step: int) -> dict:
    rng = np.random.default_rng(7)
    return {
        "epoch": 0,
        "position": step * 2,
        "rng_state": rng.bit_generator.state,
        "run": {"seq_len": 8},
    }


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_round_trip(tmp_path: Path, trained, rt: gpt2rs.Runtime) -> None:
    model, opt = trained
    path = ck.save(tmp_path / "ck", 2, model, opt, _state(2))
    assert path == tmp_path / "ck" / "checkpoint-2"
    assert (tmp_path / "ck" / "latest").read_text().strip() == "checkpoint-2"
    assert sorted(p.name for p in path.iterdir()) == sorted([*ck.DATA_FILES, ck.STATE_FILE])
    c = ck.load(tmp_path / "ck")  # through `latest`
    assert c.path == path and c.step == 2
    assert c.trainer_state["rng_state"] == np.random.default_rng(7).bit_generator.state
    want = model.state_dict()
    got = gpt2rs.hub.normalize(c.model_state)
    assert all(np.array_equal(got[k[len("transformer.") :]], v) for k, v in want.items())
    o = opt.state_dict()
    assert c.optimizer_state["kind"] == "adam" and c.optimizer_state["step"] == 2
    for p, d in o["state"].items():
        for s, v in d.items():
            assert np.array_equal(c.optimizer_state["state"][p][s], v)
    # Loads back into a fresh optimizer, and the checkpoint is an HF model directory.
    m2 = gpt2rs.GPT2LMHead.from_pretrained(path, runtime=rt)
    opt2 = gpt2rs.Adam(m2, lr=1e-2)
    opt2.load_state_dict(c.optimizer_state)
    assert opt2.step_count == 2
    assert all(np.array_equal(m2.state_dict()[k], v) for k, v in want.items())


def test_latest_and_pruning(tmp_path: Path, trained) -> None:
    model, opt = trained
    root = tmp_path / "ck"
    for step in (1, 2, 3, 4):
        ck.save(root, step, model, opt, _state(step), keep=2)
    assert [s for s, _ in ck.list_checkpoints(root)] == [3, 4]
    assert ck.resolve(root).name == "checkpoint-4"
    assert ck.resolve(root / "checkpoint-3").name == "checkpoint-3"
    # keep=0 keeps everything; no temporary directories are left behind.
    ck.save(root, 5, model, opt, _state(5), keep=0)
    assert [s for s, _ in ck.list_checkpoints(root)] == [3, 4, 5]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def test_reused_root_prunes_by_save_time(tmp_path: Path, trained) -> None:
    """A new run in a root that holds an older run's later steps ends up with its own."""
    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 100, model, opt, _state(100), keep=2)
    for step in (1, 2):
        ck.save(root, step, model, opt, _state(step), keep=2)
    assert ck.resolve(root).name == "checkpoint-2"
    assert [s for s, _ in ck.list_checkpoints(root)] == [1, 2]


def test_failure_mid_save_keeps_previous(
    tmp_path: Path, trained, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure at any rename of a save (model files, the checkpoint
    directory, `latest`) leaves the previous checkpoint as the one resolved."""
    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 1, model, opt, _state(1))
    real_replace = os.replace
    for fail_at in range(1, 5):
        calls = {"n": 0}

        def flaky(src, dst, _n=fail_at, _calls=calls):
            _calls["n"] += 1
            if _calls["n"] == _n:
                raise OSError(28, "No space left on device")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", flaky)
        with pytest.raises(ck.CheckpointError, match="No space left on device"):
            ck.save(root, 2, model, opt, _state(2))
        monkeypatch.setattr(os, "replace", real_replace)
        assert calls["n"] >= fail_at
        assert ck.load(root).step == 1, fail_at
        assert not [p for p in root.iterdir() if p.name.startswith(".")]
        if (root / "checkpoint-2").exists():  # complete, but `latest` was not moved
            assert fail_at == 4
            ck.save(root, 2, model, opt, _state(2))
            assert ck.load(root).step == 2


def test_leftovers_of_dead_process_are_removed(tmp_path: Path, trained) -> None:
    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 1, model, opt, _state(1))
    stale = root / f".tmp-checkpoint-2-{_dead_pid()}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert ck.resolve(root).name == "checkpoint-1"
    ck.save(root, 2, model, opt, _state(2))
    assert not stale.exists()


@pytest.mark.parametrize("where", ["weights", "optimizer"])
def test_a_full_disk_is_one_error_and_keeps_the_previous_checkpoint(
    tmp_path: Path, trained, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """ENOSPC from our own writes (OSError) or from safetensors (its SafetensorError wraps the io::Error)."""
    import safetensors.numpy

    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 1, model, opt, _state(1))

    def full(*a: object, **k: object) -> None:
        if where == "weights":
            raise OSError(28, "No space left on device")
        raise safetensors.SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )

    if where == "weights":
        monkeypatch.setattr(model, "save_pretrained", full)
    else:
        monkeypatch.setattr(safetensors.numpy, "save_file", full)
    with pytest.raises(ck.CheckpointError) as e:
        ck.save(root, 2, model, opt, _state(2))
    msg = str(e.value)
    assert "checkpoint-2" in msg and "No space left on device" in msg and "\n" not in msg, msg
    assert [s for s, _ in ck.list_checkpoints(root, hidden=True)] == [1]
    assert ck.load(root).step == 1


def test_fallbacks_when_latest_is_stale(tmp_path: Path, trained) -> None:
    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 1, model, opt, _state(1), keep=0)
    ck.save(root, 2, model, opt, _state(2), keep=0)
    (root / "latest").unlink()
    assert ck.resolve(root).name == "checkpoint-2"
    ck.write_latest(root, "checkpoint-9")  # names a directory that is gone
    assert ck.resolve(root).name == "checkpoint-2"
    # A kill between the two renames that replace a checkpoint of the same step:
    # only the set-aside old copy is left.
    for p in list(root.iterdir()):
        if p.name.startswith("checkpoint-"):
            p.rename(root / f".trash-{p.name}-12345")
    assert ck.load(root).step == 2


def test_same_step_replaced(tmp_path: Path, trained) -> None:
    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 3, model, opt, {**_state(3), "marker": "old"})
    ck.save(root, 3, model, opt, {**_state(3), "marker": "new"})
    assert ck.load(root).trainer_state["marker"] == "new"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize(
    "damage, message",
    [
        ("flip", "does not match its SHA-256"),
        ("truncate", "bytes"),
        ("state_json", "not valid JSON"),
        ("no_optimizer", "optimizer.safetensors is missing"),
        ("format", "not a gpt2rs-train checkpoint state"),
    ],
)
def test_corrupt_checkpoint_is_one_clear_error(
    tmp_path: Path, trained, damage: str, message: str
) -> None:
    model, opt = trained
    path = ck.save(tmp_path / "ck", 2, model, opt, _state(2))
    f = path / "model.safetensors"
    if damage == "flip":
        b = bytearray(f.read_bytes())
        b[-3] ^= 0xFF
        f.write_bytes(bytes(b))
    elif damage == "truncate":
        f.write_bytes(f.read_bytes()[:-10])
    elif damage == "state_json":
        (path / ck.STATE_FILE).write_text("{not json")
    elif damage == "no_optimizer":
        (path / "optimizer.safetensors").unlink()
    elif damage == "format":
        (path / ck.STATE_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ck.CheckpointError, match=message) as e:
        ck.load(tmp_path / "ck")
    assert "\n" not in str(e.value)


def test_not_a_checkpoint(tmp_path: Path, trained) -> None:
    model, _ = trained
    with pytest.raises(ck.CheckpointError, match="not found"):
        ck.resolve(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ck.CheckpointError, match="no gpt2rs-train checkpoint"):
        ck.resolve(tmp_path / "empty")
    model.save_pretrained(tmp_path / "hf")
    with pytest.raises(ck.CheckpointError, match="--pretrained remote"):
        ck.resolve(tmp_path / "hf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ck.CheckpointError, match="is a file"):
        ck.resolve(tmp_path / "file")


def test_check_writable(tmp_path: Path) -> None:
    ck.check_writable(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError, match="cannot write to"):
        ck.check_writable(tmp_path / "f" / "sub")


def test_from_pretrained_reads_a_checkpoint_root_and_checks_it(
    tmp_path: Path, trained, rt: gpt2rs.Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    """from_pretrained and gpt2rs-generate accept the root as the CLI does, and a flipped byte in the weights is
    one error (the SHA-256 recorded at save), not silent generation from damaged weights."""
    from gpt2rs.cli import generate as gen_cli

    model, opt = trained
    root = tmp_path / "ck"
    ck.save(root, 3, model, opt, _state(3))
    ids = np.arange(8).reshape(1, 8)
    m = gpt2rs.GPT2LMHead.from_pretrained(root, runtime=rt)
    assert np.array_equal(m.forward(ids), model.forward(ids))
    weights = root / "checkpoint-3" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ck.CheckpointError, match="does not match its SHA-256"):
        gpt2rs.GPT2LMHead.from_pretrained(root, runtime=rt)
    rc = gen_cli.main(
        ["--model", str(root), "--ncpu", "2", "--max-new-tokens", "2", "--prompt-ids", "1,2,3"]
    )
    err = capsys.readouterr().err
    assert rc != 0 and "SHA-256" in err and len(err.strip().splitlines()) == 1, err


def test_a_checkpoint_of_an_earlier_version_resumes(tmp_path: Path) -> None:
    """tests/golden/checkpoint-v1 (written before ModelOptions and the train
    package; see its README) resumes into the losses that version logged for
    the same run uninterrupted."""
    import shutil

    from gpt2rs.cli import train as cli

    src = Path(__file__).parent / "golden" / "checkpoint-v1"
    root = tmp_path / "v1"
    shutil.copytree(src, root)
    argv = (
        f"--restrict cpu --config-path {root / 'cfg.json'} --dataset-path {root} "
        "--dataset-file train.bin --seq-len 16 --batch-size 4 --minibatch-size 2 --lr 3e-3 "
        "--ncpu 2 --seq-len-tile 8 --vocab-tile -1 --dropout 0.2 --max-steps 6 --quiet "
        f"--checkpoint-path {root} --save-checkpoint-path {tmp_path / 'ck'} "
        f"--metrics-file {tmp_path / 'm.jsonl'}"
    ).split()
    assert cli.main(argv) == 0
    got = [json.loads(line)["loss"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    want = [3.934168409664745, 3.904661833733761, 3.9274327199664003]
    np.testing.assert_allclose(got, want, rtol=1e-6)
