"""CUDA support: NVRTC compilation of the kernels in ``cuda/*.cu`` and probes.

The CUDA libraries come from pip (``pip install 'gpt2rs[cuda]'``: the
``nvidia-cuda-nvrtc``, ``nvidia-cublas`` and ``nvidia-cuda-runtime`` 13.0
wheels). Before the first CUDA call this module finds them under
``site-packages/nvidia/cu13/lib`` (the 13.x wheel layout; 12.x wheels used
``nvidia/cuda_nvrtc/lib``) and loads them with ``RTLD_GLOBAL``, so the Rust
core's ``dlopen("libnvrtc.so.13")`` finds them with no ``LD_LIBRARY_PATH``.

A missing library or driver is a :class:`CudaError` (a ``RuntimeError``) with
the reason, never a crash.

    >>> from gpt2rs import cuda
    >>> cuda.is_available() in (True, False)
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import site
import sys
from pathlib import Path

from gpt2rs._gpt2rs import (
    CudaError,
    cuda_cache_dir,
    cuda_compile_all,
    cuda_compile_module,
    cuda_compile_source,
    cuda_device_count,
    cuda_device_info,
    cuda_driver_status,
    cuda_modules,
    cuda_nvrtc_status,
    cuda_nvrtc_version,
)

__all__ = [
    "CudaError",
    "cache_dir",
    "choose_gpus",
    "compile_all",
    "compile_module",
    "compile_source",
    "device_count",
    "device_info",
    "is_available",
    "modules",
    "nvrtc_version",
    "preload",
    "require",
    "unavailable_reason",
]

# (library stem, soname glob) in load order. libnvrtc dlopen()s its builtins
# by bare name at compile time, so they are preloaded too; cuBLASLt before
# cuBLAS. The wheels' `.alt.` variants are skipped.
_LIBS = (
    ("nvrtc-builtins", "libnvrtc-builtins.so.13*"),
    ("nvrtc", "libnvrtc.so.13*"),
    ("cublasLt", "libcublasLt.so.13*"),
    ("cublas", "libcublas.so.13*"),
)
_loaded: dict[str, str] = {}


def _lib_dirs() -> list[Path]:
    """Candidate ``nvidia/*/lib`` directories under every site-packages."""
    roots = list(sys.path)
    with contextlib.suppress(AttributeError):  # virtualenvs with an old site.py
        roots += site.getsitepackages()
    user = site.getusersitepackages() if hasattr(site, "getusersitepackages") else None
    if user:
        roots.append(user)
    dirs: list[Path] = []
    for root in dict.fromkeys(roots):
        for sub in ("cu13/lib", "cuda_nvrtc/lib", "cublas/lib"):
            d = Path(root or ".") / "nvidia" / sub
            if d.is_dir() and d not in dirs:
                dirs.append(d)
    return dirs


def preload() -> dict[str, str]:
    """Load the pip wheels' NVRTC and cuBLAS with RTLD_GLOBAL (once).

    Returns:
        The libraries loaded so far, by name, with their paths. A wheel that
        is absent is skipped (the Rust core then reports it as missing).
    """
    if sys.platform != "linux":
        return dict(_loaded)
    for name, pattern in _LIBS:
        if name in _loaded:
            continue
        for d in _lib_dirs():
            hits = sorted(p for p in glob.glob(str(d / pattern)) if ".alt." not in p)
            if not hits:
                continue
            try:
                ctypes.CDLL(hits[0], mode=os.RTLD_GLOBAL)
            except OSError:
                continue
            _loaded[name] = hits[0]
            break
    return dict(_loaded)


def unavailable_reason() -> str | None:
    """Why CUDA cannot run here (no NVRTC, no driver/GPU), or None if it can."""
    preload()
    nvrtc = cuda_nvrtc_status()
    if nvrtc is not None:
        return nvrtc
    return cuda_driver_status()


def device_count() -> int:
    """GPUs visible to this process: 0 without a driver or GPU (never raises)."""
    preload()
    return cuda_device_count()


def device_info(ordinal: int = 0) -> dict[str, object]:
    """Name, architecture (``sm_90``) and total memory of GPU ``ordinal``; CudaError if absent."""
    preload()
    name, arch, total = cuda_device_info(ordinal)
    return {"name": name, "arch": arch, "total_mem": total}


def choose_gpus(restrict: str | None, ncuda: int | None) -> tuple[int, str | None]:
    """How many GPUs a run uses: ``ncuda`` if given, else every visible one;
    none with ``restrict="cpu"``. Returns ``(count, notice)``, the notice
    saying why a run that could use a GPU stays on the CPU.

    Raises:
        ValueError: contradictory arguments.
        CudaError: GPUs were required (``restrict="cuda"`` or ``ncuda > 0``)
            but are not usable here.
    """
    if ncuda is not None and ncuda < 0:
        raise ValueError(f"ncuda must be >= 0, got {ncuda}")
    if restrict == "cuda" and ncuda == 0:
        raise ValueError("restrict cuda with ncuda 0: nothing to run on")
    if restrict == "cpu":
        if ncuda:
            raise ValueError(f"restrict cpu with ncuda {ncuda}: drop one of them")
        return 0, None
    if ncuda == 0:
        return 0, None
    reason = unavailable_reason()
    visible = 0 if reason else device_count()
    if ncuda is None:
        if visible == 0 and restrict == "cuda":
            raise CudaError(f"CUDA is not available here ({reason or 'no GPU visible'})")
        if visible == 0:
            return 0, f"no GPU ({reason or 'none visible'}): running on the CPU"
        return visible, None
    if ncuda > visible:
        why = f": {reason}" if reason else ""
        raise CudaError(
            f"CUDA is not available here ({ncuda} GPU(s) asked for, {visible} usable{why})"
        )
    return ncuda, None


def is_available() -> bool:
    """Whether CUDA kernels can run here (NVRTC and a driver with a GPU)."""
    return unavailable_reason() is None


def require() -> None:
    """Raise :class:`CudaError` with the reason unless CUDA can run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise CudaError(f"CUDA was required but is unavailable: {reason}")


def nvrtc_version() -> tuple[int, int]:
    """The NVRTC version ``(major, minor)``; CudaError if NVRTC is missing."""
    preload()
    return cuda_nvrtc_version()


def compile_all(arch: str = "sm_90") -> list[tuple[str, int]]:
    """Compile every kernel module for ``arch``; ``(file, PTX bytes)`` per module.

    Needs only NVRTC (no GPU). Results are cached on disk (see :func:`cache_dir`).
    """
    preload()
    return cuda_compile_all(arch)


def compile_module(module: str, arch: str = "sm_90") -> tuple[str, bool]:
    """The PTX of one module (e.g. ``"layernorm.cu"``) and whether it was cached."""
    preload()
    return cuda_compile_module(module, arch)


def compile_source(name: str, source: str, arch: str = "sm_90") -> tuple[int, bool]:
    """Compile a source (with the kernel prelude) named ``name``: (PTX bytes, cached)."""
    preload()
    return cuda_compile_source(name, source, arch)


def modules() -> list[str]:
    """The kernel module file names."""
    return cuda_modules()


def cache_dir() -> str | None:
    """The compile cache directory ($GPT2RS_CUDA_CACHE or ~/.cache/gpt2rs/cuda)."""
    return cuda_cache_dir()
