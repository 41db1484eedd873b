"""Greedy generation with the KV cache: gpt2rs against HF transformers'
`generate`, on the same weights, in the same run, with the same threads.

Each framework runs in its own subprocess (so neither's thread pools or
allocator state touch the other), alternating over --rounds; each keeps its
fastest round. A measurement is one whole `generate` call: the prefill of a
--prompt-len prompt and --new-tokens greedy steps (no early stop: HF gets
min_new_tokens), for a batch of B rows. tok/s = B x new tokens / seconds.

Both models are GPT-2 of the given config with the same random weights
(gpt2rs `from_config(seed=0)` saved with `save_pretrained`, loaded by both),
in fp32. gpt2rs uses its default tiling (from the shapes and the workers).
HF runs in eval mode with sdpa attention and `torch.set_num_threads(ncpu)`.
The token agreement column says how many generated tokens equal HF's (random
weights give near-flat logits, so a rounding difference can flip an argmax
and everything after it; 100 % is not expected, a low figure on the first
step would be a bug).

Prints the machine (lscpu's model name and GEMM features) and its GEMM
ceiling first, then a table; writes bench-out/generate.json.

    python benches/bench_generate.py [--configs small,medium] [--batches 1,8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gemm_ceiling import ceiling, describe, machine

CONFIGS: dict[str, dict[str, Any]] = {
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "vocab_size": 50257},
    "medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16, "vocab_size": 50257},
    "4x256": {"n_layer": 4, "n_embd": 256, "n_head": 4, "vocab_size": 50257},
}


def hf_config(c: dict[str, Any]) -> dict[str, Any]:
    return {**c, "n_positions": 1024, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}


def prompt(spec: dict[str, Any]) -> Any:
    import numpy as np

    rng = np.random.default_rng(7)
    return rng.integers(
        0, spec["cfg"]["vocab_size"], size=(spec["batch"], spec["prompt_len"]), dtype=np.int64
    )


def worker_init(spec: dict[str, Any]) -> dict[str, Any]:
    import gpt2rs

    rt = gpt2rs.Runtime(ncpu=spec["ncpu"])
    m = gpt2rs.GPT2LMHead.from_config(hf_config(spec["cfg"]), seed=0, dtype="fp32", runtime=rt)
    m.save_pretrained(spec["dir"])
    rt.shutdown()
    return {"params": m.num_parameters()}


def worker_gpt2rs(spec: dict[str, Any]) -> dict[str, Any]:
    import gpt2rs

    rt = gpt2rs.Runtime(ncpu=spec["ncpu"])
    model = gpt2rs.GPT2LMHead.from_pretrained(spec["dir"], dtype="fp32", runtime=rt)
    ids = prompt(spec)
    model.generate(ids, max_new_tokens=2, temperature=0.0)
    best, out = float("inf"), None
    for _ in range(spec["repeats"]):
        s0 = rt.stats()
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=spec["new_tokens"], temperature=0.0)
        dt = time.perf_counter() - t0
        s1 = rt.stats()
        if dt < best:
            best = dt
            busy = sum(w["busy_s"] for w in s1["workers"]) - sum(w["busy_s"] for w in s0["workers"])
            tasks = s1["tasks_submitted"] - s0["tasks_submitted"]
    rt.shutdown()
    return {
        "seconds": best,
        "busy_share": busy / (rt.nworkers * best),
        "tasks_per_token": tasks / spec["new_tokens"],
        "tokens": out[:, spec["prompt_len"] :].tolist(),
    }


def worker_hf(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(spec["ncpu"])
    model = GPT2LMHeadModel.from_pretrained(
        spec["dir"], torch_dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    ids = torch.from_numpy(prompt(spec))
    mask = torch.ones_like(ids)
    kw = dict(do_sample=False, use_cache=True, pad_token_id=0, attention_mask=mask)
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
        best, out = float("inf"), None
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            out = model.generate(
                ids, max_new_tokens=spec["new_tokens"], min_new_tokens=spec["new_tokens"], **kw
            )
            best = min(best, time.perf_counter() - t0)
    return {"seconds": best, "tokens": out[:, spec["prompt_len"] :].tolist()}


WORKERS = {"init": worker_init, "gpt2rs": worker_gpt2rs, "hf": worker_hf}


def run(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".json") as f:
        subprocess.run(
            [sys.executable, __file__, "--worker", kind, json.dumps(spec), f.name], check=True
        )
        return json.loads(Path(f.name).read_text())


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / max(len(pairs), 1)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, spec, path = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
        Path(path).write_text(json.dumps(WORKERS[kind](spec)))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--configs", default="small", help="comma-separated: " + ", ".join(CONFIGS))
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument(
        "--repeats", type=int, default=3, help="generate calls per round (fastest kept)"
    )
    ap.add_argument(
        "--rounds", type=int, default=2, help="alternations of the two frameworks (fastest kept)"
    )
    ap.add_argument(
        "--ncpu", type=int, default=os.cpu_count() or 1, help="threads / CPU workers for both"
    )
    ap.add_argument("--out", default="bench-out/generate.json")
    a = ap.parse_args()

    mach, ceil = machine(), ceiling(a.ncpu)
    print(describe(mach, ceil, a.ncpu), flush=True)
    rows = []
    for name in a.configs.split(","):
        cfg = CONFIGS[name]
        with tempfile.TemporaryDirectory() as d:
            base = {"cfg": cfg, "dir": d, "ncpu": a.ncpu}
            params = run("init", base)["params"]
            for bsz in (int(x) for x in a.batches.split(",")):
                spec = {
                    **base,
                    "batch": bsz,
                    "prompt_len": a.prompt_len,
                    "new_tokens": a.new_tokens,
                    "repeats": a.repeats,
                }
                res: dict[str, dict[str, Any]] = {}
                for _ in range(a.rounds):
                    for kind in ("gpt2rs", "hf"):
                        r = run(kind, spec)
                        if kind not in res or r["seconds"] < res[kind]["seconds"]:
                            res[kind] = r
                toks = bsz * a.new_tokens
                rs, hf = toks / res["gpt2rs"]["seconds"], toks / res["hf"]["seconds"]
                row = {
                    "config": name,
                    "params": params,
                    "batch": bsz,
                    "gpt2rs_tok_s": rs,
                    "hf_tok_s": hf,
                    "ratio": rs / hf,
                    "busy_share": res["gpt2rs"]["busy_share"],
                    "tasks_per_token": res["gpt2rs"]["tasks_per_token"],
                    "agreement": agreement(res["gpt2rs"]["tokens"], res["hf"]["tokens"]),
                    # 2 flops per parameter and token: what the decode steps reach.
                    "gpt2rs_gflops": 2 * params * rs / 1e9,
                    "hf_gflops": 2 * params * hf / 1e9,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(
        f"\ngreedy generate, prompt {a.prompt_len} + {a.new_tokens} new tokens, {a.ncpu} threads, fp32"
    )
    print(
        f"{'config':<8} {'B':>3} {'gpt2rs tok/s':>13} {'HF tok/s':>9} {'ratio':>6} {'busy':>6} "
        f"{'tasks/tok':>9} {'agree':>6} {'GF/s rs/HF (of fp32 ceiling)':>30}"
    )
    for r in rows:
        frac = (
            f"{r['gpt2rs_gflops']:.1f}/{r['hf_gflops']:.1f} ({r['gpt2rs_gflops'] / ceil['fp32']:.0%}/"
            f"{r['hf_gflops'] / ceil['fp32']:.0%})"
        )
        print(
            f"{r['config']:<8} {r['batch']:>3} {r['gpt2rs_tok_s']:>13.1f} {r['hf_tok_s']:>9.1f} {r['ratio']:>6.2f} "
            f"{r['busy_share']:>6.0%} {r['tasks_per_token']:>9.0f} {r['agreement']:>6.0%} {frac:>30}"
        )
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": mach, "ceiling_gflops": ceil, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
