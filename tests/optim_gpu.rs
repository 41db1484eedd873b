//! The optimizer steps of `cuda/optim.cu` against the CPU kernels
//! (`kernels::cpu::optim`), on GPU 0 when there is one (skipped, with a
//! message, otherwise). Both run the same operations in the same order with
//! no fused multiply-adds and IEEE sqrt/division, from scalars derived the
//! same way on the host, so the trajectories must agree bit for bit, for
//! every (master, gradient) dtype pair the kernels have, over several steps
//! (the first SGD step initialises the momentum buffer).

use gpt2rs::kernels::cpu::optim::{adam_step, sgd_step};
use gpt2rs::kernels::cuda::context::DevElement;
use gpt2rs::kernels::cuda::context::{device_count, Gpu};
use gpt2rs::kernels::cuda::optim::{AdamScalars, SgdScalars};
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

/// splitmix64 values in [lo, hi), rounded to T.
fn host<T: Element>(n: usize, seed: u64, lo: f64, hi: f64) -> Vec<T> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            T::from_f64(lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64))
        })
        .collect()
}

fn same_bits<T: Element>(what: &str, got: &[T], want: &[T]) {
    let bad: Vec<usize> = (0..want.len())
        .filter(|&i| bytemuck::bytes_of(&got[i]) != bytemuck::bytes_of(&want[i]))
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} differ, first at {}: {:?} vs {:?}",
        bad.len(),
        want.len(),
        bad[0],
        got[bad[0]],
        want[bad[0]]
    );
}

const N: usize = 1000;
const STEPS: u64 = 3;

fn sgd_case<P: DevElement, G: DevElement>(
    dev: &Gpu,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    wd: f64,
) {
    let st = &dev.stream;
    let mut p = host::<P>(N, 1, -1.0, 1.0);
    let mut buf = vec![P::default(); if momentum != 0.0 { N } else { 0 }];
    let mut dp = st.clone_htod(&p).unwrap();
    let mut dbuf = st.clone_htod(&vec![P::default(); N]).unwrap();
    for step in 1..=STEPS {
        let g = host::<G>(N, 10 + step, -0.5, 0.5);
        let dg = st.clone_htod(&g).unwrap();
        let lr = 0.1 / step as f64;
        sgd_step(
            &mut p,
            &g,
            &mut buf,
            lr,
            momentum,
            dampening,
            nesterov,
            wd,
            step == 1,
        );
        let mut dbuf_view = dbuf.as_view_mut();
        gpt2rs::kernels::cuda::optim::sgd_step::<P, G>(
            dev,
            &mut dp.as_view_mut(),
            &dg.as_view(),
            (momentum != 0.0).then_some(&mut dbuf_view),
            SgdScalars::new(lr, momentum, dampening, nesterov, wd, step == 1),
        )
        .unwrap();
    }
    let what = format!(
        "sgd {:?}/{:?} momentum={momentum} dampening={dampening} nesterov={nesterov} wd={wd}",
        P::DTYPE,
        G::DTYPE
    );
    let got = st.clone_dtoh(&dp).unwrap();
    st.synchronize().unwrap();
    same_bits(&what, &got, &p);
    if momentum != 0.0 {
        let got = st.clone_dtoh(&dbuf).unwrap();
        st.synchronize().unwrap();
        same_bits(&format!("{what} buffer"), &got, &buf);
    }
}

fn adam_case<P: DevElement, G: DevElement>(
    dev: &Gpu,
    beta1: f64,
    beta2: f64,
    wd: f64,
    decoupled: bool,
) {
    let st = &dev.stream;
    let mut p = host::<P>(N, 2, -1.0, 1.0);
    let (mut m, mut v) = (vec![P::default(); N], vec![P::default(); N]);
    let mut dp = st.clone_htod(&p).unwrap();
    let mut dm = st.clone_htod(&m).unwrap();
    let mut dv = st.clone_htod(&v).unwrap();
    for step in 1..=STEPS {
        let g = host::<G>(N, 20 + step, -0.5, 0.5);
        let dg = st.clone_htod(&g).unwrap();
        let lr = 1e-3 * step as f64;
        adam_step(
            &mut p, &g, &mut m, &mut v, step, lr, beta1, beta2, 1e-8, wd, decoupled,
        );
        gpt2rs::kernels::cuda::optim::adam_step::<P, G>(
            dev,
            &mut dp.as_view_mut(),
            &dg.as_view(),
            &mut dm.as_view_mut(),
            &mut dv.as_view_mut(),
            AdamScalars::new(step, lr, beta1, beta2, 1e-8, wd, decoupled),
        )
        .unwrap();
    }
    let what = format!(
        "adam {:?}/{:?} betas=({beta1}, {beta2}) wd={wd} decoupled={decoupled}",
        P::DTYPE,
        G::DTYPE
    );
    for (name, d, h) in [("p", &dp, &p), ("m", &dm, &m), ("v", &dv, &v)] {
        let got = st.clone_dtoh(d).unwrap();
        st.synchronize().unwrap();
        same_bits(&format!("{what} {name}"), &got, h);
    }
}

fn all_cases<P: DevElement, G: DevElement>(dev: &Gpu) {
    sgd_case::<P, G>(dev, 0.0, 0.0, false, 0.0);
    sgd_case::<P, G>(dev, 0.0, 0.0, false, 0.01);
    sgd_case::<P, G>(dev, 0.9, 0.1, false, 0.01);
    sgd_case::<P, G>(dev, 0.9, 0.0, true, 0.0);
    // beta1 = 0.9: lerp weight 0.1 < 0.5; beta1 = 0.3: the other branch.
    for beta1 in [0.9, 0.3] {
        adam_case::<P, G>(dev, beta1, 0.999, 0.0, false);
        adam_case::<P, G>(dev, beta1, 0.99, 0.01, false);
        adam_case::<P, G>(dev, beta1, 0.95, 0.1, true);
    }
}

#[test]
fn optimizer_steps_match_cpu_bit_for_bit() {
    let Some(dev) = device() else { return };
    all_cases::<f32, f32>(&dev);
    all_cases::<f32, bf16>(&dev);
    all_cases::<f32, f16>(&dev);
    all_cases::<f64, f64>(&dev);
    all_cases::<f64, f32>(&dev);
}

#[test]
fn bf16_weights_from_f32_masters() {
    // The codelet's second kernel: the cast rounds to nearest-even like
    // half's from_f32 on the CPU.
    let Some(dev) = device() else { return };
    let st = &dev.stream;
    let mut p = host::<f32>(N, 3, -4.0, 4.0);
    p.extend([0.0, -0.0, 1e-40, f32::MAX, 3.0e38, 1.0 + 1.0 / 256.0]);
    let dp = st.clone_htod(&p).unwrap();
    let mut dw = st.clone_htod(&vec![bf16::ZERO; p.len()]).unwrap();
    gpt2rs::kernels::cuda::elementwise::cast::<f32, bf16>(
        &dev,
        &dp.as_view(),
        &mut dw.as_view_mut(),
    )
    .unwrap();
    let got = st.clone_dtoh(&dw).unwrap();
    st.synchronize().unwrap();
    let want: Vec<bf16> = p.iter().map(|&x| bf16::from_f32(x)).collect();
    same_bits("cast f32 -> bf16", &got, &want);
}
