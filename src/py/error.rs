//! Every Rust error becomes a Python exception here, and only here: one class
//! per kind of failure, each a subclass of the built-in exception a Python
//! user would reach for first, carrying the Rust `Display` text as its message.
//!
//! | `Error` variant                        | Python exception                    |
//! |----------------------------------------|-------------------------------------|
//! | `Shape`, `TileShape`                   | `ShapeError(ValueError)`            |
//! | `DType`, `UnknownDType`                | `DTypeError(TypeError)`             |
//! | `Argument`                             | `ValueError`                        |
//! | `Task`, `Cancelled`, `OutOfMemory`     | `TaskError(RuntimeError)`           |
//! | `Shutdown`                             | `RuntimeShutdownError(RuntimeError)`|
//! | `Io`                                   | `OSError`                           |
//! | `Cuda`                                 | `CudaError(RuntimeError)`           |
//!
//! A panic inside the core never unwinds into Python: [`guard`] turns it into
//! a `RuntimeError` that says it is a bug.

use crate::error::Error;
use pyo3::create_exception;
use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::{PyErr, PyResult, Python};

create_exception!(
    gpt2rs,
    ShapeError,
    PyValueError,
    "Shapes or tilings of the operands do not fit together, or a tile shape is invalid."
);
create_exception!(
    gpt2rs,
    DTypeError,
    PyTypeError,
    "An unsupported dtype, or operands whose dtypes differ."
);
create_exception!(
    gpt2rs,
    TaskError,
    PyRuntimeError,
    "A task failed (or was cancelled because one it depends on failed); the message names the task and, for memory failures, the memory node."
);
create_exception!(
    gpt2rs,
    RuntimeShutdownError,
    PyRuntimeError,
    "The runtime the operation needs has been shut down."
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Shape { .. } | Error::TileShape { .. } => ShapeError::new_err(msg),
            Error::DType { .. } | Error::UnknownDType(_) => DTypeError::new_err(msg),
            Error::Argument { .. } => PyValueError::new_err(msg),
            Error::Task { .. } | Error::Cancelled { .. } | Error::OutOfMemory { .. } => {
                TaskError::new_err(msg)
            }
            Error::Shutdown => RuntimeShutdownError::new_err(msg),
            Error::Io(_) => PyOSError::new_err(msg),
            Error::Cuda(_) => super::cuda::CudaError::new_err(msg),
        }
    }
}

/// Runs `f` with a panic caught: a panicking core call becomes a
/// `RuntimeError` instead of unwinding through the interpreter.
pub(crate) fn guard<T>(f: impl FnOnce() -> crate::Result<T>) -> Result<T, PyErr> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(PyErr::from),
        Err(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!(
                "internal error in gpt2rs (a bug, please report it): {what}"
            )))
        }
    }
}

/// Runs `f` without the GIL, mapping its errors: `Argument` to ValueError,
/// the rest through `other` (the calling module's exception), a panic (a
/// bug) to RuntimeError naming `place`.
pub(crate) fn detach_mapped<T: Send>(
    py: Python<'_>,
    place: &str,
    other: fn(String) -> PyErr,
    f: impl FnOnce() -> crate::Result<T> + Send,
) -> PyResult<T> {
    let r = py.detach(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e @ Error::Argument { .. })) => Err(PyValueError::new_err(e.to_string())),
        Ok(Err(e)) => Err(other(e.to_string())),
        Err(_) => Err(PyRuntimeError::new_err(format!(
            "internal error in {place} (a bug, please report it)"
        ))),
    }
}
