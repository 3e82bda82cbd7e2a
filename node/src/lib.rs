//! The medfed hospital node.
//!
//! It runs on-premise, next to the hospital's patient data. It validates the hospital's CSV
//! against the consortium schema, splits it into a training and a held-out part, and answers the
//! coordinator: federated statistics, evaluation counts and locally trained model updates —
//! figures meant to be summed over hospitals, never rows of patient data.
//!
//! ```text
//!  CSV + schema ─▶ data::load_split ─▶ (train, held-out) ─▶ Hospital ◀─▶ client (QUIC + mTLS)
//!                                                            │
//!                                                            └─ trainer (libtorch) : train, predict
//! ```
//! libtorch is used only behind the [`trainer::Trainer`] trait, and only with the `torch` feature
//! (on by default). Without it the crate still validates data, plans, and keeps the ledger, the
//! egress log and the validation record: everything but training and scoring.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auto_noise;
pub mod check;
pub mod client;
pub mod config;
pub mod data;
pub mod egress;
pub mod examples;
pub mod hospital;
pub mod journal;
pub mod ledger;
pub mod manifest;
pub mod modules;
pub mod plan;
pub mod policy;
pub mod predict;
pub mod progress;
pub mod releases;
pub mod site_figures;
pub mod state_lock;
pub mod status;
pub mod trainer;
pub mod validation;

use std::path::PathBuf;

use std::collections::HashMap;

use medfed_certs::{CertificateSigner, ConsortiumVerifier, MemberList};
use medfed_protocol::schema::{Schema, SchemaError};

pub use client::{NodeError, NodeOutcome, run};
pub use config::NodeConfig;
pub use hospital::Hospital;
pub use state_lock::{StateLock, StateLockError};

use egress::EgressLog;
use policy::{PinnedVerifier, PolicyGate};
use releases::ReleaseRecord;

/// Loads the schema and the CSV and splits the data as `[data]` says ([`data::load_split`]:
/// a random fraction, a split column or a separate held-out file), failing before any network contact if the
/// data is not valid. The node it returns holds the default policy without a member list, and
/// no credentials: [`prepare_node`] makes one ready to take part.
pub fn prepare(
    config: &NodeConfig,
    trainer: Box<dyn trainer::Trainer>,
) -> Result<Hospital, PrepareError> {
    let schema = load_schema(&config.data.schema)?;
    let (train, held_out) = data::load_split(
        &config.data.csv,
        &config.data.holdout,
        &schema,
        &data::ReadOptions::default(),
    )?;
    let mut trainer = trainer;
    trainer.approve_modules(config.policy.approved_modules.clone());
    Ok(Hospital::new(schema, train, held_out, trainer))
}

/// Reads and parses the schema file at `path`; errors name the file.
pub fn load_schema(path: &std::path::Path) -> Result<Schema, PrepareError> {
    let text = std::fs::read_to_string(path).map_err(|source| PrepareError::ReadSchema {
        path: path.to_owned(),
        source,
    })?;
    Schema::parse(&text).map_err(|source| PrepareError::Schema {
        path: path.to_owned(),
        source,
    })
}

/// Everything a node needs to take part: its data ([`prepare`]), its credentials, its
/// hospital's policy (with the member list it pins and its record of releases) and, when
/// configured, its privacy budget with the ledger.
pub fn prepare_node(
    config: &NodeConfig,
    trainer: Box<dyn trainer::Trainer>,
) -> Result<Hospital, PrepareError> {
    let (gate, exact_releases) = policy(config)?;
    let validation =
        validation::SiteValidation::open(&config.state_dir).map_err(PrepareError::Validation)?;
    let site_figures = site_figures::SiteFigureStore::open(&config.state_dir)
        .map_err(PrepareError::SiteFigures)?;
    let hospital = prepare(config, trainer)?
        .with_credentials(credentials(config)?)
        .with_policy(gate, exact_releases)
        .with_validation(validation)
        .with_site_figures(site_figures);
    Ok(match privacy(config)? {
        Some(privacy) => hospital.with_privacy(privacy),
        None => hospital,
    })
}

/// The hospital's policy at work: its member list loaded, the releases it made per round
/// counted from its egress log (a restarted node keeps its attempt caps), and its record of
/// exact figures released into sums.
pub fn policy(config: &NodeConfig) -> Result<(PolicyGate, ReleaseRecord), PrepareError> {
    let members = config
        .policy
        .members
        .as_deref()
        .map(MemberList::load)
        .transpose()?;
    match &members {
        Some(list) => tracing::info!(
            members = list.names().count(),
            digest = %hex::encode(list.digest()),
            "consortium membership pinned"
        ),
        None => tracing::warn!(
            "consortium membership is NOT pinned (policy.trust_ca_for_membership): any certificate of the consortium CA can join a sum with this hospital"
        ),
    }
    let mut releases: HashMap<u64, u32> = HashMap::new();
    for entry in EgressLog::read(&config.state_dir)? {
        if let Some(round) = entry.round
            && matches!(entry.kind.as_str(), "contribution" | "secagg_input")
        {
            *releases.entry(round).or_default() += 1;
        }
    }
    let gate = PolicyGate::new(config.policy.clone(), members, releases);
    let exact_releases = ReleaseRecord::open(&config.state_dir)?;
    Ok((gate, exact_releases))
}

/// Loads what secure aggregation needs: the node's certificate key, to sign its round keys, and
/// the consortium CA, to check its peers'.
pub fn credentials(config: &NodeConfig) -> Result<hospital::Credentials, PrepareError> {
    let consortium = ConsortiumVerifier::new(&config.tls)?;
    let verifier: Box<dyn medfed_protocol::secagg::PeerVerifier + Send> =
        match config.policy.members.as_deref() {
            Some(path) => Box::new(PinnedVerifier::new(consortium, MemberList::load(path)?)),
            None => Box::new(consortium),
        };
    Ok(hospital::Credentials {
        signer: Box::new(CertificateSigner::load(&config.tls.key)?),
        verifier,
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
    /// The consortium's member list cannot be read.
    #[error(transparent)]
    Members(#[from] medfed_certs::MemberListError),
    /// The egress log cannot be read.
    #[error(transparent)]
    Egress(#[from] egress::EgressError),
    /// The record of exact releases cannot be read.
    #[error("the record of exact releases: {0}")]
    Releases(#[from] journal::JournalError),
    /// The hospital's validation record cannot be read.
    #[error("the site's validation record: {0}")]
    Validation(#[source] journal::JournalError),
    /// The journal of the site figure cannot be read.
    #[error("the site-figure journal: {0}")]
    SiteFigures(#[source] journal::JournalError),
}
