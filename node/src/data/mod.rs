//! The hospital's patient data: strict loading of the CSV against the consortium schema, and the
//! deterministic split into a training and a held-out part.
//!
//! ```text
//!  CSV file + Schema ─▶ load_csv ─▶ Dataset { encoded Examples, raw sensitive values }
//!                                      └─▶ split(fraction, seed) ─▶ (train, held-out)
//! ```
//!
//! Loading is all or nothing: the first problem in the file aborts it with a [`DataError`] that
//! names the file, the row and the column, so a data manager can fix it. Features come out
//! encoded (numeric as is, categorical one-hot) but not standardised: standardisation needs the
//! consortium's pooled statistics.

mod csv_reader;
mod error;
mod split;

pub use csv_reader::load_csv;
pub use error::DataError;
pub use split::split_indices;

use crate::examples::Examples;

/// A hospital's encoded examples, with the raw sensitive attributes of each row for the bias
/// audit.
///
/// Invariant: `sensitive` has one entry per example, and each entry one value per name in
/// `sensitive_columns`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dataset {
    /// Encoded features (not standardised) and labels, in file order.
    pub examples: Examples,
    /// The schema's sensitive attributes, in schema order.
    pub sensitive_columns: Vec<String>,
    /// Per example, the trimmed raw cell of each sensitive attribute, parallel to
    /// `sensitive_columns`.
    pub sensitive: Vec<Vec<String>>,
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
