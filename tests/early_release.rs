//! The asynchronous worker's early release: a task released early
//! onto a device stream that fails before it is enqueued must not complete
//! before the predecessor it was released behind (that would break the
//! transitive order of the tasks submitted after it).

use gpt2rs::runtime::{codelet, Access, DataHandle, Runtime, RuntimeConfig, Task, Where};
use gpt2rs::{DType, Error};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn f32s(rt: &Runtime, n: usize, v: f32) -> DataHandle {
    rt.handle_from_fn(DType::F32, n, |b| {
        for c in b.chunks_mut(4) {
            c.copy_from_slice(&v.to_ne_bytes());
        }
    })
    .unwrap()
}

/// g (CPU, 100 ms) gates p1 (sim, reads X, 500 ms): p1 launches only after
/// t is submitted, so t (sim, writes X: WAR after p1) is released early
/// behind p1. `make_t_fail` submits t so that it fails before its launch.
/// Then u (CPU, writes X: WAW after t, hence after p1 transitively) must not
/// run while p1 still runs.
fn scenario(sim_limit: Option<u64>, make_t_fail: impl FnOnce(&Runtime, &DataHandle) -> Task) {
    let rt = Runtime::new(RuntimeConfig {
        ncpu: Some(2),
        nsim: 1,
        memory_limits: vec![None, sim_limit],
        ..Default::default()
    })
    .unwrap();
    let g = f32s(&rt, 4, 0.0);
    let x = f32s(&rt, 4, 1.0);
    let p1_done = Arc::new(AtomicBool::new(false));
    let u_saw_p1_running = Arc::new(AtomicBool::new(false));

    rt.submit_with(
        codelet("gate", 0.0, 0, |_| {
            std::thread::sleep(Duration::from_millis(100));
            Ok(())
        }),
        vec![(g.clone(), Access::W)],
        Where::CPU,
        0,
    )
    .unwrap();
    let d = p1_done.clone();
    let p1 = rt
        .submit_with(
            codelet("p1_reads_x", 0.0, 0, move |_| {
                std::thread::sleep(Duration::from_millis(500));
                d.store(true, Ordering::SeqCst);
                Ok(())
            }),
            vec![(g.clone(), Access::R), (x.clone(), Access::R)],
            Where::SIM,
            0,
        )
        .unwrap();
    let t = make_t_fail(&rt, &x);
    assert!(t.wait().is_err(), "t was meant to fail");
    // `complete` publishes the result before marking its successor list done;
    // let it finish, else u becomes t's successor and is cancelled with it.
    std::thread::sleep(Duration::from_millis(50));
    let (d, s) = (p1_done.clone(), u_saw_p1_running.clone());
    let u = rt
        .submit_with(
            codelet("u_writes_x", 0.0, 0, move |_| {
                if !d.load(Ordering::SeqCst) {
                    s.store(true, Ordering::SeqCst);
                }
                Ok(())
            }),
            vec![(x.clone(), Access::W)],
            Where::CPU,
            0,
        )
        .unwrap();
    u.wait().unwrap();
    p1.wait().unwrap();
    let _ = rt.wait_all();
    assert!(
        !u_saw_p1_running.load(Ordering::SeqCst),
        "u (W on X, after t after p1) ran while p1 (R on X, on the simulated device) was still running"
    );
}

/// t is cancelled (it reads the output of a task that failed) and released
/// early behind p1: `start` completes it at once, before p1.
#[test]
fn cancelled_early_task_completes_after_its_stream_predecessor() {
    scenario(None, |rt, x| {
        let y = f32s(rt, 4, 0.0);
        let q = rt
            .submit_with(
                codelet("q_fails", 0.0, 0, |_| {
                    Err(Error::Argument {
                        op: "q".into(),
                        msg: "injected".into(),
                    })
                }),
                vec![(y.clone(), Access::W)],
                Where::CPU,
                0,
            )
            .unwrap();
        assert!(q.wait().is_err());
        rt.submit_with(
            codelet("t_cancelled", 0.0, 0, |_| Ok(())),
            vec![(y, Access::R), (x.clone(), Access::W)],
            Where::SIM,
            0,
        )
        .unwrap()
    });
}

/// t needs more than the simulated device's limit: its acquire fails at
/// once, before p1 completes.
#[test]
fn early_task_failing_acquire_completes_after_its_stream_predecessor() {
    scenario(Some(256), |rt, x| {
        let big = f32s(rt, 128, 0.0); // 512 bytes > 256
        rt.submit_with(
            codelet("t_too_big", 0.0, 0, |_| Ok(())),
            vec![(big, Access::R), (x.clone(), Access::W)],
            Where::SIM,
            0,
        )
        .unwrap()
    });
}
