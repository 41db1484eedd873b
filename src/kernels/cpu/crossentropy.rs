//! Softmax cross-entropy over a vocabulary cut into tiles.
//!
//! ```text
//! logits z: [rows, V],  target t_r (ignored when < 0, e.g. -100)
//! loss    = sum_r [t_r >= 0] (lse_r - z[r, t_r]),    lse_r = log sum_v exp z[r, v]
//! dz[r,v] = scale * (softmax(z_r)_v - [v == t_r])    (0 for ignored rows)
//! ```
//!
//! Each kernel sees one logits tile `[rows, vt]` holding vocabulary columns
//! `vocab_lo..vocab_lo+vt` (row-major). The log-sum-exp is split:
//! `maxsumexp_update` once per vocabulary tile, in any fixed order, into
//! `acc [rows, 2] = (max, sumexp)` (initialised to `(-inf, 0)`), keeping
//! `sumexp = sum exp(z - max)` rescaled whenever the max grows (online
//! softmax), so nothing overflows. The loss is two sums into one f64
//! scalar: `ce_loss_target` (per tile, subtracts the target logit) and
//! `ce_loss_lse` (once, adds `max + ln sumexp`). The mean over tokens is the
//! caller's: pass `scale = 1/count` to `ce_bwd` and divide the loss.
//!
//! Gradient convention: `ce_bwd` overwrites the logits tile IN PLACE with
//! its gradient (as llm.c's fused classifier), saving a `[B*T, V]` buffer.
//!
//! ```
//! use gpt2rs::kernels::cpu::crossentropy::*;
//! let logits = [0.0f64, 0.0];
//! let mut acc = [f64::NEG_INFINITY, 0.0];
//! maxsumexp_update(&logits[..1], 1, 1, &mut acc); // V = 2 in two tiles
//! maxsumexp_update(&logits[1..], 1, 1, &mut acc);
//! let mut loss = [0.0f64];
//! ce_loss_target(&logits[1..], 1, 1, 1, &[1], &mut loss);
//! ce_loss_lse(&acc, 1, &[1], &mut loss);
//! assert!((loss[0] - 2f64.ln()).abs() < 1e-15);
//! ```

use crate::dtype::{Accum, Element};
use crate::kernels::cpu::activation::{exp_nonpos_acc, with_simd};

/// The column of target `t` inside the tile `[lo, lo + vt)`, if it is there.
#[inline]
pub(crate) fn local_col(t: i64, lo: usize, vt: usize) -> Option<usize> {
    let rel = t.checked_sub(lo as i64)?;
    (t >= 0 && rel >= 0 && (rel as u64) < vt as u64).then_some(rel as usize)
}

/// Online merge of this tile's `(max, sum exp(z - max))` into `acc [rows, 2]`.
pub fn maxsumexp_update<T: Element>(logits: &[T], rows: usize, vt: usize, acc: &mut [T::Acc]) {
    assert_eq!(logits.len(), rows * vt, "maxsumexp_update: logits length");
    assert_eq!(acc.len(), rows * 2, "maxsumexp_update: acc length");
    if vt == 0 {
        return;
    }
    // Compiled for AVX2 as well: the exp over V = 50257 columns is the cost.
    with_simd(
        #[inline(always)]
        || {
            for (zr, a) in logits.chunks_exact(vt).zip(acc.chunks_exact_mut(2)) {
                let m_new = row_max(zr).max(a[0]);
                // exp(-inf - m) = 0 for the empty accumulator.
                let s = sum_exp(zr, m_new);
                a[1] = a[1] * exp_nonpos_acc(a[0] - m_new) + s;
                a[0] = m_new;
            }
        },
    )
}

/// `loss[0] -= z[r, t_r]` for the rows whose target lies in this tile.
pub fn ce_loss_target<T: Element>(
    logits: &[T],
    rows: usize,
    vt: usize,
    vocab_lo: usize,
    targets: &[i64],
    loss: &mut [f64],
) {
    assert_eq!(logits.len(), rows * vt, "ce_loss_target: logits length");
    assert_eq!(targets.len(), rows, "ce_loss_target: targets length");
    assert_eq!(loss.len(), 1, "ce_loss_target: loss is one scalar");
    let mut s = 0.0f64;
    for (r, &t) in targets.iter().enumerate() {
        if let Some(c) = local_col(t, vocab_lo, vt) {
            s += logits[r * vt + c].to_f64();
        }
    }
    loss[0] -= s;
}

/// `loss[0] += max + ln sumexp` for the non-ignored rows.
pub fn ce_loss_lse<A: Accum>(acc: &[A], rows: usize, targets: &[i64], loss: &mut [f64]) {
    assert_eq!(acc.len(), rows * 2, "ce_loss_lse: acc length");
    assert_eq!(targets.len(), rows, "ce_loss_lse: targets length");
    assert_eq!(loss.len(), 1, "ce_loss_lse: loss is one scalar");
    let mut s = 0.0f64;
    for (a, &t) in acc.chunks_exact(2).zip(targets) {
        if t >= 0 {
            s += a[0].f64() + a[1].f64().ln();
        }
    }
    loss[0] += s;
}

/// In place: `z[r, v] = scale * (exp(z - max) / sumexp - [v == t_r])`;
/// ignored rows (`t_r < 0`) become 0.
#[allow(clippy::too_many_arguments)]
pub fn ce_bwd<T: Element>(
    acc: &[T::Acc],
    rows: usize,
    vt: usize,
    vocab_lo: usize,
    targets: &[i64],
    scale: f64,
    logits_to_grad: &mut [T],
) {
    assert_eq!(acc.len(), rows * 2, "ce_bwd: acc length");
    assert_eq!(targets.len(), rows, "ce_bwd: targets length");
    assert_eq!(logits_to_grad.len(), rows * vt, "ce_bwd: logits length");
    if vt == 0 {
        return;
    }
    let sc = T::Acc::of(scale);
    with_simd(
        #[inline(always)]
        || {
            for ((zr, a), &t) in logits_to_grad
                .chunks_exact_mut(vt)
                .zip(acc.chunks_exact(2))
                .zip(targets)
            {
                if t < 0 {
                    zr.fill(T::from_f64(0.0));
                    continue;
                }
                let m = a[0];
                // scale / sumexp once per row.
                let k = sc / a[1];
                // The target entry is scale * (p - 1), with p - 1 exact for
                // p >= 1/2, rather than the rounded scale*p minus scale: a
                // confident prediction (p near 1) keeps its relative precision.
                let tgt = local_col(t, vocab_lo, vt).map(|c| {
                    let p = exp_nonpos_acc(zr[c].to_acc() - m) / a[1];
                    (c, sc * (p - T::Acc::ONE))
                });
                for v in zr.iter_mut() {
                    *v = T::from_acc(exp_nonpos_acc(v.to_acc() - m) * k);
                }
                if let Some((c, g)) = tgt {
                    zr[c] = T::from_acc(g);
                }
            }
        },
    )
}

/// max of a row in 16 lanes (select-based, so it vectorizes: one zmm
/// under AVX-512, two ymm under AVX2).
#[inline(always)]
pub(crate) fn row_max<T: Element>(x: &[T]) -> T::Acc {
    let ninf = T::Acc::of(f64::NEG_INFINITY);
    let mut lanes = [ninf; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            let a = v.to_acc();
            *l = if a > *l { a } else { *l };
        }
    }
    let mut m = ninf;
    for l in lanes {
        m = m.max(l);
    }
    for v in it.remainder() {
        m = m.max(v.to_acc());
    }
    m
}

/// `sum exp(x - m)` in 16 lanes, added pairwise at the end.
#[inline(always)]
fn sum_exp<T: Element>(x: &[T], m: T::Acc) -> T::Acc {
    let mut lanes = [T::Acc::ZERO; 16];
    let mut it = x.chunks_exact(16);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += exp_nonpos_acc(v.to_acc() - m);
        }
    }
    let mut s = T::Acc::ZERO;
    for v in it.remainder() {
        s += exp_nonpos_acc(v.to_acc() - m);
    }
    lane_sum(lanes) + s
}

/// The 16 lane sums added pairwise (a fixed order, as every path uses).
#[inline(always)]
pub(crate) fn lane_sum<A: Accum>(mut lanes: [A; 16]) -> A {
    let mut w = 8;
    while w > 0 {
        for i in 0..w {
            lanes[i] += lanes[i + w];
        }
        w /= 2;
    }
    lanes[0]
}
