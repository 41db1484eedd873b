//! The communication worker: one thread that runs collective tasks
//! (`Where::COMM`) strictly in the order they were submitted, whatever order
//! their dependencies are satisfied in. Every rank submits the same
//! collectives in the same order, so the ranks' workers meet in each one;
//! issuing them as they become ready (completion order) would pair
//! different collectives across ranks and hang or sum the wrong tiles.
//! Collectives wait in the transport, not in the compute workers, so they
//! overlap with the rest of the graph (backward of earlier layers).

use super::task::TaskInner;
use super::worker::execute;
use super::Inner;
use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};

#[derive(Default)]
struct Order {
    /// Sequence numbers handed out at submission.
    submitted: u64,
    /// The sequence number to issue next.
    next: u64,
    /// Ready collectives by sequence number.
    ready: BTreeMap<u64, Arc<TaskInner>>,
    shut: bool,
}

#[derive(Default)]
pub(crate) struct CommQueue {
    order: Mutex<Order>,
    cv: Condvar,
}

impl CommQueue {
    /// The sequence number of a collective being submitted (under the
    /// submission order of this runtime).
    pub fn next_seq(&self) -> u64 {
        let mut o = self.order.lock().unwrap();
        o.submitted += 1;
        o.submitted - 1
    }

    pub fn push(&self, seq: u64, t: Arc<TaskInner>) {
        let mut o = self.order.lock().unwrap();
        o.ready.insert(seq, t);
        if seq == o.next {
            self.cv.notify_all();
        }
    }

    pub fn shutdown(&self) {
        self.order.lock().unwrap().shut = true;
        self.cv.notify_all();
    }

    /// The next collective in submission order, once it is ready; None at shutdown.
    fn pop(&self) -> Option<Arc<TaskInner>> {
        let mut o = self.order.lock().unwrap();
        loop {
            let next = o.next;
            if let Some(t) = o.ready.remove(&next) {
                o.next += 1;
                return Some(t);
            }
            if o.shut {
                return None;
            }
            o = self.cv.wait(o).unwrap();
        }
    }
}

pub(crate) fn run(inner: Arc<Inner>, wid: usize) {
    while let Some(task) = inner.comm.pop() {
        execute(&inner, wid, task);
    }
}
