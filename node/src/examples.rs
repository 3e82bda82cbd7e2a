//! Encoded examples: the numeric matrix a trainer consumes.

/// A set of encoded examples, row-major, with binary labels.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Examples {
    /// Number of encoded features per example (the model's input width).
    pub num_features: usize,
    /// `rows × num_features` values, row-major.
    pub features: Vec<f32>,
    /// One label per row: 1.0 for the positive class, 0.0 otherwise.
    pub labels: Vec<f32>,
}

impl Examples {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The encoded features of row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.num_features..(i + 1) * self.num_features]
    }
}
