//! Writing the signed, hash-chained audit reports: one JSON file per audited model round, and
//! the HTML page for people beside them.
//!
//! Each file is written atomically (temporary file, fsync, rename, fsync of the folder). Each
//! report names the SHA-256 of the previous report file's bytes, and is signed with the
//! coordinator's Ed25519 certificate key, so `medfed-audit verify` can check the whole chain
//! offline.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use medfed_protocol::report::{AuditReport, SignedReport, file_sha256};
use ring::signature::Ed25519KeyPair;

use crate::html::{MAX_TREND_ROUNDS, PageRound, render};

/// File name of the report of model round `round`.
pub fn report_file_name(round: u64) -> String {
    format!("round-{round:05}.json")
}

/// Name of the HTML page in the reports folder.
pub const PAGE_FILE: &str = "index.html";

/// Appends reports to the chain in a folder.
///
/// It holds a [`ChainLink`] per report and only the latest [`MAX_TREND_ROUNDS`] reports
/// themselves (what the page shows): a report is some 20 kB, and a run of days writes tens of
/// thousands. An older report is read back from its file when asked for ([`Self::report`]).
pub struct ReportWriter {
    dir: PathBuf,
    key: Ed25519KeyPair,
    /// One link per report so far, in chain order.
    links: Vec<ChainLink>,
    /// The latest reports, at most [`MAX_TREND_ROUNDS`], in chain order: the page's.
    recent: VecDeque<SignedReport>,
}

/// One report of the chain, in brief: what choosing the released model needs.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainLink {
    /// The report's model round.
    pub round: u64,
    /// Hex SHA-256 of the report file's bytes.
    pub sha256: String,
    /// The report's verdict.
    pub approved: bool,
    /// The pooled held-out loss of the round's model, if it was evaluated.
    pub loss: Option<f64>,
}

impl ChainLink {
    /// The link of `report`, whose file has the SHA-256 `sha256`.
    pub fn of(report: &AuditReport, sha256: String) -> Self {
        Self {
            round: report.round,
            sha256,
            approved: report.approved,
            loss: report.evaluation.as_ref().map(|e| e.loss),
        }
    }
}

impl ReportWriter {
    /// Opens the chain in `dir` (creating the folder), reading the reports already there.
    pub fn open(dir: &Path, key: Ed25519KeyPair) -> Result<Self, ReportWriteError> {
        std::fs::create_dir_all(dir).map_err(|source| ReportWriteError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|source| ReportWriteError::Io {
                path: dir.to_owned(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("round-") && n.ends_with(".json"))
            })
            .collect();
        names.sort();
        let mut writer = Self {
            dir: dir.to_owned(),
            key,
            links: Vec::new(),
            recent: VecDeque::new(),
        };
        for path in names {
            let bytes = std::fs::read(&path).map_err(|source| ReportWriteError::Io {
                path: path.clone(),
                source,
            })?;
            let report =
                SignedReport::from_json(&bytes).map_err(|e| ReportWriteError::Corrupt {
                    path: path.clone(),
                    detail: e.to_string(),
                })?;
            writer.push(report, file_sha256(&bytes));
        }
        Ok(writer)
    }

    /// A link per report of the chain, oldest first.
    pub fn links(&self) -> &[ChainLink] {
        &self.links
    }

    /// The last report, if any.
    pub fn latest(&self) -> Option<&AuditReport> {
        self.recent.back().map(|r| &r.report)
    }

    /// The round of the last report, if any.
    pub fn last_round(&self) -> Option<u64> {
        self.links.last().map(|l| l.round)
    }

    /// The chain's report of `round`, if it has one: one of the latest from memory, an older
    /// one read back from its file, which must still have the SHA-256 it was written with.
    pub fn report(&self, round: u64) -> Result<Option<AuditReport>, ReportWriteError> {
        let Some(link) = self.links.iter().rev().find(|l| l.round == round) else {
            return Ok(None);
        };
        if let Some(recent) = self.recent.iter().find(|r| r.report.round == round) {
            return Ok(Some(recent.report.clone()));
        }
        let path = self.dir.join(report_file_name(round));
        let bytes = std::fs::read(&path).map_err(|source| ReportWriteError::Io {
            path: path.clone(),
            source,
        })?;
        let sha256 = file_sha256(&bytes);
        if sha256 != link.sha256 {
            return Err(ReportWriteError::Corrupt {
                path,
                detail: format!(
                    "its SHA-256 is {sha256}, but the chain was written with {}",
                    link.sha256
                ),
            });
        }
        let signed = SignedReport::from_json(&bytes).map_err(|e| ReportWriteError::Corrupt {
            path,
            detail: e.to_string(),
        })?;
        Ok(Some(signed.report))
    }

    /// Links `report` to the chain, signs it, writes it and rewrites the page. A report for a
    /// round the chain already covers (a restarted coordinator auditing again) is not written.
    pub fn append(&mut self, mut report: AuditReport) -> Result<Option<PathBuf>, ReportWriteError> {
        if self.last_round().is_some_and(|last| report.round <= last) {
            return Ok(None);
        }
        report.previous_report_sha256 = self.links.last().map(|l| l.sha256.clone());
        let signed = SignedReport::sign(report, &self.key)
            .map_err(|e| ReportWriteError::Sign(e.to_string()))?;
        let bytes = signed
            .to_json_pretty()
            .map_err(|e| ReportWriteError::Sign(e.to_string()))?;
        let path = self.dir.join(report_file_name(signed.report.round));
        write_atomically(&path, &bytes)?;
        self.push(signed, file_sha256(&bytes));
        self.write_page()?;
        Ok(Some(path))
    }

    /// Adds a written report to the links and the latest reports, forgetting the oldest of
    /// those beyond [`MAX_TREND_ROUNDS`].
    fn push(&mut self, signed: SignedReport, sha256: String) {
        self.links.push(ChainLink::of(&signed.report, sha256));
        self.recent.push_back(signed);
        while self.recent.len() > MAX_TREND_ROUNDS {
            self.recent.pop_front();
        }
    }

    /// Rewrites the HTML page from the latest [`MAX_TREND_ROUNDS`] reports of the chain.
    fn write_page(&self) -> Result<PathBuf, ReportWriteError> {
        let privacy: Vec<Vec<(String, f64, f64)>> = self
            .recent
            .iter()
            .map(|r| {
                r.report
                    .privacy
                    .iter()
                    .map(|p| (p.node.clone(), p.epsilon, p.delta))
                    .collect()
            })
            .collect();
        let rounds: Vec<PageRound<'_>> = self
            .recent
            .iter()
            .zip(&privacy)
            .map(|(signed, privacy)| {
                let r = &signed.report;
                PageRound {
                    round: r.round,
                    model_sha256: &r.model_sha256,
                    approved: r.approved,
                    not_evaluated: r.not_evaluated,
                    evaluation: r.evaluation.as_ref(),
                    fairness: &r.fairness,
                    participants: &r.participants,
                    absent_members: &r.absent_members,
                    privacy,
                    site_evaluations: &r.site_evaluations,
                }
            })
            .collect();
        let page = render("medfed bias audit", &rounds);
        let path = self.dir.join(PAGE_FILE);
        write_atomically(&path, page.as_bytes())?;
        Ok(path)
    }

    /// Signs a model card file's `bytes` with the key that signs the reports.
    pub fn sign_model_card(&self, bytes: &[u8]) -> crate::model_card::CardSignature {
        crate::model_card::CardSignature::sign(bytes, &self.key)
    }

    /// The path of the HTML page.
    pub fn page_path(&self) -> PathBuf {
        self.dir.join(PAGE_FILE)
    }
}

/// Writes `bytes` to `path` durably and atomically ([`medfed_certs::replace_file`]).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReportWriteError> {
    medfed_certs::replace_file(path, bytes).map_err(|source| ReportWriteError::Io {
        path: path.to_owned(),
        source,
    })
}

/// A report could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReportWriteError {
    /// A file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A report already in the folder is not a report.
    #[error("{}: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// Signing or encoding failed.
    #[error("cannot sign the report: {0}")]
    Sign(String),
}

#[cfg(test)]
mod tests {
    use medfed_protocol::evaluation::EvalMetrics;
    use medfed_protocol::report::REPORT_FORMAT;
    use ring::rand::SystemRandom;

    use super::*;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn report(round: u64) -> AuditReport {
        AuditReport {
            format: REPORT_FORMAT.into(),
            round,
            created_at_ms: 1_700_000_000_000 + round as i64,
            model_sha256: format!("{round:064x}"),
            checkpoint_sha256: None,
            participants: vec!["hospital-a".into()],
            absent_members: Vec::new(),
            privacy: Vec::new(),
            evaluation: Some(EvalMetrics {
                examples: 100,
                loss: 1.0 / (round as f64 + 1.0),
                accuracy: 0.8,
                auc: Some(0.8),
                prevalence: 0.4,
            }),
            not_evaluated: None,
            fairness: Vec::new(),
            approved: true,
            site_evaluations: Vec::new(),
            previous_report_sha256: None,
        }
    }

    #[test]
    fn the_writer_holds_a_link_per_report_and_only_the_latest_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ReportWriter::open(dir.path(), key()).unwrap();
        let n = MAX_TREND_ROUNDS as u64 + 50;
        for round in 0..n {
            writer.append(report(round)).unwrap().unwrap();
        }
        assert_eq!(writer.links().len() as u64, n);
        assert_eq!(writer.recent.len(), MAX_TREND_ROUNDS);
        assert_eq!(writer.latest().map(|r| r.round), Some(n - 1));
        // Each link names its file's SHA-256, which the next report chains to.
        for pair in writer.links().windows(2) {
            let next = writer.report(pair[1].round).unwrap().unwrap();
            assert_eq!(
                next.previous_report_sha256.as_deref(),
                Some(&*pair[0].sha256)
            );
        }
        let link = &writer.links()[3];
        assert_eq!(
            (link.round, link.approved, link.loss),
            (3, true, Some(0.25))
        );
        // An old report, no longer in memory, is read back from its file.
        let mut expected = report(3);
        expected.previous_report_sha256 = Some(writer.links()[2].sha256.clone());
        assert_eq!(writer.report(3).unwrap(), Some(expected));
        assert_eq!(writer.report(n).unwrap(), None);
        // Reopened, the writer holds the same links and as few reports.
        let reopened = ReportWriter::open(dir.path(), key()).unwrap();
        assert_eq!(reopened.links(), writer.links());
        assert_eq!(reopened.recent.len(), MAX_TREND_ROUNDS);
    }

    #[test]
    fn an_old_report_changed_on_disk_is_refused_when_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = ReportWriter::open(dir.path(), key()).unwrap();
        for round in 0..=MAX_TREND_ROUNDS as u64 {
            writer.append(report(round)).unwrap().unwrap();
        }
        let path = dir.path().join(report_file_name(0));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("hospital-a", "hospital-b")).unwrap();
        let error = writer.report(0).unwrap_err().to_string();
        assert!(error.contains("the chain was written with"), "{error}");
    }
}
