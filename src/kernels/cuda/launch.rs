//! Thin launchers: one per kernel, taking device views and shapes, picking
//! the dtype-suffixed kernel and the launch geometry, and launching on the
//! stream (asynchronously). They mirror the CPU kernels' signatures in
//! `src/kernels/cpu`; the semantics are documented in the `.cu` headers.
//! None of this runs without a GPU; it is compiled (and its kernels are
//! compiled by NVRTC) in the ordinary test suite.

pub use super::context::{CudaKernels, DevElement};
use super::{cuda_err, grid_for, kernel_name, Module, ATTN_BLOCK, ELEMENTWISE_BLOCK, WARP_SIZE};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

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

fn warp_per_row(rows: usize) -> LaunchConfig {
    let rows_per_block = (ATTN_BLOCK / WARP_SIZE) as usize;
    LaunchConfig {
        grid_dim: (super::ceil_div(rows.max(1), rows_per_block) as u32, 1, 1),
        block_dim: (ATTN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl CudaKernels {
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
