//! Token and position embeddings. Token ids travel inside the codelets (they
//! are small and known when the step is submitted), so each output tile is
//! one task reading only the vocabulary tiles its ids fall in. Backward
//! scatter-adds into those tiles of dwte with ACC access (commutative; RW
//! when the caller asks for a deterministic order).

use super::footprint;
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cpu::embedding as k;
use crate::runtime::{codelet, Access, DataHandle};
use crate::tensor::Tensor;
use crate::with_dtype;
use std::sync::Arc;

/// Vocabulary tiles per task at most (a task takes at most 64 operands).
const MAX_VOCAB_TILES: usize = 48;

fn check(ids: &[i64], y: &Tensor, wte: &Tensor, pos: Option<&Tensor>) -> Result<()> {
    if y.ndim() != 3
        || wte.ndim() != 2
        || y.grid.shape[2] != wte.grid.shape[1]
        || y.grid.tile[2] != wte.grid.tile[1]
    {
        return Err(shape_err(
            "embedding",
            format!(
                "y {:?} must be [B, T, C] cut like wte {:?} on C",
                y.grid.shape, wte.grid.shape
            ),
        ));
    }
    let (b, t) = (y.grid.shape[0], y.grid.shape[1]);
    if ids.len() != b * t {
        return Err(arg_err(
            "embedding",
            format!("{} ids for B*T = {}", ids.len(), b * t),
        ));
    }
    let v = wte.grid.shape[0] as i64;
    if let Some(bad) = ids.iter().find(|&&i| i < 0 || i >= v) {
        return Err(arg_err(
            "embedding",
            format!("token id {bad} is outside the vocabulary [0, {v})"),
        ));
    }
    if let Some(p) = pos {
        // Every sequence tile of y must lie inside one tile of the table.
        let (pt, yt) = (p.grid.tile[0], y.grid.tile[1]);
        let aligned = pt >= t || pt == yt;
        if p.grid.shape[0] < t || !aligned || p.grid.tile[1] != y.grid.tile[2] {
            return Err(shape_err(
                "embedding",
                format!(
                    "position table {:?} (tiles {:?}) must cover T = {t} and be cut like y {:?}",
                    p.grid.shape, p.grid.tile, y.grid.tile
                ),
            ));
        }
    }
    Ok(())
}

/// The ids of one [bt, tt] block of rows, and the vocabulary tiles they use.
fn tile_ids(
    ids: &[i64],
    t_total: usize,
    b0: usize,
    bt: usize,
    t0: usize,
    tt: usize,
    vt: usize,
) -> (Arc<Vec<i64>>, Vec<usize>) {
    let mut v = Vec::with_capacity(bt * tt);
    for b in b0..b0 + bt {
        v.extend_from_slice(&ids[b * t_total + t0..b * t_total + t0 + tt]);
    }
    let mut tiles: Vec<usize> = v.iter().map(|&i| i as usize / vt).collect();
    tiles.sort_unstable();
    tiles.dedup();
    (Arc::new(v), tiles)
}

/// y = wte[ids] (+ pos[t] when given), y: [B, T, C].
pub fn embedding_fwd(ids: &[i64], wte: &Tensor, pos: Option<&Tensor>, y: &Tensor) -> Result<()> {
    check(ids, y, wte, pos)?;
    let rt = y.runtime();
    let dt = y.dtype;
    let vt = wte.grid.tile[0];
    let t_total = y.grid.shape[1];
    for (i, yh) in y.tiles.iter().enumerate() {
        let c = y.grid.coords(i);
        let off = y.grid.tile_offset(&c);
        let ts = y.grid.tile_shape(&c);
        let (bt, tt, cols) = (ts[0], ts[1], ts[2]);
        let (tids, vtiles) = tile_ids(ids, t_total, off[0], bt, off[1], tt, vt);
        let chunks: Vec<Vec<usize>> = vtiles.chunks(MAX_VOCAB_TILES).map(|c| c.to_vec()).collect();
        let last = chunks.len() - 1;
        for (ci, chunk) in chunks.into_iter().enumerate() {
            let mut acc: Vec<(DataHandle, Access)> = chunk
                .iter()
                .map(|&v| (wte.tile(&[v, c[2]]).clone(), Access::R))
                .collect();
            let add_pos = ci == last && pos.is_some();
            let mut first_row = 0;
            if let Some(p) = pos.filter(|_| add_pos) {
                let pt = p.grid.tile[0];
                first_row = off[1] % pt;
                acc.push((p.tile(&[off[1] / pt, c[2]]).clone(), Access::R));
            }
            let nv = chunk.len();
            acc.push((yh.clone(), if ci == 0 { Access::W } else { Access::RW }));
            let vlen: Vec<usize> = chunk
                .iter()
                .map(|&v| wte.grid.tile_shape(&[v, c[2]])[0])
                .collect();
            let tids = tids.clone();
            rt.submit(
                codelet(
                    "embedding_fwd",
                    0.0,
                    footprint(&[(bt * tt) as u64, cols as u64, nv as u64]),
                    move |b| {
                        with_dtype!(dt, T, {
                            let y = b.w::<T>(acc_len(nv, add_pos))?;
                            for (j, &v) in chunk.iter().enumerate() {
                                k::embedding_fwd::<T>(&tids, v * vt, b.r(j)?, vlen[j], cols, y);
                            }
                            if add_pos {
                                k::add_rows::<T>(b.r(nv)?, first_row, tt, bt, cols, y);
                            }
                        });
                        Ok(())
                    },
                ),
                acc,
            )?;
        }
    }
    Ok(())
}

/// y = wte[ids] (+ pos[pos0 + t] when given), y: [B, T, C]: the positions
/// start at `pos0` instead of 0 (incremental decoding). The rows
/// `pos0..pos0 + T` of the table are first copied into a [T, C] table cut
/// like y, so that every sequence tile of y meets one tile of it.
pub fn embedding_fwd_at(
    ids: &[i64],
    wte: &Tensor,
    pos: Option<&Tensor>,
    pos0: usize,
    y: &Tensor,
) -> Result<()> {
    let Some(p) = pos else {
        return embedding_fwd(ids, wte, None, y);
    };
    if pos0 == 0 {
        return embedding_fwd(ids, wte, pos, y);
    }
    let (t, c) = (y.grid.shape.get(1).copied(), p.grid.shape.get(1).copied());
    let (Some(t), Some(c)) = (t, c) else {
        return Err(shape_err(
            "embedding",
            format!(
                "y {:?} must be [B, T, C] and the position table {:?} [P, C]",
                y.grid.shape, p.grid.shape
            ),
        ));
    };
    if p.ndim() != 2 || pos0 + t > p.grid.shape[0] {
        return Err(arg_err(
            "embedding",
            format!(
                "positions {pos0}..{} are outside the position table of {} rows",
                pos0 + t,
                p.grid.shape[0]
            ),
        ));
    }
    let rows = Tensor::zeros(
        y.runtime(),
        &[t, c],
        &[y.grid.tile[1] as isize, p.grid.tile[1] as isize],
        p.dtype,
    )?;
    super::slice::copy_region(p, &[pos0, 0], &rows, &[0, 0], &[t, c])?;
    embedding_fwd(ids, wte, Some(&rows), y)
}

fn acc_len(nv: usize, add_pos: bool) -> usize {
    nv + add_pos as usize
}

/// dwte[ids] += dy; dpos[t] += sum over batch of dy (when given).
pub fn embedding_bwd(
    ids: &[i64],
    dy: &Tensor,
    dwte: &Tensor,
    dpos: Option<&Tensor>,
    wte_mode: Access,
) -> Result<()> {
    check(ids, dy, dwte, dpos)?;
    let rt = dy.runtime();
    let (dt, gt) = (dy.dtype, dwte.dtype);
    let vt = dwte.grid.tile[0];
    let t_total = dy.grid.shape[1];
    for (i, yh) in dy.tiles.iter().enumerate() {
        let c = dy.grid.coords(i);
        let off = dy.grid.tile_offset(&c);
        let ts = dy.grid.tile_shape(&c);
        let (bt, tt, cols) = (ts[0], ts[1], ts[2]);
        let (tids, vtiles) = tile_ids(ids, t_total, off[0], bt, off[1], tt, vt);
        for chunk in vtiles.chunks(MAX_VOCAB_TILES) {
            let chunk = chunk.to_vec();
            let mut acc = vec![(yh.clone(), Access::R)];
            acc.extend(
                chunk
                    .iter()
                    .map(|&v| (dwte.tile(&[v, c[2]]).clone(), wte_mode)),
            );
            let vlen: Vec<usize> = chunk
                .iter()
                .map(|&v| dwte.grid.tile_shape(&[v, c[2]])[0])
                .collect();
            let tids = tids.clone();
            rt.submit(
                codelet(
                    "embedding_bwd",
                    (bt * tt * cols) as f64,
                    footprint(&[(bt * tt) as u64, cols as u64]),
                    move |b| {
                        with_dtype!(dt, T, {
                            with_dtype!(gt, G, {
                                let dy = b.r::<T>(0)?;
                                for (j, &v) in chunk.iter().enumerate() {
                                    k::embedding_bwd::<T, G>(
                                        &tids,
                                        v * vt,
                                        dy,
                                        vlen[j],
                                        cols,
                                        b.w(1 + j)?,
                                    );
                                }
                            })
                        });
                        Ok(())
                    },
                ),
                acc,
            )?;
        }
        if let Some(p) = dpos {
            let pt = p.grid.tile[0];
            let first_row = off[1] % pt;
            rt.submit(
                codelet(
                    "position_bwd",
                    (bt * tt * cols) as f64,
                    footprint(&[(bt * tt) as u64, cols as u64]),
                    move |b| {
                        with_dtype!(dt, T, {
                            with_dtype!(gt, G, {
                                k::add_rows_bwd::<T, G>(b.r(0)?, first_row, tt, bt, cols, b.w(1)?)
                            })
                        });
                        Ok(())
                    },
                ),
                vec![
                    (yh.clone(), Access::R),
                    (p.tile(&[off[1] / pt, c[2]]).clone(), Access::RW),
                ],
            )?;
        }
    }
    Ok(())
}

/// Fills `table` ([P, C]) with the fixed sinusoidal position encoding.
pub fn sinusoidal_fill(table: &Tensor) -> Result<()> {
    let dt = table.dtype;
    let total = table.grid.shape[1];
    for (i, h) in table.tiles.iter().enumerate() {
        let c = table.grid.coords(i);
        let off = table.grid.tile_offset(&c);
        let ts = table.grid.tile_shape(&c);
        table.runtime().submit(
            codelet("sinusoidal", 0.0, 0, move |b| {
                with_dtype!(dt, T, {
                    k::sinusoidal_table::<T>(off[0], ts[0], off[1], ts[1], total, b.w(0)?)
                });
                Ok(())
            }),
            vec![(h.clone(), Access::W)],
        )?;
    }
    Ok(())
}
