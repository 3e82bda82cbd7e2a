//! The load harness's pieces: a stand-in trainer that costs nothing, model sizes chosen by
//! parameter count, many light nodes in one process, and readings of a process's CPU time and
//! peak memory from `/proc`.
//!
//! The load harness measures what the protocol and the coordinator cost — admission, model
//! pushes, the four secure-aggregation phases, unmasking, checkpoints — not training: every node
//! runs [`LightTrainer`], which "trains" by adding a fixed, known perturbation to the round's
//! model. Because the perturbations are known, the next global model is known too
//! ([`expected_fedavg`]), and a test can check that secure aggregation unmasked the exact sum.
//!
//! ```text
//!  medfed-load ── make_dev_consortium (N certificates), N synthetic CSVs
//!      │
//!      ├── medfed-coordinator (child process, release build, secure aggregation on)
//!      │        ▲ QUIC + mTLS, one connection per node
//!      └── N × medfed_node::run (tokio tasks) ── LightTrainer
//! ```

use std::path::Path;

use medfed_node::examples::Examples;
use medfed_node::trainer::{
    DistributedOutcome, DistributedRound, DpConfig, PrivateTrainOutcome, TrainError, TrainOutcome,
    TrainProgress, Trainer,
};
use medfed_node::{NodeConfig, NodeError, NodeOutcome};
use medfed_protocol::distributed_dp::DdpParams;
use medfed_protocol::model::{ModelKind, ModelSpec};
use medfed_protocol::task::TrainingPlan;
use rand::CryptoRng;

/// A trainer that does no training: it returns the round's parameters plus a small perturbation
/// fixed by its `site` and the parameter's position ([`perturbation`]), and scores each example
/// with the logistic of its first feature. It stands in for libtorch when the load harness
/// measures the protocol's cost.
#[derive(Clone, Copy, Debug)]
pub struct LightTrainer {
    /// Chooses the perturbation.
    pub site: u64,
}

impl Trainer for LightTrainer {
    fn train(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        _plan: &TrainingPlan,
        _progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError> {
        Ok(TrainOutcome {
            params: self.perturb(spec, initial, data)?,
            steps: 1,
            mean_loss: 0.0,
        })
    }

    fn train_private(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        _plan: &TrainingPlan,
        _dp: &DpConfig,
        _noise_rng: &mut dyn CryptoRng,
        _progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<PrivateTrainOutcome, TrainError> {
        Ok(PrivateTrainOutcome {
            params: self.perturb(spec, initial, data)?,
            steps: 1,
            mean_loss: 0.0,
            non_finite_examples: 0,
        })
    }

    fn distributed_sum(
        &mut self,
        _spec: &ModelSpec,
        params: &[f32],
        _data: &Examples,
        _round: DistributedRound,
        ddp: &DdpParams,
        rng: &mut dyn CryptoRng,
    ) -> Result<DistributedOutcome, TrainError> {
        // No examples: the words carry this node's noise share alone, at the real cost.
        if ddp.config().dimension != params.len() {
            return Err(TrainError::ParamCount {
                expected: ddp.config().dimension,
                actual: params.len(),
            });
        }
        Ok(DistributedOutcome {
            words: ddp.node_sum().finish(rng),
            sampled: 0,
            non_finite_examples: 0,
        })
    }

    fn predict(
        &mut self,
        _spec: &ModelSpec,
        _params: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError> {
        let width = data.num_features.max(1);
        Ok(data
            .features
            .chunks(width)
            .map(|row| 1.0 / (1.0 + (-row[0]).exp()))
            .collect())
    }
}

impl LightTrainer {
    fn perturb(
        &self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError> {
        let expected = spec.layout().len();
        if initial.len() != expected {
            return Err(TrainError::ParamCount {
                expected,
                actual: initial.len(),
            });
        }
        if data.is_empty() {
            return Err(TrainError::EmptyData);
        }
        Ok(initial
            .iter()
            .enumerate()
            .map(|(i, w)| w + perturbation(self.site, i))
            .collect())
    }
}

/// What [`LightTrainer`] with `site` adds to parameter `i`: a multiple of 1/256 in
/// `[-8/256, 8/256]`, large against the secure-aggregation fixed point's resolution.
pub fn perturbation(site: u64, i: usize) -> f32 {
    let mut z = site
        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
        .wrapping_add(i as u64);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z % 17) as f32 - 8.0) / 256.0
}

/// The FedAvg step (server learning rate 1) from `global` when each node `(site, n)` trains
/// with [`LightTrainer`] on `n` examples: `w + Σ n·δ_site / Σ n`, computed as the coordinator
/// computes it from the nodes' f32 parameters.
pub fn expected_fedavg(global: &[f32], nodes: &[(u64, usize)]) -> Vec<f32> {
    let total: f64 = nodes.iter().map(|(_, n)| *n as f64).sum();
    global
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            let sum: f64 = nodes
                .iter()
                .map(|&(site, n)| {
                    let trained = w + perturbation(site, i);
                    n as f64 * (f64::from(trained) - f64::from(w))
                })
                .sum();
            (f64::from(w) + sum / total) as f32
        })
        .collect()
}

/// Two equal hidden layers whose MLP on `input_dim` features has about `params` parameters
/// (at least 1 unit each).
pub fn mlp_for_params(input_dim: usize, params: usize) -> ModelKind {
    // h² + (input_dim + 3)·h + 1 = params
    let b = (input_dim + 3) as f64;
    let h = ((-b + (b * b + 4.0 * params.saturating_sub(1) as f64).sqrt()) / 2.0).round();
    let h = (h as usize).max(1);
    ModelKind::Mlp { hidden: vec![h, h] }
}

/// Starts node `config` with a [`LightTrainer`] as a task; returns the task and the number of
/// training examples the node holds (its FedAvg weight).
pub fn spawn_light_node(
    config: NodeConfig,
    site: u64,
) -> Result<
    (
        tokio::task::JoinHandle<Result<NodeOutcome, NodeError>>,
        usize,
    ),
    medfed_node::PrepareError,
> {
    let hospital = medfed_node::prepare_node(&config, Box::new(LightTrainer { site }))?;
    let (train, _) = hospital.sizes();
    let task = tokio::spawn(async move { medfed_node::run(&config, hospital).await });
    Ok((task, train))
}

/// CPU time and peak memory of a process, read from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ProcessUsage {
    /// User CPU seconds, all threads.
    pub user_secs: f64,
    /// System CPU seconds, all threads.
    pub system_secs: f64,
    /// Peak resident set (`VmHWM`), KiB.
    pub peak_rss_kib: u64,
}

impl ProcessUsage {
    /// Reads `/proc/<pid>` (`"self"` for this process); `None` if it is gone or not Linux.
    pub fn read(pid: &str) -> Option<Self> {
        let proc = Path::new("/proc").join(pid);
        let status = std::fs::read_to_string(proc.join("status")).ok()?;
        let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
        let peak_rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
        // Fields after the command name (which may hold spaces) start at field 3; utime and
        // stime are fields 14 and 15, in clock ticks of USER_HZ, which Linux fixes at 100.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            user_secs: ticks(14)? as f64 / 100.0,
            system_secs: ticks(15)? as f64 / 100.0,
            peak_rss_kib,
        })
    }

    /// User plus system CPU seconds.
    pub fn cpu_secs(&self) -> f64 {
        self.user_secs + self.system_secs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_size_is_close_to_the_target() {
        let kind = mlp_for_params(6, 100_000);
        let spec = ModelSpec { kind, input_dim: 6 };
        let n = spec.layout().len();
        assert!((99_000..=101_000).contains(&n), "{n}");
    }

    #[test]
    fn reads_this_process() {
        let usage = ProcessUsage::read("self").expect("Linux /proc");
        assert!(usage.peak_rss_kib > 0);
    }
}
