//! The coordinator's round engine, without IO: one attempt at a round is a [`Collection`], a
//! state machine fed with the nodes' answers that returns what to send next and, at the end,
//! the sum and who is in it; the rules around it ([`decide_evaluation`], [`check_budgets`],
//! [`check_example_count`], [`AttemptFailure::next_step`], [`Exclusions`]) decide who is asked,
//! whether an attempt evaluates, and what follows a failure. Every node left out carries a
//! typed [`LeftOut`] reason.
//!
//! The coordinator's driver (`coordinator/src/training/`) does the rest: it sends, receives,
//! times each phase out, and persists what a round produced.

mod check;
mod collection;
mod left_out;
mod rules;
mod sum;
#[cfg(test)]
mod tests;

pub use check::check_contribution;
pub use collection::{
    Asked, Collection, CollectionPlan, FigureLayout, Gathered, Outcome, Outgoing, Phase, Progress,
    Request, SecurePlan,
};
pub use left_out::LeftOut;
pub use rules::{
    AfterFailure, AttemptFailure, COUNT_NOISE_TOLERANCE, EvaluationDecision, Exclusions,
    check_budgets, check_example_count, decide_evaluation,
};
pub use sum::RoundSum;
