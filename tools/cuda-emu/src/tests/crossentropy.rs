//! crossentropy.cu over a vocabulary cut into tiles (7 + 20 + 23 columns),
//! targets in every tile, on tile edges and ignored (-100).
//!
//! The (max, sumexp) chain and the gradient go through exp, which the CPU
//! kernel computes with its own f32 exp and libdevice with its own: a few
//! ulps of T. The loss sums are f64 sums of up to `rows` terms in a block
//! tree instead of in row order: `rows * eps(f64)` relative to the sum of
//! the terms' magnitudes.

use super::{close, cols_of, eps, exact, Buf, Dev, Rng};
use crate::crossentropy as emu;
use crate::with_grid;
use gpt2rs::kernels::cpu::crossentropy as kc;

const CUTS: [(usize, usize); 3] = [(0, 7), (7, 20), (27, 23)];

/// `rows` rows over V = 50, targets cycling through edge cases.
/// `grid`: the loss sums' grid replaced (the kernels also take several
/// blocks, adding their partial sums atomically).
fn case<T: Dev>(rows: usize, grid: u32) {
    let v = 50;
    let z: Vec<T> = Rng(40).vec(rows * v, 0.0, 4.0);
    let pattern = [3i64, -100, 49, 7, 26, 27, 0, 6];
    let tg: Vec<i64> = (0..rows).map(|r| pattern[r % pattern.len()]).collect();
    let tol = 8.0 * eps::<T>();
    let what = |s: &str| format!("{s} ({rows} rows, loss grid {grid})");

    let mut acc_want = vec![T::from_f64(0.0); rows * 2];
    for a in acc_want.chunks_exact_mut(2) {
        a[0] = T::from_f64(f64::NEG_INFINITY);
    }
    let mut acc = Buf::<T>::filled(rows * 2, 7.0);
    emu::maxsumexp_init::<T>(rows, acc.get_mut());
    exact(&what("maxsumexp_init"), acc.get(), &acc_want);

    let (mut loss_want, mut loss) = ([0.5f64], Buf::<f64>::filled(1, 0.5));
    let mut terms = 0.0; // sum of |terms| of the loss, for its bound
    for &(lo, n) in &CUTS {
        let t = cols_of(&z, rows, v, lo, n);
        kc::maxsumexp_update::<T>(&t, rows, n, &mut acc_want);
        kc::ce_loss_target::<T>(&t, rows, n, lo, &tg, &mut loss_want);
        terms += t.iter().map(|x| x.to_f64().abs()).fold(0.0, f64::max) * rows as f64;
        emu::maxsumexp_update::<T>(&t, rows, n, acc.get_mut());
        with_grid(grid, || {
            emu::ce_loss_target::<T>(&t, rows, n, lo, &tg, loss.get_mut())
        });
    }
    close(&what("maxsumexp chain"), acc.get(), &acc_want, tol, 0.0);
    kc::ce_loss_lse::<T>(&acc_want, rows, &tg, &mut loss_want);
    with_grid(grid, || {
        emu::ce_loss_lse::<T>(&acc_want, rows, &tg, loss.get_mut())
    });
    terms += rows as f64 * 10.0;
    close(
        &what("loss"),
        loss.get(),
        &loss_want,
        0.0,
        rows as f64 * f64::EPSILON * terms,
    );

    for &(lo, n) in &CUTS {
        let t = cols_of(&z, rows, v, lo, n);
        let mut want = t.clone();
        kc::ce_bwd::<T>(&acc_want, rows, n, lo, &tg, 0.2, &mut want);
        let mut zg = Buf::new(&t);
        emu::ce_bwd::<T>(&acc_want, rows, n, lo, &tg, 0.2, zg.get_mut());
        // The target entries scale * (p - 1) cancel when p -> 1: absolute part.
        close(
            &what(&format!("ce_bwd tile {lo}+{n}")),
            zg.get(),
            &want,
            tol,
            0.2 * tol,
        );
    }
}

fn crossentropy<T: Dev>() {
    // The launchers' deterministic single-block sums, and two blocks.
    case::<T>(6, 1);
    case::<T>(300, 1);
    case::<T>(300, 2);
}

#[test]
fn crossentropy_f32() {
    crossentropy::<f32>();
}
#[test]
fn crossentropy_f64() {
    crossentropy::<f64>();
}
