//! Why a store operation failed.

use std::path::PathBuf;

use super::RoundStatus;

/// A store operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened.
    #[error("cannot open the state database {path}: {source}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        source: rusqlite::Error,
    },
    /// SQLite reported an error.
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A value could not be converted to or from JSON.
    #[error("JSON for `{what}`: {source}")]
    Json {
        /// The value or key concerned.
        what: String,
        /// The underlying error.
        source: serde_json::Error,
    },
    /// The database was written by a newer medfed.
    #[error("state database schema version {found} is newer than this build's {supported}")]
    SchemaTooNew {
        /// Version in the file.
        found: i64,
        /// Version this build understands.
        supported: i64,
    },
    /// The round is already completed.
    #[error("round {round} is already completed")]
    RoundAlreadyCompleted {
        /// The round.
        round: u64,
    },
    /// The round comes before the last completed round.
    #[error("round {round} cannot begin: round {last_completed} is already completed")]
    RoundBehind {
        /// The round asked for.
        round: u64,
        /// The last completed round.
        last_completed: u64,
    },
    /// The round is not running, so it cannot complete.
    #[error("round {round} is {} and cannot complete", status.as_str())]
    RoundNotRunning {
        /// The round.
        round: u64,
        /// Its status.
        status: RoundStatus,
    },
    /// The round was never begun.
    #[error("round {round} was never begun")]
    RoundNotFound {
        /// The round.
        round: u64,
    },
    /// The round number does not fit SQLite's signed 64-bit integers.
    #[error("round number {round} is too large to store")]
    RoundOutOfRange {
        /// The round.
        round: u64,
    },
    /// A checkpoint path is not valid UTF-8.
    #[error("checkpoint path {} is not valid UTF-8", path.display())]
    NonUtf8Path {
        /// The path.
        path: PathBuf,
    },
    /// The key is reserved for the store's own use.
    #[error("kv key `{key}` is reserved")]
    ReservedKey {
        /// The key.
        key: String,
    },
    /// A stored value is not what this code writes.
    #[error("state database is inconsistent: {what}")]
    Corrupt {
        /// What is wrong.
        what: String,
    },
}
