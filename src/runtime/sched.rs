//! Scheduling policies. `eager`: one central queue ordered by priority, then
//! submission; any idle worker that can run the head takes it. `dmda`: each
//! ready task goes to the worker with the earliest expected finish, counting
//! the worker's queued work, the transfers its inputs need to reach the
//! worker's memory node, and the codelet's history-based run time there.

use super::codelet::Where;
use super::memory::Memory;
use super::perfmodel::PerfModels;
use super::task::TaskInner;
use super::worker::WorkerInfo;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchedKind {
    Eager,
    Dmda,
}

impl SchedKind {
    /// StarPU's names map onto ours: the dm* family is dmda, the rest eager.
    pub fn parse(s: &str) -> Option<SchedKind> {
        match s.to_ascii_lowercase().as_str() {
            "eager" | "prio" | "ws" | "lws" | "random" => Some(SchedKind::Eager),
            "dmda" | "dm" | "dmdas" | "dmdar" | "dmdasd" => Some(SchedKind::Dmda),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SchedKind::Eager => "eager",
            SchedKind::Dmda => "dmda",
        }
    }
}

struct Entry {
    prio: i32,
    seq: u64,
    task: Arc<TaskInner>,
}
impl PartialEq for Entry {
    fn eq(&self, o: &Self) -> bool {
        self.prio == o.prio && self.seq == o.seq
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, o: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(o))
    }
}
impl Ord for Entry {
    // Max-heap: higher priority first, then earlier submission.
    fn cmp(&self, o: &Self) -> CmpOrdering {
        self.prio.cmp(&o.prio).then(o.seq.cmp(&self.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Entry>,
    seq: u64,
    sleeping: usize,
    shut: bool,
    /// Sum of the estimates of queued tasks (dmda), seconds.
    queued_s: f64,
}

impl Queue {
    fn push(&mut self, task: Arc<TaskInner>) {
        self.seq += 1;
        self.heap.push(Entry {
            prio: task.priority,
            seq: self.seq,
            task,
        });
    }

    /// Takes the best task that `can` run, keeping the order of the rest.
    fn take(&mut self, can: Where) -> Option<Arc<TaskInner>> {
        let mut skipped = Vec::new();
        let mut found = None;
        while let Some(e) = self.heap.pop() {
            if e.task.where_.and(can).0 != 0 {
                found = Some(e.task);
                break;
            }
            skipped.push(e);
        }
        self.heap.extend(skipped);
        found
    }
}

pub(crate) trait Scheduler: Send + Sync {
    fn push(&self, task: Arc<TaskInner>);
    /// A ready task for `worker`. With `block`, waits for one (None once
    /// shut down); without, None when there is none right now.
    fn pop(&self, worker: usize, block: bool) -> Option<Arc<TaskInner>>;
    fn shutdown(&self);
}

pub(crate) struct Eager {
    q: Mutex<Queue>,
    cv: Condvar,
    kinds: Vec<Where>,
}

impl Eager {
    pub fn new(workers: &[WorkerInfo]) -> Eager {
        Eager {
            q: Mutex::new(Queue::default()),
            cv: Condvar::new(),
            kinds: workers.iter().map(|w| w.kind.mask()).collect(),
        }
    }
}

impl Scheduler for Eager {
    fn push(&self, task: Arc<TaskInner>) {
        let everyone = self.kinds.iter().all(|k| task.where_.and(*k).0 != 0);
        let mut q = self.q.lock().unwrap();
        q.push(task);
        if q.sleeping > 0 {
            drop(q);
            // A task only some workers can run must reach one of them.
            if everyone {
                self.cv.notify_one();
            } else {
                self.cv.notify_all();
            }
        }
    }

    fn pop(&self, worker: usize, block: bool) -> Option<Arc<TaskInner>> {
        let mut q = self.q.lock().unwrap();
        loop {
            if let Some(t) = q.take(self.kinds[worker]) {
                return Some(t);
            }
            if q.shut || !block {
                return None;
            }
            q.sleeping += 1;
            q = self.cv.wait(q).unwrap();
            q.sleeping -= 1;
        }
    }

    fn shutdown(&self) {
        self.q.lock().unwrap().shut = true;
        self.cv.notify_all();
    }
}

pub(crate) struct Dmda {
    queues: Vec<(Mutex<Queue>, Condvar)>,
    workers: Vec<WorkerInfo>,
    perf: Arc<PerfModels>,
    mem: Arc<Memory>,
}

impl Dmda {
    pub fn new(workers: &[WorkerInfo], perf: Arc<PerfModels>, mem: Arc<Memory>) -> Dmda {
        Dmda {
            queues: workers
                .iter()
                .map(|_| (Mutex::new(Queue::default()), Condvar::new()))
                .collect(),
            workers: workers.to_vec(),
            perf,
            mem,
        }
    }

    /// Seconds to bring the task's inputs to `node`.
    fn transfer_cost(&self, task: &TaskInner, node: usize) -> f64 {
        let body = task.body.lock().unwrap();
        let Some(body) = body.as_ref() else {
            return 0.0;
        };
        let mut cost = 0.0;
        for (h, mode) in &body.accesses {
            if !mode.reads() {
                continue;
            }
            let coh = h.0.coh.lock().unwrap();
            if coh.replicas[node].is_some() {
                continue;
            }
            if let Some(src) = (0..coh.replicas.len()).find(|&i| coh.replicas[i].is_some()) {
                cost += self.mem.transfer_estimate(src, node, h.bytes());
            }
        }
        cost
    }
}

impl Scheduler for Dmda {
    fn push(&self, task: Arc<TaskInner>) {
        let mut best: Option<(bool, f64, usize, usize, f64)> = None;
        let mut xfer_by_node: Vec<Option<f64>> = vec![None; self.mem.nodes.len()];
        for (w, info) in self.workers.iter().enumerate() {
            if task.where_.and(info.kind.mask()).0 == 0 {
                continue;
            }
            let est = self.perf.estimate(task.name, task.footprint, info.kind);
            let xfer = *xfer_by_node[info.node]
                .get_or_insert_with(|| self.transfer_cost(&task, info.node));
            let (queued, qlen) = {
                let q = self.queues[w].0.lock().unwrap();
                (q.queued_s, q.heap.len())
            };
            // An uncalibrated model sends the task where it can be measured
            // (StarPU's calibration), to the least loaded such worker.
            let calibrated = est.is_some();
            let finish = queued + xfer + est.unwrap_or(0.0);
            let cand = (calibrated, finish, qlen, w, est.unwrap_or(0.0));
            let better = match &best {
                None => true,
                Some(b) => (cand.0, cand.1, cand.2) < (b.0, b.1, b.2),
            };
            if better {
                best = Some(cand);
            }
        }
        // No worker can run it: the runtime refuses such tasks at submission;
        // fall back to worker 0 rather than lose the task.
        let (w, est) = best.map(|b| (b.3, b.4)).unwrap_or((0, 0.0));
        task.est.store(est.to_bits(), Ordering::Relaxed);
        let (m, cv) = &self.queues[w];
        let mut q = m.lock().unwrap();
        q.queued_s += est;
        q.push(task);
        let wake = q.sleeping > 0;
        drop(q);
        if wake {
            cv.notify_one();
        }
    }

    fn pop(&self, worker: usize, block: bool) -> Option<Arc<TaskInner>> {
        let (m, cv) = &self.queues[worker];
        let mut q = m.lock().unwrap();
        loop {
            if let Some(e) = q.heap.pop() {
                q.queued_s =
                    (q.queued_s - f64::from_bits(e.task.est.load(Ordering::Relaxed))).max(0.0);
                return Some(e.task);
            }
            if q.shut || !block {
                return None;
            }
            q.sleeping += 1;
            q = cv.wait(q).unwrap();
            q.sleeping -= 1;
        }
    }

    fn shutdown(&self) {
        for (m, cv) in &self.queues {
            m.lock().unwrap().shut = true;
            cv.notify_all();
        }
    }
}
