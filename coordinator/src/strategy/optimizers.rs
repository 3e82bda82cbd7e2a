//! The server optimisers: FedAvg with a server learning rate, and FedAdam and FedYogi.

use super::{OptimizerState, ServerOptimizer, StrategyError, check_lr, piece_of};

/// FedAvg with a server learning rate.
pub(super) struct FedAvg {
    /// Server learning rate `η`.
    pub(super) lr: f64,
    /// Parameter count.
    pub(super) len: usize,
    /// Rounds applied.
    pub(super) step: u64,
}

impl ServerOptimizer for FedAvg {
    fn apply_piece(&mut self, global: &mut [f32], start: usize, mean_delta: &[f64]) {
        let global = piece_of(self.len, global, start, mean_delta);
        for (x, d) in global.iter_mut().zip(mean_delta) {
            *x = (f64::from(*x) + self.lr * d) as f32;
        }
    }

    fn end_round(&mut self) {
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
pub(super) enum AdaptiveRule {
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
pub(super) struct Adaptive {
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
    pub(super) fn new(
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
    fn apply_piece(&mut self, global: &mut [f32], start: usize, mean_delta: &[f64]) {
        let global = piece_of(self.m.len(), global, start, mean_delta);
        let end = start + mean_delta.len();
        let (b1, b2) = (self.beta1, self.beta2);
        for (((x, &d), m), v) in global
            .iter_mut()
            .zip(mean_delta)
            .zip(&mut self.m[start..end])
            .zip(&mut self.v[start..end])
        {
            *m = b1 * *m + (1.0 - b1) * d;
            let d2 = d * d;
            *v = match self.rule {
                AdaptiveRule::Adam => b2 * *v + (1.0 - b2) * d2,
                AdaptiveRule::Yogi => *v - (1.0 - b2) * d2 * sign(*v - d2),
            };
            *x = (f64::from(*x) + self.lr * *m / (v.sqrt() + self.tau)) as f32;
        }
    }

    fn end_round(&mut self) {
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
pub(super) fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}
