//! CPU kernel libraries seen from Python: where oneMKL is and which bf16
//! GEMM the kernels use (`kernels::cpu::mkl`).

use crate::kernels::cpu::mkl;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// Tells the loader where the `mkl` wheel's libmkl_rt is (nothing is
/// loaded until a bf16 GEMM or `cpu_bf16_gemm` needs it).
///
/// Args:
///     path: the libmkl_rt.so file.
#[pyfunction]
#[pyo3(text_signature = "(path)")]
pub fn cpu_mkl_hint(path: std::path::PathBuf) {
    mkl::set_library_hint(path);
}

/// How bf16 GEMMs run on the CPU, and why (oneMKL on AMX-BF16 CPUs,
/// else widened to f32; GPT2RS_BF16_GEMM=auto|mkl|f32 overrides).
///
/// Returns:
///     One line naming the backend and the reason.
///
/// Raises:
///     ValueError: GPT2RS_BF16_GEMM is invalid, or asks for oneMKL where it
///         cannot be loaded.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn cpu_bf16_gemm(py: Python<'_>) -> PyResult<String> {
    py.detach(|| {
        mkl::bf16_gemm_choice()
            .map(|c| c.reason.clone())
            .map_err(|e| e.to_string())
    })
    .map_err(PyValueError::new_err)
}
