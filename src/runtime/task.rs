//! Codelets and tasks. A codelet is a named op with one implementation per
//! worker kind and a cost model; a task is a codelet (carrying its scalar
//! arguments) plus the data handles it touches, each with an access mode.

use super::cuda::DevBuffers;
use super::handle::{Access, DataHandle};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// Which worker kinds may run a task (bit mask).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Where(pub u8);

impl Where {
    pub const CPU: Where = Where(1);
    pub const SIM: Where = Where(2);
    pub const CUDA: Where = Where(4);
    /// Every worker that runs the CPU implementation (CPU cores and the simulated device).
    pub const ANY_CPU: Where = Where(3);
    /// Every worker kind: for codelets with a CUDA implementation too.
    pub const ANY: Where = Where(7);
    pub fn contains(self, o: Where) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn and(self, o: Where) -> Where {
        Where(self.0 & o.0)
    }
}

/// A named op and its implementations. Implementors carry the task's scalar
/// arguments (shapes, alpha, beta) as fields.
pub trait Codelet: Send + Sync {
    fn name(&self) -> &'static str;
    /// Floating-point operations, for statistics and the scheduler.
    fn flops(&self) -> f64 {
        0.0
    }
    /// Shape parameters that set the cost (combined with operand sizes to key
    /// the performance model).
    fn footprint(&self) -> u64 {
        0
    }
    fn where_(&self) -> Where {
        Where::ANY_CPU
    }
    /// The CPU implementation, run on host-memory replicas.
    fn cpu(&self, bufs: &Buffers) -> Result<()>;
    /// The CUDA implementation: enqueues the work on the device's stream and
    /// returns without waiting for it (the worker tracks completion with an
    /// event). Only called when `where_` includes [`Where::CUDA`].
    fn cuda(&self, bufs: &DevBuffers) -> Result<()> {
        let _ = bufs;
        Err(Error::Argument {
            op: self.name().into(),
            msg: "this codelet has no CUDA implementation".into(),
        })
    }
}

pub(crate) struct BufRef {
    pub ptr: *mut u8,
    pub len: usize,
    pub dtype: DType,
    pub mode: Access,
}

/// The operands of a running task, in the order they were submitted.
pub struct Buffers<'a> {
    pub(crate) items: &'a [BufRef],
    pub(crate) borrowed: Cell<u64>,
}

impl<'a> Buffers<'a> {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn dtype(&self, i: usize) -> DType {
        self.items[i].dtype
    }

    fn check<T: Element>(&self, i: usize) -> Result<&BufRef> {
        let b = self.items.get(i).ok_or_else(|| Error::Argument {
            op: "codelet".into(),
            msg: format!("operand {i} does not exist"),
        })?;
        if b.dtype != T::DTYPE {
            return Err(Error::DType {
                op: format!("operand {i}"),
                expected: b.dtype,
                got: T::DTYPE,
            });
        }
        Ok(b)
    }

    /// Operand `i` for reading.
    pub fn r<T: Element>(&self, i: usize) -> Result<&'a [T]> {
        let b = self.check::<T>(i)?;
        if self.borrowed.get() & (1 << i) != 0 {
            return Err(Error::Argument {
                op: "codelet".into(),
                msg: format!("operand {i} is borrowed for writing"),
            });
        }
        // SAFETY: the replica is pinned for the task's duration, and no task
        // writes it concurrently (sequential consistency per handle).
        Ok(unsafe { std::slice::from_raw_parts(b.ptr as *const T, b.len) })
    }

    /// Operand `i` for writing (its access mode must be W, RW or ACC).
    #[allow(clippy::mut_from_ref)]
    pub fn w<T: Element>(&self, i: usize) -> Result<&'a mut [T]> {
        let b = self.check::<T>(i)?;
        if !b.mode.writes() || self.borrowed.get() & (1 << i) != 0 {
            return Err(Error::Argument {
                op: "codelet".into(),
                msg: format!("operand {i} is not writable here (mode {:?})", b.mode),
            });
        }
        self.borrowed.set(self.borrowed.get() | (1 << i));
        // SAFETY: as in `r`, plus this task is the only one accessing a handle
        // it writes, the same handle never appears twice in a task that writes
        // it, and the borrow mask forbids a second &mut of this operand.
        Ok(unsafe { std::slice::from_raw_parts_mut(b.ptr as *mut T, b.len) })
    }
}

pub(crate) struct TaskBody {
    pub codelet: Box<dyn Codelet>,
    pub accesses: Vec<(DataHandle, Access)>,
}

#[derive(Default)]
pub(crate) struct Successors {
    pub done: bool,
    pub failed: bool,
    pub list: Vec<Arc<TaskInner>>,
}

pub struct TaskInner {
    pub id: u64,
    pub name: &'static str,
    pub priority: i32,
    pub where_: Where,
    pub flops: f64,
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

/// A codelet from a closure: the op layer's usual way to submit a task whose
/// arguments are captured values.
pub struct FnCodelet<F> {
    name: &'static str,
    flops: f64,
    footprint: u64,
    f: F,
}

impl<F: Fn(&Buffers) -> Result<()> + Send + Sync> Codelet for FnCodelet<F> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn flops(&self) -> f64 {
        self.flops
    }
    fn footprint(&self) -> u64 {
        self.footprint
    }
    fn cpu(&self, bufs: &Buffers) -> Result<()> {
        (self.f)(bufs)
    }
}

/// Boxes `f` as a codelet named `name` costing `flops`, keyed by `footprint`.
pub fn codelet<F>(name: &'static str, flops: f64, footprint: u64, f: F) -> Box<dyn Codelet>
where
    F: Fn(&Buffers) -> Result<()> + Send + Sync + 'static,
{
    Box::new(FnCodelet {
        name,
        flops,
        footprint,
        f,
    })
}
