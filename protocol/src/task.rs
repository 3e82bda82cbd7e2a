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
    /// Weight of a positive example's loss (a negative one weighs 1), as PyTorch's
    /// `BCEWithLogitsLoss(pos_weight=…)`: above 1 for a rare outcome, so that the model does not
    /// learn to flag nobody. Each example's gradient is scaled by its weight before DP-SGD's
    /// clipping, so clipping still bounds what one patient adds: the privacy analysis is
    /// unchanged. Finite and positive; 1 is plain binary cross-entropy.
    pub pos_weight: f64,
}

impl Default for TrainingPlan {
    fn default() -> Self {
        Self {
            local_epochs: 1,
            learning_rate: 0.05,
            batch_size: 32,
            seed: 0,
            pos_weight: 1.0,
        }
    }
}
