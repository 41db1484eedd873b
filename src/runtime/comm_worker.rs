//! The communication worker: one thread that runs collective tasks
//! (`Where::COMM`) strictly in the order they were submitted, whatever order
//! their dependencies are satisfied in. Every rank submits the same
//! collectives in the same order, so the ranks' workers meet in each one;
//! issuing them as they become ready (completion order) would pair
//! different collectives across ranks and hang or sum the wrong tiles.
//! Collectives wait in the transport, not in the compute workers, so they
//! overlap with the rest of the graph (backward of earlier layers).
//!
//! On the host the worker runs one collective at a time. On a device node it
//! drives a stream of its own like any device worker (launch, record an
//! event, keep going), which is how NCCL collectives are ordered on a GPU;
//! the simulated device runs that loop in the test suite.

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

    /// The next collective in submission order if it is ready. With
    /// `block`, waits for it (None only at shutdown).
    pub fn pop(&self, block: bool) -> Option<Arc<TaskInner>> {
        let mut o = self.order.lock().unwrap();
        loop {
            let next = o.next;
            if let Some(t) = o.ready.remove(&next) {
                o.next += 1;
                return Some(t);
            }
            if o.shut || !block {
                return None;
            }
            o = self.cv.wait(o).unwrap();
        }
    }
}

/// On the host, one collective at a time; on a device node, the
/// asynchronous worker's loop over a stream of the worker's own.
pub(crate) fn run(inner: Arc<Inner>, wid: usize) {
    if inner.workers[wid].node != 0 {
        return super::async_worker::run(inner, wid);
    }
    while let Some(task) = inner.comm.pop(true) {
        execute(&inner, wid, task);
    }
}

#[cfg(test)]
mod tests {
    use crate::dtype::DType;
    use crate::error::Result;
    use crate::runtime::{codelet, Access, Buffers, Codelet, Runtime, RuntimeConfig, Where};
    use std::sync::{Arc, Mutex};

    /// A collective stand-in: records its number when it runs.
    struct Mark(usize, Arc<Mutex<Vec<usize>>>);

    impl Codelet for Mark {
        fn name(&self) -> &'static str {
            "mark"
        }
        fn where_(&self) -> Where {
            Where::COMM
        }
        fn cpu(&self, _: &Buffers) -> Result<()> {
            self.1.lock().unwrap().push(self.0);
            Ok(())
        }
    }

    #[test]
    fn collectives_run_in_submission_order_not_readiness_order() {
        for comm_node in [0, 1] {
            let rt = Runtime::new(RuntimeConfig {
                ncpu: Some(2),
                nsim: comm_node,
                comm: true,
                comm_node,
                ..Default::default()
            })
            .unwrap();
            let order = Arc::new(Mutex::new(Vec::new()));
            for round in 0..5 {
                // Collective 0 waits for a slow task; 1 and 2 are ready at once.
                let slow = rt.new_handle(DType::F32, 1).unwrap();
                let fast = rt.new_handle(DType::F32, 1).unwrap();
                rt.submit(
                    codelet("sleep", 0.0, 0, |_| {
                        std::thread::sleep(std::time::Duration::from_millis(30));
                        Ok(())
                    }),
                    vec![(slow.clone(), Access::W)],
                )
                .unwrap();
                for (k, h) in [(0, &slow), (1, &fast), (2, &fast)] {
                    let m = Mark(3 * round + k, order.clone());
                    rt.submit(Box::new(m), vec![(h.clone(), Access::RW)])
                        .unwrap();
                }
            }
            rt.wait_all().unwrap();
            assert_eq!(
                *order.lock().unwrap(),
                (0..15).collect::<Vec<_>>(),
                "node {comm_node}"
            );
        }
    }

    #[test]
    fn a_collective_without_a_communication_worker_is_refused() {
        let rt = Runtime::new(RuntimeConfig {
            ncpu: Some(1),
            ..Default::default()
        })
        .unwrap();
        let h = rt.new_handle(DType::F32, 1).unwrap();
        let m = Mark(0, Arc::default());
        let e = rt.submit(Box::new(m), vec![(h, Access::RW)]).unwrap_err();
        assert!(e.to_string().contains("comm=True"), "{e}");
        let bad = Runtime::new(RuntimeConfig {
            comm: true,
            comm_node: 2,
            ..Default::default()
        });
        assert!(bad.is_err());
    }
}
