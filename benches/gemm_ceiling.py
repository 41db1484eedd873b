"""The machine's GEMM ceiling: what MKL (through torch) reaches on one large
GEMM in fp32 and bf16 with the benchmark's thread count, and the machine's
identity (lscpu's model name and the CPU features that matter for GEMM).

The training and generation benchmarks print it beside their figures, with
each competitor's matmul GF/s as a fraction of it.

    python benches/gemm_ceiling.py [--threads N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

GEMM_FEATURES = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")


def machine() -> dict[str, Any]:
    """lscpu's model name, the GEMM-relevant CPU flags present, and the core count."""
    model, flags = "unknown", set()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "Model name":
                model = val.strip()
            elif key.strip() == "Flags":
                flags = set(val.split())
    except OSError:
        pass
    import os

    return {
        "model": model,
        "features": [f for f in GEMM_FEATURES if f in flags],
        "cpus": os.cpu_count(),
    }


def ceiling(threads: int, m: int = 2048, n: int = 3072, k: int = 768) -> dict[str, float]:
    """Best GF/s of torch.mm (MKL / oneDNN) at m x k x n, fp32 and bf16, on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.rand(m, k, dtype=dt)
        b = torch.rand(k, n, dtype=dt)
        c = torch.empty(m, n, dtype=dt)
        torch.mm(a, b, out=c)
        best, t0, reps = float("inf"), time.perf_counter(), 0
        while reps < 5 or time.perf_counter() - t0 < 1.0:
            t = time.perf_counter()
            torch.mm(a, b, out=c)
            best = min(best, time.perf_counter() - t)
            reps += 1
        out[name] = 2.0 * m * n * k / best / 1e9
    return out


def describe(mach: dict[str, Any], ceil: dict[str, float], threads: int) -> str:
    feats = ", ".join(mach["features"]) or "none of " + ", ".join(GEMM_FEATURES)
    return (
        f"machine: {mach['model']} ({mach['cpus']} CPUs; {feats})\n"
        f"GEMM ceiling, torch.mm 2048x768x3072 on {threads} threads: "
        f"fp32 {ceil['fp32']:.0f} GF/s, bf16 {ceil['bf16']:.0f} GF/s"
    )


def main() -> None:
    import os

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", action="store_true", help="print JSON instead of text")
    a = ap.parse_args()
    mach, ceil = machine(), ceiling(a.threads)
    print(
        json.dumps({"machine": mach, "ceiling_gflops": ceil})
        if a.json
        else describe(mach, ceil, a.threads)
    )


if __name__ == "__main__":
    main()
