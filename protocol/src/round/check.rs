//! Checks on a node's answer before its figures are summed in the clear (secure aggregation
//! turned off): the right session, round, kind, length and precision, and finite values.

use crate::messages::{Contribution, ContributionKind, Message, PlainFigures, RefusalReason};

use super::LeftOut;

/// Checks that `answer` is the expected contribution and returns it.
pub fn check_contribution(
    answer: Message,
    session: u64,
    round: u64,
    kind: ContributionKind,
    len: usize,
) -> Result<Contribution, LeftOut> {
    let contribution = match answer {
        Message::Contribution(c) => c,
        other => return Err(LeftOut::from_unexpected(other, "contribution")),
    };
    let reject = |reason| Err(LeftOut::Rejected { reason });
    if contribution.session != session {
        return reject(RefusalReason::WrongSession {
            got: contribution.session,
            expected: session,
        });
    }
    if contribution.round != round {
        return reject(RefusalReason::WrongRound {
            got: contribution.round,
            expected: round,
        });
    }
    if contribution.kind != kind || contribution.values.len() != len {
        return reject(RefusalReason::BadContribution {
            detail: format!(
                "{:?} of {} values, expected {kind:?} of {len}",
                contribution.kind,
                contribution.values.len()
            ),
        });
    }
    // Sums of squares lose too much in f32; round vectors may come at either precision.
    if kind == ContributionKind::Stats && matches!(contribution.values, PlainFigures::Single(_)) {
        return reject(RefusalReason::BadContribution {
            detail: "statistics must be sent as f64, not f32".into(),
        });
    }
    if let Some(i) = contribution.values.first_non_finite() {
        return reject(RefusalReason::BadContribution {
            detail: format!("value {i} is not finite"),
        });
    }
    Ok(contribution)
}
