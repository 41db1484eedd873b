//! Launchers for the layer kernels that `launch.rs` does not cover: in-place
//! activation backward, dropout, the fused residual + LayerNorm, the
//! cross-entropy accumulator init and the single-block (deterministic) loss
//! sums. Same conventions as `launch.rs`: views and shapes in, the
//! dtype-suffixed kernel picked by [`kernel_name`], launched on the stream
//! without waiting.

use super::launch::{CudaKernels, DevElement};
use super::{cuda_err, grid_for, kernel_name, Module, ELEMENTWISE_BLOCK, ROW_BLOCK};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

fn drv(e: cudarc::driver::DriverError) -> crate::error::Error {
    cuda_err(format!("driver: {e}"))
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

/// One block: the loss kernels then sum in a fixed order.
fn one_block() -> LaunchConfig {
    LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (ROW_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Blocks of the row kernels are one per row: refuse what a grid cannot hold.
fn check_rows(op: &str, rows: usize) -> Result<()> {
    if rows > i32::MAX as usize {
        return Err(crate::error::shape_err(
            &format!("cuda.{op}"),
            format!("{rows} rows exceed the grid"),
        ));
    }
    Ok(())
}

impl CudaKernels {
    /// `sum = x + r` (`r = None`: `sum` holds r on entry), then `acc [rows, 3]`
    /// merged with the statistics of `sum`'s rows.
    pub fn add_layernorm_stats_update<T: DevElement>(
        &self,
        x: &CudaView<T>,
        r: Option<&CudaView<T>>,
        rows: usize,
        cols: usize,
        sum: &mut CudaViewMut<T>,
        acc: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("add_layernorm_stats_update", rows * cols, x.len())?;
        check_len("add_layernorm_stats_update", rows * cols, sum.len())?;
        check_len("add_layernorm_stats_update", rows * 3, acc.len())?;
        if let Some(r) = r {
            check_len("add_layernorm_stats_update", rows * cols, r.len())?;
        }
        check_rows("add_layernorm_stats_update", rows)?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("add_layernorm_stats_update", &[T::DTYPE]),
        )?;
        // A null pointer tells the kernel to read r from `sum`.
        let null: u64 = 0;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x);
        match r {
            Some(r) => b.arg(r),
            None => b.arg(&null),
        };
        b.arg(&rows).arg(&cols).arg(sum).arg(acc);
        // SAFETY: matches `add_layernorm_stats_update_<T>(const T*, const T*
        // (nullable), usize, usize, T*, A*)`.
        unsafe { b.launch(per_row(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// One pass per row (C in one tile): `sum = x + r` (`r = None`: in place
    /// in `sum`), `stats = (mean, rstd)` of `sum`, `y = LayerNorm(sum)`.
    #[allow(clippy::too_many_arguments)]
    pub fn add_layernorm_fwd<T: DevElement>(
        &self,
        x: &CudaView<T>,
        r: Option<&CudaView<T>>,
        gamma: &CudaView<T>,
        beta: &CudaView<T>,
        rows: usize,
        cols: usize,
        eps: f64,
        sum: &mut CudaViewMut<T>,
        stats: &mut CudaViewMut<T::Acc>,
        y: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("add_layernorm_fwd", rows * cols, x.len())?;
        check_len("add_layernorm_fwd", rows * cols, sum.len())?;
        check_len("add_layernorm_fwd", rows * cols, y.len())?;
        check_len("add_layernorm_fwd", cols, gamma.len())?;
        check_len("add_layernorm_fwd", cols, beta.len())?;
        check_len("add_layernorm_fwd", rows * 2, stats.len())?;
        if let Some(r) = r {
            check_len("add_layernorm_fwd", rows * cols, r.len())?;
        }
        check_rows("add_layernorm_fwd", rows)?;
        let f = self.func(
            Module::LayerNorm,
            &kernel_name("add_layernorm_fwd", &[T::DTYPE]),
        )?;
        let null: u64 = 0;
        let mut b = self.stream().launch_builder(&f);
        b.arg(x);
        match r {
            Some(r) => b.arg(r),
            None => b.arg(&null),
        };
        b.arg(gamma)
            .arg(beta)
            .arg(&rows)
            .arg(&cols)
            .arg(&eps)
            .arg(sum)
            .arg(stats)
            .arg(y);
        // SAFETY: matches `add_layernorm_fwd_<T>(const T*, const T* (nullable),
        // const T*, const T*, usize, usize, double, T*, A*, T*)`.
        unsafe { b.launch(per_row(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// `acc [rows, 2] = (-inf, 0)` (`A` an accumulation dtype, f32 or f64).
    pub fn maxsumexp_init<A: DevElement>(&self, rows: usize, acc: &mut CudaViewMut<A>) -> Result<()>
    where
        A::Acc: DeviceRepr,
    {
        check_len("maxsumexp_init", rows * 2, acc.len())?;
        let f = self.func(
            Module::CrossEntropy,
            &kernel_name("maxsumexp_init", &[A::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&rows).arg(acc);
        // SAFETY: matches `maxsumexp_init_<A>(usize, A*)`.
        unsafe { b.launch(elementwise(rows)) }.map_err(drv)?;
        Ok(())
    }

    /// `loss[0] -= sum_r z[r, t_r]` for the targets inside this tile, summed
    /// by one block in a fixed order (deterministic, unlike [`Self::ce_loss`]).
    #[allow(clippy::too_many_arguments)]
    pub fn ce_loss_target_sum<T: DevElement>(
        &self,
        logits: &CudaView<T>,
        rows: usize,
        vt: usize,
        vocab_lo: usize,
        targets: &CudaView<i64>,
        loss: &mut CudaViewMut<f64>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        check_len("ce_loss_target", rows * vt, logits.len())?;
        check_len("ce_loss_target", rows, targets.len())?;
        check_len("ce_loss_target", 1, loss.len())?;
        let f = self.func(
            Module::CrossEntropy,
            &kernel_name("ce_loss_target", &[T::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(logits)
            .arg(&rows)
            .arg(&vt)
            .arg(&vocab_lo)
            .arg(targets)
            .arg(loss);
        // SAFETY: matches `ce_loss_target_<T>(const T*, usize, usize, usize, const i64*, double*)`.
        unsafe { b.launch(one_block()) }.map_err(drv)?;
        Ok(())
    }

    /// `loss[0] += sum_r (max + ln sumexp)` over the non-ignored rows, by one
    /// block (`A` the accumulation dtype of `acc`).
    pub fn ce_loss_lse_sum<A: DevElement>(
        &self,
        acc: &CudaView<A>,
        rows: usize,
        targets: &CudaView<i64>,
        loss: &mut CudaViewMut<f64>,
    ) -> Result<()>
    where
        A::Acc: DeviceRepr,
    {
        check_len("ce_loss_lse", rows * 2, acc.len())?;
        check_len("ce_loss_lse", rows, targets.len())?;
        check_len("ce_loss_lse", 1, loss.len())?;
        let f = self.func(
            Module::CrossEntropy,
            &kernel_name("ce_loss_lse", &[A::DTYPE]),
        )?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(acc).arg(&rows).arg(targets).arg(loss);
        // SAFETY: matches `ce_loss_lse_<A>(const A*, usize, const i64*, double*)`.
        unsafe { b.launch(one_block()) }.map_err(drv)?;
        Ok(())
    }
}

/// Whether `(T, G)` is a (storage, gradient) dtype pair the `_grad` kernels
/// are instantiated for (`FOR_GRAD_PAIRS` in `cuda/prelude.cu`).
pub fn grad_pair_on_device(t: crate::DType, g: crate::DType) -> bool {
    use crate::DType::*;
    t == g || (matches!(t, BF16 | F16) && g == F32)
}
