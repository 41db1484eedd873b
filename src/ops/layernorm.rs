//! LayerNorm over the last axis, which may be cut into several tiles: per
//! row of tiles, a chain of `stats_update` tasks (Chan's merge of count, mean
//! and M2) and a `finalize` give (mean, rstd); then every tile normalises on
//! its own. Backward: a chain reduces the two row sums over the C tiles, then
//! each tile computes its dx, and its dgamma / dbeta (accumulated, +=).
//! `add_layernorm` fuses the residual add in front: sum = x + r is stored
//! (the residual stream) and normalised, in one pass over each row when C is
//! one tile.
//!
//! Gradient convention: dgamma and dbeta ACCUMULATE (`+=`, parameter
//! gradients); dx is overwritten unless `accumulate` (the residual stream).
//!
//! Statistics live in tiles of the accumulation dtype (f32, or f64 for f64).
//! Every task runs on the CPU and on CUDA for every dtype
//! (`cuda/layernorm.cu`, the same arithmetic split the same way).

use super::{footprint, same_dtype, same_layout};
use crate::error::{shape_err, Result};
use crate::kernels::cpu::elementwise as ke;
use crate::kernels::cpu::layernorm as k;
use crate::kernels::cuda::layernorm as cln;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Runtime, Where};
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

/// One LayerNorm task; the operands (in submission order) are listed per variant.
#[derive(Clone, Copy, Debug)]
enum Ln {
    /// (x R, acc RW): acc [rows, 3] merged with x [rows, cols].
    Stats,
    /// (acc R, stats W).
    Finalize { eps: f64 },
    /// (x R, stats R, gamma R, beta R, y W).
    Fwd,
    /// (x R, dy R, stats R, gamma R, sums RW).
    BwdReduce,
    /// (x R, dy R, stats R, gamma R, sums R, dx W or RW).
    Bwd { total: usize, accumulate: bool },
    /// (x R, dy R, stats R, dgamma RW, dbeta RW).
    ParamGrad,
    /// sum = x + r, then Stats on sum: (x R, r R, sum W, acc RW), or in
    /// place (a R, sum RW, acc RW) where sum holds the other addend on entry
    /// (a + b = b + a bit for bit, so which one does not matter).
    AddStats { in_place: bool },
    /// sum = x + r, its stats and y in one task (C in one tile):
    /// (x R, r R, sum W, gamma R, beta R, stats W, y W), or in place
    /// (a R, sum RW, gamma R, beta R, stats W, y W) as `AddStats`.
    AddFwd { eps: f64, in_place: bool },
}

struct LnTask {
    op: Ln,
    /// The storage dtype of x.
    dt: DType,
    rows: usize,
    cols: usize,
}

impl Codelet for LnTask {
    fn name(&self) -> &'static str {
        match self.op {
            Ln::Stats => "layernorm_stats",
            Ln::Finalize { .. } => "layernorm_finalize",
            Ln::Fwd => "layernorm_fwd",
            Ln::BwdReduce => "layernorm_bwd_reduce",
            Ln::Bwd { .. } => "layernorm_bwd",
            Ln::ParamGrad => "layernorm_param_grad",
            Ln::AddStats { .. } => "add_layernorm_stats",
            Ln::AddFwd { .. } => "add_layernorm",
        }
    }
    fn flops(&self) -> f64 {
        let n = (self.rows * self.cols) as f64;
        match self.op {
            Ln::Stats => 3.0 * n,
            Ln::Finalize { .. } => self.rows as f64,
            Ln::Fwd => 5.0 * n,
            Ln::BwdReduce | Ln::ParamGrad => 4.0 * n,
            Ln::Bwd { .. } => 6.0 * n,
            Ln::AddStats { .. } => 4.0 * n,
            Ln::AddFwd { .. } => 9.0 * n,
        }
    }
    fn footprint(&self) -> u64 {
        match self.op {
            Ln::Finalize { .. } => footprint(&[self.rows as u64]),
            _ => footprint(&[self.rows as u64, self.cols as u64]),
        }
    }
    fn where_(&self) -> Where {
        // cuda/layernorm.cu holds every kernel for f32, f64, bf16 and f16.
        Where::ANY
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (rows, cols) = (self.rows, self.cols);
        if let Ln::Finalize { eps } = self.op {
            with_acc_dtype!(acc_dtype(self.dt), A, {
                k::layernorm_stats_finalize::<A>(b.r(0)?, rows, eps, b.w(1)?)
            });
            return Ok(());
        }
        with_dtype!(self.dt, T, {
            match self.op {
                Ln::Stats => k::layernorm_stats_update::<T>(b.r(0)?, rows, cols, b.w(1)?),
                Ln::Fwd => {
                    k::layernorm_fwd::<T>(b.r(0)?, b.r(1)?, b.r(2)?, b.r(3)?, rows, cols, b.w(4)?)
                }
                Ln::BwdReduce => k::layernorm_bwd_reduce::<T>(
                    b.r(0)?,
                    b.r(1)?,
                    b.r(2)?,
                    b.r(3)?,
                    rows,
                    cols,
                    b.w(4)?,
                ),
                Ln::Bwd { total, accumulate } => k::layernorm_bwd::<T>(
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
                ),
                Ln::ParamGrad => k::layernorm_param_grad::<T, T>(
                    b.r(0)?,
                    b.r(1)?,
                    b.r(2)?,
                    rows,
                    cols,
                    b.w(3)?,
                    b.w(4)?,
                ),
                Ln::AddStats { in_place } => {
                    let o = usize::from(!in_place);
                    let s = add_cpu::<T>(b, in_place)?;
                    k::layernorm_stats_update::<T>(s, rows, cols, b.w(2 + o)?)
                }
                Ln::AddFwd { eps, in_place } => {
                    // Composed from the unfused kernels, so the result is
                    // exactly that of add + layernorm_fwd.
                    let o = usize::from(!in_place);
                    let s = add_cpu::<T>(b, in_place)?;
                    let zero = <<T as crate::dtype::Element>::Acc as crate::dtype::Accum>::ZERO;
                    let mut acc = vec![zero; rows * 3];
                    k::layernorm_stats_update::<T>(s, rows, cols, &mut acc);
                    let stats = b.w(4 + o)?;
                    k::layernorm_stats_finalize(&acc, rows, eps, stats);
                    k::layernorm_fwd::<T>(
                        s,
                        stats,
                        b.r(2 + o)?,
                        b.r(3 + o)?,
                        rows,
                        cols,
                        b.w(5 + o)?,
                    )
                }
                Ln::Finalize { .. } => unreachable!("handled above"),
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let (rows, cols, g) = (self.rows, self.cols, b.gpu());
        if let Ln::Finalize { eps } = self.op {
            return with_acc_dtype!(acc_dtype(self.dt), A, {
                cln::layernorm_stats_finalize::<A>(g, &b.r(0)?, rows, eps, &mut b.w(1)?)
            });
        }
        with_dtype!(self.dt, T, {
            match self.op {
                Ln::Stats => {
                    cln::layernorm_stats_update::<T>(g, &b.r(0)?, rows, cols, &mut b.w(1)?)
                }
                Ln::Fwd => cln::layernorm_fwd::<T>(
                    g,
                    &b.r(0)?,
                    &b.r(1)?,
                    &b.r(2)?,
                    &b.r(3)?,
                    rows,
                    cols,
                    &mut b.w(4)?,
                ),
                Ln::BwdReduce => cln::layernorm_bwd_reduce::<T>(
                    g,
                    &b.r(0)?,
                    &b.r(1)?,
                    &b.r(2)?,
                    &b.r(3)?,
                    rows,
                    cols,
                    &mut b.w(4)?,
                ),
                Ln::Bwd { total, accumulate } => cln::layernorm_bwd::<T>(
                    g,
                    &b.r(0)?,
                    &b.r(1)?,
                    &b.r(2)?,
                    &b.r(3)?,
                    &b.r(4)?,
                    total,
                    rows,
                    cols,
                    accumulate as i32,
                    &mut b.w(5)?,
                ),
                Ln::ParamGrad => cln::layernorm_param_grad::<T, T>(
                    g,
                    &b.r(0)?,
                    &b.r(1)?,
                    &b.r(2)?,
                    rows,
                    cols,
                    &mut b.w(3)?,
                    &mut b.w(4)?,
                ),
                Ln::AddStats { in_place } => {
                    let o = usize::from(!in_place);
                    let r = if in_place { None } else { Some(b.r::<T>(1)?) };
                    cln::add_layernorm_stats_update::<T>(
                        g,
                        &b.r(0)?,
                        r.as_ref(),
                        rows,
                        cols,
                        &mut b.w(1 + o)?,
                        &mut b.w(2 + o)?,
                    )
                }
                Ln::AddFwd { eps, in_place } => {
                    let o = usize::from(!in_place);
                    let r = if in_place { None } else { Some(b.r::<T>(1)?) };
                    cln::add_layernorm_fwd::<T>(
                        g,
                        &b.r(0)?,
                        r.as_ref(),
                        &b.r(2 + o)?,
                        &b.r(3 + o)?,
                        rows,
                        cols,
                        eps,
                        &mut b.w(1 + o)?,
                        &mut b.w(4 + o)?,
                        &mut b.w(5 + o)?,
                    )
                }
                Ln::Finalize { .. } => unreachable!("handled above"),
            }
        })
    }
}

/// The residual add of `AddStats` / `AddFwd` on the CPU: sum = x + r with
/// the elementwise `add` kernel (1 * x + 1 * r, as ops::add computes the
/// residual stream); returns the sum tile (operand 1, or 2 with r).
#[allow(clippy::mut_from_ref)]
fn add_cpu<'a, T: crate::Element>(b: &Buffers<'a>, in_place: bool) -> Result<&'a mut [T]> {
    let x = b.r::<T>(0)?;
    let s = if in_place {
        b.w::<T>(1)?
    } else {
        let s = b.w::<T>(2)?;
        s.copy_from_slice(b.r::<T>(1)?);
        s
    };
    ke::add::<T>(1.0, x, 1.0, s);
    Ok(s)
}

fn submit(
    rt: &Runtime,
    op: Ln,
    dt: DType,
    (rows, cols): (usize, usize),
    acc: Vec<(DataHandle, Access)>,
) -> Result<()> {
    rt.submit(Box::new(LnTask { op, dt, rows, cols }), acc)?;
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
            let cols = x.grid.tile_shape(&c)[nd - 1];
            let ops = vec![(x.tile(&c).clone(), Access::R), (ah.clone(), Access::RW)];
            submit(rt, Ln::Stats, dt, (rows, cols), ops)?;
        }
        let ops = vec![(ah.clone(), Access::R), (sh.clone(), Access::W)];
        submit(rt, Ln::Finalize { eps }, dt, (rows, 1), ops)?;
    }
    layernorm_apply(x, &stats, gamma, beta, y)?;
    Ok(stats)
}

/// Fused residual + LayerNorm: `sum = x + r` (stored: it is the residual
/// stream), then `y = LayerNorm(sum) * gamma + beta`; returns the statistics
/// of `sum`, as `layernorm_fwd(sum, ..)` does. `sum` may be `x` or `r` itself
/// (the residual stream updated where it lies) or a tensor of its own.
///
/// When C is one tile, one task per row of tiles adds, reduces and
/// normalises (on a GPU, one pass over the row); otherwise the statistics
/// chain adds as it goes and the tiles are normalised after. The result is
/// exactly [`add_layernorm_slow`]'s.
#[allow(clippy::too_many_arguments)]
pub fn add_layernorm(
    x: &Tensor,
    r: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    sum: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    for (t, name) in [(r, "r"), (sum, "sum"), (y, "y")] {
        same_layout(&format!("add_layernorm ({name})"), x, t)?;
        same_dtype(&format!("add_layernorm ({name})"), x, t)?;
    }
    check_param("add_layernorm", x, gamma)?;
    check_param("add_layernorm", x, beta)?;
    let rt = x.runtime();
    let (dt, ad) = (x.dtype, acc_dtype(x.dtype));
    let stats = row_tensor(x, 2, ad)?;
    let nd = x.ndim();
    let ncol = x.grid.grid[nd - 1];
    // The addends' operands: (other R, sum RW) in place, else (x R, r R, sum W).
    let addends = |c: &[usize]| -> (bool, Vec<(DataHandle, Access)>) {
        let (xh, rh, sh) = (x.tile(c), r.tile(c), sum.tile(c));
        if sh.id() == rh.id() {
            (
                true,
                vec![(xh.clone(), Access::R), (sh.clone(), Access::RW)],
            )
        } else if sh.id() == xh.id() {
            (
                true,
                vec![(rh.clone(), Access::R), (sh.clone(), Access::RW)],
            )
        } else {
            let ops = vec![
                (xh.clone(), Access::R),
                (rh.clone(), Access::R),
                (sh.clone(), Access::W),
            ];
            (false, ops)
        }
    };
    if ncol == 1 {
        for (li, sth) in stats.tiles.iter().enumerate() {
            let mut c = stats.grid.coords(li);
            let rows: usize = stats.grid.tile_shape(&c)[..nd - 1].iter().product();
            c[nd - 1] = 0;
            let cols = x.grid.tile_shape(&c)[nd - 1];
            let (in_place, mut ops) = addends(&c);
            ops.extend([
                (gamma.tiles[0].clone(), Access::R),
                (beta.tiles[0].clone(), Access::R),
                (sth.clone(), Access::W),
                (y.tile(&c).clone(), Access::W),
            ]);
            submit(rt, Ln::AddFwd { eps, in_place }, dt, (rows, cols), ops)?;
        }
        return Ok(stats);
    }
    let acc = row_tensor(x, 3, ad)?;
    for (li, (sth, ah)) in stats.tiles.iter().zip(&acc.tiles).enumerate() {
        let mut c = stats.grid.coords(li);
        let rows: usize = stats.grid.tile_shape(&c)[..nd - 1].iter().product();
        super::zero_tile(rt, ah, ad)?;
        for j in 0..ncol {
            c[nd - 1] = j;
            let cols = x.grid.tile_shape(&c)[nd - 1];
            let (in_place, mut ops) = addends(&c);
            ops.push((ah.clone(), Access::RW));
            submit(rt, Ln::AddStats { in_place }, dt, (rows, cols), ops)?;
        }
        let ops = vec![(ah.clone(), Access::R), (sth.clone(), Access::W)];
        submit(rt, Ln::Finalize { eps }, dt, (rows, 1), ops)?;
    }
    layernorm_apply(sum, &stats, gamma, beta, y)?;
    Ok(stats)
}

/// [`add_layernorm`] composed from the unfused ops (its specification):
/// `ops::add` into the residual stream, then [`layernorm_fwd`].
#[allow(clippy::too_many_arguments)]
pub fn add_layernorm_slow(
    x: &Tensor,
    r: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
    sum: &Tensor,
    y: &Tensor,
) -> Result<Tensor> {
    let same = |a: &Tensor, b: &Tensor| a.tiles.iter().zip(&b.tiles).all(|(p, q)| p.id() == q.id());
    if same(sum, r) {
        super::add(1.0, x, 1.0, sum)?;
    } else if same(sum, x) {
        super::add(1.0, r, 1.0, sum)?;
    } else {
        super::copy(r, sum)?;
        super::add(1.0, x, 1.0, sum)?;
    }
    layernorm_fwd(sum, gamma, beta, eps, y)
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
            let ops = vec![
                (x.tile(&c).clone(), Access::R),
                (dy.tile(&c).clone(), Access::R),
                (sh.clone(), Access::R),
                (gamma.tiles[j].clone(), Access::R),
                (sumh.clone(), Access::RW),
            ];
            submit(rt, Ln::BwdReduce, dt, (rows, cols), ops)?;
        }
        for j in 0..ncol {
            c[nd - 1] = j;
            let cols = x.grid.tile_shape(&c)[nd - 1];
            let dx_mode = if accumulate { Access::RW } else { Access::W };
            let ops = vec![
                (x.tile(&c).clone(), Access::R),
                (dy.tile(&c).clone(), Access::R),
                (sh.clone(), Access::R),
                (gamma.tiles[j].clone(), Access::R),
                (sumh.clone(), Access::R),
                (dx.tile(&c).clone(), dx_mode),
            ];
            submit(rt, Ln::Bwd { total, accumulate }, dt, (rows, cols), ops)?;
            let ops = vec![
                (x.tile(&c).clone(), Access::R),
                (dy.tile(&c).clone(), Access::R),
                (sh.clone(), Access::R),
                (dgamma.tiles[j].clone(), Access::RW),
                (dbeta.tiles[j].clone(), Access::RW),
            ];
            submit(rt, Ln::ParamGrad, dt, (rows, cols), ops)?;
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
            let ops = vec![
                (x.tile(&c).clone(), Access::R),
                (sh.clone(), Access::R),
                (gamma.tiles[j].clone(), Access::R),
                (beta.tiles[j].clone(), Access::R),
                (y.tile(&c).clone(), Access::W),
            ];
            submit(rt, Ln::Fwd, dt, (rows, cols), ops)?;
        }
    }
    Ok(())
}
