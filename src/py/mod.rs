//! The Python extension module `gpt2rs._gpt2rs` (built with the `python`
//! cargo feature; the core never depends on this module). Thin on purpose:
//! every class is a newtype around a core type and every function converts
//! its arguments, releases the GIL around the core call, and converts back.
//! The Python package `gpt2rs` re-exports what is defined here.

pub mod cpu;
pub mod cuda;
pub mod data_parallel;
pub mod dist;
pub mod error;
pub mod generate;
pub mod model;
pub mod ops;
pub mod runtime;
pub mod tensor;
pub mod tokenizer;

/// Tiled tensors and a task runtime (the compiled core of gpt2rs).
#[pyo3::pymodule(name = "_gpt2rs")]
mod gpt2rs_ext {
    use pyo3::prelude::*;

    #[pymodule_export]
    use super::cpu::{cpu_bf16_gemm, cpu_mkl_hint};
    #[pymodule_export]
    use super::cuda::{
        cuda_cache_dir, cuda_compile_all, cuda_compile_module, cuda_compile_source,
        cuda_device_count, cuda_device_info, cuda_driver_status, cuda_modules, cuda_nvrtc_status,
        cuda_nvrtc_version, CudaError,
    };
    #[pymodule_export]
    use super::data_parallel::PyDataParallel;
    #[pymodule_export]
    use super::dist::{
        nccl_all_reduce_probe, nccl_unique_id, nccl_version, DistError, PyCommunicator,
    };
    #[pymodule_export]
    use super::error::{DTypeError, RuntimeShutdownError, ShapeError, TaskError};
    #[pymodule_export]
    use super::generate::PyKvCache;
    #[pymodule_export]
    use super::model::{PyGpt2Core, PyOptimizerCore};
    #[pymodule_export]
    use super::ops::{
        op_add, op_axpy, op_cast, op_copy, op_fill, op_gemm, op_norm, op_scale, op_sum,
    };
    #[pymodule_export]
    use super::runtime::{
        _shutdown_default_runtime, default_runtime, set_default_runtime, PyRuntime,
    };
    #[pymodule_export]
    use super::tensor::PyTensor;
    #[pymodule_export]
    use super::tokenizer::{gpt2_decode_bytes, gpt2_encode_batch, gpt2_encode_reference};

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))
    }
}
