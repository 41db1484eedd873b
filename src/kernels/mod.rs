//! Tile kernels: plain functions over one tile's buffers, single-threaded
//! (the runtime owns the parallelism).

pub mod cpu;
pub mod cuda;
