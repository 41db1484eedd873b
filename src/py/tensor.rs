//! `gpt2rs.Tensor`: a tiled tensor owned by Rust. numpy arrays cross the
//! boundary as raw row-major bytes: numpy (and ml_dtypes for bfloat16) does
//! the value conversion and makes the array contiguous, Rust cuts the bytes
//! into tiles (`Tensor::from_bytes`) or gathers them straight into a fresh
//! numpy array (`Tensor::read_into`).

use super::error::{guard, DTypeError, ShapeError};
use super::runtime::{runtime_or_default, PyRuntime};
use crate::error::Error;
use crate::ops;
use crate::tensor::Tensor;
use crate::DType;
use numpy::prelude::*;
use numpy::PyArray1;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};
use pyo3::Borrowed;

/// A dtype given as a name ("fp32", "bf16", "float32", ...) or anything
/// `numpy.dtype` accepts (np.float32, ml_dtypes.bfloat16, ...).
pub(crate) struct DTypeArg(pub DType);

impl<'a, 'py> FromPyObject<'a, 'py> for DTypeArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(DTypeArg(DType::parse(s.to_str()?)?));
        }
        let py = obj.py();
        let name: String = py
            .import("numpy")?
            .call_method1("dtype", (obj,))
            .and_then(|d| d.getattr("name")?.extract())
            .map_err(|_| {
                DTypeError::new_err(format!(
                    "unknown dtype {} (expected one of fp32, fp64, bf16, fp16)",
                    obj.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?;
        Ok(DTypeArg(DType::parse(&name)?))
    }
}

/// A tile shape: one int >= 1 per axis (a bare int for a 1-D tensor), or
/// None for one tile covering the whole tensor.
pub(crate) struct TileShapeArg(Option<Vec<isize>>);

impl<'a, 'py> FromPyObject<'a, 'py> for TileShapeArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_none() {
            return Ok(TileShapeArg(None));
        }
        if let Ok(t) = obj.extract::<isize>() {
            return Ok(TileShapeArg(Some(vec![t])));
        }
        if obj.cast::<PyString>().is_err() {
            if let Ok(v) = obj.extract::<Vec<isize>>() {
                return Ok(TileShapeArg(Some(v)));
            }
        }
        Err(PyTypeError::new_err(format!(
            "tile_shape must be a sequence of ints (one per axis), an int (1-D) or None, got {}",
            obj.repr()?
        )))
    }
}

impl TileShapeArg {
    /// The tile shape for a tensor of `shape`, its length checked.
    fn resolve(&self, op: &str, shape: &[usize]) -> PyResult<Vec<isize>> {
        match &self.0 {
            None => Ok(shape.iter().map(|&s| s.max(1) as isize).collect()),
            Some(t) if t.len() == shape.len() => Ok(t.clone()),
            Some(t) => Err(ShapeError::new_err(format!(
                "{op}: tile_shape {t:?} has {} entries but the tensor has {} axes (shape {shape:?})",
                t.len(),
                shape.len()
            ))),
        }
    }
}

/// A tensor shape: a sequence of ints >= 0 (or one int for 1-D).
struct ShapeArg(Vec<usize>);

impl<'a, 'py> FromPyObject<'a, 'py> for ShapeArg {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        let v: Vec<i64> = match obj.extract::<i64>() {
            Ok(n) => vec![n],
            Err(_) if obj.cast::<PyString>().is_err() => obj.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "shape must be a sequence of ints, got {}",
                    obj.repr().map(|r| r.to_string()).unwrap_or_default()
                ))
            })?,
            Err(_) => {
                return Err(PyTypeError::new_err(
                    "shape must be a sequence of ints, got a str",
                ))
            }
        };
        if v.iter().any(|&n| n < 0) {
            return Err(ShapeError::new_err(format!(
                "shape {v:?} has a negative size"
            )));
        }
        Ok(ShapeArg(v.into_iter().map(|n| n as usize).collect()))
    }
}

/// The numpy dtype of a storage type (bfloat16 is ml_dtypes').
fn numpy_dtype<'py>(py: Python<'py>, d: DType) -> PyResult<Bound<'py, PyAny>> {
    let np = py.import("numpy")?;
    match d {
        DType::BF16 => np.call_method1("dtype", (py.import("ml_dtypes")?.getattr("bfloat16")?,)),
        d => np.call_method1("dtype", (d.name().replace("fp", "float"),)),
    }
}

/// A tiled tensor: a shape cut into tiles of `tile_shape` (the last tile on
/// an axis may be smaller), each tile a data handle of the runtime. Operations
/// on it (gpt2rs.ops) are asynchronous; `to_numpy` waits for them.
///
/// Create one with `Tensor.from_numpy` or `Tensor.zeros`.
#[pyclass(name = "Tensor", module = "gpt2rs", frozen)]
pub struct PyTensor {
    pub(crate) t: Tensor,
    pub(crate) rt: Py<PyRuntime>,
}

impl PyTensor {
    /// A new tensor on the same runtime as `self`.
    pub(crate) fn sibling(&self, py: Python<'_>, t: Tensor) -> PyTensor {
        PyTensor {
            t,
            rt: self.rt.clone_ref(py),
        }
    }

    /// Zeros of `shape`/`tile` on `rt` (every new tensor of the bindings is made here).
    pub(crate) fn zeros_on(
        py: Python<'_>,
        rt: Py<PyRuntime>,
        shape: &[usize],
        tile: &[isize],
        dtype: DType,
    ) -> PyResult<PyTensor> {
        // Checked here so that an absurd shape is a ShapeError, not an
        // overflow or an allocation failure in the core.
        let bytes = shape
            .iter()
            .try_fold(dtype.size(), |acc, &s| acc.checked_mul(s));
        if !matches!(bytes, Some(b) if b <= isize::MAX as usize) {
            return Err(ShapeError::new_err(format!(
                "shape {shape:?} of {dtype} is too large to address"
            )));
        }
        let t = py.detach(|| guard(|| Tensor::zeros(&rt.get().rt, shape, tile, dtype)))?;
        Ok(PyTensor { t, rt })
    }
}

fn tuple<'py>(py: Python<'py>, v: &[usize]) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(py, v)
}

#[pymethods]
impl PyTensor {
    /// Cuts a numpy array into tiles.
    ///
    /// Args:
    ///     array: a numpy array (or anything numpy.asarray accepts).
    ///         Non-contiguous arrays are copied.
    ///     tile_shape: tile size per axis, each >= 1 (an int for 1-D arrays);
    ///         None makes one tile covering the whole array.
    ///     dtype: storage type, "fp32", "fp64", "bf16" or "fp16" (or a numpy
    ///         dtype); None keeps the array's own if it is float32, float64,
    ///         float16 or ml_dtypes.bfloat16. Integer arrays need one.
    ///     runtime: the Runtime to use; None uses gpt2rs.default_runtime().
    ///
    /// Returns:
    ///     A new Tensor holding a copy of the data.
    #[staticmethod]
    #[pyo3(
        signature = (array, tile_shape, dtype=None, runtime=None),
        text_signature = "(array, tile_shape, dtype=None, runtime=None)"
    )]
    fn from_numpy(
        py: Python<'_>,
        array: &Bound<'_, PyAny>,
        tile_shape: TileShapeArg,
        dtype: Option<DTypeArg>,
        runtime: Option<Py<PyRuntime>>,
    ) -> PyResult<PyTensor> {
        let np = py.import("numpy")?;
        let arr = np.call_method1("asarray", (array,))?;
        let src = arr.getattr("dtype")?;
        let src_name: String = src.getattr("name")?.extract()?;
        let kind: String = src.getattr("kind")?.extract()?;
        let own = DType::parse(&src_name).ok();
        let target = match (dtype, own) {
            (Some(d), _) => d.0,
            (None, Some(d)) => d,
            (None, None) => {
                return Err(DTypeError::new_err(format!(
                    "Tensor.from_numpy: arrays of dtype {src_name} need an explicit dtype \
                     (fp32, fp64, bf16 or fp16)"
                )))
            }
        };
        if own.is_none() && !matches!(kind.as_str(), "i" | "u" | "b") {
            return Err(DTypeError::new_err(format!(
                "Tensor.from_numpy: cannot convert an array of dtype {src_name} to {target}"
            )));
        }
        let kw = PyDict::new(py);
        kw.set_item("dtype", numpy_dtype(py, target)?)?;
        kw.set_item("order", "C")?;
        let arr = np.call_method("asarray", (arr,), Some(&kw))?;
        let shape: Vec<usize> = arr.getattr("shape")?.extract()?;
        let tile = tile_shape.resolve("Tensor.from_numpy", &shape)?;
        let flat = arr
            .call_method1("reshape", (-1,))?
            .call_method1("view", (np.getattr("uint8")?,))?
            .cast_into::<PyArray1<u8>>()?;
        let view = flat.try_readonly()?;
        let bytes = view.as_slice()?;
        let rt = runtime_or_default(py, runtime)?;
        let t =
            py.detach(|| guard(|| Tensor::from_bytes(&rt.get().rt, &shape, &tile, target, bytes)))?;
        Ok(PyTensor { t, rt })
    }

    /// A tensor of zeros (memory is allocated lazily, where a tile is first used).
    ///
    /// Args:
    ///     shape: size per axis.
    ///     tile_shape: tile size per axis, each >= 1; None makes one tile.
    ///     dtype: storage type, "fp32", "fp64", "bf16" or "fp16".
    ///     runtime: the Runtime to use; None uses gpt2rs.default_runtime().
    ///
    /// Returns:
    ///     A new Tensor.
    #[staticmethod]
    #[pyo3(
        signature = (shape, tile_shape, dtype=DTypeArg(DType::F32), runtime=None),
        text_signature = "(shape, tile_shape, dtype='fp32', runtime=None)"
    )]
    fn zeros(
        py: Python<'_>,
        shape: ShapeArg,
        tile_shape: TileShapeArg,
        dtype: DTypeArg,
        runtime: Option<Py<PyRuntime>>,
    ) -> PyResult<PyTensor> {
        let tile = tile_shape.resolve("Tensor.zeros", &shape.0)?;
        let rt = runtime_or_default(py, runtime)?;
        PyTensor::zeros_on(py, rt, &shape.0, &tile, dtype.0)
    }

    /// Waits for the tasks that write this tensor and gathers it.
    ///
    /// Returns:
    ///     A new C-contiguous numpy array of the tensor's shape, of dtype
    ///     float32, float64, float16 or ml_dtypes.bfloat16 (0-d for shape ()).
    ///
    /// Raises:
    ///     TaskError: a task writing this tensor failed.
    #[pyo3(text_signature = "($self)")]
    fn to_numpy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let np = py.import("numpy")?;
        let out = np.call_method1(
            "empty",
            (tuple(py, self.t.shape())?, numpy_dtype(py, self.t.dtype)?),
        )?;
        let flat = out
            .call_method1("reshape", (-1,))?
            .call_method1("view", (np.getattr("uint8")?,))?
            .cast_into::<PyArray1<u8>>()?;
        {
            let mut view = flat.try_readwrite()?;
            let bytes = view.as_slice_mut()?;
            py.detach(|| guard(|| self.t.read_into(bytes)))?;
        }
        Ok(out)
    }

    /// numpy's array protocol: `numpy.asarray(tensor)` gathers the tensor.
    #[pyo3(signature = (dtype=None, copy=None))]
    fn __array__<'py>(
        &self,
        py: Python<'py>,
        dtype: Option<Bound<'py, PyAny>>,
        copy: Option<bool>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if copy == Some(false) {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "a Tensor lives in the runtime: converting it to numpy always copies",
            ));
        }
        let a = self.to_numpy(py)?;
        match dtype {
            Some(d) if !d.is_none() => a.call_method1("astype", (d,)),
            _ => Ok(a),
        }
    }

    /// A copy of this tensor cut into different tiles (asynchronous).
    ///
    /// Args:
    ///     tile_shape: the new tile size per axis; None makes one tile.
    ///
    /// Returns:
    ///     A new Tensor on the same runtime.
    #[pyo3(text_signature = "($self, tile_shape)")]
    fn retile(&self, py: Python<'_>, tile_shape: TileShapeArg) -> PyResult<PyTensor> {
        let tile = tile_shape.resolve("Tensor.retile", self.t.shape())?;
        let t = py.detach(|| {
            guard(|| {
                let dst = Tensor::zeros(self.t.runtime(), self.t.shape(), &tile, self.t.dtype)?;
                ops::copy(&self.t, &dst)?;
                Ok(dst)
            })
        })?;
        Ok(self.sibling(py, t))
    }

    /// A copy of this tensor converted to another dtype (asynchronous).
    ///
    /// Args:
    ///     dtype: the new storage type ("fp32", "fp64", "bf16", "fp16").
    ///     tile_shape: the new tile size per axis; None keeps this tensor's tiling.
    ///
    /// Returns:
    ///     A new Tensor on the same runtime.
    #[pyo3(signature = (dtype, tile_shape=None), text_signature = "($self, dtype, tile_shape=None)")]
    fn astype(
        &self,
        py: Python<'_>,
        dtype: DTypeArg,
        tile_shape: Option<TileShapeArg>,
    ) -> PyResult<PyTensor> {
        let tile = match tile_shape {
            Some(ts) if ts.0.is_some() => ts.resolve("Tensor.astype", self.t.shape())?,
            _ => self.t.grid.tile.iter().map(|&t| t as isize).collect(),
        };
        let t = py.detach(|| {
            guard(|| {
                let dst = Tensor::zeros(self.t.runtime(), self.t.shape(), &tile, dtype.0)?;
                ops::cast(&self.t, &dst)?;
                Ok(dst)
            })
        })?;
        Ok(self.sibling(py, t))
    }

    /// Size per axis.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple(py, self.t.shape())
    }

    /// Base tile size per axis (clamped to the axis length).
    #[getter]
    fn tile_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple(py, &self.t.grid.tile)
    }

    /// Tiles per axis.
    #[getter]
    fn grid_shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        tuple(py, &self.t.grid.grid)
    }

    /// Number of tiles.
    #[getter]
    fn ntiles(&self) -> usize {
        self.t.grid.ntiles()
    }

    /// Number of axes.
    #[getter]
    fn ndim(&self) -> usize {
        self.t.ndim()
    }

    /// Storage type: "fp32", "fp64", "bf16" or "fp16".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.t.dtype.name()
    }

    /// The Runtime this tensor lives on.
    #[getter]
    fn runtime(&self, py: Python<'_>) -> Py<PyRuntime> {
        self.rt.clone_ref(py)
    }

    fn __repr__(&self) -> String {
        let fmt = |v: &[usize]| match v {
            [x] => format!("({x},)"),
            v => format!(
                "({})",
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        format!(
            "Tensor(shape={}, tile_shape={}, dtype='{}', ntiles={})",
            fmt(self.t.shape()),
            fmt(&self.t.grid.tile),
            self.t.dtype,
            self.t.grid.ntiles()
        )
    }
}

/// The `Error` a tensor-level argument check raises, as a Python exception.
pub(crate) fn arg_error(op: &str, msg: impl Into<String>) -> PyErr {
    Error::Argument {
        op: op.into(),
        msg: msg.into(),
    }
    .into()
}
