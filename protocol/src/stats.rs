//! Federated feature statistics: how the consortium learns the means and spreads it standardises
//! features with, from sums alone.
//!
//! ```text
//!  node A: stats_contribution(rows_A) ─┐
//!  node B: stats_contribution(rows_B) ─┼─▶ element-wise SUM ─▶ Standardization::from_summed_stats
//!  node C: stats_contribution(rows_C) ─┘   (secure aggregation)  FederatedSummary::from_summed_stats
//! ```
//!
//! A contribution is `[n, sum_0 … sum_{F-1}, sumsq_0 … sumsq_{F-1}]` over the `F` encoded
//! features. The coordinator only ever needs the element-wise sum of the contributions, so secure
//! aggregation can hide each one. The count of a categorical level is the sum of its one-hot
//! feature.
//!
//! Variances come from `E[x²] − E[x]²` in `f64`, the only form a plain sum allows; a spread that
//! is lost in rounding against the feature's magnitude is treated as a constant feature.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::schema::{ColumnKind, Schema};

/// Computes one node's statistics contribution from its encoded features (row-major,
/// `num_features` per row): `[n, sum_0 … sum_{F-1}, sumsq_0 … sumsq_{F-1}]`.
///
/// The result has `1 + 2 × num_features` entries ([`Schema::stats_len`]).
pub fn stats_contribution(features: &[f32], num_features: usize) -> Result<Vec<f64>, StatsError> {
    if num_features == 0 || !features.len().is_multiple_of(num_features) {
        return Err(StatsError::RaggedFeatures {
            len: features.len(),
            num_features,
        });
    }
    let mut out = vec![0.0; 1 + 2 * num_features];
    let (n, rest) = out.split_at_mut(1);
    let (sums, sumsqs) = rest.split_at_mut(num_features);
    for row in features.chunks_exact(num_features) {
        n[0] += 1.0;
        for ((sum, sumsq), &x) in sums.iter_mut().zip(sumsqs.iter_mut()).zip(row) {
            let x = f64::from(x);
            *sum += x;
            *sumsq += x * x;
        }
    }
    Ok(out)
}

/// The smallest standard deviation [`Standardization::validate`] accepts.
///
/// Dividing by less would blow a feature's ordinary spread up by more than 10¹², to the edge of
/// `f32` (about 3·10³⁸) for values of a few units; no encoded clinical feature has a spread this
/// small, and [`Standardization::from_summed_stats`] gives a feature whose spread is below it a
/// std of 1, as it does a constant one.
pub const MIN_STD: f32 = 1e-12;

/// Per-feature shift and scale that make numeric features zero-mean and unit-variance across the
/// whole consortium. One-hot features keep mean 0 and std 1, so they are left untouched.
///
/// A node receives it from the coordinator, so it checks it with [`Self::validate`] before
/// applying it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardization {
    /// Value subtracted from each feature.
    pub mean: Vec<f32>,
    /// Value each shifted feature is divided by; finite and at least [`MIN_STD`] once validated.
    pub std: Vec<f32>,
}

/// What is wrong with one feature's entry in a [`Standardization`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StandardizationFault {
    /// The mean is NaN or infinite.
    #[error("the mean is not finite")]
    NonFiniteMean,
    /// The standard deviation is NaN or infinite.
    #[error("the standard deviation is not finite")]
    NonFiniteStd,
    /// The standard deviation is zero or negative.
    #[error("the standard deviation is not positive")]
    NonPositiveStd,
    /// The standard deviation is positive but below [`MIN_STD`].
    #[error("the standard deviation is below the floor of {MIN_STD:e}")]
    StdBelowFloor,
}

/// The consortium-wide description of the data that the coordinator logs: no hospital's own
/// figures, only the pooled ones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FederatedSummary {
    /// Number of examples over all contributing nodes.
    pub n: u64,
    /// Mean and population standard deviation of each numeric column, in schema order.
    pub numeric: Vec<NumericSummary>,
    /// Count of each level of each categorical column, in schema order.
    pub categorical: Vec<CategoricalSummary>,
}

/// Pooled mean and spread of one numeric column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericSummary {
    /// The column's name.
    pub column: String,
    /// Mean over all examples.
    pub mean: f64,
    /// Population standard deviation over all examples (0 for a constant column).
    pub std: f64,
}

/// Pooled level counts of one categorical column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoricalSummary {
    /// The column's name.
    pub column: String,
    /// The levels, in schema order.
    pub levels: Vec<String>,
    /// Number of examples with each level, parallel to `levels`.
    pub counts: Vec<u64>,
}

/// Why statistics could not be computed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// The feature buffer is not a whole number of rows of a non-zero width.
    #[error("{len} feature values do not form rows of {num_features} features")]
    RaggedFeatures {
        /// Number of values in the buffer.
        len: usize,
        /// The row width asked for.
        num_features: usize,
    },
    /// The summed vector's length does not match the schema.
    #[error("summed statistics have {found} entries, the schema needs {expected}")]
    LengthMismatch {
        /// `schema.stats_len()`.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// The summed count of examples is zero (or not positive).
    #[error("summed statistics count {n} examples; at least one is needed")]
    NoExamples {
        /// The summed count.
        n: f64,
    },
    /// An entry of the summed vector is NaN or infinite.
    #[error("summed statistics entry {index} is not a finite number")]
    NonFinite {
        /// Position in the vector.
        index: usize,
    },
    /// A standardisation does not have one mean and one standard deviation per encoded feature.
    #[error(
        "standardisation has {means} means and {stds} standard deviations, \
         the schema encodes {expected} features"
    )]
    StandardizationWidth {
        /// `schema.num_features()`.
        expected: usize,
        /// Means received.
        means: usize,
        /// Standard deviations received.
        stds: usize,
    },
    /// One feature's mean or standard deviation in a standardisation is unusable.
    #[error("standardisation of encoded feature {feature}: {fault}")]
    BadStandardization {
        /// Position of the feature among the encoded features.
        feature: usize,
        /// What is wrong with it.
        fault: StandardizationFault,
    },
}

impl Standardization {
    /// Derives the standardisation from the element-wise sum of all nodes' contributions.
    ///
    /// Numeric features get their pooled mean and population standard deviation (1 where the
    /// feature is constant); one-hot features get mean 0 and std 1.
    pub fn from_summed_stats(schema: &Schema, sums: &[f64]) -> Result<Self, StatsError> {
        let moments = Moments::from_sums(schema, sums)?;
        let width = schema.num_features();
        let mut mean = Vec::with_capacity(width);
        let mut std = Vec::with_capacity(width);
        let mut feature = 0;
        for column in schema.columns() {
            match column.kind() {
                ColumnKind::Numeric => {
                    let (m, s) = moments.mean_std(feature);
                    mean.push(m as f32);
                    // A spread below the floor, or beyond f32, is treated as a constant feature.
                    let s = s as f32;
                    std.push(if s.is_finite() && s >= MIN_STD {
                        s
                    } else {
                        1.0
                    });
                }
                ColumnKind::Categorical { levels } => {
                    mean.extend(std::iter::repeat_n(0.0, levels.len()));
                    std.extend(std::iter::repeat_n(1.0, levels.len()));
                }
            }
            feature += column.width();
        }
        Ok(Self { mean, std })
    }

    /// Checks that this standardisation can be applied to data encoded by `schema`: one mean and
    /// one standard deviation per encoded feature, every mean finite, every standard deviation
    /// finite and at least [`MIN_STD`]. The first fault found is named with its feature.
    ///
    /// This rules out the standardisations that turn every value of a feature into NaN or
    /// infinity. It cannot rule out every overflow (a mean near the edge of `f32` can still make
    /// one outlying value infinite), so what consumes the standardised data must cope with a
    /// non-finite value in any row.
    pub fn validate(&self, schema: &Schema) -> Result<(), StatsError> {
        let expected = schema.num_features();
        if self.mean.len() != expected || self.std.len() != expected {
            return Err(StatsError::StandardizationWidth {
                expected,
                means: self.mean.len(),
                stds: self.std.len(),
            });
        }
        for (feature, (&mean, &std)) in self.mean.iter().zip(&self.std).enumerate() {
            let fault = if !mean.is_finite() {
                StandardizationFault::NonFiniteMean
            } else if !std.is_finite() {
                StandardizationFault::NonFiniteStd
            } else if std <= 0.0 {
                StandardizationFault::NonPositiveStd
            } else if std < MIN_STD {
                StandardizationFault::StdBelowFloor
            } else {
                continue;
            };
            return Err(StatsError::BadStandardization { feature, fault });
        }
        Ok(())
    }

    /// The identity transform for `num_features` features.
    pub fn identity(num_features: usize) -> Self {
        Self {
            mean: vec![0.0; num_features],
            std: vec![1.0; num_features],
        }
    }

    /// Number of features this standardisation applies to.
    pub fn num_features(&self) -> usize {
        self.mean.len()
    }

    /// Standardises row-major features in place: `x ← (x − mean) / std`, with rows of
    /// `self.num_features()` values. A trailing partial row is left untouched.
    pub fn apply(&self, features: &mut [f32]) {
        let width = self.mean.len();
        if width == 0 {
            return;
        }
        for row in features.chunks_exact_mut(width) {
            for ((x, &m), &s) in row.iter_mut().zip(&self.mean).zip(&self.std) {
                *x = (*x - m) / s;
            }
        }
    }
}

impl FederatedSummary {
    /// Summarises the consortium's data from the element-wise sum of all nodes' contributions.
    pub fn from_summed_stats(schema: &Schema, sums: &[f64]) -> Result<Self, StatsError> {
        let moments = Moments::from_sums(schema, sums)?;
        let mut numeric = Vec::new();
        let mut categorical = Vec::new();
        let mut feature = 0;
        for column in schema.columns() {
            match column.kind() {
                ColumnKind::Numeric => {
                    let (mean, std) = moments.mean_std(feature);
                    numeric.push(NumericSummary {
                        column: column.name().to_owned(),
                        mean,
                        std,
                    });
                }
                ColumnKind::Categorical { levels } => {
                    let counts = (0..levels.len()).map(|i| to_count(moments.sum(feature + i)));
                    categorical.push(CategoricalSummary {
                        column: column.name().to_owned(),
                        levels: levels.clone(),
                        counts: counts.collect(),
                    });
                }
            }
            feature += column.width();
        }
        Ok(Self {
            n: to_count(moments.n),
            numeric,
            categorical,
        })
    }
}

impl fmt::Display for FederatedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n={}", self.n)?;
        for c in &self.numeric {
            write!(f, "; {}: mean {:.4} std {:.4}", c.column, c.mean, c.std)?;
        }
        for c in &self.categorical {
            write!(f, "; {}:", c.column)?;
            for (i, (level, count)) in c.levels.iter().zip(&c.counts).enumerate() {
                let sep = if i == 0 { " " } else { ", " };
                write!(f, "{sep}{level} {count}")?;
            }
        }
        Ok(())
    }
}

/// A validated summed statistics vector.
struct Moments<'a> {
    n: f64,
    sums: &'a [f64],
    sumsqs: &'a [f64],
}

impl<'a> Moments<'a> {
    fn from_sums(schema: &Schema, sums: &'a [f64]) -> Result<Self, StatsError> {
        let expected = schema.stats_len();
        if sums.len() != expected {
            return Err(StatsError::LengthMismatch {
                expected,
                found: sums.len(),
            });
        }
        if let Some(index) = sums.iter().position(|x| !x.is_finite()) {
            return Err(StatsError::NonFinite { index });
        }
        // Invariant: `sums.len() == 1 + 2 F`, checked above, so both splits are in bounds.
        let (n, rest) = sums.split_at(1);
        let (sums, sumsqs) = rest.split_at(schema.num_features());
        let n = n[0];
        // Counts are whole numbers; anything under one half is no example at all.
        if n < 0.5 {
            return Err(StatsError::NoExamples { n });
        }
        Ok(Self { n, sums, sumsqs })
    }

    fn sum(&self, feature: usize) -> f64 {
        self.sums[feature]
    }

    /// Mean and population standard deviation of one feature; the standard deviation is 0 where
    /// the variance is within rounding error of the feature's second moment.
    fn mean_std(&self, feature: usize) -> (f64, f64) {
        let mean = self.sums[feature] / self.n;
        let second = self.sumsqs[feature] / self.n;
        let var = second - mean * mean;
        let noise = 64.0 * f64::EPSILON * second.abs();
        let std = if var > noise { var.sqrt() } else { 0.0 };
        (mean, std)
    }
}

/// Rounds a summed count to a whole number (sums may come back from fixed point with rounding).
fn to_count(x: f64) -> u64 {
    // `as` saturates: negatives become 0, which only a corrupt sum could produce.
    x.round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHEMA: &str = r#"
[label]
column = "y"
positive = ["1"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
[[columns]]
name = "chol"
type = "numeric"
[[columns]]
name = "site"
type = "numeric"
"#;

    /// Rows of (age, sex one-hot, chol, site), with site constant within the consortium.
    fn rows(seed: u32, count: usize) -> Vec<f32> {
        let mut out = Vec::new();
        let mut state = seed;
        for _ in 0..count {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let age = 30.0 + (state >> 8) as f32 / (1u32 << 24) as f32 * 50.0;
            let male = (state & 1) as f32;
            let chol = 150.0 + (state >> 16) as f32 / 655.36 * 1.5;
            out.extend_from_slice(&[age, 1.0 - male, male, chol, 7.25]);
        }
        out
    }

    fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| x + y).collect()
    }

    /// Two-pass mean and population std of column `j`, straight from the pooled rows.
    fn pooled(features: &[f32], width: usize, j: usize) -> (f64, f64) {
        let xs: Vec<f64> = features
            .chunks_exact(width)
            .map(|r| f64::from(r[j]))
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var.sqrt())
    }

    #[test]
    fn summed_hospitals_equal_pooled_rows() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let width = schema.num_features();
        let a = rows(1, 120);
        let b = rows(2, 45);
        let pooled_rows = [a.clone(), b.clone()].concat();

        let sum = add(
            &stats_contribution(&a, width).unwrap(),
            &stats_contribution(&b, width).unwrap(),
        );
        let direct = stats_contribution(&pooled_rows, width).unwrap();
        assert_eq!(sum.len(), schema.stats_len());
        for (s, d) in sum.iter().zip(&direct) {
            assert!((s - d).abs() <= 1e-9 * d.abs().max(1.0), "{s} vs {d}");
        }

        let summary = FederatedSummary::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(summary.n, 165);
        for (c, j) in summary.numeric.iter().zip([0, 3]) {
            let (mean, std) = pooled(&pooled_rows, width, j);
            assert!(
                (c.mean - mean).abs() < 1e-9,
                "{}: {} vs {mean}",
                c.column,
                c.mean
            );
            assert!(
                (c.std - std).abs() < 1e-9,
                "{}: {} vs {std}",
                c.column,
                c.std
            );
        }
        let males = pooled_rows
            .chunks_exact(width)
            .filter(|r| r[2] == 1.0)
            .count() as u64;
        assert_eq!(summary.categorical[0].column, "sex");
        assert_eq!(summary.categorical[0].counts, [165 - males, males]);

        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        let (age_mean, age_std) = pooled(&pooled_rows, width, 0);
        assert!((f64::from(st.mean[0]) - age_mean).abs() < 1e-5 * age_mean);
        assert!((f64::from(st.std[0]) - age_std).abs() < 1e-5 * age_std);
        assert_eq!(&st.mean[1..3], [0.0, 0.0]);
        assert_eq!(&st.std[1..3], [1.0, 1.0]);

        let mut standardized = pooled_rows.clone();
        st.apply(&mut standardized);
        let (m, s) = pooled(&standardized, width, 3);
        assert!(
            m.abs() < 1e-4 && (s - 1.0).abs() < 1e-4,
            "chol after: mean {m} std {s}"
        );
        assert_eq!(
            standardized[1..3],
            pooled_rows[1..3],
            "one-hot features untouched"
        );
    }

    #[test]
    fn constant_column_gets_unit_std() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let width = schema.num_features();
        let sum = stats_contribution(&rows(3, 31), width).unwrap();
        let summary = FederatedSummary::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(summary.numeric[2].std, 0.0);
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(st.mean[4], 7.25);
        assert_eq!(st.std[4], 1.0);
        let mut row = rows(3, 1);
        st.apply(&mut row);
        assert_eq!(row[4], 0.0);
    }

    #[test]
    fn no_examples_is_an_error() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let sum = stats_contribution(&[], schema.num_features()).unwrap();
        assert_eq!(sum, vec![0.0; schema.stats_len()]);
        assert!(matches!(
            Standardization::from_summed_stats(&schema, &sum),
            Err(StatsError::NoExamples { .. })
        ));
        assert!(matches!(
            FederatedSummary::from_summed_stats(&schema, &sum),
            Err(StatsError::NoExamples { .. })
        ));
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let schema = Schema::parse(SCHEMA).unwrap();
        assert_eq!(
            stats_contribution(&[1.0; 7], 5),
            Err(StatsError::RaggedFeatures {
                len: 7,
                num_features: 5
            })
        );
        assert!(matches!(
            stats_contribution(&[], 0),
            Err(StatsError::RaggedFeatures { .. })
        ));
        assert_eq!(
            Standardization::from_summed_stats(&schema, &[1.0; 3]),
            Err(StatsError::LengthMismatch {
                expected: 11,
                found: 3
            })
        );
        let mut sum = stats_contribution(&rows(4, 3), schema.num_features()).unwrap();
        sum[6] = f64::NAN;
        assert_eq!(
            Standardization::from_summed_stats(&schema, &sum),
            Err(StatsError::NonFinite { index: 6 })
        );
    }

    #[test]
    fn summary_displays_for_logs() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let sum = stats_contribution(&[40.0, 0.0, 1.0, 200.0, 1.0], 5).unwrap();
        let text = FederatedSummary::from_summed_stats(&schema, &sum)
            .unwrap()
            .to_string();
        assert_eq!(
            text,
            "n=1; age: mean 40.0000 std 0.0000; chol: mean 200.0000 std 0.0000; \
             site: mean 1.0000 std 0.0000; sex: F 0, M 1"
        );
    }

    #[test]
    fn derived_and_identity_standardisations_are_valid() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let width = schema.num_features();
        let sum = add(
            &stats_contribution(&rows(1, 50), width).unwrap(),
            &stats_contribution(&rows(2, 20), width).unwrap(),
        );
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(st.validate(&schema), Ok(()));
        assert_eq!(Standardization::identity(width).validate(&schema), Ok(()));
        let floor = Standardization {
            std: vec![MIN_STD; width],
            ..st
        };
        assert_eq!(floor.validate(&schema), Ok(()));
    }

    #[test]
    fn a_spread_below_the_floor_is_derived_as_a_constant_feature() {
        let schema = Schema::parse(SCHEMA).unwrap();
        // Ages of 1e-15 and 3e-15: a true std of 1e-15, below the floor.
        let features = [1e-15, 1.0, 0.0, 200.0, 1.0, 3e-15, 0.0, 1.0, 210.0, 1.0];
        let sum = stats_contribution(&features, 5).unwrap();
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(st.std[0], 1.0);
        assert_eq!(st.validate(&schema), Ok(()));
    }

    #[test]
    fn a_standardisation_that_would_break_the_data_is_refused_naming_the_feature() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let good = Standardization::identity(schema.num_features());
        let with = |feature: usize, mean: f32, std: f32| {
            let mut st = good.clone();
            st.mean[feature] = mean;
            st.std[feature] = std;
            st.validate(&schema)
        };
        let bad = |feature, fault| Err(StatsError::BadStandardization { feature, fault });
        use StandardizationFault::*;
        assert_eq!(with(0, f32::NAN, 1.0), bad(0, NonFiniteMean));
        assert_eq!(with(3, f32::INFINITY, 1.0), bad(3, NonFiniteMean));
        assert_eq!(with(4, 0.0, f32::NAN), bad(4, NonFiniteStd));
        assert_eq!(with(1, 0.0, f32::NEG_INFINITY), bad(1, NonFiniteStd));
        assert_eq!(with(2, 5.0, 0.0), bad(2, NonPositiveStd));
        assert_eq!(with(2, 5.0, -0.0), bad(2, NonPositiveStd));
        assert_eq!(with(0, 5.0, -3.0), bad(0, NonPositiveStd));
        assert_eq!(with(3, 0.0, 1e-13), bad(3, StdBelowFloor));
        assert_eq!(with(3, 0.0, f32::MIN_POSITIVE), bad(3, StdBelowFloor));
        // The first fault is named.
        let mut two = good.clone();
        two.std[1] = 0.0;
        two.mean[4] = f32::NAN;
        assert_eq!(two.validate(&schema), bad(1, NonPositiveStd));
        assert_eq!(
            two.validate(&schema).unwrap_err().to_string(),
            "standardisation of encoded feature 1: the standard deviation is not positive"
        );
    }

    #[test]
    fn a_standardisation_of_the_wrong_width_is_refused() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let short = Standardization::identity(4);
        assert_eq!(
            short.validate(&schema),
            Err(StatsError::StandardizationWidth {
                expected: 5,
                means: 4,
                stds: 4
            })
        );
        let mut ragged = Standardization::identity(5);
        ragged.std.push(1.0);
        assert_eq!(
            ragged.validate(&schema),
            Err(StatsError::StandardizationWidth {
                expected: 5,
                means: 5,
                stds: 6
            })
        );
    }

    #[test]
    fn apply_ignores_partial_rows_and_empty_width() {
        let st = Standardization {
            mean: vec![1.0, 2.0],
            std: vec![2.0, 4.0],
        };
        let mut xs = [3.0, 6.0, 9.0];
        st.apply(&mut xs);
        assert_eq!(xs, [1.0, 1.0, 9.0]);
        let mut ys = [5.0];
        Standardization::identity(0).apply(&mut ys);
        assert_eq!(ys, [5.0]);
    }
}
