//! Federated feature statistics: how the consortium learns the means and spreads it standardises
//! features with, from sums of integers alone.
//!
//! ```text
//!  node A: stats_contribution(rows_A) [+ noise] ─┐
//!  node B: stats_contribution(rows_B) [+ noise] ─┼─▶ element-wise SUM ─▶ Standardization::from_summed_stats
//!  node C: stats_contribution(rows_C) [+ noise] ─┘   (secure aggregation)  FederatedSummary::from_summed_stats
//! ```
//!
//! # The contribution
//!
//! A node's contribution is a vector of integers (carried as `f64`, which holds them exactly),
//! laid out by [`StatsLayout`] over the schema's `N` numeric columns and `L` categorical levels,
//! and one last entry that is not data (an image column has no entry: its pixels are normalised
//! by the schema's own `mean` and `std`, and its features are never standardised):
//!
//! ```text
//!  [ n | S_0 … S_{N-1} | Q_0 … Q_{N-1} | c_0 … c_{L-1} | p_0 … p_{P-1} | v ]
//! ```
//!
//! `n` counts the rows. Each value `x` of numeric column `j`, whose schema range is
//! `[lo, hi]`, is clipped into the range and rounded onto a grid of `K + 1` points
//! ([`STATS_STEPS`] `= K`) centred on the range's midpoint:
//!
//! ```text
//!  u = round((clamp(x, lo, hi) − lo) / (hi − lo) · K) − K/2      an integer in [−K/2, K/2]
//!  S_j = Σ u        Q_j = Σ u²
//! ```
//!
//! `c_l` counts the rows whose one-hot feature for level `l` is set (columns in schema order,
//! each column's levels in order, a column's missing level last when it has one); a row counts
//! towards at most one level of each column. The sum of squares of a one-hot feature equals its
//! sum, so it is not sent.
//!
//! A numeric column whose schema imputes missing values (`missing = "impute"`, one of `P` such
//! columns, in schema order) adds only its *present* values to `S_j` and `Q_j`, and `p_k` counts
//! them, so that its mean and spread are those of the values that exist; a missing value (NaN in
//! the value's slot of the encoded row) adds nothing to them. A schema without imputed columns
//! has no `p` block, and the vector it always had. `v` is the variance σ²
//! of the noise the node added to its counts (0 for exact statistics, see
//! [`crate::stats_release`]): summed, it tells the coordinator how much noise the pooled counts
//! carry ([`FederatedSummary::count_noise`]), which it needs to tell noise from a false count.
//!
//! Integers sum exactly, under secure aggregation too (the wide encoding holds a node's
//! integers exactly up to 2^36: `Q_j ≤ n·K²/4` stays below it up to four million rows). Centring
//! the grid halves the largest `|u|` and quarters the largest `u²`, which set how much noise a
//! differentially private release of the vector needs ([`crate::stats_release`]).
//!
//! Values outside the range are clipped, and counted per column ([`ClippedValues`]) for the
//! node's own log; the counts never leave it. The range clips only the statistics, never the
//! data the node trains on.
//!
//! # Decoding
//!
//! The coordinator decodes the element-wise sum over nodes, exact or noised, robustly. With
//! `ŵ = (hi − lo)/K` the grid step:
//!
//! ```text
//!  mean_u = clamp(S/n, −K/2, K/2)            mean = lo + (mean_u + K/2)·ŵ     (inside [lo, hi])
//!  var_u  = clamp(Q/n − mean_u², 0, K²/4)    std  = sqrt(var_u)·ŵ
//!  count  = max(round(c), 0)
//! ```
//!
//! For an imputed column, the summed present count `p` takes the place of `n` in the mean and
//! the variance; a `p` below 1 (no hospital has a value, or noise hides the few there are)
//! gives the centre of the range and a spread of 0 (then floored), a constant that the
//! imputation makes every row share. A summed `n` below 1 is an error
//! ([`StatsError::NoExamples`]). Noise can push a variance to
//! zero, and dividing by its root would blow the feature up, so the [`Standardization`]'s
//! standard deviation is at least `(hi − lo) /` [`STD_FLOOR_DIVISOR`]: a value inside the range
//! then standardises to at most 32 in magnitude. The [`FederatedSummary`] reports the spread
//! without the floor.
//!
//! From exact statistics, the decoded mean and standard deviation are those of the clipped
//! values rounded onto the grid: each within `ŵ/2` of the clipped values' own (rounding moves
//! each value by at most `ŵ/2`).

use std::fmt;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::schema::{ClipRange, Column, ColumnKind, MISSING_LEVEL, MissingMode, Schema};

/// Grid steps `K` across a numeric column's range: a value is rounded to one of `K + 1` points.
pub const STATS_STEPS: u32 = 256;

/// The standardisation's standard deviation of a numeric column is at least its range's width
/// divided by this.
pub const STD_FLOOR_DIVISOR: f64 = 32.0;

/// Where each part of a statistics vector lies, for a schema with `numeric` numeric columns,
/// `levels` categorical levels in all and `imputed` imputed numeric columns: `[n | sums | sums
/// of squares | level counts | present counts | noise variance]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsLayout {
    /// Numeric columns `N`.
    pub numeric: usize,
    /// Categorical levels `L`, over every categorical column (missing levels included).
    pub levels: usize,
    /// Categorical columns.
    pub categorical: usize,
    /// Numeric columns that impute missing values `P` (each also counted in `numeric`).
    pub imputed: usize,
}

impl StatsLayout {
    /// The layout of `schema`'s statistics.
    pub fn of(schema: &Schema) -> Self {
        let mut layout = Self {
            numeric: 0,
            levels: 0,
            categorical: 0,
            imputed: 0,
        };
        for column in schema.columns() {
            match column.kind() {
                ColumnKind::Numeric { .. } => {
                    layout.numeric += 1;
                    if column.missing() == MissingMode::Impute {
                        layout.imputed += 1;
                    }
                }
                ColumnKind::Categorical { .. } => {
                    layout.categorical += 1;
                    layout.levels += column.width();
                }
                // Normalised by the schema: nothing to count.
                ColumnKind::Image(_) => {}
            }
        }
        layout
    }

    /// Entries of the vector: `2 + 2N + L + P` ([`Schema::stats_len`]).
    pub fn len(&self) -> usize {
        2 + 2 * self.numeric + self.levels + self.imputed
    }

    /// Whether the vector is empty: never, it always holds `n`.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Position of `n`.
    pub const COUNT: usize = 0;

    /// Positions of the sums `S_j`.
    pub fn sums(&self) -> Range<usize> {
        1..1 + self.numeric
    }

    /// Positions of the sums of squares `Q_j`.
    pub fn squares(&self) -> Range<usize> {
        1 + self.numeric..1 + 2 * self.numeric
    }

    /// Positions of the level counts `c_l`.
    pub fn level_counts(&self) -> Range<usize> {
        1 + 2 * self.numeric..1 + 2 * self.numeric + self.levels
    }

    /// Positions of the present counts `p_k` of the imputed columns.
    pub fn present_counts(&self) -> Range<usize> {
        self.level_counts().end..self.noise()
    }

    /// Position of the noise variance `v`, the last.
    pub fn noise(&self) -> usize {
        1 + 2 * self.numeric + self.levels + self.imputed
    }
}

/// One node's statistics before they leave: the vector to send, and what was clipped.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalStatistics {
    /// `[n | sums | sums of squares | level counts | present counts | 0]`, integers
    /// ([`StatsLayout`]).
    pub values: Vec<f64>,
    /// Per numeric column, in schema order, how many values lay outside its range. For the
    /// node's own log: never sent.
    pub clipped: Vec<ClippedValues>,
}

/// How many values of one numeric column lay outside its range and were clipped into it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClippedValues {
    /// The column.
    pub column: String,
    /// Values below the range's low bound (clipped up to it).
    pub below: u64,
    /// Values above the range's high bound (clipped down to it).
    pub above: u64,
}

impl ClippedValues {
    /// Values clipped in all.
    pub fn total(&self) -> u64 {
        self.below + self.above
    }
}

impl fmt::Display for ClippedValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} below, {} above",
            self.column, self.below, self.above
        )
    }
}

/// Computes one node's statistics from its encoded features (row-major,
/// `schema.num_features()` per row, as the node's encoding makes them, not yet standardised):
/// the integer vector of the [module docs](self) and the count of clipped values per numeric
/// column (present values only). NaN in the value slot of an imputed column is a missing value;
/// any other non-finite numeric feature is an error.
pub fn stats_contribution(
    schema: &Schema,
    features: &[f32],
) -> Result<LocalStatistics, StatsError> {
    let num_features = schema.num_features();
    if num_features == 0 || !features.len().is_multiple_of(num_features) {
        return Err(StatsError::RaggedFeatures {
            len: features.len(),
            num_features,
        });
    }
    let layout = StatsLayout::of(schema);
    let mut values = vec![0.0; layout.len()];
    let mut clipped: Vec<ClippedValues> = schema
        .columns()
        .iter()
        .filter(|c| c.range().is_some())
        .map(|c| ClippedValues {
            column: c.name().to_owned(),
            below: 0,
            above: 0,
        })
        .collect();
    // Integer accumulators: exact whatever the row count.
    let mut sums = vec![0i64; layout.numeric];
    let mut squares = vec![0i64; layout.numeric];
    let mut counts = vec![0u64; layout.levels];
    let mut present = vec![0u64; layout.imputed];
    for (row, cells) in features.chunks_exact(num_features).enumerate() {
        let (mut feature, mut numeric, mut level, mut imputed) = (0, 0, 0, 0);
        for column in schema.columns() {
            match column.kind() {
                ColumnKind::Numeric { range } => {
                    let x = f64::from(cells[feature]);
                    let imputes = column.missing() == MissingMode::Impute;
                    if imputes && x.is_nan() {
                        // Missing: neither counted nor summed.
                        numeric += 1;
                        imputed += 1;
                        feature += column.width();
                        continue;
                    }
                    if !x.is_finite() {
                        return Err(StatsError::NonFiniteFeature { row, feature });
                    }
                    if imputes {
                        present[imputed] += 1;
                        imputed += 1;
                    }
                    let tally = &mut clipped[numeric];
                    if x < range.low() {
                        tally.below += 1;
                    } else if x > range.high() {
                        tally.above += 1;
                    }
                    let u = grid_point(x, range);
                    sums[numeric] += u;
                    squares[numeric] += u * u;
                    numeric += 1;
                }
                ColumnKind::Categorical { .. } => {
                    // The declared levels, then the missing level when the column has one.
                    let width = column.width();
                    let one_hot = &cells[feature..feature + width];
                    // At most one level a row, whatever the features hold.
                    if let Some(set) = one_hot.iter().position(|&v| v > 0.5) {
                        counts[level + set] += 1;
                    }
                    level += width;
                }
                // Pixels are normalised by the schema and counted nowhere.
                ColumnKind::Image(_) => {}
            }
            feature += column.width();
        }
    }
    values[StatsLayout::COUNT] = (features.len() / num_features) as f64;
    for (out, v) in values[layout.sums()].iter_mut().zip(&sums) {
        *out = *v as f64;
    }
    for (out, v) in values[layout.squares()].iter_mut().zip(&squares) {
        *out = *v as f64;
    }
    for (out, v) in values[layout.level_counts()].iter_mut().zip(&counts) {
        *out = *v as f64;
    }
    for (out, v) in values[layout.present_counts()].iter_mut().zip(&present) {
        *out = *v as f64;
    }
    Ok(LocalStatistics { values, clipped })
}

/// The smallest standard deviation [`Standardization::validate`] accepts.
///
/// Dividing by less would blow a feature's ordinary spread up by more than 10¹², to the edge of
/// `f32` (about 3·10³⁸) for values of a few units; no encoded clinical feature has a spread this
/// small. [`Standardization::from_summed_stats`] never derives one: its floor is a share of the
/// column's range ([`STD_FLOOR_DIVISOR`]), and never below this.
pub const MIN_STD: f32 = 1e-12;

/// Per-feature shift and scale that make numeric features zero-mean and unit-variance across the
/// whole consortium (as far as the statistics' noise allows). One-hot features keep mean 0 and
/// std 1, so they are left untouched, and so is the 0/1 indicator of an imputed column: like a
/// one-hot it stays 0 or 1, so its weight reads as the effect of a missing value, and dividing
/// by its spread `sqrt(r(1 − r))` would blow it up for a rare missing value, at a rate `r` that
/// only noisy counts could estimate.
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
    /// A one-hot level, a missing-value indicator or a pixel, which are left as they are, given
    /// another mean or standard deviation than 0 and 1.
    #[error("a one-hot, missing-indicator or pixel feature must keep mean 0 and std 1")]
    NotIdentity,
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
    /// Standard deviation of the noise the nodes added to `n` and to each level count, the
    /// root of their summed σ² (0: exact statistics; summaries stored before it existed read
    /// as 0).
    #[serde(default)]
    pub count_noise: f64,
}

/// Pooled mean and spread of one numeric column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NumericSummary {
    /// The column's name.
    pub column: String,
    /// Mean over all examples, of the clipped values rounded onto the grid; inside the range.
    pub mean: f64,
    /// Population standard deviation over all examples (0 for a constant column), of the
    /// clipped values rounded onto the grid.
    pub std: f64,
    /// For a column that imputes missing values, how many values were present (the mean and
    /// spread are over these); `None` for a column that refuses them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present: Option<u64>,
}

/// Pooled level counts of one categorical column.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CategoricalSummary {
    /// The column's name.
    pub column: String,
    /// The levels, in schema order, then [`MISSING_LEVEL`] when missing is a level.
    pub levels: Vec<String>,
    /// Number of examples with each level, parallel to `levels` (a noised count below 0 reads
    /// as 0).
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
    /// A numeric feature is NaN or infinite.
    #[error("row {row}, encoded feature {feature}: the value is not a finite number")]
    NonFiniteFeature {
        /// The row, from 0.
        row: usize,
        /// Position of the feature among the encoded features.
        feature: usize,
    },
    /// The summed vector's length does not match the schema.
    #[error("summed statistics have {found} entries, the schema needs {expected}")]
    LengthMismatch {
        /// `schema.stats_len()`.
        expected: usize,
        /// The length received.
        found: usize,
    },
    /// The summed count of examples is below one.
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
    /// Derives the standardisation from the element-wise sum of all nodes' contributions, exact
    /// or noised (see the [module docs](self) for the decoding).
    ///
    /// Numeric features get their pooled mean and population standard deviation, the latter at
    /// least the column's floor (`(hi − lo) /` [`STD_FLOOR_DIVISOR`], and [`MIN_STD`]); one-hot
    /// features, and an image column's pixels (normalised by the schema's own `mean` and `std`
    /// when read), get mean 0 and std 1.
    pub fn from_summed_stats(schema: &Schema, sums: &[f64]) -> Result<Self, StatsError> {
        let moments = Moments::from_sums(schema, sums)?;
        let width = schema.num_features();
        let mut mean = Vec::with_capacity(width);
        let mut std = Vec::with_capacity(width);
        let (mut numeric, mut imputed) = (0, 0);
        for column in schema.columns() {
            match column.kind() {
                ColumnKind::Numeric { range } => {
                    let present = moments.present_of(column, &mut imputed);
                    let (m, s) = moments.mean_std(numeric, present, range);
                    numeric += 1;
                    let floor = (range.width() / STD_FLOOR_DIVISOR).max(f64::from(MIN_STD));
                    // Both inside f32's range: the mean inside the column's range, the std at
                    // most half its width.
                    mean.push(m as f32);
                    std.push(s.max(floor) as f32);
                    if column.missing() == MissingMode::Impute {
                        // The indicator, left as it is.
                        mean.push(0.0);
                        std.push(1.0);
                    }
                }
                // Left as they are: one-hot features, and pixels, which the schema's own mean
                // and std have normalised.
                ColumnKind::Categorical { .. } | ColumnKind::Image(_) => {
                    mean.extend(std::iter::repeat_n(0.0, column.width()));
                    std.extend(std::iter::repeat_n(1.0, column.width()));
                }
            }
        }
        Ok(Self { mean, std })
    }
    /// Checks that this standardisation can be applied to data encoded by `schema`: one mean and
    /// one standard deviation per encoded feature, every mean finite, every standard deviation
    /// finite and at least [`MIN_STD`], and the identity (0 and 1) on one-hot levels,
    /// missing-value indicators and pixels, which the statistics round leaves as they are. The
    /// first fault found is named with its feature.
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
        // Features the statistics round never standardises: one-hot levels, missing-value
        // indicators and pixels. A coordinator that sent anything else for them would be
        // transforming a hospital's data in a way the manifest's schema does not say.
        let mut left_as_is = vec![false; expected];
        let mut offset = 0;
        for column in schema.columns() {
            let width = column.width();
            match column.kind() {
                ColumnKind::Numeric { .. } => {
                    if column.missing() == MissingMode::Impute {
                        left_as_is[offset + 1] = true;
                    }
                }
                ColumnKind::Categorical { .. } | ColumnKind::Image(_) => {
                    left_as_is[offset..offset + width].fill(true);
                }
            }
            offset += width;
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
            } else if left_as_is[feature] && (mean != 0.0 || std != 1.0) {
                StandardizationFault::NotIdentity
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

    /// Imputes and standardises features encoded by `schema` (row-major, not yet standardised)
    /// in place: the one place where a missing value becomes a number.
    ///
    /// Each value becomes `(x − mean) / std`, except NaN in the value slot of a column that
    /// imputes (`missing = "impute"`), a missing value, which becomes exactly 0: the column's
    /// pooled mean, standardised. A NaN anywhere else is refused
    /// ([`StatsError::NonFiniteFeature`], the features then partly standardised), so that no
    /// stray NaN turns silently into the mean. The standardisation must fit the schema
    /// ([`Self::validate`]'s width check) and the features must be whole rows.
    pub fn standardize(&self, schema: &Schema, features: &mut [f32]) -> Result<(), StatsError> {
        let width = schema.num_features();
        if self.mean.len() != width || self.std.len() != width {
            return Err(StatsError::StandardizationWidth {
                expected: width,
                means: self.mean.len(),
                stds: self.std.len(),
            });
        }
        if width == 0 || !features.len().is_multiple_of(width) {
            return Err(StatsError::RaggedFeatures {
                len: features.len(),
                num_features: width,
            });
        }
        let mut imputable = vec![false; width];
        let mut offset = 0;
        for column in schema.columns() {
            if column.missing() == MissingMode::Impute {
                // The value's slot, the first of the column's two.
                imputable[offset] = true;
            }
            offset += column.width();
        }
        for (row, cells) in features.chunks_exact_mut(width).enumerate() {
            for (feature, x) in cells.iter_mut().enumerate() {
                *x = if !x.is_nan() {
                    (*x - self.mean[feature]) / self.std[feature]
                } else if imputable[feature] {
                    0.0
                } else {
                    return Err(StatsError::NonFiniteFeature { row, feature });
                };
            }
        }
        Ok(())
    }

    /// Standardises row-major features in place: `x ← (x − mean) / std`, with rows of
    /// `self.num_features()` values. A trailing partial row is left untouched. It imputes
    /// nothing (a NaN stays NaN): for data of a schema with imputed columns use
    /// [`Self::standardize`].
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
    /// Summarises the consortium's data from the element-wise sum of all nodes' contributions,
    /// exact or noised (see the [module docs](self) for the decoding).
    pub fn from_summed_stats(schema: &Schema, sums: &[f64]) -> Result<Self, StatsError> {
        let moments = Moments::from_sums(schema, sums)?;
        let mut numeric = Vec::new();
        let mut categorical = Vec::new();
        let (mut level, mut imputed) = (0, 0);
        for column in schema.columns() {
            match column.kind() {
                ColumnKind::Numeric { range } => {
                    let count = moments.present_of(column, &mut imputed);
                    let (mean, std) = moments.mean_std(numeric.len(), count, range);
                    numeric.push(NumericSummary {
                        column: column.name().to_owned(),
                        mean,
                        std,
                        present: (column.missing() == MissingMode::Impute).then(|| to_count(count)),
                    });
                }
                ColumnKind::Categorical { levels } => {
                    let width = column.width();
                    let counts = (level..level + width).map(|l| to_count(moments.counts[l]));
                    level += width;
                    let mut levels = levels.clone();
                    if column.missing() == MissingMode::Level {
                        levels.push(MISSING_LEVEL.to_owned());
                    }
                    categorical.push(CategoricalSummary {
                        column: column.name().to_owned(),
                        levels,
                        counts: counts.collect(),
                    });
                }
                // No pooled figure describes an image column.
                ColumnKind::Image(_) => {}
            }
        }
        Ok(Self {
            n: to_count(moments.n),
            numeric,
            categorical,
            count_noise: moments.noise_variance.sqrt(),
        })
    }
}

impl fmt::Display for FederatedSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n={}", self.n)?;
        for c in &self.numeric {
            write!(f, "; {}: mean {:.4} std {:.4}", c.column, c.mean, c.std)?;
            if let Some(present) = c.present {
                write!(f, " ({present} present)")?;
            }
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
    /// The summed count, at least 1.
    n: f64,
    sums: &'a [f64],
    squares: &'a [f64],
    counts: &'a [f64],
    /// The summed present counts of the imputed columns.
    present: &'a [f64],
    /// The summed σ² of the nodes' noise, at least 0.
    noise_variance: f64,
}

impl<'a> Moments<'a> {
    fn from_sums(schema: &Schema, sums: &'a [f64]) -> Result<Self, StatsError> {
        let layout = StatsLayout::of(schema);
        if sums.len() != layout.len() {
            return Err(StatsError::LengthMismatch {
                expected: layout.len(),
                found: sums.len(),
            });
        }
        if let Some(index) = sums.iter().position(|x| !x.is_finite()) {
            return Err(StatsError::NonFinite { index });
        }
        let n = sums[StatsLayout::COUNT];
        // Counts are whole numbers: fewer than one example is none at all.
        if n < 1.0 {
            return Err(StatsError::NoExamples { n });
        }
        Ok(Self {
            n,
            sums: &sums[layout.sums()],
            squares: &sums[layout.squares()],
            counts: &sums[layout.level_counts()],
            present: &sums[layout.present_counts()],
            noise_variance: sums[layout.noise()].max(0.0),
        })
    }

    /// The count a numeric `column`'s moments divide by: the summed present count when it
    /// imputes (the `imputed`-th such column, and `imputed` moves on), else `n`.
    fn present_of(&self, column: &Column, imputed: &mut usize) -> f64 {
        if column.missing() != MissingMode::Impute {
            return self.n;
        }
        // Invariant: `from_sums` checked the length against the schema's layout, which has one
        // present count per imputed column; 0 (no value) is the safe reading otherwise.
        let count = self.present.get(*imputed).copied().unwrap_or(0.0);
        *imputed += 1;
        count
    }

    /// Mean and population standard deviation of the `j`-th numeric column, whose range is
    /// `range`, over `count` values: the mean clamped into the range, the variance into
    /// `[0, (width/2)²]`; the range's centre and 0 when `count` is below 1.
    fn mean_std(&self, j: usize, count: f64, range: &ClipRange) -> (f64, f64) {
        let half = f64::from(STATS_STEPS) / 2.0;
        let step = range.width() / f64::from(STATS_STEPS);
        if count < 1.0 {
            return ((range.low() + range.high()) / 2.0, 0.0);
        }
        let mean_u = (self.sums[j] / count).clamp(-half, half);
        let var_u = (self.squares[j] / count - mean_u * mean_u).clamp(0.0, half * half);
        let mean = (range.low() + (mean_u + half) * step).clamp(range.low(), range.high());
        (mean, var_u.sqrt() * step)
    }
}

/// The grid point `u` of a finite value `x` in a column of range `range` (see the
/// [module docs](self)).
fn grid_point(x: f64, range: &ClipRange) -> i64 {
    let steps = f64::from(STATS_STEPS);
    let position = (x.clamp(range.low(), range.high()) - range.low()) / range.width() * steps;
    // In [0, K] (the clamp keeps it there, and `as` saturates besides).
    position.round() as i64 - i64::from(STATS_STEPS / 2)
}

/// Rounds a summed count to a whole number; noise may have pushed it below 0, which reads as 0.
fn to_count(x: f64) -> u64 {
    // `as` saturates: negatives become 0.
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
name = "site"
type = "numeric"
range = [0, 10]
"#;

    /// Rows of (age, sex one-hot, chol, site), inside every range, with site constant within
    /// the consortium.
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

    fn values(schema: &Schema, features: &[f32]) -> Vec<f64> {
        stats_contribution(schema, features).unwrap().values
    }

    /// Two-pass mean and population std of column `j`, straight from the pooled rows, each
    /// value clipped into `[lo, hi]`.
    fn pooled(features: &[f32], width: usize, j: usize, (lo, hi): (f64, f64)) -> (f64, f64) {
        let xs: Vec<f64> = features
            .chunks_exact(width)
            .map(|r| f64::from(r[j]).clamp(lo, hi))
            .collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / xs.len() as f64;
        (mean, var.sqrt())
    }

    #[test]
    fn the_layout_follows_the_schema() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let layout = StatsLayout::of(&schema);
        assert_eq!(
            layout,
            StatsLayout {
                numeric: 3,
                levels: 2,
                categorical: 1,
                imputed: 0
            }
        );
        assert_eq!(layout.len(), schema.stats_len());
        assert_eq!(layout.len(), 10);
        assert_eq!(
            (layout.sums(), layout.squares(), layout.level_counts()),
            (1..4, 4..7, 7..9)
        );
        assert_eq!(layout.noise(), 9);
        assert!(
            layout.present_counts().is_empty(),
            "no imputed column, no present counts"
        );
    }

    #[test]
    fn values_are_clipped_then_rounded_onto_a_centred_grid() {
        let range = ClipRange::new(20.0, 90.0).unwrap();
        let half = i64::from(STATS_STEPS / 2);
        assert_eq!(grid_point(20.0, &range), -half);
        assert_eq!(grid_point(90.0, &range), half);
        assert_eq!(grid_point(55.0, &range), 0);
        assert_eq!(grid_point(-1e30, &range), -half);
        assert_eq!(grid_point(1e30, &range), half);
        // One step is 70/256 years: 55.2 is 0.75 of a step above the midpoint.
        assert_eq!(grid_point(55.2, &range), 1);
        assert_eq!(grid_point(55.1, &range), 0);
    }

    #[test]
    fn summed_hospitals_equal_pooled_rows_to_within_half_a_grid_step() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let width = schema.num_features();
        let a = rows(1, 120);
        let b = rows(2, 45);
        let pooled_rows = [a.clone(), b.clone()].concat();

        let sum = add(&values(&schema, &a), &values(&schema, &b));
        // Integers: the sum of the parts is the whole, exactly.
        assert_eq!(sum, values(&schema, &pooled_rows));
        assert!(sum.iter().all(|v| v.fract() == 0.0));
        assert_eq!(sum.len(), schema.stats_len());

        let summary = FederatedSummary::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(summary.n, 165);
        for (c, (j, range)) in
            summary
                .numeric
                .iter()
                .zip([(0, (20.0, 90.0)), (3, (100.0, 400.0)), (4, (0.0, 10.0))])
        {
            let (mean, std) = pooled(&pooled_rows, width, j, range);
            let half_step = (range.1 - range.0) / f64::from(STATS_STEPS) / 2.0;
            assert!(
                (c.mean - mean).abs() <= half_step,
                "{}: {} vs {mean}",
                c.column,
                c.mean
            );
            assert!(
                (c.std - std).abs() <= half_step,
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
        assert_eq!(st.mean[0], summary.numeric[0].mean as f32);
        assert_eq!(st.std[0], summary.numeric[0].std as f32);
        assert_eq!(&st.mean[1..3], [0.0, 0.0]);
        assert_eq!(&st.std[1..3], [1.0, 1.0]);

        let mut standardized = pooled_rows.clone();
        st.apply(&mut standardized);
        let (m, s) = pooled(&standardized, width, 3, (f64::MIN, f64::MAX));
        // chol's grid step is 300/256 ≈ 1.2 against a spread of about 43.
        assert!(
            m.abs() < 0.02 && (s - 1.0).abs() < 0.02,
            "chol after: mean {m} std {s}"
        );
        assert_eq!(
            standardized[1..3],
            pooled_rows[1..3],
            "one-hot features untouched"
        );
    }

    #[test]
    fn values_outside_the_range_are_clipped_and_counted() {
        let schema = Schema::parse(SCHEMA).unwrap();
        // Ages 10 and 15 below [20, 90], 95 above; chol 99 below [100, 400]; site 11 above.
        let features = [
            10.0, 1.0, 0.0, 150.0, 5.0, //
            15.0, 0.0, 1.0, 99.0, 5.0, //
            95.0, 1.0, 0.0, 200.0, 11.0, //
            50.0, 0.0, 1.0, 400.0, 0.0,
        ];
        let local = stats_contribution(&schema, &features).unwrap();
        let clipped: Vec<String> = local.clipped.iter().map(ToString::to_string).collect();
        assert_eq!(
            clipped,
            [
                "age: 2 below, 1 above",
                "chol: 1 below, 0 above",
                "site: 0 below, 1 above"
            ]
        );
        assert_eq!(local.clipped[0].total(), 3);
        // The statistics see the clipped values: ages 20, 20, 90, 50.
        let summary = FederatedSummary::from_summed_stats(&schema, &local.values).unwrap();
        let ages = [20.0, 20.0, 90.0, 50.0];
        let mean: f64 = ages.iter().sum::<f64>() / 4.0;
        let std = (ages.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / 4.0).sqrt();
        let half_step = 70.0 / f64::from(STATS_STEPS) / 2.0;
        assert!((summary.numeric[0].mean - mean).abs() <= half_step);
        assert!((summary.numeric[0].std - std).abs() <= half_step);
        // Grid points: −128, −128, 128 and round(30/70·256) − 128 = −18.
        assert_eq!(local.values[1], -128.0 - 128.0 + 128.0 - 18.0);
        assert_eq!(local.values[4], 3.0 * 128.0 * 128.0 + 18.0 * 18.0);
    }

    #[test]
    fn a_row_counts_towards_one_level_of_a_column_at_most() {
        let schema = Schema::parse(SCHEMA).unwrap();
        // A row with both levels set counts once (the first); one with none counts nowhere.
        let features = [50.0, 1.0, 1.0, 200.0, 5.0, 50.0, 0.0, 0.0, 200.0, 5.0];
        let values = values(&schema, &features);
        assert_eq!(values[0], 2.0);
        assert_eq!(&values[7..9], [1.0, 0.0]);
    }

    #[test]
    fn a_constant_column_gets_the_floor_as_its_std() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let sum = values(&schema, &rows(3, 31));
        let summary = FederatedSummary::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(summary.numeric[2].std, 0.0);
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        // 7.25 is on the grid of [0, 10]: 7.25 · 25.6 = 185.6 rounds to 186 steps of 10/256.
        assert_eq!(st.mean[4], (186.0 * 10.0 / 256.0) as f32);
        assert_eq!(st.std[4], (10.0 / STD_FLOOR_DIVISOR) as f32);
        assert_eq!(st.validate(&schema), Ok(()));
    }

    #[test]
    fn noised_sums_decode_robustly() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let layout = StatsLayout::of(&schema);
        let mut sum = values(&schema, &rows(5, 40));
        // Noise that leaves age's sum beyond the grid, chol's variance negative and a level
        // count negative.
        sum[layout.sums().start] = 200.0 * sum[0];
        sum[layout.squares().start + 1] = -5000.0;
        sum[layout.level_counts().start] = -3.0;
        let summary = FederatedSummary::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(summary.numeric[0].mean, 90.0, "clamped into the range");
        assert_eq!(summary.numeric[0].std, 0.0, "the whole mass at one end");
        assert_eq!(
            summary.numeric[1].std, 0.0,
            "a negative variance reads as 0"
        );
        assert_eq!(summary.categorical[0].counts[0], 0);
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(st.mean[0], 90.0);
        assert_eq!(st.std[0], (70.0 / STD_FLOOR_DIVISOR) as f32);
        assert_eq!(st.std[3], (300.0 / STD_FLOOR_DIVISOR) as f32);
        assert_eq!(st.validate(&schema), Ok(()));
        // A sum of squares beyond what the grid allows reads as the widest spread there is:
        // half the range.
        sum[layout.squares().start + 1] = 1e12;
        let summary = FederatedSummary::from_summed_stats(&schema, &sum).unwrap();
        assert!((summary.numeric[1].std - 150.0).abs() < 1e-9);
    }

    #[test]
    fn no_examples_is_an_error() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let sum = values(&schema, &[]);
        assert_eq!(sum, vec![0.0; schema.stats_len()]);
        assert!(matches!(
            Standardization::from_summed_stats(&schema, &sum),
            Err(StatsError::NoExamples { .. })
        ));
        assert!(matches!(
            FederatedSummary::from_summed_stats(&schema, &sum),
            Err(StatsError::NoExamples { .. })
        ));
        // A noised count below one is no example either.
        let mut noised = values(&schema, &rows(1, 3));
        noised[0] = -2.0;
        assert_eq!(
            Standardization::from_summed_stats(&schema, &noised),
            Err(StatsError::NoExamples { n: -2.0 })
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let schema = Schema::parse(SCHEMA).unwrap();
        assert_eq!(
            stats_contribution(&schema, &[1.0; 7]),
            Err(StatsError::RaggedFeatures {
                len: 7,
                num_features: 5
            })
        );
        let mut features = rows(4, 3);
        features[5 + 3] = f32::NAN;
        let err = stats_contribution(&schema, &features).unwrap_err();
        assert_eq!(err, StatsError::NonFiniteFeature { row: 1, feature: 3 });
        assert_eq!(
            err.to_string(),
            "row 1, encoded feature 3: the value is not a finite number"
        );
        assert_eq!(
            Standardization::from_summed_stats(&schema, &[1.0; 3]),
            Err(StatsError::LengthMismatch {
                expected: 10,
                found: 3
            })
        );
        let mut sum = values(&schema, &rows(4, 3));
        sum[6] = f64::NAN;
        assert_eq!(
            Standardization::from_summed_stats(&schema, &sum),
            Err(StatsError::NonFinite { index: 6 })
        );
    }

    #[test]
    fn summary_displays_for_logs() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let sum = values(&schema, &[40.0, 0.0, 1.0, 200.0, 1.0]);
        let text = FederatedSummary::from_summed_stats(&schema, &sum)
            .unwrap()
            .to_string();
        // Each value as rounded onto its grid: 40 to 20 + 73 steps of 70/256, 200 to 100 + 85
        // steps of 300/256, 1 to 26 steps of 10/256.
        assert_eq!(
            text,
            "n=1; age: mean 39.9609 std 0.0000; chol: mean 199.6094 std 0.0000; \
             site: mean 1.0156 std 0.0000; sex: F 0, M 1"
        );
    }

    #[test]
    fn derived_and_identity_standardisations_are_valid() {
        let schema = Schema::parse(SCHEMA).unwrap();
        let width = schema.num_features();
        let sum = add(
            &values(&schema, &rows(1, 50)),
            &values(&schema, &rows(2, 20)),
        );
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(st.validate(&schema), Ok(()));
        assert_eq!(Standardization::identity(width).validate(&schema), Ok(()));
        // Every numeric column (age, chol, site) at the floor; the one-hot levels as they are.
        let mut floor = st;
        for feature in [0, 3, 4] {
            floor.std[feature] = MIN_STD;
        }
        assert_eq!(floor.validate(&schema), Ok(()));
    }

    #[test]
    fn a_range_narrower_than_the_minimum_std_still_gives_a_valid_standardisation() {
        let schema = Schema::parse(&SCHEMA.replace("[0, 10]", "[0, 1e-15]")).unwrap();
        let sum = values(
            &schema,
            &[40.0, 0.0, 1.0, 200.0, 0.0, 41.0, 0.0, 1.0, 210.0, 1.0],
        );
        let st = Standardization::from_summed_stats(&schema, &sum).unwrap();
        assert_eq!(st.std[4], MIN_STD);
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
        assert_eq!(with(3, 5.0, 0.0), bad(3, NonPositiveStd));
        assert_eq!(with(3, 5.0, -0.0), bad(3, NonPositiveStd));
        assert_eq!(with(0, 5.0, -3.0), bad(0, NonPositiveStd));
        assert_eq!(with(3, 0.0, 1e-13), bad(3, StdBelowFloor));
        assert_eq!(with(3, 0.0, f32::MIN_POSITIVE), bad(3, StdBelowFloor));
        // A one-hot level (sex=M, feature 2) is left as it is: the coordinator may not shift or
        // scale it.
        assert_eq!(with(2, 0.5, 1.0), bad(2, NotIdentity));
        assert_eq!(with(2, 0.0, 3.0), bad(2, NotIdentity));
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

    /// `SCHEMA` with sex's missing cells a level and chol's imputed: features `age, sex=F,
    /// sex=M, sex=(missing), chol, chol (missing), site`.
    fn missing_schema() -> Schema {
        let text = SCHEMA
            .replace(
                "levels = [\"F\", \"M\"]",
                "levels = [\"F\", \"M\"]\nmissing = \"level\"",
            )
            .replace(
                "range = [100, 400]",
                "range = [100, 400]\nmissing = \"impute\"",
            );
        Schema::parse(&text).unwrap()
    }

    /// One encoded row of [`missing_schema`]: `sex` 0 = F, 1 = M, 2 = missing; `chol` `None`
    /// when missing (NaN and the indicator, as the node's reader encodes it).
    fn missing_row(age: f32, sex: usize, chol: Option<f32>) -> Vec<f32> {
        let mut row = vec![age, 0.0, 0.0, 0.0, 0.0, 0.0, 7.25];
        row[1 + sex] = 1.0;
        match chol {
            Some(x) => row[4] = x,
            None => (row[4], row[5]) = (f32::NAN, 1.0),
        }
        row
    }

    fn missing_rows() -> Vec<f32> {
        [
            missing_row(40.0, 0, Some(180.0)),
            missing_row(50.0, 2, None),
            missing_row(60.0, 1, Some(240.0)),
            missing_row(70.0, 2, Some(300.0)),
            missing_row(45.0, 0, None),
        ]
        .concat()
    }

    #[test]
    fn missing_values_are_counted_apart_and_left_out_of_the_sums() {
        let schema = missing_schema();
        let layout = StatsLayout::of(&schema);
        assert_eq!(
            layout,
            StatsLayout {
                numeric: 3,
                levels: 3,
                categorical: 1,
                imputed: 1
            }
        );
        assert_eq!(layout.len(), schema.stats_len());
        assert_eq!(layout.present_counts(), 10..11);
        assert_eq!(layout.noise(), 11);

        let stats = stats_contribution(&schema, &missing_rows()).unwrap();
        let v = &stats.values;
        assert_eq!(v[StatsLayout::COUNT], 5.0);
        // Sex: F, M and the missing level.
        assert_eq!(v[layout.level_counts()], [2.0, 1.0, 2.0]);
        // Chol: three values present, and only they are summed.
        assert_eq!(v[layout.present_counts()], [3.0]);
        let chol = ClipRange::new(100.0, 400.0).unwrap();
        let u: Vec<i64> = [180.0, 240.0, 300.0]
            .iter()
            .map(|&x| grid_point(x, &chol))
            .collect();
        assert_eq!(v[layout.sums()][1], u.iter().sum::<i64>() as f64);
        assert_eq!(
            v[layout.squares()][1],
            u.iter().map(|u| u * u).sum::<i64>() as f64
        );
        assert_eq!(
            stats.clipped[1].total(),
            0,
            "a missing value is not clipped"
        );

        // NaN where nothing imputes is still refused: age is column 0.
        let mut bad = missing_rows();
        bad[0] = f32::NAN;
        assert_eq!(
            stats_contribution(&schema, &bad),
            Err(StatsError::NonFiniteFeature { row: 0, feature: 0 })
        );
    }

    #[test]
    fn an_imputed_column_is_standardised_by_its_present_values_and_its_indicator_is_left_alone() {
        let schema = missing_schema();
        let features = missing_rows();
        let sums = stats_contribution(&schema, &features).unwrap().values;
        let st = Standardization::from_summed_stats(&schema, &sums).unwrap();
        st.validate(&schema).unwrap();
        // Mean and spread of the three present chol values (each within half a grid step of
        // the exact figures), not of five rows with zeros or NaN in them.
        let present = [180.0f64, 240.0, 300.0];
        let mean = present.iter().sum::<f64>() / 3.0;
        let std = (present.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 3.0).sqrt();
        let step = 300.0 / f64::from(STATS_STEPS);
        assert!((f64::from(st.mean[4]) - mean).abs() <= step / 2.0, "{st:?}");
        assert!((f64::from(st.std[4]) - std).abs() <= step / 2.0, "{st:?}");
        // The indicator and the missing level: mean 0, std 1, like every one-hot.
        for f in [1, 2, 3, 5] {
            assert_eq!((st.mean[f], st.std[f]), (0.0, 1.0), "feature {f}");
        }
        let summary = FederatedSummary::from_summed_stats(&schema, &sums).unwrap();
        assert_eq!(summary.numeric[1].present, Some(3));
        assert_eq!(summary.numeric[0].present, None);
        assert_eq!(summary.categorical[0].levels, ["F", "M", "(missing)"]);
        assert_eq!(summary.categorical[0].counts, [2, 1, 2]);
        assert!(summary.to_string().contains("(3 present)"), "{summary}");
    }

    #[test]
    fn a_missing_value_becomes_exactly_the_pooled_mean_standardised() {
        let schema = missing_schema();
        let sums = stats_contribution(&schema, &missing_rows()).unwrap().values;
        let st = Standardization::from_summed_stats(&schema, &sums).unwrap();
        let mut features = missing_rows();
        st.standardize(&schema, &mut features).unwrap();
        let width = schema.num_features();
        for (i, row) in features.chunks_exact(width).enumerate() {
            assert!(row.iter().all(|x| x.is_finite()), "row {i}: {row:?}");
        }
        // Rows 1 and 4 miss chol: exactly 0, which a value equal to the pooled mean gives.
        let mut at_mean = missing_row(40.0, 0, Some(st.mean[4]));
        st.standardize(&schema, &mut at_mean).unwrap();
        assert_eq!(at_mean[4], 0.0);
        for row in [1, 4] {
            assert_eq!(features[row * width + 4], 0.0);
            assert_eq!(features[row * width + 5], 1.0, "the indicator is kept");
        }
        // A present value is standardised as usual, with indicator 0.
        assert_eq!(features[4], (180.0 - st.mean[4]) / st.std[4]);
        assert_eq!(features[5], 0.0);
        // `standardize` agrees with `apply` where nothing is missing.
        let mut complete = missing_row(40.0, 0, Some(180.0));
        let mut applied = complete.clone();
        st.standardize(&schema, &mut complete).unwrap();
        st.apply(&mut applied);
        assert_eq!(complete, applied);
    }

    #[test]
    fn standardize_refuses_a_stray_nan_and_a_misfit() {
        let schema = missing_schema();
        let st = Standardization::identity(schema.num_features());
        // NaN in age, which does not impute; in the indicator; in a one-hot.
        for feature in [0, 5, 2] {
            let mut row = missing_row(40.0, 0, Some(180.0));
            row[feature] = f32::NAN;
            assert_eq!(
                st.standardize(&schema, &mut row),
                Err(StatsError::NonFiniteFeature { row: 0, feature })
            );
        }
        let mut ragged = missing_row(40.0, 0, None);
        ragged.pop();
        assert!(matches!(
            st.standardize(&schema, &mut ragged),
            Err(StatsError::RaggedFeatures { .. })
        ));
        let narrow = Standardization::identity(schema.num_features() - 1);
        assert!(matches!(
            narrow.standardize(&schema, &mut missing_row(40.0, 0, None)),
            Err(StatsError::StandardizationWidth { .. })
        ));
    }

    #[test]
    fn a_column_with_no_present_value_imputes_the_centre_of_its_range() {
        let schema = missing_schema();
        let features = [missing_row(40.0, 0, None), missing_row(50.0, 1, None)].concat();
        let sums = stats_contribution(&schema, &features).unwrap().values;
        let st = Standardization::from_summed_stats(&schema, &sums).unwrap();
        st.validate(&schema).unwrap();
        assert_eq!(st.mean[4], 250.0);
        assert_eq!(f64::from(st.std[4]), 300.0 / STD_FLOOR_DIVISOR);
    }

    /// `SCHEMA` with a 1×2×2 grey image between `sex` and `chol`.
    fn image_schema() -> Schema {
        Schema::parse(&SCHEMA.replace(
            "[[columns]]\nname = \"chol\"",
            "[[columns]]\nname = \"scan\"\ntype = \"image\"\nchannels = 1\nheight = 2\nwidth = 2\n\
             mean = [0.5]\nstd = [0.25]\n[[columns]]\nname = \"chol\"",
        ))
        .unwrap()
    }

    /// `rows` with four pixel values (already normalised, some negative) after the sex one-hot.
    fn with_pixels(rows: &[f32]) -> Vec<f32> {
        rows.chunks_exact(5)
            .enumerate()
            .flat_map(|(i, r)| {
                let p = i as f32 / 10.0;
                [r[0], r[1], r[2], -2.0 + p, 2.0 - p, p, 0.0, r[3], r[4]]
            })
            .collect()
    }

    #[test]
    fn an_image_column_adds_nothing_to_the_statistics_and_is_never_standardised() {
        let plain = Schema::parse(SCHEMA).unwrap();
        let schema = image_schema();
        assert_eq!(schema.num_features(), 9);
        // The vector is the one the schema without the image gives, entry for entry.
        assert_eq!(StatsLayout::of(&schema), StatsLayout::of(&plain));
        assert_eq!(schema.stats_len(), StatsLayout::of(&schema).len());
        assert_eq!(
            crate::stats_release::sensitivity(&schema),
            crate::stats_release::sensitivity(&plain)
        );
        let rows = rows(7, 40);
        let mut features = with_pixels(&rows);
        let sums = values(&schema, &features);
        assert_eq!(sums, values(&plain, &rows));

        // The pixels get the identity; the numeric columns what they get without the image.
        let st = Standardization::from_summed_stats(&schema, &sums).unwrap();
        let without = Standardization::from_summed_stats(&plain, &sums).unwrap();
        st.validate(&schema).unwrap();
        assert_eq!(st.mean[3..7], [0.0; 4]);
        assert_eq!(st.std[3..7], [1.0; 4]);
        let others = |v: &[f32]| [&v[..3], &v[7..]].concat();
        assert_eq!(others(&st.mean), without.mean);
        assert_eq!(others(&st.std), without.std);

        let before = features.clone();
        st.standardize(&schema, &mut features).unwrap();
        for (row, (after, before)) in features.chunks(9).zip(before.chunks(9)).enumerate() {
            assert_eq!(after[3..7], before[3..7], "row {row}: pixels moved");
            assert_ne!(after[0], before[0], "row {row}: age not standardised");
        }
        // Nor does the summary speak of the image.
        let summary = FederatedSummary::from_summed_stats(&schema, &sums).unwrap();
        assert_eq!(
            summary,
            FederatedSummary::from_summed_stats(&plain, &sums).unwrap()
        );
    }
}
