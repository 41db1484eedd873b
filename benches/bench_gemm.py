"""GEMM on the runtime against numpy.matmul (OpenBLAS), in the same run.

(b) GPT-2 shapes, fp32: GFLOP/s of gpt2rs (2 CPU workers, tiled, one
    single-threaded kernel per tile) and of numpy.matmul (all cores), and
    their ratio (target >= 0.9).
(c) One 4096^3 GEMM cut into 256- and 512-tiles on 2 workers, against the
    same GEMM as one task (one tile) and as one numpy call. Efficiency =
    tiled GFLOP/s / (workers x one-task GFLOP/s) (target >= 0.85).

Prints a table last and writes bench-out/gemm.json.

    python benches/bench_gemm.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

import gpt2rs
from gpt2rs import ops


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def gpt2rs_gemm_s(
    rt: gpt2rs.Runtime, a: np.ndarray, b: np.ndarray, tm: int, tn: int, tk: int, repeat: int
) -> float:
    ta = gpt2rs.Tensor.from_numpy(a, (tm, tk), runtime=rt)
    tb = gpt2rs.Tensor.from_numpy(b, (tk, tn), runtime=rt)
    tc = ops.gemm(ta, tb)
    rt.wait_all()

    def run() -> None:
        ops.gemm(ta, tb, tc)
        rt.wait_all()

    return best_of(run, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="smaller vocab shape and fewer repeats")
    ap.add_argument("--ncpu", type=int, default=2)
    args = ap.parse_args()
    repeat = 2 if args.quick else 3
    rng = np.random.default_rng(0)
    rt = gpt2rs.Runtime(ncpu=args.ncpu)
    rows = []

    shapes = [(2048, 768, 2304), (2048, 3072, 768), (2048, 768, 3072)]
    shapes.append((2048, 768, 8192) if args.quick else (2048, 768, 50257))
    for m, k, n in shapes:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flop = 2.0 * m * n * k
        t_np = best_of(lambda a=a, b=b: np.matmul(a, b), repeat)
        best = None
        for tm, tn, tk in [(512, 768, k), (256, 1024, k), (512, 512, 768)]:
            t = gpt2rs_gemm_s(rt, a, b, min(tm, m), min(tn, n), min(tk, k), repeat)
            if best is None or t < best[0]:
                best = (t, (tm, tn, min(tk, k)))
        assert best is not None
        rows.append(
            {
                "case": f"{m}x{k}x{n}",
                "tiles(m,n,k)": best[1],
                "gpt2rs_gflops": flop / best[0] / 1e9,
                "numpy_gflops": flop / t_np / 1e9,
                "ratio": t_np / best[0],
            }
        )

    n = 2048 if args.quick else 4096
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3
    rt1 = gpt2rs.Runtime(ncpu=1)
    t_one = gpt2rs_gemm_s(rt1, a, b, n, n, n, 1 if n == 4096 else repeat)
    rt1.shutdown()
    t_np = best_of(lambda: np.matmul(a, b), repeat)
    for tile in (256, 512):
        t = gpt2rs_gemm_s(rt, a, b, tile, tile, tile, repeat)
        rows.append(
            {
                "case": f"{n}^3 tile {tile}",
                "tiles(m,n,k)": (tile, tile, tile),
                "gpt2rs_gflops": flop / t / 1e9,
                "numpy_gflops": flop / t_np / 1e9,
                "ratio": t_np / t,
                "one_task_gflops": flop / t_one / 1e9,
                "efficiency": t_one / (args.ncpu * t),
            }
        )

    out = Path("bench-out")
    out.mkdir(exist_ok=True)
    meta = {"ncpu": args.ncpu, "numpy": np.__version__, "cpu_count": os.cpu_count(), "rows": rows}
    (out / "gemm.json").write_text(json.dumps(meta, indent=2))
    print(
        f"\nGEMM fp32, gpt2rs {args.ncpu} workers vs numpy.matmul (targets: ratio >= 0.9, efficiency >= 0.85)"
    )
    print(
        f"{'case':<22}{'tiles':>18}{'gpt2rs GF/s':>13}{'numpy GF/s':>12}{'ratio':>8}{'effic.':>8}"
    )
    for r in rows:
        eff = f"{r['efficiency']:.2f}" if "efficiency" in r else "-"
        print(
            f"{r['case']:<22}{r['tiles(m,n,k)']!s:>18}{r['gpt2rs_gflops']:>13.1f}"
            f"{r['numpy_gflops']:>12.1f}{r['ratio']:>8.2f}{eff:>8}"
        )


if __name__ == "__main__":
    main()
