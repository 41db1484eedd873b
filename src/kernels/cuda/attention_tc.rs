//! The tensor-core path of the attention update tasks: the products of one
//! (query tile, key tile) pair through cuBLAS ([`gemm_strided`], batched
//! over the heads of one batch row), the softmax steps between them in
//! `cuda/attention_tc.cu`. Same operands and semantics as
//! [`flash_fwd`](super::attention::flash_fwd) (without a KV-cache batch
//! stride) and [`flash_bwd`](super::attention::flash_bwd), for f32, bf16 and
//! f16 (f64 keeps the warp path).
//!
//! Only the query rows `first..tq` that see a key of the tile enter the
//! products. Scores live in scratch `[bc, h, nr, tk]` for `bc` batch rows at
//! a time (as many as fit [`SCORE_BUDGET`], at least one), uninitialised
//! (the score GEMMs have beta = 0 and the row kernels write every key of
//! every row) and freed stream-ordered; the runtime's memory limit does not
//! count them.
//!
//! ```text
//! forward, per chunk:  S = scale Q K^T (GEMM per batch row) -> fwd_rows -> acc += Pd V
//! backward, per chunk: S = scale Q K^T, DP = dO V^T -> bwd_rows ->
//!                      dV += Pd^T dO, dQ += scale dS K, dK += scale dS^T Q
//! ```
//!
//! f32 products run in true fp32 (the task knows nothing of a TF32 mode).

use super::attention::AttnDropArgs;
use super::blas::{gemm_strided, Strided};
use super::context::{DevElement, Gpu};
use super::geom::ATTN_TC_BLOCK;
use super::table::{check_len, require};
use crate::dtype::{DType, Element, GemmCompute};
use crate::error::Result;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};

cuda_table! { cuda_table_attention_tc($) AttentionTc;
    /// The forward softmax step over the chunk of `nb` batch rows from
    /// `b0`: scores `s` in, `p` out, the statistics and `acc` rescaled.
    attn_tc_fwd_rows<T> for tc (
        s: in f32 [>= rows * tk], rows = nb * g.h * g.nr,
        g: host Geo { nr, tk, tq, h, hs, first, q0, k0 },
        b0, drop: val AttnDropArgs, m: out T::Acc [>= (b0 + nb) * tq * h],
        l: out T::Acc [>= (b0 + nb) * tq * h], acc: out T::Acc [>= (b0 + nb) * tq * h * hs],
        p: out T [>= rows * tk], nb: host usize,
    ) @ warp_rows(rows, ATTN_TC_BLOCK);
    /// The backward softmax step: `pd` and `ds` from `s` and `dp = dO V^T`.
    attn_tc_bwd_rows<T> for tc (
        s: in f32 [>= rows * tk], dp: in f32 [>= rows * tk],
        lse: in T::Acc [>= (b0 + nb) * tq * h], delta: in T::Acc [>= (b0 + nb) * tq * h],
        rows = nb * g.h * g.nr,
        g: host Geo { nr, tk, tq, h, first, q0, k0 },
        b0, drop: val AttnDropArgs, pd: out T [>= rows * tk], ds: out T [>= rows * tk],
        nb: host usize,
    ) @ warp_rows(rows, ATTN_TC_BLOCK);
}

/// Elements of one scratch block of scores (64 MiB in f32).
pub const SCORE_BUDGET: usize = 1 << 24;

/// Whether the path takes this dtype and head size (cuBLAS needs a head).
pub fn attn_tc_supports(dt: DType, hs: usize) -> bool {
    matches!(dt, DType::F32 | DType::BF16 | DType::F16) && hs >= 1
}

/// The products' compute mode (module doc).
const CM: GemmCompute = GemmCompute::Default;

/// The geometry of one task (`[b, tq, tk, h, hs]`, `[q0, k0]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geo {
    pub b: usize,
    pub tq: usize,
    pub tk: usize,
    pub h: usize,
    pub hs: usize,
    pub q0: usize,
    pub k0: usize,
    /// First query row that sees a key of the tile.
    pub first: usize,
    /// Query rows in the products (`tq - first`).
    pub nr: usize,
    /// Batch rows per chunk.
    pub bc: usize,
}

impl Geo {
    /// `None` when the task has nothing to do.
    pub fn new([b, tq, tk, h, hs]: [usize; 5], [q0, k0]: [usize; 2]) -> Option<Geo> {
        let first = k0.saturating_sub(q0);
        if tk == 0 || first >= tq || b == 0 || h == 0 {
            return None;
        }
        let nr = tq - first;
        let bc = (SCORE_BUDGET / (h * nr * tk)).clamp(1, b);
        Some(Geo {
            b,
            tq,
            tk,
            h,
            hs,
            q0,
            k0,
            first,
            nr,
            bc,
        })
    }
    /// Scores of one batch row (`[h, nr, tk]`).
    pub fn blk(&self) -> usize {
        self.h * self.nr * self.tk
    }
    /// Heads of batch row `bi` of a query-shaped tile, from row `first` on.
    pub fn q_heads(&self, bi: usize) -> Strided {
        let rs = self.h * self.hs;
        Strided::new((bi * self.tq + self.first) * rs, rs, self.hs)
    }
    /// Heads of batch row `bi` of a key-shaped tile (k, v, dk, dv).
    pub fn k_heads(&self, bi: usize) -> Strided {
        let rs = self.h * self.hs;
        Strided::new(bi * self.tk * rs, rs, self.hs)
    }
    /// Heads of batch row `bi` in the scratch block of the chunk from `b0`.
    pub fn s_heads(&self, bi: usize, b0: usize) -> Strided {
        Strided::new((bi - b0) * self.blk(), self.tk, self.nr * self.tk)
    }
    /// The chunks `(b0, nb)` of batch rows.
    pub fn chunks(&self) -> impl Iterator<Item = (usize, usize)> {
        let (b, bc) = (self.b, self.bc);
        (0..b).step_by(bc).map(move |b0| (b0, bc.min(b - b0)))
    }
}

/// Checks the dtype, the head size and the operands' lengths; the task's geometry.
fn prepare<T: DevElement>(
    op: &str,
    dims: [usize; 5],
    pos: [usize; 2],
    [qs, ks, ss]: [&[usize]; 3],
) -> Result<Option<Geo>> {
    let [b, tq, tk, h, hs] = dims;
    let ok = attn_tc_supports(T::DTYPE, hs) && <T::Acc as Element>::DTYPE == DType::F32;
    let (dt, msg) = (T::DTYPE, "f32/bf16/f16 and a head size >= 1");
    require(op, ok, &format!("{msg}, not {dt} with {hs}"))?;
    let want = [b * tq * h * hs, b * tk * h * hs, b * tq * h];
    for (lens, want) in [qs, ks, ss].into_iter().zip(want) {
        for &n in lens {
            check_len(op, "an operand", want, n, false)?;
        }
    }
    Ok(Geo::new(dims, pos))
}

/// `out_h = alpha A_h B_h^T` (`[nr, hs] x [hs, tk]`) for the heads of batch
/// row `bi` into the score block of the chunk from `b0`.
fn scores<T: DevElement>(
    dev: &Gpu,
    g: &Geo,
    (bi, b0): (usize, usize),
    alpha: f64,
    [a, b]: [&CudaView<T>; 2],
    out: &mut CudaSlice<f32>,
) -> Result<()> {
    let (ah, bh, oh) = (g.q_heads(bi), g.k_heads(bi).t(), g.s_heads(bi, b0));
    let (dims, out) = ([g.nr, g.tk, g.hs, g.h], &mut out.as_view_mut());
    gemm_strided::<T, f32>(dev, CM, dims, alpha, (a, ah), (b, bh), 0.0, (out, oh))
}

/// [`flash_fwd`](super::attention::flash_fwd) with `ks == tk`, on tensor cores.
pub fn attn_fwd_tc<T: DevElement>(
    dev: &Gpu,
    [q, k, v]: [&CudaView<T>; 3],
    dims: [usize; 5],
    pos: [usize; 2],
    scale: f64,
    drop: AttnDropArgs,
    [m, l, acc]: [&mut CudaViewMut<T::Acc>; 3],
) -> Result<()> {
    let (qs, ks, ss) = ([q.len(), acc.len()], [k.len(), v.len()], [m.len(), l.len()]);
    let Some(g) = prepare::<T>("attn_fwd_tc", dims, pos, [&qs, &ks, &ss])? else {
        return Ok(());
    };
    let (n, sc) = (g.bc * g.blk(), &dev.kernels);
    // SAFETY: per chunk, the score GEMMs (beta = 0) write s and fwd_rows
    // writes p, every element the next step reads, before it reads them.
    let (mut s, mut p) = unsafe { (sc.scratch::<f32>(n)?, sc.scratch::<T>(n)?) };
    for (b0, nb) in g.chunks() {
        for bi in b0..b0 + nb {
            scores(dev, &g, (bi, b0), scale, [q, k], &mut s)?;
        }
        let (sv, pv) = (&s.as_view(), &mut p.as_view_mut());
        attn_tc_fwd_rows::<T>(dev, sv, g, b0, drop, m, l, acc, pv, nb)?;
        for bi in b0..b0 + nb {
            // acc_h += Pd_h V_h: [nr, tk] x [tk, hs] per head, after the
            // row kernel rescaled acc.
            let (a, b) = ((&p.as_view(), g.s_heads(bi, b0)), (v, g.k_heads(bi)));
            let (dims, out) = ([g.nr, g.hs, g.tk, g.h], (&mut *acc, g.q_heads(bi)));
            gemm_strided::<T, T::Acc>(dev, CM, dims, 1.0, a, b, 1.0, out)?;
        }
    }
    Ok(())
}

/// [`flash_bwd`](super::attention::flash_bwd) on tensor cores.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_tc<T: DevElement>(
    dev: &Gpu,
    [q, k, v, d_o]: [&CudaView<T>; 4],
    [lse, delta]: [&CudaView<T::Acc>; 2],
    dims: [usize; 5],
    pos: [usize; 2],
    scale: f64,
    drop: AttnDropArgs,
    [dq, dk, dv]: [&mut CudaViewMut<T>; 3],
) -> Result<()> {
    let (qs, ss) = ([q.len(), d_o.len(), dq.len()], [lse.len(), delta.len()]);
    let ks = [k.len(), v.len(), dk.len(), dv.len()];
    let Some(g) = prepare::<T>("attn_bwd_tc", dims, pos, [&qs, &ks, &ss])? else {
        return Ok(());
    };
    let (n, sc) = (g.bc * g.blk(), &dev.kernels);
    // SAFETY: per chunk, the score GEMMs (beta = 0) write s and dp, and
    // bwd_rows writes pd and ds, every element the next step reads, first.
    let (mut s, mut dp) = unsafe { (sc.scratch::<f32>(n)?, sc.scratch::<f32>(n)?) };
    let (mut pd, mut ds) = unsafe { (sc.scratch::<T>(n)?, sc.scratch::<T>(n)?) };
    let (kn, nk) = ([g.tk, g.hs, g.nr, g.h], [g.nr, g.hs, g.tk, g.h]);
    for (b0, nb) in g.chunks() {
        for bi in b0..b0 + nb {
            scores(dev, &g, (bi, b0), scale, [q, k], &mut s)?;
            scores(dev, &g, (bi, b0), 1.0, [d_o, v], &mut dp)?;
        }
        let (sv, dpv) = (&s.as_view(), &dp.as_view());
        let (pdv, dsv) = (&mut pd.as_view_mut(), &mut ds.as_view_mut());
        attn_tc_bwd_rows::<T>(dev, sv, dpv, lse, delta, g, b0, drop, pdv, dsv, nb)?;
        let (pd, ds) = (pd.as_view(), ds.as_view());
        for bi in b0..b0 + nb {
            let (sh, qh, kh) = (g.s_heads(bi, b0), g.q_heads(bi), g.k_heads(bi));
            // dV_h += Pd_h^T dO_h, dK_h += scale dS_h^T Q_h: [tk, nr] x [nr, hs];
            // dQ_h += scale dS_h K_h: [nr, tk] x [tk, hs].
            let prod =
                |dims, alpha, a, b, out| gemm_strided::<T, T>(dev, CM, dims, alpha, a, b, 1.0, out);
            prod(kn, 1.0, (&pd, sh.t()), (d_o, qh), (&mut *dv, kh))?;
            prod(nk, scale, (&ds, sh), (k, kh), (&mut *dq, qh))?;
            prod(kn, scale, (&ds, sh.t()), (q, qh), (&mut *dk, kh))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        // Diagonal tile: queries 64..128 against keys 100..164 -> rows from 36.
        let g = Geo::new([3, 64, 64, 2, 8], [64, 100]).unwrap();
        assert_eq!((g.first, g.nr, g.bc), (36, 28, 3));
        assert_eq!(g.q_heads(1), Strided::new((64 + 36) * 16, 16, 8));
        assert_eq!(g.k_heads(2), Strided::new(2 * 64 * 16, 16, 8));
        assert_eq!(g.s_heads(2, 0), Strided::new(2 * 2 * 28 * 64, 64, 28 * 64));
        // Wholly in the future, or empty: nothing to do.
        assert!(Geo::new([1, 64, 64, 1, 8], [0, 64]).is_none());
        assert!(Geo::new([1, 64, 0, 1, 8], [0, 0]).is_none());
        // Big blocks go one batch row at a time, in order, covering all.
        let g = Geo::new([5, 1024, 1024, 12, 64], [0, 0]).unwrap();
        assert_eq!(g.bc, 1);
        assert_eq!(g.chunks().collect::<Vec<_>>().len(), 5);
        let g = Geo::new([5, 256, 256, 12, 64], [0, 0]).unwrap();
        assert_eq!(g.bc, 5);
        let g = Geo::new([5, 1024, 512, 12, 64], [0, 0]).unwrap();
        assert_eq!(g.bc, 2);
        assert_eq!(g.chunks().collect::<Vec<_>>(), vec![(0, 2), (2, 2), (4, 1)]);
        assert!(attn_tc_supports(DType::BF16, 64) && !attn_tc_supports(DType::F64, 64));
        assert!(!attn_tc_supports(DType::F32, 0));
    }
}
