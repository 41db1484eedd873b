//! `cuda/embedding.cu`: token embedding rows over vocabulary tiles, their
//! gradient over the sorted distinct ids (bit for bit the CPU's order), and
//! the position table added to / from rows.

cuda_table! { cuda_table_embedding($) Embedding;
    /// `y[r, :] = wte[ids[r] - vocab_lo, :]` for the ids in this tile.
    embedding_rows_fwd<T>(
        rows, ids: in i64 [rows], vocab_lo, wte: in T [vt * cols], vt, cols, y: out T [rows * cols],
    ) @ per_row_capped(rows);
    /// `y[b, t, :] += table[first_row + t, :]`, y `[batch, tt, cols]`.
    add_rows<T>(
        table: in T [>= (first_row + tt) * cols], first_row, tt, batch, cols,
        y: out T [batch * tt * cols],
    ) @ elementwise(batch * tt * cols);
    /// Positions `pos_lo..` and columns `cols_lo..` of the sinusoidal table
    /// (the CPU's `ln_base`, so both scale by the same f64).
    sinusoidal<T>(
        pos_lo, n, cols_lo, cols, total_cols, ln_base: val f64 = 10000f64.ln(),
        out: out T [n * cols],
    ) if (cols_lo + cols <= total_cols) @ elementwise(n * cols);
    /// `dwte[uniq[u] - vocab_lo, :] += dy[r, :]` for `r` in
    /// `rows[offs[u]..offs[u + 1]]` (increasing rows of dy), in order.
    embedding_bwd_sorted<T, G> for grad (
        nuniq, uniq: in i64 [nuniq], offs: in i64 [nuniq + 1], rows: in i64 [..], vocab_lo,
        dy: in T [>= rows.len() * cols], vt, cols, dwte: out G [vt * cols],
    ) @ col_strips(nuniq, cols);
    /// `dtable[first_row + t, :] += sum_b dy[b, t, :]`, dy `[batch, tt, cols]`.
    add_rows_bwd<T, G> for grad (
        dy: in T [batch * tt * cols], first_row, tt, batch, cols,
        dtable: out G [>= (first_row + tt) * cols],
    ) @ elementwise(tt * cols);
}
