//! The DP-SGD noise multiplier a hospital chooses under `noise_multiplier = "auto"`.
//!
//! σ must be the same in every round of a task (the plan spends the budget over all of them),
//! and under the PLD accountant choosing it takes a bisection over privacy loss distributions:
//! it is worked out once per plan and remembered until the plan changes.

use std::sync::Mutex;

use medfed_protocol::accounting::{self, Accountant, Mechanism};
use medfed_protocol::privacy::PrivacyError;

use crate::config::PrivacyConfig;

/// Chooses σ for a plan and remembers the last choice.
#[derive(Debug, Default)]
pub(crate) struct AutoNoiseMultiplier {
    last: Mutex<Option<(Plan, f64)>>,
}

/// Everything σ depends on.
#[derive(Clone, Debug, PartialEq)]
struct Plan {
    accountant: Accountant,
    target_epsilon: f64,
    delta: f64,
    other: Vec<Mechanism>,
    sample_rate: f64,
    steps: u64,
}

impl AutoNoiseMultiplier {
    /// The smallest σ (to the accountant's tolerance) with which `steps` DP-SGD steps at
    /// `sample_rate`, together with the `other` releases the task plans, spend at most the
    /// hospital's budget under its accountant.
    pub(crate) fn choose(
        &self,
        config: &PrivacyConfig,
        other: Vec<Mechanism>,
        sample_rate: f64,
        steps: u64,
    ) -> Result<f64, PrivacyError> {
        let plan = Plan {
            accountant: config.accountant,
            target_epsilon: config.target_epsilon,
            delta: config.delta,
            other,
            sample_rate,
            steps,
        };
        // A poisoned lock only means another thread panicked mid-choice: choose again.
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((known, sigma)) = last.as_ref()
            && *known == plan
        {
            return Ok(*sigma);
        }
        let sigma = accounting::noise_multiplier_for(
            plan.accountant,
            plan.target_epsilon,
            plan.delta,
            &plan.other,
            plan.sample_rate,
            plan.steps,
        )?;
        *last = Some((plan, sigma));
        Ok(sigma)
    }
}
