//! bias.cu: fill, add and the parameter gradient, all bit for bit (the
//! gradient sums blocks of 256 rows in T::Acc and the block sums in f64, in
//! the CPU's order).

use super::{exact, Buf, Dev, Rng};
use crate::geom::elementwise as ew;
use crate::launch;
use gpt2rs::kernels::cpu::bias as kb;

fn bias<T: Dev>() {
    let k = T::K;
    // 600 rows: two full 256-row blocks and a partial one; 45 columns.
    for (rows, cols) in [(600, 45), (3, 300), (0, 5)] {
        let b: Vec<T> = Rng(80).vec(cols, 0.0, 1.0);
        let y0: Vec<T> = Rng(81).vec(rows * cols, 0.0, 1.0);
        let mut want = y0.clone();
        kb::bias_fill::<T>(&b, rows, cols, &mut want);
        let mut y = Buf::new(&y0);
        let (bp, yp) = (b.as_ptr(), y.m());
        launch(ew(rows * cols), || unsafe {
            (k.bias_fill)(bp, rows, cols, yp)
        });
        exact(&format!("bias_fill {rows}x{cols}"), y.get(), &want);

        let mut want = y0.clone();
        kb::bias_add::<T>(&b, rows, cols, &mut want);
        let mut y = Buf::new(&y0);
        let yp = y.m();
        launch(ew(rows * cols), || unsafe {
            (k.bias_add)(bp, rows, cols, yp)
        });
        exact(&format!("bias_add {rows}x{cols}"), y.get(), &want);

        let dy: Vec<T> = Rng(82).vec(rows * cols, 0.5, 1.0);
        let mut want = b.clone();
        kb::bias_grad::<T, T>(&dy, rows, cols, &mut want);
        let mut db = Buf::new(&b);
        let (dp, gp) = (dy.as_ptr(), db.m());
        launch(ew(cols), || unsafe { (k.bias_grad)(dp, rows, cols, gp) });
        exact(&format!("bias_grad {rows}x{cols}"), db.get(), &want);
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
