//! `gpt2rs._gpt2rs.Gpt2Core` and `OptimizerCore`: the compiled halves of
//! `gpt2rs.GPT2LMHead` and the optimizers. Arrays cross as raw row-major
//! bytes in the model's export dtype (float64 for fp64 models, else
//! float32); the Python layer does names, shapes and checks users see.

use super::error::guard;
use super::runtime::{runtime_or_default, PyRuntime};
use crate::dtype::{DType, Precision};
use crate::kernels::cpu::activation::Activation;
use crate::model::{Gpt2, Gpt2Config, StepOptions, Tiling, WHOLE};
use crate::optim::{Optimizer, OptimizerKind};
use numpy::prelude::*;
use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::sync::Mutex;

fn get<'py, T: for<'a> FromPyObject<'a, 'py>>(d: &Bound<'py, PyDict>, key: &str) -> PyResult<T> {
    d.get_item(key)?
        .ok_or_else(|| PyValueError::new_err(format!("config is missing {key:?}")))?
        .extract::<T>()
        .map_err(|_| PyValueError::new_err(format!("config field {key:?} has the wrong type")))
}

fn opt_tile(d: &Bound<'_, PyDict>, key: &str) -> PyResult<Option<usize>> {
    let bad = || {
        PyValueError::new_err(format!(
            "{key} must be an int >= 1, -1 (untiled) or None (default)"
        ))
    };
    match d.get_item(key)? {
        None => Ok(None),
        Some(v) if v.is_none() => Ok(None),
        Some(v) => match v.extract::<i64>().map_err(|_| bad())? {
            -1 => Ok(Some(WHOLE)),
            n if n >= 1 => Ok(Some(n as usize)),
            _ => Err(bad()),
        },
    }
}

/// Bytes of `dtype` as a flat numpy array of the matching float type.
fn to_numpy<'py>(py: Python<'py>, bytes: Vec<u8>, dtype: DType) -> PyResult<Bound<'py, PyAny>> {
    Ok(match dtype {
        DType::F64 => {
            PyArray1::from_vec(py, bytemuck::cast_slice::<u8, f64>(&bytes).to_vec()).into_any()
        }
        _ => PyArray1::from_vec(py, bytemuck::cast_slice::<u8, f32>(&bytes).to_vec()).into_any(),
    })
}

/// The compiled GPT-2 model; use `gpt2rs.GPT2LMHead`.
#[pyclass(name = "Gpt2Core", module = "gpt2rs._gpt2rs", frozen)]
pub struct PyGpt2Core {
    pub(crate) m: Gpt2,
    #[allow(dead_code)]
    rt: Py<PyRuntime>,
}

#[pymethods]
impl PyGpt2Core {
    #[new]
    #[pyo3(signature = (config, tiles, precision, runtime=None, recompute=false, deterministic=false))]
    fn new(
        py: Python<'_>,
        config: &Bound<'_, PyDict>,
        tiles: &Bound<'_, PyDict>,
        precision: &str,
        runtime: Option<Py<PyRuntime>>,
        recompute: bool,
        deterministic: bool,
    ) -> PyResult<Self> {
        let act: String = get(config, "activation_function")?;
        let activation = Activation::parse(&act).ok_or_else(|| {
            PyValueError::new_err(format!(
                "activation_function {act:?} is not supported (gelu_new, gelu_pytorch_tanh, gelu or relu)"
            ))
        })?;
        let cfg = Gpt2Config {
            vocab_size: get(config, "vocab_size")?,
            n_positions: get(config, "n_positions")?,
            n_embd: get(config, "n_embd")?,
            n_layer: get(config, "n_layer")?,
            n_head: get(config, "n_head")?,
            n_inner: get(config, "n_inner")?,
            activation,
            layer_norm_epsilon: get(config, "layer_norm_epsilon")?,
            resid_pdrop: get(config, "resid_pdrop")?,
            embd_pdrop: get(config, "embd_pdrop")?,
            attn_pdrop: get(config, "attn_pdrop")?,
            sinusoidal: get::<String>(config, "position_embedding_type")? == "sinusoidal",
        };
        let tiling = Tiling {
            batch: opt_tile(tiles, "minibatch_size_tile")?,
            seq: opt_tile(tiles, "seq_len_tile")?,
            hidden: opt_tile(tiles, "hidden_size_tile")?,
            inner: opt_tile(tiles, "intermediate_size_tile")?,
            heads: opt_tile(tiles, "n_head_tile")?,
            vocab: opt_tile(tiles, "vocab_tile")?,
        };
        let precision = Precision::parse(precision)?;
        let rt = runtime_or_default(py, runtime)?;
        let r = rt.get().rt.clone();
        let mut m = py.detach(|| guard(|| Gpt2::new(&r, cfg, tiling, precision)))?;
        m.recompute = recompute;
        m.deterministic = deterministic;
        Ok(PyGpt2Core { m, rt })
    }

    /// Parameter names (HF's, without the `transformer.` prefix), in order.
    fn param_names(&self) -> Vec<String> {
        self.m.params.list.iter().map(|p| p.name.clone()).collect()
    }

    /// HF shape of parameter `name`.
    fn param_shape(&self, name: &str) -> PyResult<Vec<usize>> {
        self.m
            .params
            .find(name)
            .map(|p| p.hf_shape.clone())
            .ok_or_else(|| PyValueError::new_err(format!("no parameter named {name:?}")))
    }

    /// "float32" or "float64": the dtype arrays cross the boundary in.
    #[getter]
    fn export_dtype(&self) -> &'static str {
        if self.m.export_dtype() == DType::F64 {
            "float64"
        } else {
            "float32"
        }
    }

    /// Parameter `name` as a flat array (waits for the tasks writing it).
    fn get_param<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let b = py.detach(|| guard(|| self.m.param_bytes(name)))?;
        to_numpy(py, b, self.m.export_dtype())
    }

    /// Gradient of parameter `name` as a flat array.
    fn get_grad<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let b = py.detach(|| guard(|| self.m.grad_bytes(name)))?;
        to_numpy(py, b, self.m.export_dtype())
    }

    /// Overwrites parameter `name` from the bytes of a contiguous array of
    /// the export dtype.
    fn set_param(
        &self,
        py: Python<'_>,
        name: &str,
        data: PyReadonlyArray1<'_, u8>,
    ) -> PyResult<()> {
        let v = data.as_slice()?.to_vec();
        py.detach(|| guard(|| self.m.set_param_bytes(name, v)))
    }

    /// Logits of int64 ids [B, T] as a flat array of B*T*V.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        ids: PyReadonlyArray2<'_, i64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let v = ids.as_slice()?.to_vec();
        let bytes = py.detach(|| {
            guard(|| {
                let logits = self.m.forward(&v, b, t)?;
                if logits.dtype == self.m.export_dtype() {
                    logits.to_bytes()
                } else {
                    let wide = logits.zeros_like_dtype(self.m.export_dtype())?;
                    crate::ops::cast(&logits, &wide)?;
                    wide.to_bytes()
                }
            })
        })?;
        to_numpy(py, bytes, self.m.export_dtype())
    }

    /// Loss of one minibatch; gradients += grad_scale * d(loss).
    #[pyo3(signature = (ids, targets, grad_scale=1.0, dropout_seed=None))]
    fn forward_backward(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray2<'_, i64>,
        targets: PyReadonlyArray2<'_, i64>,
        grad_scale: f64,
        dropout_seed: Option<u64>,
    ) -> PyResult<f64> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let (v, tg) = (ids.as_slice()?.to_vec(), targets.as_slice()?.to_vec());
        let opt = StepOptions {
            grad_scale,
            dropout_seed,
        };
        py.detach(|| guard(|| self.m.forward_backward(&v, &tg, b, t, opt)))
    }

    /// Mean loss of one minibatch, no backward.
    fn loss(
        &self,
        py: Python<'_>,
        ids: PyReadonlyArray2<'_, i64>,
        targets: PyReadonlyArray2<'_, i64>,
    ) -> PyResult<f64> {
        let (b, t) = (ids.shape()[0], ids.shape()[1]);
        let (v, tg) = (ids.as_slice()?.to_vec(), targets.as_slice()?.to_vec());
        py.detach(|| guard(|| self.m.loss(&v, &tg, b, t)))
    }

    fn zero_grad(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| guard(|| self.m.zero_grad()))
    }

    fn clip_grad_norm(&self, py: Python<'_>, max_norm: f64) -> PyResult<f64> {
        py.detach(|| guard(|| self.m.clip_grad_norm(max_norm)))
    }

    /// An empty key/value cache for batches of `batch` rows.
    #[pyo3(text_signature = "($self, batch)")]
    fn new_cache(&self, py: Python<'_>, batch: usize) -> PyResult<super::generate::PyKvCache> {
        let c = py.detach(|| guard(|| self.m.new_cache(batch)))?;
        Ok(super::generate::PyKvCache::new(c))
    }

    /// Logits of the new positions int64 ids [B, n] that follow the cached
    /// ones, as a flat array of B*n*V (of B*V with `last_only`); appends
    /// their keys and values to `cache`.
    #[pyo3(signature = (cache, ids, last_only=false), text_signature = "($self, cache, ids, last_only=False)")]
    fn forward_cached<'py>(
        &self,
        py: Python<'py>,
        cache: &super::generate::PyKvCache,
        ids: PyReadonlyArray2<'_, i64>,
        last_only: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let (b, n) = (ids.shape()[0], ids.shape()[1]);
        let v = ids.as_slice()?.to_vec();
        let bytes = py.detach(|| {
            guard(|| {
                let mut c = cache.c.lock().unwrap();
                let logits = if last_only {
                    self.m.forward_cached_last(&mut c, &v, b, n)?
                } else {
                    self.m.forward_cached(&mut c, &v, b, n)?
                };
                drop(c);
                if logits.dtype == self.m.export_dtype() {
                    logits.to_bytes()
                } else {
                    let wide = logits.zeros_like_dtype(self.m.export_dtype())?;
                    crate::ops::cast(&logits, &wide)?;
                    wide.to_bytes()
                }
            })
        })?;
        to_numpy(py, bytes, self.m.export_dtype())
    }
}

/// The compiled optimizer; use `gpt2rs.AdamW`, `gpt2rs.Adam`, `gpt2rs.SGD`.
#[pyclass(name = "OptimizerCore", module = "gpt2rs._gpt2rs", frozen)]
pub struct PyOptimizerCore {
    o: Mutex<Optimizer>,
    export: DType,
}

#[pymethods]
impl PyOptimizerCore {
    #[new]
    #[pyo3(signature = (model, kind, lr, weight_decay, momentum=0.0, dampening=0.0, nesterov=false, beta1=0.9, beta2=0.999, eps=1e-8))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        model: &PyGpt2Core,
        kind: &str,
        lr: f64,
        weight_decay: f64,
        momentum: f64,
        dampening: f64,
        nesterov: bool,
        beta1: f64,
        beta2: f64,
        eps: f64,
    ) -> PyResult<Self> {
        let k = match kind {
            "sgd" => OptimizerKind::Sgd {
                momentum,
                dampening,
                nesterov,
            },
            "adam" | "adamw" => OptimizerKind::Adam {
                beta1,
                beta2,
                eps,
                decoupled: kind == "adamw",
            },
            _ => return Err(PyValueError::new_err(format!("unknown optimizer {kind:?}"))),
        };
        let o = guard(|| Optimizer::new(&model.m, k, lr, weight_decay))?;
        Ok(PyOptimizerCore {
            o: Mutex::new(o),
            export: model.m.export_dtype(),
        })
    }

    fn step(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| guard(|| self.o.lock().unwrap().step()))
    }

    #[getter]
    fn get_lr(&self) -> f64 {
        self.o.lock().unwrap().lr
    }
    #[setter]
    fn set_lr(&self, lr: f64) -> PyResult<()> {
        if lr.is_nan() || lr < 0.0 {
            return Err(PyValueError::new_err(format!("invalid learning rate {lr}")));
        }
        self.o.lock().unwrap().lr = lr;
        Ok(())
    }
    #[getter]
    fn get_weight_decay(&self) -> f64 {
        self.o.lock().unwrap().weight_decay
    }
    #[getter]
    fn get_step_count(&self) -> u64 {
        self.o.lock().unwrap().step
    }
    #[setter]
    fn set_step_count(&self, n: u64) {
        self.o.lock().unwrap().step = n;
    }

    /// (parameter name, state name) pairs, in order.
    fn state_keys(&self) -> Vec<(String, String)> {
        let o = self.o.lock().unwrap();
        o.state_tensors()
            .into_iter()
            .map(|(p, s, _)| (p.to_string(), s.to_string()))
            .collect()
    }

    fn get_state<'py>(
        &self,
        py: Python<'py>,
        param: &str,
        state: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let t = self.find(param, state)?;
        let b = py.detach(|| guard(|| t.to_bytes()))?;
        to_numpy(py, b, self.export)
    }

    fn set_state(
        &self,
        py: Python<'_>,
        param: &str,
        state: &str,
        data: PyReadonlyArray1<'_, u8>,
    ) -> PyResult<()> {
        let t = self.find(param, state)?;
        let v = data.as_slice()?.to_vec();
        py.detach(|| guard(|| t.write_bytes(v)))
    }
}

impl PyOptimizerCore {
    fn find(&self, param: &str, state: &str) -> PyResult<crate::tensor::Tensor> {
        let o = self.o.lock().unwrap();
        o.state_tensors()
            .into_iter()
            .find(|(p, s, _)| *p == param && *s == state)
            .map(|(_, _, t)| t.clone())
            .ok_or_else(|| {
                PyValueError::new_err(format!(
                    "no optimizer state {state:?} for parameter {param:?}"
                ))
            })
    }
}
