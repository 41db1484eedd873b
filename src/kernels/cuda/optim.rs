//! `cuda/optim.cu`: the optimizer steps. [`SgdScalars`] and [`AdamScalars`]
//! take the arguments of `crate::kernels::cpu::optim::{sgd_step, adam_step}`
//! and derive the kernels' scalars as those do (in f64, then rounded once to
//! the master type `P`; `1 - w` of Adam's lerp in `P`'s own arithmetic), so a
//! GPU step rounds where the CPU step and torch do.

use crate::dtype::{Accum, DType, Element};

cuda_table! { cuda_table_optim($) Optim;
    /// One SGD step (torch semantics; see `kernels::cpu::optim::sgd_step`),
    /// `buf` the momentum buffer (`None` exactly when momentum is 0).
    sgd_step<P, G> for optim (
        n = p.len(), p: out P [n], g: in G [n], buf: opt_out P [n],
        s: host SgdScalars<P> {
            neg_lr: P, wd: P, decay: i32, has_momentum: i32, mom: P, one_m_damp: P,
            nesterov: i32, first_step: i32,
        },
    ) if ((s.has_momentum != 0) == buf.is_some()) @ elementwise(n);
    /// One Adam or AdamW step (torch semantics; see `kernels::cpu::optim`).
    adam_step<P, G> for optim (
        n = p.len(), p: out P [n], g: in G [n], m: out P [n], v: out P [n],
        s: host AdamScalars<P> {
            neg_step_size: P, bc2_sqrt: P, eps: P, w: P, one_m_w: P, lerp_lo: i32, b2: P,
            one_m_b2: P, wd: P, decay_p: P, couple: i32, decouple: i32,
        },
    ) @ elementwise(n);
}

/// Whether `optim.cu` has a step for masters `p` and gradients `g`.
pub fn optim_supported(p: DType, g: DType) -> bool {
    use DType::{BF16, F16, F32, F64};
    matches!((p, g), (F32, F32 | BF16 | F16) | (F64, F64 | F32))
}

/// `P` (f32 or f64, its own accumulator) rounded from f64 as the CPU rounds.
fn sc<P: Element>(v: f64) -> P {
    P::from_acc(P::Acc::of(v))
}

/// A struct of scalar kernel arguments and its `new(args)`: the statements,
/// then each field's value. The fields are the table's `host` fields, in order.
macro_rules! scalars {
    ($(#[$m:meta])* $name:ident ($($a:ident: $at:ty),*) { $($pre:tt)* }
        { $($f:ident: $ft:ty = $fv:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug)]
        pub struct $name<P> { $(pub $f: $ft),* }
        impl<P: Element> $name<P> {
            #[allow(clippy::too_many_arguments)]
            pub fn new($($a: $at),*) -> Self {
                $($pre)*
                $name { $($f: $fv),* }
            }
        }
    };
}

scalars! {
    /// The scalar arguments of `sgd_step_<P>_<G>`.
    SgdScalars(
        lr: f64, momentum: f64, dampening: f64, nesterov: bool, weight_decay: f64,
        first_step: bool
    ) {} {
        neg_lr: P = sc(-lr), wd: P = sc(weight_decay), decay: i32 = (weight_decay != 0.0) as i32,
        has_momentum: i32 = (momentum != 0.0) as i32, mom: P = sc(momentum),
        one_m_damp: P = sc(1.0 - dampening), nesterov: i32 = nesterov as i32,
        first_step: i32 = first_step as i32,
    }
}

scalars! {
    /// The scalar arguments of `adam_step_<P>_<G>` for 1-based `step`.
    AdamScalars(
        step: u64, lr: f64, beta1: f64, beta2: f64, eps: f64, weight_decay: f64, decoupled: bool
    ) {
        assert!(step >= 1, "adam_step: step is 1-based");
        let (bc1, bc2) = (1.0 - beta1.powf(step as f64), 1.0 - beta2.powf(step as f64));
        let (w1, decay) = (1.0 - beta1, weight_decay != 0.0);
        let w = P::Acc::of(w1);
    } {
        neg_step_size: P = sc(-(lr / bc1)), bc2_sqrt: P = sc(bc2.sqrt()), eps: P = sc(eps),
        w: P = P::from_acc(w), one_m_w: P = P::from_acc(P::Acc::ONE - w),
        lerp_lo: i32 = (w1 < 0.5) as i32, b2: P = sc(beta2), one_m_b2: P = sc(1.0 - beta2),
        wd: P = sc(weight_decay), decay_p: P = sc(1.0 - lr * weight_decay),
        couple: i32 = (decay && !decoupled) as i32, decouple: i32 = (decay && decoupled) as i32,
    }
}
