//! Optimizer steps on one parameter tile, mirroring PyTorch's single-tensor
//! implementations (`torch.optim.sgd._single_tensor_sgd`,
//! `torch.optim.adam._single_tensor_adam`) operation by operation, so an f64
//! run matches torch's f64 trajectory to rounding and an f32 run rounds where
//! torch's f32 run does.
//!
//! ```text
//! SGD:   d = g + wd*p
//!        buf = d (first step) | momentum*buf + (1 - dampening)*d   (momentum != 0)
//!        d = nesterov ? d + momentum*buf : buf                     (momentum != 0)
//!        p = p - lr*d
//! Adam:  AdamW: p = p * (1 - lr*wd)      Adam: g = g + wd*p
//!        m = m + (g - m)*(1 - beta1)           (torch lerp, weight < 0.5 branch)
//!        v = beta2*v + ((1 - beta2)*g)*g
//!        bc1 = 1 - beta1^step,  bc2 = 1 - beta2^step
//!        denom = sqrt(v) / sqrt(bc2) + eps
//!        p = p + (-(lr/bc1) * m) / denom       (torch addcdiv: self + value*t1/t2)
//! ```
//!
//! Shapes: `p`, `g` and every state buffer are the same tile, flat. The
//! parameters `p` and the state are in the master type `P` (f32, or f64);
//! gradients `G` may be narrower and are widened exactly. Scalars that torch
//! computes in Python (`1 - dampening`, `lr / bc1`, `sqrt(bc2)`, ...) are
//! computed in f64 and rounded to `P` once, as torch converts a Python
//! scalar to the tensor's dtype. The gradient is read, never written.
//!
//! ```
//! use gpt2rs::kernels::cpu::optim::sgd_step;
//! let mut p = [1.0f64];
//! sgd_step(&mut p, &[0.5f64], &mut [], 0.1, 0.0, 0.0, false, 0.0, true);
//! assert_eq!(p, [0.95]);
//! ```

use crate::dtype::{Accum, Element};

/// One SGD step (torch semantics; see the module doc). `momentum_buf` may be
/// empty when `momentum == 0`; `first_step` initialises it to the gradient.
#[allow(clippy::too_many_arguments)]
pub fn sgd_step<P: Element, G: Element>(
    p: &mut [P],
    g: &[G],
    momentum_buf: &mut [P],
    lr: f64,
    momentum: f64,
    dampening: f64,
    nesterov: bool,
    weight_decay: f64,
    first_step: bool,
) {
    assert_eq!(p.len(), g.len(), "sgd_step: p and g lengths differ");
    let wd = P::Acc::of(weight_decay);
    let neg_lr = P::Acc::of(-lr);
    let decay = weight_decay != 0.0;
    if momentum == 0.0 {
        for (pv, gv) in p.iter_mut().zip(g) {
            let x = pv.to_acc();
            let mut d = widen::<G, P>(*gv);
            if decay {
                d += wd * x;
            }
            *pv = P::from_acc(x + neg_lr * d);
        }
        return;
    }
    assert_eq!(
        momentum_buf.len(),
        p.len(),
        "sgd_step: momentum buffer length"
    );
    let mom = P::Acc::of(momentum);
    let one_m_damp = P::Acc::of(1.0 - dampening);
    for ((pv, gv), bv) in p.iter_mut().zip(g).zip(momentum_buf.iter_mut()) {
        let x = pv.to_acc();
        let mut d = widen::<G, P>(*gv);
        if decay {
            d += wd * x;
        }
        let buf = if first_step {
            d // torch.clone(grad)
        } else {
            bv.to_acc() * mom + one_m_damp * d // buf.mul_(momentum).add_(grad, alpha=1-dampening)
        };
        *bv = P::from_acc(buf);
        let buf = bv.to_acc(); // as stored (a no-op for f32/f64 master weights)
        let d = if nesterov { d + mom * buf } else { buf };
        *pv = P::from_acc(x + neg_lr * d);
    }
}

/// One Adam (`decoupled = false`) or AdamW (`decoupled = true`) step, torch
/// semantics; `step` is 1-based and already incremented for this step.
#[allow(clippy::too_many_arguments)]
pub fn adam_step<P: Element, G: Element>(
    p: &mut [P],
    g: &[G],
    m: &mut [P],
    v: &mut [P],
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
) {
    assert_eq!(p.len(), g.len(), "adam_step: p and g lengths differ");
    assert_eq!(m.len(), p.len(), "adam_step: m length");
    assert_eq!(v.len(), p.len(), "adam_step: v length");
    assert!(step >= 1, "adam_step: step is 1-based");
    // Python-side scalars, in f64, then rounded once to P.
    let step_f = step as f64;
    let bc1 = 1.0 - beta1.powf(step_f);
    let bc2 = 1.0 - beta2.powf(step_f);
    let neg_step_size = P::Acc::of(-(lr / bc1));
    let bc2_sqrt = P::Acc::of(bc2.sqrt());
    let eps = P::Acc::of(eps);
    let w1 = 1.0 - beta1; // lerp weight
    let lerp_lo = w1 < 0.5;
    let w = P::Acc::of(w1);
    // torch: `opmath_t(1) - weight`, in the tensor's arithmetic type.
    let one_m_w = P::Acc::ONE - w;
    let b2 = P::Acc::of(beta2);
    let one_m_b2 = P::Acc::of(1.0 - beta2);
    let wd = P::Acc::of(weight_decay);
    let decay_p = P::Acc::of(1.0 - lr * weight_decay);
    let (couple, decouple) = (
        weight_decay != 0.0 && !decoupled,
        weight_decay != 0.0 && decoupled,
    );
    for (((pv, gv), mv), vv) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let mut x = pv.to_acc();
        let mut gr = widen::<G, P>(*gv);
        if decouple {
            x = round::<P>(x * decay_p); // param.mul_(1 - lr*wd)
        }
        if couple {
            gr += wd * x; // grad.add(param, alpha=wd)
        }
        // exp_avg.lerp_(grad, 1 - beta1): torch's CPU lerp picks the form by
        // weight. (Its vectorized loop fuses the multiply-add where the CPU
        // has FMA; we do not, as `mul_add` without the target feature is a
        // slow libm call: at most an ulp of difference per step.)
        let mo = mv.to_acc();
        let mn = if lerp_lo {
            mo + w * (gr - mo)
        } else {
            gr - (gr - mo) * one_m_w
        };
        let mn = round::<P>(mn);
        // exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1-beta2)
        let vn = round::<P>(round::<P>(vv.to_acc() * b2) + one_m_b2 * gr * gr);
        // (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        let denom = round::<P>(round::<P>(vn.sqrt() / bc2_sqrt) + eps);
        // param.addcdiv_(exp_avg, denom, value=-step_size)
        x += neg_step_size * mn / denom;
        *mv = P::from_acc(mn);
        *vv = P::from_acc(vn);
        *pv = P::from_acc(x);
    }
}

/// A gradient element in P's arithmetic type (exact for G no wider than P).
#[inline(always)]
fn widen<G: Element, P: Element>(v: G) -> P::Acc {
    P::Acc::of(v.to_f64())
}

/// Rounds to P where torch stores an intermediate tensor of P's dtype (a
/// no-op for f32/f64, where P::Acc is P).
#[inline(always)]
fn round<P: Element>(v: P::Acc) -> P::Acc {
    P::from_acc(v).to_acc()
}
