//! A differentially private release of a node's statistics.
//!
//! Secure aggregation hides one hospital's statistics from the coordinator, but the pooled
//! statistics still depend on each patient: against the standard adversary, who knows every
//! other patient, exact sums give away the target's whole encoded row. A node that noises its
//! statistics ([`StatisticsNoise::apply`]) adds, before the vector leaves, an independent draw of
//! the discrete Gaussian ([`crate::discrete_gaussian`]) to every entry of its integer statistics
//! ([`crate::stats`]), scaled to what one patient can add to that entry:
//!
//! ```text
//!  entry                            one patient adds          noise
//!  n, and each level count c_l      1 (to one level a column)  N_Z(0, σ²)
//!  each present count p_k           1                          N_Z(0, σ²)
//!  each sum S_j = Σ u               u ∈ [−K/2, K/2]            N_Z(0, (σ·K/2)²)
//!  each sum of squares Q_j = Σ u²   u² ∈ [0, K²/4]             N_Z(0, (σ·K²/4)²)
//! ```
//!
//! with `K` = [`STATS_STEPS`] and `u` a value's grid point; and it
//! adds σ² to the vector's last entry, which says how much noise the counts carry (it depends on
//! the node's setting alone, not on any patient). Patients
//! are neighbours by adding or removing one (as for DP-SGD). One patient changes `n` by 1, each
//! numeric column's `S_j` by `|u| ≤ K/2` and `Q_j` by `u² ≤ K²/4` — 1 at most, each, in units of
//! its noise's σ — and one level count of each categorical column by 1 (a row counts towards
//! at most one level of a column, its missing level included), and the present count `p_k` of
//! each imputed column by at most 1 (by 1 when the patient's value is there, by 0 when it is
//! missing; a missing value adds nothing to `S_j` or `Q_j` either). The L2 sensitivity in units
//! of σ is therefore
//!
//! ```text
//!  Δ = sqrt(1 + 2·N + C + P)     N numeric columns, C categorical columns,
//!                                P imputed numeric columns ([`sensitivity`])
//! ```
//!
//! It is reached by a patient whose every numeric value is present and lies at an end of its
//! range. (A patient whose imputed value is missing moves that column's `S_j`, `Q_j` and `p_k`
//! by 0; one whose value is present moves them as above: the bound holds either way.) The
//! present counts are integers noised exactly like the level counts, so they cost what one
//! more categorical column would. The
//! discrete Gaussian's Rényi divergence between two shifts adds up over independent
//! coordinates, each `α·d²/(2σ_i²)` for a shift `d` of a coordinate noised at `σ_i`, so the
//! release satisfies `Δ²/(2σ²)`-zCDP, Rényi DP `α·Δ²/(2σ²)` at every order `α` (Canonne, Kamath
//! and Steinke, "The Discrete Gaussian for Differential Privacy", NeurIPS 2020, Theorem 14).
//! That is the RDP of the Gaussian mechanism with noise multiplier `σ/Δ`, so a ledger charges
//! it as one step at sampling rate 1 and noise multiplier
//! [`StatisticsNoise::noise_multiplier`], as it does noised evaluation counts
//! ([`crate::eval_release`]). The accounting uses the requested σ; the sampler's σ is never
//! below it.
//!
//! # What the noise does to the decoded figures
//!
//! Summed over `H` nodes that each noise at σ, the noise on `n` has standard deviation
//! `√H·σ`, on `S_j` `√H·σK/2` and on `Q_j` `√H·σK²/4`. To first order in the noise, with
//! `w = hi − lo` the column's range, `m` the centre of the range and `n` the pooled count, the
//! decoded mean and variance ([`crate::stats`]) move by
//!
//! ```text
//!  mean:      sd ≈ √H·σ · sqrt( (w/2)² + (mean − m)² ) / n
//!  variance:  sd ≈ √H·σ · sqrt( (w²/4)² + (2(mean − m)·w/2)² + (var − (mean − m)²)² ) / n
//! ```
//!
//! (the terms are the noise on `S_j`, on `Q_j` and on `n`; [`decoding_error`] computes them).
//! For an imputed column the pooled present count `p` takes the place of `n` (pass it as `n`):
//! a column that is mostly missing has noisier figures, as its mean rests on fewer values.
//! The variance is the fragile figure: its noise scales with `w²`, so a range much wider than the
//! column's spread costs accuracy. The decoding clamps what the noise pushes out of bounds
//! (the mean into the range, the variance into `[0, (w/2)²]`, counts at 0).

use rand::RngCore;

use crate::accounting::Mechanism;
use crate::discrete_gaussian::{DiscreteGaussian, DiscreteGaussianError};
use crate::schema::Schema;
use crate::stats::{STATS_STEPS, StatsError, StatsLayout};

/// A node's statistics-noise setting, ready to sample. Build it with [`StatisticsNoise::new`].
#[derive(Clone, Debug, PartialEq)]
pub struct StatisticsNoise {
    /// σ of the noise on each count, as requested.
    sigma: f64,
    /// Samples the noise of `n` and of each level count: σ.
    counts: DiscreteGaussian,
    /// Samples the noise of each sum: σ·K/2.
    sums: DiscreteGaussian,
    /// Samples the noise of each sum of squares: σ·K²/4.
    squares: DiscreteGaussian,
}

/// Why a statistics-noise setting was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsReleaseError {
    /// σ (or σ·K/2, or σ·K²/4) is outside the sampler's range.
    #[error("statistics noise: {0}")]
    Sigma(#[from] DiscreteGaussianError),
}

/// The L2 sensitivity, in units of σ, of `schema`'s statistics release:
/// `sqrt(1 + 2·N + C + P)` with `N` numeric, `C` categorical and `P` imputed numeric columns.
/// See the [module docs](self) for the derivation.
pub fn sensitivity(schema: &Schema) -> f64 {
    let layout = StatsLayout::of(schema);
    (1.0 + 2.0 * layout.numeric as f64 + layout.categorical as f64 + layout.imputed as f64).sqrt()
}

/// First-order standard deviations of the decoded mean and variance of one numeric column, when
/// `nodes` nodes each noise their statistics at `sigma` (see the [module docs](self)):
/// `range` is `(lo, hi)`, `n` the pooled count, `mean` and `variance` the column's. For choosing
/// σ and for tests.
pub fn decoding_error(
    sigma: f64,
    nodes: usize,
    range: (f64, f64),
    n: f64,
    mean: f64,
    variance: f64,
) -> DecodingError {
    let scale = (nodes as f64).sqrt() * sigma / n;
    let (half, centre) = ((range.1 - range.0) / 2.0, (range.0 + range.1) / 2.0);
    let off = mean - centre;
    DecodingError {
        mean: scale * half.hypot(off),
        variance: scale
            * (half * half)
                .hypot(2.0 * off * half)
                .hypot(variance - off * off),
    }
}

/// Standard deviations of the noise in one column's decoded figures ([`decoding_error`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodingError {
    /// Of the mean, in the column's units.
    pub mean: f64,
    /// Of the variance, in the column's units squared.
    pub variance: f64,
}

impl StatisticsNoise {
    /// Noise of standard deviation `sigma` on every count, and the scaled noise of the
    /// [module docs](self) on the sums and sums of squares.
    pub fn new(sigma: f64) -> Result<Self, StatsReleaseError> {
        let half = f64::from(STATS_STEPS) / 2.0;
        Ok(Self {
            sigma,
            counts: DiscreteGaussian::new(sigma)?,
            sums: DiscreteGaussian::new(sigma * half)?,
            squares: DiscreteGaussian::new(sigma * half * half)?,
        })
    }

    /// σ of the noise on each count.
    pub fn sigma(&self) -> f64 {
        self.sigma
    }

    /// The Gaussian-mechanism noise multiplier the release is charged at: `σ / Δ` with
    /// `Δ = sensitivity(schema)`.
    pub fn noise_multiplier(&self, schema: &Schema) -> f64 {
        self.sigma / sensitivity(schema)
    }

    /// The release as the accountants compose it ([`crate::accounting`]): independent discrete
    /// Gaussian draws on `1 + C + P` counts moved by at most 1 (`n`, one level count per
    /// categorical column and the present count of each imputed column), on `N` sums moved by at most `K/2` and on `N` sums of squares moved
    /// by at most `K²/4`, each at its own σ. Its RDP is the Gaussian charge at
    /// [`Self::noise_multiplier`]; a PLD accountant composes the discrete mechanisms exactly.
    pub fn mechanisms(&self, schema: &Schema) -> Vec<Mechanism> {
        let layout = StatsLayout::of(schema);
        let half = u64::from(STATS_STEPS) / 2;
        let numeric = layout.numeric as u64;
        vec![
            Mechanism::DiscreteGaussian {
                sigma: self.sigma,
                sensitivity: 1,
                cells: 1 + layout.categorical as u64 + layout.imputed as u64,
            },
            Mechanism::DiscreteGaussian {
                sigma: self.sigma * half as f64,
                sensitivity: half,
                cells: numeric,
            },
            Mechanism::DiscreteGaussian {
                sigma: self.sigma * (half * half) as f64,
                sensitivity: half * half,
                cells: numeric,
            },
        ]
    }

    /// A count of `n` examples released alone, with the counts' noise: what a node that missed
    /// the statistics round releases once, as its update weight. Give it a cryptographically
    /// secure `rng`.
    pub fn noised_count<R: RngCore + ?Sized>(&self, n: u64, rng: &mut R) -> f64 {
        n as f64 + self.counts.sample(rng) as f64
    }

    /// The release of [`Self::noised_count`] as the accountants compose it: one discrete
    /// Gaussian count moved by at most 1.
    pub fn count_mechanisms(&self) -> Vec<Mechanism> {
        vec![Mechanism::DiscreteGaussian {
            sigma: self.sigma,
            sensitivity: 1,
            cells: 1,
        }]
    }

    /// Noises `values`, a node's statistics vector for `schema`
    /// ([`stats_contribution`](crate::stats::stats_contribution)), in place: a discrete Gaussian
    /// draw on every count and sum, scaled as in the [module docs](self), and σ² added to the
    /// noise-variance entry. Give it a cryptographically secure `rng`. A vector of another length
    /// is refused and left as it was.
    pub fn apply<R: RngCore + ?Sized>(
        &self,
        schema: &Schema,
        values: &mut [f64],
        rng: &mut R,
    ) -> Result<(), StatsError> {
        let layout = StatsLayout::of(schema);
        if values.len() != layout.len() {
            return Err(StatsError::LengthMismatch {
                expected: layout.len(),
                found: values.len(),
            });
        }
        values[StatsLayout::COUNT] += self.counts.sample(rng) as f64;
        for v in &mut values[layout.sums()] {
            *v += self.sums.sample(rng) as f64;
        }
        for v in &mut values[layout.squares()] {
            *v += self.squares.sample(rng) as f64;
        }
        for v in &mut values[layout.level_counts()] {
            *v += self.counts.sample(rng) as f64;
        }
        for v in &mut values[layout.present_counts()] {
            *v += self.counts.sample(rng) as f64;
        }
        values[layout.noise()] += self.sigma * self.sigma;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::stats::{FederatedSummary, stats_contribution};

    const SCHEMA: &str = r#"
[label]
column = "y"
positive = ["1"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [20, 90]
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
[[columns]]
name = "chol"
type = "numeric"
range = [100, 400]
[[columns]]
name = "cp"
type = "categorical"
levels = ["a", "b", "c"]
"#;

    /// The statistics of `rows` (age, sex, chol, cp), in units of each entry's noise σ.
    fn in_noise_units(schema: &Schema, rows: &[(f32, usize, f32, usize)]) -> Vec<f64> {
        let features: Vec<f32> = rows
            .iter()
            .flat_map(|&(age, sex, chol, cp)| {
                let mut row = vec![age, 0.0, 0.0, chol, 0.0, 0.0, 0.0];
                row[1 + sex] = 1.0;
                row[4 + cp] = 1.0;
                row
            })
            .collect();
        let mut values = stats_contribution(schema, &features).unwrap().values;
        let layout = StatsLayout::of(schema);
        let half = f64::from(STATS_STEPS) / 2.0;
        values[layout.sums()].iter_mut().for_each(|v| *v /= half);
        values[layout.squares()]
            .iter_mut()
            .for_each(|v| *v /= half * half);
        values
    }

    fn distance(a: &[f64], b: &[f64]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f64>()
            .sqrt()
    }

    #[test]
    fn one_patient_moves_the_release_by_at_most_the_sensitivity() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let delta = sensitivity(&schema);
        // n, two sums, two sums of squares, one level of each of two categorical columns.
        assert_eq!(delta, 7f64.sqrt());
        let base = [
            (45.0, 0, 180.0, 1),
            (70.0, 1, 260.0, 2),
            (33.0, 1, 140.0, 0),
        ];
        let before = in_noise_units(&schema, &base);
        let extra = [
            // Inside both ranges.
            (50.0, 0, 200.0, 0),
            // At the midpoint of both: the sums do not move.
            (55.0, 1, 250.0, 1),
            // Far outside both ranges: clipped to their ends, the bound.
            (5.0, 1, 1000.0, 2),
            (90.0, 0, 100.0, 0),
        ];
        let mut largest: f64 = 0.0;
        for patient in extra {
            let mut rows = base.to_vec();
            rows.push(patient);
            let d = distance(&before, &in_noise_units(&schema, &rows));
            assert!(d <= delta + 1e-12, "{patient:?}: {d} > {delta}");
            largest = largest.max(d);
        }
        // The bound is tight: a patient at the ends of every range reaches it.
        assert!((largest - delta).abs() < 1e-12, "{largest}");
    }

    #[test]
    fn noise_is_integer_centred_and_scaled_per_entry() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let layout = StatsLayout::of(&schema);
        let sigma = 3.0;
        let noise = StatisticsNoise::new(sigma).unwrap();
        let exact = vec![0.0; layout.len()];
        let mut rng = ChaCha20Rng::seed_from_u64(13);
        let draws = 4000;
        let half = f64::from(STATS_STEPS) / 2.0;
        // Per entry: the sum of the draws and of their squares, in units of the entry's σ.
        // Every entry but the last, which says σ².
        let noised = layout.noise();
        let scale: Vec<f64> = (0..noised)
            .map(|i| {
                if layout.sums().contains(&i) {
                    sigma * half
                } else if layout.squares().contains(&i) {
                    sigma * half * half
                } else {
                    sigma
                }
            })
            .collect();
        let mut moments = vec![(0.0, 0.0); noised];
        for _ in 0..draws {
            let mut values = exact.clone();
            noise.apply(&schema, &mut values, &mut rng).unwrap();
            assert_eq!(values[noised], sigma * sigma);
            for ((v, s), m) in values.iter().zip(&scale).zip(&mut moments) {
                assert_eq!(v.fract(), 0.0);
                m.0 += v / s;
                m.1 += (v / s).powi(2);
            }
        }
        let d = f64::from(draws);
        for (i, (sum, squares)) in moments.iter().enumerate() {
            let mean = sum / d;
            let sd = (squares / d - mean * mean).sqrt();
            // In units of σ: a mean within 5 standard errors of 0, a spread within 6 %.
            assert!(mean.abs() < 5.0 / d.sqrt(), "entry {i}: mean {mean}");
            assert!((sd - 1.0).abs() < 0.06, "entry {i}: sd {sd}");
        }
        let mut short = vec![0.0; 3];
        assert_eq!(
            noise.apply(&schema, &mut short, &mut rng),
            Err(StatsError::LengthMismatch {
                expected: layout.len(),
                found: 3
            })
        );
        assert_eq!(short, [0.0; 3]);
    }

    #[test]
    fn noised_sums_decode_within_the_error_derived_from_sigma() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let sigma = 2.0;
        let noise = StatisticsNoise::new(sigma).unwrap();
        // Three hospitals of 400 patients; ages spread over [30, 80), chol over [150, 300).
        let hospitals: Vec<Vec<(f32, usize, f32, usize)>> = (0..3)
            .map(|h| {
                (0..400)
                    .map(|i| {
                        let t = ((i * 37 + h * 11) % 400) as f32 / 400.0;
                        (30.0 + 50.0 * t, i % 2, 150.0 + 150.0 * (1.0 - t), i % 3)
                    })
                    .collect()
            })
            .collect();
        let features = |rows: &[(f32, usize, f32, usize)]| -> Vec<f32> {
            rows.iter()
                .flat_map(|&(age, sex, chol, cp)| {
                    let mut row = vec![age, 0.0, 0.0, chol, 0.0, 0.0, 0.0];
                    row[1 + sex] = 1.0;
                    row[4 + cp] = 1.0;
                    row
                })
                .collect()
        };
        let exact: Vec<Vec<f64>> = hospitals
            .iter()
            .map(|rows| stats_contribution(&schema, &features(rows)).unwrap().values)
            .collect();
        let sum = |parts: &[Vec<f64>]| -> Vec<f64> {
            (0..parts[0].len())
                .map(|i| parts.iter().map(|p| p[i]).sum())
                .collect()
        };
        let truth = FederatedSummary::from_summed_stats(&schema, &sum(&exact)).unwrap();
        let n = truth.n as f64;
        let ranges = [(20.0, 90.0), (100.0, 400.0)];
        let errors: Vec<DecodingError> = truth
            .numeric
            .iter()
            .zip(ranges)
            .map(|(c, range)| decoding_error(sigma, 3, range, n, c.mean, c.std.powi(2)))
            .collect();
        let mut rng = ChaCha20Rng::seed_from_u64(21);
        let trials = 300;
        let mut worst = [0.0f64; 2];
        let mut squared = [[0.0f64; 2]; 2];
        for _ in 0..trials {
            let noised: Vec<Vec<f64>> = exact
                .iter()
                .map(|values| {
                    let mut values = values.clone();
                    noise.apply(&schema, &mut values, &mut rng).unwrap();
                    values
                })
                .collect();
            let decoded = FederatedSummary::from_summed_stats(&schema, &sum(&noised)).unwrap();
            for (j, ((d, t), e)) in decoded
                .numeric
                .iter()
                .zip(&truth.numeric)
                .zip(&errors)
                .enumerate()
            {
                let mean_z = (d.mean - t.mean) / e.mean;
                let var_z = (d.std.powi(2) - t.std.powi(2)) / e.variance;
                worst[j] = worst[j].max(mean_z.abs()).max(var_z.abs());
                squared[j][0] += mean_z * mean_z;
                squared[j][1] += var_z * var_z;
            }
            // Three nodes' noise on each count: σ√3, as the summary says.
            assert!((decoded.count_noise - sigma * 3f64.sqrt()).abs() < 1e-12);
            assert_eq!(truth.count_noise, 0.0);
            // Counts: within 5σ·√3 of the truth, never negative.
            for (d, t) in decoded.categorical.iter().zip(&truth.categorical) {
                for (a, b) in d.counts.iter().zip(&t.counts) {
                    assert!((*a as f64 - *b as f64).abs() <= 5.0 * sigma * 3f64.sqrt());
                }
            }
        }
        for j in 0..2 {
            // No draw beyond 5 derived standard deviations, and the derived standard deviation
            // is the observed one to within 15 %.
            assert!(worst[j] < 5.0, "column {j}: {worst:?}");
            for (what, s) in ["mean", "variance"].iter().zip(squared[j]) {
                let rms = (s / f64::from(trials)).sqrt();
                assert!((rms - 1.0).abs() < 0.15, "column {j} {what}: rms {rms}");
            }
        }
    }

    #[test]
    fn the_mechanisms_cost_the_gaussian_charge_under_rdp_and_less_under_pld() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let noise = StatisticsNoise::new(8.0).unwrap();
        crate::accounting::assert_charged_as_gaussian(
            &noise.mechanisms(&schema),
            noise.noise_multiplier(&schema),
        );
    }

    #[test]
    fn noise_multiplier_divides_sigma_by_the_sensitivity_and_settings_are_checked() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let noise = StatisticsNoise::new(14.0).unwrap();
        assert_eq!(noise.sigma(), 14.0);
        assert_eq!(noise.noise_multiplier(&schema), 14.0 / 7f64.sqrt());
        for sigma in [0.0, -1.0, f64::NAN] {
            assert!(matches!(
                StatisticsNoise::new(sigma),
                Err(StatsReleaseError::Sigma(_))
            ));
        }
        // σ·K²/4 must fit the sampler too: 1000 · 16384 does not.
        assert!(StatisticsNoise::new(1000.0).is_err());
        assert!(StatisticsNoise::new(600.0).is_ok());
    }

    /// `SCHEMA` with chol imputed and cp's missing cells a level: features `age, sex=F, sex=M,
    /// chol, chol (missing), cp=a, cp=b, cp=c, cp=(missing)`.
    fn missing_schema() -> Schema {
        let text = SCHEMA
            .replace(
                "range = [100, 400]",
                "range = [100, 400]\nmissing = \"impute\"",
            )
            .replace(
                "levels = [\"a\", \"b\", \"c\"]",
                "levels = [\"a\", \"b\", \"c\"]\nmissing = \"level\"",
            );
        Schema::parse(&text).unwrap()
    }

    /// The statistics of rows (age, sex, chol or missing, cp with 3 = missing) of
    /// [`missing_schema`], in units of each entry's noise σ.
    fn missing_in_noise_units(rows: &[(f32, usize, Option<f32>, usize)]) -> Vec<f64> {
        let schema = missing_schema();
        let features: Vec<f32> = rows
            .iter()
            .flat_map(|&(age, sex, chol, cp)| {
                let mut row = vec![age, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
                row[1 + sex] = 1.0;
                match chol {
                    Some(x) => row[3] = x,
                    None => (row[3], row[4]) = (f32::NAN, 1.0),
                }
                row[5 + cp] = 1.0;
                row
            })
            .collect();
        let mut values = stats_contribution(&schema, &features).unwrap().values;
        let layout = StatsLayout::of(&schema);
        let half = f64::from(STATS_STEPS) / 2.0;
        values[layout.sums()].iter_mut().for_each(|v| *v /= half);
        values[layout.squares()]
            .iter_mut()
            .for_each(|v| *v /= half * half);
        values
    }

    #[test]
    fn the_present_count_of_an_imputed_column_adds_one_to_the_sensitivity() {
        let schema = missing_schema();
        let delta = sensitivity(&schema);
        // n, two sums, two sums of squares, one level of each of two categorical columns, and
        // chol's present count.
        assert_eq!(delta, 8f64.sqrt());
        let base = [
            (45.0, 0, Some(180.0), 1),
            (70.0, 1, None, 3),
            (33.0, 1, Some(140.0), 0),
        ];
        let before = missing_in_noise_units(&base);
        let mut largest: f64 = 0.0;
        for patient in [
            (50.0, 0, Some(200.0), 0),
            (55.0, 1, None, 3),
            (5.0, 1, None, 2),
            // Present and at the ends of both ranges: the bound.
            (90.0, 0, Some(100.0), 0),
            (20.0, 1, Some(1000.0), 3),
        ] {
            let mut rows = base.to_vec();
            rows.push(patient);
            let d = distance(&before, &missing_in_noise_units(&rows));
            assert!(d <= delta + 1e-12, "{patient:?}: {d} > {delta}");
            largest = largest.max(d);
        }
        assert!((largest - delta).abs() < 1e-12, "{largest}");
        // The present count is noised like a count, and charged as one.
        let noise = StatisticsNoise::new(8.0).unwrap();
        let mut values = missing_in_noise_units(&base);
        let exact = values.clone();
        let layout = StatsLayout::of(&schema);
        noise
            .apply(&schema, &mut values, &mut ChaCha20Rng::seed_from_u64(3))
            .unwrap();
        let p = layout.present_counts().start;
        assert_ne!(values[p], exact[p], "the present count is noised");
        assert_eq!(values[p].fract(), 0.0, "by an integer");
        crate::accounting::assert_charged_as_gaussian(
            &noise.mechanisms(&schema),
            noise.noise_multiplier(&schema),
        );
    }
}
