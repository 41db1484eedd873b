//! f32 GEMM for a few rows of A (decoding: one row per sequence), reading B
//! where it lies, for AVX-512 CPUs.
//!
//! Decoding streams every weight once per token, so B's bytes per second
//! are its speed. The `gemm` crate packs B into panels on every call, which
//! at m = 8 costs more than the product (124M, batch 8, one worker: 10-12
//! GB/s of B with B hot in cache, 4.3 GB/s in a decoding run; 5 GB/s with
//! B transposed, the tied LM head). Here B is read once, in place:
//! - `B [k, n]` (weights as the linear layers store them): per panel of 32
//!   columns, the m x 32 accumulators stay in registers over all of k while
//!   the panel's rows stream in, prefetched `PREFETCH` rows ahead (rows lie
//!   `n` floats apart, a stride the hardware prefetchers do not follow).
//! - `B^T` stored `[n, k]` (the LM head): per pair of B rows, m x 2 dot
//!   products in 16 lanes; B streams in storage order.
//!
//! A plain-Rust version of these loops did not keep its accumulators in
//! registers (LLVM spilled or scalarized them: 2-5x slower than the crate),
//! hence the intrinsics; the `gemm` crate remains the path for everything
//! else and for CPUs without AVX-512. Each element is summed in a fixed
//! order for a given k (sequential FMAs for `B [k, n]`; 16 lanes, then
//! `_mm512_reduce_add_ps`, then the tail for `B^T`): results do not depend
//! on m, n, the worker or the schedule.

/// Rows of A up to which [`gemm_small`] runs (groups of 8; past 8 it
/// reads B twice and loses to the crate).
pub const MAX_ROWS: usize = 16;

/// Whether the CPU GEMM should take this path: AVX-512, f32, A not
/// transposed, and 2..=8 rows (1..=8 with B transposed; one row of
/// `B [k, n]` streams as fast through the crate, which then packs nothing).
pub fn wanted(trans_a: bool, trans_b: bool, m: usize) -> bool {
    let lo = if trans_b { 1 } else { 2 };
    !trans_a && (lo..=8).contains(&m) && available()
}

/// Whether [`gemm_small`] can run here (AVX-512 F).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `C = alpha * A @ op(B) + beta * C` for row-major `A [m, k]`, `B [k, n]`
/// (or `[n, k]` when `trans_b`), `C [m, n]`, m <= [`MAX_ROWS`]; `beta == 0`
/// never reads C.
///
/// # Panics
/// If [`available`] is false, m exceeds [`MAX_ROWS`], or a slice is short.
#[allow(clippy::too_many_arguments)]
pub fn gemm_small(
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    b: &[f32],
    beta: f32,
    c: &mut [f32],
) {
    assert!(available(), "gemm_small needs AVX-512 F");
    assert!(m <= MAX_ROWS, "gemm_small: m = {m} > {MAX_ROWS}");
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    #[cfg(target_arch = "x86_64")]
    {
        let mut i0 = 0;
        while i0 < m {
            let rows = (m - i0).min(8);
            let (a, c) = (&a[i0 * k..], &mut c[i0 * n..]);
            // SAFETY: AVX-512 F is present (asserted); the slices hold
            // `rows` rows of A (stride k) and C (stride n) from i0 and all
            // of B (asserted lengths), which bound every access below.
            unsafe {
                let (ap, bp, cp) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                avx512::rows(trans_b, rows, n, k, alpha, ap, bp, beta, cp)
            }
            i0 += rows;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// Rows of B prefetched ahead in `nn` (about DRAM latency / time per row).
    const PREFETCH: usize = 24;

    /// Dispatches on the row count so that the accumulators are a fixed array.
    macro_rules! by_rows {
        ($f:ident, $m:expr, $($arg:expr),*) => {
            match $m {
                8 => $f::<8>($($arg),*),
                7 => $f::<7>($($arg),*),
                6 => $f::<6>($($arg),*),
                5 => $f::<5>($($arg),*),
                4 => $f::<4>($($arg),*),
                3 => $f::<3>($($arg),*),
                2 => $f::<2>($($arg),*),
                _ => $f::<1>($($arg),*),
            }
        };
    }

    /// `C = alpha * acc + beta * C` on the lanes of `mask`.
    #[target_feature(enable = "avx512f")]
    unsafe fn store(c: *mut f32, mask: __mmask16, alpha: f32, acc: __m512, beta: f32) {
        let mut v = _mm512_mul_ps(_mm512_set1_ps(alpha), acc);
        if beta != 0.0 {
            let old = _mm512_maskz_loadu_ps(mask, c);
            v = _mm512_fmadd_ps(_mm512_set1_ps(beta), old, v);
        }
        _mm512_mask_storeu_ps(c, mask, v);
    }

    fn mask(w: usize) -> __mmask16 {
        if w >= 16 {
            0xffff
        } else {
            ((1u32 << w) - 1) as __mmask16
        }
    }

    /// `m` (1..=8) rows of A against B `[k, n]`, or B^T stored `[n, k]`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rows(
        trans_b: bool,
        m: usize,
        n: usize,
        k: usize,
        alpha: f32,
        a: *const f32,
        b: *const f32,
        beta: f32,
        c: *mut f32,
    ) {
        if trans_b {
            by_rows!(nt_rows, m, n, k, alpha, a, b, beta, c)
        } else {
            by_rows!(nn_rows, m, n, k, alpha, a, b, beta, c)
        }
    }

    /// R rows of A against B [k, n] in panels of 32 columns (the last
    /// panel masked).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn nn_rows<const R: usize>(
        n: usize,
        k: usize,
        alpha: f32,
        a: *const f32,
        b: *const f32,
        beta: f32,
        c: *mut f32,
    ) {
        let mut j = 0;
        while j < n {
            let (m0, m1) = (mask(n - j), mask((n - j).saturating_sub(16)));
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            for p in 0..k {
                // The row PREFETCH ahead, or the next panel's first rows.
                let q = p + PREFETCH;
                let ahead = if q < k {
                    q * n + j
                } else {
                    (q - k) * n + j + 32
                };
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(b.wrapping_add(ahead + 16) as *const i8);
                let row = b.add(p * n + j);
                let b0 = _mm512_maskz_loadu_ps(m0, row);
                let b1 = _mm512_maskz_loadu_ps(m1, row.wrapping_add(16));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let s = _mm512_set1_ps(*a.add(i * k + p));
                    acc[0] = _mm512_fmadd_ps(s, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(s, b1, acc[1]);
                }
            }
            for (i, acc) in acc.iter().enumerate() {
                let ci = c.add(i * n + j);
                store(ci, m0, alpha, acc[0], beta);
                if m1 != 0 {
                    store(ci.wrapping_add(16), m1, alpha, acc[1], beta);
                }
            }
            j += 32;
        }
    }

    /// R rows of A against the rows of B [n, k], two at a time: C[i, j] =
    /// dot(A_i, B_j) in 16 lanes (the k tail masked to zeros).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn nt_rows<const R: usize>(
        n: usize,
        k: usize,
        alpha: f32,
        a: *const f32,
        b: *const f32,
        beta: f32,
        c: *mut f32,
    ) {
        let kv = k - k % 16;
        let tail = mask(k % 16);
        let mut j = 0;
        while j < n {
            // The last odd row of B pairs with itself; its twin is dropped.
            let j1 = if j + 1 < n { j + 1 } else { j };
            let (r0, r1) = (b.add(j * k), b.add(j1 * k));
            let mut acc = [[_mm512_setzero_ps(); 2]; R];
            let mut p = 0;
            while p < k {
                let mk = if p < kv { 0xffff } else { tail };
                let b0 = _mm512_maskz_loadu_ps(mk, r0.add(p));
                let b1 = _mm512_maskz_loadu_ps(mk, r1.add(p));
                for (i, acc) in acc.iter_mut().enumerate() {
                    let av = _mm512_maskz_loadu_ps(mk, a.add(i * k + p));
                    acc[0] = _mm512_fmadd_ps(av, b0, acc[0]);
                    acc[1] = _mm512_fmadd_ps(av, b1, acc[1]);
                }
                p += 16;
            }
            for (i, acc) in acc.iter().enumerate() {
                for (t, &jj) in [j, j1].iter().enumerate().take(if j1 > j { 2 } else { 1 }) {
                    let s = _mm512_reduce_add_ps(acc[t]);
                    let cij = c.add(i * n + jj);
                    *cij = if beta == 0.0 {
                        alpha * s
                    } else {
                        alpha * s + beta * *cij
                    };
                }
            }
            j += 2;
        }
    }
}
