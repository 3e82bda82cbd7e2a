//! The consortium's data schema: which CSV columns exist, how each becomes model features, which
//! column is the label and which attributes the bias audit groups by.
//!
//! Every hospital and the coordinator hold the same schema, written in TOML:
//!
//! ```toml
//! drop = ["id", "dataset"]          # present in the CSV but ignored
//! sensitive = ["sex", "age"]         # attributes the fairness audit groups by
//! intersections = [["sex", "age"]]   # optional: also audit every (sex, age band) pair
//! [label]
//! column = "num"
//! positive = ["1", "2", "3", "4"]    # raw cell values meaning the positive class
//! negative = ["0"]
//! [[columns]]
//! name = "age"
//! type = "numeric"
//! range = [20, 90]                  # the clipping range of the statistics round
//! [[columns]]
//! name = "sex"
//! type = "categorical"
//! levels = ["Female", "Male"]
//! ```
//!
//! Encoded features follow the declaration order of `columns`: a numeric column gives one feature
//! named after the column, a categorical column one one-hot feature per level, named
//! `column=level`. [`Schema::digest`] lets the parties check that they hold the same schema.
//!
//! Every numeric column declares its `range = [low, high]`: the statistics round clips each value
//! into it before it is counted (see [`crate::stats`]), so the range bounds what one patient can
//! add to the sums, and with it the noise a node needs for a differentially private release. The
//! range is required, not defaulted: no default fits every column, and one that clipped silently
//! would distort the standardisation. It clips only the statistics, never the training data.
//!
//! An intersection of two sensitive attributes is audited as one more attribute, named
//! `a×b` (see [`intersection_name`]), whose groups are the pairs of the two attributes' groups,
//! named `level_a, level_b` (for example `Female, 40-<60`), in the order of `a`'s groups, then
//! `b`'s.
//!
//! # Missing values
//!
//! A cell is *missing* when it is blank, or equal to one of the schema-level tokens
//! `missing_values = ["NA", "?"]` (compared with the trimmed cell). Each column says what a
//! missing cell means with `missing`:
//!
//! - `missing = "refuse"` (the default): the row is refused, as before these keys existed.
//! - `missing = "level"` (categorical only): one more level, encoded as one more one-hot
//!   feature after the declared levels, named `column=(missing)` ([`MISSING_LEVEL`]); a schema
//!   that declares a level `(missing)` itself is refused.
//! - `missing = "impute"` (numeric only): the value becomes the consortium-wide mean of the
//!   column's present values (from the statistics round, [`crate::stats`]), and one more
//!   feature right after the value, named `column (missing)` ([`MISSING_INDICATOR_SUFFIX`]), is 1
//!   for a missing cell and 0 otherwise. Before standardisation a missing value is NaN in the
//!   value's slot; [`crate::stats::Standardization::standardize`] is the one place that turns
//!   it into the mean.
//!
//! A token that is also a level of a categorical column is refused (the cell would be both).
//! A schema without these keys encodes, and digests, exactly as before they existed.
//!
//! A sensitive attribute need not be a model input. A column declared with `input = false` is
//! *audit-only*: the audit groups by it (it must be listed in `sensitive`), the CSV must carry it
//! and its cells are checked against its levels (or, numeric, parsed as numbers), but it is never
//! encoded, never a feature and never in the statistics round, so [`Schema::columns`],
//! [`Schema::feature_names`], [`Schema::num_features`] and [`Schema::stats_len`] leave it out
//! ([`Schema::audit_only_columns`] lists it):
//!
//! ```toml
//! sensitive = ["sex", "race"]
//! [[columns]]
//! name = "race"
//! type = "categorical"
//! levels = ["Asian", "Black", "White", "Other"]
//! input = false                      # audited, never a model input
//! ```
//!
//! A numeric audit-only column still declares its `range` (every numeric column does; the range
//! is then unused) and its `bands`, as any numeric sensitive attribute does. `input = false` on
//! a column that is not sensitive is refused: it would be read for nothing.
//!
//! # Image columns
//!
//! A column of `type = "image"` holds, in each cell, the path of an image file (PNG or JPEG;
//! relative to the CSV file's directory, or absolute). It is encoded as
//! `channels × height × width` features, row-major in channel, row, column order (CHW, PyTorch's
//! layout), named `column[c,y,x]`:
//!
//! ```toml
//! [[columns]]
//! name = "scan"
//! type = "image"
//! channels = 1          # 1 (grey) or 3 (RGB)
//! height = 28
//! width = 28
//! resize = false        # optional, default false: an image of another size is refused;
//!                       # true: it is resized (bilinear) to height × width
//! mean = [0.5]          # optional, one per channel, default 0
//! std = [0.25]          # optional, one per channel, default 1; each positive
//! ```
//!
//! Each pixel value `v` becomes `(v / max − mean[c]) / std[c]`, with `max` 255 (8-bit) or 65535
//! (16-bit). The features are normalised by the schema alone: an image column adds nothing to
//! the statistics round ([`Schema::stats_len`]) and its features are never standardised (the
//! [`crate::stats::Standardization`] keeps them as they are). An image column refuses a missing
//! cell (no `missing` mode but `refuse`), cannot be a sensitive attribute (there is nothing to
//! group by) and gives at most [`crate::architecture::MAX_ACTIVATION`] features.
//!
//! This module only parses text; reading the file is the caller's job.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use ring::digest;
use serde::Deserialize;

/// The smallest schema with every part: a dropped identifier, the label, a numeric and a
/// categorical column, and a sensitive attribute (patients `id,age,sex,outcome`). For examples
/// and tests; a consortium writes its own.
pub const EXAMPLE_SCHEMA: &str = r#"
drop = ["id"]
sensitive = ["sex"]
[label]
column = "outcome"
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
"#;

/// A schema with an image column (patients `age,scan,sex,y`): `scan` names a 2×3 grey image,
/// normalised by the defaults (mean 0, std 1), between a numeric and a categorical column. For
/// examples and tests.
pub const EXAMPLE_IMAGE_SCHEMA: &str = r#"
sensitive = ["sex"]
[label]
column = "y"
positive = ["1"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [0, 120]
[[columns]]
name = "scan"
type = "image"
channels = 1
height = 2
width = 3
[[columns]]
name = "sex"
type = "categorical"
levels = ["F", "M"]
"#;

/// A validated data schema. Build it with [`Schema::parse`].
#[derive(Clone, Debug, PartialEq)]
pub struct Schema {
    columns: Vec<Column>,
    /// Cell values that mean "missing", besides a blank cell.
    missing_values: Vec<String>,
    label: Label,
    sensitive: Vec<String>,
    dropped: Vec<String>,
    /// Band edges of each numeric sensitive attribute.
    bands: BTreeMap<String, Vec<f64>>,
    /// Pairs of sensitive attributes audited together, as declared.
    intersections: Vec<[String; 2]>,
    /// Sensitive attributes that are not model inputs (`input = false`), in declaration order.
    audit_only: Vec<Column>,
}

/// Joins the two attribute names of an intersection into the name it is audited under.
pub const INTERSECTION_SEPARATOR: &str = "×";

/// Joins the two group names of an intersection group.
pub const INTERSECTION_GROUP_SEPARATOR: &str = ", ";

/// The name under which the intersection of sensitive attributes `a` and `b` is audited:
/// `a×b`, for example `sex×age`.
pub fn intersection_name(a: &str, b: &str) -> String {
    format!("{a}{INTERSECTION_SEPARATOR}{b}")
}

/// One group the fairness audit reports on: a level or band of one sensitive attribute.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditGroup {
    /// The sensitive attribute.
    pub attribute: String,
    /// The level (categorical) or band label (numeric), e.g. `Female` or `40-<60`.
    pub group: String,
}

/// One feature column of the schema.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    name: String,
    kind: ColumnKind,
    missing: MissingMode,
}

/// The level a categorical column under [`MissingMode::Level`] gives a missing cell: its
/// feature is named `column=(missing)`. No declared level may be named so.
pub const MISSING_LEVEL: &str = "(missing)";

/// Appended to a numeric column's name to name its missing-value indicator under
/// [`MissingMode::Impute`]: `age (missing)`.
pub const MISSING_INDICATOR_SUFFIX: &str = " (missing)";

/// What a missing cell of a column means (see the [module docs](self)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissingMode {
    /// The row is refused.
    #[default]
    Refuse,
    /// Categorical only: one more level, [`MISSING_LEVEL`].
    Level,
    /// Numeric only: the consortium-wide mean of the present values, plus an indicator feature.
    Impute,
}

/// How a column's cells are read and encoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnKind {
    /// A number, encoded as one feature.
    Numeric {
        /// The range its values are clipped into for the statistics round.
        range: ClipRange,
    },
    /// One of a fixed list of values, encoded one-hot with one feature per level.
    Categorical {
        /// The allowed cell values, in encoding order.
        levels: Vec<String>,
    },
    /// The path of an image file, encoded as its normalised pixels (see the
    /// [module docs](self#image-columns)).
    Image(ImageColumn),
}

/// What an image column declares: the image's channels and size, whether another size is
/// resized, and the per-channel normalisation. Built by [`Schema::parse`], which checks it.
#[derive(Clone, Debug, PartialEq)]
pub struct ImageColumn {
    channels: u8,
    height: u32,
    width: u32,
    resize: bool,
    mean: Vec<f32>,
    std: Vec<f32>,
}

// Every mean and standard deviation is finite (never NaN), so equality is reflexive.
impl Eq for ImageColumn {}

impl ImageColumn {
    /// 1 (grey) or 3 (RGB).
    pub fn channels(&self) -> u8 {
        self.channels
    }

    /// The image's height in pixels, at least 1.
    pub fn height(&self) -> u32 {
        self.height
    }

    /// The image's width in pixels, at least 1.
    pub fn width(&self) -> u32 {
        self.width
    }

    /// Whether an image of another size is resized to `height × width` (else it is refused).
    pub fn resize(&self) -> bool {
        self.resize
    }

    /// The value subtracted from each channel's pixels (scaled to `[0, 1]`), one per channel.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// The value each channel's shifted pixels are divided by, one per channel; each finite
    /// and at least [`crate::stats::MIN_STD`].
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Whether `index` is `c,y,x]` for a pixel value of this image, written as
    /// [`Schema::feature_names`] writes it.
    fn names_index(&self, index: &str) -> bool {
        let Some(index) = index.strip_suffix(']') else {
            return false;
        };
        let parts: Vec<&str> = index.split(',').collect();
        let [c, y, x] = parts.as_slice() else {
            return false;
        };
        let within = |text: &str, bound: u32| {
            text.parse::<u32>()
                .is_ok_and(|v| v < bound && v.to_string() == text)
        };
        within(c, u32::from(self.channels)) && within(y, self.height) && within(x, self.width)
    }

    /// The number of features: `channels × height × width`.
    pub fn num_features(&self) -> usize {
        usize::from(self.channels) * self.height as usize * self.width as usize
    }
}

impl fmt::Display for ImageColumn {
    /// `image 1×28×28 (other sizes refused), mean [0.5], std [0.25]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "image {}×{}×{} ({}), mean {:?}, std {:?}",
            self.channels,
            self.height,
            self.width,
            if self.resize {
                "other sizes resized"
            } else {
                "other sizes refused"
            },
            self.mean,
            self.std
        )
    }
}

/// The declared range `[low, high]` of a numeric column, `low < high`, both finite and within
/// `f32`'s range (the features are `f32`). Build it with [`ClipRange::new`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClipRange {
    low: f64,
    high: f64,
}

// Both bounds are finite (never NaN), so equality is reflexive.
impl Eq for ClipRange {}

impl ClipRange {
    /// The range `[low, high]`, or why it is not one: both finite, within `f32`'s range, and
    /// `low < high`.
    pub fn new(low: f64, high: f64) -> Result<Self, &'static str> {
        let limit = f64::from(f32::MAX);
        if !(low.is_finite() && high.is_finite()) || low.abs() > limit || high.abs() > limit {
            return Err("both bounds must be finite numbers within f32's range");
        }
        if low >= high {
            return Err("the low bound must be below the high bound");
        }
        // `+ 0.0` turns −0 into +0, so that equal ranges have equal bits (and digests).
        Ok(Self {
            low: low + 0.0,
            high: high + 0.0,
        })
    }

    /// The low bound.
    pub fn low(&self) -> f64 {
        self.low
    }

    /// The high bound.
    pub fn high(&self) -> f64 {
        self.high
    }

    /// `high − low`.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }
}

/// The label column and the raw cell values that mean each class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    column: String,
    positive: Vec<String>,
    negative: Vec<String>,
}

/// The labels [`crate::fairness::band`] gives for `edges`, lowest band first.
fn band_labels(edges: &[f64]) -> Vec<String> {
    let mut probes = vec![edges[0] - 1.0];
    probes.extend_from_slice(edges);
    probes
        .iter()
        .filter_map(|v| crate::fairness::band(*v, edges))
        .collect()
}

/// Why a schema text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The text is not TOML, or does not have the schema's shape (unknown or missing keys).
    #[error("schema is not valid: {message}")]
    Syntax {
        /// The TOML parser's explanation, with the location.
        message: String,
    },
    /// The schema declares no feature column.
    #[error("schema declares no feature column under [[columns]]")]
    NoColumns,
    /// A column, label or dropped name is empty.
    #[error("schema names a column with an empty name")]
    EmptyName,
    /// A name appears more than once across `columns`, `label.column` and `drop`.
    #[error(
        "column \"{name}\" is named more than once in the schema (across columns, label and drop)"
    )]
    DuplicateColumn {
        /// The repeated name.
        name: String,
    },
    /// A categorical column lists no levels.
    #[error("categorical column \"{column}\" lists no levels")]
    NoLevels {
        /// The column.
        column: String,
    },
    /// A categorical column lists the same level twice.
    #[error("categorical column \"{column}\" lists level \"{level}\" more than once")]
    DuplicateLevel {
        /// The column.
        column: String,
        /// The repeated level.
        level: String,
    },
    /// A categorical level is empty (an empty cell is a missing value, never a level).
    #[error("categorical column \"{column}\" has an empty level")]
    EmptyLevel {
        /// The column.
        column: String,
    },
    /// A numeric column declares no `range`.
    #[error("numeric column \"{column}\" declares no range; add `range = [low, high]`")]
    MissingRange {
        /// The column.
        column: String,
    },
    /// A numeric column's `range` is not two increasing finite numbers.
    #[error("numeric column \"{column}\": range {range}: {reason}")]
    BadRange {
        /// The column.
        column: String,
        /// The range as read, e.g. `[600.0, 0.0]`.
        range: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A column's `missing` is not `refuse`, `level` or `impute`.
    #[error(
        "column \"{column}\": missing = \"{mode}\" is not a mode; use \"refuse\", \"level\" (categorical) or \"impute\" (numeric)"
    )]
    UnknownMissingMode {
        /// The column.
        column: String,
        /// The mode as written.
        mode: String,
    },
    /// A column's `missing` mode does not fit its type (`level` on a numeric column, `impute` on
    /// a categorical one).
    #[error("{kind} column \"{column}\": missing = \"{mode}\" applies only to {fits} columns")]
    MissingModeMismatch {
        /// The column.
        column: String,
        /// The column's type.
        kind: &'static str,
        /// The mode as written.
        mode: &'static str,
        /// The type the mode applies to.
        fits: &'static str,
    },
    /// A categorical column under `missing = "level"` declares the level [`MISSING_LEVEL`].
    #[error(
        "categorical column \"{column}\" declares the level \"{MISSING_LEVEL}\", which missing = \"level\" gives missing cells; rename it"
    )]
    MissingLevelClash {
        /// The column.
        column: String,
    },
    /// A `missing_values` token is empty (a blank cell is always missing), listed twice, or
    /// also a level of a categorical column.
    #[error("missing_values token \"{token}\": {reason}")]
    BadMissingToken {
        /// The token.
        token: String,
        /// What is wrong, naming the column it clashes with.
        reason: String,
    },
    /// Two encoded features would have the same name (a column named like another column's
    /// missing-value feature, for example `age (missing)`).
    #[error("two encoded features would be named \"{name}\"; rename a column")]
    FeatureNameClash {
        /// The repeated feature name.
        name: String,
    },
    /// A categorical column carries a `range`.
    #[error("categorical column \"{column}\" has a range; only numeric columns take one")]
    RangeOnCategorical {
        /// The column.
        column: String,
    },
    /// A numeric column carries a `levels` list.
    #[error("numeric column \"{column}\" has levels; only categorical columns take levels")]
    LevelsOnNumeric {
        /// The column.
        column: String,
    },
    /// A key that does not apply to the column's type (an image key on a numeric or
    /// categorical column, `range` or `levels` on an image column).
    #[error("{kind} column \"{column}\" has `{key}`, which does not apply to {kind} columns")]
    KeyNotForType {
        /// The column.
        column: String,
        /// The column's type.
        kind: &'static str,
        /// The key.
        key: &'static str,
    },
    /// An image column lacks `channels`, `height` or `width`.
    #[error("image column \"{column}\" declares no `{key}`")]
    ImageKeyMissing {
        /// The column.
        column: String,
        /// The missing key.
        key: &'static str,
    },
    /// An image column's `channels` is not 1 or 3.
    #[error("image column \"{column}\": channels = {channels}; use 1 (grey) or 3 (RGB)")]
    ImageChannels {
        /// The column.
        column: String,
        /// The value as written.
        channels: i64,
    },
    /// An image column's `height` or `width` is not a positive size.
    #[error("image column \"{column}\": size {height}×{width}: each side must be at least 1")]
    ImageSize {
        /// The column.
        column: String,
        /// `height` as written.
        height: i64,
        /// `width` as written.
        width: i64,
    },
    /// An image column would give more than [`crate::architecture::MAX_ACTIVATION`] features.
    #[error(
        "image column \"{column}\": {channels}×{height}×{width} gives more than {max} features",
        max = crate::architecture::MAX_ACTIVATION
    )]
    ImageTooLarge {
        /// The column.
        column: String,
        /// The channels.
        channels: i64,
        /// The height.
        height: i64,
        /// The width.
        width: i64,
    },
    /// The columns together encode more features per row than any model takes.
    #[error("the columns encode {features} features per row, more than the {max} allowed")]
    TooManyFeatures {
        /// The encoded features per row.
        features: usize,
        /// The cap, [`crate::architecture::MAX_ACTIVATION`].
        max: usize,
    },
    /// An image column's `mean` or `std` does not list one value per channel.
    #[error(
        "image column \"{column}\": `{key}` lists {found} values, one per channel ({channels}) is needed"
    )]
    ImageNormalisationLength {
        /// The column.
        column: String,
        /// `mean` or `std`.
        key: &'static str,
        /// Values listed.
        found: usize,
        /// The column's channels.
        channels: u8,
    },
    /// A value of an image column's `mean` or `std` is unusable.
    #[error("image column \"{column}\": `{key}` value {value}: {reason}")]
    ImageNormalisationValue {
        /// The column.
        column: String,
        /// `mean` or `std`.
        key: &'static str,
        /// The value as read.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An image column is listed in `sensitive`.
    #[error(
        "image column \"{column}\" is listed in `sensitive`: the audit groups by levels or bands, which an image has not"
    )]
    SensitiveImage {
        /// The column.
        column: String,
    },
    /// The label's positive or negative list is empty.
    #[error("label lists no {class} values")]
    EmptyLabelClass {
        /// `"positive"` or `"negative"`.
        class: &'static str,
    },
    /// A label value is empty, or listed twice, or listed as both positive and negative.
    #[error("label value \"{value}\" is empty, repeated, or both positive and negative")]
    BadLabelValue {
        /// The offending value.
        value: String,
    },
    /// A sensitive attribute is not a column declared under `[[columns]]`, or is listed twice.
    #[error(
        "sensitive attribute \"{name}\" is not a column declared under [[columns]], or is listed twice"
    )]
    BadSensitive {
        /// The offending name.
        name: String,
    },
    /// Band edges that are missing, misplaced or not increasing.
    #[error("bands of {name}: {reason}")]
    BadBands {
        /// The attribute.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A column declared `input = false` that is not listed in `sensitive`.
    #[error(
        "column \"{column}\" has `input = false` but is not listed in `sensitive`: a column that is \
         neither a model input nor audited would be read for nothing"
    )]
    AuditOnlyNotSensitive {
        /// The column.
        column: String,
    },
    /// An entry of `intersections` that is not two distinct sensitive attributes, repeats an
    /// earlier entry, or whose audited name or group names clash.
    #[error("intersection {names:?}: {reason}")]
    BadIntersection {
        /// The entry as written.
        names: Vec<String>,
        /// What is wrong.
        reason: &'static str,
    },
}

impl Schema {
    /// Parses and validates a schema from its TOML text.
    pub fn parse(text: &str) -> Result<Self, SchemaError> {
        let raw: RawSchema = toml::from_str(text).map_err(|e| SchemaError::Syntax {
            message: e.to_string().trim_end().to_owned(),
        })?;
        raw.validate()
    }

    /// The feature columns, in declaration (and encoding) order; audit-only columns are not
    /// among them.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The audit-only columns (`input = false`), in declaration order: sensitive attributes the
    /// CSV carries and the audit groups by, never encoded as features.
    pub fn audit_only_columns(&self) -> &[Column] {
        &self.audit_only
    }

    /// The label column and its class values.
    pub fn label(&self) -> &Label {
        &self.label
    }

    /// The sensitive attributes, in declaration order; each names one of [`Self::columns`] or of
    /// [`Self::audit_only_columns`].
    pub fn sensitive(&self) -> &[String] {
        &self.sensitive
    }

    /// The CSV columns to ignore.
    pub fn dropped(&self) -> &[String] {
        &self.dropped
    }

    /// The tokens that mean "missing" besides a blank cell (`missing_values`), as declared.
    pub fn missing_values(&self) -> &[String] {
        &self.missing_values
    }

    /// Whether a trimmed cell is missing: blank, or one of [`Self::missing_values`].
    pub fn is_missing(&self, cell: &str) -> bool {
        cell.is_empty() || self.missing_values.iter().any(|t| t == cell)
    }

    /// The name of every encoded feature, in encoding order: `column` for a numeric column
    /// (then `column (missing)` when it imputes), `column=level` for each level of a categorical
    /// one (then `column=(missing)` when missing is a level), `column[c,y,x]` for each pixel
    /// value of an image column, in CHW order.
    pub fn feature_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.num_features());
        for column in &self.columns {
            column.push_feature_names(&mut names);
        }
        names
    }

    /// Refuses two encoded features of the same name, without naming every pixel: an image
    /// column's names `scan[c,y,x]` end in the only `[` of their index, so they can equal no
    /// other image column's (whose name differs), only another column's feature name that is
    /// `scan` followed by an index in range.
    fn check_feature_names(&self) -> Result<(), SchemaError> {
        let images: Vec<(&str, &ImageColumn)> = self
            .columns
            .iter()
            .filter_map(|c| Some((c.name(), c.image()?)))
            .collect();
        let mut names = Vec::new();
        for column in self.columns.iter().filter(|c| c.image().is_none()) {
            column.push_feature_names(&mut names);
        }
        let mut seen = HashSet::new();
        for name in names {
            let pixel = name.rsplit_once('[').is_some_and(|(prefix, index)| {
                images
                    .iter()
                    .any(|(image_name, image)| prefix == *image_name && image.names_index(index))
            });
            if pixel || !seen.insert(name.clone()) {
                return Err(SchemaError::FeatureNameClash { name });
            }
        }
        Ok(())
    }

    /// The number of encoded features: the model's input width.
    pub fn num_features(&self) -> usize {
        self.columns.iter().map(Column::width).sum()
    }

    /// The length of one node's federated-statistics vector: the count, a sum and a sum of
    /// squares per numeric column, a count per categorical level (the missing level included),
    /// a count of present values per imputed column and the noise's variance —
    /// `2 + (features of numeric and categorical columns) + (numeric columns)` (see
    /// [`crate::stats::stats_contribution`]). Image columns add nothing: their features are
    /// normalised by the schema, not by pooled statistics.
    pub fn stats_len(&self) -> usize {
        let numeric = self
            .columns
            .iter()
            .filter(|c| matches!(c.kind, ColumnKind::Numeric { .. }))
            .count();
        let counted: usize = self
            .columns
            .iter()
            .filter(|c| c.image().is_none())
            .map(Column::width)
            .sum();
        2 + counted + numeric
    }

    /// The intersections of two sensitive attributes that the audit also reports on, in
    /// declaration order; each pair names two distinct entries of [`Self::sensitive`].
    pub fn intersections(&self) -> &[[String; 2]] {
        &self.intersections
    }

    /// Every attribute the fairness audit reports on: the sensitive attributes in order, then
    /// each intersection under its [`intersection_name`].
    pub fn audit_attributes(&self) -> Vec<String> {
        self.sensitive
            .iter()
            .cloned()
            .chain(
                self.intersections
                    .iter()
                    .map(|[a, b]| intersection_name(a, b)),
            )
            .collect()
    }

    /// The groups the fairness audit reports on: for each sensitive attribute in order, its
    /// levels (categorical) or its bands (numeric); then, for each intersection `a×b`, every
    /// pair `group_a, group_b`, `a`'s groups in the outer loop.
    pub fn audit_groups(&self) -> Vec<AuditGroup> {
        let mut groups = Vec::new();
        for name in &self.sensitive {
            groups.extend(self.group_labels(name).into_iter().map(|group| AuditGroup {
                attribute: name.clone(),
                group,
            }));
        }
        for [a, b] in &self.intersections {
            let attribute = intersection_name(a, b);
            let right = self.group_labels(b);
            for left in self.group_labels(a) {
                groups.extend(right.iter().map(|r| AuditGroup {
                    attribute: attribute.clone(),
                    group: format!("{left}{INTERSECTION_GROUP_SEPARATOR}{r}"),
                }));
            }
        }
        groups
    }

    /// The index in [`Self::audit_groups`] of the group that a row whose `attribute`-th
    /// sensitive attribute reads `raw` belongs to; `None` for a value outside every group.
    pub fn audit_group_of(&self, attribute: usize, raw: &str) -> Option<usize> {
        let name = self.sensitive.get(attribute)?;
        let label = self.group_label_of(name, raw)?;
        self.audit_groups()
            .iter()
            .position(|g| &g.attribute == name && g.group == label)
    }

    /// The indices in [`Self::audit_groups`] of every group a row belongs to, given the raw
    /// cells of its sensitive attributes in [`Self::sensitive`] order: at most one group per
    /// attribute of [`Self::audit_attributes`], in that order. An attribute whose value is
    /// outside every group (or missing) contributes no group, and neither does any
    /// intersection involving it.
    pub fn audit_groups_of<S: AsRef<str>>(&self, row: &[S]) -> Vec<usize> {
        let labels: Vec<Vec<String>> = self
            .sensitive
            .iter()
            .map(|name| self.group_labels(name))
            .collect();
        // Position of the row's group within each attribute's groups.
        let within: Vec<Option<usize>> = self
            .sensitive
            .iter()
            .zip(&labels)
            .enumerate()
            .map(|(i, (name, labels))| {
                let label = self.group_label_of(name, row.get(i)?.as_ref())?;
                labels.iter().position(|l| *l == label)
            })
            .collect();
        let mut out = Vec::new();
        let mut offset = 0;
        for (position, labels) in within.iter().zip(&labels) {
            if let Some(p) = position {
                out.push(offset + p);
            }
            offset += labels.len();
        }
        for [a, b] in &self.intersections {
            let index = |name: &String| self.sensitive.iter().position(|s| s == name);
            // Validation guarantees both names are sensitive attributes.
            let (Some(ia), Some(ib)) = (index(a), index(b)) else {
                continue;
            };
            if let (Some(pa), Some(pb)) = (within[ia], within[ib]) {
                out.push(offset + pa * labels[ib].len() + pb);
            }
            offset += labels[ia].len() * labels[ib].len();
        }
        out
    }

    /// The group labels of sensitive attribute `name`: its bands or its levels.
    fn group_labels(&self, name: &str) -> Vec<String> {
        match (
            self.bands.get(name),
            self.columns
                .iter()
                .chain(&self.audit_only)
                .find(|c| c.name == name),
        ) {
            (Some(edges), _) => band_labels(edges),
            (
                None,
                Some(Column {
                    kind: ColumnKind::Categorical { levels },
                    ..
                }),
            ) => levels.clone(),
            _ => Vec::new(),
        }
    }

    /// The group label of a raw cell of sensitive attribute `name` (its band, or the trimmed
    /// cell); `None` for a non-number in a banded attribute.
    fn group_label_of(&self, name: &str, raw: &str) -> Option<String> {
        match self.bands.get(name) {
            Some(edges) => crate::fairness::band(raw.trim().parse::<f64>().ok()?, edges),
            None => Some(raw.trim().to_owned()),
        }
    }

    /// SHA-256 of the schema's meaning, so that the coordinator and the nodes can check that they
    /// agree.
    ///
    /// It covers a canonical encoding, not the TOML text: whitespace, comments, key order and the
    /// order of `drop` and of each label class list do not change it; the order of `columns`, of
    /// each column's levels, of `sensitive` and of `intersections` does, because it shapes the
    /// encoding and the audit, and so does each numeric column's range (the bits of its two
    /// bounds), because it shapes the statistics. So does each column's missing-value mode and
    /// the set of `missing_values` tokens, and audit-only columns, in their order, each as a
    /// feature column is. An image column's every key counts (channels, size, `resize`, and the
    /// bits of each `mean` and `std`). A schema without intersections, missing-value modes other than
    /// `refuse`, tokens and audit-only columns has the digest it would have had before these
    /// existed.
    pub fn digest(&self) -> [u8; 32] {
        let mut bytes = Vec::new();
        put_str(&mut bytes, DIGEST_DOMAIN);
        put_len(&mut bytes, self.columns.len());
        for column in &self.columns {
            put_column(&mut bytes, column);
        }
        put_str(&mut bytes, &self.label.column);
        put_list(&mut bytes, sorted(&self.label.positive).into_iter());
        put_list(&mut bytes, sorted(&self.label.negative).into_iter());
        put_list(&mut bytes, sorted(&self.dropped).into_iter());
        put_list(&mut bytes, self.sensitive.iter());
        for name in &self.sensitive {
            let edges = self.bands.get(name).map(Vec::as_slice).unwrap_or_default();
            put_len(&mut bytes, edges.len());
            for edge in edges {
                bytes.extend_from_slice(&edge.to_bits().to_be_bytes());
            }
        }
        // Appended only when present: everything before is length-prefixed, so the encoding
        // stays unambiguous, and older schemas keep their digest. A schema that declares
        // missing values or audit-only columns writes the intersections' count even when it is
        // 0, so that its bytes never read as another schema's intersections; the missing-value
        // block starts with its name, the audit-only block with a count, so neither reads as
        // the other.
        let declares_missing = !self.missing_values.is_empty()
            || self
                .columns
                .iter()
                .any(|c| c.missing != MissingMode::Refuse);
        if !self.intersections.is_empty() || declares_missing || !self.audit_only.is_empty() {
            put_len(&mut bytes, self.intersections.len());
            for pair in &self.intersections {
                put_list(&mut bytes, pair.iter());
            }
        }
        if declares_missing {
            put_str(&mut bytes, "missing");
            put_list(&mut bytes, sorted(&self.missing_values).into_iter());
            for column in &self.columns {
                bytes.push(match column.missing {
                    MissingMode::Refuse => 0,
                    MissingMode::Level => 1,
                    MissingMode::Impute => 2,
                });
            }
        }
        if !self.audit_only.is_empty() {
            put_len(&mut bytes, self.audit_only.len());
            for column in &self.audit_only {
                put_column(&mut bytes, column);
            }
        }
        let hash = digest::digest(&digest::SHA256, &bytes);
        let mut out = [0; 32];
        // Invariant: a SHA-256 digest is 32 bytes, so the lengths match.
        out.copy_from_slice(hash.as_ref());
        out
    }
}

impl Column {
    /// The column's name, as in the CSV header.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How the column is read and encoded.
    pub fn kind(&self) -> &ColumnKind {
        &self.kind
    }

    /// What a missing cell of this column means.
    pub fn missing(&self) -> MissingMode {
        self.missing
    }

    /// The clipping range of a numeric column; `None` for another.
    pub fn range(&self) -> Option<ClipRange> {
        match &self.kind {
            ColumnKind::Numeric { range } => Some(*range),
            ColumnKind::Categorical { .. } | ColumnKind::Image(_) => None,
        }
    }

    /// The declaration of an image column; `None` for another.
    pub fn image(&self) -> Option<&ImageColumn> {
        match &self.kind {
            ColumnKind::Image(image) => Some(image),
            ColumnKind::Numeric { .. } | ColumnKind::Categorical { .. } => None,
        }
    }

    /// Appends the names of this column's encoded features (see [`Schema::feature_names`]).
    fn push_feature_names(&self, names: &mut Vec<String>) {
        let name = &self.name;
        match &self.kind {
            ColumnKind::Numeric { .. } => names.push(name.clone()),
            ColumnKind::Categorical { levels } => {
                names.extend(levels.iter().map(|level| format!("{name}={level}")));
            }
            ColumnKind::Image(image) => {
                for c in 0..image.channels {
                    for y in 0..image.height {
                        names.extend((0..image.width).map(|x| format!("{name}[{c},{y},{x}]")));
                    }
                }
            }
        }
        match self.missing {
            MissingMode::Refuse => {}
            MissingMode::Level => names.push(format!("{name}={MISSING_LEVEL}")),
            MissingMode::Impute => names.push(format!("{name}{MISSING_INDICATOR_SUFFIX}")),
        }
    }

    /// The number of encoded features this column gives: one for a number (two when it
    /// imputes: the value and its indicator), one per level for a categorical column (one more
    /// when missing is a level), `channels × height × width` for an image.
    pub fn width(&self) -> usize {
        let values = match &self.kind {
            ColumnKind::Numeric { .. } => 1,
            ColumnKind::Categorical { levels } => levels.len(),
            ColumnKind::Image(image) => image.num_features(),
        };
        match self.missing {
            MissingMode::Refuse => values,
            MissingMode::Level | MissingMode::Impute => values + 1,
        }
    }
}

impl Label {
    /// The label column's name.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// Raw cell values meaning the positive class.
    pub fn positive(&self) -> &[String] {
        &self.positive
    }

    /// Raw cell values meaning the negative class.
    pub fn negative(&self) -> &[String] {
        &self.negative
    }

    /// The class of a raw cell value: `Some(true)` positive, `Some(false)` negative, `None` if the
    /// value is in neither list. The value is compared exactly; trim it first.
    pub fn class_of(&self, value: &str) -> Option<bool> {
        if self.positive.iter().any(|v| v == value) {
            Some(true)
        } else if self.negative.iter().any(|v| v == value) {
            Some(false)
        } else {
            None
        }
    }
}

impl fmt::Display for MissingMode {
    /// The mode as the schema writes it: `refuse`, `level`, `impute`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Refuse => "refuse",
            Self::Level => "level",
            Self::Impute => "impute",
        })
    }
}

impl fmt::Display for ColumnKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Numeric { .. } => f.write_str("numeric"),
            Self::Categorical { .. } => f.write_str("categorical"),
            Self::Image(_) => f.write_str("image"),
        }
    }
}

/// Separates this encoding from any other use of SHA-256; bump it if the encoding changes.
const DIGEST_DOMAIN: &str = "medfed-schema-v2";

/// The schema as written, before validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchema {
    #[serde(default)]
    drop: Vec<String>,
    #[serde(default)]
    sensitive: Vec<String>,
    label: RawLabel,
    #[serde(default)]
    columns: Vec<RawColumn>,
    /// Band edges of numeric sensitive attributes, e.g. `age = [40, 60]`.
    #[serde(default)]
    bands: BTreeMap<String, Vec<f64>>,
    /// Pairs of sensitive attributes audited together, e.g. `[["sex", "age"]]`.
    #[serde(default)]
    intersections: Vec<Vec<String>>,
    /// Cell values meaning "missing" besides a blank cell, e.g. `["NA", "?"]`.
    #[serde(default)]
    missing_values: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabel {
    column: String,
    positive: Vec<String>,
    negative: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawColumn {
    name: String,
    #[serde(rename = "type")]
    kind: RawKind,
    levels: Option<Vec<String>>,
    /// `[low, high]` of a numeric column.
    range: Option<Vec<f64>>,
    /// `refuse`, `level` or `impute`; checked by hand so that an error names the column.
    missing: Option<String>,
    /// `false` for an audit-only sensitive attribute; absent means a model input.
    input: Option<bool>,
    /// An image column's channels, height and width, checked by hand so that an error names
    /// the column.
    channels: Option<i64>,
    height: Option<i64>,
    width: Option<i64>,
    /// Whether an image of another size is resized; absent means refused.
    resize: Option<bool>,
    /// An image column's per-channel normalisation.
    mean: Option<Vec<f64>>,
    std: Option<Vec<f64>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawKind {
    Numeric,
    Categorical,
    Image,
}

impl RawKind {
    /// The type as the schema writes it.
    fn name(&self) -> &'static str {
        match self {
            Self::Numeric => "numeric",
            Self::Categorical => "categorical",
            Self::Image => "image",
        }
    }
}

impl RawSchema {
    fn validate(self) -> Result<Schema, SchemaError> {
        if !self.columns.iter().any(|c| c.input != Some(false)) {
            return Err(SchemaError::NoColumns);
        }
        let mut seen = HashSet::new();
        let all_names = self
            .columns
            .iter()
            .map(|c| &c.name)
            .chain(std::iter::once(&self.label.column))
            .chain(&self.drop);
        for name in all_names {
            if name.is_empty() {
                return Err(SchemaError::EmptyName);
            }
            if !seen.insert(name.as_str()) {
                return Err(SchemaError::DuplicateColumn { name: name.clone() });
            }
        }

        let (mut columns, mut audit_only) = (Vec::new(), Vec::new());
        for raw in self.columns {
            let input = raw.input != Some(false);
            let column = raw.validate()?;
            if input {
                columns.push(column);
            } else if column.missing != MissingMode::Refuse {
                // An audit-only cell is never encoded: a missing one is refused, and a mode
                // would only hide that (nor does the digest's audit-only block carry one).
                return Err(SchemaError::MissingModeMismatch {
                    column: column.name,
                    kind: "audit-only",
                    mode: match column.missing {
                        MissingMode::Level => "level",
                        _ => "impute",
                    },
                    fits: "model input",
                });
            } else if self.sensitive.contains(&column.name) {
                audit_only.push(column);
            } else {
                return Err(SchemaError::AuditOnlyNotSensitive {
                    column: column.name,
                });
            }
        }
        let label = self.label.validate()?;
        // Sensitive attributes are looked up among both kinds of column.
        let declared: Vec<&Column> = columns.iter().chain(&audit_only).collect();

        let mut seen_sensitive = HashSet::new();
        for name in &self.sensitive {
            let Some(column) = declared.iter().find(|c| &c.name == name) else {
                return Err(SchemaError::BadSensitive { name: name.clone() });
            };
            if !seen_sensitive.insert(name.as_str()) {
                return Err(SchemaError::BadSensitive { name: name.clone() });
            }
            if column.image().is_some() {
                return Err(SchemaError::SensitiveImage {
                    column: name.clone(),
                });
            }
        }

        for (name, edges) in &self.bands {
            let numeric_sensitive = self.sensitive.contains(name)
                && declared
                    .iter()
                    .any(|c| &c.name == name && matches!(c.kind, ColumnKind::Numeric { .. }));
            if !numeric_sensitive {
                return Err(SchemaError::BadBands {
                    name: name.clone(),
                    reason: "bands apply only to numeric sensitive attributes",
                });
            }
            let increasing = edges.windows(2).all(|w| w[0] < w[1]);
            if edges.is_empty() || !increasing || edges.iter().any(|e| !e.is_finite()) {
                return Err(SchemaError::BadBands {
                    name: name.clone(),
                    reason: "edges must be finite, strictly increasing, and at least one",
                });
            }
        }
        for name in &self.sensitive {
            let numeric = declared
                .iter()
                .any(|c| &c.name == name && matches!(c.kind, ColumnKind::Numeric { .. }));
            if numeric && !self.bands.contains_key(name) {
                return Err(SchemaError::BadBands {
                    name: name.clone(),
                    reason: "a numeric sensitive attribute needs band edges under [bands]",
                });
            }
        }

        let intersections = validate_intersections(&self.sensitive, self.intersections)?;
        validate_missing_values(&self.missing_values, &columns)?;
        let schema = Schema {
            columns,
            missing_values: self.missing_values,
            label,
            sensitive: self.sensitive,
            dropped: self.drop,
            bands: self.bands,
            intersections,
            audit_only,
        };
        // Each image column is within the cap; several of them together must be too, or one
        // row's features could outgrow what any model takes.
        let features = schema.columns.iter().map(Column::width).sum::<usize>();
        if features > crate::architecture::MAX_ACTIVATION {
            return Err(SchemaError::TooManyFeatures {
                features,
                max: crate::architecture::MAX_ACTIVATION,
            });
        }
        schema.check_feature_names()?;
        // Group names are keys of the audit: two groups of one attribute must not share a name
        // (possible only when a level itself contains ", ").
        let mut seen_groups = HashSet::new();
        for group in schema.audit_groups() {
            if !seen_groups.insert((group.attribute.clone(), group.group.clone())) {
                let names = group
                    .attribute
                    .split(INTERSECTION_SEPARATOR)
                    .map(str::to_owned)
                    .collect();
                return Err(SchemaError::BadIntersection {
                    names,
                    reason: "two of its groups have the same name",
                });
            }
        }
        Ok(schema)
    }
}

/// Checks the `missing_values` tokens: none empty or repeated, none a level of `columns`.
fn validate_missing_values(tokens: &[String], columns: &[Column]) -> Result<(), SchemaError> {
    let mut seen = HashSet::new();
    for token in tokens {
        let bad = |reason: String| SchemaError::BadMissingToken {
            token: token.clone(),
            reason,
        };
        if token.trim().is_empty() {
            return Err(bad(
                "a token must not be blank (a blank cell is always missing)".into(),
            ));
        }
        if token.trim() != token {
            return Err(bad(
                "cells are compared trimmed, so a token must not start or end with spaces".into(),
            ));
        }
        if !seen.insert(token.as_str()) {
            return Err(bad("listed twice".into()));
        }
        for column in columns {
            if let ColumnKind::Categorical { levels } = &column.kind
                && levels.contains(token)
            {
                return Err(bad(format!(
                    "it is also a level of column \"{}\"",
                    column.name
                )));
            }
        }
    }
    Ok(())
}

/// Checks `intersections`: each entry two distinct sensitive attributes, no pair twice (in
/// either order), and no audited name that is already a sensitive attribute's.
fn validate_intersections(
    sensitive: &[String],
    raw: Vec<Vec<String>>,
) -> Result<Vec<[String; 2]>, SchemaError> {
    let mut out: Vec<[String; 2]> = Vec::with_capacity(raw.len());
    for names in raw {
        let bad = |reason| SchemaError::BadIntersection {
            names: names.clone(),
            reason,
        };
        let [a, b] = names.as_slice() else {
            return Err(bad(
                "an intersection names exactly two sensitive attributes",
            ));
        };
        if !sensitive.contains(a) || !sensitive.contains(b) {
            return Err(bad("both names must be listed in `sensitive`"));
        }
        if a == b {
            return Err(bad("the two attributes must differ"));
        }
        if out
            .iter()
            .any(|[x, y]| (x == a && y == b) || (x == b && y == a))
        {
            return Err(bad("the same pair is listed twice"));
        }
        if sensitive.contains(&intersection_name(a, b)) {
            return Err(bad("its audited name is already a sensitive attribute's"));
        }
        out.push([a.clone(), b.clone()]);
    }
    Ok(out)
}

impl RawColumn {
    fn validate(self) -> Result<Column, SchemaError> {
        let missing = match self.missing.as_deref() {
            None | Some("refuse") => MissingMode::Refuse,
            Some("level") => MissingMode::Level,
            Some("impute") => MissingMode::Impute,
            Some(other) => {
                return Err(SchemaError::UnknownMissingMode {
                    column: self.name,
                    mode: other.to_owned(),
                });
            }
        };
        match (&self.kind, missing) {
            (RawKind::Numeric, MissingMode::Level) => {
                return Err(SchemaError::MissingModeMismatch {
                    column: self.name,
                    kind: "numeric",
                    mode: "level",
                    fits: "categorical",
                });
            }
            (RawKind::Categorical, MissingMode::Impute) => {
                return Err(SchemaError::MissingModeMismatch {
                    column: self.name,
                    kind: "categorical",
                    mode: "impute",
                    fits: "numeric",
                });
            }
            (RawKind::Image, MissingMode::Level | MissingMode::Impute) => {
                return Err(SchemaError::MissingModeMismatch {
                    column: self.name,
                    kind: "image",
                    mode: if missing == MissingMode::Level {
                        "level"
                    } else {
                        "impute"
                    },
                    fits: if missing == MissingMode::Level {
                        "categorical"
                    } else {
                        "numeric"
                    },
                });
            }
            (RawKind::Categorical, MissingMode::Level)
                if self
                    .levels
                    .as_ref()
                    .is_some_and(|l| l.iter().any(|l| l == MISSING_LEVEL)) =>
            {
                return Err(SchemaError::MissingLevelClash { column: self.name });
            }
            _ => {}
        }
        self.refuse_foreign_keys()?;
        let kind = match (self.kind, self.levels) {
            (RawKind::Image, _) => ColumnKind::Image(validate_image(
                &self.name,
                [self.channels, self.height, self.width],
                self.resize.unwrap_or(false),
                self.mean,
                self.std,
            )?),
            (RawKind::Numeric, None) => {
                let Some(range) = self.range else {
                    return Err(SchemaError::MissingRange { column: self.name });
                };
                let checked = match range.as_slice() {
                    [low, high] => ClipRange::new(*low, *high),
                    _ => Err("a range is two numbers, [low, high]"),
                };
                match checked {
                    Ok(range) => ColumnKind::Numeric { range },
                    Err(reason) => {
                        return Err(SchemaError::BadRange {
                            column: self.name,
                            range: format!("{range:?}"),
                            reason,
                        });
                    }
                }
            }
            (RawKind::Numeric, Some(_)) => {
                return Err(SchemaError::LevelsOnNumeric { column: self.name });
            }
            (RawKind::Categorical, _) if self.range.is_some() => {
                return Err(SchemaError::RangeOnCategorical { column: self.name });
            }
            (RawKind::Categorical, levels) => {
                let levels = levels.unwrap_or_default();
                if levels.is_empty() {
                    return Err(SchemaError::NoLevels { column: self.name });
                }
                let mut seen = HashSet::new();
                for level in &levels {
                    if level.is_empty() {
                        return Err(SchemaError::EmptyLevel { column: self.name });
                    }
                    if !seen.insert(level.as_str()) {
                        return Err(SchemaError::DuplicateLevel {
                            column: self.name,
                            level: level.clone(),
                        });
                    }
                }
                ColumnKind::Categorical { levels }
            }
        };
        Ok(Column {
            name: self.name,
            kind,
            missing,
        })
    }
}

impl RawColumn {
    /// Refuses a key of another type: an image key on a numeric or categorical column, a
    /// `range` or `levels` on an image column. (A `range` on a categorical column and `levels`
    /// on a numeric one keep their own errors.)
    fn refuse_foreign_keys(&self) -> Result<(), SchemaError> {
        let image_keys = [
            ("channels", self.channels.is_some()),
            ("height", self.height.is_some()),
            ("width", self.width.is_some()),
            ("resize", self.resize.is_some()),
            ("mean", self.mean.is_some()),
            ("std", self.std.is_some()),
        ];
        let other_keys = [
            ("range", self.range.is_some()),
            ("levels", self.levels.is_some()),
        ];
        let foreign = match self.kind {
            RawKind::Image => other_keys.as_slice(),
            RawKind::Numeric | RawKind::Categorical => image_keys.as_slice(),
        };
        match foreign.iter().find(|(_, present)| *present) {
            Some((key, _)) => Err(SchemaError::KeyNotForType {
                column: self.name.clone(),
                kind: self.kind.name(),
                key,
            }),
            None => Ok(()),
        }
    }
}

/// Checks an image column's declaration: `channels` 1 or 3, `height` and `width` present and
/// positive, at most [`crate::architecture::MAX_ACTIVATION`] features, and one finite `mean`
/// and one `std` of at least [`crate::stats::MIN_STD`] per channel (defaults 0 and 1).
fn validate_image(
    column: &str,
    [channels, height, width]: [Option<i64>; 3],
    resize: bool,
    mean: Option<Vec<f64>>,
    std: Option<Vec<f64>>,
) -> Result<ImageColumn, SchemaError> {
    let column = column.to_owned();
    let required = |key: &'static str, value: Option<i64>| {
        value.ok_or_else(|| SchemaError::ImageKeyMissing {
            column: column.clone(),
            key,
        })
    };
    let (channels, height, width) = (
        required("channels", channels)?,
        required("height", height)?,
        required("width", width)?,
    );
    let channels = match channels {
        1 => 1u8,
        3 => 3u8,
        _ => return Err(SchemaError::ImageChannels { column, channels }),
    };
    let (Ok(h), Ok(w)) = (u32::try_from(height), u32::try_from(width)) else {
        return Err(SchemaError::ImageSize {
            column,
            height,
            width,
        });
    };
    if h == 0 || w == 0 {
        return Err(SchemaError::ImageSize {
            column,
            height,
            width,
        });
    }
    let features = u64::from(channels) * u64::from(h) * u64::from(w);
    if features > crate::architecture::MAX_ACTIVATION as u64 {
        return Err(SchemaError::ImageTooLarge {
            column,
            channels: i64::from(channels),
            height,
            width,
        });
    }
    let per_channel = |key: &'static str, values: Option<Vec<f64>>, default: f32| {
        let Some(values) = values else {
            return Ok(vec![default; usize::from(channels)]);
        };
        if values.len() != usize::from(channels) {
            return Err(SchemaError::ImageNormalisationLength {
                column: column.clone(),
                key,
                found: values.len(),
                channels,
            });
        }
        values
            .into_iter()
            .map(|value| {
                let bad = |reason| SchemaError::ImageNormalisationValue {
                    column: column.clone(),
                    key,
                    value: value.to_string(),
                    reason,
                };
                // `+ 0.0` turns −0 into +0, so that equal declarations have equal digests.
                let single = value as f32 + 0.0;
                if !single.is_finite() {
                    return Err(bad("it must be a finite number within f32's range"));
                }
                if key == "std" && single < crate::stats::MIN_STD {
                    return Err(bad(
                        "a standard deviation must be positive (at least 1e-12)",
                    ));
                }
                Ok(single)
            })
            .collect()
    };
    Ok(ImageColumn {
        channels,
        height: h,
        width: w,
        resize,
        mean: per_channel("mean", mean, 0.0)?,
        std: per_channel("std", std, 1.0)?,
    })
}

impl RawLabel {
    fn validate(self) -> Result<Label, SchemaError> {
        if self.positive.is_empty() {
            return Err(SchemaError::EmptyLabelClass { class: "positive" });
        }
        if self.negative.is_empty() {
            return Err(SchemaError::EmptyLabelClass { class: "negative" });
        }
        let mut seen = HashSet::new();
        for value in self.positive.iter().chain(&self.negative) {
            if value.is_empty() || !seen.insert(value.as_str()) {
                return Err(SchemaError::BadLabelValue {
                    value: value.clone(),
                });
            }
        }
        Ok(Label {
            column: self.column,
            positive: self.positive,
            negative: self.negative,
        })
    }
}

fn sorted(values: &[String]) -> Vec<&String> {
    let mut values: Vec<&String> = values.iter().collect();
    values.sort();
    values
}

fn put_len(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&(len as u64).to_le_bytes());
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    put_len(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

/// A column as the digest encodes it: its name, then 0 and the range's bits (numeric), 1 and
/// the levels (categorical), or 2, the channels, height, width, `resize` and the bits of each
/// mean and std (image).
fn put_column(out: &mut Vec<u8>, column: &Column) {
    put_str(out, &column.name);
    match &column.kind {
        ColumnKind::Numeric { range } => {
            out.push(0);
            out.extend_from_slice(&range.low.to_bits().to_be_bytes());
            out.extend_from_slice(&range.high.to_bits().to_be_bytes());
        }
        ColumnKind::Categorical { levels } => {
            out.push(1);
            put_list(out, levels.iter());
        }
        ColumnKind::Image(image) => {
            out.push(2);
            out.push(image.channels);
            out.extend_from_slice(&image.height.to_be_bytes());
            out.extend_from_slice(&image.width.to_be_bytes());
            out.push(u8::from(image.resize));
            for values in [&image.mean, &image.std] {
                put_len(out, values.len());
                for value in values {
                    out.extend_from_slice(&value.to_bits().to_be_bytes());
                }
            }
        }
    }
}

fn put_list<'a>(out: &mut Vec<u8>, items: impl ExactSizeIterator<Item = &'a String>) {
    put_len(out, items.len());
    for item in items {
        put_str(out, item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_schema_has_every_part_it_promises() {
        let schema = Schema::parse(EXAMPLE_SCHEMA).unwrap();
        assert_eq!(schema.dropped(), ["id"]);
        assert_eq!(schema.num_features(), 3);
        assert_eq!(schema.audit_attributes(), ["sex"]);
    }

    const HEART: &str = r#"
drop = ["id", "dataset"]
sensitive = ["sex", "age"]
[label]
column = "num"
positive = ["1", "2", "3", "4"]
negative = ["0"]
[[columns]]
name = "age"
type = "numeric"
range = [20, 90]
[[columns]]
name = "sex"
type = "categorical"
levels = ["Female", "Male"]
[[columns]]
name = "chol"
type = "numeric"
range = [0, 600]
[bands]
age = [40, 60]
"#;

    fn parse_err(text: &str) -> SchemaError {
        Schema::parse(text).expect_err("schema should be refused")
    }

    #[test]
    fn parses_and_lays_out_features() {
        let schema = Schema::parse(HEART).unwrap();
        assert_eq!(
            schema.feature_names(),
            ["age", "sex=Female", "sex=Male", "chol"]
        );
        assert_eq!(schema.num_features(), 4);
        // n, a sum and a sum of squares for age and chol, a count for each sex, the noise.
        assert_eq!(schema.stats_len(), 8);
        assert_eq!(
            schema.columns()[0].range(),
            Some(ClipRange::new(20.0, 90.0).unwrap())
        );
        assert_eq!(schema.columns()[1].range(), None);
        assert_eq!(schema.columns().len(), 3);
        assert_eq!(schema.columns()[1].width(), 2);
        assert_eq!(schema.label().column(), "num");
        assert_eq!(schema.label().class_of("3"), Some(true));
        assert_eq!(schema.label().class_of("0"), Some(false));
        assert_eq!(schema.label().class_of("5"), None);
        assert_eq!(schema.sensitive(), ["sex", "age"]);
        assert_eq!(schema.dropped(), ["id", "dataset"]);
    }

    #[test]
    fn duplicate_column_is_named() {
        let text = HEART.replace("name = \"chol\"", "name = \"age\"");
        let err = parse_err(&text);
        assert_eq!(err, SchemaError::DuplicateColumn { name: "age".into() });
        assert!(err.to_string().contains("\"age\""), "{err}");
    }

    #[test]
    fn column_clashing_with_label_or_drop_is_named() {
        let text = HEART.replace("name = \"chol\"", "name = \"num\"");
        assert_eq!(
            parse_err(&text),
            SchemaError::DuplicateColumn { name: "num".into() }
        );
        let text = HEART.replace("drop = [\"id\", \"dataset\"]", "drop = [\"id\", \"chol\"]");
        let err = parse_err(&text);
        assert_eq!(
            err,
            SchemaError::DuplicateColumn {
                name: "chol".into()
            }
        );
        assert!(err.to_string().contains("\"chol\""), "{err}");
    }

    #[test]
    fn sensitive_must_name_a_declared_feature_column() {
        let text = HEART.replace("sensitive = [\"sex\", \"age\"]", "sensitive = [\"race\"]");
        let err = parse_err(&text);
        assert_eq!(
            err,
            SchemaError::BadSensitive {
                name: "race".into()
            }
        );
        assert!(err.to_string().contains("\"race\""), "{err}");
        // Neither the label nor a dropped column is a feature column.
        let text = HEART.replace("sensitive = [\"sex\", \"age\"]", "sensitive = [\"id\"]");
        assert_eq!(
            parse_err(&text),
            SchemaError::BadSensitive { name: "id".into() }
        );
        let text = HEART.replace(
            "sensitive = [\"sex\", \"age\"]",
            "sensitive = [\"sex\", \"sex\"]",
        );
        assert_eq!(
            parse_err(&text),
            SchemaError::BadSensitive { name: "sex".into() }
        );
    }

    #[test]
    fn categorical_levels_are_checked() {
        let text = HEART.replace("levels = [\"Female\", \"Male\"]", "levels = []");
        assert_eq!(
            parse_err(&text),
            SchemaError::NoLevels {
                column: "sex".into()
            }
        );
        let text = HEART.replace("levels = [\"Female\", \"Male\"]", "");
        assert_eq!(
            parse_err(&text),
            SchemaError::NoLevels {
                column: "sex".into()
            }
        );
        let text = HEART.replace("\"Female\", \"Male\"", "\"Male\", \"Male\"");
        assert_eq!(
            parse_err(&text),
            SchemaError::DuplicateLevel {
                column: "sex".into(),
                level: "Male".into()
            }
        );
        let text = HEART.replace("\"Female\", \"Male\"", "\"\", \"Male\"");
        assert_eq!(
            parse_err(&text),
            SchemaError::EmptyLevel {
                column: "sex".into()
            }
        );
        let text = HEART.replace(
            "name = \"chol\"\ntype = \"numeric\"",
            "name = \"chol\"\ntype = \"numeric\"\nlevels = [\"a\"]",
        );
        assert_eq!(
            parse_err(&text),
            SchemaError::LevelsOnNumeric {
                column: "chol".into()
            }
        );
    }

    #[test]
    fn numeric_ranges_are_required_and_checked_and_named() {
        let text = HEART.replace("range = [0, 600]\n", "");
        let err = parse_err(&text);
        assert_eq!(
            err,
            SchemaError::MissingRange {
                column: "chol".into()
            }
        );
        assert!(err.to_string().contains("\"chol\""), "{err}");
        for (range, reason) in [
            ("[600, 0]", "below"),
            ("[5, 5]", "below"),
            ("[0]", "two numbers"),
            ("[0, 1, 2]", "two numbers"),
            ("[0, 1e39]", "f32"),
            ("[-inf, 0]", "finite"),
            ("[nan, 1]", "finite"),
        ] {
            let err = parse_err(&HEART.replace("[0, 600]", range));
            assert!(
                matches!(&err, SchemaError::BadRange { column, .. } if column == "chol"),
                "{range}: {err:?}"
            );
            let message = err.to_string();
            assert!(
                message.contains("\"chol\"") && message.contains(reason),
                "{range}: {message}"
            );
        }
        let text = HEART.replace(
            "levels = [\"Female\", \"Male\"]",
            "levels = [\"Female\", \"Male\"]\nrange = [0, 1]",
        );
        assert_eq!(
            parse_err(&text),
            SchemaError::RangeOnCategorical {
                column: "sex".into()
            }
        );
        let text = HEART.replace("range = [0, 600]", "range = \"wide\"");
        assert!(matches!(parse_err(&text), SchemaError::Syntax { .. }));
    }

    #[test]
    fn label_classes_are_checked() {
        let text = HEART.replace("positive = [\"1\", \"2\", \"3\", \"4\"]", "positive = []");
        assert_eq!(
            parse_err(&text),
            SchemaError::EmptyLabelClass { class: "positive" }
        );
        let text = HEART.replace("negative = [\"0\"]", "negative = []");
        assert_eq!(
            parse_err(&text),
            SchemaError::EmptyLabelClass { class: "negative" }
        );
        let text = HEART.replace("negative = [\"0\"]", "negative = [\"0\", \"2\"]");
        assert_eq!(
            parse_err(&text),
            SchemaError::BadLabelValue { value: "2".into() }
        );
    }

    #[test]
    fn unknown_keys_and_types_are_refused() {
        let text = HEART.replace("drop =", "dorp =");
        assert!(matches!(parse_err(&text), SchemaError::Syntax { .. }));
        let text = HEART.replace("type = \"numeric\"", "type = \"number\"");
        assert!(matches!(parse_err(&text), SchemaError::Syntax { .. }));
        let text = HEART.replace(
            "[[columns]]\nname = \"age\"",
            "[[columns]]\nname = \"age\"\nunit = \"y\"",
        );
        assert!(matches!(parse_err(&text), SchemaError::Syntax { .. }));
        assert!(matches!(
            parse_err("not toml at all ["),
            SchemaError::Syntax { .. }
        ));
    }

    #[test]
    fn no_columns_is_refused() {
        let text = "[label]\ncolumn = \"y\"\npositive = [\"1\"]\nnegative = [\"0\"]\n";
        assert_eq!(parse_err(text), SchemaError::NoColumns);
    }

    #[test]
    fn digest_ignores_formatting() {
        let reformatted = r#"
# Same schema, other layout.
sensitive = [ "sex" , "age" ]
drop = ["dataset", "id"]   # order of drop does not matter

[[columns]]
range = [20.0, 90]
type = "numeric"
name = "age"

[[columns]]
name = "sex"
levels = [
    "Female",
    "Male",
]
type = "categorical"

[[columns]]
name = "chol"
type = "numeric"
range = [-0.0, 6e2]

[label]
negative = ["0"]
positive = ["4", "3", "2", "1"]
column = "num"

[bands]
age = [40.0, 60.0]
"#;
        let a = Schema::parse(HEART).unwrap();
        let b = Schema::parse(reformatted).unwrap();
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn digest_changes_with_meaning() {
        let base = Schema::parse(HEART).unwrap().digest();
        let changes = [
            HEART.replace("\"Female\", \"Male\"", "\"Female\", \"Male\", \"Other\""),
            HEART.replace("\"Female\", \"Male\"", "\"Male\", \"Female\""),
            HEART.replace("\"Female\", \"Male\"", "\"F\", \"M\""),
            HEART.replace("negative = [\"0\"]", "negative = [\"0\", \"5\"]"),
            HEART
                .replace("sensitive = [\"sex\", \"age\"]", "sensitive = [\"sex\"]")
                .replace("[bands]\nage = [40, 60]\n", ""),
            HEART.replace("age = [40, 60]", "age = [40, 65]"),
            HEART.replace(
                "name = \"chol\"\ntype = \"numeric\"\nrange = [0, 600]",
                "name = \"chol\"\ntype = \"categorical\"\nlevels = [\"hi\"]",
            ),
            HEART.replace("range = [0, 600]", "range = [0, 601]"),
            HEART.replace("range = [20, 90]", "range = [19.5, 90]"),
        ];
        for text in &changes {
            let other = Schema::parse(text).unwrap().digest();
            assert_ne!(other, base, "digest unchanged for:\n{text}");
        }
    }

    #[test]
    fn audit_groups_are_levels_and_bands_in_order() {
        let schema = Schema::parse(HEART).unwrap();
        let groups: Vec<String> = schema
            .audit_groups()
            .iter()
            .map(|g| format!("{}={}", g.attribute, g.group))
            .collect();
        assert!(groups.len() >= 5, "{groups:?}");
        let age: Vec<&String> = groups.iter().filter(|g| g.starts_with("age=")).collect();
        assert_eq!(age.len(), 3, "{groups:?}");
        let sex = schema.sensitive().iter().position(|s| s == "sex").unwrap();
        let age_attr = schema.sensitive().iter().position(|s| s == "age").unwrap();
        let young = schema.audit_group_of(age_attr, "35").unwrap();
        let old = schema.audit_group_of(age_attr, "71").unwrap();
        assert_ne!(young, old);
        assert_eq!(schema.audit_groups()[young].attribute, "age");
        assert!(schema.audit_group_of(age_attr, "not a number").is_none());
        let first_level = schema.audit_group_of(
            sex,
            &schema
                .audit_groups()
                .iter()
                .find(|g| g.attribute == "sex")
                .unwrap()
                .group,
        );
        assert!(first_level.is_some());
    }

    fn with_intersections(list: &str) -> String {
        HEART.replace(
            "sensitive = [\"sex\", \"age\"]",
            &format!("sensitive = [\"sex\", \"age\"]\nintersections = {list}"),
        )
    }

    #[test]
    fn intersection_groups_are_the_cross_product_after_the_single_attributes() {
        let plain = Schema::parse(HEART).unwrap();
        let schema = Schema::parse(&with_intersections("[[\"sex\", \"age\"]]")).unwrap();
        assert_eq!(schema.audit_attributes(), ["sex", "age", "sex×age"]);
        assert_eq!(
            schema.intersections(),
            [["sex".to_owned(), "age".to_owned()]]
        );
        let groups = schema.audit_groups();
        // The single attributes' groups come first, unchanged.
        assert_eq!(groups[..plain.audit_groups().len()], plain.audit_groups());
        let crossed: Vec<&str> = groups[plain.audit_groups().len()..]
            .iter()
            .inspect(|g| assert_eq!(g.attribute, "sex×age"))
            .map(|g| g.group.as_str())
            .collect();
        assert_eq!(
            crossed,
            [
                "Female, <40",
                "Female, 40-<60",
                "Female, ≥60",
                "Male, <40",
                "Male, 40-<60",
                "Male, ≥60"
            ]
        );
        // A schema without intersections audits no pair.
        assert_eq!(plain.audit_attributes(), ["sex", "age"]);
        assert!(plain.intersections().is_empty());
    }

    #[test]
    fn a_row_belongs_to_one_group_per_audited_attribute() {
        let schema = Schema::parse(&with_intersections("[[\"age\", \"sex\"]]")).unwrap();
        let groups = schema.audit_groups();
        let named = |row: &[&str]| -> Vec<String> {
            schema
                .audit_groups_of(row)
                .into_iter()
                .map(|i| format!("{}={}", groups[i].attribute, groups[i].group))
                .collect()
        };
        // Sensitive cells are in `sensitive` order: sex, then age.
        assert_eq!(
            named(&["Male", "45"]),
            ["sex=Male", "age=40-<60", "age×sex=40-<60, Male"]
        );
        assert_eq!(
            named(&["Female", " 60 "]),
            ["sex=Female", "age=≥60", "age×sex=≥60, Female"]
        );
        // A value outside every group drops that attribute and every intersection with it.
        assert_eq!(named(&["Other", "30"]), ["age=<40"]);
        assert_eq!(named(&["Female", "n/a"]), ["sex=Female"]);
        assert!(named(&[]).is_empty());
        // The single-attribute groups agree with `audit_group_of`.
        let row = ["Male", "71"];
        let all = schema.audit_groups_of(&row);
        assert_eq!(Some(all[0]), schema.audit_group_of(0, row[0]));
        assert_eq!(Some(all[1]), schema.audit_group_of(1, row[1]));
    }

    #[test]
    fn intersections_must_pair_two_distinct_sensitive_attributes_once() {
        for (list, reason) in [
            ("[[\"sex\"]]", "exactly two"),
            ("[[\"sex\", \"age\", \"chol\"]]", "exactly two"),
            ("[[\"sex\", \"chol\"]]", "`sensitive`"),
            ("[[\"sex\", \"race\"]]", "`sensitive`"),
            ("[[\"sex\", \"sex\"]]", "differ"),
            ("[[\"sex\", \"age\"], [\"age\", \"sex\"]]", "twice"),
        ] {
            let err = parse_err(&with_intersections(list));
            assert!(
                matches!(err, SchemaError::BadIntersection { .. }),
                "{list}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{list}: {err}");
        }
        let err = parse_err(&with_intersections("\"sex\""));
        assert!(matches!(err, SchemaError::Syntax { .. }), "{err:?}");
    }

    #[test]
    fn digest_covers_intersections() {
        let base = Schema::parse(HEART).unwrap().digest();
        let crossed = Schema::parse(&with_intersections("[[\"sex\", \"age\"]]"))
            .unwrap()
            .digest();
        let reversed = Schema::parse(&with_intersections("[[\"age\", \"sex\"]]"))
            .unwrap()
            .digest();
        let empty = Schema::parse(&with_intersections("[]")).unwrap().digest();
        assert_ne!(crossed, base);
        assert_ne!(crossed, reversed, "the order names the groups");
        assert_eq!(empty, base);
    }

    /// HEART with `race` as an audit-only attribute.
    fn with_race() -> String {
        HEART.replace(
            "sensitive = [\"sex\", \"age\"]",
            "sensitive = [\"sex\", \"race\", \"age\"]",
        ) + "[[columns]]\nname = \"race\"\ntype = \"categorical\"\nlevels = [\"Black\", \"White\", \"Other\"]\ninput = false\n"
    }

    #[test]
    fn audit_only_attributes_are_audited_but_never_encoded() {
        let plain = Schema::parse(HEART).unwrap();
        let schema = Schema::parse(&with_race()).unwrap();
        // The model's inputs and the statistics round are those of the schema without race.
        assert_eq!(schema.columns(), plain.columns());
        assert_eq!(schema.feature_names(), plain.feature_names());
        assert_eq!(schema.num_features(), 4);
        assert_eq!(schema.stats_len(), plain.stats_len());
        assert_eq!(schema.audit_only_columns().len(), 1);
        assert_eq!(schema.audit_only_columns()[0].name(), "race");
        // The audit groups by it like any sensitive attribute, in `sensitive` order.
        assert_eq!(schema.audit_attributes(), ["sex", "race", "age"]);
        let race: Vec<String> = schema
            .audit_groups()
            .into_iter()
            .filter(|g| g.attribute == "race")
            .map(|g| g.group)
            .collect();
        assert_eq!(race, ["Black", "White", "Other"]);
        let groups = schema.audit_groups();
        let named: Vec<String> = schema
            .audit_groups_of(&["Female", "White", "45"])
            .into_iter()
            .map(|i| format!("{}={}", groups[i].attribute, groups[i].group))
            .collect();
        assert_eq!(named, ["sex=Female", "race=White", "age=40-<60"]);
        // `input = true` is the default, spelled out.
        let explicit = HEART.replace(
            "name = \"chol\"\ntype = \"numeric\"",
            "name = \"chol\"\ntype = \"numeric\"\ninput = true",
        );
        assert_eq!(Schema::parse(&explicit).unwrap(), plain);
    }

    #[test]
    fn an_audit_only_column_takes_no_missing_mode() {
        let text = EXAMPLE_SCHEMA
            .replace("sensitive = [\"sex\"]", "sensitive = [\"sex\", \"race\"]")
            + "[[columns]]\nname = \"race\"\ntype = \"categorical\"\nlevels = [\"A\", \"B\"]\n\
             input = false\nmissing = \"level\"\n";
        let err = Schema::parse(&text).unwrap_err();
        assert!(
            matches!(&err, SchemaError::MissingModeMismatch { column, kind: "audit-only", .. } if column == "race"),
            "{err:?}"
        );
        let refused = text.replace("missing = \"level\"\n", "");
        assert!(Schema::parse(&refused).is_ok());
    }

    #[test]
    fn a_numeric_audit_only_attribute_is_banded() {
        let text = HEART.replace(
            "sensitive = [\"sex\", \"age\"]",
            "sensitive = [\"sex\", \"age\", \"bmi\"]",
        ) + "[[columns]]\nname = \"bmi\"\ntype = \"numeric\"\nrange = [10, 60]\ninput = false\n";
        let err = parse_err(&text);
        assert!(
            matches!(&err, SchemaError::BadBands { name, .. } if name == "bmi"),
            "{err:?}"
        );
        let schema =
            Schema::parse(&text.replace("age = [40, 60]", "age = [40, 60]\nbmi = [25, 30]"))
                .unwrap();
        assert_eq!(schema.num_features(), 4);
        let bmi = schema.sensitive().iter().position(|s| s == "bmi").unwrap();
        let group = schema.audit_group_of(bmi, "27.5").unwrap();
        assert_eq!(schema.audit_groups()[group].group, "25-<30");
    }

    #[test]
    fn input_false_needs_a_sensitive_column_and_a_feature_beside_it() {
        let text = HEART.replace(
            "name = \"chol\"\ntype = \"numeric\"",
            "name = \"chol\"\ntype = \"numeric\"\ninput = false",
        );
        let err = parse_err(&text);
        assert_eq!(
            err,
            SchemaError::AuditOnlyNotSensitive {
                column: "chol".into()
            }
        );
        assert!(err.to_string().contains("\"chol\""), "{err}");
        // Only audit-only columns: the model would have no input.
        let text = "sensitive = [\"sex\"]\n[label]\ncolumn = \"y\"\npositive = [\"1\"]\n\
                    negative = [\"0\"]\n[[columns]]\nname = \"sex\"\ntype = \"categorical\"\n\
                    levels = [\"F\", \"M\"]\ninput = false\n";
        assert_eq!(parse_err(text), SchemaError::NoColumns);
        // An audit-only column is still a column: its name cannot be reused.
        let text = with_race().replace("drop = [\"id\", \"dataset\"]", "drop = [\"id\", \"race\"]");
        assert_eq!(
            parse_err(&text),
            SchemaError::DuplicateColumn {
                name: "race".into()
            }
        );
    }

    #[test]
    fn digest_without_input_keys_is_unchanged_and_covers_audit_only_columns() {
        // HEART's digest, computed from the documented encoding by an independent script
        // (length-prefixed strings and lists, range bits big-endian), before `input` existed.
        assert_eq!(
            hex::encode(Schema::parse(HEART).unwrap().digest()),
            "29df898da320b91f6ea83e011d542250992fb00ed22f2998c791a703a01fe1d2"
        );
        let base = Schema::parse(HEART).unwrap().digest();
        let explicit = HEART.replace(
            "name = \"chol\"\ntype = \"numeric\"",
            "name = \"chol\"\ntype = \"numeric\"\ninput = true",
        );
        assert_eq!(Schema::parse(&explicit).unwrap().digest(), base);
        let race = Schema::parse(&with_race()).unwrap().digest();
        assert_ne!(race, base);
        // Race as a model input is another schema than race audited only.
        let as_input = Schema::parse(&with_race().replace("input = false\n", "")).unwrap();
        assert_ne!(as_input.digest(), race);
        // Its levels are covered.
        let renamed = with_race().replace("\"Other\"]", "\"Mixed\"]");
        assert_ne!(Schema::parse(&renamed).unwrap().digest(), race);
        // An audit-only column is not mistaken for an intersection.
        let crossed = with_race().replace(
            "sensitive = [\"sex\", \"race\", \"age\"]",
            "sensitive = [\"sex\", \"race\", \"age\"]\nintersections = [[\"sex\", \"race\"]]",
        );
        assert_ne!(Schema::parse(&crossed).unwrap().digest(), race);
    }

    #[test]
    fn numeric_sensitive_attributes_need_increasing_bands() {
        let missing = HEART.replace("[bands]\nage = [40, 60]\n", "");
        assert!(matches!(
            Schema::parse(&missing),
            Err(SchemaError::BadBands { .. })
        ));
        let decreasing = HEART.replace("age = [40, 60]", "age = [60, 40]");
        assert!(matches!(
            Schema::parse(&decreasing),
            Err(SchemaError::BadBands { .. })
        ));
    }

    /// `HEART` with missing values declared: tokens, `level` on sex, `impute` on chol.
    fn with_missing() -> String {
        HEART
            .replace(
                "drop = [\"id\", \"dataset\"]",
                "drop = [\"id\", \"dataset\"]\nmissing_values = [\"NA\", \"?\"]",
            )
            .replace(
                "levels = [\"Female\", \"Male\"]",
                "levels = [\"Female\", \"Male\"]\nmissing = \"level\"",
            )
            .replace("range = [0, 600]", "range = [0, 600]\nmissing = \"impute\"")
    }

    #[test]
    fn missing_modes_parse_and_add_their_features() {
        let schema = Schema::parse(&with_missing()).unwrap();
        assert_eq!(
            schema.feature_names(),
            [
                "age",
                "sex=Female",
                "sex=Male",
                "sex=(missing)",
                "chol",
                "chol (missing)"
            ]
        );
        assert_eq!(schema.num_features(), 6);
        let modes: Vec<MissingMode> = schema.columns().iter().map(Column::missing).collect();
        assert_eq!(
            modes,
            [MissingMode::Refuse, MissingMode::Level, MissingMode::Impute]
        );
        assert_eq!(schema.columns()[1].width(), 3);
        assert_eq!(schema.columns()[2].width(), 2);
        // n, two sums, two sums of squares, three sex counts (missing included), chol's present
        // count, the noise.
        assert_eq!(schema.stats_len(), 10);
        assert_eq!(schema.missing_values(), ["NA", "?"]);
        for cell in ["", "NA", "?"] {
            assert!(schema.is_missing(cell), "{cell:?}");
        }
        for cell in ["na", "0", "Female", "N/A"] {
            assert!(!schema.is_missing(cell), "{cell:?}");
        }
        // Without tokens only a blank cell is missing.
        let plain = Schema::parse(HEART).unwrap();
        assert!(plain.is_missing("") && !plain.is_missing("NA"));
        assert!(
            plain
                .columns()
                .iter()
                .all(|c| c.missing() == MissingMode::Refuse)
        );
    }

    #[test]
    fn wrong_missing_combinations_are_refused_naming_the_column() {
        let impute_categorical = HEART.replace(
            "levels = [\"Female\", \"Male\"]",
            "levels = [\"Female\", \"Male\"]\nmissing = \"impute\"",
        );
        let err = parse_err(&impute_categorical);
        assert_eq!(
            err,
            SchemaError::MissingModeMismatch {
                column: "sex".into(),
                kind: "categorical",
                mode: "impute",
                fits: "numeric"
            }
        );
        assert!(err.to_string().contains("\"sex\""), "{err}");
        let level_numeric =
            HEART.replace("range = [0, 600]", "range = [0, 600]\nmissing = \"level\"");
        let err = parse_err(&level_numeric);
        assert!(
            matches!(&err, SchemaError::MissingModeMismatch { column, mode: "level", .. } if column == "chol"),
            "{err:?}"
        );
        assert!(err.to_string().contains("\"chol\""), "{err}");
        let unknown = HEART.replace("range = [0, 600]", "range = [0, 600]\nmissing = \"drop\"");
        let err = parse_err(&unknown);
        assert_eq!(
            err,
            SchemaError::UnknownMissingMode {
                column: "chol".into(),
                mode: "drop".into()
            }
        );
        assert!(err.to_string().contains("\"chol\"") && err.to_string().contains("drop"));
        // A declared level named like the missing level.
        let clash = HEART.replace(
            "levels = [\"Female\", \"Male\"]",
            "levels = [\"Female\", \"Male\", \"(missing)\"]\nmissing = \"level\"",
        );
        assert_eq!(
            parse_err(&clash),
            SchemaError::MissingLevelClash {
                column: "sex".into()
            }
        );
        // ...which is an ordinary level when missing cells are refused.
        let fine = HEART.replace(
            "\"Female\", \"Male\"",
            "\"Female\", \"Male\", \"(missing)\"",
        );
        assert!(Schema::parse(&fine).is_ok());
        // A column named like another's indicator.
        let indicator = with_missing()
            .replace("name = \"age\"", "name = \"chol (missing)\"")
            .replace("sensitive = [\"sex\", \"age\"]", "sensitive = [\"sex\"]")
            .replace("[bands]\nage = [40, 60]\n", "");
        assert_eq!(
            parse_err(&indicator),
            SchemaError::FeatureNameClash {
                name: "chol (missing)".into()
            }
        );
    }

    #[test]
    fn missing_tokens_are_checked() {
        let tokens = |list: &str| {
            HEART.replace(
                "drop = [\"id\", \"dataset\"]",
                &format!("drop = [\"id\", \"dataset\"]\nmissing_values = {list}"),
            )
        };
        for (list, token, reason) in [
            ("[\"\"]", "", "blank"),
            ("[\" NA\"]", " NA", "spaces"),
            ("[\"NA\", \"NA\"]", "NA", "twice"),
            ("[\"Male\"]", "Male", "\"sex\""),
        ] {
            let err = parse_err(&tokens(list));
            assert!(
                matches!(&err, SchemaError::BadMissingToken { token: t, .. } if t == token),
                "{list}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{list}: {err}");
        }
        // A numeric sentinel is a fine token.
        assert!(Schema::parse(&tokens("[\"-999\"]")).is_ok());
    }

    #[test]
    fn a_schema_without_missing_keys_keeps_its_digest() {
        // The digest of `HEART` before missing values existed (the encoding of
        // "medfed-schema-v2" as it stood): a stored manifest names this figure.
        let heart = Schema::parse(HEART).unwrap().digest();
        assert_eq!(
            hex::encode(heart),
            "29df898da320b91f6ea83e011d542250992fb00ed22f2998c791a703a01fe1d2"
        );
        // Spelling out the defaults changes nothing.
        let explicit = HEART
            .replace("range = [0, 600]", "range = [0, 600]\nmissing = \"refuse\"")
            .replace(
                "drop = [\"id\", \"dataset\"]",
                "drop = [\"id\", \"dataset\"]\nmissing_values = []",
            );
        assert_eq!(Schema::parse(&explicit).unwrap().digest(), heart);
    }

    #[test]
    fn digest_covers_missing_modes_and_tokens() {
        let base = Schema::parse(HEART).unwrap().digest();
        let missing = Schema::parse(&with_missing()).unwrap().digest();
        assert_ne!(missing, base);
        let variants = [
            with_missing().replace("[\"NA\", \"?\"]", "[\"NA\"]"),
            with_missing().replace("missing = \"level\"", ""),
            with_missing().replace("missing = \"impute\"", ""),
            HEART.replace(
                "drop = [\"id\", \"dataset\"]",
                "drop = [\"id\", \"dataset\"]\nmissing_values = [\"NA\"]",
            ),
        ];
        let mut seen = vec![base, missing];
        for text in &variants {
            let digest = Schema::parse(text).unwrap().digest();
            assert!(!seen.contains(&digest), "digest repeated for:\n{text}");
            seen.push(digest);
        }
        // The order of the tokens does not matter.
        let reordered = with_missing().replace("[\"NA\", \"?\"]", "[\"?\", \"NA\"]");
        assert_eq!(Schema::parse(&reordered).unwrap().digest(), missing);
        // Missing values and intersections together differ from intersections alone.
        let crossed = with_intersections("[[\"sex\", \"age\"]]");
        let both = crossed.replace("range = [0, 600]", "range = [0, 600]\nmissing = \"impute\"");
        assert_ne!(
            Schema::parse(&crossed).unwrap().digest(),
            Schema::parse(&both).unwrap().digest()
        );
    }

    /// A numeric column, a 1×2×3 image with the defaults, and a categorical column.
    const WITH_IMAGE: &str = EXAMPLE_IMAGE_SCHEMA;

    /// `WITH_IMAGE` with the image column's declaration replaced by `image` (keys after `type`).
    fn with_image(image: &str) -> String {
        WITH_IMAGE.replace("channels = 1\nheight = 2\nwidth = 3\n", image)
    }

    #[test]
    fn an_image_column_gives_chw_pixel_features_and_no_statistics() {
        let schema = Schema::parse(WITH_IMAGE).unwrap();
        let scan = &schema.columns()[1];
        let image = scan.image().expect("an image column");
        assert_eq!((image.channels(), image.height(), image.width()), (1, 2, 3));
        assert!(!image.resize());
        assert_eq!((image.mean(), image.std()), (&[0.0][..], &[1.0][..]));
        assert_eq!(scan.width(), 6);
        assert_eq!(scan.range(), None);
        assert_eq!(schema.num_features(), 1 + 6 + 2);
        assert_eq!(
            schema.feature_names(),
            [
                "age",
                "scan[0,0,0]",
                "scan[0,0,1]",
                "scan[0,0,2]",
                "scan[0,1,0]",
                "scan[0,1,1]",
                "scan[0,1,2]",
                "sex=F",
                "sex=M"
            ]
        );
        // n, the age's sum and sum of squares, two level counts, the noise: no pixel entry.
        assert_eq!(schema.stats_len(), 6);

        let rgb = Schema::parse(&with_image(
            "channels = 3\nheight = 2\nwidth = 2\nresize = true\nmean = [0.5, 0.4, 0.3]\nstd = [0.25, 0.2, 0.1]\n",
        ))
        .unwrap();
        let image = rgb.columns()[1].image().unwrap();
        assert!(image.resize());
        assert_eq!(image.mean(), [0.5, 0.4, 0.3]);
        assert_eq!(image.std(), [0.25, 0.2, 0.1]);
        let names = rgb.feature_names();
        assert_eq!(names.len(), 1 + 12 + 2);
        // Channel first, then row, then column.
        assert_eq!(
            names[1..6],
            [
                "scan[0,0,0]",
                "scan[0,0,1]",
                "scan[0,1,0]",
                "scan[0,1,1]",
                "scan[1,0,0]"
            ]
        );
        assert_eq!(names[12], "scan[2,1,1]");
    }

    #[test]
    fn image_declarations_are_checked_naming_the_column() {
        let scan = "scan".to_owned();
        let cases: Vec<(String, SchemaError)> = vec![
            (
                with_image("channels = 2\nheight = 2\nwidth = 3\n"),
                SchemaError::ImageChannels {
                    column: scan.clone(),
                    channels: 2,
                },
            ),
            (
                with_image("channels = 1\nheight = 0\nwidth = 3\n"),
                SchemaError::ImageSize {
                    column: scan.clone(),
                    height: 0,
                    width: 3,
                },
            ),
            (
                with_image("channels = 1\nheight = 2\nwidth = -3\n"),
                SchemaError::ImageSize {
                    column: scan.clone(),
                    height: 2,
                    width: -3,
                },
            ),
            (
                with_image("channels = 1\nwidth = 3\n"),
                SchemaError::ImageKeyMissing {
                    column: scan.clone(),
                    key: "height",
                },
            ),
            (
                with_image("channels = 3\nheight = 4096\nwidth = 4096\n"),
                SchemaError::ImageTooLarge {
                    column: scan.clone(),
                    channels: 3,
                    height: 4096,
                    width: 4096,
                },
            ),
            (
                with_image("channels = 1\nheight = 2\nwidth = 3\nmean = [0.5, 0.5]\n"),
                SchemaError::ImageNormalisationLength {
                    column: scan.clone(),
                    key: "mean",
                    found: 2,
                    channels: 1,
                },
            ),
            (
                with_image("channels = 3\nheight = 2\nwidth = 3\nstd = [1]\n"),
                SchemaError::ImageNormalisationLength {
                    column: scan.clone(),
                    key: "std",
                    found: 1,
                    channels: 3,
                },
            ),
            (
                with_image("channels = 1\nheight = 2\nwidth = 3\nmissing = \"impute\"\n"),
                SchemaError::MissingModeMismatch {
                    column: scan.clone(),
                    kind: "image",
                    mode: "impute",
                    fits: "numeric",
                },
            ),
            (
                with_image("channels = 1\nheight = 2\nwidth = 3\nrange = [0, 1]\n"),
                SchemaError::KeyNotForType {
                    column: scan.clone(),
                    kind: "image",
                    key: "range",
                },
            ),
            (
                WITH_IMAGE.replace("range = [0, 120]", "range = [0, 120]\nwidth = 3"),
                SchemaError::KeyNotForType {
                    column: "age".into(),
                    kind: "numeric",
                    key: "width",
                },
            ),
            (
                WITH_IMAGE.replace("sensitive = [\"sex\"]", "sensitive = [\"sex\", \"scan\"]"),
                SchemaError::SensitiveImage {
                    column: scan.clone(),
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_err(&text), expected, "for:\n{text}");
        }
        // Two images each at the cap: together more than any model takes, refused before a
        // feature name is built for them.
        let two_images = format!(
            "{}\n[[columns]]\nname = \"scan2\"\ntype = \"image\"\nchannels = 1\nheight = 4096\nwidth = 4096\n",
            with_image("channels = 1\nheight = 4096\nwidth = 4096\n")
        );
        assert_eq!(
            parse_err(&two_images),
            SchemaError::TooManyFeatures {
                features: 1 + 2 * (1 << 24) + 2,
                max: 1 << 24,
            }
        );
        for (std, reason) in [
            ("0", "positive"),
            ("-0.5", "positive"),
            ("nan", "finite"),
            ("inf", "finite"),
            ("1e300", "finite"),
        ] {
            let err = parse_err(&with_image(&format!(
                "channels = 1\nheight = 2\nwidth = 3\nstd = [{std}]\n"
            )));
            let message = err.to_string();
            assert!(
                matches!(&err, SchemaError::ImageNormalisationValue { column, key: "std", .. } if column == "scan")
                    && message.contains(reason),
                "std = [{std}]: {message}"
            );
        }
        let err = parse_err(&with_image(
            "channels = 1\nheight = 2\nwidth = 3\nmean = [nan]\n",
        ));
        assert!(
            matches!(
                err,
                SchemaError::ImageNormalisationValue { key: "mean", .. }
            ),
            "{err}"
        );
        // A column whose feature would be named like a pixel.
        let clash = WITH_IMAGE.replace("name = \"age\"", "name = \"scan[0,1,2]\"");
        assert_eq!(
            parse_err(&clash),
            SchemaError::FeatureNameClash {
                name: "scan[0,1,2]".into()
            }
        );
        // Outside the image, or not written as a pixel's name: no clash.
        for name in ["scan[0,2,0]", "scan[0,01,2]", "scan[0,1]"] {
            let text = WITH_IMAGE.replace("name = \"age\"", &format!("name = \"{name}\""));
            assert!(Schema::parse(&text).is_ok(), "{name}");
        }
        // The cap is the architecture's: one example's input may hold MAX_ACTIVATION values,
        // the image's and the other columns' together (here age and sex's two levels).
        let side = 1 << 12; // 4096 × 4095 + 3 ≤ 2^24 = MAX_ACTIVATION
        assert!(
            Schema::parse(&with_image(&format!(
                "channels = 1\nheight = {side}\nwidth = {}\n",
                side - 1
            )))
            .is_ok()
        );
    }

    #[test]
    fn digest_covers_every_image_key_and_only_what_it_means() {
        let base = Schema::parse(WITH_IMAGE).unwrap().digest();
        // The defaults, written out, are the same schema.
        let explicit = with_image(
            "channels = 1\nheight = 2\nwidth = 3\nresize = false\nmean = [0.0]\nstd = [1]\nmissing = \"refuse\"\n",
        );
        assert_eq!(Schema::parse(&explicit).unwrap().digest(), base);
        assert_eq!(
            Schema::parse(&with_image(
                "channels = 1\nheight = 2\nwidth = 3\nmean = [-0.0]\n"
            ))
            .unwrap()
            .digest(),
            base
        );
        let mut seen = vec![base];
        for image in [
            "channels = 3\nheight = 2\nwidth = 3\n",
            "channels = 1\nheight = 3\nwidth = 2\n",
            "channels = 1\nheight = 2\nwidth = 4\n",
            "channels = 1\nheight = 2\nwidth = 3\nresize = true\n",
            "channels = 1\nheight = 2\nwidth = 3\nmean = [0.5]\n",
            "channels = 1\nheight = 2\nwidth = 3\nstd = [0.5]\n",
            "channels = 1\nheight = 2\nwidth = 3\nmean = [0.5]\nstd = [0.25]\n",
            "channels = 1\nheight = 2\nwidth = 3\nmean = [0.25]\nstd = [0.5]\n",
        ] {
            let digest = Schema::parse(&with_image(image)).unwrap().digest();
            assert!(!seen.contains(&digest), "digest repeated for:\n{image}");
            seen.push(digest);
        }
        // A numeric column in the image's place is another schema.
        let numeric = WITH_IMAGE.replace(
            "type = \"image\"\nchannels = 1\nheight = 2\nwidth = 3\n",
            "type = \"numeric\"\nrange = [0, 1]\n",
        );
        assert!(!seen.contains(&Schema::parse(&numeric).unwrap().digest()));
    }
}
