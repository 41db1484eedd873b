//! Activations, bias broadcast and bias gradients, and dropout: one task per
//! tile. Dropout masks come from a counter-based hash of each element's
//! index in the whole tensor, so they need no storage, do not depend on the
//! tiling, and backward regenerates them; the GPU kernel computes the same
//! hash bit for bit, so a mask does not depend on where a task ran either.
//!
//! Gradient convention: `activation_bwd` overwrites dx (an activation
//! gradient); `bias_grad` ACCUMULATES into db (a parameter gradient).
//!
//! Every task also runs on CUDA (`cuda/activation.cu`, `cuda/bias.cu`) for
//! every dtype, except a bias gradient whose (dy, db) dtype pair has no
//! kernel and dropout of a tile of more than 8 axes, which stay on the CPU.

use super::{footprint, same_dtype, same_layout};
use crate::error::{shape_err, Result};
use crate::kernels::cpu::activation::{self as ka, Activation};
use crate::kernels::cpu::{bias as kb, dropout as kd};
use crate::kernels::cuda::activation::{self as cact, DropoutGeometry};
use crate::kernels::cuda::{bias as cbias, grad_pair_supported};
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, Where};
use crate::tensor::Tensor;
use crate::{with_dtype, DType};

/// One task of this file; operands (in submission order) per variant.
enum Op {
    /// (x R, y W).
    Fwd(Activation),
    /// (x R, dy R, dx W), or in place (x R, dx RW) with dy read from dx.
    Bwd { act: Activation, in_place: bool },
    /// (bias R, y W): y[r, c] = bias[c].
    BiasFill,
    /// (dy R, db RW), db of dtype `gt`.
    BiasGrad { gt: DType },
    /// (x RW): the tile at `off` of shape `ts` in a tensor of `shape`.
    Dropout {
        seed: u64,
        stream: u64,
        p: f64,
        off: Vec<usize>,
        ts: Vec<usize>,
        shape: Vec<usize>,
    },
}

struct ActTask {
    op: Op,
    dt: DType,
    /// Elements of the tile (`rows * cols` for the bias tasks).
    rows: usize,
    cols: usize,
}

impl Codelet for ActTask {
    fn name(&self) -> &'static str {
        match self.op {
            Op::Fwd(_) => "activation_fwd",
            Op::Bwd { .. } => "activation_bwd",
            Op::BiasFill => "bias_fill",
            Op::BiasGrad { .. } => "bias_grad",
            Op::Dropout { .. } => "dropout",
        }
    }
    fn flops(&self) -> f64 {
        let n = (self.rows * self.cols) as f64;
        match self.op {
            Op::Fwd(_) => 8.0 * n,
            Op::Bwd { .. } => 12.0 * n,
            Op::BiasFill => 0.0,
            Op::BiasGrad { .. } | Op::Dropout { .. } => n,
        }
    }
    fn footprint(&self) -> u64 {
        let n = (self.rows * self.cols) as u64;
        match self.op {
            Op::Fwd(act) | Op::Bwd { act, .. } => footprint(&[n, act as u64]),
            Op::BiasFill | Op::BiasGrad { .. } => footprint(&[self.rows as u64, self.cols as u64]),
            Op::Dropout { .. } => footprint(&[n]),
        }
    }
    fn where_(&self) -> Where {
        match &self.op {
            Op::BiasGrad { gt } if !grad_pair_supported(self.dt, *gt) => Where::ANY_CPU,
            Op::Dropout { off, ts, shape, .. }
                if DropoutGeometry::new(off, ts, shape).is_none() =>
            {
                Where::ANY_CPU
            }
            _ => Where::ANY,
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        with_dtype!(self.dt, T, {
            match &self.op {
                Op::Fwd(act) => ka::activation_fwd::<T>(*act, b.r(0)?, b.w(1)?),
                Op::Bwd { act, in_place } => {
                    if *in_place {
                        let d = b.w::<T>(1)?;
                        let dy: Vec<T> = d.to_vec();
                        ka::activation_bwd::<T>(*act, b.r(0)?, &dy, d)
                    } else {
                        ka::activation_bwd::<T>(*act, b.r(0)?, b.r(1)?, b.w(2)?)
                    }
                }
                Op::BiasFill => kb::bias_fill::<T>(b.r(0)?, rows, cols, b.w(1)?),
                Op::BiasGrad { gt } => with_dtype!(*gt, G, {
                    kb::bias_grad::<T, G>(b.r(0)?, rows, cols, b.w(1)?)
                }),
                Op::Dropout {
                    seed,
                    stream,
                    p,
                    off,
                    ts,
                    shape,
                } => kd::dropout_fwd::<T>(*seed, *stream, *p, off, ts, shape, b.w(0)?),
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let (rows, cols, g) = (self.rows, self.cols, b.gpu());
        with_dtype!(self.dt, T, {
            match &self.op {
                Op::Fwd(act) => cact::activation_fwd::<T>(g, *act, &b.r(0)?, &mut b.w(1)?),
                Op::Bwd {
                    act,
                    in_place: true,
                } => cact::activation_bwd_inplace::<T>(g, *act, &b.r(0)?, &mut b.w(1)?),
                Op::Bwd { act, .. } => {
                    cact::activation_bwd::<T>(g, *act, &b.r(0)?, &b.r(1)?, &mut b.w(2)?)
                }
                Op::BiasFill => cbias::bias_fill::<T>(g, &b.r(0)?, rows, cols, &mut b.w(1)?),
                Op::BiasGrad { gt } => with_dtype!(*gt, G, {
                    cbias::bias_grad::<T, G>(g, &b.r(0)?, rows, cols, &mut b.w(1)?)
                }),
                Op::Dropout {
                    seed,
                    stream,
                    p,
                    off,
                    ts,
                    shape,
                } => {
                    let geo = DropoutGeometry::new(off, ts, shape).ok_or_else(|| {
                        shape_err("dropout", "more axes than the GPU kernel takes")
                    })?;
                    let scale = kd::DropoutMask::new(*seed, *stream, *p).scale;
                    cact::dropout::<T>(g, *seed, *stream, *p, scale, &mut b.w(0)?, geo)
                }
            }
        })
    }
}

fn task(op: Op, dt: DType, rows: usize, cols: usize) -> Box<ActTask> {
    Box::new(ActTask { op, dt, rows, cols })
}

/// y = act(x).
pub fn activation_fwd(act: Activation, x: &Tensor, y: &Tensor) -> Result<()> {
    same_layout("activation", x, y)?;
    same_dtype("activation", x, y)?;
    let dt = x.dtype;
    for (hx, hy) in x.tiles.iter().zip(&y.tiles) {
        x.runtime().submit(
            task(Op::Fwd(act), dt, hx.len(), 1),
            vec![(hx.clone(), Access::R), (hy.clone(), Access::W)],
        )?;
    }
    Ok(())
}

/// dx = dy * act'(x).
pub fn activation_bwd(act: Activation, x: &Tensor, dy: &Tensor, dx: &Tensor) -> Result<()> {
    same_layout("activation_bwd", x, dy)?;
    same_layout("activation_bwd", x, dx)?;
    let dt = x.dtype;
    for ((hx, hdy), hdx) in x.tiles.iter().zip(&dy.tiles).zip(&dx.tiles) {
        let in_place = hdy.id() == hdx.id();
        let mut acc = vec![(hx.clone(), Access::R)];
        if in_place {
            // In place: dx overwrites dy.
            acc.push((hdx.clone(), Access::RW));
        } else {
            acc.push((hdy.clone(), Access::R));
            acc.push((hdx.clone(), Access::W));
        }
        x.runtime()
            .submit(task(Op::Bwd { act, in_place }, dt, hx.len(), 1), acc)?;
    }
    Ok(())
}

/// Checks that `bias` has the trailing axes of `y`, cut the same way, and
/// returns the number of leading axes of `y`.
fn bias_axes(op: &str, bias: &Tensor, y: &Tensor) -> Result<usize> {
    let (nb, ny) = (bias.ndim(), y.ndim());
    if nb > ny
        || bias.grid.shape[..] != y.grid.shape[ny - nb..]
        || bias.grid.tile[..] != y.grid.tile[ny - nb..]
    {
        return Err(shape_err(
            op,
            format!(
                "bias {:?} (tiles {:?}) must be the trailing axes of {:?} (tiles {:?})",
                bias.grid.shape, bias.grid.tile, y.grid.shape, y.grid.tile
            ),
        ));
    }
    Ok(ny - nb)
}

/// y[..., j] = bias[j] (before a GEMM that accumulates into y).
pub fn bias_fill(bias: &Tensor, y: &Tensor) -> Result<()> {
    let lead = bias_axes("bias_fill", bias, y)?;
    same_dtype("bias_fill", bias, y)?;
    let dt = y.dtype;
    for (i, hy) in y.tiles.iter().enumerate() {
        let c = y.grid.coords(i);
        let ts = y.grid.tile_shape(&c);
        let rows: usize = ts[..lead].iter().product();
        let cols: usize = ts[lead..].iter().product();
        let hb = bias.tile(&c[lead..]).clone();
        y.runtime().submit(
            task(Op::BiasFill, dt, rows, cols),
            vec![(hb, Access::R), (hy.clone(), Access::W)],
        )?;
    }
    Ok(())
}

/// db[j] += sum over leading axes of dy[..., j].
pub fn bias_grad(dy: &Tensor, db: &Tensor) -> Result<()> {
    let lead = bias_axes("bias_grad", db, dy)?;
    let (dt, gt) = (dy.dtype, db.dtype);
    for (i, hy) in dy.tiles.iter().enumerate() {
        let c = dy.grid.coords(i);
        let ts = dy.grid.tile_shape(&c);
        let rows: usize = ts[..lead].iter().product();
        let cols: usize = ts[lead..].iter().product();
        let hb = db.tile(&c[lead..]).clone();
        dy.runtime().submit(
            task(Op::BiasGrad { gt }, dt, rows, cols),
            vec![(hy.clone(), Access::R), (hb, Access::RW)],
        )?;
    }
    Ok(())
}

/// In place: x = x * mask / (1 - p), the mask drawn from (seed, stream).
pub fn dropout(x: &Tensor, seed: u64, stream: u64, p: f64) -> Result<()> {
    if p <= 0.0 {
        return Ok(());
    }
    let dt = x.dtype;
    for (i, h) in x.tiles.iter().enumerate() {
        let c = x.grid.coords(i);
        let op = Op::Dropout {
            seed,
            stream,
            p,
            off: x.grid.tile_offset(&c),
            ts: x.grid.tile_shape(&c),
            shape: x.grid.shape.clone(),
        };
        x.runtime()
            .submit(task(op, dt, h.len(), 1), vec![(h.clone(), Access::RW)])?;
    }
    Ok(())
}
