//! Launchers for the kernels behind the CUDA codelets of the element-wise,
//! copy/cast/re-tile, slice, reduction and embedding ops: the n-d block copy
//! (`copy_block_*` in `cuda/elementwise.cu`), the deterministic reductions
//! of `cuda/reduce.cu`, and the row-wise embedding kernels of
//! `cuda/embedding.cu`. Each mirrors a CPU kernel's signature (named in its
//! doc) and checks operand lengths before launching on the stream.

use super::launch::{col_strips, CudaKernels, DevElement};
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

/// Most dims of a block copy after merging (`COPY_MAX_DIMS` in elementwise.cu).
pub const COPY_MAX_DIMS: usize = 8;

/// The loop nest of one block copy, passed by value to `copy_block_*`
/// (layout of `struct BlockDims` in elementwise.cu: all 64-bit fields).
/// Dims are innermost first; dims contiguous on both sides are merged and
/// unit dims dropped, as the CPU kernel `copy_block` does.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockDims {
    pub ndim: u64,
    pub n: [u64; COPY_MAX_DIMS],
    pub src: [u64; COPY_MAX_DIMS],
    pub dst: [u64; COPY_MAX_DIMS],
    pub src_start: u64,
    pub dst_start: u64,
}

// SAFETY: `#[repr(C)]` plain 64-bit integers, the same layout as the CUDA
// struct; no pointers, no padding.
unsafe impl DeviceRepr for BlockDims {}

impl BlockDims {
    /// The loop nest copying the block of extent `block` at `src_offset` of
    /// a `src_shape` array to `dst_offset` of a `dst_shape` array, and its
    /// element count; `None` when the block is empty. Errors when the ranks
    /// differ, the block does not fit, or more than [`COPY_MAX_DIMS`] dims
    /// remain after merging.
    pub fn new(
        src_shape: &[usize],
        src_offset: &[usize],
        dst_shape: &[usize],
        dst_offset: &[usize],
        block: &[usize],
    ) -> Result<Option<(BlockDims, usize)>> {
        let rank = block.len();
        let op = "cuda.copy_block";
        if src_shape.len() != rank
            || src_offset.len() != rank
            || dst_shape.len() != rank
            || dst_offset.len() != rank
        {
            return Err(shape_err(op, "shapes, offsets and block differ in rank"));
        }
        if (0..rank).any(|a| {
            src_offset[a] + block[a] > src_shape[a] || dst_offset[a] + block[a] > dst_shape[a]
        }) {
            return Err(shape_err(
                op,
                format!(
                    "block {block:?} at {src_offset:?} of {src_shape:?} -> at {dst_offset:?} \
                     of {dst_shape:?} does not fit"
                ),
            ));
        }
        if block.contains(&0) {
            return Ok(None);
        }
        let mut d = BlockDims::default();
        let (mut nd, mut total) = (0usize, 1usize);
        let (mut src_stride, mut dst_stride) = (1usize, 1usize);
        for a in (0..rank).rev() {
            d.src_start += (src_offset[a] * src_stride) as u64;
            d.dst_start += (dst_offset[a] * dst_stride) as u64;
            let (n, s, t) = (block[a], src_stride, dst_stride);
            src_stride *= src_shape[a];
            dst_stride *= dst_shape[a];
            total *= n;
            if n == 1 {
                continue;
            }
            // Contiguous with the inner neighbour on both sides: one dim.
            if nd > 0
                && s as u64 == d.n[nd - 1] * d.src[nd - 1]
                && t as u64 == d.n[nd - 1] * d.dst[nd - 1]
            {
                d.n[nd - 1] *= n as u64;
                continue;
            }
            if nd == COPY_MAX_DIMS {
                return Err(shape_err(
                    op,
                    format!("block {block:?} needs more than {COPY_MAX_DIMS} loop dims"),
                ));
            }
            d.n[nd] = n as u64;
            d.src[nd] = s as u64;
            d.dst[nd] = t as u64;
            nd += 1;
        }
        d.ndim = nd as u64;
        Ok(Some((d, total)))
    }

    /// The (source, destination) flat offsets of element `i` of the block:
    /// the index arithmetic of `copy_one` in elementwise.cu, for tests.
    pub fn offsets(&self, i: usize) -> (usize, usize) {
        let nd = self.ndim as usize;
        let (mut r, mut s, mut t) = (i as u64, self.src_start, self.dst_start);
        for k in 0..nd {
            let j = if k + 1 < nd { r % self.n[k] } else { r };
            s += j * self.src[k];
            t += j * self.dst[k];
            r /= self.n[k];
        }
        (s as usize, t as usize)
    }
}

/// Whether `embedding.cu` has the gradient kernels for activations `t` and
/// gradients `g` (`FOR_GRAD_PAIRS` in the prelude): the same dtype, or f32
/// gradients of 16-bit activations.
pub fn grad_pair_supported(t: DType, g: DType) -> bool {
    t == g || (matches!(t, DType::BF16 | DType::F16) && g == DType::F32)
}

impl CudaKernels {
    /// `dst[dst_offset + j] = (D) src[src_offset + j]` for every multi-index
    /// `j < block` (`kernels::cpu::copy::{copy_block, cast_block}`): a bit
    /// copy when `S == D`, else rounded to nearest-even as `cast`.
    #[allow(clippy::too_many_arguments)]
    pub fn copy_block<S: DevElement, D: DevElement>(
        &self,
        src: &CudaView<S>,
        src_shape: &[usize],
        src_offset: &[usize],
        dst: &mut CudaViewMut<D>,
        dst_shape: &[usize],
        dst_offset: &[usize],
        block: &[usize],
    ) -> Result<()>
    where
        S::Acc: DeviceRepr,
        D::Acc: DeviceRepr,
    {
        check_len("copy_block", src_shape.iter().product(), src.len())?;
        check_len("copy_block", dst_shape.iter().product(), dst.len())?;
        let Some((dims, total)) =
            BlockDims::new(src_shape, src_offset, dst_shape, dst_offset, block)?
        else {
            return Ok(());
        };
        let f = self.func(
            Module::Elementwise,
            &kernel_name("copy_block", &[S::DTYPE, D::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&dims).arg(&total).arg(src).arg(dst);
        // SAFETY: matches `copy_block_<S>_<D>(BlockDims, usize, const S*, D*)`;
        // BlockDims::new checked that the block lies inside both arrays,
        // whose lengths were checked above.
        unsafe { b.launch(elementwise(total)) }.map_err(drv)?;
        Ok(())
    }

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
        unsafe { b.launch(col_strips(nuniq, cols)) }.map_err(drv)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::cpu::copy::copy_block;

    /// The kernel's index arithmetic over the merged dims reproduces the CPU
    /// block copy, for blocks that merge fully, partly and not at all.
    /// (source shape, source offset, destination shape, destination offset, extent).
    type Case<'a> = (
        &'a [usize],
        &'a [usize],
        &'a [usize],
        &'a [usize],
        &'a [usize],
    );

    #[test]
    fn block_dims_match_the_cpu_copy() {
        let cases: &[Case] = &[
            (&[3, 3], &[1, 1], &[2, 2], &[0, 0], &[2, 2]),
            (&[4, 5, 6], &[0, 0, 0], &[4, 5, 6], &[0, 0, 0], &[4, 5, 6]),
            (&[4, 5, 6], &[1, 0, 0], &[3, 5, 6], &[0, 0, 0], &[3, 5, 6]),
            (&[4, 5, 6], &[1, 2, 3], &[5, 4, 7], &[2, 1, 0], &[2, 3, 3]),
            (
                &[2, 1, 7, 3],
                &[1, 0, 2, 0],
                &[1, 4, 9, 3],
                &[0, 3, 1, 0],
                &[1, 1, 5, 3],
            ),
            (&[5], &[2], &[4], &[1], &[3]),
            (&[], &[], &[], &[], &[]),
            (
                &[2, 3, 4, 5, 2, 3, 2, 3],
                &[0, 1, 0, 1, 0, 1, 0, 1],
                &[3, 3, 5, 5, 3, 3, 3, 3],
                &[1, 0, 1, 0, 1, 0, 1, 0],
                &[2, 2, 4, 4, 2, 2, 2, 2],
            ),
        ];
        for &(ss, so, ds, doff, blk) in cases {
            let src: Vec<i64> = (0..ss.iter().product::<usize>() as i64).collect();
            let mut want = vec![-1i64; ds.iter().product()];
            copy_block(&src, ss, so, &mut want, ds, doff, blk);
            let (dims, total) = BlockDims::new(ss, so, ds, doff, blk).unwrap().unwrap();
            assert_eq!(total, blk.iter().product::<usize>());
            assert!(dims.ndim as usize <= blk.len());
            let mut got = vec![-1i64; ds.iter().product()];
            for i in 0..total {
                let (s, t) = dims.offsets(i);
                got[t] = src[s];
            }
            assert_eq!(got, want, "case {ss:?} {so:?} {ds:?} {doff:?} {blk:?}");
        }
        // A whole tile into a whole tile is one contiguous run.
        let (d, _) = BlockDims::new(&[4, 5], &[0, 0], &[4, 5], &[0, 0], &[4, 5])
            .unwrap()
            .unwrap();
        assert_eq!((d.ndim, d.n[0], d.src[0], d.dst[0]), (1, 20, 1, 1));
        assert!(BlockDims::new(&[2], &[0], &[2], &[0], &[0])
            .unwrap()
            .is_none());
        assert!(BlockDims::new(&[2], &[1], &[2], &[0], &[2]).is_err());
    }

    #[test]
    fn block_dims_layout_is_the_cuda_struct() {
        assert_eq!(
            std::mem::size_of::<BlockDims>(),
            8 * (3 + 3 * COPY_MAX_DIMS)
        );
    }
}
