//! Exact sampling from the discrete Gaussian distribution on the integers.
//!
//! The discrete Gaussian `N_Z(0, σ²)` gives each integer `x` probability proportional to
//! `exp(−x² / (2σ²))`. Added to an integer-valued query whose L2 sensitivity is `Δ`, it satisfies
//! `Δ² / (2σ²)`-zero-concentrated differential privacy, that is Rényi DP of order `α` at
//! `α·Δ² / (2σ²)` for every `α > 1` — the same bound as the continuous Gaussian mechanism — and
//! the bound holds for a vector of independent draws with `Δ` the L2 sensitivity of the whole
//! vector (Canonne, Kamath and Steinke, "The Discrete Gaussian for Differential Privacy",
//! NeurIPS 2020, Theorems 4 and 14). Unlike rounded floating-point Gaussian noise it has no
//! floating-point artefacts that leak the value it hides.
//!
//! [`DiscreteGaussian::sample`] is their Algorithm 3: draw `Y` from the discrete Laplace
//! distribution of scale `t = ⌊σ⌋ + 1` (their Algorithm 2) and accept it with probability
//! `exp(−(|Y| − σ²/t)² / (2σ²))`, where every Bernoulli trial of the form `exp(−γ)` is their
//! Algorithm 1 on the exact rational `γ`. Every step uses integer arithmetic and uniform integers
//! drawn by rejection, so no step rounds. σ² is held as the rational `a / 2^k` just above the
//! requested σ² (never below it: privacy accounted at the requested σ is conservative).
//!
//! The only departure from exactness: where `γ` of an acceptance test overflows 128-bit
//! arithmetic, the proposal is rejected, as it would be with probability `1 − exp(−γ)`; `γ` is
//! then above 2^32, so this changes no probability by more than `exp(−2^32)`.
//!
//! Randomness comes in as an argument; give it a cryptographically secure generator.

use rand::RngCore;

/// The smallest σ [`DiscreteGaussian::new`] accepts.
pub const MIN_SIGMA: f64 = 1e-3;

/// The largest σ [`DiscreteGaussian::new`] accepts (the bound that keeps the exact arithmetic
/// within 128 bits).
pub const MAX_SIGMA: f64 = 1e7;

/// A sampler of the discrete Gaussian `N_Z(0, σ²)`. Build it with [`DiscreteGaussian::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscreteGaussian {
    /// σ² = `sigma2_num / sigma2_den`.
    sigma2_num: u128,
    /// A power of two.
    sigma2_den: u128,
    /// The discrete Laplace scale of the proposal, ⌊σ⌋ + 1.
    t: u128,
    /// `2 · σ2_num · σ2_den · t²`: the denominator of every acceptance exponent.
    gamma_den: u128,
}

/// Why a sampler could not be built.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscreteGaussianError {
    /// σ is NaN or outside [`MIN_SIGMA`]..=[`MAX_SIGMA`].
    #[error("discrete Gaussian σ {0} is not in [{MIN_SIGMA}, {MAX_SIGMA}]")]
    Sigma(f64),
}

impl DiscreteGaussian {
    /// A sampler whose σ² is the smallest rational `a / 2^k` (for the `k` chosen from σ's
    /// magnitude) at least `sigma²`.
    pub fn new(sigma: f64) -> Result<Self, DiscreteGaussianError> {
        if !(MIN_SIGMA..=MAX_SIGMA).contains(&sigma) {
            return Err(DiscreteGaussianError::Sigma(sigma));
        }
        let sigma2 = sigma * sigma;
        // About 32 significant bits below the binary point of σ² or more: a ≈ 2^32 for
        // σ² ≤ 2^32, else a = ⌈σ²⌉ + 1 with k = 0.
        let exponent = sigma2.log2().floor() as i32;
        let k = (32 - exponent).max(0);
        let scale = 2f64.powi(k);
        // `sigma2 · scale` is exact (a power-of-two scaling of an f64 that does not underflow);
        // the f64 product σ·σ may be below the real σ² by half an ulp, which is less than 1
        // here, so adding 1 after the ceiling keeps a / 2^k at or above the real σ².
        let sigma2_num = (sigma2 * scale).ceil() as u128 + 1;
        let sigma2_den = 1u128 << k;
        let t = (sigma2_num / sigma2_den).isqrt() + 1;
        // Within range by the bounds on σ: at most about 2^94.
        let gamma_den = 2 * sigma2_num * sigma2_den * t * t;
        Ok(Self {
            sigma2_num,
            sigma2_den,
            t,
            gamma_den,
        })
    }

    /// The σ actually sampled with, `sqrt(a / 2^k)`: at least the requested σ, and above it
    /// by less than one part in 2^31.
    pub fn sigma(&self) -> f64 {
        (self.sigma2_num as f64 / self.sigma2_den as f64).sqrt()
    }

    /// One draw from `N_Z(0, σ²)`.
    pub fn sample<R: RngCore + ?Sized>(&self, rng: &mut R) -> i64 {
        loop {
            let y = discrete_laplace(self.t, rng);
            // γ = (|y| − σ²/t)² / (2σ²) = (|y|·den·t − num)² / (2·num·den·t²).
            let numerator = u128::from(y.unsigned_abs())
                .checked_mul(self.sigma2_den)
                .and_then(|v| v.checked_mul(self.t))
                .map(|v| v.abs_diff(self.sigma2_num))
                .and_then(|v| v.checked_mul(v));
            // An overflow means γ > 2^32: reject, as happens with probability 1 − exp(−γ).
            if let Some(numerator) = numerator
                && bernoulli_exp(numerator, self.gamma_den, rng)
            {
                return y;
            }
        }
    }
}

/// A uniform integer in `[0, n)`, `n ≥ 1`, by rejection from the next power of two.
fn uniform_below<R: RngCore + ?Sized>(n: u128, rng: &mut R) -> u128 {
    let bits = 128 - (n - 1).leading_zeros();
    if bits == 0 {
        return 0;
    }
    loop {
        let word = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
        let x = word >> (128 - bits);
        if x < n {
            return x;
        }
    }
}

/// A Bernoulli trial of probability `numerator / denominator` (at most 1, denominator ≥ 1).
fn bernoulli<R: RngCore + ?Sized>(numerator: u128, denominator: u128, rng: &mut R) -> bool {
    uniform_below(denominator, rng) < numerator
}

/// A Bernoulli trial of probability `exp(−γ)`, `γ = numerator / denominator ≥ 0`
/// (Canonne–Kamath–Steinke Algorithm 1).
fn bernoulli_exp<R: RngCore + ?Sized>(mut numerator: u128, denominator: u128, rng: &mut R) -> bool {
    // exp(−γ) = exp(−1)^⌊γ⌋ · exp(−(γ − ⌊γ⌋)): one exp(−1) trial per whole unit of γ.
    while numerator > denominator {
        if !bernoulli_exp_at_most_one(1, 1, rng) {
            return false;
        }
        numerator -= denominator;
    }
    bernoulli_exp_at_most_one(numerator, denominator, rng)
}

/// A Bernoulli trial of probability `exp(−γ)` for `γ = numerator / denominator ∈ [0, 1]`: the
/// parity of the first `k` at which a Bernoulli(γ/k) trial fails.
fn bernoulli_exp_at_most_one<R: RngCore + ?Sized>(
    numerator: u128,
    denominator: u128,
    rng: &mut R,
) -> bool {
    let mut k: u128 = 1;
    // Reaching a `k` where `denominator · k` overflows (denominators stay below 2^95) takes
    // 2^33 successes in a row, the k-th of probability at most 1/k: it never happens.
    while let Some(scaled) = denominator.checked_mul(k) {
        if !bernoulli(numerator, scaled, rng) {
            break;
        }
        k += 1;
    }
    k % 2 == 1
}

/// A draw from the discrete Laplace distribution of scale `t ≥ 1`, `P(x) ∝ exp(−|x|/t)`
/// (Canonne–Kamath–Steinke Algorithm 2 with `s = 1`).
fn discrete_laplace<R: RngCore + ?Sized>(t: u128, rng: &mut R) -> i64 {
    loop {
        let u = uniform_below(t, rng);
        if !bernoulli_exp(u, t, rng) {
            continue;
        }
        let mut v: u128 = 0;
        while bernoulli_exp_at_most_one(1, 1, rng) {
            v += 1;
        }
        let negative = rng.next_u32() & 1 == 1;
        let Some(x) = t
            .checked_mul(v)
            .and_then(|tv| tv.checked_add(u))
            .and_then(|x| i64::try_from(x).ok())
        else {
            // Beyond 2^63: impossible in practice (probability below exp(−2^40)).
            continue;
        };
        if negative && x == 0 {
            continue;
        }
        return if negative { -x } else { x };
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    fn draws(sigma: f64, n: usize, seed: u64) -> Vec<i64> {
        let sampler = DiscreteGaussian::new(sigma).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        (0..n).map(|_| sampler.sample(&mut rng)).collect()
    }

    fn mean_and_variance(xs: &[i64]) -> (f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = xs.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, var)
    }

    /// The exact variance of N_Z(0, σ²), summed over the integers where the mass is not
    /// negligible.
    pub(crate) fn exact_variance(sigma: f64) -> f64 {
        let reach = (40.0 * sigma).ceil() as i64 + 5;
        let (mut mass, mut second) = (0.0, 0.0);
        for x in -reach..=reach {
            let p = (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp();
            mass += p;
            second += p * (x as f64).powi(2);
        }
        second / mass
    }

    #[test]
    fn mean_is_zero_and_variance_is_that_of_the_discrete_gaussian() {
        for (sigma, n) in [(0.7, 30_000), (3.0, 30_000), (25.0, 20_000)] {
            let xs = draws(sigma, n, 7);
            let (mean, var) = mean_and_variance(&xs);
            let expected = exact_variance(sigma);
            // Standard error of the mean σ/√n, of the variance about σ²·√(2/n): 5 of each.
            let mean_tolerance = 5.0 * sigma / (n as f64).sqrt();
            let var_tolerance = 5.0 * expected * (2.0 / n as f64).sqrt();
            assert!(mean.abs() < mean_tolerance, "σ = {sigma}: mean {mean}");
            assert!(
                (var - expected).abs() < var_tolerance,
                "σ = {sigma}: variance {var}, expected {expected}"
            );
        }
        // For σ below 1 the variance is well below σ²: the distribution is not a rounded
        // continuous Gaussian.
        assert!(exact_variance(0.5) < 0.25 * 0.95);
    }

    #[test]
    fn frequencies_fit_the_probability_mass_function() {
        // Pearson's χ² over the cells −7..=7 and the two tails, 16 degrees of freedom; the
        // 99.9% quantile of χ²(16) is 39.25.
        let sigma = 2.5;
        let n = 40_000;
        let xs = draws(sigma, n, 42);
        let pmf = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp();
        let mass: f64 = (-200..=200).map(pmf).sum();
        // Cells as inclusive ranges with their probabilities.
        let tail: f64 = (8..=200).map(pmf).sum::<f64>() / mass;
        let mut cells = vec![(i64::MIN, -8, tail)];
        cells.extend((-7..=7).map(|v| (v, v, pmf(v) / mass)));
        cells.push((8, i64::MAX, tail));
        let chi2: f64 = cells
            .iter()
            .map(|&(low, high, p)| {
                let observed = xs.iter().filter(|&&x| (low..=high).contains(&x)).count() as f64;
                let expected = p * n as f64;
                (observed - expected).powi(2) / expected
            })
            .sum();
        assert!(chi2 < 39.25, "χ² = {chi2}");
        // Symmetric, and the mode is 0.
        let zeros = xs.iter().filter(|&&x| x == 0).count();
        let ones = xs.iter().filter(|&&x| x == 1).count();
        let minus_ones = xs.iter().filter(|&&x| x == -1).count();
        assert!(zeros > ones && zeros > minus_ones);
        assert!((ones as f64 - minus_ones as f64).abs() < 5.0 * (ones as f64).sqrt());
    }

    #[test]
    fn bernoulli_exp_has_probability_exp_minus_gamma() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let n = 20_000;
        for (num, den) in [(0u128, 1u128), (1, 2), (1, 1), (5, 2), (7, 3)] {
            let hits = (0..n).filter(|_| bernoulli_exp(num, den, &mut rng)).count();
            let p = (-(num as f64) / den as f64).exp();
            let observed = hits as f64 / n as f64;
            let tolerance = 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 1e-9;
            assert!(
                (observed - p).abs() <= tolerance,
                "{num}/{den}: {observed} vs {p}"
            );
        }
    }

    #[test]
    fn uniform_below_covers_its_range_evenly() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let mut counts = [0usize; 3];
        for _ in 0..30_000 {
            counts[uniform_below(3, &mut rng) as usize] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(uniform_below(1, &mut rng), 0);
    }

    #[test]
    fn sigma_is_held_at_or_just_above_the_request_and_out_of_range_is_refused() {
        for sigma in [MIN_SIGMA, 0.3, 1.0, 2.5, 3.0, 1234.5, MAX_SIGMA] {
            let held = DiscreteGaussian::new(sigma).unwrap().sigma();
            assert!(
                held >= sigma && held - sigma < sigma * 1e-9,
                "{sigma} → {held}"
            );
        }
        for sigma in [0.0, -1.0, f64::NAN, f64::INFINITY, MAX_SIGMA * 2.0, 1e-4] {
            assert!(
                matches!(
                    DiscreteGaussian::new(sigma),
                    Err(DiscreteGaussianError::Sigma(_))
                ),
                "{sigma}"
            );
        }
    }

    #[test]
    fn the_largest_sigma_samples_without_overflow() {
        let xs = draws(MAX_SIGMA, 1_000, 9);
        let (_, var) = mean_and_variance(&xs);
        let ratio = var / (MAX_SIGMA * MAX_SIGMA);
        assert!((0.8..1.2).contains(&ratio), "{ratio}");
    }
}
