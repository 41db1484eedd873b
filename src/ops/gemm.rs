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
//! the same whatever the worker count or schedule. C tiles of at most
//! `SPLIT_K_MAX_ROWS` rows (a decoding step's GEMVs) split K instead: the K
//! tiles multiply in parallel into scratch tiles, added into C in K order.
//!
//! On a GPU the tasks run cuBLAS (`kernels::cuda::blas`) in the compute mode
//! given to [`gemm_with`] (the model passes its precision's); the CPU
//! computes in f32 (or f64), as DESIGN.md says, except bf16 products where
//! oneMKL is the bf16 backend (`kernels::cpu::mkl`).
//!
//! [`gemm_bias_act`] computes `C = act(op(A) @ op(B) + bias)` in one task
//! per C tile (a cuBLASLt epilogue on a GPU), for a contraction that is one
//! tile; its spec is the composition `bias_fill`, `gemm` with beta = 1,
//! `activation_fwd`, which its CPU path runs kernel by kernel.

use super::elementwise::axpy_tile;
use super::footprint;
pub use crate::dtype::GemmCompute;
use crate::error::{arg_err, shape_err, Error, Result};
use crate::kernels::cpu::activation::{self as ka, Activation};
use crate::kernels::cpu::bias as kb;
use crate::kernels::cpu::gemm as k;
use crate::kernels::cuda::blas::{self, BiasAct};
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, Where};
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

/// One tile GEMM: `alpha * op(A) @ op(B)` over `batch` (m x k) @ (k x n)
/// products; what the plain and the bias/activation codelets share.
#[derive(Clone, Copy)]
struct TileGemm {
    dtype: DType,
    /// On the CPU only bf16 matters (oneMKL, where it is the bf16 backend).
    compute: GemmCompute,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
}

impl TileGemm {
    fn flops(&self) -> f64 {
        k::gemm_flops(self.m, self.n, self.k, self.batch)
    }
    /// The performance-model key, with `extra` parts appended.
    fn footprint(&self, extra: &[u64]) -> u64 {
        let mut parts = vec![
            self.m as u64,
            self.n as u64,
            self.k as u64,
            self.batch as u64,
            self.trans_a as u64 * 2 + self.trans_b as u64,
            self.compute as u64,
        ];
        parts.extend_from_slice(extra);
        footprint(&parts)
    }
    /// cuBLAS takes 32-bit sizes.
    fn fits_cublas(&self) -> bool {
        fits_i32(&[self.m, self.n, self.k, self.batch])
    }
    /// `c = alpha * op(a) @ op(b) + beta * c` on the CPU.
    fn cpu<T: crate::dtype::Element>(&self, a: &[T], b: &[T], beta: f64, c: &mut [T]) {
        let shape = (
            self.trans_a,
            self.trans_b,
            self.m,
            self.n,
            self.k,
            self.batch,
        );
        k::gemm_in::<T>(self.compute, shape, self.alpha, a, b, beta, c);
    }
}

struct GemmCl {
    g: TileGemm,
    beta: f64,
}

impl Codelet for GemmCl {
    fn name(&self) -> &'static str {
        "gemm"
    }
    fn flops(&self) -> f64 {
        self.g.flops()
    }
    fn footprint(&self) -> u64 {
        self.g.footprint(&[])
    }
    fn where_(&self) -> Where {
        // Every dtype has a cuBLAS path; sizes must fit its 32-bit ints.
        if self.g.fits_cublas() {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let g = &self.g;
        with_dtype!(g.dtype, T, {
            blas::gemm::<T>(
                b.gpu(),
                g.compute,
                g.trans_a,
                g.trans_b,
                g.m,
                g.n,
                g.k,
                g.batch,
                g.alpha,
                &b.r(0)?,
                &b.r(1)?,
                self.beta,
                &mut b.w(2)?,
            )
        })
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.g.dtype, T, {
            self.g.cpu::<T>(b.r(0)?, b.r(1)?, self.beta, b.w(2)?)
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

/// Checks dtypes, runtimes, shapes and cuts of `op(a) @ op(b) -> c`, and
/// returns the axis lists.
fn checked_axes(op: &str, s: &GemmSpec, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<Axes> {
    for t in [b, c] {
        if t.dtype != a.dtype {
            return Err(Error::DType {
                op: op.into(),
                expected: a.dtype,
                got: t.dtype,
            });
        }
        if !t.runtime().same(a.runtime()) {
            return Err(arg_err(op, "tensors belong to different runtimes"));
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
                op,
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
    Ok(x)
}

impl Axes {
    /// Tile coordinates of A and B for C tile `cc` and K tile `kc`.
    fn operand_coords(
        &self,
        cc: &[usize],
        kc: &[usize],
        a_ndim: usize,
        b_ndim: usize,
    ) -> (Vec<usize>, Vec<usize>) {
        let mut acoord = vec![0; a_ndim];
        let mut bcoord = vec![0; b_ndim];
        for &ax in &self.batch {
            acoord[ax] = cc[ax];
            bcoord[ax] = cc[ax];
        }
        for (i, &ax) in self.a_m.iter().enumerate() {
            acoord[ax] = cc[self.c_m[i]];
        }
        for (i, &ax) in self.b_n.iter().enumerate() {
            bcoord[ax] = cc[self.c_n[i]];
        }
        for (i, &ax) in self.a_k.iter().enumerate() {
            acoord[ax] = kc[i];
            bcoord[self.b_k[i]] = kc[i];
        }
        (acoord, bcoord)
    }
}

/// Whether every size fits cuBLAS's `int`.
fn fits_i32(v: &[usize]) -> bool {
    v.iter().all(|&x| i32::try_from(x).is_ok())
}

/// Rows (times batch) of a C tile up to which its K tiles multiply in
/// parallel (split-K) rather than in a chain: decoding's GEMVs, not
/// training's GEMMs, whose rounding stays that of the chain.
const SPLIT_K_MAX_ROWS: usize = 64;

/// Submits C = alpha * op(A) @ op(B) + beta * C (full-precision compute).
pub fn gemm(s: &GemmSpec, a: &Tensor, b: &Tensor, c: &Tensor) -> Result<()> {
    gemm_with(s, GemmCompute::Default, a, b, c)
}

/// [`gemm`] with the GPU compute mode of its tasks (tf32, fp16, bf16 inputs
/// for f32 storage; see [`GemmCompute`]).
pub fn gemm_with(
    s: &GemmSpec,
    compute: GemmCompute,
    a: &Tensor,
    b: &Tensor,
    c: &Tensor,
) -> Result<()> {
    let x = checked_axes("gemm", s, a, b, c)?;
    let (ag, bg, cg) = (&a.grid, &b.grid, &c.grid);
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
        // A product of few rows (decoding's GEMVs) would chain its K tiles
        // on one worker: there each K tile after the first multiplies into
        // a scratch tile of its own, all in parallel, and the scratch tiles
        // are added into C in K order (the same sums whatever the workers).
        let split_k = m * batch <= SPLIT_K_MAX_ROWS && k_grid.iter().product::<usize>() > 1;
        let mut first = true;
        let mut partials = Vec::new();
        let mut err = Ok(());
        for_each_index(&k_grid, |kc| {
            if err.is_err() {
                return;
            }
            let (acoord, bcoord) = x.operand_coords(&cc, kc, ag.ndim(), bg.ndim());
            let ashape = ag.tile_shape(&acoord);
            let ktile = x.a_k.iter().map(|&ax| ashape[ax]).product();
            // The first K tile applies beta to C; later ones accumulate into
            // C (beta = 1), or overwrite a scratch tile under split-K.
            let target = if first || !split_k {
                ch.clone()
            } else {
                match rt.new_handle(c.dtype, ch.len()) {
                    Ok(h) => {
                        partials.push(h.clone());
                        h
                    }
                    Err(e) => {
                        err = Err(e);
                        return;
                    }
                }
            };
            let beta = if first {
                s.beta
            } else if split_k {
                0.0
            } else {
                1.0
            };
            let cmode = if beta == 0.0 { Access::W } else { Access::RW };
            first = false;
            let cl = GemmCl {
                g: TileGemm {
                    dtype: a.dtype,
                    compute,
                    trans_a: s.trans_a,
                    trans_b: s.trans_b,
                    m,
                    n,
                    k: ktile,
                    batch,
                    alpha: s.alpha,
                },
                beta,
            };
            err = rt
                .submit(
                    Box::new(cl),
                    vec![
                        (a.tiles[ag.linear(&acoord)].clone(), Access::R),
                        (b.tiles[bg.linear(&bcoord)].clone(), Access::R),
                        (target, cmode),
                    ],
                )
                .map(|_| ());
        });
        err?;
        for p in &partials {
            axpy_tile(rt, 1.0, p, ch, c.dtype)?;
        }
    }
    Ok(())
}

/// Submits one tile GEMM task, `c = alpha * op(a) @ op(b) + beta * c` with
/// `shape = (trans_a, trans_b, m, n, k)`, as [`gemm_with`] does per K tile
/// (for ops that chain their own K tiles); `mode` is c's access.
#[allow(clippy::too_many_arguments)]
pub(crate) fn submit_tile_gemm(
    rt: &crate::runtime::Runtime,
    dtype: DType,
    compute: GemmCompute,
    (trans_a, trans_b, m, n, k): (bool, bool, usize, usize, usize),
    alpha: f64,
    beta: f64,
    a: &crate::runtime::DataHandle,
    b: &crate::runtime::DataHandle,
    c: &crate::runtime::DataHandle,
    mode: Access,
) -> Result<()> {
    let g = TileGemm {
        dtype,
        compute,
        trans_a,
        trans_b,
        m,
        n,
        k,
        batch: 1,
        alpha,
    };
    let ops = vec![
        (a.clone(), Access::R),
        (b.clone(), Access::R),
        (c.clone(), mode),
    ];
    rt.submit(Box::new(GemmCl { g, beta }), ops)?;
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
    fn where_(&self) -> Where {
        Where::ANY
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            use crate::kernels::cuda::elementwise as cew;
            let mut y = b.w::<T>(0)?;
            if self.beta == 0.0 {
                cew::fill::<T>(b.gpu(), 0.0, &mut y)
            } else {
                cew::scale::<T>(b.gpu(), self.beta, &mut y)
            }
        })
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

/// The epilogue cuBLASLt runs for `act` (None where it has none: exact GELU).
fn bias_act(act: Option<Activation>) -> Option<BiasAct> {
    match act {
        None => Some(BiasAct::Bias),
        Some(Activation::GeluTanh) => Some(BiasAct::BiasGeluTanh),
        Some(Activation::Relu) => Some(BiasAct::BiasRelu),
        Some(Activation::Gelu) => None,
    }
}

/// One C tile of [`gemm_bias_act`]. Operands: A (R), B (R), bias (R), C (W).
struct GemmBiasActCl {
    g: TileGemm,
    act: Option<Activation>,
}

impl Codelet for GemmBiasActCl {
    fn name(&self) -> &'static str {
        "gemm_bias_act"
    }
    fn flops(&self) -> f64 {
        self.g.flops()
    }
    fn footprint(&self) -> u64 {
        self.g.footprint(&[self.act.map_or(0, |a| 1 + a as u64)])
    }
    fn where_(&self) -> Where {
        // cuBLASLt: no f64 here (its epilogues are not promised for
        // COMPUTE_64F), no exact-GELU epilogue, and no empty contraction.
        let g = &self.g;
        let gpu = g.dtype != DType::F64
            && bias_act(self.act).is_some()
            && g.k > 0
            && g.alpha != 0.0
            && g.fits_cublas();
        if gpu {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let g = &self.g;
        with_dtype!(g.dtype, T, {
            let c = b.w::<T>(3)?;
            // The spec, kernel by kernel: bias_fill, gemm with beta = 1, act.
            kb::bias_fill::<T>(b.r(2)?, g.batch * g.m, g.n, c);
            g.cpu::<T>(b.r(0)?, b.r(1)?, 1.0, c);
            if let Some(act) = self.act {
                let x = c.to_vec();
                ka::activation_fwd::<T>(act, &x, c);
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let act = bias_act(self.act)
            .ok_or_else(|| arg_err("gemm_bias_act", "exact GELU has no cuBLASLt epilogue"))?;
        let g = &self.g;
        with_dtype!(g.dtype, T, {
            blas::gemm_bias_act::<T>(
                b.gpu(),
                g.compute,
                g.trans_a,
                g.trans_b,
                g.m,
                g.n,
                g.k,
                g.batch,
                g.alpha,
                &b.r(0)?,
                &b.r(1)?,
                &b.r(2)?,
                act,
                &mut b.w(3)?,
            )
        })
    }
}

/// Submits `C = act(alpha * op(A) @ op(B) + bias)` (`act = None`: no
/// activation), one task per C tile. `bias` has the N axes of C, cut like
/// them. `s.beta` must be 0 (C is overwritten), and the contracted axes of A
/// must be one tile: otherwise use [`gemm`] with beta = 1 on a C filled by
/// `bias_fill`, then `activation_fwd`. On a GPU this is one cuBLASLt matmul
/// with a bias (+ GELU tanh / ReLU) epilogue per tile, which rounds to the
/// storage type once where the CPU path rounds after the GEMM and again
/// after the activation (a difference for bf16 only).
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias_act(
    s: &GemmSpec,
    compute: GemmCompute,
    act: Option<Activation>,
    a: &Tensor,
    b: &Tensor,
    bias: &Tensor,
    c: &Tensor,
) -> Result<()> {
    let op = "gemm_bias_act";
    if s.beta != 0.0 {
        return Err(arg_err(
            op,
            format!(
                "beta = {} but gemm_bias_act overwrites C: use gemm + bias + activation",
                s.beta
            ),
        ));
    }
    let x = checked_axes(op, s, a, b, c)?;
    if bias.dtype != a.dtype {
        return Err(Error::DType {
            op: op.into(),
            expected: a.dtype,
            got: bias.dtype,
        });
    }
    if !bias.runtime().same(a.runtime()) {
        return Err(arg_err(op, "tensors belong to different runtimes"));
    }
    let (ag, bg, cg) = (&a.grid, &b.grid, &c.grid);
    let n_shape: Vec<usize> = x.c_n.iter().map(|&ax| cg.shape[ax]).collect();
    let n_tile: Vec<usize> = x.c_n.iter().map(|&ax| cg.tile[ax]).collect();
    if bias.grid.shape != n_shape || bias.grid.tile != n_tile {
        return Err(shape_err(
            op,
            format!(
                "bias {:?} (tiles {:?}) must be the N axes of C: {:?} (tiles {:?})",
                bias.grid.shape, bias.grid.tile, n_shape, n_tile
            ),
        ));
    }
    if x.a_k.iter().any(|&ax| ag.shape[ax] == 0) {
        return Err(arg_err(
            op,
            "empty contraction (a K axis of length 0): use bias_fill + activation_fwd",
        ));
    }
    let k_grid: Vec<usize> = x.a_k.iter().map(|&ax| ag.grid[ax]).collect();
    if k_grid.iter().any(|&g| g > 1) {
        return Err(arg_err(
            op,
            format!(
                "the contraction is cut into {k_grid:?} tiles; gemm_bias_act needs it whole \
                 (one K tile): use gemm (beta = 1 on a bias_fill'ed C) + activation_fwd instead"
            ),
        ));
    }
    let kc = vec![0; x.a_k.len()];
    let rt = a.runtime();
    for (ci, ch) in c.tiles.iter().enumerate() {
        let cc = cg.coords(ci);
        let cshape = cg.tile_shape(&cc);
        let prod = |axes: &[usize]| axes.iter().map(|&ax| cshape[ax]).product::<usize>();
        let (batch, m, n) = (prod(&x.batch), prod(&x.c_m), prod(&x.c_n));
        let (acoord, bcoord) = x.operand_coords(&cc, &kc, ag.ndim(), bg.ndim());
        let ashape = ag.tile_shape(&acoord);
        let ktile = x.a_k.iter().map(|&ax| ashape[ax]).product();
        let bias_coord: Vec<usize> = x.c_n.iter().map(|&ax| cc[ax]).collect();
        let cl = GemmBiasActCl {
            g: TileGemm {
                dtype: a.dtype,
                compute,
                trans_a: s.trans_a,
                trans_b: s.trans_b,
                m,
                n,
                k: ktile,
                batch,
                alpha: s.alpha,
            },
            act,
        };
        rt.submit(
            Box::new(cl),
            vec![
                (a.tiles[ag.linear(&acoord)].clone(), Access::R),
                (b.tiles[bg.linear(&bcoord)].clone(), Access::R),
                (bias.tile(&bias_coord).clone(), Access::R),
                (ch.clone(), Access::W),
            ],
        )?;
    }
    Ok(())
}
