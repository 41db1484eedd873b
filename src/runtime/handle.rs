//! Data handles: one per tile. A handle is a logical buffer with at most one
//! replica per memory node (a replica present is a valid copy: MSI where an
//! invalidated copy is freed at once, so "Modified" is "the only replica").
//! A handle with no replica at all holds zeros; memory is allocated lazily
//! where the handle is first needed.
//!
//! Besides coherence, each handle carries the state that turns submission
//! order into dependencies (sequential consistency: RAW, WAR, WAW) and the lock
//! that keeps commutative ACC tasks from running at the same time.

use super::buffer::Buf;
use super::memory::Memory;
use super::task::TaskInner;
use crate::dtype::DType;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How a task uses a data handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Access {
    R,
    W,
    RW,
    /// Commutative accumulation: tasks in a run of ACC accesses to one handle
    /// may execute in any order, one at a time.
    ACC,
}

impl Access {
    pub fn reads(self) -> bool {
        !matches!(self, Access::W)
    }
    pub fn writes(self) -> bool {
        !matches!(self, Access::R)
    }
}

pub(crate) struct Replica {
    pub buf: Buf,
    pub pins: u32,
    pub last_use: u64,
}

pub(crate) struct Coherence {
    /// One slot per memory node.
    pub replicas: Vec<Option<Replica>>,
}

impl Coherence {
    pub fn valid_count(&self) -> usize {
        self.replicas.iter().filter(|r| r.is_some()).count()
    }
}

/// Submission-side dependency state.
#[derive(Default)]
pub(crate) struct DepState {
    /// The last W/RW task, or every task of the current run of ACC tasks.
    pub writers: Vec<Arc<TaskInner>>,
    pub writers_acc: bool,
    /// Dependencies shared by every task of the current ACC run.
    pub acc_base: Vec<Arc<TaskInner>>,
    /// Readers since the last write.
    pub readers: Vec<Arc<TaskInner>>,
}

#[derive(Default)]
pub(crate) struct AccLock {
    pub busy: bool,
    pub waiters: Vec<Arc<TaskInner>>,
}

pub struct HandleInner {
    pub id: u64,
    pub dtype: DType,
    pub len: usize,
    pub(crate) mem: Arc<Memory>,
    pub(crate) coh: Mutex<Coherence>,
    pub(crate) deps: Mutex<DepState>,
    pub(crate) acc: Mutex<AccLock>,
}

impl HandleInner {
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
}

/// A reference-counted data handle.
#[derive(Clone)]
pub struct DataHandle(pub(crate) Arc<HandleInner>);

static NEXT_HANDLE: AtomicU64 = AtomicU64::new(1);

impl DataHandle {
    pub(crate) fn new(mem: &Arc<Memory>, dtype: DType, len: usize) -> DataHandle {
        let n = mem.nodes.len();
        DataHandle(Arc::new(HandleInner {
            id: NEXT_HANDLE.fetch_add(1, Ordering::Relaxed),
            dtype,
            len,
            mem: mem.clone(),
            coh: Mutex::new(Coherence {
                replicas: (0..n).map(|_| None).collect(),
            }),
            deps: Mutex::new(DepState::default()),
            acc: Mutex::new(AccLock::default()),
        }))
    }

    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn len(&self) -> usize {
        self.0.len
    }
    pub fn is_empty(&self) -> bool {
        self.0.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.0.bytes()
    }

    /// Memory nodes holding a valid replica (for tests and schedulers).
    pub fn valid_nodes(&self) -> Vec<usize> {
        let c = self.0.coh.lock().unwrap();
        (0..c.replicas.len())
            .filter(|&i| c.replicas[i].is_some())
            .collect()
    }
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        let bytes = self.bytes() as u64;
        let coh = self.coh.get_mut().unwrap();
        for (node, r) in coh.replicas.iter_mut().enumerate() {
            if r.take().is_some() {
                self.mem.release_bytes(node, self.id, bytes);
            }
        }
    }
}
