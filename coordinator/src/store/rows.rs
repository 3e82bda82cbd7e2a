//! The rows the store reads back: rounds and nodes, parsed from SQLite's text.

use std::path::PathBuf;

use medfed_protocol::model::ModelHash;
use rusqlite::Row;

use super::StoreError;

/// Where a round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RoundStatus {
    /// Begun and neither completed nor aborted (or the coordinator died during it).
    Running,
    /// Completed: its model is the global model from then on.
    Completed,
    /// Abandoned; it may be begun again.
    Aborted,
}

impl RoundStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Aborted => "aborted",
        }
    }

    /// Parses a stored `status` value.
    fn parse(s: &str) -> Option<Self> {
        match s {
            "running" => Some(Self::Running),
            "completed" => Some(Self::Completed),
            "aborted" => Some(Self::Aborted),
            _ => None,
        }
    }
}

/// One row of the `rounds` table.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundRow {
    /// The round number.
    pub round: u64,
    /// Where it stands.
    pub status: RoundStatus,
    /// When it was (last) begun, Unix milliseconds.
    pub started_at_ms: i64,
    /// When it completed or was aborted, Unix milliseconds.
    pub finished_at_ms: Option<i64>,
    /// Hash of the global model the round started from.
    pub model_hash_before: ModelHash,
    /// Hash of the resulting model, once completed.
    pub model_hash_after: Option<ModelHash>,
    /// Checkpoint of the resulting model, once completed.
    pub checkpoint_path: Option<PathBuf>,
    /// Participants, once completed (empty before).
    pub participants: Vec<String>,
    /// Metrics, once completed.
    pub metrics: Option<serde_json::Value>,
    /// Why it was aborted, if it was.
    pub abort_reason: Option<String>,
}

/// One row of the `nodes` table.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct NodeRow {
    /// The node's identity (its certificate subject).
    pub identity: String,
    /// First time seen, Unix milliseconds.
    pub first_seen_ms: i64,
    /// Last time seen, Unix milliseconds.
    pub last_seen_ms: i64,
    /// Number of completed rounds it took part in.
    pub rounds_joined: u64,
}

/// Parses a stored status.
pub(super) fn parse_status(s: &str) -> Result<RoundStatus, StoreError> {
    RoundStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: format!("round status `{s}`"),
    })
}

/// Parses a stored hex model hash.
pub(super) fn parse_hash(s: &str) -> Result<ModelHash, StoreError> {
    let bytes = hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes.map(ModelHash).ok_or_else(|| StoreError::Corrupt {
        what: format!("model hash `{s}`"),
    })
}

/// A `rounds` row as SQLite returns it, before parsing.
pub(super) struct RawRound {
    /// `round`.
    round: i64,
    /// `status`.
    status: String,
    /// `started_at`.
    started_at: i64,
    /// `finished_at`.
    finished_at: Option<i64>,
    /// `model_hash_before`.
    hash_before: String,
    /// `model_hash_after`.
    hash_after: Option<String>,
    /// `checkpoint_path`.
    checkpoint_path: Option<String>,
    /// `participants`.
    participants: Option<String>,
    /// `metrics`.
    metrics: Option<String>,
    /// `abort_reason`.
    abort_reason: Option<String>,
}

impl RawRound {
    /// Reads the [`ROUND_COLUMNS`].
    pub(super) fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            round: r.get(0)?,
            status: r.get(1)?,
            started_at: r.get(2)?,
            finished_at: r.get(3)?,
            hash_before: r.get(4)?,
            hash_after: r.get(5)?,
            checkpoint_path: r.get(6)?,
            participants: r.get(7)?,
            metrics: r.get(8)?,
            abort_reason: r.get(9)?,
        })
    }

    /// Parses the stored text into a [`RoundRow`].
    pub(super) fn into_row(self) -> Result<RoundRow, StoreError> {
        let json_err = |what: &str| {
            let what = format!("{what} of round {}", self.round);
            move |source| StoreError::Json { what, source }
        };
        let participants = match &self.participants {
            Some(p) => serde_json::from_str(p).map_err(json_err("participants"))?,
            None => Vec::new(),
        };
        let metrics = match &self.metrics {
            Some(m) => Some(serde_json::from_str(m).map_err(json_err("metrics"))?),
            None => None,
        };
        Ok(RoundRow {
            round: self.round.max(0) as u64,
            status: parse_status(&self.status)?,
            started_at_ms: self.started_at,
            finished_at_ms: self.finished_at,
            model_hash_before: parse_hash(&self.hash_before)?,
            model_hash_after: self.hash_after.as_deref().map(parse_hash).transpose()?,
            checkpoint_path: self.checkpoint_path.map(PathBuf::from),
            participants,
            metrics,
            abort_reason: self.abort_reason,
        })
    }
}
