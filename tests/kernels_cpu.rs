//! CPU tile kernels against independent naive f64 references.
//!
//! Inputs are random (a fixed splitmix64 stream), rounded to the storage
//! dtype first; the reference is computed in f64 from those rounded inputs,
//! so the measured error is the kernel's own (accumulation and the final
//! rounding), as a relative Frobenius error ||x - ref|| / ||ref||.
//!
//! Tolerances (`tol`): f64 1e-12, f32 1e-5, bf16 1e-2, f16 2e-3. The worst
//! errors measured over these cases: f64 1.8e-14 (a short sum that nearly
//! cancels), f32 3.0e-6 (a tiny gemm where alpha*AB and beta*C nearly
//! cancel), bf16 3.3e-3 and f16 4.6e-4 (the output rounding, eps/2 per
//! element, dominates). That leaves a 3x-50x margin, so the tolerances stay
//! at the DESIGN.md-style values rather than being tightened per case.

use gpt2rs::dtype::GemmCompute;
use gpt2rs::kernels::cpu::copy::{cast_block, copy_block};
use gpt2rs::kernels::cpu::elementwise::{add, axpy, cast, fill, scale};
use gpt2rs::kernels::cpu::gemm::{gemm, gemm_cols, gemm_flops};
use gpt2rs::kernels::cpu::gemm_small;
use gpt2rs::kernels::cpu::reduce::{
    norm_from_ssq, ssq_init, ssq_merge, ssq_update, sum_all, sum_axis,
};
use gpt2rs::{DType, Element};
use half::{bf16, f16};
use proptest::prelude::*;

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
    /// `len` values uniform in [-1, 1), rounded to T.
    fn vec<T: Element>(&mut self, len: usize) -> Vec<T> {
        (0..len).map(|_| T::from_f64(self.uniform())).collect()
    }
}

fn f64s<T: Element>(x: &[T]) -> Vec<f64> {
    x.iter().map(|v| v.to_f64()).collect()
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

fn tol<T: Element>() -> f64 {
    match T::DTYPE {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::BF16 => 1e-2,
        DType::F16 => 2e-3,
    }
}

fn assert_close<T: Element>(got: &[T], want: &[f64], what: &str) {
    let g = f64s(got);
    assert!(
        g.iter().all(|v| v.is_finite()),
        "{what}: non-finite output {g:?}"
    );
    let e = rel_err(&g, want);
    assert!(
        e <= tol::<T>(),
        "{what} ({}): rel err {e:e} > {:e}",
        T::DTYPE,
        tol::<T>()
    );
}

/// One #[test] per dtype for a generic check function.
macro_rules! per_dtype {
    ($check:ident: $($name:ident => $t:ty),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                $check::<$t>();
            }
        )*
    };
}

const SIZES: &[usize] = &[1, 3, 7, 17, 33, 65];

// ------------------------------------------------------------------ gemm

/// Naive f64 batched gemm from the stored (row-major) operands.
#[allow(clippy::too_many_arguments)]
fn gemm_ref(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
    a: &[f64],
    b: &[f64],
    beta: f64,
    c: &[f64],
) -> Vec<f64> {
    let mut out = vec![0.0; m * n * batch];
    for bi in 0..batch {
        let (a, b) = (&a[bi * m * k..], &b[bi * k * n..]);
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av * bv;
                }
                let c0 = if beta == 0.0 {
                    0.0
                } else {
                    beta * c[bi * m * n + i * n + j]
                };
                out[bi * m * n + i * n + j] = alpha * s + c0;
            }
        }
    }
    out
}

/// Every (m, n, k) from SIZES, plus one shape large enough for the packed
/// (cache-blocked) path; all four transposes, batch 1 and 3; the (alpha,
/// beta) pairs rotate through the cases, beta == 0 with C pre-filled with NaN.
fn check_gemm<T: Element>() {
    let mut rng = Rng::new(1);
    let mut shapes = vec![(129, 67, 257), (2, 2, 2)];
    for &m in SIZES {
        for &n in SIZES {
            for &k in SIZES {
                shapes.push((m, n, k));
            }
        }
    }
    let scalars = [
        (1.0, 0.0),
        (0.5, -1.5),
        (-2.0, 1.0),
        (1.0, 1.0),
        (0.75, 0.0),
    ];
    let mut case = 0;
    for &(m, n, k) in &shapes {
        for batch in [1, 3] {
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let (alpha, beta) = scalars[case % scalars.len()];
                case += 1;
                let a = rng.vec::<T>(m * k * batch);
                let b = rng.vec::<T>(k * n * batch);
                let mut c = if beta == 0.0 {
                    vec![T::from_f64(f64::NAN); m * n * batch]
                } else {
                    rng.vec::<T>(m * n * batch)
                };
                let (af, bf, cf) = (f64s(&a), f64s(&b), f64s(&c));
                let want = gemm_ref(ta, tb, m, n, k, batch, alpha, &af, &bf, beta, &cf);
                gemm(ta, tb, m, n, k, batch, alpha, &a, &b, beta, &mut c);
                let what = format!(
                    "gemm ta={ta} tb={tb} m={m} n={n} k={k} batch={batch} alpha={alpha} beta={beta}"
                );
                assert_close(&c, &want, &what);
            }
        }
    }
}
per_dtype!(check_gemm: gemm_f32 => f32, gemm_f64 => f64, gemm_bf16 => bf16, gemm_f16 => f16);

/// k == 0 and alpha == 0: C = beta * C, and neither A nor B is read (they
/// hold NaN here); beta == 0 overwrites NaN in C with zeros.
fn check_gemm_degenerate<T: Element>() {
    let mut rng = Rng::new(2);
    let (m, n, batch) = (7, 5, 2);
    for k in [0, 3] {
        let a = vec![T::from_f64(f64::NAN); m * k * batch];
        let b = vec![T::from_f64(f64::NAN); k * n * batch];
        let alpha = if k == 0 { 1.5 } else { 0.0 };
        let c0 = rng.vec::<T>(m * n * batch);
        let mut c = c0.clone();
        gemm(false, true, m, n, k, batch, alpha, &a, &b, -2.0, &mut c);
        let want: Vec<f64> = f64s(&c0).iter().map(|v| -2.0 * v).collect();
        assert_close(&c, &want, &format!("gemm k={k} alpha={alpha} beta=-2"));
        let mut c = vec![T::from_f64(f64::NAN); m * n * batch];
        gemm(true, false, m, n, k, batch, alpha, &a, &b, 0.0, &mut c);
        assert!(c.iter().all(|v| v.to_f64() == 0.0), "gemm k={k} beta=0");
    }
    // Empty outputs are no-ops.
    gemm::<T>(
        false,
        false,
        0,
        3,
        4,
        2,
        1.0,
        &[],
        &[T::default(); 24],
        0.0,
        &mut [],
    );
    gemm::<T>(false, false, 3, 4, 5, 0, 1.0, &[], &[], 0.0, &mut []);
}
per_dtype!(check_gemm_degenerate: gemm_degenerate_f32 => f32, gemm_degenerate_f64 => f64,
    gemm_degenerate_bf16 => bf16, gemm_degenerate_f16 => f16);

/// `gemm_cols` writes one block of columns of a wider C and leaves the
/// others alone: blocks at the start, middle and end of the rows, both
/// layouts of B, beta 0 (the block NaN) and not, row counts that take the
/// few-row kernel (f32) and the crate, and the bf16 compute mode.
fn check_gemm_cols<T: Element>() {
    let mut rng = Rng::new(3);
    let ldc = 37;
    for (m, k) in [(1, 5), (6, 9), (33, 17)] {
        for (c0, n) in [(0, 8), (11, 16), (29, 8), (0, 37)] {
            for tb in [false, true] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, 1.0)] {
                    let a = rng.vec::<T>(m * k);
                    let b = rng.vec::<T>(k * n);
                    let mut c = rng.vec::<T>(m * ldc);
                    if beta == 0.0 {
                        for row in c.chunks_exact_mut(ldc) {
                            row[c0..c0 + n].fill(T::from_f64(f64::NAN));
                        }
                    }
                    let c_in = c.clone();
                    let blk: Vec<f64> = c
                        .chunks_exact(ldc)
                        .flat_map(|r| f64s(&r[c0..c0 + n]))
                        .collect();
                    let (af, bf) = (f64s(&a), f64s(&b));
                    let want = gemm_ref(false, tb, m, n, k, 1, alpha, &af, &bf, beta, &blk);
                    for compute in [GemmCompute::Default, GemmCompute::Bf16] {
                        let mut got = c_in.clone();
                        let shape = (tb, m, n, k);
                        gemm_cols(compute, shape, alpha, &a, &b, beta, &mut got, (ldc, c0));
                        let what =
                            format!("gemm_cols m={m} k={k} c0={c0} n={n} tb={tb} beta={beta}");
                        let got_blk: Vec<T> = got
                            .chunks_exact(ldc)
                            .flat_map(|r| r[c0..c0 + n].to_vec())
                            .collect();
                        if compute == GemmCompute::Default {
                            assert_close(&got_blk, &want, &what);
                        }
                        for (g, i) in got.chunks_exact(ldc).zip(c_in.chunks_exact(ldc)) {
                            let outside = |r: &[T]| [&r[..c0], &r[c0 + n..]].concat();
                            assert!(outside(g) == outside(i), "{what}: columns outside changed");
                        }
                    }
                }
            }
        }
    }
}
per_dtype!(check_gemm_cols: gemm_cols_f32 => f32, gemm_cols_f64 => f64, gemm_cols_bf16 => bf16,
    gemm_cols_f16 => f16);

/// The few-row AVX-512 kernel on its own: every row count up to MAX_ROWS,
/// panel and lane edges in n and k, both layouts of B, beta 0 (C NaN) and
/// not; and each row's result bitwise independent of the rows beside it
/// (decoding one sequence or eight gives the same bits).
#[test]
fn gemm_small_matches_the_reference_and_rows_are_independent() {
    if !gemm_small::available() {
        eprintln!("SKIPPED gemm_small: this CPU has no AVX-512 F (the gemm crate serves it)");
        return;
    }
    let mut rng = Rng::new(5);
    for tb in [false, true] {
        for m in 1..=gemm_small::MAX_ROWS {
            for &(n, k) in &[
                (1, 1),
                (15, 17),
                (16, 16),
                (33, 31),
                (100, 64),
                (64, 100),
                (7, 200),
            ] {
                let beta = if m % 2 == 0 { 0.0 } else { 0.5 };
                let a = rng.vec::<f32>(m * k);
                let b = rng.vec::<f32>(k * n);
                let c0 = if beta == 0.0 {
                    vec![f32::NAN; m * n]
                } else {
                    rng.vec::<f32>(m * n)
                };
                let want = gemm_ref(
                    false,
                    tb,
                    m,
                    n,
                    k,
                    1,
                    1.5,
                    &f64s(&a),
                    &f64s(&b),
                    beta,
                    &f64s(&c0),
                );
                let mut c = c0.clone();
                gemm_small::gemm_small(tb, m, n, k, 1.5, &a, &b, beta as f32, &mut c);
                assert_close(&c, &want, &format!("gemm_small tb={tb} m={m} n={n} k={k}"));
                for i in 0..m {
                    let mut ci = c0[i * n..(i + 1) * n].to_vec();
                    gemm_small::gemm_small(
                        tb,
                        1,
                        n,
                        k,
                        1.5,
                        &a[i * k..(i + 1) * k],
                        &b,
                        beta as f32,
                        &mut ci,
                    );
                    assert!(
                        ci.iter()
                            .zip(&c[i * n..])
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "gemm_small tb={tb} m={m} n={n} k={k}: row {i} depends on the other rows"
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_flops_counts_multiply_and_add() {
    assert_eq!(gemm_flops(2, 3, 4, 5), 240.0);
}

// ----------------------------------------------------------- elementwise

fn check_elementwise<T: Element>() {
    let mut rng = Rng::new(3);
    for &len in [0].iter().chain(SIZES).chain(&[1000]) {
        let x = rng.vec::<T>(len);
        let y0 = rng.vec::<T>(len);
        let (xf, yf) = (f64s(&x), f64s(&y0));

        let mut y = y0.clone();
        fill(0.3, &mut y);
        assert!(y.iter().all(|v| *v == T::from_f64(0.3)), "fill");

        let mut y = y0.clone();
        scale(-1.75, &mut y);
        let want: Vec<f64> = yf.iter().map(|v| -1.75 * v).collect();
        assert_close(&y, &want, "scale");

        let mut y = y0.clone();
        axpy(0.625, &x, &mut y);
        let want: Vec<f64> = xf.iter().zip(&yf).map(|(x, y)| 0.625 * x + y).collect();
        assert_close(&y, &want, "axpy");

        for (alpha, beta) in [(1.5, -0.5), (-1.0, 1.0), (2.0, 0.0)] {
            let mut y = if beta == 0.0 {
                vec![T::from_f64(f64::NAN); len]
            } else {
                y0.clone()
            };
            add(alpha, &x, beta, &mut y);
            let want: Vec<f64> = if beta == 0.0 {
                xf.iter().map(|x| alpha * x).collect()
            } else {
                xf.iter()
                    .zip(&yf)
                    .map(|(x, y)| alpha * x + beta * y)
                    .collect()
            };
            assert_close(&y, &want, &format!("add alpha={alpha} beta={beta}"));
        }
    }
}
per_dtype!(check_elementwise: elementwise_f32 => f32, elementwise_f64 => f64,
    elementwise_bf16 => bf16, elementwise_f16 => f16);

/// Values that stress conversions: zeros of both signs, infinities, NaN,
/// f16/bf16 overflow and subnormals, exact bf16/f16 ties, plus random bits.
fn cast_inputs(rng: &mut Rng) -> Vec<f64> {
    let mut v = vec![
        0.0,
        -0.0,
        1.0,
        -1.0,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        65504.0,
        65520.0,
        1e5,
        -1e5,
        6e-8,
        1e-40,
        3.4e38,
        1e300,
        1e-300,
        1.0 + 1.0 / 256.0,        // bf16 tie, rounds down to even
        1.0 + 3.0 / 256.0,        // bf16 tie, rounds up to even
        1.0 + 1.0 / 2048.0,       // f16 tie
        1.0 + 1.0 / 256.0 + 1e-9, // just above a bf16 tie
    ];
    for _ in 0..2000 {
        v.push(f32::from_bits(rng.next_u64() as u32) as f64);
        v.push(rng.uniform() * 10f64.powi((rng.next_u64() % 20) as i32 - 10));
    }
    v
}

fn same_value(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a.to_bits() == b.to_bits()
}

/// cast S -> D must equal the correctly rounded per-element conversion
/// D::from_f64 of the exact value (S -> f64 is exact), bit for bit.
fn check_cast_from<S: Element>() {
    fn to<S: Element, D: Element>(xs: &[S]) {
        let mut y = vec![D::default(); xs.len()];
        cast(xs, &mut y);
        for (i, (x, yv)) in xs.iter().zip(&y).enumerate() {
            let want = D::from_f64(x.to_f64()).to_f64();
            assert!(
                same_value(yv.to_f64(), want),
                "cast {} -> {} at {i}: {x:?} gave {yv:?}, want {want}",
                S::DTYPE,
                D::DTYPE
            );
        }
    }
    let mut rng = Rng::new(4);
    let xs: Vec<S> = cast_inputs(&mut rng).into_iter().map(S::from_f64).collect();
    to::<S, f32>(&xs);
    to::<S, f64>(&xs);
    to::<S, bf16>(&xs);
    to::<S, f16>(&xs);
}
per_dtype!(check_cast_from: cast_from_f32 => f32, cast_from_f64 => f64,
    cast_from_bf16 => bf16, cast_from_f16 => f16);

/// The vectorized f32 -> bf16 rounding matches half's on every kind of bit
/// pattern (NaN payloads only need to stay NaN).
#[test]
fn cast_f32_to_bf16_matches_half_on_random_bits() {
    let mut rng = Rng::new(5);
    let xs: Vec<f32> = (0..200_000)
        .map(|_| f32::from_bits(rng.next_u64() as u32))
        .collect();
    let mut y = vec![bf16::ZERO; xs.len()];
    cast(&xs, &mut y);
    for (x, yv) in xs.iter().zip(&y) {
        let want = bf16::from_f32(*x);
        assert!(
            (yv.is_nan() && want.is_nan()) || yv.to_bits() == want.to_bits(),
            "{x:e}: {yv} vs {want}"
        );
    }
}

// ---------------------------------------------------------------- reduce

fn check_sum_axis<T: Element>() {
    let mut rng = Rng::new(6);
    let shapes = [
        (1, 1, 1),
        (3, 7, 1),
        (1, 17, 33),
        (7, 3, 65),
        (2, 1500, 3), // len beyond one accumulation block
        (2, 5, 4100), // inner beyond one column strip
        (3, 1100, 1), // long row sums
        (0, 3, 4),
        (2, 0, 3),
    ];
    for &(outer, len, inner) in &shapes {
        for (alpha, beta) in [(1.0, 0.0), (0.5, 2.0), (-1.0, 1.0)] {
            let x = rng.vec::<T>(outer * len * inner);
            let y0 = rng.vec::<T>(outer * inner);
            let mut y = if beta == 0.0 {
                vec![T::from_f64(f64::NAN); outer * inner]
            } else {
                y0.clone()
            };
            let (xf, yf) = (f64s(&x), f64s(&y0));
            let mut want = vec![0.0; outer * inner];
            for o in 0..outer {
                for i in 0..inner {
                    let mut s = 0.0;
                    for a in 0..len {
                        s += xf[(o * len + a) * inner + i];
                    }
                    let yv = if beta == 0.0 {
                        0.0
                    } else {
                        beta * yf[o * inner + i]
                    };
                    want[o * inner + i] = alpha * s + yv;
                }
            }
            sum_axis(outer, len, inner, alpha, &x, beta, &mut y);
            let what = format!("sum_axis [{outer},{len},{inner}] alpha={alpha} beta={beta}");
            assert_close(&y, &want, &what);
        }
    }
}
per_dtype!(check_sum_axis: sum_axis_f32 => f32, sum_axis_f64 => f64,
    sum_axis_bf16 => bf16, sum_axis_f16 => f16);

fn check_sum_all<T: Element>() {
    let mut rng = Rng::new(7);
    for len in [0, 1, 3, 7, 17, 33, 65, 5000] {
        for (alpha, beta) in [(1.0, 0.0), (0.25, -3.0)] {
            let x = rng.vec::<T>(len);
            let y0 = rng.vec::<T>(1);
            let mut y = if beta == 0.0 {
                vec![T::from_f64(f64::NAN)]
            } else {
                y0.clone()
            };
            let s: f64 = f64s(&x).iter().sum();
            let want = alpha * s
                + if beta == 0.0 {
                    0.0
                } else {
                    beta * y0[0].to_f64()
                };
            sum_all(alpha, &x, beta, &mut y);
            assert_close(
                &y,
                &[want],
                &format!("sum_all len={len} alpha={alpha} beta={beta}"),
            );
        }
    }
}
per_dtype!(check_sum_all: sum_all_f32 => f32, sum_all_f64 => f64,
    sum_all_bf16 => bf16, sum_all_f16 => f16);

/// ||x|| through ssq_update in pieces, through ssq_merge of per-piece
/// accumulators, and norm_from_ssq with alpha/beta.
fn check_norm<T: Element>() {
    let mut rng = Rng::new(8);
    for len in [0, 1, 3, 7, 17, 33, 65, 3000] {
        let x = rng.vec::<T>(len);
        let nrm = f64s(&x).iter().map(|v| v * v).sum::<f64>().sqrt();
        let pieces: Vec<&[T]> = x.chunks(len.div_ceil(3).max(1)).collect();

        let mut acc = [f64::NAN; 2];
        ssq_init(&mut acc);
        for p in &pieces {
            ssq_update(p, &mut acc);
        }
        let mut merged = [0.0; 2];
        ssq_init(&mut merged);
        for p in pieces.iter().rev() {
            let mut a = [0.0; 2];
            ssq_init(&mut a);
            ssq_update(p, &mut a);
            ssq_merge(&a, &mut merged);
        }

        for acc in [acc, merged] {
            let mut y = vec![T::from_f64(f64::NAN)];
            norm_from_ssq(&acc, 2.0, 0.0, &mut y);
            assert_close(&y, &[2.0 * nrm], &format!("norm len={len}"));
            let y0 = rng.vec::<T>(1);
            let mut y = y0.clone();
            norm_from_ssq(&acc, -0.5, 1.5, &mut y);
            let want = -0.5 * nrm + 1.5 * y0[0].to_f64();
            assert_close(&y, &[want], &format!("norm len={len} beta=1.5"));
        }
    }
}
per_dtype!(check_norm: norm_f32 => f32, norm_f64 => f64, norm_bf16 => bf16, norm_f16 => f16);

fn norm_f64_of(x: &[f64]) -> f64 {
    let mut acc = [0.0; 2];
    ssq_init(&mut acc);
    ssq_update(x, &mut acc);
    let mut y = [0.0f64];
    norm_from_ssq(&acc, 1.0, 0.0, &mut y);
    y[0]
}

#[test]
fn norm_neither_overflows_nor_underflows() {
    let mut rng = Rng::new(9);
    let base: Vec<f64> = (0..2500).map(|_| rng.uniform()).collect();
    let unit = base.iter().map(|v| v * v).sum::<f64>().sqrt();
    // 1e200^2 overflows and 1e-200^2 underflows; 1e-310 is subnormal, where
    // 1/scale overflows and the kernel must divide instead.
    for s in [1e200, 1e-200, 1e-310, 1e300] {
        let x: Vec<f64> = base.iter().map(|v| v * s).collect();
        let got = norm_f64_of(&x);
        // The scaled inputs are not exact multiples of `base` for subnormal
        // s, so compare against the norm of what was actually stored.
        let want = if s < 1e-300 {
            x.iter().map(|v| (v / s) * (v / s)).sum::<f64>().sqrt() * s
        } else {
            unit * s
        };
        let e = ((got - want) / want).abs();
        assert!(
            got.is_finite() && e < 1e-12,
            "scale {s:e}: got {got:e}, want {want:e}, err {e:e}"
        );
    }
    // Mixed magnitudes in one call: the small ones must not be lost relative
    // to a later-growing scale, nor overflow an earlier small scale.
    let x = [1e-200, 3e200, 4e200, 1e-200];
    assert!((norm_f64_of(&x) / 5e200 - 1.0).abs() < 1e-15);
    // Non-finite inputs: NaN wins, then infinity.
    assert_eq!(norm_f64_of(&[]), 0.0);
    assert_eq!(norm_f64_of(&[0.0, -0.0]), 0.0);
    assert!(norm_f64_of(&[1.0, f64::NAN, 2.0]).is_nan());
    assert!(norm_f64_of(&[0.0, f64::NAN]).is_nan());
    assert_eq!(norm_f64_of(&[1.0, f64::NEG_INFINITY, 2.0]), f64::INFINITY);
    assert!(norm_f64_of(&[f64::INFINITY, f64::NAN]).is_nan());
    assert!(norm_f64_of(&[f64::NAN, f64::INFINITY]).is_nan());
    // Across chunk and merge boundaries too.
    let mut big = vec![1.0; 5000];
    big[4500] = f64::NAN;
    assert!(norm_f64_of(&big).is_nan());
    let mut a = [0.0; 2];
    ssq_init(&mut a);
    ssq_update(&[f64::INFINITY], &mut a);
    let mut b = [0.0; 2];
    ssq_init(&mut b);
    ssq_update(&[f64::NAN], &mut b);
    ssq_merge(&b, &mut a);
    let mut y = [0.0f64];
    norm_from_ssq(&a, 1.0, 0.0, &mut y);
    assert!(y[0].is_nan());
}

// ------------------------------------------------------------------ copy

fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for d in (0..shape.len().saturating_sub(1)).rev() {
        s[d] = s[d + 1] * shape[d + 1];
    }
    s
}

/// Expected dst after a block copy: walk every dst index; inside the block
/// region take the matching src element, elsewhere keep the old value.
fn copy_ref<T: Copy>(
    src: &[T],
    src_shape: &[usize],
    src_offset: &[usize],
    dst: &[T],
    dst_shape: &[usize],
    dst_offset: &[usize],
    block: &[usize],
) -> Vec<T> {
    let (ss, ds) = (strides(src_shape), strides(dst_shape));
    let mut out = dst.to_vec();
    for (flat, o) in out.iter_mut().enumerate() {
        let mut src_flat = 0;
        let mut inside = true;
        for d in 0..dst_shape.len() {
            let j = flat / ds[d] % dst_shape[d];
            if j < dst_offset[d] || j >= dst_offset[d] + block[d] {
                inside = false;
                break;
            }
            src_flat += (j - dst_offset[d] + src_offset[d]) * ss[d];
        }
        if inside {
            *o = src[src_flat];
        }
    }
    out
}

/// A random block problem: per dim (block, src offset, src slack, dst offset,
/// dst slack).
type Problem = Vec<(usize, usize, usize, usize, usize)>;

fn problem() -> impl Strategy<Value = Problem> {
    prop::collection::vec(
        (0usize..5, 0usize..3, 0usize..3, 0usize..3, 0usize..3),
        0..=4,
    )
}

#[allow(clippy::type_complexity)]
fn unpack(p: &Problem) -> (Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>, Vec<usize>) {
    let block: Vec<usize> = p.iter().map(|d| d.0).collect();
    let so: Vec<usize> = p.iter().map(|d| d.1).collect();
    let ss: Vec<usize> = p.iter().map(|d| d.0 + d.1 + d.2).collect();
    let dof: Vec<usize> = p.iter().map(|d| d.3).collect();
    let ds: Vec<usize> = p.iter().map(|d| d.0 + d.3 + d.4).collect();
    (block, so, ss, dof, ds)
}

proptest! {
    #[test]
    fn copy_block_matches_index_reference(p in problem()) {
        let (block, so, ss, dof, ds) = unpack(&p);
        let src: Vec<u32> = (0..ss.iter().product::<usize>() as u32).collect();
        let dst0: Vec<u32> = vec![u32::MAX; ds.iter().product()];
        let want = copy_ref(&src, &ss, &so, &dst0, &ds, &dof, &block);
        let mut dst = dst0.clone();
        copy_block(&src, &ss, &so, &mut dst, &ds, &dof, &block);
        prop_assert_eq!(dst, want);
    }

    #[test]
    fn cast_block_matches_index_reference(p in problem(), seed in any::<u64>()) {
        let (block, so, ss, dof, ds) = unpack(&p);
        let mut rng = Rng::new(seed);
        let src: Vec<f32> = rng.vec(ss.iter().product());
        let want_f32 = copy_ref(&src, &ss, &so, &vec![f32::NAN; ds.iter().product()], &ds, &dof, &block);
        let want: Vec<u16> = want_f32.iter().map(|v| bf16::from_f32(*v).to_bits()).collect();
        let mut dst = vec![bf16::NAN; ds.iter().product()];
        cast_block(&src, &ss, &so, &mut dst, &ds, &dof, &block);
        let got: Vec<u16> = dst.iter().map(|v| v.to_bits()).collect();
        prop_assert_eq!(got, want);
    }
}

/// Whole rows on both sides: the fast path merges them into one run.
#[test]
fn copy_block_whole_rows_and_long_runs() {
    let src: Vec<f32> = (0..6 * 1000).map(|v| v as f32).collect();
    // Rows 2..5 of a [6, 1000] array into rows 1..4 of a [5, 1000] array.
    let mut dst = vec![-1.0f32; 5 * 1000];
    copy_block(
        &src,
        &[6, 1000],
        &[2, 0],
        &mut dst,
        &[5, 1000],
        &[1, 0],
        &[3, 1000],
    );
    let want = copy_ref(
        &src,
        &[6, 1000],
        &[2, 0],
        &vec![-1.0; 5000],
        &[5, 1000],
        &[1, 0],
        &[3, 1000],
    );
    assert_eq!(dst, want);
    // Rank 0: one element.
    let mut one = [0.0f64];
    copy_block(&[7.0f64], &[], &[], &mut one, &[], &[], &[]);
    assert_eq!(one, [7.0]);
    let mut one = [f16::ZERO];
    cast_block(&[7.0f64], &[], &[], &mut one, &[], &[], &[]);
    assert_eq!(one[0].to_f64(), 7.0);
}
