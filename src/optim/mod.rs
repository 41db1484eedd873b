//! SGD, Adam and AdamW with torch.optim's semantics. The state of each
//! parameter (momentum buffer, or first and second moments) lives in tiles
//! cut exactly like the parameter, so a step is one task per parameter tile
//! (a flat loop, as in llm.c). With bf16 storage, the step updates the f32
//! master copy and writes the bf16 weights from it in the same task.
//!
//! On a GPU the task runs `cuda/optim.cu` (the CPU kernel's operations in
//! the same order, no fused multiply-adds) and then the cast kernel for the
//! bf16 weights; lr, the step count and the derived scalars are computed on
//! the host, per task, exactly as on the CPU.

use crate::dtype::DType;
use crate::error::{arg_err, Result};
use crate::kernels::cpu::elementwise::cast;
use crate::kernels::cpu::optim as k;
use crate::kernels::cuda::context::DevElement;
use crate::kernels::cuda::optim::{optim_supported, AdamScalars, SgdScalars};
use crate::model::Gpt2;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Where};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype};

/// x >= 0 and not NaN.
fn non_negative(x: f64) -> bool {
    x >= 0.0
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptimizerKind {
    Sgd {
        momentum: f64,
        dampening: f64,
        nesterov: bool,
    },
    Adam {
        beta1: f64,
        beta2: f64,
        eps: f64,
        /// AdamW: weight decay applied to the weights, not added to the gradient.
        decoupled: bool,
    },
}

impl OptimizerKind {
    /// Names of the state tensors per parameter, as torch's state_dict has them.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            OptimizerKind::Sgd { momentum, .. } if *momentum != 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd { .. } => &[],
            OptimizerKind::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        }
    }

    fn validate(&self, lr: f64, wd: f64) -> Result<()> {
        let op = "optimizer";
        if !non_negative(lr) {
            return Err(arg_err(op, format!("invalid learning rate {lr}")));
        }
        if !non_negative(wd) {
            return Err(arg_err(op, format!("invalid weight_decay {wd}")));
        }
        match *self {
            OptimizerKind::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                if !non_negative(momentum) {
                    return Err(arg_err(op, format!("invalid momentum {momentum}")));
                }
                if nesterov && (momentum <= 0.0 || dampening != 0.0) {
                    return Err(arg_err(
                        op,
                        "nesterov momentum requires a momentum and zero dampening",
                    ));
                }
            }
            OptimizerKind::Adam {
                beta1, beta2, eps, ..
            } => {
                if !(0.0..1.0).contains(&beta1) || !(0.0..1.0).contains(&beta2) {
                    return Err(arg_err(op, format!("invalid betas ({beta1}, {beta2})")));
                }
                if !non_negative(eps) {
                    return Err(arg_err(op, format!("invalid eps {eps}")));
                }
            }
        }
        Ok(())
    }
}

struct Slot {
    name: String,
    /// The tensor updated: f32 master weights, or the weights themselves.
    target: Tensor,
    /// bf16 weights written from the master copy after each step.
    value: Option<Tensor>,
    grad: Tensor,
    state: Vec<Tensor>,
}

/// One optimizer step on one parameter tile. Operands: the updated tensor
/// (RW), its gradient (R), the state tiles (RW, `nstate` of them), then the
/// bf16 weights written from the f32 master (W) when there is a master.
/// The step counter and lr travel here, as scalars, never on the device.
struct OptimStep {
    kind: OptimizerKind,
    lr: f64,
    wd: f64,
    /// 1-based, already counting this step.
    step: u64,
    /// Dtypes of the updated tensor, the gradient, and the weights written
    /// from a master copy.
    pt: DType,
    gt: DType,
    vt: Option<DType>,
    nstate: usize,
    n: usize,
    flops: f64,
}

impl Codelet for OptimStep {
    fn name(&self) -> &'static str {
        "optimizer_step"
    }
    fn flops(&self) -> f64 {
        self.flops
    }
    fn footprint(&self) -> u64 {
        crate::ops::footprint(&[self.n as u64])
    }
    fn where_(&self) -> Where {
        // The masters must be f32/f64 (the CPU path's `with_acc_dtype!`
        // would read anything else as f32 and fail); cast kernels exist from
        // f32/f64 to every dtype, so the weights copy needs no check.
        let master = matches!(self.pt, DType::F32 | DType::F64);
        if master && optim_supported(self.pt, self.gt) {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (lr, wd, step, nstate) = (self.lr, self.wd, self.step, self.nstate);
        with_acc_dtype!(self.pt, P, {
            with_dtype!(self.gt, G, {
                let p = b.w::<P>(0)?;
                let g = b.r::<G>(1)?;
                match self.kind {
                    OptimizerKind::Sgd {
                        momentum,
                        dampening,
                        nesterov,
                    } => {
                        let mut empty: [P; 0] = [];
                        let buf = if nstate > 0 {
                            b.w::<P>(2)?
                        } else {
                            &mut empty[..]
                        };
                        k::sgd_step::<P, G>(
                            p,
                            g,
                            buf,
                            lr,
                            momentum,
                            dampening,
                            nesterov,
                            wd,
                            step == 1,
                        )
                    }
                    OptimizerKind::Adam {
                        beta1,
                        beta2,
                        eps,
                        decoupled,
                    } => k::adam_step::<P, G>(
                        p,
                        g,
                        b.w::<P>(2)?,
                        b.w::<P>(3)?,
                        step,
                        lr,
                        beta1,
                        beta2,
                        eps,
                        wd,
                        decoupled,
                    ),
                }
                if let Some(vt) = self.vt {
                    with_dtype!(vt, V, { cast::<P, V>(p, b.w::<V>(2 + nstate)?) });
                }
            })
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        with_acc_dtype!(self.pt, P, {
            with_dtype!(self.gt, G, { self.cuda_typed::<P, G>(b) })
        })
    }
}

impl OptimStep {
    fn cuda_typed<P: DevElement, G: DevElement>(&self, b: &DevBuffers) -> Result<()> {
        let gpu = b.gpu();
        let mut p = b.w::<P>(0)?;
        let g = b.r::<G>(1)?;
        match self.kind {
            OptimizerKind::Sgd {
                momentum,
                dampening,
                nesterov,
            } => {
                let mut buf = if self.nstate > 0 {
                    Some(b.w::<P>(2)?)
                } else {
                    None
                };
                let s = SgdScalars::new(
                    self.lr,
                    momentum,
                    dampening,
                    nesterov,
                    self.wd,
                    self.step == 1,
                );
                crate::kernels::cuda::optim::sgd_step::<P, G>(gpu, &mut p, &g, buf.as_mut(), s)?;
            }
            OptimizerKind::Adam {
                beta1,
                beta2,
                eps,
                decoupled,
            } => {
                let s = AdamScalars::new(self.step, self.lr, beta1, beta2, eps, self.wd, decoupled);
                let (mut m, mut v) = (b.w::<P>(2)?, b.w::<P>(3)?);
                crate::kernels::cuda::optim::adam_step::<P, G>(gpu, &mut p, &g, &mut m, &mut v, s)?
            }
        }
        if let Some(vt) = self.vt {
            // Same stream, so the cast reads the updated masters.
            with_dtype!(vt, V, {
                {
                    let mut v = b.w::<V>(2 + self.nstate)?;
                    crate::kernels::cuda::elementwise::cast::<P, V>(b.gpu(), &p.as_view(), &mut v)?
                }
            });
        }
        Ok(())
    }
}

pub struct Optimizer {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// Steps taken (torch's `state[p]["step"]`).
    pub step: u64,
    slots: Vec<Slot>,
    /// The tiles this process steps, per parameter (ZeRO-1: the tiles it
    /// owns); None = all.
    stepped: Option<Vec<Vec<bool>>>,
}

impl Optimizer {
    pub fn new(model: &Gpt2, kind: OptimizerKind, lr: f64, weight_decay: f64) -> Result<Optimizer> {
        kind.validate(lr, weight_decay)?;
        let mut slots = Vec::new();
        for p in &model.params.list {
            let target = p.updated().clone();
            let state = kind
                .state_names()
                .iter()
                .map(|_| target.zeros_like())
                .collect::<Result<Vec<_>>>()?;
            slots.push(Slot {
                name: p.name.clone(),
                value: p.master.as_ref().map(|_| p.value.clone()),
                target,
                grad: p.grad.clone(),
                state,
            });
        }
        Ok(Optimizer {
            kind,
            lr,
            weight_decay,
            step: 0,
            slots,
            stepped: None,
        })
    }

    /// Restricts the steps to the tiles marked in `mask` (per parameter, per
    /// tile); the state of the other tiles is never touched, so its memory
    /// is never allocated.
    pub fn set_stepped_tiles(&mut self, mask: Option<Vec<Vec<bool>>>) -> Result<()> {
        if let Some(m) = &mask {
            let fits = m.len() == self.slots.len()
                && m.iter()
                    .zip(&self.slots)
                    .all(|(t, s)| t.len() == s.target.tiles.len());
            if !fits {
                return Err(arg_err(
                    "optimizer",
                    "the stepped-tile mask does not fit the parameters",
                ));
            }
        }
        self.stepped = mask;
        Ok(())
    }

    /// Replaces the state of the tiles this process does not step with
    /// fresh (unallocated) zeros, returning their memory (ZeRO-1, after a
    /// checkpoint gathered or a resume loaded the whole state).
    pub fn release_unstepped_state(&mut self) -> Result<()> {
        let Some(mask) = &self.stepped else {
            return Ok(());
        };
        for (s, m) in self.slots.iter_mut().zip(mask) {
            for st in &mut s.state {
                let rt = st.runtime().clone();
                for (i, keep) in m.iter().enumerate() {
                    if !keep {
                        st.tiles[i] = rt.new_handle(st.dtype, st.tiles[i].len())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Submits one step over every parameter tile.
    pub fn step(&mut self) -> Result<()> {
        if !non_negative(self.lr) {
            return Err(arg_err(
                "optimizer",
                format!("invalid learning rate {}", self.lr),
            ));
        }
        self.step += 1;
        let (kind, lr, wd, step) = (self.kind, self.lr, self.weight_decay, self.step);
        for (si, s) in self.slots.iter().enumerate() {
            let (pt, gt) = (s.target.dtype, s.grad.dtype);
            let vt = s.value.as_ref().map(|v| v.dtype);
            for (i, ph) in s.target.tiles.iter().enumerate() {
                if self.stepped.as_ref().is_some_and(|m| !m[si][i]) {
                    continue;
                }
                let mut ops: Vec<(DataHandle, Access)> = vec![
                    (ph.clone(), Access::RW),
                    (s.grad.tiles[i].clone(), Access::R),
                ];
                ops.extend(s.state.iter().map(|t| (t.tiles[i].clone(), Access::RW)));
                let nstate = s.state.len();
                if let Some(v) = &s.value {
                    ops.push((v.tiles[i].clone(), Access::W));
                }
                let n = ph.len();
                let flops = match kind {
                    OptimizerKind::Sgd { .. } => 4.0,
                    OptimizerKind::Adam { .. } => 12.0,
                } * n as f64;
                s.target.runtime().submit(
                    Box::new(OptimStep {
                        kind,
                        lr,
                        wd,
                        step,
                        pt,
                        gt,
                        vt,
                        nstate,
                        n,
                        flops,
                    }),
                    ops,
                )?;
            }
        }
        Ok(())
    }

    /// (parameter name, state name, tensor) for every state tensor.
    pub fn state_tensors(&self) -> Vec<(&str, &'static str, &Tensor)> {
        let names = self.kind.state_names();
        self.slots
            .iter()
            .flat_map(|s| {
                s.state
                    .iter()
                    .zip(names)
                    .map(move |(t, n)| (s.name.as_str(), *n, t))
            })
            .collect()
    }

    /// State tensor `k` (in `state_names` order) of every parameter.
    pub fn state_of(&self, k: usize) -> Vec<Tensor> {
        self.slots.iter().map(|s| s.state[k].clone()).collect()
    }

    pub fn state_dtype(&self) -> Option<DType> {
        self.slots.first().map(|s| s.target.dtype)
    }
}
