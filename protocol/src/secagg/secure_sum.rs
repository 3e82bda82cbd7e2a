//! An unmasked secure sum, range-checked once and decoded a piece at a time as it is read.
//!
//! The coordinator keeps a model-sized round's sum as its words (4 bytes a figure) and decodes
//! each piece of figures only as it applies it: holding the decoded `f64` figures whole would
//! take twice the words' memory again.

use std::fmt;
use std::ops::Range;

use super::SecAggError;
use super::encoding::VectorEncoding;

/// What reads a sum a piece at a time: given the index of a piece's first figure and the
/// piece's figures, it goes on (`Ok`) or stops the reading with its error.
pub type PieceVisitor<'a, E> = dyn FnMut(usize, &[f64]) -> Result<(), E> + 'a;

/// The words of an unmasked sum of `summed_inputs` encoded vectors, every word checked in range
/// ([`VectorEncoding::decode_sum`]'s checks), with the encoding that reads them.
#[derive(Clone, PartialEq)]
pub struct SecureSum {
    encoding: VectorEncoding,
    words: Vec<u32>,
    summed_inputs: usize,
}

impl SecureSum {
    /// Takes over `words`, the unmasked sum of `summed_inputs` inputs, after the checks of
    /// [`VectorEncoding::decode_sum`] (the sum's length, every word in range); the same errors.
    pub fn new(
        encoding: VectorEncoding,
        words: Vec<u32>,
        summed_inputs: usize,
    ) -> Result<Self, SecAggError> {
        encoding.check_sum(&words, summed_inputs)?;
        Ok(Self {
            encoding,
            words,
            summed_inputs,
        })
    }

    /// Number of figures the sum decodes to.
    pub fn len(&self) -> usize {
        self.encoding.value_len()
    }

    /// Whether it decodes to no figure.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the figures in `range` a piece at a time (2 MiB of figures at most), handing
    /// each piece to `visit` with the index of its first figure; stops at the first error
    /// `visit` returns. A range past the end stops at the end.
    pub fn visit<E>(&self, range: Range<usize>, visit: &mut PieceVisitor<'_, E>) -> Result<(), E> {
        self.encoding
            .decode_range(&self.words, self.summed_inputs, range, visit)
    }

    /// The figures in `range`, decoded into one vector (for the small blocks of a sum); `None`
    /// if the range is not within the sum.
    pub fn figures(&self, range: Range<usize>) -> Option<Vec<f64>> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        let mut out = Vec::with_capacity(range.len());
        let collected: Result<(), std::convert::Infallible> = self.visit(range, &mut |_, piece| {
            out.extend_from_slice(piece);
            Ok(())
        });
        collected.map(|()| out).ok()
    }
}

impl fmt::Debug for SecureSum {
    /// The sum's shape, not its words (there may be millions).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureSum")
            .field("figures", &self.len())
            .field("words", &self.words.len())
            .field("summed_inputs", &self.summed_inputs)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::super::encoding::{BlockEncoding, DECODE_PIECE};
    use super::super::fixed_point::FixedPoint;
    use super::super::quantized::Quantized;
    use super::*;

    fn add(a: &mut [u32], b: &[u32]) {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(*y);
        }
    }

    /// Every kind of block, the long ones longer than a piece: a model-sized block is decoded
    /// in several pieces, and a packed one (five values a word) in pieces of whole words.
    fn encoding() -> (VectorEncoding, usize) {
        let fixed = FixedPoint {
            clip: 8.0,
            fractional_bits: 16,
        };
        let long = DECODE_PIECE + 3;
        let encoding = VectorEncoding::new(vec![
            (3, BlockEncoding::Count),
            (2, BlockEncoding::Wide),
            (long, BlockEncoding::Clipped(fixed)),
            (5, BlockEncoding::Words),
            (long, BlockEncoding::Count),
            (long, BlockEncoding::Packed(Quantized::fit(8.0, 6, 3))),
            (2, BlockEncoding::Wide),
        ]);
        (encoding, long)
    }

    fn sum_of_three(encoding: &VectorEncoding) -> Vec<u32> {
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let mut sum = vec![0u32; encoding.encoded_len()];
        for node in 0..3 {
            let values: Vec<f64> = (0..encoding.value_len())
                .map(|i| ((i * 7 + node * 13) % 17) as f64)
                .collect();
            add(&mut sum, &encoding.encode(&values, &mut rng).unwrap());
        }
        sum
    }

    #[test]
    fn any_range_decodes_in_pieces_to_the_figures_of_the_whole_sum() {
        let (encoding, long) = encoding();
        let words = sum_of_three(&encoding);
        let whole = encoding.decode_sum(&words, 3).unwrap();
        // The packed block decodes each value within three steps of its sum.
        let packed_start = encoding.value_len() - 2 - long;
        let step = 16.0 / 15.0;
        for (i, got) in whole.iter().enumerate().skip(packed_start).take(long) {
            let exact: f64 = (0..3)
                .map(|node| (((i * 7 + node * 13) % 17) as f64).min(8.0))
                .sum();
            assert!((got - exact).abs() <= 3.0 * step, "{i}");
        }
        let sum = SecureSum::new(encoding.clone(), words, 3).unwrap();
        assert_eq!(sum.len(), whole.len());
        assert_eq!(sum.figures(0..sum.len()).unwrap(), whole);
        // Ranges starting and ending inside blocks, inside a packed word, across blocks.
        let n = whole.len();
        for range in [
            0..0,
            1..4,
            4..9,
            5..5 + long,
            7..DECODE_PIECE + 20,
            packed_start + 2..packed_start + 3,
            packed_start - 1..n,
            n - 1..n,
        ] {
            // Each piece starts where the one before ended.
            let (mut got, mut at) = (Vec::new(), range.start);
            sum.visit::<()>(range.clone(), &mut |first, piece| {
                assert!(piece.len() <= DECODE_PIECE);
                assert_eq!(first, at, "{range:?}");
                at += piece.len();
                got.extend_from_slice(piece);
                Ok(())
            })
            .unwrap();
            assert_eq!(got, whole[range.clone()], "{range:?}");
        }
        assert_eq!(sum.figures(3..n + 1), None);
        // The visitor's error stops the visit.
        let mut visits = 0;
        let stopped = sum.visit(0..n, &mut |_, _| {
            visits += 1;
            Err("stop")
        });
        assert_eq!((stopped, visits), (Err("stop"), 1));
    }

    #[test]
    fn a_sum_out_of_range_or_of_the_wrong_length_is_refused_as_decode_sum_refuses_it() {
        let (encoding, _) = encoding();
        let words = sum_of_three(&encoding);
        let mut bad = words.clone();
        bad[3 * 2 + 2 * 4 + 5] = 1 << 31;
        let last = bad.len() - 1;
        bad[last] = u32::MAX;
        let cases = [
            (bad, 3),
            (words.clone(), 1 << 16),
            (words[1..].to_vec(), 3),
            (Vec::new(), 3),
        ];
        for (words, inputs) in cases {
            let expected = encoding.decode_sum(&words, inputs).unwrap_err();
            assert_eq!(
                SecureSum::new(encoding.clone(), words, inputs).unwrap_err(),
                expected
            );
        }
    }
}
