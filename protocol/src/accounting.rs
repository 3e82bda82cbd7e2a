//! One composition API for every private release a node makes: how much (ε, δ) a list of
//! releases spends together, and how much DP-SGD noise a budget allows beside releases already
//! made, under either of two accountants.
//!
//! ```text
//!  [Mechanism] ─┬─ Accountant::Rdp ─▶ Σ RDP curves over the orders ─▶ get_privacy_spent(δ) ─▶ ε
//!               └─ Accountant::Pld ─▶ ⊛ privacy loss distributions ─▶ epsilon(δ) ─────────▶ ε
//! ```
//!
//! - [`Accountant::Rdp`] is [`crate::privacy`]'s Rényi-DP accountant, which reproduces Opacus:
//!   the cross-check. A discrete Gaussian release of `cells` integers, each moved by at most `s`,
//!   costs `cells · α · s² / (2σ²)` at order α: the 1-D discrete Gaussian with integer
//!   sensitivity `s` is `s²/(2σ²)`-zCDP (Canonne, Kamath and Steinke 2020), and zCDP adds up
//!   over independent cells.
//! - [`Accountant::Pld`] is [`crate::pld`]'s privacy-loss-distribution accountant, as Google's
//!   dp_accounting: the same releases, a tighter ε (still an upper bound).
//! - A distributed-DP round ([`Mechanism::DistributedDiscreteGaussian`], from
//!   [`crate::distributed_dp`]) has an RDP bound only (the DDG paper's bound on a sum of discrete
//!   Gaussian shares, subsampled at integer orders): a composition containing one is converted
//!   from RDP under either accountant.
//!
//! Releases that are the same mechanism with the same parameters are counted together (20
//! rounds of 12 DP-SGD steps at one σ are one mechanism run 240 times): composition does not
//! depend on order, and each accountant then works out each distinct mechanism once (the PLD
//! accountant composes it in by one FFT power), which keeps a ledger of hundreds of entries
//! fast.
//!
//! This module only does the arithmetic; the ledger that records releases is the node's.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::distributed_dp::{MIN_SHARE_SIGMA, SumOfShares, distributed_rdp};
use crate::pld::{DEFAULT_INTERVAL, PrivacyLossDistribution};
use crate::privacy::{
    DEFAULT_ALPHAS, DEFAULT_EPSILON_TOLERANCE, MAX_NOISE_MULTIPLIER, PrivacyError, compute_rdp,
    get_privacy_spent, noise_multiplier_alongside, opacus_bisection,
};

/// A differentially private release, as the accountants compose it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mechanism {
    /// `steps` Poisson-subsampled Gaussian steps (DP-SGD), sensitivity 1 after clipping.
    SubsampledGaussian {
        /// The probability q with which each patient joins a step's batch, in `[0, 1]`.
        sample_rate: f64,
        /// The noise's standard deviation over the clipping norm (0: no noise, no guarantee).
        noise_multiplier: f64,
        /// Steps taken.
        steps: u64,
    },
    /// `cells` independent releases of one integer each with discrete Gaussian noise of std
    /// `sigma`, where one patient changes each cell by at most the integer `sensitivity`.
    DiscreteGaussian {
        /// σ of the noise on each cell (0: no noise, no guarantee).
        sigma: f64,
        /// The most one patient moves one cell.
        sensitivity: u64,
        /// Cells released.
        cells: u64,
    },
    /// `steps` Poisson-subsampled releases of an integer vector sum to which `summands`
    /// independent discrete Gaussian shares were added: distributed DP under secure aggregation
    /// ([`crate::distributed_dp`]). Each share has σ `noise_multiplier · l2_sensitivity /
    /// √summands` (integer units) on every coordinate, so the sum of the `summands` shares has
    /// variance `(noise_multiplier · l2_sensitivity)²`. Its RDP is the DDG paper's bound on a
    /// sum of discrete Gaussians, subsampled at integer orders by the binomial expansion
    /// (`distributed_dp/rdp.rs` argues why that suffices for symmetric noise). The PLD accountant has no distribution for it: a composition
    /// that contains one is converted from RDP under either accountant ([`epsilon`]).
    DistributedDiscreteGaussian {
        /// The probability q with which each patient joins a step's batch, in `[0, 1]`.
        sample_rate: f64,
        /// σ of the summed noise over `l2_sensitivity` (0: no noise, no guarantee).
        noise_multiplier: f64,
        /// Δ₂: the most one patient moves the integer vector, in L2 (integer units).
        l2_sensitivity: f64,
        /// Δ₁: the same in L1.
        l1_sensitivity: f64,
        /// Coordinates of the vector.
        dimension: u64,
        /// Shares in the sum (at least 1): `t` for the central guarantee, 1 for the local one.
        summands: u64,
        /// Steps (rounds) taken.
        steps: u64,
    },
}

impl Mechanism {
    /// The mechanism's RDP at each of `orders` (all above 1).
    pub fn rdp(&self, orders: &[f64]) -> Result<Vec<f64>, PrivacyError> {
        match *self {
            Self::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                steps,
            } => compute_rdp(sample_rate, noise_multiplier, steps, orders),
            Self::DiscreteGaussian {
                sigma,
                sensitivity,
                cells,
            } => {
                self.check()?;
                // Zero at every order, once the orders pass the same checks as for DP-SGD.
                let nothing = compute_rdp(0.0, 0.0, 0, orders)?;
                // An empty release costs nothing, even without noise (0 · ∞ would be NaN).
                if cells == 0 || sensitivity == 0 {
                    return Ok(nothing);
                }
                let s = sensitivity as f64;
                let per_order = cells as f64 * s * s / (2.0 * sigma * sigma);
                Ok(orders.iter().map(|alpha| alpha * per_order).collect())
            }
            Self::DistributedDiscreteGaussian {
                sample_rate,
                noise_multiplier,
                l2_sensitivity,
                l1_sensitivity,
                dimension,
                summands,
                steps,
            } => {
                let cost = self.cost()?;
                let nothing = compute_rdp(0.0, 0.0, 0, orders)?;
                match cost {
                    Cost::Nothing => Ok(nothing),
                    Cost::Unbounded => Ok(vec![f64::INFINITY; orders.len()]),
                    Cost::Bounded => {
                        let sum = SumOfShares {
                            l2_sensitivity,
                            l1_sensitivity,
                            dimension,
                            share_sigma: share_sigma(noise_multiplier, l2_sensitivity, summands),
                            summands,
                        };
                        Ok(distributed_rdp(&sum, sample_rate, steps, orders))
                    }
                }
            }
        }
    }

    /// Refuses parameters out of range.
    fn check(&self) -> Result<(), PrivacyError> {
        match *self {
            Self::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                ..
            } => {
                if !(0.0..=1.0).contains(&sample_rate) {
                    return Err(PrivacyError::SamplingRate(sample_rate));
                }
                if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
                    return Err(PrivacyError::NoiseMultiplier(noise_multiplier));
                }
            }
            Self::DiscreteGaussian { sigma, .. } => {
                if !(sigma.is_finite() && sigma >= 0.0) {
                    return Err(PrivacyError::DiscreteGaussianSigma(sigma));
                }
            }
            Self::DistributedDiscreteGaussian {
                sample_rate,
                noise_multiplier,
                l2_sensitivity,
                l1_sensitivity,
                dimension,
                summands,
                ..
            } => {
                if !(0.0..=1.0).contains(&sample_rate) {
                    return Err(PrivacyError::SamplingRate(sample_rate));
                }
                if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
                    return Err(PrivacyError::NoiseMultiplier(noise_multiplier));
                }
                for sensitivity in [l2_sensitivity, l1_sensitivity] {
                    if !(sensitivity.is_finite() && sensitivity >= 0.0) {
                        return Err(PrivacyError::Sensitivity(sensitivity));
                    }
                }
                if dimension == 0 || summands == 0 {
                    return Err(PrivacyError::DistributedShape {
                        dimension,
                        summands,
                    });
                }
                let share = share_sigma(noise_multiplier, l2_sensitivity, summands);
                if noise_multiplier > 0.0 && l2_sensitivity > 0.0 && share < MIN_SHARE_SIGMA {
                    return Err(PrivacyError::ShareSigma(share));
                }
            }
        }
        Ok(())
    }

    /// What the release costs, its parameters checked.
    fn cost(&self) -> Result<Cost, PrivacyError> {
        self.check()?;
        // (does anything change, the noise) for each kind.
        let (moves, noise) = match *self {
            Self::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                steps,
            } => (sample_rate > 0.0 && steps > 0, noise_multiplier),
            Self::DiscreteGaussian {
                sigma,
                sensitivity,
                cells,
            } => (cells > 0 && sensitivity > 0, sigma),
            Self::DistributedDiscreteGaussian {
                sample_rate,
                noise_multiplier,
                l2_sensitivity,
                steps,
                ..
            } => (
                sample_rate > 0.0 && steps > 0 && l2_sensitivity > 0.0,
                noise_multiplier,
            ),
        };
        Ok(if !moves {
            Cost::Nothing
        } else if noise == 0.0 {
            Cost::Unbounded
        } else {
            Cost::Bounded
        })
    }

    /// The same release made `times` times: its steps or cells multiplied (saturating).
    pub fn repeated(self, times: u64) -> Self {
        self.with_count(self.count().saturating_mul(times))
    }

    /// Whether the PLD accountant has no distribution for this mechanism, so that a
    /// composition containing it is converted from RDP.
    fn needs_rdp(&self) -> bool {
        matches!(self, Self::DistributedDiscreteGaussian { .. })
    }

    /// How many times the mechanism runs: steps or cells.
    fn count(&self) -> u64 {
        match *self {
            Self::SubsampledGaussian { steps, .. } => steps,
            Self::DiscreteGaussian { cells, .. } => cells,
            Self::DistributedDiscreteGaussian { steps, .. } => steps,
        }
    }

    /// The same mechanism run `count` times.
    fn with_count(self, count: u64) -> Self {
        match self {
            Self::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                ..
            } => Self::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                steps: count,
            },
            Self::DiscreteGaussian {
                sigma, sensitivity, ..
            } => Self::DiscreteGaussian {
                sigma,
                sensitivity,
                cells: count,
            },
            Self::DistributedDiscreteGaussian {
                sample_rate,
                noise_multiplier,
                l2_sensitivity,
                l1_sensitivity,
                dimension,
                summands,
                ..
            } => Self::DistributedDiscreteGaussian {
                sample_rate,
                noise_multiplier,
                l2_sensitivity,
                l1_sensitivity,
                dimension,
                summands,
                steps: count,
            },
        }
    }

    /// The privacy loss distribution of one run (step or cell), for a mechanism that costs
    /// something bounded.
    fn pld_once(&self, interval: f64) -> Result<PrivacyLossDistribution, PrivacyError> {
        match *self {
            Self::SubsampledGaussian {
                sample_rate,
                noise_multiplier,
                ..
            } => PrivacyLossDistribution::subsampled_gaussian(
                sample_rate,
                noise_multiplier,
                interval,
            ),
            Self::DiscreteGaussian {
                sigma, sensitivity, ..
            } => PrivacyLossDistribution::discrete_gaussian(sigma, sensitivity, interval),
            // Never composed as a PLD: `epsilon` and `noise_multiplier_for` convert any
            // composition containing it from RDP.
            Self::DistributedDiscreteGaussian { .. } => Err(PrivacyError::PldUnsupported),
        }
    }
}

/// Which accountant composes releases into ε.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Accountant {
    /// Rényi DP, converted as Opacus does (`rdp`): the figure Opacus reports.
    #[default]
    Rdp,
    /// Privacy loss distributions, as dp_accounting (`pld`): a tighter figure.
    Pld,
}

impl Accountant {
    /// The name used in configuration and output: `rdp` or `pld`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rdp => "rdp",
            Self::Pld => "pld",
        }
    }
}

impl fmt::Display for Accountant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Accountant {
    type Err = UnknownAccountant;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "rdp" => Ok(Self::Rdp),
            "pld" => Ok(Self::Pld),
            _ => Err(UnknownAccountant(s.to_owned())),
        }
    }
}

/// A name that is not an [`Accountant`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown privacy accountant {0:?}: expected \"rdp\" or \"pld\"")]
pub struct UnknownAccountant(pub String);

/// The ε that `releases`, all made, spend together at `delta` under `accountant`.
///
/// Releases that cost nothing (no steps or cells, sampling rate or sensitivity 0) are left out;
/// if none is left, ε is 0. A release without noise (σ = 0) makes ε infinite.
///
/// The PLD accountant has no distribution for [`Mechanism::DistributedDiscreteGaussian`] (the
/// sum of discrete Gaussians is not one, and the DDG paper bounds it in RDP only): a
/// composition that contains one is converted from RDP under [`Accountant::Pld`] too, which
/// gives an upper bound, never a figure below the truth.
pub fn epsilon(
    accountant: Accountant,
    releases: &[Mechanism],
    delta: f64,
) -> Result<f64, PrivacyError> {
    check_delta(delta)?;
    let mut spending = Vec::with_capacity(releases.len());
    for release in releases {
        match release.cost()? {
            Cost::Nothing => {}
            Cost::Unbounded => return Ok(f64::INFINITY),
            Cost::Bounded => spending.push(*release),
        }
    }
    if spending.is_empty() {
        return Ok(0.0);
    }
    if accountant == Accountant::Rdp || spending.iter().any(Mechanism::needs_rdp) {
        Ok(get_privacy_spent(&DEFAULT_ALPHAS, &rdp_curve(&spending)?, delta)?.0)
    } else {
        compose_pld(&spending, DEFAULT_INTERVAL)?.epsilon(delta)
    }
}

/// σ for `steps` DP-SGD steps at rate `sample_rate` so that `already` and those steps together
/// spend at most `target_epsilon` at `delta` under `accountant`.
///
/// Both bisect σ as Opacus's `get_noise_multiplier` does: σ doubles from 20 until ε falls below
/// the target, then the interval from 0 is halved until ε is within
/// [`DEFAULT_EPSILON_TOLERANCE`] below it; the result is the upper end, which never spends more
/// than the target. [`Accountant::Rdp`] is [`noise_multiplier_alongside`] exactly.
/// [`Accountant::Pld`] bisects on a grid ten times coarser (whose ε is within about 10^−4 of the
/// fine one's at ordinary settings), then checks the result on the full grid and, if needed,
/// raises σ until the full grid's ε is at most the target, or refines it while the full grid's ε
/// is more than the tolerance below.
///
/// Where `already` holds a [`Mechanism::DistributedDiscreteGaussian`], [`Accountant::Pld`]
/// plans as [`Accountant::Rdp`] does, as [`epsilon`] then converts from RDP.
///
/// Errors as [`noise_multiplier_alongside`]: [`PrivacyError::BudgetTooLow`] where no σ up to
/// [`MAX_NOISE_MULTIPLIER`] is enough, [`PrivacyError::NoConvergence`] where σ does not matter
/// (no steps, or a sampling rate of 0).
pub fn noise_multiplier_for(
    accountant: Accountant,
    target_epsilon: f64,
    delta: f64,
    already: &[Mechanism],
    sample_rate: f64,
    steps: u64,
) -> Result<f64, PrivacyError> {
    if !(target_epsilon.is_finite() && target_epsilon > 0.0) {
        return Err(PrivacyError::TargetEpsilon(target_epsilon));
    }
    check_delta(delta)?;
    if !(0.0..=1.0).contains(&sample_rate) {
        return Err(PrivacyError::SamplingRate(sample_rate));
    }
    let mut spending = Vec::with_capacity(already.len());
    for release in already {
        if release.cost()? != Cost::Nothing {
            spending.push(*release);
        }
    }
    let accountant = if spending.iter().any(Mechanism::needs_rdp) {
        // As in `epsilon`: a composition with a distributed release is converted from RDP.
        Accountant::Rdp
    } else {
        accountant
    };
    match accountant {
        Accountant::Rdp => {
            let other = if spending.is_empty() {
                Vec::new()
            } else {
                rdp_curve(&spending)?
            };
            noise_multiplier_alongside(
                target_epsilon,
                delta,
                sample_rate,
                steps,
                DEFAULT_EPSILON_TOLERANCE,
                &other,
            )
        }
        Accountant::Pld => {
            pld_noise_multiplier(target_epsilon, delta, &spending, sample_rate, steps)
        }
    }
}

/// The grid step [`noise_multiplier_for`] bisects on under [`Accountant::Pld`].
const COARSE_INTERVAL: f64 = 10.0 * DEFAULT_INTERVAL;

/// What one release costs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cost {
    /// Nothing: it reveals nothing about any patient.
    Nothing,
    /// An unbounded ε: no noise.
    Unbounded,
    /// Something finite.
    Bounded,
}

/// The summed RDP curve of `releases` over [`DEFAULT_ALPHAS`], each distinct mechanism's
/// computed once.
fn rdp_curve(releases: &[Mechanism]) -> Result<Vec<f64>, PrivacyError> {
    let mut total = vec![0.0; DEFAULT_ALPHAS.len()];
    for release in &merge_repeats(releases) {
        let rdp = release.rdp(&DEFAULT_ALPHAS)?;
        total.iter_mut().zip(&rdp).for_each(|(t, r)| *t += r);
    }
    Ok(total)
}

/// The composed privacy loss distribution of `releases` (each costing something bounded), on
/// the grid of step `interval`: the same mechanisms counted together, then each composed in by
/// one self-composition, in the order of first appearance.
fn compose_pld(
    releases: &[Mechanism],
    interval: f64,
) -> Result<PrivacyLossDistribution, PrivacyError> {
    let mut total = PrivacyLossDistribution::identity(interval)?;
    for release in merge_repeats(releases) {
        let one = release.pld_once(interval)?;
        total = total.compose(&one.self_compose(release.count())?)?;
    }
    Ok(total)
}

/// `releases` with each mechanism that appears more than once (same kind and parameters)
/// replaced by one entry of the summed count, at its first place.
fn merge_repeats(releases: &[Mechanism]) -> Vec<Mechanism> {
    let mut merged: Vec<Mechanism> = Vec::new();
    for release in releases {
        let same = merged
            .iter_mut()
            .find(|m| m.with_count(0) == release.with_count(0));
        match same {
            Some(m) => *m = m.with_count(m.count().saturating_add(release.count())),
            None => merged.push(*release),
        }
    }
    merged
}

/// The PLD arm of [`noise_multiplier_for`]; `already` holds only releases that cost something.
fn pld_noise_multiplier(
    target_epsilon: f64,
    delta: f64,
    already: &[Mechanism],
    sample_rate: f64,
    steps: u64,
) -> Result<f64, PrivacyError> {
    if already.iter().any(|m| m.cost() == Ok(Cost::Unbounded)) {
        return Err(PrivacyError::BudgetTooLow { target_epsilon });
    }
    if sample_rate == 0.0 || steps == 0 {
        // ε does not depend on σ.
        let spent = epsilon(Accountant::Pld, already, delta)?;
        return Err(if spent > target_epsilon {
            PrivacyError::BudgetTooLow { target_epsilon }
        } else {
            PrivacyError::NoConvergence { target_epsilon }
        });
    }
    let tolerance = DEFAULT_EPSILON_TOLERANCE;
    let coarse = Planner::new(already, sample_rate, steps, delta, COARSE_INTERVAL)?;

    // Opacus's bracket and bisection, on the coarse grid.
    let (mut sigma_low, mut sigma_high) =
        opacus_bisection(target_epsilon, tolerance, |sigma| coarse.epsilon(sigma))?;

    // The full grid decides.
    let fine = Planner::new(already, sample_rate, steps, delta, DEFAULT_INTERVAL)?;
    let mut eps_high = fine.epsilon(sigma_high)?;
    let mut step = (sigma_high - sigma_low).max(1e-3 * sigma_high);
    while eps_high > target_epsilon {
        sigma_low = sigma_high;
        sigma_high += step;
        step *= 2.0;
        if sigma_high > MAX_NOISE_MULTIPLIER {
            return Err(PrivacyError::BudgetTooLow { target_epsilon });
        }
        eps_high = fine.epsilon(sigma_high)?;
    }
    while target_epsilon - eps_high > tolerance && sigma_high - sigma_low > 1e-4 * sigma_high {
        let sigma = (sigma_low + sigma_high) / 2.0;
        let eps = fine.epsilon(sigma)?;
        if eps < target_epsilon {
            sigma_high = sigma;
            eps_high = eps;
        } else {
            sigma_low = sigma;
        }
    }
    Ok(sigma_high)
}

/// ε of the releases already made plus `steps` DP-SGD steps at a σ to be chosen, on one grid,
/// with the releases already made composed once.
struct Planner {
    /// The composed distribution of the releases already made.
    already: PrivacyLossDistribution,
    /// q of the planned steps.
    sample_rate: f64,
    /// Planned steps.
    steps: u64,
    /// δ.
    delta: f64,
    /// The grid step.
    interval: f64,
}

impl Planner {
    fn new(
        already: &[Mechanism],
        sample_rate: f64,
        steps: u64,
        delta: f64,
        interval: f64,
    ) -> Result<Self, PrivacyError> {
        Ok(Self {
            already: compose_pld(already, interval)?,
            sample_rate,
            steps,
            delta,
            interval,
        })
    }

    /// ε with the planned steps at noise multiplier `sigma`. A σ so small that the distribution
    /// would not fit the grid's limit spends far more than any budget: ε is then `+∞`.
    fn epsilon(&self, sigma: f64) -> Result<f64, PrivacyError> {
        let planned =
            PrivacyLossDistribution::subsampled_gaussian(self.sample_rate, sigma, self.interval)
                .and_then(|one| one.self_compose(self.steps))
                .and_then(|all| self.already.compose(&all));
        match planned {
            Ok(total) => total.epsilon(self.delta),
            Err(PrivacyError::PldTooLarge { .. }) => Ok(f64::INFINITY),
            Err(e) => Err(e),
        }
    }
}

/// σ of each share of a distributed release: `noise_multiplier · l2_sensitivity / √summands`.
fn share_sigma(noise_multiplier: f64, l2_sensitivity: f64, summands: u64) -> f64 {
    noise_multiplier * l2_sensitivity / (summands as f64).sqrt()
}

fn check_delta(delta: f64) -> Result<(), PrivacyError> {
    if delta > 0.0 && delta < 1.0 {
        Ok(())
    } else {
        Err(PrivacyError::Delta(delta))
    }
}

/// For tests of a release's mechanisms: their RDP is, order by order, the Gaussian charge at
/// `noise_multiplier` (one step at sampling rate 1) that the ledger records, and their PLD ε is
/// below their RDP ε, by less than half.
#[cfg(test)]
pub(crate) fn assert_charged_as_gaussian(mechanisms: &[Mechanism], noise_multiplier: f64) {
    let charged = compute_rdp(1.0, noise_multiplier, 1, &DEFAULT_ALPHAS).unwrap();
    let exact = rdp_curve(mechanisms).unwrap();
    for (c, e) in charged.iter().zip(&exact) {
        assert!((c - e).abs() <= 1e-12 * c, "{c} against {e}");
    }
    let rdp = epsilon(Accountant::Rdp, mechanisms, 1e-5).unwrap();
    let pld = epsilon(Accountant::Pld, mechanisms, 1e-5).unwrap();
    assert!(pld < rdp && pld > 0.5 * rdp, "PLD {pld}, RDP {rdp}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sgd(q: f64, sigma: f64, steps: u64) -> Mechanism {
        Mechanism::SubsampledGaussian {
            sample_rate: q,
            noise_multiplier: sigma,
            steps,
        }
    }

    fn counts(sigma: f64, sensitivity: u64, cells: u64) -> Mechanism {
        Mechanism::DiscreteGaussian {
            sigma,
            sensitivity,
            cells,
        }
    }

    /// Cases of the fixture: (releases, [(δ, ε)]).
    type Cases = Vec<(Vec<Mechanism>, Vec<(f64, f64)>)>;

    /// The cases of one group of `tests/vectors/pld_vectors.json`, those with the same releases
    /// together.
    fn vectors(group: &str) -> Cases {
        let fixture: serde_json::Value =
            serde_json::from_str(include_str!("../tests/vectors/pld_vectors.json")).unwrap();
        assert_eq!(fixture["value_discretization_interval"], DEFAULT_INTERVAL);
        let mut out: Cases = Vec::new();
        for case in fixture[group].as_array().unwrap() {
            let releases: Vec<Mechanism> =
                serde_json::from_value(case["releases"].clone()).unwrap();
            let pair = (
                case["delta"].as_f64().unwrap(),
                case["epsilon"].as_f64().unwrap(),
            );
            match out.last_mut() {
                Some((last, pairs)) if *last == releases => pairs.push(pair),
                _ => out.push((releases, vec![pair])),
            }
        }
        out
    }

    /// Every case of `group` within 1e-3 relative of dp_accounting, and no RDP ε below it.
    fn check_group(group: &str, min_cases: usize) {
        let cases = vectors(group);
        assert!(cases.iter().map(|c| c.1.len()).sum::<usize>() >= min_cases);
        for (releases, pairs) in cases {
            let distribution = compose_pld(&releases, DEFAULT_INTERVAL).unwrap();
            for (delta, expected) in pairs {
                let got = distribution.epsilon(delta).unwrap();
                assert!(
                    (got - expected).abs() <= 1e-3 * expected,
                    "{releases:?} at δ = {delta}: {got}, dp_accounting {expected}"
                );
                assert_eq!(got, epsilon(Accountant::Pld, &releases, delta).unwrap());
                let rdp = epsilon(Accountant::Rdp, &releases, delta).unwrap();
                assert!(
                    rdp >= got,
                    "{releases:?} at δ = {delta}: RDP {rdp} < PLD {got}"
                );
            }
        }
    }

    #[test]
    fn matches_dp_accounting_subsampled_gaussian() {
        check_group("subsampled_gaussian", 100);
    }

    #[test]
    fn matches_dp_accounting_discrete_gaussian() {
        check_group("discrete_gaussian", 20);
    }

    #[test]
    fn matches_dp_accounting_mixed() {
        check_group("mixed", 10);
    }

    /// The demo node's DP-SGD: q = 16/90, 20 rounds of 12 steps, one ledger entry a round.
    fn demo_training(sigma: f64) -> Vec<Mechanism> {
        vec![sgd(16.0 / 90.0, sigma, 12); 20]
    }

    /// A release of evaluation counts as `eval_release` describes it: 3 + 2A cells moved by 1
    /// at noise σ, and the loss cell moved by up to K at noise σK.
    fn evaluation(sigma: f64, attributes: u64) -> [Mechanism; 2] {
        let k = u64::from(LOSS_STEPS);
        [
            counts(sigma, 1, 3 + 2 * attributes),
            counts(sigma * k as f64, k, 1),
        ]
    }

    use crate::eval_release::{LOSS_STEPS, sensitivity};

    #[test]
    fn repeated_releases_are_counted_together() {
        let delta = 1e-5;
        let rounds = demo_training(1.3);
        let merged = [sgd(16.0 / 90.0, 1.3, 240)];
        assert_eq!(merge_repeats(&rounds), merged);
        assert_eq!(
            epsilon(Accountant::Pld, &rounds, delta).unwrap(),
            epsilon(Accountant::Pld, &merged, delta).unwrap()
        );
        assert_eq!(
            epsilon(Accountant::Rdp, &rounds, delta).unwrap(),
            epsilon(Accountant::Rdp, &merged, delta).unwrap()
        );
        // The Opacus figure for the run, as privacy::epsilon gives it.
        assert_eq!(
            epsilon(Accountant::Rdp, &rounds, delta).unwrap(),
            crate::privacy::epsilon(16.0 / 90.0, 1.3, 240, delta)
                .unwrap()
                .0
        );
        // Different parameters stay apart, in order of first appearance.
        let mixed = [
            counts(4.0, 1, 9),
            sgd(0.1, 1.0, 5),
            counts(4.0, 1, 9),
            counts(4.0, 2, 9),
            sgd(0.1, 1.0, 7),
            sgd(0.1, 1.1, 7),
        ];
        assert_eq!(
            merge_repeats(&mixed),
            [
                counts(4.0, 1, 18),
                sgd(0.1, 1.0, 12),
                counts(4.0, 2, 9),
                sgd(0.1, 1.1, 7)
            ]
        );
    }

    #[test]
    fn composition_only_adds() {
        let delta = 1e-5;
        for accountant in [Accountant::Rdp, Accountant::Pld] {
            let mut releases = Vec::new();
            let mut last = epsilon(accountant, &releases, delta).unwrap();
            assert_eq!(last, 0.0);
            for release in [
                sgd(0.05, 1.0, 20),
                counts(6.0, 1, 5),
                sgd(0.05, 1.0, 80),
                counts(600.0, 100, 1),
                sgd(0.2, 2.0, 10),
                counts(6.0, 1, 50),
            ] {
                releases.push(release);
                let now = epsilon(accountant, &releases, delta).unwrap();
                assert!(now > last, "{accountant}: {releases:?}: {now} after {last}");
                last = now;
            }
            // At a smaller δ the same releases cost more.
            assert!(epsilon(accountant, &releases, 1e-7).unwrap() > last);
        }
    }

    #[test]
    fn more_noise_spends_less() {
        let delta = 1e-5;
        for accountant in [Accountant::Rdp, Accountant::Pld] {
            let mut last = f64::INFINITY;
            for sigma in [0.7, 0.9, 1.2, 2.0, 4.0] {
                let eps = epsilon(accountant, &[sgd(0.1, sigma, 100)], delta).unwrap();
                assert!(eps < last, "{accountant}: σ = {sigma}: {eps} after {last}");
                last = eps;
            }
            let mut last = f64::INFINITY;
            for sigma in [1.0, 2.0, 5.0, 20.0] {
                let eps = epsilon(accountant, &[counts(sigma, 1, 9)], delta).unwrap();
                assert!(eps < last, "{accountant}: σ = {sigma}: {eps} after {last}");
                last = eps;
            }
        }
    }

    #[test]
    fn pld_is_tighter_than_rdp_at_the_demo() {
        // Issue 13: 7–15 % below RDP at the demo's settings.
        for sigma in [1.0, 1.2, 1.5] {
            let releases = demo_training(sigma);
            let rdp = epsilon(Accountant::Rdp, &releases, 1e-5).unwrap();
            let pld = epsilon(Accountant::Pld, &releases, 1e-5).unwrap();
            let lower = (rdp - pld) / rdp;
            assert!(
                (0.07..=0.15).contains(&lower),
                "σ = {sigma}: {pld} vs {rdp}"
            );
        }
    }

    /// ε of the Gaussian mechanism with noise σ at sensitivity 1 for `delta`, from its exact
    /// δ(ε) = Φ(1/2σ − εσ) − e^ε Φ(−1/2σ − εσ) (Balle and Wang 2018), by bisection.
    fn exact_gaussian_epsilon(sigma: f64, delta: f64) -> f64 {
        let phi = |x: f64| 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
        let delta_at =
            |eps: f64| phi(0.5 / sigma - eps * sigma) - eps.exp() * phi(-0.5 / sigma - eps * sigma);
        let (mut lo, mut hi) = (0.0, 100.0);
        for _ in 0..200 {
            let mid = (lo + hi) / 2.0;
            if delta_at(mid) > delta {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        hi
    }

    #[test]
    fn full_batch_steps_compose_to_the_exact_gaussian() {
        // n steps at q = 1 and noise σ are one Gaussian mechanism at noise σ/√n.
        for (sigma, steps, delta) in [(2.0, 10, 1e-5), (5.0, 100, 1e-6), (1.0, 1, 1e-5)] {
            let exact = exact_gaussian_epsilon(sigma / (steps as f64).sqrt(), delta);
            let pld = epsilon(Accountant::Pld, &[sgd(1.0, sigma, steps)], delta).unwrap();
            assert!(
                pld >= exact && pld - exact < 1e-4 * exact,
                "{pld} vs exact {exact}"
            );
        }
    }

    #[test]
    fn wide_discrete_gaussian_noise_costs_what_gaussian_noise_does() {
        // At σ ≫ 1 the discrete Gaussian is the Gaussian on the integers, to within 1e-3 in ε.
        for (sigma, sensitivity, cells) in [(40.0, 1, 1), (200.0, 3, 4)] {
            let discrete =
                epsilon(Accountant::Pld, &[counts(sigma, sensitivity, cells)], 1e-5).unwrap();
            let noise = sigma / sensitivity as f64;
            let gaussian = epsilon(Accountant::Pld, &[sgd(1.0, noise, cells)], 1e-5).unwrap();
            assert!(
                (discrete - gaussian).abs() < 1e-3 * gaussian,
                "{discrete} vs {gaussian}"
            );
        }
    }

    #[test]
    fn the_rdp_of_counts_is_the_zcdp_bound() {
        let rdp = counts(3.0, 2, 5).rdp(&DEFAULT_ALPHAS).unwrap();
        for (alpha, r) in DEFAULT_ALPHAS.iter().zip(&rdp) {
            assert!(
                (r - 5.0 * alpha * 4.0 / 18.0).abs() < 1e-12 * r,
                "α = {alpha}"
            );
        }
        // An evaluation release is one Gaussian mechanism at σ/Δ, as the ledger charged it.
        for attributes in [0, 1, 3] {
            let sigma = 4.0;
            let mut total = vec![0.0; DEFAULT_ALPHAS.len()];
            for release in evaluation(sigma, attributes) {
                let rdp = release.rdp(&DEFAULT_ALPHAS).unwrap();
                total.iter_mut().zip(&rdp).for_each(|(t, r)| *t += r);
            }
            let multiplier = sigma / sensitivity(attributes as usize);
            let gaussian = compute_rdp(1.0, multiplier, 1, &DEFAULT_ALPHAS).unwrap();
            for (t, g) in total.iter().zip(&gaussian) {
                assert!((t - g).abs() < 1e-12 * g, "{attributes}: {t} vs {g}");
            }
        }
        assert_eq!(counts(0.0, 1, 0).rdp(&[2.0]).unwrap(), [0.0]);
        assert_eq!(counts(0.0, 1, 3).rdp(&[2.0]).unwrap(), [f64::INFINITY]);
        assert_eq!(counts(1.0, 1, 1).rdp(&[1.0]), Err(PrivacyError::Order(1.0)));
    }

    #[test]
    fn the_planner_spends_at_most_the_target() {
        let (q, steps, delta) = (16.0 / 90.0, 240, 1e-5);
        for (target, already) in [
            (8.0, Vec::new()),
            (6.0, evaluation(20.0, 3).repeat(21)),
            (5.0, vec![sgd(0.05, 1.0, 50), counts(30.0, 1, 20)]),
        ] {
            let mut sigmas = Vec::new();
            for accountant in [Accountant::Rdp, Accountant::Pld] {
                let sigma =
                    noise_multiplier_for(accountant, target, delta, &already, q, steps).unwrap();
                let with = |sigma: f64| {
                    let mut all = already.clone();
                    all.push(sgd(q, sigma, steps));
                    epsilon(accountant, &all, delta).unwrap()
                };
                let spent = with(sigma);
                assert!(
                    spent <= target,
                    "{accountant}: σ {sigma} spends {spent} > {target}"
                );
                assert!(
                    target - spent <= DEFAULT_EPSILON_TOLERANCE,
                    "{accountant}: {spent}"
                );
                let less = with(0.99 * sigma);
                assert!(less > target, "{accountant}: 0.99σ spends only {less}");
                sigmas.push(sigma);
            }
            // The tighter accountant needs less noise for the same budget.
            assert!(sigmas[1] < sigmas[0], "{target}: {sigmas:?}");
        }
    }

    #[test]
    fn special_cases() {
        let delta = 1e-5;
        for accountant in [Accountant::Rdp, Accountant::Pld] {
            let nothing = [
                sgd(0.0, 0.0, 10),
                sgd(0.3, 0.0, 0),
                counts(0.0, 0, 5),
                counts(0.0, 3, 0),
            ];
            assert_eq!(epsilon(accountant, &nothing, delta), Ok(0.0));
            assert_eq!(epsilon(accountant, &[], delta), Ok(0.0));
            assert_eq!(
                epsilon(accountant, &[sgd(0.1, 1.0, 5), sgd(0.1, 0.0, 1)], delta),
                Ok(f64::INFINITY)
            );
            assert_eq!(
                epsilon(accountant, &[counts(0.0, 1, 1)], delta),
                Ok(f64::INFINITY)
            );
            assert_eq!(
                epsilon(accountant, &[sgd(1.5, 1.0, 5)], delta),
                Err(PrivacyError::SamplingRate(1.5))
            );
            assert_eq!(
                epsilon(accountant, &[sgd(0.1, -1.0, 5)], delta),
                Err(PrivacyError::NoiseMultiplier(-1.0))
            );
            assert!(matches!(
                epsilon(accountant, &[counts(f64::NAN, 1, 5)], delta),
                Err(PrivacyError::DiscreteGaussianSigma(_))
            ));
            for bad in [0.0, 1.0, f64::NAN] {
                assert!(matches!(
                    epsilon(accountant, &[sgd(0.1, 1.0, 5)], bad),
                    Err(PrivacyError::Delta(_))
                ));
            }
            assert_eq!(
                noise_multiplier_for(accountant, 0.0, delta, &[], 0.1, 10),
                Err(PrivacyError::TargetEpsilon(0.0))
            );
            assert_eq!(
                noise_multiplier_for(accountant, 5.0, delta, &[], 0.0, 10),
                Err(PrivacyError::NoConvergence {
                    target_epsilon: 5.0
                })
            );
            assert_eq!(
                noise_multiplier_for(accountant, 5.0, delta, &[counts(0.0, 1, 1)], 0.1, 10),
                Err(PrivacyError::BudgetTooLow {
                    target_epsilon: 5.0
                })
            );
        }
        // Noise far too small for its sensitivity: a grid of billions of points.
        assert!(matches!(
            epsilon(Accountant::Pld, &[counts(0.01, 1, 1)], delta),
            Err(PrivacyError::PldTooLarge { .. })
        ));
        assert!(epsilon(Accountant::Rdp, &[counts(0.01, 1, 1)], delta).unwrap() > 1e3);
        // Past what the RDP orders reach, a PLD still finds a noise multiplier.
        assert_eq!(
            noise_multiplier_for(Accountant::Rdp, 0.05, delta, &[], 0.01, 10),
            Err(PrivacyError::BudgetTooLow {
                target_epsilon: 0.05
            })
        );
        let sigma = noise_multiplier_for(Accountant::Pld, 0.05, delta, &[], 0.01, 10).unwrap();
        assert!(epsilon(Accountant::Pld, &[sgd(0.01, sigma, 10)], delta).unwrap() <= 0.05);
    }

    fn distributed(q: f64, z: f64, summands: u64, steps: u64) -> Mechanism {
        Mechanism::DistributedDiscreteGaussian {
            sample_rate: q,
            noise_multiplier: z,
            l2_sensitivity: 4100.0,
            l1_sensitivity: 130_000.0,
            dimension: 1000,
            summands,
            steps,
        }
    }

    #[test]
    fn compositions_with_a_distributed_release_are_converted_from_rdp() {
        let delta = 1e-5;
        let ddg = distributed(0.02, 1.1, 5, 200);
        for releases in [
            vec![ddg],
            vec![sgd(0.05, 1.0, 20), ddg, counts(6.0, 1, 5)],
            vec![ddg, ddg],
        ] {
            let rdp = epsilon(Accountant::Rdp, &releases, delta).unwrap();
            assert_eq!(epsilon(Accountant::Pld, &releases, delta).unwrap(), rdp);
        }
        // The distributed release adds to what was spent, under both accountants.
        let before = epsilon(Accountant::Rdp, &[sgd(0.05, 1.0, 20)], delta).unwrap();
        let after = epsilon(Accountant::Rdp, &[sgd(0.05, 1.0, 20), ddg], delta).unwrap();
        assert!(after > before);
        // Repeats are merged by steps, as DP-SGD's are.
        assert_eq!(
            merge_repeats(&[ddg, distributed(0.02, 1.1, 5, 50), ddg]),
            [distributed(0.02, 1.1, 5, 450)]
        );
        // Planning beside a distributed release: PLD plans as RDP does.
        let already = [ddg];
        let rdp = noise_multiplier_for(Accountant::Rdp, 8.0, delta, &already, 0.05, 100).unwrap();
        let pld = noise_multiplier_for(Accountant::Pld, 8.0, delta, &already, 0.05, 100).unwrap();
        assert_eq!(rdp, pld);
        assert_eq!(
            ddg.pld_once(DEFAULT_INTERVAL).unwrap_err(),
            PrivacyError::PldUnsupported
        );
    }

    #[test]
    fn distributed_special_cases() {
        let delta = 1e-5;
        for accountant in [Accountant::Rdp, Accountant::Pld] {
            assert_eq!(
                epsilon(accountant, &[distributed(0.0, 1.0, 3, 10)], delta),
                Ok(0.0)
            );
            assert_eq!(
                epsilon(accountant, &[distributed(0.1, 1.0, 3, 0)], delta),
                Ok(0.0)
            );
            assert_eq!(
                epsilon(accountant, &[distributed(0.1, 0.0, 3, 10)], delta),
                Ok(f64::INFINITY)
            );
            assert_eq!(
                epsilon(accountant, &[distributed(1.2, 1.0, 3, 10)], delta),
                Err(PrivacyError::SamplingRate(1.2))
            );
            assert_eq!(
                epsilon(accountant, &[distributed(0.1, 1.0, 0, 10)], delta),
                Err(PrivacyError::DistributedShape {
                    dimension: 1000,
                    summands: 0
                })
            );
            // σ_share = 1e-4 · 4100 / √3 < 1: below what the DDG bound is used for.
            assert!(matches!(
                epsilon(accountant, &[distributed(0.1, 1e-4, 3, 10)], delta),
                Err(PrivacyError::ShareSigma(_))
            ));
            let mut bad = distributed(0.1, 1.0, 3, 10);
            if let Mechanism::DistributedDiscreteGaussian { l1_sensitivity, .. } = &mut bad {
                *l1_sensitivity = f64::NAN;
            }
            assert!(matches!(
                epsilon(accountant, &[bad], delta),
                Err(PrivacyError::Sensitivity(_))
            ));
        }
        assert_eq!(
            distributed(0.1, 1.0, 3, 10).rdp(&[0.5]),
            Err(PrivacyError::Order(0.5))
        );
    }

    #[test]
    fn names_and_formats() {
        for (accountant, name) in [(Accountant::Rdp, "rdp"), (Accountant::Pld, "pld")] {
            assert_eq!(accountant.to_string(), name);
            assert_eq!(name.parse::<Accountant>(), Ok(accountant));
            assert_eq!(
                serde_json::to_string(&accountant).unwrap(),
                format!("\"{name}\"")
            );
            let back: Accountant = serde_json::from_str(&format!("\"{name}\"")).unwrap();
            assert_eq!(back, accountant);
        }
        let err = "prv".parse::<Accountant>().unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unknown privacy accountant "prv": expected "rdp" or "pld""#
        );
        assert_eq!(Accountant::default(), Accountant::Rdp);
        let releases = [sgd(0.25, 1.5, 12), counts(4.0, 256, 1)];
        let text = serde_json::to_string(&releases).unwrap();
        assert_eq!(
            text,
            r#"[{"kind":"subsampled_gaussian","sample_rate":0.25,"noise_multiplier":1.5,"steps":12},{"kind":"discrete_gaussian","sigma":4.0,"sensitivity":256,"cells":1}]"#
        );
        assert_eq!(
            serde_json::from_str::<Vec<Mechanism>>(&text).unwrap(),
            releases
        );
        // A distributed release as a ledger stores it.
        let release = [distributed(0.02, 1.1, 5, 200)];
        let text = serde_json::to_string(&release).unwrap();
        assert_eq!(
            text,
            r#"[{"kind":"distributed_discrete_gaussian","sample_rate":0.02,"noise_multiplier":1.1,"l2_sensitivity":4100.0,"l1_sensitivity":130000.0,"dimension":1000,"summands":5,"steps":200}]"#
        );
        assert_eq!(
            serde_json::from_str::<Vec<Mechanism>>(&text).unwrap(),
            release
        );
    }
}
