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

pub(crate) use network::{Masks, Network};
pub(crate) use per_example::per_example_gradients;
pub(crate) use train::check_category_indices;
