"""A compact GPT-2 in the nanoGPT style, for benches/bench_train.py.

One module tree, plain torch: token + learned position embeddings, n_layer
pre-LayerNorm blocks (attention with one fused q/k/v Linear and
F.scaled_dot_product_attention(is_causal=True); an MLP of two Linears around
GPT-2's tanh GELU), a final LayerNorm and an LM head tied to the token
embedding. No dropout. `forward(ids)` returns the mean next-token
cross-entropy with labels = ids (HF GPT2LMHeadModel's `labels=input_ids`
loss), so that torch.compile sees the loss as part of the graph.

`load_pretrained(directory)` builds it from a directory in HF's GPT-2 format
(config.json + model.safetensors, e.g. gpt2rs' `save_pretrained`), so that
it starts from the same weights as the other competitors. HF stores the
projections as Conv1D weights [in, out]; nn.Linear wants [out, in], so they
are transposed on load.

    python benches/nanogpt_model.py DIR   # loss of this model vs HF's on random ids
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class NanoGPTConfig:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    layer_norm_epsilon: float = 1e-5

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> NanoGPTConfig:
        """The fields of an HF GPT-2 config.json this model uses (pdrop fields are ignored: no dropout)."""
        keys = cls.__dataclass_fields__
        return cls(**{k: v for k, v in d.items() if k in keys})

    @property
    def inner(self) -> int:
        return self.n_inner or 4 * self.n_embd


def activation(name: str) -> nn.Module:
    """GPT-2's activation_function names. gelu_new (GPT-2's own) and
    gelu_pytorch_tanh are both 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    if name in ("gelu_new", "gelu_pytorch_tanh"):
        return nn.GELU(approximate="tanh")
    if name == "gelu":
        return nn.GELU()
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unsupported activation_function {name!r}")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: NanoGPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        hs = c // self.n_head
        # [B, T, 3C] -> three [B, nh, T, hs]
        q, k, v = (
            y.view(b, t, self.n_head, hs).transpose(1, 2) for y in self.c_attn(x).split(c, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, cfg: NanoGPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, cfg.inner)
        self.act = activation(cfg.activation_function)
        self.c_proj = nn.Linear(cfg.inner, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.act(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, cfg: NanoGPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """GPT-2 LM; parameter names follow HF's GPT2LMHeadModel without the
    `transformer.` prefix (wte, wpe, h.{i}.attn.c_attn, ..., ln_f)."""

    def __init__(self, cfg: NanoGPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.n_positions, cfg.n_embd)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # tied

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting ids[:, 1:] from ids[:, :-1] (in fp32 under autocast too)."""
        logits = self.logits(ids)[:, :-1]
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1))


# HF Conv1D weights ([in, out]) that become nn.Linear weights ([out, in]).
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def load_pretrained(directory: str | Path, dtype: torch.dtype = torch.float32) -> NanoGPT:
    """A NanoGPT with the config and weights of an HF-format GPT-2 directory
    (config.json + model.safetensors, names with or without `transformer.`);
    every parameter must be present, unused entries (lm_head.weight, which
    is tied, attention-mask buffers) are ignored."""
    from safetensors.torch import load_file

    d = Path(directory)
    cfg = NanoGPTConfig.from_hf(json.loads((d / "config.json").read_text()))
    model = NanoGPT(cfg)
    raw = load_file(str(d / "model.safetensors"))
    state = {k.removeprefix("transformer."): v for k, v in raw.items()}
    own = dict(model.named_parameters())  # tied lm_head.weight appears once, as wte.weight
    missing = [n for n in own if n not in state]
    if missing:
        raise KeyError(f"{d}: missing weights {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    with torch.no_grad():
        for name, p in own.items():
            w = state[name]
            if name.endswith(_CONV1D):
                w = w.t()
            if tuple(w.shape) != tuple(p.shape):
                raise ValueError(
                    f"{d}: {name} has shape {tuple(w.shape)}, expected {tuple(p.shape)}"
                )
            p.copy_(w)
    return model.to(dtype)


def _check(directory: str) -> None:
    """Prints this model's loss and HF GPT2LMHeadModel's on the same random ids (fp32)."""
    import transformers

    torch.manual_seed(0)
    nano = load_pretrained(directory)
    hf = transformers.GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa")
    cfg = nano.cfg
    ids = torch.randint(0, cfg.vocab_size, (2, min(64, cfg.n_positions)))
    with torch.no_grad():
        a = float(nano(ids))
        b = float(hf(input_ids=ids, labels=ids).loss)
    print(
        f"activation {cfg.activation_function}: nanogpt {a:.7f}  hf {b:.7f}  |diff| {abs(a - b):.2e}"
    )
    assert math.isfinite(a) and abs(a - b) < 1e-4


if __name__ == "__main__":
    _check(sys.argv[1])
