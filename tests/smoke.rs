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
