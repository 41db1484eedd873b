"""Every gpt2rs.ops op on the GPU against the same op on the CPU.

Both runtimes get the same random inputs (already rounded to the dtype), with
odd shapes, partial tiles, tiles of one element and a few GPU-sized tiles.
Results are compared by relative Frobenius error (conftest.GPU_TOL). The CUDA
runtime is restricted to its CUDA worker and every test checks that the GPU
ran the tasks and no CPU worker did (`ran_on_gpu`). The last tests run a
CPU+GPU runtime (eager and dmda) where tiles move between host and device
memory in both directions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from conftest import DTYPES, NP_DTYPE, rand, rel_err

import gpt2rs
from gpt2rs import ops

from .conftest import GPU_TOL, cuda_impl_or_skip, ran_on_gpu, task_counts

Fn = Callable[[gpt2rs.Runtime], list[np.ndarray]]


def on(
    rt: gpt2rs.Runtime, a: np.ndarray, tile: Sequence[int] | None, dtype: str | None = None
) -> gpt2rs.Tensor:
    return gpt2rs.Tensor.from_numpy(
        a, None if tile is None else tuple(tile), dtype=dtype, runtime=rt
    )


def check(
    cpu_rt: gpt2rs.Runtime,
    cuda_rt: gpt2rs.Runtime,
    fn: Fn,
    dtype: str,
    what: str,
    tol: float | None = None,
) -> list[np.ndarray]:
    """Runs fn on both runtimes and compares every array it returns."""
    ref = fn(cpu_rt)
    with cuda_impl_or_skip(what, optional=False), ran_on_gpu(cuda_rt):
        out = fn(cuda_rt)
    assert len(out) == len(ref)
    t = GPU_TOL[dtype] if tol is None else tol
    for i, (o, r) in enumerate(zip(out, ref)):
        assert o.shape == r.shape and o.dtype == r.dtype, (i, o.shape, r.shape, o.dtype, r.dtype)
        assert np.all(np.isfinite(np.asarray(o, np.float64))), (
            f"{what}: output {i} has non-finite values"
        )
        err = rel_err(o, r)
        assert err <= t, (
            f"{what} [{dtype}] output {i}: GPU vs CPU relative error {err:.3e} > {t:.0e}"
        )
    return out


# ---------------------------------------------------------------- smoke (first: the most basic failure)


def test_runtime_reports_the_gpu() -> None:
    with gpt2rs.Runtime(ncpu=1, ncuda=1) as rt:
        st = rt.stats()
        assert [w["kind"] for w in st["workers"]].count("cuda") == 1
        assert [n["name"] for n in st["nodes"]] == ["host", "cuda0"]
    from gpt2rs import cuda

    n = cuda.device_count()
    with pytest.raises(Exception, match=r"(?i)cuda|gpu|device"):
        gpt2rs.Runtime(ncpu=1, ncuda=n + 1)


def test_fill_and_copy_back(cuda_rt: gpt2rs.Runtime) -> None:
    with ran_on_gpu(cuda_rt):
        x = on(cuda_rt, np.zeros((5, 7), np.float32), (2, 3))
        ops.fill(x, 2.5)
        got = x.to_numpy()
    np.testing.assert_array_equal(got, np.full((5, 7), 2.5, np.float32))


# ---------------------------------------------------------------- gemm

# (m, n, k), (tm, tn, tk): odd sizes with partial tiles, single-element tiles,
# and GPU-sized tiles whose last tile is partial on every axis.
GEMM_SHAPES = [
    ((13, 11, 17), (5, 4, 6)),
    ((5, 4, 3), (1, 1, 1)),
    ((300, 257, 190), (128, 96, 64)),
    ((64, 64, 64), (64, 64, 64)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", range(len(GEMM_SHAPES)))
def test_gemm_transposes(
    cpu_rt: gpt2rs.Runtime,
    cuda_rt: gpt2rs.Runtime,
    rng: np.random.Generator,
    dtype: str,
    trans_a: bool,
    trans_b: bool,
    shape: int,
) -> None:
    (m, n, k), (tm, tn, tk) = GEMM_SHAPES[shape]
    a = rand(rng, (k, m) if trans_a else (m, k), dtype)
    b = rand(rng, (n, k) if trans_b else (k, n), dtype)
    ta = (tk, tm) if trans_a else (tm, tk)
    tb = (tn, tk) if trans_b else (tk, tn)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        c = ops.gemm(on(rt, a, ta), on(rt, b, tb), trans_a=trans_a, trans_b=trans_b, alpha=0.5)
        assert c.shape == (m, n) and c.tile_shape == (tm, tn) and c.dtype == dtype
        return [c.to_numpy()]

    out = check(cpu_rt, cuda_rt, fn, dtype, "gemm")
    # Also against float64 numpy: a GPU GEMM in a lower precision than asked
    # (TF32 for fp32, say) is caught even if the CPU were wrong the same way.
    ref = (
        0.5
        * (a.T if trans_a else a).astype(np.float64)
        @ (b.T if trans_b else b).astype(np.float64)
    )
    assert rel_err(out[0], ref) <= {"fp64": 1e-12, "fp32": 1e-5, "bf16": 1e-2, "fp16": 2e-3}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_alpha_beta_into_existing_c(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    a, b, c = rand(rng, (70, 50), dtype), rand(rng, (50, 33), dtype), rand(rng, (70, 33), dtype)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        ct = on(rt, c, (32, 16))
        assert ops.gemm(on(rt, a, (32, 24)), on(rt, b, (24, 16)), ct, alpha=-1.5, beta=0.75) is ct
        return [ct.to_numpy()]

    check(cpu_rt, cuda_rt, fn, dtype, "gemm alpha/beta")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_beta_zero_does_not_read_c(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    a, b = rand(rng, (9, 10), dtype), rand(rng, (10, 7), dtype)
    nan = np.full((9, 7), np.nan, dtype=NP_DTYPE[dtype])

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        ct = on(rt, nan, (4, 5))
        ops.gemm(on(rt, a, (4, 3)), on(rt, b, (3, 5)), ct, beta=0.0)
        return [ct.to_numpy()]

    check(cpu_rt, cuda_rt, fn, dtype, "gemm beta=0 over NaN")


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_two_contracted_axes(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    # A [M, K1, K2] @ B [K1, K2, N1, N2]
    a, b = rand(rng, (6, 4, 5), dtype), rand(rng, (4, 5, 3, 7), dtype)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        c = ops.gemm(on(rt, a, (4, 3, 2)), on(rt, b, (3, 2, 2, 4)), ndim=2)
        assert c.shape == (6, 3, 7)
        return [c.to_numpy()]

    check(cpu_rt, cuda_rt, fn, dtype, "gemm ndim=2")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_batched(
    cpu_rt: gpt2rs.Runtime,
    cuda_rt: gpt2rs.Runtime,
    rng: np.random.Generator,
    dtype: str,
    trans_a: bool,
    trans_b: bool,
) -> None:
    # A [B, M, K] (or [B, K, M]) @ B [B, K, N] (or [B, N, K]), batch tiled unevenly
    nb, m, n, k = 5, 37, 29, 23
    a = rand(rng, (nb, k, m) if trans_a else (nb, m, k), dtype)
    b = rand(rng, (nb, n, k) if trans_b else (nb, k, n), dtype)
    ta = (2, 16, 16)
    tb = (2, 8, 16) if trans_b else (2, 16, 8)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        c = ops.gemm(on(rt, a, ta), on(rt, b, tb), trans_a=trans_a, trans_b=trans_b, batch_ndim=1)
        assert c.shape == (nb, m, n)
        return [c.to_numpy()]

    check(cpu_rt, cuda_rt, fn, dtype, "batched gemm")


def test_gemm_chain_stays_on_the_device(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator
) -> None:
    # Dependent GEMMs reading and accumulating tiles written on the device.
    a = rng.standard_normal((200, 200))

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        at = on(rt, a, (64, 64))
        c = at
        for _ in range(4):
            c = ops.gemm(c, at, alpha=1.0 / 200)
            ops.add(at, c, alpha=1.0, beta=1.0)
        return [c.to_numpy()]

    check(cpu_rt, cuda_rt, fn, "fp64", "gemm chain")


# ---------------------------------------------------------------- element-wise

ELEM_SHAPES = [((7, 9, 4), (3, 4, 3)), ((5, 3), (1, 1)), ((300, 130), (128, 64)), ((1000,), (256,))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", range(len(ELEM_SHAPES)))
def test_elementwise_ops(
    cpu_rt: gpt2rs.Runtime,
    cuda_rt: gpt2rs.Runtime,
    rng: np.random.Generator,
    dtype: str,
    shape: int,
) -> None:
    shp, tile = ELEM_SHAPES[shape]
    x0, y0 = rand(rng, shp, dtype), rand(rng, shp, dtype)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        x, y = on(rt, x0, tile), on(rt, y0, tile)
        res = []
        assert ops.add(x, y, alpha=0.5, beta=-2.0) is y
        res.append(y.to_numpy())
        assert ops.axpy(3.0, x, y) is y
        res.append(y.to_numpy())
        assert ops.scale(x, -0.25) is x
        res.append(x.to_numpy())
        assert ops.add(x, y, alpha=1.0, beta=1.0) is y
        res.append(y.to_numpy())
        assert ops.fill(x, 1.5) is x
        res.append(x.to_numpy())
        return res

    out = check(cpu_rt, cuda_rt, fn, dtype, "add/axpy/scale/fill")
    np.testing.assert_array_equal(out[-1].astype(np.float64), np.full(shp, 1.5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_beta_zero_does_not_read_y(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    x0 = rand(rng, (11, 6), dtype)
    nan = np.full((11, 6), np.nan, dtype=NP_DTYPE[dtype])

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        y = on(rt, nan, (4, 4))
        ops.add(on(rt, x0, (4, 4)), y, alpha=2.0, beta=0.0)
        return [y.to_numpy()]

    check(cpu_rt, cuda_rt, fn, dtype, "add beta=0 over NaN")


@pytest.mark.parametrize("dtype", DTYPES)
def test_copy_retile_is_exact(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    x0 = rand(rng, (37, 26), dtype)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        x = on(rt, x0, (16, 8))
        dst = gpt2rs.Tensor.zeros((37, 26), (5, 11), dtype=dtype, runtime=rt)
        assert ops.copy(x, dst) is dst
        return [dst.to_numpy(), x.retile((37, 3)).to_numpy()]

    out = check(cpu_rt, cuda_rt, fn, dtype, "copy/retile")
    for o in out:
        np.testing.assert_array_equal(o, x0)


@pytest.mark.parametrize("src", DTYPES)
@pytest.mark.parametrize("dst", DTYPES)
def test_cast(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, src: str, dst: str
) -> None:
    x0 = rand(rng, (23, 17), src)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        x = on(rt, x0, (8, 8))
        d = gpt2rs.Tensor.zeros((23, 17), (7, 5), dtype=dst, runtime=rt)
        assert ops.cast(x, d) is d
        return [d.to_numpy(), x.astype(dst).to_numpy()]

    # Both round the same values once; only a double rounding through an
    # intermediate type could differ, by one unit of the destination type.
    tol = {"fp64": 0.0, "fp32": 1e-7, "bf16": 1e-2, "fp16": 1e-3}[dst]
    out = check(cpu_rt, cuda_rt, fn, dst, f"cast {src}->{dst}", tol=max(tol, 1e-12))
    if src == dst or dst == "fp64":
        np.testing.assert_array_equal(out[0].astype(np.float64), x0.astype(np.float64))


# ---------------------------------------------------------------- reductions

SUM_SHAPES = [((5, 7, 6), (2, 3, 4)), ((300, 130), (128, 64)), ((4, 1, 3), (1, 1, 1))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", range(len(SUM_SHAPES)))
def test_sum_every_axis(
    cpu_rt: gpt2rs.Runtime,
    cuda_rt: gpt2rs.Runtime,
    rng: np.random.Generator,
    dtype: str,
    shape: int,
) -> None:
    shp, tile = SUM_SHAPES[shape]
    # Mean 1, so that no sum is near 0 and relative errors stay meaningful.
    x0 = (rng.standard_normal(shp) + 1.0).astype(NP_DTYPE[dtype])

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        x = on(rt, x0, tile)
        res = [ops.sum(x, axis, alpha=2.0).to_numpy() for axis in range(len(shp))]
        res.append(ops.sum(x, -1).to_numpy())
        res.append(ops.sum(x).to_numpy())
        return res

    out = check(cpu_rt, cuda_rt, fn, dtype, "sum")
    assert rel_err(out[-1], np.asarray(x0.astype(np.float64).sum())) <= GPU_TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_into_out_with_beta(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    x0 = (rng.standard_normal((80, 45)) + 1.0).astype(NP_DTYPE[dtype])
    o0 = rand(rng, (45,), dtype)
    nan = np.full((45,), np.nan, dtype=NP_DTYPE[dtype])

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        x = on(rt, x0, (32, 16))
        out = on(rt, o0, (16,))
        assert ops.sum(x, 0, alpha=0.5, out=out, beta=-1.0) is out
        fresh = on(rt, nan, (16,))
        ops.sum(x, 0, out=fresh, beta=0.0)
        s = gpt2rs.Tensor.from_numpy(np.array(4.0), (), dtype=dtype, runtime=rt)
        ops.sum(x, out=s, beta=1.0)
        return [out.to_numpy(), fresh.to_numpy(), s.to_numpy()]

    check(cpu_rt, cuda_rt, fn, dtype, "sum out/beta")


@pytest.mark.parametrize("dtype", DTYPES)
def test_norm(
    cpu_rt: gpt2rs.Runtime, cuda_rt: gpt2rs.Runtime, rng: np.random.Generator, dtype: str
) -> None:
    x0, y0 = rand(rng, (9, 4, 5), dtype), rand(rng, (300, 200), dtype)

    def fn(rt: gpt2rs.Runtime) -> list[np.ndarray]:
        res = [
            ops.norm(on(rt, x0, (4, 3, 2)), alpha=3.0).to_numpy(),
            ops.norm(on(rt, y0, (128, 64))).to_numpy(),
        ]
        out = gpt2rs.Tensor.from_numpy(np.array([2.0]), None, dtype=dtype, runtime=rt)
        ops.norm(on(rt, x0, (4, 3, 2)), out=out, beta=0.5)
        res.append(out.to_numpy())
        return res

    out = check(cpu_rt, cuda_rt, fn, dtype, "norm")
    assert rel_err(out[1], np.asarray(np.linalg.norm(y0.astype(np.float64)))) <= GPU_TOL[dtype]


def test_norm_does_not_overflow(cuda_rt: gpt2rs.Runtime) -> None:
    # ||x|| = 4e300 although the sum of squares, 1.6e601, overflows float64.
    with ran_on_gpu(cuda_rt):
        big = float(ops.norm(on(cuda_rt, np.full((4, 4), 1e300), (3, 3))).to_numpy())
        tiny = float(ops.norm(on(cuda_rt, np.full((4, 4), 1e-300), (3, 3))).to_numpy())
    assert abs(big / 4e300 - 1.0) <= 1e-12
    assert abs(tiny / 4e-300 - 1.0) <= 1e-12


# ---------------------------------------------------------------- CPU + GPU in one runtime


def mixed_program(rt: gpt2rs.Runtime, a: np.ndarray, b: np.ndarray) -> list[np.ndarray]:
    """GEMMs, element-wise ops and reductions over shared tiles, so that a
    tile written on one memory node is read on the other."""
    at, bt = on(rt, a, (96, 96)), on(rt, b, (96, 96))
    c = ops.gemm(at, bt, alpha=1.0 / a.shape[0])
    res = []
    for i in range(3):
        ops.axpy(0.5, c, bt)
        ops.scale(at, 0.9)
        c = ops.gemm(c, bt, trans_b=(i % 2 == 1), alpha=1.0 / a.shape[0])
        ops.add(at, c, alpha=0.1, beta=1.0)
        res.append(ops.sum(c, 1).to_numpy())
    res += [c.to_numpy(), bt.to_numpy(), ops.norm(c).to_numpy()]
    return res


@pytest.mark.parametrize("scheduler", ["eager", "dmda"])
@pytest.mark.parametrize("dtype", ["fp32", "fp64"])
def test_cpu_and_gpu_in_one_runtime(
    cpu_rt: gpt2rs.Runtime, rng: np.random.Generator, scheduler: str, dtype: str
) -> None:
    a, b = rand(rng, (400, 400), dtype), rand(rng, (400, 400), dtype)
    ref = mixed_program(cpu_rt, a, b)
    with gpt2rs.Runtime(ncpu=2, ncuda=1, scheduler=scheduler) as rt:
        assert [n["kind"] for n in rt.stats()["nodes"]] == ["host", "cuda"]
        # dmda calibrates its models first; which worker takes what is up to
        # the scheduler, so run until both kinds have run tasks.
        for _ in range(8):
            out = mixed_program(rt, a, b)
            for i, (o, r) in enumerate(zip(out, ref)):
                err = rel_err(o, r)
                assert err <= GPU_TOL[dtype] * 10, f"{scheduler} {dtype} output {i}: {err:.3e}"
            rt.wait_all()
            cuda, other = task_counts(rt)
            if cuda > 0 and other > 0:
                break
        assert cuda > 0, f"{scheduler}: the GPU ran no task"
        st = rt.stats()
        moved = {b_["name"]: b_["bytes"] for b_ in st["buses"]}
        assert moved.get("host->cuda0", 0) > 0, moved


def test_dmda_prefers_the_gpu_for_big_gemms(
    cpu_rt: gpt2rs.Runtime, rng: np.random.Generator
) -> None:
    a = rand(rng, (1024, 1024), "fp32")
    with gpt2rs.Runtime(ncpu=2, ncuda=1, scheduler="dmda") as rt:
        at = on(rt, a, (512, 512))
        for _ in range(6):  # calibration of the performance models
            ops.gemm(at, at).to_numpy()
        c0, o0 = task_counts(rt)
        out = ops.gemm(at, at, alpha=1.0 / 1024).to_numpy()
        rt.wait_all()
        c1, o1 = task_counts(rt)
    ref = ops.gemm(
        on(cpu_rt, a, (512, 512)), on(cpu_rt, a, (512, 512)), alpha=1.0 / 1024
    ).to_numpy()
    assert rel_err(out, ref) <= 1e-5
    # 8 tile GEMMs of 512^3: a GPU does one (with its transfers) in well under
    # a millisecond, a CPU core in a few milliseconds.
    assert c1 - c0 >= (c1 - c0 + o1 - o0) // 2, (
        f"dmda sent {o1 - o0} of {c1 - c0 + o1 - o0} GEMM tasks to the CPU"
    )
