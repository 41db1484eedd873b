//! Asynchronous workers: one thread per device (a GPU, or a simulated
//! device). The worker takes a task, makes its operands valid on the device's
//! memory node (copies enqueued on the device stream), enqueues the task's
//! implementation between two events and moves on to the next task without
//! waiting: up to `MAX_IN_FLIGHT` tasks are queued on the stream. A task is
//! finished (operands unpinned, ACC locks released, successors released) when
//! its end event has completed, which the worker polls between launches; it
//! blocks on the oldest event only when it has nothing else to do, when the
//! window is full, or when the memory manager needs that task's pins back.
//!
//! The simulated device runs this very loop over a stream that is a thread
//! running CPU kernels in order, so the test suite exercises it without a GPU.

use super::task::TaskInner;
use super::worker::{finish, record, start, Started, WorkerKind};
use super::Inner;
use crate::error::{Error, Result};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// Tasks queued on one stream at most: enough to hide launch latency,
/// few enough that pins (device memory) are returned promptly.
pub(crate) const MAX_IN_FLIGHT: usize = 8;

/// An in-order queue of work with completion events (a CUDA stream).
pub(crate) trait Stream {
    type Event;
    fn new_event(&self) -> Result<Self::Event>;
    /// Marks the current end of the queue on `e`.
    fn record(&self, e: &Self::Event) -> Result<()>;
    /// Whether everything before the last `record` of `e` has run (an error
    /// counts as done: waiting reports it).
    fn query(&self, e: &Self::Event) -> bool;
    /// Waits for `e`; an error when the work before it failed.
    fn wait(&self, e: &Self::Event) -> Result<()>;
    /// Seconds between two completed events, if the stream can tell.
    fn elapsed(&self, begin: &Self::Event, end: &Self::Event) -> Option<f64>;
    /// Enqueues the task's implementation on its operands (valid and pinned
    /// on `node`).
    fn enqueue(&self, s: &Started, node: usize) -> Result<()>;
}

struct InFlight<E> {
    started: Started,
    begin: E,
    end: E,
    launched: Instant,
    /// The launch's own outcome (after a failed launch the worker still
    /// waits for what was enqueued before the operands are released).
    res: Result<()>,
}

struct Worker<S: Stream> {
    inner: Arc<Inner>,
    wid: usize,
    node: usize,
    /// A communication worker: takes collectives in submission order and
    /// never releases a task early (that would bypass the order).
    comm: bool,
    stream: S,
    in_flight: VecDeque<InFlight<S::Event>>,
    /// Tasks released early onto this stream (see `release_early`), run
    /// before anything from the scheduler.
    early: VecDeque<Arc<TaskInner>>,
    /// Events of retired tasks, for reuse (creating one costs a driver call).
    spare: Vec<S::Event>,
}

pub(crate) fn run(inner: Arc<Inner>, wid: usize) {
    let node = inner.workers[wid].node;
    let Some(dev) = inner.mem.gpus[node].clone() else {
        return drive(inner, wid, super::sim_stream::SimStream::new());
    };
    let _ = dev.gpu.ctx.bind_to_thread();
    let stream = match (&inner.comm_gpu, inner.workers[wid].kind) {
        (Some(own), WorkerKind::Comm) => super::cuda::DeviceStream {
            node: own.clone(),
            after: Some(dev),
        },
        _ => super::cuda::DeviceStream {
            node: dev,
            after: None,
        },
    };
    drive(inner, wid, stream);
}

fn drive<S: Stream>(inner: Arc<Inner>, wid: usize, stream: S) {
    let node = inner.workers[wid].node;
    let comm = inner.workers[wid].kind == WorkerKind::Comm;
    let mut w = Worker {
        inner,
        wid,
        node,
        comm,
        stream,
        in_flight: VecDeque::new(),
        early: VecDeque::new(),
        spare: Vec::new(),
    };
    loop {
        w.retire_completed();
        let idle = w.in_flight.is_empty() && w.early.is_empty();
        let next = match w.early.pop_front() {
            Some(t) => Some(t),
            None if w.comm => w.inner.comm.pop(idle),
            None => w.inner.sched.pop(wid, idle),
        };
        match next {
            Some(task) => {
                if w.in_flight.len() >= MAX_IN_FLIGHT {
                    w.retire_front();
                }
                w.launch(task);
            }
            None if idle => break,
            // Nothing ready: the next task most likely waits for one in flight.
            None => w.retire_front(),
        }
    }
}

impl<S: Stream> Worker<S> {
    fn event(&mut self) -> Result<S::Event> {
        match self.spare.pop() {
            Some(e) => Ok(e),
            None => self.stream.new_event(),
        }
    }

    /// Retires every task in flight.
    fn drain(&mut self) {
        while !self.in_flight.is_empty() {
            self.retire_front();
        }
    }

    fn launch(&mut self, task: Arc<TaskInner>) {
        let inner = self.inner.clone();
        // A task released early that ends without being enqueued (cancelled,
        // or its operands cannot be had) must still finish after the task it
        // was released behind, which is in flight here: its successors may
        // otherwise overwrite what that one is still reading.
        let early = task.early.load(std::sync::atomic::Ordering::Acquire);
        if early && task.cancel.lock().unwrap().is_some() {
            self.drain();
        }
        let Some(s) = start(&inner, task) else {
            return;
        };
        let label = s.task.label();
        let node = self.node;
        // While this worker waits for room on its device, only its own tasks
        // in flight can give pins back: retire them one by one.
        let acquired = {
            let mut relieve = || {
                let any = !self.in_flight.is_empty();
                self.retire_front();
                any
            };
            inner.mem.acquire(node, &s.ops, &label, &mut relieve)
        };
        if let Err(e) = acquired {
            inner.wstats[self.wid].lock().unwrap().failed += 1;
            if early {
                self.drain();
            }
            finish(&inner, s, node, false, Err(e));
            return;
        }
        let events = self.event().and_then(|b| Ok((b, self.event()?)));
        let (begin, end) = match events {
            Ok(ev) => ev,
            Err(e) => {
                if early {
                    self.drain();
                }
                finish(&inner, s, node, true, Err(e));
                return;
            }
        };
        let launched = Instant::now();
        let res = self
            .stream
            .record(&begin)
            .and_then(|()| self.stream.enqueue(&s, node));
        // Recorded even after a failed launch: retiring waits for whatever
        // was enqueued before the operands may be freed.
        let res = match (res, self.stream.record(&end)) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
        let ok = res.is_ok() && !self.comm;
        self.in_flight.push_back(InFlight {
            started: s,
            begin,
            end,
            launched,
            res,
        });
        if ok {
            self.release_early(
                &self
                    .in_flight
                    .back()
                    .expect("just pushed")
                    .started
                    .task
                    .clone(),
            );
        }
    }

    /// Successors of `task` that wait for nothing else may go on this
    /// stream right behind it: the stream runs them after `task`, so they
    /// need not wait for its completion to be seen by the host (a round trip
    /// per step of a dependency chain otherwise). Only tasks this worker can
    /// run and without ACC operands (whose lock could park them and let them
    /// reach another worker too early) qualify. A successor released so is
    /// marked `early`: finishing `task` does not schedule it again, and if
    /// `task` fails it is reported cancelled when it retires.
    fn release_early(&mut self, task: &Arc<TaskInner>) {
        let kind = self.inner.workers[self.wid].kind.mask();
        let succ = task.succ.lock().unwrap().list.clone();
        for s in succ {
            if s.where_.and(kind).0 == 0
                || s.remaining.load(std::sync::atomic::Ordering::Acquire) != 1
            {
                continue;
            }
            let acc_free = s.body.lock().unwrap().as_ref().is_some_and(|b| {
                b.accesses
                    .iter()
                    .all(|(_, m)| *m != super::handle::Access::ACC)
            });
            if acc_free
                && s.early
                    .compare_exchange(
                        false,
                        true,
                        std::sync::atomic::Ordering::AcqRel,
                        std::sync::atomic::Ordering::Acquire,
                    )
                    .is_ok()
            {
                self.early.push_back(s);
            }
        }
    }

    /// Retires the tasks at the front whose work has completed.
    fn retire_completed(&mut self) {
        while let Some(f) = self.in_flight.front() {
            if !self.stream.query(&f.end) {
                break;
            }
            self.retire_front();
        }
    }

    /// Waits for the oldest task in flight (if any) and retires it. Tasks
    /// complete in stream order, so this waits for nothing later.
    fn retire_front(&mut self) {
        let Some(f) = self.in_flight.pop_front() else {
            return;
        };
        let waited = self.stream.wait(&f.end);
        let res = match (f.res, waited) {
            (Err(e), _) | (Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(())) => Ok(()),
        };
        // Launched early behind a task that then failed: its inputs were never valid.
        let cancelled = f.started.task.cancel.lock().unwrap().clone();
        let res = match cancelled {
            Some(cause)
                if f.started
                    .task
                    .early
                    .load(std::sync::atomic::Ordering::Acquire) =>
            {
                Err(Error::Cancelled {
                    task: f.started.task.label(),
                    cause,
                })
            }
            _ => res,
        };
        let dt = self
            .stream
            .elapsed(&f.begin, &f.end)
            .unwrap_or_else(|| f.launched.elapsed().as_secs_f64());
        record(
            &self.inner,
            self.wid,
            &f.started.task,
            f.launched,
            dt,
            res.is_ok(),
        );
        let res = res.map_err(|e| match e {
            e @ (Error::Task { .. } | Error::Cancelled { .. }) => e,
            e => Error::Task {
                task: f.started.task.label(),
                reason: e.to_string(),
            },
        });
        finish(&self.inner, f.started, self.node, true, res);
        self.spare.push(f.begin);
        self.spare.push(f.end);
    }
}
