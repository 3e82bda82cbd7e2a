//! The released model's card ([`medfed_audit::model_card`]), written beside the audit reports
//! when training ends, and the pooled evaluation counts it needs, kept in the state store.
//!
//! The card's calibration and intervals need the pooled held-out *counts* (the score
//! histograms), not only the report's metrics. The released model may be any audited round
//! (`release = "lowest_loss"`), and a restarted coordinator must still describe it, so every
//! audited round's pooled counts are kept in the state store, under
//! `evaluation_counts/<model round>`, before its report is written: whenever a report exists,
//! its counts do too (unless written by a coordinator from before the card, whose card then
//! carries the report's metrics without intervals or calibration, and says so).

use std::path::{Path, PathBuf};

use medfed_audit::checkpoint::{checkpoint_file_name, file_sha256_streaming, read_model_file};
use medfed_audit::model_card::{
    self, CardText, ModelCard, ModelDescription, Performance, PooledCounts, PrivacySection,
    ReleasedModel, figures,
};
use medfed_protocol::evaluation::{EvalCounts, EvalMetrics};
use medfed_protocol::report::Verdict;
use medfed_protocol::stats::FederatedSummary;
use tracing::info;

use super::release::choose;
use super::{CoordinatorError, STATS_PARTICIPANTS_KEY, SUMMARY_KEY, Trainer, now_ms};
use crate::config::ReleaseRule;

/// State-store key of the pooled held-out counts of the model of `round`.
fn counts_key(round: u64) -> String {
    format!("evaluation_counts/{round}")
}

impl Trainer {
    /// Keeps the pooled held-out counts of the model of `model_round`, if it was evaluated,
    /// for the model card. Called before the round's report is written; a round the chain
    /// already covers (re-run after a crash, its report kept) keeps the counts of that report,
    /// not the re-run's.
    pub(super) fn keep_evaluation_counts(
        &self,
        model_round: u64,
        counts: Option<&EvalCounts>,
    ) -> Result<(), CoordinatorError> {
        if self
            .reports
            .last_round()
            .is_some_and(|last| model_round <= last)
        {
            return Ok(());
        }
        if let Some(counts) = counts {
            self.store
                .put_json(&counts_key(model_round), &PooledCounts::from(counts))?;
        }
        Ok(())
    }

    /// Writes `model_card.json`, its signature `model_card.json.sig` (the report key's) and
    /// `model_card.html` into the reports folder, describing the released model (`released`, of
    /// round `round`): bound to it by its round, model hash, checkpoint SHA-256 and file
    /// SHA-256, and to the report that judged it by that report's SHA-256. Returns the JSON's
    /// path.
    pub(super) fn write_model_card(
        &self,
        released: &Path,
        round: u64,
    ) -> Result<PathBuf, CoordinatorError> {
        let card = self.model_card(released, round)?;
        let dir = self.config.data_dir.join("reports");
        let json = dir.join(model_card::MODEL_CARD_JSON);
        let bytes = card.to_json_pretty()?;
        write(&json, &bytes)?;
        let signature = self.reports.sign_model_card(&bytes);
        write(
            &dir.join(model_card::MODEL_CARD_SIGNATURE),
            &signature.to_json_pretty()?,
        )?;
        let page = dir.join(model_card::MODEL_CARD_HTML);
        write(&page, model_card::html::render(&card).as_bytes())?;
        info!(
            round,
            card = %json.display(),
            page = %page.display(),
            verdict = %card.released_model.verdict,
            "model card written"
        );
        Ok(json)
    }

    /// The card of the released model.
    fn model_card(&self, released: &Path, round: u64) -> Result<ModelCard, CoordinatorError> {
        let rule = self.config.task.release;
        let chosen = choose(self.reports.links(), rule, self.round);
        let judged_report = match &chosen {
            Some(c) => self
                .reports
                .report(c.round)?
                .map(|report| (report, c.audit.report_sha256.as_str())),
            None => None,
        };
        let judged = judged_report.as_ref().map(|(report, sha)| (report, *sha));
        let model_file_sha256 =
            file_sha256_streaming(released).map_err(|source| CoordinatorError::Io {
                path: released.to_owned(),
                source,
            })?;
        let file = read_model_file(released)?;
        let checkpoint_sha256 = match judged {
            Some((report, _)) => report.checkpoint_sha256.clone(),
            None => file_sha256_streaming(
                &self
                    .config
                    .data_dir
                    .join("checkpoints")
                    .join(checkpoint_file_name(round)),
            )
            .ok(),
        };
        let text: &CardText = &self.config.model_card;
        let summary = self.store.get_json::<FederatedSummary>(SUMMARY_KEY)?;
        let sites = self
            .store
            .get_json::<Vec<String>>(STATS_PARTICIPANTS_KEY)?
            .unwrap_or_default();
        // Counts that do not give the report's own figures (never expected) are not used: the
        // card would show intervals around other figures than the report's. Within 1e-9, as
        // JSON (the store's and the report's) may move a float by one unit in the last place.
        let counts = match judged {
            Some((report, _)) if report.evaluation.is_some() => self
                .store
                .get_json::<PooledCounts>(&counts_key(report.round))?
                .filter(|c| {
                    let figures = EvalCounts::from(c.clone()).metrics();
                    figures
                        .zip(report.evaluation.as_ref())
                        .is_some_and(|(a, b)| same(&a, b))
                }),
            _ => None,
        };
        let performance = judged.and_then(|(report, _)| {
            Some(Performance {
                sites: report.participants.clone(),
                absent_members: report.absent_members.clone(),
                evaluation: report.evaluation.clone()?,
                intervals: counts.as_ref().map(model_card::Intervals::from_counts),
                note: figures::INTERVAL_NOTE.to_owned(),
            })
        });
        let last = self.reports.latest();
        let mut card = ModelCard {
            format: model_card::MODEL_CARD_FORMAT.to_owned(),
            created_at_ms: now_ms(),
            title: model_card::title(text, &self.schema),
            released_model: ReleasedModel {
                round,
                model_sha256: file.model.hash().to_hex(),
                checkpoint_sha256,
                model_file_sha256,
                report_sha256: judged.map(|(_, sha)| sha.to_owned()),
                verdict: judged.map_or_else(
                    || "UNJUDGED".to_owned(),
                    |(r, _)| Verdict::to_string(&r.verdict()),
                ),
                release_rule: match rule {
                    ReleaseRule::Last => "last",
                    ReleaseRule::LowestLoss => "lowest_loss",
                }
                .to_owned(),
            },
            intended_use: model_card::intended_use(text, &self.schema),
            data: model_card::data_summary(&self.schema, summary.as_ref(), sites),
            predictors: model_card::predictors(&self.schema),
            model: self.model_description(file.model.params.len()),
            privacy: PrivacySection {
                as_of_round: last.map(|r| r.round),
                per_site: last.map(|r| r.privacy.clone()).unwrap_or_default(),
            },
            performance,
            calibration: counts
                .as_ref()
                .and_then(model_card::Calibration::from_counts),
            fairness: model_card::fairness_section(judged.map(|(r, _)| r)),
            limitations: Vec::new(),
            tripod_ai: model_card::tripod_items(),
        };
        let stated = text.limitations.iter().map(|t| ("consortium", t.clone()));
        let generated = model_card::generated_limitations(&card)
            .into_iter()
            .map(|t| ("generated", t));
        card.limitations = stated
            .chain(generated)
            .map(|(source, text)| model_card::Limitation {
                source: source.to_owned(),
                text,
            })
            .collect();
        Ok(card)
    }

    /// TRIPOD+AI 12c, 13, 15: the model and its training, from the configuration and the
    /// signed manifest.
    fn model_description(&self, parameters: usize) -> ModelDescription {
        let task = &self.config.task;
        let threshold = self.manifest.releases.decision_threshold.get();
        let privacy_mechanism = match &self.manifest.distributed_dp {
            Some(plan) => format!(
                "distributed DP (one DP-FedSGD step a round under secure aggregation): sample \
                 rate q = {}, noise multiplier z = {}, per-example clipping norm C = {}, \
                 secure-aggregation threshold t = {}",
                plan.sample_rate, plan.noise_multiplier, plan.clip_norm, plan.threshold
            ),
            None => "local: each hospital trains under its own [privacy] policy (DP-SGD with \
                     its own clipping norm and noise multiplier where it sets one); the \
                     coordinator learns only each hospital's declared (ε, δ)"
                .to_owned(),
        };
        ModelDescription {
            architecture: model_card::architecture(&self.model.spec),
            input_features: self.schema.feature_names(),
            parameters,
            output: format!(
                "the predicted probability of the outcome (the sigmoid of the last layer); a \
                 patient is flagged positive when it is at least {threshold}"
            ),
            decision_threshold: threshold,
            rounds_planned: task.rounds,
            rounds_completed: self.round,
            server_strategy: serde_json::to_string(&self.config.strategy).unwrap_or_default(),
            local_epochs: task.training.local_epochs,
            learning_rate: task.training.learning_rate,
            batch_size: task.training.batch_size,
            pos_weight: task.training.pos_weight,
            privacy_mechanism,
            secure_aggregation: self.config.secure_aggregation.enabled,
            score_bins: task.score_bins.evaluation,
        }
    }
}

/// Whether two evaluations give the same figures, within 1e-9.
fn same(a: &EvalMetrics, b: &EvalMetrics) -> bool {
    let close = |x: f64, y: f64| (x - y).abs() <= 1e-9;
    a.examples == b.examples
        && close(a.loss, b.loss)
        && close(a.accuracy, b.accuracy)
        && close(a.prevalence, b.prevalence)
        && match (a.auc, b.auc) {
            (Some(x), Some(y)) => close(x, y),
            (x, y) => x == y,
        }
}

/// Writes `bytes` to `path` durably and atomically, as the reports are.
fn write(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    medfed_certs::replace_file(path, bytes).map_err(|source| CoordinatorError::Io {
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use medfed_protocol::fairness::GroupCounts;

    use super::*;

    #[test]
    fn kept_counts_are_used_only_when_they_give_the_reports_figures() {
        let mut positive = vec![0.0; 10];
        let mut negative = vec![0.0; 10];
        positive[8] = 3.0;
        negative[2] = 4.0;
        negative[9] = 1.0;
        let counts = EvalCounts {
            n: 8.0,
            loss_sum: 2.4,
            confusion: GroupCounts {
                tp: 3.0,
                fp: 1.0,
                tn: 4.0,
                fn_: 0.0,
                positive_scores: positive,
                negative_scores: negative,
            },
        };
        let reported = counts.metrics().unwrap();
        // Through the store's JSON and back: the same figures.
        let json = serde_json::to_string(&PooledCounts::from(&counts)).unwrap();
        let kept: PooledCounts = serde_json::from_str(&json).unwrap();
        let again = EvalCounts::from(kept).metrics().unwrap();
        assert!(same(&again, &reported));
        // One ulp of JSON rounding is not a difference; another evaluation's figures are.
        let mut nudged = reported.clone();
        nudged.loss = f64::from_bits(nudged.loss.to_bits() + 1);
        assert!(same(&nudged, &reported));
        let mut other = reported.clone();
        other.auc = other.auc.map(|a| a - 0.01);
        assert!(!same(&other, &reported));
        let mut fewer = reported.clone();
        fewer.examples -= 1;
        assert!(!same(&fewer, &reported));
    }
}
