//! The schema, its migrations, and the SQL the store's operations share.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::rows::parse_status;
use super::{RoundStatus, SCHEMA_VERSION, StoreError};

/// Schema migrations: `MIGRATIONS[i]` brings version `i` to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
pub(super) const ROUND_COLUMNS: &str = "round, status, started_at, finished_at, model_hash_before, \
     model_hash_after, checkpoint_path, participants, metrics, abort_reason";

/// Creates the version table if needed and applies the missing migrations, in one transaction.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO schema_version (id, version) VALUES (1, 0);",
    )?;
    let found = readable_version(&tx)?;
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

/// The database's schema version, refused if a newer medfed wrote it.
pub(super) fn readable_version(conn: &Connection) -> Result<i64, StoreError> {
    let found: i64 =
        conn.query_row("SELECT version FROM schema_version WHERE id = 1", [], |r| {
            r.get(0)
        })?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// A round number as stored.
pub(super) fn round_key(round: u64) -> Result<i64, StoreError> {
    i64::try_from(round).map_err(|_| StoreError::RoundOutOfRange { round })
}

/// The status of `round`, if it has a row.
pub(super) fn status_of(conn: &Connection, round: u64) -> Result<Option<RoundStatus>, StoreError> {
    let key = round_key(round)?;
    let status: Option<String> = conn
        .query_row("SELECT status FROM rounds WHERE round = ?1", [key], |r| {
            r.get(0)
        })
        .optional()?;
    status.map(|s| parse_status(&s)).transpose()
}

/// The number of the last completed round.
pub(super) fn last_completed_number(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let last: Option<i64> = conn.query_row(
        "SELECT max(round) FROM rounds WHERE status = 'completed'",
        [],
        |r| r.get(0),
    )?;
    Ok(last.map(|r| r.max(0) as u64))
}

/// Reads a JSON value from `kv`.
pub(super) fn get_json_on<T: DeserializeOwned>(
    conn: &Connection,
    key: &str,
) -> Result<Option<T>, StoreError> {
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
pub(super) fn to_json<T: Serialize + ?Sized>(what: &str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Json {
        what: what.to_owned(),
        source,
    })
}
