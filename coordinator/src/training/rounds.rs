//! The training loop: federated statistics, then training rounds, then a final evaluation.
//! Each attempt asks the round engine's rules who to ask and whether to evaluate, runs one
//! collection through the [`Driver`], and follows [`AfterFailure`] when it fails.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use medfed_audit::bias::{self as audit, AttributeAudit};
use medfed_audit::checkpoint::checkpoint_file_name;
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::evaluation::{EvalCounts, EvalMetrics};
use medfed_protocol::messages::{RoundStart, StatsRequest};
use medfed_protocol::round::{
    AfterFailure, Asked, CollectionPlan, FigureLayout, Gathered, LeftOut, Request, SecurePlan,
    check_example_count, decide_evaluation,
};
use medfed_protocol::stats::{FederatedSummary, Standardization};
use tracing::{Instrument, info, info_span, warn};

use super::apply::{self, Assessment};
use super::driver::Driver;
use super::error::{CoordinatorError, RoundFailure};
use super::{
    EVALUATION_PARTICIPANTS_KEY, FINAL_EVALUATION_KEY, MAX_REPORTED_ROUNDS, RoundReport,
    STANDARDIZATION_KEY, STATS_PARTICIPANTS_KEY, SUMMARY_KEY, Trainer, TrainingReport, now_ms,
    random_bytes,
};
use crate::config::PausePhase;
use crate::console::RunState;
use crate::exchange::ModelPush;
use crate::faults;

/// One collection's sum, with the round's layout and, under distributed DP, its decoded
/// pseudo-update.
pub(super) struct Collected {
    pub gathered: Gathered,
    pub layout: RoundLayout,
    pub distributed_delta: Option<Vec<f64>>,
}

impl Trainer {
    /// Runs the whole task.
    pub(super) async fn run(mut self) -> Result<TrainingReport, CoordinatorError> {
        // A restarted coordinator also waits for the hospitals its evaluations were summed
        // over: without all of them, no round could evaluate.
        let evaluated = self.evaluation_participants().map_or(0, |e| e.len());
        let start = self.config.task.start_nodes.unwrap_or(0).max(evaluated);
        if start > 0 {
            let wait = self.config.task.wait_for_nodes();
            let connected = self.registry.wait_for(start, wait).await.len();
            info!(connected, wanted = start, "starting");
        }
        let standardization = self.standardization().await?;
        self.prepare_model_files(&standardization)?;
        self.distributed = self.distributed_decoder()?;
        self.console.set_state(RunState::Training);
        let mut reports = VecDeque::new();
        let mut earlier_rounds = 0;
        let mut checkpoint = None;
        let mut stopped_early = None;
        while self.round < self.config.task.rounds {
            let round = self.round + 1;
            match self.train_round(round, &standardization).await? {
                Some((report, path)) => {
                    earlier_rounds += push_latest(&mut reports, report, MAX_REPORTED_ROUNDS);
                    checkpoint = Some(path);
                }
                None => {
                    let why = format!(
                        "training stopped after round {} of {}: too few nodes have privacy budget left for another round",
                        self.round, self.config.task.rounds
                    );
                    warn!("{why}");
                    stopped_early = Some(why);
                    break;
                }
            }
        }
        if checkpoint.is_none() && self.round > 0 {
            // Every round was applied by an earlier run: the final model is that run's last.
            checkpoint = Some(
                self.config
                    .data_dir
                    .join("checkpoints")
                    .join(checkpoint_file_name(self.round)),
            );
        }
        self.console.set_state(RunState::FinalEvaluation);
        let (final_evaluation, final_fairness) = self.final_evaluation(&standardization).await?;
        self.console.final_evaluation(
            final_evaluation
                .as_ref()
                .map(|m| apply::pooled(self.round, m)),
        );
        let (released, released_round) = self.release()?;
        self.write_model_card(&released, released_round)?;
        self.console.released(released_round, released.clone());
        let released = Some((released, released_round));
        self.finish().await;
        self.console
            .ended(RunState::Finished, stopped_early.clone());
        let bytes_received = self.registry.bytes_received();
        Ok(TrainingReport {
            bytes_received,
            rounds: reports.into(),
            earlier_rounds,
            final_evaluation,
            final_fairness,
            final_model: self.model,
            checkpoint,
            released,
            last_round: self.round,
            stopped_early,
        })
    }

    /// The consortium's standardisation: from the state store, or from a statistics round.
    async fn standardization(&mut self) -> Result<Standardization, CoordinatorError> {
        if let Some(known) = self
            .store
            .get_json::<Standardization>(STANDARDIZATION_KEY)?
        {
            return Ok(known);
        }
        let span = info_span!("statistics");
        self.console.set_state(RunState::Statistics);
        async {
            let attempts = self.config.task.round_attempts;
            for attempt in 1..=attempts {
                self.console.attempt_started(0, attempt);
                faults::pause(self.config.danger_pause_at, 0, PausePhase::RoundStarted).await;
                let request = Request::Stats(StatsRequest {
                    session: self.session,
                    round: 0,
                    secure_aggregation: None,
                });
                let layout = FigureLayout::Stats {
                    len: self.schema.stats_len(),
                };
                match self.gather(request, layout, None).await {
                    Ok(g) => {
                        let sum = g.sum.to_vec();
                        let standardization =
                            Standardization::from_summed_stats(&self.schema, &sum)?;
                        let summary = FederatedSummary::from_summed_stats(&self.schema, &sum)?;
                        {
                            // The standardisation goes last: once it is stored, a restarted
                            // coordinator skips this round, so the summary must already be there.
                            let store = &self.store;
                            store.put_json(SUMMARY_KEY, &summary)?;
                            store.put_json(STATS_PARTICIPANTS_KEY, &g.participants)?;
                            store.put_json(STANDARDIZATION_KEY, &standardization)?;
                        }
                        info!(nodes = g.participants.len(), summary = %serde_json::to_string(&summary).unwrap_or_default(), "federated statistics computed");
                        faults::pause(self.config.danger_pause_at, 0, PausePhase::RoundCompleted)
                            .await;
                        return Ok(standardization);
                    }
                    Err(e) => {
                        self.console.attempt_failed();
                        warn!(attempt, error = %e, "statistics round failed");
                        if e.next_step(attempt, attempts, false) == AfterFailure::Retry {
                            retry_pause(attempt).await;
                        }
                    }
                }
            }
            Err(CoordinatorError::GaveUp { round: 0 })
        }
        .instrument(span)
        .await
    }

    /// Runs round `round` until it is applied or the attempts run out; `None` when too few
    /// nodes have privacy budget left for it (training stops: they would decline every retry).
    async fn train_round(
        &mut self,
        round: u64,
        standardization: &Standardization,
    ) -> Result<Option<(RoundReport, PathBuf)>, CoordinatorError> {
        let span = info_span!("round", round);
        async {
            let attempts = self.config.task.round_attempts;
            for attempt in 1..=attempts {
                let started = Instant::now();
                self.console.attempt_started(round, attempt);
                self.store
                    .begin_round(round, &self.model.hash(), now_ms())?;
                faults::pause(self.config.danger_pause_at, round, PausePhase::RoundStarted).await;
                match self
                    .round_exchange(round, attempt, true, standardization)
                    .await
                {
                    Ok(collected) => {
                        let (report, path) = self.apply(round, collected, started).await?;
                        return Ok(Some((report, path)));
                    }
                    Err(reason) => {
                        self.console.attempt_failed();
                        let next = reason.next_step(attempt, attempts, true);
                        warn!(attempt, %reason, ?next, "round attempt failed");
                        self.store
                            .abort_round(round, &reason.to_string(), now_ms())?;
                        match next {
                            AfterFailure::StopTraining => return Ok(None),
                            AfterFailure::Retry => retry_pause(attempt).await,
                            AfterFailure::GiveUp => break,
                        }
                    }
                }
            }
            Err(CoordinatorError::GaveUp { round })
        }
        .instrument(span)
        .await
    }

    /// Asks every connected node for its round vector and sums them.
    async fn round_exchange(
        &mut self,
        round: u64,
        attempt: u32,
        train: bool,
        standardization: &Standardization,
    ) -> Result<Collected, RoundFailure> {
        let evaluated_with = self.evaluation_participants();
        let decision = decide_evaluation(
            self.manifest.releases.evaluates(round, train),
            train,
            attempt,
            evaluated_with.as_deref(),
            &self.roster(round),
        )?;
        for hospital in &decision.leave_out {
            self.exclusions
                .exclude(round, hospital, LeftOut::NotAnEvaluationParticipant);
        }
        if decision.skipped {
            info!(
                round,
                attempt,
                "the round's evaluation is left out: a retry, or its hospitals are not those \
                 whose held-out counts were summed before"
            );
        }
        let score_bins = self.manifest.releases.score_bins;
        let layout = RoundLayout {
            params: self.model.params.len(),
            train,
            evaluate: decision.evaluate,
            groups: self.schema.audit_groups().len(),
            bins: score_bins,
            distributed: train && self.distributed.is_some(),
        };
        let plan = self.manifest.training.plan(round);
        let learning_rate = plan.learning_rate;
        let request = Request::Round(RoundStart {
            session: self.session,
            round,
            attempt,
            model_hash: self.model.hash(),
            train,
            evaluate: decision.evaluate,
            score_bins,
            decision_threshold: self.manifest.releases.decision_threshold,
            plan,
            standardization: standardization.clone(),
            secure_aggregation: None,
        });
        let push = Arc::new(ModelPush::new(&self.model, self.session, round));
        let gathered = self
            .gather(request, FigureLayout::Round(layout), Some(push))
            .await?;
        let mut distributed_delta = None;
        if layout.distributed {
            distributed_delta = Some(self.distributed_delta(&gathered, layout, learning_rate)?);
        } else if train {
            self.check_example_count(&gathered)?;
        }
        if decision.evaluate && evaluated_with.is_none() {
            let mut participants = gathered.participants.clone();
            participants.sort();
            self.store
                .put_json(EVALUATION_PARTICIPANTS_KEY, &participants)?;
        }
        Ok(Collected {
            gathered,
            layout,
            distributed_delta,
        })
    }

    /// Collects one set of figures from every connected node not left out of the round, and
    /// returns their sum: unmasked by secure aggregation or, if the consortium turned that
    /// off, summed in the clear.
    async fn gather(
        &mut self,
        request: Request,
        layout: FigureLayout,
        model: Option<Arc<ModelPush>>,
    ) -> Result<Gathered, RoundFailure> {
        let round = request.round();
        let min_nodes = self.config.task.min_nodes;
        let mut nodes = self
            .registry
            .wait_for(min_nodes, self.config.task.wait_for_nodes())
            .await;
        nodes.retain(|node| !self.exclusions.is_excluded(round, &node.identity));
        let secure = self
            .manifest
            .secure_aggregation
            .clone()
            .map(|settings| SecurePlan {
                settings,
                manifest_digest: self.manifest.digest().0,
                graph_seed: random_bytes(),
                verifier: self.peer_verifier.clone(),
            });
        let plan = CollectionPlan {
            request,
            layout,
            min_nodes,
            nodes: nodes
                .iter()
                .map(|node| Asked {
                    identity: node.identity.clone(),
                    certificate: node.certificate.clone(),
                })
                .collect(),
            left_out: self.exclusions.of_round(round),
            secure,
        };
        let driver = Driver {
            console: &self.console,
            nodes: &nodes,
            model,
            phase_deadline: self.config.task.round_deadline(),
            pause_at: self.config.danger_pause_at,
        };
        let outcome = driver.collect(plan).await;
        for (identity, why) in outcome.accused {
            self.exclusions.exclude(round, &identity, why);
        }
        outcome.result.map_err(RoundFailure::from)
    }

    /// The hospitals a round would ask now, sorted: those connected, less those left out of
    /// the round.
    fn roster(&self, round: u64) -> Vec<String> {
        let mut roster: Vec<String> = self
            .registry
            .connected()
            .iter()
            .map(|node| node.identity.clone())
            .filter(|identity| !self.exclusions.is_excluded(round, identity))
            .collect();
        roster.sort();
        roster
    }

    /// The hospitals whose held-out counts were first summed, if any were.
    pub(super) fn evaluation_participants(&self) -> Option<Vec<String>> {
        self.store
            .get_json::<Vec<String>>(EVALUATION_PARTICIPANTS_KEY)
            .ok()
            .flatten()
    }

    /// Checks the example count the round's hospitals declare against their statistics, when
    /// they are exactly the statistics round's hospitals ([`check_example_count`]).
    fn check_example_count(&self, gathered: &Gathered) -> Result<(), RoundFailure> {
        let (summary, counted) = {
            let store = &self.store;
            (
                store.get_json::<FederatedSummary>(SUMMARY_KEY),
                store.get_json::<Vec<String>>(STATS_PARTICIPANTS_KEY),
            )
        };
        let (Ok(Some(summary)), Ok(Some(counted))) = (summary, counted) else {
            return Ok(());
        };
        if counted != gathered.participants {
            return Ok(());
        }
        let declared = gathered.sum.last().unwrap_or(f64::NAN);
        Ok(check_example_count(
            declared,
            summary.n,
            summary.count_noise,
        )?)
    }

    /// Evaluates the final model on the held-out split of the hospitals of the first
    /// evaluation.
    async fn final_evaluation(
        &mut self,
        standardization: &Standardization,
    ) -> Result<(Option<EvalMetrics>, Vec<AttributeAudit>), CoordinatorError> {
        let round = self.round + 1;
        let span = info_span!("final_evaluation", model_round = self.round);
        async {
            let attempts = self.config.task.round_attempts;
            for attempt in 1..=attempts {
                self.console.attempt_started(round, attempt);
                faults::pause(self.config.danger_pause_at, round, PausePhase::RoundStarted).await;
                match self
                    .round_exchange(round, attempt, false, standardization)
                    .await
                {
                    Ok(Collected { gathered, layout, .. }) => {
                        let totals = layout.decode_sum(&gathered.sum);
                        let metrics = totals
                            .as_ref()
                            .and_then(|t| t.eval.as_ref())
                            .and_then(EvalCounts::metrics);
                        let counts = totals
                            .as_ref()
                            .and_then(|t| t.eval.clone())
                            .filter(|_| metrics.is_some());
                        // Without held-out examples there is nothing to audit.
                        let fairness = totals
                            .filter(|_| metrics.is_some())
                            .map(|t| {
                                audit::audit(
                                    &self.schema,
                                    &t.groups,
                                    &self.config.fairness,
                                    self.manifest.releases.decision_threshold,
                                )
                            })
                            .unwrap_or_default();
                        audit::log(&fairness);
                        self.store
                            .put_json(FINAL_EVALUATION_KEY, &(self.round, &metrics, &fairness))?;
                        self.keep_evaluation_counts(self.round, counts.as_ref())?;
                        // The opted-in hospitals' own figures of this very sum.
                        let sites = if metrics.is_some() {
                            self.site_evaluations(round, attempt, &gathered.participants, layout)
                                .await
                        } else {
                            Vec::new()
                        };
                        let path = self.write_report(
                            self.round,
                            self.model.hash(),
                            &gathered.participants,
                            &gathered.privacy,
                            Assessment {
                                evaluation: metrics.clone(),
                                fairness: fairness.clone(),
                                sites,
                            },
                        )?;
                        faults::pause(self.config.danger_pause_at, round, PausePhase::ReportWritten)
                            .await;
                        if let Some(path) = path {
                            info!(report = %path.display(), page = %self.reports.page_path().display(), "audit report written");
                        }
                        if let Some(m) = &metrics {
                            info!(
                                nodes = gathered.participants.len(),
                                examples = m.examples,
                                auc = m.auc.unwrap_or(f64::NAN),
                                accuracy = m.accuracy,
                                loss = m.loss,
                                "final model evaluated on pooled held-out data"
                            );
                        }
                        return Ok((metrics, fairness));
                    }
                    Err(reason) => {
                        self.console.attempt_failed();
                        warn!(attempt, %reason, "final evaluation failed");
                        if reason.next_step(attempt, attempts, false) == AfterFailure::Retry {
                            retry_pause(attempt).await;
                        }
                    }
                }
            }
            Ok((None, Vec::new()))
        }
        .instrument(span)
        .await
    }
}

/// Waits a little longer after each failed attempt, so nodes that are still connecting can join.
async fn retry_pause(attempt: u32) {
    tokio::time::sleep(std::time::Duration::from_millis(500) * 2u32.saturating_pow(attempt.min(5)))
        .await;
}

/// Appends `item` to `latest`, dropping the oldest beyond `cap`; returns how many it dropped.
fn push_latest<T>(latest: &mut VecDeque<T>, item: T, cap: usize) -> u64 {
    latest.push_back(item);
    let mut dropped = 0;
    while latest.len() > cap {
        latest.pop_front();
        dropped += 1;
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_keeps_the_latest_rounds_and_counts_the_others() {
        let (mut latest, mut earlier) = (VecDeque::new(), 0);
        for round in 1..=250u64 {
            earlier += push_latest(&mut latest, round, MAX_REPORTED_ROUNDS);
        }
        assert_eq!(latest.len(), MAX_REPORTED_ROUNDS);
        assert_eq!(latest.front(), Some(&151));
        assert_eq!(latest.back(), Some(&250));
        assert_eq!(earlier, 150);
        // A short run keeps every round.
        let mut short = VecDeque::new();
        assert_eq!(push_latest(&mut short, 1, MAX_REPORTED_ROUNDS), 0);
        assert_eq!(short.len(), 1);
    }
}
