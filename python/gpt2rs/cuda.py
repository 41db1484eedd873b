"""CUDA support: NVRTC compilation of the kernels in ``cuda/*.cu`` and probes.

The CUDA libraries come from pip (``pip install 'gpt2rs[cuda]'``: the
``nvidia-cuda-nvrtc``, ``nvidia-cublas`` and ``nvidia-cuda-runtime`` 13.x
wheels). Before the first CUDA call this module finds them under
``site-packages/nvidia/cu13/lib`` (the 13.x wheel layout; 12.x wheels used
``nvidia/cuda_nvrtc/lib``) and loads them with ``RTLD_GLOBAL``, so the Rust
core's ``dlopen("libnvrtc.so.13")`` finds them with no ``LD_LIBRARY_PATH``.

Library identity: the core's loader (cudarc) asks for the bare names
``libnvrtc.so``, ``libcublas.so``, ``libcublasLt.so`` before ``*.so.13``. Where
a CUDA toolkit puts those names on the loader's path, it would load the
toolkit's copies beside the wheels' files. :func:`check_library_identity`
turns that into one :class:`CudaError` line naming both files and the fix
(:func:`link_dir`); it runs where gpt2rs starts using CUDA (a device found by
:func:`device_count`, :func:`device_info`, :func:`require`, NVRTC calls), never
at import. :func:`info` says what was loaded, from ``/proc/self/maps``.

A missing library or driver is a :class:`CudaError` (a ``RuntimeError``) with
the reason, never a crash.

    >>> from gpt2rs import cuda
    >>> cuda.is_available() in (True, False)
    True
"""

from __future__ import annotations

import contextlib
import ctypes
import os

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
from gpt2rs.cuda_libraries import (
    check_library_identity,
    dlopen_noload,
    link_dir,
    loaded_libraries,
    preload,
)

__all__ = [
    "CudaError",
    "cache_dir",
    "check_library_identity",
    "choose_gpus",
    "compile_all",
    "compile_module",
    "compile_source",
    "device_count",
    "device_info",
    "info",
    "is_available",
    "link_dir",
    "loaded_libraries",
    "modules",
    "nvrtc_version",
    "preload",
    "require",
    "unavailable_reason",
]


# The driver's CUDA version, once read (the driver never changes in a process).
_driver: list[tuple[int, int]] = []


def _driver_version() -> tuple[int, int] | None:
    """The CUDA version of the driver already in the process (None while none is)."""
    if _driver:
        return _driver[0]
    if dlopen_noload("libcuda.so.1") != "loaded":
        return None
    try:
        lib = ctypes.CDLL("libcuda.so.1", mode=os.RTLD_NOLOAD)
        v = ctypes.c_int(0)
        if lib.cuDriverGetVersion(ctypes.byref(v)) != 0:
            return None
    except (OSError, AttributeError):
        return None
    _driver.append((v.value // 1000, (v.value % 1000) // 10))
    return _driver[0]


def _check_nvrtc_against_driver() -> None:
    """NVRTC newer than the driver writes PTX that the driver cannot load."""
    driver = _driver_version()
    if driver is None or cuda_nvrtc_status() is not None:
        return
    nvrtc = cuda_nvrtc_version()
    if nvrtc > driver:
        raise CudaError(
            f"NVRTC {nvrtc[0]}.{nvrtc[1]} writes PTX that this driver (CUDA {driver[0]}."
            f"{driver[1]}) cannot load: pip install 'nvidia-cuda-nvrtc=={driver[0]}."
            f"{driver[1]}.*', or update the NVIDIA driver"
        )


def _verify() -> None:
    """The checks run where gpt2rs starts using CUDA."""
    check_library_identity()
    _check_nvrtc_against_driver()


def unavailable_reason() -> str | None:
    """Why CUDA cannot run here (no NVRTC, no driver/GPU), or None if it can."""
    preload()
    nvrtc = cuda_nvrtc_status()
    if nvrtc is not None:
        return nvrtc
    return cuda_driver_status()


def device_count() -> int:
    """GPUs visible to this process: 0 without a driver or GPU.

    Raises:
        CudaError: a GPU is visible but the CUDA libraries in the process are
            not the right ones (:func:`check_library_identity`, or an NVRTC
            newer than the driver). With no GPU it never raises.
    """
    preload()
    n = cuda_device_count()
    if n > 0:
        _verify()
    return n


def device_info(ordinal: int = 0) -> dict[str, object]:
    """Name, architecture (``sm_90``) and total memory of GPU ``ordinal``; CudaError if absent."""
    preload()
    name, arch, total = cuda_device_info(ordinal)
    _verify()
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
    _verify()


def nvrtc_version() -> tuple[int, int]:
    """The NVRTC version ``(major, minor)``; CudaError if NVRTC is missing."""
    preload()
    version = cuda_nvrtc_version()
    check_library_identity()
    return version


def compile_all(arch: str = "sm_90") -> list[tuple[str, int]]:
    """Compile every kernel module for ``arch``; ``(file, PTX bytes)`` per module.

    Needs only NVRTC (no GPU). Results are cached on disk (see :func:`cache_dir`).
    """
    preload()
    out = cuda_compile_all(arch)
    check_library_identity()
    return out


def compile_module(module: str, arch: str = "sm_90") -> tuple[str, bool]:
    """The PTX of one module (e.g. ``"layernorm.cu"``) and whether it was cached."""
    preload()
    out = cuda_compile_module(module, arch)
    check_library_identity()
    return out


def compile_source(name: str, source: str, arch: str = "sm_90") -> tuple[int, bool]:
    """Compile a source (with the kernel prelude) named ``name``: (PTX bytes, cached)."""
    preload()
    out = cuda_compile_source(name, source, arch)
    check_library_identity()
    return out


def modules() -> list[str]:
    """The kernel module file names."""
    return cuda_modules()


def cache_dir() -> str | None:
    """The compile cache directory ($GPT2RS_CUDA_CACHE or ~/.cache/gpt2rs/cuda)."""
    return cuda_cache_dir()


def info() -> dict[str, object]:
    """What gpt2rs's CUDA layer found and loaded, for logs; never raises.

    Returns:
        A dict: ``nvrtc_version`` (``"13.0"`` or None) and ``nvrtc_status``
        (None, or why NVRTC is missing); ``driver_status`` (None, or why no
        driver/GPU), ``driver_version`` (the driver's CUDA version, once it is
        loaded) and ``device_count``; ``preloaded`` (the wheels' files
        :func:`preload` loaded), ``loaded`` (:func:`loaded_libraries`) and
        ``problem`` (None, or the one-line error of the library checks);
        ``cache_dir``.
    """
    preload()
    out: dict[str, object] = {"nvrtc_status": cuda_nvrtc_status(), "nvrtc_version": None}
    if out["nvrtc_status"] is None:
        with contextlib.suppress(CudaError):
            major, minor = cuda_nvrtc_version()
            out["nvrtc_version"] = f"{major}.{minor}"
    out["driver_status"] = cuda_driver_status()
    out["device_count"] = cuda_device_count() if out["driver_status"] is None else 0
    driver = _driver_version()
    out["driver_version"] = f"{driver[0]}.{driver[1]}" if driver else None
    out["preloaded"] = preload()
    out["loaded"] = loaded_libraries()
    try:
        _verify()
        out["problem"] = None
    except CudaError as e:
        out["problem"] = str(e)
    out["cache_dir"] = cache_dir()
    return out
