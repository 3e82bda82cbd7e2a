//! A discretised privacy loss distribution: probabilities on a grid of losses, plus a mass at
//! `+∞`, with composition by FFT and the conversion between ε and δ.

use realfft::RealFftPlanner;
use realfft::num_complex::Complex;

use crate::privacy::PrivacyError;

/// The most grid points one distribution may hold (64 MiB of `f64`s, about four times that at
/// the peak of a composition's FFTs). Only compositions that spend an absurd ε come near it.
pub const MAX_POINTS: usize = 1 << 23;

/// The probability mass a composition may drop from each tail, as dp_accounting's default:
/// what is dropped below is added to the lowest loss kept, what is dropped above goes to `+∞`.
pub(crate) const TAIL_MASS_TRUNCATION: f64 = 1e-15;

/// A privacy loss distribution on the grid `interval · k`: `probs[i]` is the probability of the
/// loss `(offset + i) · interval`, and `infinity_mass` that of an infinite loss.
///
/// Every distribution built here is *pessimistic*: each true loss was moved up to a grid point
/// at or above it (or spread over the two grid points around it in a way that can only raise δ,
/// the "connect the dots" construction), so the δ it gives for an ε, and the ε for a δ, are upper
/// bounds on the mechanism's.
#[derive(Clone, Debug, PartialEq)]
pub struct LossPmf {
    /// Width of one grid step, in units of loss.
    interval: f64,
    /// Grid index of `probs[0]`.
    offset: i64,
    /// Probability of each loss on the grid from `offset` on.
    probs: Vec<f64>,
    /// Probability of an infinite loss.
    infinity_mass: f64,
}

impl LossPmf {
    /// The distribution of a mechanism that reveals nothing: loss 0 with probability 1.
    pub(crate) fn identity(interval: f64) -> Self {
        Self {
            interval,
            offset: 0,
            probs: vec![1.0],
            infinity_mass: 0.0,
        }
    }

    /// A distribution from its parts; `probs` must not be empty.
    pub(crate) fn new(interval: f64, offset: i64, probs: Vec<f64>, infinity_mass: f64) -> Self {
        debug_assert!(!probs.is_empty());
        Self {
            interval,
            offset,
            probs,
            infinity_mass,
        }
    }

    /// Width of one grid step.
    pub fn interval(&self) -> f64 {
        self.interval
    }

    /// Number of grid points held (from the lowest to the highest loss kept).
    pub fn len(&self) -> usize {
        self.probs.len()
    }

    /// Whether no grid point is held; never true of a distribution built here.
    pub fn is_empty(&self) -> bool {
        self.probs.is_empty()
    }

    /// Probability of an infinite loss.
    pub fn infinity_mass(&self) -> f64 {
        self.infinity_mass
    }

    /// The lowest and highest finite losses held.
    pub fn loss_range(&self) -> (f64, f64) {
        let last = self.offset + self.probs.len() as i64 - 1;
        (self.loss(self.offset), self.loss(last))
    }

    /// The distribution of the losses of two independent mechanisms added: the convolution of
    /// the two, with at most [`TAIL_MASS_TRUNCATION`] dropped pessimistically from its tails.
    pub(crate) fn compose(&self, other: &Self) -> Result<Self, PrivacyError> {
        debug_assert_eq!(self.interval, other.interval);
        let len = self.probs.len() + other.probs.len() - 1;
        check_points(len as u128)?;
        let probs = convolve(&self.probs, &other.probs);
        let infinity_mass =
            self.infinity_mass + other.infinity_mass - self.infinity_mass * other.infinity_mass;
        let (dropped_below, probs, dropped_above) = truncate_tails(probs, TAIL_MASS_TRUNCATION);
        Ok(Self {
            interval: self.interval,
            offset: self.offset + other.offset + dropped_below as i64,
            probs,
            infinity_mass: infinity_mass + dropped_above,
        })
    }

    /// The distribution of `times` independent runs of this mechanism (`times` ≥ 1): the
    /// `times`-fold convolution, computed as one FFT raised to the power `times` over the range
    /// that a Chernoff bound shows to hold all but [`TAIL_MASS_TRUNCATION`] of the mass. That
    /// whole budget is added to the mass at `+∞`.
    pub(crate) fn self_compose(&self, times: u64) -> Result<Self, PrivacyError> {
        debug_assert!(times >= 1);
        if times == 1 {
            return Ok(self.clone());
        }
        let (lower, upper) = self_compose_bounds(&self.probs, times, TAIL_MASS_TRUNCATION);
        let out_len = (upper - lower + 1) as u128;
        check_points(out_len)?;
        let out_len = out_len as usize;
        let offset = i128::from(self.offset) * i128::from(times) + i128::from(lower);
        let offset =
            i64::try_from(offset).map_err(|_| PrivacyError::PldTooLarge { points: u64::MAX })?;
        let probs = self_convolve(&self.probs, times, lower as usize, out_len);
        let infinity_mass =
            TAIL_MASS_TRUNCATION - (times as f64 * (-self.infinity_mass).ln_1p()).exp_m1();
        Ok(Self {
            interval: self.interval,
            offset,
            probs,
            infinity_mass,
        })
    }

    /// The smallest ε ≥ 0 at which the hockey-stick divergence `E[(1 − e^(ε − L))₊]` is at most
    /// `delta`: the (ε, δ) guarantee this distribution gives. `+∞` when the mass at `+∞` alone
    /// is above `delta`.
    pub fn epsilon_for_delta(&self, delta: f64) -> f64 {
        if self.infinity_mass > delta {
            return f64::INFINITY;
        }
        // Walk down from the highest loss, keeping Σ p and Σ p·e^(−L) over the losses above the
        // candidate ε; stop once the candidate ε they give is at or above the next loss. A walk
        // that reaches a loss ≤ 0 without stopping has found ε = 0 (the δ at 0 of the losses
        // above is at most `delta`), so it stops there too, before e^(−L) can overflow.
        let mut mass_upper = self.infinity_mass;
        let mut mass_lower = 0.0;
        for (i, &p) in self.probs.iter().enumerate().rev() {
            let loss = self.loss(self.offset + i as i64);
            if loss <= 0.0 {
                break;
            }
            if mass_upper > delta
                && mass_lower > 0.0
                && ((mass_upper - delta) / mass_lower).ln() >= loss
            {
                break;
            }
            mass_upper += p;
            mass_lower += (-loss).exp() * p;
            if mass_upper >= delta && mass_lower == 0.0 {
                return loss.max(0.0);
            }
        }
        if mass_upper <= mass_lower + delta {
            return 0.0;
        }
        ((mass_upper - delta) / mass_lower).ln()
    }

    /// The hockey-stick divergence `E[(1 − e^(ε − L))₊]` (with `L = +∞` counting 1): the δ
    /// this distribution gives at `epsilon`.
    pub fn delta_for_epsilon(&self, epsilon: f64) -> f64 {
        let finite: f64 = self
            .probs
            .iter()
            .enumerate()
            .map(|(i, &p)| (self.loss(self.offset + i as i64), p))
            .filter(|&(loss, _)| loss > epsilon)
            .map(|(loss, p)| -(epsilon - loss).exp_m1() * p)
            .sum();
        self.infinity_mass + finite
    }

    /// The loss at grid index `k`.
    fn loss(&self, k: i64) -> f64 {
        k as f64 * self.interval
    }
}

/// Refuses a distribution of more than [`MAX_POINTS`] grid points.
pub(crate) fn check_points(points: u128) -> Result<(), PrivacyError> {
    if points > MAX_POINTS as u128 {
        return Err(PrivacyError::PldTooLarge {
            points: u64::try_from(points).unwrap_or(u64::MAX),
        });
    }
    Ok(())
}

/// Below this many points in the shorter input, [`convolve`] sums directly rather than by FFT.
const DIRECT_CONVOLUTION_LIMIT: usize = 64;

/// The full linear convolution of `a` and `b` (both non-empty).
fn convolve(a: &[f64], b: &[f64]) -> Vec<f64> {
    let out_len = a.len() + b.len() - 1;
    if a.len().min(b.len()) <= DIRECT_CONVOLUTION_LIMIT {
        let mut out = vec![0.0; out_len];
        for (i, &x) in a.iter().enumerate() {
            for (o, &y) in out[i..].iter_mut().zip(b) {
                *o += x * y;
            }
        }
        return out;
    }
    let n = fast_len(out_len);
    let mut planner = RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(n);
    let inverse = planner.plan_fft_inverse(n);
    let spectrum = |x: &[f64]| {
        let mut input = forward.make_input_vec();
        input[..x.len()].copy_from_slice(x);
        let mut output = forward.make_output_vec();
        // Buffers made by the plan itself have the lengths it checks.
        forward
            .process(&mut input, &mut output)
            .expect("buffers from the plan");
        output
    };
    let mut product = spectrum(a);
    for (p, q) in product.iter_mut().zip(spectrum(b)) {
        *p *= q;
    }
    real_inverse(&*inverse, product, n)[..out_len].to_vec()
}

/// The `times`-fold circular self-convolution of `probs` over `fast_len(max(out_len, len))`
/// points, read from index `lower` on for `out_len` points.
fn self_convolve(probs: &[f64], times: u64, lower: usize, out_len: usize) -> Vec<f64> {
    let n = fast_len(out_len.max(probs.len()));
    let mut planner = RealFftPlanner::<f64>::new();
    let forward = planner.plan_fft_forward(n);
    let inverse = planner.plan_fft_inverse(n);
    let mut input = forward.make_input_vec();
    input[..probs.len()].copy_from_slice(probs);
    let mut spectrum = forward.make_output_vec();
    // Buffers made by the plan itself have the lengths it checks.
    forward
        .process(&mut input, &mut spectrum)
        .expect("buffers from the plan");
    for z in spectrum.iter_mut() {
        *z = power(*z, times);
    }
    let circular = real_inverse(&*inverse, spectrum, n);
    (0..out_len).map(|j| circular[(lower + j) % n]).collect()
}

/// The inverse real FFT of `spectrum` (of a length-`n` real sequence), scaled by `1/n`.
fn real_inverse(
    inverse: &dyn realfft::ComplexToReal<f64>,
    mut spectrum: Vec<Complex<f64>>,
    n: usize,
) -> Vec<f64> {
    // The spectrum of a real sequence is real at 0 and (for even n) at n/2; clear what rounding
    // left there so that the transform takes it as such.
    if let Some(first) = spectrum.first_mut() {
        first.im = 0.0;
    }
    if n.is_multiple_of(2)
        && let Some(last) = spectrum.last_mut()
    {
        last.im = 0.0;
    }
    let mut output = inverse.make_output_vec();
    // Buffers made by the plan itself have the lengths it checks, and the imaginary parts it
    // checks were just cleared.
    inverse
        .process(&mut spectrum, &mut output)
        .expect("buffers from the plan");
    let scale = 1.0 / n as f64;
    output.iter_mut().for_each(|x| *x *= scale);
    output
}

/// `z^n` by repeated squaring.
fn power(mut z: Complex<f64>, mut n: u64) -> Complex<f64> {
    let mut result = Complex::new(1.0, 0.0);
    while n > 0 {
        if n & 1 == 1 {
            result *= z;
        }
        n >>= 1;
        if n > 0 {
            z *= z;
        }
    }
    result
}

/// The smallest `2^a · 3^b · 5^c` at least `n`: a length the FFT handles fast.
fn fast_len(n: usize) -> usize {
    let mut best = n.next_power_of_two();
    let mut p5 = 1;
    while p5 < best {
        let mut p35 = p5;
        while p35 < best {
            let mut candidate = p35;
            while candidate < n {
                candidate *= 2;
            }
            best = best.min(candidate);
            p35 *= 3;
        }
        p5 *= 5;
    }
    best
}

/// Grid indices `(lower, upper)`, from the lowest index of the `times`-fold convolution of
/// `probs`, outside which that convolution holds at most `tail` of its mass: Chernoff bounds
/// `P[S ≥ b] ≤ E[e^(tS)] / e^(tb)` at forty orders `t = ±1/len, …, ±20/len`.
fn self_compose_bounds(probs: &[f64], times: u64, tail: f64) -> (i64, i64) {
    let len = probs.len();
    let upper_bound = (len as f64 - 1.0) * times as f64;
    let (mut lower, mut upper) = (0.0, upper_bound);
    let log_bound = (2.0 / tail).ln();
    for k in (-20..0).chain(1..=20) {
        let order = f64::from(k) / len as f64;
        let mgf = moment_generating(probs, order);
        let bound = (times as f64 * mgf.ln() + log_bound) / order;
        if !bound.is_finite() {
            continue;
        }
        if order > 0.0 {
            upper = f64::min(upper, bound.ceil());
        } else {
            lower = f64::max(lower, bound.floor());
        }
    }
    let upper = upper.max(lower);
    (lower as i64, upper as i64)
}

/// `Σ_i probs[i] · e^(i · order)`, for `|order| · len ≤ 20` (so no term overflows). The powers
/// `e^(i · order)` are built by multiplication, recomputed exactly every 64 terms.
fn moment_generating(probs: &[f64], order: f64) -> f64 {
    let ratio = order.exp();
    let mut sum = 0.0;
    for (block, chunk) in probs.chunks(64).enumerate() {
        let mut power = ((block * 64) as f64 * order).exp();
        for &p in chunk {
            sum += p * power;
            power *= ratio;
        }
    }
    sum
}

/// Drops at most `tail / 2` of the mass from each end of `probs`: the mass dropped below is
/// added to the first point kept, the mass dropped above is returned to go to `+∞`. Returns
/// (points dropped below, points kept, mass dropped above).
fn truncate_tails(probs: Vec<f64>, tail: f64) -> (usize, Vec<f64>, f64) {
    let half = tail / 2.0;
    let first_over = |iter: &mut dyn Iterator<Item = &f64>| {
        let mut sum = 0.0;
        for (i, &p) in iter.enumerate() {
            sum += p;
            if sum > half {
                return Some(i);
            }
        }
        None
    };
    let Some(left) = first_over(&mut probs.iter()) else {
        return (0, probs, 0.0);
    };
    let right_from_end = first_over(&mut probs.iter().rev()).unwrap_or(probs.len());
    let right = (probs.len() - right_from_end).max(left + 1);
    let below: f64 = probs[..left].iter().sum();
    let above: f64 = probs[right..].iter().sum();
    let mut kept = probs[left..right].to_vec();
    kept[0] += below;
    (left, kept, above)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pmf(offset: i64, probs: &[f64], infinity_mass: f64) -> LossPmf {
        LossPmf::new(0.5, offset, probs.to_vec(), infinity_mass)
    }

    /// Whether `n` has no prime factor above 5.
    fn smooth(mut n: usize) -> bool {
        for p in [2, 3, 5] {
            while n.is_multiple_of(p) {
                n /= p;
            }
        }
        n == 1
    }

    #[test]
    fn fast_lengths_are_smooth_and_minimal() {
        assert_eq!(fast_len(1), 1);
        assert_eq!(fast_len(7), 8);
        assert_eq!(fast_len(11), 12);
        assert_eq!(fast_len(1001), 1024);
        assert_eq!(fast_len(1025), 1080);
        for n in 1..2000 {
            let m = fast_len(n);
            assert!(m >= n && smooth(m), "{n}: {m}");
            assert!((n..m).all(|k| !smooth(k)), "{n}: {m}");
        }
    }

    #[test]
    fn fft_convolution_matches_direct_sums() {
        let a: Vec<f64> = (0..300).map(|i| ((i * 7919) % 101) as f64 / 1e4).collect();
        let b: Vec<f64> = (0..200)
            .map(|i| ((i * 104_729) % 97) as f64 / 1e4)
            .collect();
        let fast = convolve(&a, &b);
        assert_eq!(fast.len(), 499);
        for (k, got) in fast.iter().enumerate() {
            let direct: f64 = (0..a.len())
                .filter(|&i| k >= i && k - i < b.len())
                .map(|i| a[i] * b[k - i])
                .sum();
            assert!((got - direct).abs() < 1e-15, "{k}: {got} vs {direct}");
        }
    }

    #[test]
    fn self_composition_is_repeated_composition() {
        let probs: Vec<f64> = (0..80).map(|i| f64::from(i % 7 + 1)).collect();
        let total: f64 = probs.iter().sum();
        let probs: Vec<f64> = probs.iter().map(|p| p * 0.99 / total).collect();
        let one = pmf(-30, &probs, 0.01);
        let mut repeated = one.clone();
        for _ in 1..5 {
            repeated = repeated.compose(&one).unwrap();
        }
        let powered = one.self_compose(5).unwrap();
        // Each truncation moves at most 1e-15 of mass; the FFTs add rounding of the same order.
        for eps in [-1.0, 0.0, 0.5, 2.0, 5.0] {
            let (a, b) = (
                powered.delta_for_epsilon(eps),
                repeated.delta_for_epsilon(eps),
            );
            assert!((a - b).abs() < 1e-13, "{eps}: {a} vs {b}");
            assert!(a >= b - 1e-15, "self-composition is pessimistic");
        }
        let inf = 1.0 - 0.99f64.powi(5);
        assert!((powered.infinity_mass() - inf - TAIL_MASS_TRUNCATION).abs() < 1e-16);
        assert_eq!(one.self_compose(1).unwrap(), one);
    }

    #[test]
    fn chernoff_bounds_hold_the_mass() {
        let probs = vec![0.25, 0.5, 0.25];
        let (lower, upper) = self_compose_bounds(&probs, 100, 1e-15);
        assert!(lower > 0 && upper < 200 && lower < 100 && upper > 100);
        // Binomial(200, 1/2): the mass outside [lower, upper] is below 1e-15.
        let ln_choose =
            |n: u64, k: u64| -> f64 { (1..=k).map(|i| ((n - k + i) as f64 / i as f64).ln()).sum() };
        let outside: f64 = (0..=200u64)
            .filter(|&k| (k as i64) < lower || (k as i64) > upper)
            .map(|k| (ln_choose(200, k) - 200.0 * 2f64.ln()).exp())
            .sum();
        assert!(outside <= 1e-15, "{outside}");
        assert_eq!(self_compose_bounds(&probs, 100, 0.0), (0, 200));
    }

    #[test]
    fn truncation_is_pessimistic() {
        let probs = vec![1e-16, 2e-16, 0.5, 0.5 - 6e-16, 1e-16, 2e-16];
        let (below, kept, above) = truncate_tails(probs, 1e-15);
        assert_eq!(below, 2);
        assert_eq!(kept.len(), 2);
        assert!((kept[0] - (0.5 + 3e-16)).abs() < 1e-17);
        assert!((above - 3e-16).abs() < 1e-20);
    }

    #[test]
    fn epsilon_and_delta_are_inverse() {
        // Randomised response with e^1 odds: losses ±1 with probabilities e/(1+e), 1/(1+e).
        let p = 1.0f64.exp() / (1.0 + 1.0f64.exp());
        let rr = LossPmf::new(1.0, -1, vec![1.0 - p, 0.0, p], 0.0);
        // ε = 1 + ln(1 − δ/p): just below the loss of 1.
        let eps = rr.epsilon_for_delta(1e-9);
        assert!((eps - (1.0 + (-1e-9 / p).ln_1p())).abs() < 1e-15, "{eps}");
        assert_eq!(rr.delta_for_epsilon(1.0), 0.0);
        let delta = rr.delta_for_epsilon(0.5);
        assert!((delta - p * (1.0 - (-0.5f64).exp())).abs() < 1e-15);
        assert!((rr.epsilon_for_delta(delta) - 0.5).abs() < 1e-12);
        assert_eq!(rr.epsilon_for_delta(0.99), 0.0);
        // Losses far below 0 (e^(−L) would overflow) do not matter to an ε ≥ 0.
        let far = LossPmf::new(
            1.0,
            -1000,
            [vec![0.5], vec![0.0; 999], vec![0.1, 0.4]].concat(),
            0.0,
        );
        let eps = far.epsilon_for_delta(1e-3);
        assert!(
            (eps - (1.0 + (-1e-3 / 0.4f64).ln_1p())).abs() < 1e-12,
            "{eps}"
        );
        assert_eq!(far.epsilon_for_delta(0.5), 0.0);
        let with_inf = LossPmf::new(1.0, 0, vec![1.0 - 1e-3], 1e-3);
        assert_eq!(with_inf.epsilon_for_delta(1e-4), f64::INFINITY);
        assert_eq!(with_inf.epsilon_for_delta(1e-3), 0.0);
        assert_eq!(with_inf.delta_for_epsilon(100.0), 1e-3);
    }
}
