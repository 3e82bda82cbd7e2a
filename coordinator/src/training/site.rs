//! The site figures of the final evaluation: after its sum is in, the coordinator asks each
//! hospital the signed manifest lists in `releases.site_figures` (and that was in the sum) for
//! the evaluation vector it put into that sum, and turns it into that site's metrics for the
//! report. A hospital whose own policy does not release one declines; its absence is logged
//! and the report goes on without it.

use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::evaluation::EvalCounts;
use medfed_protocol::messages::{Message, SiteFigure, SiteFigureRequest};
use medfed_protocol::report::SiteEvaluation;
use tracing::{info, warn};

use super::Trainer;
use crate::exchange;

impl Trainer {
    /// Asks every site-figure hospital among `participants` for its vector of `attempt` at the
    /// final evaluation `round`, laid out as `layout` (evaluation only); the site metrics of
    /// those that answered, sorted by hospital.
    pub(super) async fn site_evaluations(
        &self,
        round: u64,
        attempt: u32,
        participants: &[String],
        layout: RoundLayout,
    ) -> Vec<SiteEvaluation> {
        let request = Message::SiteFigureRequest(SiteFigureRequest {
            session: self.session,
            round,
            attempt,
        });
        let mut out = Vec::new();
        for node in self.registry.connected() {
            let identity = &node.identity;
            if !self.manifest.releases.reveals(identity) || !participants.contains(identity) {
                continue;
            }
            let answer = tokio::time::timeout(
                self.config.task.round_deadline(),
                exchange::request(&node, &request, None),
            )
            .await;
            let figure = match answer {
                Ok(Ok(Message::SiteFigure(figure))) => figure,
                Ok(Ok(Message::Declined(declined))) => {
                    warn!(node = %identity, reason = %declined.reason, "the hospital declined its site figure");
                    continue;
                }
                Ok(Ok(other)) => {
                    warn!(node = %identity, got = other.kind(), "unexpected answer to a site-figure request");
                    continue;
                }
                Ok(Err(e)) => {
                    warn!(node = %identity, error = %e, "no site figure");
                    continue;
                }
                Err(_) => {
                    warn!(node = %identity, "no site figure before the deadline");
                    continue;
                }
            };
            match site_evaluation(identity, &figure, (round, attempt), layout) {
                Some(site) => {
                    info!(
                        node = %identity,
                        noised = site.noised,
                        examples = site.metrics.as_ref().map_or(0, |m| m.examples),
                        auc = site.metrics.as_ref().and_then(|m| m.auc).unwrap_or(f64::NAN),
                        accuracy = site.metrics.as_ref().map_or(f64::NAN, |m| m.accuracy),
                        loss = site.metrics.as_ref().map_or(f64::NAN, |m| m.loss),
                        "site figure: the final model on this hospital's own held-out data"
                    );
                    out.push(site);
                }
                None => {
                    warn!(node = %identity, "a site figure that does not fit the evaluation's layout, or of another round")
                }
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }
}

/// The site's metrics from its figure, if the figure answers `(round, attempt)` and fits
/// `layout`; counts are read as the pooled ones are (negative noised counts as 0).
fn site_evaluation(
    node: &str,
    figure: &SiteFigure,
    (round, attempt): (u64, u32),
    layout: RoundLayout,
) -> Option<SiteEvaluation> {
    if (figure.round, figure.attempt) != (round, attempt)
        || figure.values.iter().any(|v| !v.is_finite())
    {
        return None;
    }
    let totals = layout.decode(&figure.values)?;
    Some(SiteEvaluation {
        node: node.to_owned(),
        noised: figure.noised,
        metrics: totals.eval.as_ref().and_then(EvalCounts::metrics),
    })
}
