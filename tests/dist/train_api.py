"""Data parallelism from Python (gpt2rs.dist), for tests/test_dist_train.py:
a tiny model trained a few AdamW steps with clipping, each rank on its slice
of every global batch. Under mpiexec (or alone: a world of one), or with
--loopback N as N threads of this process (the in-process backend). Prints
one JSON line per rank (or a file per rank with --out): the global losses and a hash of all parameters
after each step.

    mpiexec -n 2 python train_api.py --dtype fp64 --zero-stage 1
    mpiexec -n 2 python train_api.py --gpu      # a GPU per rank, collectives over NCCL
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

import gpt2rs
from gpt2rs import dist

p = argparse.ArgumentParser()
p.add_argument("--dtype", default="fp32")
p.add_argument("--zero-stage", type=int, default=0)
p.add_argument("--batch", type=int, default=6)
p.add_argument("--minibatch", type=int, default=1)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--loopback", type=int, default=0)
p.add_argument("--dist-init", default="auto", help="auto, mpi or file:DIR (with RANK, WORLD_SIZE)")
p.add_argument("--gpu", action="store_true", help="each rank on the GPU of its local rank (NCCL)")
p.add_argument("--out", default="", help="write rank r's JSON to OUT/rank<r>.json (not stdout)")
a = p.parse_args()

CFG = gpt2rs.GPT2Config(
    vocab_size=61,
    n_positions=16,
    n_embd=16,
    n_layer=2,
    n_head=2,
    n_inner=40,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
)


def train(world: dist.World, runtime: gpt2rs.Runtime | None) -> dict[str, Any]:
    model = gpt2rs.GPT2LMHead.from_config(
        CFG,
        seed=3,
        runtime=runtime,
        dtype=a.dtype,
        hidden_size_tile=6,
        intermediate_size_tile=16,
        n_head_tile=1,
        vocab_tile=25,
        deterministic=True,
    )
    model.data_parallel(world)
    opt = gpt2rs.AdamW(model, lr=1e-2)
    rng = np.random.default_rng(11)
    rows = a.batch // world.size
    nmb = rows // a.minibatch
    losses, hashes = [], []
    for _ in range(a.steps):
        batch = rng.integers(0, 61, size=(a.batch, 9))
        mine = batch[world.rank * rows : (world.rank + 1) * rows]
        model.zero_grad()
        total = 0.0
        for k in range(nmb):
            mb = mine[k * a.minibatch : (k + 1) * a.minibatch]
            total += model.forward_backward(mb[:, :-1], targets=mb[:, 1:], grad_scale=1.0 / nmb)
        model.clip_grad_norm(0.05)
        opt.step()
        model.runtime.wait_all()
        losses.append(world.mean(total / nmb))
        state = model.state_dict()  # collective under ZeRO-1
        h = hashlib.sha256()
        for name in sorted(state):
            h.update(np.ascontiguousarray(state[name]).tobytes())
        hashes.append(h.hexdigest())
    return {"rank": world.rank, "size": world.size, "losses": losses, "hashes": hashes}


if a.loopback:
    out: list[dict[str, Any]] = [{} for _ in range(a.loopback)]

    def rank(c: gpt2rs.dist.Communicator) -> None:
        w = dist.World(comm=c, zero_stage=a.zero_stage, bucket_bytes=2000)
        out[c.rank] = train(w, gpt2rs.Runtime(ncpu=1, comm=True))

    threads = [
        threading.Thread(target=rank, args=(c,)) for c in dist.Communicator.loopback(a.loopback)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
else:
    world = dist.init(zero_stage=a.zero_stage, bucket_mb=0.002, method=a.dist_init)
    gpu = None
    if a.gpu:
        gpu = gpt2rs.Runtime(
            ncpu=1, ncuda=1, first_gpu=world.local_rank, restrict="cuda", comm=world.size > 1
        )
    out = [train(world, gpu)]
for r in out:
    if a.out:
        Path(a.out, f"rank{r['rank']}.json").write_text(json.dumps(r))
    else:
        print(json.dumps(r), flush=True)
