//! Distributed differential privacy under secure aggregation: DP-FedSGD in which each node adds
//! only its share of the noise, in the integer domain, before masking.
//!
//! One round is one global noisy DP-SGD step. Each node draws a Poisson sample (rate `q`) of its
//! rows, clips each sampled example's gradient to L2 norm `C`, and sends the integer vector
//!
//! ```text
//!  clamp_L( Σ_i R(γ·g_i) ) + Z_node,      Z_node ~ N_Z(0, σ_share²)^d,   σ_share = σ_total/√t
//! ```
//!
//! where `R` is conditional randomized rounding done per example ([`DdpParams::round_example`]:
//! each rounded vector has L2 norm at most Δ₂, exactly), `clamp_L` bounds each coordinate of
//! the node's sum to `±L` so that the sum over nodes cannot wrap (coordinate-wise clamping
//! moves no coordinate by more than the example did, so Δ₂ and Δ₁ still bound one example's
//! effect), and `σ_total = noise_multiplier · Δ₂`. The words go through secure aggregation
//! ([`crate::secagg`]); the coordinator unmasks the sum over the `k ≥ t` survivors and decodes
//! it ([`DdpParams::decode_sum`]), which carries noise of variance `k·σ_share² ≥ σ_total²`.
//!
//! ```text
//!  node:  sampled, clipped g_i ─▶ NodeSum::add_example (×γ, round, Σ) ─▶ NodeSum::finish
//!         (clamp ±L, + N_Z(0, σ_share²) per coordinate, two's complement words) ─▶ secagg mask
//!  coordinator: Σ words mod 2^32 over k survivors ─▶ DdpParams::decode_sum(sum, k) ─▶ Σ g_i + noise
//! ```
//!
//! Privacy, charged before the node sends ([`DdpParams::central_mechanism`],
//! [`DdpParams::local_mechanism`], both [`crate::accounting::Mechanism::DistributedDiscreteGaussian`]):
//! the central guarantee is that of the sum of `t` shares (the fewest that secure aggregation
//! unmasks; more shares only add independent noise), by the DDG paper's bound; the local one,
//! against hospitals that collude and subtract their own inputs, is that of the node's share
//! alone. `docs/DISTRIBUTED_DP.md` gives the argument, the wrap analysis and what node and
//! coordinator must call.
//!
//! This module does no IO; randomness comes in as a cryptographically secure generator.

mod encoding;
mod rdp;
mod rounding;

use crate::accounting::{Accountant, Mechanism, epsilon};
use crate::discrete_gaussian::{DiscreteGaussian, DiscreteGaussianError};
use crate::privacy::{DEFAULT_EPSILON_TOLERANCE, PrivacyError, opacus_bisection};

pub use encoding::NodeSum;
pub(crate) use rdp::{SumOfShares, distributed_rdp};

/// The default `γ·C`: the clipping norm in integer units, 2^14. Rounding then adds variance at
/// most 1/4 per coordinate per example, far below the noise's `σ_total² = (z·Δ₂)² ≥ 2^28·z²`,
/// and conditional rounding inflates Δ₂ over `γ·C` by about `d/(8c²) + 2.6/c`: 0.02% at 1 153
/// parameters, 0.06% at 10^6. A node's sum is clamped at `L ≈ 2^31/n` integer units per
/// coordinate, `2^17/n` clipping norms: 6 500 examples at the full norm on one coordinate for
/// 20 nodes.
pub const DEFAULT_SCALED_CLIP: f64 = 16384.0;

/// The default β of conditional rounding, 2^−20: each rounding attempt exceeds the norm bound
/// with probability at most β.
pub const DEFAULT_ROUNDING_BETA: f64 = 1.0 / 1_048_576.0;

/// The largest β accepted (each rejected attempt is redrawn; see [`MAX_ROUNDING_ATTEMPTS`]).
pub const MAX_ROUNDING_BETA: f64 = 0.5;

/// Attempts at rounding one example before [`DdpError::RoundingRejected`]: with β ≤ 1/2 all of
/// them fail with probability at most 2^−64.
pub const MAX_ROUNDING_ATTEMPTS: u32 = 64;

/// The wrap bound: the noise in a sum over up to `n` nodes exceeds its headroom in some
/// coordinate with probability at most 2^−`WRAP_BITS`.
pub const WRAP_BITS: u32 = 40;

/// The most nodes (secure aggregation's limit).
pub const MAX_NODES: usize = 65_535;

/// The most coordinates.
pub const MAX_DIMENSION: usize = u32::MAX as usize;

/// The least σ of a node's share, in integer units. The DDG bound (Kairouz, Liu and Steinke
/// 2021, Theorem 1) holds for shares of σ at least about 1/2 (as I recall its hypothesis; I
/// could not read the paper here); requiring 1 keeps a margin that costs nothing, since real
/// shares are thousands of integer units.
pub const MIN_SHARE_SIGMA: f64 = 1.0;

/// The largest `γ·C` accepted, 2^30: a rounded example then fits 31 bits.
pub const MAX_SCALED_CLIP: f64 = 1_073_741_824.0;

/// What a round of distributed DP is configured with. [`DdpConfig::new`] fills in the defaults;
/// [`DdpParams::new`] checks it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DdpConfig {
    /// C: the per-example L2 clipping norm, in gradient units.
    pub clip_norm: f64,
    /// γ: integer units per gradient unit.
    pub scale: f64,
    /// d: coordinates of the gradient (the model's parameter count).
    pub dimension: usize,
    /// n: nodes that may be summed (the round's participants).
    pub nodes: usize,
    /// t: the secure-aggregation threshold, the fewest survivors whose sum is unmasked.
    pub threshold: usize,
    /// z = σ_total / Δ₂: the noise multiplier the sum of `t` shares carries.
    pub noise_multiplier: f64,
    /// β of conditional rounding, in `[0, 1/2]` (0: no conditioning, Δ₂ = γC + √d).
    pub rounding_beta: f64,
}

impl DdpConfig {
    /// A configuration with `γ = DEFAULT_SCALED_CLIP / C` and `β = DEFAULT_ROUNDING_BETA`.
    pub fn new(
        clip_norm: f64,
        dimension: usize,
        nodes: usize,
        threshold: usize,
        noise_multiplier: f64,
    ) -> Self {
        Self {
            clip_norm,
            scale: DEFAULT_SCALED_CLIP / clip_norm,
            dimension,
            nodes,
            threshold,
            noise_multiplier,
            rounding_beta: DEFAULT_ROUNDING_BETA,
        }
    }

    /// The least noise multiplier (to within [`DEFAULT_EPSILON_TOLERANCE`] in ε) with which
    /// `rounds` rounds at per-example sampling rate `sample_rate`, beside the releases
    /// `already` made, spend at most `target_epsilon` at `delta` centrally
    /// ([`DdpParams::central_mechanism`]), converted from RDP. Opacus's bracket and bisection,
    /// as [`crate::accounting::noise_multiplier_for`]; `self.noise_multiplier` is ignored.
    /// The local figure at that multiplier is [`DdpParams::local_mechanism`]'s, larger.
    pub fn noise_multiplier_for(
        &self,
        target_epsilon: f64,
        delta: f64,
        already: &[Mechanism],
        sample_rate: f64,
        rounds: u64,
    ) -> Result<f64, DdpError> {
        self.check_shape()?;
        let sensitivity = Sensitivity::of(self)?;
        if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
            return Err(PrivacyError::TargetEpsilon(target_epsilon).into());
        }
        let mut releases = already.to_vec();
        releases.push(Mechanism::DistributedDiscreteGaussian {
            sample_rate,
            noise_multiplier: 1.0,
            l2_sensitivity: sensitivity.l2_sensitivity,
            l1_sensitivity: sensitivity.l1_sensitivity,
            dimension: self.dimension as u64,
            summands: self.threshold as u64,
            steps: rounds,
        });
        let (_, noise_multiplier) =
            opacus_bisection(target_epsilon, DEFAULT_EPSILON_TOLERANCE, |z| {
                if let Some(Mechanism::DistributedDiscreteGaussian {
                    noise_multiplier, ..
                }) = releases.last_mut()
                {
                    *noise_multiplier = z;
                }
                match epsilon(Accountant::Rdp, &releases, delta) {
                    // Shares below MIN_SHARE_SIGMA have no bound: as good as no noise.
                    Err(PrivacyError::ShareSigma(_)) => Ok(f64::INFINITY),
                    other => other,
                }
            })?;
        Ok(noise_multiplier)
    }

    /// Refuses a configuration whose clip, scale, dimension, node count, threshold or β is
    /// out of range (everything but the noise).
    fn check_shape(&self) -> Result<(), DdpError> {
        let Self {
            clip_norm,
            scale,
            dimension,
            nodes,
            threshold,
            rounding_beta,
            ..
        } = *self;
        if !(clip_norm.is_finite() && clip_norm > 0.0) {
            return Err(DdpError::ClipNorm(clip_norm));
        }
        if !(scale.is_finite() && scale > 0.0) {
            return Err(DdpError::Scale(scale));
        }
        let scaled_clip = scale * clip_norm;
        if !(1.0..=MAX_SCALED_CLIP).contains(&scaled_clip) {
            return Err(DdpError::ScaledClip(scaled_clip));
        }
        if dimension == 0 || dimension > MAX_DIMENSION {
            return Err(DdpError::Dimension(dimension));
        }
        if nodes == 0 || nodes > MAX_NODES {
            return Err(DdpError::Nodes(nodes));
        }
        if threshold == 0 || threshold > nodes {
            return Err(DdpError::Threshold { threshold, nodes });
        }
        if !(0.0..=MAX_ROUNDING_BETA).contains(&rounding_beta) {
            return Err(DdpError::RoundingBeta(rounding_beta));
        }
        Ok(())
    }
}

/// A checked configuration with everything derived from it: the sensitivities, the noise
/// share and its sampler, the per-node clamp and the wrap bound. Build it with
/// [`DdpParams::new`]; node and coordinator must build it from the same [`DdpConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct DdpParams {
    /// What it was built from.
    config: DdpConfig,
    /// c = γ·C.
    scaled_clip: f64,
    /// ⌊Δ₂²⌋: a rounded example's squared L2 norm is at most this (an integer).
    l2_squared_bound: u128,
    /// Δ₂, at least `sqrt(l2_squared_bound)`.
    l2_sensitivity: f64,
    /// Δ₁ = min(√d·Δ₂, ⌊Δ₂²⌋).
    l1_sensitivity: f64,
    /// σ_total = z·Δ₂.
    sigma_total: f64,
    /// σ_share = σ_total/√t, as requested.
    sigma_share: f64,
    /// Samples each coordinate of a node's share (its σ at or just above `sigma_share`).
    share: DiscreteGaussian,
    /// L: each coordinate of a node's rounded sum is clamped to `[−L, L]`.
    node_bound: i64,
    /// h: the noise headroom left in the signed 32-bit range above `n·L`.
    noise_headroom: f64,
    /// The bound on the probability that some coordinate of a sum over at most `n` nodes wraps.
    wrap_probability: f64,
}

/// Why a configuration, an input or a sum was refused.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DdpError {
    /// The clipping norm is not a positive finite number.
    #[error("clipping norm {0} is not a positive finite number")]
    ClipNorm(f64),
    /// γ is not a positive finite number.
    #[error("scale gamma {0} is not a positive finite number")]
    Scale(f64),
    /// γ·C is below 1 (rounding would swamp the gradient) or above [`MAX_SCALED_CLIP`].
    #[error("the clipping norm in integer units, gamma*C = {0}, is not in [1, 2^30]")]
    ScaledClip(f64),
    /// The dimension is 0 or above [`MAX_DIMENSION`].
    #[error("dimension {0} is not in [1, 2^32 - 1]")]
    Dimension(usize),
    /// The number of nodes is 0 or above [`MAX_NODES`].
    #[error("{0} nodes is not in [1, 65535]")]
    Nodes(usize),
    /// The threshold is 0 or above the number of nodes.
    #[error("threshold {threshold} is not in [1, {nodes}] (the number of nodes)")]
    Threshold {
        /// t.
        threshold: usize,
        /// n.
        nodes: usize,
    },
    /// The noise multiplier is not a positive finite number (distributed mode needs noise).
    #[error("noise multiplier {0} is not a positive finite number")]
    NoiseMultiplier(f64),
    /// β is outside `[0, 1/2]`.
    #[error("conditional rounding beta {0} is not in [0, 0.5]")]
    RoundingBeta(f64),
    /// σ_share is below [`MIN_SHARE_SIGMA`] or out of the sampler's range.
    #[error("each node's noise share would have sigma {0}, outside [1, 1e7]")]
    ShareSigma(f64),
    /// Nothing is left for the signal once the noise has its headroom in 32 bits.
    #[error(
        "a node's sum would be clamped at {node_bound} per coordinate, below one example's {l2_sensitivity}: too many nodes or too much noise for 32-bit words"
    )]
    Capacity {
        /// L (negative where the noise alone overflows).
        node_bound: f64,
        /// Δ₂.
        l2_sensitivity: f64,
    },
    /// A vector has the wrong number of coordinates.
    #[error("a vector of {got} coordinates where {expected} were expected")]
    Length {
        /// d.
        expected: usize,
        /// What came.
        got: usize,
    },
    /// A gradient coordinate is NaN or infinite.
    #[error("gradient coordinate {index} is not finite")]
    NonFinite {
        /// The coordinate.
        index: usize,
    },
    /// Every rounding attempt exceeded the norm bound (probability at most β^attempts).
    #[error("conditional rounding exceeded the norm bound {attempts} times in a row")]
    RoundingRejected {
        /// Attempts made.
        attempts: u32,
    },
    /// A sum's input count is below the threshold or above the number of nodes.
    #[error("a sum of {summed} inputs, outside [{threshold}, {nodes}]")]
    SummedInputs {
        /// k.
        summed: usize,
        /// t.
        threshold: usize,
        /// n.
        nodes: usize,
    },
    /// The accounting refused (planning a noise multiplier).
    #[error("distributed DP accounting: {0}")]
    Privacy(#[from] PrivacyError),
    /// A coordinate of the sum is beyond what `k` honest inputs give (except with
    /// probability below the wrap bound): a garbled sum or a wrong `k`.
    #[error("coordinate {index} of the sum, {value}, is beyond what the inputs summed can give")]
    OutOfRange {
        /// The coordinate.
        index: usize,
        /// Its value read as a signed 32-bit integer.
        value: i32,
    },
}

impl DdpParams {
    /// Checks `config` and derives the rest.
    ///
    /// - Δ₂² = min{ c² + d/4 + sqrt(2 ln(1/β))·(c + √d/2), (c + √d)² } with `c = γC`, floored
    ///   to an integer (the first form for β > 0; see [`DdpParams::round_example`]).
    /// - Δ₁ = min(√d·Δ₂, ⌊Δ₂²⌋): `‖v‖₁ ≤ √d·‖v‖₂`, and `‖v‖₁ ≤ ‖v‖₂²` for integers.
    /// - σ_share = z·Δ₂/√t, at least [`MIN_SHARE_SIGMA`].
    /// - h = sqrt(2·n·σ²·(ln(2d) + 40 ln 2)), σ the sampler's: each share is σ²-subgaussian
    ///   (its moment generating function is at most the continuous Gaussian's: Canonne,
    ///   Kamath and Steinke 2020, §2), the sum of up to `n` is
    ///   `n·σ²`-subgaussian, so `P(|noise_j| > h) ≤ 2·exp(−h²/(2nσ²))` and, over the `d`
    ///   coordinates, some coordinate's noise exceeds `h` with probability at most 2^−40.
    /// - L = ⌊(2^31 − 1 − h)/n⌋, at least ⌈Δ₂⌉: then `n·L + h < 2^31`, so the sum of up to
    ///   `n` clamped inputs and their noise stays in the signed 32-bit range except with
    ///   probability 2^−40.
    pub fn new(config: DdpConfig) -> Result<Self, DdpError> {
        let DdpConfig {
            dimension,
            nodes,
            threshold,
            noise_multiplier,
            ..
        } = config;
        config.check_shape()?;
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(DdpError::NoiseMultiplier(noise_multiplier));
        }
        let d = dimension as f64;

        let Sensitivity {
            scaled_clip,
            l2_squared_bound,
            l2_sensitivity,
            l1_sensitivity,
        } = Sensitivity::of(&config)?;

        let sigma_total = noise_multiplier * l2_sensitivity;
        let sigma_share = sigma_total / (threshold as f64).sqrt();
        if sigma_share < MIN_SHARE_SIGMA {
            return Err(DdpError::ShareSigma(sigma_share));
        }
        let share = DiscreteGaussian::new(sigma_share).map_err(|e| match e {
            DiscreteGaussianError::Sigma(s) => DdpError::ShareSigma(s),
        })?;

        let n = nodes as f64;
        let variance = n * share.sigma().powi(2);
        let log_tail = (2.0 * d).ln() + f64::from(WRAP_BITS) * std::f64::consts::LN_2;
        let noise_headroom = (2.0 * variance * log_tail).sqrt();
        let room = (f64::from(i32::MAX) - noise_headroom) / n;
        if room < l2_sensitivity.ceil() {
            return Err(DdpError::Capacity {
                node_bound: room.floor(),
                l2_sensitivity,
            });
        }
        // In range: 1 ≤ room < 2^31.
        let node_bound = room.floor() as i64;
        let wrap_probability =
            (2.0 * d * (-noise_headroom * noise_headroom / (2.0 * variance)).exp()).min(1.0);
        Ok(Self {
            config,
            scaled_clip,
            l2_squared_bound,
            l2_sensitivity,
            l1_sensitivity,
            sigma_total,
            sigma_share,
            share,
            node_bound,
            noise_headroom,
            wrap_probability,
        })
    }

    /// What these parameters were built from.
    pub fn config(&self) -> &DdpConfig {
        &self.config
    }

    /// c = γ·C: the clipping norm in integer units.
    pub fn scaled_clip(&self) -> f64 {
        self.scaled_clip
    }

    /// Δ₂: the most one example moves a node's integer vector (and the sum), in L2.
    pub fn l2_sensitivity(&self) -> f64 {
        self.l2_sensitivity
    }

    /// Δ₁: the same in L1.
    pub fn l1_sensitivity(&self) -> f64 {
        self.l1_sensitivity
    }

    /// σ_total = z·Δ₂, in integer units: the least σ of the noise in an unmasked sum.
    pub fn sigma_total(&self) -> f64 {
        self.sigma_total
    }

    /// σ_share = σ_total/√t, in integer units: the σ each node asks of its sampler.
    pub fn sigma_share(&self) -> f64 {
        self.sigma_share
    }

    /// σ the sampler actually draws each share with (at or just above [`Self::sigma_share`]).
    pub fn sampled_share_sigma(&self) -> f64 {
        self.share.sigma()
    }

    /// L: each coordinate of a node's rounded sum is clamped to `[−L, L]` before its noise.
    pub fn node_bound(&self) -> i64 {
        self.node_bound
    }

    /// h: the headroom in the signed 32-bit range above `n·L` left for the noise.
    pub fn noise_headroom(&self) -> f64 {
        self.noise_headroom
    }

    /// A bound on the probability that a sum over at most `n` nodes wraps in some coordinate
    /// (at most 2^−[`WRAP_BITS`]). A wrap costs accuracy, never privacy.
    pub fn wrap_probability(&self) -> f64 {
        self.wrap_probability
    }

    /// The standard deviation, in gradient units, of the noise on each coordinate of a decoded
    /// sum over `summed_inputs` nodes: `√k·σ/γ` with the sampler's σ.
    pub fn noise_std_of_sum(&self, summed_inputs: usize) -> f64 {
        (summed_inputs as f64).sqrt() * self.share.sigma() / self.config.scale
    }

    /// What the coordinator and everyone outside the nodes learn, for the ledger: `steps` rounds
    /// at per-example sampling rate `sample_rate`, with the noise of the `t` shares that the
    /// smallest unmasked sum carries (noise multiplier `z`, `t` summands).
    pub fn central_mechanism(&self, sample_rate: f64, steps: u64) -> Mechanism {
        self.mechanism_for_summands(self.config.threshold as u64, sample_rate, steps)
    }

    /// What this node's vector alone reveals, for the ledger: the guarantee against hospitals
    /// that collude to subtract their own inputs from the sum (one summand, noise multiplier
    /// `σ_share/Δ₂`).
    pub fn local_mechanism(&self, sample_rate: f64, steps: u64) -> Mechanism {
        self.mechanism_for_summands(1, sample_rate, steps)
    }

    /// The guarantee of a sum of `summands` shares of this configuration (noise multiplier
    /// `σ_share·√summands/Δ₂`): [`Self::local_mechanism`] at 1, [`Self::central_mechanism`] at
    /// `t`; a coalition of `c` colluding hospitals among `k` survivors faces `k − c`.
    pub fn mechanism_for_summands(&self, summands: u64, sample_rate: f64, steps: u64) -> Mechanism {
        let noise_multiplier = if summands == self.config.threshold as u64 {
            self.config.noise_multiplier
        } else {
            self.sigma_share * (summands as f64).sqrt() / self.l2_sensitivity
        };
        Mechanism::DistributedDiscreteGaussian {
            sample_rate,
            noise_multiplier,
            l2_sensitivity: self.l2_sensitivity,
            l1_sensitivity: self.l1_sensitivity,
            dimension: self.config.dimension as u64,
            summands,
            steps,
        }
    }
}

/// What one example can do to a node's integer vector, from a configuration whose shape is
/// checked.
struct Sensitivity {
    /// c = γ·C.
    scaled_clip: f64,
    /// ⌊Δ₂²⌋.
    l2_squared_bound: u128,
    /// Δ₂.
    l2_sensitivity: f64,
    /// Δ₁.
    l1_sensitivity: f64,
}

impl Sensitivity {
    /// Δ₂² = min{ c² + d/4 + sqrt(2 ln(1/β))·(c + √d/2), (c + √d)² } floored, Δ₁ from it.
    fn of(config: &DdpConfig) -> Result<Self, DdpError> {
        config.check_shape()?;
        let scaled_clip = config.scale * config.clip_norm;
        let d = config.dimension as f64;
        let mut bound = (scaled_clip + d.sqrt()).powi(2);
        if config.rounding_beta > 0.0 {
            let conditional = scaled_clip * scaled_clip
                + d / 4.0
                + (2.0 * (1.0 / config.rounding_beta).ln()).sqrt() * (scaled_clip + d.sqrt() / 2.0);
            bound = bound.min(conditional);
        }
        // At most (2^30 + 2^16)², so the floor is exact and fits u128.
        let l2_squared_bound = bound.floor() as u128;
        // Rounded up so that Δ₂ is never below the real root.
        let l2_sensitivity = (l2_squared_bound as f64).sqrt() * (1.0 + f64::EPSILON);
        let l1_sensitivity = (d.sqrt() * l2_sensitivity).min(l2_squared_bound as f64);
        Ok(Self {
            scaled_clip,
            l2_squared_bound,
            l2_sensitivity,
            l1_sensitivity,
        })
    }
}

#[cfg(test)]
mod tests;
