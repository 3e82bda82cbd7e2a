//! What DP-SGD costs a TorchScript module: one DP-SGD step (each example's gradient from its
//! own forward and backward pass through the module) against one plain SGD step (the module's
//! batched pass), on the CPU, for the committed gated risk model
//! (`tests/fixtures/torchscript/risk_model.pt`, six features, 121 parameters).
//!
//! Both train two epochs over N = 4096 examples: plain SGD in 2 × 64 shuffled batches of 64,
//! DP-SGD in 2 × round(1/q) = 128 Poisson-sampled batches with q = 64/4096 (expected size 64),
//! σ = 1, C = 1. Each call loads the module once (as a round does); that load, timed apart
//! (scoring one row), is taken out of the step times. Interleaved calls; medians of the step
//! times and of their ratios.
//!
//! Run with `cargo bench -p medfed-node --bench torchscript_dp_sgd` (one libtorch thread).

use std::num::NonZeroUsize;
use std::path::Path;
use std::time::Instant;

use medfed_node::examples::Examples;
use medfed_node::modules::ApprovedModules;
use medfed_node::trainer::{ComputeDevice, DpConfig, TchTrainer, Trainer, set_torch_threads};
use medfed_protocol::model::ModelSpec;
use medfed_protocol::task::TrainingPlan;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Examples in the node's training split.
const ROWS: usize = 4096;
/// Plain SGD's batch size, and DP-SGD's expected one.
const BATCH: usize = 64;
/// Epochs per call.
const EPOCHS: u32 = 2;
/// Steps in one call, for both.
const STEPS: u64 = (ROWS / BATCH) as u64 * EPOCHS as u64;
/// Interleaved calls of each kind.
const PAIRS: usize = 9;

fn main() {
    // One libtorch thread, as the other trainer benches: a model this small gains nothing from
    // more, and threads that spin while waiting time the machine's load, not the step.
    set_torch_threads(NonZeroUsize::MIN);
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/torchscript");
    let module = fixtures.join("risk_model.pt");
    let (spec, init) = ModelSpec::torchscript(
        &std::fs::read(&module).expect("the committed module"),
        &std::fs::read(fixtures.join("risk_model.safetensors")).expect("its parameters"),
        6,
    )
    .expect("the committed module's spec");
    let modules = ApprovedModules::load(vec![module]).expect("the module approved");
    let mut trainer = TchTrainer::new(ComputeDevice::Cpu).expect("libtorch");
    trainer.approve_modules(modules);
    let data = examples(ROWS, 6);
    let plan = TrainingPlan {
        local_epochs: EPOCHS,
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
    let mut noise_rng = ChaCha20Rng::from_os_rng();
    let one_row = Examples {
        num_features: 6,
        features: data.features[..6].to_vec(),
        labels: data.labels[..1].to_vec(),
    };
    let mut load_ms = || {
        let start = Instant::now();
        trainer.predict(&spec, &init, &one_row).expect("scores");
        start.elapsed().as_secs_f64() * 1e3
    };
    let load = median((0..PAIRS).map(|_| load_ms()).collect());
    let (mut plain, mut private, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let start = Instant::now();
        let out = trainer
            .train(&spec, &init, &data, &plan, &mut |_| {})
            .expect("plain SGD trains");
        assert_eq!(out.steps, STEPS);
        let s = (start.elapsed().as_secs_f64() * 1e3 - load) / STEPS as f64;
        let start = Instant::now();
        let out = trainer
            .train_private(&spec, &init, &data, &plan, &dp, &mut noise_rng, &mut |_| {})
            .expect("DP-SGD trains");
        assert_eq!(out.steps, STEPS);
        let d = (start.elapsed().as_secs_f64() * 1e3 - load) / STEPS as f64;
        plain.push(s);
        private.push(d);
        ratios.push(d / s);
    }
    let (s, d, r) = (median(plain), median(private), median(ratios));
    println!(
        "torchscript gated model, batch {BATCH}: module load {load:.1} ms per call; plain \
         {s:.3} ms/step ({:.0} samples/s), DP-SGD by one pass per example {d:.3} ms/step \
         ({:.0} samples/s), DP/plain {r:.1}x (medians of {PAIRS} interleaved calls of {STEPS} \
         steps)",
        BATCH as f64 / s * 1e3,
        BATCH as f64 / d * 1e3,
    );
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn examples(rows: usize, width: usize) -> Examples {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let features: Vec<f32> = (0..rows * width)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let labels = features
        .chunks(width)
        .map(|row| f32::from(row[0] + row[3] > 0.0))
        .collect();
    Examples {
        num_features: width,
        features,
        labels,
    }
}
