//! Federated evaluation: per-node counts that the coordinator only ever sums, and the pooled
//! metrics (loss, accuracy, AUC) it computes from those sums.
//!
//! A node never reports its own accuracy or AUC: it reports additive counts — examples, summed log
//! loss, a confusion matrix at the decision threshold and a histogram of predicted scores for each
//! label. Summed over hospitals these give exactly the pooled confusion matrix and, within the
//! histogram's resolution, the pooled AUC, as if all held-out patients were in one place.

use serde::{Deserialize, Serialize};

use crate::fairness::{ECE_BINS, GroupCounts};

/// Number of equal-width score bins on [0, 1] in the per-label histograms of the pooled
/// evaluation ([`EvalCounts::confusion`]).
///
/// The pooled AUC computed from the histograms counts two scores in the same bin as a tie, so it
/// differs from the exact AUC by at most half the fraction of positive/negative pairs sharing a
/// bin of width 1/1000. The audit groups use the coarser
/// [`GROUP_SCORE_BINS`](crate::fairness::GROUP_SCORE_BINS).
pub const EVAL_SCORE_BINS: usize = 1000;

// Every ECE bin must be a whole number of histogram bins.
const _: () = assert!(EVAL_SCORE_BINS > 0 && EVAL_SCORE_BINS.is_multiple_of(ECE_BINS));

/// The most bins a round's score histograms may have.
pub const MAX_SCORE_BINS: u32 = 10_000;

/// How finely a task's score histograms are binned: the pooled evaluation's and each audit
/// group's, equal-width on [0, 1], set by the consortium in its signed task manifest.
///
/// Fine histograms give exact-count evaluations an AUC within a fraction of a bin of the exact
/// one ([`ScoreBins::FINE`]: 1000 and 100 bins). Where hospitals noise their counts
/// ([`crate::eval_release`]) every bin carries its own noise while the privacy cost does not
/// depend on the number of bins, so coarse histograms (tens of bins) carry far less noise into
/// the AUC and calibration for the same ε.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreBins {
    /// Bins of the pooled evaluation's histograms.
    pub evaluation: u32,
    /// Bins of each audit group's histograms.
    pub group: u32,
}

impl ScoreBins {
    /// [`EVAL_SCORE_BINS`] and [`GROUP_SCORE_BINS`](crate::fairness::GROUP_SCORE_BINS): the
    /// default.
    pub const FINE: Self = Self {
        evaluation: EVAL_SCORE_BINS as u32,
        group: crate::fairness::GROUP_SCORE_BINS as u32,
    };

    /// Refuses a count of bins that is not a positive multiple of [`ECE_BINS`] (each
    /// calibration bin must be whole histogram bins) up to [`MAX_SCORE_BINS`].
    pub fn check(&self) -> Result<(), ScoreBinsError> {
        for (what, bins) in [("evaluation", self.evaluation), ("group", self.group)] {
            if bins == 0 || bins > MAX_SCORE_BINS || !(bins as usize).is_multiple_of(ECE_BINS) {
                return Err(ScoreBinsError { what, bins });
            }
        }
        Ok(())
    }

    /// Length of the pooled evaluation's vector form ([`EvalCounts::vector_len`]).
    pub fn evaluation_len(&self) -> usize {
        EvalCounts::vector_len(self.evaluation as usize)
    }

    /// Length of one audit group's vector form ([`GroupCounts::vector_len`]).
    pub fn group_len(&self) -> usize {
        GroupCounts::vector_len(self.group as usize)
    }
}

impl Default for ScoreBins {
    fn default() -> Self {
        Self::FINE
    }
}

/// A count of histogram bins that cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{what} score bins {bins}: must be a positive multiple of {ECE_BINS} up to {MAX_SCORE_BINS}"
)]
pub struct ScoreBinsError {
    /// `evaluation` or `group`.
    pub what: &'static str,
    /// The count refused.
    pub bins: u32,
}

/// The default decision threshold on the predicted probability for accuracy and the confusion
/// matrix ([`DecisionThreshold::DEFAULT`]).
pub const DECISION_THRESHOLD: f32 = 0.5;

/// The consortium's decision threshold: a patient whose predicted probability is at least this
/// is flagged positive. It sets the confusion matrices of every evaluation and audit group (and
/// so accuracy and every fairness rate), and the class `medfed-node predict` writes.
///
/// A rare outcome needs one below ½: at 12 % prevalence a calibrated model may flag nobody at
/// ½, and every rate of the audit built on flagged patients is then undefined. The consortium
/// sets it in its signed task manifest (`[task] decision_threshold`), so every hospital counts
/// at the same threshold. Strictly between 0 and 1: at 0 or 1 every patient (or nobody) would
/// be flagged whatever the model.
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd, Serialize, Deserialize)]
#[serde(try_from = "f64", into = "f64")]
pub struct DecisionThreshold(f64);

impl DecisionThreshold {
    /// ½, the threshold of a task that sets none.
    pub const DEFAULT: Self = Self(DECISION_THRESHOLD as f64);

    /// The threshold `value`, or why it is not one: finite and strictly between 0 and 1.
    pub fn new(value: f64) -> Result<Self, ThresholdError> {
        if value.is_finite() && value > 0.0 && value < 1.0 {
            Ok(Self(value))
        } else {
            Err(ThresholdError { value })
        }
    }

    /// The threshold as a number in (0, 1).
    pub fn get(self) -> f64 {
        self.0
    }

    /// Whether `score` is flagged positive: `score ≥ threshold`, compared in `f64` so that the
    /// threshold is the one written in the configuration, not its nearest `f32`.
    pub fn flags(self, score: f32) -> bool {
        f64::from(score) >= self.0
    }
}

// The value is finite (never NaN), so equality is reflexive.
impl Eq for DecisionThreshold {}

impl Default for DecisionThreshold {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl TryFrom<f64> for DecisionThreshold {
    type Error = ThresholdError;

    fn try_from(value: f64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DecisionThreshold> for f64 {
    fn from(threshold: DecisionThreshold) -> Self {
        threshold.0
    }
}

impl std::fmt::Display for DecisionThreshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A decision threshold that is not strictly between 0 and 1.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
#[error("decision threshold {value} must be a number strictly between 0 and 1")]
pub struct ThresholdError {
    /// The value refused.
    pub value: f64,
}

/// The score a prediction counts as when the model gives none: a NaN, an infinity, or a value
/// outside [0, 1].
///
/// A crafted model can make its output undefined (say `∞ − ∞`) on one patient's features only.
/// Were that row dropped, or the evaluation failed, what a node sends would depend on whether
/// that patient is in its held-out split. So such a row counts as a prediction of exactly ½:
/// one example in `n`, a log loss of ln 2, a positive prediction at [`DECISION_THRESHOLD`], one
/// count in the histogram bin holding ½. The counts then have the same form, and `n` is the
/// number of held-out rows, whatever the model does. The node counts such rows for its own log
/// with [`undefined_scores`].
pub const UNDEFINED_SCORE: f32 = 0.5;

/// `score` if it is a probability in [0, 1], else [`UNDEFINED_SCORE`].
pub fn counted_score(score: f32) -> f32 {
    if is_probability(score) {
        score
    } else {
        UNDEFINED_SCORE
    }
}

/// How many of `scores` are not probabilities, and so count as [`UNDEFINED_SCORE`]. For the
/// node's own log: it depends on the data, and is never sent.
pub fn undefined_scores(scores: &[f32]) -> usize {
    scores.iter().filter(|&&s| !is_probability(s)).count()
}

/// Probabilities are clamped to `[EPS, 1 − EPS]` before the log loss.
const LOG_LOSS_EPS: f64 = 1e-7;

/// Additive evaluation counts over one set of examples.
#[derive(Clone, Debug, PartialEq)]
pub struct EvalCounts {
    /// Number of examples.
    pub n: f64,
    /// Sum of binary cross-entropy losses.
    pub loss_sum: f64,
    /// Confusion matrix at the decision threshold and per-label score histograms of
    /// [`EVAL_SCORE_BINS`] bins: the counts the fairness audit keeps per group, at a finer
    /// resolution.
    pub confusion: GroupCounts,
}

/// Pooled metrics computed from summed [`EvalCounts`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Number of held-out examples over all nodes.
    pub examples: u64,
    /// Mean binary cross-entropy.
    pub loss: f64,
    /// Accuracy at the decision threshold.
    pub accuracy: f64,
    /// Area under the ROC curve from the score histograms; `None` if one class is absent.
    pub auc: Option<f64>,
    /// Fraction of positive examples.
    pub prevalence: f64,
}

impl EvalCounts {
    /// Length of the vector form: `n`, `loss_sum`, then the confusion counts with
    /// [`EVAL_SCORE_BINS`]-bin histograms.
    pub const VECTOR_LEN: usize = Self::vector_len(EVAL_SCORE_BINS);

    /// Length of the vector form with `bins`-bin histograms: `2 + 4 + 2 · bins`.
    pub const fn vector_len(bins: usize) -> usize {
        2 + GroupCounts::vector_len(bins)
    }

    /// Counts for predicted probabilities `scores` against 0/1 `labels`.
    ///
    /// A score that is not a probability (NaN, infinite, outside [0, 1]) counts as
    /// [`UNDEFINED_SCORE`]; a pair whose label is not finite is skipped (labels come from the
    /// node's own validated data, never from the model).
    pub fn from_predictions(scores: &[f32], labels: &[f32]) -> Self {
        Self::from_predictions_with_bins(scores, labels, EVAL_SCORE_BINS)
    }

    /// As [`Self::from_predictions`], with histograms of `bins` bins.
    pub fn from_predictions_with_bins(scores: &[f32], labels: &[f32], bins: usize) -> Self {
        Self::from_predictions_at(scores, labels, bins, DecisionThreshold::DEFAULT)
    }

    /// As [`Self::from_predictions_with_bins`], with the confusion matrix at `threshold`.
    pub fn from_predictions_at(
        scores: &[f32],
        labels: &[f32],
        bins: usize,
        threshold: DecisionThreshold,
    ) -> Self {
        let (mut n, mut loss_sum) = (0.0, 0.0);
        for (&score, &label) in scores.iter().zip(labels) {
            if let Some(loss) = example_loss(score, label) {
                n += 1.0;
                loss_sum += loss;
            }
        }
        Self {
            n,
            loss_sum,
            confusion: GroupCounts::from_predictions_at(scores, labels, bins, threshold),
        }
    }

    /// All-zero counts.
    pub fn zero() -> Self {
        Self {
            n: 0.0,
            loss_sum: 0.0,
            confusion: GroupCounts::zero_with_bins(EVAL_SCORE_BINS),
        }
    }

    /// Appends the vector form (the layout the coordinator sums) to `out`.
    pub fn write_vector(&self, out: &mut Vec<f64>) {
        out.extend_from_slice(&[self.n, self.loss_sum]);
        self.confusion.write_vector(out);
    }

    /// Reads the vector form; `None` if `v` is not [`Self::VECTOR_LEN`] long.
    pub fn from_vector(v: &[f64]) -> Option<Self> {
        Self::from_vector_with_bins(v, EVAL_SCORE_BINS)
    }

    /// Reads the vector form with `bins`-bin histograms; `None` if `v` is not
    /// [`Self::vector_len`]`(bins)` long.
    pub fn from_vector_with_bins(v: &[f64], bins: usize) -> Option<Self> {
        if v.len() != Self::vector_len(bins) {
            return None;
        }
        Some(Self {
            n: v[0],
            loss_sum: v[1],
            confusion: GroupCounts::from_vector_with_bins(&v[2..], bins)?,
        })
    }

    /// Pooled metrics; `None` when there are no examples.
    ///
    /// Counts summed from noised releases (see [`crate::eval_release`]) can be negative, and the
    /// noised `n` need not equal the confusion matrix's total. So every count is taken as
    /// `max(0, count)` (see [`GroupCounts::clamped`]), accuracy and prevalence are fractions of
    /// the confusion matrix's total (which is `n` for exact counts), and the loss is the loss sum
    /// over `n`. Without noise this changes nothing.
    pub fn metrics(&self) -> Option<EvalMetrics> {
        let c = self.confusion.clamped();
        let total = c.n();
        if self.n <= 0.0 || total <= 0.0 {
            return None;
        }
        let positives = c.tp + c.fn_;
        Some(EvalMetrics {
            examples: self.n.round() as u64,
            loss: self.loss_sum.max(0.0) / self.n,
            accuracy: (c.tp + c.tn) / total,
            auc: histogram_auc(&c.positive_scores, &c.negative_scores),
            prevalence: positives / total,
        })
    }
}

/// The largest loss of one example: the log loss of a probability clamped to
/// `[LOG_LOSS_EPS, 1 − LOG_LOSS_EPS]`, `ln(1 / 1e-7)` ≈ 16.1.
pub const MAX_EXAMPLE_LOSS: f64 = 16.11809565095832;

/// The binary cross-entropy of one prediction, in `[0, MAX_EXAMPLE_LOSS]`; `None` for a pair
/// that does not count (see [`EvalCounts::from_predictions`]).
pub(crate) fn example_loss(score: f32, label: f32) -> Option<f64> {
    let score = counted_pair(score, label)?;
    let p = f64::from(score).clamp(LOG_LOSS_EPS, 1.0 - LOG_LOSS_EPS);
    Some(if label >= 0.5 {
        -p.ln()
    } else {
        -(1.0 - p).ln()
    })
}

/// The score a (score, label) pair counts with ([`counted_score`]), or `None` if the pair does
/// not count because its label is not finite.
pub(crate) fn counted_pair(score: f32, label: f32) -> Option<f32> {
    label.is_finite().then(|| counted_score(score))
}

/// Whether `score` is a probability: finite and in [0, 1].
fn is_probability(score: f32) -> bool {
    (0.0..=1.0).contains(&score)
}

/// The bin of a probability in [0, 1] among `bins` equal-width bins (`bins` > 0): ⌊score·bins⌋,
/// with a score of exactly 1 in the last bin.
pub(crate) fn score_bin(score: f32, bins: usize) -> usize {
    ((f64::from(score) * bins as f64) as usize).min(bins.saturating_sub(1))
}

/// AUC from per-label score histograms of equal-width bins on [0, 1]: the probability that a
/// random positive scores above a random negative, counting pairs in the same bin as ties (½).
///
/// Any bin count works. The result differs from the exact AUC by at most half the fraction of
/// positive/negative pairs that share a bin, so finer histograms give a closer figure. `None` if
/// either histogram is empty or they differ in length.
pub fn histogram_auc(positive: &[f64], negative: &[f64]) -> Option<f64> {
    let total_pos: f64 = positive.iter().sum();
    let total_neg: f64 = negative.iter().sum();
    if total_pos <= 0.0 || total_neg <= 0.0 || positive.len() != negative.len() {
        return None;
    }
    let mut negatives_below = 0.0;
    let mut concordant = 0.0;
    for (&p, &n) in positive.iter().zip(negative) {
        concordant += p * (negatives_below + 0.5 * n);
        negatives_below += n;
    }
    Some(concordant / (total_pos * total_neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact AUC by comparing every positive/negative pair.
    fn exact_auc(scores: &[f32], labels: &[f32]) -> f64 {
        let (mut num, mut den) = (0.0, 0.0);
        for (s1, l1) in scores.iter().zip(labels) {
            for (s0, l0) in scores.iter().zip(labels) {
                if *l1 == 1.0 && *l0 == 0.0 {
                    den += 1.0;
                    num += if s1 > s0 {
                        1.0
                    } else if s1 == s0 {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        num / den
    }

    fn sum(a: &EvalCounts, b: &EvalCounts) -> EvalCounts {
        let (mut va, mut vb) = (Vec::new(), Vec::new());
        a.write_vector(&mut va);
        b.write_vector(&mut vb);
        let summed: Vec<f64> = va.iter().zip(&vb).map(|(x, y)| x + y).collect();
        EvalCounts::from_vector(&summed).unwrap()
    }

    #[test]
    fn a_decision_threshold_is_strictly_between_zero_and_one() {
        for bad in [0.0, 1.0, -0.2, 1.5, f64::NAN, f64::INFINITY] {
            assert!(DecisionThreshold::new(bad).is_err(), "{bad}");
        }
        let t = DecisionThreshold::new(0.125).unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "0.125");
        assert_eq!(
            serde_json::from_str::<DecisionThreshold>("0.125").unwrap(),
            t
        );
        let refused = serde_json::from_str::<DecisionThreshold>("1.0").unwrap_err();
        assert!(
            refused.to_string().contains("strictly between 0 and 1"),
            "{refused}"
        );
        // Compared in f64: 0.1 is not rounded to the f32 nearest it.
        let tenth = DecisionThreshold::new(0.1).unwrap();
        assert!(!tenth.flags(0.099_999_99) && tenth.flags(0.100_000_01));
    }

    #[test]
    fn counts_at_a_low_threshold_flag_the_rare_positives_that_half_misses() {
        // A rare outcome: scores of a calibrated model stay below ½.
        let scores = [0.05, 0.1, 0.3, 0.35, 0.08, 0.4];
        let labels = [0.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let at_half = EvalCounts::from_predictions(&scores, &labels).confusion;
        assert_eq!((at_half.tp, at_half.fp), (0.0, 0.0));
        let low = DecisionThreshold::new(0.3).unwrap();
        let at_low = EvalCounts::from_predictions_at(&scores, &labels, EVAL_SCORE_BINS, low);
        assert_eq!(
            (
                at_low.confusion.tp,
                at_low.confusion.fp,
                at_low.confusion.tn,
                at_low.confusion.fn_
            ),
            (2.0, 1.0, 3.0, 0.0)
        );
        // Only the confusion matrix moves: the loss and the histograms are the same.
        let half = EvalCounts::from_predictions_with_bins(&scores, &labels, EVAL_SCORE_BINS);
        assert_eq!(at_low.loss_sum, half.loss_sum);
        assert_eq!(
            at_low.confusion.positive_scores,
            half.confusion.positive_scores
        );
    }

    #[test]
    fn summed_counts_equal_pooled_counts() {
        let scores_a = [0.91, 0.12, 0.55, 0.49, 0.73];
        let labels_a = [1.0, 0.0, 0.0, 1.0, 1.0];
        let scores_b = [0.05, 0.66, 0.31];
        let labels_b = [0.0, 1.0, 1.0];
        let a = EvalCounts::from_predictions(&scores_a, &labels_a);
        let b = EvalCounts::from_predictions(&scores_b, &labels_b);
        let pooled_scores: Vec<f32> = scores_a.iter().chain(&scores_b).copied().collect();
        let pooled_labels: Vec<f32> = labels_a.iter().chain(&labels_b).copied().collect();
        let pooled = EvalCounts::from_predictions(&pooled_scores, &pooled_labels);
        let summed = sum(&a, &b);
        assert_eq!(summed.confusion.tp, pooled.confusion.tp);
        assert!((summed.loss_sum - pooled.loss_sum).abs() < 1e-12);
        let m = summed.metrics().unwrap();
        assert_eq!(m.examples, 8);
        assert!((m.accuracy - 5.0 / 8.0).abs() < 1e-12);
        let exact = exact_auc(&pooled_scores, &pooled_labels);
        assert!((m.auc.unwrap() - exact).abs() < 1e-12, "{m:?} vs {exact}");
    }

    #[test]
    fn histogram_auc_is_within_bin_resolution() {
        // Many close scores: the histogram AUC may differ only by ties within a bin.
        let scores: Vec<f32> = (0..400).map(|i| (i as f32 * 0.618_034).fract()).collect();
        let labels: Vec<f32> = scores
            .iter()
            .map(|&s| if (s * 7.3).fract() < s { 1.0 } else { 0.0 })
            .collect();
        let counts = EvalCounts::from_predictions(&scores, &labels);
        let auc = counts.metrics().unwrap().auc.unwrap();
        assert!((auc - exact_auc(&scores, &labels)).abs() < 2.0 / EVAL_SCORE_BINS as f64);
    }

    #[test]
    fn the_largest_example_loss_is_that_of_the_clamped_probability() {
        assert!((MAX_EXAMPLE_LOSS - (1.0 / LOG_LOSS_EPS).ln()).abs() < 1e-12);
        let worst = example_loss(0.0, 1.0).unwrap();
        assert!(worst <= MAX_EXAMPLE_LOSS && MAX_EXAMPLE_LOSS - worst < 1e-6);
    }

    #[test]
    fn auc_is_undefined_with_one_class() {
        let counts = EvalCounts::from_predictions(&[0.2, 0.8], &[1.0, 1.0]);
        assert_eq!(counts.metrics().unwrap().auc, None);
        assert!(EvalCounts::zero().metrics().is_none());
    }

    #[test]
    fn an_undefined_score_counts_exactly_as_one_half() {
        // What a crafted model may give one patient only: the counts, the overall ones and an
        // audit group's, are those of a score of ½, so the row is neither dropped nor visible.
        let labels = [1.0, 0.0, 1.0, 0.0];
        let defined = [0.9, 0.2, 0.5, 0.5];
        let want = EvalCounts::from_predictions(&defined, &labels);
        let want_group = GroupCounts::from_predictions(&defined, &labels);
        for undefined in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.5, -0.1] {
            let scores = [0.9, 0.2, undefined, undefined];
            assert_eq!(EvalCounts::from_predictions(&scores, &labels), want);
            assert_eq!(GroupCounts::from_predictions(&scores, &labels), want_group);
            assert_eq!(undefined_scores(&scores), 2);
            assert_eq!(counted_score(undefined), UNDEFINED_SCORE);
        }
        assert_eq!(want.n, 4.0);
        assert_eq!(want.confusion.tp + want.confusion.fp, 3.0);
        assert_eq!(want.confusion.positive_scores[EVAL_SCORE_BINS / 2], 1.0);
        assert_eq!(want.confusion.negative_scores[EVAL_SCORE_BINS / 2], 1.0);
        assert_eq!(undefined_scores(&defined), 0);
        assert_eq!(counted_score(0.0), 0.0);
        assert_eq!(counted_score(1.0), 1.0);
    }

    #[test]
    fn non_finite_labels_are_skipped_and_vector_roundtrips() {
        let counts = EvalCounts::from_predictions(&[0.3, f32::NAN, 1.0], &[f32::NAN, 0.0, 1.0]);
        assert_eq!(counts.n, 2.0);
        assert_eq!(counts.confusion.positive_scores[EVAL_SCORE_BINS - 1], 1.0);
        assert_eq!(counts.confusion.negative_scores[EVAL_SCORE_BINS / 2], 1.0);
        assert!((counts.loss_sum - (2f64.ln() + LOG_LOSS_EPS)).abs() < 1e-9);
        assert_eq!(counts.confusion.bins(), EVAL_SCORE_BINS);
        let mut v = Vec::new();
        counts.write_vector(&mut v);
        assert_eq!(v.len(), EvalCounts::VECTOR_LEN);
        assert_eq!(EvalCounts::from_vector(&v), Some(counts));
        assert_eq!(EvalCounts::from_vector(&v[1..]), None);
    }
}
