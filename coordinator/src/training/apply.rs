//! What a collected round becomes: the new model (the server optimiser applied to the mean
//! update, or to the distributed-DP pseudo-update), its checkpoint, the signed audit report of
//! the round's starting model, and the round completed in the state store, in that order.

use std::path::PathBuf;
use std::time::Instant;

use medfed_audit::bias::{self as audit, AttributeAudit};
use medfed_audit::checkpoint::{
    checkpoint_file_name, file_sha256_streaming, write_round_checkpoint,
};
use medfed_protocol::contribution::RoundLayout;
use medfed_protocol::evaluation::{EvalCounts, EvalMetrics};
use medfed_protocol::messages::{Finished, Message};
use medfed_protocol::model::{Model, ModelHash};
use medfed_protocol::report::{
    AuditReport, NodePrivacy, NotEvaluated, REPORT_FORMAT, SiteEvaluation,
};
use medfed_protocol::round::{Gathered, RoundSum};
use medfed_protocol::stats::FederatedSummary;
use tokio::task::JoinSet;
use tracing::{info, warn};

use super::error::{CoordinatorError, RoundFailure};
use super::rounds::Collected;
use super::{DistributedDecoder, RoundReport, SUMMARY_KEY, Trainer, now_ms};
use crate::config::PausePhase;
use crate::console::{self, FairnessVerdict, PooledEvaluation};
use crate::exchange;
use crate::faults;
use crate::store::CompletedRound;
use crate::strategy::{apply_summed_update, distributed_delta};

/// What an audit report says of its model: the pooled evaluation, the fairness audit, and
/// the opted-in hospitals' own site figures.
pub(super) struct Assessment {
    /// The pooled held-out evaluation, if there was one.
    pub evaluation: Option<EvalMetrics>,
    /// The fairness audit of each attribute.
    pub fairness: Vec<AttributeAudit>,
    /// The site figures (final evaluation only).
    pub sites: Vec<SiteEvaluation>,
}

impl Trainer {
    /// Applies a round's summed update, checkpoints the model and records the round.
    pub(super) async fn apply(
        &mut self,
        round: u64,
        collected: Collected,
        started: Instant,
    ) -> Result<(RoundReport, PathBuf), CoordinatorError> {
        let Collected {
            mut gathered,
            layout,
            distributed_delta,
        } = collected;
        let totals = layout
            .decode_sum(&gathered.sum)
            .ok_or_else(|| CoordinatorError::Internal("sum length".into()))?;
        let evaluation = totals.eval.as_ref().and_then(EvalCounts::metrics);
        // Without held-out examples there is nothing to audit (the report says so).
        let fairness = if evaluation.is_some() {
            audit::audit(
                &self.schema,
                &totals.groups,
                &self.config.fairness,
                self.manifest.releases.decision_threshold,
            )
        } else {
            Vec::new()
        };
        audit::log(&fairness);
        let eval_counts = totals.eval;
        // The model is updated in place from the sum read a piece at a time, and every
        // model-sized vector dropped as soon as it has served: the coordinator holds the model
        // and the round's sum (under secure aggregation, its words), never a decoded copy (an
        // error here ends the run, which resumes from the last completed round).
        let start_hash = self.model.hash();
        let mut params = std::mem::take(&mut self.model.params);
        let optimizer = self
            .optimizer
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match distributed_delta {
            Some(delta) => optimizer.try_apply(&mut params, &delta)?,
            None => {
                let (Some(update), Some(weight)) = (layout.update_range(), totals.update_weight)
                else {
                    return Err(CoordinatorError::Internal("no update block".into()));
                };
                apply_summed_update(
                    optimizer.as_mut(),
                    &mut params,
                    &gathered.sum,
                    update,
                    weight,
                )?;
            }
        }
        gathered.sum = RoundSum::default();
        let optimizer_state = optimizer.state();
        let file = self.model_file(round, Model::new(self.model.spec.clone(), params)?);
        let checkpoint_started = Instant::now();
        let path = write_round_checkpoint(&self.config.data_dir.join("checkpoints"), &file)?;
        let model = file.model;
        let mut checkpoint_seconds = checkpoint_started.elapsed().as_secs_f64();
        let pause = self.config.danger_pause_at;
        faults::pause(pause, round, PausePhase::CheckpointWritten).await;
        let report = RoundReport {
            round,
            participants: gathered.participants,
            dropped: gathered.dropped,
            privacy: gathered.privacy.clone(),
            start_model_evaluation: evaluation,
            fairness,
            model_hash: model.hash().to_hex(),
            seconds: started.elapsed().as_secs_f64(),
        };
        // The audit of the round's starting model goes into the chain before the round counts
        // as completed: a crash in between re-runs the round, and the chain skips the repeat. A
        // round off the evaluation schedule has nothing to audit.
        let mut report_file = None;
        if layout.evaluate {
            self.keep_evaluation_counts(round - 1, eval_counts.as_ref())?;
            report_file = self.write_report(
                round - 1,
                start_hash,
                &report.participants,
                &gathered.privacy,
                Assessment {
                    evaluation: report.start_model_evaluation.clone(),
                    fairness: report.fairness.clone(),
                    sites: Vec::new(),
                },
            )?;
        }
        faults::pause(pause, round, PausePhase::ReportWritten).await;
        let commit_started = Instant::now();
        self.store.complete_round(&CompletedRound {
            round,
            model_hash: model.hash(),
            checkpoint_path: path.clone(),
            participants: report.participants.clone(),
            metrics: serde_json::to_value(&report).unwrap_or_default(),
            optimizer_state: Some(optimizer_state),
            finished_at_ms: now_ms(),
        })?;
        checkpoint_seconds += commit_started.elapsed().as_secs_f64();
        self.console.round_completed(console::CompletedRound {
            round,
            participants: report.participants.clone(),
            dropped: report.dropped.clone(),
            privacy: report
                .privacy
                .iter()
                .map(|p| (p.node.clone(), p.epsilon, p.delta))
                .collect(),
            evaluation: report
                .start_model_evaluation
                .as_ref()
                .map(|m| pooled(round - 1, m)),
            fairness: verdict(&report.fairness),
            report: report_file
                .as_deref()
                .and_then(|path| self.relative_to_state(path)),
            seconds: report.seconds,
            checkpoint_seconds,
        });
        faults::pause(pause, round, PausePhase::RoundCompleted).await;
        match &report.start_model_evaluation {
            Some(m) => info!(
                nodes = report.participants.len(),
                examples = m.examples,
                auc = m.auc.unwrap_or(f64::NAN),
                accuracy = m.accuracy,
                loss = m.loss,
                seconds = report.seconds,
                "round applied (metrics: model of round {} on pooled held-out data)",
                round - 1
            ),
            None => info!(
                nodes = report.participants.len(),
                seconds = report.seconds,
                "round applied"
            ),
        }
        self.model = model;
        self.round = round;
        Ok((report, path))
    }

    /// The decoder of distributed-DP update blocks, when the manifest plans distributed DP:
    /// its parameters, and the public denominator `q·N` with `N` the pooled noised example
    /// count the statistics round gave. Without that count the task cannot start.
    pub(super) fn distributed_decoder(
        &self,
    ) -> Result<Option<DistributedDecoder>, CoordinatorError> {
        let (Some(plan), Some(params)) = (
            self.manifest.distributed_dp.as_ref(),
            self.manifest.distributed_params(),
        ) else {
            return Ok(None);
        };
        let params = params.map_err(|e| CoordinatorError::DistributedDp(e.to_string()))?;
        let summary = self.store.get_json::<FederatedSummary>(SUMMARY_KEY)?;
        let Some(summary) = summary.filter(|s| s.n > 0) else {
            return Err(CoordinatorError::DistributedDp(
                "the statistics round left no pooled example count N to divide the sum by (q·N)"
                    .into(),
            ));
        };
        let denominator = plan.sample_rate * summary.n as f64;
        info!(
            sample_rate = plan.sample_rate,
            pooled_examples = summary.n,
            denominator,
            noise_multiplier = plan.noise_multiplier,
            threshold = plan.threshold,
            noise_std_at_threshold = params.noise_std_of_sum(params.config().threshold),
            "distributed DP: each round is one DP-FedSGD step over the public denominator q·N"
        );
        Ok(Some(DistributedDecoder {
            params,
            denominator,
        }))
    }

    /// Under distributed DP, the round's pseudo-update from the unmasked sum: the words
    /// decoded over the survivors (`DdpParams::decode_sum`, which refuses a sum over fewer
    /// than `t` or a coordinate out of range), divided by the public `q·N`, times `−lr`.
    pub(super) fn distributed_delta(
        &self,
        gathered: &Gathered,
        layout: RoundLayout,
        learning_rate: f64,
    ) -> Result<Vec<f64>, RoundFailure> {
        let decoder = self
            .distributed
            .as_ref()
            .ok_or_else(|| RoundFailure::Store("no distributed-DP decoder".into()))?;
        let words = layout
            .decode_sum(&gathered.sum)
            .and_then(|totals| totals.distributed_sum)
            .ok_or_else(|| RoundFailure::Store("the sum does not fit the round layout".into()))?;
        let gradient_sum = decoder
            .params
            .decode_sum(&words, gathered.participants.len())?;
        Ok(distributed_delta(
            &gradient_sum,
            decoder.denominator,
            learning_rate,
        )?)
    }

    /// Appends the signed audit report of the model of `model_round` to the chain.
    ///
    /// An audited round without `evaluation` had no held-out examples (the pooled count is
    /// zero): its report is [`NotEvaluated::NoEvaluationData`], with no audit and no approval.
    pub(super) fn write_report(
        &mut self,
        model_round: u64,
        model_hash: ModelHash,
        participants: &[String],
        privacy: &[NodePrivacy],
        assessment: Assessment,
    ) -> Result<Option<PathBuf>, CoordinatorError> {
        let Assessment {
            evaluation,
            fairness,
            sites: site_evaluations,
        } = assessment;
        let checkpoint = self
            .config
            .data_dir
            .join("checkpoints")
            .join(checkpoint_file_name(model_round));
        let checkpoint_sha256 = file_sha256_streaming(&checkpoint).ok();
        let not_evaluated = evaluation
            .is_none()
            .then_some(NotEvaluated::NoEvaluationData);
        if let Some(why) = not_evaluated {
            warn!(model_round, "audit report: {why}");
        }
        let report = AuditReport {
            format: REPORT_FORMAT.to_owned(),
            round: model_round,
            created_at_ms: now_ms(),
            model_sha256: model_hash.to_hex(),
            checkpoint_sha256,
            participants: participants.to_vec(),
            absent_members: self
                .members
                .iter()
                .filter(|member| !participants.contains(member))
                .cloned()
                .collect(),
            privacy: privacy.to_vec(),
            evaluation,
            approved: not_evaluated.is_none() && fairness.iter().all(|a| a.policy.approved),
            not_evaluated,
            fairness,
            site_evaluations,
            previous_report_sha256: None,
        };
        Ok(self.reports.append(report)?)
    }

    /// Tells every connected node that training is over.
    pub(super) async fn finish(&self) {
        let message = Message::Finished(Finished {
            session: self.session,
            round: self.round,
            model_hash: self.model.hash(),
        });
        let mut tasks = JoinSet::new();
        for node in self.registry.connected() {
            let message = message.clone();
            tasks.spawn(async move {
                let _ = tokio::time::timeout(
                    std::time::Duration::from_secs(5),
                    exchange::request(&node, &message, None),
                )
                .await;
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

/// The console's record of pooled metrics of the model of `model_round`.
pub(super) fn pooled(model_round: u64, metrics: &EvalMetrics) -> PooledEvaluation {
    PooledEvaluation {
        model_round,
        examples: metrics.examples,
        auc: metrics.auc,
        accuracy: metrics.accuracy,
        loss: metrics.loss,
    }
}

/// The fairness policy's verdict over every audited attribute, if any was audited.
pub(super) fn verdict(fairness: &[AttributeAudit]) -> Option<FairnessVerdict> {
    if fairness.is_empty() {
        return None;
    }
    Some(FairnessVerdict {
        approved: fairness.iter().all(|a| a.policy.approved),
        attributes: fairness.iter().map(|a| a.attribute.clone()).collect(),
        failed: fairness
            .iter()
            .filter(|a| !a.policy.approved)
            .map(|a| a.attribute.clone())
            .collect(),
    })
}
