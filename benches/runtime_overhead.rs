//! Runtime overhead: microseconds per empty task, submitted and run to
//! completion, for independent tasks (no operands) and for a chain (each
//! task RW on one handle), with 1 and 2 CPU workers and both policies.
//! Prints a table last and writes bench-out/runtime_overhead.json.
//!
//! cargo bench --bench runtime_overhead

use gpt2rs::runtime::{Access, Buffers, Codelet, Runtime, RuntimeConfig, SchedKind};
use gpt2rs::{DType, Result};
use std::time::Instant;

struct Empty;
impl Codelet for Empty {
    fn name(&self) -> &'static str {
        "empty"
    }
    fn cpu(&self, _: &Buffers) -> Result<()> {
        Ok(())
    }
}

fn per_task_us(ncpu: usize, sched: SchedKind, chained: bool, n: usize) -> f64 {
    let rt = Runtime::new(RuntimeConfig {
        ncpu: Some(ncpu),
        scheduler: sched,
        ..Default::default()
    })
    .unwrap();
    let h = rt.new_handle(DType::F32, 1).unwrap();
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t0 = Instant::now();
        for _ in 0..n {
            let acc = if chained {
                vec![(h.clone(), Access::RW)]
            } else {
                vec![]
            };
            rt.submit(Box::new(Empty), acc).unwrap();
        }
        rt.wait_all().unwrap();
        best = best.min(t0.elapsed().as_secs_f64() * 1e6 / n as f64);
    }
    best
}

fn main() {
    let n = 200_000;
    let mut rows = Vec::new();
    for sched in [SchedKind::Eager, SchedKind::Dmda] {
        for ncpu in [1, 2] {
            for chained in [false, true] {
                let us = per_task_us(ncpu, sched, chained, n);
                rows.push(serde_json::json!({
                    "scheduler": sched.name(), "workers": ncpu,
                    "graph": if chained { "chained" } else { "independent" },
                    "tasks": n, "us_per_task": us,
                }));
            }
        }
    }
    std::fs::create_dir_all("bench-out").unwrap();
    std::fs::write(
        "bench-out/runtime_overhead.json",
        serde_json::to_vec_pretty(&rows).unwrap(),
    )
    .unwrap();
    println!("\nruntime overhead (empty tasks, submit + run, best of 5 x {n}); target < 2 us/task");
    println!(
        "{:<10} {:>7} {:<12} {:>10}",
        "scheduler", "workers", "graph", "us/task"
    );
    for r in &rows {
        println!(
            "{:<10} {:>7} {:<12} {:>10.3}",
            r["scheduler"].as_str().unwrap(),
            r["workers"],
            r["graph"].as_str().unwrap(),
            r["us_per_task"].as_f64().unwrap()
        );
    }
}
