//! Why a node's figures are not in a round's sum: one typed reason per node left out, for the
//! round report, the log and the rules that follow from it (a spent privacy budget stops
//! training; a share that failed authentication keeps its sender out of the round's retries).

use serde::{Deserialize, Serialize};

use crate::messages::{DeclineReason, RefusalReason};

/// Why a node asked in a round is not among those summed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum LeftOut {
    /// The node declined the round (its budget, its policy, a local failure).
    #[error("node declined: {reason}")]
    Declined {
        /// The node's reason.
        reason: DeclineReason,
    },
    /// The node refused the coordinator's request.
    #[error("node refused: {reason}")]
    Refused {
        /// The node's reason.
        reason: RefusalReason,
    },
    /// The node answered with the right kind of message, but its contents are wrong (another
    /// session or round, the wrong length, non-finite figures).
    #[error("node's answer rejected: {reason}")]
    Rejected {
        /// What was wrong with it.
        reason: RefusalReason,
    },
    /// The node answered with a message of another phase.
    #[error("node sent {got}, expected {expected}")]
    Unexpected {
        /// Kind received.
        got: String,
        /// Kind expected.
        expected: String,
    },
    /// The node's secure-aggregation message broke the protocol (see [`crate::secagg`]).
    #[error("secure aggregation: {detail}")]
    SecureAggregation {
        /// The protocol violation.
        detail: String,
    },
    /// A peer reported that a secure-aggregation share this node sent it failed
    /// authentication. The node sits out the round's remaining attempts.
    #[error("its secure-aggregation share for {peer} failed authentication")]
    ShareAuthentication {
        /// The peer that could not authenticate the share.
        peer: String,
    },
    /// An evaluation-only round asks only the hospitals whose held-out counts were summed
    /// before: each sends its exact counts into one sum only.
    #[error("not among the hospitals whose held-out counts were summed before")]
    NotAnEvaluationParticipant,
    /// The connection failed or closed.
    #[error("connection lost: {detail}")]
    Connection {
        /// The transport's description.
        detail: String,
    },
    /// The node's stream carried bytes that are not a valid frame.
    #[error("bad frame: {detail}")]
    Framing {
        /// What was wrong with the bytes.
        detail: String,
    },
    /// No answer before the phase's deadline.
    #[error("no answer before the round deadline")]
    Deadline,
}

impl LeftOut {
    /// The kind of reason, as the summary and the metrics' labels name it (the serialised
    /// `kind`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Declined { .. } => "declined",
            Self::Refused { .. } => "refused",
            Self::Rejected { .. } => "rejected",
            Self::Unexpected { .. } => "unexpected",
            Self::SecureAggregation { .. } => "secure_aggregation",
            Self::ShareAuthentication { .. } => "share_authentication",
            Self::NotAnEvaluationParticipant => "not_an_evaluation_participant",
            Self::Connection { .. } => "connection",
            Self::Framing { .. } => "framing",
            Self::Deadline => "deadline",
        }
    }

    /// Whether the node declined because the round would take it past its privacy budget: it
    /// declines every later training round too.
    pub fn is_budget_spent(&self) -> bool {
        matches!(
            self,
            Self::Declined {
                reason: DeclineReason::BudgetSpent
            }
        )
    }

    /// The reason a node's answer `message` stands for when it is not the expected `expected`.
    pub fn from_unexpected(message: crate::messages::Message, expected: &str) -> Self {
        use crate::messages::Message;
        match message {
            Message::Declined(d) => Self::Declined { reason: d.reason },
            Message::Refused(r) => Self::Refused { reason: r.reason },
            other => Self::Unexpected {
                got: other.kind().to_owned(),
                expected: expected.to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_is_the_serialised_kind() {
        let every = [
            LeftOut::Declined {
                reason: DeclineReason::BudgetSpent,
            },
            LeftOut::Refused {
                reason: RefusalReason::Replay { round: 1 },
            },
            LeftOut::Rejected {
                reason: RefusalReason::Replay { round: 1 },
            },
            LeftOut::Unexpected {
                got: "a".into(),
                expected: "b".into(),
            },
            LeftOut::SecureAggregation { detail: "d".into() },
            LeftOut::ShareAuthentication { peer: "p".into() },
            LeftOut::NotAnEvaluationParticipant,
            LeftOut::Connection { detail: "d".into() },
            LeftOut::Framing { detail: "d".into() },
            LeftOut::Deadline,
        ];
        for left_out in every {
            let json = serde_json::to_value(&left_out).unwrap();
            assert_eq!(json["kind"], left_out.kind(), "{left_out:?}");
        }
    }
}
