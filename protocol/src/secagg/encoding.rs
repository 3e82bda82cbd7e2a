//! How a node's figures become words of Z(2^32) for secure aggregation, and how the masked sum
//! turns back into figures.
//!
//! Two encodings share one vector:
//! - the model update uses the clipped fixed point of [`FixedPoint`] (one word per value, with
//!   the capacity check `n · B · 2^bits < 2^31`);
//! - counts, sums and sums of squares, which can be large, use an exact wide encoding: a 64-bit
//!   two's-complement fixed point with [`WIDE_FRACTIONAL_BITS`] fractional bits, split into four
//!   16-bit limbs, each limb summed in its own word. Limb sums cannot wrap with fewer than 2^16
//!   participants, so the sum of the 64-bit values is recovered exactly.

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::SecAggError;
use super::fixed_point::FixedPoint;

/// Fractional bits of the wide encoding (resolution 2^-16 ≈ 1.5·10^-5).
pub const WIDE_FRACTIONAL_BITS: u32 = 16;
/// Limbs per wide value.
const LIMBS: usize = 4;
/// Bits per limb.
const LIMB_BITS: u32 = 16;
/// Largest magnitude a wide value may have (scaled), keeping sums of many inside 64 bits.
const WIDE_MAX_SCALED: f64 = (1u64 << 52) as f64;

/// How one block of consecutive values is encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BlockEncoding {
    /// Clipped fixed point, one word per value.
    Clipped(FixedPoint),
    /// Exact wide fixed point, four words per value.
    Wide,
}

/// The encoding of a whole vector: blocks of `(values, encoding)` in order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VectorEncoding {
    blocks: Vec<(usize, BlockEncoding)>,
}

impl VectorEncoding {
    /// A vector of blocks.
    pub fn new(blocks: Vec<(usize, BlockEncoding)>) -> Self {
        Self { blocks }
    }

    /// Number of figures encoded.
    pub fn value_len(&self) -> usize {
        self.blocks.iter().map(|(len, _)| len).sum()
    }

    /// Number of `u32` words after encoding.
    pub fn encoded_len(&self) -> usize {
        self.blocks
            .iter()
            .map(|(len, encoding)| match encoding {
                BlockEncoding::Clipped(_) => *len,
                BlockEncoding::Wide => len * LIMBS,
            })
            .sum()
    }

    /// Refuses an encoding whose sum over `participants` could wrap.
    pub fn check_capacity(&self, participants: usize) -> Result<(), SecAggError> {
        if participants >= 1 << LIMB_BITS {
            return Err(SecAggError::BadParams(format!(
                "{participants} participants exceed the wide encoding's 65535"
            )));
        }
        for (_, encoding) in &self.blocks {
            if let BlockEncoding::Clipped(fixed) = encoding {
                fixed
                    .check_capacity(participants)
                    .map_err(|e| SecAggError::BadParams(e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Encodes `values` with stochastic rounding drawn from `rng` (a CSPRNG).
    pub fn encode<R: rand::CryptoRng + ?Sized>(
        &self,
        values: &[f64],
        rng: &mut R,
    ) -> Result<Vec<u32>, SecAggError> {
        if values.len() != self.value_len() {
            return Err(SecAggError::BadParams(format!(
                "{} values for an encoding of {}",
                values.len(),
                self.value_len()
            )));
        }
        let mut out = Vec::with_capacity(self.encoded_len());
        let mut rest = values;
        for (len, encoding) in &self.blocks {
            let (block, tail) = rest.split_at(*len);
            rest = tail;
            match encoding {
                BlockEncoding::Clipped(fixed) => out.extend(fixed.encode(block, rng)?),
                BlockEncoding::Wide => {
                    for &value in block {
                        let scaled = wide_round(value, rng)?;
                        for limb in 0..LIMBS {
                            out.push(((scaled >> (LIMB_BITS * limb as u32)) & 0xffff) as u32);
                        }
                    }
                }
            }
        }
        Ok(out)
    }

    /// Decodes the sum of encoded vectors.
    pub fn decode_sum(&self, sum: &[u32]) -> Result<Vec<f64>, SecAggError> {
        if sum.len() != self.encoded_len() {
            return Err(SecAggError::BadParams(format!(
                "sum of {} words for an encoding of {}",
                sum.len(),
                self.encoded_len()
            )));
        }
        let mut out = Vec::with_capacity(self.value_len());
        let mut rest = sum;
        for (len, encoding) in &self.blocks {
            match encoding {
                BlockEncoding::Clipped(fixed) => {
                    let (block, tail) = rest.split_at(*len);
                    rest = tail;
                    out.extend(fixed.decode_sum(block));
                }
                BlockEncoding::Wide => {
                    let (block, tail) = rest.split_at(len * LIMBS);
                    rest = tail;
                    for limbs in block.chunks_exact(LIMBS) {
                        let total = limbs.iter().enumerate().fold(0u64, |acc, (i, &s)| {
                            acc.wrapping_add(u64::from(s) << (LIMB_BITS * i as u32))
                        });
                        out.push(total as i64 as f64 / f64::from(1u32 << WIDE_FRACTIONAL_BITS));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Scales by 2^16 and rounds stochastically to an integer, as 64-bit two's complement.
fn wide_round<R: rand::CryptoRng + ?Sized>(value: f64, rng: &mut R) -> Result<u64, SecAggError> {
    let scaled = value * f64::from(1u32 << WIDE_FRACTIONAL_BITS);
    if !scaled.is_finite() || scaled.abs() > WIDE_MAX_SCALED {
        return Err(SecAggError::BadParams(format!(
            "value {value} is outside the wide encoding's range"
        )));
    }
    let floor = scaled.floor();
    let up = rng.random::<f64>() < scaled - floor;
    Ok((floor as i64 + i64::from(up)) as u64)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn add(a: &mut [u32], b: &[u32]) {
        for (x, y) in a.iter_mut().zip(b) {
            *x = x.wrapping_add(*y);
        }
    }

    #[test]
    fn wide_sums_of_large_and_negative_values_are_exact() {
        let encoding = VectorEncoding::new(vec![(3, BlockEncoding::Wide)]);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let nodes = [[1e8, -2.5, 300.0], [2.7e8, -0.5, 0.0], [5.0, 1.0, -300.0]];
        let mut sum = vec![0u32; encoding.encoded_len()];
        for node in &nodes {
            add(&mut sum, &encoding.encode(node, &mut rng).unwrap());
        }
        assert_eq!(
            encoding.decode_sum(&sum).unwrap(),
            vec![3.70000005e8, -2.0, 0.0]
        );
    }

    #[test]
    fn mixed_blocks_decode_in_order_and_capacity_is_checked() {
        let fixed = FixedPoint {
            clip: 8.0,
            fractional_bits: 16,
        };
        let encoding = VectorEncoding::new(vec![
            (1, BlockEncoding::Wide),
            (2, BlockEncoding::Clipped(fixed)),
        ]);
        assert_eq!(encoding.encoded_len(), 6);
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let mut sum = vec![0u32; 6];
        add(
            &mut sum,
            &encoding.encode(&[10.0, 0.25, -1.0], &mut rng).unwrap(),
        );
        add(
            &mut sum,
            &encoding.encode(&[32.0, 0.5, -100.0], &mut rng).unwrap(),
        );
        let decoded = encoding.decode_sum(&sum).unwrap();
        assert_eq!(decoded[0], 42.0);
        assert!((decoded[1] - 0.75).abs() < 1e-4);
        assert!(
            (decoded[2] + 9.0).abs() < 1e-4,
            "clipped to -8: {}",
            decoded[2]
        );
        assert!(encoding.check_capacity(100).is_ok());
        // 10_000 · 8 · 2^16 ≥ 2^31.
        assert!(encoding.check_capacity(10_000).is_err());
        assert!(encoding.encode(&[1.0], &mut rng).is_err());
        assert!(encoding.encode(&[f64::NAN, 0.0, 0.0], &mut rng).is_err());
    }
}
