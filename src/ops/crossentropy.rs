//! Fused log-softmax + cross-entropy over a vocabulary cut into tiles: per row
//! of tiles a chain of `maxsumexp` tasks gives (max, sum of exp); the loss sum
//! (f64, one element) gathers log-sum-exp minus the target logit; backward
//! turns the logits into their gradient in place, so probabilities are never
//! stored. Targets < 0 (HF's -100) are ignored.

use super::footprint;
use super::layernorm::{acc_dtype, row_tensor};
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cpu::crossentropy as k;
use crate::runtime::{codelet, Access, DataHandle};
use crate::tensor::Tensor;
use crate::{with_acc_dtype, with_dtype, DType};
use std::sync::Arc;

fn row_targets(targets: &[i64], logits: &Tensor, c: &[usize]) -> Arc<Vec<i64>> {
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

/// Adds the summed cross-entropy of `logits` [B, T, V] against `targets`
/// (B*T ids) into `loss` (an f64 handle of one element, zeroed here) and
/// returns the (max, sumexp) statistics per row for backward.
pub fn cross_entropy_fwd(logits: &Tensor, targets: &[i64], loss: &DataHandle) -> Result<Tensor> {
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
    let v = g.shape[2] as i64;
    if let Some(bad) = targets.iter().find(|&&t| t >= v || (t < 0 && t != -100)) {
        return Err(arg_err(
            "cross_entropy",
            format!("target {bad} is outside [0, {v}) (and not -100)"),
        ));
    }
    if loss.dtype() != DType::F64 || loss.len() != 1 {
        return Err(arg_err(
            "cross_entropy",
            "loss must be a one-element f64 handle",
        ));
    }
    let rt = logits.runtime();
    let (dt, ad) = (logits.dtype, acc_dtype(logits.dtype));
    let stats = row_tensor(logits, 2, ad)?;
    let vt = g.tile[2];
    rt.submit(
        codelet("loss_init", 0.0, 0, |b| {
            b.w::<f64>(0)?[0] = 0.0;
            Ok(())
        }),
        vec![(loss.clone(), Access::W)],
    )?;
    for (si, sh) in stats.tiles.iter().enumerate() {
        let mut c = stats.grid.coords(si);
        let rows: usize = stats.grid.tile_shape(&c)[..2].iter().product();
        let tg = row_targets(targets, logits, &c);
        rt.submit(
            codelet("maxsumexp_init", 0.0, 0, move |b| {
                with_acc_dtype!(ad, A, {
                    for r in b.w::<A>(0)?.chunks_exact_mut(2) {
                        r[0] = <A as crate::dtype::Accum>::of(f64::NEG_INFINITY);
                        r[1] = <A as crate::dtype::Accum>::ZERO;
                    }
                });
                Ok(())
            }),
            vec![(sh.clone(), Access::W)],
        )?;
        for j in 0..g.grid[2] {
            c[2] = j;
            let cols = g.tile_shape(&c)[2];
            let lo = j * vt;
            let lh = logits.tile(&c).clone();
            let fp = footprint(&[rows as u64, cols as u64]);
            rt.submit(
                codelet("maxsumexp", 3.0 * (rows * cols) as f64, fp, move |b| {
                    with_dtype!(dt, T, {
                        k::maxsumexp_update::<T>(b.r(0)?, rows, cols, b.w(1)?)
                    });
                    Ok(())
                }),
                vec![(lh.clone(), Access::R), (sh.clone(), Access::RW)],
            )?;
            let tg = tg.clone();
            rt.submit(
                codelet("ce_target", rows as f64, fp, move |b| {
                    with_dtype!(dt, T, {
                        k::ce_loss_target::<T>(b.r(0)?, rows, cols, lo, &tg, b.w(1)?)
                    });
                    Ok(())
                }),
                vec![(lh, Access::R), (loss.clone(), Access::RW)],
            )?;
        }
        rt.submit(
            codelet("ce_lse", rows as f64, footprint(&[rows as u64]), move |b| {
                with_acc_dtype!(ad, A, { k::ce_loss_lse::<A>(b.r(0)?, rows, &tg, b.w(1)?) });
                Ok(())
            }),
            vec![(sh.clone(), Access::R), (loss.clone(), Access::RW)],
        )?;
    }
    Ok(stats)
}

/// In place: logits = scale * (softmax(logits) - onehot(target)), zero rows
/// for ignored targets.
pub fn cross_entropy_bwd(
    logits: &Tensor,
    stats: &Tensor,
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
        let lo = c[2] * vt;
        let tg = row_targets(targets, logits, &c);
        let sh = stats.tile(&[c[0], c[1], 0]).clone();
        rt.submit(
            codelet(
                "ce_bwd",
                4.0 * (rows * cols) as f64,
                footprint(&[rows as u64, cols as u64]),
                move |b| {
                    with_dtype!(dt, T, {
                        k::ce_bwd::<T>(b.r(0)?, rows, cols, lo, &tg, scale, b.w(1)?)
                    });
                    Ok(())
                },
            ),
            vec![(sh, Access::R), (lh.clone(), Access::RW)],
        )?;
    }
    Ok(())
}
