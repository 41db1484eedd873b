//! Chrome-trace (Perfetto) events of tasks, transfers and memory use.
//! Recording is off unless the runtime was created with tracing on: a long run
//! would otherwise grow without bound.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

pub(crate) enum Event {
    Task {
        worker: usize,
        name: &'static str,
        id: u64,
        start_us: f64,
        dur_us: f64,
        flops: f64,
        /// Bytes over the network (collectives).
        bytes: u64,
        ok: bool,
    },
    Transfer {
        src: usize,
        dst: usize,
        bytes: usize,
        start_us: f64,
        dur_us: f64,
    },
    Memory {
        node: usize,
        ts_us: f64,
        used: u64,
    },
}

pub(crate) struct Trace {
    pub enabled: bool,
    pub t0: Instant,
    events: Mutex<Vec<Event>>,
}

impl Trace {
    pub fn new(enabled: bool) -> Trace {
        Trace {
            enabled,
            t0: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    pub fn us(&self, t: Instant) -> f64 {
        t.duration_since(self.t0).as_secs_f64() * 1e6
    }

    pub fn push(&self, e: Event) {
        if self.enabled {
            self.events.lock().unwrap().push(e);
        }
    }

    /// Writes the trace as Chrome JSON: pid 0 holds one row per worker, pid 1
    /// one row per bus (source → destination node), pid 2 memory counters.
    pub fn write(
        &self,
        path: &std::path::Path,
        worker_names: &[String],
        node_names: &[String],
    ) -> std::io::Result<()> {
        let events = self.events.lock().unwrap();
        let mut out: Vec<serde_json::Value> = Vec::with_capacity(events.len() + 16);
        let meta = |pid: usize, tid: usize, name: &str| {
            serde_json::json!({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid,
                               "args": {"name": name}})
        };
        out.push(serde_json::json!({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "workers"}}));
        out.push(serde_json::json!({"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "buses"}}));
        out.push(serde_json::json!({"ph": "M", "name": "process_name", "pid": 2, "args": {"name": "memory"}}));
        for (i, w) in worker_names.iter().enumerate() {
            out.push(meta(0, i, w));
        }
        let n = node_names.len();
        for s in 0..n {
            for d in 0..n {
                if s != d {
                    out.push(meta(
                        1,
                        s * n + d,
                        &format!("{}->{}", node_names[s], node_names[d]),
                    ));
                }
            }
        }
        for e in events.iter() {
            out.push(match e {
                Event::Task { worker, name, id, start_us, dur_us, flops, bytes, ok } => {
                    let mut args = serde_json::json!({"task": id, "flops": flops, "ok": ok});
                    if *bytes > 0 {
                        args["bytes"] = (*bytes).into();
                    }
                    serde_json::json!({
                        "ph": "X", "cat": if *bytes > 0 { "collective" } else { "task" },
                        "name": name, "pid": 0, "tid": worker,
                        "ts": start_us, "dur": dur_us, "args": args})
                }
                Event::Transfer { src, dst, bytes, start_us, dur_us } => serde_json::json!({
                    "ph": "X", "cat": "transfer", "name": format!("{}->{}", node_names[*src], node_names[*dst]),
                    "pid": 1, "tid": src * n + dst, "ts": start_us, "dur": dur_us,
                    "args": {"bytes": bytes}}),
                Event::Memory { node, ts_us, used } => serde_json::json!({
                    "ph": "C", "name": format!("mem {}", node_names[*node]), "pid": 2,
                    "ts": ts_us, "args": {"bytes": used}}),
            });
        }
        let doc = serde_json::json!({"traceEvents": out, "displayTimeUnit": "ms"});
        // Write to a temporary file then rename: a failed write leaves no half file.
        let tmp = path.with_extension("json.tmp");
        {
            let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            serde_json::to_writer(&mut f, &doc)?;
            f.flush()?;
        }
        std::fs::rename(&tmp, path)
    }
}
