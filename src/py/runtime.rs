//! `gpt2rs.Runtime`: the task runtime (workers, memory nodes, scheduling
//! policy), plus the process-wide default runtime that tensors use when no
//! runtime is given.

use super::error::guard;
use crate::runtime::{Runtime, RuntimeConfig, SchedKind, Where};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::MutexExt;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::path::PathBuf;
use std::sync::Mutex;

/// A task runtime: CPU workers (one thread each), optional simulated device
/// nodes (host memory posing as device memory, each with a worker), a
/// scheduling policy, per-node memory limits, performance models and a trace.
///
/// Args:
///     ncpu: CPU workers; None uses every core.
///     scheduler: scheduling policy, "eager" or "dmda" (StarPU names such as
///         "dmdas" or "lws" map onto these).
///     memory_limits: byte limit per memory node: a list by node index
///         (None = unlimited), or a dict keyed by node index or name
///         ("host", "sim0", "sim1", ...).
///     perf_model_dir: directory where the history-based performance models
///         are loaded from and saved to (at shutdown); None keeps them in memory.
///     nsim: simulated device memory nodes, each with one worker.
///     trace: record every task and transfer for `save_trace`.
///     ncuda: GPUs to use (devices first_gpu..first_gpu + ncuda, each a
///         memory node with one worker); raises CudaError if fewer are
///         visible or CUDA is missing.
///     restrict: "cpu" or "cuda" to run every task that can on that kind of
///         worker (ops with no CUDA implementation still run on the CPU);
///         None lets the scheduler choose.
///     comm: a communication worker for data-parallel collectives (see
///         `gpt2rs.dist`); with GPUs it issues them on an NCCL stream of
///         the first GPU, else on the host.
///     first_gpu: the ordinal of the first GPU used (a data-parallel rank
///         takes the GPU of its local rank).
///
/// Used as a context manager, the runtime shuts down on exit.
#[pyclass(name = "Runtime", module = "gpt2rs", frozen)]
pub struct PyRuntime {
    pub(crate) rt: Runtime,
}

/// Byte limits per memory node, from a list by index or a dict by index or name.
struct MemoryLimits(Vec<Option<u64>>);

fn limit_value(v: &Bound<'_, PyAny>, key: &str) -> PyResult<Option<u64>> {
    if v.is_none() {
        return Ok(None);
    }
    match v.extract::<i128>() {
        Ok(n) if (0..=u64::MAX as i128).contains(&n) => Ok(Some(n as u64)),
        _ => Err(PyValueError::new_err(format!(
            "memory_limits[{key}] must be a byte count >= 0 or None, got {}",
            v.repr()?
        ))),
    }
}

fn node_index(key: &Bound<'_, PyAny>, nnodes: usize, nsim: usize) -> PyResult<usize> {
    let idx = if let Ok(i) = key.extract::<i64>() {
        usize::try_from(i).ok()
    } else if let Ok(name) = key.extract::<String>() {
        let numbered = |prefix: &str| {
            name.strip_prefix(prefix)
                .and_then(|n| n.parse::<usize>().ok())
        };
        match name.as_str() {
            "host" => Some(0),
            _ => numbered("sim")
                .filter(|&n| n < nsim)
                .map(|n| n + 1)
                .or_else(|| numbered("cuda").map(|n| 1 + nsim + n)),
        }
    } else {
        None
    };
    match idx {
        Some(i) if i < nnodes => Ok(i),
        _ => Err(PyValueError::new_err(format!(
            "memory_limits: unknown memory node {} (this runtime has {nnodes}: index 0 or \"host\", \
             then the simulated devices \"sim0\".., then the GPUs \"cuda0\"..)",
            key.repr()?
        ))),
    }
}

impl MemoryLimits {
    fn extract(
        obj: Option<&Bound<'_, PyAny>>,
        nnodes: usize,
        nsim: usize,
    ) -> PyResult<MemoryLimits> {
        let Some(obj) = obj.filter(|o| !o.is_none()) else {
            return Ok(MemoryLimits(Vec::new()));
        };
        if let Ok(d) = obj.cast::<PyDict>() {
            let mut v = vec![None; nnodes];
            for (k, val) in d.iter() {
                let i = node_index(&k, nnodes, nsim)?;
                v[i] = limit_value(&val, &k.repr()?.to_string())?;
            }
            return Ok(MemoryLimits(v));
        }
        if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
            let mut v = Vec::new();
            for (i, val) in obj.try_iter()?.enumerate() {
                v.push(limit_value(&val?, &i.to_string())?);
            }
            return Ok(MemoryLimits(v));
        }
        Err(PyTypeError::new_err(format!(
            "memory_limits must be a list, a dict or None, got {}",
            obj.get_type().name()?
        )))
    }
}

#[pymethods]
impl PyRuntime {
    #[new]
    #[pyo3(
        signature = (ncpu=None, scheduler="eager", memory_limits=None, perf_model_dir=None, nsim=0, trace=false, ncuda=0, restrict=None, comm=false, first_gpu=0),
        text_signature = "(ncpu=None, scheduler='eager', memory_limits=None, perf_model_dir=None, nsim=0, trace=False, ncuda=0, restrict=None, comm=False, first_gpu=0)"
    )]
    #[allow(clippy::too_many_arguments)] // mirrors the Python signature
    fn new(
        py: Python<'_>,
        ncpu: Option<i64>,
        scheduler: &str,
        memory_limits: Option<&Bound<'_, PyAny>>,
        perf_model_dir: Option<PathBuf>,
        nsim: usize,
        trace: bool,
        ncuda: usize,
        restrict: Option<&str>,
        comm: bool,
        first_gpu: usize,
    ) -> PyResult<PyRuntime> {
        let ncpu = match ncpu {
            None => None,
            Some(n) if n >= 1 => Some(n as usize),
            Some(n) => return Err(PyValueError::new_err(format!("ncpu must be >= 1, got {n}"))),
        };
        let scheduler = SchedKind::parse(scheduler).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown scheduler {scheduler:?} (expected \"eager\" or \"dmda\", or a StarPU name such as \
                 \"lws\" or \"dmdas\")"
            ))
        })?;
        let restrict = match restrict {
            None => Where::ANY,
            Some("cpu") => Where::ANY_CPU,
            Some("cuda") => Where::CUDA,
            Some(r) => {
                return Err(PyValueError::new_err(format!(
                    "restrict must be \"cpu\", \"cuda\" or None, got {r:?}"
                )))
            }
        };
        if restrict == Where::CUDA && ncuda == 0 {
            return Err(PyValueError::new_err(
                "restrict=\"cuda\" needs ncuda >= 1 (a GPU to run on)",
            ));
        }
        let limits = MemoryLimits::extract(memory_limits, 1 + nsim + ncuda, nsim)?;
        let cfg = RuntimeConfig {
            ncuda,
            first_gpu,
            restrict,
            ncpu,
            nsim,
            scheduler,
            memory_limits: limits.0,
            perf_model_dir,
            trace,
            comm,
            // With GPUs, collectives run on the first one's NCCL stream.
            comm_node: if ncuda > 0 { 1 + nsim } else { 0 },
        };
        let rt = py.detach(|| guard(|| Runtime::new(cfg)))?;
        Ok(PyRuntime { rt })
    }

    /// Waits until every submitted task has finished.
    ///
    /// Raises:
    ///     TaskError: the first task that failed since the last call (the
    ///         runtime stays usable).
    #[pyo3(text_signature = "($self)")]
    fn wait_all(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| guard(|| self.rt.wait_all()))
    }

    /// Statistics so far.
    ///
    /// Returns:
    ///     A dict with "scheduler", "wall_s", "tasks_submitted", and lists of
    ///     dicts "workers" (id, name, kind, node, tasks, failed, busy_s,
    ///     flops), "buses" (src, dst, name, transfers, bytes, seconds) and
    ///     "nodes" (id, name, kind, limit, used_bytes, peak_bytes, evictions,
    ///     writebacks) and "phases" (name, tasks, busy_s: the tasks submitted
    ///     in each `set_phase` phase; "" for those before any).
    #[pyo3(text_signature = "($self)")]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let json = py.detach(|| {
            guard(|| {
                serde_json::to_string(&self.rt.stats()).map_err(|e| crate::Error::Io(e.to_string()))
            })
        })?;
        py.import("json")?.call_method1("loads", (json,))
    }

    /// Tags the tasks submitted from now on with phase `name`; `stats()`
    /// then says what each phase cost in tasks and worker-busy seconds
    /// ("phases"), however the phases' tasks overlap in time.
    ///
    /// Args:
    ///     name: the phase (any string; a name used before resumes that phase).
    #[pyo3(text_signature = "($self, name)")]
    fn set_phase(&self, name: &str) {
        self.rt.set_phase(name);
    }

    /// Writes a Chrome trace (JSON; opens in Perfetto or chrome://tracing) of
    /// every task and transfer so far.
    ///
    /// Args:
    ///     path: file to write.
    ///
    /// Raises:
    ///     ValueError: the runtime was created with trace=False.
    #[pyo3(text_signature = "($self, path)")]
    fn save_trace(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| guard(|| self.rt.save_trace(&path)))
    }

    /// Saves the performance models into perf_model_dir (a no-op without one).
    #[pyo3(text_signature = "($self)")]
    fn save_perf_models(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| guard(|| self.rt.save_perf_models()))
    }

    /// Finishes every submitted task, stops the workers and saves the
    /// performance models. Later operations on this runtime's tensors raise
    /// RuntimeShutdownError. Calling it again does nothing.
    #[pyo3(text_signature = "($self)")]
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| guard(|| self.rt.shutdown()))
    }

    /// Workers (CPU workers, then one per simulated device).
    #[getter]
    fn nworkers(&self) -> usize {
        self.rt.nworkers()
    }

    /// Memory nodes (host, then one per simulated device, then one per GPU).
    #[getter]
    fn nnodes(&self) -> usize {
        self.rt.nnodes()
    }

    /// Whether the communication worker issues its collectives on a GPU
    /// (through NCCL), rather than on the host.
    #[getter]
    fn comm_on_gpu(&self) -> bool {
        self.rt.comm_gpu().is_some()
    }

    /// The scheduling policy: "eager" or "dmda".
    #[getter]
    fn scheduler(&self) -> &'static str {
        self.rt.scheduler().name()
    }

    /// True once `shutdown` has run.
    #[getter]
    fn is_shut_down(&self) -> bool {
        self.rt.is_shut_down()
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> PyResult<bool> {
        self.shutdown(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "Runtime(nworkers={}, nnodes={}, scheduler='{}'{})",
            self.rt.nworkers(),
            self.rt.nnodes(),
            self.rt.scheduler().name(),
            if self.rt.is_shut_down() {
                ", shut down"
            } else {
                ""
            }
        )
    }
}

static DEFAULT: Mutex<Option<Py<PyRuntime>>> = Mutex::new(None);

/// The process-wide default runtime, used by tensors created without a
/// runtime. Created on first use (every core, eager scheduling), and again
/// if the previous one was shut down.
///
/// Returns:
///     The default Runtime.
#[pyfunction]
#[pyo3(text_signature = "()")]
pub fn default_runtime(py: Python<'_>) -> PyResult<Py<PyRuntime>> {
    {
        let d = DEFAULT
            .lock_py_attached(py)
            .unwrap_or_else(|e| e.into_inner());
        if let Some(rt) = d.as_ref().filter(|r| !r.get().rt.is_shut_down()) {
            return Ok(rt.clone_ref(py));
        }
    }
    // Created outside the lock: creating a Python object may run arbitrary
    // Python code (the garbage collector) that could want the lock too.
    let rt = py.detach(|| guard(|| Runtime::new(RuntimeConfig::default())))?;
    let new = Py::new(py, PyRuntime { rt })?;
    let mut d = DEFAULT
        .lock_py_attached(py)
        .unwrap_or_else(|e| e.into_inner());
    match d.as_ref().filter(|r| !r.get().rt.is_shut_down()) {
        // Another thread won the race: keep its runtime.
        Some(rt) => Ok(rt.clone_ref(py)),
        None => {
            let old = d.replace(new.clone_ref(py));
            drop(d);
            drop(old);
            Ok(new)
        }
    }
}

/// Makes `runtime` the process-wide default runtime.
///
/// Args:
///     runtime: the Runtime that tensors created without one will use.
#[pyfunction]
#[pyo3(text_signature = "(runtime)")]
pub fn set_default_runtime(py: Python<'_>, runtime: Py<PyRuntime>) {
    let old = DEFAULT
        .lock_py_attached(py)
        .unwrap_or_else(|e| e.into_inner())
        .replace(runtime);
    drop(old);
}

/// Shuts the default runtime down if one was created (the atexit hook).
#[pyfunction]
pub fn _shutdown_default_runtime(py: Python<'_>) -> PyResult<()> {
    let rt = DEFAULT
        .lock_py_attached(py)
        .unwrap_or_else(|e| e.into_inner())
        .take();
    match rt {
        Some(rt) => rt.get().shutdown(py),
        None => Ok(()),
    }
}

/// The runtime given, or the default one.
pub(crate) fn runtime_or_default(
    py: Python<'_>,
    rt: Option<Py<PyRuntime>>,
) -> PyResult<Py<PyRuntime>> {
    match rt {
        Some(r) => Ok(r),
        None => default_runtime(py),
    }
}
