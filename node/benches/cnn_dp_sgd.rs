//! One DP-SGD step against one plain SGD step, on the CPU, for a small CNN on 1×28×28 images
//! declared as layers (`medfed_protocol::architecture`):
//!
//! ```text
//!  conv2d 1→16 k5 · group_norm 4 · relu · max_pool2d 2 · conv2d 16→32 k5 · relu · max_pool2d 2
//!  · flatten · linear 512→1                                               (13 793 parameters)
//! ```
//!
//! Both train one epoch over N = 1024 examples: plain SGD in 16 shuffled batches of 64, DP-SGD
//! in round(1/q) = 16 Poisson-sampled batches with q = 64/1024 (expected size 64), σ = 1,
//! C = 1. Each reported time is the epoch's divided by its 16 steps; samples/s is the expected
//! batch, 64, over that time. `scripts/opacus_bench.py` times Opacus on the same CNN, data
//! size, sampling, σ and C with the same number of threads.
//!
//! Run with `cargo bench -p medfed-node --bench cnn_dp_sgd`. libtorch gets
//! `MEDFED_BENCH_THREADS` intra-op threads (2 unless set). After criterion's figures, the last
//! lines give medians over interleaved epochs and the median of their ratios, then the fastest
//! epoch of each kind (on a shared machine, the one least disturbed by other processes).
//! `cargo bench -p medfed-node --bench cnn_dp_sgd -- no-such-bench` skips criterion's part.
//! On a machine shared with other work, run both this and the Opacus script with
//! `OMP_WAIT_POLICY=PASSIVE`: libgomp's spinning waits otherwise dominate both and swing the
//! figures by 2× (docs/BENCHMARKS.md).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use medfed_node::examples::Examples;
use medfed_node::trainer::{ComputeDevice, DpConfig, TchTrainer};
use medfed_protocol::architecture::{Architecture, LayerSpec, Shape};
use medfed_protocol::task::TrainingPlan;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Examples in the node's training split.
const ROWS: usize = 1024;
/// Plain SGD's batch size, and DP-SGD's expected one.
const BATCH: usize = 64;
/// Steps in one epoch, for both.
const STEPS: u32 = (ROWS / BATCH) as u32;
/// Interleaved epochs of each kind timed for the ratio.
const PAIRS: usize = 20;

fn main() {
    let threads = std::env::var("MEDFED_BENCH_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2);
    tch::set_num_threads(threads);
    let mut criterion = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(20))
        .configure_from_args();
    let arch = cnn().check().expect("the benchmark's CNN is valid");
    let data = images(ROWS);
    let init = arch.initial_parameters(1);
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
    let mut sgd_trainer = cpu_trainer();
    let mut dp_trainer = cpu_trainer();
    let mut noise_rng = ChaCha20Rng::from_os_rng();

    let mut sgd_step = || {
        let out = sgd_trainer.train_layers(&arch, &init, &data, &plan, &mut |_| {});
        assert_eq!(out.expect("plain SGD trains").steps, u64::from(STEPS));
    };
    criterion.bench_function("cnn_sgd_step", |b| {
        b.iter_custom(|iters| time(iters, &mut sgd_step))
    });
    let mut dp_step = || {
        let out = dp_trainer.train_layers_private(
            &arch,
            &init,
            &data,
            &plan,
            &dp,
            &mut noise_rng,
            &mut |_| {},
        );
        assert_eq!(out.expect("DP-SGD trains").steps, u64::from(STEPS));
    };
    criterion.bench_function("cnn_dp_sgd_step", |b| {
        b.iter_custom(|iters| time(iters, &mut dp_step))
    });
    criterion.final_summary();

    // The ratio from interleaved runs, so that load from other processes hits both alike.
    let (mut dp_times, mut sgd_times, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let d = time(1, &mut dp_step).as_secs_f64();
        let s = time(1, &mut sgd_step).as_secs_f64();
        dp_times.push(d);
        sgd_times.push(s);
        ratios.push(d / s);
    }
    let (d, s) = (median(&mut dp_times), median(&mut sgd_times));
    // The fastest epoch of each kind: the least disturbed by other processes on a shared machine.
    let (d_min, s_min) = (dp_times[0], sgd_times[0]);
    println!(
        "CNN 1x28x28 (13,793 params), batch {BATCH} of N = {ROWS}, sigma 1, C 1, {} torch \
         threads, {PAIRS} interleaved epochs:",
        tch::get_num_threads(),
    );
    println!(
        "  median: plain sgd step {:.2} ms = {:.0} samples/s; dp_sgd step {:.2} ms = {:.0} \
         samples/s; dp/plain time ratio {:.2}",
        s * 1e3,
        BATCH as f64 / s,
        d * 1e3,
        BATCH as f64 / d,
        median(&mut ratios),
    );
    println!(
        "  fastest: plain sgd step {:.2} ms = {:.0} samples/s; dp_sgd step {:.2} ms = {:.0} \
         samples/s; ratio {:.2}",
        s_min * 1e3,
        BATCH as f64 / s_min,
        d_min * 1e3,
        BATCH as f64 / d_min,
        d_min / s_min,
    );
}

/// The benchmark's CNN.
fn cnn() -> Architecture {
    let conv = |out_channels| LayerSpec::Conv2d {
        out_channels,
        kernel: 5,
        stride: 1,
        padding: 0,
    };
    let pool = LayerSpec::MaxPool2d {
        kernel: 2,
        stride: None,
    };
    Architecture {
        input: Shape::Image {
            channels: 1,
            height: 28,
            width: 28,
        },
        layers: vec![
            conv(16),
            LayerSpec::GroupNorm { groups: 4 },
            LayerSpec::Relu,
            pool.clone(),
            conv(32),
            LayerSpec::Relu,
            pool,
            LayerSpec::Flatten,
            LayerSpec::Linear { out: 1 },
        ],
    }
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

/// `rows` standard normal 28×28 images labelled by whether the top half is brighter.
fn images(rows: usize) -> Examples {
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let mut data = Examples {
        num_features: 784,
        ..Examples::default()
    };
    for _ in 0..rows {
        let x: Vec<f32> = (0..784).map(|_| rng.sample(StandardNormal)).collect();
        let top: f32 = x[..392].iter().sum();
        let bottom: f32 = x[392..].iter().sum();
        data.features.extend(x);
        data.labels.push(if top > bottom { 1.0 } else { 0.0 });
    }
    data
}
