//! `gpt2rs._gpt2rs.Communicator` (the byte-moving end of a process group:
//! MPI through the library mpi4py loaded, or the in-process loopback group)
//! and the NCCL probes. `python/gpt2rs/mpi.py` initialises MPI through
//! mpi4py and finds the NCCL wheel. Every collective runs without the GIL.
//! An unusable or failing transport is a `DistError(RuntimeError)`; a bad
//! argument (counts, root) a `ValueError`.

use crate::dist::file::FileComm;
use crate::dist::loopback::Loopback;
use crate::dist::mpi::MpiComm;
use crate::dist::nccl::Nccl;
use crate::dist::Communicator;
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::path::PathBuf;
use std::sync::Arc;

create_exception!(
    gpt2rs,
    DistError,
    PyRuntimeError,
    "MPI or NCCL is unavailable (not loaded, not initialised, finalised) or a collective failed; the message says which."
);

/// Runs `f` without the GIL; its errors become DistError (see `detach_mapped`).
fn run<T: Send>(py: Python<'_>, f: impl FnOnce() -> crate::Result<T> + Send) -> PyResult<T> {
    super::error::detach_mapped(py, "gpt2rs's communicator", DistError::new_err, f)
}

/// One rank's end of a process group: every rank calls the same collectives
/// in the same order; all counts are in bytes. Make one with
/// `Communicator.mpi()` (or `gpt2rs.mpi.init()`), or a group of
/// in-process ranks with `Communicator.loopback(n)`.
#[pyclass(name = "Communicator", module = "gpt2rs._gpt2rs", frozen)]
pub struct PyCommunicator {
    c: Arc<dyn Communicator>,
}

impl PyCommunicator {
    /// The transport, for the training core.
    pub(crate) fn comm(&self) -> &Arc<dyn Communicator> {
        &self.c
    }
}

#[pymethods]
impl PyCommunicator {
    /// This process's rank of the job, over a private duplicate of
    /// MPI_COMM_WORLD, in the MPI library mpi4py loaded and initialised.
    /// Collective: every rank calls it.
    ///
    /// Raises:
    ///     DistError: MPI is not loaded (import mpi4py.MPI first), not
    ///         initialised, finalised, or at a thread level below
    ///         MPI_THREAD_SERIALIZED.
    #[staticmethod]
    #[pyo3(text_signature = "()")]
    fn mpi(py: Python<'_>) -> PyResult<PyCommunicator> {
        let c = run(py, MpiComm::from_process)?;
        Ok(PyCommunicator { c: Arc::new(c) })
    }

    /// `n` ranks in this process, for tests: each rank's collectives must be
    /// called from its own thread.
    ///
    /// Args:
    ///     n: ranks (>= 1).
    ///
    /// Returns:
    ///     The ranks, in rank order.
    #[staticmethod]
    #[pyo3(text_signature = "(n)")]
    fn loopback(py: Python<'_>, n: usize) -> PyResult<Vec<PyCommunicator>> {
        let group = run(py, move || Loopback::group(n))?;
        Ok(group
            .into_iter()
            .map(|l| PyCommunicator { c: Arc::new(l) })
            .collect())
    }

    /// Rank `rank` of a job of `size` processes that share the directory
    /// `dir` (the file-system method, for launchers without MPI: every
    /// collective's messages go through files there). Collective: waits
    /// at most `timeout_s` for the others to join.
    ///
    /// Raises:
    ///     ValueError: rank >= size, or timeout_s < 0.
    ///     DistError: the directory is unusable, or a rank did not join.
    #[staticmethod]
    #[pyo3(signature = (dir, rank, size, timeout_s=600.0), text_signature = "(dir, rank, size, timeout_s=600.0)")]
    fn file(
        py: Python<'_>,
        dir: PathBuf,
        rank: usize,
        size: usize,
        timeout_s: f64,
    ) -> PyResult<PyCommunicator> {
        let t = std::time::Duration::try_from_secs_f64(timeout_s).map_err(|_| {
            PyValueError::new_err(format!("timeout_s must be >= 0, got {timeout_s}"))
        })?;
        let c = run(py, move || FileComm::join(&dir, rank, size, t))?;
        Ok(PyCommunicator { c: Arc::new(c) })
    }

    /// This process's rank, 0..size.
    #[getter]
    fn rank(&self) -> usize {
        self.c.rank()
    }

    /// Ranks in the group.
    #[getter]
    fn size(&self) -> usize {
        self.c.size()
    }

    /// What moves the bytes: "mpich", "openmpi", "mpi-abi", "file" or "loopback".
    #[getter]
    fn backend(&self) -> &str {
        self.c.backend()
    }

    /// Waits until every rank has called it.
    #[pyo3(text_signature = "($self)")]
    fn barrier(&self, py: Python<'_>) -> PyResult<()> {
        run(py, || self.c.barrier())
    }

    /// Rank `root`'s bytes to every rank.
    ///
    /// Args:
    ///     data: on `root`, the bytes to send; on the other ranks, bytes of
    ///         the same length (their content is ignored).
    ///     root: the sending rank.
    ///
    /// Returns:
    ///     `root`'s bytes.
    #[pyo3(text_signature = "($self, data, root)")]
    fn broadcast<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        root: usize,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut buf = data.to_vec();
        run(py, || self.c.broadcast(&mut buf, root))?;
        Ok(PyBytes::new(py, &buf))
    }

    /// Every rank's bytes to every rank.
    ///
    /// Args:
    ///     data: this rank's `counts[rank]` bytes.
    ///     counts: bytes of each rank, the same list on every rank.
    ///
    /// Returns:
    ///     All ranks' bytes, in rank order.
    #[pyo3(text_signature = "($self, data, counts)")]
    fn allgatherv<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        counts: Vec<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut recv = vec![0u8; counts.iter().sum()];
        run(py, || self.c.allgatherv(data, &mut recv, &counts))?;
        Ok(PyBytes::new(py, &recv))
    }

    /// Personalised exchange: `send_counts[r]` bytes to each rank r, and
    /// `recv_counts[r]` bytes from each (rank a's `send_counts[b]` equals rank
    /// b's `recv_counts[a]`).
    ///
    /// Args:
    ///     data: the parts for ranks 0, 1, ..., contiguous.
    ///     send_counts: bytes for each rank.
    ///     recv_counts: bytes from each rank.
    ///
    /// Returns:
    ///     The parts from ranks 0, 1, ..., contiguous.
    #[pyo3(text_signature = "($self, data, send_counts, recv_counts)")]
    fn alltoallv<'py>(
        &self,
        py: Python<'py>,
        data: &[u8],
        send_counts: Vec<usize>,
        recv_counts: Vec<usize>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let mut recv = vec![0u8; recv_counts.iter().sum()];
        run(py, || {
            self.c
                .alltoallv(data, &send_counts, &mut recv, &recv_counts)
        })?;
        Ok(PyBytes::new(py, &recv))
    }

    /// Ends every rank of the job with exit code `code` (MPI_Abort on
    /// MPI_COMM_WORLD); does not return under MPI. A loopback group records
    /// it: the other ranks' collectives then fail.
    #[pyo3(text_signature = "($self, code)")]
    fn abort(&self, py: Python<'_>, code: i32) {
        py.detach(|| self.c.abort(code))
    }

    fn __repr__(&self) -> String {
        format!(
            "Communicator(backend={:?}, rank={}, size={})",
            self.c.backend(),
            self.c.rank(),
            self.c.size()
        )
    }
}

/// The version of the NCCL library at `path` (no GPU needed).
///
/// Args:
///     path: the library file, e.g. `gpt2rs.mpi.nccl_library_path()`.
///
/// Returns:
///     major * 10000 + minor * 100 + patch (23206 for 2.32.6).
#[pyfunction]
#[pyo3(signature = (path), text_signature = "(path)")]
pub fn nccl_version(py: Python<'_>, path: PathBuf) -> PyResult<i32> {
    run(py, move || Nccl::open(&path)?.version())
}

/// A new NCCL unique id (`ncclGetUniqueId`; no GPU needed): one rank makes
/// it and sends it to the others, which pass it to the communicator's
/// initialisation.
///
/// Args:
///     path: the NCCL library file.
///
/// Returns:
///     The id's 128 bytes.
#[pyfunction]
#[pyo3(signature = (path), text_signature = "(path)")]
pub fn nccl_unique_id<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyBytes>> {
    let id = run(py, move || Nccl::open(&path)?.unique_id())?;
    Ok(PyBytes::new(py, &id.internal))
}

/// One all-reduce (sum) of `values` through a real NCCL communicator on GPU
/// `device`: `nranks` ranks sharing the 128-byte `unique_id` (made by rank 0
/// with `nccl_unique_id` and broadcast, e.g. over MPI), this one `rank`.
/// The GPU path's first-contact probe; needs a GPU.
///
/// Returns:
///     The reduced values (each rank's `values` summed).
#[pyfunction]
#[pyo3(
    signature = (path, unique_id, values, nranks=1, rank=0, device=0),
    text_signature = "(path, unique_id, values, nranks=1, rank=0, device=0)"
)]
pub fn nccl_all_reduce_probe(
    py: Python<'_>,
    path: PathBuf,
    unique_id: &[u8],
    values: Vec<f32>,
    nranks: usize,
    rank: usize,
    device: usize,
) -> PyResult<Vec<f32>> {
    let id = crate::dist::nccl::UniqueId::from_bytes(unique_id)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    run(py, move || {
        let nccl = Nccl::open(&path)?;
        let gpu = crate::kernels::cuda::context::Gpu::open(device)?;
        crate::dist::nccl::all_reduce_probe(&nccl, &gpu, nranks, rank, &id, &values)
    })
}
