//! Server-side aggregation: turning the securely aggregated sums into a new global model.
//!
//! The coordinator never sees one node's update, only sums over nodes. Node `k`, holding `n_k`
//! training examples, contributes `n_k · (w_k − w_global)` and `n_k`; secure aggregation yields
//! `sum_delta = Σ n_k (w_k − w_global)` and `sum_n = Σ n_k`. The example-weighted FedAvg
//! pseudo-gradient is `Δ = sum_delta / sum_n` ([`mean_delta`] for a vector held whole), and a
//! [`ServerOptimizer`] applies `Δ` to the global model. A round's sum is the size of the model,
//! so the coordinator never makes `Δ` whole: [`apply_summed_update`] reads the sum a piece at a
//! time and applies each piece's mean ([`ServerOptimizer::apply_piece`]):
//!
//! ```text
//!   round sum (pieces), sum_n ──apply_summed_update──▶ Δ piece ──apply_piece──▶ global model
//!                                                               (FedAvg | FedAdam | FedYogi)
//! ```
//!
//! FedAdam and FedYogi follow Algorithm 2 of Reddi et al., "Adaptive Federated Optimization"
//! (ICLR 2021). The optimiser's state ([`OptimizerState`]) is exported after every round so that
//! a restarted coordinator continues exactly where it stopped.

mod optimizers;
#[cfg(test)]
mod tests;

use std::ops::Range;

use medfed_protocol::round::RoundSum;
use serde::{Deserialize, Serialize};

use optimizers::{Adaptive, AdaptiveRule, FedAvg};

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
    /// Applies a piece of a round's mean update (see [`mean_delta`]): `mean_delta` is the
    /// update of parameters `start..start + mean_delta.len()` of `global`, which are changed in
    /// place. A round applies each parameter's piece once, then calls [`Self::end_round`].
    ///
    /// Arithmetic is done in `f64` and the result rounded to `f32`.
    ///
    /// # Panics
    ///
    /// If `global`'s length differs from [`Self::param_count`] or the piece goes past it (a
    /// bug in the caller: both come from the coordinator's own model, never from a peer).
    fn apply_piece(&mut self, global: &mut [f32], start: usize, mean_delta: &[f64]);

    /// Counts a round applied, once all its pieces are.
    fn end_round(&mut self);

    /// Applies `mean_delta` (see [`mean_delta`]) to `global` in place, as one piece.
    ///
    /// Both slices must have the length the optimiser was built for ([`Self::param_count`]);
    /// [`Self::try_apply`] checks this and is the one to call with lengths not already known
    /// to match.
    ///
    /// # Panics
    ///
    /// If a length differs from [`Self::param_count`].
    fn apply(&mut self, global: &mut [f32], mean_delta: &[f64]) {
        assert_lengths(self.param_count(), global, mean_delta);
        self.apply_piece(global, 0, mean_delta);
        self.end_round();
    }

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

/// Applies the mean of a round's summed update to `global`: `sum`'s figures `update` are
/// `Σ n_k (w_k − w)` and `weight` is `Σ n_k`. The sum is read a piece at a time, so no vector
/// of the model's size is made: one pass checks every figure of the mean finite, a second
/// applies each piece's mean. On error nothing is changed.
pub fn apply_summed_update(
    optimizer: &mut dyn ServerOptimizer,
    global: &mut [f32],
    sum: &RoundSum,
    update: Range<usize>,
    weight: f64,
) -> Result<(), StrategyError> {
    let expected = optimizer.param_count();
    for actual in [global.len(), update.len()] {
        if actual != expected {
            return Err(StrategyError::LengthMismatch { expected, actual });
        }
    }
    if update.end > sum.len() {
        return Err(StrategyError::LengthMismatch {
            expected: update.end,
            actual: sum.len(),
        });
    }
    if !(weight.is_finite() && weight > 0.0) {
        return Err(StrategyError::NoExamples { sum_n: weight });
    }
    sum.visit(update.clone(), &mut |first, piece| match piece
        .iter()
        .position(|d| !(d / weight).is_finite())
    {
        Some(i) => Err(StrategyError::NonFinite {
            index: first - update.start + i,
        }),
        None => Ok(()),
    })?;
    let mut mean = Vec::new();
    sum.visit::<StrategyError>(update.clone(), &mut |first, piece| {
        mean.clear();
        mean.extend(piece.iter().map(|d| d / weight));
        optimizer.apply_piece(global, first - update.start, &mean);
        Ok(())
    })?;
    optimizer.end_round();
    Ok(())
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

/// The parameters of `global` that a piece of a mean update starting at `start` updates.
///
/// # Panics
///
/// If `global` is not of `expected` parameters or the piece goes past its end.
fn piece_of<'a>(
    expected: usize,
    global: &'a mut [f32],
    start: usize,
    mean_delta: &[f64],
) -> &'a mut [f32] {
    assert!(
        global.len() == expected && start + mean_delta.len() <= expected,
        "server optimiser built for {expected} parameters got a model of {} and an update of \
         {} from {start}",
        global.len(),
        mean_delta.len()
    );
    &mut global[start..start + mean_delta.len()]
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
