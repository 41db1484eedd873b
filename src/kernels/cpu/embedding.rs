//! Token and position embeddings on tiles.
//!
//! ```text
//! embedding_fwd:  y[r, :] = wte[ids[r] - vocab_lo, :]   for ids[r] in [vocab_lo, vocab_lo + vt)
//! embedding_bwd:  dwte[ids[r] - vocab_lo, :] += dy[r, :] for the same rows
//! add_rows:       y[b, t, :] += table[first_row + t, :]   (learned positions, wpe)
//! add_rows_bwd:   dtable[first_row + t, :] += sum_b dy[b, t, :]
//! sinusoidal_table: PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(same)
//! ```
//!
//! Shapes (row-major): `wte` is one vocabulary tile `[vt, cols]` holding
//! rows `vocab_lo..vocab_lo+vt` of the table and `cols` columns of this
//! embedding tile; `y`, `dy` are `[rows, cols]` with `rows = ids.len()`.
//! Token ids arrive as a plain `&[i64]` (one per row), not as a tile. The
//! caller runs `embedding_fwd` once per vocabulary tile: each call writes only
//! the rows whose id it holds and leaves the others untouched, so together
//! they write every row exactly once.
//!
//! Gradient convention: `dwte` and `dtable` are parameter gradients and
//! ACCUMULATE (`+=`) in their own dtype `G`. There is no activation gradient
//! (ids are not differentiable).
//!
//! ```
//! use gpt2rs::kernels::cpu::embedding::embedding_fwd;
//! // Vocabulary tile holding ids 2..4, two columns.
//! let wte = [20.0f32, 21.0, 30.0, 31.0];
//! let mut y = [0.0f32; 6];
//! embedding_fwd(&[3, 0, 2], 2, &wte, 2, 2, &mut y);
//! assert_eq!(y, [30.0, 31.0, 0.0, 0.0, 20.0, 21.0]);
//! ```

use crate::dtype::{Accum, Element};

/// The row of `id` inside the vocabulary tile `[lo, lo + vt)`, if it is there.
#[inline]
fn local_row(id: i64, lo: usize, vt: usize) -> Option<usize> {
    let rel = id.checked_sub(lo as i64)?;
    (rel >= 0 && (rel as u64) < vt as u64).then_some(rel as usize)
}

/// `y[r, :] = wte[ids[r] - vocab_lo, :]` for ids inside this vocabulary tile.
pub fn embedding_fwd<T: Element>(
    ids: &[i64],
    vocab_lo: usize,
    wte: &[T],
    vt: usize,
    cols: usize,
    y: &mut [T],
) {
    assert_eq!(wte.len(), vt * cols, "embedding_fwd: wte length");
    assert_eq!(y.len(), ids.len() * cols, "embedding_fwd: y length");
    if cols == 0 {
        return;
    }
    for (yr, &id) in y.chunks_exact_mut(cols).zip(ids) {
        if let Some(v) = local_row(id, vocab_lo, vt) {
            yr.copy_from_slice(&wte[v * cols..][..cols]);
        }
    }
}

/// `dwte[ids[r] - vocab_lo, :] += dy[r, :]` for ids inside this vocabulary tile.
pub fn embedding_bwd<T: Element, G: Element>(
    ids: &[i64],
    vocab_lo: usize,
    dy: &[T],
    vt: usize,
    cols: usize,
    dwte: &mut [G],
) {
    assert_eq!(dwte.len(), vt * cols, "embedding_bwd: dwte length");
    assert_eq!(dy.len(), ids.len() * cols, "embedding_bwd: dy length");
    if cols == 0 {
        return;
    }
    for (dr, &id) in dy.chunks_exact(cols).zip(ids) {
        if let Some(v) = local_row(id, vocab_lo, vt) {
            add_into(dr, &mut dwte[v * cols..][..cols]);
        }
    }
}

/// `y[b, t, :] += table[first_row + t, :]` with y `[batch, rows_per_batch, cols]`
/// and table `[n, cols]`.
pub fn add_rows<T: Element>(
    table: &[T],
    first_row: usize,
    rows_per_batch: usize,
    batch: usize,
    cols: usize,
    y: &mut [T],
) {
    assert_eq!(y.len(), batch * rows_per_batch * cols, "add_rows: y length");
    if cols == 0 || rows_per_batch == 0 {
        return;
    }
    assert!(
        (first_row + rows_per_batch) * cols <= table.len(),
        "add_rows: rows {first_row}..{} outside the table",
        first_row + rows_per_batch
    );
    let tab = &table[first_row * cols..][..rows_per_batch * cols];
    for yb in y.chunks_exact_mut(rows_per_batch * cols) {
        for (yv, tv) in yb.iter_mut().zip(tab) {
            *yv = T::from_acc(yv.to_acc() + tv.to_acc());
        }
    }
}

/// `dtable[first_row + t, :] += sum_b dy[b, t, :]` with dy
/// `[batch, rows_per_batch, cols]` and dtable `[n, cols]`.
pub fn add_rows_bwd<T: Element, G: Element>(
    dy: &[T],
    first_row: usize,
    rows_per_batch: usize,
    batch: usize,
    cols: usize,
    dtable: &mut [G],
) {
    assert_eq!(
        dy.len(),
        batch * rows_per_batch * cols,
        "add_rows_bwd: dy length"
    );
    if cols == 0 || rows_per_batch == 0 {
        return;
    }
    assert!(
        (first_row + rows_per_batch) * cols <= dtable.len(),
        "add_rows_bwd: rows {first_row}..{} outside the table",
        first_row + rows_per_batch
    );
    // Sum over the batch in T::Acc (batch is small), one rounding into G.
    let mut part = vec![T::Acc::ZERO; rows_per_batch * cols];
    for db in dy.chunks_exact(rows_per_batch * cols) {
        for (p, v) in part.iter_mut().zip(db) {
            *p += v.to_acc();
        }
    }
    let dst = &mut dtable[first_row * cols..][..rows_per_batch * cols];
    for (o, p) in dst.iter_mut().zip(&part) {
        *o = G::from_f64(o.to_f64() + p.f64());
    }
}

/// Sinusoidal position table (Vaswani et al.) for positions
/// `n_pos_lo..n_pos_lo + n` and embedding columns `cols_lo..cols_lo + cols`
/// of a `total_cols`-wide table: `out [n, cols]`. A tile may start at an odd
/// column; the pair index `i = col / 2` is taken from the absolute column.
pub fn sinusoidal_table<T: Element>(
    n_pos_lo: usize,
    n: usize,
    cols_lo: usize,
    cols: usize,
    total_cols: usize,
    out: &mut [T],
) {
    assert_eq!(out.len(), n * cols, "sinusoidal_table: out length");
    assert!(
        cols_lo + cols <= total_cols,
        "sinusoidal_table: columns outside the table"
    );
    if cols == 0 {
        return;
    }
    let d = total_cols as f64;
    // 1 / 10000^(2i/d), with 2i = col rounded down to even.
    let freq: Vec<f64> = (cols_lo..cols_lo + cols)
        .map(|c| (-((c - c % 2) as f64 / d) * 10000f64.ln()).exp())
        .collect();
    for (p, row) in out.chunks_exact_mut(cols).enumerate() {
        let pos = (n_pos_lo + p) as f64;
        for (j, (o, f)) in row.iter_mut().zip(&freq).enumerate() {
            let a = pos * f;
            *o = T::from_f64(if (cols_lo + j).is_multiple_of(2) {
                a.sin()
            } else {
                a.cos()
            });
        }
    }
}

/// `dst += src`, widening src into G's accumulation type.
#[inline]
fn add_into<T: Element, G: Element>(src: &[T], dst: &mut [G]) {
    for (o, v) in dst.iter_mut().zip(src) {
        // T -> f64 -> G::Acc is exact whenever G::Acc is at least as wide as T.
        *o = G::from_acc(o.to_acc() + G::Acc::of(v.to_f64()));
    }
}
