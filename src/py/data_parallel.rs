//! `gpt2rs._gpt2rs.DataParallelCore`: the compiled half of `gpt2rs.dist`'s
//! data parallelism for one model (its buckets, tile owners, collectives).

use super::dist::PyCommunicator;
use super::error::guard;
use super::model::{PyGpt2Core, PyOptimizerCore};
use crate::dist::data_parallel::DataParallel;
use pyo3::prelude::*;
use std::path::PathBuf;

/// Data parallelism for one model over one communicator; use `gpt2rs.dist`.
#[pyclass(name = "DataParallelCore", module = "gpt2rs._gpt2rs", frozen)]
pub struct PyDataParallel {
    dp: DataParallel,
    model: Py<PyGpt2Core>,
}

#[pymethods]
impl PyDataParallel {
    #[new]
    #[pyo3(signature = (model, comm, zero_stage=0, bucket_bytes=4 << 20, nccl=None))]
    fn new(
        py: Python<'_>,
        model: Py<PyGpt2Core>,
        comm: &PyCommunicator,
        zero_stage: u8,
        bucket_bytes: usize,
        nccl: Option<PathBuf>,
    ) -> PyResult<Self> {
        let c = comm.comm().clone();
        let dp = {
            let m = &model.get().m;
            py.detach(|| {
                guard(|| DataParallel::new(m, c, zero_stage, bucket_bytes, nccl.as_deref()))
            })?
        };
        Ok(PyDataParallel { dp, model })
    }

    #[getter]
    fn rank(&self) -> usize {
        self.dp.rank()
    }
    #[getter]
    fn world_size(&self) -> usize {
        self.dp.world_size()
    }
    #[getter]
    fn zero_stage(&self) -> u8 {
        self.dp.zero_stage()
    }
    #[getter]
    fn nbuckets(&self) -> usize {
        self.dp.nbuckets()
    }

    /// Submits the reduction of the gradients over the ranks.
    fn reduce_grads(&self, py: Python<'_>) -> PyResult<()> {
        let m = &self.model.get().m;
        py.detach(|| guard(|| self.dp.reduce_grads(m)))
    }

    /// The global norm of the reduced gradients; clips them to `max_norm`.
    fn clip_grad_norm(&self, py: Python<'_>, max_norm: f64) -> PyResult<f64> {
        let m = &self.model.get().m;
        py.detach(|| guard(|| self.dp.clip_grad_norm(m, max_norm)))
    }

    /// Restricts `optimizer`'s steps to the tiles this rank owns (ZeRO-1).
    fn attach(&self, optimizer: &PyOptimizerCore) -> PyResult<()> {
        let mask = (self.dp.zero_stage() == 1).then(|| self.dp.stepped_tiles());
        guard(|| optimizer.with(|o| o.set_stepped_tiles(mask)))
    }

    /// Stage 1: submits the gathering of the updated weights from their owners.
    fn gather_params(&self, py: Python<'_>) -> PyResult<()> {
        let m = &self.model.get().m;
        py.detach(|| guard(|| self.dp.gather_params(m)))
    }

    /// Stage 1: gathers the master weights (bf16 models) from their owners.
    fn gather_masters(&self, py: Python<'_>) -> PyResult<()> {
        let m = &self.model.get().m;
        py.detach(|| guard(|| self.dp.gather(m, |p| m.params.list[p].master.as_ref())))
    }

    /// Stage 1: frees the master weights (bf16 models) of the tiles other
    /// ranks own (after `gather_masters` served a checkpoint, or a load).
    fn release_masters(&self, py: Python<'_>) -> PyResult<()> {
        let m = &self.model.get().m;
        py.detach(|| guard(|| self.dp.release_masters(m)))
    }

    /// Stage 1: gathers `optimizer`'s state from the tiles' owners, so that
    /// every rank holds all of it (for a checkpoint); `release_state` gives
    /// the memory back afterwards.
    fn gather_state(&self, py: Python<'_>, optimizer: &PyOptimizerCore) -> PyResult<()> {
        let m = &self.model.get().m;
        py.detach(|| {
            guard(|| {
                let states = optimizer.with(|o| {
                    let names = o.kind.state_names().len();
                    Ok((0..names)
                        .map(|k| o.state_of(k))
                        .collect::<Vec<Vec<crate::tensor::Tensor>>>())
                })?;
                for per_param in states {
                    self.dp.gather(m, |p| per_param.get(p))?;
                }
                m.runtime().wait_all()
            })
        })
    }

    /// Stage 1: frees the optimizer state of the tiles other ranks own.
    fn release_state(&self, optimizer: &PyOptimizerCore) -> PyResult<()> {
        guard(|| optimizer.with(|o| o.release_unstepped_state()))
    }
}
