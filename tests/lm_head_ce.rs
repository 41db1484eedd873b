//! The fused training LM head + cross-entropy (`ops::lm_head_ce`) against a
//! naive f64 reference and against its spec `lm_head_ce_slow` (the logits
//! GEMM, `crossentropy`'s tasks and the two backward GEMMs): the loss, dhf
//! (overwritten) and dwte (accumulated onto what it held), over every dtype,
//! row, vocabulary and hidden cuts with partial tiles (C cut makes the
//! forward a K chain whose last task is fused), ignored targets, targets on
//! tile edges, a gradient scale, and runtimes with a simulated device and
//! the dmda scheduler. The kernels' chunking and rescaling are checked in
//! `kernels_layers.rs`.

use gpt2rs::dtype::GemmCompute;
use gpt2rs::ops::lm_head_ce::{lm_head_ce, lm_head_ce_slow};
use gpt2rs::runtime::{Runtime, RuntimeConfig, SchedKind};
use gpt2rs::tensor::Tensor;
use gpt2rs::{DType, Element};
use half::{bf16, f16};

/// splitmix64 values `scale * U[-1, 1)`.
fn uniform(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            scale * ((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect()
}

/// `x` rounded to `dtype`: (bytes, the rounded values).
fn rounded(dtype: DType, x: &[f64]) -> (Vec<u8>, Vec<f64>) {
    fn conv<T: Element>(x: &[f64]) -> (Vec<u8>, Vec<f64>) {
        let v: Vec<T> = x.iter().map(|&a| T::from_f64(a)).collect();
        let r = v.iter().map(|a| a.to_f64()).collect();
        (bytemuck::cast_slice(&v).to_vec(), r)
    }
    match dtype {
        DType::F32 => conv::<f32>(x),
        DType::F64 => conv::<f64>(x),
        DType::BF16 => conv::<bf16>(x),
        DType::F16 => conv::<f16>(x),
    }
}

fn to_f64s(dtype: DType, b: &[u8]) -> Vec<f64> {
    fn conv<T: Element>(b: &[u8]) -> Vec<f64> {
        bytemuck::cast_slice::<u8, T>(b)
            .iter()
            .map(|v| v.to_f64())
            .collect()
    }
    match dtype {
        DType::F32 => conv::<f32>(b),
        DType::F64 => conv::<f64>(b),
        DType::BF16 => conv::<bf16>(b),
        DType::F16 => conv::<f16>(b),
    }
}

fn rel_err(x: &[f64], r: &[f64]) -> f64 {
    let d: f64 = x.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum();
    let n: f64 = r.iter().map(|b| b * b).sum();
    if n > 0.0 {
        (d / n).sqrt()
    } else {
        d.sqrt()
    }
}

/// (loss, dhf, dwte - dwte0) in f64 from the rounded inputs.
fn reference(
    hf: &[f64],
    wte: &[f64],
    targets: &[i64],
    (rows, v, c): (usize, usize, usize),
    scale: f64,
) -> (f64, Vec<f64>, Vec<f64>) {
    let (mut loss, mut dhf, mut dwte) = (0.0, vec![0.0; rows * c], vec![0.0; v * c]);
    for r in 0..rows {
        let t = targets[r];
        if t < 0 {
            continue;
        }
        let h = &hf[r * c..(r + 1) * c];
        let z: Vec<f64> = (0..v)
            .map(|j| (0..c).map(|i| h[i] * wte[j * c + i]).sum())
            .collect();
        let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
        loss += lse - z[t as usize];
        for j in 0..v {
            // dz = scale (softmax - onehot); dhf = dz wte, dwte = dz^T hf
            let dz = scale * ((z[j] - lse).exp() - (j == t as usize) as u8 as f64);
            for i in 0..c {
                dhf[r * c + i] += dz * wte[j * c + i];
                dwte[j * c + i] += dz * h[i];
            }
        }
    }
    (loss, dhf, dwte)
}

struct Out {
    loss: f64,
    dhf: Vec<f64>,
    dwte: Vec<f64>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    rt: &Runtime,
    fused: bool,
    dtype: DType,
    (b, t, v, c): (usize, usize, usize, usize),
    tiles: (isize, isize, isize, isize),
    hf: &[u8],
    wte: &[u8],
    dwte0: &[u8],
    targets: &[i64],
    scale: f64,
) -> Out {
    let (tb, tt, tv, tc) = tiles;
    let hf = Tensor::from_bytes(rt, &[b, t, c], &[tb, tt, tc], dtype, hf).unwrap();
    let wte = Tensor::from_bytes(rt, &[v, c], &[tv, tc], dtype, wte).unwrap();
    let dwte = Tensor::from_bytes(rt, &[v, c], &[tv, tc], dtype, dwte0).unwrap();
    // NaN in dhf: it must be overwritten, never read.
    let nan = rounded(dtype, &vec![f64::NAN; b * t * c]).0;
    let dhf = Tensor::from_bytes(rt, &[b, t, c], &[tb, tt, tc], dtype, &nan).unwrap();
    let loss = rt.new_handle(DType::F64, 1).unwrap();
    let f = if fused { lm_head_ce } else { lm_head_ce_slow };
    f(
        &loss,
        &dhf,
        &dwte,
        &hf,
        &wte,
        targets,
        scale,
        GemmCompute::Default,
    )
    .unwrap();
    rt.wait_all().unwrap();
    let loss = rt
        .read_handle(&loss, |x| f64::from_le_bytes(x[..8].try_into().unwrap()))
        .unwrap();
    Out {
        loss,
        dhf: to_f64s(dtype, &dhf.to_bytes().unwrap()),
        dwte: to_f64s(dtype, &dwte.to_bytes().unwrap()),
    }
}

fn tol(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-12,
        DType::F32 => 1e-5,
        DType::F16 => 5e-3,
        DType::BF16 => 3e-2,
    }
}

#[test]
fn fused_lm_head_matches_the_reference_and_its_spec() {
    // ((B, T, V, C), (tile B, T, V, C)): partial tiles on every axis, C cut
    // (a K chain), one vocabulary tile, vocabulary tiles of 1.
    type Case = ((usize, usize, usize, usize), (isize, isize, isize, isize));
    let cases: [Case; 5] = [
        ((2, 5, 37, 6), (1, 3, 8, 6)),
        ((2, 5, 37, 6), (2, 2, 10, 4)),
        ((3, 4, 50, 5), (3, 4, 50, 5)),
        ((1, 3, 5, 3), (1, 1, 1, 1)),
        ((2, 8, 300, 16), (1, 8, 128, 16)),
    ];
    for (sched, nsim) in [(SchedKind::Eager, 0), (SchedKind::Dmda, 1)] {
        let rt = Runtime::new(RuntimeConfig {
            ncpu: Some(3),
            nsim,
            scheduler: sched,
            ..Default::default()
        })
        .unwrap();
        for dtype in DType::ALL {
            for (i, (dims, tiles)) in cases.into_iter().enumerate() {
                let (b, t, v, c) = dims;
                let rows = b * t;
                // Logits of a few units (hf * wte summed over C).
                let (hfb, hf) = rounded(dtype, &uniform(rows * c, 1 + i as u64, 2.0));
                let (wb, wte) = rounded(dtype, &uniform(v * c, 11 + i as u64, 1.5));
                let (d0b, dwte0) = rounded(dtype, &uniform(v * c, 21 + i as u64, 0.1));
                let mut targets: Vec<i64> = (0..rows).map(|r| ((r * 7 + i) % v) as i64).collect();
                targets[0] = 0;
                if rows > 2 {
                    targets[1] = -100;
                    targets[rows - 1] = v as i64 - 1;
                }
                let tile_edge = tiles.2 as usize;
                if rows > 3 && tile_edge < v {
                    targets[2] = tile_edge as i64 - 1;
                    targets[3] = tile_edge as i64;
                }
                let scale = 0.75 / targets.iter().filter(|&&t| t >= 0).count() as f64;
                let (loss_ref, dhf_ref, dd_ref) =
                    reference(&hf, &wte, &targets, (rows, v, c), scale);
                let what = format!("{dtype} {dims:?} tiles {tiles:?} {sched:?} nsim={nsim}");
                let go = |fused| {
                    run(
                        &rt, fused, dtype, dims, tiles, &hfb, &wb, &d0b, &targets, scale,
                    )
                };
                let (fused, slow) = (go(true), go(false));
                for (name, o) in [("fused", &fused), ("spec", &slow)] {
                    let le = (o.loss - loss_ref).abs() / loss_ref.abs();
                    let dd: Vec<f64> = o.dwte.iter().zip(&dwte0).map(|(a, b)| a - b).collect();
                    let (ex, ew) = (rel_err(&o.dhf, &dhf_ref), rel_err(&dd, &dd_ref));
                    eprintln!("ERR {name} {what}: loss {le:.2e} dhf {ex:.2e} dwte {ew:.2e}");
                    let tl = tol(dtype);
                    assert!(le <= tl, "{name} {what}: loss {} vs {loss_ref}", o.loss);
                    // dwte's change is small beside dwte0, so its rounding
                    // (of dwte0 + change) counts against it: 10x.
                    assert!(ex <= tl, "{name} {what}: dhf off by {ex:e}");
                    assert!(ew <= 10.0 * tl, "{name} {what}: dwte off by {ew:e}");
                }
                // Ignored rows get exactly zero dhf.
                assert!(fused.dhf[c..2 * c].iter().all(|&x| x == 0.0) || rows <= 2);
            }
        }
    }
}

#[test]
fn fused_lm_head_with_every_target_ignored_adds_nothing() {
    let rt = Runtime::new(RuntimeConfig {
        ncpu: Some(2),
        ..Default::default()
    })
    .unwrap();
    let (dims, tiles) = ((2, 3, 9, 4), (1, 3, 4, 4));
    let dt = DType::F32;
    let hf = rounded(dt, &uniform(24, 1, 1.0)).0;
    let wte = rounded(dt, &uniform(36, 2, 1.0)).0;
    let (d0b, dwte0) = rounded(dt, &uniform(36, 3, 1.0));
    let out = run(&rt, true, dt, dims, tiles, &hf, &wte, &d0b, &[-100; 6], 0.0);
    assert_eq!(out.loss, 0.0);
    assert!(out.dhf.iter().all(|&x| x == 0.0));
    assert_eq!(out.dwte, dwte0);
}

#[test]
fn fused_lm_head_rejects_mismatched_operands() {
    let rt = Runtime::new(RuntimeConfig {
        ncpu: Some(1),
        ..Default::default()
    })
    .unwrap();
    let t = |s: &[usize], tl: &[isize]| Tensor::zeros(&rt, s, tl, DType::F32).unwrap();
    let (hf, dhf) = (t(&[1, 4, 6], &[1, 4, 3]), t(&[1, 4, 6], &[1, 4, 3]));
    let (wte, dwte) = (t(&[10, 6], &[5, 3]), t(&[10, 6], &[5, 3]));
    let loss = rt.new_handle(DType::F64, 1).unwrap();
    let c = GemmCompute::Default;
    let ok = lm_head_ce(&loss, &dhf, &dwte, &hf, &wte, &[0, 1, 2, 9], 1.0, c);
    assert!(ok.is_ok());
    // C cut differently in wte; a target past V; too few targets; dhf cut
    // differently; a loss of the wrong dtype.
    let w2 = t(&[10, 6], &[5, 6]);
    let e = lm_head_ce(&loss, &dhf, &w2, &hf, &w2, &[0; 4], 1.0, c).unwrap_err();
    assert!(e.to_string().contains("C cut alike"), "{e}");
    let e = lm_head_ce(&loss, &dhf, &dwte, &hf, &wte, &[0, 1, 2, 10], 1.0, c).unwrap_err();
    assert!(e.to_string().contains("outside [0, 10)"), "{e}");
    let e = lm_head_ce(&loss, &dhf, &dwte, &hf, &wte, &[0; 3], 1.0, c).unwrap_err();
    assert!(e.to_string().contains("3 targets"), "{e}");
    let d2 = t(&[1, 4, 6], &[1, 2, 3]);
    assert!(lm_head_ce(&loss, &d2, &dwte, &hf, &wte, &[0; 4], 1.0, c).is_err());
    let l32 = rt.new_handle(DType::F32, 1).unwrap();
    assert!(lm_head_ce(&l32, &dhf, &dwte, &hf, &wte, &[0; 4], 1.0, c).is_err());
    rt.wait_all().unwrap();
}
