"""TrainOptions: every option of gpt2rs-train, its checks, and the pure
functions of the options (learning rate schedule, dropout seeds)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ..metrics import DEFAULT_SERVER_PORT
from ..options import ModelOptions

OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "cosine")
#: Cosine decay ends at this fraction of --lr.
MIN_LR_RATIO = 0.1
#: StarPU scheduling policies, mapped onto ours (a central queue, or earliest finish).
SCHEDULERS = {
    **{n: "eager" for n in ("eager", "prio", "random", "ws", "lws", "peager", "heteroprio")},
    **{n: "dmda" for n in ("dmda", "dm", "dmdar", "dmdas", "dmdasd", "heft", "pheft")},
}


DIST_INITS = ("auto", "mpi")


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
    #: ZeRO stage of data-parallel runs: 1 shards the optimizer state and master weights.
    zero_stage: int = 0
    #: How the ranks find each other: "auto" (MPI when started by mpiexec or
    #: srun, else one process), "mpi" (MPI or an error) or "file:DIR" (files
    #: in a shared directory; rank and size from RANK and WORLD_SIZE).
    dist_init: str = "auto"

    @property
    def minibatch(self) -> int:
        """The minibatch of a one-process run (-1: the whole batch)."""
        return self.minibatch_for(1)

    def minibatch_for(self, world_size: int) -> int:
        """Rows per forward/backward on each of `world_size` ranks (-1: the
        rank's whole share of the global batch)."""
        if self.minibatch_size == -1:
            return max(1, self.batch_size // world_size)
        return self.minibatch_size

    def check_split(self, world_size: int) -> None:
        """Raises TrainError unless the global batch splits into whole
        minibatches on each of `world_size` ranks."""
        mb = self.minibatch_for(world_size)
        if world_size > 1 and self.batch_size % (world_size * mb) != 0:
            raise TrainError(
                f"--batch-size {self.batch_size} does not split over {world_size} ranks x "
                f"--minibatch-size {mb} (the global batch must be a multiple of {world_size * mb})"
            )

    def validate(self) -> None:
        """Raises TrainError naming the first option out of range (the GPUs
        and the files are checked where they are used)."""
        o = self
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
        if o.zero_stage not in (0, 1):
            raise TrainError(
                f"--zero-stage must be 0 or 1 (ZeRO stages 2 and 3 are not supported), got {o.zero_stage}"
            )
        if o.dist_init not in DIST_INITS and not (
            o.dist_init.startswith("file:") and o.dist_init[5:]
        ):
            raise TrainError(
                f"--dist-init must be {', '.join(DIST_INITS)} or file:DIR, got {o.dist_init!r}"
            )
        if not o.dataset_file:
            raise TrainError(
                "no training data: give --dataset-file (a .bin of uint16 token ids, e.g. from gpt2rs-prepare)"
            )


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


def rank_minibatches(
    pos: int, batch_size: int, rank: int, world_size: int, minibatch: int
) -> list[tuple[int, int]]:
    """(global minibatch number, first position in the epoch order) of each
    minibatch rank `rank` trains in step `pos` of an epoch: rank r takes rows
    [r B/N, (r+1) B/N) of the global batch, so the ranks' slices are disjoint
    and together the one-rank batch, and a minibatch keeps its number (the
    key of its dropout masks) whatever the number of ranks."""
    nmb = batch_size // (world_size * minibatch)
    return [(g, pos * batch_size + g * minibatch) for g in range(rank * nmb, (rank + 1) * nmb)]


def dropout_seed(seed: int, step: int, micro: int) -> int:
    """A dropout seed that depends on (seed, step, minibatch) only."""
    return int(
        np.random.SeedSequence([seed & (2**63 - 1), step, micro, 0x67707432]).generate_state(
            1, np.uint64
        )[0]
    )
