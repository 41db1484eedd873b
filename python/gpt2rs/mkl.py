"""oneMKL for bf16 GEMMs on the CPU: the optional ``mkl`` wheel
(``pip install 'gpt2rs[mkl]'``), found here and loaded by the Rust core at
its first bf16 GEMM, never linked at build time.

The ``mkl`` wheel puts ``libmkl_rt.so.*`` in ``<prefix>/lib`` of the
environment it is installed into. On CPUs with AMX-BF16 the bf16 and
``fp32_fast_bf16`` GEMMs run there; elsewhere they are widened to f32 (MKL's
bf16 GEMM without AMX is slower than f32). ``GPT2RS_BF16_GEMM=auto|mkl|f32``
overrides the choice; :func:`bf16_gemm` says what was chosen and why.
"""

from __future__ import annotations

import glob
import site
import sys
from pathlib import Path

from ._gpt2rs import cpu_bf16_gemm, cpu_mkl_hint


def find() -> str | None:
    """The ``libmkl_rt`` of the ``mkl`` wheel in this environment, or None."""
    if sys.platform != "linux":
        return None
    prefixes = [sys.prefix, sys.base_prefix]
    user = getattr(site, "USER_BASE", None)
    if user:
        prefixes.append(user)
    for prefix in dict.fromkeys(prefixes):
        hits = sorted(glob.glob(str(Path(prefix) / "lib" / "libmkl_rt.so.*")), reverse=True)
        if hits:
            return hits[0]
    return None


def register() -> None:
    """Point the Rust loader at the wheel's library (nothing is loaded yet)."""
    path = find()
    if path is not None:
        cpu_mkl_hint(path)


def bf16_gemm() -> str:
    """How bf16 GEMMs run on this CPU, and why (one line).

    Raises:
        ValueError: GPT2RS_BF16_GEMM is not auto, mkl or f32, or asks for
            oneMKL where it cannot be loaded.
    """
    return cpu_bf16_gemm()
