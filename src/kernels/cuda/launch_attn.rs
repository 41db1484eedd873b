//! Launchers for the flash-attention kernels with what `launch.rs`'s
//! `attn_fwd_update` / `attn_bwd_update` lack: attention dropout (the CPU's
//! counter-based mask), a key/value batch stride (`ks`, for KV-cache tiles of
//! which only the first `tk` positions are used), and the backward as one
//! launch that owns every output row (no atomics). Semantics in
//! `cuda/attention.cu`.

use super::launch::{CudaKernels, DevElement};
use super::{ceil_div, cuda_err, kernel_name, Module, ATTN_BLOCK, MAX_GRID, WARP_SIZE};
use crate::error::Result;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

/// Largest head size the kernels take (they keep a row in registers).
pub const ATTN_HS_MAX: usize = 256;

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

fn check_hs(op: &str, hs: usize) -> Result<()> {
    if hs > ATTN_HS_MAX {
        return Err(crate::error::shape_err(
            &format!("cuda.{op}"),
            format!("head size {hs} above the GPU kernels' {ATTN_HS_MAX}"),
        ));
    }
    Ok(())
}

/// One warp per row, rows visited by a warp-stride loop (so capping the
/// grid is safe).
fn warp_rows(rows: usize) -> LaunchConfig {
    let per_block = (ATTN_BLOCK / WARP_SIZE) as usize;
    LaunchConfig {
        grid_dim: (
            ceil_div(rows.max(1), per_block).min(MAX_GRID as usize) as u32,
            1,
            1,
        ),
        block_dim: (ATTN_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Attention dropout as the kernels take it (`struct AttnDrop` in
/// `cuda/attention.cu`: nine 8-byte fields, same order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AttnDropArgs {
    pub seed: u64,
    pub stream: u64,
    pub p: f64,
    /// `DropoutMask::new(seed, stream, p).scale`.
    pub scale: f64,
    pub nh: u64,
    pub t: u64,
    pub b_off: u64,
    pub h_off: u64,
    /// 0: no dropout.
    pub on: u64,
}

// SAFETY: a #[repr(C)] struct of plain 8-byte numbers, matching the C struct
// field for field; any bit pattern is valid.
unsafe impl DeviceRepr for AttnDropArgs {}

impl AttnDropArgs {
    /// From the CPU kernels' `(seed, stream, p, [B, NH, T, T], [b_off, h_off])`
    /// (`None`, or p <= 0: off).
    pub fn new(d: crate::kernels::cpu::attention::AttnDropout) -> Self {
        match d {
            Some((seed, stream, p, [_, nh, t, _], [b_off, h_off])) if p > 0.0 => AttnDropArgs {
                seed,
                stream,
                p,
                scale: crate::kernels::cpu::dropout::DropoutMask::new(seed, stream, p).scale,
                nh: nh as u64,
                t: t as u64,
                b_off: b_off as u64,
                h_off: h_off as u64,
                on: 1,
            },
            _ => AttnDropArgs {
                scale: 1.0,
                ..Default::default()
            },
        }
    }
}

impl CudaKernels {
    /// Merge one key tile into the online softmax state (`dims` =
    /// `[b, tq, tk, ks, h, hs]`: k and v hold `ks >= tk` positions per batch
    /// row of which the first `tk` are used; `pos` = `[q0, k0]`).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_fwd<T: DevElement>(
        &self,
        qkv: [&CudaView<T>; 3],
        dims: [usize; 6],
        pos: [usize; 2],
        scale: f64,
        drop: &AttnDropArgs,
        m: &mut CudaViewMut<T::Acc>,
        l: &mut CudaViewMut<T::Acc>,
        acc: &mut CudaViewMut<T::Acc>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        let [bb, tq, tk, ks, h, hs] = dims;
        check_hs("flash_fwd", hs)?;
        if tk > ks {
            return Err(crate::error::shape_err(
                "cuda.flash_fwd",
                format!("{tk} keys used of {ks} per batch row"),
            ));
        }
        check_len("flash_fwd", bb * tq * h * hs, qkv[0].len())?;
        check_len("flash_fwd", bb * ks * h * hs, qkv[1].len())?;
        check_len("flash_fwd", bb * ks * h * hs, qkv[2].len())?;
        check_len("flash_fwd", bb * tq * h, m.len())?;
        check_len("flash_fwd", bb * tq * h, l.len())?;
        check_len("flash_fwd", bb * tq * h * hs, acc.len())?;
        let f = self.func(Module::Attention, &kernel_name("flash_fwd", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(qkv[0])
            .arg(qkv[1])
            .arg(qkv[2])
            .arg(&bb)
            .arg(&tq)
            .arg(&tk)
            .arg(&ks)
            .arg(&h)
            .arg(&hs)
            .arg(&pos[0])
            .arg(&pos[1])
            .arg(&scale)
            .arg(drop)
            .arg(m)
            .arg(l)
            .arg(acc);
        // SAFETY: matches `flash_fwd_<T>(const T* q, const T* k, const T* v,
        // usize b, tq, tk, ks, h, hs, q0, k0, double scale, AttnDrop, A* m,
        // A* l, A* acc)`.
        unsafe { b.launch(warp_rows(bb * tq * h)) }.map_err(drv)?;
        Ok(())
    }

    /// `dq, dk, dv +=` the terms of one (query tile, key tile) pair
    /// (`dims` = `[b, tq, tk, h, hs]`, `pos` = `[q0, k0]`).
    #[allow(clippy::too_many_arguments)]
    pub fn flash_bwd<T: DevElement>(
        &self,
        qkv: [&CudaView<T>; 3],
        d_o: &CudaView<T>,
        lse: &CudaView<T::Acc>,
        delta: &CudaView<T::Acc>,
        dims: [usize; 5],
        pos: [usize; 2],
        scale: f64,
        drop: &AttnDropArgs,
        dq: &mut CudaViewMut<T>,
        dk: &mut CudaViewMut<T>,
        dv: &mut CudaViewMut<T>,
    ) -> Result<()>
    where
        T::Acc: DeviceRepr,
    {
        let [bb, tq, tk, h, hs] = dims;
        check_hs("flash_bwd", hs)?;
        let (qn, kn) = (bb * tq * h * hs, bb * tk * h * hs);
        check_len("flash_bwd", qn, qkv[0].len())?;
        check_len("flash_bwd", kn, qkv[1].len())?;
        check_len("flash_bwd", kn, qkv[2].len())?;
        check_len("flash_bwd", qn, d_o.len())?;
        check_len("flash_bwd", bb * tq * h, lse.len())?;
        check_len("flash_bwd", bb * tq * h, delta.len())?;
        check_len("flash_bwd", qn, dq.len())?;
        check_len("flash_bwd", kn, dk.len())?;
        check_len("flash_bwd", kn, dv.len())?;
        let f = self.func(Module::Attention, &kernel_name("flash_bwd", &[T::DTYPE]))?;
        let mut b = self.stream().launch_builder(&f);
        b.arg(qkv[0])
            .arg(qkv[1])
            .arg(qkv[2])
            .arg(d_o)
            .arg(lse)
            .arg(delta)
            .arg(&bb)
            .arg(&tq)
            .arg(&tk)
            .arg(&h)
            .arg(&hs)
            .arg(&pos[0])
            .arg(&pos[1])
            .arg(&scale)
            .arg(drop)
            .arg(dq)
            .arg(dk)
            .arg(dv);
        // SAFETY: matches `flash_bwd_<T>(const T* q, k, v, d_o, const A* lse,
        // delta, usize b, tq, tk, h, hs, q0, k0, double scale, AttnDrop,
        // T* dq, T* dk, T* dv)`.
        unsafe { b.launch(warp_rows(bb * tq.max(tk) * h)) }.map_err(drv)?;
        Ok(())
    }
}
