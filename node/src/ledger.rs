//! The hospital's privacy ledger: every differentially private release the node made, with
//! what it cost, appended and flushed to disk before the release leaves the node.
//!
//! The ledger is the node's own record of its privacy budget. It is read whole at start-up and
//! never reset: a restarted node does not get its budget back. The ε it reports composes every
//! entry's Rényi-DP curve (Poisson-subsampled Gaussian, the accountant Opacus uses) and converts
//! the total to (ε, δ).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use medfed_protocol::privacy::{DEFAULT_ALPHAS, PrivacyError, compute_rdp, get_privacy_spent};
use serde::{Deserialize, Serialize};

/// File name of the ledger inside the node's state folder.
pub const LEDGER_FILE: &str = "privacy-ledger.jsonl";

/// One private release: a round's noisy training steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When it was recorded, Unix milliseconds.
    pub time_ms: i64,
    /// The round.
    pub round: u64,
    /// Noisy DP-SGD steps taken.
    pub steps: u64,
    /// Poisson sampling rate q.
    pub sample_rate: f64,
    /// Noise multiplier σ.
    pub noise_multiplier: f64,
    /// The δ the node accounts at.
    pub delta: f64,
    /// ε spent by the node once this entry counts, at `delta`.
    pub epsilon_after: f64,
}

/// The append-only ledger of one node.
#[derive(Debug)]
pub struct PrivacyLedger {
    path: PathBuf,
    file: File,
    entries: Vec<LedgerEntry>,
}

impl PrivacyLedger {
    /// Opens (creating if needed) the ledger in `state_dir` and reads every entry.
    pub fn open(state_dir: &Path) -> Result<Self, LedgerError> {
        std::fs::create_dir_all(state_dir).map_err(|source| LedgerError::Io {
            path: state_dir.to_owned(),
            source,
        })?;
        let path = state_dir.join(LEDGER_FILE);
        let entries = Self::read(state_dir)?;
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|source| LedgerError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self {
            path,
            file,
            entries,
        })
    }

    /// The entries of the ledger in `state_dir` (none if it does not exist yet).
    pub fn read(state_dir: &Path) -> Result<Vec<LedgerEntry>, LedgerError> {
        let path = state_dir.join(LEDGER_FILE);
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(LedgerError::Io { path, source }),
        };
        let mut entries = Vec::new();
        for (number, line) in BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|source| LedgerError::Io {
                path: path.clone(),
                source,
            })?;
            if line.trim().is_empty() {
                continue;
            }
            let entry = serde_json::from_str(&line).map_err(|e| LedgerError::Corrupt {
                path: path.clone(),
                line: number + 1,
                detail: e.to_string(),
            })?;
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Every release so far.
    pub fn entries(&self) -> &[LedgerEntry] {
        &self.entries
    }

    /// The (ε, best order) the node has spent at `delta`, counting `next` — a release it is
    /// about to make, as `(q, σ, steps)` — when given.
    pub fn epsilon(
        &self,
        next: Option<(f64, f64, u64)>,
        delta: f64,
    ) -> Result<(f64, f64), LedgerError> {
        epsilon_of(&self.entries, next, delta)
    }

    /// Appends a release; returns only once it is on disk.
    pub fn append(&mut self, entry: LedgerEntry) -> Result<(), LedgerError> {
        let mut line = serde_json::to_string(&entry).map_err(|e| LedgerError::Corrupt {
            path: self.path.clone(),
            line: self.entries.len() + 1,
            detail: e.to_string(),
        })?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.sync_data())
            .map_err(|source| LedgerError::Io {
                path: self.path.clone(),
                source,
            })?;
        self.entries.push(entry);
        Ok(())
    }
}

/// The (ε, best order) spent by `entries` plus `next`, at `delta`.
pub fn epsilon_of(
    entries: &[LedgerEntry],
    next: Option<(f64, f64, u64)>,
    delta: f64,
) -> Result<(f64, f64), LedgerError> {
    let mut total = vec![0.0; DEFAULT_ALPHAS.len()];
    let releases = entries
        .iter()
        .map(|e| (e.sample_rate, e.noise_multiplier, e.steps))
        .chain(next);
    let mut any = false;
    for (q, sigma, steps) in releases {
        let rdp = compute_rdp(q, sigma, steps, &DEFAULT_ALPHAS)?;
        total.iter_mut().zip(&rdp).for_each(|(t, r)| *t += r);
        any = true;
    }
    if !any {
        return Ok((0.0, 0.0));
    }
    Ok(get_privacy_spent(&DEFAULT_ALPHAS, &total, delta)?)
}

/// The ledger could not be read, written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LedgerError {
    /// A file operation failed.
    #[error("privacy ledger {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A line is not a ledger entry: the ledger must be repaired by hand, never reset.
    #[error("privacy ledger {} line {line}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The accountant refused the figures.
    #[error(transparent)]
    Accountant(#[from] PrivacyError),
}
