//! The randomness of DP-SGD, drawn in Rust from the caller's CSPRNG: which examples a step
//! samples, and the Gaussian noise added to the clipped gradient sum.
//!
//! Neither uses torch's RNG, whose state is neither secret nor cryptographically strong.
//!
//! The Gaussian comes from [`rand_distr::StandardNormal`] (a ziggurat on `f64`), scaled, then
//! rounded to `f32`. Like Opacus without its `secure_mode`, it is not hardened against attacks on
//! the floating-point representation of the noise.

use rand::Rng;
use rand_distr::StandardNormal;

/// Poisson sampling: the indices in `0..rows` of the examples in one step's batch, each included
/// independently with probability `sample_rate`, in increasing order.
///
/// The batch may be empty. `sample_rate` of 1 or more takes every row.
pub(crate) fn poisson_sample<R: Rng + ?Sized>(
    rng: &mut R,
    rows: usize,
    sample_rate: f64,
) -> Vec<i64> {
    if sample_rate >= 1.0 {
        return (0..rows as i64).collect();
    }
    let sample_rate = sample_rate.max(0.0);
    let mut batch = Vec::with_capacity((rows as f64 * sample_rate * 1.2) as usize + 8);
    for i in 0..rows {
        if rng.random_bool(sample_rate) {
            batch.push(i as i64);
        }
    }
    batch
}

/// `len` independent draws from N(0, `std`²), as `f32`.
pub(crate) fn gaussian<R: Rng + ?Sized>(rng: &mut R, len: usize, std: f64) -> Vec<f32> {
    (0..len)
        .map(|_| (rng.sample::<f64, _>(StandardNormal) * std) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;

    #[test]
    fn poisson_batches_average_q_times_n() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (rows, q, steps) = (1000, 0.1, 2000);
        let mut total = 0usize;
        let mut sizes = Vec::with_capacity(steps);
        for _ in 0..steps {
            let batch = poisson_sample(&mut rng, rows, q);
            assert!(batch.windows(2).all(|w| w[0] < w[1]));
            assert!(batch.iter().all(|&i| (0..rows as i64).contains(&i)));
            total += batch.len();
            sizes.push(batch.len() as f64);
        }
        let mean = total as f64 / steps as f64;
        // Standard error of the mean: √(N q (1 − q) / steps) ≈ 0.21.
        assert!((mean - 100.0).abs() < 1.0, "mean batch size {mean}");
        let var = sizes.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / steps as f64;
        assert!((var / 90.0 - 1.0).abs() < 0.1, "batch size variance {var}");
    }

    #[test]
    fn poisson_sampling_with_rate_one_takes_every_row() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        assert_eq!(poisson_sample(&mut rng, 5, 1.0), vec![0, 1, 2, 3, 4]);
        assert!(poisson_sample(&mut rng, 0, 0.5).is_empty());
    }

    #[test]
    fn poisson_sampling_follows_the_rng() {
        let draw = |seed| poisson_sample(&mut ChaCha20Rng::seed_from_u64(seed), 200, 0.3);
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn gaussian_noise_has_the_requested_spread() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let n = 200_000;
        let noise = gaussian(&mut rng, n, 2.5);
        let mean = noise.iter().map(|&v| f64::from(v)).sum::<f64>() / n as f64;
        let var = noise
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / n as f64;
        // Standard errors: 2.5/√n ≈ 0.0056 for the mean, about 0.3% for the standard deviation.
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var.sqrt() / 2.5 - 1.0).abs() < 0.015, "std {}", var.sqrt());
        assert!(gaussian(&mut rng, 10, 0.0).iter().all(|&v| v == 0.0));
    }
}
