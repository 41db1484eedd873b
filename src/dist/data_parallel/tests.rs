//! Data parallelism over the loopback backend (ranks as threads): ranks
//! agree bit for bit, N ranks match one rank with the same global batch,
//! and ZeRO-1 equals stage 0 bit for bit.

use super::DataParallel;
use crate::dist::loopback::Loopback;
use crate::dist::Communicator;
use crate::dtype::Precision;
use crate::kernels::cpu::activation::Activation;
use crate::model::{Gpt2, Gpt2Config, StepOptions, Tiling};
use crate::optim::{Optimizer, OptimizerKind};
use crate::runtime::{Runtime, RuntimeConfig};
use std::sync::Arc;

const B: usize = 6;
const T: usize = 8;
const STEPS: usize = 3;

fn config() -> Gpt2Config {
    Gpt2Config {
        vocab_size: 61,
        n_positions: 16,
        n_embd: 16,
        n_layer: 2,
        n_head: 2,
        n_inner: 40,
        activation: Activation::parse("gelu_new").unwrap(),
        layer_norm_epsilon: 1e-5,
        resid_pdrop: 0.0,
        embd_pdrop: 0.0,
        attn_pdrop: 0.0,
        sinusoidal: false,
    }
}

/// Partial tiles on every axis, so that buckets and owners mix tile sizes.
fn tiling() -> Tiling {
    Tiling {
        batch: None,
        seq: None,
        hidden: Some(6),
        inner: Some(16),
        heads: Some(1),
        vocab: Some(25),
    }
}

fn splitmix(seed: &mut u64) -> f64 {
    *seed = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *seed;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn model(rt: &Runtime, precision: Precision) -> Gpt2 {
    let mut m = Gpt2::new(rt, config(), tiling(), precision).unwrap();
    m.deterministic = true;
    let mut seed = 7;
    for p in &m.params.list {
        let n: usize = p.hf_shape.iter().product();
        let v: Vec<f64> = (0..n).map(|_| 0.2 * (splitmix(&mut seed) - 0.5)).collect();
        let bytes = match m.export_dtype() {
            crate::DType::F64 => bytemuck::cast_slice(&v).to_vec(),
            _ => {
                let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
                bytemuck::cast_slice(&f).to_vec()
            }
        };
        m.set_param_bytes(&p.name, bytes).unwrap();
    }
    m
}

/// The global batch of step `s`: ids and next-token targets, [B, T].
fn batch(s: usize) -> (Vec<i64>, Vec<i64>) {
    let mut seed = 100 + s as u64;
    let ids: Vec<i64> = (0..B * (T + 1))
        .map(|_| (splitmix(&mut seed) * 61.0) as i64)
        .collect();
    let mut x = Vec::new();
    let mut y = Vec::new();
    for r in 0..B {
        x.extend_from_slice(&ids[r * (T + 1)..r * (T + 1) + T]);
        y.extend_from_slice(&ids[r * (T + 1) + 1..(r + 1) * (T + 1)]);
    }
    (x, y)
}

fn adamw() -> OptimizerKind {
    OptimizerKind::Adam {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        decoupled: true,
    }
}

fn params(m: &Gpt2) -> Vec<Vec<u8>> {
    m.params
        .list
        .iter()
        .map(|p| m.param_bytes(&p.name).unwrap())
        .collect()
}

/// The parameters (export dtype bytes) after each step, and the losses.
type Run = (Vec<Vec<Vec<u8>>>, Vec<f64>);

/// Trains STEPS steps with minibatches of `mb` rows: on one rank (`comm`
/// None) over the whole batch, or on rank r of a group over rows
/// [r B/N, (r+1) B/N). Returns the parameters after each step and the losses.
fn train(comm: Option<Arc<dyn Communicator>>, zero: u8, mb: usize, precision: Precision) -> Run {
    train_on(comm, zero, mb, precision, 0)
}

/// `train`, with the communication worker on memory node `comm_node` (a
/// simulated device from 1 on, its collectives on that device's stream).
fn train_on(
    comm: Option<Arc<dyn Communicator>>,
    zero: u8,
    mb: usize,
    precision: Precision,
    comm_node: usize,
) -> Run {
    let cfg = RuntimeConfig {
        ncpu: Some(1),
        nsim: comm_node,
        comm: comm.is_some(),
        comm_node,
        ..Default::default()
    };
    train_with(comm, zero, mb, precision, cfg)
}

/// `train` on a runtime made from `cfg` (plus the communication worker).
fn train_with(
    comm: Option<Arc<dyn Communicator>>,
    zero: u8,
    mb: usize,
    precision: Precision,
    cfg: RuntimeConfig,
) -> Run {
    let rt = Runtime::new(RuntimeConfig {
        comm: comm.is_some(),
        ..cfg
    })
    .unwrap();
    let m = model(&rt, precision);
    let (n, r) = comm.as_ref().map_or((1, 0), |c| (c.size(), c.rank()));
    let dp = comm.map(|c| DataParallel::new(&m, c, zero, 700, None).unwrap());
    let mut opt = Optimizer::new(&m, adamw(), 1e-2, 0.01).unwrap();
    if let Some(dp) = &dp {
        assert!(dp.nbuckets() > 2, "several buckets");
        // The embedding's share of wte goes by row (host collectives).
        assert!(dp.splits_wte(), "the tied gradient is split");
        opt.set_stepped_tiles(Some(dp.stepped_tiles())).unwrap();
    }
    let rows = B / n;
    let nmb = rows / mb;
    let mut out = Vec::new();
    let mut losses = Vec::new();
    for s in 0..STEPS {
        let (x, y) = batch(s);
        m.zero_grad().unwrap();
        let mut loss = 0.0;
        for k in 0..nmb {
            let a = (r * rows + k * mb) * T;
            let opt = StepOptions {
                grad_scale: 1.0 / (n * nmb) as f64,
                dropout_seed: None,
            };
            loss += m
                .forward_backward(&x[a..a + mb * T], &y[a..a + mb * T], mb, T, opt)
                .unwrap();
        }
        losses.push(loss / nmb as f64);
        let norm = match &dp {
            Some(dp) => {
                dp.reduce_grads(&m).unwrap();
                dp.clip_grad_norm(&m, 0.05).unwrap()
            }
            None => m.clip_grad_norm(0.05).unwrap(),
        };
        assert!(norm > 0.05, "clipping is exercised ({norm})");
        opt.step().unwrap();
        if let Some(dp) = &dp {
            dp.gather_params(&m).unwrap();
            // Stage 1 leaves the other ranks' master copies stale (they are
            // sharded); a checkpoint gathers them, and so does this test.
            dp.gather(&m, |p| m.params.list[p].master.as_ref()).unwrap();
        }
        rt.wait_all().unwrap();
        out.push(params(&m));
    }
    (out, losses)
}

fn on_ranks(n: usize, zero: u8, mb: usize, p: Precision) -> Vec<Run> {
    on_ranks_at(n, zero, mb, p, 0)
}

fn on_ranks_at(n: usize, zero: u8, mb: usize, p: Precision, comm_node: usize) -> Vec<Run> {
    let group = Loopback::group(n).unwrap();
    std::thread::scope(|s| {
        let hs: Vec<_> = group
            .into_iter()
            .map(|c| s.spawn(move || train_on(Some(Arc::new(c)), zero, mb, p, comm_node)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Parameters after each step, bit for bit (the first difference reported).
fn assert_same(got: &[Vec<Vec<u8>>], want: &[Vec<Vec<u8>>], what: &str) {
    for (s, (g, w)) in got.iter().zip(want).enumerate() {
        for (p, (gp, wp)) in g.iter().zip(w).enumerate() {
            if let Some(i) = gp.iter().zip(wp).position(|(a, b)| a != b) {
                panic!(
                    "{what}: step {s}, parameter {p} differs first at byte {i} of {}",
                    gp.len()
                );
            }
        }
    }
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let r: f64 = b.iter().map(|y| y * y).sum();
    (d / r).sqrt()
}

fn pod<X: bytemuck::Pod>(b: &[u8]) -> Vec<X> {
    b.chunks_exact(std::mem::size_of::<X>())
        .map(bytemuck::pod_read_unaligned)
        .collect()
}

fn f64s(b: &[u8]) -> Vec<f64> {
    pod(b)
}

#[test]
fn ranks_agree_and_match_one_rank_fp64() {
    let (one, one_loss) = train(None, 0, 1, Precision::parse("fp64").unwrap());
    for n in [2, 3] {
        let ranks = on_ranks(n, 0, 1, Precision::parse("fp64").unwrap());
        for (r, (steps, _)) in ranks.iter().enumerate().skip(1) {
            assert_same(
                steps,
                &ranks[0].0,
                &format!("rank {r} of {n} against rank 0"),
            );
        }
        for s in 0..STEPS {
            for (p, want) in one[s].iter().enumerate() {
                let e = rel_err(&f64s(&ranks[0].0[s][p]), &f64s(want));
                assert!(e < 1e-12, "{n} ranks, step {s}, parameter {p}: {e:e}");
            }
            // The global loss is the mean of the ranks' losses.
            let mean: f64 = ranks.iter().map(|(_, l)| l[s]).sum::<f64>() / n as f64;
            assert!((mean - one_loss[s]).abs() < 1e-12 * one_loss[s].abs());
        }
    }
}

#[test]
fn zero_stage_1_equals_stage_0_bitwise() {
    for p in ["fp32", "bf16"] {
        let p = Precision::parse(p).unwrap();
        let zero0 = on_ranks(3, 0, 1, p);
        let zero1 = on_ranks(3, 1, 1, p);
        for r in 0..3 {
            assert_same(
                &zero1[r].0,
                &zero0[r].0,
                &format!("rank {r}, stage 1 against stage 0"),
            );
            assert_same(
                &zero1[r].0,
                &zero1[0].0,
                &format!("rank {r} against rank 0"),
            );
        }
    }
}

#[test]
fn fp32_ranks_match_one_rank() {
    // Two ranks with minibatches of 3 against one rank with minibatches of
    // 1: only the order of the sums differs. The weights, as one vector,
    // within 1e-6; each parameter within 1e-5 (AdamW divides by the root of
    // the second moment, which magnifies rounding in the smallest gradients,
    // the biases').
    let p = Precision::parse("fp32").unwrap();
    let (one, one_loss) = train(None, 0, 1, p);
    let ranks = on_ranks(2, 1, 3, p);
    let widen = |b: &[u8]| -> Vec<f64> { pod::<f32>(b).iter().map(|&x| x as f64).collect() };
    let (mut all_got, mut all_want) = (Vec::new(), Vec::new());
    for (p, want) in one[STEPS - 1].iter().enumerate() {
        let (g, w) = (widen(&ranks[1].0[STEPS - 1][p]), widen(want));
        let e = rel_err(&g, &w);
        assert!(e < 1e-5, "parameter {p}: {e:e}");
        all_got.extend(g);
        all_want.extend(w);
    }
    let e = rel_err(&all_got, &all_want);
    assert!(e < 1e-6, "all weights: {e:e}");
    for (s, want) in one_loss.iter().enumerate() {
        let mean = (ranks[0].1[s] + ranks[1].1[s]) / 2.0;
        assert!((mean - want).abs() < 1e-6 * want.abs(), "loss of step {s}");
    }
}

#[test]
fn collectives_on_a_device_stream_equal_those_on_the_host() {
    // The communication worker on a simulated device: operands moved to that
    // node, collectives launched on its stream in order and retired by event.
    let p = Precision::parse("fp32").unwrap();
    for zero in [0, 1] {
        let host = on_ranks_at(2, zero, 1, p, 0);
        let device = on_ranks_at(2, zero, 1, p, 1);
        for r in 0..2 {
            assert_same(&device[r].0, &host[r].0, &format!("stage {zero}, rank {r}"));
        }
    }
}

#[test]
fn device_gradients_are_summed_through_host_memory() {
    // Compute on a (simulated) device only, collectives on the host: the
    // gradient tiles go down to host memory for the transport and back, as
    // a GPU run's do over MPI.
    let p = Precision::parse("fp32").unwrap();
    let device_only = || RuntimeConfig {
        ncpu: Some(1),
        nsim: 1,
        restrict: crate::runtime::Where::SIM,
        ..Default::default()
    };
    let host = on_ranks(2, 1, 1, p);
    let group = Loopback::group(2).unwrap();
    let device: Vec<Run> = std::thread::scope(|s| {
        let hs: Vec<_> = group
            .into_iter()
            .map(|c| s.spawn(move || train_with(Some(Arc::new(c)), 1, 1, p, device_only())))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for r in 0..2 {
        assert_same(&device[r].0, &host[r].0, &format!("rank {r}"));
    }
}
