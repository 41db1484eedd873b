//! layernorm.cu, with C cut into tiles (13 + 1 + 23 columns) as the ops do.
//! Exact where the kernel repeats the CPU's per-element arithmetic (finalize,
//! forward, backward, the blocked parameter gradients, the fused sums). The
//! per-row reductions (statistics, backward sums) use block trees instead of
//! the CPU's sequential lanes: within the error bound of summing `cols`
//! terms in T::Acc, `cols * eps * sum |term|`.

use super::{add_col_parts, close, col_parts, cols_of, eps, exact, Buf, Dev, Rng};
use crate::layernorm as emu;
use gpt2rs::kernels::cpu::{elementwise as kew, layernorm as kl};

const CUTS: [(usize, usize); 3] = [(0, 13), (13, 1), (14, 23)];

fn layernorm<T: Dev>() {
    let mut rng = Rng(30);
    let (rows, c) = (5usize, 37usize);
    let x: Vec<T> = rng.vec(rows * c, 3.0, 1.0);
    let g: Vec<T> = rng.vec(c, 1.0, 0.5);
    let bb: Vec<T> = rng.vec(c, 0.0, 0.5);
    let dy: Vec<T> = rng.vec(rows * c, 0.0, 1.0);
    let eps_ln = 1e-5;
    // Sums of up to C terms of magnitude <= ~4 (x) or ~3 (dy * gamma * xhat).
    let red = |n: usize| 4.0 * n as f64 * eps::<T>() * (4.0 * n as f64);

    // Statistics: one update per tile, chained.
    let mut acc_want = vec![T::from_f64(0.0); rows * 3];
    let mut acc = Buf::<T>::zeros(rows * 3);
    for &(lo, n) in &CUTS {
        let t = cols_of(&x, rows, c, lo, n);
        kl::layernorm_stats_update::<T>(&t, rows, n, &mut acc_want);
        emu::layernorm_stats_update::<T>(&t, rows, n, acc.get_mut());
    }
    close(
        "stats_update chain",
        acc.get(),
        &acc_want,
        4.0 * c as f64 * eps::<T>(),
        red(c),
    );
    let mut st_want = vec![T::from_f64(0.0); rows * 2];
    kl::layernorm_stats_finalize::<T>(&acc_want, rows, eps_ln, &mut st_want);
    let mut st = Buf::<T>::zeros(rows * 2);
    emu::layernorm_stats_finalize::<T>(&acc_want, rows, eps_ln, st.get_mut());
    exact("stats_finalize", st.get(), &st_want);
    let stats = st_want;

    // Forward per tile.
    for &(lo, n) in &CUTS {
        let t = cols_of(&x, rows, c, lo, n);
        let (gt, bt) = (&g[lo..lo + n], &bb[lo..lo + n]);
        let mut want = vec![T::from_f64(0.0); rows * n];
        kl::layernorm_fwd::<T>(&t, &stats, gt, bt, rows, n, &mut want);
        let mut y = Buf::<T>::zeros(rows * n);
        emu::layernorm_fwd::<T>(&t, &stats, gt, bt, rows, n, y.get_mut());
        exact(&format!("fwd tile {lo}+{n}"), y.get(), &want);
    }

    // Backward: sums over the tiles, then dx per tile.
    let mut sums_want = vec![T::from_f64(0.0); rows * 2];
    let mut sums = Buf::<T>::zeros(rows * 2);
    for &(lo, n) in &CUTS {
        let (xt, dt, gt) = (
            cols_of(&x, rows, c, lo, n),
            cols_of(&dy, rows, c, lo, n),
            &g[lo..lo + n],
        );
        kl::layernorm_bwd_reduce::<T>(&xt, &dt, &stats, gt, rows, n, &mut sums_want);
        emu::layernorm_bwd_reduce::<T>(&xt, &dt, &stats, gt, rows, n, sums.get_mut());
    }
    close("bwd_reduce chain", sums.get(), &sums_want, 0.0, red(c));
    let sums = sums_want;
    for accumulate in [false, true] {
        for &(lo, n) in &CUTS {
            let (xt, dt, gt) = (
                cols_of(&x, rows, c, lo, n),
                cols_of(&dy, rows, c, lo, n),
                &g[lo..lo + n],
            );
            let init: Vec<T> = Rng(31).vec(rows * n, 0.0, 1.0);
            let mut want = init.clone();
            kl::layernorm_bwd::<T>(
                &xt, &dt, &stats, gt, &sums, c, rows, n, accumulate, &mut want,
            );
            let mut dx = Buf::new(&init);
            let flag = accumulate as i32;
            let dxp = dx.get_mut();
            emu::layernorm_bwd::<T>(&xt, &dt, &stats, gt, &sums, c, rows, n, flag, dxp);
            exact(
                &format!("bwd accumulate={accumulate} tile {lo}+{n}"),
                dx.get(),
                &want,
            );
        }
    }

    // Parameter gradients, in the launcher's two passes (as bias_grad):
    // 1100 rows (four full 256-row blocks and a partial one) of 133 columns
    // (a full column strip and a partial one), 600 rows of 7, and no rows
    // (the launcher launches nothing). Also with a 2-block first-pass grid.
    for (rows, cols) in [(1100, 133), (600, 7), (0, 7)] {
        let xb: Vec<T> = Rng(32).vec(rows * cols, 1.0, 1.0);
        let db: Vec<T> = Rng(33).vec(rows * cols, 0.0, 1.0);
        let sb: Vec<T> = (0..rows)
            .flat_map(|i| [T::from_f64(1.0 + 0.001 * i as f64), T::from_f64(0.9)])
            .collect();
        let init: Vec<T> = Rng(34).vec(cols, 0.0, 1.0);
        let (mut gw, mut bw) = (init.clone(), init.clone());
        kl::layernorm_param_grad::<T, T>(&xb, &db, &sb, rows, cols, &mut gw, &mut bw);
        for grid in [None, Some(2)] {
            let (mut gg, mut bg) = (Buf::new(&init), Buf::new(&init));
            if rows > 0 {
                let (part, nblk) = col_parts(rows, cols, 2, grid, |pp| {
                    emu::layernorm_param_grad_part::<T>(&xb, &db, &sb, rows, cols, pp)
                });
                add_col_parts(&part, nblk, cols, &mut gg, Some(&mut bg));
            }
            let what = format!("param_grad {rows}x{cols} grid {grid:?}");
            exact(&format!("{what} dgamma"), gg.get(), &gw);
            exact(&format!("{what} dbeta"), bg.get(), &bw);
        }
    }
}

#[test]
fn layernorm_f32() {
    layernorm::<f32>();
}
#[test]
fn layernorm_f64() {
    layernorm::<f64>();
}

/// The fused residual add + LayerNorm against add, then LayerNorm: the sum
/// bit for bit (one rounding of x + r), statistics and output within the
/// reduction bound (block trees against the CPU's lanes).
fn add_layernorm<T: Dev>() {
    let mut rng = Rng(35);
    let (rows, c) = (5usize, 37usize);
    let x: Vec<T> = rng.vec(rows * c, 3.0, 1.0);
    let r: Vec<T> = rng.vec(rows * c, 0.0, 1.0);
    let g: Vec<T> = rng.vec(c, 1.0, 0.5);
    let bb: Vec<T> = rng.vec(c, 0.0, 0.5);
    let eps_ln = 1e-5;
    let tol = 4.0 * c as f64 * eps::<T>();
    let add = |x: &[T], r: &[T]| {
        let mut s = r.to_vec();
        kew::add::<T>(1.0, x, 1.0, &mut s);
        s
    };
    let sum_want = add(&x, &r);
    let mut acc1 = vec![T::from_f64(0.0); rows * 3];
    kl::layernorm_stats_update::<T>(&sum_want, rows, c, &mut acc1);
    let mut st_want = vec![T::from_f64(0.0); rows * 2];
    kl::layernorm_stats_finalize::<T>(&acc1, rows, eps_ln, &mut st_want);
    let mut y_want = vec![T::from_f64(0.0); rows * c];
    kl::layernorm_fwd::<T>(&sum_want, &st_want, &g, &bb, rows, c, &mut y_want);
    // r == null: the kernel reads the residual from `sum` (in place).
    for in_place in [false, true] {
        let mut sum = if in_place {
            Buf::new(&r)
        } else {
            Buf::zeros(rows * c)
        };
        let (mut st, mut y) = (Buf::<T>::zeros(rows * 2), Buf::<T>::zeros(rows * c));
        let rr = (!in_place).then_some(&r[..]);
        let (sp, tp, yp) = (sum.get_mut(), st.get_mut(), y.get_mut());
        emu::add_layernorm_fwd::<T>(&x, rr, &g, &bb, rows, c, eps_ln, sp, tp, yp);
        exact(
            &format!("add_layernorm_fwd in_place={in_place} sum"),
            sum.get(),
            &sum_want,
        );
        close(
            &format!("add_layernorm_fwd in_place={in_place} stats"),
            st.get(),
            &st_want,
            tol,
            tol,
        );
        close(
            &format!("add_layernorm_fwd in_place={in_place} y"),
            y.get(),
            &y_want,
            tol,
            tol,
        );

        // C in tiles: the adding statistics chain.
        let mut acc = Buf::<T>::zeros(rows * 3);
        let mut acc_want = vec![T::from_f64(0.0); rows * 3];
        for &(lo, n) in &CUTS {
            let (xt, rt) = (cols_of(&x, rows, c, lo, n), cols_of(&r, rows, c, lo, n));
            let mut s = if in_place {
                Buf::new(&rt)
            } else {
                Buf::zeros(rows * n)
            };
            let rr = (!in_place).then_some(&rt[..]);
            emu::add_layernorm_stats_update::<T>(&xt, rr, rows, n, s.get_mut(), acc.get_mut());
            let s_want = cols_of(&sum_want, rows, c, lo, n);
            exact(
                &format!("add_layernorm_stats_update in_place={in_place} sum tile {lo}+{n}"),
                s.get(),
                &s_want,
            );
            kl::layernorm_stats_update::<T>(&s_want, rows, n, &mut acc_want);
        }
        close(
            &format!("add_layernorm_stats_update in_place={in_place} acc"),
            acc.get(),
            &acc_want,
            tol,
            tol,
        );
    }
    // Rows of no columns: count 0, so mean 0 and rstd NaN, as the CPU.
    let mut st = Buf::<T>::zeros(2 * 2);
    let (mut e1, mut e2) = (Buf::<T>::zeros(0), Buf::<T>::zeros(0));
    let (sp, tp, yp, none) = (e1.get_mut(), st.get_mut(), e2.get_mut(), &[] as &[T]);
    emu::add_layernorm_fwd::<T>(none, None, none, none, 2, 0, eps_ln, sp, tp, yp);
    let acc0 = vec![T::from_f64(0.0); 6];
    let mut st0 = vec![T::from_f64(0.0); 4];
    kl::layernorm_stats_finalize::<T>(&acc0, 2, eps_ln, &mut st0);
    exact("add_layernorm_fwd cols=0 stats", st.get(), &st0);
    e1.get();
    e2.get();
}

#[test]
fn add_layernorm_f32() {
    add_layernorm::<f32>();
}
#[test]
fn add_layernorm_f64() {
    add_layernorm::<f64>();
}
