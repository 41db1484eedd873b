//! Token and position embeddings. Token ids travel inside the codelets (they
//! are small and known when the step is submitted), so each output tile is
//! one task reading only the vocabulary tiles its ids fall in. Backward
//! scatter-adds into those tiles of dwte with ACC access (commutative; RW
//! when the caller asks for a deterministic order).
//!
//! Every task also runs on CUDA (`cuda/embedding.cu`) for every dtype, and
//! the backward ones for the gradient dtypes the kernels have (the same as
//! the activations, or f32 for 16-bit activations). The ids travel to the
//! device with the task. The GPU backward uses no atomics: the host sorts
//! the task's ids so that one block per distinct id adds its rows in the
//! CPU's order, giving the CPU's result bit for bit.

use super::footprint;
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cpu::embedding as k;
use crate::kernels::cuda::cuda_err;
use crate::kernels::cuda::embedding as cemb;
use crate::kernels::cuda::grad_pair_supported;
use crate::runtime::DevBuffers;
use crate::runtime::{Access, Buffers, Codelet, DataHandle, Where};
use crate::tensor::Tensor;
use crate::{with_dtype, DType};
use cudarc::driver::CudaSlice;
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

/// Copies `v` to a new device buffer through the device's pinned staging
/// (asynchronous; `v` may be dropped on return).
fn upload(b: &DevBuffers, v: &[i64]) -> Result<CudaSlice<u8>> {
    b.upload(bytemuck::cast_slice(v))
}

/// The rows of one y tile from the vocabulary tiles `chunk` (operands
/// `0..nv`), then, when `add_pos`, the position rows (operand `nv`); y is
/// the last operand.
struct EmbFwdCl {
    dtype: DType,
    ids: Arc<Vec<i64>>,
    /// Vocabulary tile indices, their row counts, and the base tile size.
    chunk: Vec<usize>,
    vlen: Vec<usize>,
    vt: usize,
    /// y tile `[bt, tt, cols]`.
    bt: usize,
    tt: usize,
    cols: usize,
    add_pos: bool,
    /// Row of the position tile that position `off[1]` of y falls on.
    first_row: usize,
}

impl Codelet for EmbFwdCl {
    fn name(&self) -> &'static str {
        "embedding_fwd"
    }
    fn footprint(&self) -> u64 {
        footprint(&[
            (self.bt * self.tt) as u64,
            self.cols as u64,
            self.chunk.len() as u64,
        ])
    }
    fn where_(&self) -> Where {
        Where::ANY
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let nv = self.chunk.len();
        with_dtype!(self.dtype, T, {
            let y = b.w::<T>(nv + self.add_pos as usize)?;
            for (j, &v) in self.chunk.iter().enumerate() {
                k::embedding_fwd::<T>(&self.ids, v * self.vt, b.r(j)?, self.vlen[j], self.cols, y);
            }
            if self.add_pos {
                k::add_rows::<T>(b.r(nv)?, self.first_row, self.tt, self.bt, self.cols, y);
            }
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let nv = self.chunk.len();
        let buf = upload(b, &self.ids)?;
        // SAFETY: `buf` holds the ids just copied in (i64, 256-byte aligned).
        let ids = unsafe { buf.transmute::<i64>(self.ids.len()) }
            .ok_or_else(|| cuda_err("embedding_fwd: id buffer too small"))?;
        with_dtype!(self.dtype, T, {
            let mut y = b.w::<T>(nv + self.add_pos as usize)?;
            for (j, &v) in self.chunk.iter().enumerate() {
                cemb::embedding_rows_fwd::<T>(
                    b.gpu(),
                    ids.len(),
                    &ids,
                    v * self.vt,
                    &b.r(j)?,
                    self.vlen[j],
                    self.cols,
                    &mut y,
                )?;
            }
            if self.add_pos {
                cemb::add_rows::<T>(
                    b.gpu(),
                    &b.r(nv)?,
                    self.first_row,
                    self.tt,
                    self.bt,
                    self.cols,
                    &mut y,
                )?;
            }
        });
        Ok(())
    }
}

/// The distinct ids of a task in increasing order, and for each the rows
/// holding it, increasing: rows `rows[offs[u]..offs[u + 1]]` hold `uniq[u]`.
/// Packed as one i64 buffer `[uniq | offs | rows]` for the device.
#[derive(Debug, PartialEq)]
struct IdIndex {
    nuniq: usize,
    packed: Vec<i64>,
}

impl IdIndex {
    fn new(ids: &[i64]) -> IdIndex {
        let mut order: Vec<usize> = (0..ids.len()).collect();
        // Stable: rows of one id stay increasing.
        order.sort_by_key(|&r| ids[r]);
        let mut uniq = Vec::new();
        let mut offs = Vec::new();
        for (k, &r) in order.iter().enumerate() {
            if uniq.last() != Some(&ids[r]) {
                uniq.push(ids[r]);
                offs.push(k as i64);
            }
        }
        offs.push(order.len() as i64);
        let nuniq = uniq.len();
        let mut packed = uniq;
        packed.extend(offs);
        packed.extend(order.iter().map(|&r| r as i64));
        IdIndex { nuniq, packed }
    }
    fn uniq(&self) -> &[i64] {
        &self.packed[..self.nuniq]
    }
    /// The distinct ids in `[lo, hi)`, as a range of `uniq`.
    fn segment(&self, lo: i64, hi: i64) -> std::ops::Range<usize> {
        let u = self.uniq();
        u.partition_point(|&i| i < lo)..u.partition_point(|&i| i < hi)
    }
}

/// dwte tiles `chunk` (operands `1..=nv`) += the rows of dy (operand 0)
/// whose ids they hold.
struct EmbBwdCl {
    dtype: DType,
    gtype: DType,
    ids: Arc<Vec<i64>>,
    chunk: Vec<usize>,
    vlen: Vec<usize>,
    vt: usize,
    rows: usize,
    cols: usize,
}

impl Codelet for EmbBwdCl {
    fn name(&self) -> &'static str {
        "embedding_bwd"
    }
    fn flops(&self) -> f64 {
        (self.rows * self.cols) as f64
    }
    fn footprint(&self) -> u64 {
        footprint(&[self.rows as u64, self.cols as u64])
    }
    fn where_(&self) -> Where {
        if grad_pair_supported(self.dtype, self.gtype) {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            with_dtype!(self.gtype, G, {
                let dy = b.r::<T>(0)?;
                for (j, &v) in self.chunk.iter().enumerate() {
                    k::embedding_bwd::<T, G>(
                        &self.ids,
                        v * self.vt,
                        dy,
                        self.vlen[j],
                        self.cols,
                        b.w(1 + j)?,
                    );
                }
            })
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        // Built here rather than at submission, so CPU runs never pay for it.
        let index = IdIndex::new(&self.ids);
        let (nu, nr) = (index.nuniq, self.ids.len());
        let buf = upload(b, &index.packed)?;
        // SAFETY: `buf` holds the packed index just copied in (i64, aligned).
        let all = unsafe { buf.transmute::<i64>(index.packed.len()) }
            .ok_or_else(|| cuda_err("embedding_bwd: index buffer too small"))?;
        let rows = all.slice(2 * nu + 1..2 * nu + 1 + nr);
        with_dtype!(self.dtype, T, {
            with_dtype!(self.gtype, G, {
                let dy = b.r::<T>(0)?;
                for (j, &v) in self.chunk.iter().enumerate() {
                    let lo = v * self.vt;
                    let seg = index.segment(lo as i64, (lo + self.vlen[j]) as i64);
                    if seg.is_empty() {
                        continue;
                    }
                    cemb::embedding_bwd_sorted::<T, G>(
                        b.gpu(),
                        seg.len(),
                        &all.slice(seg.clone()),
                        &all.slice(nu + seg.start..nu + seg.end + 1),
                        &rows,
                        lo,
                        &dy,
                        self.vlen[j],
                        self.cols,
                        &mut b.w(1 + j)?,
                    )?;
                }
            })
        });
        Ok(())
    }
}

/// dpos rows `first_row..first_row + tt` (operand 1) += the batch sum of
/// the dy tile `[bt, tt, cols]` (operand 0).
struct PosBwdCl {
    dtype: DType,
    gtype: DType,
    first_row: usize,
    bt: usize,
    tt: usize,
    cols: usize,
}

impl Codelet for PosBwdCl {
    fn name(&self) -> &'static str {
        "position_bwd"
    }
    fn flops(&self) -> f64 {
        (self.bt * self.tt * self.cols) as f64
    }
    fn footprint(&self) -> u64 {
        footprint(&[(self.bt * self.tt) as u64, self.cols as u64])
    }
    fn where_(&self) -> Where {
        if grad_pair_supported(self.dtype, self.gtype) {
            Where::ANY
        } else {
            Where::ANY_CPU
        }
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let (first_row, tt, bt, cols) = (self.first_row, self.tt, self.bt, self.cols);
        with_dtype!(self.dtype, T, {
            with_dtype!(self.gtype, G, {
                k::add_rows_bwd::<T, G>(b.r(0)?, first_row, tt, bt, cols, b.w(1)?)
            })
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        let (first_row, tt, bt, cols) = (self.first_row, self.tt, self.bt, self.cols);
        with_dtype!(self.dtype, T, {
            with_dtype!(self.gtype, G, {
                let g = b.gpu();
                cemb::add_rows_bwd::<T, G>(g, &b.r(0)?, first_row, tt, bt, cols, &mut b.w(1)?)
            })
        })
    }
}

/// One tile `[n, cols]` of the sinusoidal table, at (`pos_lo`, `cols_lo`)
/// of a `total`-column table.
struct SinusoidalCl {
    dtype: DType,
    pos_lo: usize,
    n: usize,
    cols_lo: usize,
    cols: usize,
    total: usize,
}

impl Codelet for SinusoidalCl {
    fn name(&self) -> &'static str {
        "sinusoidal"
    }
    fn where_(&self) -> Where {
        Where::ANY
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            k::sinusoidal_table::<T>(
                self.pos_lo,
                self.n,
                self.cols_lo,
                self.cols,
                self.total,
                b.w(0)?,
            )
        });
        Ok(())
    }
    fn cuda(&self, b: &DevBuffers) -> Result<()> {
        with_dtype!(self.dtype, T, {
            let (pos_lo, n, cols_lo, cols, total) =
                (self.pos_lo, self.n, self.cols_lo, self.cols, self.total);
            cemb::sinusoidal::<T>(b.gpu(), pos_lo, n, cols_lo, cols, total, &mut b.w(0)?)
        })
    }
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
            acc.push((yh.clone(), if ci == 0 { Access::W } else { Access::RW }));
            let vlen: Vec<usize> = chunk
                .iter()
                .map(|&v| wte.grid.tile_shape(&[v, c[2]])[0])
                .collect();
            let cl = EmbFwdCl {
                dtype: dt,
                ids: tids.clone(),
                chunk,
                vlen,
                vt,
                bt,
                tt,
                cols,
                add_pos,
                first_row,
            };
            rt.submit(Box::new(cl), acc)?;
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
            let cl = EmbBwdCl {
                dtype: dt,
                gtype: gt,
                ids: tids.clone(),
                chunk,
                vlen,
                vt,
                rows: bt * tt,
                cols,
            };
            rt.submit(Box::new(cl), acc)?;
        }
        if let Some(p) = dpos {
            let pt = p.grid.tile[0];
            let first_row = off[1] % pt;
            let cl = PosBwdCl {
                dtype: dt,
                gtype: gt,
                first_row,
                bt,
                tt,
                cols,
            };
            rt.submit(
                Box::new(cl),
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
        let cl = SinusoidalCl {
            dtype: dt,
            pos_lo: off[0],
            n: ts[0],
            cols_lo: off[1],
            cols: ts[1],
            total,
        };
        table
            .runtime()
            .submit(Box::new(cl), vec![(h.clone(), Access::W)])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::IdIndex;

    #[test]
    fn id_index_groups_rows_by_id_in_row_order() {
        let ids = [7, 3, 7, 9, 3, 7];
        let ix = IdIndex::new(&ids);
        assert_eq!(ix.nuniq, 3);
        // uniq | offs | rows
        assert_eq!(ix.packed, [3, 7, 9, 0, 2, 5, 6, 1, 4, 0, 2, 5, 3]);
        assert_eq!(ix.segment(0, 7), 0..1);
        assert_eq!(ix.segment(7, 10), 1..3);
        assert_eq!(ix.segment(10, 20), 3..3);
        let empty = IdIndex::new(&[]);
        assert_eq!((empty.nuniq, empty.packed.as_slice()), (0, &[0i64][..]));
    }
}
