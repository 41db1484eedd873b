"""Training-step throughput of gpt2rs against HF transformers + torch.optim.AdamW
on the CPU, in the same run.

A step is zero_grad + forward/backward (mean next-token cross-entropy, labels =
input_ids) + one AdamW step; for gpt2rs the step ends with `rt.wait_all()`.
Both models start from the same random weights (gpt2rs `from_config(seed=0)`
saved with `save_pretrained` and loaded by both), dropout is off (pdrop 0),
torch uses its default sdpa attention and `torch.set_num_threads(ncpu)`.

Per config it reports tokens/s of each (median of --steps steps after
--warmup), the ratio gpt2rs / torch (target >= 1.25), peak memory of each
(every framework runs in its own subprocess: ru_maxrss minus the RSS after
imports, and the RSS high-water mark of the timed steps alone), the gpt2rs
runtime's own peak bytes per memory node, the workers' busy share, and --
from a traced extra run -- the time share of each codelet, GEMM GFLOP/s and
the GEMM tile shapes (told apart by their flop count). For torch, the share
of time in matmul ops comes from torch.profiler over one step.

Shared machines: each step records the CPU time other processes took
(/proc/stat); steps during which they used >= 5% of the CPUs are left out
of the medians (all steps are kept if none was clean; the counts are
printed). --wait-quiet S waits for an idle machine before each measured
subprocess, --rounds N alternates the two frameworks N times and keeps each
one's fastest run.

Configs: `small` = GPT-2 small (124M; B=4, T=256); `4x256` = 4 layers x 256
wide, n_head 4, vocab 50257 (B=8, T=256).

Prints a table last and writes bench-out/train.json.

    python benches/bench_train.py [--quick] [--configs small,4x256]
    python benches/bench_train.py --sweep --configs 4x256      # gpt2rs tilings only
    python benches/bench_train.py --configs small --tiles "mb=1,seq=128,hid=768,inner=768,heads=12,vocab=8192"

Tiling strings: comma-separated key=value with keys mb (minibatch_size_tile),
seq, hid, inner, heads, vocab (an int, `none` for untiled or `auto` for the
library's default) and sched (eager / dmda); keys left out take the
library's default tiling.
"""

from __future__ import annotations

import argparse
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

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "B": 4, "T": 256},
    "4x256": {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 50257, "B": 8, "T": 256},
    # One long sequence, and GPT-2 medium at B=1: few row tiles per worker.
    "small-1x1024": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257, "B": 1, "T": 1024},
    "medium-1x256": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257, "B": 1, "T": 256},
}

# The tilings the bench runs unless --tiles says otherwise: None = the
# library's default (model/autotile.rs: cut from the shapes and the CPU
# workers), "none" in a --tiles string = untiled (-1). On a 2-core Zen 4 the
# sweep found one sequence per row tile, T, C, 4C and heads whole, and the
# vocabulary in 8192-wide tiles best at B=8, T=256 (within ~2 % of each
# other for row tiles of 256..512 tokens, inner 768..3072, heads 3..12;
# seq 64/128 and hidden 128/384 cost 5-20 %); the defaults follow that.
DEFAULT_TILES: dict[str, dict[str, Any]] = {
    name: {"mb": None, "seq": None, "hid": None, "inner": None, "heads": None, "vocab": None, "sched": "eager"}
    for name in ("small", "4x256", "small-1x1024", "medium-1x256")
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

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


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
            out[k] = -1 if v.lower() in ("none", "-1") else None if v.lower() in ("", "auto") else int(v)
        else:
            raise SystemExit(f"unknown tile key {k!r} in {s!r} (keys: {', '.join(TILE_KEYS)}, sched)")
    return out


def tiles_str(t: dict[str, Any]) -> str:
    def show(v: Any) -> str:
        return "auto" if v is None else "none" if v == -1 else str(v)

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


def clean_median(times: list[float], foreign: list[float], limit: float = 0.05) -> tuple[float, int]:
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


def model_flops(c: dict[str, Any]) -> dict[str, float]:
    """Matmul flops of one training step (forward + backward = 3 x forward):
    the four linear layers per block, the tied LM head, and causal attention
    (QK^T and PV over the lower triangle, i.e. half the square)."""
    L, C, V, B, T = c["n_layer"], c["n_embd"], c["vocab_size"], c["B"], c["T"]
    F = 4 * C
    tok = B * T
    linear = 2 * tok * L * (3 * C * C + C * C + 2 * C * F)
    head = 2 * tok * C * V
    attn = L * 2 * B * T * T * C  # (2 matmuls x 2 flops x T^2/2 x C)
    return {"linear": 3.0 * linear, "lm_head": 3.0 * head, "attention": 3.0 * attn,
            "total": 3.0 * (linear + head + attn)}


def hf_config(c: dict[str, Any]) -> dict[str, Any]:
    return {
        "n_layer": c["n_layer"], "n_embd": c["n_embd"], "n_head": c["n_head"], "vocab_size": c["vocab_size"],
        "n_positions": 1024, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
    }


def batches(c: dict[str, Any], n: int) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(1234)
    return [rng.integers(0, c["vocab_size"], size=(c["B"], c["T"]), dtype=np.int64) for _ in range(n)]


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
    model = gpt2rs.GPT2LMHead.from_pretrained(spec["dir"], dtype="fp32", runtime=rt, **tiles)
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
            phases.append({"zero_grad": t1 - t0, "fwd_bwd_call": t2 - t1, "opt_submit": t3 - t2, "wait_all": t4 - t3})
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
        "runtime_nodes": [{"name": n["name"], "peak_mb": n["peak_bytes"] / 2**20, "used_mb": n["used_bytes"] / 2**20}
                          for n in st["nodes"]],
        "nworkers": nw,
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
    import torch
    import transformers

    torch.set_num_threads(spec["ncpu"])
    base_kb = rss_kb()
    c = spec["cfg"]
    model = transformers.GPT2LMHeadModel.from_pretrained(spec["dir"], attn_implementation=spec["attn"])
    model.train()  # dropout probabilities are 0
    kw: dict[str, Any] = {}
    if spec["adamw"] in ("foreach", "fused"):
        kw[spec["adamw"]] = True
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, **kw)
    data = [torch.from_numpy(b) for b in batches(c, 4)]
    setup_kb = rss_kb()
    hwm_ok = reset_hwm()
    times, losses, foreign, faults = [], [], [], []

    def step(ids: Any) -> float:
        opt.zero_grad(set_to_none=True)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        opt.step()
        return float(out.loss.detach())

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
    out: dict[str, Any] = {
        "times_s": times,
        "median_s": clean_median(times, foreign)[0],
        "clean_steps": clean_median(times, foreign)[1],
        "losses": losses,
        "foreign_cpu_share": statistics.median(foreign),
        "minor_faults_per_step": statistics.median(faults),
        "foreign_per_step": foreign,
        "peak_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kb) / 1024,
        "step_peak_rss_mb": (hwm_kb() - base_kb) / 1024 if hwm_ok else None,
        "setup_rss_mb": (setup_kb - base_kb) / 1024,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "attn": spec["attn"],
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


def analyse_trace(path: Path, windows: list[tuple[float, float]], nw: int, c: dict[str, Any],
                  t: dict[str, Any]) -> dict[str, Any]:
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
        if e["name"] == "gemm":
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
        inside = [(e["ts"], e["ts"] + e["dur"]) for e in ev if a <= e["ts"] and e["ts"] + e["dur"] <= b + 1]
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
        ({"name": k, "count": int(v[0]), "time_s": v[1] / 1e6, "share_of_busy": v[1] / busy_total if busy_total else 0,
          "share_of_wall": v[1] / (nw * span) if span else 0,
          "gflops": v[2] / v[1] / 1e3 if v[1] and v[2] else None} for k, v in per.items()),
        key=lambda d: -d["time_s"],
    )
    gemm_shapes = sorted(
        ({"flops": f, "count": int(v[0]), "time_s": v[1] / 1e6, "gflops": f * v[0] / v[1] / 1e3 if v[1] else None,
          "mean_ms": v[1] / v[0] / 1e3, "shapes": names.get(round(f), "?")} for f, v in gemm_by_flops.items()),
        key=lambda d: -d["time_s"],
    )
    g = per.get("gemm", [0, 0.0, 0.0])
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
        for kind, f, shape in (("fwd", m * n * k, f"{m}x{n}x{k}"), ("dX", m * k * n, f"{m}x{k}x{n}"),
                               ("dW", k * n * m, f"{k}x{n}x{m}")):
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
    return {f: "; ".join(f"{layer} " + "/".join(dict.fromkeys(v)) for layer, v in d.items())
            for f, d in out.items()}


WORKERS = {"init": worker_init, "gpt2rs": worker_gpt2rs, "torch": worker_torch}


# --------------------------------------------------------------------------
# parent


QUIET_WAIT_S = 0.0


def run_worker(kind: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    if QUIET_WAIT_S > 0 and kind != "init":
        wait_quiet(QUIET_WAIT_S)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if kind == "torch":
        env.setdefault("OMP_NUM_THREADS", str(spec["ncpu"]))
    p = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--_worker", kind, "--_spec", json.dumps(spec)],
        capture_output=True, text=True, env=env, timeout=timeout, check=False,
    )
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{kind} worker failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")


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
    print(f"\n[{name}] gpt2rs profile (traced run, {pr['steps']} steps, {pr['wall_s_per_step']:.3f} s/step, "
          f"{pr['tasks_per_step']:.0f} tasks/step)")
    print(f"  workers busy {pr['busy_share'] * 100:.1f}% of wall (per worker "
          + ", ".join(f"{b * 100:.1f}%" for b in pr["worker_busy_share"])
          + "); time with 0/1/2.. workers busy: "
          + " / ".join(f"{x * 100:.1f}%" for x in pr["concurrency_share"]))
    lead = statistics.median(x for x, _ in pr["lead_tail_ms"]) if pr["lead_tail_ms"] else float("nan")
    tail = statistics.median(y for _, y in pr["lead_tail_ms"]) if pr["lead_tail_ms"] else float("nan")
    print(f"  idle before the first task {lead:.1f} ms, after the last {tail:.1f} ms per step; other processes used "
          + ", ".join(f"{f * 100:.1f}%" for f in pr.get("foreign_per_step", [])) + " of the CPUs per step")
    print(f"  GEMM: {pr['gemm_share_of_busy'] * 100:.1f}% of busy time, {pr['gemm_share_of_wall'] * 100:.1f}% of "
          f"worker wall time; {fmt(pr['gemm_gflops_per_worker'], 1)} GFLOP/s per worker while running, "
          f"{fmt(pr['gemm_gflops_wall'], 1)} GFLOP/s over the step")
    print(f"  {'codelet':24s} {'tasks':>7s} {'time_s':>8s} {'%busy':>6s} {'GFLOP/s':>8s}")
    for d in pr["codelets"][:14]:
        print(f"  {d['name']:24s} {d['count']:7d} {d['time_s']:8.3f} {d['share_of_busy'] * 100:6.1f} "
              f"{fmt(d['gflops'], 1):>8s}")
    print(f"  {'GEMM tile shapes (by flops)':60s} {'tasks':>6s} {'time_s':>7s} {'ms/task':>8s} {'GFLOP/s':>8s}")
    for d in pr["gemm_shapes"][:10]:
        print(f"  {d['shapes'][:60]:60s} {d['count']:6d} {d['time_s']:7.3f} {d['mean_ms']:8.2f} "
              f"{fmt(d['gflops'], 1):>8s}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer steps (1 warmup + 3), no traced run for small")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per framework (default 5, quick 3)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2, quick 1)")
    ap.add_argument("--configs", default="small,4x256", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--rounds", type=int, default=1,
                    help="alternate gpt2rs and torch runs this many times; keep each one's fastest (loaded machines)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each measured subprocess wait up to S seconds for the other processes to go quiet "
                         "(steps during which others used >= 5%% of the CPUs are left out of the median anyway)")
    ap.add_argument("--ncpu", type=int, default=2, help="gpt2rs CPU workers and torch threads")
    ap.add_argument("--tiles", default="", help="gpt2rs tiling over the config default, e.g. 'mb=1,seq=128,sched=dmda'")
    for k, long in TILE_KEYS.items():
        ap.add_argument(f"--{long.replace('_', '-')}", dest=f"tile_{k}", default=None,
                        help=f"gpt2rs {long} (int or none); overrides --tiles")
    ap.add_argument("--scheduler", choices=["eager", "dmda"], default=None)
    ap.add_argument("--attn", default="sdpa", help="torch attention implementation (sdpa, eager)")
    ap.add_argument("--adamw", default="default", choices=["default", "foreach", "fused"],
                    help="torch.optim.AdamW implementation")
    ap.add_argument("--no-trace", action="store_true", help="skip the traced gpt2rs run (codelet breakdown)")
    ap.add_argument("--no-torch-profile", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="time gpt2rs only, over the SWEEP tilings")
    ap.add_argument("--sweep-tiles", default=None, help="';'-separated tilings for --sweep instead of SWEEP")
    ap.add_argument("--keep-trace", default=None, help="directory to keep the traces in")
    ap.add_argument("--out", default="bench-out/train.json")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        res = WORKERS[args._worker](json.loads(args._spec))
        print("RESULT " + json.dumps(res), flush=True)
        return

    global QUIET_WAIT_S
    QUIET_WAIT_S = args.wait_quiet
    steps = args.steps if args.steps is not None else (3 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    for n in names:
        if n not in CONFIGS:
            raise SystemExit(f"unknown config {n!r} (one of {', '.join(CONFIGS)})")
    overrides = ",".join(
        [args.tiles]
        + [f"{k}={getattr(args, 'tile_' + k)}" for k in TILE_KEYS if getattr(args, "tile_" + k) is not None]
        + ([f"sched={args.scheduler}"] if args.scheduler else [])
    )
    report: dict[str, Any] = {"ncpu": args.ncpu, "steps": steps, "warmup": warmup, "load_start": loadavg(),
                              "configs": {}}
    rows = []
    tmp = tempfile.TemporaryDirectory(prefix="gpt2rs-bench-train-")
    t_start = time.perf_counter()
    try:
        for name in names:
            c = CONFIGS[name]
            wdir = os.path.join(tmp.name, name)
            init = run_worker("init", {"cfg": c, "dir": wdir, "ncpu": args.ncpu}, 600)
            base = parse_tiles(overrides, DEFAULT_TILES[name])
            mf = model_flops(c)
            tok = c["B"] * c["T"]
            spec = {"cfg": c, "dir": wdir, "ncpu": args.ncpu, "steps": steps, "warmup": warmup}
            entry: dict[str, Any] = {"config": c, "params": init["params"], "model_flops_per_step": mf}
            if args.sweep:
                tilings = args.sweep_tiles.split(";") if args.sweep_tiles is not None else SWEEP.get(name, [""])
                sweep = []
                for s in tilings:
                    t = parse_tiles(s, base)
                    load = loadavg()
                    r = run_worker("gpt2rs", {**spec, "tiles": t}, 900)
                    tps = tok / r["median_s"]
                    sweep.append({"tiles": tiles_str(t), "tokens_per_s": tps, "median_s": r["median_s"],
                                  "busy_share": r["busy_share"], "tasks_per_step": r["tasks_per_step"],
                                  "step_peak_rss_mb": r["step_peak_rss_mb"], "load": load,
                                  "foreign_cpu_share": r["foreign_cpu_share"],
                                  "minor_faults_per_step": r["minor_faults_per_step"], "times_s": r["times_s"]})
                    print(f"[{name}] {tiles_str(t):70s} {tps:8.0f} tok/s  {r['median_s']:.3f} s  busy "
                          f"{r['busy_share'] * 100:5.1f}%  {r['tasks_per_step']:6.0f} tasks  "
                          f"rss {fmt(r['step_peak_rss_mb'], 0)} MB  {r['minor_faults_per_step'] / 1e3:.0f}k faults  other "
                          f"{r['foreign_cpu_share'] * 100:4.1f}% cpu, {r['clean_steps']}/{steps} clean steps", flush=True)
                entry["sweep"] = sweep
                report["configs"][name] = entry
                continue
            load0 = loadavg()
            g = tr = None
            round_s: dict[str, list[float]] = {"gpt2rs": [], "torch": []}
            for rnd in range(args.rounds):
                # alternate the frameworks so that a burst of load hits both; keep each one's best round
                g1 = run_worker("gpt2rs", {**spec, "tiles": base}, 900)
                t1 = run_worker("torch", {**spec, "attn": args.attn, "adamw": args.adamw,
                                          "profile": not args.no_torch_profile and rnd == 0}, 900)
                round_s["gpt2rs"].append(g1["median_s"])
                round_s["torch"].append(t1["median_s"])
                if g is None or g1["median_s"] < g["median_s"]:
                    g = g1
                if tr is None or t1["median_s"] < tr["median_s"]:
                    tr = {**t1, "profile": t1.get("profile") or tr.get("profile")} if tr else t1
            assert g is not None and tr is not None
            load1 = loadavg()
            prof = None
            if not args.no_trace and not (args.quick and name == "small"):
                tspec = {**spec, "tiles": base, "trace": True, "steps": 3, "warmup": 2,
                         "trace_path": os.path.join(args.keep_trace or tmp.name, f"trace-{name}.json"),
                         "keep_trace": bool(args.keep_trace)}
                if args.keep_trace:
                    os.makedirs(args.keep_trace, exist_ok=True)
                prof = run_worker("gpt2rs", tspec, 900)["profile"]
            g_tps, t_tps = tok / g["median_s"], tok / tr["median_s"]
            entry.update({
                "tiles": tiles_str(base),
                "gpt2rs": {**g, "tokens_per_s": g_tps, "model_gflops": mf["total"] / g["median_s"] / 1e9},
                "torch": {**tr, "tokens_per_s": t_tps, "model_gflops": mf["total"] / tr["median_s"] / 1e9},
                "ratio": g_tps / t_tps,
                "mem_ratio": (g["step_peak_rss_mb"] / tr["step_peak_rss_mb"]) if g["step_peak_rss_mb"] and
                tr["step_peak_rss_mb"] else None,
                "load": [load0, load1],
                "rounds_median_s": round_s,
                "profile": prof,
            })
            report["configs"][name] = entry
            rows.append((name, entry))
            print(f"[{name}] gpt2rs {g_tps:.0f} tok/s ({g['median_s']:.3f} s/step), torch {t_tps:.0f} tok/s "
                  f"({tr['median_s']:.3f} s/step), ratio {g_tps / t_tps:.3f}; loss0 {g['losses'][0]:.5f} vs "
                  f"{tr['losses'][0]:.5f}; other processes used {g['foreign_cpu_share'] * 100:.1f}% / "
                  f"{tr['foreign_cpu_share'] * 100:.1f}% of the CPUs (clean steps {g['clean_steps']}/{steps}, "
                  f"{tr['clean_steps']}/{steps})", flush=True)
            if prof:
                print_profile(name, prof, mf)
            if tr.get("profile"):
                p = tr["profile"]
                print(f"  torch: matmul ops {p['matmul_share'] * 100:.1f}% of op self time, attention "
                      f"{p['attention_share'] * 100:.1f}%; top: "
                      + ", ".join(f"{k} {v:.0f} ms" for k, v in p["top_self_ms"][:6]))
    finally:
        tmp.cleanup()
    report["wall_s"] = time.perf_counter() - t_start
    report["load_end"] = loadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if rows:
        print(f"\nGPT-2 training step on the CPU ({args.ncpu} threads), median of {steps} steps after {warmup} "
              f"warmup; load {report['load_start']:.2f} -> {report['load_end']:.2f}")
        hdr = (f"{'config':7s} {'gpt2rs tok/s':>12s} {'torch tok/s':>11s} {'ratio':>6s} {'rs GF/s':>8s} "
               f"{'pt GF/s':>8s} {'rs step MB':>10s} {'pt step MB':>10s} {'rs max MB':>9s} {'pt max MB':>9s} "
               f"{'rt peak MB':>10s} {'GEMM%':>6s} {'GEMM GF/s':>9s} {'busy%':>6s}")
        print(hdr)
        for name, e in rows:
            g, tr, pr = e["gpt2rs"], e["torch"], e["profile"] or {}
            gs = pr.get("gemm_share_of_busy")
            print(f"{name:7s} {g['tokens_per_s']:12.0f} {tr['tokens_per_s']:11.0f} {e['ratio']:6.3f} "
                  f"{g['model_gflops']:8.1f} {tr['model_gflops']:8.1f} {fmt(g['step_peak_rss_mb'], 0):>10s} "
                  f"{fmt(tr['step_peak_rss_mb'], 0):>10s} {g['peak_rss_mb']:9.0f} {tr['peak_rss_mb']:9.0f} "
                  f"{g['runtime_nodes'][0]['peak_mb']:10.0f} {fmt(gs * 100 if gs is not None else None, 1):>6s} "
                  f"{fmt(pr.get('gemm_gflops_per_worker'), 1):>9s} {g['busy_share'] * 100:6.1f}")
        print("ratio = gpt2rs tokens/s / torch tokens/s (target >= 1.25); GF/s = model matmul flops per step / "
              "step time; step MB = RSS high-water of the timed steps minus RSS after imports; max MB = ru_maxrss "
              "minus RSS after imports; rt peak = gpt2rs runtime's peak tile bytes (host node); GEMM% = share of "
              "gpt2rs worker busy time in gemm tasks (traced run); GEMM GF/s = per worker while in gemm; busy% = "
              "workers' busy share of the step.")
        for name, e in rows:
            print(f"  {name}: tiles {e['tiles']}; torch {e['torch']['torch']} / transformers "
                  f"{e['torch']['transformers']} attn={e['torch']['attn']} adamw={e['torch']['adamw']}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
