//! Element-wise ops, one task per tile: fill, scale, axpy, add. Every dtype
//! runs on the CPU and on CUDA (`cuda/elementwise.cu`, the same arithmetic:
//! scalars rounded to `T::Acc` once, one rounding per store).

use super::{footprint, same_dtype, same_layout};
use crate::error::Result;
use crate::kernels::cpu::elementwise as k;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Runtime, Where};
use crate::tensor::Tensor;
use crate::with_dtype;
use crate::DType;

enum Kind {
    Fill(f64),
    Scale(f64),
    Axpy(f64),
    Add(f64, f64),
}

struct Elementwise {
    kind: Kind,
    dtype: DType,
    len: usize,
}

impl Codelet for Elementwise {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Fill(_) => "fill",
            Kind::Scale(_) => "scale",
            Kind::Axpy(_) => "axpy",
            Kind::Add(..) => "add",
        }
    }
    fn flops(&self) -> f64 {
        let per = match self.kind {
            Kind::Fill(_) => 0.0,
            Kind::Scale(_) => 1.0,
            Kind::Axpy(_) => 2.0,
            Kind::Add(..) => 3.0,
        };
        per * self.len as f64
    }
    fn footprint(&self) -> u64 {
        footprint(&[self.len as u64])
    }
    fn where_(&self) -> Where {
        Where::ANY
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            match self.kind {
                Kind::Fill(v) => k::fill::<T>(v, b.w(0)?),
                Kind::Scale(a) => k::scale::<T>(a, b.w(0)?),
                Kind::Axpy(a) => k::axpy::<T>(a, b.r(0)?, b.w(1)?),
                Kind::Add(a, bt) => k::add::<T>(a, b.r(0)?, bt, b.w(1)?),
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        use crate::kernels::cuda::elementwise as cew;
        let g = b.gpu();
        with_dtype!(self.dtype, T, {
            let nin = matches!(self.kind, Kind::Axpy(_) | Kind::Add(..)) as usize;
            let mut y = b.w::<T>(nin)?;
            match self.kind {
                Kind::Fill(v) => cew::fill::<T>(g, v, &mut y),
                Kind::Scale(a) => cew::scale::<T>(g, a, &mut y),
                Kind::Axpy(a) => cew::axpy::<T>(g, a, &b.r(0)?, &mut y),
                Kind::Add(a, bt) => cew::add::<T>(g, a, &b.r(0)?, bt, &mut y),
            }
        })
    }
}

/// Submits one element-wise task over `ops`, tiles of `len` elements.
fn submit_tile(
    rt: &Runtime,
    kind: Kind,
    dtype: DType,
    len: usize,
    ops: Vec<(DataHandle, Access)>,
) -> Result<()> {
    rt.submit(Box::new(Elementwise { kind, dtype, len }), ops)?;
    Ok(())
}

fn unary(x: &Tensor, kind: impl Fn() -> Kind, mode: Access) -> Result<()> {
    for h in &x.tiles {
        submit_tile(
            x.runtime(),
            kind(),
            x.dtype,
            h.len(),
            vec![(h.clone(), mode)],
        )?;
    }
    Ok(())
}

fn binary(op: &str, x: &Tensor, y: &Tensor, kind: impl Fn() -> Kind, ymode: Access) -> Result<()> {
    same_layout(op, x, y)?;
    same_dtype(op, x, y)?;
    for (hx, hy) in x.tiles.iter().zip(&y.tiles) {
        let ops = vec![(hx.clone(), Access::R), (hy.clone(), ymode)];
        submit_tile(x.runtime(), kind(), x.dtype, hx.len(), ops)?;
    }
    Ok(())
}

/// Fills one tile handle with `value` (a task on any worker kind).
pub(crate) fn fill_tile(rt: &Runtime, h: &DataHandle, dtype: DType, value: f64) -> Result<()> {
    submit_tile(
        rt,
        Kind::Fill(value),
        dtype,
        h.len(),
        vec![(h.clone(), Access::W)],
    )
}

/// `y += alpha * x` on one pair of tile handles (a task on any worker kind).
pub(crate) fn axpy_tile(
    rt: &Runtime,
    alpha: f64,
    x: &DataHandle,
    y: &DataHandle,
    dtype: DType,
) -> Result<()> {
    let ops = vec![(x.clone(), Access::R), (y.clone(), Access::RW)];
    submit_tile(rt, Kind::Axpy(alpha), dtype, y.len(), ops)
}

/// x = value everywhere.
pub fn fill(x: &Tensor, value: f64) -> Result<()> {
    unary(x, || Kind::Fill(value), Access::W)
}

/// x *= alpha.
pub fn scale(x: &Tensor, alpha: f64) -> Result<()> {
    unary(x, || Kind::Scale(alpha), Access::RW)
}

/// y += alpha * x.
pub fn axpy(alpha: f64, x: &Tensor, y: &Tensor) -> Result<()> {
    binary("axpy", x, y, || Kind::Axpy(alpha), Access::RW)
}

/// y = alpha * x + beta * y (y is not read when beta is 0).
pub fn add(alpha: f64, x: &Tensor, beta: f64, y: &Tensor) -> Result<()> {
    let mode = if beta == 0.0 { Access::W } else { Access::RW };
    binary("add", x, y, || Kind::Add(alpha, beta), mode)
}
