//! reduce.cu: sum_axis / sum_rows, the two-pass sum_all and scaled sum of
//! squares, norm_from_ssq. The GPU adds every term in f64 in its own order
//! (reduce.cu's header: "at least as accurate as the CPU's but not
//! bit-identical"), so sums are compared within the CPU's own error bound:
//! the CPU rounds each term into `T::Acc` partial sums, so its error is at
//! most about `len * eps(T::Acc) * sum |x|`; the maxima (`scale`) and the
//! special cases (empty, inf, NaN) must agree exactly.

use super::{close, eps, exact, scratch, Buf, Dev, Rng};
use crate::geom;
use crate::reduce as emu;
use gpt2rs::dtype::Element;
use gpt2rs::kernels::cpu::reduce as kr;

/// The launcher `sum_axis` (reduce.rs): `sum_rows` for `inner == 1`, else
/// `sum_axis` on WARP_SIZE x 8 blocks; nothing when `y` is empty.
#[allow(clippy::too_many_arguments)]
fn dev_sum_axis<T: Dev>(
    outer: usize,
    len: usize,
    inner: usize,
    alpha: f64,
    x: &[T],
    beta: f64,
    y: &mut Buf<T>,
) {
    let y = y.get_mut();
    match (outer * inner, inner) {
        (0, _) => {}
        (_, 1) => emu::sum_rows::<T>(outer, len, alpha, x, beta, y),
        _ => emu::sum_axis_cols::<T>(outer, len, inner, alpha, x, beta, y),
    }
}

/// Bound on |gpu - cpu| for `alpha * sum of len terms + beta * y`: the
/// CPU's rounding of up to `len` partial sums in T, the final rounding to T.
fn sum_bound<T: Element>(len: usize, alpha: f64, amax: f64, beta: f64, ymax: f64) -> f64 {
    (len as f64 + 2.0) * eps::<T>() * (alpha.abs() * len as f64 * amax + beta.abs() * ymax)
}

fn sums<T: Dev>() {
    // (outer, len, inner): a column strip ending in a partial warp (45 =
    // 32 + 13), an axis shorter than the 8 thread rows, row sums, an empty axis.
    let shapes = [
        (3, 37, 45),
        (2, 5, 33),
        (1, 600, 7),
        (4, 1, 32),
        (5, 300, 1),
        (3, 0, 4),
        (2, 0, 1),
        (0, 3, 4),
    ];
    for (outer, len, inner) in shapes {
        let x: Vec<T> = Rng(10).vec(outer * len * inner, 0.2, 1.0);
        let mut y0: Vec<T> = Rng(11).vec(outer * inner, 0.0, 1.0);
        if let Some(v) = y0.first_mut() {
            *v = T::from_f64(f64::NAN); // not read when beta == 0
        }
        for (alpha, beta) in [(1.0, 0.0), (0.5, 2.0), (-1.0, 1.0)] {
            let mut want = y0.clone();
            kr::sum_axis::<T>(outer, len, inner, alpha, &x, beta, &mut want);
            let mut y = Buf::new(&y0);
            dev_sum_axis::<T>(outer, len, inner, alpha, &x, beta, &mut y);
            let what = format!("sum_axis {outer}x{len}x{inner} alpha {alpha} beta {beta}");
            close(
                &what,
                y.get(),
                &want,
                0.0,
                sum_bound::<T>(len, alpha, 1.2, beta, 1.0),
            );
        }
    }

    // sum_all, two passes; n = 0 still launches (parts = 1, the sum is 0).
    for n in [0usize, 1, 255, 1000, 5000] {
        let x: Vec<T> = Rng(12).vec(n, 0.1, 1.0);
        for (alpha, beta) in [(1.0, 0.0), (0.25, -1.5)] {
            let mut want = vec![T::from_f64(0.75)];
            kr::sum_all::<T>(alpha, &x, beta, &mut want);
            let parts = geom::reduce_parts(n);
            let mut part = scratch(parts);
            let mut y = Buf::<T>::filled(1, 0.75);
            emu::sum_partial::<T>(&x, part.get_mut());
            emu::sum_all_parts::<T>(part.get(), alpha, beta, y.get_mut());
            let what = format!("sum_all n {n} alpha {alpha} beta {beta}");
            close(
                &what,
                y.get(),
                &want,
                0.0,
                sum_bound::<T>(n, alpha, 1.1, beta, 0.75),
            );
        }
    }
}

#[test]
fn sums_f32() {
    sums::<f32>();
}
#[test]
fn sums_f64() {
    sums::<f64>();
}

/// The launcher `ssq_update` (two passes through `3 * parts` doubles;
/// `grid`: the first pass on that many blocks, which then stride).
fn dev_ssq<T: Dev>(x: &[T], acc: &mut Buf<f64>, grid: Option<usize>) {
    let n = x.len();
    let mut part = scratch(3 * geom::reduce_parts(n));
    let parts = match grid {
        Some(g) => {
            crate::with_grid(g as u32, || emu::ssq_partial::<T>(x, part.get_mut()));
            g
        }
        None => {
            emu::ssq_partial::<T>(x, part.get_mut());
            geom::reduce_parts(n)
        }
    };
    emu::ssq_update_parts::<T>(&part.get()[..3 * parts], acc.get_mut());
}

fn squares<T: Dev>() {
    let big = if T::DTYPE == gpt2rs::DType::F64 {
        1e200
    } else {
        1e30
    };
    let tiny = if T::DTYPE == gpt2rs::DType::F64 {
        1e-200
    } else {
        1e-30
    };
    let mut cases: Vec<(String, Vec<T>)> = vec![
        ("empty".into(), vec![]),
        ("zeros".into(), vec![T::from_f64(0.0); 700]),
        ("random".into(), Rng(13).vec(3000, 0.0, 2.0)),
        ("huge".into(), Rng(14).vec(900, 0.0, big)),
        ("tiny".into(), Rng(15).vec(900, 0.0, tiny)),
    ];
    let mut with = |name: &str, at: usize, v: f64| {
        let mut x: Vec<T> = Rng(16).vec(2000, 0.0, 1.0);
        x[at] = T::from_f64(v);
        cases.push((name.into(), x));
    };
    with("inf", 1500, f64::INFINITY);
    with("nan", 10, f64::NAN);
    with("-inf then finite", 3, -f64::INFINITY);
    for (name, x) in &cases {
        for start in [[0.0, 0.0], [0.5, 3.0], [f64::INFINITY, 1.0]] {
            let mut want = start;
            kr::ssq_update::<T>(x, &mut want);
            let mut acc = Buf::new(&start);
            dev_ssq::<T>(x, &mut acc, None);
            let got = acc.get();
            let what = format!("ssq_update {name} from {start:?}");
            exact(&format!("{what}: scale"), &got[..1], &want[..1]);
            // Each term (x / scale)^2 <= 1 is rounded in f64 on both sides.
            close(
                &what,
                &got[1..],
                &want[1..],
                (x.len() as f64 + 4.0) * f64::EPSILON,
                0.0,
            );
            // norm_from_ssq is the same two operations on both sides.
            for (alpha, beta) in [(1.0, 0.0), (2.0, 0.5)] {
                let mut y_want = vec![T::from_f64(3.0)];
                kr::norm_from_ssq::<T>(&want, alpha, beta, &mut y_want);
                let mut y = Buf::<T>::filled(1, 3.0);
                emu::norm_from_ssq::<T>(&want, alpha, beta, y.get_mut());
                exact(
                    &format!("norm_from_ssq {name} {alpha} {beta}"),
                    y.get(),
                    &y_want,
                );
            }
        }
    }
    // Past 1024 * ROW_BLOCK elements the first pass's blocks stride over x
    // (the part count is capped); a 3-block grid takes that path at this size.
    let x: Vec<T> = Rng(17).vec(5000, 0.0, 1.0);
    let mut want = [0.0, 0.0];
    kr::ssq_update::<T>(&x, &mut want);
    let mut acc = Buf::new(&[0.0, 0.0]);
    dev_ssq::<T>(&x, &mut acc, Some(3));
    exact("ssq strided: scale", &acc.get()[..1], &want[..1]);
    close(
        "ssq strided",
        &acc.get()[1..],
        &want[1..],
        5004.0 * f64::EPSILON,
        0.0,
    );
    let parts = 3;
    let mut part = scratch(geom::reduce_parts(x.len()));
    let mut y = Buf::<T>::zeros(1);
    crate::with_grid(3, || emu::sum_partial::<T>(&x, part.get_mut()));
    emu::sum_all_parts::<T>(&part.get()[..parts], 1.0, 0.0, y.get_mut());
    let mut y_want = vec![T::from_f64(0.0)];
    kr::sum_all::<T>(1.0, &x, 0.0, &mut y_want);
    close(
        "sum_all strided",
        y.get(),
        &y_want,
        0.0,
        sum_bound::<T>(5000, 1.0, 1.0, 0.0, 0.0),
    );
}

#[test]
fn squares_f32() {
    squares::<f32>();
}
#[test]
fn squares_f64() {
    squares::<f64>();
}
