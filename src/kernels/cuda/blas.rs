//! GEMM on one device tile through cuBLAS, and GEMM with a fused bias (and
//! activation) through cuBLASLt epilogues. Same semantics as the CPU kernel
//! [`crate::kernels::cpu::gemm::gemm`]: for every batch index `i`,
//!
//! ```text
//! C_i = alpha * op(A_i) @ op(B_i) + beta * C_i            (gemm)
//! C_i = act(alpha * op(A_i) @ op(B_i) + bias)             (gemm_bias_act)
//! ```
//!
//! row-major, `op(A_i)` `m x k`, `op(B_i)` `k x n`, `C_i` `m x n`, batches
//! contiguous with strides `m*k`, `k*n`, `m*n`; `bias` has `n` elements,
//! added to every row. `beta == 0` never reads C, and `k == 0` or
//! `alpha == 0` never reads A or B (C = beta * C, by our own fill/scale
//! kernels: cuBLAS is not asked to handle those corners).
//! [`gemm_strided`] is the general form: each operand at an explicit offset,
//! leading dimension and batch stride (the heads of an attention tile as
//! one batched call), and an f32 C for bf16/f16 inputs.
//!
//! Row-major into column-major: the bytes of a row-major `r x c` matrix are
//! the column-major `c x r` matrix, its transpose. So row-major
//! `C = op(A) op(B)` is column-major `C^T = op(B)^T op(A)^T`: B goes first,
//! A second, `m' = n`, `n' = m`, each operand keeps its own transpose flag,
//! and no data moves. The leading dimension of each column-major operand is
//! the row length of its row-major storage: `ld(B) = trans_b ? k : n`,
//! `ld(A) = trans_a ? m : k`, `ld(C) = n`.
//!
//! Compute modes ([`GemmCompute`]) per storage dtype:
//!
//! ```text
//! f32:      Default CUBLAS_COMPUTE_32F, Tf32 .._32F_FAST_TF32,
//!           Fp16 .._32F_FAST_16F, Bf16 .._32F_FAST_16BF   (alpha, beta f32)
//! f64:      CUBLAS_COMPUTE_64F whatever the mode            (alpha, beta f64)
//! bf16/f16: CUBLAS_COMPUTE_32F (tensor cores, f32 accumulation; alpha, beta f32)
//! ```
//!
//! Everything here only enqueues work on the device's stream.

use crate::dtype::{DType, Element, GemmCompute};
use crate::error::{arg_err, shape_err, Result};
use crate::kernels::cuda::context::DevElement;
use crate::kernels::cuda::context::Gpu;
use crate::kernels::cuda::cuda_err;
use cudarc::cublas::{result as blas_result, sys as blas_sys};
use cudarc::cublaslt::{result as lt_result, sys as lt_sys};
use cudarc::driver::{CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DeviceRepr};
use std::ffi::c_void;
use std::mem::size_of;

fn drv(e: cudarc::driver::DriverError) -> crate::error::Error {
    cuda_err(format!("driver: {e}"))
}

fn blas_err(what: &str, e: blas_result::CublasError) -> crate::error::Error {
    cuda_err(format!("cuBLAS {what}: {e}"))
}

fn lt_err(what: &str, e: lt_result::CublasError) -> crate::error::Error {
    cuda_err(format!("cuBLASLt {what}: {e}"))
}

/// The cuBLAS data type and compute type of a storage dtype in a mode.
pub fn cublas_types(
    dtype: DType,
    compute: GemmCompute,
) -> (blas_sys::cudaDataType, blas_sys::cublasComputeType_t) {
    use blas_sys::cublasComputeType_t as C;
    use blas_sys::cudaDataType_t as D;
    match dtype {
        DType::F32 => (
            D::CUDA_R_32F,
            match compute {
                GemmCompute::Default => C::CUBLAS_COMPUTE_32F,
                GemmCompute::Tf32 => C::CUBLAS_COMPUTE_32F_FAST_TF32,
                GemmCompute::Fp16 => C::CUBLAS_COMPUTE_32F_FAST_16F,
                GemmCompute::Bf16 => C::CUBLAS_COMPUTE_32F_FAST_16BF,
            },
        ),
        DType::F64 => (D::CUDA_R_64F, C::CUBLAS_COMPUTE_64F),
        DType::BF16 => (D::CUDA_R_16BF, C::CUBLAS_COMPUTE_32F),
        DType::F16 => (D::CUDA_R_16F, C::CUBLAS_COMPUTE_32F),
    }
}

/// The same mapping with cuBLASLt's own copies of the enums, plus the scale
/// (alpha, beta) type.
fn lt_types(
    dtype: DType,
    compute: GemmCompute,
) -> (
    lt_sys::cudaDataType,
    lt_sys::cublasComputeType_t,
    lt_sys::cudaDataType,
) {
    use lt_sys::cublasComputeType_t as C;
    use lt_sys::cudaDataType_t as D;
    match dtype {
        DType::F32 => (
            D::CUDA_R_32F,
            match compute {
                GemmCompute::Default => C::CUBLAS_COMPUTE_32F,
                GemmCompute::Tf32 => C::CUBLAS_COMPUTE_32F_FAST_TF32,
                GemmCompute::Fp16 => C::CUBLAS_COMPUTE_32F_FAST_16F,
                GemmCompute::Bf16 => C::CUBLAS_COMPUTE_32F_FAST_16BF,
            },
            D::CUDA_R_32F,
        ),
        DType::F64 => (D::CUDA_R_64F, C::CUBLAS_COMPUTE_64F, D::CUDA_R_64F),
        DType::BF16 => (D::CUDA_R_16BF, C::CUBLAS_COMPUTE_32F, D::CUDA_R_32F),
        DType::F16 => (D::CUDA_R_16F, C::CUBLAS_COMPUTE_32F, D::CUDA_R_32F),
    }
}

/// alpha and beta in the scale type: f64 for f64 storage, else f32. They
/// live on the host (the default pointer mode), read during the call.
enum Scalars {
    F32([f32; 2]),
    F64([f64; 2]),
}

impl Scalars {
    fn new(dtype: DType, alpha: f64, beta: f64) -> Scalars {
        match dtype {
            DType::F64 => Scalars::F64([alpha, beta]),
            _ => Scalars::F32([alpha as f32, beta as f32]),
        }
    }
    fn ptr(&self, i: usize) -> *const c_void {
        match self {
            Scalars::F32(s) => &s[i] as *const f32 as *const c_void,
            Scalars::F64(s) => &s[i] as *const f64 as *const c_void,
        }
    }
}

/// The column-major problem `C^T = op(B)^T op(A)^T` of a row-major one (see
/// the module doc), in cuBLAS's 32-bit sizes: operand 1 is B, operand 2 is A.
struct ColMajor {
    m: i32,
    n: i32,
    k: i32,
    trans1: bool,
    ld1: i32,
    stride1: i64,
    trans2: bool,
    ld2: i32,
    stride2: i64,
    ldc: i32,
    stride_c: i64,
    batch: i32,
}

fn int(op: &str, what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| {
        shape_err(
            op,
            format!("{what} = {v} exceeds cuBLAS's 32-bit sizes (use smaller tiles)"),
        )
    })
}

#[allow(clippy::too_many_arguments)]
fn col_major(
    op: &str,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
) -> Result<ColMajor> {
    Ok(ColMajor {
        m: int(op, "n", n)?,
        n: int(op, "m", m)?,
        k: int(op, "k", k)?,
        trans1: trans_b,
        ld1: int(op, "ld(B)", if trans_b { k } else { n })?,
        stride1: (k * n) as i64,
        trans2: trans_a,
        ld2: int(op, "ld(A)", if trans_a { m } else { k })?,
        stride2: (m * k) as i64,
        ldc: int(op, "n", n)?,
        stride_c: (m * n) as i64,
        batch: int(op, "batch", batch)?,
    })
}

fn check_len(op: &str, what: &str, want: usize, got: usize) -> Result<()> {
    if want == got {
        Ok(())
    } else {
        Err(shape_err(
            op,
            format!("{what} has {got} elements, expected {want}"),
        ))
    }
}

#[allow(clippy::too_many_arguments)]
fn check_shapes(
    op: &str,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    a: usize,
    b: usize,
    c: usize,
) -> Result<()> {
    check_len(op, "A", m * k * batch, a)?;
    check_len(op, "B", k * n * batch, b)?;
    check_len(op, "C", m * n * batch, c)
}

fn op_t(trans: bool) -> blas_sys::cublasOperation_t {
    if trans {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// The math mode every call sets: the default math (no TF32 unless the
/// compute type asks for it, so COMPUTE_32F is true fp32) plus
/// DISALLOW_REDUCED_PRECISION_REDUCTION, so split-K partial sums of bf16/f16
/// outputs stay in f32 (DESIGN.md: f32 accumulation in every reduction).
/// Set on every call (a host-side field) rather than trusted from whoever
/// made the handle.
fn set_math_mode(handle: blas_sys::cublasHandle_t) -> Result<()> {
    // SAFETY: the handle is live (owned by the device) and only this
    // device's worker uses it.
    unsafe {
        blas_sys::cublasSetMathMode(
            handle,
            blas_sys::cublasMath_t::CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION,
        )
        .result()
    }
    .map_err(|e| blas_err("cublasSetMathMode", e))
}

/// `C_i = alpha * op(A_i) @ op(B_i) + beta * C_i` for `i` in `0..batch`
/// (see the module doc), enqueued on `dev`'s stream.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: DevElement>(
    dev: &Gpu,
    compute: GemmCompute,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
    a: &CudaView<T>,
    b: &CudaView<T>,
    beta: f64,
    c: &mut CudaViewMut<T>,
) -> Result<()> {
    let op = "cuda.gemm";
    check_shapes(op, m, n, k, batch, a.len(), b.len(), c.len())?;
    if c.is_empty() {
        return Ok(());
    }
    if k == 0 || alpha == 0.0 {
        // As the CPU kernel: C = beta * C, zeros without reading C when beta is 0.
        return if beta == 0.0 {
            super::elementwise::fill(dev, 0.0, c)
        } else if beta != 1.0 {
            super::elementwise::scale(dev, beta, c)
        } else {
            Ok(())
        };
    }
    let p = col_major(op, trans_a, trans_b, m, n, k, batch)?;
    let blas = dev.blas()?;
    dev.ctx.bind_to_thread().map_err(drv)?;
    let handle = blas.raw();
    let (dt, ct) = cublas_types(T::DTYPE, compute);
    let s = Scalars::new(T::DTYPE, alpha, beta);
    let stream = &dev.stream;
    let (pa, _ra) = a.device_ptr(stream);
    let (pb, _rb) = b.device_ptr(stream);
    let (pc, _rc) = c.device_ptr_mut(stream);
    set_math_mode(handle)?;
    // No cublasSetWorkspace: cuBLAS gives each handle a default workspace
    // sized for the architecture, and a handle is used by one stream only.
    //
    // SAFETY: A has m*k*batch, B k*n*batch and C m*n*batch elements
    // (checked above), so with the column-major sizes, leading dimensions
    // and batch strides of `col_major` (see the module doc) every access is
    // in bounds; the pointers are device pointers of live views; alpha and
    // beta point to host scalars of the scale type of `ct`, alive during
    // the call; C does not alias A or B (a written operand is borrowed
    // exclusively by the task).
    unsafe {
        blas_result::gemm_strided_batched_ex(
            handle,
            op_t(p.trans1),
            op_t(p.trans2),
            p.m,
            p.n,
            p.k,
            s.ptr(0),
            pb as *const c_void,
            dt,
            p.ld1,
            p.stride1,
            pa as *const c_void,
            dt,
            p.ld2,
            p.stride2,
            s.ptr(1),
            pc as *mut c_void,
            dt,
            p.ldc,
            p.stride_c,
            p.batch,
            ct,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| blas_err("cublasGemmStridedBatchedEx", e))
}

/// Where one row-major operand of [`gemm_strided`] lives in its buffer:
/// the matrix of batch `i` starts `offset + i * stride` elements in, its
/// rows are `ld` elements apart, and `trans` says whether it enters the
/// product transposed (as in [`gemm`]; always false for C). One head of a
/// `[t, h, hs]` tile is `Strided::new(head0_offset, h * hs, hs)` over the
/// heads: row stride `h * hs`, batch stride `hs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strided {
    pub offset: usize,
    pub ld: usize,
    pub stride: usize,
    pub trans: bool,
}

impl Strided {
    pub fn new(offset: usize, ld: usize, stride: usize) -> Strided {
        Strided {
            offset,
            ld,
            stride,
            trans: false,
        }
    }
    /// The same operand, entering the product transposed.
    pub fn t(self) -> Strided {
        Strided {
            trans: true,
            ..self
        }
    }
    /// One past the last element touched by `batch` stored `rows x cols`
    /// matrices (`None` on overflow).
    fn end(&self, rows: usize, cols: usize, batch: usize) -> Option<usize> {
        (batch - 1)
            .checked_mul(self.stride)?
            .checked_add((rows - 1).checked_mul(self.ld)?)?
            .checked_add(cols)?
            .checked_add(self.offset)
    }
}

/// Checks one operand of [`gemm_strided`]: `rows x cols` as stored (before
/// op), every batch inside a buffer of `len` elements, rows not overlapping.
fn check_strided(
    op: &str,
    what: &str,
    s: &Strided,
    (rows, cols, batch): (usize, usize, usize),
    len: usize,
) -> Result<()> {
    if s.ld < cols {
        return Err(shape_err(
            op,
            format!("{what}: rows of {cols} elements {} apart overlap", s.ld),
        ));
    }
    match s.end(rows, cols, batch) {
        Some(end) if end <= len => Ok(()),
        _ => Err(shape_err(
            op,
            format!(
                "{what}: {batch} x [{rows}, {cols}] at offset {} (ld {}, stride {}) \
                 overruns its {len} elements",
                s.offset, s.ld, s.stride
            ),
        )),
    }
}

/// `C_i = alpha * op(A_i) @ op(B_i) + beta * C_i` for `i` in `0..batch`,
/// row-major, each operand at an explicit offset, row stride (leading
/// dimension) and batch stride ([`Strided`]), so the heads of a tile are
/// one batched call and no operand is copied. `dims` = `[m, n, k, batch]`:
/// `op(A_i)` is `m x k`, `op(B_i)` `k x n`, `C_i` `m x n`. A and B share the
/// storage dtype `T`; C is `T` or, for bf16/f16 inputs, f32 (cuBLAS's
/// mixed GemmEx: f32 products accumulated and written in f32). The compute
/// type is [`cublas_types`] of `T` in mode `compute`; the swap into
/// column-major is the module doc's. `beta == 0` does not read C.
///
/// Unlike [`gemm`], empty products are the caller's business: every size
/// must be at least 1 (an error otherwise). The batches of C must not
/// overlap: either stacked (`stride >= (m - 1) * ld + n`) or side by side
/// within the rows (`stride >= n`, `(batch - 1) * stride + n <= ld`).
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided<T: Element + DeviceRepr, C: Element + DeviceRepr>(
    dev: &Gpu,
    compute: GemmCompute,
    [m, n, k, batch]: [usize; 4],
    alpha: f64,
    (a, la): (&CudaView<T>, Strided),
    (b, lb): (&CudaView<T>, Strided),
    beta: f64,
    (c, lc): (&mut CudaViewMut<C>, Strided),
) -> Result<()> {
    let op = "cuda.gemm_strided";
    let mixed_ok = C::DTYPE == DType::F32 && matches!(T::DTYPE, DType::BF16 | DType::F16);
    if C::DTYPE != T::DTYPE && !mixed_ok {
        return Err(arg_err(
            op,
            format!("{} inputs with a {} output", T::DTYPE, C::DTYPE),
        ));
    }
    if m == 0 || n == 0 || k == 0 || batch == 0 {
        return Err(arg_err(
            op,
            format!("empty product (m={m} n={n} k={k} batch={batch})"),
        ));
    }
    if lc.trans {
        return Err(arg_err(op, "C cannot be transposed"));
    }
    let a_dims = if la.trans { (k, m) } else { (m, k) };
    let b_dims = if lb.trans { (n, k) } else { (k, n) };
    check_strided(op, "A", &la, (a_dims.0, a_dims.1, batch), a.len())?;
    check_strided(op, "B", &lb, (b_dims.0, b_dims.1, batch), b.len())?;
    check_strided(op, "C", &lc, (m, n, batch), c.len())?;
    let stacked = lc.stride >= (m - 1) * lc.ld + n;
    let side_by_side = lc.stride >= n && (batch - 1) * lc.stride + n <= lc.ld;
    if batch > 1 && !stacked && !side_by_side {
        return Err(shape_err(
            op,
            format!(
                "C: batches of [{m}, {n}] (ld {}) {} apart overlap",
                lc.ld, lc.stride
            ),
        ));
    }
    // Column-major C^T = op(B)^T op(A)^T: operand 1 is B, operand 2 is A.
    let (cm, cn, ck) = (int(op, "n", n)?, int(op, "m", m)?, int(op, "k", k)?);
    let (ld1, ld2, ldc) = (
        int(op, "ld(B)", lb.ld)?,
        int(op, "ld(A)", la.ld)?,
        int(op, "ld(C)", lc.ld)?,
    );
    let nb = int(op, "batch", batch)?;
    let stride =
        |s: &Strided| i64::try_from(s.stride).map_err(|_| shape_err(op, "batch stride above 2^63"));
    let (stride1, stride2, stride_c) = (stride(&lb)?, stride(&la)?, stride(&lc)?);
    let blas = dev.blas()?;
    dev.ctx.bind_to_thread().map_err(drv)?;
    let handle = blas.raw();
    let (dt, ct) = cublas_types(T::DTYPE, compute);
    let (dt_c, _) = cublas_types(C::DTYPE, compute);
    // The scale type follows the compute type: f64 only for COMPUTE_64F.
    let s = Scalars::new(T::DTYPE, alpha, beta);
    let stream = &dev.stream;
    let (pa, _ra) = a.device_ptr(stream);
    let (pb, _rb) = b.device_ptr(stream);
    let (pc, _rc) = c.device_ptr_mut(stream);
    let at = |p: u64, off: usize, size: usize| p + (off * size) as u64;
    let pa = at(pa, la.offset, size_of::<T>());
    let pb = at(pb, lb.offset, size_of::<T>());
    let pc = at(pc, lc.offset, size_of::<C>());
    set_math_mode(handle)?;
    // SAFETY: every batch of every operand lies inside its view and C's
    // rows and batches do not overlap (checked above against the stored
    // shapes: B is k x n row-major, i.e. column-major n x k with leading
    // dimension ld(B) >= n, or n x k transposed with ld(B) >= k; likewise
    // A; C^T is column-major n x m with ldc >= n), so cuBLAS's accesses are
    // in bounds; the pointers are device pointers of live views offset
    // within them; alpha and beta point to host scalars of the scale type
    // of `ct`, alive during the call; the (A/B, C) data types are a
    // combination cuBLAS supports for `ct` (same type, or 16-bit inputs
    // with f32 output under COMPUTE_32F, checked above); C does not alias
    // A or B (it is borrowed exclusively).
    unsafe {
        blas_result::gemm_strided_batched_ex(
            handle,
            op_t(lb.trans),
            op_t(la.trans),
            cm,
            cn,
            ck,
            s.ptr(0),
            pb as *const c_void,
            dt,
            ld1,
            stride1,
            pa as *const c_void,
            dt,
            ld2,
            stride2,
            s.ptr(1),
            pc as *mut c_void,
            dt_c,
            ldc,
            stride_c,
            nb,
            ct,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(|e| blas_err("cublasGemmStridedBatchedEx", e))
}

/// The epilogue of [`gemm_bias_act`]: what is applied to `A@B + bias`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BiasAct {
    /// `A@B + bias`.
    Bias,
    /// `gelu_tanh(A@B + bias)`: cuBLASLt's GELU epilogue is the tanh
    /// approximation (`0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`).
    BiasGeluTanh,
    /// `max(A@B + bias, 0)`.
    BiasRelu,
}

impl BiasAct {
    fn epilogue(self) -> lt_sys::cublasLtEpilogue_t {
        match self {
            BiasAct::Bias => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            BiasAct::BiasGeluTanh => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
            BiasAct::BiasRelu => lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_RELU_BIAS,
        }
    }
}

// cuBLASLt descriptors, destroyed on every exit path.
struct Layout(lt_sys::cublasLtMatrixLayout_t);
struct Desc(lt_sys::cublasLtMatmulDesc_t);
struct Pref(lt_sys::cublasLtMatmulPreference_t);

impl Drop for Layout {
    fn drop(&mut self) {
        // SAFETY: created by create_matrix_layout, destroyed once.
        let _ = unsafe { lt_result::destroy_matrix_layout(self.0) };
    }
}
impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_desc, destroyed once.
        let _ = unsafe { lt_result::destroy_matmul_desc(self.0) };
    }
}
impl Drop for Pref {
    fn drop(&mut self) {
        // SAFETY: created by create_matmul_pref, destroyed once.
        let _ = unsafe { lt_result::destroy_matmul_pref(self.0) };
    }
}

impl Layout {
    /// A column-major `rows x cols` matrix with leading dimension `ld`,
    /// `batch` of them `stride` elements apart.
    fn new(
        dt: lt_sys::cudaDataType,
        rows: i32,
        cols: i32,
        ld: i32,
        batch: i32,
        stride: i64,
    ) -> Result<Layout> {
        let l = Layout(
            lt_result::create_matrix_layout(dt, rows as u64, cols as u64, ld as i64)
                .map_err(|e| lt_err("cublasLtMatrixLayoutCreate", e))?,
        );
        if batch > 1 {
            use lt_sys::cublasLtMatrixLayoutAttribute_t as A;
            // SAFETY: each attribute gets a value of its documented type
            // (int32 count, int64 stride in elements) and size.
            unsafe {
                lt_result::set_matrix_layout_attribute(
                    l.0,
                    A::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                    &batch as *const i32 as *const c_void,
                    size_of::<i32>(),
                )
                .map_err(|e| lt_err("batch count", e))?;
                lt_result::set_matrix_layout_attribute(
                    l.0,
                    A::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    &stride as *const i64 as *const c_void,
                    size_of::<i64>(),
                )
                .map_err(|e| lt_err("batch stride", e))?;
            }
        }
        Ok(l)
    }
}

impl Desc {
    /// Sets one attribute to `v` (whose type must be the attribute's).
    ///
    /// # Safety
    /// `V` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<V>(&self, attr: lt_sys::cublasLtMatmulDescAttributes_t, v: &V) -> Result<()> {
        lt_result::set_matmul_desc_attribute(
            self.0,
            attr,
            v as *const V as *const c_void,
            size_of::<V>(),
        )
        .map_err(|e| lt_err(&format!("{attr:?}"), e))
    }
}

impl Pref {
    /// # Safety
    /// `V` must be the type cuBLASLt documents for `attr`.
    unsafe fn set<V>(
        &self,
        attr: lt_sys::cublasLtMatmulPreferenceAttributes_t,
        v: &V,
    ) -> Result<()> {
        lt_result::set_matmul_pref_attribute(
            self.0,
            attr,
            v as *const V as *const c_void,
            size_of::<V>(),
        )
        .map_err(|e| lt_err(&format!("{attr:?}"), e))
    }
}

/// The largest power of two up to 256 that divides `ptr` and, with several
/// batches, every batch's start: what cuBLASLt may assume of an operand.
/// (Its default assumption is 256 bytes, which a batch stride of an odd
/// number of elements breaks.)
fn alignment(ptr: u64, stride_bytes: u64, batch: i32) -> u32 {
    let mut bits = ptr | 256;
    if batch > 1 {
        bits |= stride_bytes;
    }
    1u32 << bits.trailing_zeros().min(8)
}

/// cuBLASLt workspace: NVIDIA's recommended sizes (32 MiB from Hopper on,
/// 4 MiB before). The handle's own workspace in cudarc is private, so each
/// call takes a stream-ordered allocation, freed after the matmul that uses
/// it (cuMemFreeAsync on the same stream).
fn lt_workspace_bytes(arch: &str) -> usize {
    let major: u32 = arch
        .strip_prefix("sm_")
        .and_then(|s| s.get(..s.len().saturating_sub(1)))
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    if major >= 9 {
        32 << 20
    } else {
        4 << 20
    }
}

/// `C_i = act(alpha * op(A_i) @ op(B_i) + bias)` for `i` in `0..batch`, the
/// bias (`n` elements, one per column of the row-major C) added to every
/// row of every batch, by one cuBLASLt matmul with a fused epilogue.
///
/// cuBLASLt conventions, as used here: matrices are column-major (`ORDER_COL`,
/// the default), so the problem is the swapped `C^T = op(B)^T op(A)^T` of
/// the module doc, `m' = n` rows by `n' = m` columns. The epilogue's bias
/// vector has one element per *row* of the column-major D, `m' = n`
/// elements, broadcast along D's columns: exactly our per-column bias of the
/// row-major C. Its batch stride is 0 (the same bias for every batch), and
/// its type is D's (bf16 bias for bf16 C, f32 for f32). Epilogues add the
/// bias to the f32 (or f64) accumulator and round to C's type once.
///
/// `k >= 1` and `alpha != 0` (the caller routes those corners elsewhere).
/// When cuBLASLt's heuristic has no algorithm for the problem (an unusual
/// shape, alignment or epilogue on some GPU), it is done unfused instead:
/// bias fill, GEMM with beta = 1, activation in place, as the CPU does.
#[allow(clippy::too_many_arguments)]
pub fn gemm_bias_act<T: DevElement>(
    dev: &Gpu,
    compute: GemmCompute,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
    a: &CudaView<T>,
    b: &CudaView<T>,
    bias: &CudaView<T>,
    act: BiasAct,
    c: &mut CudaViewMut<T>,
) -> Result<()> {
    let fused = gemm_bias_act_fused(
        dev, compute, trans_a, trans_b, m, n, k, batch, alpha, a, b, bias, act, c,
    )?;
    if fused {
        return Ok(());
    }
    super::bias::bias_fill::<T>(dev, bias, batch * m, n, c)?;
    gemm::<T>(
        dev, compute, trans_a, trans_b, m, n, k, batch, alpha, a, b, 1.0, c,
    )?;
    let name = match act {
        BiasAct::Bias => return Ok(()),
        BiasAct::BiasGeluTanh => "gelu_fwd",
        BiasAct::BiasRelu => "relu_fwd",
    };
    activation_in_place::<T>(dev, name, c)
}

/// `y = act(y)` with activation.cu's `<name>_<T>(n, x, y)` given y twice
/// (elementwise: each thread reads its element before writing it).
fn activation_in_place<T: DevElement>(dev: &Gpu, name: &str, y: &mut CudaViewMut<T>) -> Result<()> {
    use crate::kernels::cuda::{grid_for, kernel_name, Module, ELEMENTWISE_BLOCK};
    use cudarc::driver::{LaunchConfig, PushKernelArg};
    let f = dev
        .kernels
        .func(Module::Activation, &kernel_name(name, &[T::DTYPE]))?;
    let n = y.len();
    let (p, _guard) = y.device_ptr_mut(&dev.stream);
    let cfg = LaunchConfig {
        grid_dim: (grid_for(n, ELEMENTWISE_BLOCK), 1, 1),
        block_dim: (ELEMENTWISE_BLOCK, 1, 1),
        shared_mem_bytes: 0,
    };
    let mut b = dev.stream.launch_builder(&f);
    b.arg(&n).arg(&p).arg(&p);
    // SAFETY: `<name>_<T>(usize, const T*, T*)` with both pointers at y's n
    // elements; the kernel reads x[i] before writing y[i] in the same thread.
    unsafe { b.launch(cfg) }.map_err(drv)?;
    Ok(())
}

/// The fused cuBLASLt matmul of `gemm_bias_act`; Ok(false) when the
/// heuristic finds no algorithm (nothing was launched).
#[allow(clippy::too_many_arguments)]
fn gemm_bias_act_fused<T: DevElement>(
    dev: &Gpu,
    compute: GemmCompute,
    trans_a: bool,
    trans_b: bool,
    m: usize,
    n: usize,
    k: usize,
    batch: usize,
    alpha: f64,
    a: &CudaView<T>,
    b: &CudaView<T>,
    bias: &CudaView<T>,
    act: BiasAct,
    c: &mut CudaViewMut<T>,
) -> Result<bool> {
    let op = "cuda.gemm_bias_act";
    check_shapes(op, m, n, k, batch, a.len(), b.len(), c.len())?;
    check_len(op, "bias", n, bias.len())?;
    if c.is_empty() {
        return Ok(true);
    }
    if k == 0 || alpha == 0.0 {
        return Err(crate::error::arg_err(
            op,
            "an empty contraction (k == 0 or alpha == 0) has no cuBLASLt path: use bias + activation",
        ));
    }
    let p = col_major(op, trans_a, trans_b, m, n, k, batch)?;
    let lt = dev.blaslt()?;
    dev.ctx.bind_to_thread().map_err(drv)?;
    let handle = lt.raw();
    let (dt, ct, st) = lt_types(T::DTYPE, compute);
    let esize = T::DTYPE.size() as u64;

    // Layouts describe the stored matrices (before op), column-major:
    // operand 1 (B) is op'd into `m' x k`, so it is stored `k x m'` when
    // transposed and `m' x k` when not; operand 2 (A) is op'd into
    // `k x n'`, stored `n' x k` or `k x n'`.
    let (r1, c1) = if p.trans1 { (p.k, p.m) } else { (p.m, p.k) };
    let (r2, c2) = if p.trans2 { (p.n, p.k) } else { (p.k, p.n) };
    let l1 = Layout::new(dt, r1, c1, p.ld1, p.batch, p.stride1)?;
    let l2 = Layout::new(dt, r2, c2, p.ld2, p.batch, p.stride2)?;
    let ld = Layout::new(dt, p.m, p.n, p.ldc, p.batch, p.stride_c)?;

    let desc = Desc(
        lt_result::create_matmul_desc(ct, st).map_err(|e| lt_err("cublasLtMatmulDescCreate", e))?,
    );
    let stream = &dev.stream;
    let (pa, _ra) = a.device_ptr(stream);
    let (pb, _rb) = b.device_ptr(stream);
    let (pbias, _rbias) = bias.device_ptr(stream);
    let (pc, _rc) = c.device_ptr_mut(stream);
    {
        use lt_sys::cublasLtMatmulDescAttributes_t as A;
        // cublasOperation_t values: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 (int32).
        let (t1, t2) = (p.trans1 as i32, p.trans2 as i32);
        let bias_stride: i64 = 0;
        // SAFETY: every value has its attribute's documented type: int32
        // operations, a cublasLtEpilogue_t (uint32), a device pointer
        // (void*, 8 bytes) and an int64 stride.
        unsafe {
            desc.set(A::CUBLASLT_MATMUL_DESC_TRANSA, &t1)?;
            desc.set(A::CUBLASLT_MATMUL_DESC_TRANSB, &t2)?;
            desc.set(A::CUBLASLT_MATMUL_DESC_EPILOGUE, &act.epilogue())?;
            desc.set(A::CUBLASLT_MATMUL_DESC_BIAS_POINTER, &pbias)?;
            desc.set(A::CUBLASLT_MATMUL_DESC_BIAS_BATCH_STRIDE, &bias_stride)?;
        }
    }

    let ws_bytes = lt_workspace_bytes(&dev.arch);
    // SAFETY: the workspace is scratch: cuBLASLt never reads what it did
    // not write, so it need not be initialised.
    let ws = unsafe { stream.alloc::<u8>(ws_bytes) }.map_err(drv)?;
    let (pws, _rws) = ws.device_ptr(stream);

    let pref = Pref(lt_result::create_matmul_pref().map_err(|e| lt_err("preference", e))?);
    {
        use lt_sys::cublasLtMatmulPreferenceAttributes_t as P;
        let ws64 = ws_bytes as u64;
        let al1 = alignment(pb, p.stride1 as u64 * esize, p.batch);
        let al2 = alignment(pa, p.stride2 as u64 * esize, p.batch);
        let alc = alignment(pc, p.stride_c as u64 * esize, p.batch);
        // SAFETY: uint64 workspace bytes and uint32 alignments, as documented.
        unsafe {
            pref.set(P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws64)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al1)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al2)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alc)?;
            pref.set(P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alc)?;
        }
    }

    // SAFETY: the descriptors are live; the layouts describe exactly the
    // buffers passed below (checked lengths, see `gemm`).
    let heur = match unsafe {
        lt_result::get_matmul_algo_heuristic(handle, desc.0, l1.0, l2.0, ld.0, ld.0, pref.0)
    } {
        Ok(h) => h,
        // cudarc's reading of "zero algorithms returned".
        Err(e) if e.0 == lt_sys::cublasStatus_t::CUBLAS_STATUS_NOT_SUPPORTED => return Ok(false),
        Err(e) => {
            return Err(lt_err(
                &format!(
                    "heuristic for {:?} {:?} epilogue {act:?} (m={m} n={n} k={k} batch={batch})",
                    T::DTYPE,
                    compute
                ),
                e,
            ))
        }
    };

    // beta = 0: C is not read, so C and D may both be the output (same layout).
    let s = Scalars::new(T::DTYPE, alpha, 0.0);
    // SAFETY: as for the heuristic; alpha/beta are host scalars of the scale
    // type `st`; the workspace holds `ws_bytes` and lives (stream-ordered
    // free on drop) until after this matmul; the algorithm came from the
    // heuristic for these descriptors.
    unsafe {
        lt_result::matmul(
            handle,
            desc.0,
            s.ptr(0),
            s.ptr(1),
            pb as *const c_void,
            l1.0,
            pa as *const c_void,
            l2.0,
            pc as *const c_void,
            ld.0,
            pc as *mut c_void,
            ld.0,
            &heur.algo,
            pws as *mut c_void,
            ws_bytes,
            stream.cu_stream() as lt_sys::cudaStream_t,
        )
    }
    .map_err(|e| lt_err("cublasLtMatmul", e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_conventions() {
        use blas_sys::cublasComputeType_t as C;
        assert_eq!(
            cublas_types(DType::F32, GemmCompute::Default).1,
            C::CUBLAS_COMPUTE_32F
        );
        assert_eq!(
            cublas_types(DType::F32, GemmCompute::Tf32).1,
            C::CUBLAS_COMPUTE_32F_FAST_TF32
        );
        assert_eq!(
            cublas_types(DType::F64, GemmCompute::Tf32).1,
            C::CUBLAS_COMPUTE_64F
        );
        assert_eq!(
            cublas_types(DType::BF16, GemmCompute::Fp16).1,
            C::CUBLAS_COMPUTE_32F
        );
        // Row-major 2x3 @ 3x4 is column-major 4x2 = (4x3) (3x2).
        let p = col_major("t", false, false, 2, 4, 3, 1).unwrap();
        assert_eq!((p.m, p.n, p.k, p.ld1, p.ld2, p.ldc), (4, 2, 3, 4, 3, 4));
        let p = col_major("t", true, true, 2, 4, 3, 5).unwrap();
        assert_eq!(
            (p.ld1, p.ld2, p.stride1, p.stride2, p.stride_c),
            (3, 2, 12, 6, 8)
        );
        assert_eq!(alignment(0x1000, 12, 2), 4);
        assert_eq!(alignment(0x1000, 12, 1), 256);
        assert_eq!(lt_workspace_bytes("sm_90"), 32 << 20);
        assert_eq!(lt_workspace_bytes("sm_86"), 4 << 20);
        assert_eq!(lt_workspace_bytes("sm_100"), 32 << 20);
    }

    #[test]
    fn strided_bounds() {
        // Head 2 of 3 (hs 4) of rows 5..8 of a [8, 3, 4] tile: the last
        // element is (7, 2, 3), index 95.
        let s = Strided::new(5 * 12 + 2 * 4, 12, 4);
        assert_eq!(s.end(3, 4, 1), Some(96));
        assert!(check_strided("t", "A", &s, (3, 4, 1), 96).is_ok());
        assert!(check_strided("t", "A", &s, (3, 4, 1), 95).is_err());
        // All three heads of rows 0..8 as one batch: ends at the tile's end.
        let s = Strided::new(0, 12, 4);
        assert_eq!(s.end(8, 4, 3), Some(96));
        assert!(check_strided("t", "A", &s, (8, 13, 1), 1 << 20).is_err());
        assert_eq!(Strided::new(usize::MAX, 1, 1).end(1, 1, 1), None);
        assert!(Strided::new(0, 1, 1).t().trans);
    }
}
