"""The training loop: steps over the epoch orders, evaluation, checkpoints."""

from __future__ import annotations

import math
import threading
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import checkpoint as ckpt_io
from .. import dist
from .._gpt2rs import Runtime
from ..data import TokenFile
from .options import (
    MIN_LR_RATIO,
    TrainError,
    TrainOptions,
    dropout_seed,
    lr_at,
    rank_minibatches,
)
from .plan import Plan
from .report import (
    HostTime,
    LoggingReporter,
    QuietReporter,
    Reporter,
    Sinks,
    TrainResult,
    summary,
)


def _version() -> str:
    try:
        from .. import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


class Trainer:
    """Sets up data, model, optimizer and logging from TrainOptions (a
    `Plan`), then trains.

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
        self.host = HostTime()
        self.plan = Plan(opts)
        self.step = 0
        self._stop_agreed = False
        self._set_up = False

    @property
    def world(self) -> dist.World:
        """The ranks of this run (known once setup has joined them)."""
        return self.plan.world

    def setup(self) -> None:
        self.plan.build()
        self.step = self.plan.start_step
        if not self.world.is_root:
            # Rank 0 alone reports; the others say only what fails.
            self.reporter = QuietReporter()
        self._set_up = True

    @property
    def runtime(self) -> Runtime:
        assert self.plan.runtime is not None, "setup() first"
        return self.plan.runtime

    # -- data ------------------------------------------------------------------

    def _epoch_order(self) -> None:
        """Draws the current epoch's permutation; keeps the generator state
        from before the draw (what a checkpoint stores)."""
        p = self.plan
        self.rng_state = p.rng.bit_generator.state
        self.order = p.rng.permutation(p.nwindows)
        self.order_epoch = self.step // p.steps_per_epoch

    def _batch(
        self, indices: np.ndarray, tf: TokenFile | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return (self.plan.data if tf is None else tf).batch(indices.tolist(), self.opts.seq_len)

    # -- checkpoints -------------------------------------------------------------

    def trainer_state(self) -> dict[str, Any]:
        o, p = self.opts, self.plan
        epoch, pos = divmod(self.step, p.steps_per_epoch)
        # The generator state from before drawing `epoch`'s order: at an epoch
        # boundary that order is not drawn yet, and the state is the current one.
        rng_state = self.rng_state if epoch == self.order_epoch else p.rng.bit_generator.state
        return {
            "epoch": epoch,
            "position": pos * o.batch_size,
            "rng_state": rng_state,
            "lr_schedule": {
                "kind": o.lr_schedule,
                "lr": o.lr,
                "warmup_steps": o.warmup_steps,
                "total_steps": p.total_steps,
                "min_lr_ratio": MIN_LR_RATIO,
                "next_lr": lr_at(self.step, o.lr, o.warmup_steps, p.total_steps, o.lr_schedule),
            },
            "run": {
                "seq_len": o.seq_len,
                "batch_size": o.batch_size,
                "minibatch_size": o.minibatch,
                "world_size": self.world.size,
                "seed": o.seed,
                "windows": p.nwindows,
                "steps_per_epoch": p.steps_per_epoch,
                "dataset": str(p.data_file),
                "tokens_seen": self.step * o.batch_size * o.seq_len,
            },
            "args": asdict(o),
            "gpt2rs_version": _version(),
        }

    def save(self) -> Path:
        self.runtime.set_phase("checkpoint")
        t = time.perf_counter()
        if self.world.is_root:
            path = ckpt_io.save(
                self.opts.save_checkpoint_path,
                self.step,
                self.plan.model,
                self.plan.optimizer,
                self.trainer_state(),
                keep=self.opts.keep_checkpoints,
            )
        else:
            # Under ZeRO-1 the state_dict calls gather the shards (collectives):
            # every rank makes them, in the order ckpt_io.save does.
            self.plan.model.state_dict()
            self.plan.optimizer.state_dict()
            path = Path(self.opts.save_checkpoint_path) / f"{ckpt_io.PREFIX}{self.step}"
        self.world.barrier()  # the checkpoint is complete when any rank goes on
        self.host.checkpoint += time.perf_counter() - t
        self.saved_step = self.step
        return path

    # -- evaluation --------------------------------------------------------------

    def evaluate(self) -> float:
        """Mean loss over the first eval_batches minibatches of the validation
        file, in file order, dropout off, no backward."""
        val = self.plan.val
        assert val is not None
        self.runtime.set_phase("eval")
        o, mb = self.opts, self.plan.minibatch
        n = min(val.windows(o.seq_len), o.eval_batches * o.minibatch)
        total, count = 0.0, 0
        for start in range(0, n, mb):
            idx = np.arange(start, min(start + mb, n))
            ids, tg = self._batch(idx, val)
            total += self.plan.model.loss(ids, targets=tg) * len(idx)
            count += len(idx)
        return total / count

    # -- the loop ----------------------------------------------------------------

    def _train_step(self, pos: int, epoch: int, tokens_per_step: int) -> dict[str, Any] | None:
        """One optimizer step (its minibatches, clipping, update); its record,
        or None when a stop request came between minibatches (parameters
        untouched: the state is that of `self.step`)."""
        o, p, rt, w = self.opts, self.plan, self.runtime, self.world
        mb = p.minibatch
        # N ranks compute the one-rank step, up to the order of the sums.
        mine = rank_minibatches(pos, o.batch_size, w.rank, w.size, mb)
        nmb = len(mine)
        t0 = time.perf_counter()
        rt.set_phase("forward_backward")
        p.model.zero_grad()
        losses = []
        dropout_on = max(p.config.resid_pdrop, p.config.embd_pdrop, p.config.attn_pdrop) > 0
        for m, (g, first) in enumerate(mine):
            td = time.perf_counter()
            ids, tg = self._batch(self.order[first : first + mb])
            self.host.data += time.perf_counter() - td
            seed = dropout_seed(o.seed, self.step, g) if dropout_on else None
            losses.append(
                p.model.forward_backward(ids, targets=tg, grad_scale=1.0 / nmb, dropout_seed=seed)
            )
            # Ranks agree on stopping at step ends only (`_agree_to_stop`).
            if w.size == 1 and self.stop.is_set() and m + 1 < nmb:
                return None
        loss = math.fsum(losses) / nmb
        if not math.isfinite(loss) and not o.allow_nonfinite_loss:
            # Before the update: the saved checkpoints hold the last good state.
            # (This rank's own loss: a rank that stops here ends the job.)
            raise TrainError(
                f"step {self.step + 1}: the loss is {loss}; stopped before updating the parameters "
                "(the last checkpoint is kept; --allow-nonfinite-loss goes on)"
            )
        # Submitted while backward still runs: each bucket's sum starts as soon
        # as its gradients are final.
        p.model.reduce_grads()
        rt.set_phase("optimizer")
        lr = lr_at(self.step, o.lr, o.warmup_steps, p.total_steps, o.lr_schedule)
        grad_norm = None
        if o.grad_clip > 0:
            grad_norm = p.model.clip_grad_norm(o.grad_clip)
        elif o.logger:
            grad_norm = p.model.clip_grad_norm(math.inf)  # the norm only; scales by 1
        p.optimizer.lr = lr
        p.optimizer.step()
        rt.wait_all()
        if w.size > 1:
            # The global batch's loss; no collective task is in flight now.
            loss = w.mean(loss)
        dt = time.perf_counter() - t0
        self.step += 1
        return {
            "step": self.step,
            "epoch": epoch + 1,
            "loss": loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "tokens": self.step * tokens_per_step,
            "step_s": dt,
            "tokens_per_s": tokens_per_step / dt,
            "tflops": p.flops_per_token * tokens_per_step / dt / 1e12,
            "world_size": self.world.size,
        }

    def _agree_to_stop(self) -> None:
        """A stop request (SIGTERM, Ctrl-C) reaches the ranks at different
        moments; they stop together at the end of the step in which any saw
        it. Until then a rank's own request does not count (`_stopping`)."""
        if self.world.size > 1:
            seen = self.world.gather_floats([1.0 if self.stop.is_set() else 0.0])
            self._stop_agreed = any(v for (v,) in seen)

    def _stopping(self) -> bool:
        """Whether to stop: this process's request, or in a data-parallel run
        the ranks' agreement (the same answer on every rank)."""
        return self._stop_agreed if self.world.size > 1 else self.stop.is_set()

    def _start_info(self, tokens_per_step: int) -> dict[str, Any]:
        p = self.plan
        return {
            "start_step": p.start_step,
            "total_steps": p.total_steps,
            "steps_per_epoch": p.steps_per_epoch,
            "nepochs": math.ceil(p.total_steps / p.steps_per_epoch),
            "tokens_per_step": tokens_per_step,
            "n_params": p.n_params,
            "windows": p.nwindows,
            "dataset": str(p.data_file),
            "config": p.config,
            "dtype": p.model.dtype,
            "workers": self.runtime.nworkers,
            "scheduler": self.runtime.scheduler,
            "run_name": p.run_name,
            "log_dir": str(p.log_dir) if p.log_dir else None,
            "world_size": self.world.size,
            "zero_stage": self.opts.zero_stage if self.world.size > 1 else 0,
        }

    def run(self) -> TrainResult:
        if not self._set_up:
            self.setup()
        o, p, rt = self.opts, self.plan, self.runtime
        tokens_per_step = o.batch_size * o.seq_len
        res = TrainResult(start_step=p.start_step)
        self.saved_step = p.start_step if p.resume is not None else -1
        # Rank 0 alone writes metrics (TensorBoard, the logger server, the metrics file).
        quiet = replace(o, logger=False, metrics_file="")
        sinks = Sinks(
            o if self.world.is_root else quiet, p.log_dir, p.run_name, self.reporter, self.step
        )
        epoch = self.step // p.steps_per_epoch
        # A fresh run starts at epoch 0; a resumed one has the generator state
        # from the start of its epoch: either way the next draw is this epoch's order.
        self._epoch_order()
        if p.gpu_notice:
            self.reporter.message(f"note: {p.gpu_notice}")
        self.reporter.start(self._start_info(tokens_per_step))
        t_start = time.perf_counter()
        stats_start = rt.stats()
        prev_stats, t_prev = stats_start, t_start
        eval_loss = None
        try:
            while self.step < p.total_steps and not self._stopping():
                new_epoch, pos = divmod(self.step, p.steps_per_epoch)
                if new_epoch != epoch:
                    epoch = new_epoch
                    self._epoch_order()
                rec = self._train_step(pos, epoch, tokens_per_step)
                if rec is None:
                    break
                self._agree_to_stop()
                res.losses.append(rec["loss"])
                res.tokens += tokens_per_step
                res.step_seconds += rec["step_s"]
                t1 = time.perf_counter()
                if (
                    p.val is not None
                    and o.eval_every
                    and self.step % o.eval_every == 0
                    and self.world.is_root
                ):
                    eval_loss = rec["eval_loss"] = self.evaluate()
                sinks.step(rec, rt, prev_stats, t1 - t_prev)
                prev_stats, t_prev = rt.stats(), time.perf_counter()
                if o.save_every and self.step % o.save_every == 0 and self.step < p.total_steps:
                    path = self.save()
                    self.reporter.message(f"saved checkpoint {path}")
        except BaseException:
            sinks.close()  # a failed step or a second Ctrl-C: keep what was logged
            raise
        elapsed = time.perf_counter() - t_start
        sinks.sink.flush()
        res.interrupted = self._stopping() and self.step < p.total_steps
        if (
            p.val is not None
            and self.world.is_root
            and not res.interrupted
            and (eval_loss is None or self.step % max(o.eval_every, 1))
        ):
            eval_loss = self.evaluate()
            sinks.sink.scalar("eval/loss", eval_loss, self.step)
        if self.saved_step != self.step and not (res.interrupted and self.step == p.start_step):
            res.checkpoint = str(self.save())
        elif self.saved_step == self.step:
            found = ckpt_io.list_checkpoints(o.save_checkpoint_path)
            res.checkpoint = str(found[-1][1]) if found else None
        res.steps = self.step - p.start_step
        res.seconds = elapsed
        if o.trace and self.world.is_root:
            rt.save_trace(o.trace)
        rt.wait_all()
        res.summary = summary(
            res,
            step=self.step,
            total_steps=p.total_steps,
            flops_per_token=p.flops_per_token,
            dtype=p.model.dtype,
            host=self.host,
            stats_start=stats_start,
            stats_end=rt.stats(),
            eval_loss=eval_loss,
            dropped=sinks.dropped,
        )
        sinks.close()
        res.summary["dropped_metrics"] = sinks.dropped
        res.summary["world_size"] = self.world.size
        self.reporter.finish(res.summary)
        return res

    def shutdown(self) -> None:
        self.plan.release()


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
