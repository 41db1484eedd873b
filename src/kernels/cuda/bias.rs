//! `cuda/bias.cu`: bias broadcast over rows and its gradient
//! (`kernels::cpu::bias`), the gradient in two passes through f64 partial
//! sums (bit for bit the CPU's blocked sums).

use super::context::{DevElement, Gpu};
use super::geom::COL_ROW_BLOCK;
use super::reduce::add_col_parts;
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut};

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_bias {
    ($cb:ident) => { $cb! { Bias;
        /// `y[r, c] = bias[c]`.
        bias_fill<T>(bias: in T [cols], rows: val usize, cols: val usize, y: out T [rows * cols])
            @ elementwise(rows * cols);
        /// `y[r, c] += bias[c]`.
        bias_add<T>(bias: in T [cols], rows: val usize, cols: val usize, y: out T [rows * cols])
            @ elementwise(rows * cols);
        /// `part[k, c]` = the f64 sum of rows `k * rblk ..` (`rblk` of them) of column `c`.
        bias_grad_part<T>(
            dy: in T [rows * cols], rows: val usize, cols: val usize, rblk: val usize,
            part: out f64 [rows.div_ceil(rblk) * cols],
        ) @ col_strips(rows.div_ceil(rblk), cols);
    } };
}
crate::cuda_table_bias!(launchers);

/// `db[c] += sum_r dy[r, c]` (`kernels::cpu::bias::bias_grad`, bit for
/// bit): `bias_grad_part` sums each block of `COL_ROW_BLOCK` rows of each
/// column into f64 partial sums, `add_col_parts` adds them into `db` in
/// block order.
pub fn bias_grad<T: DevElement, G: DevElement>(
    gpu: &Gpu,
    dy: &CudaView<T>,
    rows: usize,
    cols: usize,
    db: &mut CudaViewMut<G>,
) -> Result<()> {
    if rows * cols == 0 {
        return super::table::check_len("bias_grad", "db", cols, db.len());
    }
    let nblk = rows.div_ceil(COL_ROW_BLOCK);
    // SAFETY: bias_grad_part writes part[k, c] for every row block k < nblk
    // and column c < cols before add_col_parts, next on the stream, reads it.
    let mut part = unsafe { gpu.kernels.scratch_f64(nblk * cols) }?;
    bias_grad_part(gpu, dy, rows, cols, COL_ROW_BLOCK, &mut part.as_view_mut())?;
    add_col_parts(gpu, nblk, cols, &part.as_view(), db, None)
}
