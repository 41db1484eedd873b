//! `cuda/optim.cu`: the optimizer steps. [`SgdScalars`] and [`AdamScalars`]
//! take the arguments of `crate::kernels::cpu::optim::{sgd_step, adam_step}`
//! and derive the kernels' scalars as those do (in f64, then rounded once to
//! the master type `P`; `1 - w` of Adam's lerp in `P`'s own arithmetic), so a
//! GPU step rounds where the CPU step and torch do.
//!
//! Kernels exist for `(P, G)` in [`optim_supported`]: f32 masters with f32,
//! bf16 or f16 gradients, f64 masters with f64 or f32 gradients.

use crate::dtype::{Accum, DType, Element};

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_optim {
    ($cb:ident) => {
        $cb! { Optim;
            /// One SGD step (torch semantics; see `kernels::cpu::optim::sgd_step`),
            /// `buf` the momentum buffer (`None` exactly when momentum is 0).
            sgd_step<P, G> for optim (
                n: val usize = p.len(), p: out P [n], g: in G [n], buf: opt_out P [n],
                s: host SgdScalars<P> {
                    neg_lr: P, wd: P, decay: i32, has_momentum: i32, mom: P, one_m_damp: P,
                    nesterov: i32, first_step: i32,
                },
            ) if ((s.has_momentum != 0) == buf.is_some()) @ elementwise(n);
            /// One Adam or AdamW step (torch semantics; see
            /// `kernels::cpu::optim::adam_step`).
            adam_step<P, G> for optim (
                n: val usize = p.len(), p: out P [n], g: in G [n], m: out P [n], v: out P [n],
                s: host AdamScalars<P> {
                    neg_step_size: P, bc2_sqrt: P, eps: P, w: P, one_m_w: P, lerp_lo: i32, b2: P,
                    one_m_b2: P, wd: P, decay_p: P, couple: i32, decouple: i32,
                },
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

/// The scalar arguments of `sgd_step_<P>_<G>`.
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

/// The scalar arguments of `adam_step_<P>_<G>` for 1-based `step`.
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
    pub fn new(
        step: u64,
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> Self {
        assert!(step >= 1, "adam_step: step is 1-based");
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
