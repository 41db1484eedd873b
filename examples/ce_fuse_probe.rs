//! Throwaway timing probe: one LM-head tile of the 4x256 training step
//! (256 rows, 8192 vocabulary columns, hidden 256, f32) on one thread: the
//! three plain GEMMs against the fused LM-head + cross-entropy kernels
//! (`kernels::cpu::lm_head_ce`), so that the difference is what the
//! cross-entropy still costs inside them; and the forward's chunk width.
//!
//! ```text
//! cargo run --release --example ce_fuse_probe [rows vt n]
//! ```
//!
//! Each timing is the median of 15 calls after two warm-up calls; the
//! variants alternate call by call, so a noisy neighbour hits them alike.

use gpt2rs::dtype::GemmCompute;
use gpt2rs::kernels::cpu::gemm::{gemm, gemm_cols};
use gpt2rs::kernels::cpu::lm_head_ce::{
    chunk_cols, dw_tile, dx_tile, fwd_chunk, fwd_tile, merge, part_init, BwdShape, FwdShape,
};
use std::time::Instant;

fn rand_vec(len: usize, seed: &mut u64, scale: f32) -> Vec<f32> {
    (0..len)
        .map(|_| {
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
        })
        .collect()
}

/// Median seconds per call of each of `fs`, called in turn 15 times after
/// two warm-up rounds.
fn time_med(fs: &mut [&mut dyn FnMut()]) -> Vec<f64> {
    let mut t = vec![Vec::new(); fs.len()];
    for round in 0..17 {
        for (f, ti) in fs.iter_mut().zip(&mut t) {
            let s = Instant::now();
            f();
            if round >= 2 {
                ti.push(s.elapsed().as_secs_f64());
            }
        }
    }
    // PROBE_MIN=1: the fastest call instead (the least disturbed, on a
    // shared machine).
    let min = std::env::var_os("PROBE_MIN").is_some();
    t.into_iter()
        .map(|mut v| {
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            if min {
                v[0]
            } else {
                v[v.len() / 2]
            }
        })
        .collect()
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap())
        .collect();
    let (rows, vt, n) = match args[..] {
        [r, v, n] => (r, v, n),
        _ => (256, 8192, 256),
    };
    let mut seed = 0x1234_5678_9abc_def1u64;
    let hf = rand_vec(rows * n, &mut seed, 4.0);
    let wte = rand_vec(vt * n, &mut seed, 0.2);
    let targets: Vec<i64> = (0..rows as i64).map(|r| (r * 31) % vt as i64).collect();
    let logits_n = (rows * vt) as f64;
    let c = GemmCompute::Default;
    let ns = |s: f64| s * 1e9 / logits_n;
    let gf = |s: f64| 2.0 * logits_n * n as f64 / s / 1e9;

    let fs = FwdShape {
        m: rows,
        n: vt,
        k: n,
        vocab_lo: 0,
    };
    let mut e = vec![0.0f32; rows * vt];
    let mut part = vec![0.0f32; rows * 3];
    fwd_tile(c, fs, 1.0, &hf, &wte, 0.0, &targets, &mut e, &mut part);
    let mut factors = vec![0.0f32; rows * 2];
    let mut loss = [0.0f64];
    let all = 0..vt;
    let cols = std::slice::from_ref(&all);
    merge(
        &[&part[..]],
        rows,
        cols,
        &targets,
        1e-3,
        &mut factors,
        &mut loss,
    );
    let bs = BwdShape {
        rows,
        vt,
        n,
        vocab_lo: 0,
        j: 0,
        ntiles: 1,
    };
    let (mut z, mut e2, mut part2) = (vec![0.0f32; rows * vt], e.clone(), part.clone());
    let (mut dx, mut dx2) = (vec![0.0f32; rows * n], vec![0.0f32; rows * n]);
    let (mut dw, mut dw2) = (vec![0.0f32; vt * n], vec![0.0f32; vt * n]);
    let t = time_med(&mut [
        &mut || gemm(false, true, rows, vt, n, 1, 1.0, &hf, &wte, 0.0, &mut z),
        &mut || fwd_tile(c, fs, 1.0, &hf, &wte, 0.0, &targets, &mut e2, &mut part2),
        &mut || gemm(false, false, rows, n, vt, 1, 1.0, &e, &wte, 0.0, &mut dx),
        &mut || dx_tile(c, bs, &e, &wte, &targets, &factors, true, &mut dx2),
        &mut || gemm(true, false, vt, n, rows, 1, 1.0, &e, &hf, 1.0, &mut dw),
        &mut || dw_tile(c, bs, &e, &hf, &targets, &factors, 1.0, &mut dw2),
    ]);
    println!(
        "tile {rows} x {vt}, hidden {n}, f32, one thread; forward chunks of {} columns",
        chunk_cols::<f32>(rows, vt)
    );
    for (name, p, f) in [
        ("fwd", t[0], t[1]),
        ("dx ", t[2], t[3]),
        ("dw ", t[4], t[5]),
    ] {
        println!(
            "  {name} gemm {:7.3} ms ({:5.1} GF/s)   fused {:7.3} ms   cross-entropy {:+.3} ns/logit",
            p * 1e3,
            gf(p),
            f * 1e3,
            ns(f - p)
        );
    }
    let (p, f) = (t[0] + t[2] + t[4], t[1] + t[3] + t[5]);
    println!(
        "  per tile: gemms {:.3} ms, fused {:.3} ms: cross-entropy {:.3} ms = {:.3} ns/logit",
        p * 1e3,
        f * 1e3,
        (f - p) * 1e3,
        ns(f - p)
    );

    // The forward's chunk width, and the chunked GEMM without the epilogue.
    let widths = [128usize, 256, 512, 1024, 2048, vt];
    let mut runs: Vec<Box<dyn FnMut() + '_>> = Vec::new();
    for epi in [true, false] {
        for &w in &widths {
            let (hf, wte, targets) = (&hf, &wte, &targets);
            let mut e = vec![0.0f32; rows * vt];
            let mut part = vec![0.0f32; rows * 3];
            runs.push(Box::new(move || {
                part_init(&mut part);
                let mut c0 = 0;
                while c0 < vt {
                    let wc = w.min(vt - c0);
                    let b = &wte[c0 * n..(c0 + wc) * n];
                    gemm_cols(c, (true, rows, wc, n), 1.0, hf, b, 0.0, &mut e, (vt, c0));
                    if epi {
                        fwd_chunk(&mut e, rows, vt, c0, wc, 0, targets, &mut part);
                    }
                    c0 += wc;
                }
            }));
        }
    }
    let mut plain = || gemm(false, true, rows, vt, n, 1, 1.0, &hf, &wte, 0.0, &mut z);
    let mut fs: Vec<&mut dyn FnMut()> = vec![&mut plain];
    for r in runs.iter_mut() {
        fs.push(r.as_mut());
    }
    let t = time_med(&mut fs);
    let k = widths.len();
    for (i, w) in widths.iter().enumerate() {
        println!(
            "  fwd in {w:5}-column chunks: gemm alone {:+.3}, with the epilogue {:+.3} ns/logit \
             over the whole-tile gemm",
            ns(t[1 + k + i] - t[0]),
            ns(t[1 + i] - t[0])
        );
    }
}
