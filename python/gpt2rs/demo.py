"""Tiled GEMM chain + add + norm on the gpt2rs runtime, checked against numpy.

The runtime gets CPU workers and one simulated device node (host memory
posing as device memory, with a worker of its own) under a memory limit, so
that tiles travel between the two nodes and get evicted when the device is
full. Computes

    C1 = A @ B,  C2 = C1 @ B^T,  D = A + C2,  n = ||D||_F

prints the relative error against numpy (float64), a table of per-worker and
per-bus statistics, and writes a Chrome trace (open it in
https://ui.perfetto.dev).

    python -m gpt2rs.demo [--ncpu N] [--trace FILE] [--size N] [--tile T]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

import numpy as np

import gpt2rs
from gpt2rs import ops

# Relative Frobenius error targets per storage type (DESIGN.md, Numerics).
TOLERANCE = {"fp64": 1e-12, "fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}
ITEMSIZE = {"fp64": 8, "fp32": 4, "fp16": 2, "bf16": 2}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m gpt2rs.demo",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--ncpu", type=int, default=None, help="CPU workers (None: every core)")
    ap.add_argument("--size", type=int, default=2048, help="matrix size N (A and B are N x N)")
    ap.add_argument("--tile", type=int, default=256, help="tile size T (tiles are T x T)")
    ap.add_argument("--dtype", choices=sorted(TOLERANCE), default="fp32", help="storage type")
    ap.add_argument("--scheduler", default="dmda", help="scheduling policy: eager or dmda")
    ap.add_argument(
        "--sim_memory",
        type=int,
        default=None,
        help="byte limit of the simulated device (None: 12 tiles, a fraction of the working set)",
    )
    ap.add_argument(
        "--trace", default="gpt2rs-demo.trace.json", help="Chrome trace file to write ('' for none)"
    )
    ap.add_argument(
        "--perf_model_dir",
        default=None,
        help="where to load and save performance models (None: not saved)",
    )
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    args = ap.parse_args(argv)
    if args.size < 1 or args.tile < 1:
        ap.error("--size and --tile must be >= 1")
    return args


def rel_err(x: np.ndarray, ref: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.linalg.norm(x - ref) / np.linalg.norm(ref))


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain left-aligned text table."""
    cells = [list(map(str, header))] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    n, t = args.size, min(args.tile, args.size)
    tile_bytes = t * t * ITEMSIZE[args.dtype]
    sim_limit = args.sim_memory if args.sim_memory is not None else 12 * tile_bytes
    rt = gpt2rs.Runtime(
        ncpu=args.ncpu,
        scheduler=args.scheduler,
        nsim=1,
        memory_limits={"sim0": sim_limit},
        perf_model_dir=args.perf_model_dir,
        trace=bool(args.trace),
    )
    print(
        f"gpt2rs {gpt2rs.__version__}: {rt.nworkers} workers ({rt.nworkers - 1} cpu + sim0), "
        f"scheduler {rt.scheduler}, sim0 limit {sim_limit / 2**20:.1f} MiB; "
        f"N={n}, T={t}, {args.dtype}"
    )

    rng = np.random.default_rng(args.seed)
    a_np = rng.standard_normal((n, n)) / np.sqrt(n)
    b_np = rng.standard_normal((n, n)) / np.sqrt(n)
    a = gpt2rs.Tensor.from_numpy(a_np, (t, t), dtype=args.dtype, runtime=rt)
    b = gpt2rs.Tensor.from_numpy(b_np, (t, t), dtype=args.dtype, runtime=rt)

    t0 = time.perf_counter()
    c1 = ops.gemm(a, b)  # every op returns as soon as its tasks are submitted
    d = ops.gemm(c1, b, trans_b=True)
    ops.add(a, d)  # d = a + d
    nrm = ops.norm(d)
    rt.wait_all()
    elapsed = time.perf_counter() - t0

    # Reference in float64 from the inputs as stored (rounded to the dtype).
    ra, rb = a.to_numpy().astype(np.float64), b.to_numpy().astype(np.float64)
    ref = ra + (ra @ rb) @ rb.T
    err = rel_err(d.to_numpy(), ref)
    nerr = abs(float(nrm.to_numpy()) - np.linalg.norm(ref)) / np.linalg.norm(ref)
    gflop = 2 * 2 * n**3 / 1e9
    print(f"\n{gflop:.1f} GFLOP in {elapsed:.3f} s: {gflop / elapsed:.1f} GFLOP/s")
    print(
        f"relative error vs numpy: D {err:.2e}, ||D|| {nerr:.2e} (tolerance {TOLERANCE[args.dtype]:.0e})"
    )

    st = rt.stats()
    print()
    print(
        table(
            ["worker", "node", "tasks", "busy_s", "busy%", "GFLOP/s"],
            [
                (
                    w["name"],
                    st["nodes"][w["node"]]["name"],
                    w["tasks"],
                    f"{w['busy_s']:.3f}",
                    f"{100 * w['busy_s'] / elapsed:.0f}",
                    f"{w['flops'] / w['busy_s'] / 1e9:.1f}" if w["busy_s"] > 0 else "-",
                )
                for w in st["workers"]
            ],
        )
    )
    print()
    print(
        table(
            ["bus", "transfers", "MiB", "GB/s"],
            [
                (
                    bus["name"],
                    bus["transfers"],
                    f"{bus['bytes'] / 2**20:.1f}",
                    f"{bus['bytes'] / bus['seconds'] / 1e9:.1f}" if bus["seconds"] > 0 else "-",
                )
                for bus in st["buses"]
            ],
        )
    )
    print()
    print(
        table(
            ["node", "limit_MiB", "peak_MiB", "evictions", "writebacks"],
            [
                (
                    nd["name"],
                    "-" if nd["limit"] is None else f"{nd['limit'] / 2**20:.1f}",
                    f"{nd['peak_bytes'] / 2**20:.1f}",
                    nd["evictions"],
                    nd["writebacks"],
                )
                for nd in st["nodes"]
            ],
        )
    )
    if args.trace:
        rt.save_trace(args.trace)
        print(f"\ntrace: {args.trace} (open in https://ui.perfetto.dev)")
    rt.shutdown()
    ok = err <= TOLERANCE[args.dtype] and nerr <= TOLERANCE[args.dtype]
    if not ok:
        print("FAILED: error above tolerance", file=sys.stderr)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
