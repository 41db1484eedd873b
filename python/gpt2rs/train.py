"""The training loop behind gpt2rs-train (NNTile's gpt2_lmhead_training).

Data: the .bin file is cut into `gpt2rs.data.TokenFile`'s windows, NNTile's
non-overlapping windows of seq_len + 1 tokens (window i = tokens[i*(seq_len+1)
: (i+1)*(seq_len+1)]; input ids are its first seq_len tokens, targets its last
seq_len), so a file that gpt2rs-prepare trimmed holds whole batches of them. Each epoch visits the
windows in an order drawn from one numpy Generator seeded by `seed` (one
permutation per epoch), batch_size windows per optimizer step and
minibatch_size windows per forward/backward, with gradients scaled by
1/(number of minibatches). An epoch has floor(windows / batch_size) steps;
the remainder of the order is skipped (drop-last), so every step has the
same shape and the position in the data is a function of the step.

Optimizer step s (0-based) uses the learning rate of `lr_at`: linear warmup
lr * (s + 1) / warmup_steps for s < warmup_steps, then either constant lr or
a cosine decay from lr to 0.1 * lr at the last step.

The model runs with deterministic=True and dropout masks drawn from seeds
that depend only on (seed, step, minibatch), so a run resumed from a
checkpoint computes the same losses, bit for bit on the CPU, as a run that
never stopped.

The loop reports to a `Reporter` (the CLI draws progress bars with it) and
to metric sinks (`gpt2rs.metrics`); it uses `logging`, never prints.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from . import checkpoint as ckpt_io
from . import hub
from ._gpt2rs import cpu_bf16_gemm
from .config import GPT2Config
from .configs import GPT2_DEFAULT_CONFIG
from .data import DataError, TokenFile
from .metrics import (
    DEFAULT_SERVER_PORT,
    Guarded,
    JsonlSink,
    MultiSink,
    RemoteSink,
    TensorBoardSink,
    runtime_scalars,
)
from .model import GPT2LMHead
from .options import ModelOptions

log = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
#: Cosine decay ends at this fraction of --lr.
MIN_LR_RATIO = 0.1
#: StarPU scheduling policies, mapped onto ours (a central queue, or earliest finish).
SCHEDULERS = {
    **{n: "eager" for n in ("eager", "prio", "random", "ws", "lws", "peager", "heteroprio")},
    **{n: "dmda" for n in ("dmda", "dm", "dmdar", "dmdas", "dmdasd", "heft", "pheft")},
}


class TrainError(ValueError):
    """Options, data, model and checkpoint that do not fit together."""


@dataclass
class TrainOptions:
    """Every option of gpt2rs-train; the CLI's flags mirror these fields and
    those of `model` (precision, tiling, recompute, dropout)."""

    model: ModelOptions = field(default_factory=ModelOptions)

    remote_model_name: str = "openai-community/gpt2"
    pretrained: str = "local"
    checkpoint_path: str = ""
    config_path: str = ""
    save_checkpoint_path: str = ".model"
    optimizer: str = "adam"
    model_path: str = ".model"
    lr: float = 1e-4
    nepochs: int = 1
    seq_len: int = 1024
    batch_size: int = 1
    minibatch_size: int = -1
    restrict: Literal["cpu", "cuda"] | None = None
    dataset_path: str = ".data"
    dataset_file: str = ""
    logger: bool = False
    logger_server_addr: str = ""
    logger_server_port: int = DEFAULT_SERVER_PORT
    log_dir: str = ""
    run_name: str = ""
    seed: int = 0
    max_steps: int = -1
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    weight_decay: float | None = None
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0
    grad_clip: float = 0.0
    #: Go on past a NaN or infinite loss (by default the run stops before that step's update).
    allow_nonfinite_loss: bool = False
    val_file: str = ""
    eval_every: int = 0
    eval_batches: int = 50
    save_every: int = 0
    keep_checkpoints: int = 2
    scheduler: str = "eager"
    ncpu: int | None = None
    #: GPUs to use; None: every visible GPU (none with --restrict cpu).
    ncuda: int | None = None
    perf_model_dir: str = ""
    trace: str = ""
    metrics_file: str = ""

    @property
    def minibatch(self) -> int:
        return self.batch_size if self.minibatch_size == -1 else self.minibatch_size


def lr_at(step: int, lr: float, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    span = max(1, total_steps - warmup_steps - 1)
    progress = min(1.0, (step - warmup_steps) / span)
    lo = MIN_LR_RATIO * lr
    return lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * progress))


def model_flops_per_token(config: GPT2Config, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token, as nanoGPT/PaLM count them: 6 N for the
    matrix products of forward and backward (N = parameters without the
    position embedding; the tied LM head is counted through wte) plus
    12 n_layer n_embd seq_len for attention scores and their use."""
    n = n_params - config.n_positions * config.n_embd
    return 6.0 * n + 12.0 * config.n_layer * config.n_embd * seq_len


def dropout_seed(seed: int, step: int, micro: int) -> int:
    """A dropout seed that depends on (seed, step, minibatch) only."""
    return int(
        np.random.SeedSequence([seed & (2**63 - 1), step, micro, 0x67707432]).generate_state(
            1, np.uint64
        )[0]
    )


class Reporter(Protocol):
    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, record: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class LoggingReporter:
    """A Reporter that writes to `logging` (the library's default)."""

    def start(self, info: dict[str, Any]) -> None:
        log.info("training: %s", info)

    def step(self, record: dict[str, Any]) -> None:
        log.info("step %(step)d loss %(loss).6f lr %(lr).3g", record)

    def message(self, text: str) -> None:
        log.info("%s", text)

    def finish(self, summary: dict[str, Any]) -> None:
        log.info("done: %s", summary)


@dataclass
class Phases:
    """Seconds spent in each part of the loop."""

    data: float = 0.0
    forward_backward: float = 0.0
    optimizer: float = 0.0
    checkpoint: float = 0.0
    eval: float = 0.0


@dataclass
class TrainResult:
    steps: int = 0
    start_step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    checkpoint: str | None = None
    losses: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def _dataset_file(dataset_path: str, name: str) -> Path:
    """NNTile joins --dataset-path and --dataset-file; an absolute file or one
    that exists as given is taken as is."""
    p = Path(name).expanduser()
    if p.is_absolute() or (not Path(dataset_path, name).exists() and p.exists()):
        return p
    return Path(dataset_path).expanduser() / name


def default_run_name() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{socket.gethostname().split('.')[0]}-{os.getpid()}"


class Trainer:
    """Sets up data, model, optimizer and logging from TrainOptions, then trains.

    Every check that can fail on bad input runs in `setup()` before anything
    is written, and raises TrainError, DataError, WeightsError, CheckpointError
    or OSError with a one-line message.
    """

    def __init__(
        self,
        opts: TrainOptions,
        reporter: Reporter | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.opts = opts
        self.reporter: Reporter = reporter or LoggingReporter()
        self.stop = stop or threading.Event()
        self.phases = Phases()
        self._set_up = False
        self._gpu_notice: str | None = None
        self._lock: Path | None = None

    # -- setup ---------------------------------------------------------------

    def _gpus(self) -> int:
        """GPUs to train on: --ncuda, else every visible one; none with --restrict cpu."""
        from gpt2rs import cuda

        try:
            n, notice = cuda.choose_gpus(self.opts.restrict, self.opts.ncuda)
        except (ValueError, cuda.CudaError) as e:
            msg = str(e).replace("restrict ", "--restrict ").replace("ncuda ", "--ncuda ")
            raise TrainError(
                msg + ("; use --restrict cpu" if isinstance(e, cuda.CudaError) else "")
            ) from None
        # Said once training starts, so that a bad option stays one error line.
        self._gpu_notice = notice
        return n

    def _check_options(self) -> None:
        o = self.opts
        if o.restrict not in (None, "cpu", "cuda"):
            raise TrainError(f"--restrict must be cpu, cuda or None, got {o.restrict!r}")
        # Before any data or weights are touched: a GPU run without a GPU fails first.
        self.ncuda = self._gpus()
        if o.optimizer not in OPTIMIZERS:
            raise TrainError(
                f"unknown optimizer {o.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})"
            )
        if o.pretrained not in ("local", "remote"):
            raise TrainError(f"--pretrained must be local or remote, got {o.pretrained!r}")
        if o.lr_schedule not in LR_SCHEDULES:
            raise TrainError(
                f"unknown --lr-schedule {o.lr_schedule!r} (expected constant or cosine)"
            )
        if o.scheduler not in SCHEDULERS:
            raise TrainError(
                f"unknown scheduler {o.scheduler!r} (expected one of {', '.join(sorted(SCHEDULERS))})"
            )
        for name in ("seq_len", "batch_size", "nepochs"):
            if getattr(o, name) < 1:
                raise TrainError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")
        if o.minibatch < 1:
            raise TrainError(
                f"--minibatch-size must be >= 1 or -1 (= batch size), got {o.minibatch_size}"
            )
        if o.batch_size % o.minibatch != 0:
            raise TrainError(
                f"--batch-size {o.batch_size} is not a multiple of --minibatch-size {o.minibatch} "
                "(each step accumulates whole minibatches)"
            )
        if not (o.lr > 0 and math.isfinite(o.lr)):
            raise TrainError(f"--lr must be a positive number, got {o.lr}")
        if o.eval_every and not o.val_file:
            raise TrainError(
                f"--eval-every {o.eval_every} needs --val-file (the data to evaluate on)"
            )
        if o.warmup_steps < 0 or o.save_every < 0 or o.eval_every < 0 or o.keep_checkpoints < 0:
            raise TrainError(
                "--warmup-steps, --save-every, --eval-every and --keep-checkpoints must be >= 0"
            )
        if o.max_steps == 0 or o.max_steps < -1:
            raise TrainError(f"--max-steps must be >= 1 or -1 (no limit), got {o.max_steps}")
        if o.grad_clip < 0:
            raise TrainError(f"--grad-clip must be >= 0 (0: off), got {o.grad_clip}")
        if o.ncpu is not None and o.ncpu < 1:
            raise TrainError(f"--ncpu must be >= 1, got {o.ncpu}")
        if o.eval_batches < 1:
            raise TrainError(f"--eval-batches must be >= 1, got {o.eval_batches}")
        if not o.dataset_file:
            raise TrainError(
                "no training data: give --dataset-file (a .bin of uint16 token ids, e.g. from gpt2rs-prepare)"
            )

    def _load_config(self) -> GPT2Config:
        o = self.opts
        self.ckpt_dir: Path | None = None
        self.remote_dir: Path | None = None
        if o.checkpoint_path:
            self.ckpt_dir = ckpt_io.resolve(o.checkpoint_path)
            try:
                config = GPT2Config.from_json_file(self.ckpt_dir / "config.json")
            except (FileNotFoundError, ValueError) as e:
                raise ckpt_io.CheckpointError(f"checkpoint {self.ckpt_dir}: {e}") from None
            if o.config_path:
                given = GPT2Config.coerce(o.config_path)
                if not given.same_network(config):
                    raise ckpt_io.CheckpointError(
                        f"checkpoint {self.ckpt_dir} holds a different model than --config-path {o.config_path}"
                    )
            return config
        if o.pretrained == "remote":
            self.remote_dir = hub.resolve(o.remote_model_name, cache_dir=o.model_path or None)
            return GPT2Config.from_json_file(self.remote_dir / "config.json")
        return GPT2Config.coerce(o.config_path or GPT2_DEFAULT_CONFIG)

    def setup(self) -> None:
        o = self.opts
        self._check_options()
        config = self._load_config()
        # A resumed run keeps its checkpoint's dropout, a remote model its own config.
        model_opts = replace(o.model, deterministic=True)
        if self.ckpt_dir is not None or self.remote_dir is not None:
            if o.model.dropout is not None and self.remote_dir is not None:
                log.warning(
                    "--dropout applies to --pretrained local runs; the remote model's config is kept"
                )
            model_opts = replace(model_opts, dropout=None)
        if o.seq_len > config.n_positions:
            raise TrainError(
                f"--seq-len {o.seq_len} exceeds the model's n_positions = {config.n_positions}"
            )
        self.config = config

        # Data.
        self.data_file = _dataset_file(o.dataset_path, o.dataset_file)
        self.data = TokenFile(self.data_file, config.vocab_size)
        self.nwindows = int(self.data.windows(o.seq_len))
        self.steps_per_epoch = self.nwindows // o.batch_size
        if self.steps_per_epoch < 1:
            raise TrainError(
                f"{self.data_file} has {len(self.data)} tokens = {self.nwindows} windows of --seq-len {o.seq_len} + 1, "
                f"fewer than one --batch-size {o.batch_size}"
            )
        self.total_steps = o.max_steps if o.max_steps > 0 else o.nepochs * self.steps_per_epoch
        self.val = None
        if o.val_file:
            self.val_path = _dataset_file(o.dataset_path, o.val_file)
            self.val = TokenFile(self.val_path, config.vocab_size)
            if self.val.windows(o.seq_len) < 1:
                raise TrainError(
                    f"--val-file {self.val_path} is shorter than one window of --seq-len {o.seq_len} + 1"
                )

        # Checkpoint to resume from: read and check it fully before writing anything.
        self.resume: ckpt_io.Checkpoint | None = None
        if self.ckpt_dir is not None:
            self.resume = ckpt_io.load(self.ckpt_dir)
            self._check_resume(self.resume)

        # Every output location must be writable before the first step, and
        # the checkpoint root this run's alone.
        ckpt_io.check_writable(o.save_checkpoint_path)
        self._lock = ckpt_io.acquire_lock(o.save_checkpoint_path)
        self.run_name = o.run_name or default_run_name()
        self.log_dir: Path | None = None
        if o.logger and (o.log_dir or not o.logger_server_addr):
            self.log_dir = Path(o.log_dir or Path("runs") / self.run_name)
            ckpt_io.check_writable(self.log_dir)
        for f in (o.metrics_file, o.trace):
            if f:
                ckpt_io.check_writable(Path(f).expanduser().resolve().parent)

        # Runtime, model, optimizer.
        import gpt2rs

        self.runtime = gpt2rs.Runtime(
            ncuda=self.ncuda,
            restrict=o.restrict if self.ncuda else None,
            ncpu=o.ncpu,
            scheduler=SCHEDULERS[o.scheduler],
            perf_model_dir=o.perf_model_dir or None,
            trace=bool(o.trace),
        )
        if self.resume is not None:
            self.model = GPT2LMHead(config, model_opts, runtime=self.runtime)
            try:
                self.model.load_state_dict(self.resume.model_state)
            except hub.WeightsError as e:
                raise ckpt_io.CheckpointError(f"checkpoint {self.resume.path}: {e}") from None
        elif self.remote_dir is not None:
            self.model = GPT2LMHead.from_pretrained(
                self.remote_dir, model_opts, runtime=self.runtime
            )
        else:
            self.model = GPT2LMHead.from_config(
                config, model_opts, seed=o.seed, runtime=self.runtime
            )
        # The model's config carries the dropout it trains with (and checkpoints save).
        self.config = self.model.config
        self.optimizer = self._make_optimizer()
        self.rng = np.random.default_rng(o.seed)
        self.step = 0
        if self.resume is not None:
            try:
                self.optimizer.load_state_dict(self.resume.optimizer_state)
            except (ValueError, KeyError, TypeError) as e:
                raise ckpt_io.CheckpointError(
                    f"checkpoint {self.resume.path}: optimizer state: {e}"
                ) from None
            self.rng.bit_generator.state = self.resume.trainer_state["rng_state"]
            self.step = self.resume.step
        self.start_step = self.step
        self.n_params = self.model.num_parameters()
        self.flops_per_token = model_flops_per_token(config, self.n_params, o.seq_len)
        self._set_up = True

    def _check_resume(self, ck: ckpt_io.Checkpoint) -> None:
        o, st = self.opts, ck.trainer_state
        problems = []
        recorded = st.get("run", {})
        for key, now in (
            ("seq_len", o.seq_len),
            ("batch_size", o.batch_size),
            ("seed", o.seed),
            ("windows", self.nwindows),
        ):
            if key in recorded and recorded[key] != now:
                what = "dataset windows" if key == "windows" else "--" + key.replace("_", "-")
                problems.append(f"{what} {recorded[key]} there, {now} here")
        kind = ck.optimizer_state.get("kind")
        if kind != o.optimizer:
            problems.append(f"--optimizer {kind} there, {o.optimizer} here")
        if problems:
            raise ckpt_io.CheckpointError(
                f"checkpoint {ck.path} does not match this run ({'; '.join(problems)}); "
                f"to start a new run from its weights use --pretrained remote --remote-model-name {ck.path}"
            )
        spe = recorded.get("steps_per_epoch", self.steps_per_epoch)
        step = ck.step
        if st["epoch"] != step // spe or st["position"] != (step % spe) * o.batch_size:
            raise ckpt_io.CheckpointError(
                f"checkpoint {ck.path} is corrupt: its step, epoch and position disagree"
            )

    def _make_optimizer(self) -> Any:
        import gpt2rs

        o = self.opts
        if o.optimizer == "sgd":
            return gpt2rs.SGD(
                self.model, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay or 0.0
            )
        cls = gpt2rs.AdamW if o.optimizer == "adamw" else gpt2rs.Adam
        wd = (
            o.weight_decay
            if o.weight_decay is not None
            else (0.01 if o.optimizer == "adamw" else 0.0)
        )
        return cls(self.model, lr=o.lr, betas=(o.beta1, o.beta2), eps=o.eps, weight_decay=wd)

    # -- data ------------------------------------------------------------------

    def _epoch_order(self) -> None:
        """Draws the current epoch's permutation; keeps the generator state
        from before the draw (what a checkpoint stores)."""
        self.rng_state = self.rng.bit_generator.state
        self.order = self.rng.permutation(self.nwindows)
        self.order_epoch = self.step // self.steps_per_epoch

    def _batch(self, indices: np.ndarray, tf: Any = None) -> tuple[np.ndarray, np.ndarray]:
        ids, tg = (self.data if tf is None else tf).batch(indices.tolist(), self.opts.seq_len)
        return ids, tg

    # -- checkpoints -------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        o = self.opts
        epoch, pos = divmod(self.step, self.steps_per_epoch)
        # The generator state from before drawing `epoch`'s order: at an epoch
        # boundary that order is not drawn yet, and the state is the current one.
        rng_state = self.rng_state if epoch == self.order_epoch else self.rng.bit_generator.state
        return {
            "epoch": epoch,
            "position": pos * o.batch_size,
            "rng_state": rng_state,
            "lr_schedule": {
                "kind": o.lr_schedule,
                "lr": o.lr,
                "warmup_steps": o.warmup_steps,
                "total_steps": self.total_steps,
                "min_lr_ratio": MIN_LR_RATIO,
                "next_lr": lr_at(self.step, o.lr, o.warmup_steps, self.total_steps, o.lr_schedule),
            },
            "run": {
                "seq_len": o.seq_len,
                "batch_size": o.batch_size,
                "minibatch_size": o.minibatch,
                "seed": o.seed,
                "windows": self.nwindows,
                "steps_per_epoch": self.steps_per_epoch,
                "dataset": str(self.data_file),
                "tokens_seen": self.step * o.batch_size * o.seq_len,
            },
            "args": asdict(o),
            "gpt2rs_version": _version(),
        }

    def save(self) -> Path:
        t = time.perf_counter()
        path = ckpt_io.save(
            self.opts.save_checkpoint_path,
            self.step,
            self.model,
            self.optimizer,
            self.trainer_state(),
            keep=self.opts.keep_checkpoints,
        )
        self.phases.checkpoint += time.perf_counter() - t
        self.saved_step = self.step
        return path

    # -- evaluation --------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean loss over the first eval_batches minibatches of the validation
        file, in file order, dropout off, no backward."""
        assert self.val is not None
        t = time.perf_counter()
        o = self.opts
        n = min(self.val.windows(o.seq_len), o.eval_batches * o.minibatch)
        total, count = 0.0, 0
        for start in range(0, n, o.minibatch):
            idx = np.arange(start, min(start + o.minibatch, n))
            ids, tg = self._batch(idx, self.val)
            total += self.model.loss(ids, targets=tg) * len(idx)
            count += len(idx)
        self.phases.eval += time.perf_counter() - t
        return total / count

    # -- the loop ----------------------------------------------------------------

    def _open_sinks(self) -> None:
        o = self.opts
        sinks: list[Any] = []
        self.remote: RemoteSink | None = None
        warn = self.reporter.message
        if o.logger:
            if self.log_dir is not None:
                sinks.append(Guarded(TensorBoardSink(self.log_dir), self.log_dir, warn))
            if o.logger_server_addr:
                self.remote = RemoteSink(o.logger_server_addr, o.logger_server_port, self.run_name)
                if not self.remote.reachable_at_start():
                    warn(
                        f"warning: logger server {o.logger_server_addr}:{o.logger_server_port} is unreachable; "
                        "metrics are queued and sent if it comes up (the summary counts what was dropped)"
                    )
                sinks.append(self.remote)
        self.jsonl = (
            Guarded(JsonlSink(o.metrics_file), o.metrics_file, warn) if o.metrics_file else None
        )
        self.sink = MultiSink(sinks)
        if sinks:
            self.sink.text("args", json.dumps(asdict(o), indent=1, sort_keys=True), self.step)

    def run(self) -> TrainResult:
        if not self._set_up:
            self.setup()
        o = self.opts
        nmb = o.batch_size // o.minibatch
        tokens_per_step = o.batch_size * o.seq_len
        res = TrainResult(start_step=self.start_step)
        self.saved_step = self.start_step if self.resume is not None else -1
        self._open_sinks()
        epoch = self.step // self.steps_per_epoch
        # A fresh run starts at epoch 0; a resumed one has the generator state
        # from the start of its epoch: either way the next draw is this epoch's order.
        self._epoch_order()
        if self._gpu_notice:
            self.reporter.message(f"note: {self._gpu_notice}")
        self.reporter.start(
            {
                "start_step": self.start_step,
                "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch,
                "nepochs": math.ceil(self.total_steps / self.steps_per_epoch),
                "tokens_per_step": tokens_per_step,
                "n_params": self.n_params,
                "windows": self.nwindows,
                "dataset": str(self.data_file),
                "config": self.config,
                "dtype": self.model.dtype,
                "workers": self.runtime.nworkers,
                "scheduler": self.runtime.scheduler,
                "run_name": self.run_name,
                "log_dir": str(self.log_dir) if self.log_dir else None,
            }
        )
        t_start = time.perf_counter()
        prev_stats, t_prev = self.runtime.stats(), t_start
        eval_loss = None
        try:
            while self.step < self.total_steps and not self.stop.is_set():
                new_epoch, pos = divmod(self.step, self.steps_per_epoch)
                if new_epoch != epoch:
                    epoch = new_epoch
                    self._epoch_order()
                t0 = time.perf_counter()
                self.model.zero_grad()
                losses = []
                stopped = False
                for m in range(nmb):
                    td = time.perf_counter()
                    first = pos * o.batch_size + m * o.minibatch
                    ids, tg = self._batch(self.order[first : first + o.minibatch])
                    tf = time.perf_counter()
                    self.phases.data += tf - td
                    seed = dropout_seed(o.seed, self.step, m) if self._dropout_on() else None
                    losses.append(
                        self.model.forward_backward(
                            ids, targets=tg, grad_scale=1.0 / nmb, dropout_seed=seed
                        )
                    )
                    self.phases.forward_backward += time.perf_counter() - tf
                    if self.stop.is_set() and m + 1 < nmb:
                        stopped = True  # parameters untouched: the state is that of `self.step`
                        break
                if stopped:
                    break
                to = time.perf_counter()
                loss = math.fsum(losses) / nmb
                if not math.isfinite(loss) and not o.allow_nonfinite_loss:
                    # Before the update: the saved checkpoints hold the last good state.
                    raise TrainError(
                        f"step {self.step + 1}: the loss is {loss}; stopped before updating the parameters "
                        "(the last checkpoint is kept; --allow-nonfinite-loss goes on)"
                    )
                lr = lr_at(self.step, o.lr, o.warmup_steps, self.total_steps, o.lr_schedule)
                grad_norm = None
                if o.grad_clip > 0:
                    grad_norm = self.model.clip_grad_norm(o.grad_clip)
                elif o.logger:
                    grad_norm = self.model.clip_grad_norm(math.inf)  # the norm only; scales by 1
                self.optimizer.lr = lr
                self.optimizer.step()
                self.runtime.wait_all()
                t1 = time.perf_counter()
                self.phases.optimizer += t1 - to
                self.step += 1
                res.losses.append(loss)
                res.tokens += tokens_per_step
                rec = {
                    "step": self.step,
                    "epoch": epoch + 1,
                    "loss": loss,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": self.step * tokens_per_step,
                    "step_s": t1 - t0,
                    "tokens_per_s": tokens_per_step / (t1 - t0),
                    "tflops": self.flops_per_token * tokens_per_step / (t1 - t0) / 1e12,
                }
                if self.val is not None and o.eval_every and self.step % o.eval_every == 0:
                    eval_loss = rec["eval_loss"] = self.evaluate()
                self._log_step(rec, prev_stats, t1 - t_prev)
                prev_stats, t_prev = self.runtime.stats(), time.perf_counter()
                if o.save_every and self.step % o.save_every == 0 and self.step < self.total_steps:
                    path = self.save()
                    self.reporter.message(f"saved checkpoint {path}")
        except BaseException:
            self._close_sinks()  # a failed step or a second Ctrl-C: keep what was logged
            raise
        elapsed = time.perf_counter() - t_start
        self.sink.flush()
        res.interrupted = self.stop.is_set() and self.step < self.total_steps
        if (
            self.val is not None
            and not res.interrupted
            and (eval_loss is None or self.step % max(o.eval_every, 1))
        ):
            eval_loss = self.evaluate()
            self.sink.scalar("eval/loss", eval_loss, self.step)
        if self.saved_step != self.step and not (res.interrupted and self.step == self.start_step):
            res.checkpoint = str(self.save())
        elif self.saved_step == self.step:
            found = ckpt_io.list_checkpoints(o.save_checkpoint_path)
            res.checkpoint = str(found[-1][1]) if found else None
        res.steps = self.step - self.start_step
        res.seconds = elapsed
        res.summary = self._summary(res, eval_loss)
        self._close(res)
        return res

    def _dropout_on(self) -> bool:
        c = self.config
        return max(c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) > 0

    def _log_step(self, rec: dict[str, Any], prev_stats: dict[str, Any], interval: float) -> None:
        s = self.step
        if self.jsonl is not None:
            self.jsonl.record(rec)
        self.sink.scalar("train/loss", rec["loss"], s)
        self.sink.scalar("train/lr", rec["lr"], s)
        if rec["grad_norm"] is not None:
            self.sink.scalar("train/grad_norm", rec["grad_norm"], s)
        self.sink.scalar("perf/tokens_per_s", rec["tokens_per_s"], s)
        self.sink.scalar("perf/tflops", rec["tflops"], s)
        if "eval_loss" in rec:
            self.sink.scalar("eval/loss", rec["eval_loss"], s)
        if self.sink.sinks:
            for tag, v in runtime_scalars(prev_stats, self.runtime.stats(), interval).items():
                self.sink.scalar(tag, v, s)
        self.reporter.step(rec)

    def _summary(self, res: TrainResult, eval_loss: float | None) -> dict[str, Any]:
        st = self.runtime.stats()
        busy = self.phases.data + self.phases.forward_backward + self.phases.optimizer
        tps = res.tokens / busy if busy > 0 else 0.0
        return {
            "steps": res.steps,
            "step": self.step,
            "total_steps": self.total_steps,
            "tokens": res.tokens,
            "seconds": res.seconds,
            "tokens_per_s": tps,
            "tflops": self.flops_per_token * tps / 1e12,
            "mfu": None,  # the CPU's peak is not known; the CUDA backend will report it
            "device": "cpu",
            "bf16_gemm": cpu_bf16_gemm() if "bf16" in self.model.dtype else None,
            "final_loss": res.losses[-1] if res.losses else None,
            "eval_loss": eval_loss,
            "phases": asdict(self.phases),
            "nodes": [
                {"name": n["name"], "peak_bytes": n["peak_bytes"], "limit": n["limit"]}
                for n in st["nodes"]
            ],
            "workers": [
                {"name": w["name"], "busy_s": w["busy_s"], "tasks": w["tasks"]}
                for w in st["workers"]
            ],
            "checkpoint": res.checkpoint,
            "interrupted": res.interrupted,
            "dropped_metrics": self.remote.dropped if self.remote is not None else 0,
        }

    def _close_sinks(self) -> None:
        self.sink.close()
        if self.jsonl is not None:
            self.jsonl.close()

    def _close(self, res: TrainResult) -> None:
        if self.opts.trace:
            self.runtime.save_trace(self.opts.trace)
        self._close_sinks()
        if self.remote is not None:
            res.summary["dropped_metrics"] = self.remote.dropped
        self.reporter.finish(res.summary)

    def shutdown(self) -> None:
        rt = getattr(self, "runtime", None)
        if rt is not None and not rt.is_shut_down:
            rt.shutdown()
        if self._lock is not None:
            ckpt_io.release_lock(self._lock)
            self._lock = None


def _version() -> str:
    try:
        from . import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def train(
    opts: TrainOptions, reporter: Reporter | None = None, stop: threading.Event | None = None
) -> TrainResult:
    """Sets up and runs one training run; shuts its runtime down at the end."""
    t = Trainer(opts, reporter, stop)
    try:
        t.setup()
        return t.run()
    finally:
        t.shutdown()


__all__ = [
    "LR_SCHEDULES",
    "MIN_LR_RATIO",
    "OPTIMIZERS",
    "SCHEDULERS",
    "DataError",
    "Phases",
    "Reporter",
    "TokenFile",
    "TrainError",
    "TrainOptions",
    "TrainResult",
    "Trainer",
    "dropout_seed",
    "lr_at",
    "model_flops_per_token",
    "train",
]
