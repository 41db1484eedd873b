//! The embedding's share of the tied `wte` gradient, summed over the ranks
//! row by row. GPT-2's token embedding and LM head share `wte`: the LM
//! head's share of its gradient is dense and final early in backward (it is
//! backward's first GEMM), but the embedding's is final only at backward's
//! very end, and touches only the rows of the tokens seen. So data-parallel
//! runs keep the two apart: the dense share is reduced with the other
//! buckets, overlapping backward, and this task reduces the rows of the
//! tokens some rank saw (the union of every rank's ids) and adds them in,
//! a few rows instead of the whole vocabulary at the end of the step.

use super::collective::all_reduce_in_rank_order;
use super::Communicator;
use crate::dtype::{DType, Element};
use crate::error::{arg_err, Result};
use crate::runtime::{Buffers, Codelet, Where};
use crate::with_dtype;
use std::sync::Arc;

/// One task over a band of whole rows of `wte` (row tiles `first..`, every
/// column tile). Operands: the embedding's gradient tiles (RW: the rows
/// reduced are moved out), then the same tiles of `wte`'s gradient (RW), row
/// tile by row tile, columns inner.
pub struct SparseRows {
    pub comm: Arc<dyn Communicator>,
    pub dtype: DType,
    /// First row and row count of each row tile of the band.
    pub row_tiles: Vec<(usize, usize)>,
    /// Widths of the column tiles (they add up to the hidden size).
    pub col_widths: Vec<usize>,
    /// The rows of the band this rank's tokens touched, sorted, distinct.
    pub ids: Arc<Vec<u32>>,
}

impl SparseRows {
    /// Every rank's ids, merged: the rows to reduce.
    fn union(&self) -> Result<Vec<u32>> {
        let n = self.comm.size();
        let mut counts = vec![0u8; 8 * n];
        let mine = (self.ids.len() as u64).to_le_bytes();
        self.comm.allgatherv(&mine, &mut counts, &vec![8; n])?;
        let counts: Vec<usize> = counts
            .chunks_exact(8)
            .map(|c| 4 * u64::from_le_bytes(c.try_into().expect("8 bytes")) as usize)
            .collect();
        let mut all = vec![0u32; counts.iter().sum::<usize>() / 4];
        self.comm.allgatherv(
            bytemuck::cast_slice(&self.ids),
            bytemuck::cast_slice_mut(&mut all),
            &counts,
        )?;
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn run<T: Element>(&self, b: &Buffers) -> Result<()> {
        let ntiles = self.row_tiles.len() * self.col_widths.len();
        if b.len() != 2 * ntiles {
            return Err(arg_err("sparse_rows", "operands do not match the row band"));
        }
        let rows = self.union()?;
        let c: usize = self.col_widths.iter().sum();
        // Per row tile, (index in `rows`, row inside the tile) of its rows.
        let mut by_tile: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.row_tiles.len()];
        for (k, &r) in rows.iter().enumerate() {
            let r = r as usize;
            let t = self.row_tiles.partition_point(|&(first, _)| first <= r) - 1;
            by_tile[t].push((k, r - self.row_tiles[t].0));
        }
        let mut packed = vec![T::default(); rows.len() * c];
        let ncols = self.col_widths.len();
        let tiles = || {
            by_tile.iter().enumerate().flat_map(move |(t, rs)| {
                let mut col0 = 0;
                self.col_widths.iter().enumerate().map(move |(j, &w)| {
                    col0 += w;
                    (t * ncols + j, col0 - w, w, rs)
                })
            })
        };
        // The rows are moved out of the embedding's share (zeroed there), so
        // that it holds only what is not yet in wte's gradient.
        for (op, col0, w, rs) in tiles() {
            let emb = b.w::<T>(op)?;
            for &(k, i) in rs {
                let row = &mut emb[i * w..(i + 1) * w];
                packed[k * c + col0..k * c + col0 + w].copy_from_slice(row);
                row.fill(T::default());
            }
        }
        all_reduce_in_rank_order(&*self.comm, &mut packed)?;
        for (op, col0, w, rs) in tiles() {
            let g = b.w::<T>(ntiles + op)?;
            for &(k, i) in rs {
                let src = &packed[k * c + col0..k * c + col0 + w];
                for (y, &x) in g[i * w..(i + 1) * w].iter_mut().zip(src) {
                    *y = T::from_acc(y.to_acc() + x.to_acc());
                }
            }
        }
        Ok(())
    }
}

impl Codelet for SparseRows {
    fn name(&self) -> &'static str {
        "sparse_rows_all_reduce"
    }
    fn where_(&self) -> Where {
        Where::COMM
    }
    fn footprint(&self) -> u64 {
        self.ids.len() as u64
    }
    /// A ring all-reduce of this rank's rows (the union is not known at
    /// submission: a lower bound).
    fn wire_bytes(&self) -> u64 {
        let n = self.comm.size() as u64;
        let row: usize = self.col_widths.iter().sum::<usize>() * self.dtype.size();
        2 * (n - 1) * (self.ids.len() * row) as u64 / n
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        with_dtype!(self.dtype, T, { self.run::<T>(b) })
    }
}
