//! activation.cu: GELU (tanh and erf forms), ReLU, forward / backward /
//! in-place backward, and dropout.
//!
//! The GELU forms are the CPU's formulas, but through exp and erfc, which
//! libdevice (on the GPU), glibc (here) and the CPU kernel (its own f32 exp,
//! the libm crate's erfc) each round differently by about an ulp: a few ulps
//! of T after the arithmetic around them. Backward values near the zero of
//! GELU' lose relative accuracy to cancellation, hence the absolute part,
//! scaled to the O(1) gradients. ReLU and dropout are exact.

use super::{close, eps, exact, Buf, Dev, Rng};
use crate::activation as emu;
use crate::Dims8;
use gpt2rs::kernels::cpu::activation::{self as ka, Activation};
use gpt2rs::kernels::cpu::dropout::{self as kd, DropoutMask};
use gpt2rs::kernels::cuda::activation::DropoutGeometry;

fn activations<T: Dev>() {
    let n = 1000;
    let mut x: Vec<T> = Rng(20).vec(n, 0.0, 6.0);
    for (v, s) in x
        .iter_mut()
        .zip([f64::NAN, -0.0, 0.0, -30.0, 30.0, -1e-30, f64::INFINITY])
    {
        *v = T::from_f64(s);
    }
    let dy: Vec<T> = Rng(21).vec(n, 0.0, 1.0);
    let tol = 8.0 * eps::<T>();
    for act in [Activation::GeluTanh, Activation::Gelu, Activation::Relu] {
        let check = |what: &str, got: &[T], want: &[T]| {
            if act == Activation::Relu {
                exact(&format!("{act:?} {what}"), got, want);
            } else {
                close(&format!("{act:?} {what}"), got, want, tol, tol);
            }
        };
        let mut want = vec![T::from_f64(0.0); n];
        ka::activation_fwd::<T>(act, &x, &mut want);
        let mut y = Buf::<T>::zeros(n);
        emu::activation_fwd::<T>(act, &x, y.get_mut());
        check("fwd", y.get(), &want);

        let mut want = vec![T::from_f64(0.0); n];
        ka::activation_bwd::<T>(act, &x, &dy, &mut want);
        let mut dx = Buf::<T>::zeros(n);
        emu::activation_bwd::<T>(act, &x, &dy, dx.get_mut());
        check("bwd", dx.get(), &want);

        // In place: the same kernel body reading dy from dx.
        let mut dxy = Buf::new(&dy);
        emu::activation_bwd_inplace::<T>(act, &x, dxy.get_mut());
        exact(&format!("{act:?} bwd in place = bwd"), dxy.get(), dx.get());
    }
}

#[test]
fn activations_f32() {
    activations::<f32>();
}
#[test]
fn activations_f64() {
    activations::<f64>();
}

/// The launcher `dropout` (activation.rs) on a tile at `off` of shape
/// `ts` in a tensor of shape `shape`, geometry from the launcher's own
/// `DropoutGeometry`, against the CPU's mask.
fn dropout_case<T: Dev>(
    seed: u64,
    stream: u64,
    p: f64,
    off: &[usize],
    ts: &[usize],
    shape: &[usize],
) {
    let n: usize = ts.iter().product();
    let x: Vec<T> = Rng(22).vec(n, 0.0, 1.0);
    let mut want = x.clone();
    kd::dropout_fwd::<T>(seed, stream, p, off, ts, shape, &mut want);
    let geo = DropoutGeometry::new(off, ts, shape).unwrap();
    let scale = DropoutMask::new(seed, stream, p).scale;
    let mut y = Buf::new(&x);
    emu::dropout::<T>(seed, stream, p, scale, y.get_mut(), geo);
    exact(
        &format!("dropout seed {seed} stream {stream} p {p} tile {off:?} {ts:?} of {shape:?}"),
        y.get(),
        &want,
    );
}

fn dropout<T: Dev>() {
    let shape = [3usize, 5, 7];
    let params = [
        (7u64, 0u64, 0.5),
        (123456789, 3, 0.1),
        (u64::MAX, 1 << 40, 0.9),
        (5, 2, 1.0),
        (9, 9, 1e-9),
        (4, 4, 0.0),
    ];
    for (seed, stream, p) in params {
        for (off, ts) in [
            ([0, 0, 0], [3, 5, 7]),
            ([1, 2, 3], [2, 3, 4]),
            ([2, 4, 6], [1, 1, 1]),
        ] {
            dropout_case::<T>(seed, stream, p, &off, &ts, &shape);
        }
    }
    // Rank 0, the largest rank (8), and global indices across 2^32.
    dropout_case::<T>(3, 1, 0.5, &[], &[], &[]);
    dropout_case::<T>(
        3,
        1,
        0.5,
        &[1, 0, 1, 0, 1, 0, 1, 0],
        &[1, 2, 1, 2, 2, 1, 3, 2],
        &[2, 2, 2, 2, 3, 3, 4, 4],
    );
    let base = (1usize << 32) - 150;
    dropout_case::<T>(11, 4, 0.3, &[base], &[300], &[base + 300]);
    dropout_case::<T>(11, 4, 0.3, &[1, 0], &[1, 300], &[2, base]);
}

#[test]
fn dropout_f32() {
    dropout::<f32>();
}
#[test]
fn dropout_f64() {
    dropout::<f64>();
}

#[test]
fn dims8_is_the_kernel_layout() {
    // `struct Dims8 { usize v[8]; }` by value, as the launcher passes [u64; 8].
    assert_eq!(std::mem::size_of::<Dims8>(), 64);
}
