//! Conditional randomized rounding of one example's scaled gradient to integers (Kairouz, Liu
//! and Steinke 2021, the DDG paper).
//!
//! Randomized rounding sends each coordinate `x_j` to `⌊x_j⌋ + 1` with probability
//! `x_j − ⌊x_j⌋`, else to `⌊x_j⌋`: unbiased, and off by less than 1 per coordinate, so the
//! rounded vector's norm is below `‖x‖₂ + √d`. That bound grows with √d; conditioning does
//! better. The squared norm `Σ x̃_j²` has mean `Σ (x_j² + p_j(1 − p_j)) ≤ ‖x‖₂² + d/4`, and each
//! term ranges over an interval of length `|2⌊x_j⌋ + 1| ≤ 2|x_j| + 1`, so Hoeffding's
//! inequality with `Σ (2|x_j| + 1)² ≤ (2‖x‖₂ + √d)²` gives
//!
//! ```text
//!  P( ‖x̃‖₂² > ‖x‖₂² + d/4 + sqrt(2 ln(1/β))·(‖x‖₂ + √d/2) ) ≤ β
//! ```
//!
//! (the norm bound of their Theorem 1). Redrawing until `‖x̃‖₂² ≤ ⌊Δ₂²⌋`, with `Δ₂²` that bound at
//! `‖x‖₂ = γC` (it rises with `‖x‖₂`), makes the L2 norm bound exact: it is checked in integer
//! arithmetic on every vector that leaves, so the sensitivity holds whatever the floating point
//! did before. The conditioning biases the result by at most `√d·β/(1 − β)` in L2 (the rejected
//! event has probability at most β and moves each coordinate by less than 1), about 10^−6·√d
//! at the default β.

use rand::CryptoRng;

use super::{DdpError, MAX_ROUNDING_ATTEMPTS};

/// Clips `scaled` (finite, checked) to L2 norm `scaled_clip` in place.
pub(super) fn clip_in_place(scaled: &mut [f64], scaled_clip: f64) {
    // The norm by the largest magnitude first, so that no square overflows.
    let largest = scaled.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    if largest == 0.0 {
        return;
    }
    let norm = largest
        * scaled
            .iter()
            .map(|x| (x / largest).powi(2))
            .sum::<f64>()
            .sqrt();
    if norm > scaled_clip {
        let factor = scaled_clip / norm;
        scaled.iter_mut().for_each(|x| *x *= factor);
    }
}

/// Rounds `x` (finite, each `|x_j| ≤ 2^30`) randomly until its squared L2 norm is at most
/// `l2_squared_bound`, at most [`MAX_ROUNDING_ATTEMPTS`] times.
pub(super) fn round_conditionally<R: CryptoRng + ?Sized>(
    x: &[f64],
    l2_squared_bound: u128,
    rng: &mut R,
) -> Result<Vec<i64>, DdpError> {
    let mut rounded = vec![0i64; x.len()];
    for _ in 0..MAX_ROUNDING_ATTEMPTS {
        round_once(x, &mut rounded, rng);
        if squared_norm(&rounded) <= l2_squared_bound {
            return Ok(rounded);
        }
    }
    Err(DdpError::RoundingRejected {
        attempts: MAX_ROUNDING_ATTEMPTS,
    })
}

/// One unconditioned randomized rounding of `x` into `out`.
pub(super) fn round_once<R: CryptoRng + ?Sized>(x: &[f64], out: &mut [i64], rng: &mut R) {
    for (o, &v) in out.iter_mut().zip(x) {
        let floor = v.floor();
        // Exact: |v| < 2^52, so v − ⌊v⌋ is representable.
        let frac = v - floor;
        let up = unit_interval(rng) < frac;
        *o = floor as i64 + i64::from(up);
    }
}

/// `Σ v_j²`, exactly (each `|v_j| < 2^31`, at most 2^32 terms).
pub(super) fn squared_norm(v: &[i64]) -> u128 {
    v.iter().map(|&x| u128::from(x.unsigned_abs()).pow(2)).sum()
}

/// A uniform draw from [0, 1) with 53 random bits.
fn unit_interval<R: CryptoRng + ?Sized>(rng: &mut R) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}
