//! embedding.cu: token embedding forward (one block per row) and backward
//! (the sorted-id kernel, one thread per distinct id and column), learned
//! positions forward and backward, the sinusoidal table. A vocabulary of 23
//! ids cut into tiles of 10 (the last partial), ids repeated (about 40 rows
//! each in the backward's 1,000), and ids outside the vocabulary.

use super::{close, eps, exact, Buf, Dev, Rng};
use crate::embedding as emu;
use gpt2rs::kernels::cpu::embedding as ke;

const V: usize = 23;
const VT: usize = 10;
const COLS: usize = 19;

fn ids(rows: usize) -> Vec<i64> {
    let mut rng = Rng(50);
    let mut ids: Vec<i64> = (0..rows).map(|_| rng.below(V) as i64).collect();
    ids[3] = -1;
    ids[7] = V as i64 + 1;
    ids[8] = ids[2]; // repeats beyond chance
    ids[20] = ids[2];
    ids
}

/// Vocabulary tiles `(lo, len)`.
fn tiles() -> Vec<(usize, usize)> {
    (0..V).step_by(VT).map(|lo| (lo, VT.min(V - lo))).collect()
}

fn forward<T: Dev>() {
    let rows = 37;
    let ids = ids(rows);
    let wte: Vec<T> = Rng(51).vec(V * COLS, 0.0, 1.0);
    let y0: Vec<T> = Rng(52).vec(rows * COLS, 5.0, 1.0);
    // The op calls the kernel once per vocabulary tile: each writes its rows.
    let mut want = y0.clone();
    let mut y_rows = Buf::new(&y0);
    for (lo, vt) in tiles() {
        let tile = &wte[lo * COLS..(lo + vt) * COLS];
        ke::embedding_fwd::<T>(&ids, lo, tile, vt, COLS, &mut want);
        emu::embedding_rows_fwd::<T>(rows, &ids, lo, tile, vt, COLS, y_rows.get_mut());
        exact(
            &format!("embedding_rows_fwd up to tile {lo}"),
            y_rows.get(),
            &want,
        );
    }
}

#[test]
fn forward_f32() {
    forward::<f32>();
}
#[test]
fn forward_f64() {
    forward::<f64>();
}

/// The codelet's id index (`IdIndex` in src/ops/embedding.rs, private to
/// gpt2rs, so restated): the distinct ids sorted, for each the offset of
/// its rows in `rows` (CSR), and the rows grouped by id, increasing.
fn id_index(ids: &[i64]) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let mut order: Vec<usize> = (0..ids.len()).collect();
    order.sort_by_key(|&r| ids[r]);
    let (mut uniq, mut offs) = (Vec::new(), Vec::new());
    for (k, &r) in order.iter().enumerate() {
        if uniq.last() != Some(&ids[r]) {
            uniq.push(ids[r]);
            offs.push(k as i64);
        }
    }
    offs.push(order.len() as i64);
    (uniq, offs, order.iter().map(|&r| r as i64).collect())
}

fn backward<T: Dev>() {
    // 19 columns (part of a column strip) and 300 (two strips and a part).
    for (rows, cols) in [(37, COLS), (1000, COLS), (1000, 300)] {
        let ids = ids(rows);
        let dy: Vec<T> = Rng(53).vec(rows * cols, 0.0, 1.0);
        let (uniq, offs, order) = id_index(&ids);
        for (lo, vt) in tiles() {
            let init: Vec<T> = Rng(54 + lo as u64).vec(vt * cols, 0.0, 1.0);
            let mut want = init.clone();
            ke::embedding_bwd::<T, T>(&ids, lo, &dy, vt, cols, &mut want);
            // The codelet's launch: this tile's segment of the distinct ids;
            // then every distinct id, most outside this tile (skipped); then
            // the segment with a 2-block grid whose blocks stride.
            let seg = uniq.partition_point(|&i| i < lo as i64)
                ..uniq.partition_point(|&i| i < (lo + vt) as i64);
            let all = 0..uniq.len();
            for (what, seg, grid) in [
                ("", seg.clone(), None),
                (", all ids", all.clone(), None),
                (", grid 2", seg.clone(), Some(2)),
            ] {
                let nuniq = seg.len();
                let mut dw = Buf::new(&init);
                let (up, op) = (&uniq[seg.clone()], &offs[seg.start..seg.end + 1]);
                let run = |dw: &mut [T]| {
                    emu::embedding_bwd_sorted::<T, T>(nuniq, up, op, &order, lo, &dy, vt, cols, dw)
                };
                match grid {
                    Some(g) => crate::with_grid(g, || run(dw.get_mut())),
                    None => run(dw.get_mut()),
                }
                exact(
                    &format!("embedding_bwd_sorted {rows}x{cols} tile {lo}{what}"),
                    dw.get(),
                    &want,
                );
            }
        }
    }
}

#[test]
fn backward_f32() {
    backward::<f32>();
}
#[test]
fn backward_f64() {
    backward::<f64>();
}

fn positions<T: Dev>() {
    let (n_pos, first_row, tt, batch) = (16, 5, 7, 3);
    let table: Vec<T> = Rng(55).vec(n_pos * COLS, 0.0, 1.0);
    let y0: Vec<T> = Rng(56).vec(batch * tt * COLS, 0.0, 1.0);
    let mut want = y0.clone();
    ke::add_rows::<T>(&table, first_row, tt, batch, COLS, &mut want);
    let mut y = Buf::new(&y0);
    emu::add_rows::<T>(&table, first_row, tt, batch, COLS, y.get_mut());
    exact("add_rows", y.get(), &want);

    let dy = y0;
    let mut want = table.clone();
    ke::add_rows_bwd::<T, T>(&dy, first_row, tt, batch, COLS, &mut want);
    let mut dt = Buf::new(&table);
    emu::add_rows_bwd::<T, T>(&dy, first_row, tt, batch, COLS, dt.get_mut());
    exact("add_rows_bwd", dt.get(), &want);

    // A tile of the table starting at an odd column. sin, cos and exp in
    // f64 are libdevice's on the GPU, not the CPU's libm (embedding.cu's
    // header): an f64 ulp or two, then rounded to T.
    for (pos_lo, n, cols_lo, cols, total) in [(3, 9, 5, 14, 24), (0, 40, 0, 8, 8)] {
        let mut want = vec![T::from_f64(0.0); n * cols];
        ke::sinusoidal_table::<T>(pos_lo, n, cols_lo, cols, total, &mut want);
        let mut out = Buf::<T>::zeros(n * cols);
        emu::sinusoidal::<T>(pos_lo, n, cols_lo, cols, total, out.get_mut());
        let tol = 2.0 * eps::<T>();
        close(
            &format!("sinusoidal {pos_lo}+{n} x {cols_lo}+{cols} of {total}"),
            out.get(),
            &want,
            tol,
            tol,
        );
    }
}

#[test]
fn positions_f32() {
    positions::<f32>();
}
#[test]
fn positions_f64() {
    positions::<f64>();
}
