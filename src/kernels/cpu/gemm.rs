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
//! f32 products of 2-8 rows (decoding) with A not transposed run
//! [`gemm_small`] on AVX-512 CPUs, which reads B in place instead of
//! packing it.
//!
//! bf16 products (bf16 tiles, and f32 tiles whose compute mode is
//! [`GemmCompute::Bf16`], i.e. fp32_fast_bf16) run on oneMKL's bf16 GEMM
//! where [`mkl::bf16_backend`] says so (AMX-BF16 CPUs with the `mkl`
//! wheel): inputs in bf16, f32 accumulation, C rounded once. Elsewhere the
//! fast modes compute in f32, as DESIGN.md allows the CPU.
//!
//! ```
//! use gpt2rs::kernels::cpu::gemm::gemm;
//! // [1 2; 3 4] @ [5; 6] = [17; 39]
//! let mut c = [0.0f32; 2];
//! gemm(false, false, 2, 1, 2, 1, 1.0, &[1.0f32, 2.0, 3.0, 4.0], &[5.0f32, 6.0], 0.0, &mut c);
//! assert_eq!(c, [17.0, 39.0]);
//! ```

use crate::dtype::{DType, Element, GemmCompute};
use crate::kernels::cpu::elementwise::{cast, fill, scale};
use crate::kernels::cpu::gemm_small;
use crate::kernels::cpu::mkl::{self, Bf16Gemm};
use half::bf16;
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
    let shape = (trans_a, trans_b, m, n, k, batch);
    gemm_in(GemmCompute::Default, shape, alpha, a, b, beta, c)
}

/// [`gemm`] in a compute mode: `GemmCompute::Bf16` rounds f32 inputs to
/// bf16 where the bf16 backend is oneMKL; the CPU ignores the other modes.
/// `shape` is `(trans_a, trans_b, m, n, k, batch)`.
pub fn gemm_in<T: Element>(
    compute: GemmCompute,
    (trans_a, trans_b, m, n, k, batch): (bool, bool, usize, usize, usize, usize),
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
    let on_mkl = || mkl::bf16_backend() == Bf16Gemm::Mkl && mkl::fits_i32(m, n, k);
    match T::DTYPE {
        DType::F32 if compute == GemmCompute::Bf16 && on_mkl() => {
            let (a, b) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
            let c = bytemuck::cast_slice_mut(c);
            gemm_mkl_f32_in(shape, batch, alpha as f32, a, b, beta as f32, c);
        }
        DType::BF16 if on_mkl() => {
            let (a, b) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
            let c = bytemuck::cast_slice_mut(c);
            gemm_mkl_bf16(shape, batch, alpha as f32, a, b, beta as f32, c);
        }
        DType::F32 if gemm_small::wanted(trans_a, trans_b, m) => {
            let (a, b): (&[f32], &[f32]) = (bytemuck::cast_slice(a), bytemuck::cast_slice(b));
            let c: &mut [f32] = bytemuck::cast_slice_mut(c);
            for i in 0..batch {
                let (ai, bi) = (&a[i * m * k..][..m * k], &b[i * k * n..][..k * n]);
                let ci = &mut c[i * m * n..][..m * n];
                gemm_small::gemm_small(trans_b, m, n, k, alpha as f32, ai, bi, beta as f32, ci);
            }
        }
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

/// `C[:, c0..c0 + n] = alpha * A @ op(B) + beta * C[:, c0..c0 + n]` for one
/// `m x ldc` row-major C (a block of columns of it, such as an L2-sized
/// chunk of a logits tile), A `m x k` not transposed; `shape = (trans_b, m,
/// n, k)`. f32 and f64 products on the gemm crate write the block in place
/// through its strides; the other paths of [`gemm_in`] go through a
/// contiguous copy of the block.
#[allow(clippy::too_many_arguments)]
pub fn gemm_cols<T: Element>(
    compute: GemmCompute,
    (trans_b, m, n, k): (bool, usize, usize, usize),
    alpha: f64,
    a: &[T],
    b: &[T],
    beta: f64,
    c: &mut [T],
    (ldc, c0): (usize, usize),
) {
    assert_eq!(a.len(), m * k, "gemm_cols: A has the wrong length");
    assert_eq!(b.len(), k * n, "gemm_cols: B has the wrong length");
    assert_eq!(c.len(), m * ldc, "gemm_cols: C has the wrong length");
    assert!(c0 + n <= ldc, "gemm_cols: columns past C's rows");
    if m == 0 || n == 0 {
        return;
    }
    let on_mkl = compute == GemmCompute::Bf16 && mkl::bf16_backend() == Bf16Gemm::Mkl;
    let native = match T::DTYPE {
        DType::F32 => !on_mkl && !gemm_small::wanted(false, trans_b, m),
        DType::F64 => true,
        DType::BF16 | DType::F16 => false,
    };
    if !native || k == 0 || alpha == 0.0 {
        let mut blk: Vec<T> = Vec::with_capacity(m * n);
        for row in c.chunks_exact(ldc) {
            blk.extend_from_slice(&row[c0..c0 + n]);
        }
        gemm_in(
            compute,
            (false, trans_b, m, n, k, 1),
            alpha,
            a,
            b,
            beta,
            &mut blk,
        );
        for (row, br) in c.chunks_exact_mut(ldc).zip(blk.chunks_exact(n)) {
            row[c0..c0 + n].copy_from_slice(br);
        }
        return;
    }
    match T::DTYPE {
        DType::F32 => gemm_native_cols::<f32>(
            (trans_b, m, n, k),
            alpha as f32,
            bytemuck::cast_slice(a),
            bytemuck::cast_slice(b),
            beta as f32,
            bytemuck::cast_slice_mut(c),
            (ldc, c0),
        ),
        _ => gemm_native_cols::<f64>(
            (trans_b, m, n, k),
            alpha,
            bytemuck::cast_slice(a),
            bytemuck::cast_slice(b),
            beta,
            bytemuck::cast_slice_mut(c),
            (ldc, c0),
        ),
    }
}

/// [`gemm_cols`] on the gemm crate (f32 or f64), C's block in place.
fn gemm_native_cols<F: bytemuck::Pod + PartialEq + 'static>(
    (trans_b, m, n, k): (bool, usize, usize, usize),
    alpha: F,
    a: &[F],
    b: &[F],
    beta: F,
    c: &mut [F],
    (ldc, c0): (usize, usize),
) {
    let (b_rs, b_cs) = if trans_b { (1, k) } else { (n, 1) };
    // SAFETY: F is f32 or f64, which the gemm crate supports. A (m x k,
    // row-major) element (r, p) sits at r*k + p < m*k, op(B) element (p,
    // col) at p*b_rs + col*b_cs < k*n, and C element (r, col) at
    // c0 + r*ldc + col < m*ldc since c0 + n <= ldc (asserted by the
    // caller); C is exclusively borrowed and aliases neither A nor B. The
    // crate's `alpha` scales dst and its `beta` the product, hence the
    // swap; it reads dst only when beta != 0.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr().add(c0),
            1,
            ldc as isize,
            beta != F::zeroed(),
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
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
        let (a32, b32, c32) = (grow(a32, m * k), grow(b32, k * n), grow(c32, m * n));
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

thread_local! {
    // bf16 copies of f32 A and B, or an f32 copy of a bf16 C, for oneMKL.
    static SCRATCH_MKL: RefCell<(Vec<bf16>, Vec<bf16>, Vec<f32>)> =
        const { RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The first `len` elements of a scratch buffer, grown if needed.
fn grow<E: Copy + Default>(v: &mut Vec<E>, len: usize) -> &mut [E] {
    if v.len() < len {
        v.resize(len, E::default());
    }
    &mut v[..len]
}

fn bits(x: &[bf16]) -> &[u16] {
    bytemuck::cast_slice(x)
}

/// bf16 tiles on oneMKL: A and B as they are, C through f32 (read only
/// when beta != 0), rounded once.
fn gemm_mkl_bf16(
    s: Shape,
    batch: usize,
    alpha: f32,
    a: &[bf16],
    b: &[bf16],
    beta: f32,
    c: &mut [bf16],
) {
    let Shape { m, n, k, .. } = s;
    let lib = mkl::mkl().expect("the bf16 backend is oneMKL only once it loaded");
    SCRATCH_MKL.with_borrow_mut(|(_, _, c32)| {
        let c32 = grow(c32, m * n);
        for i in 0..batch {
            let ci = &mut c[i * m * n..][..m * n];
            if beta != 0.0 {
                cast(ci, c32);
            }
            let (ai, bi) = (&a[i * m * k..][..m * k], &b[i * k * n..][..k * n]);
            lib.gemm_bf16(
                s.trans_a,
                s.trans_b,
                (m, n, k),
                alpha,
                bits(ai),
                bits(bi),
                beta,
                c32,
            );
            cast(c32, ci);
        }
    });
}

/// f32 tiles in fp32_fast_bf16 on oneMKL: A and B rounded to bf16, C f32.
fn gemm_mkl_f32_in(
    s: Shape,
    batch: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    let Shape { m, n, k, .. } = s;
    let lib = mkl::mkl().expect("the bf16 backend is oneMKL only once it loaded");
    SCRATCH_MKL.with_borrow_mut(|(a16, b16, _)| {
        let (a16, b16) = (grow(a16, m * k), grow(b16, k * n));
        for i in 0..batch {
            cast(&a[i * m * k..][..m * k], a16);
            cast(&b[i * k * n..][..k * n], b16);
            let ci = &mut c[i * m * n..][..m * n];
            lib.gemm_bf16(
                s.trans_a,
                s.trans_b,
                (m, n, k),
                alpha,
                bits(a16),
                bits(b16),
                beta,
                ci,
            );
        }
    });
}
