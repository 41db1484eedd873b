//! Tiled GEMM: C = alpha * op(A) @ op(B) + beta * C over tensors, as NNTile's
//! `gemm` but row-major with leading batch axes:
//!
//! ```text
//! A: [batch.., M.., K..]   (trans_a: [batch.., K.., M..])
//! B: [batch.., K.., N..]   (trans_b: [batch.., N.., K..])
//! C: [batch.., M.., N..]
//! ```
//!
//! `ndim` axes are contracted, `batch_ndim` leading axes are batched. Each C
//! tile gets one task per K tile, chained in K order through RW access (the
//! first applies beta, the rest accumulate with beta = 1), so the result is
//! the same whatever the worker count or schedule.

use super::footprint;
use crate::error::{arg_err, shape_err, Error, Result};
use crate::kernels::cpu::gemm as k;
use crate::runtime::{Access, Buffers, Codelet};
use crate::tensor::{for_each_index, Tensor};
use crate::{with_dtype, DType};

#[derive(Debug, Clone, Copy)]
pub struct GemmSpec {
    pub trans_a: bool,
    pub trans_b: bool,
    pub alpha: f64,
    pub beta: f64,
    /// Contracted axes.
    pub ndim: usize,
    /// Leading batch axes.
    pub batch_ndim: usize,
}

impl Default for GemmSpec {
    fn default() -> Self {
        GemmSpec {
            trans_a: false,
            trans_b: false,
            alpha: 1.0,
            beta: 0.0,
            ndim: 1,
            batch_ndim: 0,
        }
    }
}

struct GemmCl {
    dtype: DType,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
    beta: f64,
}

impl Codelet for GemmCl {
    fn name(&self) -> &'static str {
        "gemm"
    }
    fn flops(&self) -> f64 {
        k::gemm_flops(self.m, self.n, self.k, self.batch)
    }
    fn footprint(&self) -> u64 {
        footprint(&[
            self.m as u64,
            self.n as u64,
            self.k as u64,
            self.batch as u64,
            self.trans_a as u64 * 2 + self.trans_b as u64,
        ])
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            k::gemm::<T>(
                self.trans_a,
                self.trans_b,
                self.m,
                self.n,
                self.k,
                self.batch,
                self.alpha,
                b.r(0)?,
                b.r(1)?,
                self.beta,
                b.w(2)?,
            );
        });
        Ok(())
    }
}

/// Axis lists of A, B, C: (batch, M, N, K-in-A, K-in-B).
struct Axes {
    batch: Vec<usize>,
    a_m: Vec<usize>,
    a_k: Vec<usize>,
    b_k: Vec<usize>,
    b_n: Vec<usize>,
    c_m: Vec<usize>,
    c_n: Vec<usize>,
}

fn axes(s: &GemmSpec, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Axes> {
    let (bn, nd) = (s.batch_ndim, s.ndim);
    if a.ndim() < bn + nd || b.ndim() < bn + nd {
        return Err(shape_err(
            "gemm",
            format!(
                "A {:?} and B {:?} need at least batch_ndim + ndim = {} axes",
                a.shape(),
                b.shape(),
                bn + nd
            ),
        ));
    }
    let mdim = a.ndim() - bn - nd;
    let ndim_n = b.ndim() - bn - nd;
    if c.ndim() != bn + mdim + ndim_n {
        return Err(shape_err(
            "gemm",
            format!(
                "C {:?} must have {} axes (batch, M, N)",
                c.shape(),
                bn + mdim + ndim_n
            ),
        ));
    }
    let r = |lo: usize, n: usize| (lo..lo + n).collect::<Vec<_>>();
    let (a_m, a_k) = if s.trans_a {
        (r(bn + nd, mdim), r(bn, nd))
    } else {
        (r(bn, mdim), r(bn + mdim, nd))
    };
    let (b_k, b_n) = if s.trans_b {
        (r(bn + ndim_n, nd), r(bn, ndim_n))
    } else {
        (r(bn, nd), r(bn + nd, ndim_n))
    };
    Ok(Axes {
        batch: r(0, bn),
        a_m,
        a_k,
        b_k,
        b_n,
        c_m: r(bn, mdim),
        c_n: r(bn + mdim, ndim_n),
    })
}

/// Shape and tile shape of C for `gemm(spec, a, b, c)`: batch and M axes cut
/// as in A, N axes as in B.
pub fn gemm_output_grid(s: &GemmSpec, a: &Tensor, b: &Tensor) -> Result<(Vec<usize>, Vec<isize>)> {
    let (bn, nd) = (s.batch_ndim, s.ndim);
    if a.ndim() < bn + nd || b.ndim() < bn + nd {
        return Err(shape_err(
            "gemm",
            format!(
                "A {:?} and B {:?} need at least batch_ndim + ndim = {} axes",
                a.shape(),
                b.shape(),
                bn + nd
            ),
        ));
    }
    let mdim = a.ndim() - bn - nd;
    let ndim_n = b.ndim() - bn - nd;
    let a_m: Vec<usize> = if s.trans_a {
        (bn + nd..bn + nd + mdim).collect()
    } else {
        (bn..bn + mdim).collect()
    };
    let b_n: Vec<usize> = if s.trans_b {
        (bn..bn + ndim_n).collect()
    } else {
        (bn + nd..bn + nd + ndim_n).collect()
    };
    let mut shape = Vec::new();
    let mut tile = Vec::new();
    for ax in 0..bn {
        shape.push(a.grid.shape[ax]);
        tile.push(a.grid.tile[ax] as isize);
    }
    for &ax in &a_m {
        shape.push(a.grid.shape[ax]);
        tile.push(a.grid.tile[ax] as isize);
    }
    for &ax in &b_n {
        shape.push(b.grid.shape[ax]);
        tile.push(b.grid.tile[ax] as isize);
    }
    Ok((shape, tile))
}

/// Submits C = alpha * op(A) @ op(B) + beta * C.
pub fn gemm(s: &GemmSpec, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    for t in [b, c] {
        if t.dtype != a.dtype {
            return Err(Error::DType {
                op: "gemm".into(),
                expected: a.dtype,
                got: t.dtype,
            });
        }
        if !t.runtime().same(a.runtime()) {
            return Err(arg_err("gemm", "tensors belong to different runtimes"));
        }
    }
    let x = axes(s, a, b, c)?;
    let (ag, bg, cg) = (&a.grid, &b.grid, &c.grid);
    let checks = [
        ("batch of A and C", ag.same_cut(&x.batch, cg, &x.batch)),
        ("batch of B and C", bg.same_cut(&x.batch, cg, &x.batch)),
        ("M of A and C", ag.same_cut(&x.a_m, cg, &x.c_m)),
        ("N of B and C", bg.same_cut(&x.b_n, cg, &x.c_n)),
        ("K of A and B", ag.same_cut(&x.a_k, bg, &x.b_k)),
    ];
    for (what, ok) in checks {
        if !ok {
            return Err(shape_err(
                "gemm",
                format!(
                    "{what} differ in shape or tiling: A {:?}/{:?}, B {:?}/{:?}, C {:?}/{:?} \
                     (trans_a={}, trans_b={}, ndim={}, batch_ndim={})",
                    ag.shape,
                    ag.tile,
                    bg.shape,
                    bg.tile,
                    cg.shape,
                    cg.tile,
                    s.trans_a,
                    s.trans_b,
                    s.ndim,
                    s.batch_ndim
                ),
            ));
        }
    }
    let k_grid: Vec<usize> = x.a_k.iter().map(|&ax| ag.grid[ax]).collect();
    let k_total: usize = x.a_k.iter().map(|&ax| ag.shape[ax]).product();
    let rt = a.runtime();
    for (ci, ch) in c.tiles.iter().enumerate() {
        let cc = cg.coords(ci);
        let cshape = cg.tile_shape(&cc);
        let prod = |axes: &[usize]| axes.iter().map(|&ax| cshape[ax]).product::<usize>();
        let (batch, m, n) = (prod(&x.batch), prod(&x.c_m), prod(&x.c_n));
        if k_total == 0 {
            // An empty contraction leaves beta * C.
            let mode = if s.beta == 0.0 { Access::W } else { Access::RW };
            scale_tile(rt, ch, c.dtype, s.beta, mode)?;
            continue;
        }
        let mut first = true;
        let mut err = Ok(());
        for_each_index(&k_grid, |kc| {
            if err.is_err() {
                return;
            }
            let mut acoord = vec![0; ag.ndim()];
            let mut bcoord = vec![0; bg.ndim()];
            for (i, &ax) in x.batch.iter().enumerate() {
                acoord[ax] = cc[x.batch[i]];
                bcoord[ax] = cc[x.batch[i]];
            }
            for (i, &ax) in x.a_m.iter().enumerate() {
                acoord[ax] = cc[x.c_m[i]];
            }
            for (i, &ax) in x.b_n.iter().enumerate() {
                bcoord[ax] = cc[x.c_n[i]];
            }
            for (i, &ax) in x.a_k.iter().enumerate() {
                acoord[ax] = kc[i];
                bcoord[x.b_k[i]] = kc[i];
            }
            let ashape = ag.tile_shape(&acoord);
            let ktile = x.a_k.iter().map(|&ax| ashape[ax]).product();
            let beta = if first { s.beta } else { 1.0 };
            let cmode = if beta == 0.0 { Access::W } else { Access::RW };
            first = false;
            let cl = GemmCl {
                dtype: a.dtype,
                trans_a: s.trans_a,
                trans_b: s.trans_b,
                m,
                n,
                k: ktile,
                batch,
                alpha: s.alpha,
                beta,
            };
            err = rt
                .submit(
                    Box::new(cl),
                    vec![
                        (a.tiles[ag.linear(&acoord)].clone(), Access::R),
                        (b.tiles[bg.linear(&bcoord)].clone(), Access::R),
                        (ch.clone(), cmode),
                    ],
                )
                .map(|_| ());
        });
        err?;
    }
    Ok(())
}

/// Submits `h = beta * h` (zeros when beta is 0): the result of an empty
/// contraction or reduction.
pub(crate) fn scale_tile(
    rt: &crate::runtime::Runtime,
    h: &crate::runtime::DataHandle,
    dtype: DType,
    beta: f64,
    mode: Access,
) -> Result<()> {
    rt.submit(Box::new(ScaleTile { dtype, beta }), vec![(h.clone(), mode)])?;
    Ok(())
}

struct ScaleTile {
    dtype: DType,
    beta: f64,
}

impl Codelet for ScaleTile {
    fn name(&self) -> &'static str {
        "scale"
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            if self.beta == 0.0 {
                crate::kernels::cpu::elementwise::fill::<T>(0.0, b.w(0)?)
            } else {
                crate::kernels::cpu::elementwise::scale::<T>(self.beta, b.w(0)?)
            }
        });
        Ok(())
    }
}
