//! The model files: each round's checkpoint carries what scoring a patient needs
//! ([`Scoring`]), and when training ends the consortium's released model — the model the
//! [`ReleaseRule`] chooses among the audited ones, with the link to the report that judged it —
//! is written to `model.safetensors` in the state folder.

use std::path::PathBuf;

use medfed_audit::checkpoint::{
    checkpoint_file_name, read_checkpoint, read_model_file, write_released_model,
    write_round_checkpoint,
};
use medfed_audit::model_file::{AuditLink, ModelFile, Scoring};
use medfed_audit::reports::ChainLink;
use medfed_protocol::stats::Standardization;
use tracing::{info, warn};

use super::{CoordinatorError, Trainer};
use crate::config::ReleaseRule;

/// File name of the released model in the coordinator's state folder.
pub const RELEASED_MODEL_FILE: &str = "model.safetensors";

/// The audited model a rule releases: its round, and its report's SHA-256 and verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Chosen {
    /// The model's round.
    pub(crate) round: u64,
    /// The report that judged it.
    pub(crate) audit: AuditLink,
}

/// The report whose model `rule` releases, among `chain` (a link per report, oldest first),
/// when the final model is that of round `last`.
///
/// [`ReleaseRule::Last`] takes the report of round `last`; [`ReleaseRule::LowestLoss`] the
/// report with the lowest pooled held-out loss, the latest on a tie, or that of round `last`
/// when no report has an evaluation. `None` when the chosen round has no report (its evaluation
/// failed): the final model is then released unjudged.
pub(crate) fn choose(chain: &[ChainLink], rule: ReleaseRule, last: u64) -> Option<Chosen> {
    let chosen = |link: &ChainLink| Chosen {
        round: link.round,
        audit: AuditLink {
            report_sha256: link.sha256.clone(),
            approved: link.approved,
        },
    };
    let of_last = || chain.iter().rev().find(|l| l.round == last).map(chosen);
    match rule {
        ReleaseRule::Last => of_last(),
        ReleaseRule::LowestLoss => chain
            .iter()
            .filter_map(|l| Some((l.loss?, l)))
            .filter(|(loss, _)| loss.is_finite())
            // `min_by` keeps the first of equal elements; reversed, that is the latest.
            .rev()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, l)| chosen(l))
            .or_else(of_last),
    }
}

impl Trainer {
    /// Sets what every model file carries once the statistics round has given the
    /// standardisation, and writes the initial model's checkpoint if no round has completed.
    ///
    /// The initial model is audited too; its checkpoint lets auditors check its hash. A run
    /// killed before round 1 completed may have written it, and its audit report may already
    /// name the file's SHA-256: an equal file (same model and scoring) is kept byte for byte
    /// (the encoding's metadata order is not stable across runs).
    pub(super) fn prepare_model_files(
        &mut self,
        standardization: &Standardization,
    ) -> Result<(), CoordinatorError> {
        let scoring = Scoring::new(
            self.schema_text.clone(),
            standardization.clone(),
            self.manifest.releases.decision_threshold,
            &self.model.spec,
        )?;
        self.scoring = Some(scoring);
        if self.round > 0 {
            return Ok(());
        }
        let file = self.model_file(0, self.model.clone());
        let dir = self.config.data_dir.join("checkpoints");
        let kept = read_model_file(&dir.join(checkpoint_file_name(0))).is_ok_and(|on_disk| {
            on_disk.round == 0 && on_disk.model == file.model && on_disk.scoring == file.scoring
        });
        if !kept {
            write_round_checkpoint(&dir, &file)?;
        }
        Ok(())
    }

    /// The model file of round `round`'s `model`, with the scoring every file carries.
    pub(super) fn model_file(&self, round: u64, model: medfed_protocol::model::Model) -> ModelFile {
        ModelFile {
            round,
            model,
            scoring: self.scoring.clone(),
            audit: None,
        }
    }

    /// Writes the released model: the audited model [`choose`] picks, with its report's link,
    /// to `model.safetensors` in the state folder. Returns its path and round.
    pub(super) fn release(&self) -> Result<(PathBuf, u64), CoordinatorError> {
        let rule = self.config.task.release;
        let chosen = choose(self.reports.links(), rule, self.round);
        let round = chosen.as_ref().map_or(self.round, |c| c.round);
        let checkpoint = self
            .config
            .data_dir
            .join("checkpoints")
            .join(checkpoint_file_name(round));
        let (_, model) = read_checkpoint(&checkpoint)?;
        let mut file = self.model_file(round, model);
        file.audit = chosen.as_ref().map(|c| c.audit.clone());
        if file.audit.is_none() {
            warn!(
                round,
                "the released model has no audit report: its evaluation did not complete"
            );
        }
        let path = self.config.data_dir.join(RELEASED_MODEL_FILE);
        write_released_model(&path, &file)?;
        info!(
            round,
            rule = ?rule,
            approved = file.audit.as_ref().map(|a| a.approved),
            report = file.audit.as_ref().map(|a| a.report_sha256.as_str()),
            path = %path.display(),
            "model released"
        );
        Ok((path, round))
    }
}

#[cfg(test)]
mod tests {
    use medfed_protocol::evaluation::EvalMetrics;
    use medfed_protocol::report::{AuditReport, REPORT_FORMAT};

    use super::*;

    fn report(round: u64, loss: Option<f64>, approved: bool) -> AuditReport {
        AuditReport {
            format: REPORT_FORMAT.to_owned(),
            round,
            created_at_ms: 0,
            model_sha256: "0".repeat(64),
            checkpoint_sha256: None,
            participants: vec!["hospital-a".into()],
            absent_members: Vec::new(),
            privacy: Vec::new(),
            evaluation: loss.map(|loss| EvalMetrics {
                examples: 100,
                loss,
                accuracy: 0.8,
                auc: Some(0.8),
                prevalence: 0.4,
            }),
            fairness: Vec::new(),
            approved,
            not_evaluated: None,
            site_evaluations: Vec::new(),
            previous_report_sha256: None,
        }
    }

    fn sha(round: u64) -> String {
        format!("{round:064x}")
    }

    fn chain(reports: &[AuditReport]) -> Vec<ChainLink> {
        reports
            .iter()
            .map(|r| ChainLink::of(r, sha(r.round)))
            .collect()
    }

    fn pick(reports: &[AuditReport], rule: ReleaseRule, last: u64) -> Option<(u64, bool)> {
        choose(&chain(reports), rule, last).map(|c| {
            assert_eq!(c.audit.report_sha256, sha(c.round));
            (c.round, c.audit.approved)
        })
    }

    #[test]
    fn the_last_rule_releases_the_final_model_with_its_own_verdict() {
        let reports = [
            report(0, Some(0.7), true),
            report(1, Some(0.4), true),
            report(2, Some(0.5), false),
        ];
        assert_eq!(pick(&reports, ReleaseRule::Last, 2), Some((2, false)));
        // The final model's evaluation failed: no report vouches for it.
        assert_eq!(pick(&reports[..2], ReleaseRule::Last, 2), None);
    }

    #[test]
    fn the_lowest_loss_rule_picks_the_best_audited_round_and_the_latest_on_a_tie() {
        let reports = [
            report(0, Some(0.7), true),
            report(1, Some(0.4), false),
            report(2, Some(0.5), true),
        ];
        assert_eq!(pick(&reports, ReleaseRule::LowestLoss, 2), Some((1, false)));
        let tie = [
            report(0, Some(0.7), true),
            report(1, Some(0.4), true),
            report(2, Some(0.4), false),
        ];
        assert_eq!(pick(&tie, ReleaseRule::LowestLoss, 2), Some((2, false)));
    }

    #[test]
    fn without_any_evaluated_report_the_lowest_loss_rule_falls_back_to_the_final_model() {
        let reports = [report(0, None, false), report(3, None, false)];
        assert_eq!(pick(&reports, ReleaseRule::LowestLoss, 3), Some((3, false)));
        let nan = [report(0, Some(f64::NAN), true), report(3, None, true)];
        assert_eq!(pick(&nan, ReleaseRule::LowestLoss, 3), Some((3, true)));
    }
}
