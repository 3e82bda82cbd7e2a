//! A differentially private release of a node's evaluation counts.
//!
//! Secure aggregation hides one hospital's counts from the coordinator, but the pooled counts
//! still depend on each patient. A node that wants a guarantee for its held-out patients too
//! turns on evaluation noise: before its round vector leaves, [`EvaluationNoise::apply`] adds an
//! independent draw of the discrete Gaussian `N_Z(0, σ²)` ([`crate::discrete_gaussian`]) to
//! every count cell of the evaluation block — the overall `n`, confusion matrix and score
//! histograms, and every audit group's confusion matrix and histograms — and replaces the real
//! `loss_sum` with a clipped, quantised and noised one:
//!
//! ```text
//!  loss units  L = Σ_i round(min(loss_i, B) · K / B)      each patient adds at most K
//!  released    (L + N_Z(0, (σK)²)) · B / K                 in loss units again
//! ```
//!
//! with `B` the node's `loss_clip` and `K` = [`LOSS_STEPS`]. Patients are neighbours by adding
//! or removing one (as for DP-SGD). One patient changes, by 1 each: `n`, one confusion cell and
//! one histogram bin overall, and one confusion cell and one histogram bin of at most one group
//! per audited attribute (sensitive attributes and intersections alike); and `L` by at most `K`,
//! which the loss noise's scale `σK` turns into 1 in units of its σ. The L2 sensitivity in units
//! of σ is therefore
//!
//! ```text
//!  Δ = sqrt(3 + 1 + 2·A)     A = number of audited attributes ([`sensitivity`])
//! ```
//!
//! It does not depend on the histograms' bin counts: a patient moves one bin of one histogram
//! whatever the resolution. The bin counts set only how many cells are noised — `4 + 2·1000`
//! ([`EVAL_SCORE_BINS`](crate::evaluation::EVAL_SCORE_BINS)) for the pooled evaluation and
//! `4 + 2·100` ([`GROUP_SCORE_BINS`](crate::fairness::GROUP_SCORE_BINS)) per audit group — and so
//! how much noise a histogram-derived figure such as a group's AUC or ECE collects.
//!
//! The release, one use of the multivariate discrete Gaussian mechanism, satisfies
//! `Δ²/(2σ²)`-zCDP, i.e. Rényi DP `α·Δ²/(2σ²)` at every order `α` (Canonne, Kamath and Steinke,
//! "The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Theorem 14). That is the RDP
//! of the Gaussian mechanism with noise multiplier `σ/Δ`, so a ledger charges it as one step
//! at sampling rate 1 and noise multiplier [`EvaluationNoise::noise_multiplier`]. The
//! accounting uses the requested σ; the sampler's σ is never below it.
//!
//! Noised counts can be negative; the coordinator reads a negative pooled count as 0 (see
//! [`crate::fairness::GroupCounts::clamped`]), which is post-processing.

use rand::RngCore;

use crate::accounting::Mechanism;
use crate::discrete_gaussian::{DiscreteGaussian, DiscreteGaussianError};
use crate::evaluation::{EvalCounts, MAX_EXAMPLE_LOSS, example_loss};
use crate::fairness::GroupCounts;

/// Number of steps the loss of one example is quantised to: a loss in `[0, B]` counts as
/// `round(loss · K / B)` units of `B / K`.
pub const LOSS_STEPS: u32 = 256;

/// A node's evaluation-noise setting, ready to sample. Build it with [`EvaluationNoise::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct EvaluationNoise {
    /// σ of the noise on each count, as requested.
    sigma: f64,
    /// The per-example loss bound B.
    loss_clip: f64,
    /// Samples the noise of each count.
    counts: DiscreteGaussian,
    /// Samples the noise of the loss units, σ·K.
    loss: DiscreteGaussian,
}

/// Why an evaluation-noise setting was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalReleaseError {
    /// σ (or σ·[`LOSS_STEPS`]) is outside the sampler's range.
    #[error("evaluation noise: {0}")]
    Sigma(#[from] DiscreteGaussianError),
    /// The loss bound is not in `(0, MAX_EXAMPLE_LOSS]`.
    #[error("evaluation loss clip {0} is not in (0, {MAX_EXAMPLE_LOSS}]")]
    LossClip(f64),
}

/// The L2 sensitivity, in units of σ, of a node's evaluation release when `audited_attributes`
/// attributes are audited (the schema's sensitive attributes plus its intersections):
/// `sqrt(4 + 2 · audited_attributes)`. See the [module docs](self) for the derivation.
pub fn sensitivity(audited_attributes: usize) -> f64 {
    (4.0 + 2.0 * audited_attributes as f64).sqrt()
}

impl EvaluationNoise {
    /// Noise of standard deviation `sigma` on every count, with each example's loss clipped
    /// to `loss_clip` (use [`MAX_EXAMPLE_LOSS`] to clip nothing).
    pub fn new(sigma: f64, loss_clip: f64) -> Result<Self, EvalReleaseError> {
        if !(loss_clip > 0.0 && loss_clip <= MAX_EXAMPLE_LOSS) {
            return Err(EvalReleaseError::LossClip(loss_clip));
        }
        let counts = DiscreteGaussian::new(sigma)?;
        let loss = DiscreteGaussian::new(sigma * f64::from(LOSS_STEPS))?;
        Ok(Self {
            sigma,
            loss_clip,
            counts,
            loss,
        })
    }

    /// σ of the noise on each count.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The per-example loss bound B.
    pub fn loss_clip(&self) -> f64 {
        self.loss_clip
    }

    /// The Gaussian-mechanism noise multiplier the release is charged at: `σ / Δ` with
    /// `Δ = sensitivity(audited_attributes)`.
    pub fn noise_multiplier(&self, audited_attributes: usize) -> f64 {
        self.sigma / sensitivity(audited_attributes)
    }

    /// The release as the accountants compose it ([`crate::accounting`]): independent discrete
    /// Gaussian draws on `3 + 2A` counts moved by at most 1 (`n`, a confusion cell and a
    /// histogram bin overall, and a confusion cell and a histogram bin of one group per audited
    /// attribute) and on the loss units, moved by at most `K` at noise `σK`. Its RDP is the
    /// Gaussian charge at [`Self::noise_multiplier`]; a PLD accountant composes the discrete
    /// mechanisms exactly.
    pub fn mechanisms(&self, audited_attributes: usize) -> Vec<Mechanism> {
        vec![
            Mechanism::DiscreteGaussian {
                sigma: self.sigma,
                sensitivity: 1,
                cells: 3 + 2 * audited_attributes as u64,
            },
            Mechanism::DiscreteGaussian {
                sigma: self.sigma * f64::from(LOSS_STEPS),
                sensitivity: u64::from(LOSS_STEPS),
                cells: 1,
            },
        ]
    }

    /// Noises counts that were computed from `scores` and `labels` — `eval` from all of them,
    /// `groups` from each audit group's rows — in place: a discrete Gaussian draw on every
    /// count cell, and `loss_sum` replaced by the clipped, quantised, noised loss of the
    /// [module docs](self). Give it a cryptographically secure `rng`.
    pub fn apply<R: RngCore + ?Sized>(
        &self,
        scores: &[f32],
        labels: &[f32],
        eval: &mut EvalCounts,
        groups: &mut [GroupCounts],
        rng: &mut R,
    ) {
        let units: u64 = scores
            .iter()
            .zip(labels)
            .filter_map(|(&score, &label)| example_loss(score, label))
            .map(|loss| loss_units(loss, self.loss_clip))
            .sum();
        let noised_units = units as f64 + self.loss.sample(rng) as f64;
        eval.loss_sum = noised_units * self.loss_clip / f64::from(LOSS_STEPS);
        eval.n += self.counts.sample(rng) as f64;
        self.noise_group(&mut eval.confusion, rng);
        for group in groups {
            self.noise_group(group, rng);
        }
    }

    /// Adds a draw to every cell of one confusion matrix and its histograms.
    fn noise_group<R: RngCore + ?Sized>(&self, counts: &mut GroupCounts, rng: &mut R) {
        let cells = [
            &mut counts.tp,
            &mut counts.fp,
            &mut counts.tn,
            &mut counts.fn_,
        ];
        for cell in cells {
            *cell += self.counts.sample(rng) as f64;
        }
        for bin in counts
            .positive_scores
            .iter_mut()
            .chain(counts.negative_scores.iter_mut())
        {
            *bin += self.counts.sample(rng) as f64;
        }
    }
}

/// One example's loss in units of `clip / LOSS_STEPS`, clipped: an integer in `[0, LOSS_STEPS]`.
fn loss_units(loss: f64, clip: f64) -> u64 {
    (loss.clamp(0.0, clip) / clip * f64::from(LOSS_STEPS)).round() as u64
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::schema::Schema;

    const SCHEMA: &str = r#"
sensitive = ["sex", "age"]
intersections = [["sex", "age"]]
[label]
column = "y"
positive = ["1"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [0, 120]
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
[bands]
age = [50]
"#;

    /// The release before noise, as the node computes it, in units of σ of each coordinate:
    /// `[n, L / K, overall confusion and 1000-bin histograms, every group's with 100 bins]`.
    fn release(schema: &Schema, rows: &[(f32, f32, [&str; 2])], clip: f64) -> Vec<f64> {
        let scores: Vec<f32> = rows.iter().map(|r| r.0).collect();
        let labels: Vec<f32> = rows.iter().map(|r| r.1).collect();
        let eval = EvalCounts::from_predictions(&scores, &labels);
        let mut groups = vec![GroupCounts::zero(); schema.audit_groups().len()];
        for &(score, label, cells) in rows {
            for g in schema.audit_groups_of(&cells) {
                groups[g].add(&GroupCounts::from_predictions(&[score], &[label]));
            }
        }
        let units: u64 = rows
            .iter()
            .filter_map(|&(s, l, _)| example_loss(s, l))
            .map(|loss| loss_units(loss, clip))
            .sum();
        let mut out = vec![eval.n, units as f64 / f64::from(LOSS_STEPS)];
        eval.confusion.write_vector(&mut out);
        for group in &groups {
            group.write_vector(&mut out);
        }
        out
    }

    #[test]
    fn the_mechanisms_cost_the_gaussian_charge_under_rdp_and_less_under_pld() {
        let noise = EvaluationNoise::new(5.0, MAX_EXAMPLE_LOSS).unwrap();
        crate::accounting::assert_charged_as_gaussian(
            &noise.mechanisms(3),
            noise.noise_multiplier(3),
        );
    }

    #[test]
    fn one_patient_moves_the_release_by_at_most_the_sensitivity() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let attributes = schema.audit_attributes().len();
        assert_eq!(attributes, 3);
        let delta = sensitivity(attributes);
        assert_eq!(delta, 10f64.sqrt());
        let base: Vec<(f32, f32, [&str; 2])> = vec![
            (0.2, 0.0, ["F", "40"]),
            (0.9, 1.0, ["M", "70"]),
            (0.6, 0.0, ["M", "30"]),
        ];
        let clip = 4.0;
        let before = release(&schema, &base, clip);
        // The groups' histograms are coarser than the pooled ones; Δ is the same.
        let groups = schema.audit_groups().len();
        assert_eq!(before.len(), 2 + 2004 + groups * 204);
        let extra: [(f32, f32, [&str; 2]); 5] = [
            // A confident wrong prediction: its loss is clipped to the full K units.
            (0.999, 0.0, ["F", "55"]),
            (0.3, 1.0, ["M", "20"]),
            // Outside every sex group: it touches fewer cells.
            (0.5, 1.0, ["X", "20"]),
            (0.5, 0.0, ["F", "n/a"]),
            // Not a probability: not counted at all.
            (f32::NAN, 1.0, ["F", "20"]),
        ];
        let mut largest: f64 = 0.0;
        for patient in extra {
            let mut rows = base.clone();
            rows.push(patient);
            let after = release(&schema, &rows, clip);
            let distance = before
                .iter()
                .zip(&after)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f64>()
                .sqrt();
            assert!(
                distance <= delta + 1e-12,
                "{patient:?}: {distance} > {delta}"
            );
            largest = largest.max(distance);
        }
        // The bound is tight: a patient in every group with a clipped loss reaches it.
        assert!((largest - delta).abs() < 1e-12, "{largest}");
    }

    #[test]
    fn noise_is_integer_centred_and_of_the_requested_scale() {
        let scores: Vec<f32> = (0..200).map(|i| (i as f32 + 0.5) / 200.0).collect();
        let labels: Vec<f32> = (0..200).map(|i| f32::from(u8::from(i % 3 == 0))).collect();
        let exact = EvalCounts::from_predictions(&scores, &labels);
        let exact_groups = vec![GroupCounts::from_predictions(&scores[..50], &labels[..50]); 2];
        let sigma = 4.0;
        let noise = EvaluationNoise::new(sigma, MAX_EXAMPLE_LOSS).unwrap();
        let (mut eval, mut groups) = (exact.clone(), exact_groups.clone());
        noise.apply(
            &scores,
            &labels,
            &mut eval,
            &mut groups,
            &mut ChaCha20Rng::seed_from_u64(8),
        );
        let (mut before, mut after) = (Vec::new(), Vec::new());
        exact.confusion.write_vector(&mut before);
        eval.confusion.write_vector(&mut after);
        for (a, b) in exact_groups.iter().zip(&groups) {
            a.write_vector(&mut before);
            b.write_vector(&mut after);
        }
        before.push(exact.n);
        after.push(eval.n);
        let diffs: Vec<f64> = before.iter().zip(&after).map(|(a, b)| b - a).collect();
        assert!(
            diffs
                .iter()
                .all(|d| d.fract() == 0.0 && d.abs() <= 8.0 * sigma)
        );
        let m = diffs.len() as f64;
        let mean = diffs.iter().sum::<f64>() / m;
        let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / m).sqrt();
        assert!(mean.abs() < 5.0 * sigma / m.sqrt(), "{mean}");
        assert!((sd - sigma).abs() < 0.1 * sigma, "{sd}");
        // The loss is in quantisation steps of B / K, and near the exact loss: its noise has
        // σ·B in loss units, and quantisation moves each example by at most B / 2K.
        let step = MAX_EXAMPLE_LOSS / f64::from(LOSS_STEPS);
        let steps = eval.loss_sum / step;
        assert!((steps - steps.round()).abs() < 1e-6, "{steps}");
        let tolerance = 6.0 * sigma * MAX_EXAMPLE_LOSS + 200.0 * step / 2.0;
        assert!((eval.loss_sum - exact.loss_sum).abs() < tolerance);
    }

    #[test]
    fn noise_multiplier_divides_sigma_by_the_sensitivity_and_settings_are_checked() {
        let noise = EvaluationNoise::new(6.0, 2.0).unwrap();
        assert_eq!(noise.noise_multiplier(2), 6.0 / 8f64.sqrt());
        assert_eq!((noise.sigma(), noise.loss_clip()), (6.0, 2.0));
        for clip in [0.0, -1.0, f64::NAN, MAX_EXAMPLE_LOSS * 1.01] {
            assert!(matches!(
                EvaluationNoise::new(1.0, clip),
                Err(EvalReleaseError::LossClip(_))
            ));
        }
        assert!(matches!(
            EvaluationNoise::new(0.0, 1.0),
            Err(EvalReleaseError::Sigma(_))
        ));
        // σ·K must fit the sampler too.
        assert!(EvaluationNoise::new(1e6, 1.0).is_err());
    }
}
