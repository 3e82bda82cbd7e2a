//! Fixed-point encoding of model updates into Z(2^32), the group the masks live in.
//!
//! A value is clipped to `[-B, B]`, scaled by `2^fractional_bits`, rounded stochastically (up with
//! probability equal to the fractional part, so the encoding is unbiased) and stored as a `u32` in
//! two's complement. Sums wrap modulo 2^32 exactly as the masked sums do; as long as the true sum
//! stays inside the signed 32-bit range ([`FixedPoint::check_capacity`]) it decodes back
//! exactly, whatever the masks did in between.

use rand::CryptoRng;
use serde::{Deserialize, Serialize};

use super::crypto::CryptoError;

/// How updates are encoded: clip bound and precision.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct FixedPoint {
    /// Clip bound B: every value is clipped to `[-B, B]` before encoding. Finite and positive.
    pub clip: f64,
    /// Number of fractional bits: the encoding's resolution is `2^-fractional_bits`.
    pub fractional_bits: u32,
}

impl FixedPoint {
    /// Checks that a sum of `n` encoded values cannot leave the signed 32-bit range:
    /// `n · ceil(B · 2^bits) < 2^31` (the ceiling because stochastic rounding may round the
    /// largest value up). The error names the numbers.
    pub fn check_capacity(&self, n: usize) -> Result<(), CryptoError> {
        let max_encoded = self.max_encoded()?;
        let worst_sum = n as u128 * u128::from(max_encoded);
        if worst_sum >= 1u128 << 31 {
            return Err(CryptoError::Capacity {
                n,
                clip: self.clip,
                fractional_bits: self.fractional_bits,
                max_encoded,
                worst_sum,
            });
        }
        Ok(())
    }

    /// Largest magnitude one encoded value can take, `ceil(B · 2^bits)`; errors if the
    /// configuration itself is unusable (see [`CryptoError::InvalidFixedPoint`]).
    pub fn max_encoded(&self) -> Result<u64, CryptoError> {
        let invalid = CryptoError::InvalidFixedPoint {
            clip: self.clip,
            fractional_bits: self.fractional_bits,
        };
        if !(self.clip.is_finite() && self.clip > 0.0) || self.fractional_bits > MAX_BITS {
            return Err(invalid);
        }
        let max = (self.clip * self.scale()).ceil();
        if max >= TWO_POW_31 {
            return Err(invalid);
        }
        // In range: 0 < max < 2^31, an integer, so the cast is exact.
        Ok(max as u64)
    }

    /// Clips, scales by `2^bits`, rounds stochastically with the caller's CSPRNG and maps to
    /// `u32` two's complement.
    ///
    /// Errors on an unusable configuration or a NaN or infinite value (a diverged update must
    /// not be sent, clipped or otherwise).
    pub fn encode(
        &self,
        values: &[f64],
        rng: &mut (impl CryptoRng + ?Sized),
    ) -> Result<Vec<u32>, CryptoError> {
        self.max_encoded()?;
        let scale = self.scale();
        values
            .iter()
            .enumerate()
            .map(|(index, &value)| {
                if !value.is_finite() {
                    return Err(CryptoError::NonFiniteValue { index });
                }
                // Scaling by a power of two is exact, so `frac` is the true fractional part.
                let scaled = value.max(-self.clip).min(self.clip) * scale;
                let floor = scaled.floor();
                let frac = scaled - floor;
                let up = unit_interval(rng) < frac;
                // |floor + up| ≤ ceil(B · 2^bits) < 2^31 (checked by `max_encoded`), so the value
                // fits an i32 and the casts are exact.
                let rounded = floor as i64 + i64::from(up);
                Ok(rounded as i32 as u32)
            })
            .collect()
    }

    /// Reads a (possibly wrapped) sum as signed `i32` words and divides by `2^bits`.
    pub fn decode_sum(&self, sum: &[u32]) -> Vec<f64> {
        let mut out = vec![0.0; sum.len()];
        self.decode_sum_into(sum, &mut out);
        out
    }

    /// [`Self::decode_sum`] into `out`, a figure per word (as many as both have): no vector of
    /// the sum's size besides `out`.
    pub fn decode_sum_into(&self, sum: &[u32], out: &mut [f64]) {
        let scale = self.scale();
        for (word, value) in sum.iter().zip(out) {
            *value = f64::from(*word as i32) / scale;
        }
    }

    /// `2^fractional_bits` as an `f64` (infinite only for configurations `max_encoded` refuses).
    fn scale(&self) -> f64 {
        2f64.powi(self.fractional_bits.min(i32::MAX as u32) as i32)
    }
}

// ---- helpers ----------------------------------------------------------------------------------

/// 2^31 as an `f64`.
const TWO_POW_31: f64 = 2_147_483_648.0;

/// Beyond 62 fractional bits even the smallest clip bound overflows; refuse early.
const MAX_BITS: u32 = 62;

/// A uniform draw from [0, 1) with 53 random bits.
fn unit_interval(rng: &mut (impl CryptoRng + ?Sized)) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::secagg::crypto::{add_mask, subtract_mask};

    const FP: FixedPoint = FixedPoint {
        clip: 4.0,
        fractional_bits: 16,
    };

    fn sum(vectors: &[Vec<u32>]) -> Vec<u32> {
        let mut out = vec![0u32; vectors[0].len()];
        for v in vectors {
            for (o, x) in out.iter_mut().zip(v) {
                *o = o.wrapping_add(*x);
            }
        }
        out
    }

    #[test]
    fn one_value_round_trips_within_resolution() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let step = 2f64.powi(-16);
        for _ in 0..1000 {
            let v: f64 = rng.random_range(-4.0..4.0);
            let enc = FP.encode(&[v], &mut rng).unwrap();
            let dec = FP.decode_sum(&enc)[0];
            assert!((dec - v).abs() <= step, "{v} → {dec}");
        }
        // Exactly representable values are exact.
        let exact = [0.0, 1.5, -1.5, 4.0, -4.0, step, -step];
        let enc = FP.encode(&exact, &mut rng).unwrap();
        assert_eq!(FP.decode_sum(&enc), exact);
    }

    #[test]
    fn clipping() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let enc = FP.encode(&[1e9, -1e9, 4.5, -4.0001], &mut rng).unwrap();
        assert_eq!(FP.decode_sum(&enc), [4.0, -4.0, 4.0, -4.0]);
    }

    #[test]
    fn sum_of_encodings_is_encoding_of_sum() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let n = 50;
        let dim = 200;
        let inputs: Vec<Vec<f64>> = (0..n)
            .map(|_| (0..dim).map(|_| rng.random_range(-4.0..4.0)).collect())
            .collect();
        FP.check_capacity(n).unwrap();
        let encoded: Vec<Vec<u32>> = inputs
            .iter()
            .map(|v| FP.encode(v, &mut rng).unwrap())
            .collect();
        let decoded = FP.decode_sum(&sum(&encoded));
        let tolerance = n as f64 * 2f64.powi(-16);
        for j in 0..dim {
            let truth: f64 = inputs.iter().map(|v| v[j]).sum();
            assert!(
                (decoded[j] - truth).abs() <= tolerance,
                "{j}: {truth} vs {}",
                decoded[j]
            );
        }
    }

    #[test]
    fn negative_and_wrapped_sums_decode() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let a = FP.encode(&[-3.0, 2.0, -0.5], &mut rng).unwrap();
        let b = FP.encode(&[-3.5, -3.0, 0.25], &mut rng).unwrap();
        // -3.0 encodes as 2^32 − 3·2^16: the u32 sum wraps past 2^32, and reads back signed.
        assert_eq!(a[0], (-(3i32 << 16)) as u32);
        let s = sum(&[a.clone(), b.clone()]);
        assert_eq!(FP.decode_sum(&s), [-6.5, -1.0, -0.25]);
        // With pairwise masks added and cancelled, the wrapped words still decode.
        let (mut ma, mut mb) = (a, b);
        add_mask(&[1u8; 32], &mut ma);
        subtract_mask(&[1u8; 32], &mut mb);
        assert_eq!(FP.decode_sum(&sum(&[ma, mb])), [-6.5, -1.0, -0.25]);
    }

    #[test]
    fn capacity_check() {
        // B = 1, 16 bits: each value up to 2^16, so n = 2^15 reaches 2^31 exactly.
        let fp = FixedPoint {
            clip: 1.0,
            fractional_bits: 16,
        };
        fp.check_capacity(32_767).unwrap();
        let err = fp.check_capacity(32_768).unwrap_err();
        assert_eq!(
            err,
            CryptoError::Capacity {
                n: 32_768,
                clip: 1.0,
                fractional_bits: 16,
                max_encoded: 65_536,
                worst_sum: 1 << 31,
            }
        );
        let msg = err.to_string();
        assert!(msg.contains("32768") && msg.contains("65536") && msg.contains("2147483648"));
        // Off the 2^-bits grid the ceiling matters: 0.3 · 2^16 = 19660.8 rounds up to 19661, and
        // 109226 · 19661 ≥ 2^31 although 109226 · 19660.8 < 2^31.
        let fp = FixedPoint {
            clip: 0.3,
            fractional_bits: 16,
        };
        fp.check_capacity(109_225).unwrap();
        assert!(fp.check_capacity(109_226).is_err());
        // The extreme: B · 2^bits = 2^31 − 1 fits one value only.
        let fp = FixedPoint {
            clip: (TWO_POW_31 - 1.0) / 2.0,
            fractional_bits: 1,
        };
        fp.check_capacity(1).unwrap();
        assert!(fp.check_capacity(2).is_err());
        fp.check_capacity(0).unwrap();
    }

    #[test]
    fn invalid_configurations_and_values_are_errors() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        for (clip, fractional_bits) in [
            (0.0, 16),
            (-1.0, 16),
            (f64::NAN, 16),
            (f64::INFINITY, 16),
            (1.0, 31),
            (1.0, 63),
            (1.0, u32::MAX),
        ] {
            let fp = FixedPoint {
                clip,
                fractional_bits,
            };
            assert!(matches!(
                fp.check_capacity(1),
                Err(CryptoError::InvalidFixedPoint { .. })
            ));
            assert!(matches!(
                fp.encode(&[0.5], &mut rng),
                Err(CryptoError::InvalidFixedPoint { .. })
            ));
        }
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(
                FP.encode(&[0.0, bad], &mut rng).unwrap_err(),
                CryptoError::NonFiniteValue { index: 1 }
            );
        }
        assert!(FP.encode(&[], &mut rng).unwrap().is_empty());
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let step = 2f64.powi(-16);
        let draws = 10_000;
        for (value, expected) in [(0.3 * step, 0.3), (-0.3 * step, -0.3), (2.7 * step, 2.7)] {
            let enc = FP.encode(&vec![value; draws], &mut rng).unwrap();
            let counts: Vec<f64> = enc.iter().map(|&w| f64::from(w as i32)).collect();
            let mean = counts.iter().sum::<f64>() / draws as f64;
            // Bernoulli(0.3) over 10k draws: σ ≈ 0.0046, so 0.02 is over 4σ.
            assert!((mean - expected).abs() < 0.02, "{value}: mean {mean}");
            // Only the two neighbouring grid points ever come out.
            let lo = expected.floor();
            assert!(counts.iter().all(|&c| c == lo || c == lo + 1.0));
        }
    }
}
