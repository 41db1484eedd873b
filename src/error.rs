//! One error type for the crate. Variants carry structured fields and the name of
//! the op or task that failed, so that a Python user sees what failed and where.

use crate::dtype::DType;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {msg}")]
    Shape { op: String, msg: String },

    #[error("{op}: invalid tile shape {tile:?} for tensor shape {shape:?}: every tile size must be >= 1")]
    TileShape {
        op: String,
        shape: Vec<usize>,
        tile: Vec<isize>,
    },

    #[error("{op}: dtype mismatch: expected {expected}, got {got}")]
    DType {
        op: String,
        expected: DType,
        got: DType,
    },

    #[error("unknown dtype {0:?} (expected one of fp32, fp64, bf16, fp16)")]
    UnknownDType(String),

    #[error("{op}: invalid argument: {msg}")]
    Argument { op: String, msg: String },

    #[error("task {task} failed: {reason}")]
    Task { task: String, reason: String },

    #[error("task {task} was cancelled because task {cause} failed before it")]
    Cancelled { task: String, cause: String },

    #[error("memory node {node}: limit of {limit} bytes is too small: {msg}")]
    OutOfMemory {
        node: String,
        limit: u64,
        msg: String,
    },

    #[error("the runtime has shut down")]
    Shutdown,

    #[error("{0}")]
    Io(String),

    /// CUDA is missing (library, driver, GPU) or failed (a launch, a kernel
    /// that did not compile, a device fault).
    #[error("CUDA: {0}")]
    Cuda(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e.to_string())
    }
}

/// `bail!(Variant { .. })` returns early with that error.
#[macro_export]
macro_rules! bail {
    ($e:expr) => {
        return Err($e.into())
    };
}

pub(crate) fn shape_err(op: &str, msg: impl Into<String>) -> Error {
    Error::Shape {
        op: op.to_string(),
        msg: msg.into(),
    }
}

pub(crate) fn arg_err(op: &str, msg: impl Into<String>) -> Error {
    Error::Argument {
        op: op.to_string(),
        msg: msg.into(),
    }
}
