//! Thin launchers: one per kernel, taking device views and shapes, picking
//! the dtype-suffixed kernel and the launch geometry, and launching on the
//! stream (asynchronously). They mirror the CPU kernels' signatures in
//! `src/kernels/cpu`; the semantics are documented in the `.cu` headers.
//! None of this runs without a GPU; it is compiled (and its kernels are
//! compiled by NVRTC) in the ordinary test suite.

pub use super::context::{CudaKernels, DevElement};
use super::{
    ceil_div, cuda_err, grid_for, kernel_name, Module, ATTN_BLOCK, ELEMENTWISE_BLOCK, ROW_BLOCK,
    WARP_SIZE,
};
use crate::dtype::Element;
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

fn drv(e: cudarc::driver::DriverError) -> crate::error::Error {
    cuda_err(format!("driver: {e}"))
}

fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid_for(n, ELEMENTWISE_BLOCK), 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn per_row(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows.max(1) as u32, 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn warp_per_row(rows: usize) -> LaunchConfig {
    let rows_per_block = (ATTN_BLOCK / WARP_SIZE) as usize;
    LaunchConfig {
        grid_dim: (super::ceil_div(rows.max(1), rows_per_block) as u32, 1, 1),
        block_dim: (ATTN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaKernels {
    /// The second pass of the column reductions: `y0[c] (, y1[c]) +=` the
    /// sums over `k` of `part [nout, nparts, cols]` (`add_col_parts` in
    /// reduce.cu; `nout` is 2 with `y1`, else 1).
    fn add_col_parts<G: DevElement>(
        &self,
        nparts: usize,
        cols: usize,
        part: &CudaSlice<f64>,
        y0: &mut CudaViewMut<G>,
        y1: Option<&mut CudaViewMut<G>>,
    ) -> Result<()>
    where
        G::Acc: DeviceRepr,
    {
        let nout = 1 + y1.is_some() as usize;
        check_len("add_col_parts", nout * nparts * cols, part.len())?;
        let f = self.func(Module::Reduce, &kernel_name("add_col_parts", &[G::DTYPE]))?;
        let null: u64 = 0;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&nparts).arg(&cols).arg(part).arg(y0);
        match y1 {
            Some(y1) => b.arg(y1),
            None => b.arg(&null),
        };
        // SAFETY: matches `add_col_parts_<G>(usize, usize, const double*, G*,
        // G* (nullable))`; `part` holds `nout * nparts * cols` values and the
        // callers checked that y0 (and y1) hold `cols`.
        unsafe { b.launch(elementwise(nout * cols)) }.map_err(drv)?;
        Ok(())
    }

    /// `y[r, c] (= | +=) bias[c]` (`add` selects `+=`).
    pub fn bias<T: DevElement>(
        &self,
        add: bool,
        bias: &CudaView<T>,
        rows: usize,
        cols: usize,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("bias", rows * cols, y.len())?;
        check_len("bias", cols, bias.len())?;
        let base = if add { "bias_add" } else { "bias_fill" };
        let f = self.func(Module::Bias, &kernel_name(base, &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(bias).arg(&rows).arg(&cols).arg(y);
        // SAFETY: matches `bias_{fill,add}_<T>(const T*, usize, usize, T*)`.
        unsafe { b.launch(elementwise(rows * cols)) }.map_err(drv)?;
        Ok(())
    }

    /// `db[c] += sum_r dy[r, c]` (`kernels::cpu::bias::bias_grad`, bit for
    /// bit): `bias_grad_part` sums each block of `super::geom::COL_ROW_BLOCK` rows of
    /// each column into `ceil(rows / super::geom::COL_ROW_BLOCK) * cols` f64 partial
    /// sums, `add_col_parts` adds them into `db` in block order.
    pub fn bias_grad<T: DevElement, G: DevElement>(
        &self,
        dy: &CudaView<T>,
        rows: usize,
        cols: usize,
        db: &mut CudaViewMut<G>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
        G::Acc: DeviceRepr,
    {
        check_len("bias_grad", rows * cols, dy.len())?;
        check_len("bias_grad", cols, db.len())?;
        if rows * cols == 0 {
            return Ok(());
        }
        let nblk = ceil_div(rows, super::geom::COL_ROW_BLOCK);
        // SAFETY: bias_grad_part writes part[k, c] for every row block k <
        // nblk and column c < cols (its grid-stride loop covers all nblk *
        // strips blocks) before add_col_parts, next on the stream, reads it.
        let mut part = unsafe { self.scratch_f64(nblk * cols) }?;
        let f = self.func(Module::Bias, &kernel_name("bias_grad_part", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(dy)
            .arg(&rows)
            .arg(&cols)
            .arg(&super::geom::COL_ROW_BLOCK)
            .arg(&mut part);
        // SAFETY: matches `bias_grad_part_<T>(const T*, usize, usize, usize,
        // double*)`; `part` holds ceil(rows / super::geom::COL_ROW_BLOCK) * cols values.
        unsafe { b.launch(super::geom::col_strips(nblk, cols).into()) }.map_err(drv)?;
        self.add_col_parts(nblk, cols, &part, db, None)
    }

    /// `acc [rows, 3] = (count, mean, M2)` merged with this tile's rows.
    pub fn layernorm_stats_update<T: DevElement>(
        &self,
        x: &CudaView<T>,
        rows: usize,
        cols: usize,
        acc: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("layernorm_stats_update", rows * cols, x.len())?;
        check_len("layernorm_stats_update", rows * 3, acc.len())?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("layernorm_stats_update", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x).arg(&rows).arg(&cols).arg(acc);
        // SAFETY: matches `layernorm_stats_update_<T>(const T*, usize, usize, Acc*)`.
        unsafe { b.launch(per_row(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// `stats [rows, 2] = (mean, rstd)` from `acc [rows, 3]`.
    pub fn layernorm_stats_finalize<T: DevElement>(
        &self,
        acc: &CudaView<T::Acc>,
        rows: usize,
        eps: f64,
        stats: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("layernorm_stats_finalize", rows * 3, acc.len())?;
        check_len("layernorm_stats_finalize", rows * 2, stats.len())?;
        let acc_dtype = <T::Acc as Element>::DTYPE;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("layernorm_stats_finalize", &[acc_dtype]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(acc).arg(&rows).arg(&eps).arg(stats);
        // SAFETY: matches `layernorm_stats_finalize_<A>(const A*, usize, double, A*)`.
        unsafe { b.launch(elementwise(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// `y = (x - mean) * rstd * gamma + beta`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_fwd<T: DevElement>(
        &self,
        x: &CudaView<T>,
        stats: &CudaView<T::Acc>,
        gamma: &CudaView<T>,
        beta: &CudaView<T>,
        rows: usize,
        cols: usize,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("layernorm_fwd", rows * cols, x.len())?;
        check_len("layernorm_fwd", rows * cols, y.len())?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("layernorm_fwd", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x)
            .arg(stats)
            .arg(gamma)
            .arg(beta)
            .arg(&rows)
            .arg(&cols)
            .arg(y);
        // SAFETY: matches `layernorm_fwd_<T>(const T*, const A*, const T*, const T*, usize, usize, T*)`.
        unsafe { b.launch(elementwise(rows * cols)) }.map_err(drv)?;
        Ok(())
    }

    /// `sums[r] += (sum_c dy*gamma, sum_c dy*gamma*xhat)`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_bwd_reduce<T: DevElement>(
        &self,
        x: &CudaView<T>,
        dy: &CudaView<T>,
        stats: &CudaView<T::Acc>,
        gamma: &CudaView<T>,
        rows: usize,
        cols: usize,
        sums: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("layernorm_bwd_reduce", rows * cols, x.len())?;
        check_len("layernorm_bwd_reduce", rows * 2, sums.len())?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("layernorm_bwd_reduce", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x)
            .arg(dy)
            .arg(stats)
            .arg(gamma)
            .arg(&rows)
            .arg(&cols)
            .arg(sums);
        // SAFETY: matches `layernorm_bwd_reduce_<T>(...)` in layernorm.cu.
        unsafe { b.launch(per_row(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// `dx (=|+=) rstd * (dy*gamma - sums0/N - xhat*sums1/N)`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_bwd<T: DevElement>(
        &self,
        x: &CudaView<T>,
        dy: &CudaView<T>,
        stats: &CudaView<T::Acc>,
        gamma: &CudaView<T>,
        sums: &CudaView<T::Acc>,
        total_cols: usize,
        rows: usize,
        cols: usize,
        accumulate: bool,
        dx: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("layernorm_bwd", rows * cols, dx.len())?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("layernorm_bwd", &[T::DTYPE]),
        )?;
        let acc_flag = accumulate as i32;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x)
            .arg(dy)
            .arg(stats)
            .arg(gamma)
            .arg(sums)
            .arg(&total_cols)
            .arg(&rows)
            .arg(&cols)
            .arg(&acc_flag)
            .arg(dx);
        // SAFETY: matches `layernorm_bwd_<T>(...)` in layernorm.cu.
        unsafe { b.launch(elementwise(rows * cols)) }.map_err(drv)?;
        Ok(())
    }

    /// `dgamma[c] += sum_r dy*xhat`, `dbeta[c] += sum_r dy`
    /// (`kernels::cpu::layernorm::layernorm_param_grad`, bit for bit): as
    /// [`CudaKernels::bias_grad`], through `2 * ceil(rows / super::geom::COL_ROW_BLOCK) *
    /// cols` f64 partial sums.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm_param_grad<T: DevElement, G: DevElement>(
        &self,
        x: &CudaView<T>,
        dy: &CudaView<T>,
        stats: &CudaView<T::Acc>,
        rows: usize,
        cols: usize,
        dgamma: &mut CudaViewMut<G>,
        dbeta: &mut CudaViewMut<G>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
        G::Acc: DeviceRepr,
    {
        check_len("layernorm_param_grad", rows * cols, x.len())?;
        check_len("layernorm_param_grad", rows * cols, dy.len())?;
        check_len("layernorm_param_grad", rows * 2, stats.len())?;
        check_len("layernorm_param_grad", cols, dgamma.len())?;
        check_len("layernorm_param_grad", cols, dbeta.len())?;
        if rows * cols == 0 {
            return Ok(());
        }
        let nblk = ceil_div(rows, super::geom::COL_ROW_BLOCK);
        // SAFETY: layernorm_param_grad_part writes part[j, k, c] for both
        // sums j, every row block k < nblk and column c < cols before
        // add_col_parts, next on the stream, reads it.
        let mut part = unsafe { self.scratch_f64(2 * nblk * cols) }?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("layernorm_param_grad_part", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x)
            .arg(dy)
            .arg(stats)
            .arg(&rows)
            .arg(&cols)
            .arg(&super::geom::COL_ROW_BLOCK)
            .arg(&mut part);
        // SAFETY: matches `layernorm_param_grad_part_<T>(const T*, const T*,
        // const A*, usize, usize, usize, double*)`; x, dy and stats were
        // checked above, `part` holds 2 * ceil(rows / super::geom::COL_ROW_BLOCK) * cols values.
        unsafe { b.launch(super::geom::col_strips(nblk, cols).into()) }.map_err(drv)?;
        self.add_col_parts(nblk, cols, &part, dgamma, Some(dbeta))
    }

    /// `acc [rows, 2] = (max, sumexp)` merged with this logits tile.
    pub fn maxsumexp_update<T: DevElement>(
        &self,
        logits: &CudaView<T>,
        rows: usize,
        vt: usize,
        acc: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("maxsumexp_update", rows * vt, logits.len())?;
        check_len("maxsumexp_update", rows * 2, acc.len())?;
        let f = self.func(
            Module::CrossEntropy,
            &kernel_name("maxsumexp_update", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(logits).arg(&rows).arg(&vt).arg(acc);
        // SAFETY: matches `maxsumexp_update_<T>(const T*, usize, usize, A*)`.
        unsafe { b.launch(per_row(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// In place: logits become `scale * (softmax - onehot)`.
    #[allow(clippy::too_many_arguments)]
    pub fn ce_bwd<T: DevElement>(
        &self,
        acc: &CudaView<T::Acc>,
        rows: usize,
        vt: usize,
        vocab_lo: usize,
        targets: &CudaView<i64>,
        scale: f64,
        logits: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("ce_bwd", rows * vt, logits.len())?;
        let f = self.func(Module::CrossEntropy, &kernel_name("ce_bwd", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(acc)
            .arg(&rows)
            .arg(&vt)
            .arg(&vocab_lo)
            .arg(targets)
            .arg(&scale)
            .arg(logits);
        // SAFETY: matches `ce_bwd_<T>(const A*, usize, usize, usize, const i64*, double, T*)`.
        unsafe { b.launch(elementwise(rows * vt)) }.map_err(drv)?;
        Ok(())
    }

    /// `m = -inf, l = 0, acc = 0` for `rows = b*tq*h` rows of head size `hs`.
    pub fn attn_fwd_init<T: DevElement>(
        &self,
        rows: usize,
        hs: usize,
        m: &mut CudaViewMut<T::Acc>,
        l: &mut CudaViewMut<T::Acc>,
        acc: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("attn_fwd_init", rows * hs, acc.len())?;
        let f = self.func(
            Module::Attention,
            &kernel_name("attn_fwd_init", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&rows).arg(&hs).arg(m).arg(l).arg(acc);
        // SAFETY: matches `attn_fwd_init_<T>(usize, usize, A*, A*, A*)`.
        unsafe { b.launch(elementwise(rows * hs.max(1))) }.map_err(drv)?;
        Ok(())
    }

    /// `o = acc / l`, `lse = m + ln l`.
    #[allow(clippy::too_many_arguments)]
    pub fn attn_fwd_finalize<T: DevElement>(
        &self,
        m: &CudaView<T::Acc>,
        l: &CudaView<T::Acc>,
        acc: &CudaView<T::Acc>,
        rows: usize,
        hs: usize,
        o: &mut CudaViewMut<T>,
        lse: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("attn_fwd_finalize", rows * hs, o.len())?;
        let f = self.func(
            Module::Attention,
            &kernel_name("attn_fwd_finalize", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(m).arg(l).arg(acc).arg(&rows).arg(&hs).arg(o).arg(lse);
        // SAFETY: matches `attn_fwd_finalize_<T>(...)` in attention.cu.
        unsafe { b.launch(elementwise(rows * hs)) }.map_err(drv)?;
        Ok(())
    }

    /// `delta = rowsum(dO o O)`.
    pub fn attn_bwd_delta<T: DevElement>(
        &self,
        o: &CudaView<T>,
        d_o: &CudaView<T>,
        rows: usize,
        hs: usize,
        delta: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("attn_bwd_delta", rows * hs, o.len())?;
        check_len("attn_bwd_delta", rows, delta.len())?;
        let f = self.func(
            Module::Attention,
            &kernel_name("attn_bwd_delta", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(o).arg(d_o).arg(&rows).arg(&hs).arg(delta);
        // SAFETY: matches `attn_bwd_delta_<T>(const T*, const T*, usize, usize, A*)`.
        unsafe { b.launch(warp_per_row(rows)) }.map_err(drv)?;
        Ok(())
    }
}

fn check_len(op: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(crate::error::shape_err(
            &format!("cuda.{op}"),
            format!("expected {want} elements, got {got}"),
        ))
    }
}
