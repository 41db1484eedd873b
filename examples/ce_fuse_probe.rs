//! Throwaway timing probe: one LM-head tile of the 4x256 training step
//! (256 rows, 8192 vocabulary columns, hidden 256, f32) on one thread, the
//! cross-entropy as separate passes (`ce_fwd_exp` / `ce_bwd_scale`, the
//! tasks before the fusion) against the fused LM-head kernels.
//!
//! ```text
//! cargo run --release --example ce_fuse_probe [rows vt n]
//! ```
//!
//! Each timing is the median of repeats after a warm-up.

use gpt2rs::dtype::GemmCompute;
use gpt2rs::kernels::cpu::crossentropy::{ce_bwd_numerators, softmax_numerators};
use gpt2rs::kernels::cpu::gemm::gemm;
use gpt2rs::kernels::cpu::lm_head_ce::{
    dw_tile, dx_tile, fwd_chunk, fwd_tile, merge, part_init, BwdShape, FwdShape,
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

/// Median seconds per call of `f` over 15 repeats after two warm-ups.
fn time_med(mut f: impl FnMut()) -> f64 {
    f();
    f();
    let mut v: Vec<f64> = (0..15)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
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

    // Before: GEMM, then the exp pass, then (backward) the scale pass + 2 GEMMs.
    let mut z = vec![0.0f32; rows * vt];
    let t_gemm = time_med(|| gemm(false, true, rows, vt, n, 1, 1.0, &hf, &wte, 0.0, &mut z));
    let z0 = z.clone();
    let mut acc = vec![0.0f32; rows * 2];
    let mut tm = vec![0.0f32; rows];
    let t_exp = time_med(|| {
        z.copy_from_slice(&z0);
        for a in acc.chunks_exact_mut(2) {
            a[0] = f32::NEG_INFINITY;
            a[1] = 0.0;
        }
        softmax_numerators(&mut z, rows, vt, &mut acc, &mut tm);
    });
    let t_copy = time_med(|| z.copy_from_slice(&z0));
    let e_old = z.clone();
    let mut g = e_old.clone();
    let t_scale = time_med(|| {
        g.copy_from_slice(&e_old);
        ce_bwd_numerators(&acc, &tm, rows, vt, 0, &targets, 1e-3, &mut g);
    });
    let mut dx = vec![0.0f32; rows * n];
    let t_dx_gemm = time_med(|| gemm(false, false, rows, n, vt, 1, 1.0, &g, &wte, 0.0, &mut dx));
    let mut dw = vec![0.0f32; vt * n];
    let t_dw_gemm = time_med(|| gemm(true, false, vt, n, rows, 1, 1.0, &g, &hf, 1.0, &mut dw));

    println!("tile {rows} x {vt}, hidden {n}, f32, one thread (median of 15)");
    println!("before (separate passes):");
    println!(
        "  fwd gemm        {:7.3} ms  ({:.1} GF/s)",
        t_gemm * 1e3,
        2.0 * logits_n * n as f64 / t_gemm / 1e9
    );
    println!(
        "  ce_fwd_exp      {:7.3} ms  {:.3} ns/logit (minus a {:.3} ms copy)",
        (t_exp - t_copy) * 1e3,
        ns(t_exp - t_copy),
        t_copy * 1e3
    );
    println!(
        "  ce_bwd_scale    {:7.3} ms  {:.3} ns/logit",
        (t_scale - t_copy) * 1e3,
        ns(t_scale - t_copy)
    );
    println!("  dx gemm         {:7.3} ms", t_dx_gemm * 1e3);
    println!("  dw gemm         {:7.3} ms", t_dw_gemm * 1e3);
    let before = t_gemm + (t_exp - t_copy) + (t_scale - t_copy) + t_dx_gemm + t_dw_gemm;

    // After: the fused tile kernels.
    let mut e = vec![0.0f32; rows * vt];
    let mut part = vec![0.0f32; rows * 3];
    let fs = FwdShape {
        m: rows,
        n: vt,
        k: n,
        vocab_lo: 0,
    };
    let t_fwd = time_med(|| fwd_tile(c, fs, 1.0, &hf, &wte, 0.0, &targets, &mut e, &mut part));
    // The chunk width, swept.
    for w in [128usize, 256, 512, 1024, 2048, vt] {
        let mut zc = vec![0.0f32; rows * w];
        let t = time_med(|| {
            part_init(&mut part);
            let mut c0 = 0;
            while c0 < vt {
                let wc = w.min(vt - c0);
                let zc = &mut zc[..rows * wc];
                gemm(
                    false,
                    true,
                    rows,
                    wc,
                    n,
                    1,
                    1.0,
                    &hf,
                    &wte[c0 * n..(c0 + wc) * n],
                    0.0,
                    zc,
                );
                fwd_chunk(zc, rows, wc, c0, 0, &targets, &mut e, vt, &mut part);
                c0 += wc;
            }
        });
        println!(
            "  (fused fwd with {w:5}-column chunks: {:7.3} ms, {:+.3} ns/logit over the gemm)",
            t * 1e3,
            ns(t - t_gemm)
        );
    }
    let mut factors = vec![0.0f32; rows * 2];
    let mut loss = [0.0f64];
    merge(
        &[&part[..]],
        rows,
        std::slice::from_ref(&(0..vt)),
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
    let t_dx = time_med(|| dx_tile(c, bs, &e, &wte, &targets, &factors, true, &mut dx));
    let t_dw = time_med(|| dw_tile(c, bs, &e, &hf, &targets, &factors, 1.0, &mut dw));
    println!("after (fused):");
    println!(
        "  fwd gemm + ce   {:7.3} ms  ce part {:.3} ns/logit",
        t_fwd * 1e3,
        ns(t_fwd - t_gemm)
    );
    println!(
        "  dx gemm + ce    {:7.3} ms  ce part {:.3} ns/logit",
        t_dx * 1e3,
        ns(t_dx - t_dx_gemm)
    );
    println!(
        "  dw gemm + ce    {:7.3} ms  ce part {:.3} ns/logit",
        t_dw * 1e3,
        ns(t_dw - t_dw_gemm)
    );
    let after = t_fwd + t_dx + t_dw;
    let gemms = t_gemm + t_dx_gemm + t_dw_gemm;
    println!(
        "per tile: before {:.3} ms (ce {:.3}), after {:.3} ms (ce {:.3}), gemms alone {:.3} ms",
        before * 1e3,
        (before - gemms) * 1e3,
        after * 1e3,
        (after - gemms) * 1e3,
        gemms * 1e3
    );
}
