//! `cuda/attention.cu`: causal flash attention, one warp per row, with the
//! CPU's dropout mask; the backward is one launch that owns every output row
//! (no atomics).

use super::ATTN_BLOCK;
use cudarc::driver::DeviceRepr;

/// Largest head size (the kernels keep a row in registers).
pub const ATTN_HS_MAX: usize = 256;

cuda_table! { cuda_table_attention($) Attention;
    /// `m = -inf, l = 0, acc = 0` for `rows = b*tq*h` rows of head size `hs`.
    attn_fwd_init<T>(
        rows, hs, m: out T::Acc [rows], l: out T::Acc [rows], acc: out T::Acc [rows * hs],
    ) @ elementwise(rows * hs.max(1));
    /// Merges one key tile into the online softmax state (k, v: the first
    /// `tk` of `ks` positions per batch row, for KV-cache tiles).
    flash_fwd<T>(
        q: in T [b * tq * h * hs], k: in T [b * ks * h * hs], v: in T [b * ks * h * hs],
        b, tq, tk, ks, h, hs, q0, k0, scale: val f64, drop: val AttnDropArgs,
        m: out T::Acc [b * tq * h], l: out T::Acc [b * tq * h], acc: out T::Acc [b * tq * h * hs],
    ) if (hs <= ATTN_HS_MAX && tk <= ks) @ warp_rows(b * tq * h, ATTN_BLOCK);
    /// `o = acc / l`, `lse = m + ln l`.
    attn_fwd_finalize<T>(
        m: in T::Acc [rows], l: in T::Acc [rows], acc: in T::Acc [rows * hs], rows, hs,
        o: out T [rows * hs], lse: out T::Acc [rows],
    ) @ elementwise(rows * hs);
    /// `delta = rowsum(dO o O)`.
    attn_bwd_delta<T>(
        o: in T [rows * hs], d_o: in T [rows * hs], rows, hs, delta: out T::Acc [rows],
    ) @ warp_rows(rows, ATTN_BLOCK);
    /// `dq, dk, dv +=` the terms of one (query tile, key tile) pair.
    flash_bwd<T>(
        q: in T [b * tq * h * hs], k: in T [b * tk * h * hs], v: in T [b * tk * h * hs],
        d_o: in T [b * tq * h * hs], lse: in T::Acc [b * tq * h], delta: in T::Acc [b * tq * h],
        b, tq, tk, h, hs, q0, k0, scale: val f64, drop: val AttnDropArgs,
        dq: out T [b * tq * h * hs], dk: out T [b * tk * h * hs], dv: out T [b * tk * h * hs],
    ) if (hs <= ATTN_HS_MAX) @ warp_rows(b * tq.max(tk) * h, ATTN_BLOCK);
}

/// `struct AttnDrop` of `cuda/attention.cu`.
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
    /// From the CPU kernels' dropout (`None`, or p <= 0: off).
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
