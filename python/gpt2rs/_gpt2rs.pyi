# Type stubs of the compiled module gpt2rs._gpt2rs (src/py/). Checked with
# `python -m mypy.stubtest gpt2rs._gpt2rs`.

import os
from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, final

import numpy as np
import numpy.typing as npt

from gpt2rs.config import GPT2Config
from gpt2rs.options import ModelOptions

__all__ = [
    "Communicator",
    "CudaError",
    "DTypeError",
    "DataParallelCore",
    "DistError",
    "Gpt2Core",
    "KvCache",
    "OptimizerCore",
    "Runtime",
    "RuntimeShutdownError",
    "ShapeError",
    "TaskError",
    "Tensor",
    "__version__",
    "_shutdown_default_runtime",
    "cpu_bf16_gemm",
    "cpu_mkl_hint",
    "cuda_cache_dir",
    "cuda_compile_all",
    "cuda_compile_module",
    "cuda_compile_source",
    "cuda_device_count",
    "cuda_device_info",
    "cuda_driver_status",
    "cuda_modules",
    "cuda_nvrtc_status",
    "cuda_nvrtc_version",
    "default_runtime",
    "gpt2_decode_bytes",
    "gpt2_encode_batch",
    "gpt2_encode_reference",
    "nccl_all_reduce_probe",
    "nccl_unique_id",
    "nccl_version",
    "op_add",
    "op_axpy",
    "op_cast",
    "op_copy",
    "op_fill",
    "op_gemm",
    "op_norm",
    "op_scale",
    "op_sum",
    "set_default_runtime",
]

__version__: str

_DType: TypeAlias = str | type | np.dtype[Any]
_TileShape: TypeAlias = Sequence[int] | int | None
_Path: TypeAlias = str | os.PathLike[str]

class ShapeError(ValueError):
    """Shapes or tilings of the operands do not fit together, or a tile shape is invalid."""

class DTypeError(TypeError):
    """An unsupported dtype, or operands whose dtypes differ."""

class TaskError(RuntimeError):
    """A task failed (or was cancelled because one it depends on failed)."""

class RuntimeShutdownError(RuntimeError):
    """The runtime the operation needs has been shut down."""

@final
class Runtime:
    def __new__(
        cls,
        ncpu: int | None = None,
        scheduler: str = "eager",
        memory_limits: Sequence[int | None] | dict[int | str, int | None] | None = None,
        perf_model_dir: _Path | None = None,
        nsim: int = 0,
        trace: bool = False,
        ncuda: int = 0,
        restrict: Literal["cpu", "cuda"] | None = None,
        comm: bool = False,
        first_gpu: int = 0,
    ) -> Runtime: ...
    def wait_all(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def set_phase(self, name: str) -> None: ...
    def save_trace(self, path: _Path) -> None: ...
    def save_perf_models(self) -> None: ...
    def shutdown(self) -> None: ...
    @property
    def nworkers(self) -> int: ...
    @property
    def nnodes(self) -> int: ...
    @property
    def comm_on_gpu(self) -> bool: ...
    @property
    def scheduler(self) -> Literal["eager", "dmda"]: ...
    @property
    def is_shut_down(self) -> bool: ...
    def __enter__(self) -> Runtime: ...
    def __exit__(
        self,
        *_args: object,
    ) -> bool: ...

@final
class Tensor:
    @staticmethod
    def from_numpy(
        array: npt.ArrayLike,
        tile_shape: _TileShape,
        dtype: _DType | None = None,
        runtime: Runtime | None = None,
    ) -> Tensor: ...
    @staticmethod
    def zeros(
        shape: Sequence[int] | int,
        tile_shape: _TileShape,
        dtype: _DType = "fp32",
        runtime: Runtime | None = None,
    ) -> Tensor: ...
    def to_numpy(self) -> np.ndarray[Any, np.dtype[Any]]: ...
    def __array__(
        self, dtype: Any = None, copy: bool | None = None
    ) -> np.ndarray[Any, np.dtype[Any]]: ...
    def retile(self, tile_shape: _TileShape) -> Tensor: ...
    def astype(self, dtype: _DType, tile_shape: _TileShape = None) -> Tensor: ...
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def tile_shape(self) -> tuple[int, ...]: ...
    @property
    def grid_shape(self) -> tuple[int, ...]: ...
    @property
    def ntiles(self) -> int: ...
    @property
    def ndim(self) -> int: ...
    @property
    def dtype(self) -> Literal["fp32", "fp64", "bf16", "fp16"]: ...
    @property
    def runtime(self) -> Runtime: ...

def default_runtime() -> Runtime: ...
def set_default_runtime(runtime: Runtime) -> None: ...
def _shutdown_default_runtime() -> None: ...
def op_gemm(
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
) -> Tensor: ...
def op_add(x: Tensor, y: Tensor, *, alpha: float = 1.0, beta: float = 1.0) -> Tensor: ...
def op_axpy(alpha: float, x: Tensor, y: Tensor) -> Tensor: ...
def op_scale(x: Tensor, alpha: float) -> Tensor: ...
def op_fill(x: Tensor, value: float) -> Tensor: ...
def op_copy(src: Tensor, dst: Tensor) -> Tensor: ...
def op_cast(src: Tensor, dst: Tensor) -> Tensor: ...
def op_sum(
    x: Tensor,
    axis: int | None = None,
    *,
    alpha: float = 1.0,
    out: Tensor | None = None,
    beta: float = 0.0,
) -> Tensor: ...
def op_norm(
    x: Tensor, *, alpha: float = 1.0, out: Tensor | None = None, beta: float = 0.0
) -> Tensor: ...

@final
class Gpt2Core:
    """The compiled GPT-2 model; use gpt2rs.GPT2LMHead."""

    def __new__(
        cls, config: GPT2Config, options: ModelOptions, runtime: Runtime | None = None
    ) -> Gpt2Core: ...
    def param_names(self) -> list[str]: ...
    def param_shape(self, name: str) -> list[int]: ...
    @property
    def export_dtype(self) -> Literal["float32", "float64"]: ...
    def get_param(self, name: str) -> npt.NDArray[Any]: ...
    def get_grad(self, name: str) -> npt.NDArray[Any]: ...
    def set_param(self, name: str, data: npt.NDArray[np.uint8]) -> None: ...
    def forward(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[Any]: ...
    def forward_backward(
        self,
        ids: npt.NDArray[np.int64],
        targets: npt.NDArray[np.int64],
        grad_scale: float = 1.0,
        dropout_seed: int | None = None,
    ) -> float: ...
    def loss(self, ids: npt.NDArray[np.int64], targets: npt.NDArray[np.int64]) -> float: ...
    def zero_grad(self) -> None: ...
    def clip_grad_norm(self, max_norm: float) -> float: ...
    def new_cache(self, batch: int) -> KvCache: ...
    def forward_cached(
        self, cache: KvCache, ids: npt.NDArray[np.int64], last_only: bool = False
    ) -> npt.NDArray[Any]: ...

@final
class KvCache:
    """Keys and values of every position a model has seen, per layer."""

    def __len__(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    def reset(self) -> None: ...
    def truncate(self, length: int) -> None: ...

@final
class OptimizerCore:
    """The compiled optimizer; use gpt2rs.AdamW, gpt2rs.Adam or gpt2rs.SGD."""

    def __new__(
        cls,
        model: Gpt2Core,
        kind: Literal["sgd", "adam", "adamw"],
        lr: float,
        weight_decay: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
    ) -> OptimizerCore: ...
    def step(self) -> None: ...
    lr: float
    @property
    def weight_decay(self) -> float: ...
    step_count: int
    def state_keys(self) -> list[tuple[str, str]]: ...
    def get_state(self, param: str, state: str) -> npt.NDArray[Any]: ...
    def set_state(self, param: str, state: str, data: npt.NDArray[np.uint8]) -> None: ...

# -- GPT-2 tokenizer (src/py/tokenizer.rs) --

def gpt2_encode_batch(
    texts: Sequence[str], *, append_eot: bool = True, workers: int = 0
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.int64]]:
    """Encode documents with GPT-2's tokenizer, on every core, without the GIL."""

def gpt2_encode_reference(text: str) -> list[int]:
    """GPT-2 ids of one text by tiktoken-rs's own (slower) encoder: the tests' reference."""

def gpt2_decode_bytes(ids: Sequence[int]) -> bytes:
    """The bytes GPT-2 ids stand for."""

# -- CUDA: NVRTC compilation and probes (src/py/cuda.rs) --

class CudaError(RuntimeError):
    """CUDA is unavailable or failed (e.g. a kernel did not compile)."""

def cuda_compile_all(arch: str) -> list[tuple[str, int]]:
    """Compile every kernel module for an architecture: (file, PTX bytes)."""

def cuda_compile_source(name: str, source: str, arch: str) -> tuple[int, bool]:
    """Compile one source with the kernel prelude: (PTX bytes, from cache)."""

def cuda_compile_module(module: str, arch: str) -> tuple[str, bool]:
    """The PTX of one module and whether it came from the cache."""

def cuda_modules() -> list[str]:
    """The kernel module file names."""

def cpu_mkl_hint(path: str | os.PathLike[str]) -> None:
    """Where the mkl wheel's libmkl_rt is (loaded on first use)."""

def cpu_bf16_gemm() -> str:
    """How bf16 GEMMs run on the CPU, and why; ValueError for a bad GPT2RS_BF16_GEMM."""

def cuda_nvrtc_status() -> str | None:
    """Why NVRTC cannot be used, or None."""

def cuda_driver_status() -> str | None:
    """Why the CUDA driver cannot be used, or None."""

def cuda_nvrtc_version() -> tuple[int, int]:
    """The NVRTC version (major, minor)."""

def cuda_cache_dir() -> str | None:
    """The compile cache directory, or None."""

def cuda_device_count() -> int:
    """GPUs visible to this process (0 without a driver or GPU)."""

def cuda_device_info(ordinal: int) -> tuple[str, str, int]:
    """(name, architecture, total memory in bytes) of one GPU."""

# -- Process groups: MPI, loopback, NCCL probes (src/py/dist.rs) --

class DistError(RuntimeError):
    """MPI or NCCL is unavailable or failed; the message says which."""

@final
class Communicator:
    """One rank's end of a process group (MPI or in-process loopback); counts in bytes."""

    @staticmethod
    def mpi() -> Communicator:
        """This rank of the job, over the MPI mpi4py initialised (collective)."""

    @staticmethod
    def loopback(n: int) -> list[Communicator]:
        """``n`` in-process ranks; each rank's collectives run on its own thread."""

    @staticmethod
    def file(dir: _Path, rank: int, size: int, timeout_s: float = 600.0) -> Communicator:
        """Rank ``rank`` of ``size`` processes sharing the directory ``dir``."""

    @property
    def rank(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def backend(self) -> Literal["mpich", "openmpi", "mpi-abi", "file", "loopback"]: ...
    def barrier(self) -> None: ...
    def broadcast(self, data: bytes, root: int) -> bytes: ...
    def allgatherv(self, data: bytes, counts: Sequence[int]) -> bytes: ...
    def alltoallv(
        self, data: bytes, send_counts: Sequence[int], recv_counts: Sequence[int]
    ) -> bytes: ...
    def abort(self, code: int) -> None: ...

def nccl_version(path: _Path) -> int:
    """The version of the NCCL library at ``path``: major * 10000 + minor * 100 + patch."""

def nccl_unique_id(path: _Path) -> bytes:
    """A new 128-byte NCCL unique id (no GPU needed)."""

def nccl_all_reduce_probe(
    path: _Path,
    unique_id: bytes,
    values: Sequence[float],
    nranks: int = 1,
    rank: int = 0,
    device: int = 0,
) -> list[float]:
    """One all-reduce (sum) through a real NCCL communicator on GPU ``device``."""

# -- data parallelism (src/py/data_parallel.rs) --

@final
class DataParallelCore:
    """Data parallelism for one model over one communicator; use gpt2rs.dist."""

    def __new__(
        cls,
        model: Gpt2Core,
        comm: Communicator,
        zero_stage: int = 0,
        bucket_bytes: int = ...,
        nccl: _Path | None = None,
    ) -> DataParallelCore: ...
    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def zero_stage(self) -> int: ...
    @property
    def nbuckets(self) -> int: ...
    def reduce_grads(self) -> None: ...
    def clip_grad_norm(self, max_norm: float) -> float: ...
    def attach(self, optimizer: OptimizerCore) -> None: ...
    def gather_params(self) -> None: ...
    def gather_masters(self) -> None: ...
    def release_masters(self) -> None: ...
    def gather_state(self, optimizer: OptimizerCore) -> None: ...
    def release_state(self, optimizer: OptimizerCore) -> None: ...
