//! The trainer of a node that computes nothing.

use medfed_protocol::distributed_dp::DdpParams;
use medfed_protocol::model::ModelSpec;
use medfed_protocol::task::TrainingPlan;
use rand::CryptoRng;

use super::{
    DistributedOutcome, DistributedRound, DpConfig, PrivateTrainOutcome, TrainError, TrainOutcome,
    TrainProgress, Trainer,
};
use crate::examples::Examples;

/// A [`Trainer`] that refuses every call with [`TrainError::Unavailable`], touching neither the
/// data nor any RNG.
///
/// For a node that only validates its data (`medfed-node check`) or forecasts its releases
/// (`medfed-node plan`), which need no libtorch, and the only trainer of a build without the
/// `torch` feature.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrainer;

impl Trainer for NoTrainer {
    fn train(
        &mut self,
        _spec: &ModelSpec,
        _initial: &[f32],
        _data: &Examples,
        _plan: &TrainingPlan,
        _progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<TrainOutcome, TrainError> {
        Err(TrainError::Unavailable)
    }

    fn train_private(
        &mut self,
        _spec: &ModelSpec,
        _initial: &[f32],
        _data: &Examples,
        _plan: &TrainingPlan,
        _dp: &DpConfig,
        _noise_rng: &mut dyn CryptoRng,
        _progress: &mut dyn FnMut(TrainProgress),
    ) -> Result<PrivateTrainOutcome, TrainError> {
        Err(TrainError::Unavailable)
    }

    fn distributed_sum(
        &mut self,
        _spec: &ModelSpec,
        _params: &[f32],
        _data: &Examples,
        _round: DistributedRound,
        _ddp: &DdpParams,
        _rng: &mut dyn CryptoRng,
    ) -> Result<DistributedOutcome, TrainError> {
        Err(TrainError::Unavailable)
    }

    fn predict(
        &mut self,
        _spec: &ModelSpec,
        _params: &[f32],
        _data: &Examples,
    ) -> Result<Vec<f32>, TrainError> {
        Err(TrainError::Unavailable)
    }
}
