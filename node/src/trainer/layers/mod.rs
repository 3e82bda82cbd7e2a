//! Declared architectures ([`medfed_protocol::architecture`]) on libtorch: the network built
//! from the flat parameter vector (`network`), exact per-example gradients vectorised over the
//! batch for DP-SGD (`per_example`), and training.
//!
//! ```text
//!  CheckedArchitecture + flat params ─▶ Network ─▶ forward on a Tape (each layer's a and z)
//!        Σᵢ ℓᵢ ─▶ one autograd backward ─▶ δ = ∂L/∂z per layer ─▶ per-example grads from (a, δ)
//!        ─▶ squared norms ─▶ clip factors ─▶ clipped sum (non-finite examples count zero)
//! ```
//!
//! The DP-SGD loop, its sampling and its noise are those of `dp_sgd` for the MLP: the batch
//! and the noise come from the caller's CSPRNG through `noise`, never from torch.

mod network;
mod per_example;
#[cfg(test)]
mod tests;
mod train;

use medfed_protocol::architecture::CheckedArchitecture;

pub(crate) use network::{Masks, Network};
pub(crate) use per_example::per_example_gradients;
pub(crate) use train::check_category_indices;

/// Most values one forward and backward pass over a part of a batch may hold for its examples'
/// activations or gradients: 2^25, 128 MiB as `f32`. A received architecture may hold up to
/// `MAX_TOTAL_ACTIVATION` values per example and have up to `MAX_PARAMS` parameters, so passes
/// take as few rows as keep within this; sums over a batch are the same whatever the split.
const PASS_VALUES: usize = 1 << 25;

/// How many rows one pass of `arch` takes: as many as keep each example's activations, and each
/// example's gradient, within [`PASS_VALUES`] together; at least one.
pub(crate) fn rows_per_pass(arch: &CheckedArchitecture) -> usize {
    let per_example = arch
        .activations_per_example()
        .max(arch.param_count())
        .max(1);
    (PASS_VALUES / per_example).max(1)
}
