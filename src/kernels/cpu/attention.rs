//! Causal multi-head attention on tiles, flash-attention style: the softmax
//! over keys is computed online, one key tile at a time, and no more scores
//! are ever held than one block of query rows x one key tile, for one
//! (batch row, head) (the rows are cut so the block stays in L2).
//!
//! ```text
//! per batch row and head, positions q (query) and k (key), scale = 1/sqrt(HS):
//! S[q,k] = scale * Q[q] . K[k]                  (masked to -inf where k > q)
//! P      = softmax_k(S)                         row max m, row sum l, lse = m + ln l
//! Pd     = P o Z / (1 - p)                      attention dropout, Z in {0, 1}
//! O      = Pd V
//! backward (recomputing P = exp(S - lse) from the saved lse):
//! delta  = rowsum(dO o O)         (= sum_k P dP, since O = Pd V)
//! dV    += Pd^T dO
//! dP     = (dO V^T) o Z / (1 - p)   (gradient w.r.t. the undropped P)
//! dS     = P o (dP - delta)       = Pd o (dO V^T) - P o delta
//! dQ    += scale dS K,    dK += scale dS^T Q
//! ```
//!
//! Tiles (row-major): `q` is `[b, tq, h, hs]`, `k` and `v` are `[b, tk, h, hs]`
//! (b batch rows, t positions, h heads, hs head size; a tile of the
//! `[B, T, 3, NH, HS]` qkv tensor with its "3" axis tiled by 1). Statistics
//! `m`, `l`, `lse`, `delta` are `[b, tq, h]` and the accumulator `acc` is
//! `[b, tq, h, hs]`, all in `T::Acc`. `q0`, `k0` are the absolute positions of
//! the first query and key; keys after a query are masked. A key tile wholly
//! in the future of the query tile must not be passed (every query row must
//! see at least one key over all the calls: its own position).
//!
//! Forward: `attn_fwd_init`, then `attn_fwd_update` once per key tile (any
//! order), then `attn_fwd_finalize` (`o = acc / l`, `lse = m + ln l`).
//! Backward: `attn_bwd_delta` once per query tile, then `attn_bwd_update` for
//! every (query tile, key tile) pair. Gradient convention: `dq`, `dk` and
//! `dv` ACCUMULATE (`+=`) because each receives one term per pair of tiles;
//! the caller zeroes them first.
//!
//! Attention dropout (HF: dropout on the normalized probabilities) enters
//! `acc` but not `l`, so `o = sum Pd V / l` is exactly HF's. Each
//! probability is masked by its global row-major index in `[B, NH, T, T]`,
//! so the backward recomputes the same mask and the mask does not depend on
//! the tiling. It is passed as `(seed, stream, p, [B, NH, T, T], [b_offset,
//! h_offset])`, the offsets being this tile's first batch row and head.
//!
//! The products (QK^T, PV, dO V^T, dS K, dS^T Q) run through the `gemm`
//! crate on strided views of the tiles (no transposes are materialized);
//! bf16/f16 tiles are widened to f32 once per call. The softmax exp is the
//! vectorizing [`exp_nonpos_acc`], and the loops run under [`with_simd`]
//! (AVX-512 or AVX2 when the CPU has it).
//!
//! ```
//! use gpt2rs::kernels::cpu::attention::*;
//! // One position, one head: the output is v.
//! let (q, k, v) = ([1.0f64, 0.0], [0.5f64, 2.0], [3.0f64, 4.0]);
//! let (mut m, mut l, mut acc) = ([0.0; 1], [0.0; 1], [0.0; 2]);
//! attn_fwd_init(&mut m, &mut l, &mut acc);
//! attn_fwd_update(&q, &k, &v, 1, 1, 1, 1, 2, 0, 0, 0.5f64.sqrt(), None, &mut m, &mut l, &mut acc);
//! let (mut o, mut lse) = ([0.0f64; 2], [0.0; 1]);
//! attn_fwd_finalize(&m, &l, &acc, 1, 1, 1, 2, &mut o, &mut lse);
//! assert_eq!(o, [3.0, 4.0]);
//! ```

use crate::dtype::{Accum, Element};
use crate::kernels::cpu::activation::{exp_nonpos_acc, with_simd};
use crate::kernels::cpu::dropout::DropoutMask;
use std::any::TypeId;
use std::borrow::Cow;

/// Scores per block of query rows (64K: 256 KiB in f32).
const SCORE_BLOCK: usize = 1 << 16;

/// Attention dropout: `(seed, stream, p, [B, NH, T, T], [b_offset, h_offset])`.
pub type AttnDropout = Option<(u64, u64, f64, [usize; 4], [usize; 2])>;

/// `m = -inf`, `l = 0`, `acc = 0`.
pub fn attn_fwd_init<A: Accum>(m: &mut [A], l: &mut [A], acc: &mut [A]) {
    m.fill(A::of(f64::NEG_INFINITY));
    l.fill(A::ZERO);
    acc.fill(A::ZERO);
}

/// Merge one key tile into the running softmax statistics and accumulator.
#[allow(clippy::too_many_arguments)]
pub fn attn_fwd_update<T: Element>(
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    hs: usize,
    q0: usize,
    k0: usize,
    scale: f64,
    dropout: AttnDropout,
    m: &mut [T::Acc],
    l: &mut [T::Acc],
    acc: &mut [T::Acc],
) {
    let g = Geo::new(b, tq, tk, h, hs, q0, k0);
    assert_eq!(q.len(), g.q_len(), "attn_fwd_update: q length");
    assert_eq!(k.len(), g.k_len(), "attn_fwd_update: k length");
    assert_eq!(v.len(), g.k_len(), "attn_fwd_update: v length");
    assert_eq!(m.len(), g.stat_len(), "attn_fwd_update: m length");
    assert_eq!(l.len(), g.stat_len(), "attn_fwd_update: l length");
    assert_eq!(acc.len(), g.q_len(), "attn_fwd_update: acc length");
    let mask = AttnMask::<T::Acc>::new(dropout, &g);
    let Some(first) = g.first_row() else { return };
    let (q, k, v) = (view(q), view(k), view(v));
    let (rs, qb) = (g.rs(), g.row_block());
    let sc = T::Acc::of(scale);
    let mut s_buf = vec![T::Acc::ZERO; qb.min(tq - first) * tk];
    // Compiled for AVX2 as well: the softmax exp is the hot loop here.
    with_simd(
        #[inline(always)]
        || {
            for bi in 0..b {
                for hi in 0..h {
                    let ko = g.k_off(bi, hi);
                    // Blocks of query rows, so the scores stay in L2 whatever tq.
                    for r0 in (first..tq).step_by(qb) {
                        let nr = qb.min(tq - r0);
                        let s = &mut s_buf[..nr * tk];
                        // q and acc share a layout: one offset serves both.
                        let qo = g.q_off(bi, hi) + r0 * rs;
                        // S = scale * Q K^T
                        mm(
                            nr,
                            tk,
                            hs,
                            sc,
                            (&q, qo, rs, 1),
                            (&k, ko, 1, rs),
                            false,
                            (s, 0, tk),
                        );
                        for (r, row) in s.chunks_exact_mut(tk).enumerate() {
                            let i = r0 + r;
                            let nv = g.visible(i);
                            let st = g.stat(bi, i, hi);
                            let (m_old, l_old) = (m[st], l[st]);
                            let mx = row_max(&row[..nv]);
                            let m_new = if mx > m_old { mx } else { m_old };
                            // Rescale what was accumulated under the old max (0 when empty).
                            let corr = exp_nonpos_acc(m_old - m_new);
                            let sum = exp_sum_in_place(&mut row[..nv], m_new);
                            row[nv..].fill(T::Acc::ZERO);
                            l[st] = l_old * corr + sum;
                            m[st] = m_new;
                            if let Some(mk) = &mask {
                                // After l: dropout acts on the normalized probabilities.
                                mk.apply(&mut row[..nv], bi, hi, q0 + i, k0);
                            }
                            for a in &mut acc[st * hs..][..hs] {
                                *a *= corr;
                            }
                        }
                        // acc += P V
                        let one = T::Acc::ONE;
                        mm(
                            nr,
                            hs,
                            tk,
                            one,
                            (&*s, 0, tk, 1),
                            (&v, ko, rs, 1),
                            true,
                            (acc, qo, rs),
                        );
                    }
                }
            }
        },
    );
}

/// `o = acc / l`, `lse = m + ln l`.
#[allow(clippy::too_many_arguments)]
pub fn attn_fwd_finalize<T: Element>(
    m: &[T::Acc],
    l: &[T::Acc],
    acc: &[T::Acc],
    b: usize,
    tq: usize,
    h: usize,
    hs: usize,
    o: &mut [T],
    lse: &mut [T::Acc],
) {
    let n = b * tq * h;
    assert_eq!(m.len(), n, "attn_fwd_finalize: m length");
    assert_eq!(l.len(), n, "attn_fwd_finalize: l length");
    assert_eq!(lse.len(), n, "attn_fwd_finalize: lse length");
    assert_eq!(acc.len(), n * hs, "attn_fwd_finalize: acc length");
    assert_eq!(o.len(), n * hs, "attn_fwd_finalize: o length");
    for st in 0..n {
        let inv = T::Acc::ONE / l[st];
        for (ov, av) in o[st * hs..][..hs].iter_mut().zip(&acc[st * hs..][..hs]) {
            *ov = T::from_acc(*av * inv);
        }
        lse[st] = m[st] + l[st].ln();
    }
}

/// `delta[b, t, h] = sum_d o[b, t, h, d] * do[b, t, h, d]`.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_delta<T: Element>(
    o: &[T],
    d_o: &[T],
    b: usize,
    tq: usize,
    h: usize,
    hs: usize,
    delta: &mut [T::Acc],
) {
    let n = b * tq * h;
    assert_eq!(o.len(), n * hs, "attn_bwd_delta: o length");
    assert_eq!(d_o.len(), n * hs, "attn_bwd_delta: do length");
    assert_eq!(delta.len(), n, "attn_bwd_delta: delta length");
    if hs == 0 {
        delta.fill(T::Acc::ZERO);
        return;
    }
    for ((dl, or), dr) in delta
        .iter_mut()
        .zip(o.chunks_exact(hs))
        .zip(d_o.chunks_exact(hs))
    {
        let mut s = T::Acc::ZERO;
        for (a, b) in or.iter().zip(dr) {
            s += a.to_acc() * b.to_acc();
        }
        *dl = s;
    }
}

/// Gradient contributions of one (query tile, key tile) pair:
/// `dq += scale dS K`, `dk += scale dS^T Q`, `dv += Pd^T dO`.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd_update<T: Element>(
    q: &[T],
    k: &[T],
    v: &[T],
    d_o: &[T],
    lse: &[T::Acc],
    delta: &[T::Acc],
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    hs: usize,
    q0: usize,
    k0: usize,
    scale: f64,
    dropout: AttnDropout,
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
) {
    let g = Geo::new(b, tq, tk, h, hs, q0, k0);
    assert_eq!(q.len(), g.q_len(), "attn_bwd_update: q length");
    assert_eq!(d_o.len(), g.q_len(), "attn_bwd_update: do length");
    assert_eq!(dq.len(), g.q_len(), "attn_bwd_update: dq length");
    assert_eq!(k.len(), g.k_len(), "attn_bwd_update: k length");
    assert_eq!(v.len(), g.k_len(), "attn_bwd_update: v length");
    assert_eq!(dk.len(), g.k_len(), "attn_bwd_update: dk length");
    assert_eq!(dv.len(), g.k_len(), "attn_bwd_update: dv length");
    assert_eq!(lse.len(), g.stat_len(), "attn_bwd_update: lse length");
    assert_eq!(delta.len(), g.stat_len(), "attn_bwd_update: delta length");
    let mask = AttnMask::<T::Acc>::new(dropout, &g);
    let Some(first) = g.first_row() else { return };
    let (q, k, v, d_o) = (view(q), view(k), view(v), view(d_o));
    let (rs, qb) = (g.rs(), g.row_block());
    let sc = T::Acc::of(scale);
    let one = T::Acc::ONE;
    let len = qb.min(tq - first) * tk;
    let mut p_buf = vec![T::Acc::ZERO; len];
    let mut ds_buf = vec![T::Acc::ZERO; len];
    // P o Z/(1-p); only materialized with dropout (else it is P itself).
    let mut pd_buf = vec![T::Acc::ZERO; if mask.is_some() { len } else { 0 }];
    with_acc_mut3(dq, dk, dv, |dq, dk, dv| {
        with_simd(
            #[inline(always)]
            || {
                for bi in 0..b {
                    for hi in 0..h {
                        let ko = g.k_off(bi, hi);
                        for r0 in (first..tq).step_by(qb) {
                            let nr = qb.min(tq - r0);
                            let (p, ds) = (&mut p_buf[..nr * tk], &mut ds_buf[..nr * tk]);
                            let qo = g.q_off(bi, hi) + r0 * rs;
                            // P = exp(scale Q K^T - lse), masked
                            mm(
                                nr,
                                tk,
                                hs,
                                sc,
                                (&q, qo, rs, 1),
                                (&k, ko, 1, rs),
                                false,
                                (p, 0, tk),
                            );
                            for (r, row) in p.chunks_exact_mut(tk).enumerate() {
                                let i = r0 + r;
                                let nv = g.visible(i);
                                let lse_i = lse[g.stat(bi, i, hi)];
                                for x in &mut row[..nv] {
                                    *x = exp_nonpos_acc(*x - lse_i);
                                }
                                row[nv..].fill(T::Acc::ZERO);
                                if let Some(mk) = &mask {
                                    let prow = &mut pd_buf[r * tk..][..tk];
                                    prow.copy_from_slice(row);
                                    mk.apply(&mut prow[..nv], bi, hi, q0 + i, k0);
                                }
                            }
                            let p: &[T::Acc] = p;
                            let pd: &[T::Acc] = if mask.is_some() {
                                &pd_buf[..nr * tk]
                            } else {
                                p
                            };
                            // dV += Pd^T dO  (Pd^T read through swapped strides)
                            mm(
                                tk,
                                hs,
                                nr,
                                one,
                                (pd, 0, 1, tk),
                                (&d_o, qo, rs, 1),
                                true,
                                (dv, ko, rs),
                            );
                            // dO V^T
                            mm(
                                nr,
                                tk,
                                hs,
                                one,
                                (&d_o, qo, rs, 1),
                                (&v, ko, 1, rs),
                                false,
                                (ds, 0, tk),
                            );
                            for (r, dsr) in ds.chunks_exact_mut(tk).enumerate() {
                                let dl = delta[g.stat(bi, r0 + r, hi)];
                                let pr = &p[r * tk..][..tk];
                                if mask.is_some() {
                                    // dS = Pd o (dO V^T) - P o delta
                                    let pdr = &pd[r * tk..][..tk];
                                    for ((x, pv), pdv) in dsr.iter_mut().zip(pr).zip(pdr) {
                                        *x = *pdv * *x - *pv * dl;
                                    }
                                } else {
                                    // dS = P o (dO V^T - delta)
                                    for (x, pv) in dsr.iter_mut().zip(pr) {
                                        *x = *pv * (*x - dl);
                                    }
                                }
                            }
                            // dQ += scale dS K,  dK += scale dS^T Q
                            let ds: &[T::Acc] = ds;
                            mm(
                                nr,
                                hs,
                                tk,
                                sc,
                                (ds, 0, tk, 1),
                                (&k, ko, rs, 1),
                                true,
                                (dq, qo, rs),
                            );
                            mm(
                                tk,
                                hs,
                                nr,
                                sc,
                                (ds, 0, 1, tk),
                                (&q, qo, rs, 1),
                                true,
                                (dk, ko, rs),
                            );
                        }
                    }
                }
            },
        )
    });
}

/// Tile geometry and index arithmetic shared by the kernels.
struct Geo {
    b: usize,
    tq: usize,
    tk: usize,
    h: usize,
    hs: usize,
    q0: usize,
    k0: usize,
}

impl Geo {
    fn new(b: usize, tq: usize, tk: usize, h: usize, hs: usize, q0: usize, k0: usize) -> Self {
        Geo {
            b,
            tq,
            tk,
            h,
            hs,
            q0,
            k0,
        }
    }
    fn q_len(&self) -> usize {
        self.b * self.tq * self.h * self.hs
    }
    fn k_len(&self) -> usize {
        self.b * self.tk * self.h * self.hs
    }
    fn stat_len(&self) -> usize {
        self.b * self.tq * self.h
    }
    /// Row stride between positions in q/k/v/acc tiles.
    fn rs(&self) -> usize {
        self.h * self.hs
    }
    /// Offset of (bi, position 0, hi, 0) in a q-shaped tile.
    fn q_off(&self, bi: usize, hi: usize) -> usize {
        (bi * self.tq * self.h + hi) * self.hs
    }
    fn k_off(&self, bi: usize, hi: usize) -> usize {
        (bi * self.tk * self.h + hi) * self.hs
    }
    /// Index of (bi, i, hi) in a `[b, tq, h]` statistic.
    fn stat(&self, bi: usize, i: usize, hi: usize) -> usize {
        (bi * self.tq + i) * self.h + hi
    }
    /// The first query row that sees a key of this tile, if any (None when
    /// there is nothing to do: an empty tile, or every query before k0).
    fn first_row(&self) -> Option<usize> {
        let first = self.k0.saturating_sub(self.q0);
        (first < self.tq && self.tk > 0 && self.b * self.h > 0).then_some(first)
    }
    /// Query rows processed at once: enough for the gemm to run well,
    /// few enough that a `[rows, tk]` block of scores (up to three of them
    /// in the backward) stays in L2.
    fn row_block(&self) -> usize {
        (SCORE_BLOCK / self.tk.max(1)).clamp(16, 256)
    }
    /// Keys of this tile visible to query row i (>= 1 for rows from first_row).
    fn visible(&self, i: usize) -> usize {
        (self.q0 + i + 1 - self.k0).min(self.tk)
    }
}

/// The dropout mask of one call: global `[B, NH, T, T]` indexing.
struct AttnMask<A> {
    mask: DropoutMask,
    nh: usize,
    t: usize,
    b_off: usize,
    h_off: usize,
    scale: A,
}

impl<A: Accum> AttnMask<A> {
    fn new(dropout: AttnDropout, g: &Geo) -> Option<AttnMask<A>> {
        let (seed, stream, p, [bb, nh, t, t2], [b_off, h_off]) = dropout?;
        if p <= 0.0 {
            return None;
        }
        assert_eq!(
            t, t2,
            "attention dropout: global dims must be [B, NH, T, T]"
        );
        assert!(
            b_off + g.b <= bb && h_off + g.h <= nh && g.q0 + g.tq <= t && g.k0 + g.tk <= t,
            "attention dropout: tile outside the global [B, NH, T, T] = {:?}",
            [bb, nh, t, t2]
        );
        let mask = DropoutMask::new(seed, stream, p);
        Some(AttnMask {
            mask,
            nh,
            t,
            b_off,
            h_off,
            scale: A::of(mask.scale),
        })
    }

    /// `row[j] *= Z / (1 - p)` for the probabilities of query position `qpos`
    /// and key positions `k0 + j`.
    #[inline(always)]
    fn apply(&self, row: &mut [A], bi: usize, hi: usize, qpos: usize, k0: usize) {
        let base = ((((self.b_off + bi) * self.nh + self.h_off + hi) * self.t + qpos) * self.t + k0)
            as u64;
        self.mask.apply(base, self.scale, row);
    }
}

/// The tile in `T::Acc`: borrowed when `T` is its own accumulation type
/// (f32, f64), widened once otherwise (bf16, f16).
fn view<T: Element>(x: &[T]) -> Cow<'_, [T::Acc]> {
    if TypeId::of::<T>() == TypeId::of::<T::Acc>() {
        // SAFETY: T and T::Acc are the same type (TypeId equality), so the
        // slice reinterpretation is the identity.
        Cow::Borrowed(unsafe { std::slice::from_raw_parts(x.as_ptr() as *const T::Acc, x.len()) })
    } else {
        Cow::Owned(x.iter().map(|v| v.to_acc()).collect())
    }
}

/// Runs `f` on the tile as `&mut [T::Acc]`: in place for f32/f64, else on a
/// widened copy rounded back once afterwards.
fn with_acc_mut<T: Element, R>(x: &mut [T], f: impl FnOnce(&mut [T::Acc]) -> R) -> R {
    if TypeId::of::<T>() == TypeId::of::<T::Acc>() {
        // SAFETY: T and T::Acc are the same type (TypeId equality), and the
        // exclusive borrow of x is handed on for the duration of f.
        f(unsafe { std::slice::from_raw_parts_mut(x.as_mut_ptr() as *mut T::Acc, x.len()) })
    } else {
        let mut w: Vec<T::Acc> = x.iter().map(|v| v.to_acc()).collect();
        let r = f(&mut w);
        for (o, v) in x.iter_mut().zip(&w) {
            *o = T::from_acc(*v);
        }
        r
    }
}

/// [`with_acc_mut`] over three tiles at once.
fn with_acc_mut3<T: Element, R>(
    a: &mut [T],
    b: &mut [T],
    c: &mut [T],
    f: impl FnOnce(&mut [T::Acc], &mut [T::Acc], &mut [T::Acc]) -> R,
) -> R {
    with_acc_mut(a, |a| with_acc_mut(b, |b| with_acc_mut(c, |c| f(a, b, c))))
}

/// `(slice, offset, row stride, column stride)` of a strided matrix operand.
type Mat<'a, A> = (&'a [A], usize, usize, usize);

/// `C (=|+=) alpha * A @ B` on strided views: A is `m x k`, B is `k x n`,
/// C is `m x n` with unit column stride; `accumulate` adds into C, otherwise
/// C is written without being read.
#[allow(clippy::too_many_arguments)]
fn mm<A: Accum>(
    m: usize,
    n: usize,
    k: usize,
    alpha: A,
    (a, a_off, a_rs, a_cs): Mat<'_, A>,
    (b, b_off, b_rs, b_cs): Mat<'_, A>,
    accumulate: bool,
    (c, c_off, c_rs): (&mut [A], usize, usize),
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(m == 1 || c_rs >= n, "mm: rows of C overlap");
    assert!(c_off + (m - 1) * c_rs + n <= c.len(), "mm: C out of bounds");
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                c[c_off + r * c_rs..][..n].fill(A::ZERO);
            }
        }
        return;
    }
    // Soundness of the raw-pointer call below rests on these.
    assert!(
        TypeId::of::<A>() == TypeId::of::<f32>() || TypeId::of::<A>() == TypeId::of::<f64>(),
        "mm: the gemm crate is called for f32 and f64 only"
    );
    assert!(
        a_off + (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "mm: A out of bounds"
    );
    assert!(
        b_off + (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "mm: B out of bounds"
    );
    // SAFETY: A is f32 or f64 (checked above), which the gemm crate supports.
    // Every element reached lies inside its slice: A's (r, p) at
    // a_off + r*a_rs + p*a_cs, B's (p, j) at b_off + p*b_rs + j*b_cs and C's
    // (r, j) at c_off + r*c_rs + j, all bounded by the asserts; C's rows do
    // not overlap (c_rs >= n), and C is exclusively borrowed, so it aliases
    // neither A nor B. The crate's `alpha` scales dst and its `beta` the
    // product; with read_dst == false dst is never read.
    unsafe {
        ::gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(c_off),
            1,
            c_rs as isize,
            accumulate,
            a.as_ptr().add(a_off),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr().add(b_off),
            b_cs as isize,
            b_rs as isize,
            A::ONE,
            alpha,
            false,
            false,
            false,
            ::gemm::Parallelism::None,
        );
    }
}

/// max of a row in 8 select-based lanes (vectorizes).
#[inline(always)]
fn row_max<A: Accum>(x: &[A]) -> A {
    let ninf = A::of(f64::NEG_INFINITY);
    let mut lanes = [ninf; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l = if *v > *l { *v } else { *l };
        }
    }
    let mut m = ninf;
    for l in lanes.into_iter().chain(it.remainder().iter().copied()) {
        m = if l > m { l } else { m };
    }
    m
}

/// `x = exp(x - m)` in place, returning the sum (8 lanes).
#[inline(always)]
fn exp_sum_in_place<A: Accum>(x: &mut [A], m: A) -> A {
    for v in x.iter_mut() {
        *v = exp_nonpos_acc(*v - m);
    }
    let mut lanes = [A::ZERO; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += *v;
        }
    }
    let mut s = A::ZERO;
    for v in it.remainder() {
        s += *v;
    }
    ((lanes[0] + lanes[4]) + (lanes[2] + lanes[6]))
        + ((lanes[1] + lanes[5]) + (lanes[3] + lanes[7]))
        + s
}
