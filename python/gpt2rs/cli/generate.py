"""gpt2rs-generate: sample text from a GPT-2 (an HF hub id, an HF model
directory, or a gpt2rs-train checkpoint).

    gpt2rs-generate --model openai-community/gpt2 --prompt "Once upon a time" \\
        --max-new-tokens 64 --temperature 0.8 --top-k 50 --seed 0
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._common import Formatter, Parser, add_model_flags, apply_environment, model_options, restrict

PROG = "gpt2rs-generate"

EPILOG = """\
Every --dashed-option is also accepted as --underscore_option (NNTile's spelling).

--model takes an HF hub id (downloaded into --model-path), an HF model directory
(config.json + model.safetensors), or a gpt2rs-train checkpoint: a checkpoint-<step>
directory, or the checkpoint root whose `latest` file names one.

Sampling follows HF transformers: logits / temperature, then top-k, then top-p
(nucleus); --temperature 0 is greedy. --top-k defaults to 50, as HF's generate.
Generation stops after --max-new-tokens tokens, or at the end-of-text token
unless --ignore-eos. The prompt and the new tokens print on stdout; errors are
one line on stderr.
"""


class GenerateError(ValueError):
    """Options, model or prompt that do not fit together."""


def _prompt_ids(v: str) -> list[int]:
    try:
        ids = [int(x) for x in v.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{v!r} is not a list of token ids (e.g. '464,1893,286')"
        ) from None
    if not ids:
        raise argparse.ArgumentTypeError("no token ids given")
    return ids


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(
        prog=PROG, description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=Formatter
    )
    g = ap.add_argument_group("model")
    g.add_argument("--model", default="openai-community/gpt2",
                   help="HF hub id, HF model directory, or gpt2rs-train checkpoint (or its root)")  # fmt: skip
    g.add_argument("--model-path", "--cache-dir", dest="model_path", default=".model",
                   help="cache directory for models from the HF hub (as gpt2rs-train's)")  # fmt: skip
    add_model_flags(g, ap, training=False)
    g.add_argument("--restrict", type=restrict, default=None, metavar="{cpu,cuda,None}",
                   help="prefer these workers (None: every visible GPU, else the CPU)")  # fmt: skip
    g.add_argument(
        "--ncpu", type=int, default=None, help="CPU workers (default: $STARPU_NCPU or every core)"
    )
    g.add_argument(
        "--ncuda", type=int, default=None, help="GPUs (default: $STARPU_NCUDA or every visible GPU)"
    )

    g = ap.add_argument_group("prompt and sampling")
    g.add_argument(
        "--prompt", default="Once upon a time", help="text to continue ('' starts from end-of-text)"
    )
    g.add_argument("--prompt-ids", type=_prompt_ids, default=None,
                   help="token ids to continue instead of --prompt (comma or space separated)")  # fmt: skip
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (0: greedy)")
    g.add_argument(
        "--top-k", type=int, default=50, help="sample among the k most likely tokens (0: all)"
    )
    g.add_argument(
        "--top-p",
        type=float,
        default=1.0,
        help="nucleus sampling: the smallest set of mass >= p (1: all)",
    )
    g.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    g.add_argument("--ignore-eos", action="store_true", help="do not stop at the end-of-text token")
    g.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the whole sequence each step (no KV cache)",
    )
    g.add_argument(
        "--print-ids",
        action="store_true",
        help="print the token ids (prompt and new) instead of text",
    )
    g.add_argument("--quiet", action="store_true", help="no timing line on stderr")
    return ap


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    from ..generate import check_sampling

    ap = build_parser()
    ns = ap.parse_args(argv)
    if ns.max_new_tokens < 0:
        ap.error(f"--max-new-tokens must be >= 0, got {ns.max_new_tokens}")
    if ns.seed < 0:
        ap.error(f"--seed must be >= 0, got {ns.seed}")
    try:
        ns.options = model_options(ns)
        apply_environment(ns, {})
    except ValueError as e:
        ap.error(str(e))
    if ns.ncpu is not None and ns.ncpu < 1:
        ap.error(f"--ncpu must be >= 1, got {ns.ncpu}")
    try:
        check_sampling(ns.temperature, ns.top_k, ns.top_p)
    except ValueError as e:
        ap.error(
            str(e)
            .replace("top_k", "--top-k")
            .replace("top_p", "--top-p")
            .replace("temperature", "--temperature")
        )
    return ns


def resolve_model(name: str, cache_dir: str | None) -> Path:
    """The model directory --model names: a directory holding config.json; a
    checkpoint root whose `latest` names one; else an HF hub id."""
    from .. import hub

    p = Path(name).expanduser()
    if p.is_dir():
        if (p / "config.json").is_file():
            return p
        latest = p / "latest"
        if latest.is_file():
            sub = latest.read_text().strip()
            d = p / sub
            if sub and (d / "config.json").is_file():
                return d
            raise GenerateError(
                f"{latest} names {sub!r}, which is not a model directory with a config.json"
            )
        raise GenerateError(
            f"{p} is not a model directory: no config.json, and no `latest` naming a checkpoint"
        )
    return hub.resolve(name, cache_dir or None)


def run(ns: argparse.Namespace) -> int:
    import gpt2rs

    from .. import cuda
    from ..generate import decode, encode

    try:
        ncuda, notice = cuda.choose_gpus(ns.restrict, ns.ncuda)
    except (ValueError, cuda.CudaError) as e:
        hint = "; use --restrict cpu" if isinstance(e, cuda.CudaError) else ""
        raise GenerateError(f"{e}{hint}") from None
    directory = resolve_model(ns.model, ns.model_path)
    rt = gpt2rs.Runtime(ncpu=ns.ncpu, ncuda=ncuda, restrict=ns.restrict if ncuda else None)
    try:
        model = gpt2rs.GPT2LMHead.from_pretrained(directory, ns.options, runtime=rt)
        cfg = model.config
        from_eot = False  # an empty text prompt starts from end-of-text, not printed
        if ns.prompt_ids is not None:
            prompt = np.asarray(ns.prompt_ids, dtype=np.int64)
        else:
            prompt = encode(ns.prompt)
            if prompt.size == 0:
                prompt, from_eot = np.asarray([cfg.eos_token_id], dtype=np.int64), True
        bad = prompt[(prompt < 0) | (prompt >= cfg.vocab_size)]
        if bad.size:
            raise GenerateError(
                f"prompt token id {int(bad[0])} is outside the model's vocabulary [0, {cfg.vocab_size})"
                + (
                    ""
                    if ns.prompt_ids is not None
                    else " (the model does not use GPT-2's tokenizer? give --prompt-ids)"
                )
            )
        room = cfg.n_positions - prompt.size + 1
        if ns.max_new_tokens > room:
            raise GenerateError(
                f"a prompt of {prompt.size} token(s) leaves room for at most {max(room, 0)} new tokens "
                f"in n_positions = {cfg.n_positions} (--max-new-tokens is {ns.max_new_tokens})"
            )
        eos = None if ns.ignore_eos else cfg.eos_token_id
        eos = eos if eos is not None and 0 <= eos < cfg.vocab_size else None
        t0 = time.perf_counter()
        out = model.generate(
            prompt,
            ns.max_new_tokens,
            temperature=ns.temperature,
            top_k=ns.top_k or None,
            top_p=ns.top_p,
            seed=ns.seed,
            use_cache=not ns.no_cache,
            eos_token_id=eos,
        )
        dt = time.perf_counter() - t0
        new = out.size - prompt.size
        if ns.print_ids:
            print(" ".join(str(int(i)) for i in out))
        else:
            new_ids = out[prompt.size :]
            if eos is not None and (new_ids == eos).any():
                new_ids = new_ids[: int(np.argmax(new_ids == eos))]
            print(decode(np.concatenate([prompt[int(from_eot) :], new_ids])))
        if not ns.quiet:
            rate = f", {new / dt:.1f} tokens/s" if dt > 0 and new else ""
            cache = "no KV cache" if ns.no_cache else "KV cache"
            where = f"{ncuda} GPU(s)" if ncuda else "CPU"
            print(
                f"{PROG}: {new} new tokens in {dt:.2f} s{rate} ({cache}, {ns.dtype}, {where}, {rt.nworkers} workers)",
                file=sys.stderr,
            )
            if notice:
                print(f"{PROG}: note: {notice}", file=sys.stderr)
    finally:
        rt.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = parse_args(argv)
    from ..generate import TokenizerUnavailable
    from ..hub import WeightsError

    try:
        return run(ns)
    except (
        GenerateError,
        WeightsError,
        TokenizerUnavailable,
        ValueError,
        OSError,
        RuntimeError,
    ) as e:
        msg = " ".join(str(e).split()) or type(e).__name__
        sys.stderr.write(f"{PROG}: error: {msg}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
