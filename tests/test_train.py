"""gpt2rs-train: the option contract, exact resume, checkpoints under SIGINT
and kill -9, the HF round trip, progress output and bad input.

Everything runs on tiny data written here and tiny configs, offline."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import gpt2rs
from gpt2rs import checkpoint as ck
from gpt2rs.cli import train as cli
from gpt2rs.cli._common import Formatter
from gpt2rs.configs import GPT2_DEFAULT_CONFIG
from gpt2rs.logger_server import LoggerServer
from gpt2rs.metrics import read_scalars
from gpt2rs.train import MIN_LR_RATIO, TrainOptions, lr_at

ROOT = Path(__file__).resolve().parents[1]
CFG = dict(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2)
ENV_VARS = [
    "STARPU_NCPU",
    "STARPU_NCUDA",
    "STARPU_SCHED",
    "STARPU_PERF_MODEL_DIR",
    "STARPU_SILENT",
    "STARPU_FXT_TRACE",
    "STARPU_FXT_PREFIX",
    "NNTILE_LOGGER",
    "NNTILE_LOGGER_SERVER_ADDR",
    "NNTILE_LOGGER_SERVER_PORT",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tokens(n: int, vocab: int = 64, seed: int = 0) -> np.ndarray:
    """A learnable stream: a repeating ramp with 10 % noise."""
    rng = np.random.default_rng(seed)
    base = np.arange(n) % vocab
    return np.where(rng.random(n) < 0.1, rng.integers(0, vocab, n), base).astype("<u2")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    (tmp_path / "data").mkdir()
    tokens(17 * 12).tofile(tmp_path / "data" / "train.bin")  # 12 windows of 16 + 1
    tokens(17 * 4, seed=1).tofile(tmp_path / "data" / "val.bin")
    (tmp_path / "cfg.json").write_text(json.dumps(CFG))
    return tmp_path


def args(ws: Path, *extra: str) -> list[str]:
    fixed = (
        f"--restrict cpu --config-path {ws / 'cfg.json'} --dataset-path {ws / 'data'} --dataset-file train.bin "
        f"--seq-len 16 --batch-size 4 --minibatch-size 2 --lr 3e-3 --ncpu 2 --quiet --save-checkpoint-path {ws / 'ck'}"
    )
    return [*fixed.split(), *extra]


def run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def losses(path: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in path.read_text().splitlines()]


# -- the option contract -------------------------------------------------------

CONTRACT = {
    "remote_model_name": "openai-community/gpt2",
    "pretrained": "local",
    "checkpoint_path": "",
    "config_path": "",
    "save_checkpoint_path": ".model",
    "optimizer": "adam",
    "model_path": ".model",
    "lr": 1e-4,
    "nepochs": 1,
    "seq_len": 1024,
    # The notebook's tile defaults are -1 (untiled); ours are None: cut from
    # the shapes and the CPU workers (-1 still means untiled, "whole" past the CLI).
    "seq_len_tile": None,
    "batch_size": 1,
    "minibatch_size": -1,
    "minibatch_size_tile": None,
    "hidden_size_tile": None,
    "intermediate_size_tile": None,
    "n_head_tile": None,
    "dtype": "fp32",
    "restrict": None,
    "logger": False,
    "logger_server_port": 5001,
    "dataset_file": "",
    "scheduler": "eager",
    "ncuda": None,
}


def test_defaults_match_the_contract() -> None:
    opts, ui = cli.parse_args([])
    for k, v in CONTRACT.items():
        assert getattr(opts.model if hasattr(opts.model, k) else opts, k) == v, k
    assert (
        ui["quiet"] is False
        and opts.ncpu is None
        and opts.trace == ""
        and opts.logger_server_addr == ""
    )
    assert GPT2_DEFAULT_CONFIG.is_file()
    c = gpt2rs.GPT2Config.coerce(GPT2_DEFAULT_CONFIG)
    assert (c.n_layer, c.n_head, c.n_embd, c.n_positions, c.vocab_size) == (
        12,
        12,
        768,
        1024,
        50257,
    )


def test_help_names_every_option_with_help_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for name in [
        *CONTRACT,
        "dataset_path",
        "logger_server_addr",
        "seed",
        "max_steps",
        "warmup_steps",
        "lr_schedule",
        "weight_decay",
        "beta1",
        "beta2",
        "eps",
        "momentum",
        "grad_clip",
        "val_file",
        "eval_every",
        "save_every",
        "ncpu",
        "trace",
        "recompute",
        "vocab_tile",
        "log_dir",
    ]:
        assert "--" + name.replace("_", "-") in text, name
    for action in cli.build_parser()._actions:
        if action.dest != "help":
            assert action.help, action.dest
            assert action.help.count("default") <= 1 or "%(default)" not in action.help, action.dest
            rendered = Formatter("x")._get_help_string(action) or ""
            assert "default" in rendered or action.default in (False, None), action.dest


def test_underscore_spellings() -> None:
    opts, _ = cli.parse_args(
        [
            "--remote_model_name",
            "some/model",
            "--seq_len=7",
            "--batch_size",
            "4",
            "--minibatch_size=2",
            "--dataset_file",
            "f.bin",
            "--save_checkpoint_path",
            "s",
            "--n_head_tile",
            "3",
            "--logger_server_addr=h",
            "--logger_server_port",
            "7000",
            "--max_steps",
            "9",
            "--lr_schedule",
            "cosine",
            "--grad_clip=1.5",
        ]
    )
    assert (opts.remote_model_name, opts.seq_len, opts.batch_size, opts.minibatch_size) == (
        "some/model",
        7,
        4,
        2,
    )
    assert (opts.dataset_file, opts.save_checkpoint_path, opts.model.n_head_tile) == (
        "f.bin",
        "s",
        3,
    )
    assert (opts.logger_server_addr, opts.logger_server_port, opts.max_steps) == ("h", 7000, 9)
    assert (opts.lr_schedule, opts.grad_clip) == ("cosine", 1.5)
    assert cli.parse_args(["--restrict=None"])[0].restrict is None


def test_environment_and_flags_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = {
        "STARPU_NCPU": "3",
        "STARPU_SCHED": "dmdasd",
        "STARPU_SILENT": "1",
        "STARPU_PERF_MODEL_DIR": str(tmp_path),
        "STARPU_FXT_TRACE": "1",
        "STARPU_FXT_PREFIX": str(tmp_path),
        "NNTILE_LOGGER": "1",
        "NNTILE_LOGGER_SERVER_ADDR": "127.0.0.1",
        "NNTILE_LOGGER_SERVER_PORT": "7001",
        "STARPU_NCUDA": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    opts, ui = cli.parse_args([])
    assert (opts.ncpu, opts.scheduler, opts.perf_model_dir) == (3, "dmdasd", str(tmp_path))
    assert opts.trace == str(tmp_path / "gpt2rs.trace.json") and ui["quiet"] is True
    assert (opts.logger, opts.logger_server_addr, opts.logger_server_port) == (
        True,
        "127.0.0.1",
        7001,
    )
    assert opts.ncuda == 1
    opts, ui = cli.parse_args(
        [
            "--ncpu",
            "1",
            "--scheduler",
            "eager",
            "--no-quiet",
            "--no-logger",
            "--logger-server-addr",
            "h",
            "--logger-server-port",
            "5002",
            "--trace",
            "",
            "--perf-model-dir",
            "",
        ]
    )
    assert (opts.ncpu, opts.scheduler, ui["quiet"], opts.logger) == (1, "eager", False, False)
    assert (opts.logger_server_addr, opts.logger_server_port, opts.trace, opts.perf_model_dir) == (
        "h",
        5002,
        "",
        "",
    )
    monkeypatch.setenv("NNTILE_LOGGER", "0")
    monkeypatch.setenv("STARPU_NCPU", "many")
    with pytest.raises(SystemExit):
        cli.parse_args([])


def test_pyproject_declares_the_scripts() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    assert 'gpt2rs-train = "gpt2rs.cli.train:main"' in text
    assert 'gpt2rs-logger = "gpt2rs.cli.logger:main"' in text


NOTEBOOK = [
    "--restrict=cuda",
    "--pretrained=local",
    f"--config-path={GPT2_DEFAULT_CONFIG}",
    "--optimizer=adam",
    "--lr=1e-4",
    "--dtype=bf16",
    "--nepochs=1",
    "--batch-size=1024",
    "--minibatch-size=8",
    "--dataset-file=tinystories/train.bin",
    "--logger",
    "--logger-server-addr=127.0.0.1",
]


def test_notebook_command_line(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ws)
    rc, out, err = run(capsys, NOTEBOOK)
    assert rc == 1 and err.startswith("gpt2rs-train: error: CUDA is not available here")
    assert err.count("\n") == 1 and not (ws / ".model").exists()
    # The same line on the CPU, shrunk: the data under .data/tinystories, a logger server listening.
    (ws / ".data" / "tinystories").mkdir(parents=True)
    tokens(17 * 8).tofile(ws / ".data" / "tinystories" / "train.bin")
    small = [a.replace("cuda", "cpu").replace("1024", "4").replace("=8", "=2") for a in NOTEBOOK]
    small[2] = f"--config-path={ws / 'cfg.json'}"
    with LoggerServer("127.0.0.1", 0, ws / "logs") as server:
        rc, out, err = run(
            capsys,
            [
                *small,
                "--seq-len=16",
                f"--logger-server-port={server.port}",
                "--run-name=nb",
                "--quiet",
            ],
        )
        assert rc == 0, err
        deadline = time.time() + 10
        while server.messages == 0 and time.time() < deadline:
            time.sleep(0.05)
    assert out == "" and err == ""
    assert (ws / ".model" / "latest").read_text().strip() == "checkpoint-2"
    got = read_scalars(ws / "logs" / "nb")
    assert [s for s, _ in got["train/loss"]] == [1, 2]


def test_lr_schedule() -> None:
    assert lr_at(0, 1.0, 4, 20, "cosine") == 0.25 and lr_at(3, 1.0, 4, 20, "cosine") == 1.0
    assert lr_at(4, 1.0, 4, 20, "cosine") == 1.0
    assert lr_at(19, 1.0, 4, 20, "cosine") == pytest.approx(MIN_LR_RATIO)
    assert lr_at(100, 1.0, 0, 20, "cosine") == pytest.approx(MIN_LR_RATIO)
    assert lr_at(12, 1.0, 4, 20, "cosine") == pytest.approx(
        MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + np.cos(np.pi * 8 / 15))
    )
    assert lr_at(0, 2.0, 0, 20, "constant") == 2.0 == lr_at(19, 2.0, 0, 20, "constant")


# -- training, resume, checkpoints ----------------------------------------------


def test_a_nonfinite_loss_stops_before_the_update(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SGD with a huge lr diverges; the run stops at the first NaN/inf loss with one line, keeping the checkpoint
    saved before it; --allow-nonfinite-loss runs to the end."""
    blow = ("--optimizer", "sgd", "--lr", "1e12", "--max-steps", "6", "--save-every", "1")
    rc, _out, err = run(capsys, args(ws, *blow))
    assert rc != 0
    (line,) = [x for x in err.splitlines() if x.strip()]
    assert "the loss is" in line and "step " in line, line
    step = int(line.split("step ")[1].split(":")[0])
    saved = ck.list_checkpoints(ws / "ck")
    assert saved and saved[-1][0] == step - 1
    rc, _, _ = run(
        capsys, args(ws, *blow, "--allow-nonfinite-loss", "--save-checkpoint-path", str(ws / "ck2"))
    )
    assert rc == 0


def test_one_checkpoint_root_one_trainer(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A live owner's lock refuses a second run with one line naming it; a dead owner's lock is taken over; a
    finished run leaves no lock."""
    root = ws / "ck"
    root.mkdir()
    lock = root / ck.LOCK
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": owner.pid, "host": socket.gethostname()}))
        rc, _, err = run(capsys, args(ws, "--max-steps", "1"))
        assert rc == 1 and f"pid {owner.pid}" in err and len(err.strip().splitlines()) == 1, err
        assert not ck.list_checkpoints(root)
    finally:
        owner.kill()
        owner.wait()
    # The owner is gone: its lock is stale.
    rc, _, err = run(capsys, args(ws, "--max-steps", "1"))
    assert rc == 0, err
    assert ck.list_checkpoints(root) and not lock.exists()


@pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)"
)
def test_a_full_metrics_file_warns_once_and_training_goes_on(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run(
        capsys, args(ws, "--max-steps", "3", "--metrics-file", "/dev/full", "--no-quiet")
    )
    assert rc == 0, err
    warnings = [x for x in (out + err).splitlines() if "/dev/full" in x]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], out + err
    assert [s for s, _ in ck.list_checkpoints(ws / "ck")] == [3]


def test_an_absent_logger_server_is_said_at_the_start(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nobody listens there
    extra = (
        "--max-steps",
        "2",
        "--logger",
        "--logger-server-addr",
        "127.0.0.1",
        "--logger-server-port",
        str(port),
    )
    rc, out, err = run(capsys, args(ws, *extra, "--no-quiet"))
    assert rc == 0, err
    lines = err.splitlines()
    said = [i for i, x in enumerate(lines) if "is unreachable" in x]
    assert len(said) == 1 and f"127.0.0.1:{port}" in lines[said[0]], err
    assert "is unreachable" not in out
    assert said[0] < next(i for i, x in enumerate(lines) if x.startswith("step 1/")), err


def test_resume_is_exact(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """6 steps straight == 3 steps + resume + 3 steps, to the last bit (dropout on)."""
    full, a, b = ws / "full.jsonl", ws / "a.jsonl", ws / "b.jsonl"
    assert (
        run(
            capsys,
            args(
                ws,
                "--max-steps",
                "6",
                "--metrics-file",
                str(full),
                "--save-checkpoint-path",
                str(ws / "c0"),
            ),
        )[0]
        == 0
    )
    assert run(capsys, args(ws, "--max-steps", "3", "--metrics-file", str(a)))[0] == 0
    assert (
        run(
            capsys,
            args(
                ws,
                "--max-steps",
                "6",
                "--metrics-file",
                str(b),
                "--checkpoint-path",
                str(ws / "ck"),
            ),
        )[0]
        == 0
    )
    assert len(losses(full)) == 6
    assert losses(a) + losses(b) == losses(full)
    assert losses(full)[-1] < losses(full)[0]


def test_resume_across_epochs_with_cosine_and_clipping(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """3 steps per epoch, 3 epochs; resume from a mid-epoch and an epoch-boundary checkpoint."""
    common = (
        "--nepochs",
        "3",
        "--lr-schedule",
        "cosine",
        "--warmup-steps",
        "2",
        "--grad-clip",
        "0.5",
        "--optimizer",
        "adamw",
        "--val-file",
        "val.bin",
        "--eval-every",
        "4",
    )
    full = ws / "full.jsonl"
    rc, _, err = run(
        capsys,
        args(
            ws, *common, "--save-every", "2", "--keep-checkpoints", "0", "--metrics-file", str(full)
        ),
    )
    assert rc == 0, err
    ref = losses(full)
    assert len(ref) == 9
    recs = [json.loads(line) for line in full.read_text().splitlines()]
    assert [r["epoch"] for r in recs] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert all(r["grad_norm"] is not None for r in recs) and "eval_loss" in recs[3]
    for step in (4, 6):  # mid-epoch, epoch boundary
        st = ck.load(ws / "ck" / f"checkpoint-{step}").trainer_state
        assert (st["epoch"], st["position"]) == (*divmod(step, 3)[:1], step % 3 * 4)
        m = ws / f"r{step}.jsonl"
        rc, _, err = run(
            capsys,
            args(
                ws,
                *common,
                "--checkpoint-path",
                str(ws / "ck" / f"checkpoint-{step}"),
                "--save-checkpoint-path",
                str(ws / f"ck{step}"),
                "--metrics-file",
                str(m),
            ),
        )
        assert rc == 0, err
        assert losses(m) == ref[step:], step
    # A checkpoint already at the end: nothing to do, nothing rewritten.
    rc, _, err = run(capsys, args(ws, *common, "--checkpoint-path", str(ws / "ck")))
    assert rc == 0 and ck.resolve(ws / "ck").name == "checkpoint-9"


def test_checkpoint_is_an_hf_model(
    ws: Path, capsys: pytest.CaptureFixture[str], rt: gpt2rs.Runtime
) -> None:
    rc, _, err = run(capsys, args(ws, "--max-steps", "2"))
    assert rc == 0, err
    path = ck.resolve(ws / "ck")
    c = ck.load(path)
    m = gpt2rs.GPT2LMHead.from_pretrained(path, runtime=rt)
    assert m.config.same_network(gpt2rs.GPT2Config.from_dict(CFG))
    for k, v in m.state_dict().items():
        assert np.array_equal(v, c.model_state[k]), k
    ids = np.arange(16).reshape(1, 16)
    logits = m.forward(ids)
    # A new run can start from the checkpoint's weights as from any HF directory.
    rc, _, err = run(
        capsys,
        args(
            ws,
            "--pretrained",
            "remote",
            "--remote-model-name",
            str(path),
            "--max-steps",
            "1",
            "--save-checkpoint-path",
            str(ws / "ft"),
        ),
    )
    assert rc == 0, err
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    assert np.linalg.norm(logits - ref) / np.linalg.norm(ref) < 1e-5


def test_progress_summary_and_tensorboard(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        a
        for a in args(
            ws, "--max-steps", "3", "--logger", "--log-dir", str(ws / "tb"), "--log-every", "1"
        )
        if a != "--quiet"
    ]
    rc, out, err = run(capsys, argv)
    assert rc == 0, err
    assert "training: GPT-2 with" in err
    assert re.search(r"^step 3/3 \| epoch 1/1 \| loss \d", err, re.M)
    for word in (
        "tokens/s",
        "model TFLOP/s",
        "MFU",
        "n/a",
        "peak memory host",
        "worker time forward-backward",
        "worker time optimizer",
        "host time",
        "checkpoint-3",
    ):
        assert word in out, word
    got = read_scalars(ws / "tb")
    for tag in (
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "perf/tokens_per_s",
        "perf/tflops",
        "workers/cpu0/busy_share",
        "memory/host/peak_bytes",
    ):
        assert [s for s, _ in got[tag]] == [1, 2, 3], tag


def test_time_breakdown_is_measured_per_task(ws: Path) -> None:
    """Each loop phase is charged the worker time of the tasks it submitted:
    the optimizer's update is cheap next to forward+backward, however long
    its wait for the last backward tasks."""
    from gpt2rs.train import train

    opts, _ = cli.parse_args(args(ws, "--max-steps", "3", "--grad-clip", "1"))
    res = train(opts)
    wt, host = res.summary["worker_time"], res.summary["host_time"]
    assert set(wt) == {"forward_backward", "optimizer", "eval", "checkpoint"}
    assert wt["forward_backward"] > 3 * wt["optimizer"] > 0, wt
    assert wt["eval"] == 0 and wt["checkpoint"] >= 0
    assert set(host) == {"data", "checkpoint"} and host["checkpoint"] > 0
    busy = sum(w["busy_s"] for w in res.summary["workers"])
    assert sum(wt.values()) <= busy * (1 + 1e-9)


def test_silent(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STARPU_SILENT", "1")
    rc, out, err = run(capsys, [a for a in args(ws, "--max-steps", "1") if a != "--quiet"])
    assert (rc, out, err) == (0, "", "")


def _popen(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2rs.cli.train", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def _wait_for(pred, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not pred():
        assert time.time() < end, "timed out"
        time.sleep(0.02)


def test_sigint_saves_and_resumes_exactly(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m1 = ws / "m1.jsonl"
    p = _popen(args(ws, "--max-steps", "100000", "--nepochs", "1", "--metrics-file", str(m1)))
    _wait_for(lambda: m1.exists() and len(m1.read_text().splitlines()) >= 4)
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    n = len(losses(m1))
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert re.fullmatch(
        rf"gpt2rs-train: interrupted at step {n}; saved checkpoint \S+checkpoint-{n} .*\n", err
    ), err
    assert ck.load(ws / "ck").step == n
    m2, ref = ws / "m2.jsonl", ws / "ref.jsonl"
    end = str(n + 2)
    assert (
        run(
            capsys,
            args(
                ws,
                "--max-steps",
                end,
                "--checkpoint-path",
                str(ws / "ck"),
                "--metrics-file",
                str(m2),
            ),
        )[0]
        == 0
    )
    assert (
        run(
            capsys,
            args(
                ws,
                "--max-steps",
                end,
                "--save-checkpoint-path",
                str(ws / "r"),
                "--metrics-file",
                str(ref),
            ),
        )[0]
        == 0
    )
    assert losses(m1) + losses(m2) == losses(ref)


def test_kill_9_during_saves_leaves_a_good_checkpoint(tmp_path: Path, rt: gpt2rs.Runtime) -> None:
    (tmp_path / "data").mkdir()
    tokens(33 * 64, vocab=512).tofile(tmp_path / "data" / "train.bin")
    (tmp_path / "cfg.json").write_text(
        json.dumps(dict(vocab_size=512, n_positions=32, n_embd=64, n_layer=2, n_head=2))
    )
    root = tmp_path / "ck"
    base = args(
        tmp_path,
        "--seq-len",
        "32",
        "--max-steps",
        "100000",
        "--save-every",
        "1",
        "--keep-checkpoints",
        "2",
    )
    steps = []
    for i, delay in enumerate((0.0, 0.07, 0.19, 0.33)):
        resume = ["--checkpoint-path", str(root)] if i else []
        p = _popen([*base, *resume])
        before = ck.load(root).step if i else 0
        _wait_for(
            lambda b=before: (
                (root / "latest").exists() and ck.resolve(root).name != f"checkpoint-{b}"
            )
        )
        time.sleep(delay)
        p.kill()
        p.communicate(timeout=30)
        c = ck.load(root)  # checksums verified
        assert c.step > before
        steps.append(c.step)
        m = gpt2rs.GPT2LMHead.from_pretrained(c.path, runtime=rt)
        assert np.isfinite(m.forward(np.arange(8).reshape(1, 8))).all()
    assert steps == sorted(steps)


# -- bad input ---------------------------------------------------------------------


def _bad_cases(ws: Path) -> dict[str, tuple[list[str], str]]:
    d = ws / "data"
    (d / "empty.bin").write_bytes(b"")
    (d / "odd.bin").write_bytes(b"\x01\x00\x02")
    np.array([1, 2, 100, 3] * 20, "<u2").tofile(d / "oov.bin")
    np.arange(20, dtype="<u2").tofile(d / "short.bin")
    (ws / "big.json").write_text(json.dumps({**CFG, "n_embd": 64}))
    (ws / "afile").write_text("x")
    return {
        "missing": (["--dataset-file", "nope.bin"], "nope.bin"),
        "empty": (["--dataset-file", "empty.bin"], "empty"),
        "odd": (["--dataset-file", "odd.bin"], "odd.bin"),
        "oov": (["--dataset-file", "oov.bin"], "100"),
        "short": (["--dataset-file", "short.bin"], "batch-size"),
        "no_dataset": (["--dataset-file", ""], "--dataset-file"),
        "seq_len": (["--seq-len", "64"], "n_positions"),
        "minibatch": (["--batch-size", "5"], "not a multiple of --minibatch-size"),
        "cuda": (["--restrict", "cuda"], "CUDA is not available"),
        "ncuda": (["--restrict", "None", "--ncuda", "1"], "CUDA is not available"),
        "cpu_ncuda": (["--ncuda", "1"], "drop one of them"),
        "cuda0": (["--restrict", "cuda", "--ncuda", "0"], "nothing to run on"),
        "unwritable": (["--save-checkpoint-path", str(ws / "afile" / "ck")], "cannot write to"),
        "hub": (
            f"--pretrained remote --remote-model-name openai-community/gpt2 --model-path {ws / 'c'}".split(),
            "hub",
        ),
        "config": (["--config-path", str(ws / "nope.json")], "nope.json"),
        "checkpoint_missing": (["--checkpoint-path", str(ws / "nock")], "checkpoint not found"),
        "eval_without_val": (["--eval-every", "2"], "--eval-every 2 needs --val-file"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "empty",
        "odd",
        "oov",
        "short",
        "no_dataset",
        "seq_len",
        "minibatch",
        "cuda",
        "ncuda",
        "cpu_ncuda",
        "cuda0",
        "unwritable",
        "hub",
        "config",
        "checkpoint_missing",
        "eval_without_val",
    ],
)
def test_bad_input_is_one_error_line(
    ws: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    extra, needle = _bad_cases(ws)[case]
    rc, _out, err = run(capsys, args(ws, *extra))
    assert rc == 1
    assert err.startswith("gpt2rs-train: error: ") and err.count("\n") == 1, err
    assert needle in err and "Traceback" not in err
    assert not (ws / "ck").exists()  # nothing written


@pytest.mark.parametrize(
    "extra", [["--dtype", "fp8"], ["--optimizer", "lion"], ["--scheduler", "fifo"], ["--lr", "x"]]
)
def test_bad_option_is_one_error_line(
    ws: Path, capsys: pytest.CaptureFixture[str], extra: list[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(args(ws, *extra))
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("gpt2rs-train: error: ") and err.count("\n") == 1, (
        err
    )


def test_bad_checkpoints(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, args(ws, "--max-steps", "2"))[0] == 0
    cases = {
        "seq_len": (["--seq-len", "8"], "does not match this run"),
        "optimizer": (["--optimizer", "sgd"], "--optimizer adam there, sgd here"),
        "config": (["--config-path", str(ws / "big.json")], "different model"),
    }
    (ws / "big.json").write_text(json.dumps({**CFG, "n_embd": 64}))
    for extra, needle in cases.values():
        rc, _, err = run(
            capsys,
            args(
                ws,
                "--checkpoint-path",
                str(ws / "ck"),
                "--save-checkpoint-path",
                str(ws / "o"),
                *extra,
            ),
        )
        assert rc == 1 and needle in err and err.count("\n") == 1, err
    f = ck.resolve(ws / "ck") / "optimizer.safetensors"
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x40
    f.write_bytes(bytes(b))
    rc, _, err = run(
        capsys,
        args(ws, "--checkpoint-path", str(ws / "ck"), "--save-checkpoint-path", str(ws / "o")),
    )
    assert rc == 1 and err.startswith("gpt2rs-train: error: checkpoint ") and "SHA-256" in err, err
    assert not (ws / "o").exists()


def test_errors_from_the_console_script_have_no_traceback(ws: Path) -> None:
    p = _popen(args(ws, "--dataset-file", "nope.bin"))
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1 and out == ""
    assert (
        err.startswith("gpt2rs-train: error: ") and err.count("\n") == 1 and "Traceback" not in err
    )


def test_options_dataclass_mirrors_the_parser() -> None:
    dests = {a.dest for a in cli.build_parser()._actions} - {"help", "quiet", "log_every"}
    # The trainer alone decides determinism (resume is bit-exact).
    model = set(gpt2rs.ModelOptions.__dataclass_fields__) - {"deterministic"}
    fields = set(TrainOptions.__dataclass_fields__) - {"model"}
    assert dests == fields | model
