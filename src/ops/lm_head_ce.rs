//! The training LM head with its cross-entropy, forward and backward:
//!
//! ```text
//! hf [B, T, C], wte [V, C] (tied embedding), targets [B*T] (-100 ignored)
//! logits = hf wte^T                     [B, T, V], never kept as such
//! loss  += sum of the cross-entropies of the non-ignored rows  (f64, zeroed first)
//! dhf    = scale * dloss/dhf            (an activation gradient: overwritten)
//! dwte  += scale * dloss/dwte           (a parameter gradient: accumulated)
//! ```
//!
//! On CPU-only runtimes [`lm_head_ce`] folds the softmax into the GEMM
//! tasks (`kernels::cpu::lm_head_ce`): per logits tile (row tile, vocabulary
//! tile j) the forward GEMM task turns each column chunk of logits into
//! `exp(z - row shift)` while it is in L2 and keeps the row statistics; one
//! small merge task per row tile gives the loss and the per-(row, tile)
//! factors; the two backward GEMM tasks apply those factors to a GEMM
//! product or to `hf` (O(rows x C) work) instead of rewriting the logits,
//! and add the target terms. So the logits are written once and read twice,
//! and the cross-entropy has no task and no pass over them of its own.
//!
//! [`lm_head_ce_slow`] is the spec and the path of runtimes with GPUs: the
//! GEMMs and `crossentropy`'s tasks, composed (two exps per logit; on a GPU
//! they are cheap and the logits never leave the device).

use super::crossentropy::{check_ce_inputs, cross_entropy_bwd, cross_entropy_fwd, row_targets};
use super::footprint;
use super::gemm::{gemm_with, submit_tile_gemm, GemmCompute, GemmSpec};
use super::layernorm::acc_dtype;
use crate::error::{arg_err, shape_err, Error, Result};
use crate::kernels::cpu::gemm::gemm_flops;
use crate::kernels::cpu::lm_head_ce::{self as k, BwdShape, FwdShape};
use crate::runtime::{Access, Buffers, Codelet, DataHandle, DevBuffers, Where, WorkerKind};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype, DType};
use std::sync::Arc;

/// The last K task of a logits tile, with the cross-entropy epilogue.
/// Operands: hf tile (R), wte tile (R), logits tile (W, or RW when beta != 0:
/// the K chain's sum so far), part `[rows, 3]` (W).
struct FwdCl {
    dtype: DType,
    compute: GemmCompute,
    s: FwdShape,
    beta: f64,
    tg: Arc<Vec<i64>>,
}

/// Per row tile: the loss and the factors. Operands: the row's part tiles
/// (R, one per vocabulary tile), factors `[rows, ntiles, 2]` (W), loss (RW).
struct MergeCl {
    dtype: DType,
    rows: usize,
    /// Vocabulary size and tile.
    v: usize,
    vt: usize,
    ntiles: usize,
    tg: Arc<Vec<i64>>,
    scale: f64,
}

/// One K task of a dhf tile (`first`: it overwrites) or of a dwte tile.
/// Operands: numerators tile (R), wte or hf tile (R), factors (R), output
/// (W when first, else RW).
struct BwdCl {
    dtype: DType,
    compute: GemmCompute,
    s: BwdShape,
    /// dhf (false) or dwte (true).
    dw: bool,
    first: bool,
    tg: Arc<Vec<i64>>,
}

impl Codelet for FwdCl {
    fn name(&self) -> &'static str {
        "lm_head_ce_fwd"
    }
    fn flops(&self) -> f64 {
        let FwdShape { m, n, k, .. } = self.s;
        gemm_flops(m, n, k, 1) + 3.0 * (m * n) as f64
    }
    fn footprint(&self) -> u64 {
        let FwdShape { m, n, k, .. } = self.s;
        footprint(&[m as u64, n as u64, k as u64, self.compute as u64])
    }
    fn where_(&self) -> Where {
        Where::ANY_CPU
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (s, tg) = (self.s, &self.tg[..]);
        with_dtype!(self.dtype, T, {
            k::fwd_tile::<T>(
                self.compute,
                s,
                1.0,
                b.r(0)?,
                b.r(1)?,
                self.beta,
                tg,
                b.w(2)?,
                b.w(3)?,
            )
        });
        Ok(())
    }
    fn cuda(&self, _: &DevBuffers) -> Result<()> {
        Err(arg_err(self.name(), "runs on CPUs only"))
    }
}

impl Codelet for MergeCl {
    fn name(&self) -> &'static str {
        "lm_head_ce_merge"
    }
    fn flops(&self) -> f64 {
        (4 * self.rows * self.ntiles) as f64
    }
    fn footprint(&self) -> u64 {
        footprint(&[self.rows as u64, self.ntiles as u64])
    }
    fn where_(&self) -> Where {
        Where::ANY_CPU
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let nt = self.ntiles;
        let cols: Vec<_> = (0..nt)
            .map(|j| j * self.vt..((j + 1) * self.vt).min(self.v))
            .collect();
        with_acc_dtype!(acc_dtype(self.dtype), A, {
            let parts = (0..nt).map(|j| b.r::<A>(j)).collect::<Result<Vec<_>>>()?;
            k::merge::<A>(
                &parts,
                self.rows,
                &cols,
                &self.tg,
                self.scale,
                b.w(nt)?,
                b.w(nt + 1)?,
            )
        });
        Ok(())
    }
    fn cuda(&self, _: &DevBuffers) -> Result<()> {
        Err(arg_err(self.name(), "runs on CPUs only"))
    }
}

impl Codelet for BwdCl {
    fn name(&self) -> &'static str {
        if self.dw {
            "lm_head_ce_dw"
        } else {
            "lm_head_ce_dx"
        }
    }
    fn flops(&self) -> f64 {
        let s = &self.s;
        gemm_flops(s.rows, s.n, s.vt, 1) + 2.0 * (s.rows * s.n) as f64
    }
    fn footprint(&self) -> u64 {
        let s = &self.s;
        let parts = [s.rows, s.vt, s.n, s.ntiles, self.dw as usize];
        let mut p: Vec<u64> = parts.iter().map(|&x| x as u64).collect();
        p.push(self.compute as u64);
        footprint(&p)
    }
    fn where_(&self) -> Where {
        Where::ANY_CPU
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (s, c, tg) = (self.s, self.compute, &self.tg[..]);
        with_dtype!(self.dtype, T, {
            let (e, x, f, out) = (b.r(0)?, b.r(1)?, b.r(2)?, b.w(3)?);
            if self.dw {
                let beta = if self.first { 0.0 } else { 1.0 };
                k::dw_tile::<T>(c, s, e, x, tg, f, beta, out)
            } else {
                k::dx_tile::<T>(c, s, e, x, tg, f, self.first, out)
            }
        });
        Ok(())
    }
    fn cuda(&self, _: &DevBuffers) -> Result<()> {
        Err(arg_err(self.name(), "runs on CPUs only"))
    }
}

/// Checks the operands of [`lm_head_ce`]: (B, T, V) and the vocabulary tile.
fn check(
    hf: &Tensor,
    wte: &Tensor,
    targets: &[i64],
    loss: &DataHandle,
    dhf: &Tensor,
    dwte: &Tensor,
) -> Result<(usize, usize, usize)> {
    let op = "lm_head_ce";
    for t in [wte, dhf, dwte] {
        if t.dtype != hf.dtype {
            return Err(Error::DType {
                op: op.into(),
                expected: hf.dtype,
                got: t.dtype,
            });
        }
    }
    super::same_layout(op, hf, dhf)?;
    super::same_layout(op, wte, dwte)?;
    let (hg, wg) = (&hf.grid, &wte.grid);
    if hf.ndim() != 3 || wte.ndim() != 2 || hg.shape[2] != wg.shape[1] || hg.tile[2] != wg.tile[1] {
        return Err(shape_err(
            op,
            format!(
                "hf {:?} (tiles {:?}) must be [B, T, C] and wte {:?} (tiles {:?}) [V, C], \
                 C cut alike",
                hg.shape, hg.tile, wg.shape, wg.tile
            ),
        ));
    }
    if !wte.runtime().same(hf.runtime()) {
        return Err(arg_err(op, "tensors belong to different runtimes"));
    }
    let (b, t, v) = (hg.shape[0], hg.shape[1], wg.shape[0]);
    check_ce_inputs(op, targets, b * t, v, loss)?;
    Ok((b, t, v))
}

/// Submits the training LM head and its cross-entropy (see the module doc):
/// `loss` (one f64) = the summed cross-entropy of `hf wte^T` against
/// `targets`, `dhf` = `scale` times its gradient, `dwte` += `scale` times its
/// gradient; GEMMs in `compute`. The logits are not kept. On runtimes with
/// GPU workers this is [`lm_head_ce_slow`].
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce(
    loss: &DataHandle,
    dhf: &Tensor,
    dwte: &Tensor,
    hf: &Tensor,
    wte: &Tensor,
    targets: &[i64],
    scale: f64,
    compute: GemmCompute,
) -> Result<()> {
    let (b, t, v) = check(hf, wte, targets, loss, dhf, dwte)?;
    let rt = hf.runtime();
    if rt.nworkers_of(WorkerKind::Cuda) > 0 {
        return lm_head_ce_slow(loss, dhf, dwte, hf, wte, targets, scale, compute);
    }
    let (dt, ad) = (hf.dtype, acc_dtype(hf.dtype));
    let (hg, wg) = (&hf.grid, &wte.grid);
    let (tb, tt, vt) = (hg.tile[0], hg.tile[1], wg.tile[0]);
    let (nt, nc) = (wg.grid[0], hg.grid[2]);
    let e = Tensor::zeros(rt, &[b, t, v], &[tb as isize, tt as isize, vt as isize], dt)?;
    let part = Tensor::zeros(rt, &[b, t, nt, 3], &[tb as isize, tt as isize, 1, 3], ad)?;
    let factors = Tensor::zeros(
        rt,
        &[b, t, nt, 2],
        &[tb as isize, tt as isize, nt as isize, 2],
        ad,
    )?;
    super::zero_tile(rt, loss, DType::F64)?;
    let row_tiles: Vec<[usize; 2]> = (0..hg.grid[0])
        .flat_map(|i| (0..hg.grid[1]).map(move |j| [i, j]))
        .collect();
    let tgs: Vec<Arc<Vec<i64>>> = row_tiles
        .iter()
        .map(|&[i, j]| row_targets(targets, hf, &[i, j, 0]))
        .collect();
    // Forward: per logits tile the K chain over C, its last task fused.
    for (&[bi, ti], tg) in row_tiles.iter().zip(&tgs) {
        let rows = tg.len();
        for j in 0..nt {
            let n = wg.tile_shape(&[j, 0])[0];
            let eh = e.tile(&[bi, ti, j]);
            for c in 0..nc {
                let kc = hg.tile_shape(&[bi, ti, c])[2];
                let (a, bh) = (hf.tile(&[bi, ti, c]), wte.tile(&[j, c]));
                let beta = if c == 0 { 0.0 } else { 1.0 };
                let mode = if c == 0 { Access::W } else { Access::RW };
                if c + 1 < nc {
                    let shape = (false, true, rows, n, kc);
                    submit_tile_gemm(rt, dt, compute, shape, 1.0, beta, a, bh, eh, mode)?;
                    continue;
                }
                let cl = FwdCl {
                    dtype: dt,
                    compute,
                    s: FwdShape {
                        m: rows,
                        n,
                        k: kc,
                        vocab_lo: j * vt,
                    },
                    beta,
                    tg: tg.clone(),
                };
                let ops = vec![
                    (a.clone(), Access::R),
                    (bh.clone(), Access::R),
                    (eh.clone(), mode),
                    (part.tile(&[bi, ti, j, 0]).clone(), Access::W),
                ];
                rt.submit(Box::new(cl), ops)?;
            }
        }
        let mut ops: Vec<_> = (0..nt)
            .map(|j| (part.tile(&[bi, ti, j, 0]).clone(), Access::R))
            .collect();
        ops.push((factors.tile(&[bi, ti, 0, 0]).clone(), Access::W));
        ops.push((loss.clone(), Access::RW));
        let cl = MergeCl {
            dtype: dt,
            rows,
            v,
            vt,
            ntiles: nt,
            tg: tg.clone(),
            scale,
        };
        rt.submit(Box::new(cl), ops)?;
    }
    // Backward: dhf (K chain over the vocabulary tiles), then dwte (K chain
    // over the row tiles), the order the unfused GEMMs run in.
    let bwd = |bi: usize, ti: usize, j: usize, c: usize, tg: &Arc<Vec<i64>>, dw: bool| {
        let rows = tg.len();
        let s = BwdShape {
            rows,
            vt: wg.tile_shape(&[j, 0])[0],
            n: hg.tile_shape(&[bi, ti, c])[2],
            vocab_lo: j * vt,
            j,
            ntiles: nt,
        };
        let first = if dw { false } else { j == 0 };
        let (x, out) = if dw {
            (hf.tile(&[bi, ti, c]), dwte.tile(&[j, c]))
        } else {
            (wte.tile(&[j, c]), dhf.tile(&[bi, ti, c]))
        };
        let cl = BwdCl {
            dtype: dt,
            compute,
            s,
            dw,
            first,
            tg: tg.clone(),
        };
        let ops = vec![
            (e.tile(&[bi, ti, j]).clone(), Access::R),
            (x.clone(), Access::R),
            (factors.tile(&[bi, ti, 0, 0]).clone(), Access::R),
            (out.clone(), if first { Access::W } else { Access::RW }),
        ];
        rt.submit(Box::new(cl), ops).map(|_| ())
    };
    for (&[bi, ti], tg) in row_tiles.iter().zip(&tgs) {
        for c in 0..nc {
            for j in 0..nt {
                bwd(bi, ti, j, c, tg, false)?;
            }
        }
    }
    for j in 0..nt {
        for c in 0..nc {
            for (&[bi, ti], tg) in row_tiles.iter().zip(&tgs) {
                bwd(bi, ti, j, c, tg, true)?;
            }
        }
    }
    Ok(())
}

/// The spec of [`lm_head_ce`], composed: the logits GEMM, `crossentropy`'s
/// forward and backward (which turns the logits into their gradient), and
/// the two backward GEMMs. Runs on every worker kind.
#[allow(clippy::too_many_arguments)]
pub fn lm_head_ce_slow(
    loss: &DataHandle,
    dhf: &Tensor,
    dwte: &Tensor,
    hf: &Tensor,
    wte: &Tensor,
    targets: &[i64],
    scale: f64,
    compute: GemmCompute,
) -> Result<()> {
    let (b, t, v) = check(hf, wte, targets, loss, dhf, dwte)?;
    let (hg, wg) = (&hf.grid, &wte.grid);
    let logits = Tensor::zeros(
        hf.runtime(),
        &[b, t, v],
        &[
            hg.tile[0] as isize,
            hg.tile[1] as isize,
            wg.tile[0] as isize,
        ],
        hf.dtype,
    )?;
    let nt = GemmSpec::default();
    gemm_with(
        &GemmSpec {
            trans_b: true,
            ..nt
        },
        compute,
        hf,
        wte,
        &logits,
    )?;
    let stats = cross_entropy_fwd(&logits, targets, loss)?;
    cross_entropy_bwd(&logits, &stats, targets, scale)?;
    gemm_with(&nt, compute, &logits, wte, dhf)?;
    let grad_w = GemmSpec {
        trans_a: true,
        beta: 1.0,
        ndim: 2,
        ..nt
    };
    gemm_with(&grad_w, compute, &logits, hf, dwte)
}
