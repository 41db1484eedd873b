//! Bias of a linear layer on one tile, y viewed as `[rows, cols]` (row-major)
//! and the bias as this tile's `cols` entries.
//!
//! ```text
//! bias_fill: y[r, c]  = bias[c]          (then GEMM with beta = 1 adds x @ W)
//! bias_add:  y[r, c] += bias[c]
//! bias_grad: db[c]   += sum_r dy[r, c]
//! ```
//!
//! Gradient convention: `db` is a parameter gradient and ACCUMULATES (`+=`),
//! in its own dtype `G` (f32 master gradients beside bf16 activations).
//! The column sums run in `T::Acc` over blocks of `BLOCK` rows and the block
//! sums are added in f64, as `reduce::sum_axis` does, so an f32 sum over
//! thousands of rows (B*T) loses no more than one block's rounding.
//!
//! ```
//! use gpt2rs::kernels::cpu::bias::{bias_add, bias_grad};
//! let mut y = [1.0f32, 2.0, 3.0, 4.0];
//! bias_add(&[10.0f32, 20.0], 2, 2, &mut y);
//! assert_eq!(y, [11.0, 22.0, 13.0, 24.0]);
//! let mut db = [1.0f32, 0.0];
//! bias_grad(&y, 2, 2, &mut db);
//! assert_eq!(db, [25.0, 46.0]);
//! ```

use crate::dtype::{Accum, Element};

/// Rows summed in `T::Acc` before flushing into the f64 totals.
const BLOCK: usize = 256;

/// `y[r, c] = bias[c]`.
pub fn bias_fill<T: Element>(bias: &[T], rows: usize, cols: usize, y: &mut [T]) {
    assert_eq!(bias.len(), cols, "bias_fill: bias length");
    assert_eq!(y.len(), rows * cols, "bias_fill: y length");
    if cols == 0 {
        return;
    }
    for yr in y.chunks_exact_mut(cols) {
        yr.copy_from_slice(bias);
    }
}

/// `y[r, c] += bias[c]`.
pub fn bias_add<T: Element>(bias: &[T], rows: usize, cols: usize, y: &mut [T]) {
    assert_eq!(bias.len(), cols, "bias_add: bias length");
    assert_eq!(y.len(), rows * cols, "bias_add: y length");
    if cols == 0 {
        return;
    }
    let b: Vec<T::Acc> = bias.iter().map(|v| v.to_acc()).collect();
    for yr in y.chunks_exact_mut(cols) {
        for (yv, bv) in yr.iter_mut().zip(&b) {
            *yv = T::from_acc(yv.to_acc() + *bv);
        }
    }
}

/// `db[c] += sum_r dy[r, c]`.
pub fn bias_grad<T: Element, G: Element>(dy: &[T], rows: usize, cols: usize, db: &mut [G]) {
    assert_eq!(dy.len(), rows * cols, "bias_grad: dy length");
    assert_eq!(db.len(), cols, "bias_grad: db length");
    if cols == 0 || rows == 0 {
        return;
    }
    let mut part = vec![T::Acc::ZERO; cols];
    let mut total = vec![0.0f64; cols];
    for r0 in (0..rows).step_by(BLOCK) {
        part.fill(T::Acc::ZERO);
        // Whole rows at a time: dy streams contiguously, the partials stay in cache.
        for dr in dy[r0 * cols..rows.min(r0 + BLOCK) * cols].chunks_exact(cols) {
            for (p, v) in part.iter_mut().zip(dr) {
                *p += v.to_acc();
            }
        }
        for (t, p) in total.iter_mut().zip(&part) {
            *t += p.f64();
        }
    }
    for (o, t) in db.iter_mut().zip(&total) {
        *o = G::from_f64(o.to_f64() + t);
    }
}
