//! The record of exact figures released into secure sums, and who was in each sum.
//!
//! Exact (un-noised) figures — the statistics, the evaluation counts — are the same every time
//! they are computed, or share a part that is. Released into two sums over different hospitals,
//! they give away the difference: sums over {A, B, C} and {B, C} of the same figures give A's
//! exactly. So a node releases each set of exact figures into a sum over one set of hospitals
//! only: the first one. Releasing them again into a sum over exactly the same hospitals tells
//! nothing new, and is what a coordinator restarted after a crash asks for.
//!
//! The evaluation counts of different models differ, but every model's counts hold the same
//! held-out patients: each audit group's patient count and outcome count (`tp + fp + tn + fn`
//! and `tp + fn`) do not depend on the model. Two rounds' exact counts summed over different
//! hospitals give one hospital's per-group counts, so exact evaluation counts of any model go
//! into sums over one set of hospitals ([`ExactFigures::HeldOut`]).
//!
//! The record is an append-only journal in the state folder (`releases.jsonl`), so a restarted
//! node remembers it.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::egress::now_ms;
use crate::journal::{Journal, JournalError};

/// File name of the record inside the node's state folder.
pub const RELEASES_FILE: &str = "releases.jsonl";

/// Which exact figures.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "figures")]
pub enum ExactFigures {
    /// The statistics round's counts, sums and sums of squares.
    Statistics,
    /// The evaluation counts of any model on the held-out split. (Records written when the
    /// rule was one set of hospitals per model, `"evaluation"` with the model's hash, read as
    /// this: the held-out split went into a sum over those hospitals.)
    #[serde(alias = "evaluation")]
    HeldOut,
    /// The hospital's own exact evaluation counts of the final evaluation, released alone as
    /// its site figure (`crate::site_figures`): recorded with the hospital itself as the only
    /// one in the "sum", the coordinator holding them alone.
    SiteFigure,
}

/// One release: which figures went into a sum over which hospitals.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExactRelease {
    /// When, Unix milliseconds.
    pub time_ms: i64,
    /// The figures.
    #[serde(flatten)]
    pub figures: ExactFigures,
    /// The hospitals in the sum, sorted.
    pub hospitals: Vec<String>,
}

/// Every exact release so far, and the journal that keeps them.
#[derive(Debug)]
pub struct ReleaseRecord {
    journal: Option<Journal<ExactRelease>>,
    released: HashMap<ExactFigures, BTreeSet<String>>,
}

/// Why exact figures may not be released.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReleaseError {
    /// They already went into a sum over other hospitals.
    #[error("{figures:?} were already released into a sum over {before:?}, not {now:?}")]
    AlreadyReleased {
        /// The figures.
        figures: ExactFigures,
        /// The hospitals of the first sum.
        before: BTreeSet<String>,
        /// The hospitals asked for now.
        now: BTreeSet<String>,
    },
    /// The record cannot be written: nothing is released unrecorded.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl ReleaseRecord {
    /// Opens the record in `state_dir`, reading every earlier release.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let mut record = Self::in_memory();
        for release in Journal::<ExactRelease>::read(state_dir, RELEASES_FILE)? {
            record
                .released
                .entry(release.figures)
                .or_insert_with(|| release.hospitals.into_iter().collect());
        }
        record.journal = Some(Journal::open(state_dir, RELEASES_FILE)?);
        Ok(record)
    }

    /// A record kept in memory only (tests, and nodes without a state folder).
    pub fn in_memory() -> Self {
        Self {
            journal: None,
            released: HashMap::new(),
        }
    }

    /// Whether `figures` could still go into a sum over some of `candidates`: no, if they were
    /// released before into a sum holding a hospital not among them.
    pub fn may_release_among<'a>(
        &self,
        figures: &ExactFigures,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        let Some(before) = self.released.get(figures) else {
            return true;
        };
        let candidates: BTreeSet<&str> = candidates.into_iter().collect();
        before.iter().all(|h| candidates.contains(h.as_str()))
    }

    /// Whether `figures` may go into a sum over exactly `hospitals`: yes if they never went into
    /// a sum, or went into one over the same hospitals. Records nothing.
    pub fn check<'a>(
        &self,
        figures: &ExactFigures,
        hospitals: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ReleaseError> {
        self.compare(figures, collect(hospitals)).map(|_| ())
    }

    /// Admits the release of `figures` into a sum over `hospitals`, recording it (with fsync)
    /// when it is the first: refused if they went into a sum over other hospitals before.
    pub fn admit<'a>(
        &mut self,
        figures: &ExactFigures,
        hospitals: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), ReleaseError> {
        let Some(now) = self.compare(figures, collect(hospitals))? else {
            return Ok(());
        };
        if let Some(journal) = &mut self.journal {
            journal.append(&ExactRelease {
                time_ms: now_ms(),
                figures: figures.clone(),
                hospitals: now.iter().cloned().collect(),
            })?;
        }
        self.released.insert(figures.clone(), now);
        Ok(())
    }

    /// Compares `now` with the sum `figures` first went into: `Ok(None)` if the same,
    /// `Ok(Some(now))` if there was none yet, `Err` if it held other hospitals.
    fn compare(
        &self,
        figures: &ExactFigures,
        now: BTreeSet<String>,
    ) -> Result<Option<BTreeSet<String>>, ReleaseError> {
        match self.released.get(figures) {
            None => Ok(Some(now)),
            Some(before) if *before == now => Ok(None),
            Some(before) => Err(ReleaseError::AlreadyReleased {
                figures: figures.clone(),
                before: before.clone(),
                now,
            }),
        }
    }
}

fn collect<'a>(hospitals: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    hospitals.into_iter().map(str::to_owned).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_figures_go_into_one_set_of_hospitals_and_a_restarted_node_remembers() {
        let dir = tempfile::tempdir().unwrap();
        let stats = ExactFigures::Statistics;
        let eval = ExactFigures::HeldOut;
        let mut record = ReleaseRecord::open(dir.path()).unwrap();
        assert!(record.may_release_among(&stats, ["a", "b"]));
        record.admit(&stats, ["a", "b", "c"]).unwrap();
        // The same sum again (a restarted coordinator): allowed, not recorded twice.
        record.admit(&stats, ["c", "b", "a"]).unwrap();
        assert!(matches!(
            record.admit(&stats, ["a", "b", "d"]),
            Err(ReleaseError::AlreadyReleased { .. })
        ));
        assert!(matches!(
            record.admit(&stats, ["a", "b"]),
            Err(ReleaseError::AlreadyReleased { .. })
        ));
        assert!(record.may_release_among(&stats, ["a", "b", "c", "d"]));
        assert!(!record.may_release_among(&stats, ["a", "b", "d"]));
        // Other figures are not affected.
        record.admit(&eval, ["a", "b", "d"]).unwrap();

        let restarted = ReleaseRecord::open(dir.path()).unwrap();
        assert!(!restarted.may_release_among(&stats, ["a", "b", "d"]));
        assert!(!restarted.may_release_among(&eval, ["a", "b", "c"]));
        let lines = Journal::<ExactRelease>::read(dir.path(), RELEASES_FILE).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].hospitals, ["a", "b", "c"]);
    }

    #[test]
    fn a_record_of_one_models_evaluation_binds_the_held_out_split_for_every_model() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(RELEASES_FILE),
            concat!(
                r#"{"time_ms":1,"figures":"evaluation","model":"ab","hospitals":["a","b","c"]}"#,
                "\n",
                r#"{"time_ms":2,"figures":"evaluation","model":"cd","hospitals":["a","b"]}"#,
                "\n"
            ),
        )
        .unwrap();
        let record = ReleaseRecord::open(dir.path()).unwrap();
        // The first sum the held-out split went into is the only one it may go into again.
        assert!(
            record
                .check(&ExactFigures::HeldOut, ["a", "b", "c"])
                .is_ok()
        );
        assert!(record.check(&ExactFigures::HeldOut, ["a", "b"]).is_err());
    }
}
