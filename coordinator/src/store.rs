//! The coordinator's persistent state in SQLite.
//!
//! Three tables hold what a restarted coordinator needs:
//!
//! - `nodes`: every node identity (certificate subject) seen, when, and how many completed rounds
//!   it took part in;
//! - `rounds`: one row per round number, `running`, `completed` or `aborted`, with the model hashes
//!   before and after, the checkpoint path, the participants and the round's metrics;
//! - `kv`: JSON values by key: the federated standardisation, the server optimiser's state, ….
//!
//! The database runs in WAL mode with `synchronous = FULL`, so a committed transaction survives a
//! power cut. Completing a round is one transaction ([`Store::complete_round`]): the round row, the
//! participants' counters and the optimiser state change together or not at all, so a killed
//! coordinator restarts into the last completed round and never sees a half-applied one.
//!
//! The store reads no clock: every time is passed in, as Unix milliseconds. It does not write model
//! checkpoints either (see [`medfed_audit::checkpoint`]); it records their paths.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use medfed_protocol::model::ModelHash;
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::strategy::OptimizerState;

/// The `kv` key under which [`Store::complete_round`] keeps the server optimiser's state. It is
/// reserved: [`Store::put_json`] refuses it.
pub const OPTIMIZER_STATE_KEY: &str = "medfed.optimizer_state";

/// Schema version this code writes and understands.
pub const SCHEMA_VERSION: i64 = 1;

/// The coordinator's state database. Cheap to share behind an `Arc`: calls are serialised on one
/// connection.
#[derive(Debug)]
pub struct Store {
    /// The one connection; SQLite connections are not `Sync`, and one writer suffices.
    conn: Mutex<Connection>,
}

/// Everything recorded when a round completes.
#[derive(Clone, Debug, PartialEq)]
pub struct CompletedRound {
    /// The round number.
    pub round: u64,
    /// When the round completed, Unix milliseconds.
    pub finished_at_ms: i64,
    /// Hash of the new global model (the round's `model_hash_after`).
    pub model_hash: ModelHash,
    /// Where the new global model's checkpoint was written.
    pub checkpoint_path: PathBuf,
    /// Identities of the nodes whose updates are in the aggregate.
    pub participants: Vec<String>,
    /// Round metrics (loss, evaluation, fairness summary, …), free-form JSON.
    pub metrics: serde_json::Value,
    /// The server optimiser's state after this round, kept under [`OPTIMIZER_STATE_KEY`]; `None`
    /// removes any stored state (an optimiser with nothing to keep).
    pub optimizer_state: Option<OptimizerState>,
}

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
#[derive(Clone, Debug, PartialEq, Eq)]
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

impl Store {
    /// Opens (creating if needed) the database at `path`, sets WAL mode, `synchronous = FULL` and
    /// foreign keys, and brings the schema up to [`SCHEMA_VERSION`]. Opening an up-to-date
    /// database changes nothing.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Self::setup(conn)
    }

    /// Opens a private in-memory database, for tests and dry runs.
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Connection::open_in_memory()?;
        Self::setup(conn)
    }

    /// Records that `identity` connected at `now_ms`.
    pub fn node_seen(&self, identity: &str, now_ms: i64) -> Result<(), StoreError> {
        self.lock().execute(
            "INSERT INTO nodes (identity, first_seen, last_seen, rounds_joined)
             VALUES (?1, ?2, ?2, 0)
             ON CONFLICT (identity) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
            params![identity, now_ms],
        )?;
        Ok(())
    }

    /// Records that `round` starts from the model `model_hash_before`.
    ///
    /// A round that is `running` (the coordinator died during it) or `aborted` is restarted: its
    /// row is replaced. Refused if the round is already completed, or is not after the last
    /// completed round.
    pub fn begin_round(
        &self,
        round: u64,
        model_hash_before: &ModelHash,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let key = round_key(round)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        if status_of(&tx, round)? == Some(RoundStatus::Completed) {
            return Err(StoreError::RoundAlreadyCompleted { round });
        }
        if let Some(last) = last_completed_number(&tx)?
            && round < last
        {
            return Err(StoreError::RoundBehind {
                round,
                last_completed: last,
            });
        }
        tx.execute(
            "INSERT OR REPLACE INTO rounds (round, status, started_at, model_hash_before)
             VALUES (?1, 'running', ?2, ?3)",
            params![key, now_ms, model_hash_before.to_hex()],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Marks a running round completed, in one transaction: the round's outcome, a
    /// `rounds_joined` increment for each participant (a participant never seen before is
    /// added), and the optimiser state under [`OPTIMIZER_STATE_KEY`] (removed when `None`).
    pub fn complete_round(&self, rec: &CompletedRound) -> Result<(), StoreError> {
        let key = round_key(rec.round)?;
        let path = rec
            .checkpoint_path
            .to_str()
            .ok_or_else(|| StoreError::NonUtf8Path {
                path: rec.checkpoint_path.clone(),
            })?;
        let mut participants = rec.participants.clone();
        participants.sort();
        participants.dedup();
        let participants_json = to_json("participants", &participants)?;
        let metrics_json = to_json("metrics", &rec.metrics)?;
        let state_json = match &rec.optimizer_state {
            Some(state) => Some(to_json(OPTIMIZER_STATE_KEY, state)?),
            None => None,
        };

        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match status_of(&tx, rec.round)? {
            Some(RoundStatus::Running) => {}
            Some(RoundStatus::Completed) => {
                return Err(StoreError::RoundAlreadyCompleted { round: rec.round });
            }
            Some(status) => {
                return Err(StoreError::RoundNotRunning {
                    round: rec.round,
                    status,
                });
            }
            None => return Err(StoreError::RoundNotFound { round: rec.round }),
        }
        tx.execute(
            "UPDATE rounds SET status = 'completed', finished_at = ?2, model_hash_after = ?3,
                 checkpoint_path = ?4, participants = ?5, metrics = ?6, abort_reason = NULL
             WHERE round = ?1",
            params![
                key,
                rec.finished_at_ms,
                rec.model_hash.to_hex(),
                path,
                participants_json,
                metrics_json
            ],
        )?;
        {
            let mut bump = tx.prepare(
                "INSERT INTO nodes (identity, first_seen, last_seen, rounds_joined)
                 VALUES (?1, ?2, ?2, 1)
                 ON CONFLICT (identity) DO UPDATE SET rounds_joined = rounds_joined + 1",
            )?;
            for identity in &participants {
                bump.execute(params![identity, rec.finished_at_ms])?;
            }
        }
        match state_json {
            Some(json) => tx.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                params![OPTIMIZER_STATE_KEY, json],
            )?,
            None => tx.execute("DELETE FROM kv WHERE key = ?1", [OPTIMIZER_STATE_KEY])?,
        };
        tx.commit()?;
        Ok(())
    }

    /// Marks a running round aborted with `reason`. Aborting an aborted round again changes
    /// nothing; a completed round cannot be aborted.
    pub fn abort_round(&self, round: u64, reason: &str, now_ms: i64) -> Result<(), StoreError> {
        let key = round_key(round)?;
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        match status_of(&tx, round)? {
            Some(RoundStatus::Running) => {}
            Some(RoundStatus::Aborted) => return Ok(()),
            Some(RoundStatus::Completed) => {
                return Err(StoreError::RoundAlreadyCompleted { round });
            }
            None => return Err(StoreError::RoundNotFound { round }),
        }
        tx.execute(
            "UPDATE rounds SET status = 'aborted', finished_at = ?2, abort_reason = ?3
             WHERE round = ?1",
            params![key, now_ms, reason],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// The last completed round with the optimiser state stored with it, or `None` before the
    /// first round completes.
    pub fn last_completed_round(&self) -> Result<Option<CompletedRound>, StoreError> {
        let conn = self.lock();
        let row = conn
            .query_row(
                &format!(
                    "SELECT {ROUND_COLUMNS} FROM rounds WHERE status = 'completed'
                     ORDER BY round DESC LIMIT 1"
                ),
                [],
                RawRound::from_row,
            )
            .optional()?;
        let Some(raw) = row else { return Ok(None) };
        let row = raw.into_row()?;
        let corrupt = |what: &str| StoreError::Corrupt {
            what: format!("completed round {} lacks {what}", row.round),
        };
        let model_hash = row
            .model_hash_after
            .ok_or_else(|| corrupt("model_hash_after"))?;
        let checkpoint_path = row
            .checkpoint_path
            .ok_or_else(|| corrupt("checkpoint_path"))?;
        let finished_at_ms = row.finished_at_ms.ok_or_else(|| corrupt("finished_at"))?;
        // `complete_round` writes the state in the same transaction as the row, and no earlier
        // round can be completed after a later one (`begin_round` refuses), so the stored state
        // belongs to this round.
        let optimizer_state = get_json_on::<OptimizerState>(&conn, OPTIMIZER_STATE_KEY)?;
        Ok(Some(CompletedRound {
            round: row.round,
            finished_at_ms,
            model_hash,
            checkpoint_path,
            participants: row.participants,
            metrics: row.metrics.unwrap_or(serde_json::Value::Null),
            optimizer_state,
        }))
    }

    /// Every round, in round order.
    pub fn rounds(&self) -> Result<Vec<RoundRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(&format!(
            "SELECT {ROUND_COLUMNS} FROM rounds ORDER BY round"
        ))?;
        let raws = stmt
            .query_map([], RawRound::from_row)?
            .collect::<Result<Vec<_>, _>>()?;
        raws.into_iter().map(RawRound::into_row).collect()
    }

    /// Every node seen, ordered by identity.
    pub fn nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT identity, first_seen, last_seen, rounds_joined FROM nodes ORDER BY identity",
        )?;
        let rows = stmt
            .query_map([], |r| {
                Ok(NodeRow {
                    identity: r.get(0)?,
                    first_seen_ms: r.get(1)?,
                    last_seen_ms: r.get(2)?,
                    rounds_joined: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Stores `value` as JSON under `key`, replacing any earlier value. [`OPTIMIZER_STATE_KEY`] is
    /// refused: only [`Self::complete_round`] writes it.
    pub fn put_json<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        if key == OPTIMIZER_STATE_KEY {
            return Err(StoreError::ReservedKey {
                key: key.to_owned(),
            });
        }
        let json = to_json(key, value)?;
        self.lock().execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
            params![key, json],
        )?;
        Ok(())
    }

    /// The JSON value under `key`, or `None` if there is none.
    pub fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        get_json_on(&self.lock(), key)
    }

    /// Applies the connection settings and the migrations.
    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        conn.busy_timeout(Duration::from_secs(5))?;
        // Returns the resulting mode ("memory" for an in-memory database), which is fine either way.
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&mut conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// The connection. A panic while it was held cannot leave a transaction open (dropping a
    /// `Transaction` rolls it back), so a poisoned lock is safe to take over.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

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

/// Schema migrations: `MIGRATIONS[i]` brings version `i` to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 0 → 1: the initial schema.
    "CREATE TABLE nodes (
         identity TEXT PRIMARY KEY NOT NULL,
         first_seen INTEGER NOT NULL,
         last_seen INTEGER NOT NULL,
         rounds_joined INTEGER NOT NULL DEFAULT 0
     );
     CREATE TABLE rounds (
         round INTEGER PRIMARY KEY NOT NULL CHECK (round >= 0),
         status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'aborted')),
         started_at INTEGER NOT NULL,
         finished_at INTEGER,
         model_hash_before TEXT NOT NULL,
         model_hash_after TEXT,
         checkpoint_path TEXT,
         participants TEXT,
         metrics TEXT,
         abort_reason TEXT
     );
     CREATE TABLE kv (
         key TEXT PRIMARY KEY NOT NULL,
         value TEXT NOT NULL
     );",
];

/// The `rounds` columns in the order [`RawRound::from_row`] reads them.
const ROUND_COLUMNS: &str = "round, status, started_at, finished_at, model_hash_before, \
     model_hash_after, checkpoint_path, participants, metrics, abort_reason";

/// Creates the version table if needed and applies the missing migrations, in one transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO schema_version (id, version) VALUES (1, 0);",
    )?;
    let found: i64 = tx.query_row("SELECT version FROM schema_version WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.execute(
            "UPDATE schema_version SET version = ?1 WHERE id = 1",
            [from as i64 + 1],
        )?;
        tracing::info!(version = from + 1, "state database schema migrated");
    }
    tx.commit()?;
    Ok(())
}

/// A round number as stored.
fn round_key(round: u64) -> Result<i64, StoreError> {
    i64::try_from(round).map_err(|_| StoreError::RoundOutOfRange { round })
}

/// The status of `round`, if it has a row.
fn status_of(conn: &Connection, round: u64) -> Result<Option<RoundStatus>, StoreError> {
    let key = round_key(round)?;
    let status: Option<String> = conn
        .query_row("SELECT status FROM rounds WHERE round = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?;
    status.map(|s| parse_status(&s)).transpose()
}

/// The number of the last completed round.
fn last_completed_number(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let last: Option<i64> = conn.query_row(
        "SELECT max(round) FROM rounds WHERE status = 'completed'",
        [],
        |r| r.get(0),
    )?;
    Ok(last.map(|r| r.max(0) as u64))
}

/// Reads a JSON value from `kv`.
fn get_json_on<T: DeserializeOwned>(conn: &Connection, key: &str) -> Result<Option<T>, StoreError> {
    let text: Option<String> = conn
        .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
        .optional()?;
    text.map(|t| {
        serde_json::from_str(&t).map_err(|source| StoreError::Json {
            what: key.to_owned(),
            source,
        })
    })
    .transpose()
}

/// Serialises a value, naming it in the error.
fn to_json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json {
        what: what.to_owned(),
        source,
    })
}

/// Parses a stored status.
fn parse_status(s: &str) -> Result<RoundStatus, StoreError> {
    RoundStatus::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: format!("round status `{s}`"),
    })
}

/// Parses a stored hex model hash.
fn parse_hash(s: &str) -> Result<ModelHash, StoreError> {
    let bytes = hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok());
    bytes.map(ModelHash).ok_or_else(|| StoreError::Corrupt {
        what: format!("model hash `{s}`"),
    })
}

/// A `rounds` row as SQLite returns it, before parsing.
struct RawRound {
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
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Self> {
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
    fn into_row(self) -> Result<RoundRow, StoreError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(b: u8) -> ModelHash {
        ModelHash([b; 32])
    }

    fn completed(round: u64, participants: &[&str]) -> CompletedRound {
        CompletedRound {
            round,
            finished_at_ms: 1_000 + round as i64,
            model_hash: hash(round as u8 + 1),
            checkpoint_path: PathBuf::from(format!("/ckpt/round-{round:05}.safetensors")),
            participants: participants.iter().map(|s| (*s).to_owned()).collect(),
            metrics: serde_json::json!({ "loss": 0.5, "round": round }),
            optimizer_state: Some(OptimizerState {
                step: round,
                moments: vec![vec![round as f64, 0.25]],
            }),
        }
    }

    #[test]
    fn open_twice_is_idempotent_and_sets_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let store = Store::open(&path).unwrap();
        store.node_seen("a", 1).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        let conn = store.lock();
        let version: i64 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let rows: i64 = conn
            .query_row("SELECT count(*) FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "FULL");
        let fk: i64 = conn
            .query_row("PRAGMA foreign_keys", [], |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        drop(conn);
        assert_eq!(store.nodes().unwrap().len(), 1);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(&path),
            Err(StoreError::SchemaTooNew {
                found: 99,
                supported: SCHEMA_VERSION
            })
        ));
    }

    #[test]
    fn complete_then_last_completed() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.last_completed_round().unwrap(), None);
        store.begin_round(1, &hash(0), 100).unwrap();
        assert_eq!(store.last_completed_round().unwrap(), None);
        let rec = completed(1, &["a", "b"]);
        store.complete_round(&rec).unwrap();
        assert_eq!(store.last_completed_round().unwrap(), Some(rec.clone()));

        store.begin_round(2, &rec.model_hash, 200).unwrap();
        // A round in flight does not change what a restart resumes from.
        assert_eq!(store.last_completed_round().unwrap(), Some(rec));

        let rows = store.rounds().unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].status, RoundStatus::Completed);
        assert_eq!(rows[0].model_hash_before, hash(0));
        assert_eq!(rows[0].started_at_ms, 100);
        assert_eq!(rows[0].participants, ["a", "b"]);
        assert_eq!(rows[0].metrics.as_ref().unwrap()["loss"], 0.5);
        assert_eq!(rows[1].status, RoundStatus::Running);
        assert_eq!(rows[1].model_hash_after, None);
    }

    #[test]
    fn completing_a_round_twice_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store.begin_round(1, &hash(0), 100).unwrap();
        store.complete_round(&completed(1, &["a"])).unwrap();
        assert!(matches!(
            store.complete_round(&completed(1, &["a"])),
            Err(StoreError::RoundAlreadyCompleted { round: 1 })
        ));
        assert!(matches!(
            store.begin_round(1, &hash(0), 300),
            Err(StoreError::RoundAlreadyCompleted { round: 1 })
        ));
        assert!(matches!(
            store.abort_round(1, "late", 300),
            Err(StoreError::RoundAlreadyCompleted { round: 1 })
        ));
        // The refused attempts changed nothing.
        assert_eq!(store.nodes().unwrap()[0].rounds_joined, 1);
        assert_eq!(store.rounds().unwrap()[0].finished_at_ms, Some(1_001));
    }

    #[test]
    fn begin_after_abort_and_restart_of_running_round() {
        let store = Store::open_in_memory().unwrap();
        store.begin_round(1, &hash(0), 100).unwrap();
        store.abort_round(1, "too few survivors", 150).unwrap();
        let row = &store.rounds().unwrap()[0];
        assert_eq!(row.status, RoundStatus::Aborted);
        assert_eq!(row.abort_reason.as_deref(), Some("too few survivors"));
        assert_eq!(row.finished_at_ms, Some(150));
        assert!(matches!(
            store.complete_round(&completed(1, &[])),
            Err(StoreError::RoundNotRunning {
                round: 1,
                status: RoundStatus::Aborted
            })
        ));

        store.begin_round(1, &hash(9), 200).unwrap();
        let row = &store.rounds().unwrap()[0];
        assert_eq!(row.status, RoundStatus::Running);
        assert_eq!(row.abort_reason, None);
        assert_eq!(row.finished_at_ms, None);
        assert_eq!(row.model_hash_before, hash(9));
        // A running round (the coordinator died in it) is restarted the same way.
        store.begin_round(1, &hash(9), 250).unwrap();
        assert_eq!(store.rounds().unwrap()[0].started_at_ms, 250);
        store.complete_round(&completed(1, &["a"])).unwrap();
        assert_eq!(store.rounds().unwrap().len(), 1);

        assert!(matches!(
            store.complete_round(&completed(5, &[])),
            Err(StoreError::RoundNotFound { round: 5 })
        ));
        assert!(matches!(
            store.abort_round(5, "x", 1),
            Err(StoreError::RoundNotFound { round: 5 })
        ));
    }

    #[test]
    fn earlier_round_after_a_completed_one_is_refused() {
        let store = Store::open_in_memory().unwrap();
        store.begin_round(3, &hash(0), 100).unwrap();
        store.complete_round(&completed(3, &[])).unwrap();
        assert!(matches!(
            store.begin_round(2, &hash(0), 200),
            Err(StoreError::RoundBehind {
                round: 2,
                last_completed: 3
            })
        ));
        assert!(matches!(
            store.begin_round(u64::MAX, &hash(0), 200),
            Err(StoreError::RoundOutOfRange { .. })
        ));
    }

    #[test]
    fn participants_rounds_joined_counts() {
        let store = Store::open_in_memory().unwrap();
        store.node_seen("a", 10).unwrap();
        store.node_seen("b", 20).unwrap();
        store.node_seen("a", 30).unwrap();
        store.node_seen("a", 25).unwrap();
        store.begin_round(1, &hash(0), 100).unwrap();
        store
            .complete_round(&completed(1, &["a", "b", "a"]))
            .unwrap();
        store.begin_round(2, &hash(2), 200).unwrap();
        store.complete_round(&completed(2, &["b", "c"])).unwrap();
        store.begin_round(3, &hash(3), 300).unwrap();
        store.abort_round(3, "dropouts", 310).unwrap();

        let nodes = store.nodes().unwrap();
        let got: Vec<_> = nodes
            .iter()
            .map(|n| (n.identity.as_str(), n.rounds_joined))
            .collect();
        assert_eq!(got, [("a", 1), ("b", 2), ("c", 1)]);
        assert_eq!((nodes[0].first_seen_ms, nodes[0].last_seen_ms), (10, 30));
        // A participant never seen is added with the round's finish time.
        assert_eq!(
            (nodes[2].first_seen_ms, nodes[2].last_seen_ms),
            (1_002, 1_002)
        );
    }

    #[test]
    fn completing_without_optimizer_state_clears_it() {
        let store = Store::open_in_memory().unwrap();
        store.begin_round(1, &hash(0), 100).unwrap();
        store.complete_round(&completed(1, &[])).unwrap();
        assert!(
            store
                .last_completed_round()
                .unwrap()
                .unwrap()
                .optimizer_state
                .is_some()
        );
        store.begin_round(2, &hash(2), 200).unwrap();
        let rec = CompletedRound {
            optimizer_state: None,
            ..completed(2, &[])
        };
        store.complete_round(&rec).unwrap();
        assert_eq!(store.last_completed_round().unwrap(), Some(rec));
    }

    #[test]
    fn json_values_and_reserved_key() {
        let store = Store::open_in_memory().unwrap();
        assert_eq!(store.get_json::<Vec<f64>>("standardisation").unwrap(), None);
        store.put_json("standardisation", &vec![1.5, -2.0]).unwrap();
        store.put_json("standardisation", &vec![3.0]).unwrap();
        assert_eq!(
            store.get_json::<Vec<f64>>("standardisation").unwrap(),
            Some(vec![3.0])
        );
        assert!(matches!(
            store.get_json::<String>("standardisation"),
            Err(StoreError::Json { .. })
        ));
        assert!(matches!(
            store.put_json(OPTIMIZER_STATE_KEY, &1),
            Err(StoreError::ReservedKey { .. })
        ));
    }

    #[test]
    fn reopening_the_file_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let rec = completed(1, &["a", "b"]);
        let (rounds, nodes) = {
            let store = Store::open(&path).unwrap();
            store.node_seen("a", 5).unwrap();
            store.begin_round(1, &hash(0), 100).unwrap();
            store.complete_round(&rec).unwrap();
            store.begin_round(2, &hash(2), 200).unwrap();
            store
                .put_json("standardisation", &serde_json::json!({ "mean": [1.0] }))
                .unwrap();
            (store.rounds().unwrap(), store.nodes().unwrap())
        };
        let store = Store::open(&path).unwrap();
        assert_eq!(store.last_completed_round().unwrap(), Some(rec));
        assert_eq!(store.rounds().unwrap(), rounds);
        assert_eq!(store.nodes().unwrap(), nodes);
        assert_eq!(
            store
                .get_json::<serde_json::Value>("standardisation")
                .unwrap(),
            Some(serde_json::json!({ "mean": [1.0] }))
        );
    }
}
