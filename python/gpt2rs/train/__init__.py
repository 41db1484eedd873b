"""The training behind gpt2rs-train (NNTile's gpt2_lmhead_training).

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

Modules: `options` (TrainOptions and their checks), `plan` (everything
checked and made before the first step), `loop` (the Trainer), `report`
(reporter, sinks, summary).
"""

from ..data import DataError, TokenFile
from .loop import Trainer, train
from .options import (
    LR_SCHEDULES,
    MIN_LR_RATIO,
    OPTIMIZERS,
    SCHEDULERS,
    TrainError,
    TrainOptions,
    dropout_seed,
    lr_at,
)
from .plan import Plan
from .report import HostTime, Reporter, TrainResult, model_flops_per_token

__all__ = [
    "LR_SCHEDULES",
    "MIN_LR_RATIO",
    "OPTIMIZERS",
    "SCHEDULERS",
    "DataError",
    "HostTime",
    "Plan",
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
