//! The sum a collection hands over: figures summed in the clear, or an unmasked secure sum
//! still in its words, read a piece at a time.

use std::ops::Range;

use crate::messages::PlainFigures;
use crate::secagg::encoding::DECODE_PIECE;
use crate::secagg::{PieceVisitor, SecureSum};

/// A round's summed figures.
///
/// Under secure aggregation the sum stays in its words ([`SecureSum`]) and is decoded a piece
/// at a time as it is read: the coordinator's memory for a round is then the model and the
/// words (4 bytes a parameter each), never the decoded `f64` figures whole.
#[derive(Clone, Debug, PartialEq)]
pub enum RoundSum {
    /// Each node's figures added, in `f64`, as they arrived (plain aggregation).
    Figures(Vec<f64>),
    /// The unmasked secure sum, range-checked.
    Secure(SecureSum),
}

impl Default for RoundSum {
    fn default() -> Self {
        Self::Figures(Vec::new())
    }
}

impl RoundSum {
    /// Number of figures.
    pub fn len(&self) -> usize {
        match self {
            Self::Figures(figures) => figures.len(),
            Self::Secure(sum) => sum.len(),
        }
    }

    /// Whether there is no figure (nothing was summed).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hands the figures in `range` to `visit` a piece at a time (at most 2^18 figures each),
    /// with the index of each piece's first figure: a secure sum decodes each piece into a
    /// buffer that is reused, figures summed in the clear are lent as they are. Stops at the
    /// first error `visit` returns; a range past the end stops at the end.
    pub fn visit<E>(&self, range: Range<usize>, visit: &mut PieceVisitor<'_, E>) -> Result<(), E> {
        match self {
            Self::Figures(figures) => {
                let end = range.end.min(figures.len());
                let start = range.start.min(end);
                for (i, piece) in figures[start..end].chunks(DECODE_PIECE).enumerate() {
                    visit(start + i * DECODE_PIECE, piece)?;
                }
                Ok(())
            }
            Self::Secure(sum) => sum.visit(range, visit),
        }
    }

    /// The words of a block of words (a distributed-DP sum's), which decode as they are;
    /// `None` if the range is not within the sum or a figure there is not a word.
    pub fn words(&self, range: Range<usize>) -> Option<Vec<u32>> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        let mut words = Vec::with_capacity(range.len());
        self.visit::<()>(range, &mut |_, piece| {
            for &figure in piece {
                let word = u32::try_from(figure as u64)
                    .ok()
                    .filter(|&w| f64::from(w) == figure);
                words.push(word.ok_or(())?);
            }
            Ok(())
        })
        .ok()?;
        Some(words)
    }

    /// The figures in `range` as one vector (for the small blocks of a sum, or a sum with no
    /// model-sized block); `None` if the range is not within the sum.
    pub fn figures(&self, range: Range<usize>) -> Option<Vec<f64>> {
        match self {
            Self::Figures(figures) => figures.get(range).map(<[f64]>::to_vec),
            Self::Secure(sum) => sum.figures(range),
        }
    }

    /// Every figure, as one vector.
    pub fn to_vec(&self) -> Vec<f64> {
        self.figures(0..self.len()).unwrap_or_default()
    }

    /// The last figure, if any.
    pub fn last(&self) -> Option<f64> {
        let len = self.len();
        self.figures(len.checked_sub(1)?..len)?.first().copied()
    }

    /// Adds a node's checked figures into a sum made in the clear (which starts empty); `false`
    /// if this is a secure sum, which takes no figures in the clear.
    pub(super) fn add(&mut self, values: &PlainFigures) -> bool {
        let Self::Figures(sum) = self else {
            return false;
        };
        if sum.is_empty() {
            sum.resize(values.len(), 0.0);
        }
        values.add_to(sum);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_summed_in_the_clear_are_visited_a_piece_at_a_time() {
        let sum = RoundSum::Figures((0..DECODE_PIECE + 5).map(|i| i as f64).collect());
        let mut pieces = Vec::new();
        sum.visit::<()>(3..DECODE_PIECE + 4, &mut |first, piece| {
            pieces.push((first, piece.len(), piece[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(
            pieces,
            vec![
                (3, DECODE_PIECE, 3.0),
                (DECODE_PIECE + 3, 1, DECODE_PIECE as f64 + 3.0)
            ]
        );
        assert_eq!(sum.last(), Some(DECODE_PIECE as f64 + 4.0));
        assert_eq!(sum.figures(0..DECODE_PIECE + 6), None);
        assert_eq!(sum.words(1..3), Some(vec![1, 2]));
        assert_eq!(RoundSum::default().last(), None);
        assert_eq!(RoundSum::Figures(vec![0.5]).words(0..1), None);
        assert_eq!(RoundSum::Figures(vec![-1.0]).words(0..1), None);
    }
}
