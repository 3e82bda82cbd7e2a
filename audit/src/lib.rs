//! The consortium's audit record, and what an auditor needs to check it offline.
//!
//! - [`bias`]: the per-round bias audit — the pooled per-group counts (sums over hospitals)
//!   turned into per-group metrics, disparities and the fairness policy's verdict.
//! - [`reports`]: the signed, hash-chained JSON report of every audited model round, written
//!   atomically, with [`html`], the self-contained page for people beside them.
//! - [`checkpoint`]: the model checkpoints (safetensors) that the reports bind by SHA-256, and
//!   the released model; [`model_file`]: what they carry to score a patient (schema,
//!   standardisation, decision threshold) and the released model's link to its report;
//!   [`onnx`]: a model file as an ONNX model with that preprocessing inside.
//! - [`model_card`]: the released model's card (JSON and a self-contained page) beside the
//!   reports: intended use, pooled data, model and training, privacy, performance with
//!   intervals, calibration, the fairness verdict and limitations, after TRIPOD+AI.
//! - the `medfed-audit` binary: `verify` checks the coordinator's certificate against the
//!   consortium CA, every signature, the chain and a model file; `metrics` recomputes the
//!   per-group figures from an auditor's own predictions with the same code.
//!
//! ```text
//!  coordinator:  pooled counts ─▶ bias::audit ─▶ AuditReport ─▶ ReportWriter::append
//!                model ─▶ checkpoint::write_checkpoint        │  (sign, chain, write, page)
//!                                                             ▼
//!                       reports/round-NNNNN.json, reports/index.html, checkpoints/*.safetensors
//!                                                             │
//!  auditor:      medfed-audit verify --reports … --cert … --ca … [--model …]
//! ```
//!
//! What this crate does *not* do: no networking and no database — it links neither quinn, tokio
//! nor rusqlite (nor libtorch), so an auditor can build it without the coordinator's network
//! stack; it never sees one hospital's figures, only the sums the coordinator hands it; and it
//! does not decide what a report says beyond the audit itself: the coordinator assembles each
//! report and decides when to write it.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod bias;
pub mod checkpoint;
pub mod html;
pub mod model_card;
pub mod model_file;
pub mod onnx;
pub mod reports;
