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
use std::sync::Mutex;

/// `gpt2rs.GPT2Config`, read attribute by attribute (validated there).
#[derive(FromPyObject)]
struct ModelConfig {
    vocab_size: usize,
    n_positions: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    #[pyo3(attribute("inner_size"))]
    n_inner: usize,
    activation_function: String,
    layer_norm_epsilon: f64,
    resid_pdrop: f64,
    embd_pdrop: f64,
    attn_pdrop: f64,
    position_embedding_type: String,
}

impl ModelConfig {
    fn into_core(self) -> PyResult<Gpt2Config> {
        let act = &self.activation_function;
        let activation = Activation::parse(act).ok_or_else(|| {
            PyValueError::new_err(format!(
                "activation_function {act:?} is not supported (gelu_new, gelu_pytorch_tanh, gelu or relu)"
            ))
        })?;
        Ok(Gpt2Config {
            vocab_size: self.vocab_size,
            n_positions: self.n_positions,
            n_embd: self.n_embd,
            n_layer: self.n_layer,
            n_head: self.n_head,
            n_inner: self.n_inner,
            activation,
            layer_norm_epsilon: self.layer_norm_epsilon,
            resid_pdrop: self.resid_pdrop,
            embd_pdrop: self.embd_pdrop,
            attn_pdrop: self.attn_pdrop,
            sinusoidal: self.position_embedding_type == "sinusoidal",
        })
    }
}

/// One axis's tile: None (chosen from the shapes), "whole" or a size >= 1.
struct Tile(Option<usize>);

impl<'a, 'py> FromPyObject<'a, 'py> for Tile {
    type Error = PyErr;

    fn extract(obj: Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        if obj.is_none() {
            return Ok(Tile(None));
        }
        if let Ok(s) = obj.extract::<&str>() {
            if s == "whole" {
                return Ok(Tile(Some(WHOLE)));
            }
        }
        match obj.extract::<i64>() {
            Ok(n) if n >= 1 => Ok(Tile(Some(n as usize))),
            _ => Err(PyValueError::new_err(
                "a tile size must be an int >= 1, \"whole\" or None",
            )),
        }
    }
}

/// `gpt2rs.ModelOptions`, read attribute by attribute (validated there; its
/// dropout reaches the core through the config's pdrops).
#[derive(FromPyObject)]
struct ModelOptions {
    dtype: String,
    seq_len_tile: Tile,
    minibatch_size_tile: Tile,
    hidden_size_tile: Tile,
    intermediate_size_tile: Tile,
    n_head_tile: Tile,
    vocab_tile: Tile,
    recompute: bool,
    deterministic: bool,
}

impl ModelOptions {
    fn tiling(&self) -> Tiling {
        Tiling {
            batch: self.minibatch_size_tile.0,
            seq: self.seq_len_tile.0,
            hidden: self.hidden_size_tile.0,
            inner: self.intermediate_size_tile.0,
            heads: self.n_head_tile.0,
            vocab: self.vocab_tile.0,
        }
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
    #[pyo3(signature = (config, options, runtime=None))]
    fn new(
        py: Python<'_>,
        config: ModelConfig,
        options: ModelOptions,
        runtime: Option<Py<PyRuntime>>,
    ) -> PyResult<Self> {
        let cfg = config.into_core()?;
        let tiling = options.tiling();
        let precision = Precision::parse(&options.dtype)?;
        let rt = runtime_or_default(py, runtime)?;
        let r = rt.get().rt.clone();
        let mut m = py.detach(|| guard(|| Gpt2::new(&r, cfg, tiling, precision)))?;
        m.recompute = options.recompute;
        m.deterministic = options.deterministic;
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
    /// Runs `f` on the optimizer (for the data-parallel core).
    pub(crate) fn with<R>(
        &self,
        f: impl FnOnce(&mut Optimizer) -> crate::Result<R>,
    ) -> crate::Result<R> {
        f(&mut self.o.lock().unwrap())
    }

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
