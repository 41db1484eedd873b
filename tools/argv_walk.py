"""How often control enters each gpt2rs file from another gpt2rs file while
gpt2rs-train goes from argv to its first training step: a newcomer following
argv through the code revisits a file that many times.

    python tools/argv_walk.py /tmp/walk   # writes a tiny corpus and config there
"""

import collections
import json
import os
import sys
from pathlib import Path

import numpy as np

import gpt2rs.cli.train as cli

ws = Path(sys.argv[1])
ws.mkdir(exist_ok=True)
(ws / "data").mkdir(exist_ok=True)
np.random.default_rng(0).integers(0, 50, 4000).astype(np.uint16).tofile(ws / "data" / "train.bin")
(ws / "cfg.json").write_text(
    json.dumps({"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 50, "n_positions": 32})
)
root = os.path.dirname(cli.__file__).rsplit("/cli", 1)[0]
entries: collections.Counter[str] = collections.Counter()
stop = [False]


def tracer(frame, event, arg):
    if event != "call" or stop[0]:
        return None
    f = frame.f_code.co_filename
    if not f.startswith(root):
        return None
    caller = frame.f_back.f_code.co_filename if frame.f_back else None
    if caller != f and caller and caller.startswith(root):
        entries[f[len(root) + 1 :]] += 1
    if frame.f_code.co_name == "_train_step":
        stop[0] = True
    return None


argv = f"--restrict cpu --config-path {ws / 'cfg.json'} --dataset-path {ws / 'data'} --dataset-file train.bin --seq-len 16 --batch-size 4 --max-steps 1 --ncpu 2 --quiet --save-checkpoint-path {ws / 'ck'}".split()
sys.settrace(tracer)
rc = cli.main(argv)
sys.settrace(None)
print("rc", rc)
for f, n in entries.most_common(12):
    print(f"{n:4d}  {f}")
