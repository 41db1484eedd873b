//! `cuda/attention.cu`: causal flash attention, one warp per row
//! (semantics in the `.cu` header, the CPU's in `kernels::cpu::attention`),
//! with attention dropout (the CPU's counter-based mask) and a key/value
//! batch stride `ks` (KV-cache tiles of which the first `tk` positions are
//! used); the backward is one launch that owns every output row (no atomics).

use super::context::{DevElement, Gpu};
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr};

/// Largest head size the kernels take (they keep a row in registers).
pub const ATTN_HS_MAX: usize = 256;

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_attention {
    ($cb:ident) => { $cb! { Attention;
        /// `m = -inf, l = 0, acc = 0` for `rows = b*tq*h` rows of head size `hs`.
        attn_fwd_init<T>(
            rows: val usize, hs: val usize, m: out A [rows], l: out A [rows],
            acc: out A [rows * hs],
        ) @ elementwise(rows * hs.max(1));
        /// Merges one key tile into the online softmax state (see [`flash_fwd`]).
        flash_fwd as flash_fwd_raw<T>(
            q: in T [b * tq * h * hs], k: in T [b * ks * h * hs], v: in T [b * ks * h * hs],
            b: val usize, tq: val usize, tk: val usize, ks: val usize, h: val usize,
            hs: val usize, q0: val usize, k0: val usize, scale: val f64, drop: val AttnDropArgs,
            m: out A [b * tq * h], l: out A [b * tq * h], acc: out A [b * tq * h * hs],
        ) @ warp_rows(b * tq * h);
        /// `o = acc / l`, `lse = m + ln l`.
        attn_fwd_finalize<T>(
            m: in A [rows], l: in A [rows], acc: in A [rows * hs], rows: val usize,
            hs: val usize, o: out T [rows * hs], lse: out A [rows],
        ) @ elementwise(rows * hs);
        /// `delta = rowsum(dO o O)`.
        attn_bwd_delta<T>(
            o: in T [rows * hs], d_o: in T [rows * hs], rows: val usize, hs: val usize,
            delta: out A [rows],
        ) @ warp_rows(rows);
        /// `dq, dk, dv +=` the terms of one (query tile, key tile) pair (see
        /// [`flash_bwd`]).
        flash_bwd as flash_bwd_raw<T>(
            q: in T [b * tq * h * hs], k: in T [b * tk * h * hs], v: in T [b * tk * h * hs],
            d_o: in T [b * tq * h * hs], lse: in A [b * tq * h], delta: in A [b * tq * h],
            b: val usize, tq: val usize, tk: val usize, h: val usize, hs: val usize,
            q0: val usize, k0: val usize, scale: val f64, drop: val AttnDropArgs,
            dq: out T [b * tq * h * hs], dk: out T [b * tk * h * hs], dv: out T [b * tk * h * hs],
        ) @ warp_rows(b * tq.max(tk) * h);
    } };
}
crate::cuda_table_attention!(launchers);

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

fn check_hs(op: &str, hs: usize) -> Result<()> {
    if hs > ATTN_HS_MAX {
        return Err(shape_err(
            &format!("cuda.{op}"),
            format!("head size {hs} above the GPU kernels' {ATTN_HS_MAX}"),
        ));
    }
    Ok(())
}

/// Merge one key tile into the online softmax state (`dims` =
/// `[b, tq, tk, ks, h, hs]`: k and v hold `ks >= tk` positions per batch
/// row of which the first `tk` are used; `pos` = `[q0, k0]`).
#[allow(clippy::too_many_arguments)]
pub fn flash_fwd<T: DevElement>(
    gpu: &Gpu,
    [q, k, v]: [&CudaView<T>; 3],
    [b, tq, tk, ks, h, hs]: [usize; 6],
    [q0, k0]: [usize; 2],
    scale: f64,
    drop: &AttnDropArgs,
    m: &mut CudaViewMut<T::Acc>,
    l: &mut CudaViewMut<T::Acc>,
    acc: &mut CudaViewMut<T::Acc>,
) -> Result<()> {
    check_hs("flash_fwd", hs)?;
    if tk > ks {
        let msg = format!("{tk} keys used of {ks} per batch row");
        return Err(shape_err("cuda.flash_fwd", msg));
    }
    let d = *drop;
    flash_fwd_raw(
        gpu, q, k, v, b, tq, tk, ks, h, hs, q0, k0, scale, d, m, l, acc,
    )
}

/// `dq, dk, dv +=` the terms of one (query tile, key tile) pair
/// (`dims` = `[b, tq, tk, h, hs]`, `pos` = `[q0, k0]`).
#[allow(clippy::too_many_arguments)]
pub fn flash_bwd<T: DevElement>(
    gpu: &Gpu,
    [q, k, v]: [&CudaView<T>; 3],
    d_o: &CudaView<T>,
    lse: &CudaView<T::Acc>,
    delta: &CudaView<T::Acc>,
    [b, tq, tk, h, hs]: [usize; 5],
    [q0, k0]: [usize; 2],
    scale: f64,
    drop: &AttnDropArgs,
    [dq, dk, dv]: [&mut CudaViewMut<T>; 3],
) -> Result<()> {
    check_hs("flash_bwd", hs)?;
    let d = *drop;
    #[rustfmt::skip]
    return flash_bwd_raw(
        gpu, q, k, v, d_o, lse, delta, b, tq, tk, h, hs, q0, k0, scale, d, dq, dk, dv,
    );
}
