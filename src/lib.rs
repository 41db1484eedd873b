//! gpt2rs: GPT-2 training on tiled tensors and a task runtime, in the manner of
//! NNTile (tensors cut into tiles, every op a graph of tile tasks) with StarPU's
//! runtime ideas (data handles, access modes, codelets, schedulers) in Rust.

pub mod dist;
pub mod dtype;
pub mod error;
pub mod kernels;

pub use dtype::{DType, Element};
pub use error::{Error, Result};
pub mod model;
pub mod ops;
pub mod optim;
#[cfg(feature = "python")]
pub mod py;
pub mod runtime;
pub mod tensor;
