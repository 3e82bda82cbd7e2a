//! Bias audit math: per-group additive counts, per-group metrics with Wilson intervals, disparities
//! between groups, and a policy that approves or rejects a model on them.
//!
//! As in [`crate::evaluation`], a node never reports a rate. For each group of a sensitive
//! attribute it reports a [`GroupCounts`] block — a confusion matrix at the task's
//! [`DecisionThreshold`] and per-label score histograms of [`GROUP_SCORE_BINS`] bins — appended to its round vector
//! with [`GroupCounts::write_vector`]. Secure aggregation sums these blocks over
//! hospitals, so the coordinator holds exactly the pooled confusion matrix of every group and, up
//! to the histogram resolution, its pooled scores:
//!
//! ```text
//!  node: (score, label, group) rows ─▶ group_predictions ─▶ GroupCounts::write_vector ─┐ Σ
//!  coordinator: GroupCounts::from_vector ◀─────────────────────────────────────────────┘
//!               ─▶ FairnessReport::compute(&groups, &AuditConfig) ─▶ FairnessPolicy::check
//! ```
//!
//! Groups with fewer examples, fewer positives or fewer negatives than
//! [`AuditConfig::min_count`] are *suppressed*: the report lists them, marked suppressed with
//! the [`SuppressionReason`] and without any figure, and leaves them out of every disparity.
//!
//! A disparity can be undefined (fewer than two groups reported, nobody flagged positive, no
//! positives or no negatives anywhere); [`FairnessReport::undefined_reason`] says why, from the
//! counts, as an [`UndefinedReason`], which each failing [`PolicyCheck`] carries.
//!
//! The disparities follow fairlearn's definitions (`demographic_parity_difference`,
//! `demographic_parity_ratio`, `equalized_odds_difference`, `equal_opportunity_difference` with
//! their default `method="between_groups"`); `tests/vectors/fairlearn_metrics.json`, written by
//! `scripts/fairness_vectors.py`, checks them against fairlearn.
//!
//! This module does no IO and is deterministic: a report depends only on the counts and the
//! configuration, and groups are always listed in the byte order of their names.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::evaluation::{
    DECISION_THRESHOLD, DecisionThreshold, counted_pair, histogram_auc, score_bin,
};

/// Default smallest number of examples a group needs to be reported.
pub const DEFAULT_MIN_COUNT: u64 = 10;

/// The normal quantile for a two-sided 95% interval, used by [`wilson_interval`].
pub const WILSON_Z: f64 = 1.959963984540054;

/// Number of equal-width score bins on [0, 1] in each audit group's per-label histograms.
///
/// They serve only the group's AUC and ECE. The AUC counts two scores in the same bin as a tie,
/// so it differs from the exact AUC by at most half the fraction of positive/negative pairs
/// sharing a bin of width 1/100; the ECE is within `0.5 / GROUP_SCORE_BINS` (0.005) of the ECE of
/// the exact scores (see [`GroupCounts::expected_calibration_error`]). Fewer bins than the pooled
/// evaluation's [`EVAL_SCORE_BINS`](crate::evaluation::EVAL_SCORE_BINS) keep every node's upload
/// small and, when the node noises its release ([`crate::eval_release`]), put far less noise into
/// each group's AUC and ECE.
pub const GROUP_SCORE_BINS: usize = 100;

/// Number of equal-width probability bins of the expected calibration error.
///
/// Each ECE bin is `bins / ECE_BINS` consecutive histogram bins, so a histogram's bin count must
/// be a multiple of `ECE_BINS`.
pub const ECE_BINS: usize = 10;

// Every ECE bin must be a whole number of histogram bins.
const _: () = assert!(GROUP_SCORE_BINS > 0 && GROUP_SCORE_BINS.is_multiple_of(ECE_BINS));

/// Additive counts for one group of a sensitive attribute.
///
/// Summing the vector forms of two hospitals' counts for the same group gives the counts of the
/// pooled examples.
///
/// The histograms' length, [`Self::bins`], is part of the counts: audit groups use
/// [`GROUP_SCORE_BINS`] (what [`Self::zero`], [`Self::from_predictions`] and
/// [`Self::from_vector`] give), the pooled evaluation
/// [`EVAL_SCORE_BINS`](crate::evaluation::EVAL_SCORE_BINS) (the `*_with_bins` forms). Metrics
/// need the two histograms to be equally long, a positive multiple of [`ECE_BINS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupCounts {
    /// True positives at the decision threshold.
    pub tp: f64,
    /// False positives.
    pub fp: f64,
    /// True negatives.
    pub tn: f64,
    /// False negatives.
    pub fn_: f64,
    /// Histogram of scores of positive examples: bin `i` of `bins` counts scores in
    /// `[i / bins, (i + 1) / bins)`, the last bin also a score of 1.
    pub positive_scores: Vec<f64>,
    /// Histogram of scores of negative examples, as long as [`Self::positive_scores`].
    pub negative_scores: Vec<f64>,
}

/// A two-sided 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// A proportion with its Wilson score interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    /// The observed proportion.
    pub value: f64,
    /// Wilson 95% interval around it (see [`wilson_interval`]).
    pub interval: Interval,
}

/// Metrics of one reported group, computed from its pooled [`GroupCounts`].
///
/// A rate whose denominator is zero (for example the true positive rate of a group without
/// positives) is `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupMetrics {
    /// Number of examples.
    pub n: u64,
    /// Fraction of positive examples.
    pub prevalence: Rate,
    /// Fraction predicted positive, (TP + FP) / n.
    pub selection_rate: Rate,
    /// (TP + TN) / n.
    pub accuracy: Rate,
    /// True positive rate (sensitivity, recall), TP / (TP + FN).
    pub tpr: Option<Rate>,
    /// False positive rate, FP / (FP + TN).
    pub fpr: Option<Rate>,
    /// False negative rate, FN / (TP + FN).
    pub fnr: Option<Rate>,
    /// Positive predictive value (precision), TP / (TP + FP).
    pub ppv: Option<Rate>,
    /// Area under the ROC curve from the score histograms; `None` if one class is absent.
    ///
    /// Scores in the same histogram bin count as ties, so it is within half the fraction of
    /// positive/negative pairs sharing a bin of the exact AUC (see [`GROUP_SCORE_BINS`]).
    pub auc: Option<f64>,
    /// Expected calibration error over [`ECE_BINS`] equal-width probability bins; see
    /// [`GroupCounts::expected_calibration_error`].
    pub ece: f64,
}

/// One group's entry in a [`FairnessReport`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum GroupReport {
    /// The group has at least [`AuditConfig::min_count`] examples.
    Reported {
        /// The group's name.
        group: String,
        /// Its metrics (boxed: they are far larger than a suppressed entry).
        metrics: Box<GroupMetrics>,
    },
    /// The group is too small to report: no figure about it is given, not even its size, and it
    /// takes no part in the disparities.
    Suppressed {
        /// The group's name.
        group: String,
        /// Which of its counts is below the minimum. Left out of the JSON when it is
        /// [`SuppressionReason::TooFewExamples`], the only reason reports written before the
        /// field existed knew, so those reports keep their bytes and their signatures.
        #[serde(
            default,
            skip_serializing_if = "SuppressionReason::is_too_few_examples"
        )]
        reason: SuppressionReason,
    },
}

/// Why a group is suppressed: the first of its counts, in this order, that is below
/// [`AuditConfig::min_count`].
///
/// Suppressing on the positives and the negatives, not only on the size, keeps a group with a
/// handful of cases (a rare outcome) out of the disparities: its true or false positive rate
/// would rest on a few patients and swing on one of them. Saying which count was short tells a
/// reader no more than that this count is below the minimum; reporting the group would have
/// shown it exactly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SuppressionReason {
    /// Fewer examples than the minimum (or none at all).
    #[default]
    TooFewExamples,
    /// Enough examples, but fewer positive examples than the minimum.
    TooFewPositives,
    /// Enough examples and positives, but fewer negative examples than the minimum.
    TooFewNegatives,
}

/// A suppressed group and why, as an [`UndefinedReason`] lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressedGroup {
    /// The group's name.
    pub group: String,
    /// Which of its counts is below the minimum.
    pub reason: SuppressionReason,
}

/// Why a disparity is undefined, read from the counts (see
/// [`FairnessReport::undefined_reason`]). Its [`Display`](std::fmt::Display) form is the
/// sentence the audit page and the coordinator's log show.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum UndefinedReason {
    /// Fewer than two groups are reported, so there is nothing to compare.
    TooFewGroupsReported {
        /// The reported groups (none or one).
        reported: Vec<String>,
        /// Every suppressed group, with its reason.
        suppressed: Vec<SuppressedGroup>,
        /// The report's suppression threshold.
        min_count: u64,
    },
    /// No reported group has anyone flagged positive at the decision threshold: every
    /// selection rate is 0, and their ratio is 0/0.
    NobodyFlagged {
        /// The decision threshold the counts were taken at.
        threshold: f32,
    },
    /// No reported group has a positive example, so no true positive rate is defined.
    NoPositives {
        /// The reported groups.
        groups: Vec<String>,
    },
    /// No reported group has a negative example, so no false positive rate is defined.
    NoNegatives {
        /// The reported groups.
        groups: Vec<String>,
    },
}

/// Disparities between the reported groups, following fairlearn's `between_groups` definitions.
///
/// A rate that is undefined for a group (zero denominator) leaves that group out of the spread of
/// that rate; a spread with no group left is `None`. Fairlearn instead counts such a rate as 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Disparities {
    /// The groups compared, in name order.
    pub groups: Vec<String>,
    /// Largest minus smallest selection rate.
    pub demographic_parity_difference: f64,
    /// Smallest over largest selection rate; `None` if every group's selection rate is 0.
    pub demographic_parity_ratio: Option<f64>,
    /// The larger of the TPR spread and the FPR spread (fairlearn's `worst_case`).
    pub equalized_odds_difference: Option<f64>,
    /// Largest minus smallest true positive rate.
    pub equal_opportunity_difference: Option<f64>,
    /// Each compared group's differences from the reference group, if one was configured.
    pub reference: Option<ReferenceComparison>,
}

/// Differences of every compared group from a reference group.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceComparison {
    /// The reference group.
    pub group: String,
    /// One entry per compared group (the reference included, with zero differences).
    pub differences: Vec<GroupDifference>,
}

/// One group's rates minus the reference group's rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupDifference {
    /// The group.
    pub group: String,
    /// Selection rate minus the reference's.
    pub selection_rate: f64,
    /// True positive rate minus the reference's; `None` if either is undefined.
    pub tpr: Option<f64>,
    /// False positive rate minus the reference's; `None` if either is undefined.
    pub fpr: Option<f64>,
}

/// The bias audit of one sensitive attribute.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FairnessReport {
    /// The suppression threshold the report was computed with.
    pub min_count: u64,
    /// The decision threshold the counts were taken at: a score at or above it is a positive
    /// prediction. Left out of the JSON when it is 0.5, the threshold of every report written
    /// before the field existed, so those reports keep their bytes and their signatures.
    #[serde(
        default = "legacy_decision_threshold",
        skip_serializing_if = "is_legacy_decision_threshold"
    )]
    pub decision_threshold: f32,
    /// Every group, reported or suppressed, in name order.
    pub groups: Vec<GroupReport>,
    /// Disparities between the reported groups; `None` if fewer than two groups are reported.
    pub disparities: Option<Disparities>,
}

/// Settings of [`FairnessReport::compute`].
#[derive(Clone, Debug, PartialEq)]
pub struct AuditConfig {
    min_count: u64,
    reference: Option<String>,
    decision_threshold: f32,
}

/// Why a fairness report could not be computed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FairnessError {
    /// A group's counts are negative, not finite, or have histograms of the wrong length.
    #[error("counts of group {group:?} are not valid")]
    InvalidCounts {
        /// The group.
        group: String,
    },
    /// Two groups of one attribute have the same name.
    #[error("group {group:?} appears twice")]
    DuplicateGroup {
        /// The repeated name.
        group: String,
    },
    /// The configured reference group is not among the groups.
    #[error("reference group {group:?} is not among the groups")]
    UnknownReference {
        /// The configured reference group.
        group: String,
    },
    /// The configured reference group is suppressed, so nothing can be compared to it.
    #[error("reference group {group:?} is suppressed")]
    ReferenceSuppressed {
        /// The configured reference group.
        group: String,
    },
}

/// Limits a model must meet to be approved by the bias audit. An absent limit is not checked.
///
/// Written in TOML as, for example:
///
/// ```toml
/// max_equalized_odds_difference = 0.1
/// min_demographic_parity_ratio = 0.8
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FairnessPolicy {
    /// Largest allowed [`Disparities::equalized_odds_difference`].
    pub max_equalized_odds_difference: Option<f64>,
    /// Smallest allowed [`Disparities::demographic_parity_ratio`].
    pub min_demographic_parity_ratio: Option<f64>,
    /// Largest allowed [`Disparities::demographic_parity_difference`].
    pub max_demographic_parity_difference: Option<f64>,
    /// Largest allowed [`Disparities::equal_opportunity_difference`].
    pub max_equal_opportunity_difference: Option<f64>,
}

/// The outcome of one limit of a [`FairnessPolicy`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PolicyCheck {
    /// The limit's name, as in [`FairnessPolicy`] (for example `max_equalized_odds_difference`).
    pub name: String,
    /// The limit.
    pub threshold: f64,
    /// The measured disparity; `None` if it is undefined for this report.
    pub value: Option<f64>,
    /// Whether the value is within the limit. An undefined value fails.
    pub passed: bool,
    /// Why the value is undefined, when it is ([`FairnessReport::undefined_reason`]). Left
    /// out of the JSON when `None`; reports written before the field existed read as `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub undefined: Option<UndefinedReason>,
}

/// The outcome of [`FairnessPolicy::check`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[must_use]
pub struct PolicyOutcome {
    /// One check per limit the policy sets.
    pub checks: Vec<PolicyCheck>,
    /// Whether every check passed.
    pub approved: bool,
}

impl GroupCounts {
    /// Length of the vector form of an audit group's counts ([`GROUP_SCORE_BINS`] bins).
    pub const VECTOR_LEN: usize = Self::vector_len(GROUP_SCORE_BINS);

    /// Length of the vector form of counts with `bins`-bin histograms: `4 + 2 · bins`.
    pub const fn vector_len(bins: usize) -> usize {
        4 + 2 * bins
    }

    /// An audit group's counts ([`GROUP_SCORE_BINS`] bins) for predicted probabilities `scores`
    /// against 0/1 `labels`.
    ///
    /// Conventions are those of [`crate::evaluation::EvalCounts::from_predictions`]: a label of at
    /// least 0.5 is positive, a score of at least [`DecisionThreshold::DEFAULT`] is a
    /// positive prediction, a score that is not a probability counts as
    /// [`UNDEFINED_SCORE`](crate::evaluation::UNDEFINED_SCORE), and a pair whose label is not
    /// finite is skipped.
    pub fn from_predictions(scores: &[f32], labels: &[f32]) -> Self {
        Self::from_predictions_with_bins(scores, labels, GROUP_SCORE_BINS)
    }

    /// As [`Self::from_predictions`], with histograms of `bins` bins.
    pub fn from_predictions_with_bins(scores: &[f32], labels: &[f32], bins: usize) -> Self {
        Self::from_predictions_at(scores, labels, bins, DecisionThreshold::DEFAULT)
    }

    /// As [`Self::from_predictions_with_bins`], with predictions positive at `threshold`.
    pub fn from_predictions_at(
        scores: &[f32],
        labels: &[f32],
        bins: usize,
        threshold: DecisionThreshold,
    ) -> Self {
        let mut counts = Self::zero_with_bins(bins);
        for (&score, &label) in scores.iter().zip(labels) {
            counts.record(score, label, threshold);
        }
        counts
    }

    /// All-zero counts of an audit group ([`GROUP_SCORE_BINS`] bins).
    pub fn zero() -> Self {
        Self::zero_with_bins(GROUP_SCORE_BINS)
    }

    /// All-zero counts with histograms of `bins` bins.
    pub fn zero_with_bins(bins: usize) -> Self {
        Self {
            tp: 0.0,
            fp: 0.0,
            tn: 0.0,
            fn_: 0.0,
            positive_scores: vec![0.0; bins],
            negative_scores: vec![0.0; bins],
        }
    }

    /// Number of bins of the positive-score histogram (the negative one has as many in counts
    /// built by this module).
    pub fn bins(&self) -> usize {
        self.positive_scores.len()
    }

    /// Number of examples, TP + FP + TN + FN.
    pub fn n(&self) -> f64 {
        self.tp + self.fp + self.tn + self.fn_
    }

    /// These counts with every negative cell (and NaN) set to 0.
    ///
    /// Pooled counts include noise when a node protects its release with differential privacy
    /// (see [`crate::eval_release`]); a cell near zero can then sum to a negative number,
    /// which as a count means 0. Clamping is post-processing, so it costs no privacy.
    pub fn clamped(&self) -> Self {
        let clamp = |x: f64| if x > 0.0 { x } else { 0.0 };
        Self {
            tp: clamp(self.tp),
            fp: clamp(self.fp),
            tn: clamp(self.tn),
            fn_: clamp(self.fn_),
            positive_scores: self.positive_scores.iter().copied().map(clamp).collect(),
            negative_scores: self.negative_scores.iter().copied().map(clamp).collect(),
        }
    }

    /// Adds `other`'s counts to these, as summing the vector forms does.
    ///
    /// Histograms of different lengths (possible only for counts built by hand) are added over
    /// the shorter length.
    pub fn add(&mut self, other: &Self) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.tn += other.tn;
        self.fn_ += other.fn_;
        for (a, b) in self.positive_scores.iter_mut().zip(&other.positive_scores) {
            *a += b;
        }
        for (a, b) in self.negative_scores.iter_mut().zip(&other.negative_scores) {
            *a += b;
        }
    }

    /// Appends the vector form to `out`: TP, FP, TN, FN, then the positive and the negative
    /// histogram, [`Self::vector_len`]`(bins)` values ([`Self::VECTOR_LEN`] for an audit group).
    pub fn write_vector(&self, out: &mut Vec<f64>) {
        out.extend_from_slice(&[self.tp, self.fp, self.tn, self.fn_]);
        out.extend_from_slice(&self.positive_scores);
        out.extend_from_slice(&self.negative_scores);
    }

    /// Reads the vector form of an audit group's counts; `None` if `v` is not
    /// [`Self::VECTOR_LEN`] long.
    pub fn from_vector(v: &[f64]) -> Option<Self> {
        Self::from_vector_with_bins(v, GROUP_SCORE_BINS)
    }

    /// Reads the vector form of counts with `bins`-bin histograms; `None` if `v` is not
    /// [`Self::vector_len`]`(bins)` long.
    pub fn from_vector_with_bins(v: &[f64], bins: usize) -> Option<Self> {
        if bins.checked_mul(2).and_then(|b| b.checked_add(4)) != Some(v.len()) {
            return None;
        }
        let (head, hist) = v.split_at(4);
        let (pos, neg) = hist.split_at(bins);
        Some(Self {
            tp: head[0],
            fp: head[1],
            tn: head[2],
            fn_: head[3],
            positive_scores: pos.to_vec(),
            negative_scores: neg.to_vec(),
        })
    }

    /// Expected calibration error from the score histograms; `None` without examples, or unless
    /// both histograms have the same number of bins, a positive multiple of [`ECE_BINS`].
    ///
    /// The histogram bins are grouped into [`ECE_BINS`] equal-width probability bins b, and
    /// `ECE = Σ_b (n_b / n) · |mean predicted probability in b − fraction positive in b|`.
    ///
    /// The histograms do not keep exact scores, so each example's predicted probability is taken
    /// as the centre of its histogram bin. With `bins` histogram bins every such value is within
    /// `0.5 / bins` of the true score, so the result is within `0.5 / bins` (0.005 for an audit
    /// group's [`GROUP_SCORE_BINS`]) of the ECE computed from the exact scores with the same bin
    /// assignment. A score's ECE bin is its histogram bin integer-divided by `bins / ECE_BINS`,
    /// which is ⌊10·score⌋ except for rounding at bin edges, with a score of exactly 1 in the
    /// last bin.
    pub fn expected_calibration_error(&self) -> Option<f64> {
        if !self.has_valid_bins() {
            return None;
        }
        let bins = self.bins();
        let total: f64 =
            self.positive_scores.iter().sum::<f64>() + self.negative_scores.iter().sum::<f64>();
        if total <= 0.0 {
            return None;
        }
        let width = bins / ECE_BINS;
        let mut ece = 0.0;
        for b in 0..ECE_BINS {
            let (mut n_b, mut positives, mut score_sum) = (0.0, 0.0, 0.0);
            for i in b * width..(b + 1) * width {
                let count = self.positive_scores[i] + self.negative_scores[i];
                let centre = (i as f64 + 0.5) / bins as f64;
                n_b += count;
                positives += self.positive_scores[i];
                score_sum += count * centre;
            }
            if n_b > 0.0 {
                ece += (n_b / total) * (score_sum / n_b - positives / n_b).abs();
            }
        }
        Some(ece)
    }

    /// The group's metrics; `None` if it has no examples or its counts are not valid.
    pub fn metrics(&self) -> Option<GroupMetrics> {
        if !self.is_well_formed() || self.n() <= 0.0 {
            return None;
        }
        let n = self.n();
        let positives = self.tp + self.fn_;
        let negatives = self.fp + self.tn;
        Some(GroupMetrics {
            n: n.round() as u64,
            prevalence: rate(positives, n)?,
            selection_rate: rate(self.tp + self.fp, n)?,
            accuracy: rate(self.tp + self.tn, n)?,
            tpr: rate(self.tp, positives),
            fpr: rate(self.fp, negatives),
            fnr: rate(self.fn_, positives),
            ppv: rate(self.tp, self.tp + self.fp),
            auc: histogram_auc(&self.positive_scores, &self.negative_scores),
            ece: self.expected_calibration_error()?,
        })
    }

    /// Adds one prediction (see [`Self::from_predictions`] for the conventions).
    fn record(&mut self, score: f32, label: f32, threshold: DecisionThreshold) {
        let Some(score) = counted_pair(score, label) else {
            return;
        };
        let positive = label >= 0.5;
        let predicted = threshold.flags(score);
        match (positive, predicted) {
            (true, true) => self.tp += 1.0,
            (true, false) => self.fn_ += 1.0,
            (false, true) => self.fp += 1.0,
            (false, false) => self.tn += 1.0,
        }
        let histogram = if positive {
            &mut self.positive_scores
        } else {
            &mut self.negative_scores
        };
        // The bin is below `bins`, the histogram's length, unless the counts were built by hand
        // with an empty histogram; such a prediction is not recorded in the histogram.
        let bin = score_bin(score, histogram.len());
        if let Some(cell) = histogram.get_mut(bin) {
            *cell += 1.0;
        }
    }

    /// Whether both histograms have the same number of bins, a positive multiple of [`ECE_BINS`].
    fn has_valid_bins(&self) -> bool {
        let bins = self.bins();
        bins > 0 && bins.is_multiple_of(ECE_BINS) && self.negative_scores.len() == bins
    }

    /// Whether every count is finite and non-negative and the histograms have valid lengths.
    fn is_well_formed(&self) -> bool {
        let ok = |x: &f64| x.is_finite() && *x >= 0.0;
        [self.tp, self.fp, self.tn, self.fn_].iter().all(ok)
            && self.has_valid_bins()
            && self.positive_scores.iter().all(ok)
            && self.negative_scores.iter().all(ok)
    }
}

/// Per-group counts of predictions, keyed by each row's group name.
///
/// Rows are `(scores[i], labels[i], groups[i])`; the three slices are read up to the shortest.
/// Every group that occurs gets an entry, even if all its rows are skipped as invalid.
pub fn group_predictions<G: AsRef<str>>(
    scores: &[f32],
    labels: &[f32],
    groups: &[G],
) -> BTreeMap<String, GroupCounts> {
    group_predictions_at(scores, labels, groups, DecisionThreshold::DEFAULT)
}

/// As [`group_predictions`], with predictions positive at `score >= threshold` (the task's
/// threshold, or an auditor's other operating point).
pub fn group_predictions_at<G: AsRef<str>>(
    scores: &[f32],
    labels: &[f32],
    groups: &[G],
    threshold: DecisionThreshold,
) -> BTreeMap<String, GroupCounts> {
    let mut out: BTreeMap<String, GroupCounts> = BTreeMap::new();
    for ((&score, &label), group) in scores.iter().zip(labels).zip(groups) {
        out.entry(group.as_ref().to_owned())
            .or_insert_with(GroupCounts::zero)
            .record(score, label, threshold);
    }
    out
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            min_count: DEFAULT_MIN_COUNT,
            reference: None,
            decision_threshold: DECISION_THRESHOLD,
        }
    }
}

impl AuditConfig {
    /// Smallest number of examples, of positive examples and of negative examples a group needs
    /// to be reported (default [`DEFAULT_MIN_COUNT`]). A group without examples is suppressed
    /// even when this is 0.
    pub fn min_count(&mut self, value: u64) -> &mut Self {
        self.min_count = value;
        self
    }

    /// The decision threshold the counts were taken at (default [`DECISION_THRESHOLD`]). It
    /// does not change any figure — the counts already hold the predictions — it is recorded in
    /// the report and named where nobody was flagged positive.
    pub fn decision_threshold(&mut self, value: f32) -> &mut Self {
        self.decision_threshold = value;
        self
    }

    /// The group every other group is compared to in [`Disparities::reference`] (default none).
    pub fn reference_group(&mut self, group: impl Into<String>) -> &mut Self {
        self.reference = Some(group.into());
        self
    }
}

impl FairnessReport {
    /// The audit of the groups of one sensitive attribute from their pooled counts, reported in
    /// the order `groups` gives them (the schema's order for the coordinator, so that age bands
    /// read `<45, 45-<55, …`; name order for a `BTreeMap`).
    ///
    /// Fails if a group's counts are invalid (negative, not finite, histograms of the wrong
    /// length), if a group is named twice, or if a configured reference group is absent or
    /// suppressed.
    pub fn compute<'a>(
        groups: impl IntoIterator<Item = (&'a String, &'a GroupCounts)>,
        config: &AuditConfig,
    ) -> Result<Self, FairnessError> {
        let mut reports = Vec::new();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut reported: Vec<(&str, GroupMetrics)> = Vec::new();
        for (name, counts) in groups {
            let invalid = || FairnessError::InvalidCounts {
                group: name.clone(),
            };
            if !seen.insert(name) {
                return Err(FairnessError::DuplicateGroup {
                    group: name.clone(),
                });
            }
            if !counts.is_well_formed() {
                return Err(invalid());
            }
            if let Some(reason) = suppression(counts, config.min_count) {
                reports.push(GroupReport::Suppressed {
                    group: name.clone(),
                    reason,
                });
                continue;
            }
            // Well-formed with examples, so `metrics` is `Some`; the error is never returned.
            let metrics = counts.metrics().ok_or_else(invalid)?;
            reported.push((name, metrics.clone()));
            reports.push(GroupReport::Reported {
                group: name.clone(),
                metrics: Box::new(metrics),
            });
        }
        if let Some(reference) = &config.reference {
            if !seen.contains(reference.as_str()) {
                return Err(FairnessError::UnknownReference {
                    group: reference.clone(),
                });
            }
            if !reported.iter().any(|(name, _)| name == reference) {
                return Err(FairnessError::ReferenceSuppressed {
                    group: reference.clone(),
                });
            }
        }
        let disparities =
            (reported.len() >= 2).then(|| disparities(&reported, config.reference.as_deref()));
        Ok(Self {
            min_count: config.min_count,
            decision_threshold: config.decision_threshold,
            groups: reports,
            disparities,
        })
    }

    /// Why `limit`'s disparity is undefined in this report, from its counts; `None` when it is
    /// defined.
    ///
    /// Fewer than two reported groups leave every disparity undefined
    /// ([`UndefinedReason::TooFewGroupsReported`]). Otherwise the demographic parity ratio is
    /// undefined when nobody is flagged positive ([`UndefinedReason::NobodyFlagged`]), the equal
    /// opportunity difference when no reported group has positives, and the equalized odds
    /// difference when no reported group has positives or none has negatives.
    pub fn undefined_reason(&self, limit: Limit) -> Option<UndefinedReason> {
        let Some(d) = &self.disparities else {
            let mut reported = Vec::new();
            let mut suppressed = Vec::new();
            for group in &self.groups {
                match group {
                    GroupReport::Reported { group, .. } => reported.push(group.clone()),
                    GroupReport::Suppressed { group, reason } => suppressed.push(SuppressedGroup {
                        group: group.clone(),
                        reason: *reason,
                    }),
                }
            }
            return Some(UndefinedReason::TooFewGroupsReported {
                reported,
                suppressed,
                min_count: self.min_count,
            });
        };
        if limit.value(d).is_some() {
            return None;
        }
        let reported = || d.groups.clone();
        let all_reported = |undefined: fn(&GroupMetrics) -> bool| {
            self.groups.iter().all(|g| match g {
                GroupReport::Reported { metrics, .. } => undefined(metrics),
                GroupReport::Suppressed { .. } => true,
            })
        };
        let no_positives = all_reported(|m| m.tpr.is_none());
        let no_negatives = all_reported(|m| m.fpr.is_none());
        Some(match limit {
            Limit::DemographicParityRatio => UndefinedReason::NobodyFlagged {
                threshold: self.decision_threshold,
            },
            _ if no_positives => UndefinedReason::NoPositives { groups: reported() },
            _ if no_negatives => UndefinedReason::NoNegatives { groups: reported() },
            // Unreachable for reports this module computes: the TPR and FPR spreads are
            // undefined only without positives or negatives. A hand-made report gets the
            // closest reason.
            _ => UndefinedReason::NoPositives { groups: reported() },
        })
    }
}

impl FairnessPolicy {
    /// Checks every limit the policy sets against `report`'s disparities.
    ///
    /// A limit on a disparity that is undefined — including every limit when the report has no
    /// disparities because fewer than two groups are reported — fails, and its check says why
    /// ([`PolicyCheck::undefined`]).
    pub fn check(&self, report: &FairnessReport) -> PolicyOutcome {
        let d = report.disparities.as_ref();
        let checks: Vec<PolicyCheck> = Limit::ALL
            .into_iter()
            .filter_map(|limit| {
                let threshold = self.threshold(limit)?;
                let value = d.and_then(|d| limit.value(d));
                Some(PolicyCheck {
                    name: limit.name().to_owned(),
                    threshold,
                    value,
                    // NaN thresholds or values compare false, so they fail.
                    passed: value.is_some_and(|v| limit.bound().holds(v, threshold)),
                    undefined: value
                        .is_none()
                        .then(|| report.undefined_reason(limit))
                        .flatten(),
                })
            })
            .collect();
        let approved = checks.iter().all(|c| c.passed);
        PolicyOutcome { checks, approved }
    }

    /// The policy's threshold for `limit`, if it sets one.
    pub fn threshold(&self, limit: Limit) -> Option<f64> {
        match limit {
            Limit::EqualizedOddsDifference => self.max_equalized_odds_difference,
            Limit::DemographicParityRatio => self.min_demographic_parity_ratio,
            Limit::DemographicParityDifference => self.max_demographic_parity_difference,
            Limit::EqualOpportunityDifference => self.max_equal_opportunity_difference,
        }
    }
}

/// One limit a [`FairnessPolicy`] can set: a bound on one disparity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// At most this [`Disparities::equalized_odds_difference`].
    EqualizedOddsDifference,
    /// At least this [`Disparities::demographic_parity_ratio`].
    DemographicParityRatio,
    /// At most this [`Disparities::demographic_parity_difference`].
    DemographicParityDifference,
    /// At most this [`Disparities::equal_opportunity_difference`].
    EqualOpportunityDifference,
}

impl Limit {
    /// Every limit, in the order a [`PolicyOutcome`] lists its checks.
    pub const ALL: [Self; 4] = [
        Self::EqualizedOddsDifference,
        Self::DemographicParityRatio,
        Self::DemographicParityDifference,
        Self::EqualOpportunityDifference,
    ];

    /// The policy key, as written in `[fairness.policy]` and in each [`PolicyCheck::name`].
    pub fn name(self) -> &'static str {
        match self {
            Self::EqualizedOddsDifference => "max_equalized_odds_difference",
            Self::DemographicParityRatio => "min_demographic_parity_ratio",
            Self::DemographicParityDifference => "max_demographic_parity_difference",
            Self::EqualOpportunityDifference => "max_equal_opportunity_difference",
        }
    }

    /// The limit a policy key names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|limit| limit.name() == name)
    }

    /// The disparity it bounds, as named in [`Disparities`].
    pub fn disparity(self) -> &'static str {
        match self {
            Self::EqualizedOddsDifference => "equalized_odds_difference",
            Self::DemographicParityRatio => "demographic_parity_ratio",
            Self::DemographicParityDifference => "demographic_parity_difference",
            Self::EqualOpportunityDifference => "equal_opportunity_difference",
        }
    }

    /// Whether the threshold is a most or a least.
    pub fn bound(self) -> Bound {
        match self {
            Self::DemographicParityRatio => Bound::AtLeast,
            _ => Bound::AtMost,
        }
    }

    /// The disparity's value in `d`; `None` where it is undefined.
    pub fn value(self, d: &Disparities) -> Option<f64> {
        match self {
            Self::EqualizedOddsDifference => d.equalized_odds_difference,
            Self::DemographicParityRatio => d.demographic_parity_ratio,
            Self::DemographicParityDifference => Some(d.demographic_parity_difference),
            Self::EqualOpportunityDifference => d.equal_opportunity_difference,
        }
    }
}

/// Whether a policy limit is an upper or a lower bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    /// The value must be at most the threshold.
    AtMost,
    /// The value must be at least the threshold.
    AtLeast,
}

impl Bound {
    /// Whether `value` is within `threshold` (false for NaN).
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Self::AtMost => value <= threshold,
            Self::AtLeast => value >= threshold,
        }
    }

    /// "≤" or "≥", for people.
    pub fn symbol(self) -> &'static str {
        match self {
            Self::AtMost => "≤",
            Self::AtLeast => "≥",
        }
    }
}

impl SuppressionReason {
    /// Whether this is [`Self::TooFewExamples`] (the reason a report leaves out of its JSON).
    pub fn is_too_few_examples(&self) -> bool {
        *self == Self::TooFewExamples
    }

    /// The count that is short: "examples", "positives" or "negatives".
    pub fn count(self) -> &'static str {
        match self {
            Self::TooFewExamples => "examples",
            Self::TooFewPositives => "positives",
            Self::TooFewNegatives => "negatives",
        }
    }
}

impl fmt::Display for UndefinedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooFewGroupsReported {
                reported,
                suppressed,
                min_count,
            } => {
                match reported.as_slice() {
                    [] if suppressed.is_empty() => f.write_str("there are no groups")?,
                    [] => f.write_str("every group is suppressed")?,
                    [only] if suppressed.is_empty() => write!(f, "{only:?} is the only group")?,
                    [only] => write!(
                        f,
                        "every group but {only:?} is suppressed, so it has no group to be \
                         compared with"
                    )?,
                    // Two or more reported groups always have disparities.
                    _ => f.write_str("fewer than two groups are reported")?,
                }
                for (i, s) in suppressed.iter().enumerate() {
                    let lead = if i == 0 { " (" } else { "; " };
                    write!(
                        f,
                        "{lead}{:?}: fewer than {min_count} {}",
                        s.group,
                        s.reason.count()
                    )?;
                }
                if !suppressed.is_empty() {
                    f.write_str(")")?;
                }
                Ok(())
            }
            Self::NobodyFlagged { threshold } => write!(
                f,
                "nobody was flagged positive in any group at threshold {threshold}, so every \
                 selection rate is 0"
            ),
            Self::NoPositives { groups } => write!(
                f,
                "no reported group has positive examples ({}), so no true positive rate is \
                 defined",
                quoted(groups)
            ),
            Self::NoNegatives { groups } => write!(
                f,
                "no reported group has negative examples ({}), so no false positive rate is \
                 defined",
                quoted(groups)
            ),
        }
    }
}

/// Group names in quotes, separated by commas.
fn quoted(groups: &[String]) -> String {
    groups
        .iter()
        .map(|g| format!("{g:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl PolicyCheck {
    /// The limit this check applied; `None` for a name no version of medfed wrote.
    pub fn limit(&self) -> Option<Limit> {
        Limit::from_name(&self.name)
    }
}

/// Wilson score interval at 95% ([`WILSON_Z`]) for `successes` out of `trials`; `None` unless
/// `0 ≤ successes ≤ trials` and `trials > 0`, all finite.
pub fn wilson_interval(successes: f64, trials: f64) -> Option<Interval> {
    if !(successes.is_finite() && trials.is_finite() && trials > 0.0) {
        return None;
    }
    if !(0.0..=trials).contains(&successes) {
        return None;
    }
    let p = successes / trials;
    let z2 = WILSON_Z * WILSON_Z;
    let denominator = 1.0 + z2 / trials;
    let centre = (p + z2 / (2.0 * trials)) / denominator;
    let half =
        WILSON_Z * (p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)).sqrt() / denominator;
    // At p = 0 or 1 the bound is exactly 0 or 1; set it rather than keep the rounding error.
    let low = if successes == 0.0 {
        0.0
    } else {
        (centre - half).max(0.0)
    };
    let high = if successes == trials {
        1.0
    } else {
        (centre + half).min(1.0)
    };
    Some(Interval { low, high })
}

/// The band of a numeric sensitive attribute (for example age) between ascending `edges`.
///
/// With edges `e_0 < e_1 < … < e_k` the bands are `"<e_0"`, `"e_0-<e_1"`, …, `"e_{k-1}-<e_k"`
/// and `"≥e_k"`: each band holds its lower edge and not its upper one, so with edges
/// `[40.0, 60.0]` the value 40 is in `"40-<60"`, 59.9 too, and 60 in `"≥60"`. Edges are written
/// with Rust's shortest round-trip float formatting (`40`, `62.5`). `None` if `value` is NaN,
/// `edges` is empty, or the edges are not finite and strictly increasing.
pub fn band(value: f64, edges: &[f64]) -> Option<String> {
    if value.is_nan()
        || edges.is_empty()
        || edges.iter().any(|e| !e.is_finite())
        || edges.windows(2).any(|w| w[0] >= w[1])
    {
        return None;
    }
    // Number of edges at or below the value: 0 means below the first edge.
    let above = edges.iter().take_while(|&&e| e <= value).count();
    Some(match above {
        0 => format!("<{}", edges[0]),
        i if i == edges.len() => format!("≥{}", edges[i - 1]),
        i => format!("{}-<{}", edges[i - 1], edges[i]),
    })
}

/// A proportion and its Wilson interval; `None` if `trials` is not positive.
fn rate(successes: f64, trials: f64) -> Option<Rate> {
    Some(Rate {
        value: successes / trials,
        interval: wilson_interval(successes, trials)?,
    })
}

/// Why a group with these counts is suppressed under `min_count`; `None` if it is reported.
fn suppression(counts: &GroupCounts, min_count: u64) -> Option<SuppressionReason> {
    let min = min_count as f64;
    let n = counts.n();
    if n <= 0.0 || n < min {
        Some(SuppressionReason::TooFewExamples)
    } else if counts.tp + counts.fn_ < min {
        Some(SuppressionReason::TooFewPositives)
    } else if counts.fp + counts.tn < min {
        Some(SuppressionReason::TooFewNegatives)
    } else {
        None
    }
}

/// The decision threshold of every report written before [`FairnessReport::decision_threshold`]
/// existed.
const LEGACY_DECISION_THRESHOLD: f32 = 0.5;

fn legacy_decision_threshold() -> f32 {
    LEGACY_DECISION_THRESHOLD
}

// serde's `skip_serializing_if` passes a reference.
fn is_legacy_decision_threshold(value: &f32) -> bool {
    *value == LEGACY_DECISION_THRESHOLD
}

/// Disparities between `reported` groups (at least two, in name order).
fn disparities(reported: &[(&str, GroupMetrics)], reference: Option<&str>) -> Disparities {
    let spread = |values: Vec<f64>| -> Option<(f64, f64)> {
        let min = values.iter().copied().reduce(f64::min)?;
        let max = values.iter().copied().reduce(f64::max)?;
        Some((min, max))
    };
    let selection: Vec<f64> = reported
        .iter()
        .map(|(_, m)| m.selection_rate.value)
        .collect();
    let tprs: Vec<f64> = reported
        .iter()
        .filter_map(|(_, m)| m.tpr.map(|r| r.value))
        .collect();
    let fprs: Vec<f64> = reported
        .iter()
        .filter_map(|(_, m)| m.fpr.map(|r| r.value))
        .collect();
    // `reported` is not empty, so the selection rates have a spread; (0, 0) is never used.
    let (sel_min, sel_max) = spread(selection).unwrap_or((0.0, 0.0));
    let tpr_diff = spread(tprs).map(|(lo, hi)| hi - lo);
    let fpr_diff = spread(fprs).map(|(lo, hi)| hi - lo);
    let reference = reference.and_then(|name| {
        let (_, base) = reported.iter().find(|(g, _)| *g == name)?;
        let diff = |a: Option<Rate>, b: Option<Rate>| Some(a?.value - b?.value);
        Some(ReferenceComparison {
            group: name.to_owned(),
            differences: reported
                .iter()
                .map(|(g, m)| GroupDifference {
                    group: (*g).to_owned(),
                    selection_rate: m.selection_rate.value - base.selection_rate.value,
                    tpr: diff(m.tpr, base.tpr),
                    fpr: diff(m.fpr, base.fpr),
                })
                .collect(),
        })
    });
    Disparities {
        groups: reported.iter().map(|(g, _)| (*g).to_owned()).collect(),
        demographic_parity_difference: sel_max - sel_min,
        demographic_parity_ratio: (sel_max > 0.0).then(|| sel_min / sel_max),
        equalized_odds_difference: tpr_diff.zip(fpr_diff).map(|(t, f)| t.max(f)),
        equal_opportunity_difference: tpr_diff,
        reference,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_limit_is_the_policy_key_of_its_name_and_bounds_its_disparity_one_way() {
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            let threshold = 0.25 + i as f64;
            let policy: FairnessPolicy =
                toml::from_str(&format!("{} = {threshold}", limit.name())).unwrap();
            assert_eq!(policy.threshold(limit), Some(threshold), "{limit:?}");
            assert_eq!(Limit::from_name(limit.name()), Some(limit));
            assert!(limit.name().ends_with(limit.disparity()));
            // Only the ratio is a floor.
            let floor = limit == Limit::DemographicParityRatio;
            assert_eq!(limit.bound() == Bound::AtLeast, floor, "{limit:?}");
            assert!(limit.bound().holds(threshold, threshold));
            assert!(!limit.bound().holds(f64::NAN, threshold));
        }
        assert_eq!(Limit::from_name("max_anything_else"), None);
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    /// A group with the given confusion matrix; scores 0.9 for predicted positives, 0.1 else.
    fn counts(tp: u32, fp: u32, tn: u32, fn_: u32) -> GroupCounts {
        let mut scores = Vec::new();
        let mut labels = Vec::new();
        for (k, score, label) in [
            (tp, 0.9, 1.0),
            (fp, 0.9, 0.0),
            (tn, 0.1, 0.0),
            (fn_, 0.1, 1.0),
        ] {
            scores.extend(std::iter::repeat_n(score, k as usize));
            labels.extend(std::iter::repeat_n(label, k as usize));
        }
        GroupCounts::from_predictions(&scores, &labels)
    }

    fn sum_vectors(a: &GroupCounts, b: &GroupCounts) -> GroupCounts {
        let (mut va, mut vb) = (Vec::new(), Vec::new());
        a.write_vector(&mut va);
        b.write_vector(&mut vb);
        let summed: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| x + y).collect();
        GroupCounts::from_vector(&summed).unwrap()
    }

    fn metrics_of<'a>(report: &'a FairnessReport, group: &str) -> Option<&'a GroupMetrics> {
        report.groups.iter().find_map(|g| match g {
            GroupReport::Reported {
                group: name,
                metrics,
            } if name == group => Some(&**metrics),
            _ => None,
        })
    }

    #[test]
    fn wilson_interval_matches_hand_computation() {
        // 8/10: p = 0.8, z² = 3.8415, centre 0.71674, half-width 0.22658.
        let i = wilson_interval(8.0, 10.0).unwrap();
        assert!(
            close(i.low, 0.490, 1e-3) && close(i.high, 0.943, 1e-3),
            "{i:?}"
        );
        let i = wilson_interval(0.0, 10.0).unwrap();
        assert_eq!(i.low, 0.0);
        assert!(close(i.high, 0.2775, 1e-4), "{i:?}");
        let i = wilson_interval(10.0, 10.0).unwrap();
        assert!(close(i.low, 0.7225, 1e-4) && i.high == 1.0, "{i:?}");
        assert_eq!(wilson_interval(1.0, 0.0), None);
        assert_eq!(wilson_interval(11.0, 10.0), None);
        assert_eq!(wilson_interval(-1.0, 10.0), None);
        assert_eq!(wilson_interval(f64::NAN, 10.0), None);
    }

    #[test]
    fn summed_hospital_counts_equal_pooled_counts() {
        let scores_a = [0.91, 0.12, 0.55, 0.49, 0.73, 0.5];
        let labels_a = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
        let scores_b = [0.05, 0.66, 0.31, 1.0];
        let labels_b = [0.0, 1.0, 1.0, 1.0];
        let a = GroupCounts::from_predictions(&scores_a, &labels_a);
        let b = GroupCounts::from_predictions(&scores_b, &labels_b);
        let pooled_scores: Vec<f32> = scores_a.iter().chain(&scores_b).copied().collect();
        let pooled_labels: Vec<f32> = labels_a.iter().chain(&labels_b).copied().collect();
        let pooled = GroupCounts::from_predictions(&pooled_scores, &pooled_labels);
        assert_eq!(sum_vectors(&a, &b), pooled);
        let mut added = a.clone();
        added.add(&b);
        assert_eq!(added, pooled);
        assert_eq!(
            (pooled.tp, pooled.fp, pooled.tn, pooled.fn_),
            (4.0, 2.0, 2.0, 2.0)
        );
        let m = pooled.metrics().unwrap();
        assert_eq!(m.n, 10);
        assert!(close(m.selection_rate.value, 0.6, 1e-12));
        assert!(close(m.tpr.unwrap().value, 4.0 / 6.0, 1e-12));
        assert!(close(m.ppv.unwrap().value, 4.0 / 6.0, 1e-12));
    }

    #[test]
    fn vector_form_roundtrips_and_rejects_wrong_length() {
        let c = counts(3, 1, 4, 2);
        let mut v = vec![7.0];
        c.write_vector(&mut v);
        assert_eq!(v.len(), 1 + GroupCounts::VECTOR_LEN);
        assert_eq!(GroupCounts::from_vector(&v[1..]), Some(c));
        assert_eq!(GroupCounts::from_vector(&v), None);
        assert_eq!(GroupCounts::from_vector(&[]), None);
    }

    #[test]
    fn undefined_rates_are_none() {
        let m = counts(0, 2, 3, 0).metrics().unwrap();
        assert_eq!((m.tpr, m.fnr, m.auc), (None, None, None));
        assert!(m.fpr.is_some() && m.ppv.is_some());
        let m = counts(0, 0, 3, 2).metrics().unwrap();
        assert_eq!(m.ppv, None);
        assert_eq!(GroupCounts::zero().metrics(), None);
    }

    #[test]
    fn ece_uses_bin_centres() {
        // Two examples at 0.9004 (histogram bin 90 of 100, centre 0.905), one positive:
        // ECE = |0.905 − 0.5| = 0.405.
        let c = GroupCounts::from_predictions(&[0.9004, 0.9004], &[1.0, 0.0]);
        assert_eq!(c.bins(), GROUP_SCORE_BINS);
        assert!(close(c.expected_calibration_error().unwrap(), 0.405, 1e-12));
        // With 1000 bins: bin 900, centre 0.9005.
        let c = GroupCounts::from_predictions_with_bins(&[0.9004, 0.9004], &[1.0, 0.0], 1000);
        assert!(close(
            c.expected_calibration_error().unwrap(),
            0.4005,
            1e-12
        ));
        // Calibrated scores of 0.5 still show the bin-centre offset of 0.5 / GROUP_SCORE_BINS.
        let c = GroupCounts::from_predictions(&[0.5, 0.5, 0.1, 0.1], &[1.0, 0.0, 0.0, 0.0]);
        let ece = c.expected_calibration_error().unwrap();
        // Bin 5: |0.505 − 0.5| · ½; bin 1: f32 0.1 is in histogram bin 10, |0.105 − 0| · ½.
        assert!(close(ece, 0.5 * 0.005 + 0.5 * 0.105, 1e-12), "{ece}");
        let mut short = c.clone();
        short.negative_scores.pop();
        assert_eq!(short.expected_calibration_error(), None);
        assert_eq!(short.metrics(), None);
        // Histograms must split evenly into the ECE bins.
        let odd = GroupCounts::from_predictions_with_bins(&[0.5, 0.2], &[1.0, 0.0], 15);
        assert_eq!(odd.expected_calibration_error(), None);
        assert_eq!(odd.metrics(), None);
        assert_eq!(GroupCounts::zero().expected_calibration_error(), None);
        // An empty histogram neither panics nor has metrics.
        let empty = GroupCounts::from_predictions_with_bins(&[0.5], &[1.0], 0);
        assert_eq!((empty.tp, empty.bins()), (1.0, 0));
        assert_eq!(empty.metrics(), None);
    }

    #[test]
    fn bin_counts_are_part_of_the_vector_form() {
        assert_eq!(GroupCounts::VECTOR_LEN, 4 + 2 * GROUP_SCORE_BINS);
        assert_eq!(GroupCounts::vector_len(1000), 2004);
        let c = GroupCounts::from_predictions_with_bins(&[0.25, 0.75], &[0.0, 1.0], 1000);
        let mut v = Vec::new();
        c.write_vector(&mut v);
        assert_eq!(v.len(), GroupCounts::vector_len(1000));
        assert_eq!(GroupCounts::from_vector(&v), None);
        assert_eq!(GroupCounts::from_vector_with_bins(&v, 100), None);
        assert_eq!(GroupCounts::from_vector_with_bins(&v, usize::MAX), None);
        assert_eq!(GroupCounts::from_vector_with_bins(&v, 1000), Some(c));
        // The same predictions give the same rates at either resolution.
        let coarse = GroupCounts::from_predictions(&[0.25, 0.75], &[0.0, 1.0]);
        let (fine, coarse) = (
            GroupCounts::from_vector_with_bins(&v, 1000)
                .unwrap()
                .metrics()
                .unwrap(),
            coarse.metrics().unwrap(),
        );
        assert_eq!((fine.tpr, fine.auc), (coarse.tpr, coarse.auc));
    }

    #[test]
    fn small_groups_are_suppressed_not_dropped() {
        let mut groups = BTreeMap::new();
        groups.insert("large".to_owned(), counts(10, 5, 20, 5));
        groups.insert("medium".to_owned(), counts(8, 4, 8, 4));
        groups.insert("tiny".to_owned(), counts(1, 0, 8, 0));
        let report = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap();
        assert_eq!(report.min_count, DEFAULT_MIN_COUNT);
        assert_eq!(report.groups.len(), 3);
        assert_eq!(
            report.groups[2],
            GroupReport::Suppressed {
                group: "tiny".into(),
                reason: SuppressionReason::TooFewExamples,
            }
        );
        let d = report.disparities.as_ref().unwrap();
        assert_eq!(d.groups, ["large", "medium"]);
        // Selection rates 15/40 and 12/24.
        assert!(close(d.demographic_parity_difference, 0.5 - 0.375, 1e-12));
        assert!(close(d.demographic_parity_ratio.unwrap(), 0.75, 1e-12));
        // The suppressed group's JSON carries no figure.
        let json = serde_json::to_string(&report.groups[2]).unwrap();
        assert_eq!(json, r#"{"status":"suppressed","group":"tiny"}"#);

        let mut config = AuditConfig::default();
        config.min_count(0);
        let report = FairnessReport::compute(&groups, &config).unwrap();
        assert_eq!(report.disparities.unwrap().groups.len(), 3);

        // One reported group: nothing to compare, so no disparities.
        groups.remove("medium");
        let report = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap();
        assert_eq!(report.disparities, None);
    }

    #[test]
    fn reference_group_differences_and_errors() {
        let mut groups = BTreeMap::new();
        groups.insert("a".to_owned(), counts(8, 2, 8, 2));
        groups.insert("b".to_owned(), counts(6, 4, 6, 4));
        groups.insert("c".to_owned(), counts(1, 1, 1, 1));
        let mut config = AuditConfig::default();
        config.reference_group("a");
        let report = FairnessReport::compute(&groups, &config).unwrap();
        let reference = report.disparities.unwrap().reference.unwrap();
        assert_eq!(reference.group, "a");
        assert_eq!(reference.differences.len(), 2);
        let b = &reference.differences[1];
        assert_eq!(b.group, "b");
        assert!(close(b.selection_rate, 0.5 - 0.5, 1e-12));
        assert!(close(b.tpr.unwrap(), 0.6 - 0.8, 1e-12));
        assert!(close(b.fpr.unwrap(), 0.4 - 0.2, 1e-12));

        config.reference_group("c");
        assert_eq!(
            FairnessReport::compute(&groups, &config),
            Err(FairnessError::ReferenceSuppressed { group: "c".into() })
        );
        config.reference_group("z");
        assert_eq!(
            FairnessReport::compute(&groups, &config),
            Err(FairnessError::UnknownReference { group: "z".into() })
        );
    }

    #[test]
    fn a_group_named_twice_is_refused() {
        let (a, b) = ("a".to_owned(), "a".to_owned());
        let (ca, cb) = (counts(8, 2, 8, 2), counts(5, 5, 5, 5));
        assert_eq!(
            FairnessReport::compute([(&a, &ca), (&b, &cb)], &AuditConfig::default()),
            Err(FairnessError::DuplicateGroup { group: "a".into() })
        );
    }

    #[test]
    fn invalid_counts_are_refused() {
        let mut groups = BTreeMap::new();
        groups.insert("a".to_owned(), counts(8, 2, 8, 2));
        let mut bad = counts(8, 2, 8, 2);
        bad.negative_scores[3] = -1.0;
        groups.insert("b".to_owned(), bad);
        let err = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap_err();
        assert_eq!(err, FairnessError::InvalidCounts { group: "b".into() });
        let mut bad = counts(8, 2, 8, 2);
        bad.tp = f64::INFINITY;
        groups.insert("b".to_owned(), bad);
        assert!(FairnessReport::compute(&groups, &AuditConfig::default()).is_err());
        let mut bad = counts(8, 2, 8, 2);
        bad.positive_scores.pop();
        groups.insert("b".to_owned(), bad);
        assert!(FairnessReport::compute(&groups, &AuditConfig::default()).is_err());
        let mut bad = counts(8, 2, 8, 2);
        bad.tn = f64::NAN;
        groups.insert("b".to_owned(), bad);
        assert!(FairnessReport::compute(&groups, &AuditConfig::default()).is_err());
    }

    #[test]
    fn policy_passes_and_fails() {
        let mut groups = BTreeMap::new();
        groups.insert("a".to_owned(), counts(8, 2, 8, 2)); // sel 0.5, tpr 0.8, fpr 0.2
        groups.insert("b".to_owned(), counts(6, 4, 6, 4)); // sel 0.5, tpr 0.6, fpr 0.4
        let report = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap();
        let policy: FairnessPolicy = toml::from_str(
            "max_equalized_odds_difference = 0.1\nmin_demographic_parity_ratio = 0.8\n",
        )
        .unwrap();
        let outcome = policy.check(&report);
        assert!(!outcome.approved);
        assert_eq!(outcome.checks.len(), 2);
        assert_eq!(outcome.checks[0].name, "max_equalized_odds_difference");
        assert!(!outcome.checks[0].passed);
        assert!(close(outcome.checks[0].value.unwrap(), 0.2, 1e-12));
        assert!(outcome.checks[1].passed);
        assert_eq!(outcome.checks[1].value, Some(1.0));

        let lenient = FairnessPolicy {
            max_equalized_odds_difference: Some(0.25),
            max_demographic_parity_difference: Some(0.0),
            ..FairnessPolicy::default()
        };
        let outcome = lenient.check(&report);
        assert!(outcome.approved, "{outcome:?}");

        // No disparities: every set limit fails; an empty policy approves.
        groups.remove("b");
        let single = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap();
        let outcome = lenient.check(&single);
        assert!(!outcome.approved);
        assert!(outcome.checks.iter().all(|c| c.value.is_none()));
        assert!(FairnessPolicy::default().check(&single).approved);

        assert!(toml::from_str::<FairnessPolicy>("max_odds = 1.0").is_err());
    }

    #[test]
    fn bands() {
        let edges = [40.0, 60.0];
        assert_eq!(band(39.9, &edges).as_deref(), Some("<40"));
        assert_eq!(band(40.0, &edges).as_deref(), Some("40-<60"));
        assert_eq!(band(59.9, &edges).as_deref(), Some("40-<60"));
        assert_eq!(band(60.0, &edges).as_deref(), Some("≥60"));
        assert_eq!(band(f64::INFINITY, &edges).as_deref(), Some("≥60"));
        assert_eq!(band(1.0, &[2.5]).as_deref(), Some("<2.5"));
        assert_eq!(band(f64::NAN, &edges), None);
        assert_eq!(band(1.0, &[]), None);
        assert_eq!(band(1.0, &[60.0, 40.0]), None);
        assert_eq!(band(1.0, &[40.0, 40.0]), None);
    }

    #[test]
    fn report_json_roundtrips() {
        let mut groups = BTreeMap::new();
        groups.insert("a".to_owned(), counts(8, 2, 8, 2));
        groups.insert("b".to_owned(), counts(6, 4, 6, 4));
        groups.insert("c".to_owned(), counts(1, 0, 0, 0));
        let mut config = AuditConfig::default();
        config.reference_group("a");
        let report = FairnessReport::compute(&groups, &config).unwrap();
        let json = serde_json::to_string(&report).unwrap();
        let back: FairnessReport = serde_json::from_str(&json).unwrap();
        // serde_json's default float parsing may be off by one ulp, so compare as parsed JSON.
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_value(&back).unwrap(), parsed);
        assert_eq!(
            back.groups[2],
            GroupReport::Suppressed {
                group: "c".into(),
                reason: SuppressionReason::TooFewExamples,
            }
        );
    }

    #[test]
    fn groups_short_of_positives_or_negatives_are_suppressed_saying_which() {
        let mut groups = BTreeMap::new();
        // 40 patients each; "rare" has 9 positives, "common" 9 negatives.
        groups.insert("balanced".to_owned(), counts(10, 5, 15, 10));
        groups.insert("rare".to_owned(), counts(5, 5, 26, 4));
        groups.insert("common".to_owned(), counts(20, 4, 5, 11));
        groups.insert("small".to_owned(), counts(3, 1, 3, 2));
        let report = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap();
        let reasons: Vec<(&str, Option<SuppressionReason>)> = report
            .groups
            .iter()
            .map(|g| match g {
                GroupReport::Reported { group, .. } => (group.as_str(), None),
                GroupReport::Suppressed { group, reason } => (group.as_str(), Some(*reason)),
            })
            .collect();
        assert_eq!(
            reasons,
            [
                ("balanced", None),
                ("common", Some(SuppressionReason::TooFewNegatives)),
                ("rare", Some(SuppressionReason::TooFewPositives)),
                ("small", Some(SuppressionReason::TooFewExamples)),
            ]
        );
        // The reason is in the JSON, except the one older reports imply.
        let json = serde_json::to_string(&report.groups[2]).unwrap();
        assert_eq!(
            json,
            r#"{"status":"suppressed","group":"rare","reason":"too_few_positives"}"#
        );
        let json = serde_json::to_string(&report.groups[3]).unwrap();
        assert_eq!(json, r#"{"status":"suppressed","group":"small"}"#);
        // One group left: nothing to compare, and the reason lists why the others are out.
        let reason = report
            .undefined_reason(Limit::EqualizedOddsDifference)
            .unwrap();
        assert_eq!(
            reason.to_string(),
            "every group but \"balanced\" is suppressed, so it has no group to be compared with \
             (\"common\": fewer than 10 negatives; \"rare\": fewer than 10 positives; \
             \"small\": fewer than 10 examples)"
        );
        // With a lower minimum, the same groups are reported.
        let mut config = AuditConfig::default();
        config.min_count(4);
        let report = FairnessReport::compute(&groups, &config).unwrap();
        assert_eq!(
            report.disparities.unwrap().groups,
            ["balanced", "common", "rare", "small"]
        );
    }

    #[test]
    fn undefined_disparities_say_why_from_the_counts() {
        let policy = FairnessPolicy {
            max_equalized_odds_difference: Some(0.1),
            min_demographic_parity_ratio: Some(0.8),
            max_demographic_parity_difference: Some(0.1),
            max_equal_opportunity_difference: Some(0.1),
        };
        // Nobody is flagged positive at 0.7 (a rare outcome with a cautious model): the
        // selection rates are all 0, so their ratio is 0/0; the differences are defined.
        let mut groups = BTreeMap::new();
        groups.insert("a".to_owned(), counts(0, 0, 20, 12));
        groups.insert("b".to_owned(), counts(0, 0, 30, 15));
        let mut config = AuditConfig::default();
        config.decision_threshold(0.7);
        let report = FairnessReport::compute(&groups, &config).unwrap();
        assert_eq!(report.decision_threshold, 0.7);
        let outcome = policy.check(&report);
        assert!(!outcome.approved);
        let ratio = &outcome.checks[1];
        assert_eq!(ratio.name, "min_demographic_parity_ratio");
        assert_eq!(
            ratio.undefined,
            Some(UndefinedReason::NobodyFlagged { threshold: 0.7 })
        );
        assert_eq!(
            ratio.undefined.as_ref().unwrap().to_string(),
            "nobody was flagged positive in any group at threshold 0.7, so every selection \
             rate is 0"
        );
        // Defined values carry no reason, passed or not.
        assert!(
            outcome
                .checks
                .iter()
                .filter(|c| c.value.is_some())
                .all(|c| c.undefined.is_none())
        );
        assert_eq!(
            report.undefined_reason(Limit::DemographicParityDifference),
            None
        );
        // The reason is in the check's JSON; a defined check's JSON is as before.
        let json = serde_json::to_string(ratio).unwrap();
        assert!(
            json.ends_with(
                r#""passed":false,"undefined":{"reason":"nobody_flagged","threshold":0.7}}"#
            ),
            "{json}"
        );
        assert!(
            !serde_json::to_string(&outcome.checks[0])
                .unwrap()
                .contains("undefined")
        );

        // Without a minimum, groups without positives are reported, and no TPR is defined.
        groups.insert("a".to_owned(), counts(0, 3, 20, 0));
        groups.insert("b".to_owned(), counts(0, 5, 30, 0));
        let mut config = AuditConfig::default();
        config.min_count(0);
        let report = FairnessReport::compute(&groups, &config).unwrap();
        let reason = UndefinedReason::NoPositives {
            groups: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            report.undefined_reason(Limit::EqualOpportunityDifference),
            Some(reason.clone())
        );
        assert_eq!(
            report.undefined_reason(Limit::EqualizedOddsDifference),
            Some(reason)
        );
        assert_eq!(report.undefined_reason(Limit::DemographicParityRatio), None);

        // Every group suppressed.
        let report = FairnessReport::compute(&groups, &AuditConfig::default()).unwrap();
        let reason = report
            .undefined_reason(Limit::DemographicParityRatio)
            .unwrap();
        assert_eq!(
            reason.to_string(),
            "every group is suppressed (\"a\": fewer than 10 positives; \"b\": fewer than 10 \
             positives)"
        );
        let outcome = policy.check(&report);
        assert!(
            outcome
                .checks
                .iter()
                .all(|c| c.undefined == Some(reason.clone()))
        );
    }

    #[test]
    fn reports_written_before_reasons_and_thresholds_keep_their_bytes() {
        // A report as an older medfed wrote it: no threshold, no suppression reason, no
        // undefined reason.
        let old =
            r#"{"min_count":10,"groups":[{"status":"suppressed","group":"x"}],"disparities":null}"#;
        let report: FairnessReport = serde_json::from_str(old).unwrap();
        assert_eq!(report.decision_threshold, 0.5);
        assert_eq!(serde_json::to_string(&report).unwrap(), old);
        let check = r#"{"name":"max_equalized_odds_difference","threshold":0.1,"value":null,"passed":false}"#;
        let parsed: PolicyCheck = serde_json::from_str(check).unwrap();
        assert_eq!(parsed.undefined, None);
        assert_eq!(serde_json::to_string(&parsed).unwrap(), check);
        // Another threshold is written.
        let mut config = AuditConfig::default();
        config.decision_threshold(0.3);
        let report =
            FairnessReport::compute(&BTreeMap::<String, GroupCounts>::new(), &config).unwrap();
        let json = serde_json::to_string(&report).unwrap();
        assert!(json.contains(r#""decision_threshold":0.3,"#), "{json}");
        let back: FairnessReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }

    /// Worst absolute differences from fairlearn seen while checking the fixture.
    #[derive(Default, Debug)]
    struct Worst {
        threshold: f64,
        auc: f64,
        ece: f64,
    }

    fn check(worst: &mut Worst, what: &str, ours: f64, expected: f64) {
        let d = (ours - expected).abs();
        worst.threshold = worst.threshold.max(d);
        assert!(d <= 1e-9, "{what}: {ours} vs fairlearn {expected}");
    }

    #[test]
    fn matches_fairlearn_vectors() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/fairlearn_metrics.json")).unwrap();
        let rows = fixture["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 600);
        let labels: Vec<f32> = rows.iter().map(|r| r[0].as_f64().unwrap() as f32).collect();
        // Scores are float32 values written exactly, so the cast is lossless.
        let scores: Vec<f32> = rows.iter().map(|r| r[1].as_f64().unwrap() as f32).collect();
        let mut worst = Worst::default();
        for (column, attribute) in [(2, "group"), (3, "sex")] {
            let groups: Vec<&str> = rows.iter().map(|r| r[column].as_str().unwrap()).collect();
            let counts = group_predictions(&scores, &labels, &groups);
            let expected = &fixture["attributes"][attribute];
            let mut config = AuditConfig::default();
            config.min_count(0);
            let report = FairnessReport::compute(&counts, &config).unwrap();
            let by_group = expected["by_group"].as_object().unwrap();
            assert_eq!(report.groups.len(), by_group.len());
            for (name, e) in by_group {
                let m = metrics_of(&report, name).unwrap();
                let f = |key: &str| e[key].as_f64().unwrap();
                assert_eq!(m.n, e["count"].as_u64().unwrap());
                check(
                    &mut worst,
                    "selection_rate",
                    m.selection_rate.value,
                    f("selection_rate"),
                );
                check(
                    &mut worst,
                    "tpr",
                    m.tpr.unwrap().value,
                    f("true_positive_rate"),
                );
                check(
                    &mut worst,
                    "fpr",
                    m.fpr.unwrap().value,
                    f("false_positive_rate"),
                );
                check(
                    &mut worst,
                    "fnr",
                    m.fnr.unwrap().value,
                    f("false_negative_rate"),
                );
                check(&mut worst, "accuracy", m.accuracy.value, f("accuracy"));
                check(&mut worst, "ppv", m.ppv.unwrap().value, f("precision"));
                let n = m.n as f64;
                check(
                    &mut worst,
                    "prevalence",
                    m.prevalence.value,
                    f("positives") / n,
                );
                // The histogram AUC scores a positive/negative pair sharing a bin ½, where the
                // exact AUC scores it 0, ½ or 1: it is off by at most half the fraction of
                // such pairs, which the counts themselves give.
                let c = &counts[name.as_str()];
                let shared: f64 = (c.positive_scores.iter())
                    .zip(&c.negative_scores)
                    .map(|(p, n)| p * n)
                    .sum();
                let auc_bound = 0.5 * shared / ((c.tp + c.fn_) * (c.fp + c.tn));
                let auc = (m.auc.unwrap() - f("roc_auc")).abs();
                worst.auc = worst.auc.max(auc);
                assert!(
                    auc <= auc_bound + 1e-12,
                    "{name} auc off by {auc} > {auc_bound}"
                );
                // Bin centres are within 0.5 / bins of the scores, and so is the ECE.
                let ece = (m.ece - f("ece_exact")).abs();
                worst.ece = worst.ece.max(ece);
                assert!(
                    ece <= 0.5 / GROUP_SCORE_BINS as f64 + 1e-12,
                    "{name} ece off by {ece}"
                );
                let interval = m.selection_rate.interval;
                assert!(interval.low <= m.selection_rate.value);
                assert!(m.selection_rate.value <= interval.high);
            }
            let d = report.disparities.as_ref().unwrap();
            let f = |key: &str| expected[key].as_f64().unwrap();
            check(
                &mut worst,
                "dp difference",
                d.demographic_parity_difference,
                f("demographic_parity_difference"),
            );
            check(
                &mut worst,
                "dp ratio",
                d.demographic_parity_ratio.unwrap(),
                f("demographic_parity_ratio"),
            );
            check(
                &mut worst,
                "eo difference",
                d.equalized_odds_difference.unwrap(),
                f("equalized_odds_difference"),
            );
            check(
                &mut worst,
                "equal opportunity",
                d.equal_opportunity_difference.unwrap(),
                f("equal_opportunity_difference"),
            );
        }
        eprintln!("worst differences from fairlearn/sklearn: {worst:?}");

        // With the default min_count, the 8-row group C is suppressed and only A and B compared.
        let groups: Vec<&str> = rows.iter().map(|r| r[2].as_str().unwrap()).collect();
        let counts = group_predictions(&scores, &labels, &groups);
        let report = FairnessReport::compute(&counts, &AuditConfig::default()).unwrap();
        assert_eq!(
            report.groups[2],
            GroupReport::Suppressed {
                group: "C".into(),
                reason: SuppressionReason::TooFewExamples,
            }
        );
        let d = report.disparities.unwrap();
        assert_eq!(d.groups, ["A", "B"]);
        let by_group = &fixture["attributes"]["group"]["by_group"];
        let rate = |g: &str, key: &str| by_group[g][key].as_f64().unwrap();
        let sel = (rate("A", "selection_rate"), rate("B", "selection_rate"));
        assert!(close(
            d.demographic_parity_difference,
            (sel.0 - sel.1).abs(),
            1e-9
        ));
        let tpr = (rate("A", "true_positive_rate") - rate("B", "true_positive_rate")).abs();
        let fpr = (rate("A", "false_positive_rate") - rate("B", "false_positive_rate")).abs();
        assert!(close(
            d.equalized_odds_difference.unwrap(),
            tpr.max(fpr),
            1e-9
        ));
        // Group C (FPR 0) decides fairlearn's figure; without it the figure differs.
        let all_groups = fixture["attributes"]["group"]["equalized_odds_difference"]
            .as_f64()
            .unwrap();
        assert!(d.equalized_odds_difference.unwrap() < all_groups);
    }
}
