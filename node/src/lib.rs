//! The medfed hospital node.
//!
//! It runs on-premise, next to the hospital's patient data. It validates the hospital's CSV
//! against the consortium schema, splits it into a training and a held-out part, and answers the
//! coordinator: federated statistics, evaluation counts and locally trained model updates —
//! figures meant to be summed over hospitals, never rows of patient data.
//!
//! ```text
//!  CSV + schema ─▶ data::load_csv ─▶ Dataset ─▶ split ─▶ Hospital ◀─▶ client (QUIC + mTLS)
//!                                                 │
//!                                                 └─ trainer (libtorch) : train, predict
//! ```
//! libtorch is used only behind the [`trainer::Trainer`] trait.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod data;
pub mod egress;
pub mod examples;
pub mod hospital;
pub mod journal;
pub mod ledger;
pub mod progress;
pub mod state_lock;
pub mod trainer;

use std::path::PathBuf;

use medfed_certs::{CertificateSigner, ConsortiumVerifier};
use medfed_protocol::schema::{Schema, SchemaError};

pub use client::{NodeError, NodeOutcome, run};
pub use config::NodeConfig;
pub use hospital::Hospital;
pub use state_lock::{StateLock, StateLockError};

/// Loads the schema and the CSV and splits the data, failing before any network contact if the
/// data is not valid.
pub fn prepare(
    config: &NodeConfig,
    trainer: Box<dyn trainer::Trainer>,
) -> Result<Hospital, PrepareError> {
    let text = std::fs::read_to_string(&config.data.schema).map_err(|source| {
        PrepareError::ReadSchema {
            path: config.data.schema.clone(),
            source,
        }
    })?;
    let schema = Schema::parse(&text).map_err(|source| PrepareError::Schema {
        path: config.data.schema.clone(),
        source,
    })?;
    let dataset = data::load_csv(&config.data.csv, &schema)?;
    let (train, held_out) = dataset.split(config.data.holdout_fraction, config.data.split_seed)?;
    Ok(Hospital::new(schema, train, held_out, trainer))
}

/// Loads what secure aggregation needs: the node's certificate key, to sign its round keys, and
/// the consortium CA, to check its peers'.
pub fn credentials(config: &NodeConfig) -> Result<hospital::Credentials, PrepareError> {
    Ok(hospital::Credentials {
        signer: Box::new(CertificateSigner::load(&config.tls.key)?),
        verifier: Box::new(ConsortiumVerifier::new(&config.tls)?),
    })
}

/// The hospital's privacy policy with its ledger, if the configuration has one. The ledger is
/// read whole: a restarted node keeps every release it ever made. Opening it locks the state
/// folder for this process ([`StateLock`]); another process holding it is an error.
pub fn privacy(config: &NodeConfig) -> Result<Option<hospital::Privacy>, PrepareError> {
    let Some(policy) = config.privacy.clone() else {
        return Ok(None);
    };
    let ledger = ledger::PrivacyLedger::open(&config.state_dir)?;
    Ok(Some(hospital::Privacy {
        config: policy,
        ledger,
    }))
}

/// Why the node's data could not be prepared.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PrepareError {
    /// The schema file cannot be read.
    #[error("cannot read schema {}: {source}", path.display())]
    ReadSchema {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The schema is invalid.
    #[error("schema {}: {source}", path.display())]
    Schema {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: SchemaError,
    },
    /// The CSV is invalid.
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// The privacy ledger cannot be read.
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    /// The node's key or the consortium CA cannot be loaded.
    #[error(transparent)]
    Certs(#[from] medfed_certs::CertError),
}
