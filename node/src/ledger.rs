//! The hospital's privacy ledger: every differentially private release the node made, with
//! what it cost, appended and flushed to disk before the release leaves the node.
//!
//! The ledger is the node's own record of its privacy budget. It is read whole at start-up and
//! never reset: a restarted node does not get its budget back. Each entry records the release's
//! mechanisms ([`Mechanism`]) as the accountants compose them, and the accountant that worked
//! out the ε spent once it counted; the ε the node reports composes every entry's mechanisms
//! from scratch under the accountant its configuration names ([`Accountant`]: Rényi DP as
//! Opacus, or privacy loss distributions as dp_accounting).
//!
//! A node in distributed mode keeps two compositions of the same ledger. The **central** one,
//! the ε it reports and checks `target_epsilon` against, composes each entry's `mechanisms`: a
//! [`Release::DistributedTraining`] entry records there the guarantee of the unmasked sum of at
//! least `t` noise shares (`DdpParams::central_mechanism`). The **local** one composes each
//! entry's `local_mechanisms` where it has them, the guarantee of this node's share alone
//! (`DdpParams::local_mechanism`), against the other hospitals colluding with the coordinator;
//! every other release (statistics, evaluation counts, local DP-SGD) is noised in full by the
//! node and enters both compositions unchanged. See `docs/DISTRIBUTED_DP.md` §3.

use std::borrow::Cow;
use std::path::Path;

use medfed_protocol::accounting::{self, Accountant, Mechanism};
use medfed_protocol::privacy::PrivacyError;
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
    /// The release as the accountants compose it. Entries written before this field existed
    /// have none: their `(sample_rate, noise_multiplier, steps)` is the mechanism
    /// ([`Self::mechanisms`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mechanisms: Vec<Mechanism>,
    /// The accountant that worked out `epsilon_after` (entries written before this field
    /// existed used Rényi DP).
    #[serde(default)]
    pub accountant: Accountant,
    /// Noisy DP-SGD steps taken (1 for a count release).
    pub steps: u64,
    /// Poisson sampling rate q (1 for a count release).
    pub sample_rate: f64,
    /// Noise multiplier σ (for a count release, the Gaussian mechanism's σ/Δ that Rényi DP
    /// charges it at).
    pub noise_multiplier: f64,
    /// The δ the node accounts at.
    pub delta: f64,
    /// ε spent by the node once this entry counts, at `delta`, under `accountant`.
    pub epsilon_after: f64,
    /// For noised statistics and an example count, the noised count of training examples they
    /// carried: the node's update weight from then on (a figure already released and charged,
    /// so reusing it costs nothing and no exact count is sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_count: Option<f64>,
    /// For a [`Release::DistributedTraining`] entry, the guarantee of this node's noise share
    /// alone, which the local composition counts instead of `mechanisms`; empty for every other
    /// release (and in entries written before this field existed): the local composition counts
    /// its `mechanisms`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_mechanisms: Vec<Mechanism>,
    /// For an entry a node in distributed mode recorded, the local ε spent once it counts (at
    /// `delta`, under `accountant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_epsilon_after: Option<f64>,
}

impl LedgerEntry {
    /// The release's mechanisms: those recorded, or for an entry written before they were, the
    /// `steps` Poisson-subsampled Gaussian steps at `sample_rate` and `noise_multiplier` it was
    /// charged as.
    pub fn mechanisms(&self) -> Cow<'_, [Mechanism]> {
        if self.mechanisms.is_empty() {
            Cow::Owned(vec![Mechanism::SubsampledGaussian {
                sample_rate: self.sample_rate,
                noise_multiplier: self.noise_multiplier,
                steps: self.steps,
            }])
        } else {
            Cow::Borrowed(&self.mechanisms)
        }
    }

    /// The release's mechanisms as the local composition counts them: `local_mechanisms` for a
    /// distributed training entry, else [`Self::mechanisms`].
    pub fn local_mechanisms(&self) -> Cow<'_, [Mechanism]> {
        if self.local_mechanisms.is_empty() {
            self.mechanisms()
        } else {
            Cow::Borrowed(&self.local_mechanisms)
        }
    }
}

/// What a ledger entry released.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Release {
    /// A noised model update from DP-SGD: `steps` Poisson-subsampled Gaussian steps.
    #[default]
    Training,
    /// The round's evaluation counts with discrete Gaussian noise (see
    /// `medfed_protocol::eval_release`).
    EvaluationCounts,
    /// The statistics round's figures with discrete Gaussian noise (see
    /// `medfed_protocol::stats_release`).
    Statistics,
    /// The count of training examples alone, with the statistics' noise: released once, as the
    /// update weight, by a node whose ledger holds no statistics release that carried one (a
    /// node that joined after the statistics round).
    ExampleCount,
    /// One round of distributed DP: this node's share of one DP-FedSGD step's noise on its
    /// Poisson-sampled, clipped per-example gradient sum, masked by secure aggregation. The
    /// entry's `mechanisms` are the central guarantee (the sum of `t` shares), its
    /// `local_mechanisms` the local one (this share alone).
    DistributedTraining,
}

impl Release {
    /// Every kind, in the order a task releases them first.
    pub const ALL: [Self; 5] = [
        Self::Statistics,
        Self::ExampleCount,
        Self::Training,
        Self::DistributedTraining,
        Self::EvaluationCounts,
    ];

    /// The name written in the ledger and printed: `training`, `evaluation_counts`,
    /// `statistics`, `example_count` or `distributed_training`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Training => "training",
            Self::EvaluationCounts => "evaluation_counts",
            Self::Statistics => "statistics",
            Self::ExampleCount => "example_count",
            Self::DistributedTraining => "distributed_training",
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

    /// The noised count of training examples the latest release that carried one released
    /// (noised statistics, or an example count alone), if any.
    pub fn released_count(&self) -> Option<f64> {
        self.entries.iter().rev().find_map(|e| e.released_count)
    }

    /// The ε the node has spent at `delta` under `accountant`, counting `next` — releases it
    /// is about to make — too.
    pub fn epsilon(
        &self,
        accountant: Accountant,
        next: &[Mechanism],
        delta: f64,
    ) -> Result<f64, LedgerError> {
        epsilon_of(&self.entries, next, accountant, delta)
    }

    /// The local ε (see the module's documentation) the node has spent at `delta` under
    /// `accountant`, counting `next` (local mechanisms of releases it is about to make) too.
    pub fn local_epsilon(
        &self,
        accountant: Accountant,
        next: &[Mechanism],
        delta: f64,
    ) -> Result<f64, LedgerError> {
        local_epsilon_of(&self.entries, next, accountant, delta)
    }

    /// Appends a release; returns only once it is on disk.
    pub fn append(&mut self, entry: LedgerEntry) -> Result<(), LedgerError> {
        self.journal.append(&entry)?;
        self.entries.push(entry);
        Ok(())
    }
}

/// Every mechanism of `entries`, in order.
pub fn mechanisms_of(entries: &[LedgerEntry]) -> Vec<Mechanism> {
    entries
        .iter()
        .flat_map(|e| e.mechanisms().into_owned())
        .collect()
}

/// The ε that `entries` and `next` spend together at `delta` under `accountant`, composed from
/// scratch.
pub fn epsilon_of(
    entries: &[LedgerEntry],
    next: &[Mechanism],
    accountant: Accountant,
    delta: f64,
) -> Result<f64, LedgerError> {
    let mut all = mechanisms_of(entries);
    all.extend_from_slice(next);
    Ok(accounting::epsilon(accountant, &all, delta)?)
}

/// Every mechanism of `entries` as the local composition counts them, in order.
pub fn local_mechanisms_of(entries: &[LedgerEntry]) -> Vec<Mechanism> {
    entries
        .iter()
        .flat_map(|e| e.local_mechanisms().into_owned())
        .collect()
}

/// The local ε that `entries` and `next` (local mechanisms) spend together at `delta` under
/// `accountant`, composed from scratch.
pub fn local_epsilon_of(
    entries: &[LedgerEntry],
    next: &[Mechanism],
    accountant: Accountant,
    delta: f64,
) -> Result<f64, LedgerError> {
    let mut all = local_mechanisms_of(entries);
    all.extend_from_slice(next);
    Ok(accounting::epsilon(accountant, &all, delta)?)
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

    fn entry(release: Release, mechanisms: Vec<Mechanism>) -> LedgerEntry {
        LedgerEntry {
            time_ms: 1,
            round: 2,
            release,
            mechanisms,
            accountant: Accountant::Pld,
            steps: 1,
            sample_rate: 1.0,
            noise_multiplier: 2.0,
            delta: 1e-5,
            epsilon_after: 0.5,
            released_count: None,
            local_mechanisms: Vec::new(),
            local_epsilon_after: None,
        }
    }

    #[test]
    fn entries_written_before_kinds_and_mechanisms_read_as_rdp_charged_training() {
        let old = r#"{"time_ms":1,"round":2,"steps":12,"sample_rate":0.1,"noise_multiplier":1.0,"delta":1e-5,"epsilon_after":0.5}"#;
        let entry: LedgerEntry = serde_json::from_str(old).unwrap();
        assert_eq!(entry.release, Release::Training);
        assert_eq!(entry.accountant, Accountant::Rdp);
        // Nor a local guarantee of its own: the local composition counts it unchanged.
        assert_eq!(entry.local_epsilon_after, None);
        assert_eq!(entry.local_mechanisms(), entry.mechanisms());
        assert_eq!(
            entry.mechanisms().as_ref(),
            [Mechanism::SubsampledGaussian {
                sample_rate: 0.1,
                noise_multiplier: 1.0,
                steps: 12,
            }]
        );
    }

    #[test]
    fn an_entry_keeps_its_kind_mechanisms_and_accountant_through_the_file_format() {
        let counts = Mechanism::DiscreteGaussian {
            sigma: 8.0,
            sensitivity: 1,
            cells: 11,
        };
        for release in Release::ALL {
            let written = entry(release, vec![counts]);
            let text = serde_json::to_string(&written).unwrap();
            assert!(
                text.contains(&format!(r#""release":"{}""#, release.as_str())),
                "{text}"
            );
            assert!(text.contains(r#""accountant":"pld""#), "{text}");
            assert!(text.contains(r#""kind":"discrete_gaussian""#), "{text}");
            let read: LedgerEntry = serde_json::from_str(&text).unwrap();
            assert_eq!(read, written);
            assert_eq!(read.mechanisms().as_ref(), [counts]);
        }
    }

    /// One round of distributed DP at t = 3 of 4 nodes, q = 0.1, z = 1, d = 100.
    fn distributed_round() -> LedgerEntry {
        use medfed_protocol::distributed_dp::{DdpConfig, DdpParams};
        let params = DdpParams::new(DdpConfig::new(1.0, 100, 4, 3, 1.0)).unwrap();
        LedgerEntry {
            local_mechanisms: vec![params.local_mechanism(0.1, 1)],
            local_epsilon_after: Some(9.0),
            sample_rate: 0.1,
            noise_multiplier: 1.0,
            ..entry(
                Release::DistributedTraining,
                vec![params.central_mechanism(0.1, 1)],
            )
        }
    }

    #[test]
    fn a_distributed_entry_keeps_both_guarantees_through_the_file_format() {
        let written = distributed_round();
        let text = serde_json::to_string(&written).unwrap();
        assert!(
            text.contains(r#""release":"distributed_training""#),
            "{text}"
        );
        assert!(
            text.contains(r#""local_mechanisms":[{"kind":"distributed_discrete_gaussian""#),
            "{text}"
        );
        assert!(text.contains(r#""local_epsilon_after":9.0"#), "{text}");
        let read: LedgerEntry = serde_json::from_str(&text).unwrap();
        assert_eq!(read, written);
        // An entry of any other kind writes neither field, as before they existed.
        let counts = entry(Release::Statistics, Vec::new());
        let text = serde_json::to_string(&counts).unwrap();
        assert!(!text.contains("local_"), "{text}");
    }

    #[test]
    fn the_local_composition_swaps_in_the_share_alone_and_counts_the_rest_unchanged() {
        let statistics = entry(
            Release::Statistics,
            vec![Mechanism::DiscreteGaussian {
                sigma: 8.0,
                sensitivity: 4,
                cells: 1,
            }],
        );
        let rounds = [statistics.clone(), distributed_round(), distributed_round()];
        let central = epsilon_of(&rounds, &[], Accountant::Rdp, 1e-5).unwrap();
        let local = local_epsilon_of(&rounds, &[], Accountant::Rdp, 1e-5).unwrap();
        // The share alone carries 1/√3 of the central noise: a larger ε.
        assert!(local > central, "local {local} vs central {central}");
        // Recomposed by hand: the statistics' mechanism in both, then each round's own.
        let mut by_hand = statistics.mechanisms.clone();
        by_hand.extend(rounds[1..].iter().flat_map(|e| e.local_mechanisms.clone()));
        let expected = accounting::epsilon(Accountant::Rdp, &by_hand, 1e-5).unwrap();
        assert_eq!(local, expected);
        // Without distributed entries both compositions are one.
        let plain = [statistics];
        assert_eq!(
            epsilon_of(&plain, &[], Accountant::Rdp, 1e-5).unwrap(),
            local_epsilon_of(&plain, &[], Accountant::Rdp, 1e-5).unwrap()
        );
    }

    #[test]
    fn a_count_release_charged_as_its_gaussian_equivalent_costs_the_same_under_rdp() {
        // Ledgers written before mechanisms were recorded charged a count release as one
        // Gaussian step at σ/Δ; its discrete Gaussian cells cost exactly that under Rényi DP,
        // so an old ledger's ε does not move when it is recomposed.
        let (sigma, cells) = (8.0, 10u64);
        let new = entry(
            Release::EvaluationCounts,
            vec![Mechanism::DiscreteGaussian {
                sigma,
                sensitivity: 1,
                cells,
            }],
        );
        let old = LedgerEntry {
            mechanisms: Vec::new(),
            noise_multiplier: sigma / (cells as f64).sqrt(),
            ..new.clone()
        };
        let training = entry(
            Release::Training,
            vec![Mechanism::SubsampledGaussian {
                sample_rate: 0.1,
                noise_multiplier: 1.0,
                steps: 20,
            }],
        );
        let rdp = |entries: &[LedgerEntry]| epsilon_of(entries, &[], Accountant::Rdp, 1e-5);
        let (with_old, with_new) = (
            rdp(&[training.clone(), old]).unwrap(),
            rdp(&[training.clone(), new.clone()]).unwrap(),
        );
        assert!(
            (with_old - with_new).abs() < 1e-9 * with_new,
            "{with_old} vs {with_new}"
        );
        assert!(with_new > rdp(std::slice::from_ref(&training)).unwrap());
        // The tighter accountant composes the same entries to less, never more.
        let pld = epsilon_of(&[training, new], &[], Accountant::Pld, 1e-5).unwrap();
        assert!(pld < with_new, "PLD {pld} vs RDP {with_new}");
    }
}
