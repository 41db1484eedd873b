//! `cuda/layernorm.cu`: LayerNorm over column tiles (`kernels::cpu::layernorm`):
//! Welford statistics merged tile by tile, forward, the backward's row sums
//! and dx, the parameter gradients in two passes (bit for bit the CPU's
//! blocked sums), and the fused residual add + LayerNorm.

use super::context::{DevElement, Gpu};
use super::geom::COL_ROW_BLOCK;
use super::reduce::col_sums;
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut};

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_layernorm {
    ($cb:ident) => { $cb! { LayerNorm;
        /// `acc [rows, 3] = (count, mean, M2)` merged with this tile's rows.
        layernorm_stats_update<T>(
            x: in T [rows * cols], rows: val usize, cols: val usize, acc: out T::Acc [rows * 3],
        ) @ per_row(rows);
        /// `stats [rows, 2] = (mean, rstd)` from `acc [rows, 3]` (`T` the
        /// accumulation dtype).
        layernorm_stats_finalize<T>(
            acc: in T::Acc [rows * 3], rows: val usize, eps: val f64, stats: out T::Acc [rows * 2],
        ) @ elementwise(rows);
        /// `y = (x - mean) * rstd * gamma + beta`.
        layernorm_fwd<T>(
            x: in T [rows * cols], stats: in T::Acc [rows * 2], gamma: in T [cols],
            beta: in T [cols], rows: val usize, cols: val usize, y: out T [rows * cols],
        ) @ elementwise(rows * cols);
        /// `sums[r] += (sum_c dy*gamma, sum_c dy*gamma*xhat)`.
        layernorm_bwd_reduce<T>(
            x: in T [rows * cols], dy: in T [rows * cols], stats: in T::Acc [rows * 2],
            gamma: in T [cols], rows: val usize, cols: val usize, sums: out T::Acc [rows * 2],
        ) @ per_row(rows);
        /// `dx (= | +=) rstd * (dy*gamma - sums0/N - xhat*sums1/N)`, `N =
        /// total_cols`, `+=` when `accumulate != 0`.
        layernorm_bwd<T>(
            x: in T [rows * cols], dy: in T [rows * cols], stats: in T::Acc [rows * 2],
            gamma: in T [cols], sums: in T::Acc [rows * 2], total_cols: val usize, rows: val usize,
            cols: val usize, accumulate: val i32, dx: out T [rows * cols],
        ) @ elementwise(rows * cols);
        /// `part[j, k, c]`: the f64 sums of `dy*xhat` (j = 0) and `dy` (j = 1)
        /// over the rows `k * rblk ..` (`rblk` of them) of column `c`.
        layernorm_param_grad_part<T>(
            x: in T [rows * cols], dy: in T [rows * cols], stats: in T::Acc [rows * 2],
            rows: val usize, cols: val usize, rblk: val usize,
            part: out f64 [2 * rows.div_ceil(rblk) * cols],
        ) @ col_strips(rows.div_ceil(rblk), cols);
        /// `sum = x + r` (`r` null: `sum` holds r on entry), then `acc [rows, 3]`
        /// merged with the statistics of `sum`'s rows.
        add_layernorm_stats_update<T>(
            x: in T [rows * cols], r: opt_in T [rows * cols], rows: val usize, cols: val usize,
            sum: out T [rows * cols], acc: out T::Acc [rows * 3],
        ) @ per_row(rows);
        /// One pass per row (C in one tile): `sum = x + r` (`r` null: in place
        /// in `sum`), `stats = (mean, rstd)` of `sum`, `y = LayerNorm(sum)`.
        add_layernorm_fwd<T>(
            x: in T [rows * cols], r: opt_in T [rows * cols], gamma: in T [cols],
            beta: in T [cols], rows: val usize, cols: val usize, eps: val f64,
            sum: out T [rows * cols], stats: out T::Acc [rows * 2], y: out T [rows * cols],
        ) @ per_row(rows);
    } };
}
crate::cuda_table_layernorm!(launchers);

/// `dgamma[c] += sum_r dy*xhat`, `dbeta[c] += sum_r dy`
/// (`kernels::cpu::layernorm::layernorm_param_grad`, bit for bit).
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
        layernorm_param_grad_part(gpu, x, dy, stats, rows, cols, COL_ROW_BLOCK, part)
    })
}
