"""gpt2rs.Tensor: numpy round trips, tilings, retile/astype, properties and bad input."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np
import pytest
from conftest import DTYPES, NP_DTYPE, TOL, rand, rel_err
from hypothesis import given
from hypothesis import strategies as st

import gpt2rs


@st.composite
def shapes_and_tiles(draw: st.DrawFn, max_rank: int = 4) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """A shape of rank 0..max_rank (sizes 0..7) and a tile shape (sizes 1..size+1, so often partial)."""
    rank = draw(st.integers(0, max_rank))
    shape = tuple(draw(st.lists(st.integers(0, 7), min_size=rank, max_size=rank)))
    tile = tuple(draw(st.integers(1, s + 1)) for s in shape)
    return shape, tile


@pytest.mark.parametrize("dtype", DTYPES)
@given(st_=shapes_and_tiles(), seed=st.integers(0, 2**16))
def test_round_trip_is_exact(rt: gpt2rs.Runtime, dtype: str, st_: tuple, seed: int) -> None:
    shape, tile = st_
    a = rand(np.random.default_rng(seed), shape, dtype)
    t = gpt2rs.Tensor.from_numpy(a, tile, runtime=rt)
    assert t.dtype == dtype
    assert t.shape == shape
    assert t.ndim == len(shape)
    assert t.grid_shape == tuple(-(-s // min(b, max(s, 1))) for s, b in zip(shape, tile))
    assert t.ntiles == int(np.prod(t.grid_shape))
    out = t.to_numpy()
    assert out.dtype == NP_DTYPE[dtype]
    assert out.shape == shape
    assert out.flags.c_contiguous
    assert out.tobytes() == a.tobytes()


@given(st_=shapes_and_tiles(), seed=st.integers(0, 2**16))
def test_retile_keeps_values(rt: gpt2rs.Runtime, st_: tuple, seed: int) -> None:
    shape, tile = st_
    rng = np.random.default_rng(seed)
    a = rand(rng, shape, "fp32")
    t = gpt2rs.Tensor.from_numpy(a, tile, runtime=rt)
    new_tile = tuple(int(rng.integers(1, s + 2)) for s in shape)
    r = t.retile(new_tile)
    assert r.shape == shape
    assert r.tile_shape == tuple(min(b, max(s, 1)) for s, b in zip(shape, new_tile))
    assert r.runtime is rt
    np.testing.assert_array_equal(r.to_numpy(), a)
    whole = t.retile(None)
    assert whole.ntiles == (0 if 0 in shape else 1)
    np.testing.assert_array_equal(whole.to_numpy(), a)


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_astype_matches_numpy(
    rt: gpt2rs.Runtime, rng: np.random.Generator, src: str, dst: str
) -> None:
    a = rand(rng, (7, 5, 3), src)
    t = gpt2rs.Tensor.from_numpy(a, (3, 2, 2), runtime=rt)
    c = t.astype(dst)
    assert c.dtype == dst and c.tile_shape == t.tile_shape
    ref = a.astype(np.float64)
    assert rel_err(c.to_numpy(), ref) <= max(TOL[src], TOL[dst])
    if NP_DTYPE[dst].itemsize >= NP_DTYPE[src].itemsize and {src, dst} != {"bf16", "fp16"}:
        # Widening is exact.
        np.testing.assert_array_equal(c.to_numpy().astype(np.float64), ref)
    d = t.astype(dst, tile_shape=(2, 5, 1))
    assert d.tile_shape == (2, 5, 1)
    np.testing.assert_array_equal(d.to_numpy(), c.to_numpy())


def test_from_numpy_converts_with_numpy(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    a = rng.standard_normal((5, 6))
    for name, np_dt in NP_DTYPE.items():
        t = gpt2rs.Tensor.from_numpy(a, (2, 4), dtype=name, runtime=rt)
        assert t.dtype == name
        np.testing.assert_array_equal(t.to_numpy(), a.astype(np_dt))
    # numpy dtypes and names are accepted as well as ours.
    for spec, name in [
        (np.float32, "fp32"),
        ("float64", "fp64"),
        (ml_dtypes.bfloat16, "bf16"),
        (np.dtype("float16"), "fp16"),
    ]:
        assert gpt2rs.Tensor.from_numpy(a, None, dtype=spec, runtime=rt).dtype == name
    i = np.arange(12, dtype=np.int64).reshape(3, 4)
    t = gpt2rs.Tensor.from_numpy(i, (2, 2), dtype="fp32", runtime=rt)
    np.testing.assert_array_equal(t.to_numpy(), i.astype(np.float32))
    # Lists and scalars go through numpy.asarray (float64).
    assert gpt2rs.Tensor.from_numpy([[1.0, 2.0], [3.0, 4.0]], (1, 1), runtime=rt).dtype == "fp64"


def test_non_contiguous_arrays_are_copied(rt: gpt2rs.Runtime, rng: np.random.Generator) -> None:
    base = rng.standard_normal((9, 8)).astype(np.float32)
    for a in (base.T, base[::2, 1::3], np.asfortranarray(base), base[:, ::-1]):
        t = gpt2rs.Tensor.from_numpy(a, (2, 3), runtime=rt)
        np.testing.assert_array_equal(t.to_numpy(), a)


def test_scalar_and_empty_tensors(rt: gpt2rs.Runtime) -> None:
    s = gpt2rs.Tensor.from_numpy(np.float32(3.5), (), runtime=rt)
    assert s.shape == () and s.ntiles == 1 and s.tile_shape == ()
    out = s.to_numpy()
    assert out.shape == () and out.dtype == np.float32 and out == 3.5
    s2 = gpt2rs.Tensor.from_numpy(np.array(2.0), None, runtime=rt)
    assert s2.to_numpy() == 2.0
    e = gpt2rs.Tensor.from_numpy(np.zeros((0, 3), np.float32), (2, 2), runtime=rt)
    assert e.ntiles == 0 and e.to_numpy().shape == (0, 3)


def test_zeros_and_properties(rt: gpt2rs.Runtime) -> None:
    z = gpt2rs.Tensor.zeros((5, 7), (2, 3), runtime=rt)
    assert z.dtype == "fp32"
    assert (z.shape, z.tile_shape, z.grid_shape, z.ntiles, z.ndim) == ((5, 7), (2, 3), (3, 3), 9, 2)
    np.testing.assert_array_equal(z.to_numpy(), np.zeros((5, 7), np.float32))
    assert repr(z) == "Tensor(shape=(5, 7), tile_shape=(2, 3), dtype='fp32', ntiles=9)"
    one = gpt2rs.Tensor.zeros(10, 4, dtype="bf16", runtime=rt)
    assert (
        one.shape == (10,) and one.grid_shape == (3,) and one.to_numpy().dtype == ml_dtypes.bfloat16
    )
    big_tile = gpt2rs.Tensor.zeros((3, 4), (100, 100), runtime=rt)
    assert big_tile.tile_shape == (3, 4) and big_tile.ntiles == 1
    assert np.asarray(big_tile).shape == (3, 4)
    assert np.asarray(big_tile, dtype=np.float64).dtype == np.float64


def test_default_runtime_is_used_and_shared() -> None:
    t = gpt2rs.Tensor.zeros((2, 2), None)
    assert t.runtime is gpt2rs.default_runtime()


@pytest.mark.parametrize(
    "tile",
    [(0, 2), (2, -1), (2,), (2, 2, 2), 3, ()],
    ids=["zero", "negative", "too-short", "too-long", "int-for-2d", "empty"],
)
def test_bad_tile_shapes_raise_shape_error(rt: gpt2rs.Runtime, tile: Any) -> None:
    a = np.zeros((4, 5), np.float32)
    with pytest.raises(gpt2rs.ShapeError):
        gpt2rs.Tensor.from_numpy(a, tile, runtime=rt)
    with pytest.raises(gpt2rs.ShapeError):
        gpt2rs.Tensor.zeros((4, 5), tile, runtime=rt)
    t = gpt2rs.Tensor.from_numpy(a, None, runtime=rt)
    with pytest.raises(gpt2rs.ShapeError):
        t.retile(tile)


def test_shape_error_is_a_value_error_with_a_clear_message(rt: gpt2rs.Runtime) -> None:
    with pytest.raises(
        ValueError, match=r"tile_shape \[2\] has 1 entries but the tensor has 2 axes"
    ):
        gpt2rs.Tensor.zeros((4, 5), (2,), runtime=rt)
    with pytest.raises(ValueError, match="every tile size must be >= 1"):
        gpt2rs.Tensor.zeros((4, 5), (0, 1), runtime=rt)


def test_bad_shapes_and_tile_types(rt: gpt2rs.Runtime) -> None:
    with pytest.raises(gpt2rs.ShapeError, match="negative"):
        gpt2rs.Tensor.zeros((3, -1), None, runtime=rt)
    with pytest.raises(TypeError):
        gpt2rs.Tensor.zeros((3, 4), "ab", runtime=rt)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gpt2rs.Tensor.zeros((3, 4), (1.5, 2), runtime=rt)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        gpt2rs.Tensor.zeros("34", None, runtime=rt)  # type: ignore[arg-type]
    with pytest.raises(gpt2rs.ShapeError, match="too large"):
        gpt2rs.Tensor.zeros((2**40, 2**40), None, runtime=rt)


@pytest.mark.parametrize(
    "array,dtype",
    [
        (np.arange(6, dtype=np.int64), None),
        (np.arange(6, dtype=np.int32), None),
        (np.ones(6, dtype=np.complex64), None),
        (np.ones(6, dtype=np.complex128), "fp32"),
        (np.array(["a", "b"]), "fp32"),
        (np.array([object(), object()]), "fp64"),
        (np.ones(6, dtype=np.float32), "int64"),
        (np.ones(6, dtype=np.float32), "fp8"),
        (np.ones(6, dtype=np.float32), np.int16),
    ],
    ids=[
        "int64",
        "int32",
        "complex",
        "complex-to-fp32",
        "str",
        "object",
        "int64-target",
        "fp8",
        "np-int16",
    ],
)
def test_unsupported_dtypes_raise_dtype_error(
    rt: gpt2rs.Runtime, array: np.ndarray, dtype: Any
) -> None:
    with pytest.raises(gpt2rs.DTypeError):
        gpt2rs.Tensor.from_numpy(array, None, dtype=dtype, runtime=rt)
    assert issubclass(gpt2rs.DTypeError, TypeError)


def test_unknown_dtype_in_zeros_and_astype(rt: gpt2rs.Runtime) -> None:
    with pytest.raises(gpt2rs.DTypeError, match="unknown dtype"):
        gpt2rs.Tensor.zeros((2,), None, dtype="int8", runtime=rt)
    t = gpt2rs.Tensor.zeros((2,), None, runtime=rt)
    with pytest.raises(gpt2rs.DTypeError):
        t.astype("complex64")


def test_shut_down_runtime_raises() -> None:
    r = gpt2rs.Runtime(ncpu=1)
    t = gpt2rs.Tensor.from_numpy(np.ones((3, 3), np.float32), (2, 2), runtime=r)
    r.shutdown()
    assert r.is_shut_down
    with pytest.raises(gpt2rs.RuntimeShutdownError):
        t.to_numpy()
    with pytest.raises(gpt2rs.RuntimeShutdownError):
        t.retile((1, 1))
    with pytest.raises(gpt2rs.RuntimeShutdownError):
        gpt2rs.Tensor.zeros((2, 2), None, runtime=r)
    with pytest.raises(gpt2rs.RuntimeShutdownError):
        gpt2rs.Tensor.from_numpy(np.ones(3), None, runtime=r)
    assert issubclass(gpt2rs.RuntimeShutdownError, RuntimeError)
