//! optim.cu: SGD (plain, weight decay, momentum, dampening, Nesterov) and
//! Adam / AdamW (both branches of torch's lerp) over several steps, for every
//! (master, gradient) pair the host build has. optim.cu mirrors
//! src/kernels/cpu/optim.rs operation by operation: bit for bit.

use super::{exact, Buf, Dev, Rng};
use crate::optim as emu;
use gpt2rs::dtype::Element;
use gpt2rs::kernels::cpu::optim as ko;
use gpt2rs::kernels::cuda::optim::{AdamScalars, SgdScalars};

// The launchers' scalars (`SgdScalars` / `AdamScalars` of
// kernels/cuda/optim.rs, shared) around the generated bindings.

#[allow(clippy::too_many_arguments)]
fn dev_sgd<P: Dev, G: Element>(
    p: &mut Buf<P>,
    g: &[G],
    buf: Option<&mut Buf<P>>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    weight_decay: f64,
    first_step: bool,
) {
    let s = SgdScalars::<P>::new(lr, momentum, dampening, nesterov, weight_decay, first_step);
    // Without momentum the launcher passes a null buffer.
    emu::sgd_step::<P, G>(p.get_mut(), g, buf.map(|b| b.get_mut()), s);
}

#[allow(clippy::too_many_arguments)]
fn dev_adam<P: Dev, G: Element>(
    p: &mut Buf<P>,
    g: &[G],
    m: &mut Buf<P>,
    v: &mut Buf<P>,
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
) {
    let s = AdamScalars::<P>::new(step, lr, beta1, beta2, eps, weight_decay, decoupled);
    emu::adam_step::<P, G>(p.get_mut(), g, m.get_mut(), v.get_mut(), s);
}

fn grads<G: Element>(step: u64, n: usize) -> Vec<G> {
    let mut g: Vec<G> = Rng(60 + step).vec(n, 0.0, 2.0);
    g[0] = G::from_f64(0.0);
    g[1] = G::from_f64(1e4);
    g[2] = G::from_f64(-3e-7);
    g
}

fn steps<P: Dev, G: Dev>() {
    let n = 1000;
    let p0: Vec<P> = Rng(61).vec(n, 0.0, 1.0);
    let sgd = [
        (0.1, 0.0, 0.0, false, 0.0),
        (0.05, 0.0, 0.0, false, 0.01),
        (0.1, 0.9, 0.0, false, 0.0),
        (0.1, 0.9, 0.1, true, 1e-4),
        (0.01, 0.5, 0.5, false, 0.1),
    ];
    for (lr, mom, damp, nest, wd) in sgd {
        let (mut pw, mut bw) = (p0.clone(), vec![P::from_f64(0.0); n]);
        let (mut p, mut b) = (Buf::new(&p0), Buf::<P>::zeros(n));
        for step in 0..3 {
            let g: Vec<G> = grads(step, n);
            let first = step == 0;
            let buf_w: &mut [P] = if mom != 0.0 { &mut bw } else { &mut [] };
            ko::sgd_step::<P, G>(&mut pw, &g, buf_w, lr, mom, damp, nest, wd, first);
            let buf = (mom != 0.0).then_some(&mut b);
            dev_sgd::<P, G>(&mut p, &g, buf, lr, mom, damp, nest, wd, first);
            let what = format!(
                "sgd lr {lr} momentum {mom} dampening {damp} nesterov {nest} wd {wd} step {step}"
            );
            exact(&format!("{what}: p"), p.get(), &pw);
            exact(&format!("{what}: buf"), b.get(), &bw);
        }
    }
    let adam = [
        (1e-3, 0.9, 0.999, 1e-8, 0.0, false),
        (1e-3, 0.9, 0.999, 1e-8, 0.01, false),
        (6e-4, 0.9, 0.95, 1e-8, 0.1, true),
        (0.01, 0.3, 0.5, 1e-6, 0.05, true),
    ];
    for (lr, b1, b2, eps, wd, decoupled) in adam {
        let (mut pw, mut mw, mut vw) = (
            p0.clone(),
            vec![P::from_f64(0.0); n],
            vec![P::from_f64(0.0); n],
        );
        let (mut p, mut m, mut v) = (Buf::new(&p0), Buf::<P>::zeros(n), Buf::<P>::zeros(n));
        for step in 1..=4 {
            let g: Vec<G> = grads(step, n);
            ko::adam_step::<P, G>(
                &mut pw, &g, &mut mw, &mut vw, step, lr, b1, b2, eps, wd, decoupled,
            );
            dev_adam::<P, G>(
                &mut p, &g, &mut m, &mut v, step, lr, b1, b2, eps, wd, decoupled,
            );
            let what = format!(
                "adam lr {lr} betas {b1} {b2} eps {eps} wd {wd} decoupled {decoupled} step {step}"
            );
            exact(&format!("{what}: p"), p.get(), &pw);
            exact(&format!("{what}: m"), m.get(), &mw);
            exact(&format!("{what}: v"), v.get(), &vw);
        }
    }
}

#[test]
fn f32_masters_f32_grads() {
    steps::<f32, f32>();
}
#[test]
fn f64_masters_f64_grads() {
    steps::<f64, f64>();
}
#[test]
fn f64_masters_f32_grads() {
    steps::<f64, f32>();
}
