//! Tasks: a codelet (`super::codelet`, carrying its scalar arguments) plus
//! the data handles it touches, each with an access mode, and the state the
//! dependency tracker and the workers keep for it.

use super::codelet::{Codelet, Where};
use super::handle::{Access, DataHandle};
use crate::error::Result;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

pub(crate) struct TaskBody {
    pub codelet: Box<dyn Codelet>,
    pub accesses: Vec<(DataHandle, Access)>,
}

#[derive(Default)]
pub(crate) struct Successors {
    pub done: bool,
    /// Once done, if it failed: the cancellation cause of what follows (the
    /// chain's first failure and its reason).
    pub failed: Option<String>,
    pub list: Vec<Arc<TaskInner>>,
}

pub struct TaskInner {
    pub id: u64,
    pub name: &'static str,
    pub priority: i32,
    pub where_: Where,
    pub flops: f64,
    /// Bytes a collective sends plus receives (0 for computing tasks).
    pub wire_bytes: u64,
    pub footprint: u64,
    /// The runtime's phase when the task was submitted (`Runtime::set_phase`).
    pub(crate) phase: usize,
    pub(crate) body: Mutex<Option<TaskBody>>,
    /// Unfinished predecessors, plus one while the task is being submitted.
    pub(crate) remaining: AtomicUsize,
    pub(crate) succ: Mutex<Successors>,
    /// Set when a predecessor failed: the task is then finished without running.
    pub(crate) cancel: Mutex<Option<String>>,
    pub(crate) result: Mutex<Option<Result<()>>>,
    pub(crate) done_cv: Condvar,
    /// The scheduler's estimate of its run time, in seconds (as f64 bits).
    pub(crate) est: AtomicU64,
    /// Launched by a device worker on the stream of its last unfinished
    /// predecessor (see `async_worker`): finishing that predecessor must not
    /// hand it to the scheduler again.
    pub(crate) early: std::sync::atomic::AtomicBool,
    /// A collective's place in the submission order of collectives (the
    /// order the communication worker issues them in).
    pub(crate) comm_seq: Option<u64>,
}

static NEXT_TASK: AtomicU64 = AtomicU64::new(1);

impl TaskInner {
    pub(crate) fn new(
        codelet: Box<dyn Codelet>,
        accesses: Vec<(DataHandle, Access)>,
        restrict: Where,
        priority: i32,
        phase: usize,
    ) -> TaskInner {
        let mut footprint = codelet.footprint() ^ 0x9e37_79b9_7f4a_7c15;
        for (h, _) in &accesses {
            footprint = (footprint ^ h.len() as u64).wrapping_mul(0x1000_0000_01b3);
        }
        TaskInner {
            id: NEXT_TASK.fetch_add(1, Ordering::Relaxed),
            name: codelet.name(),
            priority,
            where_: codelet.where_().and(restrict),
            flops: codelet.flops(),
            wire_bytes: codelet.wire_bytes(),
            footprint,
            phase,
            body: Mutex::new(Some(TaskBody { codelet, accesses })),
            remaining: AtomicUsize::new(1),
            succ: Mutex::new(Successors::default()),
            cancel: Mutex::new(None),
            result: Mutex::new(None),
            done_cv: Condvar::new(),
            est: AtomicU64::new(0),
            early: std::sync::atomic::AtomicBool::new(false),
            comm_seq: None,
        }
    }

    pub fn label(&self) -> String {
        format!("{}#{}", self.name, self.id)
    }

    pub(crate) fn wait(&self) -> Result<()> {
        let mut r = self.result.lock().unwrap();
        loop {
            if let Some(res) = r.as_ref() {
                return res.clone();
            }
            r = self.done_cv.wait(r).unwrap();
        }
    }

    pub fn is_done(&self) -> bool {
        self.result.lock().unwrap().is_some()
    }
}

/// A submitted task; `wait` blocks until it has run (or failed).
#[derive(Clone)]
pub struct Task(pub(crate) Arc<TaskInner>);

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Task({})", self.label())
    }
}

impl Task {
    pub fn wait(&self) -> Result<()> {
        self.0.wait()
    }
    pub fn id(&self) -> u64 {
        self.0.id
    }
    pub fn label(&self) -> String {
        self.0.label()
    }
}
