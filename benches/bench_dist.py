"""Data-parallel training on one machine, and on paper at scale.

Four parts (--parts, a comma list of a,b,c,d; all by default):

(a) Overhead. Step throughput of 2 MPI ranks x 1 CPU worker
    (`mpiexec -n 2 gpt2rs-train ... --ncpu 1 --minibatch-size B/2`) against
    1 rank x 2 workers (`gpt2rs-train ... --ncpu 2 --minibatch-size B`):
    same global batch B, same config, same flags otherwise, the two runs
    interleaved A B / B A over --rounds rounds. Each run trains --warmup +
    --steps AdamW steps on a synthetic token file (uniform random uint16 ids,
    written with numpy) and writes a metrics file (`--metrics-file`, one line
    per step with step_s and tokens_per_s, rank 0 only); the figure is the
    median tokens/s of the steps after warmup over all rounds, and the ratio
    A / B (target >= 0.9). Both runs use the library's default tiling, cut
    from the shapes and each rank's workers (so A's tiles are those of 1
    worker and B/2 rows, B's those of 2 workers and B rows).

(b) Overlap. One traced 2-rank run (`--trace`, written by rank 0). Steps are
    told apart in the trace by the idle gap in which every worker of the rank
    waits between two steps (the loss mean, the metrics line, the next
    submission); per step it reports the collectives' time (union of the
    "collective" task events on the communication worker row, comm0), the
    part of it during which a compute task (cat "task") ran on another worker
    of rank 0, the collective bytes (args.bytes: bytes sent + received by the
    rank, see src/dist/collective.rs `wire_bytes`), and the share of the
    step (the metrics file's step_s) spent in collectives with no compute
    beside them. It also compares the GEMM rate of tasks that ran during a
    collective with those that did not: on a machine with as many cores as
    compute workers, a communication thread that polls inside MPI takes a
    core from the compute worker.

(c) Memory. 2 ranks x 1 worker with AdamW, --zero-stage 0 against 1 (and, for
    reference, 1 rank x 2 workers): each rank runs this file's rank mode
    (`mpiexec -n 2 python bench_dist.py --rank-mem DIR -- <gpt2rs-train
    flags>`, which parses the flags with gpt2rs-train's own parser and runs
    gpt2rs.train.Trainer), and records, just before the end-of-run
    checkpoint (which gathers the ZeRO-1 shards onto every rank) and after
    it: the runtime's peak bytes per memory node (`Runtime.stats()`, what
    gpt2rs-train's summary prints) and the process's RSS high-water mark
    (VmHWM of /proc/self/status, each rank its own).

(d) At scale, on paper: data-parallel GPT-2 124M / 355M / 774M / 1.5B on 8 /
    64 / 512 GPUs with a global batch of 2**19 tokens, from assumptions that
    are printed and stored (no GPU was measured): H100 bf16 dense peak 989
    TFLOP/s at 40 % MFU, 6 x params FLOPs per token; bf16 gradients; ring
    all-reduce time 2 (N-1)/N x gradient bytes / bandwidth, with NVLink 4
    (450 GB/s per GPU and direction) inside a node of 8 and InfiniBand NDR
    (400 Gb/s = 50 GB/s per GPU) across nodes (a flat ring runs at its slowest
    link). Step time without overlap (compute + comm), with full overlap
    (max), and with the backward-only overlap a real step allows (forward
    1/3 of the compute, then max(backward, comm)); ZeRO-1 moves the same
    bytes (reduce-scatter + all-gather) and divides the optimizer memory by
    N. Published llm.c multi-GPU figures (found with the search tool; see
    LLMC_PUBLISHED) are printed next to them, with their source.

Shared machines: a sampler thread reads /proc/stat and the CPU time of the
run's process tree (mpiexec, its proxy, the ranks) and of this process every
--sample-s seconds, and stamps each metrics line when it appears; a step
during which other processes used >= 5 % of the CPUs is left out of the
medians (all steps are kept if none was clean; the counts are printed),
and (a) adds up to --extra-rounds rounds while either variant has fewer
than --min-clean clean steps. --wait-quiet S waits up to S seconds for an
idle machine before each run.
The load average is recorded at the start and at the end.

Configs: `4x256` = 4 layers x 256 wide, n_head 4, vocab 50257, B=8, T=256
(bench_train.py's); `small` = GPT-2 124M, B=4, T=256; `tiny` (2 x 64,
vocab 512, B=2, T=32) is a smoke test, not a benchmark.

Prints tables and writes bench-out/dist.json.

    python benches/bench_dist.py                      # 4x256, all parts
    python benches/bench_dist.py --config tiny --rounds 1 --steps 2 --warmup 1   # smoke test
    python benches/bench_dist.py --parts d            # the scaling model only
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIGS: dict[str, dict[str, int]] = {
    "4x256": {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 50257, "B": 8, "T": 256},
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "B": 4, "T": 256},
    # A smoke test of the bench itself, not a benchmark.
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 512, "B": 2, "T": 32},
}

FOREIGN_LIMIT = 0.05
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A console script of this environment (mpiexec, gpt2rs-train), else from PATH."""
    p = VENV_BIN / name
    if p.exists():
        return str(p)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found beside {sys.executable} nor on PATH")
    return found


# --------------------------------------------------------------------------
# the machine and its load


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "unknown"
    for line in out.splitlines():
        key, _, val = line.partition(":")
        if key.strip() == "Model name":
            return val.strip()
    return "unknown"


def machine_busy_jiffies() -> int:
    """Busy jiffies of the whole machine, steal included (all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v) - v[3] - v[4]


def proc_jiffies(pid: int | str) -> int:
    """utime + stime of one process (all its threads); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def descendants(pid: int) -> list[int]:
    """pid and every process below it (through /proc/PID/task/TID/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


def wait_quiet(max_s: float, threshold: float = 0.05) -> float:
    """Waits (at most max_s) until the CPUs are less than `threshold` busy over
    3 s; returns the last busy share seen."""
    deadline = time.time() + max_s
    hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
    while True:
        a = machine_busy_jiffies()
        time.sleep(3)
        busy = (machine_busy_jiffies() - a) / hz / (3 * ncpu)
        if busy < threshold or time.time() > deadline:
            return busy


@dataclass
class Sample:
    t: float
    machine: int  # busy jiffies of the machine
    ours: int  # jiffies of the run's process tree and of this process


@dataclass
class Sampler:
    """Samples CPU use while a run goes on and stamps the metrics file's lines
    as they appear (a line is written right after its step's wait_all)."""

    pid: int
    metrics: Path
    period: float
    samples: list[Sample] = field(default_factory=list)
    lines: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _dead: dict[int, int] = field(default_factory=dict)
    _last: dict[int, int] = field(default_factory=dict)

    def _ours(self) -> int:
        # A process that ended keeps its last reading (its time does not vanish).
        now = {p: proc_jiffies(p) for p in descendants(self.pid)}
        for p, j in self._last.items():
            if p not in now or now[p] < j:
                self._dead[p] = max(self._dead.get(p, 0), j)
        self._last = {p: j for p, j in now.items() if j > 0}
        return sum(self._last.values()) + sum(self._dead.values()) + proc_jiffies("self")

    def _tick(self, fh: Any, buf: str) -> str:
        t = time.perf_counter()
        self.samples.append(Sample(t, machine_busy_jiffies(), self._ours()))
        if fh is not None:
            buf += fh.read()
            while "\n" in buf:
                line, buf = buf.split("\n", 1)
                if line.strip():
                    self.lines.append((t, json.loads(line)))
        return buf

    def run(self) -> None:
        fh: Any = None
        buf = ""
        try:
            while not self._stop.is_set():
                if fh is None and self.metrics.exists():
                    fh = open(self.metrics)  # noqa: SIM115 (kept open while the run writes)
                buf = self._tick(fh, buf)
                self._stop.wait(self.period)
            self._tick(fh, buf)
        finally:
            if fh is not None:
                fh.close()

    def stop(self) -> None:
        self._stop.set()

    def at(self, t: float) -> tuple[float, float]:
        """(machine busy, ours) jiffies at time t, interpolated between samples."""
        s = self.samples
        if not s:
            return 0.0, 0.0
        if t <= s[0].t:
            return float(s[0].machine), float(s[0].ours)
        for a, b in itertools.pairwise(s):
            if a.t <= t <= b.t:
                w = (t - a.t) / (b.t - a.t) if b.t > a.t else 0.0
                return a.machine + w * (b.machine - a.machine), a.ours + w * (b.ours - a.ours)
        return float(s[-1].machine), float(s[-1].ours)

    def shares(self, t0: float, t1: float) -> tuple[float, float]:
        """(share of the CPUs other processes used, share the run used) in [t0, t1]."""
        hz, ncpu = os.sysconf("SC_CLK_TCK"), os.cpu_count() or 1
        m0, o0 = self.at(t0)
        m1, o1 = self.at(t1)
        cap = hz * ncpu * max(t1 - t0, 1e-9)
        return max((m1 - m0) - (o1 - o0), 0.0) / cap, max(o1 - o0, 0.0) / cap


# --------------------------------------------------------------------------
# runs


def write_inputs(work: Path, cfg: dict[str, int], steps: int) -> None:
    """A synthetic uint16 token file and an HF config.json for --config-path."""
    import numpy as np

    ntok = max(200_000, 2 * (steps + 2) * cfg["B"] * (cfg["T"] + 1))
    rng = np.random.default_rng(1234)
    rng.integers(0, cfg["vocab_size"], size=ntok, dtype=np.uint16).tofile(work / "train.bin")
    hf = {
        "model_type": "gpt2",
        "n_layer": cfg["n_layer"],
        "n_embd": cfg["n_embd"],
        "n_head": cfg["n_head"],
        "vocab_size": cfg["vocab_size"],
        "n_positions": 1024,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }
    (work / "config.json").write_text(json.dumps(hf))


def train_flags(work: Path, cfg: dict[str, int], steps: int, tag: str) -> list[str]:
    """gpt2rs-train flags shared by every run; each run adds --ncpu,
    --minibatch-size and what it measures."""
    return [
        "--restrict=cpu",
        "--pretrained=local",
        f"--config-path={work / 'config.json'}",
        f"--dataset-path={work}",
        "--dataset-file=train.bin",
        f"--seq-len={cfg['T']}",
        f"--batch-size={cfg['B']}",
        "--optimizer=adamw",
        "--lr=1e-4",
        "--dropout=0",
        "--seed=0",
        "--scheduler=eager",
        f"--max-steps={steps}",
        "--quiet",
        f"--save-checkpoint-path={work / ('ckpt-' + tag)}",
        f"--metrics-file={work / ('metrics-' + tag + '.jsonl')}",
    ]


def clean_env() -> dict[str, str]:
    """The environment without StarPU/NNTile settings that would override the flags' defaults."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("STARPU_", "NNTILE_", "GPT2RS_"))
    }
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_sampled(
    cmd: list[str], metrics: Path, sample_s: float, timeout: float = 600
) -> dict[str, Any]:
    """Runs cmd with the sampler; returns its steps (from the metrics file)
    with the CPU share of other processes and of the run in each step."""
    if metrics.exists():
        metrics.unlink()
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env()
    )
    s = Sampler(p.pid, metrics, sample_s)
    th = threading.Thread(target=s.run, daemon=True)
    th.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += f"\n(killed after {timeout} s)"
    s.stop()
    th.join()
    wall = time.perf_counter() - t0
    steps = []
    for t_end, rec in s.lines:
        t_start = t_end - rec["step_s"]
        foreign, ours = s.shares(t_start, t_end)
        steps.append(
            {
                "step": rec["step"],
                "step_s": rec["step_s"],
                "tokens_per_s": rec["tokens_per_s"],
                "world_size": rec.get("world_size"),
                "loss": rec["loss"],
                "foreign": foreign,
                "run_cpu": ours,
            }
        )
    return {
        "cmd": cmd,
        "rc": p.returncode,
        "stderr": err[-4000:],
        "stdout": out[-2000:],
        "wall_s": wall,
        "steps": steps,
    }


def clean_steps(steps: list[dict[str, Any]], warmup: int) -> tuple[list[dict[str, Any]], bool]:
    """The steps after warmup during which others used < FOREIGN_LIMIT of the
    CPUs (all steps after warmup if none was clean), and whether any was."""
    timed = [s for s in steps if s["step"] > warmup]
    clean = [s for s in timed if s["foreign"] < FOREIGN_LIMIT]
    return (clean, True) if clean else (timed, False)


# --------------------------------------------------------------------------
# (a) overhead


def part_a(args: argparse.Namespace, work: Path, cfg: dict[str, int]) -> dict[str, Any]:
    B = cfg["B"]
    if B % 2:
        raise SystemExit(f"the global batch {B} must be even for 2 ranks")
    nsteps = args.warmup + args.steps
    mpiexec, train = tool("mpiexec"), tool("gpt2rs-train")
    variants = {
        "2 ranks x 1 worker": [
            mpiexec,
            "-n",
            "2",
            train,
            *train_flags(work, cfg, nsteps, "a2"),
            "--ncpu=1",
            f"--minibatch-size={B // 2}",
        ],
        "1 rank x 2 workers": [
            train,
            *train_flags(work, cfg, nsteps, "a1"),
            "--ncpu=2",
            f"--minibatch-size={B}",
        ],
    }
    names = list(variants)
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}

    def nclean(n: str) -> int:
        steps = [s for res in runs[n] for s in res["steps"] if s["step"] > args.warmup]
        return sum(s["foreign"] < FOREIGN_LIMIT for s in steps)

    r = 0
    while r < args.rounds or (
        r < args.rounds + args.extra_rounds and min(nclean(n) for n in names) < args.min_clean
    ):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            tag = "a2" if n.startswith("2") else "a1"
            res = run_sampled(variants[n], work / f"metrics-{tag}.jsonl", args.sample_s)
            res["round"] = r + 1
            runs[n].append(res)
            ok = "ok" if res["rc"] == 0 else f"FAILED rc={res['rc']}"
            tps = [round(s["tokens_per_s"]) for s in res["steps"]]
            print(f"  (a) round {r + 1} {n}: {ok}, {res['wall_s']:.1f} s, tok/s per step {tps}")
            if res["rc"] != 0:
                print(res["stderr"], file=sys.stderr)
        r += 1
    out: dict[str, Any] = {"variants": {}, "rounds": r}
    for n in names:
        allsteps = [s for res in runs[n] for s in res["steps"]]
        clean, any_clean = clean_steps(allsteps, args.warmup)
        timed = [s for s in allsteps if s["step"] > args.warmup]
        out["variants"][n] = {
            "cmd": " ".join(variants[n]),
            "runs": runs[n],
            "median_tokens_per_s": statistics.median(s["tokens_per_s"] for s in clean)
            if clean
            else None,
            "median_step_s": statistics.median(s["step_s"] for s in clean) if clean else None,
            "clean_steps": len(clean) if any_clean else 0,
            "timed_steps": len(timed),
            "median_foreign": statistics.median(s["foreign"] for s in timed) if timed else None,
            "median_run_cpu": statistics.median(s["run_cpu"] for s in clean) if clean else None,
            "per_round_median": [
                statistics.median(
                    s["tokens_per_s"] for s in res["steps"] if s["step"] > args.warmup
                )
                if any(s["step"] > args.warmup for s in res["steps"])
                else None
                for res in runs[n]
            ],
        }
    a, b = (out["variants"][n]["median_tokens_per_s"] for n in names)
    out["ratio"] = a / b if a and b else None
    rounds = [
        x / y if x and y else None
        for x, y in zip(*(out["variants"][n]["per_round_median"] for n in names))
    ]
    out["ratio_per_round"] = rounds
    # bench_train's --rounds reading: each variant's fastest round (the
    # median of its timed steps), less exposed to neighbours that come and go.
    best = [
        max((x for x in out["variants"][n]["per_round_median"] if x), default=None) for n in names
    ]
    for n, x in zip(names, best):
        out["variants"][n]["fastest_round_tokens_per_s"] = x
    out["ratio_fastest_round"] = best[0] / best[1] if best[0] and best[1] else None
    out["target"] = 0.9
    return out


# --------------------------------------------------------------------------
# (b) overlap


def merge(iv: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for a, b in sorted(iv):
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def length(iv: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in iv)


def intersect(x: list[tuple[float, float]], y: list[tuple[float, float]]) -> float:
    """Length of the intersection of two merged interval lists."""
    i = j = 0
    total = 0.0
    while i < len(x) and j < len(y):
        lo, hi = max(x[i][0], y[j][0]), min(x[i][1], y[j][1])
        if hi > lo:
            total += hi - lo
        if x[i][1] < y[j][1]:
            i += 1
        else:
            j += 1
    return total


def step_boundaries(events: list[dict[str, Any]]) -> list[float]:
    """Start of each step in a trace (us): the end of the longest gap with no
    task running on any worker between two steps' first loss task (loss_init:
    one per step, at the start of the first forward)."""
    marks = sorted(e["ts"] for e in events if e["name"] == "loss_init")
    opt_ends = sorted(e["ts"] + e["dur"] for e in events if e["name"] == "optimizer_step")
    busy = merge([(e["ts"], e["ts"] + e["dur"]) for e in events])
    bounds = [busy[0][0]] if busy else []
    for lo, hi in itertools.pairwise(marks):
        # The gap comes after the step's last optimizer task (under ZeRO-1 the
        # updated tiles' all-gathers follow it, still before the gap).
        last_opt = [t for t in opt_ends if lo < t < hi]
        if last_opt:
            lo = last_opt[-1]
        best, at = -1.0, hi
        for (_, end), (nxt, _) in itertools.pairwise(busy):
            if lo <= end and nxt <= hi and nxt - end > best:
                best, at = nxt - end, nxt
        bounds.append(at)
    return bounds


def analyse_trace(
    path: Path, step_s: dict[int, float], warmup: int, n_params: int
) -> dict[str, Any]:
    doc = json.loads(path.read_text())
    evs = doc["traceEvents"] if isinstance(doc, dict) else doc
    names = {
        e["tid"]: e["args"]["name"]
        for e in evs
        if e.get("ph") == "M" and e.get("name") == "thread_name" and e.get("pid") == 0
    }
    comm_rows = {t for t, n in names.items() if n.startswith("comm")}
    tasks = [e for e in evs if e.get("ph") == "X" and e.get("pid") == 0]
    bounds = step_boundaries(tasks)
    per_step = []
    gemm_in: list[float] = [0.0, 0.0]  # flops, us of GEMMs mostly during a collective
    gemm_out: list[float] = [0.0, 0.0]
    # Step k (1-based) runs from bounds[k-1] to bounds[k]; the last step is
    # followed by the checkpoint, so only steps with a following step count.
    for k in range(warmup + 1, len(bounds)):
        lo, hi = bounds[k - 1], bounds[k]
        inside = [e for e in tasks if lo <= e["ts"] < hi]
        coll = [e for e in inside if e["tid"] in comm_rows and e.get("cat") == "collective"]
        comp = [e for e in inside if e["tid"] not in comm_rows and e.get("cat") == "task"]
        c_iv = merge([(e["ts"], e["ts"] + e["dur"]) for e in coll])
        u_iv = merge([(e["ts"], e["ts"] + e["dur"]) for e in comp])
        c_len, over = length(c_iv), intersect(c_iv, u_iv)
        if not inside:
            continue
        span = max(e["ts"] + e["dur"] for e in inside) - min(e["ts"] for e in inside)
        for e in comp:
            if e["name"] == "gemm" and e["dur"] > 0:
                during = intersect([(e["ts"], e["ts"] + e["dur"])], c_iv) / e["dur"]
                acc = gemm_in if during > 0.5 else gemm_out
                acc[0] += e["args"].get("flops", 0.0)
                acc[1] += e["dur"]
        st = step_s.get(k)
        t0 = min(e["ts"] for e in inside)
        opt = [e["ts"] for e in comp if e["name"] == "optimizer_step"]
        first_opt = min(opt) if opt else hi
        loss = [e["ts"] + e["dur"] for e in comp if e["name"] == "ce_lse"]
        bwd = [e["ts"] + e["dur"] for e in comp if e["ts"] < first_opt]
        per_step.append(
            {
                "step": k,
                # Seconds from the step's first task: the loss known (last
                # ce_lse), the first collective started, backward's last task ended.
                "loss_ready_at_s": (max(loss) - t0) / 1e6 if loss else None,
                "first_collective_at_s": (c_iv[0][0] - t0) / 1e6 if c_iv else None,
                "backward_end_at_s": (max(bwd) - t0) / 1e6 if bwd else None,
                "step_s": st,
                "trace_span_s": span / 1e6,
                "collectives": len(coll),
                "collective_kinds": sorted({e["name"] for e in coll}),
                "collective_s": c_len / 1e6,
                "overlapped_s": over / 1e6,
                "overlap_fraction": over / c_len if c_len else None,
                "bytes": sum(int(e["args"].get("bytes", 0)) for e in coll),
                "exposed_share_of_step": (c_len - over) / 1e6 / st if st else None,
                "compute_busy_s": length(u_iv) / 1e6,
            }
        )

    def med(key: str) -> float | None:
        v = [s[key] for s in per_step if s[key] is not None]
        return statistics.median(v) if v else None

    return {
        "workers": names,
        "steps": per_step,
        "median_overlap_fraction": med("overlap_fraction"),
        "median_collective_s": med("collective_s"),
        "median_exposed_share": med("exposed_share_of_step"),
        "median_step_s": med("step_s"),
        "bytes_per_step": med("bytes"),
        "gradient_bytes": 4 * n_params,
        "gemm_gflops_during_collective": gemm_in[0] / gemm_in[1] / 1e3 if gemm_in[1] else None,
        "gemm_gflops_otherwise": gemm_out[0] / gemm_out[1] / 1e3 if gemm_out[1] else None,
        "gemm_share_during_collective": gemm_in[1] / (gemm_in[1] + gemm_out[1])
        if gemm_in[1] + gemm_out[1]
        else None,
    }


def n_params(cfg: dict[str, int], n_positions: int = 1024) -> int:
    """GPT-2 parameters (tied LM head): wte, wpe, per block 12 C^2 + 13 C, final LayerNorm."""
    C, L, V = cfg["n_embd"], cfg["n_layer"], cfg["vocab_size"]
    return V * C + n_positions * C + L * (12 * C * C + 13 * C) + 2 * C


def part_b(args: argparse.Namespace, work: Path, cfg: dict[str, int]) -> dict[str, Any]:
    B = cfg["B"]
    nsteps = args.warmup + args.trace_steps + 1
    trace = work / "trace.json"
    cmd = [
        tool("mpiexec"),
        "-n",
        "2",
        tool("gpt2rs-train"),
        *train_flags(work, cfg, nsteps, "b"),
        "--ncpu=1",
        f"--minibatch-size={B // 2}",
        f"--trace={trace}",
    ]
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    res = run_sampled(cmd, work / "metrics-b.jsonl", args.sample_s)
    print(f"  (b) traced run: rc={res['rc']}, {res['wall_s']:.1f} s")
    if res["rc"] != 0 or not trace.exists():
        print(res["stderr"], file=sys.stderr)
        return {"cmd": " ".join(cmd), "error": res["stderr"][-2000:], "rc": res["rc"]}
    step_s = {s["step"]: s["step_s"] for s in res["steps"]}
    out = analyse_trace(trace, step_s, args.warmup, n_params(cfg))
    out["cmd"] = " ".join(cmd)
    out["foreign_per_step"] = {s["step"]: s["foreign"] for s in res["steps"]}
    out["trace_mb"] = trace.stat().st_size / 2**20
    if args.keep_trace:
        dst = Path(args.out).parent / "dist-trace.json"
        shutil.copy(trace, dst)
        out["trace_copy"] = str(dst)
    return out


# --------------------------------------------------------------------------
# (c) memory


def status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def rank_mem(outdir: str, flags: list[str]) -> int:
    """Rank mode of part (c): trains with gpt2rs-train's flags through
    gpt2rs.train.Trainer and writes this rank's memory figures, taken just
    before the end-of-run checkpoint and after the run."""
    from gpt2rs.cli.train import parse_args
    from gpt2rs.train import Trainer
    from gpt2rs.train.report import QuietReporter

    def snap(rt: Any) -> dict[str, Any]:
        st = rt.stats()
        return {
            "nodes": [
                {"name": n["name"], "peak_bytes": n["peak_bytes"], "used_bytes": n["used_bytes"]}
                for n in st["nodes"]
            ],
            "vmhwm_kb": status_kb("VmHWM"),
            "vmrss_kb": status_kb("VmRSS"),
        }

    class MemTrainer(Trainer):
        before: dict[str, Any] | None = None

        def save(self) -> Path:
            if self.before is None:
                self.runtime.wait_all()
                self.before = snap(self.runtime)
            return super().save()

    opts, _ = parse_args(flags)
    t = MemTrainer(opts, QuietReporter())
    try:
        t.setup()
        res = t.run()
        after = snap(t.runtime)
        rank, size = t.world.rank, t.world.size
        zero = opts.zero_stage if size > 1 else 0
    finally:
        t.shutdown()
    rec = {
        "rank": rank,
        "world_size": size,
        "zero_stage": zero,
        "before_checkpoint": t.before,
        "after_run": after,
        "summary_nodes": res.summary.get("nodes"),
        "steps": res.steps,
    }
    Path(outdir, f"rank{rank}.json").write_text(json.dumps(rec))
    return 0


def part_c(args: argparse.Namespace, work: Path, cfg: dict[str, int]) -> dict[str, Any]:
    B = cfg["B"]
    nsteps = args.mem_steps
    py, me = sys.executable, str(Path(__file__).resolve())
    cases: list[tuple[str, list[str]]] = []
    for z in (0, 1):
        cases.append(
            (
                f"2 ranks x 1 worker, zero-stage {z}",
                [
                    tool("mpiexec"),
                    "-n",
                    "2",
                    py,
                    me,
                    "--rank-mem",
                    str(work / f"mem-z{z}"),
                    "--",
                    *train_flags(work, cfg, nsteps, f"c{z}"),
                    "--ncpu=1",
                    f"--minibatch-size={B // 2}",
                    f"--zero-stage={z}",
                ],
            )
        )
    cases.append(
        (
            "1 rank x 2 workers",
            [
                py,
                me,
                "--rank-mem",
                str(work / "mem-1"),
                "--",
                *train_flags(work, cfg, nsteps, "c1r"),
                "--ncpu=2",
                f"--minibatch-size={B}",
            ],
        )
    )
    out: dict[str, Any] = {"cases": {}}
    for name, cmd in cases:
        d = Path(cmd[cmd.index("--rank-mem") + 1])
        d.mkdir(parents=True, exist_ok=True)
        if args.wait_quiet:
            wait_quiet(args.wait_quiet)
        p = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), check=False)
        ranks = [json.loads(f.read_text()) for f in sorted(d.glob("rank*.json"))]
        print(f"  (c) {name}: rc={p.returncode}, {len(ranks)} rank record(s)")
        if p.returncode != 0:
            print(p.stderr[-3000:], file=sys.stderr)
        out["cases"][name] = {
            "cmd": " ".join(cmd),
            "rc": p.returncode,
            "stderr": p.stderr[-2000:],
            "ranks": ranks,
        }
    return out


# --------------------------------------------------------------------------
# (d) at scale, on paper

GPT2_SIZES: dict[str, dict[str, int]] = {
    "124M": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
    "355M": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257},
    "774M": {"n_layer": 36, "n_embd": 1280, "n_head": 20, "vocab_size": 50257},
    "1.5B": {"n_layer": 48, "n_embd": 1600, "n_head": 25, "vocab_size": 50257},
}

ASSUMPTIONS: dict[str, Any] = {
    "gpu": "H100 SXM (assumed; no GPU figure of ours exists)",
    "peak_bf16_tflops": 989.0,
    "mfu": 0.40,
    "flops_per_token": "6 x params (matmuls of forward + backward; attention ignored)",
    "global_batch_tokens": 2**19,
    "grad_bytes_per_param": 2,  # bf16 gradients
    "gpus_per_node": 8,
    "nvlink_gb_s_per_gpu": 450.0,  # NVLink 4: 900 GB/s bidirectional = 450 each way
    "ib_gb_s_per_gpu": 50.0,  # one NDR 400 Gb/s HCA per GPU
    "all_reduce": "ring: 2 (N-1)/N x gradient bytes / bandwidth of the slowest link "
    "(NVLink for N <= 8, InfiniBand beyond); latency terms ignored",
    "optimizer_bytes_per_param": "AdamW mixed precision: fp32 master 4 + m 4 + v 4 = 12 B "
    "(sharded by ZeRO-1), plus bf16 weights 2 + bf16 gradients 2 (replicated)",
}

# llm.c multi-GPU figures found with the search tool (GitHub pull-request threads).
LLMC_PUBLISHED: list[dict[str, Any]] = [
    {
        "source": "https://github.com/karpathy/llm.c/pull/248 (ademeure, 2024-04-26)",
        "setup": "8x A100, one node, bf16, GPT-2 124M (-b 4), NCCL, first multi-GPU version",
        "figure": "640K tokens/s on 8 GPUs; per GPU ~82K alone -> ~80K in the 8-GPU run",
        "efficiency": 80 / 82,
        "gpus": 8,
    },
    {
        "source": "https://github.com/karpathy/llm.c/pull/426 (chinthysl, 2024-05-17)",
        "setup": "DGX H100 SuperPOD (NVLink in a node, InfiniBand RDMA across), weak scaling at "
        "micro-batch 12 x 1024 per GPU, no cuDNN; model size not stated in the excerpt found",
        "figure": "tokens/s (k): 8 GPUs 249, 16 296, 32 484, 64 748, 128 1455, 192 1794, "
        "384 2303; step latency 395 ms on 8 GPUs -> 1056 ms on 64, 2054 ms on 384",
        "efficiency_per_gpu_vs_8": {
            "64": (748 / 64) / (249 / 8),
            "128": (1455 / 128) / (249 / 8),
            "384": (2303 / 384) / (249 / 8),
        },
        "gpus": 64,
    },
]


def scaling_model() -> dict[str, Any]:
    a = ASSUMPTIONS
    per_gpu_flops = a["peak_bf16_tflops"] * 1e12 * a["mfu"]
    rows = []
    for name, c in GPT2_SIZES.items():
        p = n_params(c)
        for n in (8, 64, 512):
            compute = 6 * p * a["global_batch_tokens"] / (n * per_gpu_flops)
            bw = (
                a["nvlink_gb_s_per_gpu"] if n <= a["gpus_per_node"] else a["ib_gb_s_per_gpu"]
            ) * 1e9
            grad = a["grad_bytes_per_param"] * p
            comm = 2 * (n - 1) / n * grad / bw
            no_overlap = compute + comm
            full = max(compute, comm)
            bwd_only = compute / 3 + max(2 * compute / 3, comm)
            rows.append(
                {
                    "model": name,
                    "params": p,
                    "gpus": n,
                    "tokens_per_gpu": a["global_batch_tokens"] / n,
                    "link_gb_s": bw / 1e9,
                    "compute_s": compute,
                    "comm_s": comm,
                    "eff_no_overlap": compute / no_overlap,
                    "eff_full_overlap": compute / full,
                    "eff_backward_overlap": compute / bwd_only,
                    "tokens_per_s_no_overlap": a["global_batch_tokens"] / no_overlap,
                    "tokens_per_s_backward_overlap": a["global_batch_tokens"] / bwd_only,
                    "zero1_comm_s": comm,  # reduce-scatter + all-gather = all-reduce's bytes
                    "mem_gb_zero0": 16 * p / 1e9,
                    "mem_gb_zero1": (4 + 12 / n) * p / 1e9,
                }
            )
    return {"assumptions": a, "rows": rows, "llmc_published": LLMC_PUBLISHED}


# --------------------------------------------------------------------------
# printing


def table(head: list[str], rows: list[list[str]]) -> str:
    w = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.ljust(w[i]) for i, h in enumerate(head))
    out = [line, "  ".join("-" * x for x in w)]
    out += ["  ".join(c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
    return "\n".join(out)


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def print_a(a: dict[str, Any]) -> None:
    rows = []
    for n, v in a["variants"].items():
        rows.append(
            [
                n,
                fmt(v["median_tokens_per_s"], ".0f"),
                fmt(v["median_step_s"], ".3f"),
                f"{v['clean_steps']}/{v['timed_steps']}",
                fmt(v["median_foreign"], ".1%"),
                fmt(v["median_run_cpu"], ".0%"),
                " ".join(fmt(x, ".0f") for x in v["per_round_median"]),
            ]
        )
    print("\n(a) overhead: median tokens/s over clean steps after warmup")
    print(
        table(
            ["variant", "tok/s", "step s", "clean", "others' CPU", "run's CPU", "per round"],
            rows,
        )
    )
    rr = " ".join(fmt(x, ".2f") for x in a["ratio_per_round"])
    print(
        f"ratio 2x1 / 1x2 = {fmt(a['ratio'], '.3f')} over clean steps (target >= 0.9); "
        f"fastest rounds {fmt(a['ratio_fastest_round'], '.3f')}; per round: {rr}"
    )


def print_b(b: dict[str, Any]) -> None:
    if "error" in b:
        print(f"\n(b) overlap: the traced run failed (rc={b['rc']})")
        return
    print("\n(b) overlap (rank 0 of a traced 2-rank run)")
    rows = [
        [
            str(s["step"]),
            fmt(s["step_s"], ".3f"),
            str(s["collectives"]),
            fmt(s["bytes"] / 2**20, ".1f"),
            fmt(s["collective_s"] * 1e3, ".1f"),
            fmt(s["overlap_fraction"], ".1%"),
            fmt(s["exposed_share_of_step"], ".1%"),
            fmt(s["loss_ready_at_s"], ".3f"),
            fmt(s["first_collective_at_s"], ".3f"),
            fmt(s["backward_end_at_s"], ".3f"),
        ]
        for s in b["steps"]
    ]
    print(
        table(
            [
                "step",
                "step s",
                "colls",
                "MiB sent+recv",
                "coll ms",
                "overlapped",
                "exposed/step",
                "loss at s",
                "1st coll at s",
                "bwd end at s",
            ],
            rows,
        )
    )
    print(
        f"median: overlap {fmt(b['median_overlap_fraction'], '.1%')}, exposed "
        f"{fmt(b['median_exposed_share'], '.1%')} of the step; gradient buffer "
        f"{b['gradient_bytes'] / 2**20:.1f} MiB; GEMM GF/s during a collective "
        f"{fmt(b['gemm_gflops_during_collective'], '.1f')} vs otherwise "
        f"{fmt(b['gemm_gflops_otherwise'], '.1f')} "
        f"({fmt(b['gemm_share_during_collective'], '.0%')} of GEMM time during collectives)"
    )


def print_c(c: dict[str, Any]) -> None:
    print("\n(c) memory per rank (MiB): runtime host-node peak and RSS high-water (VmHWM)")
    rows = []
    for name, v in c["cases"].items():
        for r in sorted(v["ranks"], key=lambda r: r["rank"]):
            bef, aft = r["before_checkpoint"] or {}, r["after_run"]
            rows.append(
                [
                    name,
                    str(r["rank"]),
                    fmt(bef["nodes"][0]["peak_bytes"] / 2**20 if bef else None, ".1f"),
                    fmt(aft["nodes"][0]["peak_bytes"] / 2**20, ".1f"),
                    fmt(bef["vmhwm_kb"] / 1024 if bef else None, ".0f"),
                    fmt(aft["vmhwm_kb"] / 1024, ".0f"),
                ]
            )
        if v["rc"] != 0:
            rows.append([name, "-", "failed", "", "", ""])
    print(
        table(
            [
                "case",
                "rank",
                "peak before ckpt",
                "peak after",
                "VmHWM before ckpt",
                "VmHWM after",
            ],
            rows,
        )
    )


def print_d(d: dict[str, Any]) -> None:
    a = d["assumptions"]
    print(
        f"\n(d) at scale, on paper: {a['gpu']}, {a['peak_bf16_tflops']:.0f} TFLOP/s x "
        f"{a['mfu']:.0%} MFU, 6 x params FLOPs/token, global batch {a['global_batch_tokens']} "
        f"tokens, bf16 gradients; ring all-reduce over NVLink {a['nvlink_gb_s_per_gpu']:.0f} GB/s "
        f"(N <= 8) or InfiniBand {a['ib_gb_s_per_gpu']:.0f} GB/s per GPU"
    )
    rows = [
        [
            r["model"],
            str(r["gpus"]),
            f"{r['tokens_per_gpu']:.0f}",
            f"{r['compute_s'] * 1e3:.1f}",
            f"{r['comm_s'] * 1e3:.1f}",
            f"{r['eff_no_overlap']:.0%}",
            f"{r['eff_backward_overlap']:.0%}",
            f"{r['eff_full_overlap']:.0%}",
            f"{r['mem_gb_zero0']:.2f}",
            f"{r['mem_gb_zero1']:.2f}",
        ]
        for r in d["rows"]
    ]
    print(
        table(
            [
                "model",
                "GPUs",
                "tok/GPU",
                "compute ms",
                "all-reduce ms",
                "eff sum",
                "eff bwd-overlap",
                "eff max",
                "GB/GPU Z0",
                "GB/GPU Z1",
            ],
            rows,
        )
    )
    print("llm.c published multi-GPU figures (found with the search tool):")
    for p in d["llmc_published"]:
        print(f"  {p['source']}: {p['setup']}; {p['figure']}")


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--rank-mem":
        if len(argv) < 3 or argv[2] != "--":
            raise SystemExit("usage: bench_dist.py --rank-mem DIR -- <gpt2rs-train flags>")
        return rank_mem(argv[1], argv[3:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="4x256", choices=sorted(CONFIGS))
    ap.add_argument("--parts", default="a,b,c,d", help="comma list of a, b, c, d")
    ap.add_argument("--rounds", type=int, default=3, help="(a): A/B rounds")
    ap.add_argument(
        "--extra-rounds",
        type=int,
        default=2,
        help="(a): rounds added, at most, while a variant has < --min-clean clean steps",
    )
    ap.add_argument("--min-clean", type=int, default=6, help="(a): see --extra-rounds")
    ap.add_argument("--steps", type=int, default=6, help="(a): timed steps per run")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of every figure")
    ap.add_argument("--trace-steps", type=int, default=4, help="(b): steps analysed")
    ap.add_argument("--mem-steps", type=int, default=3, help="(c): steps per run")
    ap.add_argument("--sample-s", type=float, default=0.05, help="CPU sampling period")
    ap.add_argument("--wait-quiet", type=float, default=0.0, help="wait up to S s for quiet")
    ap.add_argument("--keep-trace", action="store_true", help="(b): keep the trace in bench-out/")
    ap.add_argument("--out", default="bench-out/dist.json")
    args = ap.parse_args(argv)
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"a", "b", "c", "d"}:
        raise SystemExit(f"unknown parts in {args.parts!r}")
    cfg = CONFIGS[args.config]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "bench": "bench_dist",
        "config": args.config,
        "cfg": cfg,
        "params": n_params(cfg),
        "machine": {"model": lscpu_model(), "cpus": os.cpu_count()},
        "load_start": os.getloadavg(),
        "argv": argv,
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    print(
        f"bench_dist: {result['machine']['model']}, {os.cpu_count()} CPUs, load "
        f"{' '.join(f'{x:.2f}' for x in result['load_start'])}; config {args.config} {cfg}"
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        work = Path(tmp)
        if parts & {"a", "b", "c"}:
            write_inputs(work, cfg, max(args.warmup + args.steps, args.mem_steps) + 2)
        if "a" in parts:
            result["a"] = part_a(args, work, cfg)
        if "b" in parts:
            result["b"] = part_b(args, work, cfg)
        if "c" in parts:
            result["c"] = part_c(args, work, cfg)
    if "d" in parts:
        result["d"] = scaling_model()
    result["load_end"] = os.getloadavg()
    result["wall_s"] = time.perf_counter() - t0
    if "a" in result:
        print_a(result["a"])
    if "b" in result:
        print_b(result["b"])
    if "c" in result:
        print_c(result["c"])
    if "d" in result:
        print_d(result["d"])
    print(
        f"\nload average at the end {' '.join(f'{x:.2f}' for x in result['load_end'])}; "
        f"bench took {result['wall_s']:.0f} s; wrote {args.out}"
    )
    Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
