"""gpt2rs.ops against numpy float64 references, on random data with partial
tiles, in every dtype (the reference is computed from the rounded inputs).
Tolerances are relative Frobenius errors (conftest.TOL)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DTYPES, TOL, assert_close, f64, rand, rel_err
from hypothesis import given
from hypothesis import strategies as st

import gpt2rs
from gpt2rs import ops


def tensor(
    rt: gpt2rs.Runtime, rng: np.random.Generator, shape: tuple, tile: tuple, dtype: str
) -> gpt2rs.Tensor:
    return gpt2rs.Tensor.from_numpy(rand(rng, shape, dtype), tile, runtime=rt)


# ---------------------------------------------------------------- gemm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_transposes(
    rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str, trans_a: bool, trans_b: bool
) -> None:
    m, n, k = 13, 11, 17
    tm, tn, tk = 5, 4, 6
    a = tensor(rt, rng, (k, m) if trans_a else (m, k), (tk, tm) if trans_a else (tm, tk), dtype)
    b = tensor(rt, rng, (n, k) if trans_b else (k, n), (tn, tk) if trans_b else (tk, tn), dtype)
    c = ops.gemm(a, b, trans_a=trans_a, trans_b=trans_b, alpha=0.5)
    assert c.shape == (m, n) and c.tile_shape == (tm, tn) and c.dtype == dtype
    ra, rb = f64(a), f64(b)
    ref = 0.5 * (ra.T if trans_a else ra) @ (rb.T if trans_b else rb)
    assert_close(c.to_numpy(), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_alpha_beta_into_existing_c(
    rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    a = tensor(rt, rng, (9, 10), (4, 3), dtype)
    b = tensor(rt, rng, (10, 7), (3, 5), dtype)
    c = tensor(rt, rng, (9, 7), (4, 5), dtype)
    c0 = f64(c)
    out = ops.gemm(a, b, c, alpha=-1.5, beta=0.75)
    assert out is c
    assert_close(c.to_numpy(), -1.5 * f64(a) @ f64(b) + 0.75 * c0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_two_contracted_axes(rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str) -> None:
    # A [M, K1, K2] @ B [K1, K2, N1, N2]
    a = tensor(rt, rng, (6, 4, 5), (4, 3, 2), dtype)
    b = tensor(rt, rng, (4, 5, 3, 7), (3, 2, 2, 4), dtype)
    c = ops.gemm(a, b, ndim=2)
    assert c.shape == (6, 3, 7)
    ref = np.einsum("mkl,klnp->mnp", f64(a), f64(b))
    assert_close(c.to_numpy(), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_batched(
    rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str, trans_b: bool
) -> None:
    # A [B, M, K] @ B [B, K, N] (or B^T [B, N, K])
    a = tensor(rt, rng, (5, 6, 7), (2, 4, 3), dtype)
    b = tensor(rt, rng, (5, 8, 7) if trans_b else (5, 7, 8), (2, 3, 3), dtype)
    c = ops.gemm(a, b, trans_b=trans_b, batch_ndim=1)
    assert c.shape == (5, 6, 8)
    rb = f64(b)
    ref = f64(a) @ (rb.transpose(0, 2, 1) if trans_b else rb)
    assert_close(c.to_numpy(), ref, dtype)


@given(
    m=st.integers(1, 12),
    n=st.integers(1, 12),
    k=st.integers(1, 12),
    tiles=st.tuples(st.integers(1, 13), st.integers(1, 13), st.integers(1, 13)),
    seed=st.integers(0, 2**16),
)
def test_gemm_any_tiling(
    rt: gpt2rs.Runtime, m: int, n: int, k: int, tiles: tuple, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    tm, tn, tk = tiles
    a = tensor(rt, rng, (m, k), (tm, tk), "fp64")
    b = tensor(rt, rng, (k, n), (tk, tn), "fp64")
    assert_close(ops.gemm(a, b).to_numpy(), f64(a) @ f64(b), "fp64")


def test_gemm_bad_input(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    a = tensor(rt, rng, (6, 8), (3, 4), "fp32")
    b = tensor(rt, rng, (8, 5), (4, 5), "fp32")
    with pytest.raises(gpt2rs.ShapeError, match="K of A and B"):
        ops.gemm(a, tensor(rt, rng, (8, 5), (3, 5), "fp32"))  # K cut differently
    with pytest.raises(gpt2rs.ShapeError):
        ops.gemm(a, tensor(rt, rng, (7, 5), (4, 5), "fp32"))  # K sizes differ
    with pytest.raises(gpt2rs.ShapeError):
        ops.gemm(a, b, gpt2rs.Tensor.zeros((6, 4), (3, 4), runtime=rt))
    with pytest.raises(gpt2rs.ShapeError):
        ops.gemm(a, b, ndim=3)
    with pytest.raises(gpt2rs.DTypeError):
        ops.gemm(a, tensor(rt, rng, (8, 5), (4, 5), "fp64"))
    with pytest.raises(ValueError, match="beta"):
        ops.gemm(a, b, beta=1.0)
    with pytest.raises(TypeError):
        ops.gemm(a, np.ones((8, 5)))  # type: ignore[arg-type]


# ---------------------------------------------------------------- element-wise


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_ops(rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str) -> None:
    shape, tile = (7, 9, 4), (3, 4, 3)
    x = tensor(rt, rng, shape, tile, dtype)
    y = tensor(rt, rng, shape, tile, dtype)
    rx, ry = f64(x), f64(y)

    assert ops.add(x, y, alpha=0.5, beta=-2.0) is y
    ry = 0.5 * rx - 2.0 * ry
    assert_close(y.to_numpy(), ry, dtype)
    ry = f64(y)

    assert ops.add(x, y, beta=0.0) is y  # y not read
    assert_close(y.to_numpy(), rx, dtype)
    ry = f64(y)

    assert ops.axpy(3.0, x, y) is y
    assert_close(y.to_numpy(), ry + 3.0 * rx, dtype)

    assert ops.scale(x, -0.25) is x
    assert_close(x.to_numpy(), -0.25 * rx, dtype)

    assert ops.fill(x, 1.5) is x
    np.testing.assert_array_equal(f64(x), np.full(shape, 1.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_and_cast_retile(rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str) -> None:
    x = tensor(rt, rng, (10, 6), (4, 4), dtype)
    dst = gpt2rs.Tensor.zeros((10, 6), (3, 5), dtype=dtype, runtime=rt)
    assert ops.copy(x, dst) is dst
    np.testing.assert_array_equal(dst.to_numpy(), x.to_numpy())
    for other in DTYPES:
        d = gpt2rs.Tensor.zeros((10, 6), (7, 2), dtype=other, runtime=rt)
        assert ops.cast(x, d) is d
        assert rel_err(d.to_numpy(), f64(x)) <= max(TOL[dtype], TOL[other])


def test_elementwise_bad_input(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    x = tensor(rt, rng, (6, 4), (3, 2), "fp32")
    with pytest.raises(gpt2rs.ShapeError, match="differ"):
        ops.add(x, tensor(rt, rng, (6, 5), (3, 2), "fp32"))
    with pytest.raises(gpt2rs.ShapeError, match="tilings"):
        ops.axpy(1.0, x, tensor(rt, rng, (6, 4), (2, 2), "fp32"))
    with pytest.raises(gpt2rs.DTypeError):
        ops.add(x, tensor(rt, rng, (6, 4), (3, 2), "bf16"))
    with pytest.raises(gpt2rs.DTypeError):
        ops.copy(x, tensor(rt, rng, (6, 4), (3, 2), "fp64"))
    with pytest.raises(gpt2rs.ShapeError):
        ops.cast(x, tensor(rt, rng, (4, 6), (3, 2), "fp64"))


def test_operands_from_two_runtimes(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    with gpt2rs.Runtime(ncpu=1) as other:
        x = tensor(rt, rng, (4, 4), (2, 2), "fp32")
        y = tensor(other, rng, (4, 4), (2, 2), "fp32")
        for call in (
            lambda: ops.add(x, y),
            lambda: ops.copy(x, y),
            lambda: ops.gemm(x, y),
            lambda: ops.sum(x, 0, out=gpt2rs.Tensor.zeros((4,), (2,), runtime=other)),
        ):
            with pytest.raises(ValueError, match="different runtimes"):
                call()


# ---------------------------------------------------------------- reductions


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_every_axis(rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str) -> None:
    shape, tile = (5, 7, 6), (2, 3, 4)
    x = tensor(rt, rng, shape, tile, dtype)
    rx = f64(x)
    for axis in (0, 1, 2, -1, -3):
        s = ops.sum(x, axis, alpha=2.0)
        ax = axis % 3
        assert s.shape == tuple(d for i, d in enumerate(shape) if i != ax)
        assert s.tile_shape == tuple(d for i, d in enumerate(tile) if i != ax)
        assert_close(s.to_numpy(), 2.0 * rx.sum(axis=axis), dtype)
    total = ops.sum(x)
    assert total.shape == ()
    assert_close(total.to_numpy(), np.asarray(rx.sum()), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_into_out_with_beta(rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str) -> None:
    x = tensor(rt, rng, (8, 5), (3, 2), dtype)
    out = tensor(rt, rng, (5,), (2,), dtype)
    o0 = f64(out)
    assert ops.sum(x, 0, alpha=0.5, out=out, beta=-1.0) is out
    assert_close(out.to_numpy(), 0.5 * f64(x).sum(0) - o0, dtype)
    s = gpt2rs.Tensor.from_numpy(np.array(4.0), (), dtype=dtype, runtime=rt)
    ops.sum(x, out=s, beta=1.0)
    assert_close(s.to_numpy(), f64(x).sum() + 4.0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm(rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str) -> None:
    x = tensor(rt, rng, (9, 4, 5), (4, 3, 2), dtype)
    n = ops.norm(x, alpha=3.0)
    assert n.shape == () and n.dtype == dtype
    assert_close(n.to_numpy(), 3.0 * np.linalg.norm(f64(x)), dtype)
    out = gpt2rs.Tensor.from_numpy(np.array([2.0]), None, dtype=dtype, runtime=rt)
    ops.norm(x, out=out, beta=0.5)
    assert_close(out.to_numpy(), np.array([np.linalg.norm(f64(x)) + 1.0]), dtype)


def test_norm_does_not_overflow(rt: gpt2rs.Runtime) -> None:
    # ||x|| = 4e300 although the sum of squares, 1.6e601, overflows float64.
    x = gpt2rs.Tensor.from_numpy(np.full((4, 4), 1e300), (3, 3), runtime=rt)
    assert abs(float(ops.norm(x).to_numpy()) / 4e300 - 1.0) <= 1e-12
    tiny = gpt2rs.Tensor.from_numpy(np.full((4, 4), 1e-300), (3, 3), runtime=rt)
    assert abs(float(ops.norm(tiny).to_numpy()) / 4e-300 - 1.0) <= 1e-12


def test_reduction_bad_input(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    x = tensor(rt, rng, (6, 4), (3, 2), "fp32")
    with pytest.raises(ValueError, match="out of range"):
        ops.sum(x, 2)
    with pytest.raises(ValueError, match="out of range"):
        ops.sum(x, -3)
    with pytest.raises(ValueError, match="beta"):
        ops.sum(x, 0, beta=1.0)
    with pytest.raises(ValueError, match="beta"):
        ops.norm(x, beta=1.0)
    with pytest.raises(gpt2rs.ShapeError):
        ops.sum(x, 0, out=gpt2rs.Tensor.zeros((4,), (3,), runtime=rt))  # tiled unlike x
    with pytest.raises(gpt2rs.ShapeError):
        ops.norm(x, out=gpt2rs.Tensor.zeros((2,), None, runtime=rt))
    with pytest.raises(gpt2rs.DTypeError):
        ops.norm(x, out=gpt2rs.Tensor.zeros((), None, dtype="fp64", runtime=rt))


def test_ops_are_asynchronous_and_chain(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    # A chain of dependent ops is submitted at once; to_numpy waits for it.
    a = tensor(rt, rng, (32, 32), (8, 8), "fp64")
    ra = f64(a)
    c = a
    ref = ra
    for _ in range(4):
        c = ops.gemm(c, a, alpha=0.1)
        ops.add(a, c, alpha=1.0, beta=1.0)
        ref = 0.1 * ref @ ra + ra
    rt.wait_all()
    assert_close(c.to_numpy(), ref, "fp64")
