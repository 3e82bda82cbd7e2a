//! The store's tests, on real SQLite files and in memory.

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

#[test]
fn a_read_only_store_sees_what_the_writer_commits_and_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let writer = Store::open(&path).unwrap();
    writer.node_seen("a", 1).unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.nodes().unwrap().len(), 1);
    writer.begin_round(1, &hash(0), 2).unwrap();
    writer.complete_round(&completed(1, &["a"])).unwrap();
    assert_eq!(reader.last_completed_round().unwrap().unwrap().round, 1);
    assert!(reader.node_seen("b", 3).is_err());
    assert!(matches!(
        Store::open_read_only(&dir.path().join("missing.db")),
        Err(StoreError::Open { .. })
    ));
}
