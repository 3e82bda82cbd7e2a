//! The privacy loss distribution of the Poisson-subsampled Gaussian mechanism (sensitivity 1,
//! noise multiplier σ, sampling rate q), under each of the two directions of add-or-remove
//! adjacency.
//!
//! With `μ = N(0, σ²)` and the one patient's contribution moving the output by 1:
//!
//! ```text
//!  remove:  upper = (1 − q)·μ(x) + q·μ(x + 1),   lower = μ(x)
//!  add:     upper = μ(x),                         lower = (1 − q)·μ(x) + q·μ(x − 1)
//!  loss L(x) = ln(upper(x) / lower(x)), decreasing in x;  L_add(x) = −L_remove(−x)
//! ```
//!
//! For a loss ε the hockey-stick divergence is `δ(ε) = Upper(x) − e^ε · Lower(x)` at the `x`
//! where `L(x) = ε` (`Upper`, `Lower` the CDFs), which is what [`super::connect_dots`] samples on
//! the grid. The grid spans the losses of all `x` but for a tail of mass `e^−50` of μ on each
//! side, as dp_accounting does; the connect-the-dots construction puts the rest of the mass above
//! the grid at `+∞`. At q = 1 both directions give the plain Gaussian mechanism.

use std::f64::consts::{LN_2, SQRT_2};

use super::connect_dots;
use super::pmf::{LossPmf, check_points};
use crate::privacy::{PrivacyError, log_add, log_erfc};

/// Which neighbour is the bigger data set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Adjacency {
    /// The mechanism runs on the data set with the patient; the other lacks them.
    Remove,
    /// The mechanism runs on the data set without the patient; the other has them.
    Add,
}

/// `z` with `Φ(z) = e^−50 / 2`, from scipy's `norm.ppf(0.5 * exp(-50))`: the standard normal
/// quantile at which the grid of losses starts (see the module docs).
pub(crate) const TAIL_QUANTILE: f64 = -9.745474864965935;

/// The connect-the-dots distribution of one step of the mechanism on the grid of `interval`.
/// `q` in `(0, 1]` and `sigma > 0`, finite, are the caller's to check.
pub(crate) fn subsampled_gaussian(
    q: f64,
    sigma: f64,
    adjacency: Adjacency,
    interval: f64,
) -> Result<LossPmf, PrivacyError> {
    let mechanism = SubsampledGaussian::new(q, sigma, adjacency);
    let (lower_x, upper_x) = mechanism.x_range();
    let upper = (mechanism.loss(lower_x) / interval).ceil();
    let lower = (mechanism.loss(upper_x) / interval).floor();
    if !(lower.is_finite() && upper.is_finite()) {
        return Err(PrivacyError::PldNumerical);
    }
    check_points((upper - lower + 1.0) as u128)?;
    let (lower, upper) = (lower as i64, upper as i64);
    let deltas = (lower..=upper)
        .map(|k| mechanism.delta(k as f64 * interval))
        .collect();
    connect_dots::fixed_gap(interval, lower, upper, deltas)
}

/// One step of the subsampled Gaussian mechanism, seen from one direction of adjacency.
#[derive(Clone, Copy, Debug)]
struct SubsampledGaussian {
    /// The noise multiplier σ.
    sigma: f64,
    /// The sampling rate q.
    q: f64,
    /// `ln q`.
    ln_q: f64,
    /// `ln(1 − q)`.
    ln_1mq: f64,
    /// Which direction.
    adjacency: Adjacency,
}

impl SubsampledGaussian {
    fn new(q: f64, sigma: f64, adjacency: Adjacency) -> Self {
        Self {
            sigma,
            q,
            ln_q: q.ln(),
            ln_1mq: (-q).ln_1p(),
            adjacency,
        }
    }

    /// The range of `x` the grid covers: all but `e^−50 / 2` of each of the Gaussians that make
    /// up the upper distribution lies inside it.
    fn x_range(&self) -> (f64, f64) {
        let lower = TAIL_QUANTILE * self.sigma;
        match self.adjacency {
            Adjacency::Remove => (lower - 1.0, -lower),
            Adjacency::Add => (lower, -lower + 1.0),
        }
    }

    /// The privacy loss at `x`.
    fn loss(&self, x: f64) -> f64 {
        match self.adjacency {
            Adjacency::Remove => self.loss_remove(x),
            Adjacency::Add => -self.loss_remove(-x),
        }
    }

    /// `ln((1 − q) + q·e^(L₀(x)))`, with `L₀` the loss of the Gaussian mechanism itself.
    fn loss_remove(&self, x: f64) -> f64 {
        let plain = (-0.5 - x) / (self.sigma * self.sigma);
        if self.q == 1.0 {
            return plain;
        }
        log_add(self.ln_q + plain, self.ln_1mq)
    }

    /// The largest `x` whose loss is at least `eps`, for an `eps` inside the range of losses
    /// (above `ln(1 − q)` when removing, below `−ln(1 − q)` when adding; at either end the
    /// answer is `±∞`).
    fn inverse_loss(&self, eps: f64) -> f64 {
        let sigma2 = self.sigma * self.sigma;
        let plain_inverse = |loss: f64| -0.5 - loss * sigma2;
        match self.adjacency {
            Adjacency::Remove => {
                if self.q == 1.0 {
                    return plain_inverse(eps);
                }
                if is_close(eps, self.ln_1mq) {
                    return f64::INFINITY;
                }
                // The plain loss L₀ with ln(1 − q + q·e^L₀) = eps.
                let plain = eps - self.ln_q + (-(self.ln_1mq - eps).exp()).ln_1p();
                plain_inverse(plain)
            }
            Adjacency::Add => {
                if self.q == 1.0 {
                    return 1.0 + plain_inverse(eps);
                }
                if is_close(eps, -self.ln_1mq) {
                    return f64::NEG_INFINITY;
                }
                let plain = eps + self.ln_q - (-(self.ln_1mq + eps).exp()).ln_1p();
                1.0 + plain_inverse(plain)
            }
        }
    }

    /// CDF of the upper distribution.
    fn upper_cdf(&self, x: f64) -> f64 {
        let s = self.sigma;
        match self.adjacency {
            Adjacency::Remove if self.q == 1.0 => normal_cdf((x + 1.0) / s),
            Adjacency::Remove => {
                (1.0 - self.q) * normal_cdf(x / s) + self.q * normal_cdf((x + 1.0) / s)
            }
            Adjacency::Add => normal_cdf(x / s),
        }
    }

    /// ln of the CDF of the lower distribution.
    fn lower_log_cdf(&self, x: f64) -> f64 {
        let s = self.sigma;
        match self.adjacency {
            Adjacency::Remove => normal_log_cdf(x / s),
            Adjacency::Add if self.q == 1.0 => normal_log_cdf((x - 1.0) / s),
            Adjacency::Add => log_add(
                self.ln_1mq + normal_log_cdf(x / s),
                self.ln_q + normal_log_cdf((x - 1.0) / s),
            ),
        }
    }

    /// The hockey-stick divergence `δ(ε)` of this direction, clipped to `[0, 1]`.
    fn delta(&self, eps: f64) -> f64 {
        if self.q < 1.0 {
            match self.adjacency {
                // Every x has a loss above ε: δ = 1 − e^ε.
                Adjacency::Remove if eps <= self.ln_1mq => return -eps.exp_m1(),
                // No x has a loss above ε.
                Adjacency::Add if eps >= -self.ln_1mq => return 0.0,
                _ => {}
            }
        }
        let x = self.inverse_loss(eps);
        let delta = self.upper_cdf(x) - (eps + self.lower_log_cdf(x)).exp();
        delta.clamp(0.0, 1.0)
    }
}

/// Python's `math.isclose` at its default relative tolerance.
fn is_close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// The standard normal CDF Φ(x).
fn normal_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / SQRT_2)
}

/// `ln Φ(x)`, accurate in both tails.
fn normal_log_cdf(x: f64) -> f64 {
    if x > 0.0 {
        // Φ(x) = 1 − Φ(−x).
        (-0.5 * libm::erfc(x / SQRT_2)).ln_1p()
    } else if x > -35.0 {
        (0.5 * libm::erfc(-x / SQRT_2)).ln()
    } else {
        // erfc would underflow.
        log_erfc(-x / SQRT_2) - LN_2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_quantile_has_the_mass_it_claims() {
        let expected = -50.0 - LN_2;
        assert!((normal_log_cdf(TAIL_QUANTILE) - expected).abs() < 1e-12);
    }

    #[test]
    fn normal_log_cdf_is_accurate_in_both_tails() {
        // ln Φ(x) from mpmath at 40 digits.
        let reference = [
            (-40.0, -804.6084420137538),
            (-30.0, -454.3212439563432),
            (-5.0, -15.064998393988725),
            (0.0, -LN_2),
            (3.0, -0.0013508099647481938),
            (10.0, -7.619853024160525e-24),
        ];
        for (x, expected) in reference {
            let got = normal_log_cdf(x);
            assert!(
                (got - expected).abs() <= 2e-14 * expected.abs(),
                "{x}: {got} vs {expected}"
            );
        }
        assert_eq!(normal_log_cdf(f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert_eq!(normal_log_cdf(f64::INFINITY), 0.0);
    }

    #[test]
    fn inverse_loss_inverts_the_loss() {
        for adjacency in [Adjacency::Remove, Adjacency::Add] {
            for (q, sigma) in [(0.01, 0.8), (0.2, 1.5), (1.0, 2.0)] {
                let m = SubsampledGaussian::new(q, sigma, adjacency);
                for x in [-6.0, -1.0, 0.0, 0.3, 2.0, 5.0] {
                    let loss = m.loss(x);
                    let back = m.inverse_loss(loss);
                    assert!(
                        (back - x).abs() < 1e-6 * (1.0 + x.abs()),
                        "{m:?} {x} {back}"
                    );
                }
            }
        }
    }

    #[test]
    fn plain_gaussian_delta_is_the_closed_form() {
        // Balle and Wang 2018: δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ) at sensitivity 1.
        let sigma = 1.3;
        for adjacency in [Adjacency::Remove, Adjacency::Add] {
            let m = SubsampledGaussian::new(1.0, sigma, adjacency);
            for eps in [0.0, 0.5, 1.0, 3.0] {
                let expected = normal_cdf(0.5 / sigma - eps * sigma)
                    - eps.exp() * normal_cdf(-0.5 / sigma - eps * sigma);
                assert!((m.delta(eps) - expected).abs() < 1e-15, "{eps}");
            }
        }
    }

    #[test]
    fn removing_costs_at_least_adding() {
        let remove = SubsampledGaussian::new(0.1, 1.0, Adjacency::Remove);
        let add = SubsampledGaussian::new(0.1, 1.0, Adjacency::Add);
        for eps in [0.05, 0.2, 0.5, 1.0, 2.0] {
            assert!(remove.delta(eps) >= add.delta(eps), "{eps}");
        }
        assert_eq!(
            add.delta(0.2),
            0.0,
            "ε above −ln(1 − q) costs nothing when adding"
        );
        assert!((remove.delta(-0.2) - -(-0.2f64).exp_m1()).abs() < 1e-16);
    }
}
