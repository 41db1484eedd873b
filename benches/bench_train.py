"""Training-step throughput of gpt2rs against PyTorch on the CPU, in the same
run: HF transformers' GPT2LMHeadModel and a nanoGPT-style model
(benches/nanogpt_model.py), in eager mode and under torch.compile, in fp32
and with bf16 autocast, all with torch.optim.AdamW.

Competitors (--frameworks, a comma list; the default is marked *):

    gpt2rs*               gpt2rs, dtype fp32
    gpt2rs-bf16           gpt2rs, dtype bf16 (bf16 storage)
    gpt2rs-fast-bf16      gpt2rs, dtype fp32_fast_bf16 (fp32 storage, bf16 GEMMs
                          on a GPU; the CPU computes them in f32)
    hf*                   HF GPT2LMHeadModel, eager, fp32
    hf-bf16*              the same under torch.autocast("cpu", bfloat16)
    nanogpt*              nanoGPT-style model, eager, fp32
    nanogpt-bf16          the same under bf16 autocast
    nanogpt-compile*      nanoGPT-style model under torch.compile (default mode), fp32
    nanogpt-compile-bf16* the same under bf16 autocast

A step is zero_grad + forward/backward (mean next-token cross-entropy, labels =
input_ids) + one AdamW step (lr 1e-4, weight decay 0.01 on every parameter);
for gpt2rs the step ends with `rt.wait_all()`. bf16 autocast covers forward
and loss (the cross-entropy itself runs in fp32); parameters, gradients and
AdamW stay fp32. All models start from the same random weights (gpt2rs
`from_config(seed=0)` saved with `save_pretrained` and loaded by every
competitor), dropout is off (pdrop 0), torch uses sdpa attention and
`torch.set_num_threads(ncpu)`. torch.compile compiles in the warmup steps
(at least one); the compile time (first step minus the median step, with a
fresh inductor cache per bench run, so round 1 compiles cold) is reported
apart and is not in the medians.

Per config it reports tokens/s of each (median of --steps steps after
--warmup), the ratio gpt2rs / competitor (gpt2rs fp32 against fp32
competitors, gpt2rs-bf16 against bf16 ones; target >= 1.25), matmul GF/s
(analytic matmul flops per step, see `matmul_flops`, / median step time) and
that as a share of the machine's GEMM ceiling for the run's precision, peak
memory of each (every framework runs in its own subprocess: ru_maxrss minus
the RSS after imports, and the RSS high-water mark of the timed steps
alone), the gpt2rs runtime's own peak bytes per memory node, the workers'
busy share, and -- from a traced extra run of fp32 gpt2rs -- the time share
of each codelet, GEMM GFLOP/s and the GEMM tile shapes (told apart by their
flop count). For torch, the share of time in matmul ops comes from
torch.profiler over one step.

GEMM ceiling: benches/gemm_ceiling.py, once per bench in its own subprocess
with the same thread count (torch.mm, MKL/oneDNN, fp32 and bf16); printed
first with lscpu's model name and GEMM features, and stored in the JSON.

Shared machines: each step records the CPU time other processes took
(/proc/stat); steps during which they used >= 5% of the CPUs are left out
of the medians (all steps are kept if none was clean; the counts are
printed). --wait-quiet S waits for an idle machine before each measured
subprocess, --rounds N runs the frameworks in turn N times and keeps each
one's fastest run.

Configs: `small` = GPT-2 small (124M; B=4, T=256); `4x256` = 4 layers x 256
wide, n_head 4, vocab 50257 (B=8, T=256); `tiny` (2 x 64, vocab 512, B=2,
T=32) is a smoke test, not a benchmark.

Prints a table last and writes bench-out/train.json.

    python benches/bench_train.py [--quick] [--configs small,4x256]
    python benches/bench_train.py --frameworks gpt2rs,hf,nanogpt-compile --rounds 3
    python benches/bench_train.py --quick --configs tiny --no-trace --no-torch-profile   # smoke test
    python benches/bench_train.py --sweep --configs 4x256      # gpt2rs tilings only
    python benches/bench_train.py --configs small --tiles "mb=1,seq=128,hid=768,inner=768,heads=12,vocab=8192"

Tiling strings: comma-separated key=value with keys mb (minibatch_size_tile),
seq, hid, inner, heads, vocab (an int, `none` for untiled or `auto` for the
library's default) and sched (eager / dmda); keys left out take the
library's default tiling.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# benches/ is not a package: gemm_ceiling and nanogpt_model are imported from beside this file
sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "B": 4, "T": 256},
    "4x256": {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 50257, "B": 8, "T": 256},
    # One long sequence, and GPT-2 medium at B=1: few row tiles per worker.
    "small-1x1024": {
        "n_layer": 12,
        "n_embd": 768,
        "n_head": 12,
        "vocab_size": 50257,
        "B": 1,
        "T": 1024,
    },
    "medium-1x256": {
        "n_layer": 24,
        "n_embd": 1024,
        "n_head": 16,
        "vocab_size": 50257,
        "B": 1,
        "T": 256,
    },
    # A smoke test of the bench itself (every framework runs in seconds), not a benchmark.
    "tiny": {"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 512, "B": 2, "T": 32},
}

# The tilings the bench runs unless --tiles says otherwise: None = the
# library's default (model/autotile.rs: cut from the shapes and the CPU
# workers), "none" in a --tiles string = untiled ("whole"). On a 2-core Zen 4 the
# sweep found one sequence per row tile, T, C, 4C and heads whole, and the
# vocabulary in 8192-wide tiles best at B=8, T=256 (within ~2 % of each
# other for row tiles of 256..512 tokens, inner 768..3072, heads 3..12;
# seq 64/128 and hidden 128/384 cost 5-20 %); the defaults follow that.
DEFAULT_TILES: dict[str, dict[str, Any]] = {
    name: {
        "mb": None,
        "seq": None,
        "hid": None,
        "inner": None,
        "heads": None,
        "vocab": None,
        "sched": "eager",
    }
    for name in CONFIGS
}

# Tilings tried by --sweep (each is applied over the config's default).
SWEEP: dict[str, list[str]] = {
    "small": [
        "",
        "mb=2",
        "mb=none",
        "seq=128",
        "seq=64",
        "hid=384",
        "hid=256",
        "inner=768",
        "inner=1536",
        "heads=6",
        "heads=3",
        "heads=1",
        "vocab=4096",
        "vocab=16384",
        "vocab=none",
        "sched=dmda",
    ],
    "4x256": [
        "",
        "mb=2",
        "mb=none",
        "seq=128",
        "seq=64",
        "hid=128",
        "inner=512",
        "heads=2",
        "heads=1",
        "vocab=4096",
        "vocab=16384",
        "vocab=none",
        "sched=dmda",
    ],
}

TILE_KEYS = {
    "mb": "minibatch_size_tile",
    "seq": "seq_len_tile",
    "hid": "hidden_size_tile",
    "inner": "intermediate_size_tile",
    "heads": "n_head_tile",
    "vocab": "vocab_tile",
}

MATMUL_OPS = (
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::_addmm_activation",
    "mkldnn::_linear_pointwise",
)

# The competitors --frameworks chooses from. worker: the subprocess kind;
# prec: the GEMM ceiling a run is measured against (fp32 / bf16) and the
# gpt2rs run it is compared with (gpt2rs for fp32, gpt2rs-bf16 for bf16).
# gpt2rs runs: dtype (the library's precision mode). torch runs: model (hf /
# nanogpt), compile (torch.compile, default mode), autocast (None / "bf16").
FRAMEWORKS: dict[str, dict[str, Any]] = {
    "gpt2rs": {"worker": "gpt2rs", "prec": "fp32", "dtype": "fp32"},
    "gpt2rs-bf16": {"worker": "gpt2rs", "prec": "bf16", "dtype": "bf16"},
    # fp32 storage, GEMM inputs rounded to bf16 on a GPU; the CPU computes in f32 (src/dtype.rs).
    "gpt2rs-fast-bf16": {"worker": "gpt2rs", "prec": "bf16", "dtype": "fp32_fast_bf16"},
    "hf": {"worker": "torch", "prec": "fp32", "model": "hf", "compile": False, "autocast": None},
    "hf-bf16": {
        "worker": "torch",
        "prec": "bf16",
        "model": "hf",
        "compile": False,
        "autocast": "bf16",
    },
    "nanogpt": {
        "worker": "torch",
        "prec": "fp32",
        "model": "nanogpt",
        "compile": False,
        "autocast": None,
    },
    "nanogpt-bf16": {
        "worker": "torch",
        "prec": "bf16",
        "model": "nanogpt",
        "compile": False,
        "autocast": "bf16",
    },
    "nanogpt-compile": {
        "worker": "torch",
        "prec": "fp32",
        "model": "nanogpt",
        "compile": True,
        "autocast": None,
    },
    "nanogpt-compile-bf16": {
        "worker": "torch",
        "prec": "bf16",
        "model": "nanogpt",
        "compile": True,
        "autocast": "bf16",
    },
}
DEFAULT_FRAMEWORKS = "gpt2rs,hf,nanogpt,nanogpt-compile,gpt2rs-bf16,hf-bf16,nanogpt-compile-bf16"
# The gpt2rs run each precision's competitors are compared with.
BASELINE = {"fp32": "gpt2rs", "bf16": "gpt2rs-bf16"}


# --------------------------------------------------------------------------
# helpers shared by the parent and the workers


def parse_tiles(s: str, base: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for part in filter(None, (p.strip() for p in s.split(","))):
        k, _, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if k == "sched":
            if v not in ("eager", "dmda"):
                raise SystemExit(f"unknown scheduler {v!r}")
            out[k] = v
        elif k in TILE_KEYS:
            out[k] = (
                "whole"
                if v.lower() in ("none", "-1", "whole")
                else None
                if v.lower() in ("", "auto")
                else int(v)
            )
        else:
            raise SystemExit(
                f"unknown tile key {k!r} in {s!r} (keys: {', '.join(TILE_KEYS)}, sched)"
            )
    return out


def tiles_str(t: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return "auto" if v is None else "none" if v == "whole" else str(v)

    return ",".join(f"{k}={show(t.get(k))}" for k in (*TILE_KEYS, "sched"))


def rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_jiffies() -> tuple[int, int]:
    """(busy jiffies of the whole machine incl. steal, jiffies of this process)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = sum(v) - v[3] - v[4]  # minus idle and iowait
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return busy, int(fields[11]) + int(fields[12])


def foreign_share(j0: tuple[int, int], j1: tuple[int, int], wall: float) -> float:
    """Share of the machine's CPUs used by other processes between two snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    other = (j1[0] - j0[0]) - (j1[1] - j0[1])
    return max(other, 0) / hz / (wall * (os.cpu_count() or 1))


def wait_quiet(max_s: float, threshold: float = 0.05) -> float:
    """Waits (at most max_s) until the machine's CPUs are less than `threshold`
    busy over 3 s; returns the last busy share seen."""
    deadline = time.time() + max_s
    busy = 1.0
    while True:
        with open("/proc/stat") as f:
            a = [int(x) for x in f.readline().split()[1:]]
        time.sleep(3)
        with open("/proc/stat") as f:
            b = [int(x) for x in f.readline().split()[1:]]
        d = [y - x for x, y in zip(a, b)]
        busy = 1 - (d[3] + d[4]) / max(sum(d), 1)
        if busy < threshold or time.time() > deadline:
            return busy


def clean_median(
    times: list[float], foreign: list[float], limit: float = 0.05
) -> tuple[float, int]:
    """Median of the steps during which other processes used < limit of the CPUs
    (all steps if none was clean), and how many steps that was."""
    clean = [t for t, f in zip(times, foreign) if f < limit]
    return (statistics.median(clean), len(clean)) if clean else (statistics.median(times), 0)


def reset_hwm() -> bool:
    """Resets the RSS high-water mark (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def matmul_flops(c: dict[str, Any]) -> dict[str, float]:
    """Analytic matmul flops of one training step, the same for every competitor.

    Forward, with tokens = B*T: 2 * tokens * (12*L*C^2 [per block: qkv 3C^2,
    attention projection C^2, fc 4C^2, fc projection 4C^2] + V*C [tied LM
    head]), plus attention 2 * 2*B*L*T^2*C (QK^T and AV, 2 flops per
    multiply-add). Attention counts the full T x T square although it is
    causal (an implementation that skips the masked upper triangle does up to
    half of these attention flops less). Backward = 2 x forward
    (a gradient for the input and one for the weight of each matmul), so a
    step is 3 x forward. Returns each part of the step and the total.
    """
    L, C, V, B, T = c["n_layer"], c["n_embd"], c["vocab_size"], c["B"], c["T"]
    tokens = B * T
    linear = 2.0 * tokens * 12 * L * C * C
    head = 2.0 * tokens * V * C
    attn = 2.0 * 2 * B * L * T * T * C
    return {
        "linear": 3 * linear,
        "lm_head": 3 * head,
        "attention": 3 * attn,
        "total": 3 * (linear + head + attn),
    }


def hf_config(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_layer": c["n_layer"],
        "n_embd": c["n_embd"],
        "n_head": c["n_head"],
        "vocab_size": c["vocab_size"],
        "n_positions": 1024,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
    }


def batches(c: dict[str, Any], n: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(1234)
    return [
        rng.integers(0, c["vocab_size"], size=(c["B"], c["T"]), dtype=np.int64) for _ in range(n)
    ]


# --------------------------------------------------------------------------
# workers (each in its own process)


def worker_init(spec: dict[str, Any]) -> dict[str, Any]:
    import gpt2rs

    c = spec["cfg"]
    rt = gpt2rs.Runtime(ncpu=spec["ncpu"])
    m = gpt2rs.GPT2LMHead.from_config(hf_config(c), seed=0, dtype="fp32", runtime=rt)
    m.save_pretrained(spec["dir"])
    rt.shutdown()
    return {"params": m.num_parameters()}


def worker_gpt2rs(spec: dict[str, Any]) -> dict[str, Any]:
    import gpt2rs

    base_kb = rss_kb()
    c, t = spec["cfg"], spec["tiles"]
    trace = bool(spec.get("trace"))
    rt = gpt2rs.Runtime(ncpu=spec["ncpu"], scheduler=t["sched"], trace=trace)
    tiles = {TILE_KEYS[k]: t[k] for k in TILE_KEYS}
    model = gpt2rs.GPT2LMHead.from_pretrained(
        spec["dir"], dtype=spec.get("dtype", "fp32"), runtime=rt, **tiles
    )
    opt = gpt2rs.AdamW(model, lr=1e-4, weight_decay=0.01)
    data = batches(c, 4)
    rt.wait_all()
    setup_kb = rss_kb()
    hwm_ok = reset_hwm()
    times, losses, busy, tasks, foreign, faults = [], [], [], [], [], []
    phases: list[dict[str, float]] = []
    windows = []
    nw = rt.nworkers
    for i in range(spec["warmup"] + spec["steps"]):
        ids = data[i % len(data)]
        s0 = rt.stats()
        w0 = s0["wall_s"]
        j0 = cpu_jiffies()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        model.zero_grad()
        t1 = time.perf_counter()
        loss = model.forward_backward(ids)
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        rt.wait_all()
        t4 = time.perf_counter()
        j1 = cpu_jiffies()
        s1 = rt.stats()
        losses.append(loss)
        if i >= spec["warmup"]:
            times.append(t4 - t0)
            foreign.append(foreign_share(j0, j1, t4 - t0))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            phases.append(
                {
                    "zero_grad": t1 - t0,
                    "fwd_bwd_call": t2 - t1,
                    "opt_submit": t3 - t2,
                    "wait_all": t4 - t3,
                }
            )
            b = sum(w["busy_s"] for w in s1["workers"]) - sum(w["busy_s"] for w in s0["workers"])
            busy.append(b / (nw * (t4 - t0)))
            tasks.append(s1["tasks_submitted"] - s0["tasks_submitted"])
            windows.append((w0 * 1e6, s1["wall_s"] * 1e6))
    st = rt.stats()
    out: dict[str, Any] = {
        "times_s": times,
        "median_s": clean_median(times, foreign)[0],
        "clean_steps": clean_median(times, foreign)[1],
        "losses": losses,
        "tasks_per_step": statistics.median(tasks),
        "foreign_cpu_share": statistics.median(foreign),
        "minor_faults_per_step": statistics.median(faults),
        "foreign_per_step": foreign,
        "busy_share": statistics.median(busy),
        "phases_s": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        "peak_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024,
        "step_peak_rss_mb": (hwm_kb() - base_kb) / 1024 if hwm_ok else None,
        "setup_rss_mb": (setup_kb - base_kb) / 1024,
        "runtime_nodes": [
            {
                "name": n["name"],
                "peak_mb": n["peak_bytes"] / 2**20,
                "used_mb": n["used_bytes"] / 2**20,
            }
            for n in st["nodes"]
        ],
        "nworkers": nw,
        "dtype": model.dtype,
    }
    if trace:
        path = Path(spec["trace_path"])
        rt.save_trace(path)
        out["profile"] = analyse_trace(path, windows, nw, c, t)
        out["profile"]["foreign_per_step"] = foreign
        out["profile"]["step_s"] = times
        if not spec.get("keep_trace"):
            path.unlink()
    rt.shutdown()
    return out


def worker_torch(spec: dict[str, Any]) -> dict[str, Any]:
    """HF GPT2LMHeadModel or the nanoGPT-style model (spec["model"]), eager or
    under torch.compile (spec["compile"]), fp32 or with bf16 autocast around
    forward + loss (spec["autocast"])."""
    import torch

    torch.set_num_threads(spec["ncpu"])
    base_kb = rss_kb()
    c = spec["cfg"]
    versions = {"torch": str(torch.__version__)}
    if spec["model"] == "hf":
        import transformers

        versions["transformers"] = transformers.__version__
        model: Any = transformers.GPT2LMHeadModel.from_pretrained(
            spec["dir"], attn_implementation=spec["attn"]
        )
    else:
        from nanogpt_model import load_pretrained

        model = load_pretrained(spec["dir"])
    model.train()  # dropout probabilities are 0
    kw: dict[str, Any] = {}
    if spec["adamw"] in ("foreach", "fused"):
        kw[spec["adamw"]] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **kw)
    fwd = torch.compile(model) if spec["compile"] else model
    data = [torch.from_numpy(b) for b in batches(c, 4)]
    setup_kb = rss_kb()
    hwm_ok = reset_hwm()
    times, losses, foreign, faults, warm_times = [], [], [], [], []

    def autocast() -> Any:
        if spec["autocast"] == "bf16":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def step(ids: Any) -> float:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = fwd(input_ids=ids, labels=ids).loss if spec["model"] == "hf" else fwd(ids)
        loss.backward()
        opt.step()
        return float(loss.detach())

    for i in range(spec["warmup"] + spec["steps"]):
        j0 = cpu_jiffies()
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        loss = step(data[i % len(data)])
        t1 = time.perf_counter()
        j1 = cpu_jiffies()
        losses.append(loss)
        if i >= spec["warmup"]:
            times.append(t1 - t0)
            foreign.append(foreign_share(j0, j1, t1 - t0))
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
        else:
            warm_times.append(t1 - t0)
    median_s, clean_steps = clean_median(times, foreign)
    out: dict[str, Any] = {
        "times_s": times,
        "warmup_times_s": warm_times,
        "median_s": median_s,
        "clean_steps": clean_steps,
        # torch.compile traces and compiles forward and backward in the first step
        "compile_s": warm_times[0] - median_s if spec["compile"] and warm_times else None,
        "losses": losses,
        "foreign_cpu_share": statistics.median(foreign),
        "minor_faults_per_step": statistics.median(faults),
        "foreign_per_step": foreign,
        "peak_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024,
        "step_peak_rss_mb": (hwm_kb() - base_kb) / 1024 if hwm_ok else None,
        "setup_rss_mb": (setup_kb - base_kb) / 1024,
        **versions,
        "model": spec["model"],
        "compile": spec["compile"],
        "autocast": spec["autocast"],
        "attn": spec["attn"] if spec["model"] == "hf" else "sdpa",
        "adamw": spec["adamw"],
    }
    if spec.get("profile"):
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            step(data[0])
            wall = time.perf_counter() - t0
        self_us: dict[str, float] = defaultdict(float)
        for e in prof.key_averages():
            self_us[e.key] += e.self_cpu_time_total
        total = sum(self_us.values())
        mm = sum(v for k, v in self_us.items() if k in MATMUL_OPS)
        attn = sum(v for k, v in self_us.items() if "attention" in k)
        top = sorted(self_us.items(), key=lambda kv: -kv[1])[:10]
        out["profile"] = {
            "profiled_step_s": wall,
            "matmul_share": mm / total if total else None,
            "attention_share": attn / total if total else None,
            "top_self_ms": [(k, v / 1e3) for k, v in top],
        }
    return out


# Codelets that are GEMMs: the plain one and the training LM head's tasks
# (ops/lm_head_ce.rs), whose time also holds the cross-entropy fused into
# them (on 4x256 about 3 % of busy time, 5 % of theirs: benches/RESULTS.md,
# 2026-12-04, "the cross-entropy inside the LM-head tasks").
GEMM_CODELETS = ("gemm", "lm_head_ce_fwd", "lm_head_ce_dx", "lm_head_ce_dw")


def analyse_trace(
    path: Path, windows: list[tuple[float, float]], nw: int, c: dict[str, Any], t: dict[str, Any]
) -> dict[str, Any]:
    """Per-codelet time and flops, worker busy share, concurrency and GEMM
    shapes, over the timed steps' windows of a Chrome trace."""
    ev = [e for e in json.loads(path.read_text())["traceEvents"] if e.get("cat") == "task"]
    span = sum(b - a for a, b in windows)
    per: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])  # count, dur_us, flops
    gemm_by_flops: dict[float, list[float]] = defaultdict(lambda: [0, 0.0])
    intervals = []
    per_worker = [0.0] * nw
    for e in ev:
        ts, dur = e["ts"], e["dur"]
        if not any(a <= ts and ts + dur <= b + 1 for a, b in windows):
            continue
        p = per[e["name"]]
        p[0] += 1
        p[1] += dur
        p[2] += e["args"].get("flops", 0.0)
        if e["name"] in GEMM_CODELETS:
            g = gemm_by_flops[e["args"].get("flops", 0.0)]
            g[0] += 1
            g[1] += dur
        per_worker[e["tid"]] += dur
        intervals.append((ts, 1))
        intervals.append((ts + dur, -1))
    busy_total = sum(v[1] for v in per.values())
    # idle before the first task and after the last one of each step (Python, submission, wait_all)
    edges = []
    for a, b in windows:
        inside = [
            (e["ts"], e["ts"] + e["dur"])
            for e in ev
            if a <= e["ts"] and e["ts"] + e["dur"] <= b + 1
        ]
        if inside:
            edges.append((min(x for x, _ in inside) - a, b - max(y for _, y in inside)))
    # time with 0, 1, ..., nw workers busy, inside the windows
    conc = [0.0] * (nw + 1)
    intervals.sort()
    for a, b in windows:
        cur, last = 0, a
        for ts, d in intervals:
            if ts < a:
                cur += d
                continue
            if ts > b:
                break
            conc[min(max(cur, 0), nw)] += ts - last
            cur += d
            last = ts
        conc[min(max(cur, 0), nw)] += b - last
        # reset for next window is implicit: events lie wholly inside windows
    names = gemm_shape_names(c, t)
    codelets = sorted(
        (
            {
                "name": k,
                "count": int(v[0]),
                "time_s": v[1] / 1e6,
                "share_of_busy": v[1] / busy_total if busy_total else 0,
                "share_of_wall": v[1] / (nw * span) if span else 0,
                "gflops": v[2] / v[1] / 1e3 if v[1] and v[2] else None,
            }
            for k, v in per.items()
        ),
        key=lambda d: -d["time_s"],
    )
    gemm_shapes = sorted(
        (
            {
                "flops": f,
                "count": int(v[0]),
                "time_s": v[1] / 1e6,
                "gflops": f * v[0] / v[1] / 1e3 if v[1] else None,
                "mean_ms": v[1] / v[0] / 1e3,
                "shapes": names.get(round(f), "?"),
            }
            for f, v in gemm_by_flops.items()
        ),
        key=lambda d: -d["time_s"],
    )
    g = [sum(per[k][i] for k in GEMM_CODELETS if k in per) for i in range(3)]
    nsteps = len(windows)
    return {
        "steps": nsteps,
        "wall_s_per_step": span / 1e6 / nsteps,
        "busy_share": busy_total / (nw * span) if span else None,
        "worker_busy_share": [w / span for w in per_worker],
        "concurrency_share": [x / span for x in conc],
        "gemm_share_of_busy": g[1] / busy_total if busy_total else None,
        "gemm_share_of_wall": g[1] / (nw * span) if span else None,
        "gemm_gflops_per_worker": g[2] / g[1] / 1e3 if g[1] else None,
        "gemm_gflops_wall": g[2] / span / 1e3 if span else None,
        "tasks_per_step": sum(int(v[0]) for v in per.values()) / nsteps,
        "lead_tail_ms": [(x / 1e3, y / 1e3) for x, y in edges],
        "codelets": codelets,
        "gemm_shapes": gemm_shapes,
    }


def gemm_shape_names(c: dict[str, Any], t: dict[str, Any]) -> dict[int, str]:
    """flop count -> the GEMM tasks of the model graph with that count (a
    label for the trace, where tasks carry no shapes). Tile sizes as the
    model cuts them: activations [B, T, ...] in (mb, seq) row tiles."""
    C, V, nh, B, T = c["n_embd"], c["vocab_size"], c["n_head"], c["B"], c["T"]
    F, hs = 4 * C, C // c["n_head"]

    def tl(k: str, n: int) -> list[int]:
        s = t.get(k) or n
        s = min(s, n)
        return sorted({s, n % s} - {0})

    rows = [b * s for b in tl("mb", B) for s in tl("seq", T)]
    cs, fs, vs = tl("hid", C), tl("inner", F), tl("vocab", V)
    hcs = [h * hs for h in tl("heads", nh)]
    out: dict[int, dict[str, list[str]]] = defaultdict(dict)

    def add(layer: str, m: int, n: int, k: int) -> None:
        # forward Y[m,n] = X[m,k] W[k,n]; dX[m,k] = dY[m,n] W^T; dW[k,n] = X^T dY (K = rows)
        for kind, f, shape in (
            ("fwd", m * n * k, f"{m}x{n}x{k}"),
            ("dX", m * k * n, f"{m}x{k}x{n}"),
            ("dW", k * n * m, f"{k}x{n}x{m}"),
        ):
            d = out[2 * f].setdefault(layer, [])
            d.append(f"{kind} {shape}")

    for r in rows:
        for k in cs:
            for n in hcs:
                add("qkv", r, n, k)
                add("attn-proj", r, k, n)
            for n in fs:
                add("fc", r, n, k)
                add("fc-proj", r, k, n)
            for n in vs:
                add("lm-head", r, n, k)
    return {
        f: "; ".join(f"{layer} " + "/".join(dict.fromkeys(v)) for layer, v in d.items())
        for f, d in out.items()
    }


def worker_ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """The machine (lscpu) and its GEMM ceiling on the bench's thread count (benches/gemm_ceiling.py)."""
    from gemm_ceiling import ceiling, machine

    return {"machine": machine(), "ceiling_gflops": ceiling(spec["ncpu"])}


WORKERS = {
    "init": worker_init,
    "gpt2rs": worker_gpt2rs,
    "torch": worker_torch,
    "ceiling": worker_ceiling,
}


# --------------------------------------------------------------------------
# parent


QUIET_WAIT_S = 0.0


def run_worker(kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    if QUIET_WAIT_S > 0 and kind != "init":
        wait_quiet(QUIET_WAIT_S)
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"
    )
    if kind in ("torch", "ceiling"):
        env.setdefault("OMP_NUM_THREADS", str(spec["ncpu"]))
    if spec.get("inductor_cache"):
        env["TORCHINDUCTOR_CACHE_DIR"] = spec["inductor_cache"]
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_worker", kind, "--_spec", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"{kind} worker failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    )


def loadavg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def print_profile(name: str, pr: dict[str, Any], mf: dict[str, float]) -> None:
    print(
        f"\n[{name}] gpt2rs profile (traced run, {pr['steps']} steps, {pr['wall_s_per_step']:.3f} s/step, "
        f"{pr['tasks_per_step']:.0f} tasks/step)"
    )
    print(
        f"  workers busy {pr['busy_share'] * 100:.1f}% of wall (per worker "
        + ", ".join(f"{b * 100:.1f}%" for b in pr["worker_busy_share"])
        + "); time with 0/1/2.. workers busy: "
        + " / ".join(f"{x * 100:.1f}%" for x in pr["concurrency_share"])
    )
    lead = (
        statistics.median(x for x, _ in pr["lead_tail_ms"]) if pr["lead_tail_ms"] else float("nan")
    )
    tail = (
        statistics.median(y for _, y in pr["lead_tail_ms"]) if pr["lead_tail_ms"] else float("nan")
    )
    print(
        f"  idle before the first task {lead:.1f} ms, after the last {tail:.1f} ms per step; other processes used "
        + ", ".join(f"{f * 100:.1f}%" for f in pr.get("foreign_per_step", []))
        + " of the CPUs per step"
    )
    print(
        f"  GEMM: {pr['gemm_share_of_busy'] * 100:.1f}% of busy time, {pr['gemm_share_of_wall'] * 100:.1f}% of "
        f"worker wall time; {fmt(pr['gemm_gflops_per_worker'], 1)} GFLOP/s per worker while running, "
        f"{fmt(pr['gemm_gflops_wall'], 1)} GFLOP/s over the step"
    )
    print(f"  {'codelet':24s} {'tasks':>7s} {'time_s':>8s} {'%busy':>6s} {'GFLOP/s':>8s}")
    for d in pr["codelets"][:14]:
        print(
            f"  {d['name']:24s} {d['count']:7d} {d['time_s']:8.3f} {d['share_of_busy'] * 100:6.1f} "
            f"{fmt(d['gflops'], 1):>8s}"
        )
    print(
        f"  {'GEMM tile shapes (by flops)':60s} {'tasks':>6s} {'time_s':>7s} {'ms/task':>8s} {'GFLOP/s':>8s}"
    )
    for d in pr["gemm_shapes"][:10]:
        print(
            f"  {d['shapes'][:60]:60s} {d['count']:6d} {d['time_s']:7.3f} {d['mean_ms']:8.2f} "
            f"{fmt(d['gflops'], 1):>8s}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help="fewer steps (1 warmup + 3), no traced run for small"
    )
    ap.add_argument(
        "--steps", type=int, default=None, help="timed steps per framework (default 5, quick 3)"
    )
    ap.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)"
    )
    ap.add_argument(
        "--configs", default="small,4x256", help="comma-separated: " + ", ".join(CONFIGS)
    )
    ap.add_argument(
        "--frameworks",
        default=DEFAULT_FRAMEWORKS,
        help="comma-separated competitors, run in this order each round: "
        + ", ".join(FRAMEWORKS)
        + f" (default {DEFAULT_FRAMEWORKS}; see above)",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the frameworks in turn this many times; keep each one's fastest (loaded machines)",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each measured subprocess wait up to S seconds for the other processes to go quiet "
        "(steps during which others used >= 5%% of the CPUs are left out of the median anyway)",
    )
    ap.add_argument("--ncpu", type=int, default=2, help="gpt2rs CPU workers and torch threads")
    ap.add_argument(
        "--tiles",
        default="",
        help="gpt2rs tiling over the config default, e.g. 'mb=1,seq=128,sched=dmda'",
    )
    for k, long in TILE_KEYS.items():
        ap.add_argument(
            f"--{long.replace('_', '-')}",
            dest=f"tile_{k}",
            default=None,
            help=f"gpt2rs {long} (int or none); overrides --tiles",
        )
    ap.add_argument("--scheduler", choices=["eager", "dmda"], default=None)
    ap.add_argument("--attn", default="sdpa", help="torch attention implementation (sdpa, eager)")
    ap.add_argument(
        "--adamw",
        default="default",
        choices=["default", "foreach", "fused"],
        help="torch.optim.AdamW implementation",
    )
    ap.add_argument(
        "--no-trace", action="store_true", help="skip the traced gpt2rs run (codelet breakdown)"
    )
    ap.add_argument("--no-torch-profile", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="time gpt2rs only, over the SWEEP tilings")
    ap.add_argument(
        "--sweep-tiles", default=None, help="';'-separated tilings for --sweep instead of SWEEP"
    )
    ap.add_argument("--keep-trace", default=None, help="directory to keep the traces in")
    ap.add_argument("--out", default="bench-out/train.json")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        res = WORKERS[args._worker](json.loads(args._spec))
        print("RESULT " + json.dumps(res), flush=True)
        return

    from gemm_ceiling import describe

    global QUIET_WAIT_S
    QUIET_WAIT_S = args.wait_quiet
    steps = args.steps if args.steps is not None else (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"unknown config {n!r} (one of {', '.join(CONFIGS)})")
    fws = list(dict.fromkeys(f.strip() for f in args.frameworks.split(",") if f.strip()))
    for f in fws:
        if f not in FRAMEWORKS:
            raise SystemExit(f"unknown framework {f!r} (one of {', '.join(FRAMEWORKS)})")
    overrides = ",".join(
        [args.tiles]
        + [
            f"{k}={getattr(args, 'tile_' + k)}"
            for k in TILE_KEYS
            if getattr(args, "tile_" + k) is not None
        ]
        + ([f"sched={args.scheduler}"] if args.scheduler else [])
    )
    report: dict[str, Any] = {
        "ncpu": args.ncpu,
        "steps": steps,
        "warmup": warmup,
        "load_start": loadavg(),
        "frameworks": fws,
        "configs": {},
    }
    rows = []
    tmp = tempfile.TemporaryDirectory(prefix="gpt2rs-bench-train-")
    t_start = time.perf_counter()
    try:
        ceil = run_worker("ceiling", {"ncpu": args.ncpu}, 600)
        mach, ceil_gf = ceil["machine"], ceil["ceiling_gflops"]
        report["machine"], report["ceiling_gflops"] = mach, ceil_gf
        print(describe(mach, ceil_gf, args.ncpu), flush=True)
        for name in names:
            c = CONFIGS[name]
            wdir = os.path.join(tmp.name, name)
            init = run_worker("init", {"cfg": c, "dir": wdir, "ncpu": args.ncpu}, 600)
            base = parse_tiles(overrides, DEFAULT_TILES[name])
            mf = matmul_flops(c)
            tok = c["B"] * c["T"]
            spec = {"cfg": c, "dir": wdir, "ncpu": args.ncpu, "steps": steps, "warmup": warmup}
            entry: dict[str, Any] = {
                "config": c,
                "params": init["params"],
                "model_flops_per_step": mf,
            }
            if args.sweep:
                tilings = (
                    args.sweep_tiles.split(";")
                    if args.sweep_tiles is not None
                    else SWEEP.get(name, [""])
                )
                sweep = []
                for s in tilings:
                    t = parse_tiles(s, base)
                    load = loadavg()
                    r = run_worker("gpt2rs", {**spec, "tiles": t}, 900)
                    tps = tok / r["median_s"]
                    sweep.append(
                        {
                            "tiles": tiles_str(t),
                            "tokens_per_s": tps,
                            "median_s": r["median_s"],
                            "busy_share": r["busy_share"],
                            "tasks_per_step": r["tasks_per_step"],
                            "step_peak_rss_mb": r["step_peak_rss_mb"],
                            "load": load,
                            "foreign_cpu_share": r["foreign_cpu_share"],
                            "minor_faults_per_step": r["minor_faults_per_step"],
                            "times_s": r["times_s"],
                        }
                    )
                    print(
                        f"[{name}] {tiles_str(t):70s} {tps:8.0f} tok/s  {r['median_s']:.3f} s  busy "
                        f"{r['busy_share'] * 100:5.1f}%  {r['tasks_per_step']:6.0f} tasks  "
                        f"rss {fmt(r['step_peak_rss_mb'], 0)} MB  {r['minor_faults_per_step'] / 1e3:.0f}k faults  other "
                        f"{r['foreign_cpu_share'] * 100:4.1f}% cpu, {r['clean_steps']}/{steps} clean steps",
                        flush=True,
                    )
                entry["sweep"] = sweep
                report["configs"][name] = entry
                continue
            load0 = loadavg()
            best: dict[str, dict[str, Any]] = {}
            round_s: dict[str, list[float]] = {f: [] for f in fws}
            compile_s: dict[str, list[float]] = {f: [] for f in fws}
            for rnd in range(args.rounds):
                # run the frameworks in turn so that a burst of load hits all of them; keep each one's best round
                for f in fws:
                    fw = FRAMEWORKS[f]
                    if fw["worker"] == "gpt2rs":
                        fspec = {**spec, "tiles": base, "dtype": fw["dtype"]}
                    else:
                        fspec = {
                            **spec,
                            "model": fw["model"],
                            "compile": fw["compile"],
                            "autocast": fw["autocast"],
                            "attn": args.attn,
                            "adamw": args.adamw,
                            "profile": not args.no_torch_profile and rnd == 0,
                        }
                        if fw["compile"]:
                            # compilation happens in the first warmup step; a fresh inductor cache per bench
                            # run (shared by its rounds and configs, so round 1 compiles cold)
                            fspec["warmup"] = max(warmup, 1)
                            fspec["inductor_cache"] = os.path.join(tmp.name, f"inductor-{f}")
                    r = run_worker(fw["worker"], fspec, 1800 if fw.get("compile") else 900)
                    round_s[f].append(r["median_s"])
                    if r.get("compile_s") is not None:
                        compile_s[f].append(r["compile_s"])
                    if f not in best or r["median_s"] < best[f]["median_s"]:
                        best[f] = {
                            **r,
                            "profile": r.get("profile") or best.get(f, {}).get("profile"),
                        }
            load1 = loadavg()
            prof = None
            if "gpt2rs" in fws and not args.no_trace and not (args.quick and name == "small"):
                tspec = {
                    **spec,
                    "tiles": base,
                    "trace": True,
                    "steps": 3,
                    "warmup": 2,
                    "trace_path": os.path.join(args.keep_trace or tmp.name, f"trace-{name}.json"),
                    "keep_trace": bool(args.keep_trace),
                }
                if args.keep_trace:
                    os.makedirs(args.keep_trace, exist_ok=True)
                prof = run_worker("gpt2rs", tspec, 900)["profile"]
            results: dict[str, dict[str, Any]] = {}
            for f in fws:
                r, prec = best[f], FRAMEWORKS[f]["prec"]
                gf = mf["total"] / r["median_s"] / 1e9
                results[f] = {
                    **r,
                    "prec": prec,
                    "tokens_per_s": tok / r["median_s"],
                    "model_gflops": gf,
                    "ceiling_fraction": gf / ceil_gf[prec],
                    # round 1's (cold inductor cache); every round's in compile_s_rounds
                    "compile_s": compile_s[f][0] if compile_s[f] else None,
                    "compile_s_rounds": compile_s[f],
                }
            for f in fws:
                ref = BASELINE[results[f]["prec"]]
                if FRAMEWORKS[f]["worker"] != "gpt2rs" and ref in results:
                    results[f]["ratio"] = results[ref]["tokens_per_s"] / results[f]["tokens_per_s"]
                    results[f]["ratio_vs"] = ref
            entry.update(
                {
                    "tiles": tiles_str(base),
                    "frameworks": results,
                    "load": [load0, load1],
                    "rounds_median_s": round_s,
                    "profile": prof,
                }
            )
            if (
                "gpt2rs" in results and "hf" in results
            ):  # the figures of the bench before nanoGPT and bf16
                g, h = results["gpt2rs"], results["hf"]
                entry["ratio"] = g["tokens_per_s"] / h["tokens_per_s"]
                entry["mem_ratio"] = (
                    g["step_peak_rss_mb"] / h["step_peak_rss_mb"]
                    if g["step_peak_rss_mb"] and h["step_peak_rss_mb"]
                    else None
                )
            report["configs"][name] = entry
            rows.append((name, entry))
            print(
                f"[{name}] {init['params']:,} parameters, {mf['total'] / 1e9:.2f} GFLOP of matmuls per step"
            )
            for f, r in results.items():
                print(
                    f"[{name}] {f:21s} {r['tokens_per_s']:8.0f} tok/s ({r['median_s']:.3f} s/step)"
                    + (f", {r['ratio_vs']} / this {r['ratio']:.3f}" if "ratio" in r else "")
                    + f"; {r['model_gflops']:.1f} GF/s = {r['ceiling_fraction'] * 100:.1f}% of {r['prec']} ceiling"
                    + (f"; compile {r['compile_s']:.1f} s" if r["compile_s"] is not None else "")
                    + f"; loss0 {r['losses'][0]:.5f}; other processes {r['foreign_cpu_share'] * 100:.1f}% of the "
                    f"CPUs, clean steps {r['clean_steps']}/{len(r['times_s'])}",
                    flush=True,
                )
            if prof:
                print_profile(name, prof, mf)
            for f, r in results.items():
                if r.get("profile") and FRAMEWORKS[f]["worker"] == "torch":
                    p = r["profile"]
                    print(
                        f"  {f}: matmul ops {fmt(p['matmul_share'] and p['matmul_share'] * 100, 1)}% of op self "
                        f"time, attention {fmt(p['attention_share'] and p['attention_share'] * 100, 1)}%; top: "
                        + ", ".join(f"{k} {v:.0f} ms" for k, v in p["top_self_ms"][:6])
                    )
    finally:
        tmp.cleanup()
    report["wall_s"] = time.perf_counter() - t_start
    report["load_end"] = loadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        print()
        print(describe(mach, ceil_gf, args.ncpu))
        print(
            f"GPT-2 training step on the CPU ({args.ncpu} threads), median of {steps} steps after {warmup} "
            f"warmup; load {report['load_start']:.2f} -> {report['load_end']:.2f}"
        )
        hdr = (
            f"{'config':12s} {'framework':20s} {'prec':4s} {'tok/s':>8s} {'s/step':>7s} {'ratio':>6s} {'GF/s':>6s} "
            f"{'%ceil':>5s} {'compile s':>9s} {'step MB':>7s} {'max MB':>6s} {'rt peak MB':>10s} {'GEMM%':>6s} "
            f"{'GEMM GF/s':>9s} {'busy%':>6s} {'clean':>5s}"
        )
        print(hdr)
        for name, e in rows:
            pr = e["profile"] or {}
            for f, r in e["frameworks"].items():
                rs = FRAMEWORKS[f]["worker"] == "gpt2rs"
                traced = f == "gpt2rs"  # the traced run is fp32 gpt2rs
                gs = pr.get("gemm_share_of_busy") if traced else None
                print(
                    f"{name:12s} {f:20s} {r['prec']:4s} {r['tokens_per_s']:8.0f} {r['median_s']:7.3f} "
                    f"{fmt(r.get('ratio'), 3):>6s} {r['model_gflops']:6.1f} {r['ceiling_fraction'] * 100:5.1f} "
                    f"{fmt(r['compile_s'], 1):>9s} {fmt(r['step_peak_rss_mb'], 0):>7s} {r['peak_rss_mb']:6.0f} "
                    f"{fmt(r['runtime_nodes'][0]['peak_mb'] if rs else None, 0):>10s} "
                    f"{fmt(gs * 100 if gs is not None else None, 1):>6s} "
                    f"{fmt(pr.get('gemm_gflops_per_worker') if traced else None, 1):>9s} "
                    f"{fmt(r['busy_share'] * 100 if rs else None, 1):>6s} "
                    f"{str(r['clean_steps']) + '/' + str(len(r['times_s'])):>5s}"
                )
        print(
            "ratio = gpt2rs tokens/s / this one's (fp32 runs against gpt2rs, bf16 runs against gpt2rs-bf16; "
            "target >= 1.25); GF/s = analytic matmul flops per step (full T^2 attention) / median step time; "
            "%ceil = that as a share of the machine's GEMM ceiling for the run's precision (prec); "
            "compile s = first step minus the median step (torch.compile, round 1, not in the medians); step MB = "
            "RSS high-water of the timed steps minus RSS after imports; max MB = ru_maxrss minus RSS after "
            "imports; rt peak = gpt2rs runtime's peak tile bytes (host node); GEMM% = share of gpt2rs worker busy "
            "time in GEMM tasks (gemm and the LM head's lm_head_ce_*, which carry the cross-entropy; traced "
            "fp32 run); GEMM GF/s = per worker while in them; busy% = workers' busy "
            "share of the step; clean = steps during which other processes used < 5% of the CPUs."
        )
        for name, e in rows:
            tv = next((r for r in e["frameworks"].values() if "torch" in r), None)
            print(
                f"  {name}: tiles {e['tiles']}"
                + (f"; torch {tv['torch']}" if tv else "")
                + "".join(
                    f" / transformers {r['transformers']} attn={r['attn']}"
                    for f, r in e["frameworks"].items()
                    if f == "hf"
                )
                + (f" adamw={tv['adamw']}" if tv else "")
            )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
