//! The medfed coordinator.
//!
//! It admits only nodes holding a certificate of the consortium CA (mutual TLS over QUIC), runs a
//! federated-statistics round and then training rounds, sums the nodes' vectors, applies the
//! server optimiser, checkpoints every round's model as safetensors and records its state in
//! SQLite so that a restarted coordinator carries on after the last completed round.
//!
//! It does not link libtorch: the coordinator never trains or evaluates a model itself; every
//! figure about patients comes from the nodes as a sum. The QUIC channel is `medfed-transport`;
//! the bias audit, the checkpoint files and the signed audit reports are `medfed-audit`.
//!
//! ```text
//!  listener ── mTLS handshake, Hello ──▶ registry of connected nodes
//!  training ── for each round: push model, RoundStart ──▶ nodes ──▶ Σ contributions
//!           ── strategy (FedAvg/FedAdam/FedYogi) ──▶ checkpoint ──▶ store (one transaction)
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod console;
pub mod dashboard;
pub mod exchange;
pub mod faults;
pub mod listener;
pub mod manifest;
pub mod phases;
pub mod registry;
pub mod status;
pub mod store;
pub mod strategy;
pub mod task_model;
pub mod training;

pub use config::CoordinatorConfig;
pub use training::{
    CoordinatorError, MAX_REPORTED_ROUNDS, RoundReport, RunningCoordinator, TrainingReport, start,
};
