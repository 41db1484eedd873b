//! Batched matrix multiply on one tile: for every batch index `i`,
//!
//! ```text
//! C_i = alpha * op(A_i) @ op(B_i) + beta * C_i        op(X) = X or X^T
//! ```
//!
//! Shapes, row-major: `op(A_i)` is `m x k` (stored `m x k`, or `k x m` when
//! `trans_a`), `op(B_i)` is `k x n` (stored `k x n`, or `n x k` when
//! `trans_b`), `C_i` is `m x n`. Batches are contiguous with strides `m*k`,
//! `k*n` and `m*n`.
//!
//! BLAS conventions: `beta == 0` means C is never read (NaN or garbage in C
//! does not leak), and `alpha == 0` or `k == 0` means A and B are never read
//! (`C = beta * C`).
//!
//! f32 and f64 go straight to the `gemm` crate, with the transposes expressed
//! as strides (no copies) and `Parallelism::None`: one task is one thread, the
//! runtime owns the parallelism. bf16 and f16 have no fast kernel with f32
//! accumulation there, so they are widened into per-thread f32 scratch
//! buffers, multiplied in f32 and rounded back to nearest-even once.
//!
//! ```
//! use gpt2rs::kernels::cpu::gemm::gemm;
//! // [1 2; 3 4] @ [5; 6] = [17; 39]
//! let mut c = [0.0f32; 2];
//! gemm(false, false, 2, 1, 2, 1, 1.0, &[1.0f32, 2.0, 3.0, 4.0], &[5.0f32, 6.0], 0.0, &mut c);
//! assert_eq!(c, [17.0, 39.0]);
//! ```

use crate::dtype::{DType, Element};
use crate::kernels::cpu::elementwise::{cast, fill, scale};
use std::cell::RefCell;

/// Floating-point operations of one `gemm` call (a multiply and an add per term).
pub fn gemm_flops(m: usize, n: usize, k: usize, batch: usize) -> f64 {
    2.0 * m as f64 * n as f64 * k as f64 * batch as f64
}

/// `C_i = alpha * op(A_i) @ op(B_i) + beta * C_i` for `i` in `0..batch`; see
/// the module doc for shapes.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: Element>(
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
    a: &[T],
    b: &[T],
    beta: f64,
    c: &mut [T],
) {
    // Real asserts, not debug ones: the f32/f64 path hands raw pointers to
    // the gemm crate, so soundness rests on these lengths.
    assert_eq!(a.len(), m * k * batch, "gemm: A has the wrong length");
    assert_eq!(b.len(), k * n * batch, "gemm: B has the wrong length");
    assert_eq!(c.len(), m * n * batch, "gemm: C has the wrong length");
    if c.is_empty() {
        return;
    }
    if k == 0 || alpha == 0.0 {
        scale_c(beta, c);
        return;
    }
    let shape = Shape {
        trans_a,
        trans_b,
        m,
        n,
        k,
    };
    match T::DTYPE {
        DType::F32 => {
            let (a, b) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
            gemm_native::<f32>(
                shape,
                batch,
                alpha as f32,
                a,
                b,
                beta as f32,
                bytemuck::cast_slice_mut(c),
            );
        }
        DType::F64 => {
            let (a, b) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
            gemm_native::<f64>(shape, batch, alpha, a, b, beta, bytemuck::cast_slice_mut(c));
        }
        DType::BF16 | DType::F16 => gemm_widened(shape, batch, alpha as f32, a, b, beta as f32, c),
    }
}

/// `C = beta * C`, writing zeros without reading C when `beta == 0`.
fn scale_c<T: Element>(beta: f64, c: &mut [T]) {
    if beta == 0.0 {
        fill(0.0, c);
    } else if beta != 1.0 {
        scale(beta, c);
    }
}

#[derive(Clone, Copy)]
struct Shape {
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
}

/// f32 or f64 straight through the gemm crate, one call per batch matrix.
fn gemm_native<F: bytemuck::Pod + PartialEq + 'static>(
    s: Shape,
    batch: usize,
    alpha: F,
    a: &[F],
    b: &[F],
    beta: F,
    c: &mut [F],
) {
    let Shape { m, n, k, .. } = s;
    // (row stride, column stride) of op(A) and op(B) inside their row-major
    // storage: a transpose is just swapped strides.
    let (a_rs, a_cs) = if s.trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if s.trans_b { (1, k) } else { (n, 1) };
    let read_dst = beta != F::zeroed();
    for i in 0..batch {
        let (ai, bi) = (&a[i * m * k..][..m * k], &b[i * k * n..][..k * n]);
        let ci = &mut c[i * m * n..][..m * n];
        // SAFETY: F is f32 or f64 (the only types the caller instantiates),
        // which the gemm crate supports. Every index the strides reach lies
        // inside its slice: op(A) element (r, p) sits at r*a_rs + p*a_cs <
        // m*k, op(B) element (p, col) at p*b_rs + col*b_cs < k*n, and C
        // element (r, col) at r*n + col < m*n. C is exclusively borrowed and
        // does not alias A or B. The crate's `alpha` scales dst and its
        // `beta` the product, hence the swap; with read_dst == false it
        // never reads dst.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                ci.as_mut_ptr(),
                1,
                n as isize,
                read_dst,
                ai.as_ptr(),
                a_cs as isize,
                a_rs as isize,
                bi.as_ptr(),
                b_cs as isize,
                b_rs as isize,
                beta,
                alpha,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

thread_local! {
    // f32 copies of A, B and C for the bf16/f16 path. Kept per worker thread
    // so a steady training loop does not page-fault fresh buffers every task.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// bf16/f16: widen to f32, multiply in f32, round back once.
fn gemm_widened<T: Element>(
    s: Shape,
    batch: usize,
    alpha: f32,
    a: &[T],
    b: &[T],
    beta: f32,
    c: &mut [T],
) {
    let Shape { m, n, k, .. } = s;
    SCRATCH.with_borrow_mut(|[a32, b32, c32]| {
        for (buf, len) in [(&mut *a32, m * k), (&mut *b32, k * n), (&mut *c32, m * n)] {
            if buf.len() < len {
                buf.resize(len, 0.0);
            }
        }
        let (a32, b32, c32) = (&mut a32[..m * k], &mut b32[..k * n], &mut c32[..m * n]);
        for i in 0..batch {
            cast(&a[i * m * k..][..m * k], a32);
            cast(&b[i * k * n..][..k * n], b32);
            let ci = &mut c[i * m * n..][..m * n];
            if beta != 0.0 {
                cast(ci, c32);
            }
            gemm_native::<f32>(s, 1, alpha, a32, b32, beta, c32);
            cast(c32, ci);
        }
    });
}
