//! Throwaway timing probe: the few-row AVX-512 GEMM (`gemm_small`, used
//! when decoding) against the `gemm` crate at GPT-2 decoding shapes, with B
//! cold (cycled through 400 MiB of copies, as decoding streams the
//! weights). Prints microseconds and GB/s of B per call, best of 7.
//!
//! ```text
//! cargo run --release --example small_probe
//! ```

use gpt2rs::kernels::cpu::gemm_small::gemm_small;
use std::time::Instant;
fn best(mut f: impl FnMut()) -> f64 {
    (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}
/// C = A @ op(B) through the gemm crate itself (kernels::cpu::gemm now
/// routes these shapes to gemm_small), single-threaded.
fn crate_gemm(tb: bool, m: usize, n: usize, k: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // SAFETY: a is m x k, b is k x n (or n x k), c is m x n, row-major, as the strides say.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            b_cs,
            b_rs,
            0.0f32,
            1.0f32,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

fn main() {
    for &(tb, k, n) in &[
        (false, 768usize, 2304usize),
        (false, 768, 1536),
        (false, 1536, 768),
        (true, 768, 8192),
    ] {
        // Enough copies of B to overflow the caches: each call reads cold weights, as decoding does.
        let copies = (400 << 20) / (k * n * 4);
        let bs: Vec<Vec<f32>> = (0..copies)
            .map(|_| {
                (0..k * n)
                    .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
                    .collect()
            })
            .collect();
        let mut next = 0usize;
        let b = bs[0].clone();
        for m in [1usize, 3, 8, 9, 16] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
                .collect();
            let mut c1 = vec![0f32; m * n];
            let mut c2 = vec![0f32; m * n];
            crate_gemm(tb, m, n, k, &a, &b, &mut c1);
            gemm_small(tb, m, n, k, 1.0, &a, &b, 0.0, &mut c2);
            let mut cold = |f: &mut dyn FnMut(&[f32])| {
                next = (next + 1) % copies;
                f(&bs[next])
            };
            let t1 = best(|| cold(&mut |b| crate_gemm(tb, m, n, k, &a, b, &mut c1)));
            let t2 = best(|| cold(&mut |b| gemm_small(tb, m, n, k, 1.0, &a, b, 0.0, &mut c2)));
            let err = c1
                .iter()
                .zip(&c2)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            let gb = (k * n * 4) as f64 / 1e9;
            println!("tb={tb} k={k} n={n} m={m:2}: crate {:6.1} us {:5.1} GB/s | small {:6.1} us {:5.1} GB/s  maxdiff {err:.1e}",
                t1 * 1e6, gb / t1, t2 * 1e6, gb / t2);
        }
    }
}
