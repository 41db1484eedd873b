//! `cuda/bias.cu`: bias broadcast over rows and its gradient (bit for bit the
//! CPU's blocked sums).

use super::context::{DevElement, Gpu};
use super::geom;
use super::reduce::col_sums;
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut};

cuda_table! { cuda_table_bias($) Bias;
    /// `y[r, c] = bias[c]`.
    bias_fill<T>(bias: in T [cols], rows, cols, y: out T [rows * cols]) @ elementwise(rows * cols);
    /// `y[r, c] += bias[c]`.
    bias_add<T>(bias: in T [cols], rows, cols, y: out T [rows * cols]) @ elementwise(rows * cols);
    /// `part[k, c]` = the f64 sum of row block `k` of column `c`.
    bias_grad_part<T>(
        dy: in T [rows * cols], rows, cols, rblk = geom::COL_ROW_BLOCK,
        part: out f64 [rows.div_ceil(rblk) * cols],
    ) @ col_strips(rows.div_ceil(rblk), cols);
}

/// `db[c] += sum_r dy[r, c]`.
pub fn bias_grad<T: DevElement, G: DevElement>(
    gpu: &Gpu,
    dy: &CudaView<T>,
    rows: usize,
    cols: usize,
    db: &mut CudaViewMut<G>,
) -> Result<()> {
    col_sums(gpu, [rows, cols], db, None, |part| {
        bias_grad_part(gpu, dy, rows, cols, part)
    })
}
