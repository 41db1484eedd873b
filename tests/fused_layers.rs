//! The fused residual + LayerNorm op on the CPU: `add_layernorm` equals its
//! spec `add_layernorm_slow` (`ops::add` into the residual stream, then
//! `layernorm_fwd`) bit for bit — the sum, the normalised output and the
//! statistics — over every dtype, the three residual placements (a sum
//! tensor of its own, in place in `r`, in place in `x`), C in one tile (the
//! one-pass task) and C cut unevenly (the statistics chain), partial tiles
//! on every axis, and a runtime with a simulated device (so tiles move
//! between memory nodes). The output is also checked against a naive f64
//! LayerNorm of the rounded sum. The CUDA kernel is checked by the GPU suite.

use gpt2rs::ops::layernorm::{add_layernorm, add_layernorm_slow};
use gpt2rs::runtime::{Runtime, RuntimeConfig, SchedKind};
use gpt2rs::tensor::Tensor;
use gpt2rs::{DType, Element};
use half::{bf16, f16};

/// splitmix64 values `offset + U[-1, 1)`, rounded to T.
fn data<T: Element>(n: usize, seed: u64, offset: f64) -> Vec<u8> {
    let mut s = seed;
    let v: Vec<T> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            T::from_f64(offset + (z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect();
    bytemuck::cast_slice(&v).to_vec()
}

fn bytes_of(dtype: DType, n: usize, seed: u64, offset: f64) -> Vec<u8> {
    match dtype {
        DType::F32 => data::<f32>(n, seed, offset),
        DType::F64 => data::<f64>(n, seed, offset),
        DType::BF16 => data::<bf16>(n, seed, offset),
        DType::F16 => data::<f16>(n, seed, offset),
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

/// Where the residual sum goes.
#[derive(Clone, Copy, Debug)]
enum Place {
    Own,
    InR,
    InX,
}

struct Run {
    sum: Vec<u8>,
    y: Vec<u8>,
    stats: Vec<u8>,
}

#[allow(clippy::too_many_arguments)]
fn run(
    rt: &Runtime,
    fused: bool,
    shape: &[usize],
    tile: &[isize],
    dtype: DType,
    place: Place,
    eps: f64,
) -> Run {
    let n: usize = shape.iter().product();
    let c = *shape.last().unwrap();
    let ct = [*tile.last().unwrap()];
    let x = Tensor::from_bytes(rt, shape, tile, dtype, &bytes_of(dtype, n, 1, 0.5)).unwrap();
    let r = Tensor::from_bytes(rt, shape, tile, dtype, &bytes_of(dtype, n, 2, 0.0)).unwrap();
    let g = Tensor::from_bytes(rt, &[c], &ct, dtype, &bytes_of(dtype, c, 3, 1.0)).unwrap();
    let b = Tensor::from_bytes(rt, &[c], &ct, dtype, &bytes_of(dtype, c, 4, 0.0)).unwrap();
    let y = Tensor::zeros(rt, shape, tile, dtype).unwrap();
    let own = Tensor::zeros(rt, shape, tile, dtype).unwrap();
    let sum = match place {
        Place::Own => &own,
        Place::InR => &r,
        Place::InX => &x,
    };
    let f = if fused {
        add_layernorm
    } else {
        add_layernorm_slow
    };
    let stats = f(&x, &r, &g, &b, eps, sum, &y).unwrap();
    rt.wait_all().unwrap();
    Run {
        sum: sum.to_bytes().unwrap(),
        y: y.to_bytes().unwrap(),
        stats: stats.to_bytes().unwrap(),
    }
}

/// y of a naive f64 LayerNorm over the last axis of the (rounded) sum.
fn ln_ref(sum: &[f64], g: &[f64], b: &[f64], c: usize, eps: f64) -> Vec<f64> {
    let mut y = vec![0.0; sum.len()];
    for (row, out) in sum.chunks(c).zip(y.chunks_mut(c)) {
        let mean = row.iter().sum::<f64>() / c as f64;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / c as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for (j, (o, v)) in out.iter_mut().zip(row).enumerate() {
            *o = (v - mean) * rstd * g[j] + b[j];
        }
    }
    y
}

fn rel_err(x: &[f64], r: &[f64]) -> f64 {
    let d: f64 = x.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum();
    let n: f64 = r.iter().map(|b| b * b).sum();
    (d / n).sqrt()
}

#[test]
fn add_layernorm_equals_add_then_layernorm() {
    // (shape, tile): C whole (one-pass task) and C cut unevenly (chain),
    // partial tiles on the leading axes too.
    let cases: [(&[usize], &[isize]); 6] = [
        (&[3, 5, 7], &[2, 3, 7]),
        (&[3, 5, 7], &[2, 3, 3]),
        (&[2, 4, 13], &[1, 3, 5]),
        (&[5, 6], &[2, 6]),
        (&[4, 9], &[3, 4]),
        (&[1, 1, 1], &[1, 1, 1]),
    ];
    let eps = 1e-5;
    for (sched, nsim) in [(SchedKind::Eager, 0), (SchedKind::Dmda, 1)] {
        let rt = Runtime::new(RuntimeConfig {
            ncpu: Some(3),
            nsim,
            scheduler: sched,
            ..Default::default()
        })
        .unwrap();
        for dtype in DType::ALL {
            for (shape, tile) in cases {
                for place in [Place::Own, Place::InR, Place::InX] {
                    let what = format!("{dtype} {shape:?} tiles {tile:?} sum {place:?} {sched:?}");
                    let fused = run(&rt, true, shape, tile, dtype, place, eps);
                    let slow = run(&rt, false, shape, tile, dtype, place, eps);
                    assert!(fused.sum == slow.sum, "{what}: sum differs");
                    assert!(fused.y == slow.y, "{what}: y differs");
                    assert!(fused.stats == slow.stats, "{what}: stats differ");

                    // The sum is x + r, and y a LayerNorm of it.
                    let n: usize = shape.iter().product();
                    let c = *shape.last().unwrap();
                    let x = to_f64s(dtype, &bytes_of(dtype, n, 1, 0.5));
                    let r = to_f64s(dtype, &bytes_of(dtype, n, 2, 0.0));
                    let s = to_f64s(dtype, &fused.sum);
                    let want: Vec<f64> = x.iter().zip(&r).map(|(a, b)| a + b).collect();
                    let tol = dtype.epsilon();
                    assert!(rel_err(&s, &want) <= tol, "{what}: sum is not x + r");
                    let g = to_f64s(dtype, &bytes_of(dtype, c, 3, 1.0));
                    let b = to_f64s(dtype, &bytes_of(dtype, c, 4, 0.0));
                    let y = to_f64s(dtype, &fused.y);
                    let err = rel_err(&y, &ln_ref(&s, &g, &b, c, eps));
                    let tol = if dtype == DType::F64 {
                        1e-12
                    } else {
                        8.0 * tol
                    };
                    assert!(err <= tol, "{what}: LayerNorm error {err:e}");
                }
            }
        }
    }
}

#[test]
fn add_layernorm_rejects_mismatched_operands() {
    let rt = Runtime::new(RuntimeConfig {
        ncpu: Some(1),
        ..Default::default()
    })
    .unwrap();
    let t = |shape: &[usize], tile: &[isize], d: DType| Tensor::zeros(&rt, shape, tile, d).unwrap();
    let (x, g, b) = (
        t(&[4, 6], &[2, 3], DType::F32),
        t(&[6], &[3], DType::F32),
        t(&[6], &[3], DType::F32),
    );
    let y = t(&[4, 6], &[2, 3], DType::F32);
    // r cut differently, r of another dtype, gamma cut differently.
    let r_tiles = t(&[4, 6], &[4, 3], DType::F32);
    assert!(add_layernorm(&x, &r_tiles, &g, &b, 1e-5, &y, &y).is_err());
    let r_dtype = t(&[4, 6], &[2, 3], DType::F64);
    let s = t(&[4, 6], &[2, 3], DType::F32);
    assert!(add_layernorm(&x, &r_dtype, &g, &b, 1e-5, &s, &y).is_err());
    let g_tiles = t(&[6], &[2], DType::F32);
    let r = t(&[4, 6], &[2, 3], DType::F32);
    assert!(add_layernorm(&x, &r, &g_tiles, &b, 1e-5, &s, &y).is_err());
    // y may not be the residual output.
    assert!(add_layernorm(&x, &r, &g, &b, 1e-5, &s, &s).is_err());
}
