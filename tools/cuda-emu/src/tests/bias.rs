//! bias.cu: fill, add and the parameter gradient, all bit for bit. The
//! gradient runs as the launcher runs it, in two passes through uncleared
//! scratch: partial sums of 256-row blocks in T::Acc, added in f64 in block
//! order by add_col_parts (reduce.cu), as the CPU adds them. Also with a
//! 2-block first-pass grid: the same bits whatever the grid.

use super::{add_col_parts, col_parts, exact, Buf, Dev, Rng};
use crate::bias as emu;
use gpt2rs::kernels::cpu::bias as kb;

fn bias<T: Dev>() {
    // 1100 rows: four full 256-row blocks and a partial one; 261 columns:
    // two full column strips and a partial one; 45 and 300 columns.
    for (rows, cols) in [(1100, 261), (600, 45), (3, 300), (0, 5)] {
        let b: Vec<T> = Rng(80).vec(cols, 0.0, 1.0);
        let y0: Vec<T> = Rng(81).vec(rows * cols, 0.0, 1.0);
        let mut want = y0.clone();
        kb::bias_fill::<T>(&b, rows, cols, &mut want);
        let mut y = Buf::new(&y0);
        emu::bias_fill::<T>(&b, rows, cols, y.get_mut());
        exact(&format!("bias_fill {rows}x{cols}"), y.get(), &want);

        let mut want = y0.clone();
        kb::bias_add::<T>(&b, rows, cols, &mut want);
        let mut y = Buf::new(&y0);
        emu::bias_add::<T>(&b, rows, cols, y.get_mut());
        exact(&format!("bias_add {rows}x{cols}"), y.get(), &want);

        let dy: Vec<T> = Rng(82).vec(rows * cols, 0.5, 1.0);
        let mut want = b.clone();
        kb::bias_grad::<T, T>(&dy, rows, cols, &mut want);
        for grid in [None, Some(2)] {
            let mut db = Buf::new(&b);
            if rows * cols > 0 {
                let (part, nblk) = col_parts(rows, cols, 1, grid, |pp| {
                    emu::bias_grad_part::<T>(&dy, rows, cols, pp)
                });
                add_col_parts(&part, nblk, cols, &mut db, None);
            }
            exact(
                &format!("bias_grad {rows}x{cols} grid {grid:?}"),
                db.get(),
                &want,
            );
        }
    }
}

#[test]
fn bias_f32() {
    bias::<f32>();
}
#[test]
fn bias_f64() {
    bias::<f64>();
}
