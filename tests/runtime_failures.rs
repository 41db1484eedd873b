//! Failure injection and the runtime's observable behaviour: failing and
//! panicking tasks, memory limits too small, eviction with write-back,
//! shutdown, trace and performance-model files.

use gpt2rs::ops;
use gpt2rs::runtime::{Access, Buffers, Codelet, Runtime, RuntimeConfig, SchedKind, Where};
use gpt2rs::tensor::Tensor;
use gpt2rs::{DType, Error, Result};

struct Fails;
impl Codelet for Fails {
    fn name(&self) -> &'static str {
        "always_fails"
    }
    fn cpu(&self, _: &Buffers) -> Result<()> {
        Err(Error::Argument {
            op: "always_fails".into(),
            msg: "injected failure".into(),
        })
    }
}

struct Panics;
impl Codelet for Panics {
    fn name(&self) -> &'static str {
        "panics"
    }
    fn cpu(&self, _: &Buffers) -> Result<()> {
        panic!("injected panic")
    }
}

fn rt(cfg: RuntimeConfig) -> Runtime {
    Runtime::new(cfg).unwrap()
}

fn ones(rt: &Runtime, n: usize, tile: isize) -> Tensor {
    let v = vec![1.0f32; n];
    Tensor::from_bytes(rt, &[n], &[tile], DType::F32, bytemuck::cast_slice(&v)).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    bytemuck::cast_slice(&t.to_bytes().unwrap()).to_vec()
}

#[test]
fn failing_task_is_an_error_for_its_waiters_and_dependents() {
    let rt = rt(RuntimeConfig {
        ncpu: Some(2),
        ..Default::default()
    });
    let x = ones(&rt, 8, 4);
    let bad = rt
        .submit(Box::new(Fails), vec![(x.tiles[0].clone(), Access::RW)])
        .unwrap();
    ops::scale(&x, 2.0).unwrap(); // depends on the failed task for tile 0
    let e = bad.wait().unwrap_err().to_string();
    assert!(
        e.contains("always_fails#") && e.contains("injected failure"),
        "{e}"
    );
    let e = rt.wait_all().unwrap_err().to_string();
    assert!(
        e.contains("always_fails#"),
        "wait_all names the failed task: {e}"
    );
    // Reading the tile the failed task wrote reports the failure, not stale data.
    let e = x.to_bytes().unwrap_err().to_string();
    assert!(e.contains("always_fails") || e.contains("cancelled"), "{e}");
    // The runtime stays usable: overwrite and compute again.
    ops::fill(&x, 3.0).unwrap();
    ops::scale(&x, 2.0).unwrap();
    rt.wait_all().unwrap();
    assert_eq!(values(&x), vec![6.0; 8]);
}

#[test]
fn panicking_kernel_becomes_an_error() {
    let rt = rt(RuntimeConfig {
        ncpu: Some(1),
        ..Default::default()
    });
    let x = ones(&rt, 4, 4);
    rt.submit(Box::new(Panics), vec![(x.tiles[0].clone(), Access::RW)])
        .unwrap();
    let e = rt.wait_all().unwrap_err().to_string();
    assert!(e.contains("panics#") && e.contains("injected panic"), "{e}");
    ops::fill(&x, 1.0).unwrap();
    rt.wait_all().unwrap();
}

#[test]
fn memory_limit_too_small_for_one_task() {
    // Host limit: the tile itself fits, a task needing two tiles does not.
    let rt = rt(RuntimeConfig {
        ncpu: Some(2),
        nsim: 1,
        memory_limits: vec![None, Some(100)],
        ..Default::default()
    });
    let x = ones(&rt, 16, 16); // 64 bytes a tile
    let y = ones(&rt, 16, 16);
    rt.submit_with(
        Box::new(AddTo),
        vec![
            (x.tiles[0].clone(), Access::R),
            (y.tiles[0].clone(), Access::RW),
        ],
        Where::SIM,
        0,
    )
    .unwrap();
    let e = rt.wait_all().unwrap_err();
    assert!(matches!(e, Error::OutOfMemory { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("sim0") && msg.contains("add_to#") && msg.contains("128 bytes"),
        "{msg}"
    );
    // The tile the failed task should have written is invalid until rewritten.
    assert!(y.to_bytes().is_err());
    // Still usable, and a single-operand task fits on the device.
    ops::fill(&y, 1.0).unwrap();
    rt.submit_with(
        Box::new(Double),
        vec![(y.tiles[0].clone(), Access::RW)],
        Where::SIM,
        0,
    )
    .unwrap();
    rt.wait_all().unwrap();
    assert_eq!(values(&y), vec![2.0; 16]);
}

/// y += x
struct AddTo;
impl Codelet for AddTo {
    fn name(&self) -> &'static str {
        "add_to"
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        let x = b.r::<f32>(0)?;
        for (y, x) in b.w::<f32>(1)?.iter_mut().zip(x) {
            *y += x;
        }
        Ok(())
    }
}

/// y *= 2
struct Double;
impl Codelet for Double {
    fn name(&self) -> &'static str {
        "double"
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        for y in b.w::<f32>(0)?.iter_mut() {
            *y *= 2.0;
        }
        Ok(())
    }
}

#[test]
fn device_eviction_writes_dirty_tiles_back() {
    // 16 tiles of 256 bytes on a device that holds 4: every pass evicts.
    let rt = rt(RuntimeConfig {
        ncpu: Some(1),
        nsim: 1,
        memory_limits: vec![None, Some(1024)],
        trace: true,
        ..Default::default()
    });
    let x = ones(&rt, 16 * 64, 64);
    for _ in 0..3 {
        for h in &x.tiles {
            rt.submit_with(
                Box::new(Double),
                vec![(h.clone(), Access::RW)],
                Where::SIM,
                0,
            )
            .unwrap();
        }
    }
    rt.wait_all().unwrap();
    assert_eq!(values(&x), vec![8.0; 16 * 64]);
    let st = rt.stats();
    let sim = &st.nodes[1];
    assert!(sim.peak_bytes <= 1024, "limit respected: {sim:?}");
    assert!(sim.evictions > 0 && sim.writebacks > 0, "{sim:?}");
    let to_dev = st.buses.iter().find(|b| b.src == 0 && b.dst == 1).unwrap();
    let to_host = st.buses.iter().find(|b| b.src == 1 && b.dst == 0).unwrap();
    assert!(
        to_dev.bytes >= 16 * 256 && to_host.bytes >= 16 * 256,
        "{:?}",
        st.buses
    );
    // The trace holds tasks, transfers and memory counters, as Chrome JSON.
    let dir = std::env::temp_dir().join(format!("gpt2rs-trace-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.json");
    rt.save_trace(&path).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let ev = doc["traceEvents"].as_array().unwrap();
    let count = |cat: &str| ev.iter().filter(|e| e["cat"] == cat).count();
    assert_eq!(count("task"), 48);
    assert!(count("transfer") >= 32);
    assert!(ev.iter().any(|e| e["ph"] == "C"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn acc_tasks_never_overlap() {
    // Many ACC increments of one tile from 4 workers: exclusion makes the sum exact.
    let rt = rt(RuntimeConfig {
        ncpu: Some(4),
        ..Default::default()
    });
    let x = ones(&rt, 1000, 1000);
    let y = Tensor::zeros(&rt, &[1000], &[1000], DType::F32).unwrap();
    for _ in 0..200 {
        rt.submit(
            Box::new(AddTo),
            vec![
                (x.tiles[0].clone(), Access::R),
                (y.tiles[0].clone(), Access::ACC),
            ],
        )
        .unwrap();
    }
    rt.wait_all().unwrap();
    assert_eq!(values(&y), vec![200.0; 1000]);
}

#[test]
fn bad_submissions_and_shutdown() {
    let rt = rt(RuntimeConfig {
        ncpu: Some(1),
        ..Default::default()
    });
    let x = ones(&rt, 4, 4);
    let e = rt
        .submit(
            Box::new(AddTo),
            vec![
                (x.tiles[0].clone(), Access::R),
                (x.tiles[0].clone(), Access::RW),
            ],
        )
        .unwrap_err();
    assert!(e.to_string().contains("twice"), "{e}");
    let e = rt
        .submit_with(
            Box::new(Double),
            vec![(x.tiles[0].clone(), Access::RW)],
            Where::SIM,
            0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("no worker"), "{e}");
    let other = Runtime::new(RuntimeConfig {
        ncpu: Some(1),
        ..Default::default()
    })
    .unwrap();
    let z = ones(&other, 4, 4);
    assert!(ops::axpy(1.0, &x, &z).is_err());
    rt.shutdown().unwrap();
    assert!(matches!(ops::scale(&x, 2.0), Err(Error::Shutdown)));
    assert!(matches!(x.to_bytes(), Err(Error::Shutdown)));
}

#[test]
fn dmda_learns_and_persists_performance_models() {
    let dir = std::env::temp_dir().join(format!("gpt2rs-perf-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = RuntimeConfig {
        ncpu: Some(2),
        nsim: 1,
        scheduler: SchedKind::Dmda,
        perf_model_dir: Some(dir.clone()),
        ..Default::default()
    };
    {
        let rt = rt(cfg.clone());
        let x = ones(&rt, 4096, 256);
        for _ in 0..10 {
            ops::scale(&x, 1.0).unwrap();
        }
        rt.wait_all().unwrap();
        let st = rt.stats();
        assert!(
            st.workers.iter().filter(|w| w.tasks > 0).count() >= 2,
            "{:?}",
            st.workers
        );
        rt.shutdown().unwrap();
    }
    let text = std::fs::read_to_string(dir.join("gpt2rs-perfmodels.json")).unwrap();
    assert!(text.contains("\"scale\""), "{text}");
    let rt2 = rt(cfg);
    assert!(rt2.perf_model_entries() >= 2);
    drop(rt2);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `Double` for CPU workers only (as a codelet without a device implementation).
struct DoubleCpuOnly;
impl Codelet for DoubleCpuOnly {
    fn name(&self) -> &'static str {
        "double_cpu_only"
    }
    fn where_(&self) -> Where {
        Where::CPU
    }
    fn cpu(&self, b: &Buffers) -> Result<()> {
        Double.cpu(b)
    }
}

#[test]
fn restrict_is_a_preference_and_missing_gpus_are_errors() {
    let rt = rt(RuntimeConfig {
        ncpu: Some(1),
        nsim: 1,
        restrict: Where::SIM,
        ..Default::default()
    });
    let x = ones(&rt, 4, 2);
    for h in &x.tiles {
        rt.submit(Box::new(Double), vec![(h.clone(), Access::RW)])
            .unwrap();
        // Cannot honour the restriction: runs on the CPU worker instead.
        rt.submit(Box::new(DoubleCpuOnly), vec![(h.clone(), Access::RW)])
            .unwrap();
    }
    rt.wait_all().unwrap();
    assert!(values(&x).iter().all(|&v| v == 4.0));
    let st = rt.stats();
    let n = x.tiles.len() as u64;
    assert_eq!((st.workers[0].tasks, st.workers[1].tasks), (n, n));
    // An explicit restriction stays strict.
    let e = rt
        .submit_with(
            Box::new(DoubleCpuOnly),
            vec![(x.tiles[0].clone(), Access::RW)],
            Where::SIM,
            0,
        )
        .unwrap_err();
    assert!(e.to_string().contains("no worker"), "{e}");
    if gpt2rs::kernels::cuda::context::device_count() == 0 {
        let e = Runtime::new(RuntimeConfig {
            ncpu: Some(1),
            ncuda: 1,
            ..Default::default()
        })
        .err()
        .expect("a CUDA runtime without a GPU");
        assert!(matches!(e, Error::Cuda(_)), "{e}");
    }
}
