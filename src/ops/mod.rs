//! Tensor-level ops: check shapes and tilings, then submit one task per tile
//! (or per tile pair) to the runtime. Every op returns as soon as its tasks
//! are submitted; results are read back through `Tensor::to_bytes`.

pub mod activation;
pub mod attention;
pub mod copy;
pub mod crossentropy;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod layernorm;
pub mod lm_head_ce;
pub mod reduce;
pub mod slice;

pub use copy::{cast, copy};
pub use elementwise::{add, axpy, fill, scale};
pub use gemm::{gemm, gemm_output_grid, GemmSpec};
pub use reduce::{norm, sum, sum_all};

use crate::error::{arg_err, shape_err, Result};
use crate::tensor::Tensor;

/// Hashes a codelet's shape arguments into a performance-model footprint.
pub(crate) fn footprint(parts: &[u64]) -> u64 {
    parts.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &p| {
        (h ^ p).wrapping_mul(0x1000_0000_01b3)
    })
}

/// Submits a task that zeroes one tile (an accumulator about to be reduced into).
pub(crate) fn zero_tile(
    rt: &crate::runtime::Runtime,
    h: &crate::runtime::DataHandle,
    dtype: crate::DType,
) -> Result<()> {
    elementwise::fill_tile(rt, h, dtype, 0.0)
}

/// Both tensors live on one runtime, have one shape and one tiling.
pub(crate) fn same_layout(op: &str, x: &Tensor, y: &Tensor) -> Result<()> {
    if !x.runtime().same(y.runtime()) {
        return Err(arg_err(op, "tensors belong to different runtimes"));
    }
    if x.grid.shape != y.grid.shape {
        return Err(shape_err(
            op,
            format!("shapes {:?} and {:?} differ", x.grid.shape, y.grid.shape),
        ));
    }
    if x.grid.tile != y.grid.tile {
        return Err(shape_err(
            op,
            format!(
                "tilings {:?} and {:?} differ (re-tile with copy first)",
                x.grid.tile, y.grid.tile
            ),
        ));
    }
    Ok(())
}

pub(crate) fn same_dtype(op: &str, x: &Tensor, y: &Tensor) -> Result<()> {
    if x.dtype != y.dtype {
        return Err(crate::error::Error::DType {
            op: op.into(),
            expected: x.dtype,
            got: y.dtype,
        });
    }
    Ok(())
}
