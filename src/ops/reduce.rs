//! Reductions: sums over one axis or over everything, and the Frobenius norm.
//! Each output tile is one chain of tasks over the input tiles it reduces
//! (RW in tile order), so results do not depend on the schedule.
//!
//! Every dtype also runs on CUDA (`cuda/reduce.cu`): the GPU kernels add in
//! f64 in a fixed order without atomics, so they are deterministic too, and
//! at least as accurate as the CPU (which adds `T::Acc` block sums in f64),
//! though not bit-identical to it.

use super::footprint;
use crate::error::{arg_err, shape_err, Error, Result};
use crate::kernels::cpu::reduce as k;
use crate::kernels::cuda::reduce as cre;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Runtime, Where};
use crate::tensor::Tensor;
use crate::{with_dtype, DType};

enum Kind {
    /// x viewed as [outer, len, inner] summed over len.
    Axis {
        outer: usize,
        len: usize,
        inner: usize,
    },
    All,
    SsqInit,
    SsqUpdate,
    Norm,
}

struct ReduceCl {
    kind: Kind,
    dtype: DType,
    alpha: f64,
    beta: f64,
    n: usize,
}

impl Codelet for ReduceCl {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Axis { .. } => "sum_axis",
            Kind::All => "sum_all",
            Kind::SsqInit => "ssq_init",
            Kind::SsqUpdate => "ssq_update",
            Kind::Norm => "norm_from_ssq",
        }
    }
    fn flops(&self) -> f64 {
        match self.kind {
            Kind::SsqUpdate => 2.0 * self.n as f64,
            _ => self.n as f64,
        }
    }
    fn footprint(&self) -> u64 {
        match self.kind {
            Kind::Axis { outer, len, inner } => {
                footprint(&[outer as u64, len as u64, inner as u64])
            }
            _ => footprint(&[self.n as u64]),
        }
    }
    fn where_(&self) -> Where {
        Where::ANY
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            match self.kind {
                Kind::Axis { outer, len, inner } => {
                    k::sum_axis::<T>(outer, len, inner, self.alpha, b.r(0)?, self.beta, b.w(1)?)
                }
                Kind::All => k::sum_all::<T>(self.alpha, b.r(0)?, self.beta, b.w(1)?),
                Kind::SsqInit => k::ssq_init(b.w::<f64>(0)?),
                Kind::SsqUpdate => k::ssq_update::<T>(b.r(0)?, b.w::<f64>(1)?),
                Kind::Norm => k::norm_from_ssq::<T>(b.r::<f64>(0)?, self.alpha, self.beta, b.w(1)?),
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let g = b.gpu();
        let (alpha, beta) = (self.alpha, self.beta);
        with_dtype!(self.dtype, T, {
            match self.kind {
                Kind::Axis { outer, len, inner } => {
                    cre::sum_axis::<T>(g, [outer, len, inner], alpha, &b.r(0)?, beta, &mut b.w(1)?)
                }
                Kind::All => cre::sum_all::<T>(g, alpha, &b.r(0)?, beta, &mut b.w(1)?),
                Kind::SsqInit => {
                    crate::kernels::cuda::elementwise::fill::<f64>(b.gpu(), 0.0, &mut b.w(0)?)
                }
                Kind::SsqUpdate => cre::ssq_update::<T>(g, &b.r(0)?, &mut b.w(1)?),
                Kind::Norm => cre::norm_from_ssq::<T>(g, &b.r(0)?, alpha, beta, &mut b.w(1)?),
            }
        })
    }
}

fn check(op: &str, x: &Tensor, y: &Tensor) -> Result<()> {
    if x.dtype != y.dtype {
        return Err(Error::DType {
            op: op.into(),
            expected: x.dtype,
            got: y.dtype,
        });
    }
    if !x.runtime().same(y.runtime()) {
        return Err(arg_err(op, "tensors belong to different runtimes"));
    }
    Ok(())
}

fn out_mode(first: bool, beta: f64) -> (Access, f64) {
    match (first, beta == 0.0) {
        (true, true) => (Access::W, 0.0),
        (true, false) => (Access::RW, beta),
        (false, _) => (Access::RW, 1.0),
    }
}

/// y = alpha * sum of x over `axis` + beta * y. y has x's shape without
/// `axis`, and x's tiling on the other axes.
pub fn sum(x: &Tensor, axis: usize, alpha: f64, beta: f64, y: &Tensor) -> Result<()> {
    check("sum", x, y)?;
    let (xg, yg) = (&x.grid, &y.grid);
    if axis >= xg.ndim() {
        return Err(arg_err(
            "sum",
            format!("axis {axis} out of range for {} axes", xg.ndim()),
        ));
    }
    let others: Vec<usize> = (0..xg.ndim()).filter(|&a| a != axis).collect();
    let yaxes: Vec<usize> = (0..yg.ndim()).collect();
    if yg.ndim() != others.len() || !xg.same_cut(&others, yg, &yaxes) {
        return Err(shape_err(
            "sum",
            format!(
                "y {:?} (tiles {:?}) must be x {:?} (tiles {:?}) without axis {axis}",
                yg.shape, yg.tile, xg.shape, xg.tile
            ),
        ));
    }
    for (yi, yh) in y.tiles.iter().enumerate() {
        let yc = yg.coords(yi);
        let mut xc: Vec<usize> = Vec::with_capacity(xg.ndim());
        xc.extend_from_slice(&yc[..axis]);
        xc.push(0);
        xc.extend_from_slice(&yc[axis..]);
        if xg.grid[axis] == 0 {
            let (mode, b) = out_mode(true, beta);
            super::gemm::scale_tile(x.runtime(), yh, y.dtype, b, mode)?;
            continue;
        }
        for t in 0..xg.grid[axis] {
            xc[axis] = t;
            let ts = xg.tile_shape(&xc);
            let (mode, b) = out_mode(t == 0, beta);
            let cl = ReduceCl {
                kind: Kind::Axis {
                    outer: ts[..axis].iter().product(),
                    len: ts[axis],
                    inner: ts[axis + 1..].iter().product(),
                },
                dtype: x.dtype,
                alpha,
                beta: b,
                n: ts.iter().product(),
            };
            let xh = x.tiles[xg.linear(&xc)].clone();
            x.runtime()
                .submit(Box::new(cl), vec![(xh, Access::R), (yh.clone(), mode)])?;
        }
    }
    Ok(())
}

fn scalar_out(op: &str, x: &Tensor, y: &Tensor) -> Result<()> {
    check(op, x, y)?;
    if y.grid.numel() != 1 || y.tiles.len() != 1 {
        return Err(shape_err(
            op,
            format!("y must hold one element, got shape {:?}", y.grid.shape),
        ));
    }
    Ok(())
}

/// y = alpha * sum of all elements of x + beta * y (y holds one element).
pub fn sum_all(x: &Tensor, alpha: f64, beta: f64, y: &Tensor) -> Result<()> {
    scalar_out("sum_all", x, y)?;
    let yh = &y.tiles[0];
    if x.tiles.is_empty() {
        let (mode, b) = out_mode(true, beta);
        return super::gemm::scale_tile(x.runtime(), yh, y.dtype, b, mode);
    }
    for (i, xh) in x.tiles.iter().enumerate() {
        let (mode, b) = out_mode(i == 0, beta);
        let cl = ReduceCl {
            kind: Kind::All,
            dtype: x.dtype,
            alpha,
            beta: b,
            n: xh.len(),
        };
        x.runtime().submit(
            Box::new(cl),
            vec![(xh.clone(), Access::R), (yh.clone(), mode)],
        )?;
    }
    Ok(())
}

/// Submits `acc = [0, 0]`, the empty scaled sum of squares (`acc`: f64,
/// two elements).
pub(crate) fn ssq_init(rt: &Runtime, acc: &DataHandle) -> Result<()> {
    let cl = ReduceCl {
        kind: Kind::SsqInit,
        dtype: DType::F64,
        alpha: 1.0,
        beta: 0.0,
        n: 0,
    };
    rt.submit(Box::new(cl), vec![(acc.clone(), Access::W)])?;
    Ok(())
}

/// Submits the tasks merging `sum(x^2)` of every tile of `x` into the scaled
/// sum of squares `acc` (RW, in tile order): a chain that `norm` and
/// gradient-norm clipping share, on the CPU or the GPU.
pub(crate) fn ssq_update(x: &Tensor, acc: &DataHandle) -> Result<()> {
    for xh in &x.tiles {
        ssq_update_tile(x.runtime(), x.dtype, xh, acc)?;
    }
    Ok(())
}

/// Submits the task merging `sum(x^2)` of one tile `xh` (of `dtype`) into `acc`.
pub(crate) fn ssq_update_tile(
    rt: &Runtime,
    dtype: DType,
    xh: &DataHandle,
    acc: &DataHandle,
) -> Result<()> {
    let cl = ReduceCl {
        kind: Kind::SsqUpdate,
        dtype,
        alpha: 1.0,
        beta: 0.0,
        n: xh.len(),
    };
    rt.submit(
        Box::new(cl),
        vec![(xh.clone(), Access::R), (acc.clone(), Access::RW)],
    )?;
    Ok(())
}

/// y = alpha * ||x||_F + beta * y (y holds one element). The sum of squares
/// is kept scaled in f64 (LAPACK's dlassq), so it neither overflows nor
/// underflows.
pub fn norm(x: &Tensor, alpha: f64, beta: f64, y: &Tensor) -> Result<()> {
    scalar_out("norm", x, y)?;
    let rt = x.runtime();
    let acc = rt.new_handle(DType::F64, 2)?;
    ssq_init(rt, &acc)?;
    ssq_update(x, &acc)?;
    let cl = ReduceCl {
        kind: Kind::Norm,
        dtype: x.dtype,
        alpha,
        beta,
        n: 1,
    };
    let mode = if beta == 0.0 { Access::W } else { Access::RW };
    rt.submit(
        Box::new(cl),
        vec![(acc, Access::R), (y.tiles[0].clone(), mode)],
    )?;
    Ok(())
}
