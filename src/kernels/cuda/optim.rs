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
    let has_momentum = momentum != 0.0;
    if has_momentum != momentum_buf.is_some() {
        return Err(arg_err(
            "cuda.sgd_step",
            "a momentum buffer is needed exactly when momentum != 0",
        ));
    }
    let (neg_lr, wd) = (sc::<P>(-lr), sc::<P>(weight_decay));
    let (mom, one_m_damp) = (sc::<P>(momentum), sc::<P>(1.0 - dampening));
    let decay = (weight_decay != 0.0) as i32;
    let (has_mom, nest, first) = (has_momentum as i32, nesterov as i32, first_step as i32);
    let n = p.len();
    sgd_step_raw(
        gpu,
        n,
        p,
        g,
        momentum_buf,
        neg_lr,
        wd,
        decay,
        has_mom,
        mom,
        one_m_damp,
        nest,
        first,
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
    // The CPU kernel's scalars, derived identically.
    let step_f = step as f64;
    let bc1 = 1.0 - beta1.powf(step_f);
    let bc2 = 1.0 - beta2.powf(step_f);
    let neg_step_size = sc::<P>(-(lr / bc1));
    let bc2_sqrt = sc::<P>(bc2.sqrt());
    let eps = sc::<P>(eps);
    let w1 = 1.0 - beta1;
    let lerp_lo = (w1 < 0.5) as i32;
    let w = P::Acc::of(w1);
    let one_m_w = P::from_acc(P::Acc::ONE - w);
    let w = P::from_acc(w);
    let (b2, one_m_b2) = (sc::<P>(beta2), sc::<P>(1.0 - beta2));
    let (wd, decay_p) = (sc::<P>(weight_decay), sc::<P>(1.0 - lr * weight_decay));
    let couple = (weight_decay != 0.0 && !decoupled) as i32;
    let decouple = (weight_decay != 0.0 && decoupled) as i32;
    let n = p.len();
    adam_step_raw(
        gpu,
        n,
        p,
        g,
        m,
        v,
        neg_step_size,
        bc2_sqrt,
        eps,
        w,
        one_m_w,
        lerp_lo,
        b2,
        one_m_b2,
        wd,
        decay_p,
        couple,
        decouple,
    )
}
