//! Activations, bias broadcast and bias gradients, and dropout: one task per
//! tile. Dropout masks come from a counter-based hash of each element's
//! index in the whole tensor, so they need no storage, do not depend on the
//! tiling, and backward regenerates them.

use super::{footprint, same_dtype, same_layout};
use crate::error::{shape_err, Result};
use crate::kernels::cpu::activation::{self as ka, Activation};
use crate::kernels::cpu::{bias as kb, dropout as kd};
use crate::runtime::{codelet, Access};
use crate::tensor::Tensor;
use crate::with_dtype;

/// y = act(x).
pub fn activation_fwd(act: Activation, x: &Tensor, y: &Tensor) -> Result<()> {
    same_layout("activation", x, y)?;
    same_dtype("activation", x, y)?;
    let dt = x.dtype;
    for (hx, hy) in x.tiles.iter().zip(&y.tiles) {
        let n = hx.len();
        x.runtime().submit(
            codelet(
                "activation_fwd",
                8.0 * n as f64,
                footprint(&[n as u64, act as u64]),
                move |b| {
                    with_dtype!(dt, T, { ka::activation_fwd::<T>(act, b.r(0)?, b.w(1)?) });
                    Ok(())
                },
            ),
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
        let n = hx.len();
        let same = hdy.id() == hdx.id();
        let mut acc = vec![(hx.clone(), Access::R)];
        if same {
            // In place: dx overwrites dy.
            acc.push((hdx.clone(), Access::RW));
        } else {
            acc.push((hdy.clone(), Access::R));
            acc.push((hdx.clone(), Access::W));
        }
        x.runtime().submit(
            codelet(
                "activation_bwd",
                12.0 * n as f64,
                footprint(&[n as u64, act as u64]),
                move |b| {
                    with_dtype!(dt, T, {
                        if same {
                            let d = b.w::<T>(1)?;
                            let dy: Vec<T> = d.to_vec();
                            ka::activation_bwd::<T>(act, b.r(0)?, &dy, d)
                        } else {
                            ka::activation_bwd::<T>(act, b.r(0)?, b.r(1)?, b.w(2)?)
                        }
                    });
                    Ok(())
                },
            ),
            acc,
        )?;
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
            codelet(
                "bias_fill",
                0.0,
                footprint(&[rows as u64, cols as u64]),
                move |b| {
                    with_dtype!(dt, T, { kb::bias_fill::<T>(b.r(0)?, rows, cols, b.w(1)?) });
                    Ok(())
                },
            ),
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
            codelet(
                "bias_grad",
                (rows * cols) as f64,
                footprint(&[rows as u64, cols as u64]),
                move |b| {
                    with_dtype!(dt, T, {
                        with_dtype!(gt, G, {
                            kb::bias_grad::<T, G>(b.r(0)?, rows, cols, b.w(1)?)
                        })
                    });
                    Ok(())
                },
            ),
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
    let shape = x.grid.shape.clone();
    for (i, h) in x.tiles.iter().enumerate() {
        let c = x.grid.coords(i);
        let off = x.grid.tile_offset(&c);
        let ts = x.grid.tile_shape(&c);
        let shape = shape.clone();
        let n = h.len();
        x.runtime().submit(
            codelet("dropout", n as f64, footprint(&[n as u64]), move |b| {
                with_dtype!(dt, T, {
                    kd::dropout_fwd::<T>(seed, stream, p, &off, &ts, &shape, b.w(0)?)
                });
                Ok(())
            }),
            vec![(h.clone(), Access::RW)],
        )?;
    }
    Ok(())
}
