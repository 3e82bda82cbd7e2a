//! One DP-SGD step against one plain SGD step, on the CPU, for the heart-sized MLP.
//!
//! Both train one epoch over N = 4096 examples: plain SGD in 16 shuffled batches of 256, DP-SGD
//! in round(1/q) = 16 Poisson-sampled batches with q = 256/4096 (expected size 256), σ = 1,
//! C = 1. Each reported time is the epoch's divided by its 16 steps, so it includes a sixteenth
//! of the per-call setup (building tensors from the flat vectors and back).
//!
//! Run with `cargo bench -p medfed-node --bench dp_sgd`. After criterion's figures, the last line
//! gives medians over interleaved epochs and the median of their ratios, which load from other
//! processes disturbs less.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use medfed_node::examples::Examples;
use medfed_node::trainer::{ComputeDevice, DpConfig, TchTrainer, Trainer};
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::task::TrainingPlan;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Examples in the node's training split.
const ROWS: usize = 4096;
/// Plain SGD's batch size, and DP-SGD's expected one.
const BATCH: usize = 256;
/// Steps in one epoch, for both.
const STEPS: u32 = (ROWS / BATCH) as u32;
/// Interleaved epochs of each kind timed for the ratio.
const PAIRS: usize = 40;

fn main() {
    let mut criterion = Criterion::default().sample_size(20).configure_from_args();
    let spec = ModelSpec {
        kind: ModelKind::Mlp {
            hidden: vec![32, 16],
        },
        input_dim: 18,
    };
    let data = examples(ROWS, spec.input_dim);
    let init = spec.initial_parameters(1);
    let plan = TrainingPlan {
        local_epochs: 1,
        learning_rate: 0.05,
        batch_size: BATCH as u32,
        seed: 1,
        pos_weight: 1.0,
    };
    let dp = DpConfig {
        noise_multiplier: 1.0,
        max_grad_norm: 1.0,
        sample_rate: BATCH as f64 / ROWS as f64,
    };
    // One trainer each, so that the two closures can be interleaved.
    let mut sgd_trainer = cpu_trainer();
    let mut dp_trainer = cpu_trainer();
    let mut noise_rng = ChaCha20Rng::from_os_rng();

    let mut sgd_step = || {
        let out = sgd_trainer.train(&spec, &init, &data, &plan, &mut |_| {});
        assert_eq!(out.expect("plain SGD trains").steps, u64::from(STEPS));
    };
    criterion.bench_function("sgd_step", |b| {
        b.iter_custom(|iters| time(iters, &mut sgd_step))
    });
    let mut dp_step = || {
        let out =
            dp_trainer.train_private(&spec, &init, &data, &plan, &dp, &mut noise_rng, &mut |_| {});
        assert_eq!(out.expect("DP-SGD trains").steps, u64::from(STEPS));
    };
    criterion.bench_function("dp_sgd_step", |b| {
        b.iter_custom(|iters| time(iters, &mut dp_step))
    });
    criterion.final_summary();

    // The ratio from interleaved runs, so that load from other processes hits both alike.
    let (mut dp_times, mut sgd_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let d = time(1, &mut dp_step).as_secs_f64() * 1e3;
        let s = time(1, &mut sgd_step).as_secs_f64() * 1e3;
        dp_times.push(d);
        sgd_times.push(s);
        ratios.push(d / s);
    }
    println!(
        "MLP 18-32-16-1, batch {BATCH} of N = {ROWS}, {} torch threads, median of {PAIRS} \
         interleaved epochs: dp_sgd step {:.3} ms; sgd step {:.3} ms; ratio {:.2}",
        tch::get_num_threads(),
        median(&mut dp_times),
        median(&mut sgd_times),
        median(&mut ratios),
    );
}

/// A trainer on the CPU.
fn cpu_trainer() -> TchTrainer {
    TchTrainer::new(ComputeDevice::Cpu).expect("the CPU is always available")
}

/// Time per step of `iters` epochs of `epoch`.
fn time(iters: u64, epoch: &mut impl FnMut()) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        epoch();
    }
    black_box(start.elapsed() / STEPS)
}

/// The median of `values`, which it sorts.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `rows` examples with uniform features and labels from a fixed linear rule.
fn examples(rows: usize, width: usize) -> Examples {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut data = Examples {
        num_features: width,
        ..Examples::default()
    };
    for _ in 0..rows {
        let x: Vec<f32> = (0..width).map(|_| rng.random_range(-1.0..1.0)).collect();
        let s: f32 = x
            .iter()
            .enumerate()
            .map(|(i, v)| if i % 2 == 0 { *v } else { -v })
            .sum();
        data.features.extend(x);
        data.labels.push(if s > 0.0 { 1.0 } else { 0.0 });
    }
    data
}
