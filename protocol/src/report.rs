//! Signed, hash-chained audit reports: the record auditors rely on.
//!
//! After each audited round the coordinator writes one [`SignedReport`] as a JSON file. Each
//! report names the model it describes (by [`ModelHash`](crate::model::ModelHash)), who took part,
//! the privacy spent, the pooled evaluation and the fairness audit, and it links to the report
//! before it by hash, so the files form a chain that can only be extended, not edited.
//!
//! This module does no IO and reads no clock: the creation time and the file bytes come in as
//! arguments, and the caller writes and reads the files.
//!
//! # Schema (`medfed-audit-report/1`)
//!
//! A report file is one JSON object, the [`SignedReport`]:
//!
//! ```text
//! {
//!   "report": {                              the signed content, an AuditReport
//!     "format": "medfed-audit-report/1",     REPORT_FORMAT
//!     "round": 12,                           the audited model's round
//!     "created_at_ms": 1700000000000,        Unix milliseconds, as given by the writer
//!     "model_sha256": "<64 hex>",            ModelHash of the audited model
//!     "checkpoint_sha256": "<64 hex>"|null,  SHA-256 of the checkpoint file's bytes, if known
//!     "participants": ["node-a", …],
//!     "absent_members": ["node-d", …],      members whose counts are missing; omitted if none
//!     "privacy": [{"node": …, "epsilon": …, "delta": …}, …],
//!     "evaluation": EvalMetrics | null,
//!     "not_evaluated": "no_evaluation_data", why nothing could be measured; omitted if measured
//!     "fairness": [{"attribute": …, "report": FairnessReport, "policy": PolicyOutcome}, …],
//!     "site_evaluations": [{"node": …, "noised": …, "metrics": EvalMetrics|null}, …],
//!                                            own figures of hospitals that opted in; omitted if none
//!     "approved": true,                      every attribute's policy approved (false when
//!                                            not_evaluated: nothing was checked)
//!     "previous_report_sha256": "<64 hex>"|null   SHA-256 of the previous report FILE; null first
//!   },
//!   "signature": "<128 hex>",                Ed25519 over the canonical bytes of "report"
//!   "signer_public_key": "<64 hex>"          the signer's raw Ed25519 public key
//! }
//! ```
//!
//! All hex is lower case. Unknown fields in the objects this module defines are refused, and
//! no float may be NaN or infinite (JSON cannot carry them).
//!
//! A report has one of three verdicts ([`AuditReport::verdict`]): approved, not approved, or
//! *not evaluated*. The last is a round whose pooled held-out count is zero (every hospital has
//! `holdout_fraction = 0`): there is no figure to audit, so the report carries `not_evaluated`,
//! no evaluation, no fairness audit and `approved: false` — it does not claim an approval that
//! nothing checked, and it is not a rejection by the policy either.
//!
//! Fields added after the format was first written (`absent_members`, `not_evaluated`,
//! `site_evaluations`, and in
//! the fairness audit a group's suppression reason, a check's undefined reason and a decision
//! threshold other than 0.5) are left out of the JSON when they hold what older reports imply,
//! so reports written before them keep their bytes, their signatures and their links.
//!
//! ## What is signed, what is hashed
//!
//! * **Canonical bytes of a report** ([`AuditReport::canonical_bytes`]) are
//!   `serde_json::to_vec(&report)`: compact JSON, fields in the order of the struct
//!   declarations above (and of the nested types' declarations), strings escaped as serde_json
//!   does, floats in serde_json's shortest form that parses back to the same value. Any map in
//!   the content would be a `BTreeMap`, written in key order; there is none today. The signature
//!   covers exactly these bytes; the `format` field opens them, so they cannot be mistaken for
//!   another signed medfed object.
//! * **A report file** is exactly the bytes of [`SignedReport::to_json_pretty`]: serde_json's
//!   pretty form followed by one `\n`. [`verify_chain`] refuses a file that differs from that
//!   form in any byte, even where the JSON would mean the same.
//! * **The chain link** `previous_report_sha256` is the SHA-256 of the previous report's file
//!   bytes ([`file_sha256`], equal to [`SignedReport::sha256`]).
//!
//! So flipping any byte of any file is detected by [`verify_chain`] at that file: the file no
//! longer parses, or is no longer in canonical form, or its signature fails, and in any case the
//! next report's link no longer matches.
//!
//! ```text
//!   report 0 file ──sha256──▶ report 1 .previous_report_sha256
//!   report 1 file ──sha256──▶ report 2 .previous_report_sha256     (report 0: null)
//! ```

use ring::digest;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::evaluation::EvalMetrics;
use crate::fairness::{FairnessReport, PolicyOutcome};
use crate::messages::PrivacySpent;

/// The `format` string of every report this module writes and accepts.
pub const REPORT_FORMAT: &str = "medfed-audit-report/1";

/// The signed content of one audit report. See the [module docs](self) for the schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditReport {
    /// Always [`REPORT_FORMAT`].
    pub format: String,
    /// The round of the audited model.
    pub round: u64,
    /// When the report was made, Unix milliseconds, as given by the caller.
    pub created_at_ms: i64,
    /// Lower-case hex of the audited model's [`ModelHash`](crate::model::ModelHash).
    pub model_sha256: String,
    /// Lower-case hex SHA-256 of the checkpoint file's bytes, if the writer knows it.
    pub checkpoint_sha256: Option<String>,
    /// The nodes whose contributions made the model.
    pub participants: Vec<String>,
    /// Consortium members whose held-out counts are not in this report's figures: the pooled
    /// evaluation and the per-group figures come from the other members only. Two reports
    /// whose figures come from different sets of hospitals do not compare like for like (a
    /// group's figures can move because a hospital is missing, not because the model changed).
    /// Empty, and then left out of the JSON (older reports read as empty), when every member
    /// took part.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent_members: Vec<String>,
    /// Privacy spent by each node.
    pub privacy: Vec<NodePrivacy>,
    /// Pooled evaluation of the model, if one was run.
    pub evaluation: Option<EvalMetrics>,
    /// Why the round could not be evaluated, when it could not: then `evaluation` is `None`,
    /// `fairness` is empty and `approved` is false. Left out of the JSON when `None` (older
    /// reports read as `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_evaluated: Option<NotEvaluated>,
    /// The fairness audit of each sensitive attribute.
    pub fairness: Vec<AttributeFairness>,
    /// The model on each opted-in hospital's own held-out patients (external validation per
    /// site), from the evaluation vector that hospital put into this report's sum and then
    /// released alone; sorted by node. Only hospitals that the signed task manifest lists and
    /// whose own policy releases a site figure appear. Empty, and then left out of the JSON
    /// (older reports read as empty), when none did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub site_evaluations: Vec<SiteEvaluation>,
    /// Whether every attribute's policy approved; must equal that conjunction (true when no
    /// attribute was audited), except in a report that is [`Self::not_evaluated`], where it is
    /// false.
    pub approved: bool,
    /// Lower-case hex SHA-256 of the previous report's file bytes; `None` for the first report.
    pub previous_report_sha256: Option<String>,
}

/// One hospital's own figure in a report: the model on that site's held-out patients alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteEvaluation {
    /// The hospital (its certificate name).
    pub node: String,
    /// Whether the figure comes from the hospital's noised counts (its evaluation noise, read
    /// as the pooled counts are: negative counts as 0); `false`: its exact counts.
    pub noised: bool,
    /// The metrics of its counts; `None` when they hold no example.
    pub metrics: Option<EvalMetrics>,
}

/// Why an audited round has no figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum NotEvaluated {
    /// The pooled held-out count is zero: no hospital held out any rows (`holdout_fraction = 0`
    /// everywhere), so there is nothing to evaluate the model or its fairness on.
    NoEvaluationData,
}

impl std::fmt::Display for NotEvaluated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::NoEvaluationData => f.write_str(
                "no evaluation data: the pooled held-out count is zero (every hospital has \
                 holdout_fraction = 0), so neither the model's performance nor its fairness \
                 could be measured, and the fairness policy could not be checked",
            ),
        }
    }
}

/// The verdict of one report: what its `approved` and `not_evaluated` fields say together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every attribute's policy approved.
    Approved,
    /// Some policy check failed.
    NotApproved,
    /// Nothing could be measured, so nothing was checked.
    NotEvaluated(NotEvaluated),
}

impl std::fmt::Display for Verdict {
    /// `APPROVED`, `NOT APPROVED`, or `NOT EVALUATED (reason)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Approved => f.write_str("APPROVED"),
            Self::NotApproved => f.write_str("NOT APPROVED"),
            Self::NotEvaluated(why) => write!(f, "NOT EVALUATED ({why})"),
        }
    }
}

/// The differential-privacy budget one node has spent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodePrivacy {
    /// The node's name.
    pub node: String,
    /// Spent ε.
    pub epsilon: f64,
    /// The δ the ε holds for.
    pub delta: f64,
}

impl NodePrivacy {
    /// What `node` declared it has spent.
    pub fn spent_by(node: &str, spent: PrivacySpent) -> Self {
        Self {
            node: node.to_owned(),
            epsilon: spent.epsilon,
            delta: spent.delta,
        }
    }
}

/// The fairness audit of one sensitive attribute and the policy's verdict on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeFairness {
    /// The attribute's name (for example `sex`).
    pub attribute: String,
    /// The audit.
    pub report: FairnessReport,
    /// The policy's verdict on the audit.
    pub policy: PolicyOutcome,
}

/// An [`AuditReport`] with its Ed25519 signature: the content of one report file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    /// The signed content.
    pub report: AuditReport,
    /// Lower-case hex Ed25519 signature (64 bytes) over [`AuditReport::canonical_bytes`].
    pub signature: String,
    /// Lower-case hex raw Ed25519 public key (32 bytes) of the signer.
    pub signer_public_key: String,
}

/// What [`verify_chain`] established about a valid chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of reports.
    pub reports: usize,
    /// Round of the first report.
    pub first_round: u64,
    /// Round of the last report.
    pub last_round: u64,
    /// Whether the last report approved its model.
    pub last_approved: bool,
    /// The last report's verdict.
    pub last_verdict: Verdict,
}

/// Why a report could not be written or did not verify.
///
/// `index` is the report's position in the chain given to [`verify_chain`], and 0 where a single
/// report is checked or signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReportError {
    /// Serialising to JSON failed.
    #[error("cannot encode audit report: {detail}")]
    Encode {
        /// serde_json's message.
        detail: String,
    },
    /// The report's content would not read back as the same value (a NaN or infinite float).
    #[error("audit report for round {round} cannot be represented in JSON (non-finite float?)")]
    NotRepresentable {
        /// The report's round.
        round: u64,
    },
    /// The bytes are not a report: bad JSON, unknown or missing fields, trailing bytes.
    #[error("report {index} is malformed: {detail}")]
    Malformed {
        /// Position in the chain.
        index: usize,
        /// What is wrong.
        detail: String,
    },
    /// The report's `format` is not [`REPORT_FORMAT`].
    #[error("report {index} has format {found:?}, expected {REPORT_FORMAT:?}")]
    FormatVersion {
        /// Position in the chain.
        index: usize,
        /// The format found.
        found: String,
    },
    /// A digest or key field is not lower-case hex of the right length.
    #[error(
        "report {index} (round {round}): field {field} is not lower-case hex of the right length"
    )]
    BadHex {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
        /// The field's name.
        field: &'static str,
    },
    /// `approved` differs from whether every attribute's policy approved.
    #[error("report {index} (round {round}): approved={stated} but the policies say {policies}")]
    InconsistentApproval {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
        /// The `approved` field.
        stated: bool,
        /// Whether every attribute's policy approved.
        policies: bool,
    },
    /// A report that says it could not be evaluated but carries figures or an approval.
    #[error(
        "report {index} (round {round}) says it was not evaluated but carries an evaluation, a \
         fairness audit or an approval"
    )]
    NotEvaluatedWithFigures {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
    },
    /// The file parses but is not byte for byte [`SignedReport::to_json_pretty`] of its content.
    #[error("report {index} (round {round}) is not in canonical form: the file was edited")]
    NotCanonical {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
    },
    /// The report was signed by another key than the expected one.
    #[error("report {index} (round {round}) is signed by {found}, not the expected key")]
    WrongSigner {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
        /// The signer key the report names.
        found: String,
    },
    /// The signature does not verify over the report's canonical bytes.
    #[error("report {index} (round {round}): signature does not verify")]
    BadSignature {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
    },
    /// `previous_report_sha256` does not match the previous file.
    #[error(
        "report {index} (round {round}): previous_report_sha256 is {found:?}, expected {expected:?}"
    )]
    BrokenChain {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
        /// SHA-256 of the previous file (`None` for the first report).
        expected: Option<String>,
        /// The link the report holds.
        found: Option<String>,
    },
    /// The report's round is not after the previous report's round.
    #[error("report {index}: round {round} does not follow round {previous}")]
    RoundOrder {
        /// Position in the chain.
        index: usize,
        /// The report's round.
        round: u64,
        /// The previous report's round.
        previous: u64,
    },
    /// [`verify_chain`] was given no report.
    #[error("the report chain is empty")]
    EmptyChain,
    /// The report describes another model.
    #[error("report for round {round} describes model {expected}, not {found}")]
    ModelMismatch {
        /// The report's round.
        round: u64,
        /// The model hash in the report.
        expected: String,
        /// The model hash checked against it.
        found: String,
    },
    /// The checkpoint's bytes do not hash to the report's `checkpoint_sha256`.
    #[error("report for round {round} names checkpoint {expected}, the file hashes to {found}")]
    CheckpointMismatch {
        /// The report's round.
        round: u64,
        /// The checkpoint hash in the report.
        expected: String,
        /// SHA-256 of the bytes checked.
        found: String,
    },
    /// The report records no checkpoint hash, so no checkpoint can be verified against it.
    #[error("report for round {round} records no checkpoint hash")]
    NoCheckpoint {
        /// The report's round.
        round: u64,
    },
}

impl AuditReport {
    /// The bytes the signature covers: `serde_json::to_vec(self)` (see the module docs).
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, ReportError> {
        serde_json::to_vec(self).map_err(|e| ReportError::Encode {
            detail: e.to_string(),
        })
    }

    /// Whether every attribute's policy approved (true when no attribute was audited): the value
    /// `approved` must have.
    pub fn policies_approve(&self) -> bool {
        self.fairness.iter().all(|a| a.policy.approved)
    }

    /// The report's verdict.
    pub fn verdict(&self) -> Verdict {
        match (self.not_evaluated, self.approved) {
            (Some(why), _) => Verdict::NotEvaluated(why),
            (None, true) => Verdict::Approved,
            (None, false) => Verdict::NotApproved,
        }
    }
}

impl SignedReport {
    /// Signs `report` with `key`.
    ///
    /// Refuses a report that the verifier would refuse: wrong `format`, a digest that is not
    /// lower-case hex SHA-256, `approved` inconsistent with the policies, or content that does not
    /// read back from JSON as the same bytes (a NaN or infinite float).
    pub fn sign(report: AuditReport, key: &Ed25519KeyPair) -> Result<Self, ReportError> {
        check_content(&report, 0)?;
        let bytes = report.canonical_bytes()?;
        let reread: AuditReport =
            serde_json::from_slice(&bytes).map_err(|_| ReportError::NotRepresentable {
                round: report.round,
            })?;
        if reread.canonical_bytes()? != bytes {
            return Err(ReportError::NotRepresentable {
                round: report.round,
            });
        }
        let signature = hex::encode(key.sign(&bytes).as_ref());
        Ok(Self {
            report,
            signature,
            signer_public_key: hex::encode(key.public_key().as_ref()),
        })
    }

    /// The report file's bytes: serde_json's pretty form followed by `\n`.
    pub fn to_json_pretty(&self) -> Result<Vec<u8>, ReportError> {
        let mut out = serde_json::to_vec_pretty(self).map_err(|e| ReportError::Encode {
            detail: e.to_string(),
        })?;
        out.push(b'\n');
        Ok(out)
    }

    /// Lower-case hex SHA-256 of the report file, [`Self::to_json_pretty`]: the value the next
    /// report's `previous_report_sha256` must hold. Same as [`file_sha256`] of the file.
    pub fn sha256(&self) -> Result<String, ReportError> {
        Ok(file_sha256(&self.to_json_pretty()?))
    }

    /// Parses one report file.
    ///
    /// Refuses bad JSON, unknown or missing fields and trailing bytes (other than whitespace).
    /// It does not check the signature or the canonical form; [`verify_chain`] does.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ReportError> {
        parse(bytes, 0)
    }
}

/// Lower-case hex SHA-256 of `bytes`: the link to a report file, or a checkpoint's digest.
pub fn file_sha256(bytes: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// Checks that `signed` is signed by `expected_public_key` and that the signature covers its
/// report's canonical bytes. Also checks the report's content (format, hex fields, approval).
pub fn verify_signature(
    signed: &SignedReport,
    expected_public_key: &[u8; 32],
) -> Result<(), ReportError> {
    verify_one(signed, expected_public_key, 0)
}

/// Verifies a chain of report files, given in chain order as their raw bytes.
///
/// For each file `i`: it parses; it is byte for byte in canonical form; its content is valid; it
/// is signed by `expected_public_key`; its `previous_report_sha256` is the SHA-256 of file
/// `i - 1` (`None` for the first); its round is greater than the previous report's. The first
/// failure is returned, naming the report.
pub fn verify_chain(
    files: &[Vec<u8>],
    expected_public_key: &[u8; 32],
) -> Result<ChainSummary, ReportError> {
    let mut previous: Option<(String, u64)> = None;
    let mut first_round = None;
    let mut last = None;
    for (index, bytes) in files.iter().enumerate() {
        let signed = parse(bytes, index)?;
        let round = signed.report.round;
        if signed.to_json_pretty()? != *bytes {
            return Err(ReportError::NotCanonical { index, round });
        }
        verify_one(&signed, expected_public_key, index)?;
        let expected = previous.as_ref().map(|(hash, _)| hash.clone());
        if signed.report.previous_report_sha256 != expected {
            return Err(ReportError::BrokenChain {
                index,
                round,
                expected,
                found: signed.report.previous_report_sha256,
            });
        }
        if let Some((_, previous_round)) = previous
            && round <= previous_round
        {
            return Err(ReportError::RoundOrder {
                index,
                round,
                previous: previous_round,
            });
        }
        first_round.get_or_insert(round);
        last = Some((round, signed.report.approved, signed.report.verdict()));
        previous = Some((file_sha256(bytes), round));
    }
    match (first_round, last) {
        (Some(first_round), Some((last_round, last_approved, last_verdict))) => Ok(ChainSummary {
            reports: files.len(),
            first_round,
            last_round,
            last_approved,
            last_verdict,
        }),
        _ => Err(ReportError::EmptyChain),
    }
}

/// Checks that `report` describes the model whose [`ModelHash`](crate::model::ModelHash) has the
/// lower-case hex form `model_hash_hex`.
pub fn verify_model(report: &AuditReport, model_hash_hex: &str) -> Result<(), ReportError> {
    if report.model_sha256 == model_hash_hex {
        Ok(())
    } else {
        Err(ReportError::ModelMismatch {
            round: report.round,
            expected: report.model_sha256.clone(),
            found: model_hash_hex.to_owned(),
        })
    }
}

/// Checks that `checkpoint_bytes` hash to the report's `checkpoint_sha256`.
///
/// A report without a checkpoint hash fails with [`ReportError::NoCheckpoint`]: nothing vouches
/// for the file.
pub fn verify_checkpoint(report: &AuditReport, checkpoint_bytes: &[u8]) -> Result<(), ReportError> {
    let Some(expected) = &report.checkpoint_sha256 else {
        return Err(ReportError::NoCheckpoint {
            round: report.round,
        });
    };
    let found = file_sha256(checkpoint_bytes);
    if *expected == found {
        Ok(())
    } else {
        Err(ReportError::CheckpointMismatch {
            round: report.round,
            expected: expected.clone(),
            found,
        })
    }
}

fn parse(bytes: &[u8], index: usize) -> Result<SignedReport, ReportError> {
    serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed {
        index,
        detail: e.to_string(),
    })
}

fn verify_one(
    signed: &SignedReport,
    expected_public_key: &[u8; 32],
    index: usize,
) -> Result<(), ReportError> {
    let report = &signed.report;
    let round = report.round;
    check_content(report, index)?;
    if !is_hex(&signed.signer_public_key, 32) {
        return Err(ReportError::BadHex {
            index,
            round,
            field: "signer_public_key",
        });
    }
    if !is_hex(&signed.signature, 64) {
        return Err(ReportError::BadHex {
            index,
            round,
            field: "signature",
        });
    }
    if signed.signer_public_key != hex::encode(expected_public_key) {
        return Err(ReportError::WrongSigner {
            index,
            round,
            found: signed.signer_public_key.clone(),
        });
    }
    let signature =
        hex::decode(&signed.signature).map_err(|_| ReportError::BadSignature { index, round })?;
    UnparsedPublicKey::new(&ED25519, expected_public_key)
        .verify(&report.canonical_bytes()?, &signature)
        .map_err(|_| ReportError::BadSignature { index, round })
}

/// Checks what can be checked of a report's content without its signature or neighbours.
fn check_content(report: &AuditReport, index: usize) -> Result<(), ReportError> {
    let round = report.round;
    if report.format != REPORT_FORMAT {
        return Err(ReportError::FormatVersion {
            index,
            found: report.format.clone(),
        });
    }
    let digests = [
        ("model_sha256", Some(&report.model_sha256)),
        ("checkpoint_sha256", report.checkpoint_sha256.as_ref()),
        (
            "previous_report_sha256",
            report.previous_report_sha256.as_ref(),
        ),
    ];
    for (field, value) in digests {
        if let Some(value) = value
            && !is_hex(value, 32)
        {
            return Err(ReportError::BadHex {
                index,
                round,
                field,
            });
        }
    }
    if report.not_evaluated.is_some() {
        if report.approved || report.evaluation.is_some() || !report.fairness.is_empty() {
            return Err(ReportError::NotEvaluatedWithFigures { index, round });
        }
        return Ok(());
    }
    let policies = report.policies_approve();
    if report.approved != policies {
        return Err(ReportError::InconsistentApproval {
            index,
            round,
            stated: report.approved,
            policies,
        });
    }
    Ok(())
}

/// Whether `s` is the lower-case hex form of exactly `len` bytes.
fn is_hex(s: &str, len: usize) -> bool {
    s.len() == 2 * len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fairness::PolicyCheck;

    const SEED: [u8; 32] = [7; 32];

    fn key() -> Ed25519KeyPair {
        Ed25519KeyPair::from_seed_unchecked(&SEED).unwrap()
    }

    fn public_key(key: &Ed25519KeyPair) -> [u8; 32] {
        key.public_key().as_ref().try_into().unwrap()
    }

    fn content(round: u64, previous: Option<String>) -> AuditReport {
        let approved = round != 3;
        AuditReport {
            format: REPORT_FORMAT.to_owned(),
            round,
            created_at_ms: 1_700_000_000_000 + round as i64 * 60_000,
            model_sha256: file_sha256(format!("model {round}").as_bytes()),
            checkpoint_sha256: Some(file_sha256(format!("checkpoint {round}").as_bytes())),
            participants: vec!["hospital-a".to_owned(), "hospital-b".to_owned()],
            absent_members: Vec::new(),
            privacy: vec![
                NodePrivacy {
                    node: "hospital-a".to_owned(),
                    epsilon: 0.1 * round as f64,
                    delta: 1e-5,
                },
                NodePrivacy {
                    node: "hospital-b".to_owned(),
                    epsilon: 1.0 / 3.0,
                    delta: 1e-5,
                },
            ],
            evaluation: Some(EvalMetrics {
                examples: 1234,
                loss: 0.4567891234,
                accuracy: 0.8123,
                auc: Some(0.9),
                prevalence: 0.25,
            }),
            not_evaluated: None,
            fairness: vec![AttributeFairness {
                attribute: "sex".to_owned(),
                report: FairnessReport {
                    min_count: 20,
                    decision_threshold: 0.5,
                    groups: Vec::new(),
                    disparities: None,
                },
                policy: PolicyOutcome {
                    checks: vec![PolicyCheck {
                        name: "max_demographic_parity_difference".to_owned(),
                        threshold: 0.1,
                        value: Some(if approved { 0.05 } else { 0.2 }),
                        passed: approved,
                        undefined: None,
                    }],
                    approved,
                },
            }],
            site_evaluations: Vec::new(),
            approved,
            previous_report_sha256: previous,
        }
    }

    /// Three report files of rounds 1, 2 and 3, chained and written as a coordinator would.
    fn chain() -> Vec<Vec<u8>> {
        let key = key();
        let mut files: Vec<Vec<u8>> = Vec::new();
        for round in 1..=3 {
            let previous = files.last().map(|f| file_sha256(f));
            let signed = SignedReport::sign(content(round, previous), &key).unwrap();
            files.push(signed.to_json_pretty().unwrap());
        }
        files
    }

    fn flip(files: &[Vec<u8>], file: usize, pos: usize) -> Vec<Vec<u8>> {
        let mut files = files.to_vec();
        files[file][pos] ^= 0x01;
        files
    }

    fn error_index(err: &ReportError) -> Option<usize> {
        match *err {
            ReportError::Malformed { index, .. }
            | ReportError::FormatVersion { index, .. }
            | ReportError::BadHex { index, .. }
            | ReportError::InconsistentApproval { index, .. }
            | ReportError::NotCanonical { index, .. }
            | ReportError::WrongSigner { index, .. }
            | ReportError::BadSignature { index, .. }
            | ReportError::BrokenChain { index, .. }
            | ReportError::RoundOrder { index, .. } => Some(index),
            _ => None,
        }
    }

    fn find(file: &[u8], needle: &str) -> usize {
        file.windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap()
    }

    #[test]
    fn absent_members_are_signed_when_present_and_left_out_of_the_json_when_not() {
        let key = key();
        let complete = SignedReport::sign(content(1, None), &key).unwrap();
        let complete_file = complete.to_json_pretty().unwrap();
        // A report of every member reads as before: no key at all.
        assert!(!String::from_utf8_lossy(&complete_file).contains("absent_members"));
        let mut partial = content(2, Some(file_sha256(&complete_file)));
        partial.absent_members = vec!["hospital-c".to_owned()];
        let partial_file = SignedReport::sign(partial, &key)
            .unwrap()
            .to_json_pretty()
            .unwrap();
        let files = [complete_file, partial_file];
        verify_chain(&files, &public_key(&key)).unwrap();
        let read = SignedReport::from_json(&files[1]).unwrap().report;
        assert_eq!(read.absent_members, ["hospital-c"]);
        // The list is signed: dropping the absent member breaks the signature.
        let edited = String::from_utf8(files[1].clone())
            .unwrap()
            .replace("\"hospital-c\"", "\"hospital-a\"")
            .into_bytes();
        assert!(verify_chain(&[files[0].clone(), edited], &public_key(&key)).is_err());
    }

    #[test]
    fn site_evaluations_are_signed_and_left_out_when_nobody_opted_in() {
        let key = key();
        // Without site figures the field is not written: older reports keep their bytes.
        let plain = SignedReport::sign(content(1, None), &key)
            .unwrap()
            .to_json_pretty()
            .unwrap();
        assert!(
            !String::from_utf8(plain.clone())
                .unwrap()
                .contains("site_evaluations")
        );
        let mut report = content(2, Some(file_sha256(&plain)));
        report.site_evaluations = vec![SiteEvaluation {
            node: "hospital-a".into(),
            noised: false,
            metrics: Some(EvalMetrics {
                examples: 40,
                loss: 0.5,
                accuracy: 0.75,
                auc: Some(0.8125),
                prevalence: 0.25,
            }),
        }];
        let with_site = SignedReport::sign(report, &key)
            .unwrap()
            .to_json_pretty()
            .unwrap();
        verify_chain(&[plain.clone(), with_site.clone()], &public_key(&key)).unwrap();
        let read = SignedReport::from_json(&with_site).unwrap().report;
        assert_eq!(read.site_evaluations[0].node, "hospital-a");
        // The site figure is signed: changing it breaks the signature.
        let edited = String::from_utf8(with_site)
            .unwrap()
            .replace("0.8125", "0.9125")
            .into_bytes();
        assert!(verify_chain(&[plain, edited], &public_key(&key)).is_err());
    }

    /// A report of a round without evaluation data, as the coordinator writes it.
    fn not_evaluated(round: u64, previous: Option<String>) -> AuditReport {
        AuditReport {
            evaluation: None,
            not_evaluated: Some(NotEvaluated::NoEvaluationData),
            fairness: Vec::new(),
            approved: false,
            ..content(round, previous)
        }
    }

    #[test]
    fn a_round_without_evaluation_data_is_not_evaluated_and_never_approved() {
        let key = key();
        let first = SignedReport::sign(content(1, None), &key)
            .unwrap()
            .to_json_pretty()
            .unwrap();
        let report = not_evaluated(2, Some(file_sha256(&first)));
        assert_eq!(
            report.verdict(),
            Verdict::NotEvaluated(NotEvaluated::NoEvaluationData)
        );
        let second = SignedReport::sign(report.clone(), &key)
            .unwrap()
            .to_json_pretty()
            .unwrap();
        let text = String::from_utf8(second.clone()).unwrap();
        assert!(
            text.contains("\"not_evaluated\": \"no_evaluation_data\""),
            "{text}"
        );
        let summary = verify_chain(&[first.clone(), second], &public_key(&key)).unwrap();
        assert!(!summary.last_approved);
        assert_eq!(
            summary.last_verdict,
            Verdict::NotEvaluated(NotEvaluated::NoEvaluationData)
        );
        assert!(
            summary
                .last_verdict
                .to_string()
                .starts_with("NOT EVALUATED (no evaluation data")
        );
        // Such a report may not claim approval, nor carry figures.
        let claims = [
            AuditReport {
                approved: true,
                ..report.clone()
            },
            AuditReport {
                fairness: content(2, None).fairness,
                ..report.clone()
            },
            AuditReport {
                evaluation: content(2, None).evaluation,
                ..report
            },
        ];
        for claim in claims {
            assert_eq!(
                SignedReport::sign(claim, &key).unwrap_err(),
                ReportError::NotEvaluatedWithFigures { index: 0, round: 2 }
            );
        }
        // Evaluated reports keep the two verdicts they had, and no new key.
        assert!(!String::from_utf8_lossy(&first).contains("not_evaluated"));
        assert_eq!(content(1, None).verdict(), Verdict::Approved);
        assert_eq!(content(3, None).verdict(), Verdict::NotApproved);
    }

    #[test]
    fn reports_written_before_the_new_fields_keep_their_canonical_bytes() {
        // The signed content of a report as medfed wrote it before suppression reasons,
        // undefined reasons, decision thresholds and `not_evaluated` existed: a suppressed group
        // and a check failing on an undefined value, where the new fields would now appear.
        let old = concat!(
            r#"{"format":"medfed-audit-report/1","round":4,"created_at_ms":1700000000000,"#,
            r#""model_sha256":"0000000000000000000000000000000000000000000000000000000000000000","#,
            r#""checkpoint_sha256":null,"participants":["a","b"],"privacy":[],"#,
            r#""evaluation":{"examples":30,"loss":0.5,"accuracy":0.75,"auc":null,"prevalence":0.25},"#,
            r#""fairness":[{"attribute":"sex","report":{"min_count":10,"groups":["#,
            r#"{"status":"suppressed","group":"F"},{"status":"suppressed","group":"M"}],"#,
            r#""disparities":null},"policy":{"checks":[{"name":"max_equalized_odds_difference","#,
            r#""threshold":0.1,"value":null,"passed":false}],"approved":false}}],"#,
            r#""approved":false,"previous_report_sha256":null}"#
        );
        let report: AuditReport = serde_json::from_str(old).unwrap();
        assert_eq!(report.canonical_bytes().unwrap(), old.as_bytes());
        assert_eq!(report.verdict(), Verdict::NotApproved);
        // So its signature, made over those bytes, still verifies.
        let key = key();
        let signature = key.sign(old.as_bytes());
        let signed = SignedReport {
            report,
            signature: hex::encode(signature.as_ref()),
            signer_public_key: hex::encode(key.public_key().as_ref()),
        };
        verify_chain(&[signed.to_json_pretty().unwrap()], &public_key(&key)).unwrap();
    }

    #[test]
    fn report_untouched_chain_verifies() {
        let files = chain();
        let summary = verify_chain(&files, &public_key(&key())).unwrap();
        assert_eq!(
            summary,
            ChainSummary {
                reports: 3,
                first_round: 1,
                last_round: 3,
                last_approved: false,
                last_verdict: Verdict::NotApproved,
            }
        );
        // The link is the SHA-256 of the file, and `sha256` gives the same.
        let second = SignedReport::from_json(&files[1]).unwrap();
        assert_eq!(second.sha256().unwrap(), file_sha256(&files[1]));
        let third = SignedReport::from_json(&files[2]).unwrap();
        assert_eq!(
            third.report.previous_report_sha256,
            Some(file_sha256(&files[1]))
        );
    }

    #[test]
    fn report_flip_in_second_report_names_it() {
        let files = chain();
        let key = public_key(&key());
        let text = &files[1];
        let positions = [
            find(text, "\"round\": 2") + 9,               // a number, signed
            find(text, "1700000120000") + 5,              // another number
            find(text, "hospital-b") + 3,                 // a string
            find(text, "\"signature\": \"") + 20,         // the signature's hex
            find(text, "\"signer_public_key\": \"") + 25, // the key's hex
            find(text, "\"epsilon\"") + 2,                // a field name
            find(text, "\"round\"") - 1,                  // indentation whitespace
            text.len() - 1,                               // the final newline
            0,                                            // the opening brace
        ];
        for pos in positions {
            let err = verify_chain(&flip(&files, 1, pos), &key).unwrap_err();
            assert_eq!(error_index(&err), Some(1), "flip at {pos}: {err}");
        }
        // Every single-bit flip of every byte of report 2 is detected, at report 2.
        for pos in 0..files[1].len() {
            let err = verify_chain(&flip(&files, 1, pos), &key).unwrap_err();
            assert_eq!(error_index(&err), Some(1), "flip at {pos}: {err}");
        }
    }

    #[test]
    fn report_signature_flip_is_bad_signature() {
        let files = chain();
        let pos = find(&files[1], "\"signature\": \"") + 20;
        let err = verify_chain(&flip(&files, 1, pos), &public_key(&key())).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::BadSignature { index: 1, round: 2 }
                    | ReportError::BadHex { index: 1, .. }
            ),
            "{err}"
        );
        let number = find(&files[1], "0.8123") + 4;
        let err = verify_chain(&flip(&files, 1, number), &public_key(&key())).unwrap_err();
        assert_eq!(err, ReportError::BadSignature { index: 1, round: 2 });
    }

    #[test]
    fn report_flip_in_first_and_last_report_detected() {
        let files = chain();
        let key = public_key(&key());
        for file in [0, 2] {
            for pos in 0..files[file].len() {
                let err = verify_chain(&flip(&files, file, pos), &key).unwrap_err();
                assert_eq!(error_index(&err), Some(file), "flip at {pos}: {err}");
            }
        }
    }

    #[test]
    fn report_re_signed_edit_breaks_next_link() {
        // An edit re-signed with the right key still breaks the following report's link.
        let mut files = chain();
        let mut second = SignedReport::from_json(&files[1]).unwrap();
        second.report.participants.push("intruder".to_owned());
        files[1] = SignedReport::sign(second.report, &key())
            .unwrap()
            .to_json_pretty()
            .unwrap();
        let err = verify_chain(&files, &public_key(&key())).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::BrokenChain {
                    index: 2,
                    round: 3,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn report_other_signer_refused() {
        let files = chain();
        let other = Ed25519KeyPair::from_seed_unchecked(&[8; 32]).unwrap();
        let err = verify_chain(&files, &public_key(&other)).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::WrongSigner {
                    index: 0,
                    round: 1,
                    ..
                }
            ),
            "{err}"
        );

        // A report signed by another key but claiming ours fails its signature.
        let mut forged = SignedReport::sign(content(1, None), &other).unwrap();
        forged.signer_public_key = hex::encode(public_key(&key()));
        assert_eq!(
            verify_signature(&forged, &public_key(&key())),
            Err(ReportError::BadSignature { index: 0, round: 1 })
        );
    }

    #[test]
    fn report_reordering_fails() {
        let files = chain();
        let key = public_key(&key());
        let swapped = vec![files[0].clone(), files[2].clone(), files[1].clone()];
        let err = verify_chain(&swapped, &key).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::BrokenChain {
                    index: 1,
                    round: 3,
                    ..
                }
            ),
            "{err}"
        );
        let err = verify_chain(&files[1..], &key).unwrap_err();
        assert!(
            matches!(
                err,
                ReportError::BrokenChain {
                    index: 0,
                    round: 2,
                    expected: None,
                    ..
                }
            ),
            "{err}"
        );
        let dropped = vec![files[0].clone(), files[2].clone()];
        assert!(matches!(
            verify_chain(&dropped, &key),
            Err(ReportError::BrokenChain { index: 1, .. })
        ));
        assert_eq!(verify_chain(&[], &key), Err(ReportError::EmptyChain));
    }

    #[test]
    fn report_round_must_increase() {
        let key = key();
        let first = SignedReport::sign(content(5, None), &key).unwrap();
        let first_file = first.to_json_pretty().unwrap();
        let second = SignedReport::sign(content(5, Some(file_sha256(&first_file))), &key).unwrap();
        let files = vec![first_file, second.to_json_pretty().unwrap()];
        assert_eq!(
            verify_chain(&files, &public_key(&key)),
            Err(ReportError::RoundOrder {
                index: 1,
                round: 5,
                previous: 5
            })
        );
    }

    #[test]
    fn report_model_and_checkpoint_checks() {
        let report = content(2, None);
        assert_eq!(verify_model(&report, &file_sha256(b"model 2")), Ok(()));
        assert!(matches!(
            verify_model(&report, &file_sha256(b"model 1")),
            Err(ReportError::ModelMismatch { round: 2, .. })
        ));
        assert_eq!(verify_checkpoint(&report, b"checkpoint 2"), Ok(()));
        assert!(matches!(
            verify_checkpoint(&report, b"checkpoint 2 "),
            Err(ReportError::CheckpointMismatch { round: 2, .. })
        ));
        let mut none = report;
        none.checkpoint_sha256 = None;
        assert_eq!(
            verify_checkpoint(&none, b"checkpoint 2"),
            Err(ReportError::NoCheckpoint { round: 2 })
        );
    }

    #[test]
    fn report_model_hash_matches_model_hash_hex() {
        let hash = crate::model::ModelHash([0xab; 32]);
        let mut report = content(1, None);
        report.model_sha256 = hash.to_hex();
        assert_eq!(verify_model(&report, &hash.to_string()), Ok(()));
    }

    #[test]
    fn report_unknown_field_and_trailing_bytes_refused() {
        let files = chain();
        let text = String::from_utf8(files[0].clone()).unwrap();
        let outer = text.replacen("{\n", "{\n  \"extra\": 1,\n", 1);
        assert!(matches!(
            SignedReport::from_json(outer.as_bytes()),
            Err(ReportError::Malformed { index: 0, .. })
        ));
        let inner = text.replacen("\"round\": 1,", "\"round\": 1, \"note\": \"x\",", 1);
        assert!(matches!(
            SignedReport::from_json(inner.as_bytes()),
            Err(ReportError::Malformed { index: 0, .. })
        ));
        let privacy = text.replacen("\"delta\"", "\"sigma\": 1, \"delta\"", 1);
        assert!(SignedReport::from_json(privacy.as_bytes()).is_err());
        let trailing = format!("{text}{{}}");
        assert!(SignedReport::from_json(trailing.as_bytes()).is_err());
        let files = vec![outer.into_bytes()];
        assert!(matches!(
            verify_chain(&files, &public_key(&key())),
            Err(ReportError::Malformed { index: 0, .. })
        ));
    }

    #[test]
    fn report_sign_refuses_invalid_content() {
        let key = key();
        let mut nan = content(1, None);
        nan.privacy[0].epsilon = f64::NAN;
        assert_eq!(
            SignedReport::sign(nan, &key),
            Err(ReportError::NotRepresentable { round: 1 })
        );
        let mut infinite = content(1, None);
        infinite.privacy[0].epsilon = f64::INFINITY;
        assert!(SignedReport::sign(infinite, &key).is_err());
        let mut format = content(1, None);
        format.format = "medfed-audit-report/2".to_owned();
        assert!(matches!(
            SignedReport::sign(format, &key),
            Err(ReportError::FormatVersion { .. })
        ));
        let mut upper = content(1, None);
        upper.model_sha256 = upper.model_sha256.to_uppercase();
        assert!(matches!(
            SignedReport::sign(upper, &key),
            Err(ReportError::BadHex {
                field: "model_sha256",
                ..
            })
        ));
        let mut approval = content(1, None);
        approval.approved = false;
        assert!(matches!(
            SignedReport::sign(approval, &key),
            Err(ReportError::InconsistentApproval { .. })
        ));
    }

    #[test]
    fn report_floats_round_trip_exactly() {
        // Awkward floats must read back as the same bits, or signatures would not verify.
        let key = key();
        let mut report = content(1, None);
        for (i, x) in [0.1 + 0.2, 1e-300, 5e-324, f64::MAX, 2.0f64.sqrt(), -0.0]
            .into_iter()
            .enumerate()
        {
            report.privacy.push(NodePrivacy {
                node: format!("n{i}"),
                epsilon: x,
                delta: x / 3.0,
            });
        }
        let signed = SignedReport::sign(report, &key).unwrap();
        let file = signed.to_json_pretty().unwrap();
        let back = SignedReport::from_json(&file).unwrap();
        assert_eq!(back, signed);
        verify_chain(&[file], &public_key(&key)).unwrap();
    }
}
