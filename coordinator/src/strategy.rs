//! Server-side aggregation: turning the securely aggregated sums into a new global model.
//!
//! The coordinator never sees one node's update, only sums over nodes. Node `k`, holding `n_k`
//! training examples, contributes `n_k · (w_k − w_global)` and `n_k`; secure aggregation yields
//! `sum_delta = Σ n_k (w_k − w_global)` and `sum_n = Σ n_k`. [`mean_delta`] turns these into the
//! example-weighted FedAvg pseudo-gradient `Δ = sum_delta / sum_n`, and a [`ServerOptimizer`]
//! applies `Δ` to the global model:
//!
//! ```text
//!   sum_delta, sum_n ──mean_delta──▶ Δ ──ServerOptimizer::apply──▶ global model
//!                                          (FedAvg | FedAdam | FedYogi)
//! ```
//!
//! FedAdam and FedYogi follow Algorithm 2 of Reddi et al., "Adaptive Federated Optimization"
//! (ICLR 2021). The optimiser's state ([`OptimizerState`]) is exported after every round so that
//! a restarted coordinator continues exactly where it stopped.

use serde::{Deserialize, Serialize};

/// Which server optimiser the consortium uses, with its hyper-parameters.
///
/// Serialised with a `name` tag in snake case; absent fields take the defaults shown, e.g. in TOML
/// `name = "fed_adam"` alone gives `server_learning_rate = 1e-2`, `beta1 = 0.9`, `beta2 = 0.99`,
/// `tau = 1e-3`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum StrategyConfig {
    /// Federated averaging: `x ← x + η Δ`. With `η = 1` the new model is the example-weighted
    /// average of the nodes' models.
    #[serde(alias = "fedavg")]
    FedAvg {
        /// Server learning rate `η` (default 1.0).
        #[serde(default = "default_fedavg_lr")]
        server_learning_rate: f64,
    },
    /// FedAdam (Reddi et al. 2021, Algorithm 2).
    #[serde(alias = "fedadam")]
    FedAdam {
        /// Server learning rate `η` (default 1e-2).
        #[serde(default = "default_adaptive_lr")]
        server_learning_rate: f64,
        /// First-moment decay `β1` (default 0.9).
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay `β2` (default 0.99).
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity `τ` (default 1e-3).
        #[serde(default = "default_tau")]
        tau: f64,
    },
    /// FedYogi (Reddi et al. 2021, Algorithm 2).
    #[serde(alias = "fedyogi")]
    FedYogi {
        /// Server learning rate `η` (default 1e-2).
        #[serde(default = "default_adaptive_lr")]
        server_learning_rate: f64,
        /// First-moment decay `β1` (default 0.9).
        #[serde(default = "default_beta1")]
        beta1: f64,
        /// Second-moment decay `β2` (default 0.99).
        #[serde(default = "default_beta2")]
        beta2: f64,
        /// Adaptivity `τ` (default 1e-3).
        #[serde(default = "default_tau")]
        tau: f64,
    },
}

impl Default for StrategyConfig {
    /// Plain FedAvg with server learning rate 1.
    fn default() -> Self {
        Self::FedAvg {
            server_learning_rate: default_fedavg_lr(),
        }
    }
}

/// A server optimiser: applies the mean pseudo-gradient of a round to the global model.
pub trait ServerOptimizer: Send {
    /// Applies `mean_delta` (see [`mean_delta`]) to `global` in place.
    ///
    /// Arithmetic is done in `f64` and the result rounded to `f32`. Both slices must have the
    /// length the optimiser was built for ([`Self::param_count`]); [`Self::try_apply`] checks
    /// this and is the one to call with lengths not already known to match.
    ///
    /// # Panics
    ///
    /// If a length differs from [`Self::param_count`] (a bug in the caller: both come from the
    /// coordinator's own model, never from a peer).
    fn apply(&mut self, global: &mut [f32], mean_delta: &[f64]);

    /// The state to persist after a round, to resume with [`build_optimizer`].
    fn state(&self) -> OptimizerState;

    /// Short name for logs and reports: `fed_avg`, `fed_adam` or `fed_yogi`.
    fn name(&self) -> &'static str;

    /// Number of model parameters the optimiser was built for.
    fn param_count(&self) -> usize;

    /// [`Self::apply`], after checking both lengths and that `mean_delta` is finite; nothing is
    /// changed on error.
    fn try_apply(&mut self, global: &mut [f32], mean_delta: &[f64]) -> Result<(), StrategyError> {
        let expected = self.param_count();
        for actual in [global.len(), mean_delta.len()] {
            if actual != expected {
                return Err(StrategyError::LengthMismatch { expected, actual });
            }
        }
        if let Some(index) = mean_delta.iter().position(|d| !d.is_finite()) {
            return Err(StrategyError::NonFinite { index });
        }
        self.apply(global, mean_delta);
        Ok(())
    }
}

/// The persistent state of a server optimiser, for crash-resume.
///
/// `step` counts the rounds applied. `moments` is empty for FedAvg and `[m, v]` (first and second
/// moments, one value per parameter) for FedAdam and FedYogi. In JSON each moment vector is a
/// hex string of its little-endian `f64` bytes, so that a save and load is bit-exact.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerState {
    /// Number of rounds applied so far.
    pub step: u64,
    /// Per-parameter moment vectors (see the type's docs).
    #[serde(with = "moments_hex")]
    pub moments: Vec<Vec<f64>>,
}

/// Builds the optimiser named by `config` for a model of `len` parameters, resuming from
/// `restored` when given (a state exported by [`ServerOptimizer::state`] of the same strategy).
pub fn build_optimizer(
    config: &StrategyConfig,
    len: usize,
    restored: Option<OptimizerState>,
) -> Result<Box<dyn ServerOptimizer>, StrategyError> {
    match *config {
        StrategyConfig::FedAvg {
            server_learning_rate,
        } => {
            check_lr(server_learning_rate)?;
            let step = match restored {
                None => 0,
                Some(state) => {
                    if !state.moments.is_empty() {
                        return Err(StrategyError::StateMismatch {
                            reason: format!(
                                "FedAvg keeps no moments, the state has {}",
                                state.moments.len()
                            ),
                        });
                    }
                    state.step
                }
            };
            Ok(Box::new(FedAvg {
                lr: server_learning_rate,
                len,
                step,
            }))
        }
        StrategyConfig::FedAdam {
            server_learning_rate,
            beta1,
            beta2,
            tau,
        } => {
            let opt = Adaptive::new(
                AdaptiveRule::Adam,
                server_learning_rate,
                beta1,
                beta2,
                tau,
                len,
                restored,
            )?;
            Ok(Box::new(opt))
        }
        StrategyConfig::FedYogi {
            server_learning_rate,
            beta1,
            beta2,
            tau,
        } => {
            let opt = Adaptive::new(
                AdaptiveRule::Yogi,
                server_learning_rate,
                beta1,
                beta2,
                tau,
                len,
                restored,
            )?;
            Ok(Box::new(opt))
        }
    }
}

/// The example-weighted mean pseudo-gradient `sum_delta / sum_n`.
///
/// `sum_n` must be positive and finite, and every `sum_delta` value finite.
pub fn mean_delta(sum_delta: &[f64], sum_n: f64) -> Result<Vec<f64>, StrategyError> {
    if !(sum_n.is_finite() && sum_n > 0.0) {
        return Err(StrategyError::NoExamples { sum_n });
    }
    if let Some(index) = sum_delta.iter().position(|d| !d.is_finite()) {
        return Err(StrategyError::NonFinite { index });
    }
    Ok(sum_delta.iter().map(|d| d / sum_n).collect())
}

/// Distributed DP's pseudo-update: `−learning_rate · gradient_sum / denominator`, the step one
/// round of DP-FedSGD takes, where `gradient_sum` is the decoded sum of clipped per-example
/// gradients plus the noise, and `denominator` the public `q·N` (never a node's own batch
/// size). It is what one local SGD step of `learning_rate` from the global model would send
/// as its update, so every server optimiser takes it as it takes a mean of local updates:
/// FedAvg at server rate 1 steps `w − lr·ḡ` (DP-SGD's step); FedAdam and FedYogi use it as
/// their pseudo-gradient (with the sign of an update, as for local training), and their
/// output is a post-processing of the noised sum, so it costs no privacy.
///
/// `denominator` must be positive and finite, and every value finite.
pub fn distributed_delta(
    gradient_sum: &[f64],
    denominator: f64,
    learning_rate: f64,
) -> Result<Vec<f64>, StrategyError> {
    if !(denominator.is_finite() && denominator > 0.0) {
        return Err(StrategyError::NoExamples { sum_n: denominator });
    }
    if let Some(index) = gradient_sum.iter().position(|g| !g.is_finite()) {
        return Err(StrategyError::NonFinite { index });
    }
    Ok(gradient_sum
        .iter()
        .map(|g| -learning_rate * g / denominator)
        .collect())
}

/// A strategy that cannot be built or applied.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum StrategyError {
    /// The total example count of a round is not positive.
    #[error("cannot average over {sum_n} examples")]
    NoExamples {
        /// The summed example count.
        sum_n: f64,
    },
    /// An aggregated value is NaN or infinite.
    #[error("aggregated update value {index} is not finite")]
    NonFinite {
        /// Position in the vector.
        index: usize,
    },
    /// A vector has the wrong number of parameters.
    #[error("expected {expected} parameters, got {actual}")]
    LengthMismatch {
        /// The optimiser's parameter count.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A hyper-parameter is out of its range.
    #[error("{name} = {value} is invalid: {requirement}")]
    InvalidParameter {
        /// Which hyper-parameter.
        name: &'static str,
        /// Its value.
        value: f64,
        /// The range it must lie in.
        requirement: &'static str,
    },
    /// A restored state does not belong to this strategy or model size.
    #[error("restored optimiser state does not fit: {reason}")]
    StateMismatch {
        /// What does not fit.
        reason: String,
    },
}

/// Default server learning rate of FedAvg.
fn default_fedavg_lr() -> f64 {
    1.0
}

/// Default server learning rate of FedAdam and FedYogi.
fn default_adaptive_lr() -> f64 {
    1e-2
}

/// Default `β1`.
fn default_beta1() -> f64 {
    0.9
}

/// Default `β2`.
fn default_beta2() -> f64 {
    0.99
}

/// Default `τ`.
fn default_tau() -> f64 {
    1e-3
}

/// Checks a server learning rate.
fn check_lr(lr: f64) -> Result<(), StrategyError> {
    if lr.is_finite() && lr > 0.0 {
        Ok(())
    } else {
        Err(StrategyError::InvalidParameter {
            name: "server_learning_rate",
            value: lr,
            requirement: "finite and > 0",
        })
    }
}

/// Checks a length against the optimiser's, panicking on a caller bug (see
/// [`ServerOptimizer::apply`]).
fn assert_lengths(expected: usize, global: &[f32], mean_delta: &[f64]) {
    assert!(
        global.len() == expected && mean_delta.len() == expected,
        "server optimiser built for {expected} parameters got a model of {} and an update of {}",
        global.len(),
        mean_delta.len()
    );
}

/// FedAvg with a server learning rate.
struct FedAvg {
    /// Server learning rate `η`.
    lr: f64,
    /// Parameter count.
    len: usize,
    /// Rounds applied.
    step: u64,
}

impl ServerOptimizer for FedAvg {
    fn apply(&mut self, global: &mut [f32], mean_delta: &[f64]) {
        assert_lengths(self.len, global, mean_delta);
        for (x, d) in global.iter_mut().zip(mean_delta) {
            *x = (f64::from(*x) + self.lr * d) as f32;
        }
        self.step += 1;
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            step: self.step,
            moments: Vec::new(),
        }
    }

    fn name(&self) -> &'static str {
        "fed_avg"
    }

    fn param_count(&self) -> usize {
        self.len
    }
}

/// The second-moment rule that tells FedAdam and FedYogi apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AdaptiveRule {
    /// `v ← β2 v + (1 − β2) Δ²`.
    Adam,
    /// `v ← v − (1 − β2) Δ² sign(v − Δ²)`.
    Yogi,
}

/// FedAdam or FedYogi, as in Algorithm 2 of Reddi et al. 2021.
///
/// Per round `t`, with `Δ` the mean pseudo-gradient:
///
/// ```text
/// m ← β1 m + (1 − β1) Δ
/// v ← β2 v + (1 − β2) Δ²                 (Adam)
/// v ← v − (1 − β2) Δ² sign(v − Δ²)       (Yogi)
/// x ← x + η m / (√v + τ)
/// ```
///
/// As in the paper, no bias correction is applied to `m` or `v`. The moments start at `m = 0` and
/// `v = τ²`, the smallest initial value the paper allows (`v₋₁ ≥ τ²`).
struct Adaptive {
    /// Which second-moment rule.
    rule: AdaptiveRule,
    /// Server learning rate `η`.
    lr: f64,
    /// First-moment decay `β1`.
    beta1: f64,
    /// Second-moment decay `β2`.
    beta2: f64,
    /// Adaptivity `τ`.
    tau: f64,
    /// Rounds applied.
    step: u64,
    /// First moment `m`.
    m: Vec<f64>,
    /// Second moment `v`.
    v: Vec<f64>,
}

impl Adaptive {
    /// Validates the hyper-parameters and sets up fresh or restored moments.
    fn new(
        rule: AdaptiveRule,
        lr: f64,
        beta1: f64,
        beta2: f64,
        tau: f64,
        len: usize,
        restored: Option<OptimizerState>,
    ) -> Result<Self, StrategyError> {
        check_lr(lr)?;
        for (name, value) in [("beta1", beta1), ("beta2", beta2)] {
            if !(0.0..1.0).contains(&value) {
                return Err(StrategyError::InvalidParameter {
                    name,
                    value,
                    requirement: "in [0, 1)",
                });
            }
        }
        if !(tau.is_finite() && tau > 0.0) {
            return Err(StrategyError::InvalidParameter {
                name: "tau",
                value: tau,
                requirement: "finite and > 0",
            });
        }
        let (step, m, v) = match restored {
            None => (0, vec![0.0; len], vec![tau * tau; len]),
            Some(state) => {
                let Ok::<[Vec<f64>; 2], _>([m, v]) = state.moments.try_into() else {
                    return Err(StrategyError::StateMismatch {
                        reason: "FedAdam and FedYogi keep exactly two moment vectors".into(),
                    });
                };
                if m.len() != len || v.len() != len {
                    return Err(StrategyError::StateMismatch {
                        reason: format!(
                            "moments of {} and {} values for a model of {len}",
                            m.len(),
                            v.len()
                        ),
                    });
                }
                if m.iter().chain(&v).any(|x| !x.is_finite()) || v.iter().any(|&x| x < 0.0) {
                    return Err(StrategyError::StateMismatch {
                        reason: "moments are not finite, or the second moment is negative".into(),
                    });
                }
                (state.step, m, v)
            }
        };
        Ok(Self {
            rule,
            lr,
            beta1,
            beta2,
            tau,
            step,
            m,
            v,
        })
    }
}

impl ServerOptimizer for Adaptive {
    fn apply(&mut self, global: &mut [f32], mean_delta: &[f64]) {
        assert_lengths(self.m.len(), global, mean_delta);
        let (b1, b2) = (self.beta1, self.beta2);
        for (((x, &d), m), v) in global
            .iter_mut()
            .zip(mean_delta)
            .zip(&mut self.m)
            .zip(&mut self.v)
        {
            *m = b1 * *m + (1.0 - b1) * d;
            let d2 = d * d;
            *v = match self.rule {
                AdaptiveRule::Adam => b2 * *v + (1.0 - b2) * d2,
                AdaptiveRule::Yogi => *v - (1.0 - b2) * d2 * sign(*v - d2),
            };
            *x = (f64::from(*x) + self.lr * *m / (v.sqrt() + self.tau)) as f32;
        }
        self.step += 1;
    }

    fn state(&self) -> OptimizerState {
        OptimizerState {
            step: self.step,
            moments: vec![self.m.clone(), self.v.clone()],
        }
    }

    fn name(&self) -> &'static str {
        match self.rule {
            AdaptiveRule::Adam => "fed_adam",
            AdaptiveRule::Yogi => "fed_yogi",
        }
    }

    fn param_count(&self) -> usize {
        self.m.len()
    }
}

/// The sign function with `sign(0) = 0` (unlike [`f64::signum`]).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

/// Bit-exact serde for moment vectors: each vector as hex of its little-endian `f64` bytes.
mod moments_hex {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes each vector as one hex string.
    pub(super) fn serialize<S: Serializer>(moments: &[Vec<f64>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(moments.iter().map(|vec| {
            let bytes: Vec<u8> = vec.iter().flat_map(|x| x.to_le_bytes()).collect();
            hex::encode(bytes)
        }))
    }

    /// Reads the hex strings back.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Vec<f64>>, D::Error> {
        let strings = Vec::<String>::deserialize(d)?;
        strings
            .iter()
            .map(|s| {
                let bytes = hex::decode(s).map_err(D::Error::custom)?;
                if bytes.len() % 8 != 0 {
                    return Err(D::Error::custom(
                        "moment vector length is not a multiple of 8",
                    ));
                }
                Ok(bytes
                    .chunks_exact(8)
                    .map(|c| {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(c);
                        f64::from_le_bytes(b)
                    })
                    .collect())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adam(lr: f64, beta1: f64, beta2: f64, tau: f64) -> StrategyConfig {
        StrategyConfig::FedAdam {
            server_learning_rate: lr,
            beta1,
            beta2,
            tau,
        }
    }

    #[test]
    fn config_defaults_and_tags() {
        let c: StrategyConfig = serde_json::from_str(r#"{"name":"fed_adam"}"#).unwrap();
        assert_eq!(c, adam(1e-2, 0.9, 0.99, 1e-3));
        let c: StrategyConfig = serde_json::from_str(r#"{"name":"fed_avg"}"#).unwrap();
        assert_eq!(c, StrategyConfig::default());
        let c: StrategyConfig = serde_json::from_str(r#"{"name":"fed_yogi","tau":0.5}"#).unwrap();
        assert_eq!(
            c,
            StrategyConfig::FedYogi {
                server_learning_rate: 1e-2,
                beta1: 0.9,
                beta2: 0.99,
                tau: 0.5
            }
        );
        let json = serde_json::to_value(adam(0.1, 0.8, 0.9, 1e-2)).unwrap();
        assert_eq!(json["name"], "fed_adam");
        assert!(serde_json::from_str::<StrategyConfig>(r#"{"name":"fed_avg","lr":1}"#).is_err());
    }

    #[test]
    fn a_distributed_round_under_fed_avg_is_one_sgd_step_over_the_public_denominator() {
        // Σg = (4, −8) over q·N = 2 is the mean gradient (2, −4); lr 0.5 steps it to (−1, 2).
        let delta = distributed_delta(&[4.0, -8.0], 2.0, 0.5).unwrap();
        assert_eq!(delta, vec![-1.0, 2.0]);
        let mut optimizer = build_optimizer(
            &StrategyConfig::FedAvg {
                server_learning_rate: 1.0,
            },
            2,
            None,
        )
        .unwrap();
        let mut w = [1.0f32, 1.0];
        optimizer.try_apply(&mut w, &delta).unwrap();
        assert_eq!(w, [0.0, 3.0]);
        assert_eq!(
            distributed_delta(&[1.0], 0.0, 0.1),
            Err(StrategyError::NoExamples { sum_n: 0.0 })
        );
        assert_eq!(
            distributed_delta(&[1.0, f64::NAN], 1.0, 0.1),
            Err(StrategyError::NonFinite { index: 1 })
        );
    }

    #[test]
    fn mean_delta_divides_and_refuses_no_examples() {
        assert_eq!(mean_delta(&[2.0, -4.0], 4.0).unwrap(), vec![0.5, -1.0]);
        assert_eq!(
            mean_delta(&[1.0], 0.0),
            Err(StrategyError::NoExamples { sum_n: 0.0 })
        );
        assert!(matches!(
            mean_delta(&[1.0], -3.0),
            Err(StrategyError::NoExamples { .. })
        ));
        assert!(matches!(
            mean_delta(&[1.0], f64::NAN),
            Err(StrategyError::NoExamples { .. })
        ));
        assert_eq!(
            mean_delta(&[1.0, f64::INFINITY], 2.0),
            Err(StrategyError::NonFinite { index: 1 })
        );
    }

    #[test]
    fn fedavg_with_unit_lr_is_the_weighted_average_of_node_models() {
        let global = [0.5f32, -1.0, 2.0];
        let nodes: [(f64, [f32; 3]); 3] = [
            (10.0, [1.0, 0.0, 2.0]),
            (30.0, [0.0, -2.0, 4.0]),
            (60.0, [2.0, 1.0, -1.0]),
        ];
        // What each node contributes, and what secure aggregation sums.
        let mut sum_delta = vec![0.0f64; 3];
        let mut sum_n = 0.0;
        for (n, w) in &nodes {
            for i in 0..3 {
                sum_delta[i] += n * (f64::from(w[i]) - f64::from(global[i]));
            }
            sum_n += n;
        }
        let delta = mean_delta(&sum_delta, sum_n).unwrap();
        let mut opt = build_optimizer(&StrategyConfig::default(), 3, None).unwrap();
        let mut model = global;
        opt.try_apply(&mut model, &delta).unwrap();
        for i in 0..3 {
            let avg: f64 = nodes.iter().map(|(n, w)| n * f64::from(w[i])).sum::<f64>() / sum_n;
            assert!(
                (f64::from(model[i]) - avg).abs() < 1e-6,
                "{i}: {} vs {avg}",
                model[i]
            );
        }
        assert_eq!(
            opt.state(),
            OptimizerState {
                step: 1,
                moments: vec![]
            }
        );
        assert_eq!(opt.name(), "fed_avg");
    }

    #[test]
    fn fedavg_server_learning_rate_scales_the_step() {
        let cfg = StrategyConfig::FedAvg {
            server_learning_rate: 0.5,
        };
        let mut opt = build_optimizer(&cfg, 2, None).unwrap();
        let mut x = [1.0f32, 1.0];
        opt.apply(&mut x, &[2.0, -4.0]);
        assert_eq!(x, [2.0, -1.0]);
    }

    #[test]
    fn fedadam_matches_a_hand_computation_of_two_steps() {
        let (lr, b1, b2, tau) = (0.1, 0.9, 0.99, 0.01);
        let mut opt = build_optimizer(&adam(lr, b1, b2, tau), 2, None).unwrap();
        let mut x = [1.0f32, -2.0];
        let d1 = [0.5, -0.2];
        let d2 = [0.1, 0.3];
        opt.apply(&mut x, &d1);
        opt.apply(&mut x, &d2);

        // Step 1, coordinate 0: m = 0.1·0.5 = 0.05; v = 0.99·1e-4 + 0.01·0.25 = 0.002599;
        //   x = 1 + 0.1·0.05/(√0.002599 + 0.01).
        // Step 2: m = 0.9·0.05 + 0.1·0.1 = 0.055; v = 0.99·0.002599 + 0.01·0.01 = 0.00267301;
        //   x += 0.1·0.055/(√0.00267301 + 0.01).
        let x0_1 = (1.0f64 + 0.1 * 0.05 / (0.002599f64.sqrt() + 0.01)) as f32;
        let x0_2 = (f64::from(x0_1) + 0.1 * 0.055 / (0.00267301f64.sqrt() + 0.01)) as f32;
        // Coordinate 1: m = −0.02, v = 0.99·1e-4 + 0.01·0.04 = 0.000499;
        //   then m = −0.018 + 0.03 = 0.012, v = 0.99·0.000499 + 0.01·0.09 = 0.00139401.
        let x1_1 = (-2.0f64 + 0.1 * -0.02 / (0.000499f64.sqrt() + 0.01)) as f32;
        let x1_2 = (f64::from(x1_1) + 0.1 * 0.012 / (0.00139401f64.sqrt() + 0.01)) as f32;
        assert!(
            (x[0] - x0_2).abs() <= f32::EPSILON * 4.0,
            "{} vs {x0_2}",
            x[0]
        );
        assert!(
            (x[1] - x1_2).abs() <= f32::EPSILON * 4.0,
            "{} vs {x1_2}",
            x[1]
        );
        // Loose check of the magnitudes, so that a wrong formula cannot match by accident.
        assert!((x0_2 - 1.1711).abs() < 1e-3, "{x0_2}");

        let state = opt.state();
        assert_eq!(state.step, 2);
        assert!((state.moments[0][0] - 0.055).abs() < 1e-12);
        assert!((state.moments[1][0] - 0.00267301).abs() < 1e-12);
        assert!((state.moments[0][1] - 0.012).abs() < 1e-12);
        assert!((state.moments[1][1] - 0.00139401).abs() < 1e-12);
        assert_eq!(opt.name(), "fed_adam");
    }

    #[test]
    fn fedyogi_second_moment_moves_towards_delta_squared_additively() {
        let cfg = StrategyConfig::FedYogi {
            server_learning_rate: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 0.01,
        };
        let mut opt = build_optimizer(&cfg, 1, None).unwrap();
        let mut x = [0.0f32];
        opt.apply(&mut x, &[0.5]);
        // v = 1e-4 − 0.01·0.25·sign(1e-4 − 0.25) = 1e-4 + 0.0025.
        let v = opt.state().moments[1][0];
        assert!((v - 0.0026).abs() < 1e-12, "{v}");
        opt.apply(&mut x, &[0.01]);
        // v = 0.0026 − 0.01·1e-4·sign(0.0026 − 1e-4) = 0.0026 − 1e-6.
        let v = opt.state().moments[1][0];
        assert!((v - 0.002599).abs() < 1e-12, "{v}");
        assert_eq!(opt.name(), "fed_yogi");
        assert_eq!(sign(0.0), 0.0);
    }

    #[test]
    fn exported_state_resumes_identically_to_an_uninterrupted_run() {
        let len = 50;
        let deltas: Vec<Vec<f64>> = (0..6)
            .map(|t| {
                (0..len)
                    .map(|i| ((i * 7 + t * 13) % 11) as f64 / 10.0 - 0.5)
                    .collect()
            })
            .collect();
        let start: Vec<f32> = (0..len).map(|i| i as f32 / 17.0).collect();
        for cfg in [
            StrategyConfig::default(),
            adam(0.05, 0.9, 0.99, 1e-3),
            StrategyConfig::FedYogi {
                server_learning_rate: 0.05,
                beta1: 0.9,
                beta2: 0.99,
                tau: 1e-3,
            },
        ] {
            let mut straight = build_optimizer(&cfg, len, None).unwrap();
            let mut a = start.clone();
            for d in &deltas {
                straight.apply(&mut a, d);
            }

            let mut first = build_optimizer(&cfg, len, None).unwrap();
            let mut b = start.clone();
            for d in &deltas[..3] {
                first.apply(&mut b, d);
            }
            // Persist through JSON, as the store does, then "restart".
            let json = serde_json::to_string(&first.state()).unwrap();
            drop(first);
            let restored: OptimizerState = serde_json::from_str(&json).unwrap();
            let mut second = build_optimizer(&cfg, len, Some(restored)).unwrap();
            for d in &deltas[3..] {
                second.apply(&mut b, d);
            }
            assert_eq!(a, b, "{cfg:?}");
            assert_eq!(straight.state(), second.state(), "{cfg:?}");
        }
    }

    #[test]
    fn invalid_configs_and_states_are_refused() {
        assert!(matches!(
            build_optimizer(
                &StrategyConfig::FedAvg {
                    server_learning_rate: 0.0
                },
                3,
                None
            ),
            Err(StrategyError::InvalidParameter {
                name: "server_learning_rate",
                ..
            })
        ));
        assert!(matches!(
            build_optimizer(&adam(0.1, 1.0, 0.99, 1e-3), 3, None),
            Err(StrategyError::InvalidParameter { name: "beta1", .. })
        ));
        assert!(matches!(
            build_optimizer(&adam(0.1, 0.9, 0.99, 0.0), 3, None),
            Err(StrategyError::InvalidParameter { name: "tau", .. })
        ));
        let adam_state = build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 3, None)
            .unwrap()
            .state();
        assert!(matches!(
            build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 4, Some(adam_state.clone())),
            Err(StrategyError::StateMismatch { .. })
        ));
        assert!(matches!(
            build_optimizer(&StrategyConfig::default(), 3, Some(adam_state)),
            Err(StrategyError::StateMismatch { .. })
        ));
        let avg_state = OptimizerState {
            step: 4,
            moments: vec![],
        };
        assert!(matches!(
            build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 3, Some(avg_state)),
            Err(StrategyError::StateMismatch { .. })
        ));
    }

    #[test]
    fn try_apply_checks_lengths_and_leaves_the_model_alone() {
        let mut opt = build_optimizer(&adam(0.1, 0.9, 0.99, 1e-3), 3, None).unwrap();
        let mut x = [1.0f32; 3];
        assert_eq!(
            opt.try_apply(&mut x, &[0.1; 2]),
            Err(StrategyError::LengthMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            opt.try_apply(&mut x[..2], &[0.1; 3]),
            Err(StrategyError::LengthMismatch {
                expected: 3,
                actual: 2
            })
        );
        assert_eq!(
            opt.try_apply(&mut x, &[0.1, f64::NAN, 0.0]),
            Err(StrategyError::NonFinite { index: 1 })
        );
        assert_eq!(x, [1.0; 3]);
        assert_eq!(opt.state().step, 0);
    }
}
