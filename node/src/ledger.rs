//! The hospital's privacy ledger: every differentially private release the node made, with
//! what it cost, appended and flushed to disk before the release leaves the node.
//!
//! The ledger is the node's own record of its privacy budget. It is read whole at start-up and
//! never reset: a restarted node does not get its budget back. The ε it reports composes every
//! entry's Rényi-DP curve (Poisson-subsampled Gaussian, the accountant Opacus uses) and converts
//! the total to (ε, δ).

use std::path::Path;

use medfed_protocol::privacy::{DEFAULT_ALPHAS, PrivacyError, compute_rdp, get_privacy_spent};
use serde::{Deserialize, Serialize};

use crate::journal::{Journal, JournalError};

/// File name of the ledger inside the node's state folder.
pub const LEDGER_FILE: &str = "privacy-ledger.jsonl";

/// One private release: a round's noisy training steps, a round's noised evaluation counts, or
/// the noised statistics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// When it was recorded, Unix milliseconds.
    pub time_ms: i64,
    /// The round.
    pub round: u64,
    /// What was released (entries written before this field existed are training releases).
    #[serde(default)]
    pub release: Release,
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

/// What a ledger entry released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// A noised model update from DP-SGD: `steps` Poisson-subsampled Gaussian steps.
    #[default]
    Training,
    /// The round's evaluation counts with discrete Gaussian noise: one Gaussian-mechanism step
    /// at sampling rate 1 and noise multiplier σ/Δ (see `medfed_protocol::eval_release`).
    EvaluationCounts,
    /// The statistics round's figures with discrete Gaussian noise: one Gaussian-mechanism
    /// step at sampling rate 1 and noise multiplier σ/Δ (see `medfed_protocol::stats_release`).
    Statistics,
}

impl Release {
    /// The name written in the ledger and printed: `training`, `evaluation_counts` or
    /// `statistics`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::EvaluationCounts => "evaluation_counts",
            Self::Statistics => "statistics",
        }
    }
}

/// The append-only ledger of one node.
#[derive(Debug)]
pub struct PrivacyLedger {
    journal: Journal<LedgerEntry>,
    entries: Vec<LedgerEntry>,
}

impl PrivacyLedger {
    /// Opens (creating if needed) the ledger in `state_dir` and reads every entry.
    pub fn open(state_dir: &Path) -> Result<Self, LedgerError> {
        // Lock the folder first, so that no other process appends after the entries are read.
        let journal = Journal::open(state_dir, LEDGER_FILE)?;
        Ok(Self {
            journal,
            entries: Self::read(state_dir)?,
        })
    }

    /// The entries of the ledger in `state_dir` (none if it does not exist yet).
    pub fn read(state_dir: &Path) -> Result<Vec<LedgerEntry>, LedgerError> {
        Ok(Journal::read(state_dir, LEDGER_FILE)?)
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

    /// As [`Self::epsilon`], counting every release of `next`, each `(q, σ, steps)`: a round
    /// may release both a noised update and noised evaluation counts.
    pub fn epsilon_with(
        &self,
        next: &[(f64, f64, u64)],
        delta: f64,
    ) -> Result<(f64, f64), LedgerError> {
        epsilon_of_all(&self.entries, next, delta)
    }

    /// Appends a release; returns only once it is on disk.
    pub fn append(&mut self, entry: LedgerEntry) -> Result<(), LedgerError> {
        self.journal.append(&entry)?;
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
    epsilon_of_all(entries, next.as_slice(), delta)
}

/// The (ε, best order) spent by `entries` plus every release of `next`, at `delta`.
pub fn epsilon_of_all(
    entries: &[LedgerEntry],
    next: &[(f64, f64, u64)],
    delta: f64,
) -> Result<(f64, f64), LedgerError> {
    let mut total = vec![0.0; DEFAULT_ALPHAS.len()];
    let releases = entries
        .iter()
        .map(|e| (e.sample_rate, e.noise_multiplier, e.steps))
        .chain(next.iter().copied());
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
    /// The ledger file could not be read or written.
    #[error("privacy ledger {0}")]
    Journal(#[from] JournalError),
    /// The accountant refused the figures.
    #[error(transparent)]
    Accountant(#[from] PrivacyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_without_a_release_kind_read_as_training() {
        let old = r#"{"time_ms":1,"round":2,"steps":12,"sample_rate":0.1,"noise_multiplier":1.0,"delta":1e-5,"epsilon_after":0.5}"#;
        let entry: LedgerEntry = serde_json::from_str(old).unwrap();
        assert_eq!(entry.release, Release::Training);
        let eval = LedgerEntry {
            release: Release::EvaluationCounts,
            ..entry
        };
        let text = serde_json::to_string(&eval).unwrap();
        assert!(text.contains(r#""release":"evaluation_counts""#), "{text}");
        assert_eq!(serde_json::from_str::<LedgerEntry>(&text).unwrap(), eval);
        let stats = LedgerEntry {
            release: Release::Statistics,
            ..eval
        };
        let text = serde_json::to_string(&stats).unwrap();
        assert!(text.contains(r#""release":"statistics""#), "{text}");
        assert_eq!(serde_json::from_str::<LedgerEntry>(&text).unwrap(), stats);
        assert_eq!(Release::Statistics.as_str(), "statistics");
    }

    #[test]
    fn an_evaluation_release_costs_the_gaussian_mechanism_at_sigma_over_delta() {
        // One step at q = 1 is the Gaussian mechanism: RDP α·Δ²/(2σ²) at every order.
        let (sigma, delta_l2) = (8.0, 10f64.sqrt());
        let multiplier = sigma / delta_l2;
        let rdp = compute_rdp(1.0, multiplier, 1, &DEFAULT_ALPHAS).unwrap();
        for (alpha, r) in DEFAULT_ALPHAS.iter().zip(&rdp) {
            let expected = alpha * delta_l2 * delta_l2 / (2.0 * sigma * sigma);
            assert!(
                (r - expected).abs() < 1e-12 * expected.max(1.0),
                "α = {alpha}"
            );
        }
        let training = (0.1, 1.0, 20);
        let both = epsilon_of_all(&[], &[training, (1.0, multiplier, 1)], 1e-5)
            .unwrap()
            .0;
        let alone = epsilon_of_all(&[], &[training], 1e-5).unwrap().0;
        assert!(both > alone);
    }
}
