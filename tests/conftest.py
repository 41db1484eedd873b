"""Shared fixtures and helpers for the pytest suites (one file per binding module)."""

from __future__ import annotations

import os
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator, Sequence

import ml_dtypes
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, settings

import gpt2rs

# Kept small: the whole suite should run in about a minute on 2 cores.
settings.register_profile(
    "gpt2rs",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "gpt2rs"))

DTYPES = ["fp32", "fp64", "bf16", "fp16"]

# Relative Frobenius error targets (DESIGN.md, Numerics).
TOL = {"fp64": 1e-12, "fp32": 1e-5, "fp16": 2e-3, "bf16": 1e-2}

NP_DTYPE = {
    "fp32": np.dtype(np.float32),
    "fp64": np.dtype(np.float64),
    "fp16": np.dtype(np.float16),
    "bf16": np.dtype(ml_dtypes.bfloat16),
}


def rel_err(x: npt.ArrayLike, ref: npt.ArrayLike) -> float:
    """||x - ref||_F / ||ref||_F, in float64 (absolute when ref is zero)."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    den = np.linalg.norm(ref)
    num = np.linalg.norm(x - ref)
    return float(num / den) if den > 0 else float(num)


def assert_close(x: npt.ArrayLike, ref: npt.ArrayLike, dtype: str) -> None:
    err = rel_err(x, ref)
    assert err <= TOL[dtype], f"{dtype}: relative error {err:.3e} > {TOL[dtype]:.0e}"


def rand(rng: np.random.Generator, shape: Sequence[int], dtype: str) -> np.ndarray:
    """Standard-normal data already rounded to `dtype` (as a numpy array of it)."""
    return rng.standard_normal(tuple(shape)).astype(NP_DTYPE[dtype])


def f64(t: gpt2rs.Tensor) -> np.ndarray:
    """The tensor's values in float64 (the rounded inputs a reference is computed from)."""
    return t.to_numpy().astype(np.float64)


def partial_tiles(shape: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    """A tile shape that leaves a partial last tile on most axes."""
    return tuple(int(rng.integers(1, max(s, 1) + 1)) if s > 2 else max(s - 1, 1) for s in shape)


@pytest.fixture(scope="module")
def rt() -> Iterator[gpt2rs.Runtime]:
    """A two-worker runtime shared by a test module."""
    r = gpt2rs.Runtime(ncpu=2)
    yield r
    r.shutdown()


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> np.random.Generator:
    """A generator seeded from the test's name, so that failures reproduce."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
