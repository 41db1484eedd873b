"""GPT-2 124M training throughput on one GPU: gpt2rs against a nanoGPT-style
PyTorch model (eager and torch.compile), in the same run, on the same GPU.

Config: n_layer 12, n_head 12, n_embd 768, vocab 50257 (not padded), T 1024,
dropout off, random token ids (no dataset, no network). Modes:
  bf16  gpt2rs dtype="bf16" (bf16 activations and weights, fp32 master weights
        and AdamW state); torch: fp32 parameters under
        torch.autocast(dtype=torch.bfloat16)
  tf32  gpt2rs dtype="tf32" (fp32 storage, TF32 GEMMs); torch: fp32 with
        torch.backends.{cuda.matmul,cudnn}.allow_tf32 = True
A step is zero_grad + forward + backward (mean next-token cross-entropy) +
AdamW(lr 6e-4, betas (0.9, 0.95), weight decay 0.1 on every parameter; torch
uses fused=True). Timing: --warmup untimed steps, then --steps steps, each
between torch.cuda.synchronize() calls (torch) or ending with
Runtime.wait_all() (gpt2rs); the median step is reported.

MFU = tokens/s x flops per token / peak, with flops per token
6 N + 12 L C T (PaLM's appendix B, nanoGPT's estimate_mfu): N = parameters
without the position embeddings (the tied LM head counted once), and the
attention term counts the full T x T score matrix, not the causal half.
Peaks default to H100 SXM dense: bf16 989 TFLOP/s, tf32 494 TFLOP/s.

Every run is its own subprocess with a timeout (gpt2rs per mode and batch
size; torch per mode and eager/compile), so an out-of-memory error, a crash
or a hang of one is a row in the table and the others still run. Runs go in
order of importance (gpt2rs and torch eager first, torch.compile last) and
--budget-s stops starting new ones when the time is spent.

    python benches/bench_gpu.py --json bench-out/bench_gpu.json
    python benches/bench_gpu.py --modes bf16 --batch-sizes 16 --impls gpt2rs,eager
    python benches/bench_gpu.py --device cpu --tiny      # a check of the script itself

Prints a table last and writes the JSON report (--json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

GPT2_124M = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257, "T": 1024}
TINY = {"n_layer": 2, "n_head": 4, "n_embd": 64, "vocab_size": 512, "T": 64}
PEAK_TFLOPS = {"bf16": 989.0, "tf32": 494.0}  # H100 SXM, dense

# gpt2rs tiling on a GPU: one CUDA worker drains one stream, so more tiles
# only add launches and task overhead; a few big tiles keep the GEMMs large.
# Rows are cut into blocks of 8 sequences, every other axis is whole.
DEFAULT_TILES = {"mb": 8, "seq": None, "hid": None, "inner": None, "heads": None, "vocab": None}
TILE_KEYS = {
    "mb": "minibatch_size_tile",
    "seq": "seq_len_tile",
    "hid": "hidden_size_tile",
    "inner": "intermediate_size_tile",
    "heads": "n_head_tile",
    "vocab": "vocab_tile",
}
IMPLS = ("gpt2rs", "eager", "compile")
IMPL_NAMES = {"gpt2rs": "gpt2rs", "eager": "torch eager", "compile": "torch.compile"}


def parse_tiles(s: str) -> dict[str, int | None]:
    out: dict[str, int | None] = dict(DEFAULT_TILES)
    for part in filter(None, (p.strip() for p in s.split(","))):
        k, _, v = part.partition("=")
        k, v = k.strip(), v.strip()
        if k not in TILE_KEYS:
            raise SystemExit(f"unknown tile key {k!r} (keys: {', '.join(TILE_KEYS)})")
        out[k] = None if v.lower() in ("none", "-1", "") else int(v)
    return out


def model_params(c: dict[str, Any]) -> dict[str, int]:
    L, C, V, T = c["n_layer"], c["n_embd"], c["vocab_size"], c["T"]
    block = 2 * 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    total = V * C + T * C + L * block + 2 * C
    return {"total": total, "non_embedding": total - T * C}


def flops_per_token(c: dict[str, Any]) -> float:
    """6 N + 12 L C T (N without the position embeddings)."""
    return 6.0 * model_params(c)["non_embedding"] + 12.0 * c["n_layer"] * c["n_embd"] * c["T"]


def token_batches(c: dict[str, Any], B: int, n: int, seed: int = 1234) -> list[tuple[Any, Any]]:
    """n batches of (inputs, next-token targets), int64 [B, T], random ids."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = rng.integers(0, c["vocab_size"], size=(B, c["T"] + 1), dtype=np.int64)
        out.append((np.ascontiguousarray(x[:, :-1]), np.ascontiguousarray(x[:, 1:])))
    return out


def summarize(
    times: list[float], losses: list[float], c: dict[str, Any], B: int, peak: float
) -> dict[str, Any]:
    med = statistics.median(times)
    tps = B * c["T"] / med
    return {
        "status": "ok" if all(math.isfinite(x) for x in losses) else "non-finite loss",
        "step_s": times,
        "step_s_median": med,
        "step_s_mean": statistics.fmean(times),
        "tokens_per_s": tps,
        "mfu": tps * flops_per_token(c) / peak,
        "losses": losses,
    }


# --------------------------------------------------------------------------
# gpt2rs worker (one mode, one batch size)


def worker_gpt2rs(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import gpt2rs

    c, B, mode = spec["cfg"], spec["B"], spec["mode"]
    row: dict[str, Any] = {
        "impl": "gpt2rs",
        "mode": mode,
        "B": B,
        "tiles": spec["tiles"],
        "gpt2rs": gpt2rs.__version__,
    }
    t_setup = time.perf_counter()
    if spec["device"] == "cuda":
        rt = gpt2rs.Runtime(
            ncpu=1,
            ncuda=1,
            scheduler=spec["sched"],
            restrict=None if spec["restrict"] == "none" else spec["restrict"],
        )
    else:
        rt = gpt2rs.Runtime(ncpu=spec["ncpu"], scheduler=spec["sched"])
    try:
        hf = {
            "n_layer": c["n_layer"],
            "n_head": c["n_head"],
            "n_embd": c["n_embd"],
            "vocab_size": c["vocab_size"],
            "n_positions": c["T"],
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
        }
        tiles = {
            TILE_KEYS[k]: (None if v is None else min(v, B) if k == "mb" else v)
            for k, v in spec["tiles"].items()
        }
        model = gpt2rs.GPT2LMHead.from_config(hf, seed=0, dtype=mode, runtime=rt, **tiles)
        opt = gpt2rs.AdamW(model, lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1)
        data = token_batches(c, B, 2)
        rt.wait_all()
        row["setup_s"] = time.perf_counter() - t_setup
        times, losses, busy, tasks = [], [], [], []
        for i in range(spec["warmup"] + spec["steps"]):
            ids, tg = data[i % len(data)]
            s0 = rt.stats()
            t0 = time.perf_counter()
            model.zero_grad()
            loss = model.forward_backward(ids, targets=tg)
            opt.step()
            rt.wait_all()
            dt = time.perf_counter() - t0
            s1 = rt.stats()
            losses.append(loss)
            if i >= spec["warmup"]:
                times.append(dt)
                dev = [w for w in s1["workers"] if w["kind"] == spec["device"]] or s1["workers"]
                ids_ = {w["id"] for w in dev}
                b = sum(w["busy_s"] for w in s1["workers"] if w["id"] in ids_) - sum(
                    w["busy_s"] for w in s0["workers"] if w["id"] in ids_
                )
                busy.append(b / (len(dev) * dt))
                tasks.append(s1["tasks_submitted"] - s0["tasks_submitted"])
            print(
                f"  gpt2rs {mode} B={B} step {i}: {dt * 1e3:.1f} ms, loss {loss:.4f}",
                file=sys.stderr,
                flush=True,
            )
        row.update(summarize(times, losses, c, B, spec["peak"]))
        st = rt.stats()
        row["tasks_per_step"] = statistics.median(tasks)
        row["device_busy_share"] = statistics.median(busy)
        row["workers"] = [
            {k: w[k] for k in ("name", "kind", "tasks", "busy_s")} for w in st["workers"]
        ]
        node = [n for n in st["nodes"] if n["kind"] == spec["device"]] or st["nodes"][:1]
        row["peak_mem_gb"] = node[0]["peak_bytes"] / 1e9
    finally:
        rt.shutdown()
    return [row]


# --------------------------------------------------------------------------
# torch worker (one mode, eager or compile, every batch size)


def torch_model(c: dict[str, Any]) -> Any:
    """nanoGPT-style GPT-2: pre-LayerNorm blocks, fused QKV, SDPA causal
    attention, tanh GELU, LM head tied to the token embedding."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    C, H, L, V, T = c["n_embd"], c["n_head"], c["n_layer"], c["vocab_size"], c["T"]

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, t, _ = x.shape
            q, k, v = (
                z.view(b, t, H, C // H).transpose(1, 2) for z in self.c_attn(x).split(C, dim=2)
            )
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).reshape(b, t, C))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(C), Attention(), nn.LayerNorm(C)
            self.c_fc, self.c_proj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.ln_1(x))
            return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
            self.h = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(C)
            self.lm_head = nn.Linear(C, V, bias=False)
            self.lm_head.weight = self.wte.weight
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                elif "ln_" in name:
                    nn.init.ones_(p)
                else:  # residual projections scaled as in GPT-2
                    std = 0.02 / math.sqrt(2 * L) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)

        def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            pos = torch.arange(idx.shape[1], device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for blk in self.h:
                x = blk(x)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, V), targets.view(-1))

    return GPT()


def worker_torch(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import contextlib

    import torch

    c, mode, device, impl = spec["cfg"], spec["mode"], spec["device"], spec["impl"]
    if mode == "tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if device == "cpu":
        torch.set_num_threads(spec["ncpu"])
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else None

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    rows = []
    for B in spec["batch_sizes"]:
        row: dict[str, Any] = {
            "impl": impl,
            "mode": mode,
            "B": B,
            "torch": torch.__version__,
            "gpu": gpu,
        }
        model = opt = fwd = None
        try:
            t_setup = time.perf_counter()
            torch.manual_seed(0)
            model = torch_model(c).to(device)
            model.train()
            opt = torch.optim.AdamW(
                model.parameters(),
                lr=6e-4,
                betas=(0.9, 0.95),
                weight_decay=0.1,
                **({"fused": True} if device == "cuda" else {}),
            )
            fwd = torch.compile(model, dynamic=False) if impl == "compile" else model
            ctx = (
                torch.autocast(device_type=device, dtype=torch.bfloat16)
                if mode == "bf16"
                else contextlib.nullcontext()
            )
            data = [
                (torch.from_numpy(x).to(device), torch.from_numpy(y).to(device))
                for x, y in token_batches(c, B, 2)
            ]
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times, losses = [], []
            for i in range(spec["warmup"] + spec["steps"]):
                x, y = data[i % len(data)]
                sync()
                t0 = time.perf_counter()
                with ctx:
                    loss = fwd(x, y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync()
                dt = time.perf_counter() - t0
                if i == 0:
                    row["setup_s"] = time.perf_counter() - t_setup  # includes compilation
                losses.append(float(loss.detach()))
                if i >= spec["warmup"]:
                    times.append(dt)
                print(
                    f"  {impl} {mode} B={B} step {i}: {dt * 1e3:.1f} ms, loss {losses[-1]:.4f}",
                    file=sys.stderr,
                    flush=True,
                )
            row.update(summarize(times, losses, c, B, spec["peak"]))
            if device == "cuda":
                row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
        except Exception as e:
            row.update({"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]})
        del model, opt, fwd
        if device == "cuda":
            torch.cuda.empty_cache()
        rows.append(row)
        print("RESULT " + json.dumps([row]), flush=True)
    return []


WORKERS = {"gpt2rs": worker_gpt2rs, "torch": worker_torch}


# --------------------------------------------------------------------------
# parent


def run_worker(
    kind: str, spec: dict[str, Any], timeout: float, expect: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Runs a worker subprocess; a row per expected result, failed or not."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--_worker",
        kind,
        "--_spec",
        json.dumps(spec),
    ]
    t0 = time.perf_counter()
    status, tail = None, ""
    try:
        p = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False
        )
        out, err, rc = p.stdout, p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or "")
        rc, status = None, f"timeout ({timeout:.0f} s)"
    got: dict[int, dict[str, Any]] = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            for r in json.loads(line[len("RESULT ") :]):
                got[r["B"]] = r
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("  ")]
    tail = "\n".join(lines[-15:])
    rows = []
    for e in expect:
        r = got.get(e["B"])
        if r is None:
            reason = status or f"exit code {rc}"
            r = {
                **e,
                "status": "failed" if status is None else "timeout",
                "error": f"{reason}: {tail[-2000:]}" if tail else reason,
            }
        r["wall_s"] = time.perf_counter() - t0
        rows.append(r)
        print(
            f"[{IMPL_NAMES[r['impl']]} {r['mode']} B={r['B']}] {r['status']}"
            + (
                f": {r['tokens_per_s']:.0f} tok/s, {r['step_s_median'] * 1e3:.1f} ms/step, MFU "
                f"{r['mfu'] * 100:.1f}%, loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}"
                if "tokens_per_s" in r
                else ""
            )
            + (f"\n    {r['error'][:600]}" if r.get("error") else ""),
            flush=True,
        )
    return rows


def fmt(x: Any, spec: str) -> str:
    width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
    return "-".rjust(int(width or 1)) if x is None else format(x, spec)


def print_table(report: dict[str, Any]) -> None:
    meta = report["meta"]
    modes = list(meta["peak_tflops"])
    rows = sorted(
        report["runs"], key=lambda r: (modes.index(r["mode"]), r["B"], IMPLS.index(r["impl"]))
    )
    print(
        f"\nGPT-2 {meta['params']['total'] / 1e6:.1f}M training on {meta.get('gpu') or meta['device']}: "
        f"T={meta['config']['T']}, median of {meta['steps']} steps after {meta['warmup']} warm-up; "
        f"MFU vs {', '.join(f'{m} {p:g}' for m, p in meta['peak_tflops'].items())} TFLOP/s, "
        f"{meta['flops_per_token'] / 1e6:.1f} MFLOP/token (6N + 12LCT)"
    )
    print(
        f"{'mode':5s} {'B':>3s} {'impl':14s} {'tok/s':>9s} {'ms/step':>8s} {'MFU':>6s} {'mem GB':>7s} "
        f"{'loss0':>6s} {'vs eager':>8s} {'vs compile':>10s}  status"
    )
    best = {(r["mode"], r["B"], r["impl"]): r.get("tokens_per_s") for r in rows}
    for r in rows:
        tps = r.get("tokens_per_s")
        e, cmp_ = best.get((r["mode"], r["B"], "eager")), best.get((r["mode"], r["B"], "compile"))
        err = [ln for ln in (r.get("error") or "").splitlines() if ln.strip()]
        st = (
            r["status"]
            if r["status"] == "ok" or not err
            else f"{r['status']}: {err[-1].strip()[:100]}"
        )
        mfu = f"{r['mfu'] * 100:5.1f}%" if r.get("mfu") is not None else "-".rjust(6)
        print(
            f"{r['mode']:5s} {r['B']:3d} {IMPL_NAMES[r['impl']]:14s} {fmt(tps, '9.0f')} "
            f"{fmt(r.get('step_s_median') and r['step_s_median'] * 1e3, '8.1f')} "
            f"{mfu} {fmt(r.get('peak_mem_gb'), '7.2f')} "
            f"{fmt(r['losses'][0] if r.get('losses') else None, '6.3f')} "
            f"{fmt(tps / e if tps and e else None, '8.2f')} "
            f"{fmt(tps / cmp_ if tps and cmp_ else None, '10.2f')}  {st}"
        )
    g = [r for r in rows if r["impl"] == "gpt2rs" and r.get("device_busy_share") is not None]
    if g:
        print(
            "gpt2rs: "
            + "; ".join(
                f"{r['mode']} B={r['B']} device busy {r['device_busy_share'] * 100:.0f}%, "
                f"{r['tasks_per_step']:.0f} tasks/step"
                for r in g
            )
        )
        print(
            f"gpt2rs tiles: {meta['tiles']}, scheduler {meta['scheduler']}, restrict {meta['restrict']}"
        )
    print(
        "mem GB: gpt2rs = its runtime's peak tile bytes on the device; torch = max_memory_allocated. "
        "vs eager / vs compile: tokens/s over torch's in the same mode and B."
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--modes", default="bf16,tf32", help="comma-separated: bf16, tf32")
    ap.add_argument(
        "--batch-sizes", default=None, help="comma-separated (default 16,32; --tiny 2,4)"
    )
    ap.add_argument(
        "--impls", default="gpt2rs,eager,compile", help="comma-separated: " + ", ".join(IMPLS)
    )
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps first (torch.compile compiles in the first)",
    )
    ap.add_argument(
        "--peak-bf16", type=float, default=PEAK_TFLOPS["bf16"], help="peak TFLOP/s for bf16 MFU"
    )
    ap.add_argument(
        "--peak-tf32", type=float, default=PEAK_TFLOPS["tf32"], help="peak TFLOP/s for tf32 MFU"
    )
    ap.add_argument(
        "--tiles",
        default="",
        help="gpt2rs tiling over the default "
        f"({','.join(f'{k}={v}' for k, v in DEFAULT_TILES.items())}); keys {', '.join(TILE_KEYS)}",
    )
    ap.add_argument(
        "--scheduler", default="eager", choices=["eager", "dmda"], help="gpt2rs scheduler"
    )
    ap.add_argument(
        "--restrict",
        default="cuda",
        choices=["cuda", "none"],
        help="gpt2rs: run every task on the GPU (cuda) or let CPU workers take some (none)",
    )
    ap.add_argument(
        "--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a check of this script"
    )
    ap.add_argument(
        "--tiny", action="store_true", help="a 2-layer 64-wide model, T=64 (with --device cpu)"
    )
    ap.add_argument(
        "--ncpu", type=int, default=os.cpu_count() or 1, help="CPU threads/workers for --device cpu"
    )
    ap.add_argument("--timeout-s", type=float, default=240.0, help="limit per subprocess")
    ap.add_argument(
        "--budget-s", type=float, default=1e9, help="start no new run after this many seconds"
    )
    ap.add_argument(
        "--json", default="bench-out/bench_gpu.json", help="where to write the JSON report"
    )
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_spec", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args._worker:
        rows = WORKERS[args._worker](json.loads(args._spec))
        if rows:
            print("RESULT " + json.dumps(rows), flush=True)
        return

    cfg = dict(TINY if args.tiny else GPT2_124M)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    impls = [i.strip() for i in args.impls.split(",") if i.strip()]
    for m in modes:
        if m not in PEAK_TFLOPS:
            raise SystemExit(f"unknown mode {m!r} (bf16, tf32)")
    for i in impls:
        if i not in IMPLS:
            raise SystemExit(f"unknown impl {i!r} ({', '.join(IMPLS)})")
    bs = args.batch_sizes or ("2,4" if args.tiny else "16,32")
    batch_sizes = [int(b) for b in bs.split(",") if b.strip()]
    peaks = {"bf16": args.peak_bf16, "tf32": args.peak_tf32}
    tiles = parse_tiles(args.tiles)
    base = {
        "cfg": cfg,
        "device": args.device,
        "steps": args.steps,
        "warmup": args.warmup,
        "ncpu": args.ncpu,
    }

    # (kind, spec, expected rows) in order of importance
    plan: list[tuple[str, dict[str, Any], list[dict[str, Any]]]] = []
    for m in modes:
        for B in batch_sizes:
            if "gpt2rs" in impls:
                plan.append(
                    (
                        "gpt2rs",
                        {
                            **base,
                            "mode": m,
                            "B": B,
                            "peak": peaks[m] * 1e12,
                            "tiles": tiles,
                            "sched": args.scheduler,
                            "restrict": args.restrict,
                        },
                        [{"impl": "gpt2rs", "mode": m, "B": B}],
                    )
                )
        if "eager" in impls:
            plan.append(
                (
                    "torch",
                    {
                        **base,
                        "mode": m,
                        "impl": "eager",
                        "batch_sizes": batch_sizes,
                        "peak": peaks[m] * 1e12,
                    },
                    [{"impl": "eager", "mode": m, "B": B} for B in batch_sizes],
                )
            )
    if "compile" in impls:
        for m in modes:
            plan.append(
                (
                    "torch",
                    {
                        **base,
                        "mode": m,
                        "impl": "compile",
                        "batch_sizes": batch_sizes,
                        "peak": peaks[m] * 1e12,
                    },
                    [{"impl": "compile", "mode": m, "B": B} for B in batch_sizes],
                )
            )

    t_start = time.perf_counter()
    runs: list[dict[str, Any]] = []
    for kind, spec, expect in plan:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            for e in expect:
                runs.append(
                    {
                        **e,
                        "status": "skipped",
                        "error": f"time budget ({args.budget_s:.0f} s) spent",
                    }
                )
            continue
        timeout = min(args.timeout_s, max(30.0, args.budget_s - elapsed + 60.0))
        runs.extend(run_worker(kind, spec, timeout, expect))

    gpu = next((r.get("gpu") for r in runs if r.get("gpu")), None)
    report = {
        "meta": {
            "device": args.device,
            "gpu": gpu,
            "config": cfg,
            "params": model_params(cfg),
            "flops_per_token": flops_per_token(cfg),
            "flops_formula": "6*N + 12*n_layer*n_embd*T, N without wpe",
            "peak_tflops": {m: peaks[m] for m in modes},
            "steps": args.steps,
            "warmup": args.warmup,
            "tiles": ",".join(f"{k}={v}" for k, v in tiles.items()),
            "scheduler": args.scheduler,
            "restrict": args.restrict,
            "wall_s": time.perf_counter() - t_start,
        },
        "runs": runs,
    }
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
