//! Workers: one thread each, one task at a time. A worker makes its task's
//! operands valid on its memory node, runs the implementation for its kind,
//! and records statistics, the performance model and the trace.

use super::codelet::{BufRef, Buffers, Operands, Where};
use super::handle::{Access, HandleInner};
use super::task::{TaskBody, TaskInner};
use super::trace::Event;
use super::Inner;
use crate::error::{Error, Result};
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerKind {
    Cpu,
    /// Runs CPU implementations on its own (simulated device) memory node.
    Sim,
    /// Owns one GPU and its stream; launches asynchronously.
    Cuda,
    /// Issues collectives, in submission order (`comm_worker`).
    Comm,
}

impl WorkerKind {
    pub fn name(self) -> &'static str {
        match self {
            WorkerKind::Cpu => "cpu",
            WorkerKind::Sim => "sim",
            WorkerKind::Cuda => "cuda",
            WorkerKind::Comm => "comm",
        }
    }
    pub fn parse(s: &str) -> Option<WorkerKind> {
        match s {
            "cpu" => Some(WorkerKind::Cpu),
            "sim" => Some(WorkerKind::Sim),
            "cuda" => Some(WorkerKind::Cuda),
            "comm" => Some(WorkerKind::Comm),
            _ => None,
        }
    }
    pub fn mask(self) -> Where {
        match self {
            WorkerKind::Cpu => Where::CPU,
            WorkerKind::Sim => Where::SIM,
            WorkerKind::Cuda => Where::CUDA,
            WorkerKind::Comm => Where::COMM,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub id: usize,
    pub name: String,
    pub kind: WorkerKind,
    pub node: usize,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct WorkerStats {
    pub id: usize,
    pub name: String,
    pub kind: String,
    pub node: usize,
    pub tasks: u64,
    pub failed: u64,
    pub busy_s: f64,
    pub flops: f64,
    /// (tasks, busy seconds) per phase id; `Runtime::stats` names them.
    #[serde(skip)]
    pub(crate) by_phase: Vec<(u64, f64)>,
}

pub(crate) fn run(inner: Arc<Inner>, wid: usize) {
    match inner.workers[wid].kind {
        WorkerKind::Cpu => {}
        WorkerKind::Comm => return super::comm_worker::run(inner, wid),
        WorkerKind::Sim | WorkerKind::Cuda => return super::async_worker::run(inner, wid),
    }
    while let Some(task) = inner.sched.pop(wid, true) {
        execute(&inner, wid, task);
    }
}

/// The distinct handles of a task, with one mode each (two reads stay a read).
pub(crate) fn distinct(
    accesses: &[(super::handle::DataHandle, Access)],
) -> Vec<(Arc<HandleInner>, Access)> {
    let mut out: Vec<(Arc<HandleInner>, Access)> = Vec::with_capacity(accesses.len());
    for (h, m) in accesses {
        if !out.iter().any(|(o, _)| o.id == h.0.id) {
            out.push((h.0.clone(), *m));
        }
    }
    out
}

/// Tries to take the ACC locks of a task, in handle order. On failure, parks
/// the task on the busy handle (it is pushed again when that lock is freed).
fn lock_acc(inner: &Inner, task: &Arc<TaskInner>, acc: &[Arc<HandleInner>]) -> bool {
    for (i, h) in acc.iter().enumerate() {
        let mut l = h.acc.lock().unwrap();
        if l.busy {
            l.waiters.push(task.clone());
            drop(l);
            unlock_acc(inner, &acc[..i]);
            return false;
        }
        l.busy = true;
    }
    true
}

fn unlock_acc(inner: &Inner, acc: &[Arc<HandleInner>]) {
    for h in acc {
        let waiters = {
            let mut l = h.acc.lock().unwrap();
            l.busy = false;
            std::mem::take(&mut l.waiters)
        };
        for t in waiters {
            inner.ready(t);
        }
    }
}

/// A task taken by a worker: its body, its distinct operands and the ACC
/// locks it holds.
pub(crate) struct Started {
    pub task: Arc<TaskInner>,
    pub body: TaskBody,
    pub ops: Vec<(Arc<HandleInner>, Access)>,
    acc: Vec<Arc<HandleInner>>,
}

/// Takes a task for running: finishes it at once if a predecessor failed,
/// parks it if an ACC lock is busy (None in both cases).
pub(crate) fn start(inner: &Arc<Inner>, task: Arc<TaskInner>) -> Option<Started> {
    if let Some(cause) = task.cancel.lock().unwrap().clone() {
        task.body.lock().unwrap().take();
        let label = task.label();
        inner.complete(&task, Err(Error::Cancelled { task: label, cause }));
        return None;
    }
    let ops = {
        let b = task.body.lock().unwrap();
        distinct(&b.as_ref().expect("task executed twice").accesses)
    };
    let mut acc: Vec<Arc<HandleInner>> = ops
        .iter()
        .filter(|(_, m)| *m == Access::ACC)
        .map(|(h, _)| h.clone())
        .collect();
    acc.sort_by_key(|h| h.id);
    if !acc.is_empty() && !lock_acc(inner, &task, &acc) {
        return None;
    }
    let body = task
        .body
        .lock()
        .unwrap()
        .take()
        .expect("task executed twice");
    Some(Started {
        task,
        body,
        ops,
        acc,
    })
}

/// Ends a started task: unpins its operands on `node` (when `pinned`),
/// releases its ACC locks and completes it with `res`.
pub(crate) fn finish(inner: &Arc<Inner>, s: Started, node: usize, pinned: bool, res: Result<()>) {
    if pinned {
        for (h, _) in &s.ops {
            inner.mem.unpin(h, node);
        }
    }
    unlock_acc(inner, &s.acc);
    let Started {
        task, body, ops, ..
    } = s;
    drop(ops);
    drop(body);
    let label = task.label();
    let res = res.map_err(|e| match e {
        e @ (Error::Task { .. } | Error::OutOfMemory { .. } | Error::Cancelled { .. }) => e,
        e => Error::Task {
            task: label,
            reason: e.to_string(),
        },
    });
    inner.complete(&task, res);
}

/// Records a task's run in the worker statistics, the performance model and
/// the trace.
pub(crate) fn record(inner: &Inner, wid: usize, task: &TaskInner, t0: Instant, dt: f64, ok: bool) {
    {
        let mut s = inner.wstats[wid].lock().unwrap();
        s.tasks += 1;
        s.busy_s += dt;
        if s.by_phase.len() <= task.phase {
            s.by_phase.resize(task.phase + 1, (0, 0.0));
        }
        let p = &mut s.by_phase[task.phase];
        p.0 += 1;
        p.1 += dt;
        if ok {
            s.flops += task.flops;
        } else {
            s.failed += 1;
        }
    }
    if ok {
        inner
            .perf
            .record(task.name, task.footprint, inner.workers[wid].kind, dt);
        if task.wire_bytes > 0 {
            inner.mem.record_network(task.wire_bytes, dt);
        }
    }
    inner.mem.trace.push(Event::Task {
        worker: wid,
        name: task.name,
        id: task.id,
        start_us: inner.mem.trace.us(t0),
        dur_us: dt * 1e6,
        flops: task.flops,
        bytes: task.wire_bytes,
        ok,
    });
}

/// Turns a caught panic into the task's error.
pub(crate) fn panic_error(task: &str, p: Box<dyn std::any::Any + Send>) -> Error {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    Error::Task {
        task: task.to_string(),
        reason: format!("kernel panicked: {msg}"),
    }
}

pub(crate) fn execute(inner: &Arc<Inner>, wid: usize, task: Arc<TaskInner>) {
    let Some(s) = start(inner, task) else { return };
    let node = inner.workers[wid].node;
    match inner
        .mem
        .acquire(node, &s.ops, &s.task.label(), &mut || false)
    {
        Err(e) => {
            inner.wstats[wid].lock().unwrap().failed += 1;
            finish(inner, s, node, false, Err(e));
        }
        Ok(()) => {
            let res = run_codelet(inner, wid, &s.task, &s.body);
            finish(inner, s, node, true, res);
        }
    }
}

/// The host-memory operands of a task, valid and pinned on `node`, in
/// submission order.
pub(crate) fn host_refs(body: &TaskBody, node: usize) -> Vec<BufRef> {
    body.accesses
        .iter()
        .map(|(h, mode)| {
            let coh = h.0.coh.lock().unwrap();
            let r = coh.replicas[node]
                .as_ref()
                .expect("operand pinned on this node");
            BufRef {
                ptr: r.buf.host().as_ptr(),
                len: h.len(),
                dtype: h.dtype(),
                mode: *mode,
            }
        })
        .collect()
}

fn run_codelet(inner: &Inner, wid: usize, task: &TaskInner, body: &TaskBody) -> Result<()> {
    let info = &inner.workers[wid];
    let items = host_refs(body, info.node);
    let bufs = Buffers(Operands::new(&items));
    let t0 = Instant::now();
    // A kernel that panics must become an error for whoever waits, not take
    // the worker (and the process) down.
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| body.codelet.cpu(&bufs)))
        .unwrap_or_else(|p| Err(panic_error(&task.label(), p)));
    record(
        inner,
        wid,
        task,
        t0,
        t0.elapsed().as_secs_f64(),
        res.is_ok(),
    );
    res
}

pub(crate) type StatsCell = Mutex<WorkerStats>;
