//! `cuda/reduce.cu`: the deterministic reductions (`kernels::cpu::reduce`).

use super::context::{DevElement, Gpu};
use super::geom;
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut};

cuda_table! { cuda_table_reduce($) Reduce;
    /// `y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i]` for `inner > 1`.
    sum_axis as sum_axis_cols<T>(
        outer, len, inner, alpha: val f64, x: in T [outer * len * inner], beta: val f64,
        y: out T [outer * inner],
    ) @ sum_axis(outer, inner);
    /// `y[r] = alpha * sum_a x[r, a] + beta * y[r]` (`inner == 1`).
    sum_rows<T>(rows, len, alpha: val f64, x: in T [rows * len], beta: val f64, y: out T [rows])
        @ per_row_capped(rows);
    /// `part[b]` = the f64 sum of block `b`'s share of `x`.
    sum_partial<T>(n = x.len(), x: in T [n], part: out f64 [geom::reduce_parts(n)])
        @ per_row_capped(geom::reduce_parts(n));
    /// `y[0] = alpha * sum(part) + beta * y[0]`.
    sum_all as sum_all_parts<T>(
        nparts = part.len(), part: in f64 [nparts], alpha: val f64, beta: val f64, y: out T [1],
    ) @ per_row_capped(1);
    /// `part[3b..3b + 3]` = block `b`'s (max |x|, scaled ssq, NaN flag).
    ssq_partial<T>(n = x.len(), x: in T [n], part: out f64 [3 * geom::reduce_parts(n)])
        @ per_row_capped(geom::reduce_parts(n));
    /// Merges the block parts into `acc = [scale, ssq]`, in order.
    ssq_update as ssq_update_parts<T>(
        nparts = part.len() / 3, part: in f64 [3 * nparts], acc: out f64 [2],
    ) @ single();
    /// `y[0] = alpha * scale * sqrt(ssq) + beta * y[0]` from `acc = [scale, ssq]`.
    norm_from_ssq<T>(acc: in f64 [2], alpha: val f64, beta: val f64, y: out T [1]) @ single();
    /// `y0[c] (, y1[c]) +=` the sums over `k` of `part [nout, nparts, cols]`.
    add_col_parts<T>(
        nparts, cols, part: in f64 [(1 + y1.is_some() as usize) * nparts * cols], y0: out T [cols],
        y1: opt_out T [cols],
    ) @ elementwise((1 + y1.is_some() as usize) * cols);
}

/// `y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i]` (y not read when `beta == 0`).
pub fn sum_axis<T: DevElement>(
    gpu: &Gpu,
    [outer, len, inner]: [usize; 3],
    alpha: f64,
    x: &CudaView<T>,
    beta: f64,
    y: &mut CudaViewMut<T>,
) -> Result<()> {
    match (outer * inner, inner) {
        (0, _) => Ok(()),
        (_, 1) => sum_rows(gpu, outer, len, alpha, x, beta, y),
        _ => sum_axis_cols(gpu, outer, len, inner, alpha, x, beta, y),
    }
}

/// `y[0] = alpha * sum(x) + beta * y[0]`, in two launches.
pub fn sum_all<T: DevElement>(
    gpu: &Gpu,
    alpha: f64,
    x: &CudaView<T>,
    beta: f64,
    y: &mut CudaViewMut<T>,
) -> Result<()> {
    // SAFETY: block b of sum_partial (grid = parts blocks) writes part[b]
    // before sum_all, next on the stream, reads it.
    let mut part = unsafe { gpu.kernels.scratch::<f64>(geom::reduce_parts(x.len())) }?;
    sum_partial(gpu, x, &mut part.as_view_mut())?;
    sum_all_parts(gpu, &part.as_view(), alpha, beta, y)
}

/// Merges `sum(x^2)` into `acc = [scale, ssq]`, in two launches.
pub fn ssq_update<T: DevElement>(
    gpu: &Gpu,
    x: &CudaView<T>,
    acc: &mut CudaViewMut<f64>,
) -> Result<()> {
    // SAFETY: block b of ssq_partial writes part[3b..3b + 3] before
    // ssq_update, next on the stream, reads it.
    let mut part = unsafe { gpu.kernels.scratch::<f64>(3 * geom::reduce_parts(x.len())) }?;
    ssq_partial(gpu, x, &mut part.as_view_mut())?;
    ssq_update_parts::<T>(gpu, &part.as_view(), acc)
}

/// A column reduction, bit for bit the CPU's blocked sums: `first` writes the
/// partial sums `part [nout, nblk, cols]`, `add_col_parts` adds them in order.
pub fn col_sums<G: DevElement>(
    gpu: &Gpu,
    [rows, cols]: [usize; 2],
    y0: &mut CudaViewMut<G>,
    y1: Option<&mut CudaViewMut<G>>,
    first: impl FnOnce(&mut CudaViewMut<f64>) -> Result<()>,
) -> Result<()> {
    if rows * cols == 0 {
        return Ok(());
    }
    let nblk = rows.div_ceil(geom::COL_ROW_BLOCK);
    let n = (1 + y1.is_some() as usize) * nblk * cols;
    // SAFETY: `first` writes every partial sum before add_col_parts, next on
    // the stream, reads them.
    let mut part = unsafe { gpu.kernels.scratch::<f64>(n) }?;
    first(&mut part.as_view_mut())?;
    add_col_parts(gpu, nblk, cols, &part.as_view(), y0, y1)
}
