//! One bad row's problem, as the lenient reader reports it.

use std::fmt;
use std::path::{Path, PathBuf};

use image::ColorType;

use super::DataError;

/// A problem with one row (or one cell of it) that [`super::read_rows`] set aside while keeping
/// the file's good rows.
///
/// `row` numbers rows as a spreadsheet does (header = row 1; see [`DataError`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RowProblem {
    /// The row, as a spreadsheet numbers it.
    pub row: u64,
    /// The column whose cell is at fault; `None` for a problem with the whole row (its number
    /// of cells, or bytes that are not CSV).
    pub column: Option<String>,
    /// The cell as read (trimmed); empty for a blank cell and for a whole-row problem.
    pub raw: String,
    /// What is wrong.
    pub reason: ProblemReason,
}

/// What is wrong with a row or a cell.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemReason {
    /// The row is not well-formed CSV (invalid UTF-8, …).
    Malformed {
        /// The CSV parser's explanation.
        message: String,
    },
    /// The row has more or fewer cells than the header.
    FieldCount {
        /// Number of header columns.
        expected: usize,
        /// Number of cells in the row.
        found: usize,
    },
    /// A feature cell is missing (blank, or one of the schema's `missing_values` tokens) in a
    /// column whose schema refuses missing values.
    MissingValue,
    /// A numeric cell is not a number.
    NotNumeric,
    /// A numeric cell is NaN or infinite (or too large for `f32`).
    NonFinite,
    /// A categorical cell is not one of the column's levels.
    UnknownCategory {
        /// The levels the schema allows.
        levels: Vec<String>,
    },
    /// The image file an image cell names does not exist.
    ImageMissing {
        /// The file, the cell resolved against the CSV file's directory.
        path: PathBuf,
    },
    /// The image file cannot be read or decoded (not a PNG or JPEG, truncated, larger than the
    /// reader's limits, …).
    ImageUnreadable {
        /// The file.
        path: PathBuf,
        /// The reader's or the decoder's explanation.
        message: String,
    },
    /// The image is not the size the schema declares, and the column does not resize.
    ImageSize {
        /// The file.
        path: PathBuf,
        /// The file's `(height, width)`.
        found: (u32, u32),
        /// The schema's `(height, width)`.
        expected: (u32, u32),
    },
    /// The image's pixel format does not fit the column's channels (colour for a grey column,
    /// grey for an RGB one, or an alpha channel).
    ImageChannels {
        /// The file.
        path: PathBuf,
        /// The file's pixel format.
        found: ColorType,
        /// The schema's channels.
        expected: u8,
    },
    /// The label cell is empty.
    MissingLabel,
    /// The label cell is in neither the positive nor the negative list.
    UnknownLabel {
        /// Values meaning the positive class.
        positive: Vec<String>,
        /// Values meaning the negative class.
        negative: Vec<String>,
    },
}

impl ProblemReason {
    /// A short fixed name of the reason, the same for every row, for counting problems by
    /// reason: `missing value`, `not a number`, ….
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "not valid CSV",
            Self::FieldCount { .. } => "wrong number of cells",
            Self::MissingValue => "missing value",
            Self::NotNumeric => "not a number",
            Self::NonFinite => "not a finite number",
            Self::UnknownCategory { .. } => "unknown level",
            Self::ImageMissing { .. } => "image file missing",
            Self::ImageUnreadable { .. } => "unreadable image",
            Self::ImageSize { .. } => "wrong image size",
            Self::ImageChannels { .. } => "wrong image channels",
            Self::MissingLabel => "missing label",
            Self::UnknownLabel { .. } => "unknown label",
        }
    }
}

impl RowProblem {
    /// The error the strict loader ([`super::load_csv`]) stops with for this problem in the file
    /// at `path`: the same variant and message as before the lenient reader existed.
    pub fn into_error(self, path: &Path) -> DataError {
        let path = path.to_owned();
        let Self {
            row,
            column,
            raw: value,
            reason,
        } = self;
        let column = column.unwrap_or_default();
        match reason {
            ProblemReason::Malformed { message } => DataError::MalformedRow { path, row, message },
            ProblemReason::FieldCount { expected, found } => DataError::FieldCount {
                path,
                row,
                expected,
                found,
            },
            ProblemReason::MissingValue => DataError::MissingValue { path, row, column },
            ProblemReason::NotNumeric => DataError::NotNumeric {
                path,
                row,
                column,
                value,
            },
            ProblemReason::NonFinite => DataError::NonFinite {
                path,
                row,
                column,
                value,
            },
            ProblemReason::UnknownCategory { levels } => DataError::UnknownCategory {
                path,
                row,
                column,
                value,
                levels,
            },
            ProblemReason::ImageMissing { path: image } => DataError::ImageMissing {
                path,
                row,
                column,
                image,
            },
            ProblemReason::ImageUnreadable {
                path: image,
                message,
            } => DataError::ImageUnreadable {
                path,
                row,
                column,
                image,
                message,
            },
            ProblemReason::ImageSize {
                path: image,
                found,
                expected,
            } => DataError::ImageSize {
                path,
                row,
                column,
                image,
                found,
                expected,
            },
            ProblemReason::ImageChannels {
                path: image,
                found,
                expected,
            } => DataError::ImageChannels {
                path,
                row,
                column,
                image,
                found,
                expected,
            },
            ProblemReason::MissingLabel => DataError::MissingLabel { path, row, column },
            ProblemReason::UnknownLabel { positive, negative } => DataError::UnknownLabel {
                path,
                row,
                column,
                value,
                positive: positive.into(),
                negative: negative.into(),
            },
        }
    }
}

impl fmt::Display for RowProblem {
    /// `row 3, column "age": "sixty" is not a number`: the strict loader's message without the
    /// file name.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}", self.row)?;
        if let Some(column) = &self.column {
            write!(f, ", column \"{column}\"")?;
        }
        let value = &self.raw;
        match &self.reason {
            ProblemReason::Malformed { message } => write!(f, ": not valid CSV: {message}"),
            ProblemReason::FieldCount { expected, found } => {
                write!(f, ": {found} cells, but the header has {expected} columns")
            }
            ProblemReason::MissingValue if value.is_empty() => {
                f.write_str(": missing value (empty cell)")
            }
            ProblemReason::MissingValue => write!(f, ": missing value (\"{value}\")"),
            ProblemReason::NotNumeric => write!(f, ": \"{value}\" is not a number"),
            ProblemReason::NonFinite => write!(f, ": \"{value}\" is not a finite number"),
            ProblemReason::UnknownCategory { levels } => {
                write!(f, ": \"{value}\" is not one of the levels {levels:?}")
            }
            ProblemReason::ImageMissing { path } => {
                write!(f, ": image file {} not found", path.display())
            }
            ProblemReason::ImageUnreadable { path, message } => {
                write!(f, ": cannot read image file {}: {message}", path.display())
            }
            ProblemReason::ImageSize {
                path,
                found,
                expected,
            } => write!(
                f,
                ": image file {} is {}×{} (height×width), the schema declares {}×{} and no resize",
                path.display(),
                found.0,
                found.1,
                expected.0,
                expected.1
            ),
            ProblemReason::ImageChannels {
                path,
                found,
                expected,
            } => write!(
                f,
                ": image file {} is {}, the schema's {expected}-channel column reads {}",
                path.display(),
                super::image::colour_name(*found),
                super::image::accepted(*expected)
            ),
            ProblemReason::MissingLabel => f.write_str(": missing label (empty cell)"),
            ProblemReason::UnknownLabel { positive, negative } => write!(
                f,
                ": label \"{value}\" is neither positive {positive:?} nor negative {negative:?}"
            ),
        }
    }
}
