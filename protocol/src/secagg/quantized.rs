//! Quantised model updates packed several to a word of Z(2^32), the group the masks live in.
//!
//! A value is clipped to `[-B, B]`, mapped onto `[0, L]` with `L = 2^level_bits − 1`
//! (`q = (v + B) / 2B · L`), rounded stochastically (up with probability equal to the fractional
//! part, so the encoding is unbiased, as [`super::fixed_point::FixedPoint::encode`] is) and
//! packed into a lane of `lane_bits` bits: `32 / lane_bits` lanes a word, lane `i` of word `j`
//! holding value `j · lanes + i` at bits `i · lane_bits ..` (little-endian lane order; the last
//! word may be partial, its unused lanes zero).
//!
//! Masks are added to whole words modulo 2^32 and cancel in the sum, so the unmasked sum is the
//! sum of the packed words. As long as no lane sum reaches `2^lane_bits` (`n · L < 2^lane_bits`
//! for `n` inputs, [`Quantized::check_capacity`]) no lane carries into the next, and each lane
//! of the summed word is exactly `S = Σ q`, whence `Σ v ≈ S · 2B / L − n · B`, unbiased for the
//! sum of the clipped values, each input off by less than `2B / L` before rounding's expectation.

use rand::CryptoRng;
use serde::{Deserialize, Serialize};

use super::SecAggError;

/// Widest lane: at least two values a word, else quantising saves nothing.
pub const MAX_LANE_BITS: u32 = 16;
/// Narrowest lane: one level bit and one bit of headroom for two inputs.
pub const MIN_LANE_BITS: u32 = 2;

/// A quantised, packed encoding of the update: clip bound, levels and lane width.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Quantized {
    /// Clip bound B: every value is clipped to `[-B, B]` before quantising. Finite, positive.
    pub clip: f64,
    /// Bits of a value's level: `L = 2^level_bits − 1` levels above 0. At least 1, less than
    /// `lane_bits`.
    pub level_bits: u32,
    /// Bits of a lane, in [`MIN_LANE_BITS`, `MAX_LANE_BITS`]: `32 / lane_bits` values a word.
    pub lane_bits: u32,
}

impl Quantized {
    /// The encoding with `lane_bits`-bit lanes and as many level bits as a sum of
    /// `participants` inputs fits: the largest `b` with `participants · (2^b − 1) <
    /// 2^lane_bits`. When even one level bit does not fit, `level_bits` is 0, which
    /// [`Self::check_capacity`] refuses, naming the numbers.
    pub fn fit(clip: f64, lane_bits: u32, participants: usize) -> Self {
        let lane = 1u128 << lane_bits.min(MAX_LANE_BITS);
        let n = participants.max(1) as u128;
        let level_bits = (1..lane_bits.min(MAX_LANE_BITS))
            .rev()
            .find(|b| n * ((1u128 << b) - 1) < lane)
            .unwrap_or(0);
        Self {
            clip,
            level_bits,
            lane_bits,
        }
    }

    /// Values a word holds.
    pub fn lanes(&self) -> usize {
        (32 / self.lane_bits.clamp(1, 32)) as usize
    }

    /// The largest level, `L = 2^level_bits − 1`.
    pub fn levels(&self) -> u32 {
        (1u32 << self.level_bits.min(31)) - 1
    }

    /// Words `len` values take: `⌈len / lanes⌉`.
    pub fn encoded_len(&self, len: usize) -> usize {
        len.div_ceil(self.lanes())
    }

    /// Refuses an unusable configuration (a clip bound that is not positive with `2B` finite, lanes
    /// outside [`MIN_LANE_BITS`, `MAX_LANE_BITS`], no level bit, or no headroom) and a sum of
    /// `participants` inputs whose lanes could carry: `participants · L ≥ 2^lane_bits`.
    pub fn check_capacity(&self, participants: usize) -> Result<(), SecAggError> {
        // `2B` finite too: beyond, every value would quantise to 0 and decode to NaN.
        let usable = (2.0 * self.clip).is_finite()
            && self.clip > 0.0
            && (MIN_LANE_BITS..=MAX_LANE_BITS).contains(&self.lane_bits)
            && self.level_bits < self.lane_bits;
        if !usable {
            return Err(SecAggError::BadParams(format!(
                "invalid quantisation: clip {}, {} level bits in {}-bit lanes (need 0 < clip, \
                 {MIN_LANE_BITS} ≤ lane bits ≤ {MAX_LANE_BITS} and level bits < lane bits)",
                self.clip, self.level_bits, self.lane_bits
            )));
        }
        let worst = participants as u128 * u128::from(self.levels());
        if self.level_bits == 0 || worst >= 1u128 << self.lane_bits {
            return Err(SecAggError::QuantizationCapacity {
                participants,
                level_bits: self.level_bits,
                lane_bits: self.lane_bits,
            });
        }
        Ok(())
    }

    /// Clips, quantises with stochastic rounding drawn from the caller's CSPRNG and packs
    /// `values` (figures `position..` of the vector) into `out`, [`Self::encoded_len`] words.
    /// A NaN or infinite value is refused (a diverged update must not be sent, clipped or
    /// otherwise).
    pub fn encode_into<R: CryptoRng + ?Sized>(
        &self,
        values: &[f64],
        position: usize,
        rng: &mut R,
        out: &mut Vec<u32>,
    ) -> Result<(), SecAggError> {
        self.check_capacity(1)?;
        let levels = f64::from(self.levels());
        let to_levels = levels / (2.0 * self.clip);
        for (word_index, chunk) in values.chunks(self.lanes()).enumerate() {
            let mut word = 0u32;
            for (lane, &value) in chunk.iter().enumerate() {
                if !value.is_finite() {
                    return Err(SecAggError::NotFinite {
                        position: position + word_index * self.lanes() + lane,
                    });
                }
                let scaled = (value.clamp(-self.clip, self.clip) + self.clip) * to_levels;
                let floor = scaled.floor();
                let up = unit_interval(rng) < scaled - floor;
                // 0 ≤ scaled ≤ L (up to rounding of the product), so the level is in [0, L].
                let level =
                    ((floor as i64 + i64::from(up)).clamp(0, i64::from(self.levels()))) as u32;
                word |= level << (lane as u32 * self.lane_bits);
            }
            out.push(word);
        }
        Ok(())
    }

    /// The first lane of `words` (the summed words of a `len`-value block starting at word
    /// `start` of the vector) above what `summed_inputs` inputs can give, `summed_inputs · L`
    /// (0 for the unused lanes of the last word and the bits above the last lane): its word,
    /// its value and that bound.
    pub fn out_of_range(
        &self,
        words: &[u32],
        len: usize,
        summed_inputs: usize,
    ) -> Option<(usize, u64, u64)> {
        let lanes = self.lanes();
        let most = summed_inputs as u64 * u64::from(self.levels());
        let mask = self.lane_mask();
        for (i, &word) in words.iter().enumerate() {
            let used = len.saturating_sub(i * lanes).min(lanes);
            for lane in 0..lanes {
                let sum = u64::from((word >> (lane as u32 * self.lane_bits)) & mask);
                let bound = if lane < used { most } else { 0 };
                if sum > bound {
                    return Some((i, sum, bound));
                }
            }
            let spare = u64::from(word.checked_shr(lanes as u32 * self.lane_bits).unwrap_or(0));
            if spare != 0 {
                return Some((i, spare << (lanes as u32 * self.lane_bits), 0));
            }
        }
        None
    }

    /// Unpacks the (range-checked) summed words of `summed_inputs` inputs into `out`, a figure
    /// per lane for as many figures as `out` has: `S · 2B / L − summed_inputs · B`.
    pub fn decode_sum_into(&self, words: &[u32], summed_inputs: usize, out: &mut [f64]) {
        let step = 2.0 * self.clip / f64::from(self.levels().max(1));
        let offset = summed_inputs as f64 * self.clip;
        let mask = self.lane_mask();
        for (chunk, &word) in out.chunks_mut(self.lanes()).zip(words) {
            for (lane, value) in chunk.iter_mut().enumerate() {
                let sum = (word >> (lane as u32 * self.lane_bits)) & mask;
                *value = f64::from(sum) * step - offset;
            }
        }
    }

    /// The bits of one lane.
    fn lane_mask(&self) -> u32 {
        u32::MAX >> (32 - self.lane_bits.clamp(1, 32))
    }
}

/// A uniform draw from [0, 1) with 53 random bits.
fn unit_interval<R: CryptoRng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
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

    fn encode(q: &Quantized, values: &[f64], rng: &mut ChaCha20Rng) -> Vec<u32> {
        let mut out = Vec::new();
        q.encode_into(values, 0, rng, &mut out).unwrap();
        out
    }

    #[test]
    fn levels_fit_the_lane_with_headroom_for_every_participant() {
        // 8-bit lanes: 4 participants · 63 = 252 < 256, 4 · 127 would not fit.
        let q = Quantized::fit(1.0, 8, 4);
        assert_eq!((q.level_bits, q.levels(), q.lanes()), (6, 63, 4));
        assert!(q.check_capacity(4).is_ok());
        assert!(q.check_capacity(5).is_err());
        // 20 participants: 20 · 7 = 140 < 256, 20 · 15 = 300 does not.
        assert_eq!(Quantized::fit(1.0, 8, 20).level_bits, 3);
        // One participant may use every bit but the lane's top one.
        assert_eq!(Quantized::fit(1.0, 8, 1).level_bits, 7);
        assert_eq!(Quantized::fit(1.0, 16, 4).level_bits, 14);
        assert_eq!(Quantized::fit(1.0, 6, 4).lanes(), 5);
        // 256 participants leave no level bit in 8-bit lanes: refused, naming the numbers.
        let none = Quantized::fit(1.0, 8, 256);
        assert_eq!(none.level_bits, 0);
        let error = none.check_capacity(256).unwrap_err();
        assert_eq!(
            error,
            SecAggError::QuantizationCapacity {
                participants: 256,
                level_bits: 0,
                lane_bits: 8
            }
        );
        assert!(error.to_string().contains("256"), "{error}");
        for bad in [
            Quantized {
                clip: f64::NAN,
                ..q
            },
            Quantized { clip: 0.0, ..q },
            // 2B overflows: every value would quantise to 0 and the sum decode to NaN.
            Quantized {
                clip: f64::MAX,
                ..q
            },
            Quantized {
                lane_bits: 17,
                level_bits: 6,
                ..q
            },
            Quantized {
                lane_bits: 1,
                level_bits: 0,
                ..q
            },
            Quantized { level_bits: 8, ..q },
        ] {
            assert!(
                matches!(bad.check_capacity(1), Err(SecAggError::BadParams(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_packed_sum_decodes_to_the_sum_of_the_clipped_values_within_a_step_per_input() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        for (lane_bits, n) in [(8, 4), (8, 20), (6, 3), (16, 20), (4, 2), (10, 5)] {
            let q = Quantized::fit(2.0, lane_bits, n);
            q.check_capacity(n).unwrap();
            // 11 values: not a multiple of any lane count here, so the last word is partial.
            let nodes: Vec<Vec<f64>> = (0..n)
                .map(|k| {
                    (0..11)
                        .map(|i| match i {
                            0 => 2.0,
                            1 => -2.0,
                            2 => 5.0,
                            3 => -1e9,
                            _ => ((i * 31 + k * 17) % 41) as f64 / 10.0 - 2.0,
                        })
                        .collect()
                })
                .collect();
            let mut sum = vec![0u32; q.encoded_len(11)];
            for node in &nodes {
                let words = encode(&q, node, &mut rng);
                assert_eq!(words.len(), 11usize.div_ceil(q.lanes()));
                add(&mut sum, &words);
            }
            assert_eq!(q.out_of_range(&sum, 11, n), None);
            let mut decoded = vec![0.0; 11];
            q.decode_sum_into(&sum, n, &mut decoded);
            let step = 4.0 / f64::from(q.levels());
            for (i, got) in decoded.iter().enumerate() {
                let exact: f64 = nodes.iter().map(|node| node[i].clamp(-2.0, 2.0)).sum();
                assert!(
                    (got - exact).abs() <= n as f64 * step + 1e-9,
                    "{lane_bits}-bit lanes, {n} inputs, value {i}: {got} vs {exact}"
                );
            }
            // ±B land on the end levels exactly, whatever the draw: their sums are exact.
            assert!((decoded[0] - 2.0 * n as f64).abs() < 1e-9, "{decoded:?}");
            assert!((decoded[1] + 2.0 * n as f64).abs() < 1e-9, "{decoded:?}");
            assert!((decoded[2] - 2.0 * n as f64).abs() < 1e-9, "clipped to B");
            assert!((decoded[3] + 2.0 * n as f64).abs() < 1e-9, "clipped to -B");
        }
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        // 4 levels over [-1, 1]: a step of 2/3, so 0.1 falls between levels 1 and 2.
        let q = Quantized {
            clip: 1.0,
            level_bits: 2,
            lane_bits: 4,
        };
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let draws = 40_000;
        let values = [0.1, -0.55, 0.9, 0.0, 1.0 / 3.0, -0.999];
        let mut total = vec![0.0; values.len()];
        let mut decoded = vec![0.0; values.len()];
        for _ in 0..draws {
            q.decode_sum_into(&encode(&q, &values, &mut rng), 1, &mut decoded);
            for (t, d) in total.iter_mut().zip(&decoded) {
                *t += d;
            }
        }
        for (value, t) in values.iter().zip(&total) {
            let mean = t / f64::from(draws);
            // Each draw is off by at most a step (2/3): the mean's standard error is below
            // 0.34 / 200 = 0.0017.
            assert!((mean - value).abs() < 0.007, "{value}: mean {mean}");
        }
    }

    #[test]
    fn nan_and_infinite_values_are_refused_by_their_position() {
        let q = Quantized::fit(1.0, 8, 3);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        for (at, bad) in [(0, f64::NAN), (5, f64::INFINITY), (6, f64::NEG_INFINITY)] {
            let mut values = vec![0.5; 7];
            values[at] = bad;
            let mut out = Vec::new();
            assert_eq!(
                q.encode_into(&values, 100, &mut rng, &mut out),
                Err(SecAggError::NotFinite { position: 100 + at })
            );
        }
    }

    #[test]
    fn a_lane_sum_beyond_what_the_inputs_can_give_is_found() {
        let q = Quantized::fit(1.0, 8, 3);
        let most = 3 * u64::from(q.levels());
        // 6 values: one full word and a word with two used lanes.
        let edge = [u32::from_le_bytes([most as u8; 4]), most as u32 * 0x0101];
        assert_eq!(q.out_of_range(&edge, 6, 3), None);
        let cases = [
            (0, 0x0000_0001, (0, most + 1, most)),
            (0, 0x0100_0000, (0, most + 1, most)),
            (1, 0x0000_0100, (1, most + 1, most)),
            // An unused lane of the last word must stay 0.
            (1, 0x0001_0000, (1, 1, 0)),
        ];
        for (word, add, expected) in cases {
            let mut bad = edge;
            bad[word] = bad[word].wrapping_add(add);
            assert_eq!(q.out_of_range(&bad, 6, 3), Some(expected), "{add:#x}");
        }
        // Fewer inputs than summed: out of range.
        assert!(q.out_of_range(&edge, 6, 2).is_some());
        // 6-bit lanes use 30 bits: the top two must stay 0.
        let six = Quantized::fit(1.0, 6, 2);
        assert_eq!(six.out_of_range(&[1 << 30], 5, 2), Some((0, 1 << 30, 0)));
    }
}
