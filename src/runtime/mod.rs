//! The task runtime: StarPU's model in Rust. Tasks are submitted in program
//! order with an access mode per data handle; dependencies follow from that
//! order (sequential consistency per handle); workers on memory nodes run
//! them as soon as their inputs are ready, under a scheduling policy.
//!
//! ```
//! use gpt2rs::runtime::{Runtime, RuntimeConfig};
//! let rt = Runtime::new(RuntimeConfig { ncpu: Some(2), ..Default::default() }).unwrap();
//! rt.wait_all().unwrap();
//! assert_eq!(rt.stats().workers.len(), 2);
//! ```

mod async_worker;
pub mod buffer;
mod codelet;
mod comm_worker;
pub mod cuda;
pub mod handle;
pub mod memory;
pub mod node;
pub mod perfmodel;
pub mod sched;
mod sim_stream;
pub mod task;
pub mod trace;
pub mod worker;

pub use codelet::{codelet, Buffers, Codelet, DevBuffers, Where};
pub use handle::{Access, DataHandle};
pub use memory::BusStats;
pub use node::{NodeKind, NodeStats};
pub use sched::SchedKind;
pub use task::Task;
pub use worker::{WorkerKind, WorkerStats};

use crate::dtype::DType;
use crate::error::{arg_err, Error, Result};
use memory::Memory;
use node::MemoryNode;
use perfmodel::PerfModels;
use sched::Scheduler;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use task::TaskInner;
use trace::Trace;
use worker::WorkerInfo;

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// CPU workers; None = every core.
    pub ncpu: Option<usize>,
    /// Simulated device nodes, each with one worker.
    pub nsim: usize,
    pub scheduler: SchedKind,
    /// Byte limit per memory node (index 0 = host), None = unlimited.
    pub memory_limits: Vec<Option<u64>>,
    pub perf_model_dir: Option<PathBuf>,
    pub trace: bool,
    /// GPUs to use (devices first_gpu..first_gpu + ncuda), each a memory
    /// node with one worker.
    pub ncuda: usize,
    /// The first GPU's ordinal: a data-parallel rank uses the GPU of its
    /// local rank.
    pub first_gpu: usize,
    /// Worker kinds every task prefers (`--restrict`): a task whose codelet
    /// cannot run on any of them runs where it can instead.
    pub restrict: Where,
    /// A communication worker for collectives (data-parallel runs).
    pub comm: bool,
    /// The memory node the communication worker runs its collectives on:
    /// 0, the host (a blocking loop), or a device node, on a stream of its
    /// own with events: a GPU's NCCL stream, or a simulated device's.
    pub comm_node: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            ncpu: None,
            nsim: 0,
            ncuda: 0,
            first_gpu: 0,
            restrict: Where::ANY,
            scheduler: SchedKind::Eager,
            memory_limits: Vec::new(),
            perf_model_dir: None,
            trace: false,
            comm: false,
            comm_node: 0,
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Stats {
    pub scheduler: String,
    pub wall_s: f64,
    pub tasks_submitted: u64,
    pub workers: Vec<WorkerStats>,
    pub buses: Vec<BusStats>,
    pub nodes: Vec<NodeStats>,
    /// Tasks and worker-busy seconds by the phase they were submitted in.
    pub phases: Vec<PhaseStats>,
}

/// What the tasks submitted during one phase (`Runtime::set_phase`) cost.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PhaseStats {
    pub name: String,
    pub tasks: u64,
    pub busy_s: f64,
}

/// The phase tasks are tagged with at submission; names are kept in order,
/// so a task stores an index. Phase 0 is "" (none set).
#[derive(Default)]
struct Phases {
    names: Vec<String>,
    current: usize,
}

pub(crate) struct Inner {
    pub mem: Arc<Memory>,
    pub workers: Vec<WorkerInfo>,
    pub wstats: Vec<worker::StatsCell>,
    pub sched: Box<dyn Scheduler>,
    comm: comm_worker::CommQueue,
    /// The communication worker's stream on a GPU (a fork of the node's).
    pub comm_gpu: Option<Arc<cuda::GpuNode>>,
    pub perf: Arc<PerfModels>,
    pending: Mutex<usize>,
    idle: Condvar,
    first_error: Mutex<Option<Error>>,
    submitted: Mutex<u64>,
    phases: Mutex<Phases>,
    shut: AtomicBool,
    kind: SchedKind,
    restrict: Where,
}

struct Owner {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The runtime. Cheap to clone; shuts down (finishing submitted tasks and
/// saving performance models) when `shutdown` is called or the last clone drops.
#[derive(Clone)]
pub struct Runtime(Arc<Owner>);

impl Runtime {
    pub fn new(cfg: RuntimeConfig) -> Result<Runtime> {
        let ncpu = match cfg.ncpu {
            Some(0) => return Err(arg_err("Runtime", "ncpu must be >= 1")),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        let nnodes = 1 + cfg.nsim + cfg.ncuda;
        if cfg.memory_limits.len() > nnodes {
            return Err(arg_err(
                "Runtime",
                format!(
                    "{} memory limits given for {} memory nodes",
                    cfg.memory_limits.len(),
                    nnodes
                ),
            ));
        }
        if cfg.restrict.0 & Where::ANY.0 == 0 {
            return Err(arg_err("Runtime", "restrict names no worker kind"));
        }
        let limit = |i: usize| cfg.memory_limits.get(i).copied().flatten();
        let mut nodes = vec![MemoryNode::new(0, NodeKind::Host, 0, limit(0))];
        let mut gpus = vec![None];
        for i in 0..cfg.nsim {
            nodes.push(MemoryNode::new(i + 1, NodeKind::SimDevice, i, limit(i + 1)));
            gpus.push(None);
        }
        for i in 0..cfg.ncuda {
            let id = 1 + cfg.nsim + i;
            let dev = cuda::GpuNode::open(cfg.first_gpu + i)?;
            // Without a limit, the runtime keeps 90 % of what is free now, so
            // that eviction (not a failed cudaMalloc) handles a full GPU and
            // cuBLAS workspaces and modules still fit beside the tiles.
            let lim = match limit(id) {
                Some(l) => Some(l),
                None => Some((dev.gpu.mem_info()?.0 as f64 * 0.9) as u64),
            };
            nodes.push(MemoryNode::new(id, NodeKind::Cuda, i, lim));
            gpus.push(Some(dev));
        }
        let trace = Arc::new(Trace::new(cfg.trace));
        let mem = Arc::new(Memory::new(nodes, gpus, trace));
        let mut workers: Vec<WorkerInfo> = (0..ncpu)
            .map(|i| WorkerInfo {
                id: i,
                name: format!("cpu{i}"),
                kind: WorkerKind::Cpu,
                node: 0,
            })
            .collect();
        for i in 0..cfg.nsim {
            workers.push(WorkerInfo {
                id: workers.len(),
                name: format!("sim{i}"),
                kind: WorkerKind::Sim,
                node: i + 1,
            });
        }
        for i in 0..cfg.ncuda {
            workers.push(WorkerInfo {
                id: workers.len(),
                name: format!("cuda{i}"),
                kind: WorkerKind::Cuda,
                node: 1 + cfg.nsim + i,
            });
        }
        let perf = Arc::new(PerfModels::load(cfg.perf_model_dir.clone()));
        // The schedulers place computing tasks only; the communication worker
        // (last) takes its tasks from `comm`, in submission order.
        let sched: Box<dyn Scheduler> = match cfg.scheduler {
            SchedKind::Eager => Box::new(sched::Eager::new(&workers)),
            SchedKind::Dmda => Box::new(sched::Dmda::new(&workers, perf.clone(), mem.clone())),
        };
        let mut comm_gpu = None;
        if cfg.comm {
            if cfg.comm_node >= nnodes {
                return Err(arg_err(
                    "Runtime",
                    format!(
                        "comm_node {} is neither the host (0) nor a device node (1..{nnodes})",
                        cfg.comm_node
                    ),
                ));
            }
            if let Some(dev) = &mem.gpus[cfg.comm_node] {
                comm_gpu = Some(dev.fork_stream()?);
            }
            workers.push(WorkerInfo {
                id: workers.len(),
                name: "comm0".into(),
                kind: WorkerKind::Comm,
                node: cfg.comm_node,
            });
        }
        let wstats = workers
            .iter()
            .map(|w| {
                Mutex::new(WorkerStats {
                    id: w.id,
                    name: w.name.clone(),
                    kind: w.kind.name().into(),
                    node: w.node,
                    ..Default::default()
                })
            })
            .collect();
        let inner = Arc::new(Inner {
            mem,
            workers,
            wstats,
            sched,
            comm: Default::default(),
            comm_gpu,
            perf,
            pending: Mutex::new(0),
            idle: Condvar::new(),
            first_error: Mutex::new(None),
            submitted: Mutex::new(0),
            phases: Mutex::new(Phases {
                names: vec![String::new()],
                current: 0,
            }),
            shut: AtomicBool::new(false),
            kind: cfg.scheduler,
            restrict: cfg.restrict,
        });
        let mut threads = Vec::new();
        for w in 0..inner.workers.len() {
            let i = inner.clone();
            let t = std::thread::Builder::new()
                .name(format!("gpt2rs-{}", inner.workers[w].name))
                .spawn(move || worker::run(i, w))?;
            threads.push(t);
        }
        Ok(Runtime(Arc::new(Owner {
            inner,
            threads: Mutex::new(threads),
        })))
    }

    /// True when both are clones of one runtime.
    pub fn same(&self, other: &Runtime) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn inner(&self) -> &Arc<Inner> {
        &self.0.inner
    }

    pub fn is_shut_down(&self) -> bool {
        self.inner().shut.load(Ordering::Acquire)
    }

    fn check_alive(&self) -> Result<()> {
        if self.is_shut_down() {
            Err(Error::Shutdown)
        } else {
            Ok(())
        }
    }

    pub fn nnodes(&self) -> usize {
        self.inner().mem.nodes.len()
    }
    pub fn nworkers(&self) -> usize {
        self.inner().workers.len()
    }
    /// Workers of one kind (CPU cores, simulated devices or GPUs).
    pub fn nworkers_of(&self, kind: WorkerKind) -> usize {
        self.inner()
            .workers
            .iter()
            .filter(|w| w.kind == kind)
            .count()
    }
    /// The GPU the communication worker runs its collectives on (on a
    /// stream of its own), if it runs them on one.
    pub fn comm_gpu(&self) -> Option<Arc<crate::kernels::cuda::context::Gpu>> {
        self.inner().comm_gpu.as_ref().map(|d| d.gpu.clone())
    }
    pub fn restrict(&self) -> Where {
        self.inner().restrict
    }
    pub fn scheduler(&self) -> SchedKind {
        self.inner().kind
    }

    /// A new handle of `len` elements (holding zeros; memory comes lazily).
    pub fn new_handle(&self, dtype: DType, len: usize) -> Result<DataHandle> {
        self.check_alive()?;
        Ok(DataHandle::new(&self.inner().mem, dtype, len))
    }

    /// A new handle with a host replica filled by `fill` (registered, like
    /// `starpu_data_register` of user memory).
    pub fn handle_from_fn(
        &self,
        dtype: DType,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<DataHandle> {
        self.check_alive()?;
        let h = DataHandle::new(&self.inner().mem, dtype, len);
        self.inner().mem.register_host(&h.0, fill);
        Ok(h)
    }

    /// Submits a task. Returns at once; the task runs when its dependencies
    /// (implied by submission order) are satisfied.
    pub fn submit(
        &self,
        codelet: Box<dyn Codelet>,
        accesses: Vec<(DataHandle, Access)>,
    ) -> Result<Task> {
        // The runtime's restriction is a preference: a codelet that cannot
        // honour it (a CPU-only op in a GPU run) runs wherever it can. It
        // concerns computing workers: collectives have one place to run.
        let mut restrict = self.inner().restrict;
        if codelet.where_() == Where::COMM {
            restrict = Where::COMM;
        } else if !self.can_run(codelet.where_().and(restrict)) {
            restrict = Where::ANY;
        }
        self.submit_with(codelet, accesses, restrict, 0)
    }

    /// Whether some worker of this runtime is of a kind in `w`.
    fn can_run(&self, w: Where) -> bool {
        self.inner()
            .workers
            .iter()
            .any(|k| w.and(k.kind.mask()).0 != 0)
    }

    pub fn submit_with(
        &self,
        codelet: Box<dyn Codelet>,
        accesses: Vec<(DataHandle, Access)>,
        restrict: Where,
        priority: i32,
    ) -> Result<Task> {
        self.check_alive()?;
        let inner = self.inner();
        let name = codelet.name();
        if accesses.len() > 64 {
            return Err(arg_err(name, "a task takes at most 64 operands"));
        }
        for (i, (h, m)) in accesses.iter().enumerate() {
            if !Arc::ptr_eq(&h.0.mem, &inner.mem) {
                return Err(arg_err(name, "an operand belongs to another runtime"));
            }
            for (h2, m2) in &accesses[..i] {
                if h2.0.id == h.0.id && (m.writes() || m2.writes()) {
                    return Err(arg_err(
                        name,
                        "the same data handle is written and used twice by one task",
                    ));
                }
            }
        }
        let phase = inner.phases.lock().unwrap().current;
        let mut t = TaskInner::new(codelet, accesses, restrict, priority, phase);
        if !self.can_run(t.where_) {
            return Err(arg_err(
                name,
                if t.where_ == Where::COMM {
                    "a collective needs a runtime with a communication worker (comm=True)"
                } else {
                    "no worker of this runtime can run this task"
                },
            ));
        }
        if t.where_ == Where::COMM {
            t.comm_seq = Some(inner.comm.next_seq());
        }
        let t = Arc::new(t);
        {
            *inner.pending.lock().unwrap() += 1;
            *inner.submitted.lock().unwrap() += 1;
        }
        let ops = {
            let b = t.body.lock().unwrap();
            worker::distinct(&b.as_ref().unwrap().accesses)
        };
        for (h, mode) in &ops {
            let preds = {
                let mut d = h.deps.lock().unwrap();
                deps_for(&mut d, &t, *mode)
            };
            for p in preds {
                add_dependency(&t, &p, *mode);
            }
        }
        drop(ops);
        if t.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            inner.ready(t.clone());
        }
        Ok(Task(t))
    }

    /// Waits for every submitted task; returns the first failure since the
    /// last call (the runtime stays usable after it).
    pub fn wait_all(&self) -> Result<()> {
        let inner = self.inner();
        let mut p = inner.pending.lock().unwrap();
        while *p > 0 {
            p = inner.idle.wait(p).unwrap();
        }
        drop(p);
        match inner.first_error.lock().unwrap().take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits for the tasks writing `h`, then hands its host copy to `f`.
    pub fn read_handle<R>(&self, h: &DataHandle, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        self.check_alive()?;
        let writers = h.0.deps.lock().unwrap().writers.clone();
        for w in &writers {
            w.wait()?;
        }
        let inner = self.inner();
        let ops = [(h.0.clone(), Access::R)];
        inner.mem.acquire(0, &ops, "read to host", &mut || false)?;
        let r = {
            let coh = h.0.coh.lock().unwrap();
            f(coh.replicas[0].as_ref().unwrap().buf.host().bytes())
        };
        inner.mem.unpin(&h.0, 0);
        Ok(r)
    }

    /// Drops every replica of `h` once the tasks submitted on it so far have
    /// run: it holds zeros again and its memory is given back (StarPU's
    /// invalidate). No task may be submitted on `h` meanwhile.
    pub fn discard(&self, h: &DataHandle) -> Result<()> {
        self.check_alive()?;
        let pending: Vec<_> = {
            let d = h.0.deps.lock().unwrap();
            d.writers.iter().chain(&d.readers).cloned().collect()
        };
        for t in &pending {
            t.wait()?;
        }
        let mut coh = h.0.coh.lock().unwrap();
        for (node, r) in coh.replicas.iter_mut().enumerate() {
            if r.as_ref().is_some_and(|r| r.pins > 0) {
                return Err(arg_err("discard", "the handle is in use by a task"));
            }
            if r.take().is_some() {
                self.inner()
                    .mem
                    .release_bytes(node, h.id(), h.bytes() as u64);
            }
        }
        Ok(())
    }

    /// Tags the tasks submitted from now on with phase `name` (a loop's
    /// forward/backward, optimizer, evaluation), so that `stats` can say what
    /// each phase cost in worker time, however the phases' tasks overlap.
    pub fn set_phase(&self, name: &str) {
        let mut p = self.inner().phases.lock().unwrap();
        p.current = match p.names.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                p.names.push(name.to_owned());
                p.names.len() - 1
            }
        };
    }

    pub fn stats(&self) -> Stats {
        let inner = self.inner();
        let workers: Vec<WorkerStats> = inner
            .wstats
            .iter()
            .map(|s| s.lock().unwrap().clone())
            .collect();
        let names = inner.phases.lock().unwrap().names.clone();
        let mut phases: Vec<PhaseStats> = names
            .into_iter()
            .map(|name| PhaseStats {
                name,
                ..Default::default()
            })
            .collect();
        for w in &workers {
            for (p, &(tasks, busy_s)) in phases.iter_mut().zip(&w.by_phase) {
                p.tasks += tasks;
                p.busy_s += busy_s;
            }
        }
        // Phase 0 ("": none set) only when it ran something.
        if phases[0].tasks == 0 {
            phases.remove(0);
        }
        Stats {
            scheduler: inner.kind.name().into(),
            wall_s: inner.mem.trace.t0.elapsed().as_secs_f64(),
            tasks_submitted: *inner.submitted.lock().unwrap(),
            workers,
            buses: inner.mem.bus_stats(),
            nodes: inner.mem.nodes.iter().map(|n| n.stats()).collect(),
            phases,
        }
    }

    pub fn save_trace(&self, path: &std::path::Path) -> Result<()> {
        let inner = self.inner();
        if !inner.mem.trace.enabled {
            return Err(arg_err(
                "save_trace",
                "tracing is off: create the runtime with trace=True",
            ));
        }
        let workers: Vec<String> = inner.workers.iter().map(|w| w.name.clone()).collect();
        let nodes: Vec<String> = inner.mem.nodes.iter().map(|n| n.name.clone()).collect();
        inner
            .mem
            .trace
            .write(path, &workers, &nodes)
            .map_err(|e| Error::Io(format!("cannot write trace {}: {e}", path.display())))
    }

    pub fn save_perf_models(&self) -> Result<()> {
        self.inner()
            .perf
            .save()
            .map_err(|e| Error::Io(format!("cannot save performance models: {e}")))
    }

    pub fn perf_model_entries(&self) -> usize {
        self.inner().perf.len()
    }

    /// Finishes every submitted task, stops the workers and saves the
    /// performance models. Later submissions fail with `Error::Shutdown`.
    pub fn shutdown(&self) -> Result<()> {
        self.0.shutdown()
    }
}

impl Owner {
    fn shutdown(&self) -> Result<()> {
        let mut threads = self.threads.lock().unwrap();
        if threads.is_empty() {
            return Ok(());
        }
        let inner = &self.inner;
        {
            let mut p = inner.pending.lock().unwrap();
            while *p > 0 {
                p = inner.idle.wait(p).unwrap();
            }
        }
        inner.shut.store(true, Ordering::Release);
        inner.sched.shutdown();
        inner.comm.shutdown();
        for t in threads.drain(..) {
            let _ = t.join();
        }
        inner
            .perf
            .save()
            .map_err(|e| Error::Io(format!("cannot save performance models: {e}")))
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        let _ = self.shutdown();
        buffer::trim_pool();
    }
}

/// Updates a handle's dependency state for a new access and returns the
/// tasks the new one must wait for.
fn deps_for(d: &mut handle::DepState, t: &Arc<TaskInner>, mode: Access) -> Vec<Arc<TaskInner>> {
    match mode {
        Access::R => {
            let p = d.writers.clone();
            d.readers.push(t.clone());
            p
        }
        Access::W | Access::RW => {
            let mut p = std::mem::take(&mut d.writers);
            p.append(&mut d.readers);
            d.writers = vec![t.clone()];
            d.writers_acc = false;
            d.acc_base.clear();
            p
        }
        Access::ACC => {
            if d.writers_acc && d.readers.is_empty() {
                // Another task of the same ACC run: no order among them.
                d.writers.push(t.clone());
                d.acc_base.clone()
            } else {
                let mut p = std::mem::take(&mut d.writers);
                p.append(&mut d.readers);
                d.acc_base = p.clone();
                d.writers = vec![t.clone()];
                d.writers_acc = true;
                p
            }
        }
    }
}

fn add_dependency(t: &Arc<TaskInner>, p: &Arc<TaskInner>, mode: Access) {
    let mut s = p.succ.lock().unwrap();
    if s.done {
        // A finished writer that failed leaves this handle's contents invalid.
        if let (Some(cause), true) = (&s.failed, mode.reads()) {
            t.cancel
                .lock()
                .unwrap()
                .get_or_insert_with(|| cause.clone());
        }
        return;
    }
    t.remaining.fetch_add(1, Ordering::AcqRel);
    s.list.push(t.clone());
}

impl Inner {
    pub(crate) fn ready(&self, t: Arc<TaskInner>) {
        match t.comm_seq {
            Some(seq) => self.comm.push(seq, t),
            None => self.sched.push(t),
        }
    }

    /// Finishes a task: wakes its waiters and releases its successors, which
    /// are cancelled if it failed.
    pub(crate) fn complete(&self, task: &Arc<TaskInner>, res: Result<()>) {
        if let Err(e) = &res {
            let mut fe = self.first_error.lock().unwrap();
            let replace = match &*fe {
                None => true,
                Some(Error::Cancelled { .. }) => !matches!(e, Error::Cancelled { .. }),
                Some(_) => false,
            };
            if replace {
                *fe = Some(e.clone());
            }
        }
        // What cancels the successors: the first failure of the chain, with
        // its reason, so that whichever task the user waits on says why.
        let cause = match &res {
            Ok(()) => None,
            Err(Error::Cancelled { cause, .. }) => Some(cause.clone()),
            Err(Error::Task { reason, .. }) => Some(format!("{} ({reason})", task.label())),
            Err(e) => Some(format!("{} ({e})", task.label())),
        };
        *task.result.lock().unwrap() = Some(res);
        task.done_cv.notify_all();
        let succ = {
            let mut s = task.succ.lock().unwrap();
            s.done = true;
            s.failed = cause.clone();
            std::mem::take(&mut s.list)
        };
        for s in succ {
            if let Some(cause) = &cause {
                s.cancel
                    .lock()
                    .unwrap()
                    .get_or_insert_with(|| cause.clone());
            }
            if s.remaining.fetch_sub(1, Ordering::AcqRel) == 1 && !s.early.load(Ordering::Acquire) {
                self.ready(s);
            }
        }
        let mut p = self.pending.lock().unwrap();
        *p -= 1;
        if *p == 0 {
            self.idle.notify_all();
        }
    }
}
