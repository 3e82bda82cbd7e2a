//! What a model file carries beyond the parameters: everything a hospital needs to score a new
//! patient exactly as the consortium's training and evaluation did, and the audit report that
//! judged the model.
//!
//! A checkpoint ([`crate::checkpoint`]) is a safetensors file whose tensors are the model's
//! parameters under PyTorch names, so it still loads as plain tensors. Its header metadata (all
//! strings, as safetensors wants) adds, once the statistics round has given the standardisation,
//! a [`Scoring`]:
//!
//! | key | value |
//! |---|---|
//! | `medfed.schema` | the consortium's schema, its TOML text as the coordinator read it |
//! | `medfed.schema_digest` | [`Schema::digest`] in hex, checked against the text on reading |
//! | `medfed.feature_names` | JSON array: the encoded features, in the model's input order |
//! | `medfed.standardization` | JSON `{"mean": [..], "std": [..]}`, one entry per feature |
//! | `medfed.decision_threshold` | the task's decision threshold, a decimal in (0, 1) |
//!
//! and, in the released model only (the coordinator's `model.safetensors`, written once the
//! report of the model it holds is signed), an [`AuditLink`]:
//!
//! | key | value |
//! |---|---|
//! | `medfed.audit_report_sha256` | SHA-256 of that report file, as the chain links reports |
//! | `medfed.audit_approved` | `true` or `false`: the report's fairness verdict |
//!
//! A round's checkpoint cannot name its report: the report is written after it, and binds the
//! checkpoint file's SHA-256. So a round checkpoint is linked from its report, and the released
//! model, a copy with the link added, to it; `medfed-audit verify --model` follows either.
//!
//! To score a row: encode its cells with the schema ([`Schema::feature_names`] order: a numeric
//! column as is, a categorical one one-hot), subtract `mean` and divide by `std` feature by
//! feature, run the network, take the sigmoid; the patient is flagged when the score is at least
//! the threshold. `medfed-node predict` does exactly that.

use std::collections::HashMap;

use medfed_protocol::evaluation::DecisionThreshold;
use medfed_protocol::model::{Model, ModelSpec};
use medfed_protocol::schema::Schema;
use medfed_protocol::stats::Standardization;

use crate::checkpoint::CheckpointError;

/// Metadata key holding the schema's TOML text.
pub const META_SCHEMA: &str = "medfed.schema";
/// Metadata key holding the schema's digest in hex.
pub const META_SCHEMA_DIGEST: &str = "medfed.schema_digest";
/// Metadata key holding the encoded features' names as a JSON array.
pub const META_FEATURE_NAMES: &str = "medfed.feature_names";
/// Metadata key holding the standardisation as JSON.
pub const META_STANDARDIZATION: &str = "medfed.standardization";
/// Metadata key holding the decision threshold.
pub const META_DECISION_THRESHOLD: &str = "medfed.decision_threshold";
/// Metadata key holding the SHA-256 of the audit report that judged the model.
pub const META_AUDIT_REPORT: &str = "medfed.audit_report_sha256";
/// Metadata key holding that report's verdict.
pub const META_AUDIT_APPROVED: &str = "medfed.audit_approved";

/// How to turn a patient's row into the model's input and its score into a class: the schema,
/// the consortium's standardisation and the decision threshold.
#[derive(Clone, Debug, PartialEq)]
pub struct Scoring {
    /// The consortium's schema, as its TOML text (what [`Self::schema`] parses).
    pub schema_text: String,
    /// The schema, parsed from [`Self::schema_text`].
    pub schema: Schema,
    /// The standardisation from the statistics round: one mean and one standard deviation per
    /// encoded feature.
    pub standardization: Standardization,
    /// The task's decision threshold.
    pub decision_threshold: DecisionThreshold,
}

impl Scoring {
    /// The scoring of a model of `spec` under the schema `schema_text`, or why they do not fit:
    /// the schema must parse, encode `spec.input_dim` features, and the standardisation must be
    /// valid for it.
    pub fn new(
        schema_text: String,
        standardization: Standardization,
        decision_threshold: DecisionThreshold,
        spec: &ModelSpec,
    ) -> Result<Self, CheckpointError> {
        let bad = |key: &'static str, reason: String| CheckpointError::BadMetadata { key, reason };
        let schema = Schema::parse(&schema_text).map_err(|e| bad(META_SCHEMA, e.to_string()))?;
        if schema.num_features() != spec.input_dim {
            return Err(bad(
                META_SCHEMA,
                format!(
                    "the schema encodes {} features, the model takes {}",
                    schema.num_features(),
                    spec.input_dim
                ),
            ));
        }
        standardization
            .validate(&schema)
            .map_err(|e| bad(META_STANDARDIZATION, e.to_string()))?;
        Ok(Self {
            schema_text,
            schema,
            standardization,
            decision_threshold,
        })
    }

    /// Adds this scoring's entries to a checkpoint's metadata.
    pub(crate) fn write_metadata(
        &self,
        meta: &mut HashMap<String, String>,
    ) -> Result<(), CheckpointError> {
        let json = |key: &'static str, value: serde_json::Result<String>| {
            value.map_err(|e| CheckpointError::BadMetadata {
                key,
                reason: e.to_string(),
            })
        };
        meta.insert(META_SCHEMA.into(), self.schema_text.clone());
        meta.insert(META_SCHEMA_DIGEST.into(), hex::encode(self.schema.digest()));
        meta.insert(
            META_FEATURE_NAMES.into(),
            json(
                META_FEATURE_NAMES,
                serde_json::to_string(&self.schema.feature_names()),
            )?,
        );
        meta.insert(
            META_STANDARDIZATION.into(),
            json(
                META_STANDARDIZATION,
                serde_json::to_string(&self.standardization),
            )?,
        );
        meta.insert(
            META_DECISION_THRESHOLD.into(),
            self.decision_threshold.to_string(),
        );
        Ok(())
    }

    /// The scoring a checkpoint's metadata carries for a model of `spec`: `None` when it
    /// carries none (a checkpoint written before the statistics round, or by an older
    /// coordinator); an error when it carries some of it, or entries that do not agree.
    pub(crate) fn read_metadata(
        meta: &HashMap<String, String>,
        spec: &ModelSpec,
    ) -> Result<Option<Self>, CheckpointError> {
        let keys = [
            META_SCHEMA,
            META_SCHEMA_DIGEST,
            META_FEATURE_NAMES,
            META_STANDARDIZATION,
            META_DECISION_THRESHOLD,
        ];
        if keys.iter().all(|key| !meta.contains_key(*key)) {
            return Ok(None);
        }
        let field = |key: &'static str| {
            meta.get(key)
                .map(String::as_str)
                .ok_or(CheckpointError::MissingMetadata { key })
        };
        let bad = |key: &'static str, reason: String| CheckpointError::BadMetadata { key, reason };
        let standardization: Standardization =
            serde_json::from_str(field(META_STANDARDIZATION)?)
                .map_err(|e| bad(META_STANDARDIZATION, e.to_string()))?;
        let threshold: f64 = field(META_DECISION_THRESHOLD)?
            .parse()
            .map_err(|_| bad(META_DECISION_THRESHOLD, "not a decimal number".into()))?;
        let threshold = DecisionThreshold::new(threshold)
            .map_err(|e| bad(META_DECISION_THRESHOLD, e.to_string()))?;
        let scoring = Self::new(
            field(META_SCHEMA)?.to_owned(),
            standardization,
            threshold,
            spec,
        )?;
        if field(META_SCHEMA_DIGEST)? != hex::encode(scoring.schema.digest()) {
            return Err(bad(
                META_SCHEMA_DIGEST,
                "the schema text does not hash to it".into(),
            ));
        }
        let names: Vec<String> = serde_json::from_str(field(META_FEATURE_NAMES)?)
            .map_err(|e| bad(META_FEATURE_NAMES, e.to_string()))?;
        if names != scoring.schema.feature_names() {
            return Err(bad(
                META_FEATURE_NAMES,
                "they are not the schema's encoded features".into(),
            ));
        }
        Ok(Some(scoring))
    }
}

/// The audit report that judged a released model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditLink {
    /// Lower-case hex SHA-256 of the report file.
    pub report_sha256: String,
    /// The report's fairness verdict.
    pub approved: bool,
}

impl AuditLink {
    /// Adds the link's entries to a checkpoint's metadata.
    pub(crate) fn write_metadata(&self, meta: &mut HashMap<String, String>) {
        meta.insert(META_AUDIT_REPORT.into(), self.report_sha256.clone());
        meta.insert(META_AUDIT_APPROVED.into(), self.approved.to_string());
    }

    /// The link a checkpoint's metadata carries, if any.
    pub(crate) fn read_metadata(
        meta: &HashMap<String, String>,
    ) -> Result<Option<Self>, CheckpointError> {
        let (report, approved) = (meta.get(META_AUDIT_REPORT), meta.get(META_AUDIT_APPROVED));
        if report.is_none() && approved.is_none() {
            return Ok(None);
        }
        let bad = |key: &'static str, reason: &str| CheckpointError::BadMetadata {
            key,
            reason: reason.into(),
        };
        let report = report.ok_or(CheckpointError::MissingMetadata {
            key: META_AUDIT_REPORT,
        })?;
        if report.len() != 64
            || !report
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(bad(META_AUDIT_REPORT, "not 64 lower-case hex digits"));
        }
        let approved = match approved.map(String::as_str) {
            Some("true") => true,
            Some("false") => false,
            Some(_) => return Err(bad(META_AUDIT_APPROVED, "neither true nor false")),
            None => {
                return Err(CheckpointError::MissingMetadata {
                    key: META_AUDIT_APPROVED,
                });
            }
        };
        Ok(Some(Self {
            report_sha256: report.clone(),
            approved,
        }))
    }
}

/// A model file: a round's model, and what it carries to be scored and judged.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    /// The round whose model it is (0: the initial model).
    pub round: u64,
    /// The model.
    pub model: Model,
    /// How to score a patient with it; `None` before the statistics round.
    pub scoring: Option<Scoring>,
    /// The audit report that judged it; only in the released model.
    pub audit: Option<AuditLink>,
}

#[cfg(test)]
pub(crate) mod tests {
    use medfed_protocol::model::ModelKind;
    use medfed_protocol::schema::EXAMPLE_SCHEMA;

    use super::*;
    use crate::checkpoint::{decode_model_file, encode_model_file};

    fn file(audit: Option<AuditLink>) -> ModelFile {
        file_of(EXAMPLE_SCHEMA, audit)
    }

    /// A model file of a small MLP over `schema_text`'s features, numeric ones standardised by
    /// mean 52.5 and std 14, the others left as they are.
    pub(crate) fn file_of(schema_text: &str, audit: Option<AuditLink>) -> ModelFile {
        let schema = Schema::parse(schema_text).unwrap();
        let spec = ModelSpec {
            kind: ModelKind::Mlp { hidden: vec![3] },
            input_dim: schema.num_features(),
        };
        let model = Model::new(spec.clone(), spec.initial_parameters(3)).unwrap();
        let numeric = |c: &medfed_protocol::schema::Column| c.range().is_some();
        let mut standardization = Standardization::identity(0);
        for column in schema.columns() {
            let (mean, std) = if numeric(column) {
                (52.5, 14.0)
            } else {
                (0.0, 1.0)
            };
            for _ in 0..column.width() {
                standardization.mean.push(mean);
                standardization.std.push(std);
            }
        }
        let threshold = DecisionThreshold::new(0.2).unwrap();
        let scoring = Scoring::new(schema_text.into(), standardization, threshold, &spec);
        ModelFile {
            round: 7,
            model,
            scoring: Some(scoring.unwrap()),
            audit,
        }
    }

    /// `file`'s bytes with metadata entry `key` set to `value` (or removed).
    fn with_metadata(file: &ModelFile, key: &str, value: Option<&str>) -> Vec<u8> {
        let bytes = encode_model_file(file).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let meta = header["__metadata__"].as_object_mut().unwrap();
        match value {
            Some(value) => meta.insert(key.into(), value.into()),
            None => meta.remove(key),
        };
        let mut text = serde_json::to_vec(&header).unwrap();
        // safetensors pads the header to a multiple of 8 with spaces.
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend(text);
        out.extend_from_slice(&bytes[8 + n..]);
        out
    }

    #[test]
    fn a_model_file_carries_its_scoring_and_audit_link_through_the_bytes() {
        let link = AuditLink {
            report_sha256: "ab".repeat(32),
            approved: false,
        };
        let original = file(Some(link));
        let back = decode_model_file(&encode_model_file(&original).unwrap()).unwrap();
        assert_eq!(back, original);
        // A plain checkpoint carries neither.
        let mut plain = original.clone();
        plain.scoring = None;
        plain.audit = None;
        assert_eq!(
            decode_model_file(&encode_model_file(&plain).unwrap()).unwrap(),
            plain
        );
    }

    #[test]
    fn a_model_file_over_an_image_schema_carries_every_pixel_feature_through_the_bytes() {
        let original = file_of(medfed_protocol::schema::EXAMPLE_IMAGE_SCHEMA, None);
        let back = decode_model_file(&encode_model_file(&original).unwrap()).unwrap();
        assert_eq!(back, original);
        let scoring = back.scoring.unwrap();
        assert_eq!(scoring.schema.feature_names()[1], "scan[0,0,0]");
        assert_eq!(scoring.standardization.std[1..7], [1.0; 6]);
    }

    #[test]
    fn scoring_entries_that_disagree_or_are_incomplete_are_refused_by_key() {
        let original = file(None);
        let other_schema = EXAMPLE_SCHEMA.replace("[0, 120]", "[0, 110]");
        let cases: [(&str, Option<&str>, &str); 6] = [
            (
                META_SCHEMA_DIGEST,
                Some(&"00".repeat(32)),
                META_SCHEMA_DIGEST,
            ),
            (META_SCHEMA, Some(&other_schema), META_SCHEMA_DIGEST),
            (
                META_FEATURE_NAMES,
                Some(r#"["age","sex=M","sex=F"]"#),
                META_FEATURE_NAMES,
            ),
            (
                META_DECISION_THRESHOLD,
                Some("1.5"),
                META_DECISION_THRESHOLD,
            ),
            (
                META_STANDARDIZATION,
                Some(r#"{"mean":[0],"std":[1]}"#),
                META_STANDARDIZATION,
            ),
            (META_STANDARDIZATION, None, META_STANDARDIZATION),
        ];
        for (key, value, named) in cases {
            let err = decode_model_file(&with_metadata(&original, key, value)).unwrap_err();
            let names = match &err {
                CheckpointError::BadMetadata { key, .. }
                | CheckpointError::MissingMetadata { key } => *key,
                other => panic!("{key}: {other:?}"),
            };
            assert_eq!(names, named, "{key}: {err}");
        }
        // A half-written audit link is refused too.
        let err = decode_model_file(&with_metadata(&original, META_AUDIT_APPROVED, Some("true")))
            .unwrap_err();
        assert!(
            matches!(err, CheckpointError::MissingMetadata { key } if key == META_AUDIT_REPORT)
        );
    }

    #[test]
    fn a_schema_of_another_width_cannot_score_the_model() {
        let original = file(None);
        let mut spec = original.model.spec.clone();
        spec.input_dim += 1;
        let scoring = original.scoring.unwrap();
        let err = Scoring::new(
            scoring.schema_text,
            scoring.standardization,
            scoring.decision_threshold,
            &spec,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("encodes 3 features, the model takes 4"),
            "{err}"
        );
    }
}
