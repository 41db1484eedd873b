//! elementwise.cu: fill, scale, axpy, add, cast, copy_block. All promise the
//! CPU's result bit for bit: one operation per element in `T::Acc`, scalars
//! rounded to it once, one rounding per store.

use super::{exact, Buf, Dev, Rng};
use crate::elementwise as emu;
use crate::BlockDims;
use gpt2rs::dtype::Element;
use gpt2rs::kernels::cpu::{copy as kcp, elementwise as kew};

/// Inputs with the special values (NaN, infinities, signed zeros,
/// subnormals) first; `n` spans several blocks and ends in a partial one.
fn input<T: Element>(seed: u64, n: usize) -> Vec<T> {
    let mut x: Vec<T> = Rng(seed).vec(n, 0.0, 3.0);
    let special = [
        f64::NAN,
        f64::INFINITY,
        -f64::INFINITY,
        -0.0,
        0.0,
        1e-310,
        -1e-40,
        3.0e38,
    ];
    for (v, s) in x.iter_mut().zip(special) {
        *v = T::from_f64(s);
    }
    x
}

fn blas1<T: Dev>() {
    let n = 777;
    let x: Vec<T> = input(1, n);
    let y0: Vec<T> = input(2, n).into_iter().rev().collect();
    for value in [0.1, -3.5e38, f64::NAN] {
        let mut want = y0.clone();
        kew::fill::<T>(value, &mut want);
        let mut y = Buf::new(&y0);
        emu::fill::<T>(value, y.get_mut());
        exact(&format!("fill {value}"), y.get(), &want);
    }
    for alpha in [0.3, -2.0, 0.0] {
        let mut want = y0.clone();
        kew::scale::<T>(alpha, &mut want);
        let mut y = Buf::new(&y0);
        emu::scale::<T>(alpha, y.get_mut());
        exact(&format!("scale {alpha}"), y.get(), &want);

        let mut want = y0.clone();
        kew::axpy::<T>(alpha, &x, &mut want);
        let mut y = Buf::new(&y0);
        emu::axpy::<T>(alpha, &x, y.get_mut());
        exact(&format!("axpy {alpha}"), y.get(), &want);

        // beta == 0: y is write-only, so its NaN must not leak.
        for beta in [0.0, 0.7, -1.0] {
            let mut want = y0.clone();
            kew::add::<T>(alpha, &x, beta, &mut want);
            let mut y = Buf::new(&y0);
            emu::add::<T>(alpha, &x, beta, y.get_mut());
            exact(&format!("add {alpha} {beta}"), y.get(), &want);
        }
    }
}

#[test]
fn blas1_f32() {
    blas1::<f32>();
}
#[test]
fn blas1_f64() {
    blas1::<f64>();
}

/// (source shape, source offset, destination shape, destination offset,
/// block): blocks that merge fully, partly and not at all, unit dims, rank 0
/// and the launcher's limit of 8 loop dims.
type Case = (
    &'static [usize],
    &'static [usize],
    &'static [usize],
    &'static [usize],
    &'static [usize],
);
const COPY_CASES: &[Case] = &[
    (&[3, 3], &[1, 1], &[2, 2], &[0, 0], &[2, 2]),
    (&[4, 5, 6], &[0, 0, 0], &[4, 5, 6], &[0, 0, 0], &[4, 5, 6]),
    (&[4, 5, 6], &[1, 0, 0], &[3, 5, 6], &[0, 0, 0], &[3, 5, 6]),
    (&[4, 5, 6], &[1, 2, 3], &[5, 4, 7], &[2, 1, 0], &[2, 3, 3]),
    (
        &[2, 1, 7, 3],
        &[1, 0, 2, 0],
        &[1, 4, 9, 3],
        &[0, 3, 1, 0],
        &[1, 1, 5, 3],
    ),
    (&[5], &[2], &[4], &[1], &[3]),
    (&[300], &[0], &[600], &[299], &[300]),
    (&[], &[], &[], &[], &[]),
    (
        &[2, 3, 4, 5, 2, 3, 2, 3],
        &[0, 1, 0, 1, 0, 1, 0, 1],
        &[3, 3, 5, 5, 3, 3, 3, 3],
        &[1, 0, 1, 0, 1, 0, 1, 0],
        &[2, 2, 4, 4, 2, 2, 2, 2],
    ),
];

fn conversions<S: Dev, D: Dev>() {
    let n = 600;
    let x: Vec<S> = input(3, n);
    let mut want = vec![D::from_f64(0.0); n];
    kew::cast::<S, D>(&x, &mut want);
    let mut y = Buf::<D>::zeros(n);
    emu::cast::<S, D>(&x, y.get_mut());
    exact("cast", y.get(), &want);

    for &(ss, so, ds, doff, blk) in COPY_CASES {
        let src: Vec<S> = input(4, ss.iter().product());
        let dst0: Vec<D> = Rng(5).vec(ds.iter().product(), 0.0, 1.0);
        let mut want = dst0.clone();
        kcp::cast_block::<S, D>(&src, ss, so, &mut want, ds, doff, blk);
        // The launcher's own host code builds the loop nest.
        let (dims, total) = BlockDims::new(ss, so, ds, doff, blk).unwrap().unwrap();
        let mut y = Buf::new(&dst0);
        emu::copy_block_dims::<S, D>(dims, total, &src, y.get_mut());
        exact(
            &format!("copy_block {ss:?} {so:?} -> {ds:?} {doff:?} {blk:?}"),
            y.get(),
            &want,
        );
    }
}

#[test]
fn cast_and_copy_block() {
    conversions::<f32, f32>();
    conversions::<f32, f64>();
    conversions::<f64, f32>();
    conversions::<f64, f64>();
}

#[test]
fn block_dims_is_the_kernel_layout() {
    // `struct BlockDims` of elementwise.cu: ndim, n, src, dst, src_start,
    // dst_start, all 64-bit, by value.
    let max = gpt2rs::kernels::cuda::elementwise::COPY_MAX_DIMS;
    assert_eq!(std::mem::size_of::<BlockDims>(), 8 * (3 + 3 * max));
    // A whole tile into a whole tile is one contiguous run; an empty block
    // launches nothing; a block that does not fit is refused.
    let (d, _) = BlockDims::new(&[4, 5], &[0, 0], &[4, 5], &[0, 0], &[4, 5])
        .unwrap()
        .unwrap();
    assert_eq!((d.ndim, d.n[0], d.src[0], d.dst[0]), (1, 20, 1, 1));
    assert!(BlockDims::new(&[2], &[0], &[2], &[0], &[0])
        .unwrap()
        .is_none());
    assert!(BlockDims::new(&[2], &[1], &[2], &[0], &[2]).is_err());
}
