"""gpt2rs-train's progress (a rich bar on a terminal, plain lines in a log)
and its run summary table."""

from __future__ import annotations

import sys
import time
from typing import Any


def _fmt_time(s: float) -> str:
    s = round(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


class _Base:
    def __init__(self, err: Any) -> None:
        self.err = err  # a rich Console on stderr
        self.info: dict[str, Any] = {}
        self.t0 = time.perf_counter()

    def _header(self, info: dict[str, Any]) -> str:
        c = info["config"]
        what = "resuming at step {start_step}".format(**info) if info["start_step"] else "training"
        return (
            f"{what}: GPT-2 with {info['n_params']:,} parameters (n_layer {c.n_layer}, n_embd {c.n_embd}, "
            f"n_head {c.n_head}, vocab {c.vocab_size}), {info['dtype']}, "
            f"{info['workers']} workers ({info['scheduler']}); "
            f"{info['dataset']}: {info['windows']:,} windows, {info['steps_per_epoch']:,} steps/epoch, "
            f"{info['total_steps']:,} steps of {info['tokens_per_step']:,} tokens"
        )

    def message(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    def _eta(self, step: int) -> str:
        done = step - self.info["start_step"]
        left = self.info["total_steps"] - step
        if done <= 0:
            return "?"
        return _fmt_time((time.perf_counter() - self.t0) / done * left)

    def finish(self, summary: dict[str, Any]) -> None:
        from rich.console import Console

        out = Console()
        if not out.is_terminal:
            out = Console(width=200)  # a log file: no need to fold paths
        print_summary(out, summary, self.info)


class RichReporter(_Base):
    """A progress bar (step, epoch, loss, tokens/s, ETA) on a terminal."""

    def start(self, info: dict[str, Any]) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.info = info
        self.err.print(self._header(info), markup=False, highlight=False, soft_wrap=True)
        self.progress = Progress(
            TextColumn("epoch {task.fields[epoch]}/{task.fields[nepochs]}"),
            BarColumn(),
            TextColumn("step"),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("{task.fields[tps]} tok/s"),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,
        )
        self.progress.start()
        epoch = info["start_step"] // info["steps_per_epoch"] + 1
        self.task = self.progress.add_task(
            "train",
            total=info["total_steps"],
            completed=info["start_step"],
            epoch=epoch,
            nepochs=info["nepochs"],
            loss="-",
            tps="-",
        )
        self.t0 = time.perf_counter()

    def step(self, r: dict[str, Any]) -> None:
        loss = f"{r['loss']:.4f}" + (f" (val {r['eval_loss']:.4f})" if "eval_loss" in r else "")
        self.progress.update(
            self.task,
            completed=r["step"],
            epoch=r["epoch"],
            loss=loss,
            tps=f"{r['tokens_per_s']:,.0f}",
        )

    def message(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def finish(self, summary: dict[str, Any]) -> None:
        if hasattr(self, "progress"):
            self.progress.stop()
        super().finish(summary)


class PlainReporter(_Base):
    """Periodic plain lines when stderr is not a terminal."""

    def __init__(self, err: Any, every: int) -> None:
        super().__init__(err)
        self.every = every
        self.last = 0.0

    def start(self, info: dict[str, Any]) -> None:
        self.info = info
        self.message(self._header(info))
        self.t0 = self.last = time.perf_counter()

    def step(self, r: dict[str, Any]) -> None:
        now = time.perf_counter()
        first = r["step"] == self.info["start_step"] + 1
        last = r["step"] == self.info["total_steps"]
        due = r["step"] % self.every == 0 if self.every > 0 else now - self.last >= 10.0
        if not (first or last or due or "eval_loss" in r):
            return
        self.last = now
        gn = f" | grad norm {r['grad_norm']:.3g}" if r.get("grad_norm") is not None else ""
        ev = f" | val loss {r['eval_loss']:.4f}" if "eval_loss" in r else ""
        self.message(
            f"step {r['step']}/{self.info['total_steps']} | epoch {r['epoch']}/{self.info['nepochs']} | "
            f"loss {r['loss']:.4f}{ev} | lr {r['lr']:.3g}{gn} | {r['tokens_per_s']:,.0f} tok/s | "
            f"ETA {self._eta(r['step'])}"
        )


def print_summary(console: Any, s: dict[str, Any], info: dict[str, Any]) -> None:
    """The end-of-run table: throughput, FLOP/s, MFU, memory, time per phase."""
    from rich.table import Table

    t = Table(title="gpt2rs-train summary", show_header=False, title_justify="left")
    t.add_column("what", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("steps", f"{s['steps']:,} this run (at step {s['step']:,} of {s['total_steps']:,})")
    t.add_row("tokens", f"{s['tokens']:,}")
    t.add_row("wall time", _fmt_time(s["seconds"]))
    t.add_row("tokens/s", f"{s['tokens_per_s']:,.0f}")
    t.add_row("model TFLOP/s", f"{s['tflops']:.4f}  (6 N + 12 n_layer n_embd seq_len per token)")
    t.add_row("MFU", "n/a (CPU: peak unknown)" if s["mfu"] is None else f"{100 * s['mfu']:.1f} %")
    if s["final_loss"] is not None:
        t.add_row("final loss", f"{s['final_loss']:.4f}")
    if s.get("eval_loss") is not None:
        t.add_row("validation loss", f"{s['eval_loss']:.4f}")
    for n in s["nodes"]:
        lim = "" if n["limit"] is None else f" of {_mib(n['limit'])}"
        t.add_row(f"peak memory {n['name']}", _mib(n["peak_bytes"]) + lim)
    # Task level: each phase is charged the worker time of the tasks it submitted.
    total = sum(s["worker_time"].values()) or 1.0
    for k, v in s["worker_time"].items():
        if v > 0:
            t.add_row(f"worker time {k.replace('_', '-')}", f"{v:,.2f} s ({100 * v / total:.0f} %)")
    host = s["host_time"]
    t.add_row(
        "host time", f"data {host['data']:,.2f} s, checkpoint files {host['checkpoint']:,.2f} s"
    )
    if s.get("checkpoint"):
        t.add_row("checkpoint", str(s["checkpoint"]))
    if info.get("log_dir"):
        t.add_row("TensorBoard logs", str(info["log_dir"]))
    if s.get("dropped_metrics"):
        t.add_row("metrics dropped", f"{s['dropped_metrics']:,} (logger server away)")
    console.print(t)
