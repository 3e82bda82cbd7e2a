//! How a node's figures become words of Z(2^32) for secure aggregation, and how the masked sum
//! turns back into figures.
//!
//! These encodings share one vector, block by block:
//! - the model update uses the clipped fixed point of [`FixedPoint`] (one word per value, with
//!   the capacity check `n · B · 2^bits < 2^31`), or, when the task quantises uploads, the
//!   packed encoding of [`Quantized`] (`32 / lane_bits` values a word, each lane with the
//!   headroom `n · L < 2^lane_bits` so lane sums never carry into each other, as the count
//!   encoding's 16-bit limbs do); [`UpdateEncoding`] names which;
//! - integer counts (possibly negative, after a node's discrete-Gaussian noise) use an exact
//!   count encoding: a node's count `v`, an integer with `−2^31 ≤ v < 2^31`, is sent as
//!   `u = v + 2^31` in [0, 2^32), split into two 16-bit limbs, each summed in its own word.
//!   The limb sums `S0`, `S1` give `T = S0 + 2^16 · S1 = Σ u = Σ v + k · 2^31`, where `k` is the
//!   number of inputs in the sum, so decoding needs `k` ([`VectorEncoding::decode_sum`]'s
//!   `summed_inputs`). Anything else (a fraction, NaN, a count out of range) is refused;
//! - real sums and sums of squares, which can be large, use an exact wide encoding: a 64-bit
//!   two's-complement fixed point with [`WIDE_FRACTIONAL_BITS`] fractional bits, split into four
//!   16-bit limbs, each summed in its own word;
//! - words already in Z(2^32) (distributed DP's noised integer sums,
//!   `crate::distributed_dp::NodeSum::finish`) pass through: one word per value, summed modulo
//!   2^32, and decoded as the summed word, which only the block's own decoder
//!   (`crate::distributed_dp::DdpParams::decode_sum`) can read and range-check.
//!
//! Limb sums cannot wrap with fewer than 2^16 participants ([`VectorEncoding::check_capacity`]),
//! so the sums of counts and of the 64-bit values are recovered exactly.
//!
//! Decoding checks every word of the sum against the largest value the inputs summed can give
//! ([`VectorEncoding::decode_sum`]).

use rand::Rng;
use serde::{Deserialize, Serialize};

use super::fixed_point::FixedPoint;
use super::quantized::Quantized;
use super::{PieceVisitor, SecAggError};

/// Fractional bits of the wide encoding (resolution 2^-16 ≈ 1.5·10^-5).
pub const WIDE_FRACTIONAL_BITS: u32 = 16;
/// Limbs per wide value.
const LIMBS: usize = 4;
/// Limbs per count.
const COUNT_LIMBS: usize = 2;
/// Offset added to a count to make it non-negative: `v` is sent as `v + 2^31`.
const COUNT_OFFSET: i64 = 1 << 31;
/// Bits per limb.
const LIMB_BITS: u32 = 16;
/// 2^32: a [`BlockEncoding::Words`] value is an integer below it.
const WORD_RANGE: f64 = 4_294_967_296.0;
/// Largest magnitude a wide value may have (scaled), keeping sums of many inside 64 bits.
const WIDE_MAX_SCALED: f64 = (1u64 << 52) as f64;

/// How one block of consecutive values is encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum BlockEncoding {
    /// Clipped fixed point, one word per value.
    Clipped(FixedPoint),
    /// Exact wide fixed point, four words per value.
    Wide,
    /// Exact integer count in [−2^31, 2^31), two words per value.
    Count,
    /// A word of Z(2^32) given as an integer in [0, 2^32), one word per value, summed modulo
    /// 2^32. [`VectorEncoding::decode_sum`] returns each summed word as it is (an integer in
    /// [0, 2^32)) and checks no range: what the words mean, and the range check, belong to
    /// the block's own decoder (distributed DP's `DdpParams::decode_sum`).
    Words,
    /// Clipped, quantised with stochastic rounding and packed `32 / lane_bits` values a word
    /// ([`Quantized`]); `⌈len / lanes⌉` words.
    Packed(Quantized),
}

/// How the model update is encoded, as the task manifest plans it for a round
/// ([`crate::manifest::SecureAggregationPlan::update_encoding`]) and the round's
/// [`SecAggSetup`](crate::messages::SecAggSetup) carries it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum UpdateEncoding {
    /// Clipped fixed point, one word per value.
    Fixed(FixedPoint),
    /// Clipped and quantised, several values a word.
    Quantized(Quantized),
}

impl UpdateEncoding {
    /// The update block's encoding.
    pub fn block(&self) -> BlockEncoding {
        match *self {
            Self::Fixed(fixed) => BlockEncoding::Clipped(fixed),
            Self::Quantized(quantized) => BlockEncoding::Packed(quantized),
        }
    }
}

impl From<FixedPoint> for UpdateEncoding {
    fn from(fixed: FixedPoint) -> Self {
        Self::Fixed(fixed)
    }
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
            .map(|(len, encoding)| block_words(encoding, *len))
            .sum()
    }

    /// Refuses an encoding whose sum over `participants` could wrap.
    pub fn check_capacity(&self, participants: usize) -> Result<(), SecAggError> {
        if participants >= 1 << LIMB_BITS {
            return Err(SecAggError::BadParams(format!(
                "{participants} participants exceed the limb encodings' 65535"
            )));
        }
        for (_, encoding) in &self.blocks {
            match encoding {
                BlockEncoding::Clipped(fixed) => fixed
                    .check_capacity(participants)
                    .map_err(|e| SecAggError::BadParams(e.to_string()))?,
                BlockEncoding::Packed(quantized) => quantized.check_capacity(participants)?,
                BlockEncoding::Wide | BlockEncoding::Count | BlockEncoding::Words => {}
            }
        }
        Ok(())
    }

    /// Encodes `values` with stochastic rounding drawn from `rng` (a CSPRNG). A value of a
    /// [`BlockEncoding::Count`] block that is not an integer in [−2^31, 2^31) is refused
    /// ([`SecAggError::NotACount`]), never rounded.
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
        let mut position = 0;
        for (len, encoding) in &self.blocks {
            let (block, tail) = rest.split_at(*len);
            rest = tail;
            let start = position;
            position += len;
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
                BlockEncoding::Count => {
                    for (i, &value) in block.iter().enumerate() {
                        let offset = offset_count(value, start + i)?;
                        out.push(offset & 0xffff);
                        out.push(offset >> LIMB_BITS);
                    }
                }
                BlockEncoding::Words => {
                    for (i, &value) in block.iter().enumerate() {
                        out.push(word(value, start + i)?);
                    }
                }
                BlockEncoding::Packed(quantized) => {
                    quantized.encode_into(block, start, rng, &mut out)?;
                }
            }
        }
        Ok(out)
    }

    /// SHA-256 over a canonical encoding of the blocks (a domain label, the number of blocks,
    /// then each block's length, kind, and for a clipped block its clip bound's bits and its
    /// fractional bits, for a packed one its clip bound's bits, level bits and lane bits).
    /// [`RoundParams::encoding_digest`](super::RoundParams::encoding_digest) carries it, so
    /// that every participant encodes alike.
    pub fn digest(&self) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"medfed-secagg-encoding-v1");
        context.update(&(self.blocks.len() as u64).to_be_bytes());
        for (len, encoding) in &self.blocks {
            context.update(&(*len as u64).to_be_bytes());
            match encoding {
                BlockEncoding::Clipped(fixed) => {
                    context.update(&[0]);
                    context.update(&fixed.clip.to_bits().to_be_bytes());
                    context.update(&fixed.fractional_bits.to_be_bytes());
                }
                BlockEncoding::Wide => context.update(&[1]),
                BlockEncoding::Count => context.update(&[2]),
                BlockEncoding::Words => context.update(&[3]),
                BlockEncoding::Packed(quantized) => {
                    context.update(&[4]);
                    context.update(&quantized.clip.to_bits().to_be_bytes());
                    context.update(&quantized.level_bits.to_be_bytes());
                    context.update(&quantized.lane_bits.to_be_bytes());
                }
            }
        }
        let mut out = [0; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    /// The digest of this encoding bound to a task: `SHA-256("medfed-secagg-encoding-task-v1" ‖
    /// digest ‖ task)`, with `task` the digest of the signed task manifest every participant
    /// approved. A coordinator puts it in [`RoundParams::encoding_digest`](super::RoundParams),
    /// each node checks it against its own approved manifest, and every peer signs it into its
    /// key advertisement: a sum whose participants were shown different manifests (say, one
    /// hospital a distributed-DP plan whose noise shares are full-size and the others one whose
    /// shares are negligible) never gets a masked input, since the participants' parameters, and
    /// so their signatures, differ.
    pub fn task_digest(&self, task: &[u8; 32]) -> [u8; 32] {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"medfed-secagg-encoding-task-v1");
        context.update(&self.digest());
        context.update(task);
        let mut out = [0; 32];
        out.copy_from_slice(context.finish().as_ref());
        out
    }

    /// Decodes the sum of `summed_inputs` encoded vectors: exactly the number of inputs in
    /// `sum` (under secure aggregation, the survivors whose masked inputs were summed,
    /// [`ExpectUnmasking::survivors`](super::ExpectUnmasking::survivors)), which the
    /// [`BlockEncoding::Count`] blocks need to remove each input's offset of 2^31.
    ///
    /// # Range checks
    ///
    /// Every word is checked against the largest value `summed_inputs` honest inputs can give:
    /// each limb sum of a [`BlockEncoding::Wide`] or [`BlockEncoding::Count`] value at most
    /// `summed_inputs × (2^16 − 1)`, each clipped word at most `summed_inputs × ⌈B·2^bits⌉` in
    /// magnitude, each lane sum of a packed word at most `summed_inputs × L` (and its unused
    /// lanes and bits 0). A word beyond it is refused ([`SecAggError::LimbOutOfRange`]) and the
    /// round fails rather than publish a wrong figure.
    ///
    /// What this detects: a wrong `summed_inputs`, a sum garbled or unmasked wrongly, and an
    /// input with a word far out of its range (a limb of 2^31, say), which leaves the sum out of
    /// range whatever the others sent. What it cannot detect: an out-of-range word of a
    /// dishonest node that still lands in range once summed (a limb of 2^17 among small limbs,
    /// one that wraps round to a small value, or a packed lane above `L` that carries into the
    /// next lane and leaves both in range, or past the word's top: with lanes dividing 32 a
    /// dishonest node can add any offset to any coordinate that keeps its sum in range), nor
    /// false figures encoded in range. The
    /// masked inputs prove nothing about what a node encoded; only zero-knowledge range proofs
    /// on each input, which this protocol does not have, would.
    pub fn decode_sum(&self, sum: &[u32], summed_inputs: usize) -> Result<Vec<f64>, SecAggError> {
        self.check_sum(sum, summed_inputs)?;
        let mut out = vec![0.0; self.value_len()];
        let (mut words, mut values) = (sum, out.as_mut_slice());
        for (len, encoding) in &self.blocks {
            let (block, rest) = words.split_at(block_words(encoding, *len));
            let (decoded, more) = values.split_at_mut(*len);
            decode_block(encoding, block, summed_inputs, decoded);
            (words, values) = (rest, more);
        }
        Ok(out)
    }

    /// Decodes figures `range` of a sum [`Self::check_sum`] accepted, a piece of at most
    /// [`DECODE_PIECE`] figures at a time, handing each piece to `visit` with the index of its
    /// first figure: a model's sum is read without ever holding its decoded figures (twice the
    /// words' size) whole. The figures are those [`Self::decode_sum`] gives; a range past the
    /// end stops at the end.
    pub(super) fn decode_range<E>(
        &self,
        sum: &[u32],
        summed_inputs: usize,
        range: std::ops::Range<usize>,
        visit: &mut PieceVisitor<'_, E>,
    ) -> Result<(), E> {
        let mut scratch = Vec::new();
        let (mut word_start, mut value_start) = (0, 0);
        for (len, encoding) in &self.blocks {
            let (lo, hi) = (
                range.start.max(value_start),
                range.end.min(value_start + len),
            );
            // Pieces of whole units (a packed word's values decode together).
            let (unit_values, unit_words) = unit(encoding);
            let piece = (DECODE_PIECE / unit_values).max(1);
            let (mut first, end) = if lo < hi {
                (
                    (lo - value_start) / unit_values,
                    (hi - value_start).div_ceil(unit_values),
                )
            } else {
                (0, 0)
            };
            while first < end {
                let last = (first + piece).min(end);
                let values = (first * unit_values)..(last * unit_values).min(*len);
                let words =
                    sum.get(word_start + first * unit_words..word_start + last * unit_words);
                if let Some(words) = words {
                    scratch.clear();
                    scratch.resize(values.len(), 0.0);
                    decode_block(encoding, words, summed_inputs, &mut scratch);
                    // The part of the piece inside `range`.
                    let from = lo.max(value_start + values.start) - (value_start + values.start);
                    let to = hi.min(value_start + values.end) - (value_start + values.start);
                    if let Some(wanted) = scratch.get(from..to) {
                        visit(value_start + values.start + from, wanted)?;
                    }
                }
                first = last;
            }
            (word_start, value_start) =
                (word_start + block_words(encoding, *len), value_start + len);
        }
        Ok(())
    }

    /// The checks of [`Self::decode_sum`]: the sum's length, and every word in range.
    pub(super) fn check_sum(&self, sum: &[u32], summed_inputs: usize) -> Result<(), SecAggError> {
        if summed_inputs >= 1 << LIMB_BITS {
            return Err(SecAggError::BadParams(format!(
                "a sum of {summed_inputs} inputs exceeds the limb encodings' 65535"
            )));
        }
        if sum.len() != self.encoded_len() {
            return Err(SecAggError::BadParams(format!(
                "sum of {} words for an encoding of {}",
                sum.len(),
                self.encoded_len()
            )));
        }
        let k = summed_inputs as u64;
        // k < 2^16: each limb sum of k inputs is at most k · (2^16 − 1) < 2^32.
        let most_limb = k * 0xffff;
        let out_of_range = |position: usize, value: u64, most: u64| SecAggError::LimbOutOfRange {
            position,
            value,
            most,
            summed_inputs,
        };
        let mut rest = sum;
        let mut position = 0;
        for (len, encoding) in &self.blocks {
            let (block, tail) = rest.split_at(block_words(encoding, *len));
            let start = position;
            (rest, position) = (tail, position + block.len());
            match encoding {
                BlockEncoding::Clipped(fixed) => {
                    let most = k.saturating_mul(
                        fixed
                            .max_encoded()
                            .map_err(|e| SecAggError::BadParams(e.to_string()))?,
                    );
                    if let Some((i, word)) = block
                        .iter()
                        .enumerate()
                        .find(|(_, word)| u64::from((**word as i32).unsigned_abs()) > most)
                    {
                        let value = u64::from((*word as i32).unsigned_abs());
                        return Err(out_of_range(start + i, value, most));
                    }
                }
                // Each limb sum in range: no limb sum wrapped; for a count, T < 2^48 and
                // T − k · 2^31 fits i64 and f64 exactly.
                BlockEncoding::Wide | BlockEncoding::Count => {
                    check_limbs(block, start, most_limb, &out_of_range)?;
                }
                BlockEncoding::Words => {}
                BlockEncoding::Packed(quantized) => {
                    quantized.check_capacity(summed_inputs.max(1))?;
                    if let Some((i, value, most)) =
                        quantized.out_of_range(block, *len, summed_inputs)
                    {
                        return Err(out_of_range(start + i, value, most));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Figures decoded at a time by [`VectorEncoding::decode_range`] (2 MiB of figures).
pub(crate) const DECODE_PIECE: usize = 1 << 18;

/// The smallest run of a block's figures that fills whole words, as `(figures, words)`: a
/// figure for one, two or four words, or a packed word's figures for one word.
fn unit(encoding: &BlockEncoding) -> (usize, usize) {
    match encoding {
        BlockEncoding::Clipped(_) | BlockEncoding::Words => (1, 1),
        BlockEncoding::Wide => (1, LIMBS),
        BlockEncoding::Count => (1, COUNT_LIMBS),
        BlockEncoding::Packed(quantized) => (quantized.lanes(), 1),
    }
}

/// Words a block of `len` figures takes (a packed block's last word may be partial).
fn block_words(encoding: &BlockEncoding, len: usize) -> usize {
    let (figures, words) = unit(encoding);
    len.div_ceil(figures) * words
}

/// Decodes the (checked) words of whole figures of one block into `out`, a figure each.
fn decode_block(encoding: &BlockEncoding, block: &[u32], summed_inputs: usize, out: &mut [f64]) {
    match encoding {
        BlockEncoding::Clipped(fixed) => fixed.decode_sum_into(block, out),
        BlockEncoding::Wide => {
            for (limbs, value) in block.chunks_exact(LIMBS).zip(out) {
                let total = limbs.iter().enumerate().fold(0u64, |acc, (i, &s)| {
                    acc.wrapping_add(u64::from(s) << (LIMB_BITS * i as u32))
                });
                *value = total as i64 as f64 / f64::from(1u32 << WIDE_FRACTIONAL_BITS);
            }
        }
        BlockEncoding::Count => {
            for (limbs, value) in block.chunks_exact(COUNT_LIMBS).zip(out) {
                let (low, high) = (u64::from(limbs[0]), u64::from(limbs[1]));
                let total = (low + (high << LIMB_BITS)) as i64;
                *value = (total - summed_inputs as i64 * COUNT_OFFSET) as f64;
            }
        }
        BlockEncoding::Words => {
            for (word, value) in block.iter().zip(out) {
                *value = f64::from(*word);
            }
        }
        BlockEncoding::Packed(quantized) => quantized.decode_sum_into(block, summed_inputs, out),
    }
}

/// Refuses the first limb sum of `block` (which starts at word `start`) above `most`.
fn check_limbs(
    block: &[u32],
    start: usize,
    most: u64,
    out_of_range: &dyn Fn(usize, u64, u64) -> SecAggError,
) -> Result<(), SecAggError> {
    match block.iter().position(|&limb| u64::from(limb) > most) {
        Some(i) => Err(out_of_range(start + i, u64::from(block[i]), most)),
        None => Ok(()),
    }
}

/// A count `value` (figure `position` of the vector) plus 2^31, if it is an integer in
/// [−2^31, 2^31).
fn offset_count(value: f64, position: usize) -> Result<u32, SecAggError> {
    let range = -(COUNT_OFFSET as f64)..COUNT_OFFSET as f64;
    if !range.contains(&value) || value.fract() != 0.0 {
        return Err(SecAggError::NotACount { position, value });
    }
    // An integer in [−2^31, 2^31): exact as i64, and in [0, 2^32) once offset.
    Ok((value as i64 + COUNT_OFFSET) as u32)
}

/// A word `value` (figure `position` of the vector), if it is an integer in [0, 2^32).
fn word(value: f64, position: usize) -> Result<u32, SecAggError> {
    if !(0.0..WORD_RANGE).contains(&value) || value.fract() != 0.0 {
        return Err(SecAggError::NotAWord { position, value });
    }
    // An integer in [0, 2^32): exact as u32.
    Ok(value as u32)
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
    fn words_pass_through_and_sum_modulo_two_to_the_32() {
        let encoding =
            VectorEncoding::new(vec![(1, BlockEncoding::Count), (2, BlockEncoding::Words)]);
        assert_eq!(encoding.encoded_len(), 4);
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        // -5 and 7 as two's complement words; the sum wraps to 2.
        let a = encoding
            .encode(&[3.0, f64::from(-5i32 as u32), 4_000_000_000.0], &mut rng)
            .unwrap();
        let b = encoding
            .encode(&[4.0, 7.0, 500_000_000.0], &mut rng)
            .unwrap();
        assert_eq!(&a[2..], [-5i32 as u32, 4_000_000_000]);
        let mut sum = vec![0u32; 4];
        add(&mut sum, &a);
        add(&mut sum, &b);
        assert_eq!(
            encoding.decode_sum(&sum, 2).unwrap(),
            [7.0, 2.0, f64::from(4_500_000_000u64 as u32)]
        );
        // Only integers in [0, 2^32) are words; the encoding's digest tells the kinds apart.
        for bad in [-1.0, 4_294_967_296.0, 0.5, f64::NAN] {
            assert!(matches!(
                encoding.encode(&[0.0, 0.0, bad], &mut rng),
                Err(SecAggError::NotAWord { position: 2, .. })
            ));
        }
        let counts =
            VectorEncoding::new(vec![(1, BlockEncoding::Count), (2, BlockEncoding::Count)]);
        assert_ne!(encoding.digest(), counts.digest());
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
            encoding.decode_sum(&sum, nodes.len()).unwrap(),
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
        let decoded = encoding.decode_sum(&sum, 2).unwrap();
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

    /// The exact sums, as `f64`, of `nodes`' values.
    fn exact_sums(nodes: &[Vec<f64>]) -> Vec<f64> {
        (0..nodes[0].len())
            .map(|i| nodes.iter().map(|node| node[i] as i64).sum::<i64>() as f64)
            .collect()
    }

    #[test]
    fn count_sums_of_many_participants_are_exact_at_the_ends_of_the_range() {
        let encoding = VectorEncoding::new(vec![(6, BlockEncoding::Count)]);
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (min, max) = (-(2f64.powi(31)), 2f64.powi(31) - 1.0);
        for participants in [1, 2, 3, 17, 1000] {
            let nodes: Vec<Vec<f64>> = (0..participants)
                .map(|p| {
                    let p = p as f64;
                    vec![
                        min,
                        max,
                        0.0,
                        -3.0 - p,
                        7.0 * p,
                        if p % 2.0 == 0.0 { min } else { max },
                    ]
                })
                .collect();
            let mut sum = vec![0u32; encoding.encoded_len()];
            for node in &nodes {
                add(&mut sum, &encoding.encode(node, &mut rng).unwrap());
            }
            assert_eq!(
                encoding.decode_sum(&sum, participants).unwrap(),
                exact_sums(&nodes),
                "{participants} participants"
            );
        }
        // The largest sums 65535 participants can give.
        let most = 65_535;
        let one = |value: f64| encoding.encode(&[value; 6], &mut ChaCha20Rng::seed_from_u64(0));
        let scale = |words: Vec<u32>| words.iter().map(|w| w * most).collect::<Vec<u32>>();
        assert_eq!(
            encoding
                .decode_sum(&scale(one(max).unwrap()), most as usize)
                .unwrap(),
            vec![max * f64::from(most); 6]
        );
        assert_eq!(
            encoding
                .decode_sum(&scale(one(min).unwrap()), most as usize)
                .unwrap(),
            vec![min * f64::from(most); 6]
        );
    }

    #[test]
    fn counts_take_two_words_and_fractions_nan_and_out_of_range_values_are_refused() {
        let fixed = FixedPoint {
            clip: 8.0,
            fractional_bits: 16,
        };
        let encoding = VectorEncoding::new(vec![
            (3, BlockEncoding::Count),
            (1, BlockEncoding::Wide),
            (2, BlockEncoding::Clipped(fixed)),
            (5, BlockEncoding::Count),
        ]);
        assert_eq!(encoding.value_len(), 11);
        assert_eq!(encoding.encoded_len(), 3 * 2 + 4 + 2 + 5 * 2);
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let fine = [1.0, -2.0, 0.0, 0.5, 0.25, -0.25, 3.0, -0.0, 9.0, -9.0, 1e9];
        assert!(encoding.encode(&fine, &mut rng).is_ok());
        for (position, bad) in [
            (0, 0.5),
            (2, f64::NAN),
            (1, 2f64.powi(31)),
            (10, -(2f64.powi(31)) - 1.0),
            (6, f64::INFINITY),
            (8, -1e-9),
            (9, 1e300),
        ] {
            let mut values = fine;
            values[position] = bad;
            match encoding.encode(&values, &mut rng) {
                Err(SecAggError::NotACount { position: p, value }) => {
                    assert_eq!(p, position, "{bad}");
                    assert!(value.is_nan() && bad.is_nan() || value == bad);
                }
                other => panic!("{bad} at {position}: {other:?}"),
            }
        }
        // A non-integer in the wide block is fine; the same in a count block is not.
        let mut wide_fraction = fine;
        wide_fraction[3] = 0.125;
        assert!(encoding.encode(&wide_fraction, &mut rng).is_ok());
    }

    #[test]
    fn count_sums_need_the_number_of_inputs_and_refuse_an_impossible_one() {
        let encoding =
            VectorEncoding::new(vec![(2, BlockEncoding::Count), (1, BlockEncoding::Wide)]);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut sum = vec![0u32; encoding.encoded_len()];
        for node in [[-5.0, 40.0, 0.5], [2.0, -1.0, 0.25], [0.0, 0.0, 0.0]] {
            add(&mut sum, &encoding.encode(&node, &mut rng).unwrap());
        }
        assert_eq!(
            encoding.decode_sum(&sum, 3).unwrap(),
            vec![-3.0, 39.0, 0.75]
        );
        // A wrong number of inputs shifts every count by 2^31 per input missed…
        let shifted = encoding.decode_sum(&sum, 2).unwrap();
        assert_eq!(shifted[..2], [-3.0 + 2f64.powi(31), 39.0 + 2f64.powi(31)]);
        // …and is refused where the limb sums are more than that many inputs can give.
        assert!(encoding.decode_sum(&sum, 1).is_err());
        assert!(encoding.decode_sum(&sum, 0).is_err());
        assert!(encoding.decode_sum(&sum, 1 << 16).is_err());
        assert!(encoding.decode_sum(&sum[1..], 3).is_err());
        // Nothing summed decodes to zeros.
        assert_eq!(
            encoding.decode_sum(&[0; 8], 0).unwrap(),
            vec![0.0, 0.0, 0.0]
        );
    }

    /// Issue 12, attack 7: every word of every encoding is checked against the largest sum the
    /// inputs summed can give; one past it is refused, naming the word.
    #[test]
    fn regression_issue_12_every_word_one_past_its_range_is_refused() {
        let fixed = FixedPoint {
            clip: 8.0,
            fractional_bits: 16,
        };
        let encoding = VectorEncoding::new(vec![
            (2, BlockEncoding::Count),
            (1, BlockEncoding::Wide),
            (2, BlockEncoding::Clipped(fixed)),
        ]);
        let inputs = 3usize;
        let limb_most = 3 * 0xffff_u32;
        let clipped_most: u32 = 3 * (8 << 16);
        // The largest sum in range decodes…
        let mut edge = vec![limb_most; 8];
        edge.extend([clipped_most, clipped_most.wrapping_neg()]);
        assert!(encoding.decode_sum(&edge, inputs).is_ok());
        // …and each word one past it is refused.
        for position in 0..edge.len() {
            let mut bad = edge.clone();
            bad[position] = if position == 9 {
                bad[position].wrapping_sub(1)
            } else {
                bad[position] + 1
            };
            match encoding.decode_sum(&bad, inputs) {
                Err(SecAggError::LimbOutOfRange {
                    position: p,
                    value,
                    most,
                    summed_inputs: 3,
                }) => {
                    assert_eq!(p, position);
                    assert_eq!(value, most + 1, "word {position}");
                }
                other => panic!("word {position}: {other:?}"),
            }
        }
        // An input with 2^31 in one limb leaves the sum out of range whatever the others sent.
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        let mut sum = vec![0u32; encoding.encoded_len()];
        for node in [[4.0, -4.0, 1.5, 0.5, -8.0], [0.0, 1.0, -2.0, 8.0, 8.0]] {
            add(&mut sum, &encoding.encode(&node, &mut rng).unwrap());
        }
        let mut rogue = vec![0u32; encoding.encoded_len()];
        rogue[5] = 1 << 31;
        add(&mut sum, &rogue);
        assert!(matches!(
            encoding.decode_sum(&sum, inputs),
            Err(SecAggError::LimbOutOfRange { position: 5, .. })
        ));
        // What the check cannot see (documented on `decode_sum`): a rogue limb of 2^17 still
        // lands in range among small honest limbs, and shifts the figure undetected.
        let mut sum = vec![0u32; encoding.encoded_len()];
        for node in [[0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]] {
            add(&mut sum, &encoding.encode(&node, &mut rng).unwrap());
        }
        let mut quiet = vec![0u32; encoding.encoded_len()];
        quiet[4] = 1 << 17;
        add(&mut sum, &quiet);
        assert_eq!(encoding.decode_sum(&sum, inputs).unwrap()[2], 2.0);
    }

    #[test]
    fn the_encoding_digest_tells_every_layout_apart() {
        let fixed = |clip, fractional_bits| {
            BlockEncoding::Clipped(FixedPoint {
                clip,
                fractional_bits,
            })
        };
        let packed = |clip, level_bits, lane_bits| {
            BlockEncoding::Packed(Quantized {
                clip,
                level_bits,
                lane_bits,
            })
        };
        let encodings = [
            VectorEncoding::new(vec![]),
            VectorEncoding::new(vec![(2, BlockEncoding::Count)]),
            VectorEncoding::new(vec![(2, BlockEncoding::Wide)]),
            VectorEncoding::new(vec![(3, BlockEncoding::Count)]),
            VectorEncoding::new(vec![(2, fixed(1.0, 16))]),
            VectorEncoding::new(vec![(2, fixed(1.0, 17))]),
            VectorEncoding::new(vec![(2, fixed(2.0, 16))]),
            VectorEncoding::new(vec![(1, BlockEncoding::Count), (1, BlockEncoding::Count)]),
            VectorEncoding::new(vec![(2, BlockEncoding::Count), (1, fixed(1.0, 16))]),
            VectorEncoding::new(vec![(2, packed(1.0, 6, 8))]),
            VectorEncoding::new(vec![(2, packed(1.0, 5, 8))]),
            VectorEncoding::new(vec![(2, packed(1.0, 6, 10))]),
            VectorEncoding::new(vec![(2, packed(2.0, 6, 8))]),
        ];
        let digests: std::collections::HashSet<[u8; 32]> =
            encodings.iter().map(VectorEncoding::digest).collect();
        assert_eq!(digests.len(), encodings.len());
        assert_eq!(encodings[4].digest(), encodings[4].clone().digest());
    }

    #[test]
    fn the_task_digest_binds_the_encoding_to_one_manifest() {
        let words = VectorEncoding::new(vec![(3, BlockEncoding::Words)]);
        let count = VectorEncoding::new(vec![(3, BlockEncoding::Count)]);
        let (task, other) = ([1; 32], [2; 32]);
        let bound = words.task_digest(&task);
        assert_eq!(bound, words.clone().task_digest(&task));
        for different in [
            words.task_digest(&other),
            count.task_digest(&task),
            words.digest(),
        ] {
            assert_ne!(bound, different);
        }
    }
}
