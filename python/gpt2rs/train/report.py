"""What a training run tells: the Reporter it draws progress with, the metric
sinks (TensorBoard, JSONL, the logger server), and the run summary with its
time breakdown, measured per task from the runtime's phases."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._gpt2rs import Runtime, cpu_bf16_gemm
from ..config import GPT2Config
from ..metrics import Guarded, JsonlSink, MultiSink, RemoteSink, TensorBoardSink, runtime_scalars
from .options import TrainOptions

log = logging.getLogger("gpt2rs.train")

#: The runtime phases the loop tags its tasks with (`Runtime.set_phase`).
PHASES = ("forward_backward", "optimizer", "eval", "checkpoint")


class Reporter(Protocol):
    def start(self, info: dict[str, Any]) -> None: ...
    def step(self, record: dict[str, Any]) -> None: ...
    def message(self, text: str) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class QuietReporter:
    """Says nothing (--quiet, and every rank but 0)."""

    def start(self, info: dict[str, Any]) -> None:
        pass

    def step(self, record: dict[str, Any]) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def finish(self, summary: dict[str, Any]) -> None:
        pass


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
class HostTime:
    """Seconds the loop's own thread spent outside the runtime's tasks:
    cutting batches, and writing checkpoint files."""

    data: float = 0.0
    checkpoint: float = 0.0


@dataclass
class TrainResult:
    steps: int = 0
    start_step: int = 0
    tokens: int = 0
    seconds: float = 0.0
    #: Wall seconds of the training steps alone (no evaluation or checkpoint).
    step_seconds: float = 0.0
    interrupted: bool = False
    checkpoint: str | None = None
    losses: list[float] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def model_flops_per_token(config: GPT2Config, n_params: int, seq_len: int) -> float:
    """Training FLOPs per token, as nanoGPT/PaLM count them: 6 N for the
    matrix products of forward and backward (N = parameters without the
    position embedding; the tied LM head is counted through wte) plus
    12 n_layer n_embd seq_len for attention scores and their use."""
    n = n_params - config.n_positions * config.n_embd
    return 6.0 * n + 12.0 * config.n_layer * config.n_embd * seq_len


def worker_time(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """Worker-busy seconds per loop phase between two `Runtime.stats()`:
    each task counts in the phase it was submitted in, so the optimizer is
    charged its own kernels, not the backward tasks it waits for."""

    def busy(st: dict[str, Any]) -> dict[str, float]:
        return {p["name"]: p["busy_s"] for p in st.get("phases", [])}

    b, a = busy(before), busy(after)
    return {name: a.get(name, 0.0) - b.get(name, 0.0) for name in PHASES}


class Sinks:
    """The run's metric sinks: TensorBoard and the logger server behind
    `--logger`, and `--metrics-file`; a sink whose disk fills is warned about
    once and dropped (`metrics.Guarded`), never the run."""

    def __init__(
        self, o: TrainOptions, log_dir: Path | None, run_name: str, reporter: Reporter, step: int
    ) -> None:
        sinks: list[Any] = []
        self.remote: RemoteSink | None = None
        warn = reporter.message
        self.reporter = reporter
        if o.logger:
            if log_dir is not None:
                sinks.append(Guarded(TensorBoardSink(log_dir), log_dir, warn))
            if o.logger_server_addr:
                self.remote = RemoteSink(o.logger_server_addr, o.logger_server_port, run_name)
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
            self.sink.text("args", json.dumps(asdict(o), indent=1, sort_keys=True), step)

    def step(
        self, rec: dict[str, Any], rt: Runtime, prev_stats: dict[str, Any], interval: float
    ) -> None:
        s = rec["step"]
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
            for tag, v in runtime_scalars(prev_stats, rt.stats(), interval).items():
                self.sink.scalar(tag, v, s)
        self.reporter.step(rec)

    @property
    def dropped(self) -> int:
        return self.remote.dropped if self.remote is not None else 0

    def close(self) -> None:
        self.sink.close()
        if self.jsonl is not None:
            self.jsonl.close()


def summary(
    res: TrainResult,
    *,
    step: int,
    total_steps: int,
    flops_per_token: float,
    dtype: str,
    host: HostTime,
    stats_start: dict[str, Any],
    stats_end: dict[str, Any],
    eval_loss: float | None,
    dropped: int,
) -> dict[str, Any]:
    """The run summary (the CLI's table, the library's TrainResult.summary)."""
    tps = res.tokens / res.step_seconds if res.step_seconds > 0 else 0.0
    return {
        "steps": res.steps,
        "step": step,
        "total_steps": total_steps,
        "tokens": res.tokens,
        "seconds": res.seconds,
        "tokens_per_s": tps,
        "tflops": flops_per_token * tps / 1e12,
        "mfu": None,  # the CPU's peak is not known; the CUDA backend will report it
        "device": "cpu",
        "bf16_gemm": cpu_bf16_gemm() if "bf16" in dtype else None,
        "final_loss": res.losses[-1] if res.losses else None,
        "eval_loss": eval_loss,
        "worker_time": worker_time(stats_start, stats_end),
        "host_time": asdict(host),
        "nodes": [
            {"name": n["name"], "peak_bytes": n["peak_bytes"], "limit": n["limit"]}
            for n in stats_end["nodes"]
        ],
        "workers": [
            {"name": w["name"], "busy_s": w["busy_s"], "tasks": w["tasks"]}
            for w in stats_end["workers"]
        ],
        "checkpoint": res.checkpoint,
        "interrupted": res.interrupted,
        "dropped_metrics": dropped,
    }
