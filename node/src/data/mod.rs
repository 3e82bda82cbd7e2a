//! The hospital's patient data: reading the CSV against the consortium schema, and the
//! deterministic split into a training and a held-out part.
//!
//! ```text
//!  CSV file + Schema ─▶ load_csv  ─▶ Dataset { encoded Examples, raw sensitive values, rows }
//!                  └──▶ read_rows ─▶ (Dataset, every bad row's RowProblem)
//!                                      └─▶ Holdout::split ─▶ (train, held-out)
//! ```
//!
//! [`load_csv`], for training, is all or nothing: the first problem in the file aborts it with a
//! [`DataError`] that names the file, the row and the column, so a data manager can fix it.
//! [`read_rows`], for `check` and for scoring, keeps every good row and returns every bad one's
//! [`RowProblem`]; both use the same encoder. Features come out encoded (numeric as is,
//! categorical one-hot, an image column's file decoded into its normalised pixels, CHW) but not
//! standardised: standardisation needs the consortium's pooled statistics. An image cell is the
//! path of a PNG or JPEG file, relative to the CSV file's directory (or absolute); a missing,
//! undecodable, wrongly sized or wrongly coloured file is a problem of its row, like a bad cell.
//!
//! Which rows are held out is [`Holdout`]'s one choice ([`Holdout::split`], and [`load_split`]
//! which reads and splits): a seeded random fraction, the rows whose split column has one of
//! the named values, or a separate held-out file.

mod csv_reader;
mod error;
mod holdout;
mod image;
mod problem;
mod split;

pub use csv_reader::{LabelColumn, ReadOptions, load_csv, load_csv_with, read_rows};
pub use error::DataError;
pub use holdout::{DEFAULT_HOLDOUT_FRACTION, Holdout, load_split};
pub use image::{MAX_IMAGE_BYTES, MAX_IMAGE_SIDE};
pub use problem::{ProblemReason, RowProblem};
pub use split::split_indices;

use crate::examples::Examples;

/// A hospital's encoded examples, with the raw sensitive attributes of each row for the bias
/// audit.
///
/// Invariant: `sensitive` and `rows` have one entry per example, each entry of `sensitive` one
/// value per name in `sensitive_columns`, and `ids` is either empty or has one entry per example.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// Encoded features (not standardised; a missing value of an imputed column is NaN until
    /// [`medfed_protocol::stats::Standardization::standardize`]) and labels, in file order.
    pub examples: Examples,
    /// The schema's sensitive attributes, in schema order.
    pub sensitive_columns: Vec<String>,
    /// Per example, the trimmed raw cell of each sensitive attribute, parallel to
    /// `sensitive_columns`.
    pub sensitive: Vec<Vec<String>>,
    /// Per example, its row in the file as a spreadsheet numbers it (header = row 1), so that a
    /// figure about a row can name it.
    pub rows: Vec<u64>,
    /// Per example, the trimmed raw cell of [`ReadOptions::id_column`]; empty when none was
    /// asked for.
    pub ids: Vec<String>,
    /// Per example, the trimmed raw cell of [`ReadOptions::split_column`] (the split column
    /// that [`Holdout::Column`] splits by); empty when none was asked for.
    pub split_cells: Vec<String>,
    /// Whether labels were read. False only for a file read under [`LabelColumn::Optional`]
    /// without a label column; its labels are then NaN.
    pub labelled: bool,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }
}
