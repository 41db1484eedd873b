//! `cuda/layernorm.cu`: LayerNorm over column tiles, Welford statistics
//! merged tile by tile, the parameter gradients bit for bit the CPU's.

use super::context::{DevElement, Gpu};
use super::geom;
use super::reduce::col_sums;
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut};

cuda_table! { cuda_table_layernorm($) LayerNorm;
    /// `acc [rows, 3] = (count, mean, M2)` merged with this tile's rows.
    layernorm_stats_update<T>(x: in T [rows * cols], rows, cols, acc: out T::Acc [rows * 3])
        @ per_row(rows);
    /// `stats [rows, 2] = (mean, rstd)` from `acc [rows, 3]`.
    layernorm_stats_finalize<T>(
        acc: in T::Acc [rows * 3], rows, eps: val f64, stats: out T::Acc [rows * 2],
    ) @ elementwise(rows);
    /// `y = (x - mean) * rstd * gamma + beta`.
    layernorm_fwd<T>(
        x: in T [rows * cols], stats: in T::Acc [rows * 2], gamma: in T [cols], beta: in T [cols],
        rows, cols, y: out T [rows * cols],
    ) @ elementwise(rows * cols);
    /// `sums[r] += (sum_c dy*gamma, sum_c dy*gamma*xhat)`.
    layernorm_bwd_reduce<T>(
        x: in T [rows * cols], dy: in T [rows * cols], stats: in T::Acc [rows * 2],
        gamma: in T [cols], rows, cols, sums: out T::Acc [rows * 2],
    ) @ per_row(rows);
    /// `dx (= | += if accumulate) rstd * (dy*gamma - sums0/N - xhat*sums1/N)`.
    layernorm_bwd<T>(
        x: in T [rows * cols], dy: in T [rows * cols], stats: in T::Acc [rows * 2],
        gamma: in T [cols], sums: in T::Acc [rows * 2], total_cols, rows, cols, accumulate: val i32,
        dx: out T [rows * cols],
    ) @ elementwise(rows * cols);
    /// `part[j, k, c]`: the f64 sums of `dy*xhat`, `dy` over row block `k`.
    layernorm_param_grad_part<T>(
        x: in T [rows * cols], dy: in T [rows * cols], stats: in T::Acc [rows * 2], rows, cols,
        rblk = geom::COL_ROW_BLOCK, part: out f64 [2 * rows.div_ceil(rblk) * cols],
    ) @ col_strips(rows.div_ceil(rblk), cols);
    /// `sum = x + r` (`r` null: in place), `acc` merged with `sum`'s rows.
    add_layernorm_stats_update<T>(
        x: in T [rows * cols], r: opt_in T [rows * cols], rows, cols, sum: out T [rows * cols],
        acc: out T::Acc [rows * 3],
    ) @ per_row(rows);
    /// C in one tile: `sum = x + r` (as above), its `stats`, `y = LayerNorm(sum)`.
    add_layernorm_fwd<T>(
        x: in T [rows * cols], r: opt_in T [rows * cols], gamma: in T [cols], beta: in T [cols],
        rows, cols, eps: val f64, sum: out T [rows * cols], stats: out T::Acc [rows * 2],
        y: out T [rows * cols],
    ) @ per_row(rows);
}

/// `dgamma[c] += sum_r dy*xhat`, `dbeta[c] += sum_r dy`, bit for bit the CPU's.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_param_grad<T: DevElement, G: DevElement>(
    gpu: &Gpu,
    x: &CudaView<T>,
    dy: &CudaView<T>,
    stats: &CudaView<T::Acc>,
    rows: usize,
    cols: usize,
    dgamma: &mut CudaViewMut<G>,
    dbeta: &mut CudaViewMut<G>,
) -> Result<()> {
    col_sums(gpu, [rows, cols], dgamma, Some(dbeta), |part| {
        layernorm_param_grad_part(gpu, x, dy, stats, rows, cols, part)
    })
}
