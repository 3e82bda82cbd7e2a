//! The round's rules, apart from any collection: who is asked, whether an attempt evaluates,
//! when an attempt fails, and what follows a failure (a retry, the end of training, giving up).

use std::collections::BTreeMap;

use crate::secagg::SecAggError;

use super::LeftOut;

/// How many standard deviations of the statistics' noise a round's declared example count may
/// lie from their noised count (six: honest hospitals are refused about once in 500 million
/// rounds).
pub const COUNT_NOISE_TOLERANCE: f64 = 6.0;

/// Why an attempt at a round could not be completed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttemptFailure {
    /// Secure aggregation could not go on (too few participants left in a phase, a vector it
    /// cannot carry).
    #[error("secure aggregation aborted: {0}")]
    SecureAggregation(#[from] SecAggError),
    /// Fewer nodes connected (and not left out) than the round needs.
    #[error("only {have} nodes connected, {need} needed")]
    TooFewNodes {
        /// Nodes that could be asked.
        have: usize,
        /// `min_nodes`.
        need: usize,
    },
    /// Fewer nodes' figures in the sum than the round needs.
    #[error("only {have} nodes answered before the deadline, {need} needed")]
    TooFewAnswers {
        /// Nodes summed.
        have: usize,
        /// `min_nodes`.
        need: usize,
    },
    /// The nodes whose privacy budget is spent leave too few to train: they would decline
    /// every retry too.
    #[error(
        "the privacy budget of {nodes:?} is spent: fewer than the {need} nodes needed can train"
    )]
    BudgetSpent {
        /// The nodes out of budget.
        nodes: Vec<String>,
        /// `min_nodes`.
        need: usize,
    },
    /// The hospitals' declared training examples are not those their statistics counted.
    #[error(
        "the hospitals declare {declared} training examples, their statistics counted {counted} \
         (give or take {tolerance})"
    )]
    ExampleCountMismatch {
        /// Σn declared in the round's updates.
        declared: f64,
        /// N of the statistics round.
        counted: u64,
        /// How far apart they may be.
        tolerance: f64,
    },
    /// An evaluation-only round without every hospital whose held-out counts were summed.
    #[error(
        "the held-out counts were summed over {before:?}; the hospitals now are {now:?}, and \
         a node sends exact counts into one sum only"
    )]
    EvaluationParticipants {
        /// The hospitals of the first evaluation.
        before: Vec<String>,
        /// Those that could be asked now.
        now: Vec<String>,
    },
    /// Part of a node's masked input was summed, piece by piece, and its stream then failed:
    /// the piece cannot be taken out of the running sum, so the attempt is retried without it.
    #[error(
        "part of {node}'s masked input was summed before its stream failed; the round is retried without {node}"
    )]
    PartialInput {
        /// The node.
        node: String,
    },
    /// The engine was driven after its collection ended (a bug in the driver).
    #[error("the collection is already over")]
    Over,
}

/// What follows a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try the round again (after a pause, so nodes still connecting can join).
    Retry,
    /// Stop training: too few nodes have privacy budget left for any round.
    StopTraining,
    /// Every attempt failed.
    GiveUp,
}

impl AttemptFailure {
    /// What follows this failure of attempt `attempt` of `attempts`, in a training round
    /// (`training`) or a statistics or evaluation round. Only in a training round does a spent
    /// budget end the run: the nodes would decline every retry.
    pub fn next_step(&self, attempt: u32, attempts: u32, training: bool) -> AfterFailure {
        if training && matches!(self, Self::BudgetSpent { .. }) {
            AfterFailure::StopTraining
        } else {
            AfterFailure::retry_or_give_up(attempt, attempts)
        }
    }
}

impl AfterFailure {
    /// What follows a failure that does not end training, after attempt `attempt` of
    /// `attempts`: another attempt while any are left.
    pub fn retry_or_give_up(attempt: u32, attempts: u32) -> Self {
        if attempt < attempts {
            Self::Retry
        } else {
            Self::GiveUp
        }
    }
}

/// Fails the attempt for good when the nodes whose privacy budget is spent leave fewer than
/// `need` of the `asked`.
pub fn check_budgets(asked: usize, spent: &[String], need: usize) -> Result<(), AttemptFailure> {
    if !spent.is_empty() && asked.saturating_sub(spent.len()) < need {
        return Err(AttemptFailure::BudgetSpent {
            nodes: spent.to_vec(),
            need,
        });
    }
    Ok(())
}

/// When a round's hospitals are exactly those of the statistics round, the training examples
/// they declare in their updates (Σn, the update's weight) must be the examples their
/// statistics counted: a hospital that inflated its n to weigh more in the average is caught,
/// and the attempt fails rather than being applied. Where the statistics were noised (standard
/// deviation `count_noise`), the count is compared within [`COUNT_NOISE_TOLERANCE`] standard
/// deviations: an inflation smaller than that goes unseen.
pub fn check_example_count(
    declared: f64,
    counted: u64,
    count_noise: f64,
) -> Result<(), AttemptFailure> {
    let tolerance = 0.5 + COUNT_NOISE_TOLERANCE * count_noise;
    // NaN (no weight in the sum) is never within tolerance.
    if (declared - counted as f64).abs() <= tolerance {
        return Ok(());
    }
    Err(AttemptFailure::ExampleCountMismatch {
        declared,
        counted,
        tolerance,
    })
}

/// Whether an attempt evaluates, and whom an evaluation-only round must leave out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EvaluationDecision {
    /// Whether the attempt asks for evaluation counts.
    pub evaluate: bool,
    /// Whether the manifest schedules an evaluation this round that the attempt leaves out (a
    /// retry, or other hospitals than the first evaluation's).
    pub skipped: bool,
    /// Hospitals to leave out of the round: in an evaluation-only round, everyone not among
    /// the hospitals whose held-out counts were first summed.
    pub leave_out: Vec<String>,
}

/// Decides whether an attempt evaluates. Nodes send exact evaluation counts into sums over
/// one set of hospitals only (the held-out patients' per-group counts do not change with the
/// model). Once that set (`evaluated_with`) is known, a training round evaluates on schedule
/// only over it, and not in a retry (an evaluating attempt that lost a hospital fails, as its
/// nodes refuse to unmask a sum over others); an evaluation-only round (`!train`) asks that
/// set alone, and cannot run without all of it. `roster` is who would be asked now, sorted.
pub fn decide_evaluation(
    scheduled: bool,
    train: bool,
    attempt: u32,
    evaluated_with: Option<&[String]>,
    roster: &[String],
) -> Result<EvaluationDecision, AttemptFailure> {
    let mut leave_out = Vec::new();
    let mut asked = roster;
    if let (false, Some(evaluated)) = (train, evaluated_with) {
        if !evaluated.iter().all(|h| roster.contains(h)) {
            return Err(AttemptFailure::EvaluationParticipants {
                before: evaluated.to_vec(),
                now: roster.to_vec(),
            });
        }
        leave_out = roster
            .iter()
            .filter(|h| !evaluated.contains(h))
            .cloned()
            .collect();
        asked = evaluated;
    }
    let same_hospitals = evaluated_with.is_none_or(|e| e == asked);
    let first_try = attempt == 1 || evaluated_with.is_none();
    let evaluate = scheduled && (!train || (same_hospitals && first_try));
    Ok(EvaluationDecision {
        evaluate,
        skipped: scheduled && !evaluate,
        leave_out,
    })
}

/// Nodes left out of a round's remaining attempts, with why: a node whose share a peer could
/// not authenticate, and, in an evaluation-only round, those not in the first evaluation.
#[derive(Clone, Debug, Default)]
pub struct Exclusions(BTreeMap<(u64, String), LeftOut>);

impl Exclusions {
    /// Leaves `identity` out of the rest of round `round` (the first reason given stands).
    pub fn exclude(&mut self, round: u64, identity: &str, why: LeftOut) {
        self.0.entry((round, identity.to_owned())).or_insert(why);
    }

    /// Whether `identity` is left out of round `round`.
    pub fn is_excluded(&self, round: u64, identity: &str) -> bool {
        self.0.contains_key(&(round, identity.to_owned()))
    }

    /// Everyone left out of round `round`, with why.
    pub fn of_round(&self, round: u64) -> Vec<(String, LeftOut)> {
        self.0
            .iter()
            .filter(|((r, _), _)| *r == round)
            .map(|((_, identity), why)| (identity.clone(), why.clone()))
            .collect()
    }
}
