"""GPT2Config: HF's field names and defaults (GPT-2 small), read from and
written to HF's config.json."""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh", "gelu", "relu")
POSITION_EMBEDDINGS = ("learned", "sinusoidal")


@dataclass
class GPT2Config:
    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    bos_token_id: int = 50256
    eos_token_id: int = 50256
    tie_word_embeddings: bool = True
    #: "learned" (GPT-2's wpe) or "sinusoidal" (the fixed encoding of the seed notebook).
    position_embedding_type: str = "learned"
    #: Fields of the file we do not use, kept so that saving round-trips them.
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"GPT2Config.{name} must be an int >= 1, got {v!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"GPT2Config: n_embd = {self.n_embd} is not divisible by n_head = {self.n_head}"
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner < 1):
            raise ValueError(
                f"GPT2Config.n_inner must be an int >= 1 or None, got {self.n_inner!r}"
            )
        if self.activation_function not in ACTIVATIONS:
            raise ValueError(
                f"GPT2Config.activation_function {self.activation_function!r} is not supported "
                f"(one of {', '.join(ACTIVATIONS)})"
            )
        if self.position_embedding_type not in POSITION_EMBEDDINGS:
            raise ValueError(
                f"GPT2Config.position_embedding_type {self.position_embedding_type!r} is not one of "
                f"{', '.join(POSITION_EMBEDDINGS)}"
            )
        for name in (
            "resid_pdrop",
            "embd_pdrop",
            "attn_pdrop",
            "layer_norm_epsilon",
            "initializer_range",
        ):
            v = getattr(self, name)
            # A null or a string in config.json names its field, not a TypeError deep inside.
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"GPT2Config.{name} must be a finite number, got {v!r}")
        for name in ("resid_pdrop", "embd_pdrop", "attn_pdrop"):
            p = getattr(self, name)
            if not 0.0 <= float(p) < 1.0:
                raise ValueError(f"GPT2Config.{name} = {p} must be in [0, 1)")
        if self.layer_norm_epsilon <= 0 or self.initializer_range < 0:
            raise ValueError(
                f"GPT2Config: layer_norm_epsilon = {self.layer_norm_epsilon} must be > 0 and "
                f"initializer_range = {self.initializer_range} >= 0"
            )
        if not self.tie_word_embeddings:
            raise ValueError(
                "GPT2Config: only tied word embeddings (GPT-2's LM head) are supported"
            )

    @property
    def inner_size(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPT2Config:
        d = dict(d)
        if d.get("model_type", "gpt2") != "gpt2":
            raise ValueError(f"GPT2Config: model_type {d['model_type']!r} is not gpt2")
        if "n_positions" not in d and "n_ctx" in d:
            d["n_positions"] = d["n_ctx"]
        for key, supported in (
            ("scale_attn_weights", True),
            ("scale_attn_by_inverse_layer_idx", False),
        ):
            if key in d and bool(d[key]) != supported:
                raise ValueError(
                    f"GPT2Config: {key} = {d[key]!r} is not supported (only {supported})"
                )
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike[str]) -> GPT2Config:
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {p}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is not valid JSON: {e}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{p} does not hold a JSON object")
        return cls.from_dict(d)

    @classmethod
    def coerce(cls, config: GPT2Config | dict[str, Any] | str | os.PathLike[str]) -> GPT2Config:
        """A config from a GPT2Config, a dict, a config.json path or a directory holding one."""
        if isinstance(config, GPT2Config):
            return config
        if isinstance(config, dict):
            return cls.from_dict(config)
        p = Path(config)
        return cls.from_json_file(p / "config.json" if p.is_dir() else p)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})
        if self.position_embedding_type == "learned":
            d.pop("position_embedding_type")
        for k, v in extra.items():
            d.setdefault(k, v)
        return d

    def same_network(self, other: GPT2Config) -> bool:
        """Whether both describe the same network: every field the compiled
        model reads, dropout aside (the token ids and init do not change it)."""

        def key(c: GPT2Config) -> tuple[Any, ...]:
            return (
                c.vocab_size,
                c.n_positions,
                c.n_embd,
                c.n_layer,
                c.n_head,
                c.inner_size,
                c.activation_function,
                float(c.layer_norm_epsilon),
                c.position_embedding_type,
            )

        return key(self) == key(other)
