//! The hospital's own validation record: every model the consortium sends, scored on the
//! hospital's held-out patients and kept on site. Nothing in it is ever sent.
//!
//! Under `[privacy]` the evaluation counts a node releases are noised, and at a small
//! consortium's scale the noise swamps them (four hospitals with 185 held-out patients see a
//! pooled AUC off by about 0.1). The hospital itself needs no noise to judge a model on its own
//! patients: before each round's computation the node scores the round's starting model on its
//! held-out split and appends the exact counts here (one JSON object per line, fsynced), at the
//! finest histogram resolution ([`EVAL_SCORE_BINS`] bins), once per model.
//!
//! `medfed-node validation --config node.toml` prints the record; given several nodes'
//! configurations (an operator simulating a consortium on one machine holds them all), it also
//! pools them ([`pooled`]): the figure a consortium would see without noise, which no real
//! coordinator can compute.

use std::collections::HashSet;
use std::path::Path;

use medfed_protocol::evaluation::{DecisionThreshold, EVAL_SCORE_BINS, EvalCounts};
use medfed_protocol::model::ModelHash;
use serde::{Deserialize, Serialize};

use crate::egress::now_ms;
use crate::journal::{Journal, JournalError};

/// File name of the validation record inside the node's state folder.
pub const VALIDATION_FILE: &str = "validation.jsonl";

/// One model scored on the hospital's held-out patients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationEntry {
    /// When it was scored, Unix milliseconds.
    pub time_ms: i64,
    /// The round whose starting model it is (the round after the last training round: the
    /// final model).
    pub round: u64,
    /// The model's hash, hex.
    pub model: String,
    /// The exact evaluation counts, in their vector form with [`EVAL_SCORE_BINS`]-bin
    /// histograms ([`EvalCounts::write_vector`]).
    pub counts: Vec<f64>,
}

impl ValidationEntry {
    /// The counts; `None` if the line holds a vector of the wrong length.
    pub fn counts(&self) -> Option<EvalCounts> {
        EvalCounts::from_vector(&self.counts)
    }
}

/// The append-only validation record of one node.
#[derive(Debug)]
pub struct SiteValidation {
    journal: Journal<ValidationEntry>,
    /// Hashes of the models already recorded: a retried round scores its model once.
    recorded: HashSet<String>,
}

impl SiteValidation {
    /// Opens (creating if needed) the record in `state_dir`.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let recorded = Self::read(state_dir)?
            .into_iter()
            .map(|entry| entry.model)
            .collect();
        Ok(Self {
            journal: Journal::open(state_dir, VALIDATION_FILE)?,
            recorded,
        })
    }

    /// Whether `model` is already in the record.
    pub fn contains(&self, model: &ModelHash) -> bool {
        self.recorded.contains(&model.to_hex())
    }

    /// Appends the counts of `model`, the starting model of `round`; returns once they are on
    /// disk. A model already recorded is not recorded again.
    pub fn record(
        &mut self,
        round: u64,
        model: &ModelHash,
        counts: &EvalCounts,
    ) -> Result<(), JournalError> {
        let model = model.to_hex();
        if self.recorded.contains(&model) {
            return Ok(());
        }
        let mut vector = Vec::with_capacity(EvalCounts::VECTOR_LEN);
        counts.write_vector(&mut vector);
        self.journal.append(&ValidationEntry {
            time_ms: now_ms(),
            round,
            model: model.clone(),
            counts: vector,
        })?;
        self.recorded.insert(model);
        Ok(())
    }

    /// Every entry of the record in `state_dir` (none if it does not exist yet).
    pub fn read(state_dir: &Path) -> Result<Vec<ValidationEntry>, JournalError> {
        Journal::read(state_dir, VALIDATION_FILE)
    }
}

/// One model's counts summed over the records of several hospitals.
#[derive(Clone, Debug, PartialEq)]
pub struct PooledValidation {
    /// The round whose starting model it is.
    pub round: u64,
    /// The model's hash, hex.
    pub model: String,
    /// How many of the records scored it.
    pub sites: usize,
    /// Their counts, summed.
    pub counts: EvalCounts,
}

/// The counts of each model scored by every one of `records` (one record per hospital), summed,
/// in round order. A model some record lacks is left out: a sum over fewer hospitals would not
/// be the pooled figure. A line whose counts have the wrong length is skipped.
pub fn pooled(records: &[Vec<ValidationEntry>]) -> Vec<PooledValidation> {
    let Some((first, rest)) = records.split_first() else {
        return Vec::new();
    };
    let mut pooled: Vec<PooledValidation> = first
        .iter()
        .filter_map(|entry| {
            let mut sum = entry.counts.clone();
            for record in rest {
                let other = record.iter().find(|e| e.model == entry.model)?;
                if other.counts.len() != sum.len() {
                    return None;
                }
                for (total, value) in sum.iter_mut().zip(&other.counts) {
                    *total += value;
                }
            }
            Some(PooledValidation {
                round: entry.round,
                model: entry.model.clone(),
                sites: records.len(),
                counts: EvalCounts::from_vector(&sum)?,
            })
        })
        .collect();
    pooled.sort_by_key(|p| p.round);
    pooled
}

/// The counts [`SiteValidation`] keeps for `scores` against `labels`, with the confusion
/// matrix at the task's `threshold`.
pub fn site_counts(scores: &[f32], labels: &[f32], threshold: DecisionThreshold) -> EvalCounts {
    EvalCounts::from_predictions_at(scores, labels, EVAL_SCORE_BINS, threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(byte: u8) -> ModelHash {
        ModelHash([byte; 32])
    }

    #[test]
    fn each_model_is_recorded_once_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let counts = site_counts(
            &[0.9, 0.2, 0.7],
            &[1.0, 0.0, 0.0],
            DecisionThreshold::DEFAULT,
        );
        let mut record = SiteValidation::open(dir.path()).unwrap();
        record.record(1, &hash(1), &counts).unwrap();
        // A retried round's model again: not a second line.
        record.record(1, &hash(1), &counts).unwrap();
        record.record(2, &hash(2), &counts).unwrap();
        drop(record);
        let reopened = SiteValidation::open(dir.path()).unwrap();
        assert!(reopened.contains(&hash(1)) && reopened.contains(&hash(2)));
        assert!(!reopened.contains(&hash(3)));
        let entries = SiteValidation::read(dir.path()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].counts(), Some(counts));
        assert_eq!(entries[1].round, 2);
    }

    #[test]
    fn pooling_sums_the_counts_of_the_models_every_site_scored() {
        let entry = |round: u64, model: u8, scores: &[f32], labels: &[f32]| {
            let mut counts = Vec::new();
            site_counts(scores, labels, DecisionThreshold::DEFAULT).write_vector(&mut counts);
            ValidationEntry {
                time_ms: 0,
                round,
                model: hash(model).to_hex(),
                counts,
            }
        };
        let a = vec![
            entry(2, 2, &[0.8, 0.3], &[1.0, 0.0]),
            entry(1, 1, &[0.6], &[1.0]),
        ];
        // Site b never scored model 1 (it joined late).
        let b = vec![entry(2, 2, &[0.4, 0.1, 0.9], &[0.0, 0.0, 1.0])];
        let pooled = pooled(&[a, b]);
        assert_eq!(pooled.len(), 1);
        assert_eq!((pooled[0].round, pooled[0].sites), (2, 2));
        let expected = site_counts(
            &[0.8, 0.3, 0.4, 0.1, 0.9],
            &[1.0, 0.0, 0.0, 0.0, 1.0],
            DecisionThreshold::DEFAULT,
        );
        assert_eq!(pooled[0].counts.confusion, expected.confusion);
        assert_eq!(pooled[0].counts.n, 5.0);
        assert!((pooled[0].counts.loss_sum - expected.loss_sum).abs() < 1e-12);
        assert_eq!(pooled[0].counts.metrics().unwrap().auc, Some(1.0));
    }
}
