"""gpt2rs-train: train or fine-tune GPT-2 on a uint16 token file (NNTile's
gpt2_lmhead_training.py, same options and defaults).

    gpt2rs-train --restrict=cpu --pretrained=local --optimizer=adam --lr=1e-4 \\
        --nepochs=1 --batch-size=16 --minibatch-size=8 --dataset-file=tinystories/train.bin
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any

from ..metrics import DEFAULT_SERVER_PORT
from ..train import LR_SCHEDULES, OPTIMIZERS, SCHEDULERS, TrainOptions
from ..train.report import QuietReporter
from ._common import (
    Formatter,
    Parser,
    add_model_flags,
    apply_environment,
    model_options,
    restrict,
)
from .progress import PlainReporter, RichReporter

PROG = "gpt2rs-train"
#: Seconds a failed rank waits before MPI_Abort ends the job.
ABORT_GRACE_S = 1.0

EPILOG = """\
Every --dashed-option is also accepted as --underscore_option (NNTile's spelling).

Environment (flags win over it):
  STARPU_NCPU            --ncpu            STARPU_NCUDA          --ncuda
  STARPU_SCHED           --scheduler       STARPU_PERF_MODEL_DIR --perf-model-dir
  STARPU_SILENT=1        --quiet           STARPU_FXT_TRACE=1    --trace $STARPU_FXT_PREFIX/gpt2rs.trace.json
  NNTILE_LOGGER=1        --logger          NNTILE_LOGGER_SERVER_ADDR / _PORT  --logger-server-addr / -port
  CUDA_VISIBLE_DEVICES   the GPUs the CUDA workers may use (as for any CUDA program)

Checkpoints: <save-checkpoint-path>/checkpoint-<step>/ (config.json + model.safetensors,
an HF model directory; optimizer.safetensors + optimizer.json; trainer_state.json) and
<save-checkpoint-path>/latest naming the newest. Resume with --checkpoint-path <dir>.
Ctrl-C (or SIGTERM) saves a checkpoint and exits with status 130.

Data-parallel: mpiexec -n N gpt2rs-train <the same flags> (or srun); pip install
'gpt2rs[mpi]' brings mpi4py and MPICH's mpiexec. --batch-size stays the global batch,
--minibatch-size is per rank; rank 0 alone reports, logs and writes checkpoints, which
resume on any number of ranks. A failure on one rank ends the whole job.
"""


def build_parser() -> argparse.ArgumentParser:
    d = TrainOptions()
    ap = Parser(
        prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=Formatter
    )

    g = ap.add_argument_group("model (NNTile's options)")
    g.add_argument(
        "--remote-model-name",
        default=d.remote_model_name,
        help="HF hub id or local HF directory to start from with --pretrained remote",
    )
    g.add_argument(
        "--pretrained",
        choices=("local", "remote"),
        default=d.pretrained,
        help="remote: start from --remote-model-name's weights; local: random init from "
        "--config-path (or resume from --checkpoint-path)",
    )
    g.add_argument(
        "--checkpoint-path",
        default=d.checkpoint_path,
        help="resume from this checkpoint directory (or the root holding `latest`)",
    )
    g.add_argument(
        "--config-path",
        default=d.config_path,
        help="HF config.json for --pretrained local ('': the shipped GPT-2 small config)",
    )
    g.add_argument(
        "--save-checkpoint-path", default=d.save_checkpoint_path, help="directory for checkpoints"
    )
    g.add_argument(
        "--model-path", default=d.model_path, help="cache directory for models from the HF hub"
    )
    add_model_flags(g, ap, training=True)
    g.add_argument(
        "--restrict",
        type=restrict,
        default=d.restrict,
        metavar="{cpu,cuda,None}",
        help="worker kinds to use (None: all available)",
    )
    g = ap.add_argument_group("data")
    g.add_argument(
        "--dataset-path", default=d.dataset_path, help="directory of the prepared datasets"
    )
    g.add_argument(
        "--dataset-file",
        default=d.dataset_file,
        help="training .bin (uint16 token ids), relative to --dataset-path",
    )
    g.add_argument(
        "--val-file",
        default=d.val_file,
        help="validation .bin, relative to --dataset-path ('': none)",
    )
    g.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per sequence")
    g.add_argument(
        "--batch-size", type=int, default=d.batch_size, help="sequences per optimizer step"
    )
    g.add_argument(
        "--minibatch-size",
        type=int,
        default=d.minibatch_size,
        help="sequences per forward/backward (-1: --batch-size); must divide --batch-size",
    )
    g.add_argument(
        "--seed", type=int, default=d.seed, help="seed of the init, the data order and dropout"
    )

    g = ap.add_argument_group("optimization")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer, help="optimizer")
    g.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    g.add_argument("--nepochs", type=int, default=d.nepochs, help="passes over the training data")
    g.add_argument(
        "--max-steps",
        type=int,
        default=d.max_steps,
        help="optimizer steps in all, overriding --nepochs (-1: --nepochs epochs)",
    )
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULES,
        default=d.lr_schedule,
        help="after warmup: constant, or cosine decay to 0.1 * --lr at the last step",
    )
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear warmup steps")
    g.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help="weight decay (None: 0.01 for adamw, 0 for adam and sgd)",
    )
    g.add_argument("--beta1", type=float, default=d.beta1, help="Adam beta1")
    g.add_argument("--beta2", type=float, default=d.beta2, help="Adam beta2")
    g.add_argument("--eps", type=float, default=d.eps, help="Adam epsilon")
    g.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum")
    g.add_argument(
        "--grad-clip",
        type=float,
        default=d.grad_clip,
        help="clip the global gradient norm to this (0: off)",
    )
    g.add_argument(
        "--zero-stage",
        type=int,
        default=d.zero_stage,
        help="data-parallel runs: 1 shards the optimizer state and master weights over the ranks (ZeRO-1; same results as 0)",
    )
    g.add_argument(
        "--dist-init",
        default=d.dist_init,
        metavar="{auto,mpi,file:DIR}",
        help="how ranks find each other: auto = MPI when started by mpiexec/srun, else one process; "
        "mpi = MPI or an error; file:DIR = through files in a directory every rank shares, "
        "for launchers without MPI (rank and size from RANK and WORLD_SIZE, as torchrun sets them)",
    )
    g.add_argument(
        "--allow-nonfinite-loss",
        action="store_true",
        help="go on past a NaN or infinite loss (default: stop before that step's update, keeping the checkpoints)",
    )

    g = ap.add_argument_group("checkpoints and evaluation")
    g.add_argument(
        "--save-every",
        type=int,
        default=d.save_every,
        help="save a checkpoint every N steps (0: at the end only)",
    )
    g.add_argument(
        "--keep-checkpoints",
        type=int,
        default=d.keep_checkpoints,
        help="newest checkpoints to keep (0: all)",
    )
    g.add_argument(
        "--eval-every",
        type=int,
        default=d.eval_every,
        help="evaluate on --val-file every N steps (0: at the end only)",
    )
    g.add_argument(
        "--eval-batches", type=int, default=d.eval_batches, help="minibatches per evaluation"
    )

    g = ap.add_argument_group("runtime (StarPU's environment maps onto these)")
    g.add_argument(
        "--scheduler",
        default=None,
        help=f"scheduling policy: eager or dmda, or a StarPU name ({', '.join(sorted(SCHEDULERS))}); "
        "default: $STARPU_SCHED or eager",
    )
    g.add_argument(
        "--ncpu", type=int, default=None, help="CPU workers; default: $STARPU_NCPU or every core"
    )
    g.add_argument(
        "--ncuda",
        type=int,
        default=None,
        help="GPUs (one CUDA worker each); default: $STARPU_NCUDA or every visible GPU",
    )
    g.add_argument(
        "--perf-model-dir",
        default=None,
        help="performance models directory; default: $STARPU_PERF_MODEL_DIR or none",
    )
    g.add_argument(
        "--trace",
        default=None,
        help="write a Chrome trace of every task here (open in Perfetto); default: none",
    )

    g = ap.add_argument_group("logging")
    g.add_argument(
        "--logger",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write TensorBoard logs (to --logger-server-addr if given, else --log-dir); default: $NNTILE_LOGGER",
    )
    g.add_argument(
        "--logger-server-addr",
        default=None,
        help="gpt2rs-logger server host; default: $NNTILE_LOGGER_SERVER_ADDR or none",
    )
    g.add_argument(
        "--logger-server-port",
        type=int,
        default=None,
        help=f"gpt2rs-logger server port; default: $NNTILE_LOGGER_SERVER_PORT or {DEFAULT_SERVER_PORT}",
    )
    g.add_argument(
        "--log-dir",
        default=d.log_dir,
        help="local TensorBoard directory ('': runs/<run name> when there is no server)",
    )
    g.add_argument(
        "--run-name", default=d.run_name, help="run name in TensorBoard ('': <time>-<host>-<pid>)"
    )
    g.add_argument(
        "--metrics-file",
        default=d.metrics_file,
        help="append one JSON line per step here ('': none)",
    )
    g.add_argument(
        "--log-every",
        type=int,
        default=0,
        help="print a progress line every N steps when stderr is not a terminal (0: every 10 s)",
    )
    g.add_argument(
        "--quiet",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print nothing but errors; default: $STARPU_SILENT",
    )
    return ap


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainOptions, dict[str, Any]]:
    """TrainOptions from the command line and the environment (flags win),
    plus the UI settings (quiet, log_every, notes about ignored variables)."""
    ap = build_parser()
    ns = ap.parse_args(argv)
    notes: list[str] = []
    d = TrainOptions()
    try:
        apply_environment(
            ns,
            {
                "scheduler": d.scheduler,
                "perf_model_dir": "",
                "trace": "",
                "quiet": False,
                "logger": False,
                "logger_server_addr": "",
                "logger_server_port": DEFAULT_SERVER_PORT,
            },
        )
    except ValueError as e:
        ap.error(str(e))
    if ns.scheduler not in SCHEDULERS:
        ap.error(
            f"unknown scheduler {ns.scheduler!r} (expected one of {', '.join(sorted(SCHEDULERS))})"
        )
    ui = {"quiet": ns.quiet, "log_every": ns.log_every, "notes": notes}
    try:
        model = model_options(ns)
    except ValueError as e:
        ap.error(str(e))
    fields = {f.name for f in dataclasses.fields(TrainOptions)} - {"model"}
    opts = TrainOptions(model=model, **{k: v for k, v in vars(ns).items() if k in fields})
    return opts, ui


# -- main ----------------------------------------------------------------------


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in msg:
        msg = f"{msg}: {e.filename}"
    return " ".join(line.strip() for line in msg.splitlines() if line.strip())


def _rank(trainer: Any) -> str:
    """'rank N: ' in a data-parallel job, to name where an error happened."""
    world = getattr(trainer, "world", None)
    return f"rank {world.rank}: " if world is not None and world.size > 1 else ""


def _end_job(trainer: Any, code: int) -> None:
    """After a failure on this rank, ends every rank of a data-parallel job
    (they would wait for it in their next collective)."""
    world = getattr(trainer, "world", None)
    if world is not None and world.size > 1:
        sys.stderr.flush()
        # Bad options fail on every rank at once: a moment lets each say so
        # before the first abort takes the job down.
        time.sleep(ABORT_GRACE_S)
        world.abort(code)


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console

    from ..checkpoint import CheckpointError
    from ..hub import WeightsError
    from ..train import DataError, Trainer, TrainError

    opts, ui = parse_args(argv)
    err = Console(stderr=True)
    logging.basicConfig(
        level=logging.ERROR if ui["quiet"] else logging.WARNING,
        format=f"{PROG}: %(levelname)s: %(message)s",
    )
    if ui["quiet"]:
        reporter: Any = QuietReporter()
    elif err.is_terminal:
        reporter = RichReporter(err)
    else:
        reporter = PlainReporter(err, ui["log_every"])
    if not ui["quiet"]:
        for n in ui["notes"]:
            print(f"{PROG}: note: {n}", file=sys.stderr, flush=True)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        if err.is_terminal and not ui["quiet"]:
            reporter.message(
                "stopping: finishing this minibatch, then saving a checkpoint (Ctrl-C again: quit without saving)"
            )

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    trainer = Trainer(opts, reporter, stop)
    try:
        trainer.setup()
        res = trainer.run()
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted; not saved (the last checkpoint is kept)\n")
        _end_job(trainer, 130)
        return 130
    except (
        TrainError,
        DataError,
        WeightsError,
        CheckpointError,
        ValueError,
        OSError,
        RuntimeError,
        MemoryError,
    ) as e:
        sys.stderr.write(f"{PROG}: error: {_rank(trainer)}{_one_line(e)}\n")
        _end_job(trainer, 1)
        return 1
    except BaseException:
        _end_job(trainer, 1)  # a bug: its traceback, and no rank left waiting
        raise
    finally:
        if hasattr(reporter, "progress"):
            reporter.progress.stop()
        trainer.shutdown()
        for s, h in old.items():
            signal.signal(s, h)
    if res.interrupted:
        if res.checkpoint:
            where = f"saved checkpoint {res.checkpoint} (resume with --checkpoint-path {opts.save_checkpoint_path})"
        else:
            where = "nothing to save"
        sys.stderr.write(f"{PROG}: interrupted at step {trainer.step}; {where}\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
