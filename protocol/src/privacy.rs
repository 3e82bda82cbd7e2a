//! Differential-privacy accounting: how much (ε, δ) a run of DP-SGD spends, and how much noise a
//! budget allows.
//!
//! This is the Rényi-DP (RDP) accountant of the Poisson-subsampled Gaussian mechanism, ported from
//! Opacus (`opacus/accountants/analysis/rdp.py`, itself from TF Privacy; Mironov, Talwar and
//! Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism", 2019) so that a figure
//! medfed reports is the figure Opacus reports for the same run. The tests check it against
//! vectors produced by Opacus itself (`scripts/privacy_vectors.py`).
//!
//! ```text
//!  (q, σ, steps) ─▶ compute_rdp ─▶ RDP curve over orders α ─▶ get_privacy_spent(δ) ─▶ (ε, best α)
//!  (ε, δ, q, steps) ─▶ noise_multiplier_for ─▶ σ     (bisection over σ with the same two steps)
//! ```
//!
//! Here `q` is the probability with which each example joins a batch, `σ` (the noise multiplier)
//! is the standard deviation of the Gaussian noise divided by the clipping norm, and `steps` counts
//! noisy gradient steps. RDP curves of runs with different parameters add up order by order.
//!
//! This module only does the arithmetic. It does not clip, draw noise or keep a ledger of what has
//! been spent; those belong to the training code that calls it. [`crate::accounting`] composes
//! every kind of release a node makes under this accountant or the tighter privacy-loss-
//! distribution one ([`crate::pld`]); this one stays as the cross-check that reproduces Opacus.

use std::f64::consts::{LN_2, PI, SQRT_2};

/// Opacus's default RDP orders (`RDPAccountant.DEFAULT_ALPHAS`): 1.1 to 10.9 in steps of 0.1,
/// then the integers 12 to 63.
pub const DEFAULT_ALPHAS: [f64; 151] = default_alphas();

/// Default precision of [`noise_multiplier_for`]'s bisection, in units of ε (Opacus's
/// `epsilon_tolerance`).
pub const DEFAULT_EPSILON_TOLERANCE: f64 = 0.01;

/// The noise multiplier beyond which [`noise_multiplier_for`] gives up (Opacus's `MAX_SIGMA`).
pub const MAX_NOISE_MULTIPLIER: f64 = 1e6;

/// Computes the RDP of the Poisson-subsampled Gaussian mechanism run `steps` times, at each of
/// `orders`.
///
/// `q` is the sampling rate and `noise_multiplier` the noise's standard deviation over the
/// sensitivity. Each entry is the RDP at the order in the same position; it is `+∞` where the
/// mechanism gives no guarantee (`noise_multiplier` 0 with `q` > 0, or an infinite order). A `q`
/// of 0 spends nothing, and a `q` of 1 gives the plain Gaussian mechanism, `α / (2σ²)` per step.
/// Zero steps spend nothing.
///
/// Orders must be above 1 (`+∞` is allowed). An integer order `α` costs `α + 1` terms; a
/// fractional one sums a series until its terms fall below `e^-30`, as Opacus does.
pub fn compute_rdp(
    q: f64,
    noise_multiplier: f64,
    steps: u64,
    orders: &[f64],
) -> Result<Vec<f64>, PrivacyError> {
    check_sampling_rate(q)?;
    check_noise_multiplier(noise_multiplier)?;
    check_orders(orders)?;
    if steps == 0 {
        return Ok(vec![0.0; orders.len()]);
    }
    let steps = steps as f64;
    orders
        .iter()
        .map(|&alpha| Ok(rdp_per_step(q, noise_multiplier, alpha)? * steps))
        .collect()
}

/// Converts an RDP curve into `(ε, best order)` for the given `delta`, minimising over the orders.
///
/// This is the conversion Opacus uses (Balle et al. 2020, "Hypothesis testing interpretations and
/// Rényi differential privacy", Theorem 21):
/// `ε(α) = rdp(α) − (ln δ + ln α) / (α − 1) + ln((α − 1) / α)`. Orders whose `ε(α)` is NaN are
/// skipped; if every one is NaN the result is `(+∞, NaN)`, as in Opacus. Ties go to the earliest
/// order. A best order at either end of `orders` suggests the range is too narrow.
///
/// Orders must be above 1, as for [`compute_rdp`]; Opacus would skip lower ones as NaN.
pub fn get_privacy_spent(
    orders: &[f64],
    rdp: &[f64],
    delta: f64,
) -> Result<(f64, f64), PrivacyError> {
    check_delta(delta)?;
    check_orders(orders)?;
    if orders.len() != rdp.len() {
        return Err(PrivacyError::LengthMismatch {
            orders: orders.len(),
            rdp: rdp.len(),
        });
    }
    let ln_delta = delta.ln();
    let mut best: Option<(f64, f64)> = None;
    for (&alpha, &r) in orders.iter().zip(rdp) {
        let eps = r - (ln_delta + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
        if eps.is_nan() {
            continue;
        }
        if best.is_none_or(|(best_eps, _)| eps < best_eps) {
            best = Some((eps, alpha));
        }
    }
    Ok(best.unwrap_or((f64::INFINITY, f64::NAN)))
}

/// Returns `(ε, best order)` spent by `steps` steps at sampling rate `q` and noise multiplier
/// `noise_multiplier`, for the given `delta`, over [`DEFAULT_ALPHAS`].
///
/// This is what Opacus's `RDPAccountant.get_privacy_spent` gives after that many identical steps.
pub fn epsilon(
    q: f64,
    noise_multiplier: f64,
    steps: u64,
    delta: f64,
) -> Result<(f64, f64), PrivacyError> {
    check_delta(delta)?;
    let rdp = compute_rdp(q, noise_multiplier, steps, &DEFAULT_ALPHAS)?;
    get_privacy_spent(&DEFAULT_ALPHAS, &rdp, delta)
}

/// Finds a noise multiplier with which `steps` steps at sampling rate `q` spend at most
/// `target_epsilon` (for `delta`), by Opacus's `get_noise_multiplier` bisection.
///
/// Starting from σ = 20, σ doubles until ε falls below the target (giving up past
/// [`MAX_NOISE_MULTIPLIER`]); then σ is bisected between 0 and that value until ε is within
/// `epsilon_tolerance` (absolute, in units of ε) below the target. The result is the upper end of
/// the final interval, so its ε never exceeds the target. Use [`DEFAULT_EPSILON_TOLERANCE`] for
/// Opacus's default.
///
/// Where Opacus would loop forever (the bisection interval shrinks to nothing without reaching
/// the tolerance, as when `q` is 0) this returns [`PrivacyError::NoConvergence`].
pub fn noise_multiplier_for(
    target_epsilon: f64,
    delta: f64,
    q: f64,
    steps: u64,
    epsilon_tolerance: f64,
) -> Result<f64, PrivacyError> {
    noise_multiplier_alongside(target_epsilon, delta, q, steps, epsilon_tolerance, &[])
}

/// As [`noise_multiplier_for`], for a run that will also make other releases: `other` is their
/// summed RDP curve over [`DEFAULT_ALPHAS`] (empty: none), composed with the run's before
/// converting to ε. A node that also noises its evaluation counts uses it to leave room for
/// them in its budget.
pub fn noise_multiplier_alongside(
    target_epsilon: f64,
    delta: f64,
    q: f64,
    steps: u64,
    epsilon_tolerance: f64,
    other: &[f64],
) -> Result<f64, PrivacyError> {
    if !other.is_empty() && other.len() != DEFAULT_ALPHAS.len() {
        return Err(PrivacyError::LengthMismatch {
            orders: DEFAULT_ALPHAS.len(),
            rdp: other.len(),
        });
    }
    let epsilon = |q: f64, sigma: f64, steps: u64, delta: f64| {
        let mut rdp = compute_rdp(q, sigma, steps, &DEFAULT_ALPHAS)?;
        rdp.iter_mut().zip(other).for_each(|(r, o)| *r += o);
        get_privacy_spent(&DEFAULT_ALPHAS, &rdp, delta)
    };
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(PrivacyError::TargetEpsilon(target_epsilon));
    }
    if !(epsilon_tolerance.is_finite() && epsilon_tolerance > 0.0) {
        return Err(PrivacyError::EpsilonTolerance(epsilon_tolerance));
    }
    check_delta(delta)?;
    check_sampling_rate(q)?;

    let (_, sigma) = opacus_bisection(target_epsilon, epsilon_tolerance, |sigma| {
        Ok(epsilon(q, sigma, steps, delta)?.0)
    })?;
    Ok(sigma)
}

/// Opacus's `get_noise_multiplier` search, with `epsilon_at(σ)` the ε the plan spends at σ:
/// σ doubles from 20 until ε falls to the target (giving up past [`MAX_NOISE_MULTIPLIER`]),
/// then the interval from 0 is halved until ε is within `tolerance` below the target. Returns
/// the final interval `(σ_low, σ_high)`: σ_high never spends more than the target.
pub(crate) fn opacus_bisection(
    target_epsilon: f64,
    tolerance: f64,
    mut epsilon_at: impl FnMut(f64) -> Result<f64, PrivacyError>,
) -> Result<(f64, f64), PrivacyError> {
    let mut eps_high = f64::INFINITY;
    let mut sigma_low = 0.0;
    let mut sigma_high = 10.0;
    while eps_high > target_epsilon {
        sigma_high *= 2.0;
        eps_high = epsilon_at(sigma_high)?;
        if sigma_high > MAX_NOISE_MULTIPLIER {
            return Err(PrivacyError::BudgetTooLow { target_epsilon });
        }
    }
    while target_epsilon - eps_high > tolerance {
        let sigma = (sigma_low + sigma_high) / 2.0;
        if sigma == sigma_low || sigma == sigma_high {
            return Err(PrivacyError::NoConvergence { target_epsilon });
        }
        let eps = epsilon_at(sigma)?;
        if eps < target_epsilon {
            sigma_high = sigma;
            eps_high = eps;
        } else {
            sigma_low = sigma;
        }
    }
    Ok((sigma_low, sigma_high))
}

/// Why a privacy computation was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PrivacyError {
    /// The sampling rate is NaN or outside `[0, 1]`.
    #[error("sampling rate {0} is not in [0, 1]")]
    SamplingRate(f64),
    /// The noise multiplier is NaN, negative or infinite.
    #[error("noise multiplier {0} is not a finite number at least 0")]
    NoiseMultiplier(f64),
    /// δ is NaN or outside `(0, 1)`.
    #[error("delta {0} is not in (0, 1)")]
    Delta(f64),
    /// No RDP orders were given.
    #[error("no RDP orders were given")]
    NoOrders,
    /// An RDP order is NaN or not above 1.
    #[error("RDP order {0} is not above 1")]
    Order(f64),
    /// The RDP curve does not have one value per order.
    #[error("{rdp} RDP values were given for {orders} orders")]
    LengthMismatch {
        /// Number of orders.
        orders: usize,
        /// Number of RDP values.
        rdp: usize,
    },
    /// The target ε is NaN, infinite or not positive.
    #[error("target epsilon {0} is not a positive finite number")]
    TargetEpsilon(f64),
    /// The bisection tolerance is NaN, infinite or not positive.
    #[error("epsilon tolerance {0} is not a positive finite number")]
    EpsilonTolerance(f64),
    /// Even a noise multiplier above [`MAX_NOISE_MULTIPLIER`] spends more than the target ε.
    #[error("the privacy budget epsilon = {target_epsilon} is too low for any noise multiplier")]
    BudgetTooLow {
        /// The ε asked for.
        target_epsilon: f64,
    },
    /// The bisection interval shrank to nothing before ε came within the tolerance of the target.
    #[error("no noise multiplier brings epsilon within the tolerance below {target_epsilon}")]
    NoConvergence {
        /// The ε asked for.
        target_epsilon: f64,
    },
    /// The RDP series at an order broke down numerically (a NaN term, a negative partial sum or
    /// no convergence), which parameters this extreme can cause.
    #[error("the RDP at order {order} could not be computed for these parameters")]
    Numerical {
        /// The order whose series failed.
        order: f64,
    },
    /// A discrete Gaussian's σ is NaN, negative or infinite.
    #[error("discrete Gaussian sigma {0} is not a finite number at least 0")]
    DiscreteGaussianSigma(f64),
    /// A privacy loss distribution would need more grid points (or noise support points) than
    /// the PLD accountant holds ([`crate::pld::MAX_POINTS`], [`crate::pld::MAX_SUPPORT`]): the
    /// noise is far too small, or far too wide, for its sensitivity.
    #[error(
        "the privacy loss distribution would need {points} points, more than the PLD accountant holds"
    )]
    PldTooLarge {
        /// Points it would need (`u64::MAX`: more than that).
        points: u64,
    },
    /// A discrete Gaussian's sensitivity is more than twice the PLD accountant's cut-off of its
    /// noise (11.6σ): the patient's shift alone would reveal them.
    #[error(
        "sensitivity {sensitivity} is more than 23.2 times the discrete Gaussian sigma {sigma}"
    )]
    SensitivityTooLarge {
        /// The sensitivity.
        sensitivity: u64,
        /// The noise's σ.
        sigma: f64,
    },
    /// The grid step of a privacy loss distribution is not a positive finite number, or two
    /// distributions being composed have different steps.
    #[error("privacy loss grid interval {0} is not a positive finite number equal for all parts")]
    PldInterval(f64),
    /// A mechanism's δ(ε) curve came out rising (or NaN) where it must fall, so the privacy loss
    /// distribution could not be built; parameters this extreme can cause it.
    #[error("the privacy loss distribution could not be computed for these parameters")]
    PldNumerical,
    /// A sensitivity is NaN, negative or infinite.
    #[error("sensitivity {0} is not a finite number at least 0")]
    Sensitivity(f64),
    /// A distributed release with no coordinates or no noise shares.
    #[error(
        "a distributed discrete Gaussian needs at least one coordinate and one share, not {dimension} and {summands}"
    )]
    DistributedShape {
        /// Coordinates.
        dimension: u64,
        /// Shares.
        summands: u64,
    },
    /// Each share of a distributed release has σ below
    /// [`MIN_SHARE_SIGMA`](crate::distributed_dp::MIN_SHARE_SIGMA), where the
    /// sum-of-discrete-Gaussians bound is not used.
    #[error("each noise share has sigma {0}, below the 1 the distributed bound needs")]
    ShareSigma(f64),
    /// The PLD accountant has no distribution for this mechanism (callers convert from RDP).
    #[error("the privacy loss distribution accountant cannot represent this mechanism")]
    PldUnsupported,
}

/// Terms a fractional order's series may take before [`PrivacyError::Numerical`]; ordinary
/// parameters need at most a few hundred thousand.
const MAX_SERIES_TERMS: u64 = 10_000_000;

/// `1 + x / 10` for `x` in `1..100`, then `12..64`, computed as Opacus does so that every order is
/// the same `f64`.
const fn default_alphas() -> [f64; 151] {
    let mut out = [0.0; 151];
    let mut x = 1;
    while x < 100 {
        out[x - 1] = 1.0 + x as f64 / 10.0;
        x += 1;
    }
    let mut n = 12;
    while n < 64 {
        out[99 + n - 12] = n as f64;
        n += 1;
    }
    out
}

fn check_sampling_rate(q: f64) -> Result<(), PrivacyError> {
    if (0.0..=1.0).contains(&q) {
        Ok(())
    } else {
        Err(PrivacyError::SamplingRate(q))
    }
}

fn check_noise_multiplier(sigma: f64) -> Result<(), PrivacyError> {
    if sigma.is_finite() && sigma >= 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::NoiseMultiplier(sigma))
    }
}

fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::Delta(delta))
    }
}

fn check_orders(orders: &[f64]) -> Result<(), PrivacyError> {
    if orders.is_empty() {
        return Err(PrivacyError::NoOrders);
    }
    match orders.iter().find(|&&alpha| alpha.is_nan() || alpha <= 1.0) {
        Some(&alpha) => Err(PrivacyError::Order(alpha)),
        None => Ok(()),
    }
}

/// Opacus's `_compute_rdp`: the RDP of one step at order `alpha`, inputs already checked.
fn rdp_per_step(q: f64, sigma: f64, alpha: f64) -> Result<f64, PrivacyError> {
    if q == 0.0 {
        return Ok(0.0);
    }
    if sigma == 0.0 {
        return Ok(f64::INFINITY);
    }
    if q == 1.0 {
        return Ok(alpha / (2.0 * sigma * sigma));
    }
    if alpha.is_infinite() {
        return Ok(f64::INFINITY);
    }
    let log_a = if alpha.fract() == 0.0 {
        log_a_int(q, sigma, alpha)
    } else {
        log_a_frac(q, sigma, alpha)
    };
    match log_a {
        Some(log_a) if !log_a.is_nan() => Ok(log_a / (alpha - 1.0)),
        _ => Err(PrivacyError::Numerical { order: alpha }),
    }
}

/// `log A_α` for an integer order `alpha` and `0 < q < 1` (Mironov et al., Section 3.3): the
/// binomial sum `Σ_i C(α, i) q^i (1 − q)^(α − i) exp((i² − i) / 2σ²)` in log space.
fn log_a_int(q: f64, sigma: f64, alpha: f64) -> Option<f64> {
    let ln_q = q.ln();
    let ln_1mq = (1.0 - q).ln();
    let two_var = 2.0 * (sigma * sigma);
    let mut log_a = f64::NEG_INFINITY;
    // ln C(α, i), built up term by term so that it never overflows.
    let mut log_binom = 0.0;
    let mut i = 0.0;
    while i <= alpha {
        if i > 0.0 {
            log_binom += ((alpha - i + 1.0) / i).ln();
        }
        let log_coef = log_binom + i * ln_q + (alpha - i) * ln_1mq;
        let s = log_coef + (i * i - i) / two_var;
        if s.is_nan() {
            return None;
        }
        log_a = log_add(log_a, s);
        i += 1.0;
    }
    Some(log_a)
}

/// `log A_α` for a fractional order `alpha` and `0 < q < 1`: the two series of Mironov et al.,
/// Section 3.3, over `(−∞, z₀]` and `[z₀, ∞)`, summed until both terms fall below `e^-30`.
fn log_a_frac(q: f64, sigma: f64, alpha: f64) -> Option<f64> {
    let ln_q = q.ln();
    let ln_1mq = (1.0 - q).ln();
    let var = sigma * sigma;
    let two_var = 2.0 * var;
    let sqrt2_sigma = SQRT_2 * sigma;
    let z0 = var * (1.0 / q - 1.0).ln() + 0.5;

    let mut log_a0 = f64::NEG_INFINITY;
    let mut log_a1 = f64::NEG_INFINITY;
    // ln |C(α, i)| and the sign of C(α, i), built up term by term.
    let mut log_binom = 0.0;
    let mut positive = true;
    let mut i = 0.0;
    for term in 0..MAX_SERIES_TERMS {
        if term > 0 {
            let factor = alpha - i + 1.0;
            log_binom += factor.abs().ln() - i.ln();
            if factor < 0.0 {
                positive = !positive;
            }
        }
        let j = alpha - i;
        let log_t0 = log_binom + i * ln_q + j * ln_1mq;
        let log_t1 = log_binom + j * ln_q + i * ln_1mq;
        let log_e0 = -LN_2 + log_erfc((i - z0) / sqrt2_sigma);
        let log_e1 = -LN_2 + log_erfc((z0 - j) / sqrt2_sigma);
        let log_s0 = log_t0 + (i * i - i) / two_var + log_e0;
        let log_s1 = log_t1 + (j * j - j) / two_var + log_e1;
        if log_s0.is_nan() || log_s1.is_nan() {
            return None;
        }
        if positive {
            log_a0 = log_add(log_a0, log_s0);
            log_a1 = log_add(log_a1, log_s1);
        } else {
            log_a0 = log_sub(log_a0, log_s0)?;
            log_a1 = log_sub(log_a1, log_s1)?;
        }
        if log_s0.max(log_s1) < -30.0 {
            return Some(log_add(log_a0, log_a1));
        }
        i += 1.0;
    }
    None
}

/// `ln(eˣ + eʸ)`, exact when either is `−∞` (zero).
pub(crate) fn log_add(x: f64, y: f64) -> f64 {
    let (a, b) = (x.min(y), x.max(y));
    if a == f64::NEG_INFINITY {
        return b;
    }
    (a - b).exp().ln_1p() + b
}

/// `ln(eˣ − eʸ)`, or `None` where that would be the log of a negative number.
fn log_sub(x: f64, y: f64) -> Option<f64> {
    if x < y {
        return None;
    }
    if y == f64::NEG_INFINITY {
        return Some(x);
    }
    if x == y {
        return Some(f64::NEG_INFINITY);
    }
    let diff = (x - y).exp_m1();
    if diff.is_infinite() {
        // eʸ is lost in rounding against eˣ (Opacus catches the same overflow).
        return Some(x);
    }
    Some(diff.ln() + y)
}

/// Where [`log_erfc`] switches from the power series of erf to the continued fraction of erfc.
const ERFC_SERIES_LIMIT: f64 = 1.0;

/// `ln erfc(x)`, accurate to a few units in the last place of `max(1, |ln erfc(x)|)` for every
/// `x`, including large ones where `erfc(x)` itself underflows (Opacus uses scipy's `log_ndtr`).
pub(crate) fn log_erfc(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    if x >= ERFC_SERIES_LIMIT {
        if x == f64::INFINITY {
            return f64::NEG_INFINITY;
        }
        // erfc(x) = e^(−x²) / (√π · g(x)), g from the continued fraction.
        return -x * x - 0.5 * PI.ln() - erfc_continued_fraction(x).ln();
    }
    if x > -ERFC_SERIES_LIMIT {
        let erf = erf_series(x.abs());
        return if x >= 0.0 {
            (-erf).ln_1p()
        } else {
            erf.ln_1p()
        };
    }
    // erfc(x) = 2 − erfc(−x) for negative x.
    (2.0 - log_erfc(-x).exp()).ln()
}

/// `erf(x)` for `0 ≤ x < 1` from the series `2x/√π · e^(−x²) · Σ (2x²)ⁿ / (2n + 1)!!`, whose
/// terms are all positive.
fn erf_series(x: f64) -> f64 {
    let x2 = 2.0 * x * x;
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut n = 0.0;
    // For x < 1 the terms fall below 1e-17 of the sum within about 20 steps.
    while term > 1e-17 * sum {
        n += 1.0;
        term *= x2 / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 * x / PI.sqrt() * (-x * x).exp() * sum
}

/// `g(x) = x + (1/2) / (x + 1 / (x + (3/2) / (x + 2 / (x + …))))` for `x ≥ 1` (so that
/// `erfc(x) = e^(−x²) / (√π · g(x))`), by the modified Lentz method.
fn erfc_continued_fraction(x: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut f = x;
    let mut c = x;
    let mut d = 0.0;
    // At x = 1 this converges in under 200 steps, and faster for larger x.
    let mut n = 1.0;
    while n < 1000.0 {
        let a = n / 2.0;
        d = x + a * d;
        if d == 0.0 {
            d = TINY;
        }
        c = x + a / c;
        if c == 0.0 {
            c = TINY;
        }
        d = 1.0 / d;
        let delta = c * d;
        f *= delta;
        if (delta - 1.0).abs() <= f64::EPSILON {
            break;
        }
        n += 1.0;
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: f64, expected: f64, rel: f64, abs: f64) -> bool {
        (actual - expected).abs() <= abs.max(rel * expected.abs())
    }

    #[test]
    fn default_alphas_are_opacus_orders() {
        assert_eq!(DEFAULT_ALPHAS.len(), 151);
        assert_eq!(DEFAULT_ALPHAS[0], 1.1);
        assert_eq!(DEFAULT_ALPHAS[98], 10.9);
        assert_eq!(DEFAULT_ALPHAS[99], 12.0);
        assert_eq!(DEFAULT_ALPHAS[150], 63.0);
        assert!(DEFAULT_ALPHAS.windows(2).all(|w| w[0] < w[1]));
        // 1 + 10/10 must be exactly 2 so that it takes the integer path, as in Opacus.
        assert_eq!(DEFAULT_ALPHAS[9], 2.0);
    }

    #[test]
    fn published_mnist_epsilon() {
        // q = 0.04, σ = 1.5, 90 epochs of 25 steps each, δ = 1e-5.
        let (eps, order) = epsilon(0.04, 1.5, 2250, 1e-5).unwrap();
        assert!(close(eps, 7.32911117143, 0.0, 1e-6), "{eps}");
        assert_eq!(order, 3.9);
    }

    #[test]
    fn published_noise_multiplier() {
        let sigma = noise_multiplier_for(8.0, 1e-5, 0.04, 2250, DEFAULT_EPSILON_TOLERANCE).unwrap();
        assert_eq!(sigma, 1.416015625);
        assert!(epsilon(0.04, sigma, 2250, 1e-5).unwrap().0 <= 8.0);
    }

    #[test]
    fn published_full_batch_gaussian() {
        let (eps, order) = epsilon(1.0, 1.0, 1, 1e-5).unwrap();
        assert!(close(eps, 4.7285, 0.0, 1e-4), "{eps}");
        assert_eq!(order, 5.4);
    }

    #[test]
    fn matches_opacus_vectors() {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/opacus_rdp.json")).unwrap();
        let cases = fixture["epsilon"].as_array().unwrap();
        assert!(cases.len() >= 40);
        for case in cases {
            let q = case["q"].as_f64().unwrap();
            let sigma = case["sigma"].as_f64().unwrap();
            let steps = case["steps"].as_u64().unwrap();
            let delta = case["delta"].as_f64().unwrap();
            let expected = case["epsilon"].as_f64().unwrap();
            let (eps, order) = epsilon(q, sigma, steps, delta).unwrap();
            assert!(close(eps, expected, 1e-6, 1e-8), "{case}: got {eps}");
            assert_eq!(order, case["order"].as_f64().unwrap(), "{case}");
        }
        let cases = fixture["noise_multiplier"].as_array().unwrap();
        assert!(cases.len() >= 8);
        for case in cases {
            let sigma = noise_multiplier_for(
                case["target_epsilon"].as_f64().unwrap(),
                case["delta"].as_f64().unwrap(),
                case["q"].as_f64().unwrap(),
                case["steps"].as_u64().unwrap(),
                case["epsilon_tolerance"].as_f64().unwrap(),
            )
            .unwrap();
            let expected = case["sigma"].as_f64().unwrap();
            assert!(close(sigma, expected, 0.0, 1e-9), "{case}: got {sigma}");
        }
    }

    #[test]
    fn special_cases() {
        let orders = [1.5, 2.0, 32.0, f64::INFINITY];
        assert_eq!(compute_rdp(0.0, 0.0, 10, &orders).unwrap(), [0.0; 4]);
        assert_eq!(compute_rdp(0.3, 1.0, 0, &orders).unwrap(), [0.0; 4]);
        assert!(
            compute_rdp(0.3, 0.0, 1, &orders)
                .unwrap()
                .iter()
                .all(|r| r.is_infinite())
        );
        assert_eq!(
            compute_rdp(1.0, 2.0, 3, &orders[..3]).unwrap(),
            [3.0 * 1.5 / 8.0, 3.0 * 2.0 / 8.0, 3.0 * 32.0 / 8.0]
        );
        let rdp = compute_rdp(0.3, 1.0, 1, &orders).unwrap();
        assert!(rdp[3].is_infinite());
        // Subsampling amplifies privacy: less than the full-batch α / 2σ².
        assert!(
            rdp[..3]
                .iter()
                .zip(&orders)
                .all(|(&r, &a)| r > 0.0 && r < a / 2.0)
        );
        // No privacy at all: ε is infinite.
        assert_eq!(epsilon(0.3, 0.0, 1, 1e-5).unwrap().0, f64::INFINITY);
    }

    #[test]
    fn nan_rdp_values_are_skipped() {
        let orders = [2.0, 3.0];
        let (eps, order) = get_privacy_spent(&orders, &[f64::NAN, 1.0], 1e-5).unwrap();
        assert_eq!(order, 3.0);
        assert!(eps.is_finite());
        let (eps, order) = get_privacy_spent(&orders, &[f64::NAN, f64::NAN], 1e-5).unwrap();
        assert_eq!(eps, f64::INFINITY);
        assert!(order.is_nan());
    }

    #[test]
    fn bad_inputs_are_errors() {
        use PrivacyError as E;
        let orders = [2.0];
        assert_eq!(
            compute_rdp(-0.1, 1.0, 1, &orders),
            Err(E::SamplingRate(-0.1))
        );
        assert_eq!(compute_rdp(1.5, 1.0, 1, &orders), Err(E::SamplingRate(1.5)));
        assert!(matches!(
            compute_rdp(f64::NAN, 1.0, 1, &orders),
            Err(E::SamplingRate(_))
        ));
        assert_eq!(
            compute_rdp(0.1, -1.0, 1, &orders),
            Err(E::NoiseMultiplier(-1.0))
        );
        assert!(matches!(
            compute_rdp(0.1, f64::NAN, 1, &orders),
            Err(E::NoiseMultiplier(_))
        ));
        assert_eq!(
            compute_rdp(0.1, f64::INFINITY, 1, &orders),
            Err(E::NoiseMultiplier(f64::INFINITY))
        );
        assert_eq!(compute_rdp(0.1, 1.0, 1, &[]), Err(E::NoOrders));
        assert_eq!(compute_rdp(0.1, 1.0, 1, &[2.0, 1.0]), Err(E::Order(1.0)));
        assert!(matches!(
            compute_rdp(0.1, 1.0, 1, &[f64::NAN]),
            Err(E::Order(_))
        ));
        assert_eq!(
            get_privacy_spent(&[2.0, 3.0], &[1.0], 1e-5),
            Err(E::LengthMismatch { orders: 2, rdp: 1 })
        );
        for delta in [0.0, 1.0, -1e-5, f64::NAN] {
            assert!(matches!(epsilon(0.1, 1.0, 1, delta), Err(E::Delta(_))));
        }
        assert_eq!(
            noise_multiplier_for(0.0, 1e-5, 0.1, 1, 0.01),
            Err(E::TargetEpsilon(0.0))
        );
        assert_eq!(
            noise_multiplier_for(1.0, 1e-5, 0.1, 1, 0.0),
            Err(E::EpsilonTolerance(0.0))
        );
        // Even with no RDP at all, δ = 1e-5 costs about 0.1 at the largest default order.
        assert_eq!(
            noise_multiplier_for(0.05, 1e-5, 1.0, 1, 0.01),
            Err(E::BudgetTooLow {
                target_epsilon: 0.05
            })
        );
        // With q = 0, ε does not depend on σ; Opacus would bisect forever.
        assert_eq!(
            noise_multiplier_for(5.0, 1e-5, 0.0, 1, 0.01),
            Err(E::NoConvergence {
                target_epsilon: 5.0
            })
        );
        // σ² underflows: the series has no meaning left, and says so.
        assert!(matches!(
            compute_rdp(0.1, 1e-170, 1, &orders),
            Err(E::Numerical { .. })
        ));
    }

    #[test]
    fn noise_multiplier_alongside_leaves_room_for_the_other_releases() {
        let (target, delta, q, steps) = (4.0, 1e-5, 0.05, 300);
        let alone = noise_multiplier_for(target, delta, q, steps, 0.01).unwrap();
        assert_eq!(
            noise_multiplier_alongside(target, delta, q, steps, 0.01, &[]).unwrap(),
            alone
        );
        // Four Gaussian-mechanism releases at noise multiplier 5 beside the run.
        let other = compute_rdp(1.0, 5.0, 4, &DEFAULT_ALPHAS).unwrap();
        let sigma = noise_multiplier_alongside(target, delta, q, steps, 0.01, &other).unwrap();
        assert!(sigma > alone, "{sigma} vs {alone}");
        let mut total = compute_rdp(q, sigma, steps, &DEFAULT_ALPHAS).unwrap();
        total.iter_mut().zip(&other).for_each(|(t, o)| *t += o);
        let spent = get_privacy_spent(&DEFAULT_ALPHAS, &total, delta).unwrap().0;
        assert!(spent <= target && target - spent <= 0.01, "{spent}");
        assert!(matches!(
            noise_multiplier_alongside(target, delta, q, steps, 0.01, &[0.0; 3]),
            Err(PrivacyError::LengthMismatch { .. })
        ));
    }

    #[test]
    fn extreme_noise_stays_finite() {
        let rdp = compute_rdp(0.5, 1e6, 1, &[1.5, 2.0]).unwrap();
        assert!(
            rdp.iter().all(|r| r.is_finite() && *r >= 0.0 && *r < 1e-9),
            "{rdp:?}"
        );
    }

    #[test]
    fn log_erfc_matches_high_precision_values() {
        // ln erfc(x) from mpmath at 40 digits.
        let reference = [
            (-30.0, LN_2),
            (-3.0, 0.6931361352504468),
            (-0.5, 0.41903914777555956),
            (0.0, 0.0),
            (0.3, -0.3984300514400853),
            (0.99, -1.823300103854902),
            (1.0, -1.8496055099332482),
            (2.0, -5.364941264616638),
            (5.0, -27.200889545537436),
            (26.5, -706.100220410148),
            (30.0, -903.9741171106439),
            (1000.0, -1000007.4801207219),
            (1e6, -1000000000014.3878),
        ];
        for (x, expected) in reference {
            let got = log_erfc(x);
            assert!(
                close(got, expected, 4e-15, 4e-15),
                "ln erfc({x}) = {got}, not {expected}"
            );
        }
        assert_eq!(log_erfc(f64::INFINITY), f64::NEG_INFINITY);
        assert!(close(log_erfc(f64::NEG_INFINITY), LN_2, 0.0, 1e-16));
        assert!(log_erfc(f64::NAN).is_nan());
    }
}
