"""The main job: a whole training run on this machine, offline, in minutes.

    python -m gpt2rs.quickstart [--out .quickstart] [--steps 200]

1. writes a corpus of small generated stories (no hub, no download),
2. tokenizes it with GPT-2's BPE (`gpt2rs-prepare --input ...`),
3. trains a small GPT-2 from scratch on it (`gpt2rs-train`), with the loss
   falling, a checkpoint and TensorBoard logs,
4. samples from the checkpoint (`gpt2rs-generate`).

Each step runs the real command-line tool (its `main`), so the printed
command lines are what a user would type.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

NAMES = ["Lily", "Tom", "Mia", "Ben", "Sara", "Max", "Anna", "Sam", "Lucy", "Tim"]
ANIMALS = ["cat", "dog", "bird", "fox", "bunny", "duck", "frog", "bear"]
PLACES = ["park", "garden", "forest", "beach", "farm", "river", "hill", "yard"]
THINGS = ["ball", "kite", "box", "hat", "boat", "cake", "book", "toy"]
COLORS = ["red", "blue", "big", "little", "shiny", "green", "soft", "yellow"]
FEELINGS = ["happy", "sad", "scared", "excited", "sleepy", "proud"]


def story(rng: np.random.Generator) -> str:
    """One short story from a small grammar: enough structure to learn fast."""
    n, a, p, t, c, f = (
        str(rng.choice(x)) for x in (NAMES, ANIMALS, PLACES, THINGS, COLORS, FEELINGS)
    )
    friend = str(rng.choice([x for x in NAMES if x != n]))
    lines = [
        f"Once upon a time, there was a {c} {a} named {n}.",
        f"{n} liked to play in the {p} with a {t}.",
        f"One day, {n} lost the {t} and felt {f}.",
        f"{n} asked {friend} for help.",
        f"{friend} and {n} looked for the {t} in the {p}.",
        f"At last they found the {t} under a tree.",
        f'{n} said, "Thank you, {friend}!" and they played all day.',
    ]
    if rng.random() < 0.5:
        lines.insert(2, f"The sun was warm and the {p} was {rng.choice(COLORS)!s}.")
    return " ".join(lines)


def write_corpus(path: Path, n_stories: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    text = "\n\n".join(story(rng) for _ in range(n_stories)) + "\n"
    path.write_text(text)
    return len(text.encode())


#: What the quickstart writes under --out (and removes first when rerun).
OUTPUTS = ("stories.txt", "config.json", "data", "checkpoints", "runs", "metrics.jsonl")


def runnable(tool: str) -> str:
    """`tool` as a command that works outside an activated venv: the console
    script beside this Python when it is there."""
    p = Path(sys.executable).parent / tool
    return shlex.quote(str(p)) if p.is_file() else tool


def run(label: str, tool: str, main: Callable[[Sequence[str]], int], argv: list[str]) -> None:
    print(f"\n== {label}\n$ {runnable(tool)} {shlex.join(argv)}", flush=True)
    rc = main(argv)
    if rc:
        raise SystemExit(f"quickstart: {tool} failed (exit {rc})")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m gpt2rs.quickstart",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--out", default=".quickstart", help="working directory (default: %(default)s)")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps (default: %(default)s)")
    ap.add_argument(
        "--stories", type=int, default=4000, help="stories in the corpus (default: %(default)s)"
    )
    ap.add_argument("--ncpu", type=int, default=None, help="CPU workers (default: every core)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from gpt2rs.cli import generate, prepare, train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # A rerun starts clean: appending to the last run's metrics.jsonl and
    # TensorBoard run, or resuming its checkpoints, would mix two runs.
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    corpus = out / "stories.txt"
    size = write_corpus(corpus, args.stories, seed=0)
    print(f"== wrote {args.stories} generated stories ({size / 1e6:.1f} MB) to {corpus}")

    seq_len = 64
    config = dict(
        vocab_size=50257,
        n_positions=seq_len,
        n_embd=128,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        model_type="gpt2",
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))

    run(
        "tokenize (GPT-2 BPE, offline)",
        "gpt2rs-prepare",
        prepare.main,
        [
            "--input",
            str(corpus),
            "--dataset-path",
            str(out / "data"),
            "--name",
            "stories",
            "--seq-len",
            str(seq_len),
            "--val-fraction",
            "0.05",
        ],
    )
    ncpu = [] if args.ncpu is None else ["--ncpu", str(args.ncpu)]
    run(
        "train a small GPT-2 from scratch",
        "gpt2rs-train",
        train.main,
        [
            "--pretrained",
            "local",
            "--config-path",
            str(out / "config.json"),
            "--dataset-path",
            str(out / "data"),
            "--dataset-file",
            "stories/train.bin",
            "--val-file",
            "stories/val.bin",
            "--eval-every",
            str(max(args.steps // 4, 1)),
            "--seq-len",
            str(seq_len),
            "--batch-size",
            "16",
            "--minibatch-size",
            "16",
            "--optimizer",
            "adamw",
            "--lr",
            "3e-3",
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "10",
            "--max-steps",
            str(args.steps),
            "--nepochs",
            "100",
            "--seed",
            "0",
            "--save-checkpoint-path",
            str(out / "checkpoints"),
            "--save-every",
            str(max(args.steps // 2, 1)),
            "--logger",
            "--log-dir",
            str(out / "runs"),
            "--metrics-file",
            str(out / "metrics.jsonl"),
            *ncpu,
        ],
    )
    losses = [
        json.loads(line)["loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line and '"step"' in line
    ]
    if losses:
        k = max(len(losses) // 10, 1)
        print(
            f"\n== loss: first {k} steps {np.mean(losses[:k]):.3f} -> last {k} steps {np.mean(losses[-k:]):.3f}"
        )
    run(
        "sample from the checkpoint",
        "gpt2rs-generate",
        generate.main,
        [
            "--model",
            str(out / "checkpoints"),
            "--prompt",
            "Once upon a time",
            "--max-new-tokens",
            "48",
            "--temperature",
            "0.7",
            "--top-k",
            "20",
            "--seed",
            "0",
            *ncpu,
        ],
    )
    print(
        f"\n== done: checkpoint in {out / 'checkpoints'}, TensorBoard logs in {out / 'runs'} "
        f"(tensorboard --logdir {out / 'runs'})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
