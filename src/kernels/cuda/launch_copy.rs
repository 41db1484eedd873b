//! Launchers for the kernels behind the CUDA codelets of the element-wise,
//! copy/cast/re-tile, slice, reduction and embedding ops: the n-d block copy
//! (`copy_block_*` in `cuda/elementwise.cu`), the deterministic reductions
//! of `cuda/reduce.cu`, and the row-wise embedding kernels of
//! `cuda/embedding.cu`. Each mirrors a CPU kernel's signature (named in its
//! doc) and checks operand lengths before launching on the stream.

use super::geom::col_strips;
use super::launch::{CudaKernels, DevElement};
use super::{
    ceil_div, cuda_err, grid_for, kernel_name, Module, ELEMENTWISE_BLOCK, MAX_GRID, ROW_BLOCK,
    WARP_SIZE,
};
use crate::dtype::DType;
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

fn drv(e: cudarc::driver::DriverError) -> crate::error::Error {
    cuda_err(format!("driver: {e}"))
}

fn check_len(op: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(shape_err(
            &format!("cuda.{op}"),
            format!("expected {want} elements, got {got}"),
        ))
    }
}

/// One thread per element, grid-stride.
fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid_for(n, ELEMENTWISE_BLOCK), 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// One block per row (the kernels loop when rows exceed the grid cap).
fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.clamp(1, MAX_GRID as usize) as u32, 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A single thread (the sequential merge steps of the reductions).
fn single() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (1, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Thread rows per block of `sum_axis_*` (`AXIS_SPLIT` in reduce.cu).
const SUM_AXIS_SPLIT: u32 = 8;
/// Most partial sums of the two-pass reductions; fixed, so the partition
/// (and the rounding) depends on the tile size only, never on the device.
const REDUCE_PARTS: usize = 1024;

/// Blocks of the first pass of `sum_all` / `ssq_update` over `n` elements.
fn reduce_parts(n: usize) -> usize {
    ceil_div(n.max(1), ROW_BLOCK as usize).min(REDUCE_PARTS)
}

/// Whether `embedding.cu` has the gradient kernels for activations `t` and
/// gradients `g` (`FOR_GRAD_PAIRS` in the prelude): the same dtype, or f32
/// gradients of 16-bit activations.
pub fn grad_pair_supported(t: DType, g: DType) -> bool {
    t == g || (matches!(t, DType::BF16 | DType::F16) && g == DType::F32)
}

impl CudaKernels {
    /// `y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i]`, x `[outer,
    /// len, inner]` (`kernels::cpu::reduce::sum_axis`; y not read when
    /// `beta == 0`).
    #[allow(clippy::too_many_arguments)]
    pub fn sum_axis<T: DevElement>(
        &self,
        outer: usize,
        len: usize,
        inner: usize,
        alpha: f64,
        x: &CudaView<T>,
        beta: f64,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("sum_axis", outer * len * inner, x.len())?;
        check_len("sum_axis", outer * inner, y.len())?;
        if outer * inner == 0 {
            return Ok(());
        }
        if inner == 1 {
            let f = self.func(Module::Reduce, &kernel_name("sum_rows", &[T::DTYPE]))?;
            let mut b = self.stream().launch_builder(&f);
            b.arg(&outer).arg(&len).arg(&alpha).arg(x).arg(&beta).arg(y);
            // SAFETY: matches `sum_rows_<T>(usize, usize, double, const T*, double, T*)`.
            unsafe { b.launch(per_row(outer)) }.map_err(drv)?;
            return Ok(());
        }
        let blocks = outer * ceil_div(inner, WARP_SIZE as usize);
        let cfg = LaunchConfig {
            grid_dim: (blocks.min(MAX_GRID as usize) as u32, 1, 1),
            block_dim: (WARP_SIZE, SUM_AXIS_SPLIT, 1),
            shared_mem_bytes: 0,
        };
        let f = self.func(Module::Reduce, &kernel_name("sum_axis", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&outer)
            .arg(&len)
            .arg(&inner)
            .arg(&alpha)
            .arg(x)
            .arg(&beta)
            .arg(y);
        // SAFETY: matches `sum_axis_<T>(usize, usize, usize, double, const T*,
        // double, T*)`, launched with the WARP_SIZE x AXIS_SPLIT block it assumes.
        unsafe { b.launch(cfg) }.map_err(drv)?;
        Ok(())
    }

    /// `y[0] = alpha * sum(x) + beta * y[0]` (`kernels::cpu::reduce::sum_all`),
    /// in two launches through a temporary buffer of partial sums.
    pub fn sum_all<T: DevElement>(
        &self,
        alpha: f64,
        x: &CudaView<T>,
        beta: f64,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("sum_all", 1, y.len())?;
        let n = x.len();
        let parts = reduce_parts(n);
        // SAFETY: block b of sum_partial (grid = parts blocks) writes
        // part[b] before sum_all, next on the stream, reads it.
        let mut part = unsafe { self.scratch_f64(parts) }?;
        let f = self.func(Module::Reduce, &kernel_name("sum_partial", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&n).arg(x).arg(&mut part);
        let cfg = LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `sum_partial_<T>(usize, const T*, double*)`; `part`
        // holds one value per block of the grid.
        unsafe { b.launch(cfg) }.map_err(drv)?;
        let f = self.func(Module::Reduce, &kernel_name("sum_all", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&parts).arg(&part).arg(&alpha).arg(&beta).arg(y);
        // SAFETY: matches `sum_all_<T>(usize, const double*, double, double, T*)`,
        // one block. `part` is freed stream-ordered, after this kernel.
        unsafe { b.launch(per_row(1)) }.map_err(drv)?;
        Ok(())
    }

    /// Merges `sum(x^2)` into the scaled sum of squares `acc = [scale, ssq]`
    /// (`kernels::cpu::reduce::ssq_update`), in two launches.
    pub fn ssq_update<T: DevElement>(
        &self,
        x: &CudaView<T>,
        acc: &mut CudaViewMut<f64>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("ssq_update", 2, acc.len())?;
        let n = x.len();
        let parts = reduce_parts(n);
        // SAFETY: block b of ssq_partial (grid = parts blocks) writes
        // part[3b..3b + 3] before ssq_update, next on the stream, reads it.
        let mut part = unsafe { self.scratch_f64(3 * parts) }?;
        let f = self.func(Module::Reduce, &kernel_name("ssq_partial", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&n).arg(x).arg(&mut part);
        let cfg = LaunchConfig {
            grid_dim: (parts as u32, 1, 1),
            block_dim: (ROW_BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: matches `ssq_partial_<T>(usize, const T*, double*)`; `part`
        // holds three values per block of the grid.
        unsafe { b.launch(cfg) }.map_err(drv)?;
        let f = self.func(Module::Reduce, &kernel_name("ssq_update", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&parts).arg(&part).arg(acc);
        // SAFETY: matches `ssq_update_<T>(usize, const double*, double*)`, one
        // thread. `part` is freed stream-ordered, after this kernel.
        unsafe { b.launch(single()) }.map_err(drv)?;
        Ok(())
    }

    /// `y[0] = alpha * scale * sqrt(ssq) + beta * y[0]` from `acc = [scale,
    /// ssq]` (`kernels::cpu::reduce::norm_from_ssq`).
    pub fn norm_from_ssq<T: DevElement>(
        &self,
        acc: &CudaView<f64>,
        alpha: f64,
        beta: f64,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("norm_from_ssq", 2, acc.len())?;
        check_len("norm_from_ssq", 1, y.len())?;
        let f = self.func(Module::Reduce, &kernel_name("norm_from_ssq", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(acc).arg(&alpha).arg(&beta).arg(y);
        // SAFETY: matches `norm_from_ssq_<T>(const double*, double, double, T*)`.
        unsafe { b.launch(single()) }.map_err(drv)?;
        Ok(())
    }

    /// `y[r, :] = wte[ids[r] - vocab_lo, :]` for the ids inside this
    /// vocabulary tile, other rows untouched (`kernels::cpu::embedding::embedding_fwd`).
    pub fn embedding_rows_fwd<T: DevElement>(
        &self,
        ids: &CudaView<i64>,
        vocab_lo: usize,
        wte: &CudaView<T>,
        vt: usize,
        cols: usize,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        let rows = ids.len();
        check_len("embedding_rows_fwd", rows * cols, y.len())?;
        check_len("embedding_rows_fwd", vt * cols, wte.len())?;
        if rows * cols == 0 {
            return Ok(());
        }
        let f = self.func(
            Module::Embedding,
            &kernel_name("embedding_rows_fwd", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&rows)
            .arg(ids)
            .arg(&vocab_lo)
            .arg(wte)
            .arg(&vt)
            .arg(&cols)
            .arg(y);
        // SAFETY: matches `embedding_rows_fwd_<T>(usize, const i64*, usize,
        // const T*, usize, usize, T*)`; ids outside the tile are skipped.
        unsafe { b.launch(per_row(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// `dwte[id - vocab_lo, :] += dy[r, :]` for each distinct id `uniq[u]`
    /// of this vocabulary tile and its rows `rows[offs[u]..offs[u + 1]]`
    /// (increasing), in that order (`kernels::cpu::embedding::embedding_bwd`,
    /// bit for bit), one thread per (distinct id, column). `rows` must index
    /// rows of dy.
    #[allow(clippy::too_many_arguments)]
    pub fn embedding_bwd_sorted<T: DevElement, G: DevElement>(
        &self,
        uniq: &CudaView<i64>,
        offs: &CudaView<i64>,
        rows: &CudaView<i64>,
        vocab_lo: usize,
        dy: &CudaView<T>,
        vt: usize,
        cols: usize,
        dwte: &mut CudaViewMut<G>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
        G::Acc: DeviceRepr,
    {
        let nuniq = uniq.len();
        check_len("embedding_bwd_sorted", nuniq + 1, offs.len())?;
        check_len("embedding_bwd_sorted", vt * cols, dwte.len())?;
        if cols == 0 || dy.len() % cols != 0 || dy.len() / cols < rows.len() {
            return Err(shape_err(
                "cuda.embedding_bwd_sorted",
                format!(
                    "dy of {} elements for {} rows of {cols} columns",
                    dy.len(),
                    rows.len()
                ),
            ));
        }
        if nuniq == 0 {
            return Ok(());
        }
        let f = self.func(
            Module::Embedding,
            &kernel_name("embedding_bwd_sorted", &[T::DTYPE, G::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&nuniq)
            .arg(uniq)
            .arg(offs)
            .arg(rows)
            .arg(&vocab_lo)
            .arg(dy)
            .arg(&vt)
            .arg(&cols)
            .arg(dwte);
        // SAFETY: matches `embedding_bwd_sorted_<T>_<G>(usize, const i64*,
        // const i64*, const i64*, usize, const T*, usize, usize, G*)`; ids
        // outside the tile are skipped, rows index dy (the caller's contract).
        unsafe { b.launch(col_strips(nuniq, cols).into()) }.map_err(drv)?;
        Ok(())
    }

    /// `y[b, t, :] += table[first_row + t, :]`, y `[batch, tt, cols]`
    /// (`kernels::cpu::embedding::add_rows`).
    pub fn add_rows<T: DevElement>(
        &self,
        table: &CudaView<T>,
        first_row: usize,
        tt: usize,
        batch: usize,
        cols: usize,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("add_rows", batch * tt * cols, y.len())?;
        if tt * cols == 0 {
            return Ok(());
        }
        if (first_row + tt) * cols > table.len() {
            return Err(shape_err(
                "cuda.add_rows",
                format!("rows {first_row}..{} outside the table", first_row + tt),
            ));
        }
        let f = self.func(Module::Embedding, &kernel_name("add_rows", &[T::DTYPE]))?;
        let n = y.len();
        let mut b = self.stream().launch_builder(&f);
        b.arg(table)
            .arg(&first_row)
            .arg(&tt)
            .arg(&batch)
            .arg(&cols)
            .arg(y);
        // SAFETY: matches `add_rows_<T>(const T*, usize, usize, usize, usize, T*)`;
        // the table rows were checked above.
        unsafe { b.launch(elementwise(n)) }.map_err(drv)?;
        Ok(())
    }

    /// `dtable[first_row + t, :] += sum_b dy[b, t, :]`, dy `[batch, tt, cols]`
    /// (`kernels::cpu::embedding::add_rows_bwd`).
    pub fn add_rows_bwd<T: DevElement, G: DevElement>(
        &self,
        dy: &CudaView<T>,
        first_row: usize,
        tt: usize,
        batch: usize,
        cols: usize,
        dtable: &mut CudaViewMut<G>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
        G::Acc: DeviceRepr,
    {
        check_len("add_rows_bwd", batch * tt * cols, dy.len())?;
        if tt * cols == 0 {
            return Ok(());
        }
        if (first_row + tt) * cols > dtable.len() {
            return Err(shape_err(
                "cuda.add_rows_bwd",
                format!("rows {first_row}..{} outside the table", first_row + tt),
            ));
        }
        let f = self.func(
            Module::Embedding,
            &kernel_name("add_rows_bwd", &[T::DTYPE, G::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(dy)
            .arg(&first_row)
            .arg(&tt)
            .arg(&batch)
            .arg(&cols)
            .arg(dtable);
        // SAFETY: matches `add_rows_bwd_<T>_<G>(const T*, usize, usize, usize,
        // usize, G*)`; the table rows were checked above.
        unsafe { b.launch(elementwise(tt * cols)) }.map_err(drv)?;
        Ok(())
    }

    /// The sinusoidal position table for positions `pos_lo..pos_lo + n` and
    /// columns `cols_lo..cols_lo + cols` of a `total_cols`-wide table
    /// (`kernels::cpu::embedding::sinusoidal_table`).
    pub fn sinusoidal<T: DevElement>(
        &self,
        pos_lo: usize,
        n: usize,
        cols_lo: usize,
        cols: usize,
        total_cols: usize,
        out: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("sinusoidal", n * cols, out.len())?;
        if cols_lo + cols > total_cols {
            return Err(shape_err(
                "cuda.sinusoidal",
                "columns outside the table".to_string(),
            ));
        }
        if n * cols == 0 {
            return Ok(());
        }
        // The CPU's constant, so both sides scale by the same f64.
        let ln_base = 10000f64.ln();
        let f = self.func(Module::Embedding, &kernel_name("sinusoidal", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&pos_lo)
            .arg(&n)
            .arg(&cols_lo)
            .arg(&cols)
            .arg(&total_cols)
            .arg(&ln_base)
            .arg(out);
        // SAFETY: matches `sinusoidal_<T>(usize, usize, usize, usize, usize, double, T*)`.
        unsafe { b.launch(elementwise(n * cols)) }.map_err(drv)?;
        Ok(())
    }
}
