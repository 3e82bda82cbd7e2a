//! The deterministic split of a dataset into a training and a held-out part.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha20Rng;

use super::{DataError, Dataset};
use crate::examples::Examples;

impl Dataset {
    /// Splits into `(train, held_out)`.
    ///
    /// The row indices are shuffled with `ChaCha20Rng::seed_from_u64(seed)` and the first
    /// `round(holdout_fraction × n)` of them are held out: at least one when `n ≥ 2` and the
    /// fraction is positive, and at most `n − 1`, so training always keeps a row. Both parts keep
    /// the file order. The same data and seed always give the same split.
    ///
    /// `holdout_fraction` must be in `[0, 1)`.
    pub fn split(&self, holdout_fraction: f64, seed: u64) -> Result<(Self, Self), DataError> {
        if !(0.0..1.0).contains(&holdout_fraction) {
            return Err(DataError::HoldoutFraction {
                fraction: holdout_fraction,
            });
        }
        let (train, held_out) = split_indices(self.len(), holdout_fraction, seed);
        Ok((self.subset(&train), self.subset(&held_out)))
    }

    /// The rows at `indices`, in that order.
    pub(super) fn subset(&self, indices: &[usize]) -> Self {
        let width = self.examples.num_features;
        let mut examples = Examples {
            num_features: width,
            features: Vec::with_capacity(indices.len() * width),
            labels: Vec::with_capacity(indices.len()),
        };
        let mut sensitive = Vec::with_capacity(indices.len());
        let mut rows = Vec::with_capacity(indices.len());
        let mut ids = Vec::new();
        let mut split_cells = Vec::new();
        for &i in indices {
            // `get` rather than indexing: the public fields could have been made inconsistent,
            // and a bad dataset must not panic the node.
            let row = self
                .examples
                .features
                .get(i * width..(i + 1) * width)
                .unwrap_or_default();
            examples.features.extend_from_slice(row);
            examples.labels.extend(self.examples.labels.get(i));
            sensitive.push(self.sensitive.get(i).cloned().unwrap_or_default());
            rows.extend(self.rows.get(i));
            ids.extend(self.ids.get(i).cloned());
            split_cells.extend(self.split_cells.get(i).cloned());
        }
        Self {
            examples,
            sensitive_columns: self.sensitive_columns.clone(),
            sensitive,
            rows,
            ids,
            split_cells,
            labelled: self.labelled,
        }
    }
}

/// How many of `n` rows to hold out for a fraction in `[0, 1)`.
/// The row indices (0-based, ascending) of `(train, held_out)` that [`Dataset::split`] gives a
/// dataset of `n` rows; tools that must use the very same held-out rows (the Flower benchmark)
/// call this rather than copying the shuffle.
pub fn split_indices(n: usize, holdout_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha20Rng::seed_from_u64(seed));
    let mut train = order.split_off(held_out_count(n, holdout_fraction));
    let mut held_out = order;
    held_out.sort_unstable();
    train.sort_unstable();
    (train, held_out)
}

fn held_out_count(n: usize, fraction: f64) -> usize {
    if n == 0 || fraction <= 0.0 {
        return 0;
    }
    // The product is in [0, n), so the cast neither overflows nor truncates a whole part.
    let rounded = (fraction * n as f64).round() as usize;
    rounded.max(1).min(n - 1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// `n` rows whose single feature is the row number, so rows can be traced through a split.
    fn dataset(n: usize) -> Dataset {
        Dataset {
            examples: Examples {
                num_features: 2,
                features: (0..n).flat_map(|i| [i as f32, -(i as f32)]).collect(),
                labels: (0..n).map(|i| (i % 2) as f32).collect(),
            },
            sensitive_columns: vec!["sex".into()],
            sensitive: (0..n).map(|i| vec![format!("s{i}")]).collect(),
            rows: (0..n as u64).map(|i| i + 2).collect(),
            ids: (0..n).map(|i| format!("p{i}")).collect(),
            split_cells: Vec::new(),
            labelled: true,
        }
    }

    /// The original row numbers in a part, checking that each row stayed whole.
    fn ids(part: &Dataset) -> Vec<usize> {
        (0..part.len())
            .map(|r| {
                let row = part.examples.row(r);
                let id = row[0] as usize;
                assert_eq!(row[1], -row[0]);
                assert_eq!(part.examples.labels[r], (id % 2) as f32);
                assert_eq!(part.sensitive[r], [format!("s{id}")]);
                assert_eq!(part.rows[r], id as u64 + 2);
                assert_eq!(part.ids[r], format!("p{id}"));
                id
            })
            .collect()
    }

    #[test]
    fn split_is_deterministic() {
        let data = dataset(50);
        let a = data.split(0.2, 7).unwrap();
        let b = data.split(0.2, 7).unwrap();
        assert_eq!(a, b);
        let c = data.split(0.2, 8).unwrap();
        assert_ne!(
            ids(&a.1),
            ids(&c.1),
            "another seed should hold out other rows"
        );
    }

    #[test]
    fn split_is_disjoint_and_complete() {
        let data = dataset(50);
        let (train, held_out) = data.split(0.3, 42).unwrap();
        assert_eq!((train.len(), held_out.len()), (35, 15));
        let (train_ids, held_ids) = (ids(&train), ids(&held_out));
        assert!(
            train_ids.is_sorted() && held_ids.is_sorted(),
            "parts keep file order"
        );
        let all: HashSet<usize> = train_ids.iter().chain(&held_ids).copied().collect();
        assert_eq!(all.len(), 50);
        assert_eq!(train.sensitive_columns, ["sex"]);
        assert_eq!(train.examples.num_features, 2);
    }

    #[test]
    fn split_sizes() {
        let sizes = |n, f| {
            let (train, held_out) = dataset(n).split(f, 1).unwrap();
            (train.len(), held_out.len())
        };
        assert_eq!(sizes(10, 0.0), (10, 0));
        assert_eq!(sizes(10, 0.25), (7, 3)); // 2.5 rounds away from zero
        assert_eq!(sizes(10, 0.01), (9, 1)); // at least one held out
        assert_eq!(sizes(2, 0.1), (1, 1));
        assert_eq!(sizes(10, 0.99), (1, 9)); // training keeps a row
        assert_eq!(sizes(1, 0.5), (1, 0));
        assert_eq!(sizes(0, 0.5), (0, 0));
    }

    #[test]
    fn split_fraction_out_of_range() {
        let data = dataset(10);
        for bad in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
            let err = data.split(bad, 0).unwrap_err();
            assert!(matches!(err, DataError::HoldoutFraction { .. }), "{err:?}");
        }
    }
}
