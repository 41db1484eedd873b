//! The GEMM ops' CPU paths: `gemm_bias_act` equals its spec, the composed
//! `bias_fill` + `gemm` (beta = 1) + `activation_fwd`, bit for bit (the same
//! kernels run in one task), over every dtype and activation, partial
//! tiles, transposes, batches and two contracted axes; its argument errors;
//! and `gemm_with` ignoring the compute mode on the CPU. The GPU paths
//! (cuBLAS, cuBLASLt) are checked by the GPU suite.

use gpt2rs::dtype::{GemmCompute, Precision};
use gpt2rs::kernels::cpu::activation::Activation;
use gpt2rs::ops::activation::{activation_fwd, bias_fill};
use gpt2rs::ops::gemm::{gemm, gemm_bias_act, gemm_with, GemmSpec};
use gpt2rs::runtime::{Runtime, RuntimeConfig};
use gpt2rs::tensor::Tensor;
use gpt2rs::{DType, Element};
use half::{bf16, f16};

/// splitmix64 values in [-1, 1), rounded to T.
fn data<T: Element>(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    let v: Vec<T> = (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            T::from_f64((z >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0)
        })
        .collect();
    bytemuck::cast_slice(&v).to_vec()
}

fn bytes_of(dtype: DType, n: usize, seed: u64) -> Vec<u8> {
    match dtype {
        DType::F32 => data::<f32>(n, seed),
        DType::F64 => data::<f64>(n, seed),
        DType::BF16 => data::<bf16>(n, seed),
        DType::F16 => data::<f16>(n, seed),
    }
}

fn runtime(nsim: usize) -> Runtime {
    Runtime::new(RuntimeConfig {
        ncpu: Some(3),
        nsim,
        ..Default::default()
    })
    .unwrap()
}

fn tensor(rt: &Runtime, shape: &[usize], tile: &[isize], dtype: DType, seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_bytes(rt, shape, tile, dtype, &bytes_of(dtype, n, seed)).unwrap()
}

/// One problem: shapes and tiles of A, B, bias and C.
struct Case {
    spec: GemmSpec,
    a: (Vec<usize>, Vec<isize>),
    b: (Vec<usize>, Vec<isize>),
    bias: (Vec<usize>, Vec<isize>),
    c: (Vec<usize>, Vec<isize>),
}

fn cases() -> Vec<Case> {
    let s = GemmSpec::default();
    vec![
        // [M, K] @ [K, N], M and N cut unevenly, K whole.
        Case {
            spec: GemmSpec { alpha: 1.0, ..s },
            a: (vec![7, 9], vec![3, 9]),
            b: (vec![9, 10], vec![9, 4]),
            bias: (vec![10], vec![4]),
            c: (vec![7, 10], vec![3, 4]),
        },
        // A^T and B^T (the LM head: x @ wte^T), alpha != 1.
        Case {
            spec: GemmSpec {
                trans_a: true,
                trans_b: true,
                alpha: 0.5,
                ..s
            },
            a: (vec![6, 5], vec![6, 2]),
            b: (vec![11, 6], vec![5, 6]),
            bias: (vec![11], vec![5]),
            c: (vec![5, 11], vec![2, 5]),
        },
        // Two M axes and two contracted axes ([B, T, NH, HS] @ [NH, HS, C]).
        Case {
            spec: GemmSpec { ndim: 2, ..s },
            a: (vec![2, 5, 3, 4], vec![1, 2, 3, 4]),
            b: (vec![3, 4, 7], vec![3, 4, 3]),
            bias: (vec![7], vec![3]),
            c: (vec![2, 5, 7], vec![1, 2, 3]),
        },
        // A batch axis.
        Case {
            spec: GemmSpec { batch_ndim: 1, ..s },
            a: (vec![3, 4, 5], vec![2, 3, 5]),
            b: (vec![3, 5, 6], vec![2, 5, 4]),
            bias: (vec![6], vec![4]),
            c: (vec![3, 4, 6], vec![2, 3, 4]),
        },
    ]
}

const ACTS: [Option<Activation>; 4] = [
    None,
    Some(Activation::GeluTanh),
    Some(Activation::Gelu),
    Some(Activation::Relu),
];

#[test]
fn gemm_bias_act_equals_gemm_bias_act_composed() {
    for nsim in [0, 1] {
        let rt = runtime(nsim);
        for dtype in DType::ALL {
            for (ci, case) in cases().into_iter().enumerate() {
                for act in ACTS {
                    let seed = 17 * ci as u64;
                    let a = tensor(&rt, &case.a.0, &case.a.1, dtype, seed + 1);
                    let b = tensor(&rt, &case.b.0, &case.b.1, dtype, seed + 2);
                    let bias = tensor(&rt, &case.bias.0, &case.bias.1, dtype, seed + 3);
                    // C starts as garbage: beta = 0 must overwrite it.
                    let fused = tensor(&rt, &case.c.0, &case.c.1, dtype, seed + 4);
                    gemm_bias_act(&case.spec, GemmCompute::Tf32, act, &a, &b, &bias, &fused)
                        .unwrap();
                    // The spec: y = bias; y += A@B; y = act(y).
                    let pre = Tensor::zeros(&rt, &case.c.0, &case.c.1, dtype).unwrap();
                    bias_fill(&bias, &pre).unwrap();
                    let spec = GemmSpec {
                        beta: 1.0,
                        ..case.spec
                    };
                    gemm(&spec, &a, &b, &pre).unwrap();
                    let composed = match act {
                        Some(act) => {
                            let y = pre.zeros_like().unwrap();
                            activation_fwd(act, &pre, &y).unwrap();
                            y
                        }
                        None => pre,
                    };
                    rt.wait_all().unwrap();
                    assert_eq!(
                        fused.to_bytes().unwrap(),
                        composed.to_bytes().unwrap(),
                        "{dtype} case {ci} act {act:?} nsim {nsim}"
                    );
                }
            }
        }
    }
}

#[test]
fn gemm_bias_act_matches_f64_reference() {
    // y = gelu_tanh(x W + b) computed by hand in f64.
    let rt = runtime(0);
    let (m, k, n) = (5, 4, 3);
    let a = tensor(&rt, &[m, k], &[2, 4], DType::F64, 1);
    let w = tensor(&rt, &[k, n], &[4, 2], DType::F64, 2);
    let bias = tensor(&rt, &[n], &[2], DType::F64, 3);
    let c = Tensor::zeros(&rt, &[m, n], &[2, 2], DType::F64).unwrap();
    let act = Some(Activation::GeluTanh);
    gemm_bias_act(
        &GemmSpec::default(),
        GemmCompute::Default,
        act,
        &a,
        &w,
        &bias,
        &c,
    )
    .unwrap();
    rt.wait_all().unwrap();
    let f = |t: &Tensor| -> Vec<f64> { bytemuck::cast_slice(&t.to_bytes().unwrap()).to_vec() };
    let (av, wv, bv, cv) = (f(&a), f(&w), f(&bias), f(&c));
    for i in 0..m {
        for j in 0..n {
            let x: f64 = bv[j] + (0..k).map(|l| av[i * k + l] * wv[l * n + j]).sum::<f64>();
            let inner = (2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x * x * x);
            let want = 0.5 * x * (1.0 + inner.tanh());
            let got = cv[i * n + j];
            assert!(
                (got - want).abs() <= 1e-14 * (1.0 + want.abs()),
                "{i},{j}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn gemm_bias_act_rejects_what_it_cannot_fuse() {
    let rt = runtime(0);
    let dt = DType::F32;
    let a = tensor(&rt, &[4, 6], &[2, 3], dt, 1); // K cut into two tiles
    let b = tensor(&rt, &[6, 5], &[3, 5], dt, 2);
    let bias = tensor(&rt, &[5], &[5], dt, 3);
    let c = Tensor::zeros(&rt, &[4, 5], &[2, 5], dt).unwrap();
    let s = GemmSpec::default();
    let e = gemm_bias_act(&s, GemmCompute::Default, None, &a, &b, &bias, &c).unwrap_err();
    assert!(e.to_string().contains("gemm"), "{e}");
    // beta != 0.
    let a1 = tensor(&rt, &[4, 6], &[2, 6], dt, 1);
    let b1 = tensor(&rt, &[6, 5], &[6, 5], dt, 2);
    let s1 = GemmSpec { beta: 1.0, ..s };
    assert!(gemm_bias_act(&s1, GemmCompute::Default, None, &a1, &b1, &bias, &c).is_err());
    // Bias cut unlike C's N axis, or of another dtype.
    let bias2 = tensor(&rt, &[5], &[2], dt, 3);
    assert!(gemm_bias_act(&s, GemmCompute::Default, None, &a1, &b1, &bias2, &c).is_err());
    let bias3 = tensor(&rt, &[5], &[5], DType::F64, 3);
    assert!(gemm_bias_act(&s, GemmCompute::Default, None, &a1, &b1, &bias3, &c).is_err());
    // The valid call still works.
    gemm_bias_act(&s, GemmCompute::Default, None, &a1, &b1, &bias, &c).unwrap();
    rt.wait_all().unwrap();
}

#[test]
fn compute_mode_is_ignored_on_the_cpu() {
    let rt = runtime(1);
    let dt = DType::F32;
    let a = tensor(&rt, &[9, 13], &[4, 5], dt, 1);
    let b = tensor(&rt, &[13, 6], &[5, 4], dt, 2);
    let reference = Tensor::zeros(&rt, &[9, 6], &[4, 4], dt).unwrap();
    gemm(&GemmSpec::default(), &a, &b, &reference).unwrap();
    for mode in [
        GemmCompute::Default,
        GemmCompute::Tf32,
        GemmCompute::Fp16,
        GemmCompute::Bf16,
    ] {
        let c = Tensor::zeros(&rt, &[9, 6], &[4, 4], dt).unwrap();
        gemm_with(&GemmSpec::default(), mode, &a, &b, &c).unwrap();
        rt.wait_all().unwrap();
        assert_eq!(
            c.to_bytes().unwrap(),
            reference.to_bytes().unwrap(),
            "{mode:?}"
        );
    }
}

#[test]
fn precision_compute_modes() {
    let want = [
        ("fp32", GemmCompute::Default),
        ("fp64", GemmCompute::Default),
        ("bf16", GemmCompute::Default),
        ("tf32", GemmCompute::Tf32),
        ("fp32_fast_tf32", GemmCompute::Tf32),
        ("fp32_fast_fp16", GemmCompute::Fp16),
        ("fp32_fast_bf16", GemmCompute::Bf16),
    ];
    for (name, mode) in want {
        assert_eq!(
            Precision::parse(name).unwrap().gemm_compute(),
            mode,
            "{name}"
        );
    }
    assert_eq!(Precision::NAMES.len(), want.len());
}

/// cuBLAS / cuBLASLt against the CPU kernels, on GPU 0 when there is one
/// (skipped, with a message, otherwise). Inputs in [-1, 1); errors are
/// relative Frobenius norms against the CPU result in the same storage.
mod gpu {
    use super::data;
    use gpt2rs::dtype::GemmCompute;
    use gpt2rs::kernels::cpu::activation::{activation_fwd, Activation};
    use gpt2rs::kernels::cpu::bias::bias_fill;
    use gpt2rs::kernels::cpu::gemm::gemm as cpu_gemm;
    use gpt2rs::kernels::cuda::blas::{self, BiasAct};
    use gpt2rs::kernels::cuda::context::DevElement;
    use gpt2rs::kernels::cuda::context::{device_count, Gpu};
    use gpt2rs::Element;
    use half::{bf16, f16};
    use std::sync::Arc;

    fn device() -> Option<Arc<Gpu>> {
        if device_count() == 0 {
            eprintln!("no GPU: skipped");
            return None;
        }
        Some(Gpu::open(0).unwrap())
    }

    fn host<T: Element>(n: usize, seed: u64) -> Vec<T> {
        bytemuck::cast_slice(&data::<T>(n, seed)).to_vec()
    }

    fn rel_err<T: Element>(x: &[T], r: &[T]) -> f64 {
        let (mut d, mut n) = (0.0, 0.0);
        for (a, b) in x.iter().zip(r) {
            let (a, b) = (a.to_f64(), b.to_f64());
            d += (a - b) * (a - b);
            n += b * b;
        }
        if n == 0.0 {
            d.sqrt()
        } else {
            (d / n).sqrt()
        }
    }

    /// (trans_a, trans_b, m, n, k, batch): partial-warp sizes, a batch, a
    /// 1x1, and an empty contraction (our fill/scale path).
    const SHAPES: [(usize, usize, usize, usize); 5] = [
        (7, 10, 9, 1),
        (33, 17, 64, 3),
        (1, 1, 1, 1),
        (64, 48, 130, 2),
        (3, 4, 0, 2),
    ];

    fn check_gemm<T: DevElement>(dev: &Gpu, compute: GemmCompute, tol: f64) {
        let st = &dev.stream;
        for (si, &(m, n, k, batch)) in SHAPES.iter().enumerate() {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for (alpha, beta) in [(1.0, 0.0), (0.5, -2.0), (0.0, 0.5)] {
                    let seed = 100 * si as u64;
                    let a = host::<T>(m * k * batch, seed + 1);
                    let b = host::<T>(k * n * batch, seed + 2);
                    // beta == 0 must not read C: NaN there would leak.
                    let c: Vec<T> = if beta == 0.0 {
                        vec![T::from_f64(f64::NAN); m * n * batch]
                    } else {
                        host::<T>(m * n * batch, seed + 3)
                    };
                    let mut want = c.clone();
                    cpu_gemm(ta, tb, m, n, k, batch, alpha, &a, &b, beta, &mut want);
                    let (da, db) = (st.clone_htod(&a).unwrap(), st.clone_htod(&b).unwrap());
                    let mut dc = st.clone_htod(&c).unwrap();
                    blas::gemm::<T>(
                        dev,
                        compute,
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        batch,
                        alpha,
                        &da.as_view(),
                        &db.as_view(),
                        beta,
                        &mut dc.as_view_mut(),
                    )
                    .unwrap();
                    let got = st.clone_dtoh(&dc).unwrap();
                    st.synchronize().unwrap();
                    let e = rel_err(&got, &want);
                    println!(
                        "ERR gemm {:?} {compute:?} ta={ta} tb={tb} {m}x{n}x{k}x{batch} \
                         alpha={alpha} beta={beta}: {e:.2e}",
                        T::DTYPE
                    );
                    assert!(e <= tol, "{e} > {tol}");
                }
            }
        }
    }

    #[test]
    fn cublas_gemm_matches_cpu() {
        let Some(dev) = device() else { return };
        check_gemm::<f64>(&dev, GemmCompute::Default, 1e-13);
        check_gemm::<f32>(&dev, GemmCompute::Default, 1e-6);
        check_gemm::<f32>(&dev, GemmCompute::Tf32, 3e-3);
        check_gemm::<f32>(&dev, GemmCompute::Fp16, 3e-3);
        check_gemm::<f32>(&dev, GemmCompute::Bf16, 2e-2);
        check_gemm::<bf16>(&dev, GemmCompute::Default, 1e-2);
        check_gemm::<f16>(&dev, GemmCompute::Default, 2e-3);
    }

    fn check_bias_act<T: DevElement>(dev: &Gpu, compute: GemmCompute, tol: f64) {
        let st = &dev.stream;
        let acts = [
            (BiasAct::Bias, None),
            (BiasAct::BiasGeluTanh, Some(Activation::GeluTanh)),
            (BiasAct::BiasRelu, Some(Activation::Relu)),
        ];
        for (si, &(m, n, k, batch)) in SHAPES[..4].iter().enumerate() {
            for (ta, tb) in [(false, false), (false, true), (true, false)] {
                for (epi, act) in acts {
                    let seed = 100 * si as u64;
                    let a = host::<T>(m * k * batch, seed + 1);
                    let b = host::<T>(k * n * batch, seed + 2);
                    let bias = host::<T>(n, seed + 3);
                    // The CPU spec: bias_fill, gemm with beta = 1, act.
                    let mut want = vec![T::default(); m * n * batch];
                    bias_fill(&bias, m * batch, n, &mut want);
                    cpu_gemm(ta, tb, m, n, k, batch, 0.5, &a, &b, 1.0, &mut want);
                    if let Some(act) = act {
                        let x = want.clone();
                        activation_fwd(act, &x, &mut want);
                    }
                    let (da, db) = (st.clone_htod(&a).unwrap(), st.clone_htod(&b).unwrap());
                    let dbias = st.clone_htod(&bias).unwrap();
                    let nan = vec![T::from_f64(f64::NAN); m * n * batch];
                    let mut dc = st.clone_htod(&nan).unwrap();
                    blas::gemm_bias_act::<T>(
                        dev,
                        compute,
                        ta,
                        tb,
                        m,
                        n,
                        k,
                        batch,
                        0.5,
                        &da.as_view(),
                        &db.as_view(),
                        &dbias.as_view(),
                        epi,
                        &mut dc.as_view_mut(),
                    )
                    .unwrap();
                    let got = st.clone_dtoh(&dc).unwrap();
                    st.synchronize().unwrap();
                    let e = rel_err(&got, &want);
                    println!(
                        "ERR gemm_bias_act {:?} {compute:?} {epi:?} ta={ta} tb={tb} \
                         {m}x{n}x{k}x{batch}: {e:.2e}",
                        T::DTYPE
                    );
                    // cuBLASLt may evaluate tanh with the hardware
                    // approximation (relative error ~2^-11).
                    let tol = if epi == BiasAct::BiasGeluTanh {
                        tol.max(2e-3)
                    } else {
                        tol
                    };
                    assert!(e <= tol, "{e} > {tol}");
                }
            }
        }
    }

    #[test]
    fn cublaslt_epilogues_match_cpu() {
        let Some(dev) = device() else { return };
        check_bias_act::<f32>(&dev, GemmCompute::Default, 1e-6);
        check_bias_act::<f32>(&dev, GemmCompute::Tf32, 3e-3);
        check_bias_act::<bf16>(&dev, GemmCompute::Default, 1e-2);
        check_bias_act::<f16>(&dev, GemmCompute::Default, 2e-3);
    }
}

/// C = alpha * op(A) @ op(B) + beta * C in f64 on the host, row-major.
#[allow(clippy::too_many_arguments)]
fn reference_gemm(
    ta: bool,
    tb: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f64,
    a: &[f32],
    b: &[f32],
    beta: f64,
    c: &[f32],
) -> Vec<f64> {
    let mut out = vec![0.0; m * n];
    for i in 0..m {
        for j in 0..n {
            let s: f64 = (0..k)
                .map(|p| {
                    let x = if ta { a[p * m + i] } else { a[i * k + p] };
                    let y = if tb { b[j * k + p] } else { b[p * n + j] };
                    x as f64 * y as f64
                })
                .sum();
            out[i * n + j] = alpha * s + beta * c[i * n + j] as f64;
        }
    }
    out
}

/// Few-row products (decoding's GEMVs) multiply their K tiles in parallel and
/// add them in K order; many-row ones chain them. Both match an f64
/// reference, with every transpose and partial K tiles, and repeat bit for
/// bit on one worker and on three.
#[test]
fn split_k_and_chained_k_match_the_reference_on_any_worker_count() {
    for (m, tm) in [(5usize, 5isize), (64, 64), (70, 70)] {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            let (k, n) = (70, 33);
            let spec = GemmSpec {
                trans_a: ta,
                trans_b: tb,
                alpha: 0.75,
                beta: 0.5,
                ..Default::default()
            };
            let (ashape, atile) = if ta {
                ([k, m], [16, tm])
            } else {
                ([m, k], [tm, 16])
            };
            let (bshape, btile) = if tb {
                ([n, k], [11, 16])
            } else {
                ([k, n], [16, 11])
            };
            let mut results = Vec::new();
            for ncpu in [1, 3] {
                let rt = Runtime::new(RuntimeConfig {
                    ncpu: Some(ncpu),
                    ..Default::default()
                })
                .unwrap();
                let a = tensor(&rt, &ashape, &atile, DType::F32, 1);
                let b = tensor(&rt, &bshape, &btile, DType::F32, 2);
                let c = tensor(&rt, &[m, n], &[tm, 11], DType::F32, 3);
                let c0: Vec<f32> = bytemuck::cast_slice(&c.to_bytes().unwrap()).to_vec();
                gemm(&spec, &a, &b, &c).unwrap();
                rt.wait_all().unwrap();
                let got = c.to_bytes().unwrap();
                let (av, bv): (Vec<f32>, Vec<f32>) = (
                    bytemuck::cast_slice(&a.to_bytes().unwrap()).to_vec(),
                    bytemuck::cast_slice(&b.to_bytes().unwrap()).to_vec(),
                );
                let want = reference_gemm(ta, tb, m, n, k, 0.75, &av, &bv, 0.5, &c0);
                let gotf: &[f32] = bytemuck::cast_slice(&got);
                let num: f64 = gotf
                    .iter()
                    .zip(&want)
                    .map(|(&g, &w)| (g as f64 - w).powi(2))
                    .sum();
                let den: f64 = want.iter().map(|w| w * w).sum();
                assert!(
                    (num / den).sqrt() < 1e-6,
                    "m={m} ta={ta} tb={tb}: rel err {}",
                    (num / den).sqrt()
                );
                results.push(got);
            }
            assert_eq!(
                results[0], results[1],
                "m={m} ta={ta} tb={tb}: depends on the workers"
            );
        }
    }
}
