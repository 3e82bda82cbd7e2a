//! Privacy loss distributions (PLDs): the accountant that composes releases through the exact
//! distribution of their privacy loss rather than through Rényi-DP bounds, as Google's
//! dp_accounting (`PLDAccountant`) and Opacus's PRV accountant do. For the same releases it
//! gives a smaller ε than [`crate::privacy`]'s RDP accountant, and still an upper bound.
//!
//! ```text
//!  mechanism ─▶ δ(ε) on a grid of losses ─▶ connect the dots ─▶ LossPmf (one step)
//!     ─▶ self_compose(n): FFT, raised to the n-th power ─▶ compose: FFT convolution
//!     ─▶ epsilon(δ): smallest ε whose hockey-stick divergence is at most δ
//! ```
//!
//! The privacy loss of a mechanism `M` on neighbours `D, D'` is `L = ln(P[M(D) = o] /
//! P[M(D') = o])` for `o ~ M(D)`; `M` is (ε, δ)-DP exactly when `E[(1 − e^(ε − L))₊] ≤ δ` for
//! every pair, and losses of independent releases add, so their distributions convolve. Each
//! distribution is discretised on a grid of step `interval` ([`DEFAULT_INTERVAL`], as
//! dp_accounting) pessimistically (dp_accounting's `pessimistic_estimate=True`), and each
//! composition drops at most `10^−15` of mass from its tails, moving it up (to `+∞` or to the
//! lowest loss kept), so every ε computed here bounds the true one from above.
//!
//! Neighbours differ by adding or removing one patient. Poisson subsampling makes the two
//! directions differ, so a [`PrivacyLossDistribution`] carries one distribution for each and
//! reports the worse; mechanisms without subsampling have the same for both.
//!
//! The methods follow dp_accounting 0.6 (`pld/pld_pmf.py`, `pld/privacy_loss_distribution.py`,
//! `pld/privacy_loss_mechanism.py`, `pld/common.py`); `scripts/pld_vectors.py` records its values
//! and the tests in [`crate::accounting`] check these against them.

mod connect_dots;
mod discrete_gaussian;
mod gaussian;
mod pmf;

pub use discrete_gaussian::MAX_SUPPORT;
pub use pmf::{LossPmf, MAX_POINTS};

use gaussian::Adjacency;

use crate::privacy::PrivacyError;

/// The default grid step of losses (dp_accounting's `value_discretization_interval`).
pub const DEFAULT_INTERVAL: f64 = 1e-4;

/// The privacy loss distribution of a mechanism under add-or-remove adjacency: one
/// [`LossPmf`] for each direction, or one for both when they are the same.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivacyLossDistribution {
    /// The distribution when the mechanism runs on the data set with the patient.
    remove: LossPmf,
    /// The distribution when it runs on the one without; `None`: the same as `remove`.
    add: Option<LossPmf>,
}

impl PrivacyLossDistribution {
    /// The distribution of releasing nothing, on the grid of step `interval`.
    pub fn identity(interval: f64) -> Result<Self, PrivacyError> {
        check_interval(interval)?;
        Ok(Self {
            remove: LossPmf::identity(interval),
            add: None,
        })
    }

    /// One step of the Poisson-subsampled Gaussian mechanism: each patient joins with
    /// probability `q` in `(0, 1]`, their contribution is clipped to norm 1, and Gaussian noise
    /// of standard deviation `noise_multiplier` (finite, above 0) is added.
    pub fn subsampled_gaussian(
        q: f64,
        noise_multiplier: f64,
        interval: f64,
    ) -> Result<Self, PrivacyError> {
        check_interval(interval)?;
        if !(q > 0.0 && q <= 1.0) {
            return Err(PrivacyError::SamplingRate(q));
        }
        if !(noise_multiplier.is_finite() && noise_multiplier > 0.0) {
            return Err(PrivacyError::NoiseMultiplier(noise_multiplier));
        }
        let one =
            |adjacency| gaussian::subsampled_gaussian(q, noise_multiplier, adjacency, interval);
        let remove = one(Adjacency::Remove)?;
        let add = if q < 1.0 {
            Some(one(Adjacency::Add)?)
        } else {
            None
        };
        Ok(Self { remove, add })
    }

    /// One integer released with discrete Gaussian noise of parameter `sigma` (finite, above 0),
    /// where one patient moves the integer by at most `sensitivity` (at least 1).
    pub fn discrete_gaussian(
        sigma: f64,
        sensitivity: u64,
        interval: f64,
    ) -> Result<Self, PrivacyError> {
        check_interval(interval)?;
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(PrivacyError::DiscreteGaussianSigma(sigma));
        }
        if sensitivity == 0 {
            return Self::identity(interval);
        }
        Ok(Self {
            remove: discrete_gaussian::discrete_gaussian(sigma, sensitivity, interval)?,
            add: None,
        })
    }

    /// The distribution of both releases, independently: the convolution for each direction.
    pub fn compose(&self, other: &Self) -> Result<Self, PrivacyError> {
        if self.interval() != other.interval() {
            return Err(PrivacyError::PldInterval(other.interval()));
        }
        let remove = self.remove.compose(&other.remove)?;
        let add = match (&self.add, &other.add) {
            (None, None) => None,
            (a, b) => Some(
                a.as_ref()
                    .unwrap_or(&self.remove)
                    .compose(b.as_ref().unwrap_or(&other.remove))?,
            ),
        };
        Ok(Self { remove, add })
    }

    /// The distribution of `times` independent runs (none: the identity).
    pub fn self_compose(&self, times: u64) -> Result<Self, PrivacyError> {
        if times == 0 {
            return Self::identity(self.interval());
        }
        Ok(Self {
            remove: self.remove.self_compose(times)?,
            add: self
                .add
                .as_ref()
                .map(|a| a.self_compose(times))
                .transpose()?,
        })
    }

    /// The smallest ε ≥ 0 for which the releases are (ε, `delta`)-DP by this distribution, the
    /// worse of the two directions (`+∞` if none is).
    pub fn epsilon(&self, delta: f64) -> Result<f64, PrivacyError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(PrivacyError::Delta(delta));
        }
        let remove = self.remove.epsilon_for_delta(delta);
        Ok(match &self.add {
            Some(add) => remove.max(add.epsilon_for_delta(delta)),
            None => remove,
        })
    }

    /// The δ at which the releases are (`epsilon`, δ)-DP by this distribution, the worse of the
    /// two directions.
    pub fn delta(&self, epsilon: f64) -> f64 {
        let remove = self.remove.delta_for_epsilon(epsilon);
        match &self.add {
            Some(add) => remove.max(add.delta_for_epsilon(epsilon)),
            None => remove,
        }
    }

    /// The distribution when the mechanism runs on the data set with the patient.
    pub fn remove(&self) -> &LossPmf {
        &self.remove
    }

    /// The distribution when it runs on the data set without the patient.
    pub fn add(&self) -> &LossPmf {
        self.add.as_ref().unwrap_or(&self.remove)
    }

    /// The grid step of losses.
    pub fn interval(&self) -> f64 {
        self.remove.interval()
    }
}

fn check_interval(interval: f64) -> Result<(), PrivacyError> {
    if interval.is_finite() && interval > 0.0 {
        Ok(())
    } else {
        Err(PrivacyError::PldInterval(interval))
    }
}
