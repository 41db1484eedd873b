//! CPU tile kernels: plain functions over row-major slices, generic over the
//! storage type and computing in its accumulation type (`Element::Acc`).
//! Each call is single-threaded: one task runs on one worker thread, and the
//! runtime, not the kernel, owns the parallelism.

pub mod activation;
pub mod attention;
pub mod bias;
pub mod copy;
pub mod crossentropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod gemm_small;
pub mod layernorm;
pub mod lm_head_ce;
pub mod mkl;
pub mod optim;
pub mod reduce;
