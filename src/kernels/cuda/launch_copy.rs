//! Launchers for the kernels behind the CUDA codelets of the element-wise,
//! copy/cast/re-tile, slice, reduction and embedding ops: the n-d block copy
//! (`copy_block_*` in `cuda/elementwise.cu`), the deterministic reductions
//! of `cuda/reduce.cu`, and the row-wise embedding kernels of
//! `cuda/embedding.cu`. Each mirrors a CPU kernel's signature (named in its
//! doc) and checks operand lengths before launching on the stream.

use super::geom::col_strips;
use super::launch::{CudaKernels, DevElement};
use super::{cuda_err, grid_for, kernel_name, Module, ELEMENTWISE_BLOCK, MAX_GRID, ROW_BLOCK};
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

impl CudaKernels {
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
