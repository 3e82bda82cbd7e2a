//! Local computation on a node's own data: training a model from the round's parameters, and
//! scoring examples with it.
//!
//! The rest of the node talks to [`Trainer`], never to libtorch, so that protocol-level tests can
//! run a federation with a stand-in trainer. The real one is [`TchTrainer`]; end-to-end tests
//! always use it.
//!
//! ```text
//!  Examples (row-major f32, 0/1 labels) ─┐
//!  round parameters (flat f32, ParamLayout order) ─┼─▶ Trainer::train ─▶ TrainOutcome { params, … }
//!  TrainingPlan (epochs, lr, batch, seed) ─┘                 │
//!                                                            └─▶ TrainProgress per mini-batch
//! ```

mod tch_trainer;

use medfed_protocol::model::{ModelError, ModelSpec};
use medfed_protocol::task::TrainingPlan;
use serde::{Deserialize, Serialize};

use crate::examples::Examples;

pub use tch_trainer::{TchTrainer, set_torch_threads};

/// Runs a node's local computation on its own data. Behind a trait so protocol-level tests can
/// run without libtorch.
pub trait Trainer: Send {
    /// Trains from `initial` for `plan.local_epochs` epochs of mini-batch SGD on BCE-with-logits
    /// loss; returns the new flat params.
    ///
    /// `progress` is called after every mini-batch.
    fn train(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError>;

    /// Probability of the positive class (sigmoid of the logit) for every row of `data`.
    ///
    /// An empty `data` gives an empty vector.
    fn predict(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError>;
}

/// Where local training stands, reported after each mini-batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrainProgress {
    /// Current epoch, counted from 1.
    pub epoch: u32,
    /// Epochs in this call.
    pub epochs: u32,
    /// Mini-batch just finished, counted from 1 within the epoch.
    pub batch: usize,
    /// Mini-batches per epoch (the last one may be partial).
    pub batches: usize,
    /// Mean loss per example over the epoch's mini-batches so far.
    pub loss: f64,
}

/// The result of [`Trainer::train`].
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    /// Trained parameters, flat, in the spec's [`ParamLayout`](medfed_protocol::model::ParamLayout)
    /// order.
    pub params: Vec<f32>,
    /// SGD steps taken (mini-batches over all epochs).
    pub steps: u64,
    /// Mean loss per example over the last epoch, measured on each mini-batch before its step.
    pub mean_loss: f64,
}

/// Which device a trainer computes on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ComputeDevice {
    /// The CPU, always available; results are reproducible bit for bit.
    Cpu,
    /// The first CUDA device; training fails to start if none is available.
    Cuda,
    /// CUDA if libtorch sees a CUDA device, else the CPU.
    #[default]
    Auto,
}

/// Why local training or prediction failed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[non_exhaustive]
pub enum TrainError {
    /// The model specification itself is invalid.
    #[error("invalid model: {0}")]
    InvalidModel(#[from] ModelError),
    /// The parameter vector does not have the length the model's layout needs.
    #[error("model needs {expected} parameters, got {actual}")]
    ParamCount {
        /// Length of the model's layout.
        expected: usize,
        /// Length received.
        actual: usize,
    },
    /// A parameter is NaN or infinite before training.
    #[error("parameter {index} is not finite")]
    NonFiniteParam {
        /// Position in the flat vector.
        index: usize,
    },
    /// The examples have a different width from the model's input.
    #[error("examples have {actual} features, the model takes {expected}")]
    FeatureWidth {
        /// The model's input width.
        expected: usize,
        /// The examples' width.
        actual: usize,
    },
    /// The feature matrix does not hold `rows × num_features` values.
    #[error("{rows} examples of width {width} need {expected} feature values, got {actual}")]
    MalformedExamples {
        /// Number of labels.
        rows: usize,
        /// Declared width.
        width: usize,
        /// `rows × width`.
        expected: usize,
        /// Values present.
        actual: usize,
    },
    /// There is nothing to train on.
    #[error("no training examples")]
    EmptyData,
    /// The training plan cannot be followed.
    #[error("invalid training plan: {0}")]
    InvalidPlan(&'static str),
    /// CUDA was asked for but libtorch sees no CUDA device.
    #[error("CUDA was requested but no CUDA device is available")]
    CudaUnavailable,
    /// The loss became NaN or infinite, so training diverged.
    #[error("loss is not finite at epoch {epoch}, batch {batch}")]
    NonFiniteLoss {
        /// Epoch, from 1.
        epoch: u32,
        /// Mini-batch within the epoch, from 1.
        batch: usize,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),
}

/// Checks that `params` and `data` fit `spec`; shared by every trainer.
pub(crate) fn check_inputs(
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
) -> Result<(), TrainError> {
    spec.validate()?;
    let expected = spec.layout().len();
    if params.len() != expected {
        return Err(TrainError::ParamCount {
            expected,
            actual: params.len(),
        });
    }
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        return Err(TrainError::NonFiniteParam { index });
    }
    if data.num_features != spec.input_dim {
        return Err(TrainError::FeatureWidth {
            expected: spec.input_dim,
            actual: data.num_features,
        });
    }
    let rows = data.len();
    let expected_values = rows.checked_mul(data.num_features);
    if expected_values != Some(data.features.len()) {
        return Err(TrainError::MalformedExamples {
            rows,
            width: data.num_features,
            expected: expected_values.unwrap_or(usize::MAX),
            actual: data.features.len(),
        });
    }
    Ok(())
}

/// Checks that a plan can be followed.
pub(crate) fn check_plan(plan: &TrainingPlan) -> Result<(), TrainError> {
    if plan.local_epochs == 0 {
        return Err(TrainError::InvalidPlan("local_epochs is zero"));
    }
    if plan.batch_size == 0 {
        return Err(TrainError::InvalidPlan("batch_size is zero"));
    }
    if !plan.learning_rate.is_finite() || plan.learning_rate < 0.0 {
        return Err(TrainError::InvalidPlan(
            "learning_rate is negative or not finite",
        ));
    }
    Ok(())
}
