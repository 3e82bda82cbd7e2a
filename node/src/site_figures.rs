//! The hospital's own site figure of the final evaluation: the evaluation vector it put into
//! that evaluation's sum, kept so that it can release exactly that vector, once, when it opted
//! in (`[policy] release_site_figures`) and the signed task manifest lists it.
//!
//! Why the very same vector. A noised vector that already left the node (masked, inside the
//! sum) released again is post-processing of that release: whatever the coordinator computes
//! from it and from the sum, it could have computed from the release itself, so the hospital's
//! ε does not grow (Dwork and Roth, "The Algorithmic Foundations of Differential Privacy",
//! Proposition 2.1; for Rényi DP, Mironov, "Rényi Differential Privacy", Proposition 9). A
//! fresh noise draw would instead be a second release, charged again, and averaging the two
//! draws would halve the noise's variance. So the vector is journaled (with fsync) before the
//! masked input leaves, and a restarted node answers from the journal, never with a new draw.
//! Exact counts carry no ε either way; their release is the hospital's explicit choice
//! (`"exact"`), recorded alone in the record of exact releases (`releases.rs`).
//!
//! What it costs the others is guarded elsewhere: every hospital counts the manifest's
//! revealers out of every evaluation sum it joins (`PolicyGate::check_revealers`).
//!
//! The journal (`site_figures.jsonl`) holds one `sent` line per attempt at the final
//! evaluation whose figures left, and one `released` line once a site figure was sent: after it,
//! only the same attempt's vector is released again (a coordinator that lost the answer asks
//! again); another attempt's is refused, since two independently noised vectors of the same
//! patients would average their noise down.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::egress::now_ms;
use crate::journal::{Journal, JournalError};

/// File name of the journal inside the node's state folder.
pub const SITE_FIGURES_FILE: &str = "site_figures.jsonl";

/// One line of the journal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum SiteRecord {
    /// The evaluation vector that went into an attempt at the final evaluation.
    Sent {
        /// When, Unix milliseconds.
        time_ms: i64,
        /// The final evaluation's round.
        round: u64,
        /// The attempt.
        attempt: u32,
        /// Whether the counts carry the node's evaluation noise.
        noised: bool,
        /// The evaluation block, as it went into the sum.
        values: Vec<f64>,
    },
    /// That attempt's vector was released as the site figure.
    Released {
        /// When, Unix milliseconds.
        time_ms: i64,
        /// The final evaluation's round.
        round: u64,
        /// The attempt.
        attempt: u32,
    },
}

/// A site figure ready to leave.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteVector {
    /// Whether the counts carry the node's evaluation noise.
    pub noised: bool,
    /// The evaluation block, as it went into the sum.
    pub values: Vec<f64>,
}

/// Why no site figure can be released.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteFigureError {
    /// No figures of that attempt at that round left this node as a final evaluation.
    #[error("this node put no final-evaluation figures into round {round}, attempt {attempt}")]
    NotEvaluated {
        /// The round asked for.
        round: u64,
        /// The attempt asked for.
        attempt: u32,
    },
    /// Another attempt's figure was released already.
    #[error(
        "the site figure of round {released_round}, attempt {released_attempt} was released; \
         not another one (round {round}, attempt {attempt})"
    )]
    AnotherReleased {
        /// The round asked for.
        round: u64,
        /// The attempt asked for.
        attempt: u32,
        /// The round released.
        released_round: u64,
        /// The attempt released.
        released_attempt: u32,
    },
    /// The journal cannot be read or written: nothing is sent unrecorded.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// The journaled vectors and the one released, if any.
#[derive(Debug)]
pub struct SiteFigureStore {
    journal: Option<Journal<SiteRecord>>,
    sent: Vec<(u64, u32, SiteVector)>,
    /// The attempt released, with the vector that left.
    released: Option<(u64, u32, SiteVector)>,
}

impl SiteFigureStore {
    /// Opens the journal in `state_dir`, reading every earlier line.
    pub fn open(state_dir: &Path) -> Result<Self, JournalError> {
        let mut store = Self::in_memory();
        for record in Journal::<SiteRecord>::read(state_dir, SITE_FIGURES_FILE)? {
            store.apply(record);
        }
        store.journal = Some(Journal::open(state_dir, SITE_FIGURES_FILE)?);
        Ok(store)
    }

    /// Every line of the journal in `state_dir` (none if it does not exist yet).
    pub fn read(state_dir: &Path) -> Result<Vec<SiteRecord>, JournalError> {
        Journal::read(state_dir, SITE_FIGURES_FILE)
    }

    /// A store kept in memory only (tests, and nodes without a state folder).
    pub fn in_memory() -> Self {
        Self {
            journal: None,
            sent: Vec::new(),
            released: None,
        }
    }

    /// Records (with fsync) the vector about to go into `attempt` at the final evaluation
    /// `round`; call before the figures leave. A later vector for the same attempt replaces it.
    pub fn record_sent(
        &mut self,
        round: u64,
        attempt: u32,
        vector: SiteVector,
    ) -> Result<(), JournalError> {
        let record = SiteRecord::Sent {
            time_ms: now_ms(),
            round,
            attempt,
            noised: vector.noised,
            values: vector.values,
        };
        if let Some(journal) = &mut self.journal {
            journal.append(&record)?;
        }
        self.apply(record);
        Ok(())
    }

    /// The vector of `attempt` at `round` that [`Self::release`] would release, recording
    /// nothing: refused for an attempt whose figures never left, or when another attempt's
    /// figure was released.
    ///
    /// After a release, only the vector that left is released again, and only while it is
    /// still that attempt's latest: a later coordinator session that numbers its attempts anew
    /// and gets a freshly noised vector into an attempt of the same number is refused, since
    /// two noised vectors of the same patients would average their noise down.
    pub fn check(&self, round: u64, attempt: u32) -> Result<SiteVector, SiteFigureError> {
        let latest = self.latest(round, attempt);
        if let Some((released_round, released_attempt, released)) = &self.released
            && ((*released_round, *released_attempt) != (round, attempt)
                || latest != Some(released))
        {
            return Err(SiteFigureError::AnotherReleased {
                round,
                attempt,
                released_round: *released_round,
                released_attempt: *released_attempt,
            });
        }
        latest
            .cloned()
            .ok_or(SiteFigureError::NotEvaluated { round, attempt })
    }

    /// The vector last journaled for `attempt` at `round`.
    fn latest(&self, round: u64, attempt: u32) -> Option<&SiteVector> {
        self.sent
            .iter()
            .rev()
            .find(|(r, a, _)| (*r, *a) == (round, attempt))
            .map(|(_, _, vector)| vector)
    }

    /// The vector of `attempt` at `round` to release as the site figure, the release recorded
    /// (with fsync) the first time; refused as [`Self::check`] refuses.
    pub fn release(&mut self, round: u64, attempt: u32) -> Result<SiteVector, SiteFigureError> {
        let vector = self.check(round, attempt)?;
        if self.released.is_none() {
            let record = SiteRecord::Released {
                time_ms: now_ms(),
                round,
                attempt,
            };
            if let Some(journal) = &mut self.journal {
                journal.append(&record)?;
            }
            self.apply(record);
        }
        Ok(vector)
    }

    fn apply(&mut self, record: SiteRecord) {
        match record {
            SiteRecord::Sent {
                round,
                attempt,
                noised,
                values,
                ..
            } => self
                .sent
                .push((round, attempt, SiteVector { noised, values })),
            SiteRecord::Released { round, attempt, .. } => {
                if self.released.is_none()
                    && let Some(vector) = self.latest(round, attempt).cloned()
                {
                    self.released = Some((round, attempt, vector));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(noised: bool, first: f64) -> SiteVector {
        SiteVector {
            noised,
            values: vec![first, 3.0, -1.0, 0.125],
        }
    }

    #[test]
    fn a_restarted_node_releases_the_vector_it_sent_and_never_another() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SiteFigureStore::open(dir.path()).unwrap();
        store.record_sent(4, 1, vector(true, 40.0)).unwrap();
        store.record_sent(4, 2, vector(true, 37.0)).unwrap();
        // Nothing of an attempt whose figures never left.
        assert!(matches!(
            store.release(4, 3),
            Err(SiteFigureError::NotEvaluated {
                round: 4,
                attempt: 3
            })
        ));
        assert!(matches!(
            store.release(3, 1),
            Err(SiteFigureError::NotEvaluated { .. })
        ));
        drop(store);

        // Restarted: the journal gives back the very vector of attempt 2.
        let mut store = SiteFigureStore::open(dir.path()).unwrap();
        assert_eq!(store.release(4, 2).unwrap(), vector(true, 37.0));
        // Asked again (the answer was lost): the same vector.
        assert_eq!(store.release(4, 2).unwrap(), vector(true, 37.0));
        // Another attempt's vector would average the noise down: refused.
        assert!(matches!(
            store.release(4, 1),
            Err(SiteFigureError::AnotherReleased {
                released_attempt: 2,
                ..
            })
        ));
        drop(store);

        let mut store = SiteFigureStore::open(dir.path()).unwrap();
        assert!(store.release(4, 1).is_err(), "the release is remembered");
        assert_eq!(store.release(4, 2).unwrap(), vector(true, 37.0));
        let lines = Journal::<SiteRecord>::read(dir.path(), SITE_FIGURES_FILE).unwrap();
        assert_eq!(lines.len(), 3, "two vectors sent and one release");
        assert!(matches!(
            lines[2],
            SiteRecord::Released {
                round: 4,
                attempt: 2,
                ..
            }
        ));

        // A later coordinator session numbers its attempts anew: a fresh draw sent into its
        // attempt 2 is not released, and neither is the first any more.
        store.record_sent(4, 2, vector(true, 44.0)).unwrap();
        assert!(matches!(
            store.release(4, 2),
            Err(SiteFigureError::AnotherReleased { .. })
        ));
        drop(store);
        let mut store = SiteFigureStore::open(dir.path()).unwrap();
        assert!(store.release(4, 2).is_err(), "also after a restart");
    }
}
