//! Why a hospital's data was refused.

use std::path::PathBuf;

use image::ColorType;

/// Why the CSV could not be loaded or the data split.
///
/// `row` numbers CSV records as a spreadsheet numbers rows: the header is row 1, the first data
/// row is row 2, a record whose quoted cell spans several lines is one row, and blank lines
/// (which the CSV reader skips) are not counted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The file is not well-formed CSV (bad quoting, invalid UTF-8, …).
    #[error("{}: row {row}: not valid CSV: {source}", path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// Row where the problem was found.
        row: u64,
        /// Cause.
        source: csv::Error,
    },
    /// The header lacks a column that the schema declares (a feature column or the label).
    #[error("{}: row 1 (header): column \"{column}\" required by the schema is missing", path.display())]
    MissingColumn {
        /// The file.
        path: PathBuf,
        /// The missing column.
        column: String,
    },
    /// The header has a column that the schema neither declares nor drops.
    #[error(
        "{}: row 1 (header): column \"{column}\" is not described by the schema; list it under drop to ignore it",
        path.display()
    )]
    UnexpectedColumn {
        /// The file.
        path: PathBuf,
        /// The undescribed column.
        column: String,
    },
    /// The header names a column twice.
    #[error("{}: row 1 (header): column \"{column}\" appears more than once", path.display())]
    DuplicateColumn {
        /// The file.
        path: PathBuf,
        /// The repeated column.
        column: String,
    },
    /// A row that is not well-formed CSV, as the lenient reader reports it (the strict loader
    /// keeps the parser's error: [`Self::Csv`]).
    #[error("{}: row {row}: not valid CSV: {message}", path.display())]
    MalformedRow {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The CSV parser's explanation.
        message: String,
    },
    /// The file has a header but no data row.
    #[error("{}: no data rows after the header", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// A row has more or fewer cells than the header.
    #[error("{}: row {row}: {found} cells, but the header has {expected} columns", path.display())]
    FieldCount {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// Number of header columns.
        expected: usize,
        /// Number of cells in the row.
        found: usize,
    },
    /// A feature cell is empty.
    #[error("{}: row {row}, column \"{column}\": missing value (empty cell)", path.display())]
    MissingValue {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The column.
        column: String,
    },
    /// A numeric cell is not a number.
    #[error("{}: row {row}, column \"{column}\": \"{value}\" is not a number", path.display())]
    NotNumeric {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The column.
        column: String,
        /// The cell, trimmed.
        value: String,
    },
    /// A numeric cell is NaN or infinite (or too large for `f32`).
    #[error("{}: row {row}, column \"{column}\": \"{value}\" is not a finite number", path.display())]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The column.
        column: String,
        /// The cell, trimmed.
        value: String,
    },
    /// A categorical cell is not one of the column's levels.
    #[error(
        "{}: row {row}, column \"{column}\": \"{value}\" is not one of the levels {levels:?}",
        path.display()
    )]
    UnknownCategory {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The column.
        column: String,
        /// The cell, trimmed.
        value: String,
        /// The levels the schema allows.
        levels: Vec<String>,
    },
    /// The image file an image cell names does not exist.
    #[error(
        "{}: row {row}, column \"{column}\": image file {} not found",
        path.display(),
        image.display()
    )]
    ImageMissing {
        /// The CSV file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The image column.
        column: String,
        /// The image file, the cell resolved against the CSV file's directory.
        image: PathBuf,
    },
    /// The image file cannot be read or decoded.
    #[error(
        "{}: row {row}, column \"{column}\": cannot read image file {}: {message}",
        path.display(),
        image.display()
    )]
    ImageUnreadable {
        /// The CSV file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The image column.
        column: String,
        /// The image file.
        image: PathBuf,
        /// The reader's or the decoder's explanation.
        message: String,
    },
    /// The image is not the size the schema declares, and the column does not resize.
    #[error(
        "{}: row {row}, column \"{column}\": image file {} is {}×{} (height×width), the schema declares {}×{} and no resize",
        path.display(),
        image.display(),
        found.0,
        found.1,
        expected.0,
        expected.1
    )]
    ImageSize {
        /// The CSV file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The image column.
        column: String,
        /// The image file.
        image: PathBuf,
        /// The file's `(height, width)`.
        found: (u32, u32),
        /// The schema's `(height, width)`.
        expected: (u32, u32),
    },
    /// The image's pixel format does not fit the column's channels.
    #[error(
        "{}: row {row}, column \"{column}\": image file {} is {}, the schema's {expected}-channel column reads {}",
        path.display(),
        image.display(),
        super::image::colour_name(*found),
        super::image::accepted(*expected)
    )]
    ImageChannels {
        /// The CSV file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The image column.
        column: String,
        /// The image file.
        image: PathBuf,
        /// The file's pixel format.
        found: ColorType,
        /// The schema's channels.
        expected: u8,
    },
    /// The label cell is empty.
    #[error("{}: row {row}, column \"{column}\": missing label (empty cell)", path.display())]
    MissingLabel {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The label column.
        column: String,
    },
    /// The label cell is in neither the positive nor the negative list.
    #[error(
        "{}: row {row}, column \"{column}\": label \"{value}\" is neither positive {positive:?} nor negative {negative:?}",
        path.display()
    )]
    UnknownLabel {
        /// The file.
        path: PathBuf,
        /// The row.
        row: u64,
        /// The label column.
        column: String,
        /// The cell, trimmed.
        value: String,
        /// Values meaning the positive class (boxed to keep the error small).
        positive: Box<[String]>,
        /// Values meaning the negative class.
        negative: Box<[String]>,
    },
    /// The held-out fraction is not in `[0, 1)`.
    #[error("held-out fraction {fraction} is not in [0, 1)")]
    HoldoutFraction {
        /// The fraction asked for.
        fraction: f64,
    },
    /// `data.holdout`'s split column is one the schema encodes, audits or predicts.
    #[error(
        "data.holdout.column \"{column}\" is {role} of the schema: the column that decides which rows evaluate the model must not be read by it; list it under the schema's drop"
    )]
    SplitColumnInSchema {
        /// The split column.
        column: String,
        /// What the schema makes of it.
        role: &'static str,
    },
    /// `data.holdout`'s split column is not among the schema's `drop` columns.
    #[error(
        "data.holdout.column \"{column}\" is not listed under the schema's drop: the CSV may carry it only as a dropped column"
    )]
    SplitColumnNotDropped {
        /// The split column.
        column: String,
    },
    /// The header lacks `data.holdout`'s split column.
    #[error("{}: row 1 (header): column \"{column}\" named by data.holdout.column is missing", path.display())]
    MissingSplitColumn {
        /// The file.
        path: PathBuf,
        /// The split column.
        column: String,
    },
    /// `data.holdout`'s values leave no training row, or no held-out row.
    #[error(
        "{}: data.holdout: {} row's \"{column}\" is one of {values:?}, so {}",
        path.display(),
        if *no_training { "every" } else { "no" },
        if *no_training { "no training row is left" } else { "no held-out row is left (check the values' spelling)" }
    )]
    SplitColumnLeaves {
        /// The file.
        path: PathBuf,
        /// The split column.
        column: String,
        /// The values that hold a row out.
        values: Vec<String>,
        /// True: no training row; false: no held-out row.
        no_training: bool,
    },
    /// Rows were split by a column they were read without (a caller's mistake: read them with
    /// `Holdout::read_options`).
    #[error("{}: the rows were read without data.holdout's split column \"{column}\"", path.display())]
    SplitColumnNotRead {
        /// The file.
        path: PathBuf,
        /// The split column.
        column: String,
    },
    /// Rows were split under `data.holdout_csv` without that file's rows (a caller's mistake).
    #[error("data.holdout_csv {}: the held-out file was not read", path.display())]
    HoldoutFileNotRead {
        /// The held-out file.
        path: PathBuf,
    },
}
