//! Why a round attempt failed, and why the coordinator stopped.

use std::path::PathBuf;

use medfed_audit::checkpoint::CheckpointError;
use medfed_audit::reports::ReportWriteError;
use medfed_protocol::distributed_dp::DdpError;
use medfed_protocol::model::ModelError;
use medfed_protocol::round::{AfterFailure, AttemptFailure};
use medfed_protocol::schema::SchemaError;
use medfed_protocol::stats::StatsError;
use medfed_transport::ChannelError;

use crate::config::ConfigError;
use crate::manifest::ManifestBuildError;
use crate::store::StoreError;
use crate::strategy::StrategyError;

/// Why a round attempt could not be completed (it is restarted, or training stops).
#[derive(Debug, thiserror::Error)]
pub(super) enum RoundFailure {
    /// The round engine's rules failed it.
    #[error(transparent)]
    Attempt(#[from] AttemptFailure),
    #[error("state store: {0}")]
    Store(String),
    #[error("the distributed-DP update cannot be decoded: {0}")]
    DistributedDecode(#[from] DdpError),
    #[error("the distributed-DP update cannot be averaged: {0}")]
    DistributedAverage(#[from] StrategyError),
}

impl RoundFailure {
    /// What follows this failure (see [`AttemptFailure::next_step`]).
    pub(super) fn next_step(&self, attempt: u32, attempts: u32, training: bool) -> AfterFailure {
        match self {
            Self::Attempt(failure) => failure.next_step(attempt, attempts, training),
            _ => AfterFailure::retry_or_give_up(attempt, attempts),
        }
    }
}

impl From<StoreError> for RoundFailure {
    fn from(error: StoreError) -> Self {
        Self::Store(error.to_string())
    }
}

/// Why the coordinator stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CoordinatorError {
    /// The dashboard could not start.
    #[error(transparent)]
    Dashboard(#[from] crate::dashboard::DashboardError),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The schema file is invalid.
    #[error("schema {}: {source}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: SchemaError,
    },
    /// The state store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The server optimiser refused the update.
    #[error(transparent)]
    Strategy(#[from] StrategyError),
    /// The model does not fit its architecture.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The task's model cannot be built from its configuration or files.
    #[error(transparent)]
    TaskModel(#[from] crate::task_model::TaskModelError),
    /// The statistics could not be turned into a standardisation.
    #[error(transparent)]
    Stats(#[from] StatsError),
    /// The endpoint could not be set up.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The state store and the checkpoints disagree.
    #[error("state does not match the checkpoints: {0}")]
    StateMismatch(String),
    /// A round failed every attempt.
    #[error("round {round} failed every attempt; see the log for each node's reason")]
    GaveUp {
        /// The round.
        round: u64,
    },
    /// An audit report could not be written.
    #[error(transparent)]
    Reports(#[from] ReportWriteError),
    /// The coordinator's key cannot sign reports.
    #[error("the coordinator's key cannot sign audit reports: {0}")]
    SigningKey(#[from] medfed_certs::CertError),
    /// The CA certificate or CRL cannot be used to check the nodes' signatures.
    #[error("cannot check the nodes' secure-aggregation signatures: {source}")]
    PeerVerifier {
        /// Cause.
        source: medfed_certs::CertError,
    },
    /// Distributed DP cannot start: its configuration is not usable for the model, or the
    /// statistics round left no pooled example count to divide by.
    #[error("distributed DP cannot start: {0}")]
    DistributedDp(String),
    /// The configuration cannot run in this build.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The released model's card could not be built.
    #[error("model card: {0}")]
    ModelCard(#[from] medfed_audit::model_card::CardError),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
    /// The task manifest cannot be made, signed or written.
    #[error("task manifest: {0}")]
    Manifest(#[from] ManifestBuildError),
}
