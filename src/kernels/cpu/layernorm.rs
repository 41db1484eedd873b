//! LayerNorm over the last axis, split so the normalized axis may be cut
//! into several tiles.
//!
//! ```text
//! x: [rows, C]        mean_r = (1/C) sum_c x[r,c]
//!                     var_r  = (1/C) sum_c (x[r,c] - mean_r)^2   (biased, as torch)
//!                     rstd_r = 1 / sqrt(var_r + eps)
//!                     xhat   = (x - mean) * rstd
//! forward:            y = xhat * gamma + beta
//! backward:           g = dy * gamma
//!                     dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat))
//!                     dgamma += sum_r dy * xhat,   dbeta += sum_r dy
//! ```
//!
//! Every kernel sees one tile: x viewed as `[rows, cols]` where `cols` is the
//! tile's share of C (row-major), gamma/beta/dgamma/dbeta the matching
//! `cols` entries. Reductions over C are split in two:
//!
//! * statistics: `layernorm_stats_update` once per C-tile into `acc [rows, 3]`
//!   = (count, mean, M2), then `layernorm_stats_finalize` into
//!   `stats [rows, 2]` = (mean, rstd). Tiles are merged with Chan's parallel
//!   algorithm; inside a tile the mean is taken first and M2 from deviations
//!   to it (two passes), so no `E[x^2] - E[x]^2` cancellation anywhere.
//!   `acc` starts zeroed (count 0 = empty).
//! * backward: `layernorm_bwd_reduce` once per C-tile into `sums [rows, 2]`
//!   (zeroed first) = (sum_c g, sum_c g*xhat), then `layernorm_bwd` per tile
//!   with `total_cols = C`.
//!
//! Accumulators and statistics are `T::Acc` (f32 for f32/bf16/f16, f64 for
//! f64); the caller keeps them in tiles of that dtype.
//!
//! Gradient convention (llm.c): parameter gradients ACCUMULATE (`dgamma +=`,
//! `dbeta +=`); `dx` is overwritten unless `accumulate` is set, which the
//! residual stream uses to add the LayerNorm branch into its gradient.
//!
//! ```
//! use gpt2rs::kernels::cpu::layernorm::*;
//! let x = [1.0f64, 3.0];
//! let mut acc = [0.0; 3];
//! layernorm_stats_update(&x[..1], 1, 1, &mut acc); // C cut in two tiles
//! layernorm_stats_update(&x[1..], 1, 1, &mut acc);
//! let mut stats = [0.0; 2];
//! layernorm_stats_finalize(&acc, 1, 0.0, &mut stats);
//! assert_eq!(stats, [2.0, 1.0]); // mean 2, var 1
//! ```

use crate::dtype::{Accum, Element};

/// Rows summed in `T::Acc` before the column partial sums are flushed into
/// f64 (`layernorm_param_grad`): bounds the f32 rounding error by the block,
/// not by the B*T rows.
const BLOCK: usize = 256;

/// Merge this tile's per-row (count, mean, M2) into `acc [rows, 3]`.
pub fn layernorm_stats_update<T: Element>(x: &[T], rows: usize, cols: usize, acc: &mut [T::Acc]) {
    assert_eq!(x.len(), rows * cols, "layernorm_stats_update: x length");
    assert_eq!(acc.len(), rows * 3, "layernorm_stats_update: acc length");
    if cols == 0 {
        return;
    }
    let nb = T::Acc::of(cols as f64);
    for (xr, a) in x.chunks_exact(cols).zip(acc.chunks_exact_mut(3)) {
        let mean_b = sum_map(xr, |v| v) / nb;
        let m2_b = sum_map(xr, |v| (v - mean_b) * (v - mean_b));
        let na = a[0];
        if na == T::Acc::ZERO {
            a[0] = nb;
            a[1] = mean_b;
            a[2] = m2_b;
        } else {
            // Chan et al.: mean += delta * nb/n, M2 += M2_b + delta^2 na nb / n.
            let n = na + nb;
            let delta = mean_b - a[1];
            a[1] += delta * (nb / n);
            a[2] += m2_b + delta * delta * (na * nb / n);
            a[0] = n;
        }
    }
}

/// `stats[r] = (mean, 1/sqrt(M2/count + eps))` from `acc [rows, 3]`.
pub fn layernorm_stats_finalize<A: Accum>(acc: &[A], rows: usize, eps: f64, stats: &mut [A]) {
    assert_eq!(acc.len(), rows * 3, "layernorm_stats_finalize: acc length");
    assert_eq!(
        stats.len(),
        rows * 2,
        "layernorm_stats_finalize: stats length"
    );
    for (a, s) in acc.chunks_exact(3).zip(stats.chunks_exact_mut(2)) {
        // Once per row: do it in f64 so rstd is rounded once.
        let var = a[2].f64() / a[0].f64();
        s[0] = a[1];
        s[1] = A::of(1.0 / (var + eps).sqrt());
    }
}

/// `y = (x - mean) * rstd * gamma + beta` for this tile's columns.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_fwd<T: Element>(
    x: &[T],
    stats: &[T::Acc],
    gamma: &[T],
    beta: &[T],
    rows: usize,
    cols: usize,
    y: &mut [T],
) {
    check(x, stats, rows, cols, "layernorm_fwd");
    assert_eq!(gamma.len(), cols, "layernorm_fwd: gamma length");
    assert_eq!(beta.len(), cols, "layernorm_fwd: beta length");
    assert_eq!(y.len(), rows * cols, "layernorm_fwd: y length");
    if cols == 0 {
        return;
    }
    // Widen the parameters once, not once per row.
    let g = widen(gamma);
    let b = widen(beta);
    for ((xr, yr), s) in x
        .chunks_exact(cols)
        .zip(y.chunks_exact_mut(cols))
        .zip(stats.chunks_exact(2))
    {
        let (mean, rstd) = (s[0], s[1]);
        for (((yv, xv), gv), bv) in yr.iter_mut().zip(xr).zip(&g).zip(&b) {
            *yv = T::from_acc((xv.to_acc() - mean) * rstd * *gv + *bv);
        }
    }
}

/// `acc[r] += (sum_c dy*gamma, sum_c dy*gamma*xhat)` over this tile's columns.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd_reduce<T: Element>(
    x: &[T],
    dy: &[T],
    stats: &[T::Acc],
    gamma: &[T],
    rows: usize,
    cols: usize,
    acc: &mut [T::Acc],
) {
    check(x, stats, rows, cols, "layernorm_bwd_reduce");
    assert_eq!(dy.len(), rows * cols, "layernorm_bwd_reduce: dy length");
    assert_eq!(gamma.len(), cols, "layernorm_bwd_reduce: gamma length");
    assert_eq!(acc.len(), rows * 2, "layernorm_bwd_reduce: acc length");
    if cols == 0 {
        return;
    }
    let g = widen(gamma);
    for (((xr, dr), s), a) in x
        .chunks_exact(cols)
        .zip(dy.chunks_exact(cols))
        .zip(stats.chunks_exact(2))
        .zip(acc.chunks_exact_mut(2))
    {
        let (mean, rstd) = (s[0], s[1]);
        let (s0, s1) = dot2(xr, dr, &g, mean, rstd);
        a[0] += s0;
        a[1] += s1;
    }
}

/// `dx (=|+=) rstd * (dy*gamma - sums0/N - xhat*sums1/N)` with `N = total_cols`.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd<T: Element>(
    x: &[T],
    dy: &[T],
    stats: &[T::Acc],
    gamma: &[T],
    sums: &[T::Acc],
    total_cols: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
    dx: &mut [T],
) {
    check(x, stats, rows, cols, "layernorm_bwd");
    assert_eq!(dy.len(), rows * cols, "layernorm_bwd: dy length");
    assert_eq!(gamma.len(), cols, "layernorm_bwd: gamma length");
    assert_eq!(sums.len(), rows * 2, "layernorm_bwd: sums length");
    assert_eq!(dx.len(), rows * cols, "layernorm_bwd: dx length");
    if cols == 0 {
        return;
    }
    let g = widen(gamma);
    let inv_n = T::Acc::of(1.0 / total_cols as f64);
    let it = x
        .chunks_exact(cols)
        .zip(dy.chunks_exact(cols))
        .zip(dx.chunks_exact_mut(cols))
        .zip(stats.chunks_exact(2).zip(sums.chunks_exact(2)));
    for (((xr, dr), dxr), (s, sm)) in it {
        let (mean, rstd) = (s[0], s[1]);
        let (c0, c1) = (sm[0] * inv_n, sm[1] * inv_n);
        let f = |xv: T, dv: T, gv: T::Acc| {
            let xhat = (xv.to_acc() - mean) * rstd;
            rstd * (dv.to_acc() * gv - c0 - xhat * c1)
        };
        // The flag is tested once per row, not per element.
        if accumulate {
            for (((o, xv), dv), gv) in dxr.iter_mut().zip(xr).zip(dr).zip(&g) {
                *o = T::from_acc(o.to_acc() + f(*xv, *dv, *gv));
            }
        } else {
            for (((o, xv), dv), gv) in dxr.iter_mut().zip(xr).zip(dr).zip(&g) {
                *o = T::from_acc(f(*xv, *dv, *gv));
            }
        }
    }
}

/// `dgamma[c] += sum_r dy*xhat`, `dbeta[c] += sum_r dy` (this tile's columns).
pub fn layernorm_param_grad<T: Element, G: Element>(
    x: &[T],
    dy: &[T],
    stats: &[T::Acc],
    rows: usize,
    cols: usize,
    dgamma: &mut [G],
    dbeta: &mut [G],
) {
    check(x, stats, rows, cols, "layernorm_param_grad");
    assert_eq!(dy.len(), rows * cols, "layernorm_param_grad: dy length");
    assert_eq!(dgamma.len(), cols, "layernorm_param_grad: dgamma length");
    assert_eq!(dbeta.len(), cols, "layernorm_param_grad: dbeta length");
    if cols == 0 || rows == 0 {
        return;
    }
    let mut pg = vec![T::Acc::ZERO; cols];
    let mut pb = vec![T::Acc::ZERO; cols];
    let mut tg = vec![0.0f64; cols];
    let mut tb = vec![0.0f64; cols];
    for r0 in (0..rows).step_by(BLOCK) {
        pg.fill(T::Acc::ZERO);
        pb.fill(T::Acc::ZERO);
        for r in r0..rows.min(r0 + BLOCK) {
            let (mean, rstd) = (stats[2 * r], stats[2 * r + 1]);
            let xr = &x[r * cols..][..cols];
            let dr = &dy[r * cols..][..cols];
            // Rows stream contiguously; the column partials stay in L1/L2.
            for (((g, b), xv), dv) in pg.iter_mut().zip(pb.iter_mut()).zip(xr).zip(dr) {
                let d = dv.to_acc();
                *g += d * ((xv.to_acc() - mean) * rstd);
                *b += d;
            }
        }
        for (t, p) in tg.iter_mut().zip(&pg) {
            *t += p.f64();
        }
        for (t, p) in tb.iter_mut().zip(&pb) {
            *t += p.f64();
        }
    }
    for (o, t) in dgamma.iter_mut().zip(&tg) {
        *o = G::from_f64(o.to_f64() + t);
    }
    for (o, t) in dbeta.iter_mut().zip(&tb) {
        *o = G::from_f64(o.to_f64() + t);
    }
}

fn check<T: Element>(x: &[T], stats: &[T::Acc], rows: usize, cols: usize, op: &str) {
    assert_eq!(x.len(), rows * cols, "{op}: x length");
    assert_eq!(stats.len(), rows * 2, "{op}: stats length");
}

fn widen<T: Element>(v: &[T]) -> Vec<T::Acc> {
    v.iter().map(|x| x.to_acc()).collect()
}

/// `sum_i f(x_i)` in 8 independent lanes (vectorizes, short dependency chains).
#[inline(always)]
fn sum_map<T: Element>(x: &[T], f: impl Fn(T::Acc) -> T::Acc) -> T::Acc {
    let mut lanes = [T::Acc::ZERO; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += f(v.to_acc());
        }
    }
    let mut s = T::Acc::ZERO;
    for v in it.remainder() {
        s += f(v.to_acc());
    }
    fold8(lanes) + s
}

/// `(sum dy*g, sum dy*g*xhat)` of one row, 8 lanes each.
#[inline(always)]
fn dot2<T: Element>(
    x: &[T],
    dy: &[T],
    g: &[T::Acc],
    mean: T::Acc,
    rstd: T::Acc,
) -> (T::Acc, T::Acc) {
    let mut l0 = [T::Acc::ZERO; 8];
    let mut l1 = [T::Acc::ZERO; 8];
    let n8 = x.len() / 8 * 8;
    for ((xc, dc), gc) in x[..n8]
        .chunks_exact(8)
        .zip(dy[..n8].chunks_exact(8))
        .zip(g[..n8].chunks_exact(8))
    {
        for k in 0..8 {
            let dg = dc[k].to_acc() * gc[k];
            l0[k] += dg;
            l1[k] += dg * ((xc[k].to_acc() - mean) * rstd);
        }
    }
    let (mut s0, mut s1) = (T::Acc::ZERO, T::Acc::ZERO);
    for ((xv, dv), gv) in x[n8..].iter().zip(&dy[n8..]).zip(&g[n8..]) {
        let dg = dv.to_acc() * *gv;
        s0 += dg;
        s1 += dg * ((xv.to_acc() - mean) * rstd);
    }
    (fold8(l0) + s0, fold8(l1) + s1)
}

/// Pairwise fold of 8 lanes.
#[inline(always)]
fn fold8<A: Accum>(l: [A; 8]) -> A {
    ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
}
