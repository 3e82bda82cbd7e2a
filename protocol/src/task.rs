//! What the coordinator asks of a node for one round of local training.

use serde::{Deserialize, Serialize};

/// Hyper-parameters of one node's local training in one round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainingPlan {
    /// Passes over the node's training split.
    pub local_epochs: u32,
    /// Step size of local SGD.
    pub learning_rate: f64,
    /// Examples per mini-batch.
    pub batch_size: u32,
    /// Seed for the node's batch order in this round (combined with the node's own secret salt).
    pub seed: u64,
}

impl Default for TrainingPlan {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            learning_rate: 0.05,
            batch_size: 32,
            seed: 0,
        }
    }
}
