"""gpt2rs: tiled tensors and a task runtime in Rust, NNTile-style, driven from Python.

Tensors are cut into tiles, every operation is a set of tile tasks, and a
runtime schedules those tasks over CPU workers (and simulated device nodes),
moving tiles between memory nodes. Operations in `gpt2rs.ops` are
asynchronous; `Tensor.to_numpy` and `Runtime.wait_all` wait for them.

    >>> import numpy as np, gpt2rs
    >>> from gpt2rs import ops
    >>> a = gpt2rs.Tensor.from_numpy(np.ones((4, 6), np.float32), (2, 4))
    >>> ops.gemm(a, a, trans_b=True).to_numpy()[0, 0]
    np.float32(6.0)
"""

from __future__ import annotations

import atexit

from gpt2rs import mkl, ops, optim
from gpt2rs._gpt2rs import (
    DTypeError,
    Runtime,
    RuntimeShutdownError,
    ShapeError,
    TaskError,
    Tensor,
    __version__,
    _shutdown_default_runtime,
    default_runtime,
    set_default_runtime,
)
from gpt2rs.config import GPT2Config
from gpt2rs.hub import WeightsError
from gpt2rs.model import GPT2LMHead
from gpt2rs.optim import SGD, Adam, AdamW, clip_grad_norm
from gpt2rs.options import ModelOptions

__all__ = [
    "SGD",
    "Adam",
    "AdamW",
    "DTypeError",
    "GPT2Config",
    "GPT2LMHead",
    "ModelOptions",
    "Runtime",
    "RuntimeShutdownError",
    "ShapeError",
    "TaskError",
    "Tensor",
    "WeightsError",
    "__version__",
    "clip_grad_norm",
    "default_runtime",
    "mkl",
    "ops",
    "optim",
    "set_default_runtime",
]

# The pip wheels' NVRTC/cuBLAS must be loaded before the core dlopen()s them
# (a Runtime with ncuda > 0); finding them is a few globs, loading is lazy in
# the sense that absent wheels are simply skipped.
from gpt2rs import cuda as _cuda

_cuda.preload()
# The mkl wheel's library for bf16 GEMMs (one glob; loaded at first use).
mkl.register()

# Finish the default runtime's tasks and save its performance models at exit.
atexit.register(_shutdown_default_runtime)
