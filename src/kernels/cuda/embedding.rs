//! `cuda/embedding.cu`: token embedding rows over vocabulary tiles, their
//! gradient over the sorted distinct ids (one thread per (id, column), in
//! the CPU's order: bit for bit `kernels::cpu::embedding::embedding_bwd`),
//! and the position table added to / from rows.

#[macro_export]
#[doc(hidden)]
macro_rules! cuda_table_embedding {
    ($cb:ident) => { $cb! { Embedding;
        /// `y[r, :] = wte[ids[r] - vocab_lo, :]` for the ids inside this
        /// vocabulary tile (`vt` rows), other rows untouched.
        embedding_rows_fwd<T>(
            rows: val usize, ids: in i64 [rows], vocab_lo: val usize, wte: in T [vt * cols],
            vt: val usize, cols: val usize, y: out T [rows * cols],
        ) @ per_row_capped(rows);
        /// `y[b, t, :] += table[first_row + t, :]`, y `[batch, tt, cols]`.
        add_rows<T>(
            table: in T [>= (first_row + tt) * cols], first_row: val usize, tt: val usize,
            batch: val usize, cols: val usize, y: out T [batch * tt * cols],
        ) @ elementwise(batch * tt * cols);
        /// The sinusoidal table (`kernels::cpu::embedding::sinusoidal_table`,
        /// whose `ln_base` it takes, so both scale by the same f64) for positions
        /// `pos_lo..pos_lo + n` and columns `cols_lo..cols_lo + cols` of a
        /// `total_cols`-wide table.
        sinusoidal<T>(
            pos_lo: val usize, n: val usize, cols_lo: val usize, cols: val usize,
            total_cols: val usize, ln_base: val f64 = 10000f64.ln(), out: out T [n * cols],
        ) if (cols_lo + cols <= total_cols) @ elementwise(n * cols);
        /// `dwte[id - vocab_lo, :] += dy[r, :]` for each distinct id
        /// `uniq[u]` of this vocabulary tile and its rows
        /// `rows[offs[u]..offs[u + 1]]` (increasing), in that order; `rows`
        /// must index rows of dy.
        embedding_bwd_sorted<T, G> for grad (
            nuniq: val usize, uniq: in i64 [nuniq], offs: in i64 [nuniq + 1], rows: in i64 [..],
            vocab_lo: val usize, dy: in T [>= rows.len() * cols], vt: val usize, cols: val usize,
            dwte: out G [vt * cols],
        ) @ col_strips(nuniq, cols);
        /// `dtable[first_row + t, :] += sum_b dy[b, t, :]`, dy `[batch, tt, cols]`.
        add_rows_bwd<T, G> for grad (
            dy: in T [batch * tt * cols], first_row: val usize, tt: val usize, batch: val usize,
            cols: val usize, dtable: out G [>= (first_row + tt) * cols],
        ) @ elementwise(tt * cols);
    } };
}
crate::cuda_table_embedding!(launchers);
