//! The model card's figures from the pooled evaluation counts: performance with 95% intervals
//! and calibration.
//!
//! Every figure here is computed from [`PooledCounts`], the sum over hospitals of their held-out
//! [`EvalCounts`] (the confusion matrix at the decision threshold and the per-label score
//! histograms): the coordinator never sees a score or a label, only these sums. The counts are
//! read through [`GroupCounts::clamped`], as the report's evaluation reads them, so that a
//! noised cell below zero counts as 0.
//!
//! # What the intervals cover
//!
//! The intervals express the sampling variation of the held-out patients, as if they were a
//! random sample of the population the hospitals serve. They **ignore** the differential-privacy
//! noise a hospital may add to its evaluation counts (`[privacy.evaluation]`): that noise is
//! known only to the hospital, and the coordinator cannot tell how much of the pooled counts it
//! makes up. With exact counts they are the usual intervals; with noised counts they are too
//! narrow by an amount the card cannot state, and the card says so
//! ([`INTERVAL_NOTE`]).

use serde::{Deserialize, Serialize};

use medfed_protocol::evaluation::{EvalCounts, histogram_auc};
use medfed_protocol::fairness::{ECE_BINS, GroupCounts, Interval, Rate, WILSON_Z, wilson_interval};

/// What the card says of its intervals (see the [module docs](self)).
pub const INTERVAL_NOTE: &str = "95% intervals reflect the sampling variation of the pooled \
     held-out patients only; they ignore any differential-privacy noise hospitals added to their \
     evaluation counts, so with noised counts they are too narrow. Proportions: Wilson score \
     intervals. AUC: DeLong's variance computed from the pooled score histograms (scores in one \
     histogram bin count as ties), Wald interval clipped to [0, 1].";

/// The pooled held-out counts of one audited model: what [`EvalCounts`] holds, in a form the
/// coordinator can keep in its state store (so that the released model's calibration can be
/// drawn after a restart, and for a released round other than the last).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PooledCounts {
    /// Number of examples (noised when hospitals noise their counts).
    pub n: f64,
    /// Summed log loss.
    pub loss_sum: f64,
    /// Confusion matrix at the decision threshold and the per-label score histograms.
    pub confusion: GroupCounts,
}

impl From<&EvalCounts> for PooledCounts {
    fn from(counts: &EvalCounts) -> Self {
        Self {
            n: counts.n,
            loss_sum: counts.loss_sum,
            confusion: counts.confusion.clone(),
        }
    }
}

impl From<PooledCounts> for EvalCounts {
    fn from(counts: PooledCounts) -> Self {
        Self {
            n: counts.n,
            loss_sum: counts.loss_sum,
            confusion: counts.confusion,
        }
    }
}

/// A figure with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Estimate {
    /// The figure.
    pub value: f64,
    /// Its 95% interval.
    pub interval: Interval,
}

/// Pooled discrimination and classification figures with their intervals.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intervals {
    /// Held-out patients with the outcome (clamped pooled count).
    pub positives: f64,
    /// Held-out patients without it.
    pub negatives: f64,
    /// Area under the ROC curve with DeLong's interval ([`auc_with_interval`]); `None` with
    /// fewer than two patients of either class.
    pub auc: Option<Estimate>,
    /// (TP + TN) / n.
    pub accuracy: Option<Rate>,
    /// Sensitivity, TP / (TP + FN).
    pub sensitivity: Option<Rate>,
    /// Specificity, TN / (TN + FP).
    pub specificity: Option<Rate>,
    /// Positive predictive value, TP / (TP + FP).
    pub ppv: Option<Rate>,
    /// Negative predictive value, TN / (TN + FN).
    pub npv: Option<Rate>,
    /// Fraction of held-out patients with the outcome.
    pub prevalence: Option<Rate>,
}

impl Intervals {
    /// The figures of `counts` (clamped; see the module docs).
    pub fn from_counts(counts: &PooledCounts) -> Self {
        let c = counts.confusion.clamped();
        let rate = |successes: f64, trials: f64| {
            wilson_interval(successes, trials).map(|interval| Rate {
                value: successes / trials,
                interval,
            })
        };
        let n = c.n();
        Self {
            positives: c.tp + c.fn_,
            negatives: c.tn + c.fp,
            auc: auc_with_interval(&c.positive_scores, &c.negative_scores),
            accuracy: rate(c.tp + c.tn, n),
            sensitivity: rate(c.tp, c.tp + c.fn_),
            specificity: rate(c.tn, c.tn + c.fp),
            ppv: rate(c.tp, c.tp + c.fp),
            npv: rate(c.tn, c.tn + c.fn_),
            prevalence: rate(c.tp + c.fn_, n),
        }
    }
}

/// The AUC of two score histograms with a 95% interval from DeLong's variance.
///
/// DeLong, DeLong and Clarke-Pearson (1988, *Biometrics* 44:837–845) estimate the variance of
/// the Mann–Whitney AUC from its structural components: for each positive its placement
/// `V10 = P(negative scores below) + ½·P(tie)`, for each negative `V01 = P(positive scores
/// above) + ½·P(tie)`, and `Var(AUC) = S10/n₁ + S01/n₀` with `S10`, `S01` the sample variances
/// (divisor `n − 1`) of the placements. It needs no assumption on the score distributions (unlike
/// Hanley–McNeil's, which assumes exponential ones), and it needs only each score's rank among
/// the other class, which the histograms give at their resolution: every positive in bin `i`
/// has the same placement, so the sums run over bins with the counts as weights. Scores in one
/// bin count as ties, as in [`histogram_auc`], so this is exactly DeLong's estimate for the
/// binned scores. The interval is `AUC ± z·√Var` (Wald), clipped to [0, 1]; near 0 or 1 with few
/// patients it can be too narrow, as every Wald interval can.
///
/// `None` unless both histograms have the same length, non-negative finite counts and at least
/// two patients each (one placement has no variance).
pub fn auc_with_interval(positive: &[f64], negative: &[f64]) -> Option<Estimate> {
    let ok = |h: &[f64]| h.iter().all(|x| x.is_finite() && *x >= 0.0);
    if positive.len() != negative.len() || !ok(positive) || !ok(negative) {
        return None;
    }
    let n1: f64 = positive.iter().sum();
    let n0: f64 = negative.iter().sum();
    if n1 < 2.0 || n0 < 2.0 {
        return None;
    }
    let auc = histogram_auc(positive, negative)?;
    // Placement of a positive in bin i: negatives below it, half of those in its bin.
    let mut below = 0.0;
    let mut s10 = 0.0;
    for (&p, &q) in positive.iter().zip(negative) {
        let v10 = (below + 0.5 * q) / n0;
        s10 += p * (v10 - auc).powi(2);
        below += q;
    }
    // Placement of a negative in bin j: positives above it, half of those in its bin.
    let mut above = 0.0;
    let mut s01 = 0.0;
    for (&p, &q) in positive.iter().zip(negative).rev() {
        let v01 = (above + 0.5 * p) / n1;
        s01 += q * (v01 - auc).powi(2);
        above += p;
    }
    let variance = s10 / (n1 - 1.0) / n1 + s01 / (n0 - 1.0) / n0;
    let half = WILSON_Z * variance.max(0.0).sqrt();
    Some(Estimate {
        value: auc,
        interval: Interval {
            low: (auc - half).max(0.0),
            high: (auc + half).min(1.0),
        },
    })
}

/// One row of the reliability table: the held-out patients whose score fell in `[low, high)`
/// (the last bin also a score of 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReliabilityBin {
    /// Lower edge of the score bin.
    pub low: f64,
    /// Upper edge.
    pub high: f64,
    /// Patients in the bin (clamped pooled count).
    pub count: f64,
    /// Their mean predicted risk, each score taken as its histogram bin's centre; `None` for
    /// an empty bin.
    pub mean_score: Option<f64>,
    /// The fraction of them with the outcome, with its Wilson interval; `None` for an empty bin.
    pub observed: Option<Rate>,
}

/// Calibration of the pooled held-out predictions, from the score histograms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// Bins of the histograms the figures come from (the task's `score_bins.evaluation`).
    pub histogram_bins: usize,
    /// Mean predicted risk over every held-out patient (bin centres).
    pub mean_predicted: f64,
    /// Observed fraction with the outcome.
    pub observed: f64,
    /// Calibration-in-the-large: `observed − mean_predicted`; above 0 the model underestimates
    /// risk on average.
    pub in_the_large: f64,
    /// Calibration slope ([`calibration_slope`]); `None` when it cannot be fitted.
    pub slope: Option<f64>,
    /// Expected calibration error over [`ECE_BINS`] bins, as the fairness audit computes it
    /// ([`GroupCounts::expected_calibration_error`]).
    pub ece: Option<f64>,
    /// The reliability table, [`ECE_BINS`] equal-width bins.
    pub table: Vec<ReliabilityBin>,
}

impl Calibration {
    /// The calibration of `counts`; `None` without patients or with histograms whose length is
    /// not a positive multiple of [`ECE_BINS`].
    ///
    /// Each patient's predicted risk is the centre of its histogram bin, so the mean predicted
    /// risk, each bin's mean score and the ECE are within `0.5 / bins` of the figures of the
    /// exact scores (0.0005 with the default 1000 bins, 0.025 with 20).
    pub fn from_counts(counts: &PooledCounts) -> Option<Self> {
        let c = counts.confusion.clamped();
        let bins = c.positive_scores.len();
        if bins == 0 || !bins.is_multiple_of(ECE_BINS) || c.negative_scores.len() != bins {
            return None;
        }
        let centre = |i: usize| (i as f64 + 0.5) / bins as f64;
        let (mut total, mut positives, mut score_sum) = (0.0, 0.0, 0.0);
        for (i, (&p, &q)) in c.positive_scores.iter().zip(&c.negative_scores).enumerate() {
            total += p + q;
            positives += p;
            score_sum += (p + q) * centre(i);
        }
        if total <= 0.0 {
            return None;
        }
        let width = bins / ECE_BINS;
        let table = (0..ECE_BINS)
            .map(|b| {
                let range = b * width..(b + 1) * width;
                let (mut n_b, mut pos_b, mut sum_b) = (0.0, 0.0, 0.0);
                for i in range {
                    let count = c.positive_scores[i] + c.negative_scores[i];
                    n_b += count;
                    pos_b += c.positive_scores[i];
                    sum_b += count * centre(i);
                }
                ReliabilityBin {
                    low: b as f64 / ECE_BINS as f64,
                    high: (b + 1) as f64 / ECE_BINS as f64,
                    count: n_b,
                    mean_score: (n_b > 0.0).then(|| sum_b / n_b),
                    observed: wilson_interval(pos_b, n_b).map(|interval| Rate {
                        value: pos_b / n_b,
                        interval,
                    }),
                }
            })
            .collect();
        let mean_predicted = score_sum / total;
        let observed = positives / total;
        Some(Self {
            histogram_bins: bins,
            mean_predicted,
            observed,
            in_the_large: observed - mean_predicted,
            slope: calibration_slope(&c.positive_scores, &c.negative_scores),
            ece: c.expected_calibration_error(),
            table,
        })
    }
}

/// The calibration slope: `γ` of the logistic recalibration model
/// `logit P(y = 1) = α + γ·logit(p)` (Cox 1958, *Biometrika* 45:562–565), fitted by maximum
/// likelihood (Newton–Raphson) to the pooled histograms, each patient's `p` taken as its bin's
/// centre.
///
/// 1 is ideal; below 1 the predictions are too extreme (typical of overfitting), above 1 too
/// modest. Only the bins are known, so the fit is that of the binned scores: each `logit(p)`
/// moves by at most the bin's half-width over `p(1 − p)`, which is small in the middle bins of a
/// fine histogram and larger in the extreme ones. With coarse histograms (tens of bins) read it
/// as approximate. `None` with one class only, fewer than two occupied bins, or when the fit
/// does not converge (separable bins).
pub fn calibration_slope(positive: &[f64], negative: &[f64]) -> Option<f64> {
    let bins = positive.len();
    if bins == 0 || negative.len() != bins {
        return None;
    }
    let rows: Vec<(f64, f64, f64)> = positive
        .iter()
        .zip(negative)
        .enumerate()
        .filter(|(_, (p, q))| **p + **q > 0.0)
        .map(|(i, (&p, &q))| {
            let centre = (i as f64 + 0.5) / bins as f64;
            ((centre / (1.0 - centre)).ln(), p, q)
        })
        .collect();
    let positives: f64 = rows.iter().map(|r| r.1).sum();
    let negatives: f64 = rows.iter().map(|r| r.2).sum();
    if rows.len() < 2 || positives <= 0.0 || negatives <= 0.0 {
        return None;
    }
    // Start from perfect calibration: α = 0, γ = 1.
    let (mut alpha, mut gamma) = (0.0_f64, 1.0_f64);
    for _ in 0..100 {
        let (mut g0, mut g1, mut h00, mut h01, mut h11) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(x, p, q) in &rows {
            let eta = alpha + gamma * x;
            let prob = 1.0 / (1.0 + (-eta).exp());
            let residual = p - (p + q) * prob;
            let weight = (p + q) * prob * (1.0 - prob);
            g0 += residual;
            g1 += residual * x;
            h00 += weight;
            h01 += weight * x;
            h11 += weight * x * x;
        }
        let det = h00 * h11 - h01 * h01;
        if !(det.is_finite() && det > 0.0) {
            return None;
        }
        let step0 = (h11 * g0 - h01 * g1) / det;
        let step1 = (h00 * g1 - h01 * g0) / det;
        alpha += step0;
        gamma += step1;
        if !(alpha.is_finite() && gamma.is_finite()) {
            return None;
        }
        if step0.abs().max(step1.abs()) < 1e-10 {
            return Some(gamma);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference figures written by `scripts/model_card_vectors.py` (numpy, statsmodels and a
    /// pairwise DeLong over the expanded patients).
    #[derive(Deserialize)]
    struct Vectors {
        positive: Vec<f64>,
        negative: Vec<f64>,
        tp: f64,
        fp: f64,
        tn: f64,
        fn_: f64,
        auc: f64,
        auc_low: f64,
        auc_high: f64,
        sensitivity: [f64; 3],
        specificity: [f64; 3],
        ppv: [f64; 3],
        npv: [f64; 3],
        accuracy: [f64; 3],
        mean_predicted: f64,
        observed: f64,
        slope: f64,
        ece: f64,
        table: Vec<(f64, Option<f64>, Option<f64>)>,
    }

    fn vectors() -> Vectors {
        serde_json::from_str(include_str!("vectors.json")).expect("vectors.json")
    }

    fn counts(v: &Vectors) -> PooledCounts {
        let n = v.tp + v.fp + v.tn + v.fn_;
        PooledCounts {
            n,
            loss_sum: 0.4 * n,
            confusion: GroupCounts {
                tp: v.tp,
                fp: v.fp,
                tn: v.tn,
                fn_: v.fn_,
                positive_scores: v.positive.clone(),
                negative_scores: v.negative.clone(),
            },
        }
    }

    fn close(a: f64, b: f64, tol: f64, what: &str) {
        assert!((a - b).abs() <= tol, "{what}: {a} vs reference {b}");
    }

    fn close_rate(rate: Option<Rate>, want: [f64; 3], what: &str) {
        let rate = rate.unwrap_or_else(|| panic!("{what} missing"));
        close(rate.value, want[0], 1e-12, what);
        close(rate.interval.low, want[1], 1e-9, what);
        close(rate.interval.high, want[2], 1e-9, what);
    }

    #[test]
    fn intervals_match_the_reference_delong_and_wilson_figures() {
        let v = vectors();
        let figures = Intervals::from_counts(&counts(&v));
        let auc = figures.auc.expect("auc");
        close(auc.value, v.auc, 1e-12, "auc");
        close(auc.interval.low, v.auc_low, 1e-9, "auc low");
        close(auc.interval.high, v.auc_high, 1e-9, "auc high");
        close_rate(figures.sensitivity, v.sensitivity, "sensitivity");
        close_rate(figures.specificity, v.specificity, "specificity");
        close_rate(figures.ppv, v.ppv, "ppv");
        close_rate(figures.npv, v.npv, "npv");
        close_rate(figures.accuracy, v.accuracy, "accuracy");
    }

    #[test]
    fn calibration_matches_the_reference_fit_and_table() {
        let v = vectors();
        let calibration = Calibration::from_counts(&counts(&v)).expect("calibration");
        close(calibration.mean_predicted, v.mean_predicted, 1e-12, "mean");
        close(calibration.observed, v.observed, 1e-12, "observed");
        close(
            calibration.in_the_large,
            v.observed - v.mean_predicted,
            1e-12,
            "in the large",
        );
        close(calibration.slope.expect("slope"), v.slope, 1e-7, "slope");
        close(calibration.ece.expect("ece"), v.ece, 1e-12, "ece");
        assert_eq!(calibration.table.len(), v.table.len());
        for (row, &(count, mean, observed)) in calibration.table.iter().zip(&v.table) {
            close(row.count, count, 1e-12, "bin count");
            assert_eq!(row.mean_score.is_some(), mean.is_some(), "{row:?}");
            assert_eq!(row.observed.is_some(), observed.is_some(), "{row:?}");
            if let (Some(got), Some(want)) = (row.mean_score, mean) {
                close(got, want, 1e-12, "bin mean");
            }
            if let (Some(got), Some(want)) = (row.observed, observed) {
                close(got.value, want, 1e-12, "bin observed");
            }
        }
    }

    #[test]
    fn a_perfectly_calibrated_histogram_has_slope_one_and_no_bias() {
        // In bin i of 10, the fraction of positives is the bin's centre: calibrated by design.
        let bins = 10;
        let per_bin = 1000.0;
        let positive: Vec<f64> = (0..bins)
            .map(|i| per_bin * (i as f64 + 0.5) / bins as f64)
            .collect();
        let negative: Vec<f64> = positive.iter().map(|p| per_bin - p).collect();
        close(
            calibration_slope(&positive, &negative).unwrap(),
            1.0,
            1e-9,
            "slope",
        );
        let pooled = PooledCounts {
            n: per_bin * bins as f64,
            loss_sum: 0.0,
            confusion: GroupCounts {
                tp: 0.0,
                fp: 0.0,
                tn: 0.0,
                fn_: per_bin * bins as f64,
                positive_scores: positive,
                negative_scores: negative,
            },
        };
        let calibration = Calibration::from_counts(&pooled).unwrap();
        close(calibration.in_the_large, 0.0, 1e-12, "in the large");
        close(calibration.ece.unwrap(), 0.0, 1e-12, "ece");
    }

    #[test]
    fn overconfident_predictions_have_a_slope_below_one() {
        // The true risk in each bin is pulled halfway towards ½: predictions too extreme.
        let bins = 20;
        let positive: Vec<f64> = (0..bins)
            .map(|i| {
                let p = (i as f64 + 0.5) / bins as f64;
                1000.0 * (0.5 + (p - 0.5) / 2.0)
            })
            .collect();
        let negative: Vec<f64> = positive.iter().map(|p| 1000.0 - p).collect();
        let slope = calibration_slope(&positive, &negative).unwrap();
        assert!(slope < 0.8 && slope > 0.2, "{slope}");
    }

    #[test]
    fn figures_without_enough_patients_are_absent_not_invented() {
        // One positive: DeLong's variance has no positive placement variance.
        assert_eq!(auc_with_interval(&[1.0, 0.0], &[3.0, 4.0]), None);
        // One class only: no slope, no AUC.
        assert_eq!(calibration_slope(&[0.0; 10], &[5.0; 10]), None);
        assert_eq!(auc_with_interval(&[0.0; 10], &[5.0; 10]), None);
        // A histogram that does not split into the reliability table's bins.
        let odd = PooledCounts {
            n: 6.0,
            loss_sum: 1.0,
            confusion: GroupCounts {
                tp: 1.0,
                fp: 1.0,
                tn: 2.0,
                fn_: 2.0,
                positive_scores: vec![1.0, 2.0, 0.0],
                negative_scores: vec![2.0, 1.0, 0.0],
            },
        };
        assert_eq!(Calibration::from_counts(&odd), None);
        // Noise that drives a cell below zero counts as zero, never as negative patients.
        let mut noised = odd.clone();
        noised.confusion.tp = -3.0;
        let figures = Intervals::from_counts(&noised);
        assert_eq!(figures.sensitivity.map(|r| r.value), Some(0.0));
        assert_eq!(figures.positives, 2.0);
    }

    #[test]
    fn pooled_counts_round_trip_through_json_and_eval_counts() {
        let v = vectors();
        let pooled = counts(&v);
        let json = serde_json::to_string(&pooled).unwrap();
        assert_eq!(serde_json::from_str::<PooledCounts>(&json).unwrap(), pooled);
        let eval: EvalCounts = pooled.clone().into();
        assert_eq!(PooledCounts::from(&eval), pooled);
    }
}
