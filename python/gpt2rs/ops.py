"""Tensor operations: each submits its tile tasks to the tensors' runtime and
returns at once (asynchronous). The output tensor is returned for chaining;
`Tensor.to_numpy` or `Runtime.wait_all` waits for the result.

These are the Rust functions `gpt2rs._gpt2rs.op_*` under typed signatures;
their docstrings come from the Rust doc comments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from gpt2rs import _gpt2rs as _rs
from gpt2rs._gpt2rs import Tensor

__all__ = ["add", "axpy", "cast", "copy", "fill", "gemm", "norm", "scale", "sum"]

_F = TypeVar("_F", bound=Callable[..., Tensor])


def _doc_from(rust_fn: object) -> Callable[[_F], _F]:
    """Gives the Python wrapper the docstring of the Rust function it calls."""

    def deco(fn: _F) -> _F:
        fn.__doc__ = getattr(rust_fn, "__doc__", None)
        return fn

    return deco


@_doc_from(_rs.op_gemm)
def gemm(
    a: Tensor,
    b: Tensor,
    c: Tensor | None = None,
    *,
    trans_a: bool = False,
    trans_b: bool = False,
    alpha: float = 1.0,
    beta: float = 0.0,
    ndim: int = 1,
    batch_ndim: int = 0,
) -> Tensor:
    return _rs.op_gemm(
        a,
        b,
        c,
        trans_a=trans_a,
        trans_b=trans_b,
        alpha=alpha,
        beta=beta,
        ndim=ndim,
        batch_ndim=batch_ndim,
    )


@_doc_from(_rs.op_add)
def add(x: Tensor, y: Tensor, *, alpha: float = 1.0, beta: float = 1.0) -> Tensor:
    return _rs.op_add(x, y, alpha=alpha, beta=beta)


@_doc_from(_rs.op_axpy)
def axpy(alpha: float, x: Tensor, y: Tensor) -> Tensor:
    return _rs.op_axpy(alpha, x, y)


@_doc_from(_rs.op_scale)
def scale(x: Tensor, alpha: float) -> Tensor:
    return _rs.op_scale(x, alpha)


@_doc_from(_rs.op_fill)
def fill(x: Tensor, value: float) -> Tensor:
    return _rs.op_fill(x, value)


@_doc_from(_rs.op_copy)
def copy(src: Tensor, dst: Tensor) -> Tensor:
    return _rs.op_copy(src, dst)


@_doc_from(_rs.op_cast)
def cast(src: Tensor, dst: Tensor) -> Tensor:
    return _rs.op_cast(src, dst)


@_doc_from(_rs.op_sum)
def sum(
    x: Tensor,
    axis: int | None = None,
    *,
    alpha: float = 1.0,
    out: Tensor | None = None,
    beta: float = 0.0,
) -> Tensor:
    return _rs.op_sum(x, axis, alpha=alpha, out=out, beta=beta)


@_doc_from(_rs.op_norm)
def norm(x: Tensor, *, alpha: float = 1.0, out: Tensor | None = None, beta: float = 0.0) -> Tensor:
    return _rs.op_norm(x, alpha=alpha, out=out, beta=beta)
