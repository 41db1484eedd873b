//! Fused log-softmax + cross-entropy over a vocabulary cut into tiles: per row
//! of tiles a chain of `maxsumexp` tasks gives (max, sum of exp); the loss sum
//! (f64, one element) gathers log-sum-exp minus the target logit; backward
//! turns the logits into their gradient in place, so probabilities are never
//! stored. Targets < 0 (HF's -100) are ignored. Training on CPU-only
//! runtimes does not come here: `lm_head_ce` folds the softmax into the LM
//! head's GEMM tasks, with these tasks composed as its spec.
//!
//! Gradient convention: `cross_entropy_bwd` overwrites the logits with their
//! gradient (an activation gradient, in place).
//!
//! Every task runs on CUDA too (`cuda/crossentropy.cu`, every dtype). The
//! targets are host data captured by the tasks: a GPU task copies its rows'
//! targets to the device (stream-ordered, through the device's pinned
//! staging), and the loss sums are reduced by one block, so the loss does
//! not depend on the schedule more than the CPU's does.

use super::footprint;
use super::layernorm::{acc_dtype, row_tensor};
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cpu::crossentropy as k;
use crate::kernels::cuda::crossentropy as cce;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Runtime, Where};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype, DType};
use std::sync::Arc;

pub(super) fn row_targets(targets: &[i64], logits: &Tensor, c: &[usize]) -> Arc<Vec<i64>> {
    let g = &logits.grid;
    let off = g.tile_offset(c);
    let ts = g.tile_shape(c);
    let t_total = g.shape[1];
    let mut v = Vec::with_capacity(ts[0] * ts[1]);
    for b in off[0]..off[0] + ts[0] {
        v.extend_from_slice(&targets[b * t_total + off[1]..b * t_total + off[1] + ts[1]]);
    }
    Arc::new(v)
}

/// One cross-entropy task; operands (in submission order) per variant.
enum Op {
    /// (loss W): loss = 0.
    LossInit,
    /// (acc W): acc [rows, 2] = (-inf, 0).
    StatsInit,
    /// (logits R, acc RW).
    MaxSumExp,
    /// (logits R, loss RW): loss -= the target logits in this tile.
    Target { lo: usize, tg: Arc<Vec<i64>> },
    /// (acc R, loss RW): loss += max + ln sumexp of the non-ignored rows.
    Lse { tg: Arc<Vec<i64>> },
    /// (acc R, logits RW): logits = scale * (softmax - onehot).
    Bwd {
        lo: usize,
        tg: Arc<Vec<i64>>,
        scale: f64,
    },
}

struct CeTask {
    op: Op,
    /// Storage dtype of the logits.
    dt: DType,
    rows: usize,
    cols: usize,
}

impl Codelet for CeTask {
    fn name(&self) -> &'static str {
        match self.op {
            Op::LossInit => "loss_init",
            Op::StatsInit => "maxsumexp_init",
            Op::MaxSumExp => "maxsumexp",
            Op::Target { .. } => "ce_target",
            Op::Lse { .. } => "ce_lse",
            Op::Bwd { .. } => "ce_bwd",
        }
    }
    fn flops(&self) -> f64 {
        let n = (self.rows * self.cols) as f64;
        match self.op {
            Op::LossInit | Op::StatsInit => 0.0,
            Op::MaxSumExp => 3.0 * n,
            Op::Target { .. } | Op::Lse { .. } => self.rows as f64,
            Op::Bwd { .. } => 4.0 * n,
        }
    }
    fn footprint(&self) -> u64 {
        match self.op {
            Op::LossInit | Op::StatsInit => 0,
            Op::Lse { .. } => footprint(&[self.rows as u64]),
            _ => footprint(&[self.rows as u64, self.cols as u64]),
        }
    }
    fn where_(&self) -> Where {
        // cuda/crossentropy.cu holds every kernel for f32, f64, bf16 and f16.
        Where::ANY
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (rows, cols, ad) = (self.rows, self.cols, acc_dtype(self.dt));
        match &self.op {
            Op::LossInit => b.w::<f64>(0)?[0] = 0.0,
            Op::StatsInit => with_acc_dtype!(ad, A, {
                for r in b.w::<A>(0)?.chunks_exact_mut(2) {
                    r[0] = <A as crate::dtype::Accum>::of(f64::NEG_INFINITY);
                    r[1] = <A as crate::dtype::Accum>::ZERO;
                }
            }),
            Op::MaxSumExp => with_dtype!(self.dt, T, {
                k::maxsumexp_update::<T>(b.r(0)?, rows, cols, b.w(1)?)
            }),
            Op::Target { lo, tg } => with_dtype!(self.dt, T, {
                k::ce_loss_target::<T>(b.r(0)?, rows, cols, *lo, tg, b.w(1)?)
            }),
            Op::Lse { tg } => {
                with_acc_dtype!(ad, A, { k::ce_loss_lse::<A>(b.r(0)?, rows, tg, b.w(1)?) })
            }
            Op::Bwd { lo, tg, scale } => with_dtype!(self.dt, T, {
                k::ce_bwd::<T>(b.r(0)?, rows, cols, *lo, tg, *scale, b.w(1)?)
            }),
        }
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let (rows, cols, ad, g) = (self.rows, self.cols, acc_dtype(self.dt), b.gpu());
        match &self.op {
            Op::LossInit => {
                crate::kernels::cuda::elementwise::fill::<f64>(b.gpu(), 0.0, &mut b.w(0)?)
            }
            Op::StatsInit => {
                with_acc_dtype!(ad, A, { cce::maxsumexp_init::<A>(g, rows, &mut b.w(0)?) })
            }
            Op::MaxSumExp => with_dtype!(self.dt, T, {
                cce::maxsumexp_update::<T>(g, &b.r(0)?, rows, cols, &mut b.w(1)?)
            }),
            Op::Target { lo, tg } => {
                let tg = DevTargets::upload(b, tg)?;
                with_dtype!(self.dt, T, {
                    cce::ce_loss_target::<T>(
                        g,
                        &b.r(0)?,
                        rows,
                        cols,
                        *lo,
                        &tg.view()?,
                        &mut b.w(1)?,
                    )
                })
            }
            Op::Lse { tg } => {
                let tg = DevTargets::upload(b, tg)?;
                with_acc_dtype!(ad, A, {
                    cce::ce_loss_lse::<A>(g, &b.r(0)?, rows, &tg.view()?, &mut b.w(1)?)
                })
            }
            Op::Bwd { lo, tg, scale } => {
                let tg = DevTargets::upload(b, tg)?;
                with_dtype!(self.dt, T, {
                    cce::ce_bwd::<T>(
                        g,
                        &b.r(0)?,
                        rows,
                        cols,
                        *lo,
                        &tg.view()?,
                        *scale,
                        &mut b.w(1)?,
                    )
                })
            }
        }
    }
}

/// A task's targets on the device: a temporary buffer filled through the
/// device's pinned staging ring (asynchronous, ordered before the kernels
/// on the stream) and freed stream-ordered when dropped, after them.
struct DevTargets {
    buf: cudarc::driver::CudaSlice<u8>,
    n: usize,
}

impl DevTargets {
    fn upload(b: &DevBuffers, tg: &[i64]) -> Result<DevTargets> {
        let buf = b.upload(bytemuck::cast_slice(tg))?;
        Ok(DevTargets { buf, n: tg.len() })
    }
    fn view(&self) -> Result<cudarc::driver::CudaView<'_, i64>> {
        // SAFETY: the buffer holds n i64 written from a &[i64] (any bit
        // pattern is a valid i64); `transmute` checks the size.
        unsafe { self.buf.transmute::<i64>(self.n) }
            .ok_or_else(|| arg_err("cross_entropy", "target buffer too small"))
    }
}

fn submit(
    rt: &Runtime,
    op: Op,
    dt: DType,
    (rows, cols): (usize, usize),
    ops: Vec<(DataHandle, Access)>,
) -> Result<()> {
    rt.submit(Box::new(CeTask { op, dt, rows, cols }), ops)?;
    Ok(())
}

/// What [`cross_entropy_bwd`] needs from the forward: per row (max, sumexp).
pub struct CeStats {
    acc: Tensor,
}

/// Checks `targets` (B*T = `rows` ids in [0, v) or -100) and `loss` (one f64).
pub(super) fn check_ce_inputs(
    op: &str,
    targets: &[i64],
    rows: usize,
    v: usize,
    loss: &DataHandle,
) -> Result<()> {
    if targets.len() != rows {
        return Err(shape_err(
            op,
            format!("{} targets for B*T = {rows} rows", targets.len()),
        ));
    }
    let v = v as i64;
    if let Some(bad) = targets.iter().find(|&&t| t >= v || (t < 0 && t != -100)) {
        return Err(arg_err(
            op,
            format!("target {bad} is outside [0, {v}) (and not -100)"),
        ));
    }
    if loss.dtype() != DType::F64 || loss.len() != 1 {
        return Err(arg_err(op, "loss must be a one-element f64 handle"));
    }
    Ok(())
}

/// Adds the summed cross-entropy of `logits` [B, T, V] against `targets`
/// (B*T ids) into `loss` (an f64 handle of one element, zeroed here) and
/// returns the statistics for backward. The logits are only read.
pub fn cross_entropy_fwd(logits: &Tensor, targets: &[i64], loss: &DataHandle) -> Result<CeStats> {
    let g = &logits.grid;
    if logits.ndim() != 3 || targets.len() != g.shape[0] * g.shape[1] {
        return Err(shape_err(
            "cross_entropy",
            format!(
                "logits {:?} must be [B, T, V] with B*T = {} targets",
                g.shape,
                targets.len()
            ),
        ));
    }
    check_ce_inputs("cross_entropy", targets, targets.len(), g.shape[2], loss)?;
    let rt = logits.runtime();
    let (dt, ad) = (logits.dtype, acc_dtype(logits.dtype));
    let stats = row_tensor(logits, 2, ad)?;
    let vt = g.tile[2];
    submit(
        rt,
        Op::LossInit,
        dt,
        (1, 1),
        vec![(loss.clone(), Access::W)],
    )?;
    for (si, sh) in stats.tiles.iter().enumerate() {
        let mut c = stats.grid.coords(si);
        let rows: usize = stats.grid.tile_shape(&c)[..2].iter().product();
        let tg = row_targets(targets, logits, &c);
        submit(
            rt,
            Op::StatsInit,
            dt,
            (rows, 1),
            vec![(sh.clone(), Access::W)],
        )?;
        for j in 0..g.grid[2] {
            c[2] = j;
            let cols = g.tile_shape(&c)[2];
            let lh = logits.tile(&c).clone();
            let op = Op::Target {
                lo: j * vt,
                tg: tg.clone(),
            };
            let ops = vec![(lh.clone(), Access::R), (loss.clone(), Access::RW)];
            submit(rt, op, dt, (rows, cols), ops)?;
            let ops = vec![(lh, Access::R), (sh.clone(), Access::RW)];
            submit(rt, Op::MaxSumExp, dt, (rows, cols), ops)?;
        }
        let ops = vec![(sh.clone(), Access::R), (loss.clone(), Access::RW)];
        submit(rt, Op::Lse { tg }, dt, (rows, 1), ops)?;
    }
    Ok(CeStats { acc: stats })
}

/// In place: logits = scale * (softmax(logits) - onehot(target)), zero rows
/// for ignored targets.
pub fn cross_entropy_bwd(
    logits: &Tensor,
    stats: &CeStats,
    targets: &[i64],
    scale: f64,
) -> Result<()> {
    let rt = logits.runtime();
    let dt = logits.dtype;
    let g = &logits.grid;
    let vt = g.tile[2];
    for (i, lh) in logits.tiles.iter().enumerate() {
        let c = g.coords(i);
        let ts = g.tile_shape(&c);
        let (rows, cols) = (ts[0] * ts[1], ts[2]);
        let (lo, tg) = (c[2] * vt, row_targets(targets, logits, &c));
        let sh = stats.acc.tile(&[c[0], c[1], 0]).clone();
        let ops = vec![(sh, Access::R), (lh.clone(), Access::RW)];
        submit(rt, Op::Bwd { lo, tg, scale }, dt, (rows, cols), ops)?;
    }
    Ok(())
}
