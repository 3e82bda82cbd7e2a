//! The privacy loss distribution of one integer released with discrete Gaussian noise
//! `N_Z(0, σ²)` (probability of `x` proportional to `e^(−x²/2σ²)`, as
//! [`crate::discrete_gaussian`] samples), where one patient moves the integer by at most the
//! integer sensitivity `s`.
//!
//! The worst case moves it by exactly `s`; then the loss at output `x` (the upper distribution
//! being the noise shifted by `−s`) is `L(x) = s(−s/2 − x)/σ²`, and adding and removing give the
//! same distribution. As in dp_accounting, the noise is taken on `[−T, T]` with
//! `T = ⌈11.6σ⌉`, outside which it has mass below `10^−30` (Canonne, Kamath and Steinke 2020);
//! outputs only one of the two shifted distributions reaches have an infinite loss. The
//! connect-the-dots grid is every grid loss just below or above some `L(x)`.

use super::connect_dots;
use super::pmf::{LossPmf, check_points};
use crate::privacy::{PrivacyError, log_add};

/// `T / σ`: where the noise is cut off.
const TRUNCATION_SIGMAS: f64 = 11.6;

/// The most points of noise support (`2T + 1`) the accountant tabulates: about 4 million, so σ
/// up to about 180 000 (32 MiB of table).
pub const MAX_SUPPORT: u64 = 1 << 22;

/// The connect-the-dots distribution of one release on the grid of `interval`. `sigma > 0`,
/// finite, and `sensitivity ≥ 1` are the caller's to check.
pub(crate) fn discrete_gaussian(
    sigma: f64,
    sensitivity: u64,
    interval: f64,
) -> Result<LossPmf, PrivacyError> {
    let noise = TruncatedNoise::new(sigma, sensitivity)?;
    let mut rounded: Vec<i64> = Vec::new();
    for x in (-noise.bound..=noise.bound - noise.shift).rev() {
        let scaled = noise.loss(x) / interval;
        let (floor, ceil) = (scaled.floor(), scaled.ceil());
        if !(floor.is_finite() && ceil.is_finite()) || ceil.abs() > i64::MAX as f64 / 4.0 {
            return Err(PrivacyError::PldNumerical);
        }
        for k in [floor as i64, ceil as i64] {
            if rounded.last().is_none_or(|&last| k > last) {
                rounded.push(k);
            }
        }
    }
    if let (Some(first), Some(last)) = (rounded.first(), rounded.last()) {
        check_points((last - first + 1) as u128)?;
    }
    let deltas = rounded
        .iter()
        .map(|&k| noise.delta(k as f64 * interval))
        .collect();
    connect_dots::general(interval, &rounded, deltas)
}

/// The discrete Gaussian cut to `[−bound, bound]`, as its log-CDF, and the shift of one patient.
struct TruncatedNoise {
    /// σ².
    sigma2: f64,
    /// T.
    bound: i64,
    /// The sensitivity s.
    shift: i64,
    /// `ln P[X ≤ x]` at `x = −T − 1 + i`.
    log_cdf: Vec<f64>,
}

impl TruncatedNoise {
    fn new(sigma: f64, sensitivity: u64) -> Result<Self, PrivacyError> {
        let bound = (TRUNCATION_SIGMAS * sigma).ceil();
        let support = 2.0 * bound + 1.0;
        if support > MAX_SUPPORT as f64 {
            return Err(PrivacyError::PldTooLarge {
                // `as` saturates: a support beyond u64 reads as u64::MAX.
                points: support as u64,
            });
        }
        let bound = bound as i64;
        let shift = i64::try_from(sensitivity)
            .ok()
            .filter(|&s| s <= 2 * bound)
            .ok_or(PrivacyError::SensitivityTooLarge { sensitivity, sigma })?;
        let sigma2 = sigma * sigma;
        let mut log_cdf = Vec::with_capacity(2 * bound as usize + 2);
        log_cdf.push(f64::NEG_INFINITY);
        let mut running = f64::NEG_INFINITY;
        for x in -bound..=bound {
            running = log_add(running, -0.5 * (x * x) as f64 / sigma2);
            log_cdf.push(running);
        }
        log_cdf.iter_mut().for_each(|l| *l -= running);
        Ok(Self {
            sigma2,
            bound,
            shift,
            log_cdf,
        })
    }

    /// `ln P[X ≤ x]`.
    fn log_cdf(&self, x: i64) -> f64 {
        let x = x.clamp(-self.bound - 1, self.bound);
        self.log_cdf[(x + self.bound + 1) as usize]
    }

    /// The loss at output `x` in `[−T, T − s]`.
    fn loss(&self, x: i64) -> f64 {
        let s = self.shift as f64;
        s * (-0.5 * s - x as f64) / self.sigma2
    }

    /// The largest `x` whose loss is at least `eps`, within `[−T − 1, T − s]`.
    fn inverse_loss(&self, eps: f64) -> i64 {
        let s = self.shift as f64;
        let x = -0.5 * s - eps * self.sigma2 / s;
        x.clamp((-self.bound - 1) as f64, (self.bound - self.shift) as f64)
            .floor() as i64
    }

    /// The hockey-stick divergence `P[X ≤ x + s] − e^ε · P[X ≤ x]` at the `x` of `eps`, clipped
    /// to `[0, 1]`.
    fn delta(&self, eps: f64) -> f64 {
        let x = self.inverse_loss(eps);
        let delta = self.log_cdf(x + self.shift).exp() - (eps + self.log_cdf(x)).exp();
        delta.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_the_normalised_discrete_gaussian() {
        let noise = TruncatedNoise::new(2.0, 1).unwrap();
        assert_eq!(noise.bound, 24);
        let z: f64 = (-24..=24).map(|x| (-(x * x) as f64 / 8.0).exp()).sum();
        for x in [-25, -3, 0, 2, 24] {
            let cdf: f64 = (-24..=x)
                .map(|k| (-(k * k) as f64 / 8.0).exp())
                .sum::<f64>()
                / z;
            assert!((noise.log_cdf(x).exp() - cdf).abs() < 1e-15, "{x}");
        }
        assert_eq!(noise.log_cdf(100), 0.0);
        assert_eq!(noise.log_cdf(-100), f64::NEG_INFINITY);
    }

    #[test]
    fn delta_is_the_sum_over_outputs() {
        // δ(ε) = Σ_x (P[x + s] − e^ε P[x])₊ with the upper distribution the noise shifted by −s.
        let (sigma, s) = (1.5, 2u64);
        let noise = TruncatedNoise::new(sigma, s).unwrap();
        let t = noise.bound;
        let pmf = |x: i64| {
            if x.abs() > t {
                0.0
            } else {
                noise.log_cdf(x).exp() - noise.log_cdf(x - 1).exp()
            }
        };
        for eps in [0.0f64, 0.4, 1.0, 2.5] {
            let direct: f64 = (-t - 2..=t)
                .map(|x| (pmf(x + 2) - eps.exp() * pmf(x)).max(0.0))
                .sum();
            assert!((noise.delta(eps) - direct).abs() < 1e-14, "{eps}");
        }
    }

    #[test]
    fn wide_noise_and_large_shifts_are_refused() {
        assert!(matches!(
            discrete_gaussian(1e6, 1, 1e-4),
            Err(PrivacyError::PldTooLarge { .. })
        ));
        assert_eq!(
            discrete_gaussian(1.0, 30, 1e-4).unwrap_err(),
            PrivacyError::SensitivityTooLarge {
                sensitivity: 30,
                sigma: 1.0
            }
        );
        assert!(discrete_gaussian(1.0, 24, 1e-2).is_ok());
    }
}
