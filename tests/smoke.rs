use gpt2rs::ops::{self, GemmSpec};
use gpt2rs::runtime::{Runtime, RuntimeConfig, SchedKind};
use gpt2rs::tensor::Tensor;
use gpt2rs::DType;

fn f32s(v: &[f32]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

#[test]
fn gemm_tiled_matches_naive() {
    for (sched, nsim, lim) in [
        (SchedKind::Eager, 0, None),
        (SchedKind::Dmda, 1, Some(3000u64)),
    ] {
        let rt = Runtime::new(RuntimeConfig {
            ncpu: Some(2),
            nsim,
            scheduler: sched,
            memory_limits: if nsim > 0 { vec![None, lim] } else { vec![] },
            ..Default::default()
        })
        .unwrap();
        let (m, n, k) = (7, 5, 9);
        let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 - 2.0).collect();
        let ta = Tensor::from_bytes(&rt, &[m, k], &[3, 4], DType::F32, &f32s(&a)).unwrap();
        let tb = Tensor::from_bytes(&rt, &[k, n], &[4, 2], DType::F32, &f32s(&b)).unwrap();
        let tc = Tensor::zeros(&rt, &[m, n], &[3, 2], DType::F32).unwrap();
        ops::gemm(&GemmSpec::default(), &ta, &tb, &tc).unwrap();
        rt.wait_all().unwrap();
        let out: Vec<f32> = bytemuck::cast_slice(&tc.to_bytes().unwrap()).to_vec();
        for i in 0..m {
            for j in 0..n {
                let r: f32 = (0..k).map(|l| a[i * k + l] * b[l * n + j]).sum();
                assert_eq!(out[i * n + j], r, "{i},{j}");
            }
        }
        let st = rt.stats();
        assert!(st.workers.iter().map(|w| w.tasks).sum::<u64>() >= 3 * 3 * 3);
    }
}

#[test]
fn stats_count_tasks_by_the_phase_they_were_submitted_in() {
    let rt = Runtime::new(RuntimeConfig {
        ncpu: Some(2),
        ..Default::default()
    })
    .unwrap();
    let t = Tensor::zeros(&rt, &[8, 8], &[4, 4], DType::F32).unwrap();
    ops::fill(&t, 1.0).unwrap(); // before any phase: ""
    rt.set_phase("forward");
    ops::scale(&t, 2.0).unwrap();
    ops::scale(&t, 2.0).unwrap();
    rt.set_phase("optimizer");
    ops::fill(&t, 0.0).unwrap();
    rt.set_phase("forward"); // a name used before resumes its phase
    ops::scale(&t, 2.0).unwrap();
    rt.wait_all().unwrap();
    let st = rt.stats();
    let by: Vec<(&str, u64)> = st
        .phases
        .iter()
        .map(|p| (p.name.as_str(), p.tasks))
        .collect();
    assert_eq!(by, [("", 4), ("forward", 12), ("optimizer", 4)]);
    let busy: f64 = st.phases.iter().map(|p| p.busy_s).sum();
    let workers: f64 = st.workers.iter().map(|w| w.busy_s).sum();
    assert!(
        (busy - workers).abs() <= 1e-9 * workers.max(1.0),
        "{busy} vs {workers}"
    );
}
