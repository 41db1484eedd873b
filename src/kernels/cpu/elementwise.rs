//! Elementwise BLAS-1 style kernels over slices of equal length `len`:
//!
//! ```text
//! fill:  y = value
//! scale: y = alpha * y
//! axpy:  y = alpha * x + y
//! add:   y = alpha * x + beta * y      (beta == 0: y is not read)
//! cast:  y = x converted to y's dtype  (round to nearest-even)
//! ```
//!
//! Arithmetic happens in `T::Acc` (f32 for f32/bf16/f16, f64 for f64), so a
//! bf16 tile is widened, combined and rounded back once per element. Scalars
//! arrive as f64 and are converted to `T::Acc` once per call. Branches on the
//! scalars sit outside the loops, so the f32/f64 loops vectorize.
//!
//! ```
//! use gpt2rs::kernels::cpu::elementwise::axpy;
//! let mut y = [1.0f32, 2.0];
//! axpy(2.0, &[10.0f32, 20.0], &mut y);
//! assert_eq!(y, [21.0, 42.0]);
//! ```

use crate::dtype::{Accum, DType, Element};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// `y = value`.
pub fn fill<T: Element>(value: f64, y: &mut [T]) {
    y.fill(T::from_f64(value));
}

/// `y = alpha * y`.
pub fn scale<T: Element>(alpha: f64, y: &mut [T]) {
    let a = T::Acc::of(alpha);
    for v in y.iter_mut() {
        *v = T::from_acc(a * v.to_acc());
    }
}

/// `y = alpha * x + y`.
pub fn axpy<T: Element>(alpha: f64, x: &[T], y: &mut [T]) {
    debug_assert_eq!(x.len(), y.len());
    let a = T::Acc::of(alpha);
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv = T::from_acc(a * xv.to_acc() + yv.to_acc());
    }
}

/// `y = alpha * x + beta * y`; with `beta == 0` y is write-only, so NaN in y
/// does not leak.
pub fn add<T: Element>(alpha: f64, x: &[T], beta: f64, y: &mut [T]) {
    debug_assert_eq!(x.len(), y.len());
    let a = T::Acc::of(alpha);
    if beta == 0.0 {
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv = T::from_acc(a * xv.to_acc());
        }
    } else {
        let b = T::Acc::of(beta);
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv = T::from_acc(a * xv.to_acc() + b * yv.to_acc());
        }
    }
}

/// `y = x` converted to `D`, rounding to nearest-even exactly once (f64 to
/// bf16 goes directly, not through f32, to avoid double rounding).
pub fn cast<S: Element, D: Element>(x: &[S], y: &mut [D]) {
    debug_assert_eq!(x.len(), y.len());
    // Same dtype: a plain copy. The casts below are between the same Pod
    // type, checked by bytemuck.
    if S::DTYPE == D::DTYPE {
        y.copy_from_slice(bytemuck::cast_slice(x));
        return;
    }
    // half's slice conversions use F16C (runtime-detected) for f16, which is
    // several times faster than converting element by element.
    match (S::DTYPE, D::DTYPE) {
        (DType::F32, DType::F16) => {
            let y: &mut [f16] = bytemuck::cast_slice_mut(y);
            return y.convert_from_f32_slice(bytemuck::cast_slice(x));
        }
        (DType::F64, DType::F16) => {
            let y: &mut [f16] = bytemuck::cast_slice_mut(y);
            return y.convert_from_f64_slice(bytemuck::cast_slice(x));
        }
        (DType::F16, DType::F32) => {
            let x: &[f16] = bytemuck::cast_slice(x);
            return x.convert_to_f32_slice(bytemuck::cast_slice_mut(y));
        }
        (DType::F16, DType::F64) => {
            let x: &[f16] = bytemuck::cast_slice(x);
            return x.convert_to_f64_slice(bytemuck::cast_slice_mut(y));
        }
        (DType::BF16, DType::F32) => {
            // Exact: bf16 is the top half of an f32.
            let x: &[bf16] = bytemuck::cast_slice(x);
            let y: &mut [f32] = bytemuck::cast_slice_mut(y);
            for (yv, xv) in y.iter_mut().zip(x) {
                *yv = f32::from_bits((xv.to_bits() as u32) << 16);
            }
            return;
        }
        (DType::F32, DType::BF16) => {
            let y: &mut [bf16] = bytemuck::cast_slice_mut(y);
            for (yv, xv) in y.iter_mut().zip(bytemuck::cast_slice::<S, f32>(x)) {
                *yv = f32_to_bf16(*xv);
            }
            return;
        }
        _ => {}
    }
    if S::DTYPE == DType::F64 {
        // half's f64 -> bf16 drops the low 32 mantissa bits before rounding,
        // so an exact tie there may round differently than a correctly
        // rounded conversion; no training path narrows f64 to 16 bits.
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv = D::from_f64(xv.to_f64());
        }
    } else {
        // S is at most f32-wide, so its value reaches D::Acc exactly (through
        // f64, which the compiler folds away) and from_acc rounds once.
        for (yv, xv) in y.iter_mut().zip(x) {
            *yv = D::from_acc(D::Acc::of(xv.to_acc().f64()));
        }
    }
}

/// f32 -> bf16, round to nearest-even, NaN kept quiet: the same results as
/// `bf16::from_f32`, written with selects instead of branches so the loop
/// calling it vectorizes.
#[inline(always)]
fn f32_to_bf16(v: f32) -> bf16 {
    let x = v.to_bits();
    let nan = (x & 0x7fff_ffff) > 0x7f80_0000;
    // Adding 0x7fff plus the kept lsb carries into bit 16 exactly when the
    // dropped half is above the tie, or at the tie with an odd kept part.
    let rounded = x.wrapping_add(0x7fff + ((x >> 16) & 1)) >> 16;
    let bits = if nan { (x >> 16) | 0x40 } else { rounded };
    bf16::from_bits(bits as u16)
}
