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
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
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

mod error;
mod rows;
mod sql;
#[cfg(test)]
mod tests;

pub use error::StoreError;
use rows::RawRound;
pub use rows::{NodeRow, RoundRow, RoundStatus};
use sql::{
    ROUND_COLUMNS, get_json_on, last_completed_number, migrate, readable_version, round_key,
    status_of, to_json,
};

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

    /// Opens an existing database to read only, while the coordinator may be writing it
    /// (`medfed-coordinator status`): no migration, no setting changed. Refused if the file is
    /// missing or was written by a newer medfed.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let open = || -> Result<Connection, rusqlite::Error> {
            let conn = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_URI,
            )?;
            conn.busy_timeout(Duration::from_secs(5))?;
            Ok(conn)
        };
        let conn = open().map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        readable_version(&conn)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
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
