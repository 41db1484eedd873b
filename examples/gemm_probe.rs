//! Throwaway timing probe: single-threaded `kernels::cpu::gemm::gemm::<f32>`
//! at GPT-2 tile shapes against numpy.matmul (OpenBLAS) with one thread, and
//! numpy with two threads at whole-layer shapes.
//!
//! ```text
//! cargo run --release --example gemm_probe            # numpy via python3
//! PYTHON=/tmp/probe-venv/bin/python cargo run --release --example gemm_probe
//! ```
//!
//! Each timing is the best of several repeats after a warm-up. numpy's
//! numbers come from a child python process; without numpy only the Rust
//! column is printed.

use gpt2rs::kernels::cpu::gemm::{gemm, gemm_flops};
use std::process::Command;
use std::time::Instant;

/// (trans_a, trans_b, m, n, k)
const TILE_SHAPES: &[(bool, bool, usize, usize, usize)] = &[
    (false, false, 256, 256, 256),
    (false, false, 512, 512, 512),
    (false, false, 1024, 768, 768),
    (false, false, 512, 2304, 768),
    (false, false, 1024, 3072, 768),
    (false, false, 1024, 768, 3072),
    // Backward shapes: dX = dY @ W^T and dW = X^T @ dY.
    (false, true, 1024, 768, 768),
    (true, false, 768, 768, 1024),
    (true, true, 512, 512, 512),
];

/// Whole-layer shapes for numpy with 2 threads (the project's target).
const LAYER_SHAPES: &[(usize, usize, usize)] = &[(2048, 2304, 768), (2048, 768, 3072)];

fn rand_vec(len: usize, seed: &mut u64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            (*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Best seconds per call of `f` over repeats lasting at least ~0.5 s.
fn time_best(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::INFINITY;
    let start = Instant::now();
    let mut reps = 0;
    while reps < 3 || start.elapsed().as_secs_f64() < 0.5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
        reps += 1;
    }
    best
}

fn rust_gflops(ta: bool, tb: bool, m: usize, n: usize, k: usize) -> f64 {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let a = rand_vec(m * k, &mut seed);
    let b = rand_vec(k * n, &mut seed);
    let mut c = vec![0.0f32; m * n];
    let s = time_best(|| gemm(ta, tb, m, n, k, 1, 1.0, &a, &b, 0.0, &mut c));
    gemm_flops(m, n, k, 1) / s / 1e9
}

/// GFLOP/s of numpy.matmul for each shape, or None without numpy.
fn numpy_gflops(shapes: &[(bool, bool, usize, usize, usize)], threads: usize) -> Option<Vec<f64>> {
    let list: Vec<String> = shapes
        .iter()
        .map(|&(ta, tb, m, n, k)| format!("({},{},{},{},{})", ta as u8, tb as u8, m, n, k))
        .collect();
    let script = format!(
        r#"
import time, numpy as np
rng = np.random.default_rng(0)
for ta, tb, m, n, k in [{}]:
    a = rng.random((k, m) if ta else (m, k), dtype=np.float32)
    b = rng.random((n, k) if tb else (k, n), dtype=np.float32)
    A = a.T if ta else a
    B = b.T if tb else b
    c = np.empty((m, n), dtype=np.float32)
    np.matmul(A, B, out=c)
    best, t0, reps = 1e9, time.perf_counter(), 0
    while reps < 3 or time.perf_counter() - t0 < 0.5:
        t = time.perf_counter(); np.matmul(A, B, out=c); best = min(best, time.perf_counter() - t); reps += 1
    print(2.0 * m * n * k / best / 1e9)
"#,
        list.join(",")
    );
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg("-c")
        .arg(script)
        .env("OPENBLAS_NUM_THREADS", threads.to_string())
        .env("OMP_NUM_THREADS", threads.to_string())
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "numpy probe failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    (v.len() == shapes.len()).then_some(v)
}

/// Aggregate GFLOP/s of two threads running concurrently, each one
/// single-threaded gemm on its half of the rows of an m x n x k product: what
/// two runtime workers achieve on one layer.
fn rust_two_workers_gflops(m: usize, n: usize, k: usize) -> f64 {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let h = m / 2;
    let a: Vec<Vec<f32>> = (0..2).map(|_| rand_vec(h * k, &mut seed)).collect();
    let b = rand_vec(k * n, &mut seed);
    let mut c: Vec<Vec<f32>> = (0..2).map(|_| vec![0.0f32; h * n]).collect();
    let s = time_best(|| {
        std::thread::scope(|sc| {
            for (ai, ci) in a.iter().zip(c.iter_mut()) {
                let b = &b;
                sc.spawn(move || gemm(false, false, h, n, k, 1, 1.0, ai, b, 0.0, ci));
            }
        })
    });
    gemm_flops(m, n, k, 1) / s / 1e9
}

fn main() {
    let np1 = numpy_gflops(TILE_SHAPES, 1);
    println!("single thread, f32, GFLOP/s");
    println!(
        "{:>4} {:>5} {:>5} {:>5} {:>9} {:>9} {:>7}",
        "op", "m", "n", "k", "gemm-rs", "numpy", "ratio"
    );
    for (i, &(ta, tb, m, n, k)) in TILE_SHAPES.iter().enumerate() {
        let r = rust_gflops(ta, tb, m, n, k);
        let op = format!(
            "{}{}",
            if ta { 'T' } else { 'N' },
            if tb { 'T' } else { 'N' }
        );
        match &np1 {
            Some(v) => println!(
                "{op:>4} {m:>5} {n:>5} {k:>5} {r:>9.1} {:>9.1} {:>7.3}",
                v[i],
                r / v[i]
            ),
            None => println!("{op:>4} {m:>5} {n:>5} {k:>5} {r:>9.1}"),
        }
    }
    let layers: Vec<_> = LAYER_SHAPES
        .iter()
        .map(|&(m, n, k)| (false, false, m, n, k))
        .collect();
    let np2 = numpy_gflops(&layers, 2);
    println!(
        "two threads, whole-layer shapes, GFLOP/s (gemm-rs: 2 concurrent single-threaded halves)"
    );
    println!(
        "{:>4} {:>5} {:>5} {:>5} {:>9} {:>9} {:>7}",
        "op", "m", "n", "k", "gemm-rs", "numpy", "ratio"
    );
    for (i, &(m, n, k)) in LAYER_SHAPES.iter().enumerate() {
        let r = rust_two_workers_gflops(m, n, k);
        match &np2 {
            Some(v) => println!(
                "  NN {m:>5} {n:>5} {k:>5} {r:>9.1} {:>9.1} {:>7.3}",
                v[i],
                r / v[i]
            ),
            None => println!("  NN {m:>5} {n:>5} {k:>5} {r:>9.1}"),
        }
    }
}
