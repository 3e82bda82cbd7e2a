//! The pessimistic "connect the dots" discretisation of a privacy loss distribution
//! (Doroshenko, Ghazi, Kamath, Kumar and Manurangsi, "Connect the Dots: Tighter Discrete
//! Approximations of Privacy Loss Distributions", PETS 2022, Algorithm 1).
//!
//! Given a mechanism's hockey-stick curve δ(ε) at grid losses `ε_1 < … < ε_n`, it puts mass on
//! those losses (and `δ(ε_n)` at `+∞`) so that the discrete distribution's δ(ε) is the
//! piecewise-exponential interpolation between the points `(ε_i, δ(ε_i))`. Since the true δ(ε)
//! is convex in the same sense, that interpolation lies above it: the result is pessimistic, and
//! much tighter than rounding every loss up to the grid.
//!
//! With `δ_0 = 1` below the first point, the mass on `ε_i` is
//!
//! ```text
//!  (δ_i − δ_{i−1}) / (e^(ε_{i−1} − ε_i) − 1) + (δ_{i+1} − δ_i) / (e^(ε_{i+1} − ε_i) − 1)
//! ```
//!
//! (the second term absent at `ε_n`), clipped at 0.

use super::pmf::{LossPmf, check_points};
use crate::privacy::PrivacyError;

/// How far a δ may rise from one grid loss to the next before the curve counts as broken
/// (rounding of the CDFs it is computed from), as in dp_accounting.
const DELTA_RISE_TOLERANCE: f64 = 1e-12;

/// The distribution on the contiguous grid `lower..=upper` (indices of `interval`) from the
/// δ at each of those losses. `deltas` has one entry per grid point.
pub(crate) fn fixed_gap(
    interval: f64,
    lower: i64,
    upper: i64,
    deltas: Vec<f64>,
) -> Result<LossPmf, PrivacyError> {
    debug_assert_eq!(deltas.len() as i64, upper - lower + 1);
    let deltas = non_increasing(deltas)?;
    let n = deltas.len();
    if n == 1 {
        return Ok(LossPmf::new(
            interval,
            lower,
            vec![1.0 - deltas[0]],
            deltas[0],
        ));
    }
    let up = interval.exp_m1();
    let down = (-interval).exp_m1();
    let growth = interval.exp();
    let mut probs = vec![0.0; n];
    probs[0] = 1.0 - deltas[0] + (deltas[1] - deltas[0]) / up;
    for i in 1..n - 1 {
        let (before, after) = (deltas[i] - deltas[i - 1], deltas[i + 1] - deltas[i]);
        probs[i] = (after - before * growth) / up;
    }
    probs[n - 1] = (deltas[n - 1] - deltas[n - 2]) / down;
    probs.iter_mut().for_each(|p| *p = p.max(0.0));
    Ok(LossPmf::new(interval, lower, probs, deltas[n - 1]))
}

/// The distribution on the grid losses `rounded` (strictly increasing indices of `interval`,
/// not necessarily contiguous) from the δ at each.
pub(crate) fn general(
    interval: f64,
    rounded: &[i64],
    deltas: Vec<f64>,
) -> Result<LossPmf, PrivacyError> {
    debug_assert_eq!(rounded.len(), deltas.len());
    debug_assert!(rounded.windows(2).all(|w| w[0] < w[1]));
    let (Some(&first), Some(&last)) = (rounded.first(), rounded.last()) else {
        return Err(PrivacyError::PldNumerical);
    };
    check_points((last - first + 1) as u128)?;
    let deltas = non_increasing(deltas)?;
    let mut probs = vec![0.0; (last - first + 1) as usize];
    for (i, &k) in rounded.iter().enumerate() {
        let below = if i == 0 {
            1.0 - deltas[0]
        } else {
            let gap = (rounded[i - 1] - k) as f64 * interval;
            (deltas[i] - deltas[i - 1]) / gap.exp_m1()
        };
        let above = match rounded.get(i + 1) {
            Some(&next) => (deltas[i + 1] - deltas[i]) / ((next - k) as f64 * interval).exp_m1(),
            None => 0.0,
        };
        probs[(k - first) as usize] = (below + above).max(0.0);
    }
    Ok(LossPmf::new(
        interval,
        first,
        probs,
        deltas[deltas.len() - 1],
    ))
}

/// `deltas` made non-increasing by a running minimum, after checking that no step rises by
/// more than rounding explains.
fn non_increasing(mut deltas: Vec<f64>) -> Result<Vec<f64>, PrivacyError> {
    if deltas
        .windows(2)
        .any(|w| w[1] - w[0] > DELTA_RISE_TOLERANCE || w[1].is_nan())
        || deltas.first().is_none_or(|d| d.is_nan())
    {
        return Err(PrivacyError::PldNumerical);
    }
    for i in 1..deltas.len() {
        deltas[i] = deltas[i].min(deltas[i - 1]);
    }
    Ok(deltas)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// δ(ε) of randomised response with odds e^1: losses ±1 with probabilities p, 1 − p.
    fn rr_delta(eps: f64) -> f64 {
        let p = 1f64.exp() / (1.0 + 1f64.exp());
        let mut delta = 0.0;
        if eps < 1.0 {
            delta += p * -(eps - 1.0).exp_m1();
        }
        if eps < -1.0 {
            delta += (1.0 - p) * -(eps + 1.0).exp_m1();
        }
        delta
    }

    #[test]
    fn points_on_the_support_give_the_distribution_back() {
        let pmf = general(1.0, &[-1, 1], vec![rr_delta(-1.0), rr_delta(1.0)]).unwrap();
        let p = 1f64.exp() / (1.0 + 1f64.exp());
        assert_eq!(pmf.len(), 3);
        assert_eq!(pmf.infinity_mass(), 0.0);
        for eps in [-2.0, -1.0, -0.3, 0.0, 0.4, 1.0, 3.0] {
            assert!(
                (pmf.delta_for_epsilon(eps) - rr_delta(eps)).abs() < 1e-15,
                "{eps}"
            );
        }
        assert!((pmf.epsilon_for_delta(1e-9) - 1.0).abs() < 1e-8);
        let contiguous = fixed_gap(1.0, -1, 1, (-1..=1).map(|k| rr_delta(k as f64)).collect());
        let contiguous = contiguous.unwrap();
        for eps in [-2.0, -0.3, 0.4, 3.0] {
            assert!((contiguous.delta_for_epsilon(eps) - rr_delta(eps)).abs() < 1e-15);
        }
        assert!(p > 0.5);
    }

    #[test]
    fn a_coarse_grid_is_pessimistic() {
        // Grid losses that miss the support at ±1: the interpolated δ lies above the true one.
        let pmf = general(0.7, &[-2, 0, 2], [-1.4, 0.0, 1.4].map(rr_delta).to_vec()).unwrap();
        for eps in [-1.0, -0.5, 0.0, 0.35, 0.7, 1.0] {
            assert!(pmf.delta_for_epsilon(eps) >= rr_delta(eps) - 1e-15, "{eps}");
        }
        let uneven = fixed_gap(
            0.3,
            -5,
            5,
            (-5..=5).map(|k| rr_delta(0.3 * k as f64)).collect(),
        );
        let uneven = uneven.unwrap();
        for k in -20..20 {
            let eps = 0.1 * f64::from(k);
            assert!(
                uneven.delta_for_epsilon(eps) >= rr_delta(eps) - 1e-15,
                "{eps}"
            );
        }
    }

    #[test]
    fn a_rising_curve_is_refused() {
        assert_eq!(
            fixed_gap(0.1, 0, 2, vec![0.5, 0.6, 0.1]),
            Err(PrivacyError::PldNumerical)
        );
        assert_eq!(
            general(0.1, &[0, 3], vec![f64::NAN, 0.1]),
            Err(PrivacyError::PldNumerical)
        );
        // Rounding-sized rises are smoothed out.
        let pmf = fixed_gap(0.1, 0, 2, vec![0.5, 0.5 + 1e-14, 0.1]).unwrap();
        assert!(pmf.infinity_mass() == 0.1);
    }
}
