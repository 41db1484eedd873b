//! Reductions on one tile.
//!
//! ```text
//! sum_axis:  x [outer, len, inner] -> y [outer, inner]
//!            y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i]
//! sum_all:   y[0] = alpha * sum(x) + beta * y[0]
//! ssq_*:     running scaled sum of squares (LAPACK dlassq), for the norm
//! norm_from_ssq: y[0] = alpha * ||x||_2 + beta * y[0]
//! ```
//!
//! `beta == 0` means y is not read. Sums accumulate in `T::Acc` in blocks of
//! `BLOCK` terms, and the block sums are added in f64, so the rounding error
//! of an f32 sum grows with `BLOCK`, not with the tile size. Contiguous sums
//! use 8 independent partial sums, which both vectorizes and shortens the
//! dependency chain.
//!
//! The norm is accumulated as `acc = [scale, ssq]` (f64) representing
//! `scale^2 * ssq`, with `scale` the largest |x| seen so far, so squares of
//! 1e200 do not overflow and squares of 1e-200 do not underflow. The empty
//! accumulator is `[0, 0]` (`ssq_init`). Tiles of one tensor are merged into
//! one accumulator either by successive `ssq_update` calls or by `ssq_merge`.
//!
//! ```
//! use gpt2rs::kernels::cpu::reduce::{ssq_init, ssq_update, norm_from_ssq};
//! let mut acc = [0.0f64; 2];
//! ssq_init(&mut acc);
//! ssq_update(&[3.0e200f64, 4.0e200], &mut acc);
//! let mut y = [0.0f64];
//! norm_from_ssq(&acc, 1.0, 0.0, &mut y);
//! assert!((y[0] / 5.0e200 - 1.0).abs() < 1e-15);
//! ```

use crate::dtype::{Accum, Element};

/// Terms summed in `T::Acc` before a partial sum is flushed into f64.
const BLOCK: usize = 1024;
/// Widest column strip `sum_axis` accumulates at once. Covering whole rows
/// (GPT-2's 768..3072) lets x stream contiguously, which measured twice as
/// fast as narrow strips hopping between rows; the partial sums (12 bytes a
/// column) still fit in L2.
const STRIP: usize = 4096;

/// `y[o, i] = alpha * sum_a x[o, a, i] + beta * y[o, i]` with x viewed as
/// `[outer, len, inner]` and y as `[outer, inner]`, both row-major.
pub fn sum_axis<T: Element>(
    outer: usize,
    len: usize,
    inner: usize,
    alpha: f64,
    x: &[T],
    beta: f64,
    y: &mut [T],
) {
    debug_assert_eq!(x.len(), outer * len * inner);
    debug_assert_eq!(y.len(), outer * inner);
    if inner == 1 {
        // Row sums: contiguous.
        for (o, yv) in y.iter_mut().enumerate() {
            let s = sum_contig(&x[o * len..][..len]);
            *yv = combine(alpha, s, beta, *yv);
        }
        return;
    }
    let mut part = vec![T::Acc::ZERO; STRIP.min(inner)];
    let mut total = vec![0.0f64; STRIP.min(inner)];
    for o in 0..outer {
        let xo = &x[o * len * inner..][..len * inner];
        let yo = &mut y[o * inner..][..inner];
        // A strip of columns at a time: rows of the strip are contiguous and
        // the partial sums stay in cache.
        for i0 in (0..inner).step_by(STRIP) {
            let w = STRIP.min(inner - i0);
            let total = &mut total[..w];
            total.fill(0.0);
            for a0 in (0..len).step_by(BLOCK) {
                let part = &mut part[..w];
                part.fill(T::Acc::ZERO);
                for a in a0..len.min(a0 + BLOCK) {
                    let row = &xo[a * inner + i0..][..w];
                    for (p, v) in part.iter_mut().zip(row) {
                        *p += v.to_acc();
                    }
                }
                for (t, p) in total.iter_mut().zip(part.iter()) {
                    *t += p.f64();
                }
            }
            for (yv, t) in yo[i0..i0 + w].iter_mut().zip(total.iter()) {
                *yv = combine(alpha, *t, beta, *yv);
            }
        }
    }
}

/// `y[0] = alpha * sum(x) + beta * y[0]`.
pub fn sum_all<T: Element>(alpha: f64, x: &[T], beta: f64, y: &mut [T]) {
    debug_assert_eq!(y.len(), 1);
    y[0] = combine(alpha, sum_contig(x), beta, y[0]);
}

/// `alpha * s + beta * y`, not reading y when `beta == 0`.
#[inline]
fn combine<T: Element>(alpha: f64, s: f64, beta: f64, y: T) -> T {
    if beta == 0.0 {
        T::from_f64(alpha * s)
    } else {
        T::from_f64(alpha * s + beta * y.to_f64())
    }
}

/// Sum of a contiguous slice: 8 lanes in `T::Acc` per block of `BLOCK`,
/// blocks added in f64.
fn sum_contig<T: Element>(x: &[T]) -> f64 {
    let mut total = 0.0f64;
    for block in x.chunks(BLOCK) {
        let mut lanes = [T::Acc::ZERO; 8];
        let mut it = block.chunks_exact(8);
        for c in &mut it {
            for (l, v) in lanes.iter_mut().zip(c) {
                *l += v.to_acc();
            }
        }
        let mut s = T::Acc::ZERO;
        for v in it.remainder() {
            s += v.to_acc();
        }
        // Pairwise fold of the lanes.
        let q = [
            lanes[0] + lanes[4],
            lanes[1] + lanes[5],
            lanes[2] + lanes[6],
            lanes[3] + lanes[7],
        ];
        total += ((q[0] + q[2]) + (q[1] + q[3]) + s).f64();
    }
    total
}

/// The empty scaled sum of squares: `[scale, ssq] = [0, 0]`.
pub fn ssq_init(acc: &mut [f64]) {
    debug_assert_eq!(acc.len(), 2);
    acc[0] = 0.0;
    acc[1] = 0.0;
}

/// Merge `sum(x^2)` into `acc = [scale, ssq]` (value `scale^2 * ssq`) without
/// overflow or underflow. `scale` becomes `max(scale, max |x|)` and every
/// term is divided by it before squaring, so each square is at most 1.
/// NaN in x makes the norm NaN; an infinity (without NaN) makes it infinite.
pub fn ssq_update<T: Element>(x: &[T], acc: &mut [f64]) {
    debug_assert_eq!(acc.len(), 2);
    // Chunks small enough to stay in L1 for the two passes (max, then sum).
    for chunk in x.chunks(BLOCK) {
        let amax = max_abs(chunk);
        if !(amax > 0.0 && amax.is_finite()) || acc[0].is_infinite() {
            // All zero, or an infinity here or before: only NaN can still
            // change the result. (max_abs skips NaN, so look for it.)
            let has_nan = chunk.iter().any(|v| v.to_f64().is_nan());
            if amax.is_infinite() {
                acc[0] = f64::INFINITY;
                acc[1] = if acc[1].is_nan() { f64::NAN } else { 1.0 };
            }
            if has_nan {
                acc[1] = f64::NAN;
            }
            continue;
        }
        let scale = acc[0].max(amax);
        let ratio = acc[0] / scale; // acc[0] <= scale, so no overflow; 0 when empty
        let mut ssq = acc[1] * ratio * ratio;
        let inv = 1.0 / scale;
        if inv.is_finite() {
            ssq += sum_sq_scaled(chunk, inv);
        } else {
            // scale is subnormal and 1/scale overflows: divide instead.
            for v in chunk {
                let t = v.to_f64() / scale;
                ssq += t * t;
            }
        }
        acc[0] = scale;
        acc[1] = ssq;
    }
}

/// Merge the accumulator `src` into `acc`; both are `[scale, ssq]`.
pub fn ssq_merge(src: &[f64], acc: &mut [f64]) {
    debug_assert_eq!(src.len(), 2);
    debug_assert_eq!(acc.len(), 2);
    let scale = acc[0].max(src[0]);
    if scale == 0.0 || scale.is_infinite() {
        // Nothing to rescale: both empty (ssq 0, or NaN), or an infinity,
        // where only NaN can still matter.
        let nan = acc[1].is_nan() || src[1].is_nan();
        acc[0] = scale;
        acc[1] = if nan {
            f64::NAN
        } else if scale == 0.0 {
            0.0
        } else {
            1.0
        };
        return;
    }
    let (ra, rs) = (acc[0] / scale, src[0] / scale);
    acc[1] = acc[1] * ra * ra + src[1] * rs * rs;
    acc[0] = scale;
}

/// `y[0] = alpha * scale * sqrt(ssq) + beta * y[0]` from `acc = [scale, ssq]`.
pub fn norm_from_ssq<T: Element>(acc: &[f64], alpha: f64, beta: f64, y: &mut [T]) {
    debug_assert_eq!(acc.len(), 2);
    debug_assert_eq!(y.len(), 1);
    let norm = acc[0] * acc[1].sqrt();
    y[0] = combine(alpha, norm, beta, y[0]);
}

/// max |x| in f64, ignoring NaN (comparisons with NaN are false).
fn max_abs<T: Element>(x: &[T]) -> f64 {
    let mut lanes = [T::Acc::ZERO; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            let a = v.to_acc().abs();
            *l = if a > *l { a } else { *l };
        }
    }
    let mut m = 0.0f64;
    for l in lanes {
        m = m.max(l.f64());
    }
    for v in it.remainder() {
        m = m.max(v.to_f64().abs());
    }
    m
}

/// sum((x * inv)^2) in f64, 8 lanes.
fn sum_sq_scaled<T: Element>(x: &[T], inv: f64) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            let t = v.to_f64() * inv;
            *l += t * t;
        }
    }
    let mut s: f64 = lanes.iter().sum();
    for v in it.remainder() {
        let t = v.to_f64() * inv;
        s += t * t;
    }
    s
}
