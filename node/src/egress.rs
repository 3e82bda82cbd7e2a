//! The egress log: every message the node sends, recorded before it is sent, so a hospital's
//! data protection officer can see everything that ever left the site.
//!
//! One JSON object per line — time, round, kind, size in bytes and SHA-256 of the exact bytes
//! put on the wire — appended and flushed to disk (fsync) before the bytes go out. The file is
//! only ever appended to.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalError};

/// File name of the egress log inside the node's state folder.
pub const EGRESS_FILE: &str = "egress.jsonl";

/// One message that left the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressEntry {
    /// When it was sent, Unix milliseconds.
    pub time_ms: i64,
    /// The round it belongs to (none for `hello`).
    pub round: Option<u64>,
    /// The message kind.
    pub kind: String,
    /// Bytes on the wire (the whole frame).
    pub bytes: u64,
    /// SHA-256 of those bytes, hex.
    pub sha256: String,
}

/// The append-only egress log of one node.
#[derive(Debug)]
pub struct EgressLog {
    journal: Journal<EgressEntry>,
}

impl EgressLog {
    /// Opens (creating if needed) the log in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, EgressError> {
        Ok(Self {
            journal: Journal::open(state_dir, EGRESS_FILE)?,
        })
    }

    /// Records a frame about to be sent; returns only once the entry is on disk.
    pub fn record(
        &mut self,
        round: Option<u64>,
        kind: &str,
        frame: &[u8],
    ) -> Result<(), EgressError> {
        let entry = EgressEntry {
            time_ms: now_ms(),
            round,
            kind: kind.to_owned(),
            bytes: frame.len() as u64,
            sha256: hex::encode(digest::digest(&digest::SHA256, frame)),
        };
        Ok(self.journal.append(&entry)?)
    }

    /// Every entry of the log in `state_dir` (none if it does not exist yet).
    pub fn read(state_dir: &Path) -> Result<Vec<EgressEntry>, EgressError> {
        Ok(Journal::read(state_dir, EGRESS_FILE)?)
    }
}

/// Totals of an egress log: messages and bytes, overall and per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressTotals {
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// `(kind, messages, bytes)`, sorted by kind.
    pub by_kind: Vec<(String, u64, u64)>,
}

impl EgressTotals {
    /// Adds up `entries`.
    pub fn of(entries: &[EgressEntry]) -> Self {
        let mut by_kind = std::collections::BTreeMap::<&str, (u64, u64)>::new();
        for entry in entries {
            let slot = by_kind.entry(&entry.kind).or_default();
            slot.0 += 1;
            slot.1 += entry.bytes;
        }
        Self {
            messages: entries.len() as u64,
            bytes: entries.iter().map(|e| e.bytes).sum(),
            by_kind: by_kind
                .into_iter()
                .map(|(k, (m, b))| (k.to_owned(), m, b))
                .collect(),
        }
    }
}

/// The rounds (from 1: training and evaluation rounds, not the statistics round 0) to which
/// `entries` sent figures — a masked input, or a contribution in the clear — at or after
/// `since_ms`. Declines, refusals and receipts carry no figures and do not count.
pub fn rounds_contributed(entries: &[EgressEntry], since_ms: i64) -> BTreeSet<u64> {
    entries
        .iter()
        .filter(|e| e.time_ms >= since_ms)
        .filter(|e| matches!(e.kind.as_str(), "secagg_input" | "contribution"))
        .filter_map(|e| e.round.filter(|r| *r >= 1))
        .collect()
}

/// The egress log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("egress log {0}")]
pub struct EgressError(#[from] JournalError);

/// The time now, Unix milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_appended_across_reopenings_and_totalled() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = EgressLog::open(dir.path()).unwrap();
        log.record(None, "hello", b"abc").unwrap();
        log.record(Some(1), "secagg_input", &[0u8; 100]).unwrap();
        drop(log);
        let mut log = EgressLog::open(dir.path()).unwrap();
        log.record(Some(2), "secagg_input", &[1u8; 50]).unwrap();
        let entries = EgressLog::read(dir.path()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0].sha256,
            hex::encode(digest::digest(&digest::SHA256, b"abc"))
        );
        let totals = EgressTotals::of(&entries);
        assert_eq!((totals.messages, totals.bytes), (3, 153));
        assert_eq!(
            totals.by_kind,
            vec![("hello".into(), 1, 3), ("secagg_input".into(), 2, 150)]
        );
    }

    #[test]
    fn rounds_contributed_are_those_with_figures_since_the_start() {
        let entry = |time_ms, round, kind: &str| EgressEntry {
            time_ms,
            round,
            kind: kind.into(),
            bytes: 1,
            sha256: String::new(),
        };
        let entries = [
            entry(5, None, "hello"),
            entry(6, Some(0), "secagg_input"),
            entry(7, Some(1), "secagg_input"),
            entry(8, Some(2), "declined"),
            entry(9, Some(3), "secagg_keys"),
            entry(10, Some(3), "refused"),
            entry(11, Some(4), "contribution"),
            entry(12, Some(4), "secagg_input"),
        ];
        assert_eq!(rounds_contributed(&entries, 0), BTreeSet::from([1, 4]));
        assert_eq!(rounds_contributed(&entries, 8), BTreeSet::from([4]));
        // Keys alone, declines and refusals: no round contributed to.
        assert!(rounds_contributed(&entries[3..6], 0).is_empty());
    }

    #[test]
    fn a_corrupt_line_is_reported_with_its_number() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(EGRESS_FILE), "{\"time_ms\":1}\n").unwrap();
        assert!(matches!(
            EgressLog::read(dir.path()),
            Err(EgressError(JournalError::Corrupt { line: 1, .. }))
        ));
    }
}
