//! The sans-IO core of medfed.
//!
//! This crate is deterministic and has no networking code: it does no IO, reads no clock and
//! knows nothing of tokio, quinn or libtorch. It holds every rule of the protocol — message types
//! and their framing, the model's parameter layout and content hash, the data schema and the
//! federated statistics derived from it, the layout of the vectors that nodes contribute and the
//! coordinator sums, and the pooled evaluation computed from those sums. The coordinator and the
//! node crates only move bytes and time.
//!
//! ```text
//!  node: CSV ─▶ schema ─▶ encoded rows ─▶ train/evaluate ─▶ RoundLayout::encode ─▶ frame ─┐
//!                                                                                         │ QUIC
//!  coordinator: FrameDecoder ─▶ Contribution ─▶ Σ over nodes ─▶ RoundLayout::decode ◀──────┘
//!               ─▶ pooled EvalCounts::metrics, mean update ─▶ server optimiser ─▶ next model
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod accounting;
pub mod architecture;
pub mod codec;
pub mod contribution;
pub mod discrete_gaussian;
pub mod distributed_dp;
pub mod eval_release;
pub mod evaluation;
pub mod fairness;
pub mod manifest;
pub mod messages;
pub mod model;
pub mod pld;
pub mod privacy;
pub mod report;
pub mod round;
pub mod schema;
pub mod secagg;
pub mod stats;
pub mod stats_release;
pub mod task;
pub mod torchscript;
pub mod transfer;
