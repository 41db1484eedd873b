//! LayerNorm over the last axis, which may be cut into several tiles: per
//! row of tiles, a chain of `stats_update` tasks (Chan's merge of count, mean
//! and M2) and a `finalize` give (mean, rstd); then every tile normalises on
//! its own. Backward: a chain reduces the two row sums over the C tiles, then
//! each tile computes its dx, and its dgamma / dbeta (accumulated, +=).
//!
//! Statistics live in tiles of the accumulation dtype (f32, or f64 for f64).

use super::{footprint, same_dtype, same_layout};
use crate::error::{shape_err, Result};
use crate::kernels::cpu::layernorm as k;
use crate::runtime::{codelet, Access};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype, DType};

/// The dtype statistics and accumulators are kept in for tiles of `d`.
pub fn acc_dtype(d: DType) -> DType {
    if d == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// A tensor shaped like `x` with its last axis replaced by `n` (one tile).
pub(crate) fn row_tensor(x: &Tensor, n: usize, dtype: DType) -> Result<Tensor> {
    let nd = x.ndim();
    let mut shape = x.grid.shape[..nd - 1].to_vec();
    let mut tile: Vec<isize> = x.grid.tile[..nd - 1].iter().map(|&t| t as isize).collect();
    shape.push(n);
    tile.push(n as isize);
    Tensor::zeros(x.runtime(), &shape, &tile, dtype)
}

fn check_param(op: &str, x: &Tensor, p: &Tensor) -> Result<()> {
    let c = x.ndim() - 1;
    if p.ndim() != 1 || p.grid.shape[0] != x.grid.shape[c] || p.grid.tile[0] != x.grid.tile[c] {
        return Err(shape_err(
            op,
            format!(
                "parameter {:?} (tiles {:?}) must match the last axis of {:?} (tiles {:?})",
                p.grid.shape, p.grid.tile, x.grid.shape, x.grid.tile
            ),
        ));
    }
    Ok(())
}

/// y = LayerNorm(x) * gamma + beta over the last axis; returns the
/// statistics (mean, rstd) per row, which backward needs.
pub fn layernorm_fwd(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    y: &Tensor,
) -> Result<Tensor> {
    same_layout("layernorm", x, y)?;
    same_dtype("layernorm", x, y)?;
    check_param("layernorm", x, gamma)?;
    check_param("layernorm", x, beta)?;
    let rt = x.runtime();
    let (dt, ad) = (x.dtype, acc_dtype(x.dtype));
    let stats = row_tensor(x, 2, ad)?;
    let acc = row_tensor(x, 3, ad)?;
    let nd = x.ndim();
    let ncol = x.grid.grid[nd - 1];
    for (li, (sh, ah)) in stats.tiles.iter().zip(&acc.tiles).enumerate() {
        let mut c = stats.grid.coords(li);
        let rows: usize = stats.grid.tile_shape(&c)[..nd - 1].iter().product();
        super::zero_tile(rt, ah, ad)?;
        for j in 0..ncol {
            c[nd - 1] = j;
            let xh = x.tile(&c).clone();
            let cols = x.grid.tile_shape(&c)[nd - 1];
            rt.submit(
                codelet(
                    "layernorm_stats",
                    3.0 * (rows * cols) as f64,
                    footprint(&[rows as u64, cols as u64]),
                    move |b| {
                        with_dtype!(dt, T, {
                            k::layernorm_stats_update::<T>(b.r(0)?, rows, cols, b.w(1)?)
                        });
                        Ok(())
                    },
                ),
                vec![(xh, Access::R), (ah.clone(), Access::RW)],
            )?;
        }
        rt.submit(
            codelet(
                "layernorm_finalize",
                rows as f64,
                footprint(&[rows as u64]),
                move |b| {
                    with_acc_dtype!(ad, A, {
                        k::layernorm_stats_finalize::<A>(b.r(0)?, rows, eps, b.w(1)?)
                    });
                    Ok(())
                },
            ),
            vec![(ah.clone(), Access::R), (sh.clone(), Access::W)],
        )?;
    }
    layernorm_apply(x, &stats, gamma, beta, y)?;
    Ok(stats)
}

/// Backward of `layernorm_fwd`: dx = (or +=, with `accumulate`) the input
/// gradient; dgamma += sum over rows of dy * xhat; dbeta += sum of dy.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_bwd(
    x: &Tensor,
    dy: &Tensor,
    stats: &Tensor,
    gamma: &Tensor,
    dx: &Tensor,
    accumulate: bool,
    dgamma: &Tensor,
    dbeta: &Tensor,
) -> Result<()> {
    same_layout("layernorm_bwd", x, dy)?;
    same_layout("layernorm_bwd", x, dx)?;
    check_param("layernorm_bwd", x, dgamma)?;
    check_param("layernorm_bwd", x, dbeta)?;
    let rt = x.runtime();
    let (dt, ad, gd) = (x.dtype, acc_dtype(x.dtype), dgamma.dtype);
    if gd != dt {
        return Err(crate::error::Error::DType {
            op: "layernorm_bwd".into(),
            expected: dt,
            got: gd,
        });
    }
    let sums = row_tensor(x, 2, ad)?;
    let nd = x.ndim();
    let ncol = x.grid.grid[nd - 1];
    let total = x.grid.shape[nd - 1];
    for (li, (sh, sumh)) in stats.tiles.iter().zip(&sums.tiles).enumerate() {
        let mut c = stats.grid.coords(li);
        let rows: usize = stats.grid.tile_shape(&c)[..nd - 1].iter().product();
        super::zero_tile(rt, sumh, ad)?;
        for j in 0..ncol {
            c[nd - 1] = j;
            let cols = x.grid.tile_shape(&c)[nd - 1];
            rt.submit(
                codelet(
                    "layernorm_bwd_reduce",
                    4.0 * (rows * cols) as f64,
                    footprint(&[rows as u64, cols as u64]),
                    move |b| {
                        with_dtype!(dt, T, {
                            k::layernorm_bwd_reduce::<T>(
                                b.r(0)?,
                                b.r(1)?,
                                b.r(2)?,
                                b.r(3)?,
                                rows,
                                cols,
                                b.w(4)?,
                            )
                        });
                        Ok(())
                    },
                ),
                vec![
                    (x.tile(&c).clone(), Access::R),
                    (dy.tile(&c).clone(), Access::R),
                    (sh.clone(), Access::R),
                    (gamma.tiles[j].clone(), Access::R),
                    (sumh.clone(), Access::RW),
                ],
            )?;
        }
        for j in 0..ncol {
            c[nd - 1] = j;
            let cols = x.grid.tile_shape(&c)[nd - 1];
            let fp = footprint(&[rows as u64, cols as u64]);
            rt.submit(
                codelet("layernorm_bwd", 6.0 * (rows * cols) as f64, fp, move |b| {
                    with_dtype!(dt, T, {
                        k::layernorm_bwd::<T>(
                            b.r(0)?,
                            b.r(1)?,
                            b.r(2)?,
                            b.r(3)?,
                            b.r(4)?,
                            total,
                            rows,
                            cols,
                            accumulate,
                            b.w(5)?,
                        )
                    });
                    Ok(())
                }),
                vec![
                    (x.tile(&c).clone(), Access::R),
                    (dy.tile(&c).clone(), Access::R),
                    (sh.clone(), Access::R),
                    (gamma.tiles[j].clone(), Access::R),
                    (sumh.clone(), Access::R),
                    (
                        dx.tile(&c).clone(),
                        if accumulate { Access::RW } else { Access::W },
                    ),
                ],
            )?;
            rt.submit(
                codelet(
                    "layernorm_param_grad",
                    4.0 * (rows * cols) as f64,
                    fp,
                    move |b| {
                        with_dtype!(dt, T, {
                            k::layernorm_param_grad::<T, T>(
                                b.r(0)?,
                                b.r(1)?,
                                b.r(2)?,
                                rows,
                                cols,
                                b.w(3)?,
                                b.w(4)?,
                            )
                        });
                        Ok(())
                    },
                ),
                vec![
                    (x.tile(&c).clone(), Access::R),
                    (dy.tile(&c).clone(), Access::R),
                    (sh.clone(), Access::R),
                    (dgamma.tiles[j].clone(), Access::RW),
                    (dbeta.tiles[j].clone(), Access::RW),
                ],
            )?;
        }
    }
    Ok(())
}

/// y = (x - mean) * rstd * gamma + beta with statistics from `layernorm_fwd`
/// (recomputes a LayerNorm output in backward without storing it).
pub fn layernorm_apply(
    x: &Tensor,
    stats: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    y: &Tensor,
) -> Result<()> {
    same_layout("layernorm", x, y)?;
    same_dtype("layernorm", x, y)?;
    check_param("layernorm", x, gamma)?;
    check_param("layernorm", x, beta)?;
    let rt = x.runtime();
    let dt = x.dtype;
    let nd = x.ndim();
    let ncol = x.grid.grid[nd - 1];
    for (li, sh) in stats.tiles.iter().enumerate() {
        let mut c = stats.grid.coords(li);
        let rows: usize = stats.grid.tile_shape(&c)[..nd - 1].iter().product();
        for j in 0..ncol {
            c[nd - 1] = j;
            let cols = x.grid.tile_shape(&c)[nd - 1];
            rt.submit(
                codelet(
                    "layernorm_fwd",
                    5.0 * (rows * cols) as f64,
                    footprint(&[rows as u64, cols as u64]),
                    move |b| {
                        with_dtype!(dt, T, {
                            k::layernorm_fwd::<T>(
                                b.r(0)?,
                                b.r(1)?,
                                b.r(2)?,
                                b.r(3)?,
                                rows,
                                cols,
                                b.w(4)?,
                            )
                        });
                        Ok(())
                    },
                ),
                vec![
                    (x.tile(&c).clone(), Access::R),
                    (sh.clone(), Access::R),
                    (gamma.tiles[j].clone(), Access::R),
                    (beta.tiles[j].clone(), Access::R),
                    (y.tile(&c).clone(), Access::W),
                ],
            )?;
        }
    }
    Ok(())
}
