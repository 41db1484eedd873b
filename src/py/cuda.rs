//! `gpt2rs.cuda` (private half): NVRTC compilation of the CUDA kernels and
//! probes for the CUDA libraries. `python/gpt2rs/cuda.py` preloads the pip
//! wheels' libraries and wraps these functions. Every CUDA failure (a missing
//! library, a compile error) is a `CudaError(RuntimeError)`; a bad argument
//! is a `ValueError`.

use crate::kernels::cuda::{self as kc, Module};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;

create_exception!(
    gpt2rs,
    CudaError,
    PyRuntimeError,
    "CUDA is unavailable (a library or the driver is missing) or failed (e.g. a kernel did not compile); the message says which."
);

/// Runs `f` without the GIL; its errors become CudaError (see `detach_mapped`).
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    super::error::detach_mapped(py, "gpt2rs.cuda", CudaError::new_err, f)
}

/// Compiles every kernel module (`cuda/*.cu`) with NVRTC for an architecture,
/// through the disk cache.
///
/// Args:
///     arch: the GPU architecture, e.g. "sm_80" or "sm_90".
///
/// Returns:
///     A list of (file name, PTX size in bytes), one per module.
#[pyfunction]
#[pyo3(signature = (arch), text_signature = "(arch)")]
pub fn cuda_compile_all(py: Python<'_>, arch: String) -> PyResult<Vec<(String, usize)>> {
    run(py, move || kc::compile_all(&arch))
}

/// Compiles one translation unit with NVRTC (the kernel prelude is prepended),
/// through the disk cache.
///
/// Args:
///     name: the file name NVRTC reports in its log, e.g. "mine.cu".
///     source: the CUDA C++ source.
///     arch: the GPU architecture, e.g. "sm_80".
///
/// Returns:
///     (PTX size in bytes, whether it came from the cache).
#[pyfunction]
#[pyo3(signature = (name, source, arch), text_signature = "(name, source, arch)")]
pub fn cuda_compile_source(
    py: Python<'_>,
    name: String,
    source: String,
    arch: String,
) -> PyResult<(usize, bool)> {
    run(py, move || {
        let c = kc::compile_source(&name, &kc::full_source(&name, &source), &arch)?;
        Ok((c.ptx.len(), c.cached))
    })
}

/// Compiles one module by file name and returns its PTX text.
///
/// Args:
///     module: the file name under cuda/, e.g. "layernorm.cu".
///     arch: the GPU architecture, e.g. "sm_80".
///
/// Returns:
///     (PTX text, whether it came from the cache).
#[pyfunction]
#[pyo3(signature = (module, arch), text_signature = "(module, arch)")]
pub fn cuda_compile_module(
    py: Python<'_>,
    module: String,
    arch: String,
) -> PyResult<(String, bool)> {
    let m = Module::from_name(&module)
        .ok_or_else(|| PyValueError::new_err(format!("no CUDA module named {module:?}")))?;
    run(py, move || {
        kc::compile_module(m, &arch).map(|c| (c.ptx, c.cached))
    })
}

/// The kernel module file names, in their fixed order.
///
/// Returns:
///     The file names under cuda/.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cuda_modules() -> Vec<&'static str> {
    Module::ALL.iter().map(|m| m.file()).collect()
}

/// Why NVRTC cannot be used, or None when it can.
///
/// Returns:
///     None, or the reason.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cuda_nvrtc_status(py: Python<'_>) -> Option<String> {
    py.detach(|| kc::nvrtc_available().err().map(|e| e.to_string()))
}

/// Why the CUDA driver cannot be used, or None when it can.
///
/// Returns:
///     None, or the reason.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cuda_driver_status(py: Python<'_>) -> Option<String> {
    py.detach(|| kc::driver_available().err().map(|e| e.to_string()))
}

/// The NVRTC version.
///
/// Returns:
///     (major, minor).
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cuda_nvrtc_version(py: Python<'_>) -> PyResult<(i32, i32)> {
    run(py, kc::nvrtc_version)
}

/// The directory of the compile cache ($GPT2RS_CUDA_CACHE, else
/// ~/.cache/gpt2rs/cuda), or None.
///
/// Returns:
///     The directory, or None.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cuda_cache_dir() -> Option<String> {
    kc::cache_dir().map(|p| p.to_string_lossy().into_owned())
}

/// GPUs visible to this process (0 without a driver or GPU; never raises).
///
/// Returns:
///     The number of devices.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cuda_device_count(py: Python<'_>) -> usize {
    py.detach(crate::kernels::cuda::context::device_count)
}

/// Opens GPU `ordinal` and describes it.
///
/// Returns:
///     (name, architecture such as "sm_90", total memory in bytes).
#[pyfunction]
#[pyo3(text_signature = "(ordinal)")]
pub fn cuda_device_info(py: Python<'_>, ordinal: usize) -> PyResult<(String, String, usize)> {
    run(py, || {
        let d = crate::kernels::cuda::context::Gpu::open(ordinal)?;
        Ok((d.name.clone(), d.arch.clone(), d.total_mem))
    })
}
