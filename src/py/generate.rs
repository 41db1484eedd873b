//! `gpt2rs._gpt2rs.KvCache`: the key/value cache of incremental decoding.
//! Made by `Gpt2Core.new_cache` and passed to `Gpt2Core.forward_cached`;
//! `gpt2rs.GPT2LMHead.generate` drives both.

use crate::model::kvcache::KvCache;
use pyo3::prelude::*;
use std::sync::Mutex;

/// Keys and values of every position a model has seen, per layer; use
/// `GPT2LMHead.generate`, or `Gpt2Core.new_cache` / `forward_cached`.
#[pyclass(name = "KvCache", module = "gpt2rs._gpt2rs", frozen)]
pub struct PyKvCache {
    pub(crate) c: Mutex<KvCache>,
}

impl PyKvCache {
    pub(crate) fn new(c: KvCache) -> Self {
        PyKvCache { c: Mutex::new(c) }
    }
}

#[pymethods]
impl PyKvCache {
    /// Positions cached so far.
    fn __len__(&self) -> usize {
        self.c.lock().unwrap().len()
    }

    /// Batch rows.
    #[getter]
    fn batch(&self) -> usize {
        self.c.lock().unwrap().batch()
    }

    /// The most positions the cache holds (n_positions).
    #[getter]
    fn capacity(&self) -> usize {
        self.c.lock().unwrap().capacity()
    }

    /// Forgets every cached position.
    #[pyo3(text_signature = "($self)")]
    fn reset(&self) {
        self.c.lock().unwrap().reset()
    }

    /// Keeps the first `length` positions.
    #[pyo3(text_signature = "($self, length)")]
    fn truncate(&self, length: usize) -> PyResult<()> {
        Ok(self.c.lock().unwrap().truncate(length)?)
    }

    fn __repr__(&self) -> String {
        let c = self.c.lock().unwrap();
        format!(
            "KvCache(batch={}, len={}, capacity={})",
            c.batch(),
            c.len(),
            c.capacity()
        )
    }
}
