"""ModelOptions: how a GPT2LMHead computes — precision, tiling along each axis,
recompute, determinism and dropout — in one typed object.

It is validated here, once; the compiled core reads it attribute by attribute
(`ModelOptions` in src/py/model.rs), so a setting has one name from the CLI's
flag down to Rust. The CLI's NNTile spelling -1 ("untiled") stops at the CLI:
here an axis left whole is ``"whole"``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Final, Literal, TypeAlias, get_args

import numpy as np

Precision: TypeAlias = Literal[
    "fp32", "fp64", "tf32", "bf16", "fp32_fast_fp16", "fp32_fast_bf16", "fp32_fast_tf32"
]
PRECISIONS: Final[tuple[str, ...]] = get_args(Precision)

#: A tile size: None picks one from the shapes and the workers, "whole" leaves the axis uncut.
Tile: TypeAlias = int | Literal["whole"] | None
WHOLE: Final = "whole"

#: The tile fields, with the axis each cuts (CLI flags are --<field with dashes>).
TILE_AXES: Final[dict[str, str]] = {
    "seq_len_tile": "sequence",
    "minibatch_size_tile": "minibatch rows",
    "hidden_size_tile": "hidden size",
    "intermediate_size_tile": "MLP inner size",
    "n_head_tile": "attention heads",
    "vocab_tile": "vocabulary",
}


@dataclass(frozen=True)
class ModelOptions:
    """How a GPT2LMHead computes; the model's shapes are its GPT2Config.

    Attributes:
        dtype: one of fp32, fp64, tf32, bf16, fp32_fast_fp16, fp32_fast_bf16,
            fp32_fast_tf32 (on the CPU, tf32 and the fast modes compute in fp32).
        seq_len_tile, minibatch_size_tile, hidden_size_tile,
        intermediate_size_tile, n_head_tile, vocab_tile: tile size per axis;
            None (the default) picks one from the shapes and the runtime's CPU
            workers so that every worker stays busy (on a GPU every axis stays
            whole); "whole" leaves the axis uncut.
        recompute: recompute LayerNorm outputs and activations in backward
            instead of keeping them (less memory, a little more compute).
        deterministic: accumulate the embedding gradient in a fixed order, so
            that runs repeat bit for bit.
        dropout: None keeps the config's resid/embd/attn_pdrop; a value in
            [0, 1) sets all three (applied with a dropout seed only).
    """

    dtype: Precision = "fp32"
    seq_len_tile: Tile = None
    minibatch_size_tile: Tile = None
    hidden_size_tile: Tile = None
    intermediate_size_tile: Tile = None
    n_head_tile: Tile = None
    vocab_tile: Tile = None
    recompute: bool = False
    deterministic: bool = False
    dropout: float | None = None

    def __post_init__(self) -> None:
        if self.dtype not in PRECISIONS:
            raise ValueError(
                f"unknown dtype {self.dtype!r} (expected one of {', '.join(PRECISIONS)})"
            )
        for name in TILE_AXES:
            v = getattr(self, name)
            if v is None or v == WHOLE:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(
                    f"{name} must be an int >= 1, {WHOLE!r} (untiled) or None (chosen), got {v!r}"
                )
            # numpy ints become ints, so that the core and the summary see one type.
            object.__setattr__(self, name, int(v))
        for name in ("recompute", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        d = self.dropout
        if d is not None and (
            isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d < 1.0
        ):
            raise ValueError(f"dropout must be in [0, 1) or None (the config's), got {d!r}")

    @classmethod
    def of(cls, options: ModelOptions | None = None, /, **overrides: Any) -> ModelOptions:
        """`options` (default: all defaults) with the keyword overrides, which
        are ModelOptions' field names; any other keyword is a TypeError."""
        if options is not None and not isinstance(options, ModelOptions):
            raise TypeError(f"options must be a gpt2rs.ModelOptions, got {type(options).__name__}")
        known = {f.name for f in fields(cls)}
        for k in overrides:
            if k not in known:
                raise TypeError(
                    f"unexpected keyword argument {k!r} (model options: {', '.join(sorted(known))})"
                )
        base = options if options is not None else cls()
        return replace(base, **overrides) if overrides else base

    def tiles(self) -> dict[str, Tile]:
        """The tile fields by name (for summaries and benchmarks)."""
        return {name: getattr(self, name) for name in TILE_AXES}
