//! Writing the signed, hash-chained audit reports: one JSON file per audited model round, and
//! the HTML page for people beside them.
//!
//! Each file is written atomically (temporary file, fsync, rename, fsync of the folder). Each
//! report names the SHA-256 of the previous report file's bytes, and is signed with the
//! coordinator's Ed25519 certificate key, so `medfed-audit verify` can check the whole chain
//! offline.

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
pub struct ReportWriter {
    dir: PathBuf,
    key: Ed25519KeyPair,
    /// Every report so far, in chain order, with its file's SHA-256.
    chain: Vec<(SignedReport, String)>,
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
        let mut chain = Vec::new();
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
            chain.push((report, file_sha256(&bytes)));
        }
        Ok(Self {
            dir: dir.to_owned(),
            key,
            chain,
        })
    }

    /// Every report of the chain, oldest first, with its file's SHA-256.
    pub fn chain(&self) -> impl Iterator<Item = (&AuditReport, &str)> {
        self.chain.iter().map(|(r, sha)| (&r.report, sha.as_str()))
    }

    /// The round of the last report, if any.
    pub fn last_round(&self) -> Option<u64> {
        self.chain.last().map(|(r, _)| r.report.round)
    }

    /// Links `report` to the chain, signs it, writes it and rewrites the page. A report for a
    /// round the chain already covers (a restarted coordinator auditing again) is not written.
    pub fn append(&mut self, mut report: AuditReport) -> Result<Option<PathBuf>, ReportWriteError> {
        if self.last_round().is_some_and(|last| report.round <= last) {
            return Ok(None);
        }
        report.previous_report_sha256 = self.chain.last().map(|(_, sha)| sha.clone());
        let signed = SignedReport::sign(report, &self.key)
            .map_err(|e| ReportWriteError::Sign(e.to_string()))?;
        let bytes = signed
            .to_json_pretty()
            .map_err(|e| ReportWriteError::Sign(e.to_string()))?;
        let path = self.dir.join(report_file_name(signed.report.round));
        write_atomically(&path, &bytes)?;
        self.chain.push((signed, file_sha256(&bytes)));
        self.write_page()?;
        Ok(Some(path))
    }

    /// Rewrites the HTML page from the latest [`MAX_TREND_ROUNDS`] reports of the chain.
    fn write_page(&self) -> Result<PathBuf, ReportWriteError> {
        let shown = &self.chain[self.chain.len().saturating_sub(MAX_TREND_ROUNDS)..];
        let privacy: Vec<Vec<(String, f64, f64)>> = shown
            .iter()
            .map(|(r, _)| {
                r.report
                    .privacy
                    .iter()
                    .map(|p| (p.node.clone(), p.epsilon, p.delta))
                    .collect()
            })
            .collect();
        let rounds: Vec<PageRound<'_>> = shown
            .iter()
            .zip(&privacy)
            .map(|((signed, _), privacy)| {
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
