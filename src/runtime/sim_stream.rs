//! The simulated device's stream: a thread that runs enqueued CPU kernels in
//! order, with events like CUDA's (recorded at the end of the queue, done
//! when the thread gets there). It lets the asynchronous worker, with several
//! tasks in flight, be tested on machines without a GPU.

use super::async_worker::Stream;
use super::codelet::{BufRef, Buffers, Codelet, Operands};
use super::worker::{panic_error, Started};
use crate::error::{Error, Result};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

#[derive(Default)]
struct EventState {
    /// Records issued / records reached by the stream thread.
    issued: u64,
    reached: u64,
    at: Option<Instant>,
    /// The failure of the work just before the last record reached.
    err: Option<Error>,
}

#[derive(Default)]
pub(crate) struct SimEvent {
    st: Mutex<EventState>,
    cv: Condvar,
}

/// The operands and codelet of one enqueued task.
struct Job {
    codelet: *const dyn Codelet,
    items: Vec<BufRef>,
    label: String,
}

// SAFETY: the codelet and the replicas behind `items` are owned by the task
// in flight, which the worker keeps (pinned) until the end event recorded
// after this job has been reached, i.e. until the job has run.
unsafe impl Send for Job {}

enum Cmd {
    Run(Job),
    Record(Arc<SimEvent>),
}

pub(crate) struct SimStream {
    tx: Option<Sender<Cmd>>,
    thread: Option<JoinHandle<()>>,
}

impl SimStream {
    pub fn new() -> SimStream {
        let (tx, rx) = channel::<Cmd>();
        let thread = std::thread::Builder::new()
            .name("gpt2rs-sim-stream".into())
            .spawn(move || {
                let mut pending: Option<Error> = None;
                for cmd in rx {
                    match cmd {
                        Cmd::Run(job) => {
                            let bufs = Buffers(Operands::new(&job.items));
                            // SAFETY: see `Job`.
                            let cl = unsafe { &*job.codelet };
                            let res =
                                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                    cl.cpu(&bufs)
                                }));
                            let res = res.unwrap_or_else(|p| Err(panic_error(&job.label, p)));
                            if let Err(e) = res {
                                pending.get_or_insert(e);
                            }
                        }
                        Cmd::Record(ev) => {
                            let mut st = ev.st.lock().unwrap();
                            st.reached += 1;
                            st.at = Some(Instant::now());
                            st.err = pending.take();
                            drop(st);
                            ev.cv.notify_all();
                        }
                    }
                }
            })
            .expect("cannot start the simulated device's stream thread");
        SimStream {
            tx: Some(tx),
            thread: Some(thread),
        }
    }

    fn send(&self, cmd: Cmd) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(cmd).ok())
            .ok_or_else(|| Error::Io("the simulated device's stream has stopped".into()))
    }
}

impl Drop for SimStream {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Stream for SimStream {
    type Event = Arc<SimEvent>;

    fn new_event(&self) -> Result<Arc<SimEvent>> {
        Ok(Arc::new(SimEvent::default()))
    }

    fn record(&self, e: &Arc<SimEvent>) -> Result<()> {
        e.st.lock().unwrap().issued += 1;
        self.send(Cmd::Record(e.clone()))
    }

    fn query(&self, e: &Arc<SimEvent>) -> bool {
        let st = e.st.lock().unwrap();
        st.reached == st.issued
    }

    fn wait(&self, e: &Arc<SimEvent>) -> Result<()> {
        let mut st = e.st.lock().unwrap();
        while st.reached < st.issued {
            st = e.cv.wait(st).unwrap();
        }
        match st.err.take() {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    fn elapsed(&self, begin: &Arc<SimEvent>, end: &Arc<SimEvent>) -> Option<f64> {
        let b = begin.st.lock().unwrap().at?;
        let e = end.st.lock().unwrap().at?;
        Some(e.saturating_duration_since(b).as_secs_f64())
    }

    fn enqueue(&self, s: &Started, node: usize) -> Result<()> {
        let items = super::worker::host_refs(&s.body, node);
        self.send(Cmd::Run(Job {
            codelet: &*s.body.codelet as *const dyn Codelet,
            items,
            label: s.task.label(),
        }))
    }
}
