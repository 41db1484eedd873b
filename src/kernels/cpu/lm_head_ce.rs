//! The LM head fused with the cross-entropy and its backward, on one tile
//! per task (training on CPUs): the softmax work rides in the three GEMM
//! tasks that touch each logits tile, so the logits are written once and
//! read twice (by the two backward GEMMs), with no pass of their own.
//!
//! ```text
//! z = hf wte^T  [rows, V], vocabulary tile j = columns lo_j..lo_j+vt_j; target t_r (< 0: ignored)
//! forward, tile j, one column chunk at a time right after its GEMM (in L2):
//!     s_j[r]   = a row shift: the first chunk's row max, raised (and the row's
//!                earlier numerators rescaled) when a later chunk's max passes it
//!                by more than `slack`, so e <= exp(slack)
//!     e[r, v]  = exp(z[r, v] - s_j[r]),   0 at v = t_r
//!     part_j[r] = (s_j, S_j = sum_v exp(z - s_j) (target included), z[r, t_r] or 0)
//! merge, per row:  M = max_j s_j,  lse = M + ln sum_j S_j exp(s_j - M)   (f64)
//!     loss  += lse - z[r, t_r]                        (non-ignored rows)
//!     k[r, j] = scale exp(s_j - lse),  g[r] = scale (exp(z_t - lse) - 1)  (0 when ignored)
//! so that dz[r, v] = k[r, j] e[r, v] + [v == t_r] g[r]: the target's p - 1
//! is taken in f64, not as the difference k e - scale (a confident
//! prediction keeps its relative precision, as in `crossentropy::ce_bwd`).
//! backward, with no pass over dz:
//!     dhf[r]  = sum_j k[r, j] (e_j wte_j)[r] + g[r] wte[t_r]
//!     dwte_j += e_j^T (k[:, j] * hf) + g[r] hf[r] into row t_r of the rows whose target is in j
//! ```
//!
//! `factors [rows, ntiles, 2]` holds `(k[r, j], g[r] if t_r is in tile j else
//! 0)`. Gradient convention: `dx_tile` overwrites or accumulates into `dhf`
//! (the caller's K chain), `dw_tile` accumulates into `dwte` (a parameter
//! gradient).
//!
//! The spec is the composition `gemm`, `crossentropy::{maxsumexp_update,
//! ce_loss_target, ce_loss_lse, ce_bwd}` and two `gemm`s (`ops::lm_head_ce::
//! lm_head_ce_slow`). Rounding differs from it only in where the row scale is
//! applied (to a GEMM product or an operand, not to every logit) and in the
//! shift of the numerators. One corner differs more: a vocabulary tile whose
//! shift lies ~80 below its row's lse gets an f32 factor k in the subnormal
//! range, so its softmax values (below e^-47 there) lose precision or flush
//! to 0, where the spec's f32 exps flush below e^-87 of the row max.

use crate::dtype::{Accum, DType, Element, GemmCompute};
use crate::kernels::cpu::activation::{exp_nonpos_acc, with_simd};
use crate::kernels::cpu::crossentropy::{lane_sum, local_col, row_max};
use crate::kernels::cpu::gemm::{gemm_cols, gemm_in};
use std::cell::RefCell;
use std::ops::Range;

/// How far above the shift a later chunk's logits may go before the row is
/// rescaled: `exp(slack)` must fit the storage type with room for a sum.
pub fn slack<T: Element>() -> f64 {
    if T::DTYPE == DType::F16 {
        8.0 // f16 tops out at 65504 = e^11.1
    } else {
        32.0
    }
}

/// Bytes of logits one forward chunk spans: small enough to stay in L2 with
/// its slice of `wte` between the GEMM and the exps.
const CHUNK_BYTES: usize = 256 << 10;

/// Columns per forward chunk for `rows` rows of `T`: a multiple of 16.
pub fn chunk_cols<T: Element>(rows: usize, vt: usize) -> usize {
    let w = CHUNK_BYTES / (rows.max(1) * std::mem::size_of::<T>());
    (w / 16 * 16).clamp(16, vt.max(16)).min(vt)
}

thread_local! {
    // Per worker thread: GEMM products and scaled operands (f64 for alignment).
    static SCRATCH: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` elements of this thread's scratch (holding whatever
/// was left there).
fn with_scratch<T: Element, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    SCRATCH.with_borrow_mut(|v| {
        let words = (len * std::mem::size_of::<T>()).div_ceil(8);
        if v.len() < words {
            v.resize(words, 0.0);
        }
        let s: &mut [T] = bytemuck::cast_slice_mut(&mut v[..words]);
        f(&mut s[..len])
    })
}

/// `part [rows, 3]` before the first chunk: (shift -inf, sum 0, target 0).
pub fn part_init<A: Accum>(part: &mut [A]) {
    for p in part.chunks_exact_mut(3) {
        p[0] = A::of(f64::NEG_INFINITY);
        p[1] = A::ZERO;
        p[2] = A::ZERO;
    }
}

/// The epilogue of one chunk: columns `c0..c0 + w` of the tile `e [rows,
/// vt]` (row-major) hold the chunk's logits and become numerators, and
/// `part [rows, 3]` is updated (see the module doc). Columns before `c0`
/// hold the chunks done so far.
#[allow(clippy::too_many_arguments)]
pub fn fwd_chunk<T: Element>(
    e: &mut [T],
    rows: usize,
    vt: usize,
    c0: usize,
    w: usize,
    vocab_lo: usize,
    targets: &[i64],
    part: &mut [T::Acc],
) {
    assert_eq!(e.len(), rows * vt, "fwd_chunk: tile length");
    assert!(c0 + w <= vt, "fwd_chunk: chunk past the tile");
    assert_eq!(targets.len(), rows, "fwd_chunk: targets length");
    assert_eq!(part.len(), rows * 3, "fwd_chunk: part length");
    if w == 0 {
        return;
    }
    let slack = T::Acc::of(slack::<T>());
    with_simd(
        #[inline(always)]
        || {
            for ((er, p), &t) in e
                .chunks_exact_mut(vt)
                .zip(part.chunks_exact_mut(3))
                .zip(targets)
            {
                let (done, rest) = er.split_at_mut(c0);
                let zr = &mut rest[..w];
                let cm = row_max(zr);
                // The first finite chunk sets the shift (-inf + slack < cm);
                // a later one moves it only when its max passes by > slack.
                if cm > p[0] + slack {
                    let f = exp_nonpos_acc(p[0] - cm);
                    for v in done.iter_mut() {
                        *v = T::from_acc(v.to_acc() * f);
                    }
                    p[1] *= f;
                    p[0] = cm;
                }
                // All -inf so far: exp(z - 0) keeps the zeros (not NaN).
                let s = if p[0] > T::Acc::of(f64::NEG_INFINITY) {
                    p[0]
                } else {
                    T::Acc::ZERO
                };
                let tc = local_col(t, vocab_lo + c0, w);
                if let Some(c) = tc {
                    p[2] = zr[c].to_acc();
                }
                p[1] += exp_in_place(zr, s);
                if let Some(c) = tc {
                    zr[c] = T::from_f64(0.0);
                }
            }
        },
    )
}

/// `x = exp(x - s)` in place (rounded to T), returning the sum of the
/// unrounded values in 16 lanes, added as `crossentropy`'s sums are. In
/// place and over fixed-size chunks, the lanes stay in one register
/// (reading one slice and writing another, LLVM adds an overlap check whose
/// scalar fallback keeps them in memory: a store and reload per 16 values).
#[inline(always)]
fn exp_in_place<T: Element>(x: &mut [T], s: T::Acc) -> T::Acc {
    let mut lanes = [T::Acc::ZERO; 16];
    let (xs, xr) = x.as_chunks_mut::<16>();
    for xc in xs.iter_mut() {
        for (l, v) in lanes.iter_mut().zip(xc.iter_mut()) {
            let e = exp_nonpos_acc(v.to_acc() - s);
            *l += e;
            *v = T::from_acc(e);
        }
    }
    let mut t = T::Acc::ZERO;
    for v in xr {
        let e = exp_nonpos_acc(v.to_acc() - s);
        t += e;
        *v = T::from_acc(e);
    }
    lane_sum(lanes) + t
}

/// Shape of one LM-head forward tile: logits `[m, n] = a [m, k] @ b[n, k]^T`.
#[derive(Clone, Copy, Debug)]
pub struct FwdShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    /// Column of the tile's first vocabulary entry.
    pub vocab_lo: usize,
}

/// One LM-head forward task: `e = alpha a b^T + beta e` computed chunk by
/// chunk of columns, each chunk followed by [`fwd_chunk`] while it is in L2
/// (so `e` ends as numerators, `part` as the tile's row statistics).
/// `beta != 0` reads the earlier K tiles' sum from `e` (a K chain's last
/// task).
#[allow(clippy::too_many_arguments)]
pub fn fwd_tile<T: Element>(
    compute: GemmCompute,
    s: FwdShape,
    alpha: f64,
    a: &[T],
    b: &[T],
    beta: f64,
    targets: &[i64],
    e: &mut [T],
    part: &mut [T::Acc],
) {
    let FwdShape { m, n, k, vocab_lo } = s;
    assert_eq!(a.len(), m * k, "lm_head fwd: A length");
    assert_eq!(b.len(), n * k, "lm_head fwd: B length");
    assert_eq!(e.len(), m * n, "lm_head fwd: logits length");
    part_init(part);
    let w = chunk_cols::<T>(m, n);
    let mut c0 = 0;
    while c0 < n {
        let wc = w.min(n - c0);
        // op(B) = b[c0..c0 + wc, :]^T: those rows are contiguous.
        let bc = &b[c0 * k..(c0 + wc) * k];
        gemm_cols(compute, (true, m, wc, k), alpha, a, bc, beta, e, (n, c0));
        fwd_chunk(e, m, n, c0, wc, vocab_lo, targets, part);
        c0 += wc;
    }
}

/// Per row tile, after every vocabulary tile's forward: adds the loss of the
/// non-ignored rows into `loss[0]` and writes `factors [rows, ntiles, 2]`.
/// `parts[j]` is tile j's `[rows, 3]`, `cols[j]` its vocabulary columns.
pub fn merge<A: Accum>(
    parts: &[&[A]],
    rows: usize,
    cols: &[Range<usize>],
    targets: &[i64],
    scale: f64,
    factors: &mut [A],
    loss: &mut [f64],
) {
    let nt = parts.len();
    assert!(
        parts.iter().all(|p| p.len() == rows * 3),
        "merge: part length"
    );
    assert_eq!(cols.len(), nt, "merge: one column range per tile");
    assert_eq!(targets.len(), rows, "merge: targets length");
    assert_eq!(factors.len(), rows * nt * 2, "merge: factors length");
    assert_eq!(loss.len(), 1, "merge: loss is one scalar");
    let mut sum = 0.0f64;
    for (r, (&t, fr)) in targets
        .iter()
        .zip(factors.chunks_exact_mut(nt * 2))
        .enumerate()
    {
        fr.fill(A::ZERO);
        if t < 0 {
            continue;
        }
        let p = |j: usize, i: usize| parts[j][r * 3 + i].f64();
        let m = (0..nt).map(|j| p(j, 0)).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = (0..nt).map(|j| p(j, 1) * (p(j, 0) - m).exp()).sum();
        let lse = m + s.ln();
        let jt = cols
            .iter()
            .position(|c| c.contains(&(t as usize)))
            .expect("merge: the target lies in a tile");
        let zt = p(jt, 2);
        sum += lse - zt;
        for j in 0..nt {
            fr[2 * j] = A::of(scale * (p(j, 0) - lse).exp());
        }
        fr[2 * jt + 1] = A::of(scale * ((zt - lse).exp() - 1.0));
    }
    loss[0] += sum;
}

/// `(k[r, j], g[r] or 0)` of row `r` in `factors [rows, nt, 2]`.
#[inline(always)]
fn factor<A: Accum>(factors: &[A], r: usize, j: usize, nt: usize) -> (A, A) {
    let i = (r * nt + j) * 2;
    (factors[i], factors[i + 1])
}

/// Shape of one backward task on tile (row tile, vocabulary tile j):
/// `e [rows, vt]`, the hidden tile `n` wide.
#[derive(Clone, Copy, Debug)]
pub struct BwdShape {
    pub rows: usize,
    pub vt: usize,
    pub n: usize,
    pub vocab_lo: usize,
    pub j: usize,
    pub ntiles: usize,
}

/// dhf tile, one vocabulary tile of its K chain: `dx (= 0 when first) +=
/// k[:, j] * (e @ w) + g * w[t - lo]` with `w = wte_j [vt, n]`.
#[allow(clippy::too_many_arguments)]
pub fn dx_tile<T: Element>(
    compute: GemmCompute,
    s: BwdShape,
    e: &[T],
    w: &[T],
    targets: &[i64],
    factors: &[T::Acc],
    first: bool,
    dx: &mut [T],
) {
    let BwdShape {
        rows,
        vt,
        n,
        vocab_lo,
        j,
        ntiles,
    } = s;
    assert_eq!(e.len(), rows * vt, "lm_head dx: e length");
    assert_eq!(w.len(), vt * n, "lm_head dx: wte length");
    assert_eq!(targets.len(), rows, "lm_head dx: targets length");
    assert_eq!(
        factors.len(),
        rows * ntiles * 2,
        "lm_head dx: factors length"
    );
    assert_eq!(dx.len(), rows * n, "lm_head dx: dx length");
    with_scratch::<T, _>(rows * n, |prod| {
        gemm_in(
            compute,
            (false, false, rows, n, vt, 1),
            1.0,
            e,
            w,
            0.0,
            prod,
        );
        with_simd(
            #[inline(always)]
            || {
                for (r, (pr, xr)) in prod.chunks_exact(n).zip(dx.chunks_exact_mut(n)).enumerate() {
                    let (kr, g) = factor(factors, r, j, ntiles);
                    let wt = local_col(targets[r], vocab_lo, vt).map(|c| &w[c * n..(c + 1) * n]);
                    match (first, wt) {
                        (true, None) => {
                            for (x, p) in xr.iter_mut().zip(pr) {
                                *x = T::from_acc(kr * p.to_acc());
                            }
                        }
                        (false, None) => {
                            for (x, p) in xr.iter_mut().zip(pr) {
                                *x = T::from_acc(x.to_acc() + kr * p.to_acc());
                            }
                        }
                        (_, Some(wt)) => {
                            for ((x, p), wv) in xr.iter_mut().zip(pr).zip(wt) {
                                let base = if first { T::Acc::ZERO } else { x.to_acc() };
                                *x = T::from_acc(base + (kr * p.to_acc() + g * wv.to_acc()));
                            }
                        }
                    }
                }
            },
        )
    })
}

/// dwte tile j, one row tile of its K chain: `dw = beta dw + e^T @ (k[:, j]
/// hf)` with `hf [rows, n]`, then `g hf[r]` added into row `t_r - lo` for
/// the rows whose target is in the tile.
#[allow(clippy::too_many_arguments)]
pub fn dw_tile<T: Element>(
    compute: GemmCompute,
    s: BwdShape,
    e: &[T],
    hf: &[T],
    targets: &[i64],
    factors: &[T::Acc],
    beta: f64,
    dw: &mut [T],
) {
    let BwdShape {
        rows,
        vt,
        n,
        vocab_lo,
        j,
        ntiles,
    } = s;
    assert_eq!(e.len(), rows * vt, "lm_head dw: e length");
    assert_eq!(hf.len(), rows * n, "lm_head dw: hf length");
    assert_eq!(targets.len(), rows, "lm_head dw: targets length");
    assert_eq!(
        factors.len(),
        rows * ntiles * 2,
        "lm_head dw: factors length"
    );
    assert_eq!(dw.len(), vt * n, "lm_head dw: dwte length");
    with_scratch::<T, _>(rows * n, |hs| {
        with_simd(
            #[inline(always)]
            || {
                for (r, (sr, hr)) in hs.chunks_exact_mut(n).zip(hf.chunks_exact(n)).enumerate() {
                    let kr = factor(factors, r, j, ntiles).0;
                    for (sv, hv) in sr.iter_mut().zip(hr) {
                        *sv = T::from_acc(kr * hv.to_acc());
                    }
                }
            },
        );
        gemm_in(compute, (true, false, vt, n, rows, 1), 1.0, e, hs, beta, dw);
    });
    for (r, (&t, hr)) in targets.iter().zip(hf.chunks_exact(n)).enumerate() {
        if let Some(c) = local_col(t, vocab_lo, vt) {
            let g = factor(factors, r, j, ntiles).1;
            for (d, hv) in dw[c * n..(c + 1) * n].iter_mut().zip(hr) {
                *d = T::from_acc(d.to_acc() + g * hv.to_acc());
            }
        }
    }
}
