//! The node's side (round each example, sum, clamp, add the noise share, encode as words of
//! Z(2^32)) and the coordinator's (read the unmasked word sum back as a gradient sum).
//!
//! # Word layout
//!
//! One word per coordinate: a signed integer centred on 0 in two's complement, as the model
//! update's fixed point ([`crate::secagg`]'s clipped encoding). Masks and sums are taken
//! modulo 2^32, so the unmasked sum is the true integer sum modulo 2^32, and it reads back
//! exactly as an `i32` while the true sum lies in `[−2^31, 2^31)`. Each node clamps every
//! coordinate of its rounded sum to `[−L, L]`, so the signal of a sum over at most `n` nodes is
//! within `n·L`, and [`DdpParams::new`] leaves the noise a headroom `h` with `n·L + h < 2^31`
//! that it exceeds with probability at most 2^−40 ([`DdpParams::wrap_probability`]). One word
//! is enough: at the default scale (`γC = 2^14`) a node's sum may reach `2^31/n` integer units
//! per coordinate, `2^17/n` clipping norms, before the clamp binds. No randomized rotation is
//! needed (the DDG paper uses one to spread a vector's coordinates so that few bits suffice).
//!
//! A wrap, or the clamp, costs accuracy only: the words are a function of the clamped, noised
//! integer sum, and clamping coordinate by coordinate moves each coordinate by no more than the
//! example that changed it, so Δ₂ and Δ₁ still bound one example's effect.

use std::fmt;

use rand::CryptoRng;

use super::rounding::{clip_in_place, round_conditionally};
use super::{DdpError, DdpParams};

/// A node's running sum of its sampled examples' rounded gradients for one round. Get it from
/// [`DdpParams::node_sum`], call [`NodeSum::add_example`] once per sampled example, then
/// [`NodeSum::finish`] for the words to mask.
///
/// It is deliberately not `Clone`: finishing one sum twice would send the same signal under two
/// independent noise shares, whose average has less noise than accounted for. Its `Debug`
/// shows no figure.
pub struct NodeSum<'a> {
    /// The round's parameters.
    params: &'a DdpParams,
    /// Σ R(γ·g_i), unclamped.
    sum: Vec<i64>,
}

impl fmt::Debug for NodeSum<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeSum")
            .field("dimension", &self.sum.len())
            .finish_non_exhaustive()
    }
}

impl NodeSum<'_> {
    /// Adds one sampled example's gradient (clipped to `C` here if it is not already), rounded
    /// with [`DdpParams::round_example`].
    pub fn add_example<R: CryptoRng + ?Sized>(
        &mut self,
        gradient: &[f64],
        rng: &mut R,
    ) -> Result<(), DdpError> {
        let rounded = self.params.round_example(gradient, rng)?;
        // Each |term| ≤ Δ₂ < 2^31: saturation needs 2^32 examples.
        self.sum
            .iter_mut()
            .zip(&rounded)
            .for_each(|(s, r)| *s = s.saturating_add(*r));
        Ok(())
    }

    /// The rounded sum so far, before clamping and noise (stays on the node).
    pub fn signal(&self) -> &[i64] {
        &self.sum
    }

    /// Clamps, adds a fresh noise share and encodes: the words for secure aggregation.
    #[must_use = "the words are what the node masks and sends"]
    pub fn finish<R: CryptoRng + ?Sized>(self, rng: &mut R) -> Vec<u32> {
        let noise = self.params.noise_share(rng);
        // Lengths agree by construction.
        encode_words(&self.sum, &noise, self.params.node_bound)
    }
}

impl DdpParams {
    /// An empty running sum for one round.
    pub fn node_sum(&self) -> NodeSum<'_> {
        NodeSum {
            params: self,
            sum: vec![0; self.config.dimension],
        }
    }

    /// One example's contribution: `gradient` scaled by γ, clipped to L2 norm `γC` (a
    /// gradient already clipped to `C` is left as it is, up to floating point), and rounded
    /// to integers by conditional randomized rounding, so that its squared L2 norm is at most
    /// `⌊Δ₂²⌋` ([`Self::l2_sensitivity`]), checked exactly.
    ///
    /// Refuses a gradient of the wrong length or with a NaN or infinite coordinate.
    pub fn round_example<R: CryptoRng + ?Sized>(
        &self,
        gradient: &[f64],
        rng: &mut R,
    ) -> Result<Vec<i64>, DdpError> {
        self.check_length(gradient.len())?;
        let mut scaled = Vec::with_capacity(gradient.len());
        for (index, &g) in gradient.iter().enumerate() {
            let x = g * self.config.scale;
            if !x.is_finite() {
                return Err(DdpError::NonFinite { index });
            }
            scaled.push(x);
        }
        clip_in_place(&mut scaled, self.scaled_clip);
        round_conditionally(&scaled, self.l2_squared_bound, rng)
    }

    /// A node's noise share: `d` independent draws of `N_Z(0, σ_share²)`.
    pub fn noise_share<R: CryptoRng + ?Sized>(&self, rng: &mut R) -> Vec<i64> {
        (0..self.config.dimension)
            .map(|_| self.share.sample(rng))
            .collect()
    }

    /// The words a node sends for `signal` (its rounded sum) and `noise` (its share): each
    /// coordinate of `signal` clamped to `[−L, L]`, plus the noise, modulo 2^32.
    ///
    /// [`NodeSum::finish`] is this with a fresh [`Self::noise_share`]; call this directly only
    /// with such a share, drawn for this signal alone, and encode each signal once: the
    /// accounting assumes exactly one independent share per node per round.
    pub fn encode(&self, signal: &[i64], noise: &[i64]) -> Result<Vec<u32>, DdpError> {
        self.check_length(signal.len())?;
        self.check_length(noise.len())?;
        Ok(encode_words(signal, noise, self.node_bound))
    }

    /// The sum of `summed_inputs` nodes' gradients, in gradient units, from the unmasked word
    /// sum: each word read as a signed 32-bit integer and divided by γ. The result carries
    /// noise of standard deviation [`Self::noise_std_of_sum`] on each coordinate.
    ///
    /// Refuses a sum of fewer than `t` or more than `n` inputs (fewer than `t` would carry less
    /// noise than designed), and a coordinate beyond `k·L + h`, which honest inputs reach only
    /// with probability below [`Self::wrap_probability`]: a garbled sum, or a wrong `k`.
    pub fn decode_sum(&self, sum: &[u32], summed_inputs: usize) -> Result<Vec<f64>, DdpError> {
        self.check_length(sum.len())?;
        let (threshold, nodes) = (self.config.threshold, self.config.nodes);
        if !(threshold..=nodes).contains(&summed_inputs) {
            return Err(DdpError::SummedInputs {
                summed: summed_inputs,
                threshold,
                nodes,
            });
        }
        let limit = summed_inputs as f64 * self.node_bound as f64 + self.noise_headroom;
        sum.iter()
            .enumerate()
            .map(|(index, &word)| {
                let value = word as i32;
                if f64::from(value).abs() > limit {
                    return Err(DdpError::OutOfRange { index, value });
                }
                Ok(f64::from(value) / self.config.scale)
            })
            .collect()
    }

    fn check_length(&self, got: usize) -> Result<(), DdpError> {
        if got == self.config.dimension {
            Ok(())
        } else {
            Err(DdpError::Length {
                expected: self.config.dimension,
                got,
            })
        }
    }
}

/// `clamp(signal, ±bound) + noise`, each modulo 2^32 (`as u32` keeps the low 32 bits of the
/// two's complement `i64`).
fn encode_words(signal: &[i64], noise: &[i64], bound: i64) -> Vec<u32> {
    signal
        .iter()
        .zip(noise)
        .map(|(&s, &z)| s.clamp(-bound, bound).wrapping_add(z) as u32)
        .collect()
}
