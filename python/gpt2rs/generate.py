"""Text generation with GPT2LMHead: the sampler and the decoding loop.

Each step turns the logits of the last position into a next token:

    greedy (temperature == 0):  argmax of the logits
    otherwise:  logits / temperature
                -> top-k: keep the k largest (ties with the k-th kept, as HF)
                -> top-p: keep the most likely tokens until their mass reaches
                   top_p (the token that crosses it included, at least one)
                -> softmax over what is kept, then one draw per row

The order and the semantics are those of HF transformers' temperature,
top-k and top-p logits warpers. Draws take one uniform number per row and
step from `numpy.random.default_rng(seed)` (inverse CDF), so a seed gives the
same tokens whether or not the KV cache is used.

With the KV cache (`use_cache=True`) the prompt is run once (the prefill) and
then each new token alone, over the cached keys and values of the earlier
ones, so a step costs time linear in the context; without it every step runs
the full forward over the whole sequence (quadratic; kept to test the cache).

The GPT-2 tokenizer (`encode`, `decode`) is the compiled r50k BPE of
`gpt2rs._gpt2rs` (no network, no tiktoken needed).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .model import GPT2LMHead

#: GPT-2's end-of-text token.
EOT = 50256


class TokenizerUnavailable(RuntimeError):
    """This build of gpt2rs has no GPT-2 tokenizer."""


# -- sampling -------------------------------------------------------------------


def check_sampling(
    temperature: float, top_k: int | None, top_p: float | None
) -> tuple[float, int | None, float | None]:
    """Validated (temperature, top_k, top_p); top_k 0 and top_p 1 mean off (None)."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}") from None
    if not (t >= 0.0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    k: int | None = None
    if top_k is not None:
        if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
            raise ValueError(f"top_k must be an int >= 1 (0 or None: off), got {top_k!r}")
        k = int(top_k) or None
    p: float | None = None
    if top_p is not None:
        try:
            p = float(top_p)
        except (TypeError, ValueError):
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}") from None
        if not 0.0 < p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        if p == 1.0:
            p = None
    return t, k, p


def next_token_probs(
    logits: Any, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> np.ndarray:
    """The distribution the next token is drawn from, float64 [..., V]: one-hot
    on the argmax when temperature == 0, else the softmax of logits /
    temperature restricted by top-k then top-p (zeros outside)."""
    t, k, p = check_sampling(temperature, top_k, top_p)
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 0 or x.shape[-1] == 0:
        raise ValueError(f"logits must be [..., V] with V >= 1, got shape {x.shape}")
    if t == 0.0:
        out = np.zeros_like(x)
        np.put_along_axis(out, np.argmax(x, axis=-1)[..., None], 1.0, axis=-1)
        return out
    x = x / t
    if k is not None and k < x.shape[-1]:
        kth = np.partition(x, -k, axis=-1)[..., -k, None]
        x = np.where(x < kth, -np.inf, x)
    x = x - np.max(x, axis=-1, keepdims=True)
    probs = np.exp(x)
    probs /= probs.sum(axis=-1, keepdims=True)
    if p is not None:
        order = np.argsort(-probs, axis=-1, kind="stable")
        sorted_p = np.take_along_axis(probs, order, axis=-1)
        before = np.cumsum(sorted_p, axis=-1) - sorted_p  # mass of the tokens ranked above
        keep_sorted = before < p
        keep_sorted[..., 0] = True
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, axis=-1)
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum(axis=-1, keepdims=True)
    return probs


def sample(
    logits: Any,
    rng: np.random.Generator,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
) -> np.ndarray:
    """Next token ids (int64 [B]) for logits [B, V]; greedy needs no rng draw."""
    if float(temperature) == 0.0:
        # The argmax of the logits themselves: the one-hot distribution of
        # next_token_probs costs a float64 copy per decoding step.
        check_sampling(temperature, top_k, top_p)
        x = np.asarray(logits)
        if x.ndim != 2 or x.shape[-1] == 0:
            raise ValueError(f"logits must be [B, V] with V >= 1, got shape {x.shape}")
        return np.argmax(x, axis=-1).astype(np.int64)
    probs = next_token_probs(logits, temperature, top_k, top_p)
    if probs.ndim != 2:
        raise ValueError(f"logits must be [B, V], got shape {probs.shape}")
    cdf = np.cumsum(probs, axis=-1)
    u = rng.random(probs.shape[0]) * cdf[:, -1]
    # The first index whose cdf exceeds u: never a token of probability 0.
    idx = (cdf <= u[:, None]).sum(axis=-1)
    return np.minimum(idx, probs.shape[1] - 1).astype(np.int64)


# -- the decoding loop --------------------------------------------------------------


def generate(
    model: GPT2LMHead,
    input_ids: Any,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    *,
    eos_token_id: int | None = None,
) -> np.ndarray:
    """Continues each row of input_ids by max_new_tokens tokens; returns
    prompt + new tokens, int64 [B, T + max_new_tokens] ([T + ...] for a
    1-D prompt).

    temperature == 0 is greedy (argmax); otherwise tokens are drawn from
    softmax(logits / temperature) cut to the top_k most likely and then to
    the smallest set of mass >= top_p (HF's semantics; None: no cut),
    with numpy's default_rng(seed). use_cache: run the prompt once and
    then one token per step over a KV cache (time linear in the context);
    False recomputes the whole sequence each step (same tokens, slower).
    eos_token_id: a row that produces it keeps producing it, and
    generation stops early once every row has (the result is shorter).
    The prompt plus max_new_tokens - 1 must fit n_positions."""
    t, k, p = check_sampling(temperature, top_k, top_p)
    if (
        not isinstance(max_new_tokens, (int, np.integer))
        or isinstance(max_new_tokens, bool)
        or max_new_tokens < 0
    ):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if seed is not None and (
        not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0
    ):
        raise ValueError(f"seed must be an int >= 0 or None, got {seed!r}")
    arr = np.asarray(input_ids)
    one_d = arr.ndim == 1
    ids = model.check_ids(arr[None] if one_d else arr)
    cfg = model.config
    if eos_token_id is not None and not 0 <= int(eos_token_id) < cfg.vocab_size:
        raise ValueError(
            f"eos_token_id {eos_token_id} is outside the vocabulary [0, {cfg.vocab_size})"
        )
    n_new = int(max_new_tokens)
    bsz, t0 = ids.shape
    # The last new token is sampled, never fed back: t0 + n_new - 1 positions run.
    if n_new and t0 + n_new - 1 > cfg.n_positions:
        raise ValueError(
            f"prompt of {t0} tokens + {n_new} new tokens needs {t0 + n_new - 1} positions, "
            f"more than n_positions = {cfg.n_positions}"
        )
    if n_new == 0:
        return ids[0] if one_d else ids
    rng = np.random.default_rng(seed)
    out = np.empty((bsz, t0 + n_new), dtype=np.int64)
    out[:, :t0] = ids
    done = np.zeros(bsz, dtype=bool)
    cache = model.new_cache(bsz) if use_cache else None
    feed = ids
    length = t0
    for _ in range(n_new):
        if cache is not None:
            logits = model.forward_cached(cache, feed, last_only=True)
        else:
            logits = model.forward(out[:, :length])[:, -1]
        nxt = sample(logits, rng, t, k, p)
        if eos_token_id is not None:
            nxt = np.where(done, int(eos_token_id), nxt)
            done |= nxt == int(eos_token_id)
        out[:, length] = nxt
        length += 1
        if eos_token_id is not None and done.all():
            break
        feed = nxt[:, None]
    out = out[:, :length]
    return out[0] if one_d else out


# -- the GPT-2 tokenizer ------------------------------------------------------------


def _ext(name: str) -> Any:
    from . import _gpt2rs

    fn = getattr(_gpt2rs, name, None)
    if fn is None:
        raise TokenizerUnavailable(
            f"this build of gpt2rs has no GPT-2 tokenizer (gpt2rs._gpt2rs.{name} is missing)"
        )
    return fn


def encode(text: str) -> np.ndarray:
    """GPT-2 ids (int64) of `text`, with no end-of-text appended; a literal
    <|endoftext|> becomes the id 50256."""
    ids, offsets = _ext("gpt2_encode_batch")([text], append_eot=False)
    return np.asarray(ids[int(offsets[0]) : int(offsets[1])], dtype=np.int64)


def decode(ids: Any) -> str:
    """The text of GPT-2 ids (bytes that are not whole UTF-8 characters
    become U+FFFD). Raises ValueError for an id outside GPT-2's vocabulary."""
    flat = [int(i) for i in np.asarray(ids).reshape(-1)]
    bad = [i for i in flat if not 0 <= i <= EOT]
    if bad:
        raise ValueError(f"token id {bad[0]} is not in GPT-2's vocabulary of {EOT + 1}")
    data = _ext("gpt2_decode_bytes")(flat)
    return bytes(data).decode("utf-8", errors="replace")
