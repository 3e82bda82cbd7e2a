//! The Rényi DP of the distributed discrete Gaussian: the sum of `k` independent discrete
//! Gaussian shares added to an integer query, optionally behind Poisson subsampling.
//!
//! # The sum of shares (no subsampling)
//!
//! Each of `k` nodes adds `N_Z(0, s²)` to every coordinate, independently; the sum is not a
//! discrete Gaussian, but it is close to `N_Z(0, k·s²)`. Kairouz, Liu and Steinke ("The
//! Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
//! ICML 2021, arXiv:2102.06387, Theorem 1) bound, for `s ≥ 1/2`, a shift `Δ ∈ Z^d` of the sum
//! of `k` such vectors by
//!
//! ```text
//!  D_α ≤ α/2 · ε²,   ε = min{ sqrt(Δ₂²/(k s²) + 2τd),  Δ₂/(√k s) + τ√d },
//!  τ = 10 · Σ_{j=1}^{k−1} exp(−2π² s² · j/(j+1))
//! ```
//!
//! and their Proposition 14 (as their released accountant computes it,
//! `compute_rdp_dgaussian` in google-research/federated `distributed_dp/accounting_utils.py`)
//! adds the L1 form `α/2 · (Δ₂²/(k s²) + 2τ·Δ₁/(√k s) + τ²d)`, below the second term since
//! `Δ₁ ≤ √d·Δ₂`. [`base_rdp`] is the least of the three. With `k = 1`, τ is 0 and the bound is
//! the discrete Gaussian's exact `α·Δ₂²/(2s²)` (Canonne, Kamath and Steinke 2020, Theorem 14).
//!
//! The sum of `k` shares is the sum of any `j ≤ k` of them plus independent noise: post-
//! processing of the `j`-share mechanism. So the `k`-share sum satisfies the bound of every
//! `j ≤ k` ([`summed_rdp`] takes the least), which makes the figure non-increasing in `k`:
//! more survivors never cost more, even where τ (which grows with `k`) is not negligible.
//!
//! # Poisson subsampling
//!
//! Each example joins the step's batch with probability `q`. Zhu and Wang ("Poisson
//! Subsampled Rényi Differential Privacy", ICML 2019, Theorem 5) bound the subsampled RDP of
//! any mechanism of RDP `ε(·)` at integer orders `α ≥ 2`:
//!
//! ```text
//!  ε_q(α) ≤ 1/(α−1) · ln[ (1−q)^{α−1}(αq − q + 1) + C(α,2) q² (1−q)^{α−2} e^{ε(2)}
//!                         + 3 Σ_{l=3}^{α} C(α,l) q^l (1−q)^{α−l} e^{(l−1)ε(l)} ]
//! ```
//!
//! which is how the DDG paper accounts for sampling (its Section 5; `_compute_rdp_subsampled`
//! in the same accountant). Subsampling never costs more than the mechanism itself (Rényi
//! divergence is jointly quasi-convex, and each sampled pair of batches differs in at most one
//! example), so [`distributed_rdp`] takes the least of the two. A fractional order α uses the
//! subsampled bound at `⌈α⌉`: Rényi divergence does not decrease with the order (van Erven and
//! Harremoës 2014, Theorem 3), so a bound at `⌈α⌉` holds at α.
//!
//! Mironov, Talwar and Zhang's exact subsampled-Gaussian RDP ([`crate::privacy::compute_rdp`])
//! is derived for continuous Gaussian noise only; it is not used here. Zhu and Wang's bound
//! differs from it only by the factor 3 on the terms `l ≥ 3`, which is `O(q³)`.

use std::f64::consts::PI;

/// Orders above this skip the subsampled bound (its sum has α terms) and keep the unsampled
/// one, which is still an upper bound.
const MAX_SUBSAMPLED_ORDER: u64 = 4096;

/// The parameters of one sum of shares, checked by the caller: sensitivities in integer units,
/// `share_sigma ≥ 1/2`, `dimension ≥ 1`, `summands ≥ 1`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SumOfShares {
    /// Δ₂: the most one example moves the integer sum, in L2.
    pub(crate) l2_sensitivity: f64,
    /// Δ₁: the same in L1.
    pub(crate) l1_sensitivity: f64,
    /// d: coordinates.
    pub(crate) dimension: u64,
    /// s: σ of each node's share on each coordinate.
    pub(crate) share_sigma: f64,
    /// k: shares in the sum.
    pub(crate) summands: u64,
}

/// The RDP at each of `orders` (above 1, checked) of `steps` runs of the sum of shares behind
/// Poisson subsampling at rate `q` (in `(0, 1]`, checked).
pub(crate) fn distributed_rdp(sum: &SumOfShares, q: f64, steps: u64, orders: &[f64]) -> Vec<f64> {
    let taus = prefix_taus(sum.share_sigma, sum.summands);
    let base = |alpha: f64| summed_rdp(sum, &taus, alpha);
    // The unsampled bound at the integer orders the subsampled one needs, computed once.
    let largest = orders
        .iter()
        .filter(|a| a.is_finite())
        .map(|&a| a.ceil() as u64)
        .filter(|&a| a <= MAX_SUBSAMPLED_ORDER)
        .max()
        .unwrap_or(2)
        .max(2);
    let at_integers: Vec<f64> = if q < 1.0 {
        (0..=largest).map(|l| base(l.max(2) as f64)).collect()
    } else {
        Vec::new()
    };
    orders
        .iter()
        .map(|&alpha| {
            if alpha.is_infinite() {
                return f64::INFINITY;
            }
            let unsampled = base(alpha);
            let ceiling = alpha.ceil() as u64;
            let per_step = if q < 1.0 && ceiling <= MAX_SUBSAMPLED_ORDER {
                unsampled.min(subsampled(q, ceiling, &at_integers))
            } else {
                unsampled
            };
            per_step * steps as f64
        })
        .collect()
}

/// `τ_j` for `j = 1..=summands` (index `j − 1`): τ of the sum of the first `j` shares.
fn prefix_taus(share_sigma: f64, summands: u64) -> Vec<f64> {
    let mut taus = Vec::with_capacity(summands as usize);
    let mut partial = 0.0;
    for j in 1..=summands {
        taus.push(10.0 * partial);
        let j = j as f64;
        partial += (-2.0 * PI * PI * share_sigma * share_sigma * j / (j + 1.0)).exp();
    }
    taus
}

/// The unsampled RDP at `alpha` of the sum of `sum.summands` shares: the least, over `j ≤ k`,
/// of the bound of `j` shares ([`base_rdp`]), by post-processing.
fn summed_rdp(sum: &SumOfShares, taus: &[f64], alpha: f64) -> f64 {
    let mut best = f64::INFINITY;
    for j in (1..=sum.summands).rev() {
        // Every term of `base_rdp` is at least α·Δ₂²/(2 j s²), which grows as j falls: once it
        // passes the best bound so far, no smaller j can do better.
        let gaussian = alpha * sum.l2_sensitivity * sum.l2_sensitivity
            / (2.0 * j as f64 * sum.share_sigma * sum.share_sigma);
        if gaussian >= best {
            break;
        }
        best = best.min(base_rdp(sum, j, taus[j as usize - 1], alpha));
    }
    best
}

/// The DDG bound at order `alpha` for the sum of `j` shares, `tau` its τ: the least of
/// Theorem 1's two forms and Proposition 14's L1 form.
fn base_rdp(sum: &SumOfShares, j: u64, tau: f64, alpha: f64) -> f64 {
    let spread = (j as f64).sqrt() * sum.share_sigma;
    let l2 = sum.l2_sensitivity / spread;
    let l1 = sum.l1_sensitivity / spread;
    let d = sum.dimension as f64;
    let first = l2 * l2 + 2.0 * tau * d;
    let l1_form = l2 * l2 + 2.0 * l1 * tau + tau * tau * d;
    let second = (l2 + tau * d.sqrt()).powi(2);
    alpha / 2.0 * first.min(l1_form).min(second)
}

/// Zhu and Wang's Theorem 5 at integer order `alpha ≥ 2`, for `0 < q < 1`, with `base[l]` the
/// unsampled RDP at order `l` for `2 ≤ l ≤ alpha`.
fn subsampled(q: f64, alpha: u64, base: &[f64]) -> f64 {
    let a = alpha as f64;
    let ln_q = q.ln();
    let ln_1q = (-q).ln_1p();
    // (1−q)^{α−1}(αq − q + 1)
    let mut total = (a - 1.0) * ln_1q + ((a - 1.0) * q).ln_1p();
    total = crate::privacy::log_add(
        total,
        ln_binomial(alpha, 2) + 2.0 * ln_q + (a - 2.0) * ln_1q + base[2],
    );
    let ln_3 = 3f64.ln();
    for l in 3..=alpha {
        let lf = l as f64;
        let term = ln_3
            + ln_binomial(alpha, l)
            + lf * ln_q
            + (a - lf) * ln_1q
            + (lf - 1.0) * base[l as usize];
        total = crate::privacy::log_add(total, term);
    }
    total / (a - 1.0)
}

/// `ln C(n, k)`.
fn ln_binomial(n: u64, k: u64) -> f64 {
    let lg = |x: u64| libm::lgamma(x as f64 + 1.0);
    lg(n) - lg(k) - lg(n - k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::{DEFAULT_ALPHAS, compute_rdp};

    /// τ of the DDG bound for `summands` shares of σ `share_sigma`:
    /// `10 · Σ_{j=1}^{summands−1} exp(−2π² s² · j/(j+1))`; 0 for one share.
    fn tau(share_sigma: f64, summands: u64) -> f64 {
        let mut tau = 0.0;
        for j in 1..summands {
            let j = j as f64;
            tau += (-2.0 * PI * PI * share_sigma * share_sigma * j / (j + 1.0)).exp();
        }
        10.0 * tau
    }

    fn shares(l2: f64, share_sigma: f64, summands: u64, dimension: u64) -> SumOfShares {
        SumOfShares {
            l2_sensitivity: l2,
            l1_sensitivity: l2 * (dimension as f64).sqrt(),
            dimension,
            share_sigma,
            summands,
        }
    }

    #[test]
    fn tau_is_the_papers_sum() {
        assert_eq!(tau(3.0, 1), 0.0);
        let s: f64 = 0.8;
        let by_hand = 10.0
            * ((-2.0 * PI * PI * s * s / 2.0).exp()
                + (-2.0 * PI * PI * s * s * 2.0 / 3.0).exp()
                + (-2.0 * PI * PI * s * s * 3.0 / 4.0).exp());
        assert!((tau(s, 4) - by_hand).abs() < 1e-15);
        assert_eq!(prefix_taus(s, 4)[3], tau(s, 4));
        // Negligible at the σ a node actually uses.
        assert!(tau(20.0, 60_000) < 1e-300);
    }

    #[test]
    fn one_share_unsampled_is_the_gaussian_rdp() {
        let sum = shares(300.0, 450.0, 1, 1000);
        let rdp = distributed_rdp(&sum, 1.0, 3, &DEFAULT_ALPHAS);
        let gaussian = compute_rdp(1.0, 1.5, 3, &DEFAULT_ALPHAS).unwrap();
        for (r, g) in rdp.iter().zip(&gaussian) {
            assert!((r - g).abs() <= 1e-12 * g, "{r} vs {g}");
        }
    }

    #[test]
    fn zhu_wang_bounds_the_exact_subsampled_gaussian_from_above_by_little() {
        // For Gaussian base RDP, Theorem 5 is Mironov et al.'s exact binomial sum with a factor
        // 3 on the terms l ≥ 3: never below it, and close at small q.
        for (q, sigma) in [(0.01, 1.0), (0.1, 2.0), (0.3, 0.9)] {
            let base: Vec<f64> = (0..=64)
                .map(|l: u64| l.max(2) as f64 / (2.0 * sigma * sigma))
                .collect();
            for alpha in [2u64, 3, 8, 32, 63] {
                let bound = subsampled(q, alpha, &base);
                let exact = compute_rdp(q, sigma, 1, &[alpha as f64]).unwrap()[0];
                assert!(
                    bound >= exact * (1.0 - 1e-12),
                    "q {q} α {alpha}: {bound} < {exact}"
                );
                assert!(
                    bound <= 3.0 * exact + 1e-12,
                    "q {q} α {alpha}: {bound} vs {exact}"
                );
            }
            // At α = 2 there is no l ≥ 3 term: the two agree.
            let two = subsampled(q, 2, &base);
            let exact = compute_rdp(q, sigma, 1, &[2.0]).unwrap()[0];
            assert!((two - exact).abs() <= 1e-12 * exact);
        }
    }

    #[test]
    fn more_summands_never_cost_more_even_where_tau_is_large() {
        // s = 0.55: τ grows by about 0.5 per extra share, the raw bound of k shares rises with
        // k at low orders, and the post-processing minimum keeps the figure non-increasing.
        let d = 50;
        let raw = |k: u64, alpha: f64| {
            let sum = shares(3.0, 0.55, k, d);
            base_rdp(&sum, k, tau(0.55, k), alpha)
        };
        assert!(raw(6, 2.0) > raw(2, 2.0), "the raw bound should rise here");
        for q in [1.0, 0.05] {
            let mut last = vec![f64::INFINITY; DEFAULT_ALPHAS.len()];
            for k in 1..=12 {
                let rdp = distributed_rdp(&shares(3.0, 0.55, k, d), q, 1, &DEFAULT_ALPHAS);
                for (r, l) in rdp.iter().zip(&last) {
                    assert!(r <= l, "q {q}, k {k}: {r} after {l}");
                }
                last = rdp;
            }
        }
    }

    #[test]
    fn subsampling_only_helps_and_fractional_orders_are_covered() {
        let sum = shares(100.0, 60.0, 3, 200);
        let full = distributed_rdp(&sum, 1.0, 1, &DEFAULT_ALPHAS);
        let sampled = distributed_rdp(&sum, 0.02, 1, &DEFAULT_ALPHAS);
        for ((f, s), alpha) in full.iter().zip(&sampled).zip(DEFAULT_ALPHAS) {
            assert!(s <= f, "α {alpha}");
        }
        // A fractional order is charged at least what the integer order below it is.
        let at = |alpha: f64| distributed_rdp(&sum, 0.02, 1, &[alpha])[0];
        assert!(at(2.5) >= at(2.0));
        assert_eq!(
            at(2.5),
            at(3.0).min(distributed_rdp(&sum, 1.0, 1, &[2.5])[0])
        );
        assert_eq!(at(f64::INFINITY), f64::INFINITY);
    }
}
