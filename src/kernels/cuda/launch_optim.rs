//! Launchers of the optimizer steps in `cuda/optim.cu`. They take the same
//! arguments as `crate::kernels::cpu::optim::{sgd_step, adam_step}` and
//! derive the same scalars the same way (in f64, then rounded once to the
//! master type `P`; `1 - w` of Adam's lerp in `P`'s own arithmetic), so a
//! GPU step rounds where the CPU step and torch do.
//!
//! Kernels exist for `(P, G)` in [`optim_supported`]: f32 masters with f32,
//! bf16 or f16 gradients, f64 masters with f64 or f32 gradients.

use super::launch::{CudaKernels, DevElement};
use super::{cuda_err, grid_for, kernel_name, Module, ELEMENTWISE_BLOCK};
use crate::dtype::{Accum, DType, Element};
use crate::error::{shape_err, Result};
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, LaunchConfig, PushKernelArg};

fn drv(e: cudarc::driver::DriverError) -> crate::error::Error {
    cuda_err(format!("driver: {e}"))
}

fn elementwise(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (grid_for(n, ELEMENTWISE_BLOCK), 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

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

fn check(op: &str, want: usize, got: usize, what: &str) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(shape_err(
            &format!("cuda.{op}"),
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}

/// `P` rounded from an f64 scalar, as the CPU's `P::Acc::of` (P is f32 or
/// f64, its own accumulator type).
fn sc<P: Element>(v: f64) -> P {
    P::from_acc(P::Acc::of(v))
}

impl CudaKernels {
    /// One SGD step (torch semantics; see `kernels::cpu::optim::sgd_step`).
    /// `momentum_buf` is `None` exactly when `momentum == 0`.
    #[allow(clippy::too_many_arguments)]
    pub fn sgd_step<P: DevElement, G: DevElement>(
        &self,
        p: &mut CudaViewMut<P>,
        g: &CudaView<G>,
        momentum_buf: Option<&mut CudaViewMut<P>>,
        lr: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        weight_decay: f64,
        first_step: bool,
    ) -> Result<()>
    where
        P::Acc: DeviceRepr,
        G::Acc: DeviceRepr,
    {
        let n = p.len();
        check("sgd_step", n, g.len(), "g")?;
        let has_momentum = momentum != 0.0;
        if has_momentum != momentum_buf.is_some() {
            return Err(crate::error::arg_err(
                "cuda.sgd_step",
                "a momentum buffer is needed exactly when momentum != 0",
            ));
        }
        if let Some(buf) = &momentum_buf {
            check("sgd_step", n, buf.len(), "momentum buffer")?;
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.func(
            Module::Optim,
            &kernel_name("sgd_step", &[P::DTYPE, G::DTYPE]),
        )?;
        let (neg_lr, wd) = (sc::<P>(-lr), sc::<P>(weight_decay));
        let (mom, one_m_damp) = (sc::<P>(momentum), sc::<P>(1.0 - dampening));
        let decay = (weight_decay != 0.0) as i32;
        let (has_mom, nest, first) = (has_momentum as i32, nesterov as i32, first_step as i32);
        // Without momentum the kernel never touches `buf`: a null pointer.
        let null: u64 = 0;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&n).arg(p).arg(g);
        match momentum_buf {
            Some(buf) => b.arg(buf),
            None => b.arg(&null),
        };
        b.arg(&neg_lr)
            .arg(&wd)
            .arg(&decay)
            .arg(&has_mom)
            .arg(&mom)
            .arg(&one_m_damp)
            .arg(&nest)
            .arg(&first);
        // SAFETY: matches `sgd_step_<P>_<G>(usize n, P* p, const G* g, P* buf,
        // P neg_lr, P wd, int decay, int has_momentum, P mom, P one_m_damp,
        // int nesterov, int first_step)`; p, g (and buf) hold n elements.
        unsafe { b.launch(elementwise(n)) }.map_err(drv)?;
        Ok(())
    }

    /// One Adam (`decoupled = false`) or AdamW step (torch semantics; see
    /// `kernels::cpu::optim::adam_step`); `step` is 1-based.
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step<P: DevElement, G: DevElement>(
        &self,
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
    ) -> Result<()>
    where
        P::Acc: DeviceRepr,
        G::Acc: DeviceRepr,
    {
        let n = p.len();
        check("adam_step", n, g.len(), "g")?;
        check("adam_step", n, m.len(), "m")?;
        check("adam_step", n, v.len(), "v")?;
        if step == 0 {
            return Err(crate::error::arg_err("cuda.adam_step", "step is 1-based"));
        }
        if n == 0 {
            return Ok(());
        }
        let f = self.func(
            Module::Optim,
            &kernel_name("adam_step", &[P::DTYPE, G::DTYPE]),
        )?;
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
        let b2 = sc::<P>(beta2);
        let one_m_b2 = sc::<P>(1.0 - beta2);
        let wd = sc::<P>(weight_decay);
        let decay_p = sc::<P>(1.0 - lr * weight_decay);
        let couple = (weight_decay != 0.0 && !decoupled) as i32;
        let decouple = (weight_decay != 0.0 && decoupled) as i32;
        let mut b = self.stream().launch_builder(&f);
        b.arg(&n)
            .arg(p)
            .arg(g)
            .arg(m)
            .arg(v)
            .arg(&neg_step_size)
            .arg(&bc2_sqrt)
            .arg(&eps)
            .arg(&w)
            .arg(&one_m_w)
            .arg(&lerp_lo)
            .arg(&b2)
            .arg(&one_m_b2)
            .arg(&wd)
            .arg(&decay_p)
            .arg(&couple)
            .arg(&decouple);
        // SAFETY: matches `adam_step_<P>_<G>(usize n, P* p, const G* g, P* m,
        // P* v, P neg_step_size, P bc2_sqrt, P eps, P w, P one_m_w,
        // int lerp_lo, P b2, P one_m_b2, P wd, P decay_p, int couple,
        // int decouple)`; p, g, m and v hold n elements.
        unsafe { b.launch(elementwise(n)) }.map_err(drv)?;
        Ok(())
    }
}
