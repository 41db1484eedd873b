//! GPT-2 layer kernels (LayerNorm, activations, bias, embeddings, dropout,
//! attention, cross-entropy, optimizers) against independent, unfused,
//! naive f64 references written here.
//!
//! Inputs come from a fixed splitmix64 stream and are rounded to the storage
//! dtype first; references are computed in f64 from those rounded inputs, so
//! the error measured is the kernel's own. Errors are relative Frobenius
//! norms ||x - ref|| / ||ref||, with tolerances f64 1e-12, f32 1e-5,
//! bf16 2e-2, f16 2e-3. Every reduction that the model splits over tiles
//! (LayerNorm over C, softmax over the vocabulary, attention over keys) is
//! run here over uneven tile cuts (pieces of 3, 1, 5, 2, 7, ... elements),
//! and compared with the unsplit reference. Gradients are checked against
//! analytic references and, for small f64 cases, against central finite
//! differences of the forward kernels.
//!
//! Worst errors measured (all cases): f64 3.3e-14 (LayerNorm of x ~ 100 +
//! U(-1,1), where x - mean cancels), f32 5.4e-6 (the same case: the f32
//! mean of values near 100 is off by half an ulp of 100, ~4e-6; elsewhere
//! f32 stays below 8e-7), bf16 3.9e-3 and f16 5.3e-4 (attention gradients,
//! rounded to the storage type once per key-tile call), finite differences
//! 2.4e-9 (attention dk). The f32 exp of the softmax kernels is within
//! 7.9e-8 relative of exp over the whole normal range.
//!
//! Run with `--nocapture` to see every measured error (lines `ERR ...`).

// `vec![0..n]` is meant: a list of tiles that holds one tile.
#![allow(clippy::single_range_in_vec_init)]

use gpt2rs::dtype::Accum;
use gpt2rs::kernels::cpu::activation::{
    activation_bwd, activation_fwd, expf_nonpos, expf_vec, Activation,
};
use gpt2rs::kernels::cpu::attention::{
    attn_bwd_delta, attn_bwd_update, attn_fwd_finalize, attn_fwd_init, attn_fwd_update, AttnDropout,
};
use gpt2rs::kernels::cpu::bias::{bias_add, bias_fill, bias_grad};
use gpt2rs::kernels::cpu::copy::copy_block;
use gpt2rs::kernels::cpu::crossentropy::{ce_bwd, ce_loss_lse, ce_loss_target, maxsumexp_update};
use gpt2rs::kernels::cpu::dropout::{dropout_bwd, dropout_fwd, keep, DropoutMask};
use gpt2rs::kernels::cpu::embedding::{
    add_rows, add_rows_bwd, embedding_bwd, embedding_fwd, sinusoidal_table,
};
use gpt2rs::kernels::cpu::layernorm::{
    layernorm_bwd, layernorm_bwd_reduce, layernorm_fwd, layernorm_param_grad,
    layernorm_stats_finalize, layernorm_stats_update,
};
use gpt2rs::kernels::cpu::lm_head_ce::{fwd_chunk, merge, part_init};
use gpt2rs::kernels::cpu::optim::{adam_step, sgd_step};
use gpt2rs::{DType, Element};
use half::{bf16, f16};
use proptest::prelude::*;
use std::ops::Range;

// ---------------------------------------------------------------- helpers

/// splitmix64: a tiny deterministic PRNG, enough for test data.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed)
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    /// `len` values `offset + scale * U[-1, 1)`, rounded to T.
    fn vec_scaled<T: Element>(&mut self, len: usize, offset: f64, scale: f64) -> Vec<T> {
        (0..len)
            .map(|_| T::from_f64(offset + scale * self.uniform()))
            .collect()
    }
    fn vec<T: Element>(&mut self, len: usize) -> Vec<T> {
        self.vec_scaled(len, 0.0, 1.0)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

fn f64s<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
}

fn accs<A: Accum>(x: &[A]) -> Vec<f64> {
    x.iter().map(|v| v.f64()).collect()
}

/// ||x - r|| / ||r|| (absolute when r is zero).
fn rel_err(x: &[f64], r: &[f64]) -> f64 {
    assert_eq!(x.len(), r.len());
    let d: f64 = x.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum();
    let n: f64 = r.iter().map(|b| b * b).sum();
    if n == 0.0 {
        d.sqrt()
    } else {
        (d / n).sqrt()
    }
}

fn tol_of(d: DType) -> f64 {
    match d {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::BF16 => 2e-2,
        DType::F16 => 2e-3,
    }
}

/// Asserts a relative Frobenius error within the tolerance of `dtype`
/// (the dtype the inputs were rounded to), and logs it.
fn check_f64(got: &[f64], want: &[f64], dtype: DType, what: &str) {
    assert!(
        got.iter().all(|v| v.is_finite()),
        "{what}: non-finite output {got:?}"
    );
    let e = rel_err(got, want);
    let tol = tol_of(dtype);
    eprintln!("ERR {:>4} {e:.3e} {what}", dtype.name());
    assert!(e <= tol, "{what} ({dtype}): rel err {e:e} > {tol:e}");
}

fn assert_close<T: Element>(got: &[T], want: &[f64], what: &str) {
    check_f64(&f64s(got), want, T::DTYPE, what);
}

/// Central finite differences versus an analytic gradient, in f64.
fn check_fd(analytic: &[f64], fd: &[f64], what: &str) {
    let e = rel_err(analytic, fd);
    eprintln!("ERR   fd {e:.3e} {what}");
    assert!(
        e < 1e-7,
        "{what}: analytic vs finite differences rel err {e:e}"
    );
}

/// d f / d x_i by central differences, for every i.
fn fd_grad(x: &[f64], h: f64, mut f: impl FnMut(&[f64]) -> f64) -> Vec<f64> {
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let x0 = xp[i];
            xp[i] = x0 + h;
            let fp = f(&xp);
            xp[i] = x0 - h;
            let fm = f(&xp);
            xp[i] = x0;
            (fp - fm) / (2.0 * h)
        })
        .collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Uneven cuts of 0..n: pieces of 3, 1, 5, 2, 7, 4, ... (the last one short).
fn uneven(n: usize) -> Vec<Range<usize>> {
    const SIZES: [usize; 6] = [3, 1, 5, 2, 7, 4];
    let mut out = Vec::new();
    let (mut lo, mut i) = (0, 0);
    while lo < n {
        let hi = (lo + SIZES[i % SIZES.len()]).min(n);
        out.push(lo..hi);
        lo = hi;
        i += 1;
    }
    out
}

/// Cuts of 0..n into pieces of the given sizes (the last one absorbs the rest).
fn cuts(n: usize, sizes: &[usize]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut lo = 0;
    for &s in sizes {
        if lo >= n {
            break;
        }
        let hi = (lo + s).min(n);
        out.push(lo..hi);
        lo = hi;
    }
    if lo < n {
        out.push(lo..n);
    }
    out
}

/// Columns `r` of a row-major `[rows, c]` array, as a `[rows, r.len()]` tile.
fn cols_of<T: Copy>(x: &[T], rows: usize, c: usize, r: &Range<usize>) -> Vec<T> {
    (0..rows)
        .flat_map(|i| x[i * c + r.start..i * c + r.end].iter().copied())
        .collect()
}

fn put_cols<T: Copy>(tile: &[T], rows: usize, c: usize, r: &Range<usize>, x: &mut [T]) {
    let w = r.len();
    for i in 0..rows {
        x[i * c + r.start..i * c + r.end].copy_from_slice(&tile[i * w..(i + 1) * w]);
    }
}

/// The block `ranges` of a row-major array of shape `shape`.
fn extract<T: Copy + Default>(x: &[T], shape: &[usize], ranges: &[Range<usize>]) -> Vec<T> {
    let block: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let off: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    let mut out = vec![T::default(); block.iter().product()];
    copy_block(
        x,
        shape,
        &off,
        &mut out,
        &block,
        &vec![0; shape.len()],
        &block,
    );
    out
}

fn insert<T: Copy>(tile: &[T], x: &mut [T], shape: &[usize], ranges: &[Range<usize>]) {
    let block: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
    let off: Vec<usize> = ranges.iter().map(|r| r.start).collect();
    copy_block(tile, &block, &vec![0; shape.len()], x, shape, &off, &block);
}

/// One #[test] per storage dtype (and gradient dtype) for a generic check.
macro_rules! per_dtype {
    ($check:ident: $($name:ident => $($t:ty),+);* $(;)?) => {
        $(
            #[test]
            fn $name() {
                $check::<$($t),+>();
            }
        )*
    };
}

// -------------------------------------------------------------- layernorm

struct LnRef {
    mean: Vec<f64>,
    rstd: Vec<f64>,
    y: Vec<f64>,
}

/// Direct LayerNorm: mean, biased variance, y = xhat * gamma + beta.
fn ln_ref(x: &[f64], g: &[f64], b: &[f64], rows: usize, c: usize, eps: f64) -> LnRef {
    let (mut mean, mut rstd, mut y) = (vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * c]);
    for r in 0..rows {
        let xr = &x[r * c..(r + 1) * c];
        let mu = xr.iter().sum::<f64>() / c as f64;
        let var = xr.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / c as f64;
        let rs = 1.0 / (var + eps).sqrt();
        for j in 0..c {
            y[r * c + j] = (xr[j] - mu) * rs * g[j] + b[j];
        }
        mean[r] = mu;
        rstd[r] = rs;
    }
    LnRef { mean, rstd, y }
}

/// Direct LayerNorm backward: (dx, dgamma, dbeta).
fn ln_bwd_ref(
    x: &[f64],
    dy: &[f64],
    g: &[f64],
    rows: usize,
    c: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let f = ln_ref(x, g, g, rows, c, eps);
    let (mut dx, mut dg, mut db) = (vec![0.0; rows * c], vec![0.0; c], vec![0.0; c]);
    for r in 0..rows {
        let xhat: Vec<f64> = (0..c)
            .map(|j| (x[r * c + j] - f.mean[r]) * f.rstd[r])
            .collect();
        let gy: Vec<f64> = (0..c).map(|j| dy[r * c + j] * g[j]).collect();
        let m0 = gy.iter().sum::<f64>() / c as f64;
        let m1 = dot(&gy, &xhat) / c as f64;
        for j in 0..c {
            dx[r * c + j] = f.rstd[r] * (gy[j] - m0 - xhat[j] * m1);
            dg[j] += dy[r * c + j] * xhat[j];
            db[j] += dy[r * c + j];
        }
    }
    (dx, dg, db)
}

/// Tiled forward over the column cuts `tiles`: (y, stats).
fn ln_fwd_tiled<T: Element>(
    x: &[T],
    g: &[T],
    b: &[T],
    rows: usize,
    c: usize,
    eps: f64,
    tiles: &[Range<usize>],
) -> (Vec<T>, Vec<T::Acc>) {
    let mut acc = vec![T::Acc::ZERO; rows * 3];
    for t in tiles {
        layernorm_stats_update(&cols_of(x, rows, c, t), rows, t.len(), &mut acc);
    }
    let mut stats = vec![T::Acc::ZERO; rows * 2];
    layernorm_stats_finalize(&acc, rows, eps, &mut stats);
    let mut y = vec![T::from_f64(f64::NAN); rows * c];
    for t in tiles {
        let mut yt = vec![T::from_f64(f64::NAN); rows * t.len()];
        layernorm_fwd(
            &cols_of(x, rows, c, t),
            &stats,
            &g[t.clone()],
            &b[t.clone()],
            rows,
            t.len(),
            &mut yt,
        );
        put_cols(&yt, rows, c, t, &mut y);
    }
    (y, stats)
}

/// Tiled backward: (dx overwrite, dx accumulated onto `dx0`, dgamma, dbeta),
/// the parameter gradients accumulated onto `dg0`, `db0`.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn ln_bwd_tiled<T: Element, G: Element>(
    x: &[T],
    dy: &[T],
    stats: &[T::Acc],
    g: &[T],
    rows: usize,
    c: usize,
    tiles: &[Range<usize>],
    dx0: &[T],
    dg0: &[G],
    db0: &[G],
) -> (Vec<T>, Vec<T>, Vec<G>, Vec<G>) {
    let mut sums = vec![T::Acc::ZERO; rows * 2];
    for t in tiles {
        let (xt, dyt) = (cols_of(x, rows, c, t), cols_of(dy, rows, c, t));
        layernorm_bwd_reduce(&xt, &dyt, stats, &g[t.clone()], rows, t.len(), &mut sums);
    }
    let mut dx = vec![T::from_f64(f64::NAN); rows * c];
    let mut dxa = dx0.to_vec();
    let (mut dg, mut db) = (dg0.to_vec(), db0.to_vec());
    for t in tiles {
        let (xt, dyt) = (cols_of(x, rows, c, t), cols_of(dy, rows, c, t));
        // Overwrite: the tile starts as NaN, which must not leak.
        let mut dxt = vec![T::from_f64(f64::NAN); rows * t.len()];
        layernorm_bwd(
            &xt,
            &dyt,
            stats,
            &g[t.clone()],
            &sums,
            c,
            rows,
            t.len(),
            false,
            &mut dxt,
        );
        put_cols(&dxt, rows, c, t, &mut dx);
        let mut dxat = cols_of(dx0, rows, c, t);
        layernorm_bwd(
            &xt,
            &dyt,
            stats,
            &g[t.clone()],
            &sums,
            c,
            rows,
            t.len(),
            true,
            &mut dxat,
        );
        put_cols(&dxat, rows, c, t, &mut dxa);
        layernorm_param_grad(
            &xt,
            &dyt,
            stats,
            rows,
            t.len(),
            &mut dg[t.clone()],
            &mut db[t.clone()],
        );
    }
    (dx, dxa, dg, db)
}

fn check_layernorm<T: Element, G: Element>() {
    let mut rng = Rng::new(11);
    let eps = 1e-5;
    let mut cases: Vec<(usize, usize, f64)> = Vec::new();
    for rows in [1, 3, 7] {
        // Not C = 2: there xhat = +-1 up to eps and dx is ~eps/var, a
        // catastrophic cancellation whose relative error says nothing about
        // the kernel. (C = 1 is fine: dx is exactly 0.)
        for c in [1, 3, 5, 13, 33, 64] {
            cases.push((rows, c, 0.0));
        }
    }
    // Rows past the param-grad block (256), and a large mean (cancellation
    // in a naive E[x^2] - E[x]^2 would show here).
    cases.push((300, 7, 0.0));
    cases.push((5, 33, 100.0));
    for (rows, c, offset) in cases {
        let x: Vec<T> = rng.vec_scaled(rows * c, offset, 1.0);
        let g: Vec<T> = rng.vec_scaled(c, 1.0, 0.5);
        let b: Vec<T> = rng.vec(c);
        let dy: Vec<T> = rng.vec(rows * c);
        let dx0: Vec<T> = rng.vec(rows * c);
        let dg0: Vec<G> = rng.vec(c);
        let db0: Vec<G> = rng.vec(c);
        let (xf, gf, bf, dyf) = (f64s(&x), f64s(&g), f64s(&b), f64s(&dy));
        let want = ln_ref(&xf, &gf, &bf, rows, c, eps);
        let (wdx, wdg, wdb) = ln_bwd_ref(&xf, &dyf, &gf, rows, c, eps);
        for tiles in [vec![0..c], uneven(c)] {
            let what = |s: &str| {
                format!(
                    "layernorm {s} rows={rows} C={c} off={offset} tiles={}",
                    tiles.len()
                )
            };
            let (y, stats) = ln_fwd_tiled(&x, &g, &b, rows, c, eps, &tiles);
            let st = accs(&stats);
            let mean: Vec<f64> = st.iter().step_by(2).copied().collect();
            let rstd: Vec<f64> = st.iter().skip(1).step_by(2).copied().collect();
            // The mean of x ~ 100 + U is compared relative to 100: the
            // deviations, not the mean itself, are what must be exact.
            check_f64(&mean, &want.mean, T::DTYPE, &what("mean"));
            check_f64(&rstd, &want.rstd, T::DTYPE, &what("rstd"));
            // y = xhat * gamma + beta
            assert_close(&y, &want.y, &what("y"));
            let (dx, dxa, dg, db) =
                ln_bwd_tiled(&x, &dy, &stats, &g, rows, c, &tiles, &dx0, &dg0, &db0);
            // dx = rstd (dy*g - mean(dy*g) - xhat mean(dy*g*xhat))
            assert_close(&dx, &wdx, &what("dx"));
            // accumulate: dx0 + dx
            let want_a: Vec<f64> = f64s(&dx0).iter().zip(&wdx).map(|(a, b)| a + b).collect();
            assert_close(&dxa, &want_a, &what("dx accumulated"));
            // dgamma += sum_r dy * xhat;  dbeta += sum_r dy
            let want_g: Vec<f64> = f64s(&dg0).iter().zip(&wdg).map(|(a, b)| a + b).collect();
            let want_b: Vec<f64> = f64s(&db0).iter().zip(&wdb).map(|(a, b)| a + b).collect();
            check_f64(&f64s(&dg), &want_g, T::DTYPE, &what("dgamma"));
            check_f64(&f64s(&db), &want_b, T::DTYPE, &what("dbeta"));
        }
    }
}
per_dtype!(check_layernorm:
    layernorm_f32 => f32, f32;
    layernorm_f64 => f64, f64;
    layernorm_bf16 => bf16, f32;
    layernorm_f16 => f16, f32;
);

/// Gradients of L = sum(y * w) against central differences of the tiled
/// forward, in f64.
#[test]
fn layernorm_finite_differences() {
    let mut rng = Rng::new(12);
    let (rows, c, eps) = (2, 9, 1e-5);
    let tiles = uneven(c);
    let x: Vec<f64> = rng.vec(rows * c);
    let g: Vec<f64> = rng.vec_scaled(c, 1.0, 0.5);
    let b: Vec<f64> = rng.vec(c);
    let w: Vec<f64> = rng.vec(rows * c);
    let loss =
        |x: &[f64], g: &[f64], b: &[f64]| dot(&ln_fwd_tiled(x, g, b, rows, c, eps, &tiles).0, &w);
    let (_, stats) = ln_fwd_tiled(&x, &g, &b, rows, c, eps, &tiles);
    let zero = vec![0.0; c];
    let (dx, _, dg, db) = ln_bwd_tiled(
        &x,
        &w,
        &stats,
        &g,
        rows,
        c,
        &tiles,
        &vec![0.0; rows * c],
        &zero,
        &zero,
    );
    // dL/dx = rstd (w*g - mean(w*g) - xhat mean(w*g*xhat))
    check_fd(&dx, &fd_grad(&x, 1e-5, |x| loss(x, &g, &b)), "layernorm dx");
    // dL/dgamma = sum_r w * xhat
    check_fd(
        &dg,
        &fd_grad(&g, 1e-5, |g| loss(&x, g, &b)),
        "layernorm dgamma",
    );
    // dL/dbeta = sum_r w
    check_fd(
        &db,
        &fd_grad(&b, 1e-5, |b| loss(&x, &g, b)),
        "layernorm dbeta",
    );
}

// ------------------------------------------------------------- activation

fn act_ref(act: Activation, x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    match act {
        Activation::GeluTanh => 0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh()),
        Activation::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
        Activation::Relu => x.max(0.0),
    }
}

fn act_grad_ref(act: Activation, x: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    match act {
        Activation::GeluTanh => {
            // d/dx 0.5 x (1 + tanh u) = 0.5 (1 + tanh u) + 0.5 x (1 - tanh^2 u) u'
            let t = (c * (x + 0.044715 * x * x * x)).tanh();
            0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3.0 * 0.044715 * x * x)
        }
        Activation::Gelu => {
            // Phi(x) + x phi(x)
            0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
                + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt()
        }
        Activation::Relu => {
            if x > 0.0 {
                1.0
            } else {
                0.0
            }
        }
    }
}

const ACTS: [Activation; 3] = [Activation::GeluTanh, Activation::Gelu, Activation::Relu];

fn check_activation<T: Element>() {
    let mut rng = Rng::new(21);
    for act in ACTS {
        for n in [1, 3, 7, 33, 1000] {
            let mut x: Vec<T> = rng.vec_scaled(n, 0.0, 5.0);
            // Tails, zero and saturation.
            for (i, v) in [0.0, -12.0, 12.0, -30.0, 40.0, 0.5]
                .iter()
                .enumerate()
                .take(n)
            {
                x[i] = T::from_f64(*v);
            }
            let dy: Vec<T> = rng.vec(n);
            let xf = f64s(&x);
            let what = format!("{act:?} n={n}");
            let mut y = vec![T::from_f64(f64::NAN); n];
            activation_fwd(act, &x, &mut y);
            let want: Vec<f64> = xf.iter().map(|&v| act_ref(act, v)).collect();
            assert_close(&y, &want, &format!("{what} fwd"));
            let mut dx = vec![T::from_f64(f64::NAN); n];
            activation_bwd(act, &x, &dy, &mut dx);
            // dx = dy * act'(x)
            let want: Vec<f64> = xf
                .iter()
                .zip(f64s(&dy))
                .map(|(&v, d)| d * act_grad_ref(act, v))
                .collect();
            assert_close(&dx, &want, &format!("{what} bwd"));
        }
    }
}
per_dtype!(check_activation:
    activation_f32 => f32; activation_f64 => f64; activation_bf16 => bf16; activation_f16 => f16);

#[test]
fn activation_finite_differences_and_names() {
    let mut rng = Rng::new(22);
    // Away from relu's kink at 0.
    let x: Vec<f64> = rng
        .vec_scaled(41, 0.0, 4.0)
        .into_iter()
        .filter(|v: &f64| v.abs() > 1e-3)
        .collect();
    for act in ACTS {
        let mut dx = vec![0.0; x.len()];
        activation_bwd(act, &x, &vec![1.0; x.len()], &mut dx);
        // Elementwise: the derivative at each point by central differences.
        let fd: Vec<f64> = x
            .iter()
            .map(|&v| {
                let (mut yp, mut ym) = ([0.0f64], [0.0f64]);
                activation_fwd(act, &[v + 1e-6], &mut yp);
                activation_fwd(act, &[v - 1e-6], &mut ym);
                (yp[0] - ym[0]) / 2e-6
            })
            .collect();
        check_fd(&dx, &fd, &format!("{act:?} derivative"));
    }
    // relu'(0) = 0, as torch.
    let mut d = [1.0f32];
    activation_bwd(Activation::Relu, &[0.0f32], &[1.0], &mut d);
    assert_eq!(d, [0.0]);
    assert_eq!(Activation::parse("gelu_new"), Some(Activation::GeluTanh));
    assert_eq!(
        Activation::parse("gelu_pytorch_tanh"),
        Some(Activation::GeluTanh)
    );
    assert_eq!(Activation::parse("gelu"), Some(Activation::Gelu));
    assert_eq!(Activation::parse("relu"), Some(Activation::Relu));
    assert_eq!(Activation::parse("gelu_fast"), None);
    assert_eq!(Activation::parse("swish"), None);
    for act in ACTS {
        assert_eq!(Activation::parse(act.name()), Some(act));
    }
}

/// The vectorizable f32 exp: a few ulps over the whole normal range, and
/// the special values.
#[test]
fn expf_vec_accuracy() {
    let mut worst = 0.0f64;
    let n = 200_000;
    for i in 0..=n {
        let x = -87.0 + (88.5 + 87.0) * i as f64 / n as f64;
        let xf = x as f32;
        let want = (xf as f64).exp();
        let e = ((expf_vec(xf) as f64 - want) / want).abs();
        worst = worst.max(e);
    }
    eprintln!("ERR  f32 {worst:.3e} expf_vec max relative error on [-87, 88.5]");
    assert!(
        worst < 4.0 * f32::EPSILON as f64,
        "expf_vec rel err {worst:e}"
    );
    assert_eq!(expf_vec(0.0), 1.0);
    assert_eq!(expf_vec(f32::NEG_INFINITY), 0.0);
    assert_eq!(expf_vec(-200.0), 0.0);
    assert_eq!(expf_vec(f32::INFINITY), f32::INFINITY);
    assert_eq!(expf_vec(100.0), f32::INFINITY);
    assert!(expf_vec(f32::NAN).is_nan());
    let sub = expf_vec(-100.0) as f64; // subnormal: e^-100 = 3.72e-44
    assert!(
        (sub / (-100f64).exp() - 1.0).abs() < 0.05,
        "exp(-100) = {sub:e}"
    );
}

/// expf_nonpos: the same accuracy on [-86.6, 88], exactly 0 below (where
/// e^x < 2.2e-38), and the special values the softmax kernels meet.
#[test]
fn expf_nonpos_accuracy() {
    let mut worst = 0.0f64;
    let n = 200_000;
    for i in 0..=n {
        let x = -86.6 + (88.0 + 86.6) * i as f64 / n as f64;
        let xf = x as f32;
        let want = (xf as f64).exp();
        let e = ((expf_nonpos(xf) as f64 - want) / want).abs();
        worst = worst.max(e);
    }
    eprintln!("ERR  f32 {worst:.3e} expf_nonpos max relative error on [-86.6, 88]");
    assert!(
        worst < 4.0 * f32::EPSILON as f64,
        "expf_nonpos rel err {worst:e}"
    );
    assert_eq!(expf_nonpos(0.0), 1.0);
    assert_eq!(expf_nonpos(-86.7), 0.0);
    assert_eq!(expf_nonpos(f32::NEG_INFINITY), 0.0);
    assert!(expf_nonpos(f32::NAN).is_nan());
}

// ------------------------------------------------------------------- bias

fn check_bias<T: Element, G: Element>() {
    let mut rng = Rng::new(31);
    for (rows, cols) in [(1, 1), (3, 5), (7, 13), (300, 33), (1, 64)] {
        let bias: Vec<T> = rng.vec(cols);
        let y0: Vec<T> = rng.vec(rows * cols);
        let (bf, yf) = (f64s(&bias), f64s(&y0));
        let what = format!("rows={rows} cols={cols}");
        let mut y = vec![T::from_f64(f64::NAN); rows * cols];
        bias_fill(&bias, rows, cols, &mut y);
        let want: Vec<f64> = (0..rows * cols).map(|i| bf[i % cols]).collect();
        assert_close(&y, &want, &format!("bias_fill {what}"));
        let mut y = y0.clone();
        bias_add(&bias, rows, cols, &mut y);
        let want: Vec<f64> = (0..rows * cols).map(|i| yf[i] + bf[i % cols]).collect();
        assert_close(&y, &want, &format!("bias_add {what}"));
        // db[c] += sum_r dy[r, c]
        let db0: Vec<G> = rng.vec(cols);
        let mut db = db0.clone();
        bias_grad(&y0, rows, cols, &mut db);
        let mut want = f64s(&db0);
        for (i, v) in yf.iter().enumerate() {
            want[i % cols] += v;
        }
        check_f64(
            &f64s(&db),
            &want,
            T::DTYPE.max_eps(G::DTYPE),
            &format!("bias_grad {what}"),
        );
    }
}
per_dtype!(check_bias:
    bias_f32 => f32, f32; bias_f64 => f64, f64; bias_bf16 => bf16, f32; bias_f16 => f16, f32;
    bias_f32_grad_bf16 => f32, bf16);

/// The looser of two dtypes' tolerances (an f32 sum stored into bf16 is
/// judged at bf16's).
trait MaxEps {
    fn max_eps(self, o: DType) -> DType;
}
impl MaxEps for DType {
    fn max_eps(self, o: DType) -> DType {
        if tol_of(self) >= tol_of(o) {
            self
        } else {
            o
        }
    }
}

// -------------------------------------------------------------- embedding

fn check_embedding<T: Element, G: Element>() {
    let mut rng = Rng::new(41);
    let (v, cols) = (13, 5);
    let wte: Vec<T> = rng.vec(v * cols);
    // Repeated ids, both ends of the vocabulary.
    let mut ids: Vec<i64> = (0..17).map(|_| rng.below(v) as i64).collect();
    ids[0] = 0;
    ids[1] = v as i64 - 1;
    ids[2] = ids[3];
    let rows = ids.len();
    let vtiles = uneven(v);
    // Forward: one call per vocabulary tile writes every row exactly once.
    let mut y = vec![T::from_f64(f64::NAN); rows * cols];
    for t in &vtiles {
        embedding_fwd(
            &ids,
            t.start,
            &wte[t.start * cols..t.end * cols],
            t.len(),
            cols,
            &mut y,
        );
    }
    for (r, &id) in ids.iter().enumerate() {
        assert_eq!(
            &y[r * cols..(r + 1) * cols],
            &wte[id as usize * cols..(id as usize + 1) * cols]
        );
    }
    // Ids outside the tile (and negative ones) leave their rows untouched.
    let mut y2 = vec![T::from_f64(7.0); 3 * cols];
    embedding_fwd(&[-1, 4, 9], 3, &wte[3 * cols..6 * cols], 3, cols, &mut y2);
    assert!(y2[..cols]
        .iter()
        .chain(&y2[2 * cols..])
        .all(|x| x.to_f64() == 7.0));
    assert_eq!(&y2[cols..2 * cols], &wte[4 * cols..5 * cols]);

    // Backward: dwte[id] += dy[r], per vocabulary tile, on top of dwte0.
    let dy: Vec<T> = rng.vec(rows * cols);
    let dw0: Vec<G> = rng.vec(v * cols);
    let mut dw = dw0.clone();
    for t in &vtiles {
        embedding_bwd(
            &ids,
            t.start,
            &dy,
            t.len(),
            cols,
            &mut dw[t.start * cols..t.end * cols],
        );
    }
    let mut want = f64s(&dw0);
    let dyf = f64s(&dy);
    for (r, &id) in ids.iter().enumerate() {
        for c in 0..cols {
            want[id as usize * cols + c] += dyf[r * cols + c];
        }
    }
    check_f64(&f64s(&dw), &want, T::DTYPE, "embedding_bwd");

    // Positions: y[b, t] += table[first + t]; dtable[first + t] += sum_b dy[b, t].
    let (n, first, tpb, batch) = (11, 2, 5, 3);
    let table: Vec<T> = rng.vec(n * cols);
    let y0: Vec<T> = rng.vec(batch * tpb * cols);
    let mut y = y0.clone();
    add_rows(&table, first, tpb, batch, cols, &mut y);
    let (tf, y0f) = (f64s(&table), f64s(&y0));
    let want: Vec<f64> = (0..batch * tpb * cols)
        .map(|i| y0f[i] + tf[(first + (i / cols) % tpb) * cols + i % cols])
        .collect();
    assert_close(&y, &want, "add_rows");
    let dt0: Vec<G> = rng.vec(n * cols);
    let mut dt = dt0.clone();
    add_rows_bwd(&y0, first, tpb, batch, cols, &mut dt);
    let mut want = f64s(&dt0);
    for i in 0..batch * tpb * cols {
        want[(first + (i / cols) % tpb) * cols + i % cols] += y0f[i];
    }
    check_f64(&f64s(&dt), &want, T::DTYPE, "add_rows_bwd");

    // Sinusoidal table, tiles starting mid-row (odd column offsets), odd d.
    for d in [10, 7] {
        let (p0, np) = (3, 9);
        let want: Vec<f64> = (0..np * d)
            .map(|i| {
                let (pos, j) = ((p0 + i / d) as f64, i % d);
                let a = pos / 10000f64.powf((j - j % 2) as f64 / d as f64);
                if j % 2 == 0 {
                    a.sin()
                } else {
                    a.cos()
                }
            })
            .collect();
        let mut got = vec![T::from_f64(f64::NAN); np * d];
        for pt in uneven(np) {
            for ct in uneven(d) {
                let mut tile = vec![T::from_f64(f64::NAN); pt.len() * ct.len()];
                sinusoidal_table(p0 + pt.start, pt.len(), ct.start, ct.len(), d, &mut tile);
                insert(&tile, &mut got, &[np, d], &[pt.clone(), ct.clone()]);
            }
        }
        assert_close(&got, &want, &format!("sinusoidal_table d={d}"));
    }
}
per_dtype!(check_embedding:
    embedding_f32 => f32, f32; embedding_f64 => f64, f64; embedding_bf16 => bf16, f32;
    embedding_f16 => f16, f32);

// ---------------------------------------------------------------- dropout

#[test]
fn dropout_statistics() {
    let n = 200_000;
    for p in [0.1, 0.5, 0.9] {
        let x: Vec<f64> = Rng::new(51).vec_scaled(n, 2.0, 1.0); // never 0
        let mut y = x.clone();
        dropout_fwd(3, 1, p, &[0], &[n], &[n], &mut y);
        let dropped = y.iter().filter(|v| **v == 0.0).count() as f64;
        let sigma = (n as f64 * p * (1.0 - p)).sqrt();
        let z = (dropped - n as f64 * p) / sigma;
        eprintln!("dropout p={p}: {dropped} of {n} dropped, z = {z:.2}");
        assert!(
            z.abs() < 5.0,
            "dropout p={p}: {dropped} dropped of {n} (z = {z})"
        );
        // Kept values scaled by 1/(1-p).
        for (a, b) in x.iter().zip(&y) {
            if *b != 0.0 {
                assert!((b / (a / (1.0 - p)) - 1.0).abs() < 1e-15);
            }
        }
        // Elements at lags 1 (neighbours), 2, 64 and 1024 (the same column
        // of other rows) independent: P(both dropped) ~ p^2.
        for lag in [1, 2, 64, 1024] {
            let both = (0..n - lag)
                .filter(|&i| y[i] == 0.0 && y[i + lag] == 0.0)
                .count() as f64;
            let m = (n - lag) as f64;
            let zb = (both - m * p * p) / (m * p * p * (1.0 - p * p)).sqrt();
            assert!(
                zb.abs() < 6.0,
                "dropout p={p}: pairs at lag {lag}: z = {zb}"
            );
        }
    }
    // p = 0: identity; p = 1: all zero.
    let x: Vec<f32> = Rng::new(52).vec(100);
    let mut y = x.clone();
    dropout_fwd(1, 2, 0.0, &[0], &[100], &[100], &mut y);
    assert_eq!(x, y);
    dropout_fwd(1, 2, 1.0, &[0], &[100], &[100], &mut y);
    assert!(y.iter().all(|v| *v == 0.0));
    // Other seeds and streams give other masks.
    let count_same = |s1: u64, t1: u64, s2: u64, t2: u64| {
        (0..1000u64)
            .filter(|&i| keep(s1, t1, i, 0.5) == keep(s2, t2, i, 0.5))
            .count()
    };
    assert!(count_same(1, 0, 1, 1) < 600 && count_same(1, 0, 2, 0) < 600);
    assert_eq!(count_same(5, 5, 5, 5), 1000);
    // DropoutMask::apply agrees with keep() from any start, including runs
    // that cross a block of 2^32 indices.
    let mask = DropoutMask::new(8, 9, 0.5);
    for start in [0u64, 1, 5, (1 << 32) - 3, 7 << 40] {
        for n in [0usize, 1, 7, 40] {
            let mut x = vec![1.0f64; n];
            mask.apply(start, 3.0, &mut x);
            let want: Vec<f64> = (0..n)
                .map(|j| {
                    if keep(8, 9, start + j as u64, 0.5) {
                        3.0
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(x, want, "apply start={start} n={n}");
        }
    }
}

/// The mask depends on the global index only: two different tilings of a
/// 3-d tensor give the same result, equal to an element-wise `keep`; the
/// backward applies the same mask.
fn check_dropout_tiling<T: Element>() {
    let shape = [5, 7, 13];
    let n: usize = shape.iter().product();
    let x: Vec<T> = Rng::new(53).vec_scaled(n, 2.0, 1.0);
    let (seed, stream, p) = (99, 4, 0.3);
    let run = |cut: fn(usize) -> Vec<Range<usize>>, bwd: bool| {
        let mut out = vec![T::from_f64(f64::NAN); n];
        for a in cut(shape[0]) {
            for b in cut(shape[1]) {
                for c in cut(shape[2]) {
                    let r = [a.clone(), b.clone(), c.clone()];
                    let mut tile = extract(&x, &shape, &r);
                    let off = [a.start, b.start, c.start];
                    let ts = [a.len(), b.len(), c.len()];
                    if bwd {
                        dropout_bwd(seed, stream, p, &off, &ts, &shape, &mut tile);
                    } else {
                        dropout_fwd(seed, stream, p, &off, &ts, &shape, &mut tile);
                    }
                    insert(&tile, &mut out, &shape, &r);
                }
            }
        }
        out
    };
    let whole = run(|n| vec![0..n], false);
    let tiled = run(uneven, false);
    let tiled2 = run(|n| cuts(n, &[2, 2, 9]), true);
    assert_eq!(f64s(&whole), f64s(&tiled));
    assert_eq!(f64s(&whole), f64s(&tiled2));
    let want: Vec<f64> = f64s(&x)
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if keep(seed, stream, i as u64, p) {
                v / (1.0 - p)
            } else {
                0.0
            }
        })
        .collect();
    assert_close(&whole, &want, "dropout vs keep()");
}
per_dtype!(check_dropout_tiling:
    dropout_tiling_f32 => f32; dropout_tiling_f64 => f64; dropout_tiling_bf16 => bf16);

// -------------------------------------------------------------- attention

#[derive(Clone)]
struct AttnCase {
    bsz: usize,
    t: usize,
    nh: usize,
    hs: usize,
    btiles: Vec<Range<usize>>,
    qtiles: Vec<Range<usize>>,
    ktiles: Vec<Range<usize>>,
    htiles: Vec<Range<usize>>,
    /// Dropout probability (0: none).
    p: f64,
    /// Merge key tiles last-to-first (the online softmax is order-free).
    reverse_keys: bool,
}

const SEED: u64 = 1234;
const STREAM: u64 = 7;

impl AttnCase {
    fn shape(&self) -> [usize; 4] {
        [self.bsz, self.t, self.nh, self.hs]
    }
    fn scale(&self) -> f64 {
        1.0 / (self.hs as f64).sqrt()
    }
    fn dropout(&self, b: &Range<usize>, h: &Range<usize>) -> AttnDropout {
        (self.p > 0.0).then_some((
            SEED,
            STREAM,
            self.p,
            [self.bsz, self.nh, self.t, self.t],
            [b.start, h.start],
        ))
    }
    /// Key tiles not wholly in the future of the query tile `q`.
    fn keys_for(&self, q: &Range<usize>) -> Vec<Range<usize>> {
        let mut ks: Vec<_> = self
            .ktiles
            .iter()
            .filter(|k| k.start < q.end)
            .cloned()
            .collect();
        if self.reverse_keys {
            ks.reverse();
        }
        ks
    }
}

/// Tiled forward: (o [B, T, NH, HS], lse [B, T, NH]).
fn attn_fwd_tiled<T: Element>(c: &AttnCase, q: &[T], k: &[T], v: &[T]) -> (Vec<T>, Vec<T::Acc>) {
    let shape = c.shape();
    let mut o = vec![T::from_f64(f64::NAN); q.len()];
    let mut lse = vec![T::Acc::ZERO; c.bsz * c.t * c.nh];
    for br in &c.btiles {
        for hr in &c.htiles {
            let (b, h) = (br.len(), hr.len());
            for qr in &c.qtiles {
                let tq = qr.len();
                let qt = extract(q, &shape, &[br.clone(), qr.clone(), hr.clone(), 0..c.hs]);
                let (mut m, mut l) = (
                    vec![T::Acc::ZERO; b * tq * h],
                    vec![T::Acc::ZERO; b * tq * h],
                );
                let mut acc = vec![T::Acc::ZERO; b * tq * h * c.hs];
                attn_fwd_init(&mut m, &mut l, &mut acc);
                for kr in c.keys_for(qr) {
                    let r = [br.clone(), kr.clone(), hr.clone(), 0..c.hs];
                    let (kt, vt) = (extract(k, &shape, &r), extract(v, &shape, &r));
                    attn_fwd_update(
                        &qt,
                        &kt,
                        &vt,
                        b,
                        tq,
                        kr.len(),
                        h,
                        c.hs,
                        qr.start,
                        kr.start,
                        c.scale(),
                        c.dropout(br, hr),
                        &mut m,
                        &mut l,
                        &mut acc,
                    );
                }
                let mut ot = vec![T::from_f64(f64::NAN); qt.len()];
                let mut lt = vec![T::Acc::ZERO; b * tq * h];
                attn_fwd_finalize::<T>(&m, &l, &acc, b, tq, h, c.hs, &mut ot, &mut lt);
                insert(
                    &ot,
                    &mut o,
                    &shape,
                    &[br.clone(), qr.clone(), hr.clone(), 0..c.hs],
                );
                insert(
                    &lt,
                    &mut lse,
                    &shape[..3],
                    &[br.clone(), qr.clone(), hr.clone()],
                );
            }
        }
    }
    (o, lse)
}

/// Tiled backward: (dq, dk, dv).
#[allow(clippy::too_many_arguments)]
fn attn_bwd_tiled<T: Element>(
    c: &AttnCase,
    q: &[T],
    k: &[T],
    v: &[T],
    o: &[T],
    lse: &[T::Acc],
    d_o: &[T],
) -> (Vec<T>, Vec<T>, Vec<T>) {
    let shape = c.shape();
    let nan = T::from_f64(f64::NAN);
    let (mut dq, mut dk, mut dv) = (vec![nan; q.len()], vec![nan; q.len()], vec![nan; q.len()]);
    for br in &c.btiles {
        for hr in &c.htiles {
            let (b, h) = (br.len(), hr.len());
            let kr4 = |kr: &Range<usize>| [br.clone(), kr.clone(), hr.clone(), 0..c.hs];
            // dk, dv tiles persist across query tiles; the caller zeroes them.
            let mut dkt: Vec<Vec<T>> = c
                .ktiles
                .iter()
                .map(|kr| vec![T::from_f64(0.0); b * kr.len() * h * c.hs])
                .collect();
            let mut dvt = dkt.clone();
            for qr in &c.qtiles {
                let tq = qr.len();
                let r = [br.clone(), qr.clone(), hr.clone(), 0..c.hs];
                let (qt, ot, dot_) = (
                    extract(q, &shape, &r),
                    extract(o, &shape, &r),
                    extract(d_o, &shape, &r),
                );
                let lt = extract(lse, &shape[..3], &r[..3]);
                let mut delta = vec![T::Acc::ZERO; b * tq * h];
                attn_bwd_delta(&ot, &dot_, b, tq, h, c.hs, &mut delta);
                let mut dqt = vec![T::from_f64(0.0); qt.len()];
                for kr in c.keys_for(qr) {
                    let ki = c.ktiles.iter().position(|x| *x == kr).unwrap();
                    let (kt, vt) = (extract(k, &shape, &kr4(&kr)), extract(v, &shape, &kr4(&kr)));
                    attn_bwd_update(
                        &qt,
                        &kt,
                        &vt,
                        &dot_,
                        &lt,
                        &delta,
                        b,
                        tq,
                        kr.len(),
                        h,
                        c.hs,
                        qr.start,
                        kr.start,
                        c.scale(),
                        c.dropout(br, hr),
                        &mut dqt,
                        &mut dkt[ki],
                        &mut dvt[ki],
                    );
                }
                insert(&dqt, &mut dq, &shape, &r);
            }
            for (ki, kr) in c.ktiles.iter().enumerate() {
                insert(&dkt[ki], &mut dk, &shape, &kr4(kr));
                insert(&dvt[ki], &mut dv, &shape, &kr4(kr));
            }
        }
    }
    (dq, dk, dv)
}

struct AttnRef {
    o: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// Unfused reference: the full T x T causal softmax per (batch, head), the
/// dropout mask from `keep` on the global [B, NH, T, T] index, and the
/// backward by the chain rule through each step (no delta shortcut).
fn attn_ref(c: &AttnCase, q: &[f64], k: &[f64], v: &[f64], d_o: &[f64]) -> AttnRef {
    let (bsz, t, nh, hs) = (c.bsz, c.t, c.nh, c.hs);
    let at = |b: usize, pos: usize, h: usize| ((b * t + pos) * nh + h) * hs;
    let n = q.len();
    let (mut o, mut dq, mut dk, mut dv) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
    let mut lse = vec![0.0; bsz * t * nh];
    let scale = c.scale();
    for b in 0..bsz {
        for h in 0..nh {
            // S, P (row softmax over keys <= query), Z/(1-p).
            let mut p = vec![vec![0.0; t]; t];
            let mut z = vec![vec![0.0; t]; t];
            for i in 0..t {
                let s: Vec<f64> = (0..=i)
                    .map(|j| scale * dot(&q[at(b, i, h)..][..hs], &k[at(b, j, h)..][..hs]))
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                lse[(b * t + i) * nh + h] = mx + sum.ln();
                for j in 0..=i {
                    p[i][j] = (s[j] - mx).exp() / sum;
                    let idx = (((b * nh + h) * t + i) * t + j) as u64;
                    z[i][j] = if c.p == 0.0 {
                        1.0
                    } else if keep(SEED, STREAM, idx, c.p) {
                        1.0 / (1.0 - c.p)
                    } else {
                        0.0
                    };
                }
            }
            for i in 0..t {
                for j in 0..=i {
                    for d in 0..hs {
                        // O = (P o Z) V
                        o[at(b, i, h) + d] += p[i][j] * z[i][j] * v[at(b, j, h) + d];
                        // dV = (P o Z)^T dO
                        dv[at(b, j, h) + d] += p[i][j] * z[i][j] * d_o[at(b, i, h) + d];
                    }
                }
                // dP = (dO V^T) o Z
                let dp: Vec<f64> = (0..=i)
                    .map(|j| dot(&d_o[at(b, i, h)..][..hs], &v[at(b, j, h)..][..hs]) * z[i][j])
                    .collect();
                // softmax backward: dS = P o (dP - sum_k P dP)
                let pdp: f64 = (0..=i).map(|j| p[i][j] * dp[j]).sum();
                for j in 0..=i {
                    let ds = p[i][j] * (dp[j] - pdp);
                    for d in 0..hs {
                        // dQ = scale dS K, dK = scale dS^T Q
                        dq[at(b, i, h) + d] += scale * ds * k[at(b, j, h) + d];
                        dk[at(b, j, h) + d] += scale * ds * q[at(b, i, h) + d];
                    }
                }
            }
        }
    }
    AttnRef { o, lse, dq, dk, dv }
}

fn attn_cases() -> Vec<AttnCase> {
    let base = AttnCase {
        bsz: 2,
        t: 13,
        nh: 3,
        hs: 5,
        btiles: vec![0..1, 1..2],
        qtiles: cuts(13, &[5, 1, 7]),
        ktiles: cuts(13, &[3, 6, 4]),
        htiles: vec![0..2, 2..3],
        p: 0.0,
        reverse_keys: false,
    };
    let mut cases = vec![
        // One tile per axis.
        AttnCase {
            btiles: vec![0..2],
            qtiles: vec![0..13],
            ktiles: vec![0..13],
            htiles: vec![0..3],
            ..base.clone()
        },
        base.clone(),
        AttnCase {
            reverse_keys: true,
            ..base.clone()
        },
        AttnCase {
            p: 0.3,
            ..base.clone()
        },
        AttnCase {
            p: 0.3,
            qtiles: uneven(13),
            ktiles: cuts(13, &[2, 9]),
            reverse_keys: true,
            ..base.clone()
        },
        // Single position, single head.
        AttnCase {
            bsz: 1,
            t: 1,
            nh: 1,
            hs: 1,
            btiles: vec![0..1],
            qtiles: vec![0..1],
            ktiles: vec![0..1],
            htiles: vec![0..1],
            ..base.clone()
        },
    ];
    // Larger blocks, through the gemm crate's packed kernels.
    cases.push(AttnCase {
        bsz: 1,
        t: 97,
        nh: 2,
        hs: 32,
        btiles: vec![0..1],
        qtiles: cuts(97, &[64, 33]),
        ktiles: cuts(97, &[40, 57]),
        htiles: vec![0..1, 1..2],
        p: 0.1,
        reverse_keys: false,
    });
    // Long key tiles: the kernels process query rows in blocks of
    // 65536 / tk (here 218 and 234 rows), so several blocks per call, one
    // starting past the causal diagonal (k0 = 20).
    for qtiles in [vec![0..300], cuts(300, &[40, 260])] {
        cases.push(AttnCase {
            bsz: 1,
            t: 300,
            nh: 1,
            hs: 8,
            btiles: vec![0..1],
            qtiles,
            ktiles: cuts(300, &[20, 280]),
            htiles: vec![0..1],
            p: 0.1,
            reverse_keys: true,
        });
    }
    cases
}

fn check_attention<T: Element>() {
    let mut rng = Rng::new(61);
    for c in attn_cases() {
        let n = c.bsz * c.t * c.nh * c.hs;
        let q: Vec<T> = rng.vec_scaled(n, 0.0, 2.0);
        let k: Vec<T> = rng.vec_scaled(n, 0.0, 2.0);
        let v: Vec<T> = rng.vec(n);
        let d_o: Vec<T> = rng.vec(n);
        let want = attn_ref(&c, &f64s(&q), &f64s(&k), &f64s(&v), &f64s(&d_o));
        let what = |s: &str| {
            format!(
                "attention {s} B={} T={} NH={} HS={} tiles q{} k{} p={} rev={}",
                c.bsz,
                c.t,
                c.nh,
                c.hs,
                c.qtiles.len(),
                c.ktiles.len(),
                c.p,
                c.reverse_keys
            )
        };
        let (o, lse) = attn_fwd_tiled(&c, &q, &k, &v);
        assert_close(&o, &want.o, &what("o"));
        check_f64(&accs(&lse), &want.lse, T::DTYPE, &what("lse"));
        // The backward is driven by the kernel's own o (rounded to T), as
        // in training; the reference uses the exact o, so with bf16 the
        // delta term carries o's rounding too.
        let (dq, dk, dv) = attn_bwd_tiled(&c, &q, &k, &v, &o, &lse, &d_o);
        // dQ = scale dS K,  dK = scale dS^T Q,  dS = P o (dP - rowsum(P o dP))
        assert_close(&dq, &want.dq, &what("dq"));
        assert_close(&dk, &want.dk, &what("dk"));
        // dV = (P o Z/(1-p))^T dO
        assert_close(&dv, &want.dv, &what("dv"));
    }
}
per_dtype!(check_attention:
    attention_f32 => f32; attention_f64 => f64; attention_bf16 => bf16; attention_f16 => f16);

/// dL/dq, dk, dv for L = sum(o * w), against central differences of the
/// tiled forward, with and without dropout (the mask is a constant of q, k, v).
#[test]
fn attention_finite_differences() {
    let mut rng = Rng::new(62);
    for p in [0.0, 0.4] {
        let c = AttnCase {
            bsz: 1,
            t: 5,
            nh: 2,
            hs: 3,
            btiles: vec![0..1],
            qtiles: cuts(5, &[2, 3]),
            ktiles: cuts(5, &[3, 2]),
            htiles: vec![0..1, 1..2],
            p,
            reverse_keys: false,
        };
        let n = 30;
        let q: Vec<f64> = rng.vec(n);
        let k: Vec<f64> = rng.vec(n);
        let v: Vec<f64> = rng.vec(n);
        let w: Vec<f64> = rng.vec(n);
        let (o, lse) = attn_fwd_tiled(&c, &q, &k, &v);
        let (dq, dk, dv) = attn_bwd_tiled(&c, &q, &k, &v, &o, &lse, &w);
        let loss = |q: &[f64], k: &[f64], v: &[f64]| dot(&attn_fwd_tiled(&c, q, k, v).0, &w);
        check_fd(
            &dq,
            &fd_grad(&q, 1e-6, |x| loss(x, &k, &v)),
            &format!("attention dq p={p}"),
        );
        check_fd(
            &dk,
            &fd_grad(&k, 1e-6, |x| loss(&q, x, &v)),
            &format!("attention dk p={p}"),
        );
        check_fd(
            &dv,
            &fd_grad(&v, 1e-6, |x| loss(&q, &k, x)),
            &format!("attention dv p={p}"),
        );
    }
}

// ---------------------------------------------------------- cross-entropy

struct CeRef {
    lse: Vec<f64>,
    loss: f64,
    grad: Vec<f64>,
}

/// Full log-softmax per row.
fn ce_ref(z: &[f64], rows: usize, v: usize, targets: &[i64], scale: f64) -> CeRef {
    let (mut lse, mut loss, mut grad) = (vec![0.0; rows], 0.0, vec![0.0; rows * v]);
    for r in 0..rows {
        let zr = &z[r * v..(r + 1) * v];
        let mx = zr.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = mx + zr.iter().map(|x| (x - mx).exp()).sum::<f64>().ln();
        lse[r] = l;
        let t = targets[r];
        if t < 0 {
            continue;
        }
        loss -= zr[t as usize] - l; // -log_softmax[target]
        for j in 0..v {
            let onehot = if j == t as usize { 1.0 } else { 0.0 };
            grad[r * v + j] = scale * ((zr[j] - l).exp() - onehot);
        }
    }
    CeRef { lse, loss, grad }
}

/// (lse per row, loss, gradient) through the tiled kernels: the two-exp
/// path (`maxsumexp_update` + `ce_bwd`), or with `in_place` the fused LM
/// head's (`lm_head_ce::fwd_chunk` over chunks of 4 columns + `merge`; the
/// gradient rebuilt from its numerators and factors as its backward GEMMs
/// use them: k e + g onehot).
fn ce_tiled<T: Element>(
    z: &[T],
    rows: usize,
    v: usize,
    targets: &[i64],
    scale: f64,
    tiles: &[Range<usize>],
    in_place: bool,
) -> (Vec<f64>, f64, Vec<T>) {
    if in_place {
        return ce_fused(z, rows, v, targets, scale, tiles);
    }
    let mut acc = vec![T::Acc::ZERO; rows * 2];
    for a in acc.chunks_exact_mut(2) {
        a[0] = T::Acc::of(f64::NEG_INFINITY);
    }
    let mut loss = [0.0f64];
    for t in tiles {
        let zt = cols_of(z, rows, v, t);
        ce_loss_target(&zt, rows, t.len(), t.start, targets, &mut loss);
        maxsumexp_update(&zt, rows, t.len(), &mut acc);
    }
    ce_loss_lse(&acc, rows, targets, &mut loss);
    let lse: Vec<f64> = acc
        .chunks_exact(2)
        .map(|a| a[0].f64() + a[1].f64().ln())
        .collect();
    let mut grad = vec![T::from_f64(f64::NAN); rows * v];
    for t in tiles {
        let mut zt = cols_of(z, rows, v, t);
        ce_bwd(&acc, rows, t.len(), t.start, targets, scale, &mut zt);
        put_cols(&zt, rows, v, t, &mut grad);
    }
    (lse, loss[0], grad)
}

/// [`ce_tiled`]'s fused path.
fn ce_fused<T: Element>(
    z: &[T],
    rows: usize,
    v: usize,
    targets: &[i64],
    scale: f64,
    tiles: &[Range<usize>],
) -> (Vec<f64>, f64, Vec<T>) {
    let nt = tiles.len();
    let mut parts = vec![vec![T::Acc::ZERO; rows * 3]; nt];
    let mut exps = Vec::new();
    for (t, part) in tiles.iter().zip(&mut parts) {
        let (zt, vt) = (cols_of(z, rows, v, t), t.len());
        // The columns of each chunk land in a NaN tile just before its
        // epilogue, as the forward GEMM writes them.
        let mut e = vec![T::from_f64(f64::NAN); rows * vt];
        part_init(part);
        for c in (0..vt).step_by(4) {
            let chunk = c..(c + 4).min(vt);
            put_cols(&cols_of(&zt, rows, vt, &chunk), rows, vt, &chunk, &mut e);
            fwd_chunk(&mut e, rows, vt, c, chunk.len(), t.start, targets, part);
        }
        exps.push(e);
    }
    let mut loss = [0.0f64];
    let mut factors = vec![T::Acc::ZERO; rows * nt * 2];
    let prefs: Vec<&[T::Acc]> = parts.iter().map(|p| &p[..]).collect();
    merge(&prefs, rows, tiles, targets, scale, &mut factors, &mut loss);
    // lse from the tiles' (shift, sum), as merge takes it.
    let lse: Vec<f64> = (0..rows)
        .map(|r| {
            let p = |j: usize, i: usize| parts[j][r * 3 + i].f64();
            let m = (0..nt).map(|j| p(j, 0)).fold(f64::NEG_INFINITY, f64::max);
            m + (0..nt)
                .map(|j| p(j, 1) * (p(j, 0) - m).exp())
                .sum::<f64>()
                .ln()
        })
        .collect();
    let mut grad = vec![T::from_f64(f64::NAN); rows * v];
    for (j, (t, e)) in tiles.iter().zip(&exps).enumerate() {
        let vt = t.len();
        let mut g = vec![T::from_f64(0.0); rows * vt];
        for r in 0..rows {
            let (k, gt) = (factors[(r * nt + j) * 2], factors[(r * nt + j) * 2 + 1]);
            for c in 0..vt {
                g[r * vt + c] = T::from_acc(k * e[r * vt + c].to_acc());
            }
            let tr = targets[r];
            if tr >= t.start as i64 && tr < t.end as i64 {
                g[r * vt + tr as usize - t.start] = T::from_acc(gt);
            }
        }
        put_cols(&g, rows, v, t, &mut grad);
    }
    (lse, loss[0], grad)
}

fn check_crossentropy<T: Element>() {
    let mut rng = Rng::new(71);
    // ramp: added per column, so that a row's max moves far along it (the
    // fused path's shift is then raised, rescaling what came before).
    let cases = [
        (1, 1, 0.0, 0.0),
        (7, 33, 0.0, 0.0),
        (5, 13, 500.0, 0.0),
        (3, 257, -40.0, 0.0),
        (4, 150, 0.0, 0.7),
        (3, 40, 0.0, -3.0),
    ];
    for (rows, v, offset, ramp) in cases {
        let mut z: Vec<T> = rng.vec_scaled(rows * v, offset, 3.0);
        for (i, x) in z.iter_mut().enumerate() {
            *x = T::from_f64(x.to_f64() + ramp * (i % v) as f64);
        }
        let mut targets: Vec<i64> = (0..rows).map(|_| rng.below(v) as i64).collect();
        if rows > 2 {
            targets[1] = -100; // ignored
            targets[2] = v as i64 - 1;
        }
        let count = targets.iter().filter(|t| **t >= 0).count().max(1);
        let scale = 1.0 / count as f64;
        let want = ce_ref(&f64s(&z), rows, v, &targets, scale);
        let mut rev = uneven(v);
        rev.reverse();
        let tilings = [vec![0..v], uneven(v), rev];
        for (tiles, in_place) in tilings.iter().flat_map(|t| [(t, false), (t, true)]) {
            let what = |s: &str| {
                format!(
                    "crossentropy {s} rows={rows} V={v} off={offset} ramp={ramp} tiles={} \
                     in_place={in_place}",
                    tiles.len()
                )
            };
            let (lse, loss, grad) = ce_tiled(&z, rows, v, &targets, scale, tiles, in_place);
            check_f64(&lse, &want.lse, T::DTYPE, &what("lse"));
            // loss = sum over kept rows of lse - z[target]; relative to the
            // lse magnitude, as the two terms cancel for large offsets.
            let mag: f64 = want.lse.iter().map(|x| x.abs()).sum::<f64>().max(1.0);
            let le = (loss - want.loss).abs() / mag;
            eprintln!("ERR {:>4} {le:.3e} {}", T::DTYPE.name(), what("loss"));
            assert!(
                le <= tol_of(T::DTYPE),
                "{}: {loss} vs {}",
                what("loss"),
                want.loss
            );
            // dz = scale (softmax - onehot); ignored rows exactly 0
            assert_close(&grad, &want.grad, &what("grad"));
            for (r, t) in targets.iter().enumerate() {
                if *t < 0 {
                    assert!(grad[r * v..(r + 1) * v].iter().all(|x| x.to_f64() == 0.0));
                }
            }
        }
    }
}
per_dtype!(check_crossentropy:
    crossentropy_f32 => f32; crossentropy_f64 => f64; crossentropy_bf16 => bf16; crossentropy_f16 => f16);

#[test]
fn crossentropy_finite_differences() {
    let mut rng = Rng::new(72);
    let (rows, v) = (3, 11);
    let z: Vec<f64> = rng.vec_scaled(rows * v, 0.0, 2.0);
    let targets = [4, -100, 10];
    let tiles = uneven(v);
    for in_place in [false, true] {
        let (_, _, grad) = ce_tiled(&z, rows, v, &targets, 0.5, &tiles, in_place);
        let fd = fd_grad(&z, 1e-6, |z| {
            0.5 * ce_tiled(z, rows, v, &targets, 0.5, &tiles, in_place).1
        });
        // d(0.5 * loss)/dz = 0.5 (softmax - onehot)
        check_fd(&grad, &fd, "crossentropy dz");
    }
}

// ------------------------------------------------------------- optimizers

/// torch.optim.SGD._single_tensor_sgd, transcribed in f64.
struct SgdRef {
    buf: Option<Vec<f64>>,
}

impl SgdRef {
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        p: &mut [f64],
        g: &[f64],
        lr: f64,
        mom: f64,
        damp: f64,
        nesterov: bool,
        wd: f64,
    ) {
        let mut grad = g.to_vec();
        if wd != 0.0 {
            for (d, x) in grad.iter_mut().zip(p.iter()) {
                *d += wd * x; // grad = grad.add(param, alpha=weight_decay)
            }
        }
        if mom != 0.0 {
            let buf = match self.buf.take() {
                None => grad.clone(), // torch.clone(grad).detach()
                Some(mut b) => {
                    for (bv, d) in b.iter_mut().zip(&grad) {
                        *bv = *bv * mom + (1.0 - damp) * d; // buf.mul_(momentum).add_(grad, alpha=1-dampening)
                    }
                    b
                }
            };
            if nesterov {
                for (d, b) in grad.iter_mut().zip(&buf) {
                    *d += mom * b; // grad = grad.add(buf, alpha=momentum)
                }
            } else {
                grad = buf.clone();
            }
            self.buf = Some(buf);
        }
        for (x, d) in p.iter_mut().zip(&grad) {
            *x += -lr * d; // param.add_(grad, alpha=-lr)
        }
    }
}

/// torch.optim.Adam / AdamW (_single_tensor_adam), transcribed in f64.
struct AdamRef {
    m: Vec<f64>,
    v: Vec<f64>,
    step: u64,
}

impl AdamRef {
    #[allow(clippy::too_many_arguments)]
    fn step(
        &mut self,
        p: &mut [f64],
        g: &[f64],
        lr: f64,
        b1: f64,
        b2: f64,
        eps: f64,
        wd: f64,
        decoupled: bool,
    ) {
        self.step += 1;
        let mut grad = g.to_vec();
        if wd != 0.0 {
            if decoupled {
                for x in p.iter_mut() {
                    *x *= 1.0 - lr * wd; // param.mul_(1 - lr * weight_decay)
                }
            } else {
                for (d, x) in grad.iter_mut().zip(p.iter()) {
                    *d += wd * x; // grad = grad.add(param, alpha=weight_decay)
                }
            }
        }
        let bc1 = 1.0 - b1.powf(self.step as f64);
        let bc2 = 1.0 - b2.powf(self.step as f64);
        let step_size = lr / bc1;
        for i in 0..p.len() {
            self.m[i] += (grad[i] - self.m[i]) * (1.0 - b1); // exp_avg.lerp_(grad, 1-beta1)
            self.v[i] = self.v[i] * b2 + (1.0 - b2) * grad[i] * grad[i]; // mul_(beta2).addcmul_(g, g, 1-beta2)
            let denom = self.v[i].sqrt() / bc2.sqrt() + eps; // (v.sqrt() / sqrt(bc2)).add_(eps)
            p[i] += -step_size * self.m[i] / denom; // param.addcdiv_(m, denom, value=-step_size)
        }
    }
}

const OPT_STEPS: usize = 6;

fn check_sgd<P: Element, G: Element>() {
    let n = 37;
    let configs = [
        // (lr, momentum, dampening, nesterov, weight_decay)
        (0.1, 0.0, 0.0, false, 0.0),
        (0.05, 0.0, 0.0, false, 0.01),
        (0.1, 0.9, 0.1, false, 0.01),
        (0.1, 0.9, 0.0, true, 0.05),
        (0.01, 0.5, 0.5, false, 0.0),
    ];
    for (ci, &(lr, mom, damp, nest, wd)) in configs.iter().enumerate() {
        let mut rng = Rng::new(81 + ci as u64);
        let mut p: Vec<P> = rng.vec(n);
        let mut pr = f64s(&p);
        let mut buf: Vec<P> = if mom != 0.0 {
            vec![P::from_f64(0.0); n]
        } else {
            vec![]
        };
        let mut r = SgdRef { buf: None };
        for s in 0..OPT_STEPS {
            let g: Vec<G> = rng.vec(n);
            sgd_step(&mut p, &g, &mut buf, lr, mom, damp, nest, wd, s == 0);
            r.step(&mut pr, &f64s(&g), lr, mom, damp, nest, wd);
        }
        let what = format!("sgd lr={lr} momentum={mom} dampening={damp} nesterov={nest} wd={wd}");
        assert_close(&p, &pr, &what);
        if mom != 0.0 {
            assert_close(
                &buf,
                r.buf.as_ref().unwrap(),
                &format!("{what} momentum_buf"),
            );
        }
    }
}
per_dtype!(check_sgd: sgd_f32 => f32, f32; sgd_f64 => f64, f64; sgd_f32_grad_bf16 => f32, bf16);

fn check_adam<P: Element, G: Element>() {
    let n = 41;
    let configs = [
        // (lr, beta1, beta2, eps, weight_decay, decoupled)
        (1e-3, 0.9, 0.999, 1e-8, 0.0, false),
        (1e-2, 0.9, 0.999, 1e-8, 0.1, false),
        (1e-2, 0.9, 0.95, 1e-8, 0.1, true),
        (3e-3, 0.3, 0.99, 1e-6, 0.01, true), // beta1 < 0.5: torch's other lerp branch
    ];
    for (ci, &(lr, b1, b2, eps, wd, dec)) in configs.iter().enumerate() {
        let mut rng = Rng::new(91 + ci as u64);
        let mut p: Vec<P> = rng.vec(n);
        let mut pr = f64s(&p);
        let (mut m, mut v) = (vec![P::from_f64(0.0); n], vec![P::from_f64(0.0); n]);
        let mut r = AdamRef {
            m: vec![0.0; n],
            v: vec![0.0; n],
            step: 0,
        };
        for s in 1..=OPT_STEPS as u64 {
            let g: Vec<G> = rng.vec(n);
            adam_step(&mut p, &g, &mut m, &mut v, s, lr, b1, b2, eps, wd, dec);
            r.step(&mut pr, &f64s(&g), lr, b1, b2, eps, wd, dec);
        }
        let what = format!("adam lr={lr} betas=({b1},{b2}) eps={eps} wd={wd} decoupled={dec}");
        assert_close(&p, &pr, &what);
        assert_close(&m, &r.m, &format!("{what} exp_avg"));
        assert_close(&v, &r.v, &format!("{what} exp_avg_sq"));
        // The updates themselves (p moved by ~lr per step), not only p; in
        // f64 only, as f32 storage of p ~ 1 already rounds at 6e-8 a step.
        if P::DTYPE != DType::F64 {
            continue;
        }
        let p0 = f64s(&Rng::new(91 + ci as u64).vec::<P>(n));
        let du: Vec<f64> = f64s(&p).iter().zip(&p0).map(|(a, b)| a - b).collect();
        let dr: Vec<f64> = pr.iter().zip(&p0).map(|(a, b)| a - b).collect();
        assert_close(
            &du.iter().map(|x| P::from_f64(*x)).collect::<Vec<P>>(),
            &dr,
            &format!("{what} p - p0"),
        );
    }
}
per_dtype!(check_adam: adam_f32 => f32, f32; adam_f64 => f64, f64; adam_f32_grad_bf16 => f32, bf16);

// ------------------------------------------------------ property tests

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// LayerNorm statistics and softmax statistics are independent of how
    /// the reduced axis is cut (to f64 rounding).
    #[test]
    fn split_reductions_match_unsplit(
        rows in 1usize..4,
        pieces in proptest::collection::vec(1usize..9, 1..6),
        seed in any::<u64>(),
    ) {
        let c: usize = pieces.iter().sum();
        let tiles = cuts(c, &pieces);
        let mut rng = Rng::new(seed);
        let x: Vec<f64> = rng.vec_scaled(rows * c, 3.0, 2.0);
        let ones = vec![1.0; c];
        let zeros = vec![0.0; c];
        let (y1, _) = ln_fwd_tiled(&x, &ones, &zeros, rows, c, 1e-5, &tiles);
        let (y2, _) = ln_fwd_tiled(&x, &ones, &zeros, rows, c, 1e-5, &[0..c]);
        prop_assert!(rel_err(&y1, &y2) < 1e-12);
        let targets = vec![0i64; rows];
        for in_place in [false, true] {
            let (l1, _, g1) = ce_tiled(&x, rows, c, &targets, 1.0, &tiles, in_place);
            let (l2, _, g2) = ce_tiled(&x, rows, c, &targets, 1.0, &[0..c], in_place);
            prop_assert!(rel_err(&l1, &l2) < 1e-13);
            prop_assert!(rel_err(&g1, &g2) < 1e-12);
        }
    }
}
