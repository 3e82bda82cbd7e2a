//! The Rényi DP of the distributed discrete Gaussian: the sum of `k` independent discrete
//! Gaussian shares added to an integer query, optionally behind Poisson subsampling.
//!
//! # The sum of shares (no subsampling)
//!
//! Each of `k` nodes adds `N_Z(0, s²)` to every coordinate, independently; the sum is not a
//! discrete Gaussian, but it is close to `N_Z(0, k·s²)`. Kairouz, Liu and Steinke ("The
//! Distributed Discrete Gaussian Mechanism for Federated Learning with Secure Aggregation",
//! ICML 2021, arXiv:2102.06387, Theorem 1) bound, for shares of σ `s` not too small (we
//! require `s ≥ 1`, [`super::MIN_SHARE_SIGMA`]), a shift `Δ ∈ Z^d` of the sum of `k` such
//! vectors by
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
//! Each example joins the step's batch with probability `q`. Fix everything but one example
//! `x` (the rest of the batch and the rounding of the other examples are the same in both
//! worlds; Rényi divergence is jointly quasi-convex, so mixing over them, and over the random
//! rounding of `x` itself, costs nothing more than the worst fixed case). Then, with `N` the
//! summed noise, `P` the law of `a + N` (x absent) and `Q` that of `a + r + N` (x present,
//! `r ∈ Z^d` its rounded vector, `‖r‖₂ ≤ Δ₂`), the two neighbouring outputs are `P` and
//! `μ = (1−q)P + qQ`, and RDP needs both directions.
//!
//! - **Adding x**, `D_α(μ ‖ P)`: at an integer order, expanding `E_P[((1−q) + qL)^α]` with
//!   `L = Q/P` and `E_P[L^l] = e^{(l−1)D_l(Q‖P)}` is an identity,
//!   `e^{(α−1)D_α(μ‖P)} = Σ_{l=0}^{α} C(α,l) (1−q)^{α−l} q^l e^{(l−1)D_l(Q‖P)}` (the expansion
//!   Mironov, Talwar and Zhang, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
//!   2019, compute for the Gaussian), and each `D_l(Q‖P) ≤ ε(l)`, the unsampled bound above.
//!   This is [`subsampled`].
//! - **Removing x**, `D_α(P ‖ μ)`, is never larger, because the noise is symmetric: the
//!   reflection `φ(y) = 2a + r − y` maps `Z^d` onto itself and `P∘φ = Q`, `Q∘φ = P` (each share
//!   is symmetric, so their sum is). Lemma: for any pair with such an involution, and every
//!   `q ∈ [0, 1]` and `α ≥ 1`, `D_α(P‖μ) ≤ D_α(μ‖P)`. Proof: with `L = Q/P`, which `φ` sends to
//!   `1/L`, group the outputs in pairs `{y, φ(y)}` (a fixed point has `L = 1` and adds 1 to
//!   both sides). A pair adds `P(y)·F(L)` to `e^{(α−1)D_α(μ‖P)}` and `P(y)·G(L)` to
//!   `e^{(α−1)D_α(P‖μ)}`, where, with `u = 1 − q + qL` and `v = (1 − q)L + q`,
//!   `F = u^α + L^{1−α} v^α` and `G = u^{1−α} + L^α v^{1−α}`. Since `F(1/L) = F(L)/L` and
//!   `G(1/L) = G(L)/L`, take `L ≥ 1`. Put `t = q(L−1)/L`, `a' = u = 1 + Lt ≥ 1` and
//!   `b' = v/L = 1 − t ≤ 1`; then `F − G = a'^α − a'^{1−α} + L(b'^α − b'^{1−α})
//!   = 2√a'·sinh(γA) − 2L√b'·sinh(γB)` with `γ = α − 1/2`, `A = ln a'`, `B = −ln b'`. As
//!   `L = (a' − 1)/(1 − b')`, `√a' = (a' − 1)/(2 sinh(A/2))` and `√b' = (1 − b')/(2 sinh(B/2))`,
//!   `F − G ≥ 0` is `sinh(γA)/sinh(A/2) ≥ sinh(γB)/sinh(B/2)`. The function
//!   `x ↦ sinh(γx)/sinh(x/2)` increases for `γ ≥ 1/2` (its log-derivative is
//!   `γ coth(γx) − coth(x/2)/2 ≥ 0`, as `y coth y` increases), so it suffices that `A ≥ B`,
//!   i.e. `a'b' ≥ 1`: `a'b' = 1 + t(L(1 − t) − 1) = 1 + t(v − 1) ≥ 1` since `v ≥ 1`. ∎
//!   (`F − G = (a' − 1)·(k(A) − k(B))` with `k` that function.) Mironov, Talwar and Zhang keep
//!   the adding direction alone for the sampled Gaussian; this lemma is what lets the discrete
//!   noise do the same, and it needs the symmetry: the tests check it numerically and show an
//!   asymmetric pair where the removing direction is the larger. Without it one would fall
//!   back on Zhu and Wang ("Poisson Subsampled Rényi Differential Privacy", ICML 2019,
//!   Theorem 5, the bound the DDG paper uses), which holds for any mechanism and pays a factor
//!   3 on the terms `l ≥ 3`: 4 to 36% more ε at the settings of `docs/DISTRIBUTED_DP.md`.
//!   The lemma is proved here, not taken from a paper; `ZHU_WANG_FACTOR` in [`subsampled`]
//!   switches back to Theorem 5.
//!
//! So at integer orders the subsampled bound is the binomial sum, which for Gaussian RDP
//! `ε(l) = l/(2z²)` is exactly Opacus's integer-order figure. Subsampling never costs more than
//! the mechanism itself, so [`distributed_rdp`] takes the least of the two. A fractional
//! order α uses the subsampled bound at `⌈α⌉`: Rényi divergence does not decrease with the
//! order (van Erven and Harremoës 2014, Theorem 3), so a bound at `⌈α⌉` holds at α.

use std::f64::consts::PI;

/// Orders above this skip the subsampled bound (its sum has α terms) and keep the unsampled
/// one, which is still an upper bound.
const MAX_SUBSAMPLED_ORDER: u64 = 4096;

/// The parameters of one sum of shares, checked by the caller: sensitivities in integer units,
/// `share_sigma ≥ MIN_SHARE_SIGMA`, `dimension ≥ 1`, `summands ≥ 1`.
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

/// The subsampled RDP at integer order `alpha ≥ 2`, for `0 < q < 1`, with `base[l]` the
/// unsampled RDP at order `l` for `2 ≤ l ≤ alpha`: `1/(α−1) · ln Σ_l C(α,l)(1−q)^{α−l} q^l
/// e^{(l−1)ε(l)}` (the [module docs](self) give why the other direction is no larger).
fn subsampled(q: f64, alpha: u64, base: &[f64]) -> f64 {
    subsampled_with(q, alpha, base, ZHU_WANG_FACTOR)
}

/// The coefficient the ledger charges on the terms `l ≥ 3` of [`subsampled`]: Zhu and Wang's
/// Theorem 5, which holds for any mechanism. The reflection lemma of the [module docs](self)
/// would allow 1 (Opacus's figure at integer orders); until that proof has been reviewed, the
/// published bound is what a hospital's ε rests on.
const ZHU_WANG_FACTOR: f64 = 3.0;

/// [`subsampled`] with the coefficient `factor` on the terms `l ≥ 3`.
fn subsampled_with(q: f64, alpha: u64, base: &[f64], factor: f64) -> f64 {
    let a = alpha as f64;
    let ln_q = q.ln();
    let ln_1q = (-q).ln_1p();
    // l = 0 and l = 1 together: (1−q)^α + αq(1−q)^{α−1} = (1−q)^{α−1}(1 + (α−1)q).
    let mut total = (a - 1.0) * ln_1q + ((a - 1.0) * q).ln_1p();
    for l in 2..=alpha {
        let lf = l as f64;
        let coefficient = if l >= 3 { factor.ln() } else { 0.0 };
        let term = coefficient
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
    fn for_gaussian_rdp_the_subsampled_bound_is_mironovs_exact_figure() {
        // With ε(l) = l/(2σ²) the binomial sum with coefficient 1 (the reflection lemma's) is
        // the sampled Gaussian's exact RDP at integer orders, as Opacus computes it; the
        // ledger's coefficient, Zhu and Wang's, charges more.
        for (q, sigma) in [(0.01, 1.0), (0.1, 2.0), (0.3, 0.9), (0.9, 3.0)] {
            let base: Vec<f64> = (0..=64)
                .map(|l: u64| l.max(2) as f64 / (2.0 * sigma * sigma))
                .collect();
            for alpha in [2u64, 3, 8, 32, 63] {
                let bound = subsampled_with(q, alpha, &base, 1.0);
                let exact = compute_rdp(q, sigma, 1, &[alpha as f64]).unwrap()[0];
                assert!(
                    (bound - exact).abs() <= 1e-9 * exact,
                    "q {q} α {alpha}: {bound} vs {exact}"
                );
                assert!(subsampled(q, alpha, &base) >= bound);
            }
        }
    }

    /// `ln e^{(α−1)D_α}` of both directions for the pair `(P, Q)` subsampled at `q`:
    /// (adding, `D_α(μ‖P)`; removing, `D_α(P‖μ)`).
    fn both_directions(p: &[f64], q_dist: &[f64], q: f64, alpha: f64) -> (f64, f64) {
        let mut add = f64::NEG_INFINITY;
        let mut remove = f64::NEG_INFINITY;
        for (&p, &q_) in p.iter().zip(q_dist) {
            let mu = (1.0 - q) * p + q * q_;
            add = crate::privacy::log_add(add, p.ln() + alpha * (mu.ln() - p.ln()));
            remove = crate::privacy::log_add(remove, mu.ln() + alpha * (p.ln() - mu.ln()));
        }
        (add, remove)
    }

    #[test]
    fn removing_never_costs_more_than_adding_for_symmetric_noise() {
        // The lemma's inequality F(L) ≥ G(L), on a grid of likelihood ratios, rates and orders.
        for q in [1e-4, 0.01, 0.1, 0.3, 0.5, 0.9, 0.9999] {
            for alpha in [1.01, 1.5, 2.0, 3.0, 7.5, 20.0, 63.0, 256.0] {
                for e in -300..=300 {
                    let l = (f64::from(e) / 10.0).exp();
                    let u = 1.0 - q + q * l;
                    let v = (1.0 - q) * l + q;
                    let f = crate::privacy::log_add(
                        alpha * u.ln(),
                        (1.0 - alpha) * l.ln() + alpha * v.ln(),
                    );
                    let g = crate::privacy::log_add(
                        (1.0 - alpha) * u.ln(),
                        alpha * l.ln() + (1.0 - alpha) * v.ln(),
                    );
                    assert!(f >= g - 1e-12, "q {q} α {alpha} L {l}: {f} < {g}");
                }
            }
        }
        // Discrete Gaussian noise on 1..=3 coordinates, shifted by an integer vector: the
        // pair (N, N + r) over a box holding all but e^-50 of the mass.
        let sigma: f64 = 1.3;
        let pmf = |x: i64| (-(x as f64).powi(2) / (2.0 * sigma * sigma)).exp();
        let reach = 14i64;
        let mass: f64 = (-reach..=reach).map(pmf).sum();
        for r in [vec![1i64], vec![3], vec![1, -2], vec![2, 1, 1]] {
            let dims = r.len() as u32;
            let side = (2 * reach + 1) as usize;
            let (mut p, mut q_dist) = (Vec::new(), Vec::new());
            for index in 0..side.pow(dims) {
                let (mut rest, mut pp, mut qq) = (index, 1.0, 1.0);
                for shift in &r {
                    let x = (rest % side) as i64 - reach;
                    rest /= side;
                    pp *= pmf(x) / mass;
                    qq *= pmf(x - shift) / mass;
                }
                p.push(pp);
                q_dist.push(qq);
            }
            for q in [0.01, 0.2, 0.7] {
                for alpha in [2.0, 4.0, 16.0] {
                    let (add, remove) = both_directions(&p, &q_dist, q, alpha);
                    assert!(remove <= add + 1e-12, "r {r:?} q {q} α {alpha}");
                }
            }
        }
        // Without the symmetry the removing direction can be the larger.
        let (add, remove) = both_directions(&[0.5, 0.5], &[0.999, 0.001], 0.5, 3.0);
        assert!(remove > add + 0.1, "{remove} vs {add}");
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
