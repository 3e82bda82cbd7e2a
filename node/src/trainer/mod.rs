//! Local computation on a node's own data: training a model from the round's parameters, and
//! scoring examples with it.
//!
//! The rest of the node talks to [`Trainer`], never to libtorch, so that protocol-level tests can
//! run a federation with a stand-in trainer. The real one is `TchTrainer`, built with the `torch`
//! feature (on by default); end-to-end tests always use it. [`NoTrainer`] computes nothing: it
//! stands in where a node only checks its data or plans (`medfed-node check`, `plan`), and is all
//! a build without the feature has.
//!
//! ```text
//!  Examples (row-major f32, 0/1 labels) ─┐
//!  round parameters (flat f32, ParamLayout order) ─┼─▶ Trainer::train ─▶ TrainOutcome { params, … }
//!  TrainingPlan (epochs, lr, batch, seed) ─┘                 │
//!                                                            └─▶ TrainProgress per mini-batch
//! ```
//!
//! [`Trainer::train_private`] is the differentially private variant: DP-SGD as Opacus does it
//! (Poisson sampling, per-example clipping, Gaussian noise), with the sampling and the noise
//! drawn from a cryptographically secure RNG the caller hands in.
//!
//! ```text
//!  Examples, round parameters, TrainingPlan (epochs, lr) ─┐
//!  DpConfig (σ, C, q) ────────────────────────────────────┼─▶ Trainer::train_private
//!  CSPRNG seeded from the OS (sampling + noise) ──────────┘        │
//!                                           PrivateTrainOutcome ◀──┘
//! ```
//!
//! [`Trainer::distributed_sum`] is distributed DP's round (DP-FedSGD): no step, the sampled
//! examples' clipped gradients at the round's model summed in integers with this node's share
//! of the noise (`medfed_protocol::distributed_dp::NodeSum`).

#[cfg(feature = "torch")]
mod distributed;
#[cfg(feature = "torch")]
mod dp_sgd;
#[cfg(feature = "torch")]
mod layers;
#[cfg(feature = "torch")]
mod noise;
#[cfg(feature = "torch")]
mod params;
#[cfg(feature = "torch")]
mod tch_trainer;
#[cfg(feature = "torch")]
mod torchscript;
mod unavailable;

use medfed_protocol::distributed_dp::{DdpError, DdpParams};
use medfed_protocol::model::{ModelError, ModelSpec};
use medfed_protocol::task::TrainingPlan;
use rand::CryptoRng;
use serde::{Deserialize, Serialize};

use crate::examples::Examples;
use crate::modules::ApprovedModules;

#[cfg(feature = "torch")]
pub use tch_trainer::{TchTrainer, set_torch_threads};
pub use unavailable::NoTrainer;

/// Runs a node's local computation on its own data. Behind a trait so protocol-level tests can
/// run without libtorch.
pub trait Trainer: Send {
    /// Gives the trainer the TorchScript modules the hospital approved (`[policy]
    /// approved_modules`), the only ones it may run. The default, for a trainer that runs no
    /// module, ignores them.
    fn approve_modules(&mut self, modules: ApprovedModules) {
        let _ = modules;
    }

    /// Checks, before the hospital approves a task, that this trainer can run `spec`, on no
    /// patient data: for a TorchScript module, that it is one the hospital approved, that it
    /// loads, has exactly the declared parameters and gives one logit per row. The default
    /// (a trainer that computes nothing, or a built-in architecture) accepts.
    fn check_model(&mut self, spec: &ModelSpec) -> Result<(), TrainError> {
        let _ = spec;
        Ok(())
    }

    /// Trains from `initial` for `plan.local_epochs` epochs of mini-batch SGD on BCE-with-logits
    /// loss; returns the new flat params.
    ///
    /// `progress` is called after every mini-batch.
    ///
    /// A mini-batch whose loss is not finite stops training with [`TrainError::NonFiniteLoss`].
    /// That failure depends on the data (a crafted model can overflow on one patient's features
    /// only), so it can tell whoever chose the model something about the data. Plain training
    /// makes no privacy claim; use [`Self::train_private`] where one is needed, which never
    /// fails because of the data.
    fn train(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError>;

    /// Trains from `initial` with DP-SGD: `plan.local_epochs` epochs of `round(1/q)` steps each,
    /// where every step Poisson-samples its batch (each example independently with probability
    /// `dp.sample_rate`), clips each example's whole gradient to L2 norm `dp.max_grad_norm`, sums
    /// the clipped gradients, adds Gaussian noise of standard deviation `σ·C` to every
    /// coordinate, divides by the *expected* batch size `q·N` and takes an SGD step of
    /// `plan.learning_rate`. This is Opacus's `DPOptimizer` with Poisson sampling; an empty batch
    /// still takes a step, of noise only.
    ///
    /// A sampled example whose loss or gradient is not finite contributes a zero gradient (norm
    /// 0 ≤ C, so the sensitivity bound holds) and the step goes on, noised and divided by `q·N`
    /// as always; [`PrivateTrainOutcome::non_finite_examples`] counts them. Whether the call
    /// succeeds, and how many steps it takes, thus depends only on the model, the plan, `dp` and
    /// the number of examples, never on which examples were sampled: a failure that depended on
    /// it would be a membership oracle for whoever crafted the model.
    ///
    /// `plan.batch_size` and `plan.seed` are not used: the batches come from `noise_rng`, and
    /// must stay secret for the privacy guarantee, so a seed the coordinator knows must not
    /// choose them. `noise_rng` draws both the batches and the noise, never torch's RNG. The node
    /// passes a fresh CSPRNG seeded from the operating system (`ChaCha20Rng::from_os_rng()`);
    /// tests pass a seeded one to be reproducible.
    ///
    /// Only [`PrivateTrainOutcome::params`] is covered by the DP guarantee; the loss figures in
    /// the outcome and in `progress` are computed from the raw data and are for local display.
    /// `progress` is called after every step.
    #[allow(clippy::too_many_arguments)]
    fn train_private(
        &mut self,
        spec: &ModelSpec,
        initial: &[f32],
        data: &Examples,
        plan: &TrainingPlan,
        dp: &DpConfig,
        noise_rng: &mut dyn CryptoRng,
        progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<PrivateTrainOutcome, TrainError>;

    /// One round of distributed DP (`medfed_protocol::distributed_dp`, DP-FedSGD): draws a
    /// Poisson sample of the rows of `data` (each with probability `sample_rate`) from `rng`,
    /// computes each sampled example's gradient of its own BCE-with-logits loss at `params`
    /// (the round's global model; no step is taken), clips it to L2 norm
    /// `ddp.config().clip_norm`, and adds it to a [`DdpParams::node_sum`]; returns the sum's
    /// words ([`medfed_protocol::distributed_dp::NodeSum::finish`]: clamped, with this node's
    /// noise share drawn from `rng`), the update block of the round's masked vector.
    ///
    /// As in [`Self::train_private`], a sampled example whose gradient is not finite
    /// contributes zero and is counted in [`DistributedOutcome::non_finite_examples`], so that
    /// whether the call succeeds depends only on the model, `ddp`, `sample_rate` and the number
    /// of rows (`round.sample_rate` and `round.pos_weight` are checked first). `rng` must be a CSPRNG seeded from the operating system (tests pass a seeded
    /// one); the sample, like the noise, must stay secret. A positive example's gradient is
    /// weighted by `pos_weight` ([`TrainingPlan::pos_weight`]) before it is clipped.
    fn distributed_sum(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        data: &Examples,
        round: DistributedRound,
        ddp: &DdpParams,
        rng: &mut dyn CryptoRng,
    ) -> Result<DistributedOutcome, TrainError>;

    /// Probability of the positive class (sigmoid of the logit) for every row of `data`.
    ///
    /// An empty `data` gives an empty vector. A row on which the model's output is undefined
    /// (NaN, say `∞ − ∞` inside a crafted model) gets a NaN score, not an error: errors come only
    /// from the model and the data's shape, never from the values. The evaluation counts treat
    /// such a score as [`UNDEFINED_SCORE`](medfed_protocol::evaluation::UNDEFINED_SCORE).
    fn predict(
        &mut self,
        spec: &ModelSpec,
        params: &[f32],
        data: &Examples,
    ) -> Result<Vec<f32>, TrainError>;
}

/// How one distributed-DP round draws and weighs its examples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DistributedRound {
    /// The probability that each example is in the round's sample, in `(0, 1]`.
    pub sample_rate: f64,
    /// The weight of a positive example's gradient ([`TrainingPlan::pos_weight`]).
    pub pos_weight: f64,
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

/// Parameters of DP-SGD, with Opacus's names and meanings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpConfig {
    /// σ: standard deviation of the Gaussian noise, as a multiple of `max_grad_norm`; at least
    /// zero (zero gives clipping without privacy).
    pub noise_multiplier: f64,
    /// C: bound on the L2 norm of each example's gradient, all layers together; positive.
    pub max_grad_norm: f64,
    /// q: probability that a given example is in a given step's batch, in `(0, 1]`.
    pub sample_rate: f64,
}

impl DpConfig {
    /// Checks that the parameters describe a DP-SGD run.
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.sample_rate > 0.0 && self.sample_rate <= 1.0) {
            return Err(TrainError::InvalidDpConfig("sample_rate is not in (0, 1]"));
        }
        if !(self.max_grad_norm.is_finite() && self.max_grad_norm > 0.0) {
            return Err(TrainError::InvalidDpConfig(
                "max_grad_norm is not positive and finite",
            ));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return Err(TrainError::InvalidDpConfig(
                "noise_multiplier is negative or not finite",
            ));
        }
        Ok(())
    }

    /// Steps in one epoch: `round(1/q)`, at least one, as Opacus's Poisson data loader takes.
    pub fn steps_per_epoch(&self) -> u64 {
        // `as` saturates; `validate` keeps q in (0, 1], so 1/q is at least 1.
        ((1.0 / self.sample_rate).round() as u64).max(1)
    }
}

/// The result of [`Trainer::train_private`].
#[derive(Clone, Debug, PartialEq)]
pub struct PrivateTrainOutcome {
    /// Trained parameters, flat, in the spec's [`ParamLayout`](medfed_protocol::model::ParamLayout)
    /// order; the only output the DP guarantee covers.
    pub params: Vec<f32>,
    /// Noisy steps taken: `local_epochs × round(1/q)`, empty batches included. The privacy
    /// accountant needs it.
    pub steps: u64,
    /// Mean loss per sampled example over the last epoch, measured on each batch before its
    /// step, over the examples that counted; zero if none did. Not private: for local display
    /// only.
    pub mean_loss: f64,
    /// Sampled examples, summed over all steps, whose loss or per-example gradient was not finite
    /// and which therefore contributed zero to their step. It depends on the data and is not
    /// covered by the DP guarantee: for the node's own log only, never to be sent.
    pub non_finite_examples: u64,
}

/// The result of [`Trainer::distributed_sum`].
#[derive(Clone, Debug, PartialEq)]
pub struct DistributedOutcome {
    /// The node's noised integer sum, one word of Z(2^32) per parameter: the only output the
    /// DP guarantee covers, and the only one that leaves the node.
    pub words: Vec<u32>,
    /// Examples the Poisson sample drew. Private (the batch size is never sent): for the
    /// node's own log only.
    pub sampled: u64,
    /// Sampled examples whose gradient was not finite and which contributed zero. For the
    /// node's own log only.
    pub non_finite_examples: u64,
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
    /// A feature of a model that starts with an embedding is not one of its category indices.
    #[error(
        "example {row}, input {column}: not a category index (a whole number in 0..{categories}) of the model's embedding"
    )]
    CategoryIndex {
        /// The example, from 0.
        row: usize,
        /// The input within the example, from 0.
        column: usize,
        /// The embedding's number of categories.
        categories: usize,
    },
    /// The task's TorchScript module cannot be had: not approved, unreadable or changed.
    #[error("TorchScript module: {0}")]
    Module(String),
    /// The TorchScript module's parameters are not the ones the task declares.
    #[error("the TorchScript module does not match the task: {0}")]
    ModuleMismatch(String),
    /// The TorchScript module returned something other than one `float32` logit per row.
    #[error(
        "the TorchScript module returned a {kind} tensor of shape {shape:?} for {rows} rows; it must return one float32 logit per row"
    )]
    ModuleOutput {
        /// The output's shape.
        shape: Vec<i64>,
        /// Its element type.
        kind: String,
        /// Rows in.
        rows: i64,
    },
    /// The training plan cannot be followed.
    #[error("invalid training plan: {0}")]
    InvalidPlan(&'static str),
    /// Distributed DP refused an example or its configuration.
    #[error("distributed DP: {0}")]
    DistributedDp(#[from] DdpError),
    /// CUDA was asked for but libtorch sees no CUDA device.
    #[error("CUDA was requested but no CUDA device is available")]
    CudaUnavailable,
    /// The loss became NaN or infinite, so plain training diverged (DP-SGD never reports it: a
    /// non-finite example contributes zero instead).
    #[error("loss is not finite at epoch {epoch}, batch {batch}")]
    NonFiniteLoss {
        /// Epoch, from 1.
        epoch: u32,
        /// Mini-batch within the epoch, from 1.
        batch: usize,
    },
    /// The DP-SGD parameters are out of range.
    #[error("invalid DP-SGD configuration: {0}")]
    InvalidDpConfig(&'static str),
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(String),
    /// The node has no trainer ([`NoTrainer`]): it was set up only to check its data or plan, or
    /// built without libtorch.
    #[error(
        "this node cannot train or score a model: it has no trainer (built without libtorch, the `torch` feature, or set up only to check data)"
    )]
    Unavailable,
}

/// Checks that `params` and `data` fit `spec`; shared by every trainer that computes.
#[cfg(feature = "torch")]
pub(crate) fn check_inputs(
    spec: &ModelSpec,
    params: &[f32],
    data: &Examples,
) -> Result<(), TrainError> {
    spec.validate()?;
    check_shapes(spec.layout().len(), spec.input_dim, params, data)?;
    if let medfed_protocol::model::ModelKind::Layers(architecture) = &spec.kind {
        layers::check_category_indices(architecture, data)?;
    }
    Ok(())
}

/// Checks that `params` has `expected_params` finite values and that `data` is whole rows of
/// `width` features.
#[cfg(feature = "torch")]
pub(crate) fn check_shapes(
    expected_params: usize,
    width: usize,
    params: &[f32],
    data: &Examples,
) -> Result<(), TrainError> {
    if params.len() != expected_params {
        return Err(TrainError::ParamCount {
            expected: expected_params,
            actual: params.len(),
        });
    }
    if let Some(index) = params.iter().position(|v| !v.is_finite()) {
        return Err(TrainError::NonFiniteParam { index });
    }
    if data.num_features != width {
        return Err(TrainError::FeatureWidth {
            expected: width,
            actual: data.num_features,
        });
    }
    let rows = data.len();
    let expected_values = rows.checked_mul(width);
    if expected_values != Some(data.features.len()) {
        return Err(TrainError::MalformedExamples {
            rows,
            width,
            expected: expected_values.unwrap_or(usize::MAX),
            actual: data.features.len(),
        });
    }
    Ok(())
}

/// Checks that a plan can be followed.
#[cfg(feature = "torch")]
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
    check_pos_weight(plan.pos_weight)
}

/// Checks a positive example's loss weight: finite and positive.
#[cfg(feature = "torch")]
pub(crate) fn check_pos_weight(pos_weight: f64) -> Result<(), TrainError> {
    if pos_weight.is_finite() && pos_weight > 0.0 {
        Ok(())
    } else {
        Err(TrainError::InvalidPlan(
            "pos_weight is not a positive number",
        ))
    }
}
