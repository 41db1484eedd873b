//! `cuda/optim.cu`: the optimizer steps. The launchers take the same
//! arguments as `crate::kernels::cpu::optim::{sgd_step, adam_step}` and
//! derive the same scalars the same way (in f64, then rounded once to the
//! master type `P`; `1 - w` of Adam's lerp in `P`'s own arithmetic), so a
//! GPU step rounds where the CPU step and torch do.
//!
//! Kernels exist for `(P, G)` in [`optim_supported`]: f32 masters with f32,
//! bf16 or f16 gradients, f64 masters with f64 or f32 gradients.

use super::context::{DevElement, Gpu};
use crate::dtype::{Accum, DType, Element};
use crate::error::{arg_err, Result};
use cudarc::driver::{CudaView, CudaViewMut};

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_optim {
    ($cb:ident) => {
        $cb! { Optim;
            /// One SGD step on `n` parameters (`buf` null without momentum).
            sgd_step as sgd_step_raw<P, G> for optim (
                n: val usize, p: out P [n], g: in G [n], buf: opt_out P [n], neg_lr: val P,
                wd: val P, decay: val i32, has_momentum: val i32, mom: val P, one_m_damp: val P,
                nesterov: val i32, first_step: val i32,
            ) @ elementwise(n);
            /// One Adam/AdamW step on `n` parameters.
            adam_step as adam_step_raw<P, G> for optim (
                n: val usize, p: out P [n], g: in G [n], m: out P [n], v: out P [n],
                neg_step_size: val P, bc2_sqrt: val P, eps: val P, w: val P, one_m_w: val P,
                lerp_lo: val i32, b2: val P, one_m_b2: val P, wd: val P, decay_p: val P,
                couple: val i32, decouple: val i32,
            ) @ elementwise(n);
        }
    };
}
crate::cuda_table_optim!(launchers);

/// Whether `optim.cu` has a step for masters `p` and gradients `g`.
pub fn optim_supported(p: DType, g: DType) -> bool {
    matches!(
        (p, g),
        (DType::F32, DType::F32)
            | (DType::F32, DType::BF16)
            | (DType::F32, DType::F16)
            | (DType::F64, DType::F64)
            | (DType::F64, DType::F32)
    )
}

/// `P` rounded from an f64 scalar, as the CPU's `P::Acc::of` (P is f32 or
/// f64, its own accumulator type).
fn sc<P: Element>(v: f64) -> P {
    P::from_acc(P::Acc::of(v))
}

/// The scalar arguments of `sgd_step_<P>_<G>`, derived as the CPU kernel
/// derives them; shared by the launcher and the host emulator's tests.
#[derive(Clone, Copy, Debug)]
pub struct SgdScalars<P> {
    pub neg_lr: P,
    pub wd: P,
    pub decay: i32,
    pub has_momentum: i32,
    pub mom: P,
    pub one_m_damp: P,
    pub nesterov: i32,
    pub first_step: i32,
}

impl<P: Element> SgdScalars<P> {
    pub fn new(
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
        first_step: bool,
    ) -> Self {
        SgdScalars {
            neg_lr: sc::<P>(-lr),
            wd: sc::<P>(weight_decay),
            decay: (weight_decay != 0.0) as i32,
            has_momentum: (momentum != 0.0) as i32,
            mom: sc::<P>(momentum),
            one_m_damp: sc::<P>(1.0 - dampening),
            nesterov: nesterov as i32,
            first_step: first_step as i32,
        }
    }
}

/// The scalar arguments of `adam_step_<P>_<G>` for 1-based `step`, derived
/// as the CPU kernel derives them (`1 - w` of the lerp in `P`'s own
/// arithmetic); shared by the launcher and the host emulator's tests.
#[derive(Clone, Copy, Debug)]
pub struct AdamScalars<P> {
    pub neg_step_size: P,
    pub bc2_sqrt: P,
    pub eps: P,
    pub w: P,
    pub one_m_w: P,
    pub lerp_lo: i32,
    pub b2: P,
    pub one_m_b2: P,
    pub wd: P,
    pub decay_p: P,
    pub couple: i32,
    pub decouple: i32,
}

impl<P: Element> AdamScalars<P> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        step: u64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Self {
        let step_f = step as f64;
        let bc1 = 1.0 - beta1.powf(step_f);
        let bc2 = 1.0 - beta2.powf(step_f);
        let w1 = 1.0 - beta1;
        let w = P::Acc::of(w1);
        AdamScalars {
            neg_step_size: sc::<P>(-(lr / bc1)),
            bc2_sqrt: sc::<P>(bc2.sqrt()),
            eps: sc::<P>(eps),
            w: P::from_acc(w),
            one_m_w: P::from_acc(P::Acc::ONE - w),
            lerp_lo: (w1 < 0.5) as i32,
            b2: sc::<P>(beta2),
            one_m_b2: sc::<P>(1.0 - beta2),
            wd: sc::<P>(weight_decay),
            decay_p: sc::<P>(1.0 - lr * weight_decay),
            couple: (weight_decay != 0.0 && !decoupled) as i32,
            decouple: (weight_decay != 0.0 && decoupled) as i32,
        }
    }
}

/// One SGD step (torch semantics; see `kernels::cpu::optim::sgd_step`).
/// `momentum_buf` is `None` exactly when `momentum == 0`.
#[allow(clippy::too_many_arguments)]
pub fn sgd_step<P: DevElement, G: DevElement>(
    gpu: &Gpu,
    p: &mut CudaViewMut<P>,
    g: &CudaView<G>,
    momentum_buf: Option<&mut CudaViewMut<P>>,
    lr: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    weight_decay: f64,
    first_step: bool,
) -> Result<()> {
    if (momentum != 0.0) != momentum_buf.is_some() {
        return Err(arg_err(
            "cuda.sgd_step",
            "a momentum buffer is needed exactly when momentum != 0",
        ));
    }
    let s = SgdScalars::<P>::new(lr, momentum, dampening, nesterov, weight_decay, first_step);
    let n = p.len();
    sgd_step_raw(
        gpu,
        n,
        p,
        g,
        momentum_buf,
        s.neg_lr,
        s.wd,
        s.decay,
        s.has_momentum,
        s.mom,
        s.one_m_damp,
        s.nesterov,
        s.first_step,
    )
}

/// One Adam (`decoupled = false`) or AdamW step (torch semantics; see
/// `kernels::cpu::optim::adam_step`); `step` is 1-based.
#[allow(clippy::too_many_arguments)]
pub fn adam_step<P: DevElement, G: DevElement>(
    gpu: &Gpu,
    p: &mut CudaViewMut<P>,
    g: &CudaView<G>,
    m: &mut CudaViewMut<P>,
    v: &mut CudaViewMut<P>,
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
) -> Result<()> {
    if step == 0 {
        return Err(arg_err("cuda.adam_step", "step is 1-based"));
    }
    let s = AdamScalars::<P>::new(step, lr, beta1, beta2, eps, weight_decay, decoupled);
    let n = p.len();
    adam_step_raw(
        gpu,
        n,
        p,
        g,
        m,
        v,
        s.neg_step_size,
        s.bc2_sqrt,
        s.eps,
        s.w,
        s.one_m_w,
        s.lerp_lo,
        s.b2,
        s.one_m_b2,
        s.wd,
        s.decay_p,
        s.couple,
        s.decouple,
    )
}
