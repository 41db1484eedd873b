//! `gpt2rs.ops`: tensor operations. Each one checks its operands, submits
//! its tile tasks to the runtime and returns at once (asynchronous); the
//! output tensor (an argument, or a new one) is returned for chaining.
//! `python/gpt2rs/ops.py` re-exports these `op_*` functions as `gpt2rs.ops.*`.

use super::error::guard;
use super::tensor::{arg_error, PyTensor};
use crate::ops::{self, GemmSpec};
use pyo3::prelude::*;

/// Submits C = alpha * op(A) @ op(B) + beta * C over tiled tensors.
///
/// Shapes (row-major, `batch_ndim` leading batch axes, `ndim` contracted axes):
/// A is [batch, M, K] ([batch, K, M] with trans_a), B is [batch, K, N]
/// ([batch, N, K] with trans_b), C is [batch, M, N]; each of batch/M/N/K may
/// be several axes. The K axes of A and B must be cut into the same tiles,
/// as must M of A and C, N of B and C, and the batch axes of all three.
///
/// Args:
///     a: the tensor A.
///     b: the tensor B.
///     c: the output C; None allocates it (batch and M tiled as in A, N as
///         in B), and then beta must be 0.
///     trans_a: use A transposed (its K axes before its M axes).
///     trans_b: use B transposed (its N axes before its K axes).
///     alpha: scale of the product.
///     beta: scale of the old C (C is not read when beta is 0).
///     ndim: number of contracted axes.
///     batch_ndim: number of leading batch axes.
///
/// Returns:
///     C.
#[pyfunction]
#[pyo3(
    signature = (a, b, c=None, *, trans_a=false, trans_b=false, alpha=1.0, beta=0.0, ndim=1, batch_ndim=0),
    text_signature = "(a, b, c=None, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, ndim=1, batch_ndim=0)"
)]
#[allow(clippy::too_many_arguments)]
pub fn op_gemm<'py>(
    py: Python<'py>,
    a: &Bound<'py, PyTensor>,
    b: &Bound<'py, PyTensor>,
    c: Option<Bound<'py, PyTensor>>,
    trans_a: bool,
    trans_b: bool,
    alpha: f64,
    beta: f64,
    ndim: usize,
    batch_ndim: usize,
) -> PyResult<Bound<'py, PyTensor>> {
    let spec = GemmSpec {
        trans_a,
        trans_b,
        alpha,
        beta,
        ndim,
        batch_ndim,
    };
    let (pa, pb) = (a.get(), b.get());
    let c = match c {
        Some(c) => c,
        None => {
            if beta != 0.0 {
                return Err(arg_error(
                    "gemm",
                    format!("beta = {beta} needs an existing c (c is None)"),
                ));
            }
            let (shape, tile) = guard(|| ops::gemm_output_grid(&spec, &pa.t, &pb.t))?;
            let rt = pa.rt.clone_ref(py);
            Bound::new(py, PyTensor::zeros_on(py, rt, &shape, &tile, pa.t.dtype)?)?
        }
    };
    let pc = c.get();
    py.detach(|| guard(|| ops::gemm(&spec, &pa.t, &pb.t, &pc.t)))?;
    Ok(c)
}

/// Submits y = alpha * x + beta * y, tile by tile.
///
/// Args:
///     x: input; same shape, tiling and dtype as y.
///     y: input and output (not read when beta is 0).
///     alpha: scale of x.
///     beta: scale of y.
///
/// Returns:
///     y.
#[pyfunction]
#[pyo3(signature = (x, y, *, alpha=1.0, beta=1.0), text_signature = "(x, y, *, alpha=1.0, beta=1.0)")]
pub fn op_add<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyTensor>,
    y: Bound<'py, PyTensor>,
    alpha: f64,
    beta: f64,
) -> PyResult<Bound<'py, PyTensor>> {
    let (px, py_) = (x.get(), y.get());
    py.detach(|| guard(|| ops::add(alpha, &px.t, beta, &py_.t)))?;
    Ok(y)
}

/// Submits y += alpha * x, tile by tile.
///
/// Args:
///     alpha: scale of x.
///     x: input; same shape, tiling and dtype as y.
///     y: input and output.
///
/// Returns:
///     y.
#[pyfunction]
#[pyo3(text_signature = "(alpha, x, y)")]
pub fn op_axpy<'py>(
    py: Python<'py>,
    alpha: f64,
    x: &Bound<'py, PyTensor>,
    y: Bound<'py, PyTensor>,
) -> PyResult<Bound<'py, PyTensor>> {
    let (px, py_) = (x.get(), y.get());
    py.detach(|| guard(|| ops::axpy(alpha, &px.t, &py_.t)))?;
    Ok(y)
}

/// Submits x *= alpha, tile by tile.
///
/// Args:
///     x: input and output.
///     alpha: the factor.
///
/// Returns:
///     x.
#[pyfunction]
#[pyo3(text_signature = "(x, alpha)")]
pub fn op_scale<'py>(
    py: Python<'py>,
    x: Bound<'py, PyTensor>,
    alpha: f64,
) -> PyResult<Bound<'py, PyTensor>> {
    let px = x.get();
    py.detach(|| guard(|| ops::scale(&px.t, alpha)))?;
    Ok(x)
}

/// Submits x = value everywhere.
///
/// Args:
///     x: output.
///     value: the value (rounded to x's dtype).
///
/// Returns:
///     x.
#[pyfunction]
#[pyo3(text_signature = "(x, value)")]
pub fn op_fill<'py>(
    py: Python<'py>,
    x: Bound<'py, PyTensor>,
    value: f64,
) -> PyResult<Bound<'py, PyTensor>> {
    let px = x.get();
    py.detach(|| guard(|| ops::fill(&px.t, value)))?;
    Ok(x)
}

/// Submits dst = src; the two may be tiled differently (re-tiling).
///
/// Args:
///     src: input; same shape and dtype as dst.
///     dst: output.
///
/// Returns:
///     dst.
#[pyfunction]
#[pyo3(text_signature = "(src, dst)")]
pub fn op_copy<'py>(
    py: Python<'py>,
    src: &Bound<'py, PyTensor>,
    dst: Bound<'py, PyTensor>,
) -> PyResult<Bound<'py, PyTensor>> {
    let (ps, pd) = (src.get(), dst.get());
    py.detach(|| guard(|| ops::copy(&ps.t, &pd.t)))?;
    Ok(dst)
}

/// Submits dst = src converted to dst's dtype; tilings may differ.
///
/// Args:
///     src: input; same shape as dst.
///     dst: output.
///
/// Returns:
///     dst.
#[pyfunction]
#[pyo3(text_signature = "(src, dst)")]
pub fn op_cast<'py>(
    py: Python<'py>,
    src: &Bound<'py, PyTensor>,
    dst: Bound<'py, PyTensor>,
) -> PyResult<Bound<'py, PyTensor>> {
    let (ps, pd) = (src.get(), dst.get());
    py.detach(|| guard(|| ops::cast(&ps.t, &pd.t)))?;
    Ok(dst)
}

/// A 0-d tensor on x's runtime, for a scalar result.
fn scalar_like<'py>(py: Python<'py>, x: &PyTensor) -> PyResult<Bound<'py, PyTensor>> {
    let rt = x.rt.clone_ref(py);
    Bound::new(py, PyTensor::zeros_on(py, rt, &[], &[], x.t.dtype)?)
}

/// Submits out = alpha * (sum of x over `axis`) + beta * out.
///
/// Args:
///     x: input.
///     axis: the axis to sum over (negative counts from the end); None sums
///         every element into a 0-d tensor.
///     alpha: scale of the sum.
///     out: the output: x's shape without `axis`, tiled as x on the other
///         axes (0-d when axis is None); None allocates it, and then beta
///         must be 0.
///     beta: scale of the old out.
///
/// Returns:
///     out.
#[pyfunction]
#[pyo3(
    signature = (x, axis=None, *, alpha=1.0, out=None, beta=0.0),
    text_signature = "(x, axis=None, *, alpha=1.0, out=None, beta=0.0)"
)]
pub fn op_sum<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyTensor>,
    axis: Option<i64>,
    alpha: f64,
    out: Option<Bound<'py, PyTensor>>,
    beta: f64,
) -> PyResult<Bound<'py, PyTensor>> {
    let px = x.get();
    if out.is_none() && beta != 0.0 {
        return Err(arg_error(
            "sum",
            format!("beta = {beta} needs an existing out (out is None)"),
        ));
    }
    let Some(axis) = axis else {
        let out = match out {
            Some(o) => o,
            None => scalar_like(py, px)?,
        };
        let po = out.get();
        py.detach(|| guard(|| ops::sum_all(&px.t, alpha, beta, &po.t)))?;
        return Ok(out);
    };
    let nd = px.t.ndim() as i64;
    if axis < -nd || axis >= nd {
        return Err(arg_error(
            "sum",
            format!("axis {axis} out of range for {nd} axes"),
        ));
    }
    let axis = axis.rem_euclid(nd.max(1)) as usize;
    let out = match out {
        Some(o) => o,
        None => {
            let g = &px.t.grid;
            let keep = |v: &[usize]| -> Vec<usize> {
                v.iter()
                    .enumerate()
                    .filter(|&(i, _)| i != axis)
                    .map(|(_, &s)| s)
                    .collect()
            };
            let shape = keep(&g.shape);
            let tile: Vec<isize> = keep(&g.tile).into_iter().map(|t| t as isize).collect();
            let rt = px.rt.clone_ref(py);
            Bound::new(py, PyTensor::zeros_on(py, rt, &shape, &tile, px.t.dtype)?)?
        }
    };
    let po = out.get();
    py.detach(|| guard(|| ops::sum(&px.t, axis, alpha, beta, &po.t)))?;
    Ok(out)
}

/// Submits out = alpha * ||x||_F + beta * out (Frobenius norm, computed
/// without overflow or underflow).
///
/// Args:
///     x: input.
///     alpha: scale of the norm.
///     out: a tensor of one element; None allocates a 0-d one, and then
///         beta must be 0.
///     beta: scale of the old out.
///
/// Returns:
///     out.
#[pyfunction]
#[pyo3(signature = (x, *, alpha=1.0, out=None, beta=0.0), text_signature = "(x, *, alpha=1.0, out=None, beta=0.0)")]
pub fn op_norm<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyTensor>,
    alpha: f64,
    out: Option<Bound<'py, PyTensor>>,
    beta: f64,
) -> PyResult<Bound<'py, PyTensor>> {
    let px = x.get();
    let out = match out {
        Some(o) => o,
        None if beta != 0.0 => {
            return Err(arg_error(
                "norm",
                format!("beta = {beta} needs an existing out (out is None)"),
            ))
        }
        None => scalar_like(py, px)?,
    };
    let po = out.get();
    py.detach(|| guard(|| ops::norm(&px.t, alpha, beta, &po.t)))?;
    Ok(out)
}
